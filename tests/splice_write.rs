//! WRITE requests received by splice (`-o splice_write=on`; fuser's
//! `splice_writes`, src/daemon/splice.rs):
//! a big WRITE's data goes from /dev/fuse through a pipe into the upper
//! file without a copy through the daemon. Through real mounts as an
//! unprivileged user (as root, upper files are passed through in the
//! kernel and their WRITEs never reach the daemon): writes at page and odd
//! offsets, O_DIRECT, an append that copies a lower file up, small writes
//! (read whole into a buffer) all leave the writer's bytes in the upper;
//! the daemon's unmount line counts the spliced writes; a write that runs
//! out of space gets ENOSPC and leaves the mount working (the pipe's
//! unwritten rest is dropped, not read as the next request). Off unless
//! `-o splice_write=on` is given, and with `UNIONFS_SPLICE=0`.

mod common;

use common::*;
use std::fs;
use std::path::Path;

const USER: u32 = 1000;
const MIB: usize = 1 << 20;
const DATA: usize = 5 * MIB + 1234;

/// The numbers of the daemon's unmount line "writes from a pipe: N
/// spliced, M through a buffer".
fn writes(log: &Path) -> (u64, u64) {
    let nums = log_numbers(log, "writes from a pipe:");
    (nums[0], nums[1])
}

/// Writes through a rootless mount in several ways (with `env` in the
/// daemon's environment and `opts` on its command line), unmounts, checks what the upper holds and that
/// the lower is unchanged; returns the daemon's (spliced, unspliced) counts.
fn write_everything(name: &str, env: &str, opts: &str) -> (u64, u64) {
    let t = TestDir::new(name);
    let lower = t.mkdir("lower");
    let upper = t.mkdir("upper");
    let mnt = t.mkdir("mnt");
    let work = t.join("work");
    let log = t.join("daemon.log");
    let data = t.join("data");
    fs::write(&data, scrambled(1, DATA)).unwrap();
    fs::write(lower.join("low"), scrambled(2, 300_000)).unwrap();
    fs::write(lower.join("small"), b"lower\n").unwrap();
    for dir in [t.path(), &lower, &upper, &mnt] {
        chown_tree(dir, USER);
    }
    let fuse = fuse_node(t.path());
    let sum = checksum_layers(&[&lower]);
    let script = format!(
        "set -e; M={m}; D={d}; \
         {env} RUST_LOG=unionfs=info {bin} mount {opts} -l {lo} -u {up} -w {w} --log-file {log} \"$M\"; \
         dd if=$D of=\"$M/new\" bs=1M status=none; \
         dd if=$D of=\"$M/odd\" bs=100000 seek=3 status=none; \
         dd if=$D of=\"$M/direct\" bs=1M oflag=direct status=none; \
         dd if=$D of=\"$M/low\" bs=1M oflag=append conv=notrunc status=none; \
         printf more >> \"$M/small\"; \
         cmp \"$M/new\" $D && echo SAME-NEW; \
         {bin} umount \"$M\"",
        m = mnt.display(),
        d = data.display(),
        bin = unionfs_bin(),
        lo = lower.display(),
        up = upper.display(),
        w = work.display(),
        log = log.display(),
    );
    let out = as_user_through_fusermount(&fuse, &mnt, USER, &script);
    assert!(out.success() && out.stdout.contains("SAME-NEW"), "{out}");
    let want = scrambled(1, DATA);
    assert!(fs::read(upper.join("new")).unwrap() == want, "upper/new");
    let mut odd = vec![0u8; 300_000];
    odd.extend_from_slice(&want);
    assert!(fs::read(upper.join("odd")).unwrap() == odd, "upper/odd");
    assert!(
        fs::read(upper.join("direct")).unwrap() == want,
        "upper/direct"
    );
    let mut low = scrambled(2, 300_000);
    low.extend_from_slice(&want);
    assert!(fs::read(upper.join("low")).unwrap() == low, "upper/low");
    assert_eq!(fs::read(upper.join("small")).unwrap(), b"lower\nmore");
    sum.assert_unchanged();
    let counts = writes(&log);
    drop(t);
    counts
}

#[test]
fn rootless_big_writes_are_spliced_into_the_upper() {
    if !require_mount_env()
        || !require_commands(&["unshare", "setpriv", "fusermount3", "dd", "cmp"])
    {
        return;
    }
    let (spliced, unspliced) = write_everything("splice-write", "", "-o splice_write=on");
    // 4 files of 5 MiB in requests of at most 1 MiB: at least 20 big ones.
    assert!(
        spliced >= 20,
        "{spliced} spliced, {unspliced} through a buffer"
    );
}

#[test]
fn without_the_option_or_with_splice_off_writes_go_through_a_buffer() {
    if !require_mount_env()
        || !require_commands(&["unshare", "setpriv", "fusermount3", "dd", "cmp"])
    {
        return;
    }
    let by_default = write_everything("splice-write-default", "", "");
    assert_eq!(by_default, (0, 0));
    let off = write_everything("splice-write-off", "UNIONFS_SPLICE=0", "-o splice_write=on");
    assert_eq!(off, (0, 0));
}

/// An upper too small for a write: the writer gets ENOSPC after what fits,
/// those bytes are the writer's, and the requests after it are served (the
/// WRITE's unwritten rest in the pipe was dropped, not taken for a request).
#[test]
fn a_spliced_write_that_runs_out_of_space_leaves_the_mount_working() {
    if !require_mount_env()
        || !require_commands(&["unshare", "setpriv", "fusermount3", "dd", "cmp", "mount"])
    {
        return;
    }
    let t = TestDir::new("splice-write-enospc");
    let lower = t.mkdir("lower");
    let small = t.mkdir("small");
    let mnt = t.mkdir("mnt");
    let log = t.join("daemon.log");
    let data = t.join("data");
    fs::write(&data, scrambled(3, DATA)).unwrap();
    fs::write(lower.join("kept"), b"from the lower\n").unwrap();
    let tmpfs = run(
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "unionfs-test"])
            .arg(&small),
        std::time::Duration::from_secs(10),
    );
    assert!(tmpfs.success(), "mount tmpfs: {tmpfs}");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&small);
    let upper = small.join("upper");
    let work = small.join("work");
    fs::create_dir(&upper).unwrap();
    for dir in [t.path(), &lower, &small, &upper, &mnt] {
        chown_tree(dir, USER);
    }
    let fuse = fuse_node(t.path());
    let sum = checksum_layers(&[&lower]);
    let script = format!(
        "M={m}; D={d}; \
         RUST_LOG=unionfs=info {bin} mount -o splice_write=on -l {lo} -u {up} -w {w} --log-file {log} \"$M\" || exit 1; \
         if dd if=$D of=\"$M/fill\" bs=1M status=none 2>{t}/dd.err; then echo FILLED; fi; \
         grep -q 'No space left' {t}/dd.err && echo ENOSPC; \
         n=$(stat -c %s \"$M/fill\"); cmp -n $n \"$M/fill\" $D && echo PREFIX; \
         rm \"$M/fill\"; \
         dd if=$D of=\"$M/again\" bs=1M count=1 status=none && cmp -n 1048576 \"$M/again\" $D && echo AGAIN; \
         cat \"$M/kept\"; \
         {bin} umount \"$M\" && echo UNMOUNTED",
        m = mnt.display(),
        d = data.display(),
        t = t.path().display(),
        bin = unionfs_bin(),
        lo = lower.display(),
        up = upper.display(),
        w = work.display(),
        log = log.display(),
    );
    let out = as_user_through_fusermount(&fuse, &mnt, USER, &script);
    assert!(
        !out.stdout.contains("FILLED"),
        "5 MiB fit a 2 MiB tmpfs? {out}"
    );
    for word in ["ENOSPC", "PREFIX", "AGAIN", "from the lower", "UNMOUNTED"] {
        assert!(out.stdout.contains(word), "{word} missing: {out}");
    }
    assert_eq!(
        fs::read(upper.join("again")).unwrap(),
        scrambled(3, DATA)[..MIB]
    );
    assert!(
        !upper.join("fill").exists(),
        "the removed file is gone from the upper"
    );
    let (spliced, _) = writes(&log);
    assert!(spliced >= 1, "{spliced} spliced");
    sum.assert_unchanged();
}
