//! READ replies spliced from the backing file into /dev/fuse (src/daemon/splice.rs),
//! through real mounts, as root and as an unprivileged user: every read
//! gives the layer's bytes (whole files, odd offsets and sizes, end of
//! file, past it, empty files, a handle whose file is copied up while it is
//! open), the daemon's unmount log line says the big replies were spliced
//! (READs under 32 KiB go from a buffer, which costs less), and with
//! `UNIONFS_SPLICE=0` every read is answered from a buffer.
//!
//! Splice is how READs leave the daemon through /dev/fuse, the default
//! transport; with `-o io_uring=on` they are read into the ring's payload
//! buffer instead (tests/io_uring.rs).
//!
//! Reads go through O_DIRECT handles where each must reach the daemon (a
//! buffered read may be served from the page cache instead).

mod common;

use common::*;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const MIB: usize = 1 << 20;
const BIG: usize = 3 * MIB + 1234;
const OWN: usize = MIB + 17;
const UP: usize = 200_000;

struct Layers {
    t: TestDir,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
}

fn layers(name: &str) -> Layers {
    let t = TestDir::new(name);
    let lower = t.mkdir("lower");
    let upper = t.mkdir("upper");
    fs::write(lower.join("big"), scrambled(1, BIG)).unwrap();
    fs::write(lower.join("small"), b"tiny\n").unwrap();
    fs::write(lower.join("empty"), b"").unwrap();
    fs::write(lower.join("up"), scrambled(2, UP)).unwrap();
    fs::write(upper.join("own"), scrambled(3, OWN)).unwrap();
    let work = t.join("work");
    let mnt = t.mkdir("mnt");
    let log = t.join("daemon.log");
    Layers {
        t,
        lower,
        upper,
        work,
        mnt,
        log,
    }
}

/// Mounts with the daemon's info lines going to `l.log`, and `env` added.
fn mount(l: &Layers, env: &[(&str, &str)]) -> Mount {
    let log = l.log.display().to_string();
    let args = mount_args(
        Form::Mount,
        &[&l.lower],
        Some(&l.upper),
        Some(&l.work),
        &l.mnt,
        &["--log-file", &log],
    );
    let mut env = env.to_vec();
    env.push(("RUST_LOG", "unionfs=info"));
    try_mount_unionfs_args_env(&args, &l.mnt, &env).unwrap_or_else(|e| panic!("{e}"))
}

fn open_direct(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(p)
        .unwrap_or_else(|e| panic!("open {} O_DIRECT: {e}", p.display()))
}

/// What a read of `size` bytes at `offset` of `want` must return.
fn expected(want: &[u8], offset: usize, size: usize) -> &[u8] {
    let from = offset.min(want.len());
    &want[from..(offset + size).min(want.len())]
}

/// Reads every file through the mount in several ways and compares with
/// what the layers hold; returns the failures.
fn check_reads(m: &Mount) -> Vec<String> {
    let mut failures = Vec::new();
    let files = [
        ("big", scrambled(1, BIG)),
        ("own", scrambled(3, OWN)),
        ("small", b"tiny\n".to_vec()),
        ("empty", Vec::new()),
    ];
    for (name, want) in &files {
        // Whole, buffered (read-ahead sizes the requests).
        if &read(&m.join(name)) != want {
            failures.push(format!("{name}: whole-file read differs"));
        }
        if *name == "own" && euid() == 0 {
            // Root passes an upper file's reads through to it in the
            // kernel (src/passthrough.rs): the daemon never sees them, and
            // an unaligned O_DIRECT read fails as on the upper's own fs.
            continue;
        }
        let f = open_direct(&m.join(name));
        let len = want.len();
        let offsets = [
            0,
            1,
            4095,
            4097,
            MIB - 7,
            len.saturating_sub(10),
            len,
            len + 100,
        ];
        for &offset in &offsets {
            for size in [1, 5000, 300_000, MIB, MIB + 4096] {
                let mut buf = vec![0u8; size];
                let mut n = 0;
                // Direct reads may come back short at the transport's
                // max_read: read on to the size or end of file.
                loop {
                    match f.read_at(&mut buf[n..], (offset + n) as u64) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) => {
                            failures.push(format!("{name} @{offset} +{size}: {e}"));
                            break;
                        }
                    }
                    if n == size {
                        break;
                    }
                }
                if &buf[..n] != expected(want, offset, size) {
                    failures.push(format!(
                        "{name} @{offset} +{size}: got {n} bytes, not the layer's {}",
                        expected(want, offset, size).len()
                    ));
                }
            }
        }
    }
    failures
}

/// A handle opened on the lower file reads the upper copy once a write
/// through another handle has copied the file up (as kernel overlayfs).
fn check_copy_up_under_open_handle(l: &Layers, m: &Mount) -> Vec<String> {
    let mut failures = Vec::new();
    let reader = open_direct(&m.join("up"));
    let mut head = vec![0u8; 8192];
    reader.read_exact_at(&mut head, 0).unwrap();
    if head != scrambled(2, UP)[..8192] {
        failures.push("up: first read is not the lower's bytes".into());
    }
    let patch = vec![b'X'; 8192];
    let w = OpenOptions::new().write(true).open(m.join("up")).unwrap();
    w.write_all_at(&patch, 4096).unwrap();
    drop(w);
    let mut want = scrambled(2, UP);
    want[4096..4096 + 8192].copy_from_slice(&patch);
    let mut got = vec![0u8; UP];
    reader.read_exact_at(&mut got, 0).unwrap();
    if got != want {
        failures.push("up: the handle opened before copy-up does not read the copy".into());
    }
    if read(&l.upper.join("up")) != want {
        failures.push("up: the upper does not hold the patched copy".into());
    }
    failures
}

/// The numbers of the daemon's unmount line "read replies: N spliced, M
/// from a buffer".
fn replies(log: &Path) -> (u64, u64) {
    let nums = log_numbers(log, "read replies:");
    (nums[0], nums[1])
}

/// Mounts (with `env` in the daemon's environment), reads everything and
/// copies a file up under an open handle, unmounts, and checks the bytes
/// and that the lower is unchanged. Returns the mount's superblock options
/// and the daemon's (spliced, buffered) reply counts.
fn read_everything(name: &str, env: &[(&str, &str)]) -> (String, u64, u64) {
    let l = layers(name);
    let sum = checksum_layers(&[&l.lower]);
    let m = mount(&l, env);
    let super_opts = m.info().super_opts.clone();
    let mut failures = check_reads(&m);
    failures.extend(check_copy_up_under_open_handle(&l, &m));
    m.umount();
    assert_no_failures(name, &failures);
    sum.assert_unchanged();
    let (spliced, buffered) = replies(&l.log);
    drop(l.t);
    (super_opts, spliced, buffered)
}

#[test]
fn spliced_reads_give_the_layers_bytes() {
    if !require_mount_env() {
        return;
    }
    let (super_opts, spliced, buffered) = read_everything("splice-read", &[]);
    assert!(
        super_opts.contains("max_read=1040384"),
        "READs are capped to fit a 1 MiB pipe: {super_opts}"
    );
    assert!(spliced > 20, "{spliced} spliced, {buffered} from a buffer");
    assert!(
        buffered > 0,
        "the small reads go from a buffer: {spliced} spliced, {buffered} from a buffer"
    );
}

#[test]
fn with_splice_off_reads_come_from_a_buffer() {
    if !require_mount_env() {
        return;
    }
    let (super_opts, spliced, buffered) = read_everything("splice-off", &[("UNIONFS_SPLICE", "0")]);
    assert!(
        !super_opts.contains("max_read="),
        "no cap without splice: {super_opts}"
    );
    assert_eq!(spliced, 0);
    assert!(buffered > 20, "{spliced} spliced, {buffered} from a buffer");
}

/// As uid 1000 through fusermount3: the daemon may not grow a pipe past
/// 1 MiB, and fusermount3 must accept the max_read option.
#[test]
fn rootless_reads_are_spliced() {
    if !require_mount_env()
        || !require_commands(&["unshare", "setpriv", "fusermount3", "dd", "cmp"])
    {
        return;
    }
    const USER: u32 = 1000;
    let l = layers("splice-rootless");
    fs::write(l.t.join("big.want"), scrambled(1, BIG)).unwrap();
    for dir in [l.t.path(), &l.lower, &l.upper, &l.mnt] {
        chown_tree(dir, USER);
    }
    let fuse = fuse_node(l.t.path());
    let sum = checksum_layers(&[&l.lower]);
    let script = format!(
        "set -e; M={m}; \
         RUST_LOG=unionfs=info {bin} mount -l {lo} -u {up} -w {w} --log-file {log} \"$M\"; \
         grep \" $M \" /proc/self/mounts | grep -q max_read=1040384 && echo CAPPED; \
         cmp \"$M/big\" {want} && echo SAME-BUFFERED; \
         dd if=\"$M/big\" iflag=direct bs=1M status=none | cmp - {want} && echo SAME-DIRECT; \
         dd if=\"$M/big\" iflag=direct bs=1000 skip=3 status=none | cmp - {want} -i 0:3000 && echo SAME-ODD; \
         {bin} umount \"$M\"",
        m = l.mnt.display(),
        bin = unionfs_bin(),
        lo = l.lower.display(),
        up = l.upper.display(),
        w = l.work.display(),
        log = l.log.display(),
        want = l.t.join("big.want").display(),
    );
    let out = as_user_through_fusermount(&fuse, &l.mnt, USER, &script);
    assert!(out.success(), "{out}");
    for word in ["CAPPED", "SAME-BUFFERED", "SAME-DIRECT", "SAME-ODD"] {
        assert!(out.stdout.contains(word), "{word} missing: {out}");
    }
    let (spliced, buffered) = replies(&l.log);
    assert!(spliced > 10, "{spliced} spliced, {buffered} from a buffer");
    assert!(
        buffered > 0,
        "the small reads go from a buffer: {spliced} spliced, {buffered} from a buffer"
    );
    sum.assert_unchanged();
    // Reads copy nothing up: the upper holds only the file it started with.
    assert_eq!(list_str(&l.upper), ["own"], "the upper after reads");
    drop(l.t);
}
