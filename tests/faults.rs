//! Faults of the upper's (or a lower's) file system under a live mount
//! (issue item 3):
//!
//! * ENOSPC: with the upper (and its work dir) on a small tmpfs that is
//!   full, writes and copy-ups fail with ENOSPC, the lower version stays
//!   visible and intact, nothing half-made appears in the upper (no partial
//!   file under the name, `work/tmp` empty), the daemon keeps serving, and
//!   once space is freed the same copy-up succeeds. The same with no inodes
//!   left (whiteouts, directory copy-ups, mkdir need one).
//! * EROFS: with the upper's tmpfs remounted read-only under the daemon,
//!   every change fails cleanly with EROFS, reads keep working, the daemon
//!   stays up, and after `remount,rw` writes work again.
//! * A full upper (no room, or no inode) during a directory rename in the
//!   OCI format (the tree copied up, then made opaque), a hard-link copy-up
//!   and a create over a whiteout: ENOSPC, nothing of the half-made copy
//!   shows, the same after a remount, and the operation works once room is
//!   freed.
//! * One or two inodes left for an operation over a whiteout (create,
//!   mkdir, a dir renamed there), in both whiteout formats: all or nothing.
//! * A lower whose device returns EIO: reads and copy-ups of its files fail
//!   with EIO, the upper is untouched, the daemon keeps serving, and after
//!   the device recovers a remount reads everything.
//!
//! Every test also checks that the lowers are byte-for-byte unchanged.

mod common;

use common::*;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// A recognisable content: `name:offset` records.
fn pattern(name: &str, len: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len as usize + 32);
    while (v.len() as u64) < len {
        v.extend_from_slice(format!("{name}:{:010}\n", v.len()).as_bytes());
    }
    v.truncate(len as usize);
    v
}

/// A union whose upper and work dir sit on a small tmpfs of their own.
/// Fields drop in order: the union, then the tmpfs, then the dir.
struct Setup {
    m: Option<Mount>,
    upper_fs: Mount,
    _t: TestDir,
    upper: PathBuf,
    work: PathBuf,
    sums: LayerChecksum,
    /// Extra arguments of `unionfs mount`.
    args: Vec<String>,
}

impl Setup {
    /// `tmpfs_opts` is the tmpfs size, optionally followed by more options
    /// (`"4m,nr_inodes=64"`).
    fn new(name: &str, lower: &Layer, tmpfs_opts: &str) -> Setup {
        Setup::with_args(name, lower, tmpfs_opts, &[])
    }

    /// [`Setup::new`] with more arguments for `unionfs mount` (kept for
    /// remounts), e.g. `["--format", "oci"]`.
    fn with_args(name: &str, lower: &Layer, tmpfs_opts: &str, args: &[&str]) -> Setup {
        let t = TestDir::new(name);
        let lower_dir = t.join("lower");
        render(lower, &lower_dir, Format::Kernel);
        let fsdir = t.join("upperfs");
        let upper_fs = mount_tmpfs_sized(&fsdir, tmpfs_opts);
        let upper = fsdir.join("upper");
        let work = fsdir.join("work");
        fs::create_dir(&upper).expect("mkdir upper");
        let mnt = t.mkdir("mnt");
        let sums = checksum_layers(&[&lower_dir]);
        let m = mount_unionfs(&[&lower_dir], Some(&upper), Some(&work), &mnt, args);
        Setup {
            m: Some(m),
            upper_fs,
            _t: t,
            upper,
            work,
            sums,
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn mnt(&self) -> &Mount {
        self.m.as_ref().expect("mounted")
    }

    /// `mnt/rel`.
    fn at(&self, rel: &str) -> PathBuf {
        self.mnt().join(rel)
    }

    /// Names left in `work/tmp` (it must be empty between operations).
    fn temporaries(&self) -> Vec<String> {
        match fs::read_dir(self.work.join("tmp")) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) => vec![format!("<cannot read work/tmp: {e}>")],
        }
    }

    /// The daemon answers: the root stats, statfs works, the mount is there.
    fn serving(&self) -> Result<(), String> {
        let mnt = self.mnt().path();
        fs::symlink_metadata(mnt).map_err(|e| format!("stat of the mount root: {e}"))?;
        sys::statvfs(mnt).map_err(|e| format!("statfs of the mount: {e}"))?;
        fs::read_dir(mnt).map_err(|e| format!("readdir of the mount root: {e}"))?;
        if !is_mounted(mnt) {
            return Err("the mount is gone".into());
        }
        Ok(())
    }

    /// Unmounts and mounts again on the same layers.
    fn remount(&mut self) {
        let m = self.m.take().expect("mounted");
        let mnt = m.path().to_path_buf();
        m.umount();
        let lower = self._t.join("lower");
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.m = Some(mount_unionfs(
            &[&lower],
            Some(&self.upper),
            Some(&self.work),
            &mnt,
            &args,
        ));
    }

    fn unmount(&mut self) {
        if let Some(m) = self.m.take() {
            m.umount();
        }
    }
}

/// Free bytes of the file system holding `p`.
fn free_bytes(p: &Path) -> u64 {
    let s = sys::statvfs(p).expect("statvfs");
    s.bavail * s.frsize
}

/// Writes 64 KiB chunks to `f` until a write fails; returns that error.
fn write_until_error(f: &mut fs::File) -> io::Error {
    let chunk = vec![b'f'; 64 << 10];
    for _ in 0..100_000 {
        match f.write(&chunk) {
            Ok(0) => return io::Error::other("write returned 0"),
            Ok(_) => {}
            Err(e) => return e,
        }
    }
    io::Error::other("the file system never filled up")
}

/// What `path` shows through the mount must be exactly `want` with mode
/// `mode`: the lower version, intact.
fn expect_content(path: &Path, want: &[u8], mode: u32, what: &str, f: &mut Vec<String>) {
    match fs::read(path) {
        Ok(got) if got == want => {}
        Ok(got) => f.push(format!(
            "{what}: {} shows {} bytes (fnv {:x}), expected {} bytes (fnv {:x})",
            path.display(),
            got.len(),
            fnv(&got),
            want.len(),
            fnv(want)
        )),
        Err(e) => f.push(format!("{what}: read {}: {e}", path.display())),
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.mode() & 0o7777 == mode => {}
        Ok(m) => f.push(format!(
            "{what}: {} has mode {:o}, expected {mode:o}",
            path.display(),
            m.mode() & 0o7777
        )),
        Err(e) => f.push(format!("{what}: lstat {}: {e}", path.display())),
    }
}

fn expect_absent(path: &Path, what: &str, f: &mut Vec<String>) {
    if let Ok(m) = fs::symlink_metadata(path) {
        f.push(format!(
            "{what}: {} exists ({:?}, {} bytes), expected nothing there",
            path.display(),
            m.file_type(),
            m.len()
        ));
    }
}

fn check_errno<T: std::fmt::Debug>(r: io::Result<T>, want: i32, what: &str, f: &mut Vec<String>) {
    if let Err(e) = expect_errno(r, want) {
        f.push(format!("{what}: {e}"));
    }
}

fn big_lower() -> (Layer, Vec<u8>, Vec<u8>) {
    let big = pattern("big", 3 * MIB);
    let small = pattern("small", 1000);
    let l = Layer::new("lower")
        .file("d/big", &big)
        .mode(0o640)
        .file("d/small", &small)
        .tagged("top")
        .tagged("e/f");
    (l, big, small)
}

/// A full upper: copy-ups of a lower file bigger than the space left fail
/// with ENOSPC, whatever triggers them, and leave nothing behind; the
/// daemon keeps serving; after freeing space the copy-up works.
#[test]
fn enospc_copy_up_fails_cleanly_and_succeeds_after_freeing_space() {
    if !require_mount_env() {
        return;
    }
    let (lower, big, small) = big_lower();
    let mut s = Setup::new("enospc-copy-up", &lower, "4m");
    let mut f = Vec::new();

    // Fill the upper's file system through the mount: the write fails with
    // ENOSPC (a short write first is fine).
    let filler = s.at("filler");
    let mut fh = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&filler)
        .expect("create filler");
    let e = write_until_error(&mut fh);
    if e.raw_os_error() != Some(libc::ENOSPC) {
        f.push(format!(
            "filling the upper: write failed with {e}, expected ENOSPC"
        ));
    }
    drop(fh);
    if let Err(e) = s.serving() {
        panic!("the daemon stopped serving after a write hit ENOSPC: {e}");
    }
    // Leave about 1 MiB free: less than the 3 MiB lower file.
    let len = fs::metadata(&filler).expect("stat filler").len();
    let free_target = MIB;
    sys::truncate(&filler, len.saturating_sub(free_target) as i64).expect("truncate filler");
    let free = free_bytes(&s.upper);
    assert!(
        free < big.len() as u64 && free > 64 << 10,
        "test setup: {free} bytes free, wanted about 1 MiB"
    );

    let bigp = s.at("d/big");
    type Trigger = (&'static str, Box<dyn Fn(&Path) -> io::Result<()>>);
    let triggers: Vec<Trigger> = vec![
        (
            "open O_WRONLY",
            Box::new(|p| fs::OpenOptions::new().write(true).open(p).map(drop)),
        ),
        (
            "open O_RDWR|O_APPEND",
            Box::new(|p| {
                fs::OpenOptions::new()
                    .read(true)
                    .append(true)
                    .open(p)
                    .map(drop)
            }),
        ),
        (
            "chmod",
            Box::new(|p| fs::set_permissions(p, fs::Permissions::from_mode(0o600))),
        ),
        (
            "setxattr user.k",
            Box::new(|p| sys::lsetxattr(p, b"user.k", b"v")),
        ),
        ("utimes", Box::new(|p| sys::utimens_nofollow(p, None))),
        ("truncate to 10 bytes", Box::new(|p| sys::truncate(p, 10))),
        (
            "link d/big d/big.link",
            Box::new(|p| fs::hard_link(p, p.with_file_name("big.link"))),
        ),
        (
            "rename d/big d/big.renamed",
            Box::new(|p| fs::rename(p, p.with_file_name("big.renamed"))),
        ),
    ];
    for (what, trigger) in &triggers {
        let what = format!("copy-up by {what} with {free} bytes free");
        check_errno(trigger(&bigp), libc::ENOSPC, &what, &mut f);
        // The lower version stays visible and intact, nothing else appears.
        expect_content(&bigp, &big, 0o640, &what, &mut f);
        expect_absent(&s.at("d/big.link"), &what, &mut f);
        expect_absent(&s.at("d/big.renamed"), &what, &mut f);
        // Nothing half-made in the upper: no file under the name, no
        // temporary left in the work dir.
        expect_absent(&s.upper.join("d/big"), &what, &mut f);
        expect_absent(&s.upper.join("d/big.link"), &what, &mut f);
        expect_absent(&s.upper.join("d/big.renamed"), &what, &mut f);
        let tmp = s.temporaries();
        if !tmp.is_empty() {
            f.push(format!("{what}: work/tmp holds {tmp:?}"));
        }
        if let Err(e) = s.serving() {
            panic!("{what}: the daemon stopped serving: {e}");
        }
    }

    // Other operations keep working meanwhile.
    expect_content(&s.at("d/small"), &small, 0o644, "reading d/small", &mut f);
    match fs::read_dir(s.at("d")) {
        Ok(rd) => {
            let mut names: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            if names != ["big", "small"] {
                f.push(format!("readdir d: {names:?}, expected [big, small]"));
            }
        }
        Err(e) => f.push(format!("readdir d: {e}")),
    }
    match fs::write(s.at("ok"), b"small write") {
        Ok(()) => expect_content(&s.at("ok"), b"small write", 0o644, "new file", &mut f),
        Err(e) => f.push(format!("a small new file while space remains: {e}")),
    }

    // Free the space: the same copy-up now works and keeps the data.
    fs::remove_file(&filler).expect("remove filler");
    match fs::OpenOptions::new().write(true).open(&bigp) {
        Ok(fh) => {
            if let Err(e) = fh.write_all_at(b"CHANGED", 0) {
                f.push(format!("write after the copy-up: {e}"));
            }
        }
        Err(e) => f.push(format!("copy-up after freeing space: {e}")),
    }
    let mut want = big.clone();
    want[..7].copy_from_slice(b"CHANGED");
    expect_content(&bigp, &want, 0o640, "after freeing space", &mut f);
    match fs::read(s.upper.join("d/big")) {
        Ok(got) if got == want => {}
        Ok(got) => f.push(format!(
            "upper d/big holds {} bytes, not the copied and written file",
            got.len()
        )),
        Err(e) => f.push(format!("upper d/big after the copy-up: {e}")),
    }
    let tmp = s.temporaries();
    if !tmp.is_empty() {
        f.push(format!("work/tmp holds {tmp:?} at the end"));
    }
    s.unmount();
    s.sums.assert_unchanged();
    assert_no_failures("ENOSPC on copy-up", &f);
}

/// Open with O_TRUNC and truncate(0) copy no data (docs/design.md §3), so they
/// work on a big lower file even when the upper has no room for its data.
#[test]
fn enospc_truncating_copy_up_needs_no_room_for_the_data() {
    if !require_mount_env() {
        return;
    }
    let (lower, big, _) = big_lower();
    let lower = lower.file("d/big2", &big);
    let mut s = Setup::new("enospc-trunc", &lower, "4m");
    let mut f = Vec::new();
    let filler = s.at("filler");
    let mut fh = fs::File::create(&filler).expect("create filler");
    let e = write_until_error(&mut fh);
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filling: {e}");
    drop(fh);
    let len = fs::metadata(&filler).expect("stat filler").len();
    sys::truncate(&filler, len.saturating_sub(256 << 10) as i64).expect("truncate filler");

    match open_flags(&s.at("d/big"), libc::O_WRONLY | libc::O_TRUNC, 0) {
        Ok(mut fh) => {
            if let Err(e) = fh.write_all(b"new") {
                f.push(format!("write after open O_TRUNC: {e}"));
            }
        }
        Err(e) => f.push(format!(
            "open O_TRUNC of a 3 MiB lower file with 256 KiB free: {e} (it must copy no data)"
        )),
    }
    expect_content(&s.at("d/big"), b"new", 0o640, "after open O_TRUNC", &mut f);
    if let Err(e) = sys::truncate(&s.at("d/big2"), 0) {
        f.push(format!(
            "truncate(0) of a 3 MiB lower file with 256 KiB free: {e} (it must copy no data)"
        ));
    }
    expect_content(&s.at("d/big2"), b"", 0o644, "after truncate(0)", &mut f);
    let tmp = s.temporaries();
    if !tmp.is_empty() {
        f.push(format!("work/tmp holds {tmp:?}"));
    }
    s.unmount();
    s.sums.assert_unchanged();
    assert_no_failures("copy-up without data on a full upper", &f);
}

/// No inodes left on the upper: whiteouts, directory copy-ups, mkdir,
/// symlink, copy-ups and renames fail with ENOSPC and change nothing; after
/// freeing inodes they all work.
#[test]
fn enospc_no_inodes_left_fails_cleanly() {
    if !require_mount_env() {
        return;
    }
    let lower = Layer::new("lower")
        .tagged("d/f1")
        .tagged("d/f2")
        .tagged("d/f3")
        .tagged("d/f4")
        .tagged("d/f5")
        .tagged("x/y")
        .tagged("c/l")
        .tagged("c/gone")
        .dir("emptydir");
    let mut s = Setup::new("enospc-inodes", &lower, "8m,nr_inodes=64");
    let mut f = Vec::new();
    let tagged = |p: &str| tag("lower", p);

    // Before filling: d in the upper (a file made and removed in it), and
    // d/f4 copied up with new content.
    fs::write(s.at("d/scratch"), b"x").expect("create d/scratch");
    fs::remove_file(s.at("d/scratch")).expect("remove d/scratch");
    fs::write(s.at("d/f4"), b"changed f4").expect("copy up d/f4");
    // c: in the upper, with c/gone deleted; t: an empty upper dir.
    fs::remove_file(s.at("c/gone")).expect("unlink c/gone");
    fs::set_permissions(s.at("c/l"), fs::Permissions::from_mode(0o600)).expect("chmod c/l");
    fs::create_dir(s.at("t")).expect("mkdir t");
    let ino_f4 = lstat(&s.at("d/f4")).ino();

    // Fill the inodes with empty files through the mount.
    let mut fill = Vec::new();
    let err = loop {
        let p = s.at(&format!("fill{}", fill.len()));
        match fs::File::create(&p) {
            Ok(_) => fill.push(p),
            Err(e) => break e,
        }
        if fill.len() > 10_000 {
            panic!("test setup: the upper never ran out of inodes");
        }
    };
    if err.raw_os_error() != Some(libc::ENOSPC) {
        f.push(format!(
            "creating a file with no inode left: {err}, expected ENOSPC"
        ));
    }
    if let Err(e) = s.serving() {
        panic!("the daemon stopped serving after ENOSPC on create: {e}");
    }

    type Op = (&'static str, Box<dyn Fn(&Setup) -> io::Result<()>>);
    let ops: Vec<Op> = vec![
        (
            "unlink d/f1 (a whiteout needed)",
            Box::new(|s| fs::remove_file(s.at("d/f1"))),
        ),
        (
            "unlink d/f4 (upper copy over a lower: whiteout needed)",
            Box::new(|s| fs::remove_file(s.at("d/f4"))),
        ),
        (
            "unlink x/y (dir copy-up and whiteout needed)",
            Box::new(|s| fs::remove_file(s.at("x/y"))),
        ),
        (
            "rmdir emptydir (a whiteout needed)",
            Box::new(|s| fs::remove_dir(s.at("emptydir"))),
        ),
        (
            "rename d/f2 d/f2b",
            Box::new(|s| fs::rename(s.at("d/f2"), s.at("d/f2b"))),
        ),
        (
            "open d/f3 O_WRONLY (copy-up)",
            Box::new(|s| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(s.at("d/f3"))
                    .map(drop)
            }),
        ),
        (
            "chmod d/f5 (copy-up)",
            Box::new(|s| fs::set_permissions(s.at("d/f5"), fs::Permissions::from_mode(0o600))),
        ),
        (
            "rename c over the empty dir t (a whiteout needed at c)",
            Box::new(|s| fs::rename(s.at("c"), s.at("t"))),
        ),
        ("mkdir newdir", Box::new(|s| fs::create_dir(s.at("newdir")))),
        (
            "symlink newlink",
            Box::new(|s| std::os::unix::fs::symlink("d/f1", s.at("newlink"))),
        ),
    ];
    let expect_unchanged = |s: &Setup, what: &str, f: &mut Vec<String>| {
        expect_content(&s.at("d/f1"), &tagged("d/f1"), 0o644, what, f);
        expect_content(&s.at("d/f2"), &tagged("d/f2"), 0o644, what, f);
        expect_content(&s.at("d/f3"), &tagged("d/f3"), 0o644, what, f);
        expect_content(&s.at("d/f4"), b"changed f4", 0o644, what, f);
        expect_content(&s.at("d/f5"), &tagged("d/f5"), 0o644, what, f);
        expect_content(&s.at("x/y"), &tagged("x/y"), 0o644, what, f);
        if !s.at("emptydir").is_dir() {
            f.push(format!("{what}: emptydir is gone"));
        }
        expect_content(&s.at("c/l"), &tagged("c/l"), 0o600, what, f);
        expect_absent(&s.at("c/gone"), &format!("{what} (deleted before)"), f);
        match fs::read_dir(s.at("t")) {
            Ok(rd) => {
                let names: Vec<String> = rd
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                if !names.is_empty() {
                    f.push(format!("{what}: t holds {names:?}, expected an empty dir"));
                }
            }
            Err(e) => f.push(format!("{what}: readdir t: {e}")),
        }
        for p in ["d/f2b", "newdir", "newlink"] {
            expect_absent(&s.at(p), what, f);
        }
        for p in [
            "d/f1", "d/f2", "d/f3", "d/f5", "d/f2b", "x", "emptydir", "newdir", "newlink",
        ] {
            expect_absent(&s.upper.join(p), &format!("{what} (upper)"), f);
        }
        for p in [".wh.f1", ".wh.f2", ".wh.f4"] {
            expect_absent(&s.upper.join("d").join(p), &format!("{what} (upper)"), f);
        }
        let tmp = s.temporaries();
        if !tmp.is_empty() {
            f.push(format!("{what}: work/tmp holds {tmp:?}"));
        }
    };
    for (what, op) in &ops {
        let what = format!("{what} with no inode left");
        check_errno(op(&s), libc::ENOSPC, &what, &mut f);
        expect_unchanged(&s, &what, &mut f);
        if let Err(e) = s.serving() {
            panic!("{what}: the daemon stopped serving: {e}");
        }
    }

    // The same after a remount, with the upper still full (what is on
    // disk, not what the daemon remembers); numbers stay (docs/design.md §3).
    s.remount();
    expect_unchanged(&s, "after a remount with no inode left", &mut f);
    let ino = lstat(&s.at("d/f4")).ino();
    if ino != ino_f4 {
        f.push(format!(
            "d/f4 (copied up) changed inode number across a remount with a full upper: \
             {ino_f4} -> {ino}"
        ));
    }

    // Free the inodes: every operation now works.
    for p in &fill {
        fs::remove_file(p).unwrap_or_else(|e| panic!("remove {}: {e}", p.display()));
    }
    for (what, op) in &ops {
        if let Err(e) = op(&s) {
            f.push(format!("{what} after freeing inodes: {e}"));
        }
    }
    for p in ["d/f1", "d/f4", "x/y", "emptydir", "d/f2", "c"] {
        expect_absent(&s.at(p), "after the retries", &mut f);
    }
    expect_content(
        &s.at("t/l"),
        &tagged("c/l"),
        0o600,
        "after the retries",
        &mut f,
    );
    expect_absent(&s.at("t/gone"), "after the retries", &mut f);
    expect_content(
        &s.at("d/f2b"),
        &tagged("d/f2"),
        0o644,
        "after the retries",
        &mut f,
    );
    expect_content(
        &s.at("d/f3"),
        &tagged("d/f3"),
        0o644,
        "after the retries",
        &mut f,
    );
    expect_content(
        &s.at("d/f5"),
        &tagged("d/f5"),
        0o600,
        "after the retries",
        &mut f,
    );
    if !s.at("newdir").is_dir() {
        f.push("after the retries: newdir is not a directory".into());
    }
    let tmp = s.temporaries();
    if !tmp.is_empty() {
        f.push(format!("work/tmp holds {tmp:?} at the end"));
    }
    s.unmount();
    s.sums.assert_unchanged();
    assert_no_failures("ENOSPC with no inodes left", &f);
}

/// `mount -o remount,ro|rw` of the upper's tmpfs.
fn remount_upper(s: &Setup, mode: &str) -> CmdOutput {
    run(
        Command::new("mount")
            .arg("-o")
            .arg(format!("remount,{mode}"))
            .arg(s.upper_fs.path()),
        Duration::from_secs(20),
    )
}

/// The upper turns read-only under the daemon: changes fail with EROFS,
/// reads work, the daemon stays up; back to read-write, writes work.
#[test]
fn readonly_upper_fails_with_erofs_and_recovers() {
    if !require_mount_env() {
        return;
    }
    let lower = Layer::new("lower")
        .tagged("a")
        .tagged("b")
        .xattr("user.k", "lower")
        .tagged("d/c")
        .dir("e");
    let mut s = Setup::new("erofs", &lower, "4m");
    let mut f = Vec::new();
    fs::write(s.at("a"), b"upper a").expect("copy up a");
    fs::write(s.at("u"), b"upper only").expect("create u");
    fs::create_dir(s.at("nd")).expect("mkdir nd");
    let before = snapshot(s.mnt().path());

    let out = remount_upper(&s, "ro");
    if !out.success() {
        let fds = fds_on(s.upper_fs.path());
        panic!(
            "remount,ro of the upper's file system failed while the union is mounted and idle \
             (no file open through it): the daemon must not keep a file open for writing on \
             the upper when it is not writing.\n{out}\nfiles open for writing there: {fds:?}"
        );
    }
    type Op = (&'static str, Box<dyn Fn(&Setup) -> io::Result<()>>);
    let ops: Vec<Op> = vec![
        (
            "open a (upper) O_WRONLY",
            Box::new(|s| fs::OpenOptions::new().write(true).open(s.at("a")).map(drop)),
        ),
        (
            "open b (lower) O_WRONLY: copy-up",
            Box::new(|s| fs::OpenOptions::new().write(true).open(s.at("b")).map(drop)),
        ),
        (
            "open a O_TRUNC",
            Box::new(|s| open_flags(&s.at("a"), libc::O_WRONLY | libc::O_TRUNC, 0).map(drop)),
        ),
        ("create n", Box::new(|s| fs::write(s.at("n"), b"new"))),
        ("mkdir n2", Box::new(|s| fs::create_dir(s.at("n2")))),
        (
            "symlink n3",
            Box::new(|s| std::os::unix::fs::symlink("a", s.at("n3"))),
        ),
        (
            "link a n4",
            Box::new(|s| fs::hard_link(s.at("a"), s.at("n4"))),
        ),
        (
            "link b n5",
            Box::new(|s| fs::hard_link(s.at("b"), s.at("n5"))),
        ),
        (
            "unlink u (upper only)",
            Box::new(|s| fs::remove_file(s.at("u"))),
        ),
        (
            "unlink a (upper over lower)",
            Box::new(|s| fs::remove_file(s.at("a"))),
        ),
        ("unlink b (lower)", Box::new(|s| fs::remove_file(s.at("b")))),
        ("rmdir nd (upper)", Box::new(|s| fs::remove_dir(s.at("nd")))),
        ("rmdir e (lower)", Box::new(|s| fs::remove_dir(s.at("e")))),
        (
            "rename a a2",
            Box::new(|s| fs::rename(s.at("a"), s.at("a2"))),
        ),
        (
            "rename b b2",
            Box::new(|s| fs::rename(s.at("b"), s.at("b2"))),
        ),
        (
            "rename d d2",
            Box::new(|s| fs::rename(s.at("d"), s.at("d2"))),
        ),
        (
            "chmod a",
            Box::new(|s| fs::set_permissions(s.at("a"), fs::Permissions::from_mode(0o600))),
        ),
        (
            "chmod b",
            Box::new(|s| fs::set_permissions(s.at("b"), fs::Permissions::from_mode(0o600))),
        ),
        ("truncate a", Box::new(|s| sys::truncate(&s.at("a"), 1))),
        (
            "utimes a",
            Box::new(|s| sys::utimens_nofollow(&s.at("a"), None)),
        ),
        (
            "utimes b",
            Box::new(|s| sys::utimens_nofollow(&s.at("b"), None)),
        ),
        (
            "setxattr a",
            Box::new(|s| sys::lsetxattr(&s.at("a"), b"user.k", b"v")),
        ),
        (
            "setxattr b",
            Box::new(|s| sys::lsetxattr(&s.at("b"), b"user.k", b"v")),
        ),
        (
            "removexattr b",
            Box::new(|s| sys::lremovexattr(&s.at("b"), b"user.k")),
        ),
    ];
    for (what, op) in &ops {
        check_errno(
            op(&s),
            libc::EROFS,
            &format!("{what} on a read-only upper"),
            &mut f,
        );
        if let Err(e) = s.serving() {
            panic!("{what} on a read-only upper: the daemon stopped serving: {e}");
        }
    }
    // Reads keep working, and nothing changed.
    let mut content = String::new();
    match fs::File::open(s.at("a")).and_then(|mut fh| fh.read_to_string(&mut content)) {
        Ok(_) if content == "upper a" => {}
        other => f.push(format!(
            "reading a (upper) on a read-only upper: {other:?} {content:?}"
        )),
    }
    expect_content(
        &s.at("b"),
        &tag("lower", "b"),
        0o644,
        "reading b (lower)",
        &mut f,
    );
    expect_content(
        &s.at("d/c"),
        &tag("lower", "d/c"),
        0o644,
        "reading d/c",
        &mut f,
    );
    match sys::lgetxattr(&s.at("b"), b"user.k") {
        Ok(v) if v == b"lower" => {}
        other => f.push(format!("getxattr b user.k on a read-only upper: {other:?}")),
    }
    let during = snapshot(s.mnt().path());
    f.extend(before.diff(&during, Fields::VIEW));

    // Back to read-write: writes work again.
    let out = remount_upper(&s, "rw");
    assert!(out.success(), "remount,rw: {out}");
    let writes: Vec<(&str, io::Result<()>)> = vec![
        ("write a", fs::write(s.at("a"), b"again")),
        ("copy-up b", fs::write(s.at("b"), b"b copied")),
        ("create n", fs::write(s.at("n"), b"new")),
        ("mkdir n2", fs::create_dir(s.at("n2"))),
        ("unlink u", fs::remove_file(s.at("u"))),
        ("rename d d2", fs::rename(s.at("d"), s.at("d2"))),
        ("rmdir e", fs::remove_dir(s.at("e"))),
    ];
    for (what, r) in writes {
        if let Err(e) = r {
            f.push(format!("{what} after remount,rw: {e}"));
        }
    }
    expect_content(&s.at("a"), b"again", 0o644, "after remount,rw", &mut f);
    expect_content(&s.at("b"), b"b copied", 0o644, "after remount,rw", &mut f);
    expect_content(&s.at("n"), b"new", 0o644, "after remount,rw", &mut f);
    expect_content(
        &s.at("d2/c"),
        &tag("lower", "d/c"),
        0o644,
        "after remount,rw",
        &mut f,
    );
    for p in ["u", "d", "e"] {
        expect_absent(&s.at(p), "after remount,rw", &mut f);
    }
    let tmp = s.temporaries();
    if !tmp.is_empty() {
        f.push(format!("work/tmp holds {tmp:?}"));
    }
    s.unmount();
    s.sums.assert_unchanged();
    assert_no_failures("read-only upper", &f);
}

/// Files under `dir` that some process holds open for writing (from
/// /proc/*/fdinfo), for the failure message of a refused remount,ro.
fn fds_on(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return v;
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            if !target.starts_with(dir) {
                continue;
            }
            let info = fs::read_to_string(p.path().join("fdinfo").join(fd.file_name()))
                .unwrap_or_default();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
                .unwrap_or(0);
            if flags & (libc::O_WRONLY | libc::O_RDWR) as u32 != 0 {
                let comm = fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                v.push(format!(
                    "pid {pid} ({}) fd {} -> {} (flags {flags:o})",
                    comm.trim(),
                    fd.file_name().to_string_lossy(),
                    target.display()
                ));
            }
        }
    }
    v
}

// ---------------------------------------------------------------------------
// Full upper during a directory rename (OCI format), a hard-link copy-up and
// a create over a whiteout.
// ---------------------------------------------------------------------------

/// How the upper is full.
#[derive(Clone, Copy, Debug)]
enum Full {
    /// About `leave` bytes free (through a filler file written until ENOSPC).
    Space { leave: u64 },
    /// `leave` inodes free (empty files created until ENOSPC, some removed).
    Inodes { leave: usize },
}

/// The tmpfs options each way of filling needs.
fn tmpfs_opts(full: Full) -> &'static str {
    match full {
        Full::Space { .. } => "8m",
        Full::Inodes { .. } => "64m,nr_inodes=80",
    }
}

/// Fills the upper through the mount; returns the filler files, which the
/// caller removes to free the room.
fn fill(s: &Setup, full: Full) -> Vec<PathBuf> {
    match full {
        Full::Space { leave } => {
            let filler = s.at("filler");
            let mut fh = fs::File::create(&filler).expect("create filler");
            let e = write_until_error(&mut fh);
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filling: {e}");
            drop(fh);
            let len = fs::metadata(&filler).expect("stat filler").len();
            sys::truncate(&filler, len.saturating_sub(leave) as i64).expect("truncate filler");
            vec![filler]
        }
        Full::Inodes { leave } => {
            let mut v = Vec::new();
            let err = loop {
                let p = s.at(&format!("fill{}", v.len()));
                match fs::File::create(&p) {
                    Ok(_) => v.push(p),
                    Err(e) => break e,
                }
                assert!(v.len() < 10_000, "the upper never ran out of inodes");
            };
            assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "filling: {err}");
            for p in v.drain(v.len() - leave..) {
                fs::remove_file(&p).expect("free an inode");
            }
            v
        }
    }
}

fn unfill(fill: &[PathBuf]) {
    for p in fill {
        fs::remove_file(p).unwrap_or_else(|e| panic!("remove {}: {e}", p.display()));
    }
}

/// Every path below `root` of the upper that holds an opaque marker (the
/// OCI `.wh..wh..opq`, or an `overlay.opaque` xattr).
fn opaque_markers(root: &Path) -> Vec<String> {
    let mut v = Vec::new();
    if !root.exists() {
        return v;
    }
    for (p, n) in snapshot_full(root).nodes {
        let name = split_parent(&p).1;
        if name == b".wh..wh..opq" {
            v.push(show(&p));
        }
        if n.xattrs.keys().any(|k| k.ends_with(b"overlay.opaque")) {
            v.push(format!("{} (opaque xattr)", show(&p)));
        }
    }
    v
}

/// Fields a failed operation, or a remount, must leave as they were in the
/// merged view: all but times (copy-up keeps them, but the test dir's own
/// entries are touched) and what a directory's copy-up changes in its stat
/// (size, and nlink 1 once it merges).
fn same_view() -> Fields {
    Fields::TIMES | Fields::DIR_SIZE | Fields::DIR_NLINK
}

/// A lower tree of 3 MiB in 12 files, in nested dirs, with a hard-linked
/// pair: a copy of it needs more room (and inodes) than a full upper has.
fn tree_lower() -> Layer {
    let mut l = Layer::new("lower");
    for i in 0..8 {
        l = l.file(format!("tree/f{i}"), pattern(&format!("f{i}"), 256 << 10));
    }
    for i in 0..4 {
        l = l.file(
            format!("tree/sub/deep/g{i}"),
            pattern(&format!("g{i}"), 256 << 10),
        );
    }
    l.tagged("tree/sub/t")
        .mode(0o600)
        .tagged("tree/sub2/u")
        .link("tree/sub2/u.link", "tree/sub2/u")
        .symlink("tree/sub2/ln", "../f0")
        .dir("tree/empty")
        .tagged("other")
}

/// Renaming a lower directory in the OCI format copies its whole tree up,
/// then makes it opaque (docs/design.md §3). With the upper full, the rename
/// fails with ENOSPC and shows nothing of the half-made copy: the tree at its
/// old name, whole, nothing at the new one, no opaque marker in the upper;
/// the same after a remount; once room is freed the rename works.
fn oci_dir_rename_on_full_upper(name: &str, full: Full) {
    let lower = tree_lower();
    let mut s = Setup::with_args(name, &lower, tmpfs_opts(full), &["--format", "oci"]);
    let mut f = Vec::new();
    let filler = fill(&s, full);
    let before = snapshot(s.mnt().path());
    let tree_before = snapshot(&s.at("tree"));

    let what = format!("rename of a lower dir (OCI format) with the upper full ({full:?})");
    check_errno(
        fs::rename(s.at("tree"), s.at("tree2")),
        libc::ENOSPC,
        &what,
        &mut f,
    );
    if let Err(e) = s.serving() {
        panic!("{what}: the daemon stopped serving: {e}");
    }
    let partial = fs::read_dir(s.upper.join("tree")).map_or(0, |rd| rd.count());
    eprintln!("{what}: the upper holds {partial} entries of the tree's partial copy");
    let check = |s: &Setup, when: &str, f: &mut Vec<String>| {
        let now = snapshot(s.mnt().path());
        f.extend(
            before
                .diff(&now, same_view())
                .into_iter()
                .map(|d| format!("{when}: {d}")),
        );
        expect_absent(&s.upper.join("tree2"), when, f);
        let marks = opaque_markers(&s.upper.join("tree"));
        if !marks.is_empty() {
            f.push(format!(
                "{when}: opaque markers in the upper's tree: {marks:?}"
            ));
        }
        let tmp = s.temporaries();
        if !tmp.is_empty() {
            f.push(format!("{when}: work/tmp holds {tmp:?}"));
        }
    };
    check(&s, &format!("after the failed {what}"), &mut f);
    s.remount();
    check(&s, "after a remount", &mut f);

    unfill(&filler);
    if let Err(e) = fs::rename(s.at("tree"), s.at("tree2")) {
        f.push(format!("the same rename once room is freed: {e}"));
    }
    let check_done = |s: &Setup, when: &str, f: &mut Vec<String>| {
        expect_absent(&s.at("tree"), when, f);
        if s.at("tree2").is_dir() {
            let t2 = snapshot(&s.at("tree2"));
            f.extend(
                tree_before
                    .diff(&t2, same_view())
                    .into_iter()
                    .map(|d| format!("{when}: tree (before) vs tree2: {d}")),
            );
        } else {
            f.push(format!("{when}: tree2 is not a directory"));
        }
        let tmp = s.temporaries();
        if !tmp.is_empty() {
            f.push(format!("{when}: work/tmp holds {tmp:?}"));
        }
    };
    check_done(&s, "after the rename", &mut f);
    s.remount();
    check_done(&s, "after the rename and a remount", &mut f);
    s.unmount();
    s.sums.assert_unchanged();
    assert_no_failures(&what, &f);
}

#[test]
fn enospc_oci_dir_rename_shows_no_partial_tree() {
    if !require_mount_env() {
        return;
    }
    oci_dir_rename_on_full_upper("enospc-oci-rename", Full::Space { leave: MIB });
}

#[test]
fn no_inodes_oci_dir_rename_shows_no_partial_tree() {
    if !require_mount_env() {
        return;
    }
    oci_dir_rename_on_full_upper("inodes-oci-rename", Full::Inodes { leave: 4 });
}

/// Both names of a lower file with two names: their content, inode number
/// and link count as the merged view shows them.
fn link_pair(s: &Setup, a: &str, b: &str, want: &[u8], ino: u64, when: &str, f: &mut Vec<String>) {
    for p in [a, b] {
        expect_content(&s.at(p), want, 0o644, when, f);
        match fs::symlink_metadata(s.at(p)) {
            Ok(m) => {
                if m.ino() != ino {
                    f.push(format!("{when}: {p} has inode {}, expected {ino}", m.ino()));
                }
                if m.nlink() != 2 {
                    f.push(format!("{when}: {p} has nlink {}, expected 2", m.nlink()));
                }
            }
            Err(e) => f.push(format!("{when}: lstat {p}: {e}")),
        }
    }
}

/// A write to one name of a lower file with two names copies it up once,
/// for both (docs/design.md §3 Hard links). With the upper full it fails
/// with ENOSPC, and both names still show the lower content as one inode,
/// also after a remount; once room is freed the write reaches both names.
fn hard_link_copy_up_on_full_upper(name: &str, full: Full) {
    let big = pattern("big", 3 * MIB);
    let lower = Layer::new("lower")
        .file("h/one", &big)
        .link("h/two", "h/one")
        .tagged("other");
    let mut s = Setup::new(name, &lower, tmpfs_opts(full));
    let mut f = Vec::new();
    let ino = lstat(&s.at("h/one")).ino();
    let filler = fill(&s, full);

    let what = format!("a write to one name of a hard-linked lower file, upper full ({full:?})");
    let write = |s: &Setup| -> io::Result<()> {
        let fh = fs::OpenOptions::new().write(true).open(s.at("h/one"))?;
        fh.write_all_at(b"CHANGED", 0)
    };
    check_errno(write(&s), libc::ENOSPC, &what, &mut f);
    if let Err(e) = s.serving() {
        panic!("{what}: the daemon stopped serving: {e}");
    }
    let check = |s: &Setup, when: &str, f: &mut Vec<String>| {
        link_pair(s, "h/one", "h/two", &big, ino, when, f);
        for p in ["h/one", "h/two"] {
            expect_absent(&s.upper.join(p), when, f);
        }
        let tmp = s.temporaries();
        if !tmp.is_empty() {
            f.push(format!("{when}: work/tmp holds {tmp:?}"));
        }
    };
    check(&s, &format!("after the failed {what}"), &mut f);
    s.remount();
    check(&s, "after a remount", &mut f);

    unfill(&filler);
    if let Err(e) = write(&s) {
        f.push(format!("the same write once room is freed: {e}"));
    }
    let mut want = big.clone();
    want[..7].copy_from_slice(b"CHANGED");
    link_pair(&s, "h/one", "h/two", &want, ino, "after the write", &mut f);
    s.remount();
    link_pair(
        &s,
        "h/one",
        "h/two",
        &want,
        ino,
        "after the write and a remount",
        &mut f,
    );
    s.unmount();
    s.sums.assert_unchanged();
    assert_no_failures(&what, &f);
}

#[test]
fn enospc_hard_link_copy_up_keeps_both_names_one_inode() {
    if !require_mount_env() {
        return;
    }
    hard_link_copy_up_on_full_upper("enospc-hardlink", Full::Space { leave: MIB });
}

#[test]
fn no_inodes_hard_link_copy_up_keeps_both_names_one_inode() {
    if !require_mount_env() {
        return;
    }
    hard_link_copy_up_on_full_upper("inodes-hardlink", Full::Inodes { leave: 0 });
}

/// Creating over a whiteout replaces the whiteout (docs/design.md §3). With
/// no inode left it fails with ENOSPC and the name stays deleted: the lower
/// object never shows through, in either whiteout format, and after a
/// remount; a fresh name stays absent too. Once inodes are freed it works.
fn create_over_whiteout_with_no_inodes(format: &str) {
    let lower = Layer::new("lower")
        .tagged("w/gone")
        .tagged("w/gonedir/x")
        .tagged("w/kept");
    let mut s = Setup::with_args(
        &format!("inodes-create-{format}"),
        &lower,
        tmpfs_opts(Full::Inodes { leave: 0 }),
        &["--format", format],
    );
    let mut f = Vec::new();
    fs::remove_file(s.at("w/gone")).expect("rm w/gone");
    fs::remove_dir_all(s.at("w/gonedir")).expect("rm -r w/gonedir");
    let filler = fill(&s, Full::Inodes { leave: 0 });

    type Op = (&'static str, Box<dyn Fn(&Setup) -> io::Result<()>>);
    let ops: Vec<Op> = vec![
        (
            "create w/gone (over a whiteout)",
            Box::new(|s| fs::write(s.at("w/gone"), b"new")),
        ),
        (
            "mkdir w/gone (over a whiteout)",
            Box::new(|s| fs::create_dir(s.at("w/gone"))),
        ),
        (
            "mkdir w/gonedir (over a whiteout)",
            Box::new(|s| fs::create_dir(s.at("w/gonedir"))),
        ),
        (
            "create w/gonedir (over a whiteout of a dir)",
            Box::new(|s| fs::write(s.at("w/gonedir"), b"new")),
        ),
        (
            "symlink w/gone (over a whiteout)",
            Box::new(|s| std::os::unix::fs::symlink("kept", s.at("w/gone"))),
        ),
        (
            "create w/fresh",
            Box::new(|s| fs::write(s.at("w/fresh"), b"new")),
        ),
    ];
    let check = |s: &Setup, when: &str, f: &mut Vec<String>| {
        for p in ["w/gone", "w/gonedir", "w/fresh"] {
            expect_absent(&s.at(p), when, f);
        }
        match fs::read_dir(s.at("w")) {
            Ok(rd) => {
                let names: Vec<String> = rd
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                if names != ["kept"] {
                    f.push(format!("{when}: readdir w: {names:?}, expected [kept]"));
                }
            }
            Err(e) => f.push(format!("{when}: readdir w: {e}")),
        }
        let tmp = s.temporaries();
        if !tmp.is_empty() {
            f.push(format!("{when}: work/tmp holds {tmp:?}"));
        }
    };
    for (what, op) in &ops {
        let what = format!("{what} with no inode left (--format {format})");
        check_errno(op(&s), libc::ENOSPC, &what, &mut f);
        check(&s, &what, &mut f);
        if let Err(e) = s.serving() {
            panic!("{what}: the daemon stopped serving: {e}");
        }
    }
    s.remount();
    check(&s, "after a remount with no inode left", &mut f);
    unfill(&filler);
    if let Err(e) = fs::write(s.at("w/gone"), b"new") {
        f.push(format!("create w/gone once inodes are freed: {e}"));
    }
    expect_content(&s.at("w/gone"), b"new", 0o644, "after freeing", &mut f);
    if let Err(e) = fs::create_dir(s.at("w/gonedir")) {
        f.push(format!("mkdir w/gonedir once inodes are freed: {e}"));
    }
    match fs::read_dir(s.at("w/gonedir")).map(|rd| rd.count()) {
        Ok(0) => {}
        Ok(_) => f.push("w/gonedir made over a whiteout shows lower entries".into()),
        Err(e) => f.push(format!("readdir w/gonedir: {e}")),
    }
    s.unmount();
    s.sums.assert_unchanged();
    assert_no_failures(&format!("create over a whiteout, --format {format}"), &f);
}

#[test]
fn no_inodes_create_over_whiteout_keeps_it_deleted_overlay_format() {
    if !require_mount_env() {
        return;
    }
    create_over_whiteout_with_no_inodes("overlay");
}

#[test]
fn no_inodes_create_over_whiteout_keeps_it_deleted_oci_format() {
    if !require_mount_env() {
        return;
    }
    create_over_whiteout_with_no_inodes("oci");
}

// ---------------------------------------------------------------------------
// A lower that returns EIO
// ---------------------------------------------------------------------------

/// Every 4 KiB-aligned offset of the file `path` where `needle` starts (a
/// file's data blocks start at a block boundary).
fn find_all(path: &Path, needle: &[u8]) -> Vec<u64> {
    let data = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    data.chunks(4096)
        .enumerate()
        .filter(|(_, block)| block.starts_with(needle))
        .map(|(i, _)| i as u64 * 4096)
        .collect()
}

/// Writes `bytes` at each of `offsets` of the image file, to its disk.
fn poke(image: &Path, offsets: &[u64], bytes: &[u8]) {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(image)
        .unwrap_or_else(|e| panic!("open {}: {e}", image.display()));
    for &o in offsets {
        f.write_all_at(bytes, o).expect("write the image");
    }
    f.sync_all().expect("fsync the image");
}

/// Paths below `root` with their type and file size, from lstat alone (no data
/// read: the kernel must not cache what a later read is to fetch).
fn lstat_walk(root: &Path) -> Vec<(PathBuf, String, u64)> {
    let mut v = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("readdir {}: {e}", d.display())) {
            let p = e.expect("readdir entry").path();
            let m = lstat(&p);
            if m.is_dir() {
                todo.push(p.clone());
            }
            let rel = p.strip_prefix(root).expect("below root").to_path_buf();
            // A directory's size is not its content (it changes when the
            // directory is copied up).
            let len = if m.is_dir() { 0 } else { m.len() };
            v.push((rel, format!("{:?}", FileType::of(m.file_type())), len));
        }
    }
    v.sort();
    v
}

/// A lower whose file system returns EIO for a file's data (the device
/// under it fails; here a btrfs lower whose data blocks of two files stop
/// matching their checksums under the mounted file system, then are put
/// back): reading such a file through the mount fails with EIO, so does its
/// copy-up (plain, and of a file with two names, which stay one inode),
/// which leaves the upper as it was; the daemon keeps serving the
/// other files of that lower, the other lower and the upper, and takes
/// writes; a directory rename (OCI format) whose tree copy meets such a
/// file fails with EIO and shows no partial copy; once the device reads
/// again, a remount reads everything and the rename works.
///
/// (This kernel has no device-mapper driver for a `dmsetup` error or flakey
/// target; a checksum failure reaches unionfs as the same EIO from read(2).)
#[test]
fn lower_returning_eio_fails_reads_with_eio_and_the_mount_keeps_serving() {
    if !require_mount_env() || !require_commands(&["mkfs.btrfs", "losetup"]) {
        return;
    }
    if !fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .any(|l| l.trim_end().ends_with("btrfs"))
    {
        skip_or_fail("the kernel has no btrfs (for a lower that returns EIO)");
        return;
    }
    let t = TestDir::new("eio-lower");
    let image = t.join("lower.img");
    sparse_image(&image, 256 * MIB);
    run_ok(
        Command::new("mkfs.btrfs")
            .args(["-q", "-f", "-d", "single", "-m", "single"])
            .arg(&image),
        "mkfs.btrfs",
    );
    let dev = LoopDev::attach(&image);
    let fsdir = t.join("lowerfs");
    let lower_dir = fsdir.join("l");
    // Big enough not to be inlined in btrfs metadata; `small` is, and keeps
    // reading while the data blocks fail.
    let victim = pattern("victim", 256 << 10);
    let victim2 = pattern("victim2", 256 << 10);
    let victim3 = pattern("victim3", 256 << 10);
    let victim4 = pattern("victim4", 256 << 10);
    let lower = Layer::new("lower")
        .file("bad/victim", &victim)
        .file("bad/victim2", &victim2)
        .tagged("bad/small")
        .tagged("bad/sub/x")
        .tagged("bad/tree/a")
        .file("bad/tree/m", &victim3)
        .tagged("bad/tree/sub/z")
        .file("bad/hl1", &victim4)
        .link("bad/hl2", "bad/hl1");
    let rw = DevMount::new(&dev.dev, "btrfs", "", &fsdir);
    render(&lower, &lower_dir, Format::Kernel);
    let sums = checksum_layers(&[&lower_dir]);
    rw.umount();
    // Mounted again read-only: nothing of the files is in the page cache.
    let lower_fs = DevMount::new(&dev.dev, "btrfs", "ro", &fsdir);
    let top = Layer::new("top").tagged("good/b").tagged("bad/fromtop");
    let top_dir = t.join("top");
    render(&top, &top_dir, Format::Kernel);
    let upper = t.mkdir("upper");
    let work = t.join("work");
    let mnt = t.mkdir("mnt");
    // The OCI format, so that a directory rename copies its tree (and reads
    // every file of it).
    let args = ["--format", "oci"];
    let mut m = Some(mount_unionfs(
        &[&top_dir, &lower_dir],
        Some(&upper),
        Some(&work),
        &mnt,
        &args,
    ));
    let mut f = Vec::new();
    // An upper file, and `bad` already in the upper (so a copy-up there
    // needs no parent copied up).
    fs::write(mnt.join("up"), b"upper file").expect("create up");
    fs::write(mnt.join("bad/scratch"), b"x").expect("create bad/scratch");
    fs::remove_file(mnt.join("bad/scratch")).expect("rm bad/scratch");
    let walk_before = lstat_walk(&mnt);
    let upper_before = snapshot_full(&upper);

    // The data blocks of both victims go bad (every copy on the device).
    let mut bad = Vec::new();
    for (content, name) in [
        (&victim, "victim"),
        (&victim2, "victim2"),
        (&victim3, "victim3"),
        (&victim4, "victim4"),
    ] {
        let at = find_all(&image, &content[..64]);
        assert!(
            !at.is_empty(),
            "test setup: {name}'s data not found in the btrfs image"
        );
        bad.push((at, content[..64].to_vec()));
    }
    for (at, _) in &bad {
        poke(&image, at, &[b'X'; 64]);
    }

    let read_victim = || fs::read(mnt.join("bad/victim"));
    check_errno(
        read_victim(),
        libc::EIO,
        "reading bad/victim (EIO below)",
        &mut f,
    );
    check_errno(read_victim(), libc::EIO, "reading bad/victim again", &mut f);
    check_errno(
        fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("bad/victim2"))
            .map(drop),
        libc::EIO,
        "open bad/victim2 O_WRONLY (a copy-up that reads EIO)",
        &mut f,
    );
    check_errno(
        fs::set_permissions(mnt.join("bad/victim2"), fs::Permissions::from_mode(0o600)),
        libc::EIO,
        "chmod bad/victim2 (a copy-up that reads EIO)",
        &mut f,
    );
    // A hard-link copy-up (a write to one name of a file with two) that
    // reads EIO: both names stay the lower file, one inode.
    let hl_ino = lstat(&mnt.join("bad/hl1")).ino();
    check_errno(
        fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("bad/hl1"))
            .map(drop),
        libc::EIO,
        "open bad/hl1 O_WRONLY (a hard-link copy-up that reads EIO)",
        &mut f,
    );
    for p in ["bad/hl1", "bad/hl2"] {
        match fs::symlink_metadata(mnt.join(p)) {
            Ok(md) if md.ino() == hl_ino && md.nlink() == 2 && md.len() == 256 << 10 => {}
            Ok(md) => f.push(format!(
                "{p} after the failed hard-link copy-up: inode {} (was {hl_ino}), nlink {}, \
                 size {}",
                md.ino(),
                md.nlink(),
                md.len()
            )),
            Err(e) => f.push(format!("lstat {p} after the failed hard-link copy-up: {e}")),
        }
    }
    // The daemon keeps serving: the mount, other files of the failing
    // lower, the other lower, the upper.
    if !is_mounted(&mnt) {
        panic!("the mount is gone after a lower returned EIO");
    }
    if let Err(e) = sys::statvfs(&mnt) {
        f.push(format!("statfs of the mount after EIO: {e}"));
    }
    for (p, want) in [
        ("bad/small", tag("lower", "bad/small")),
        ("bad/sub/x", tag("lower", "bad/sub/x")),
        ("good/b", tag("top", "good/b")),
        ("bad/fromtop", tag("top", "bad/fromtop")),
        ("up", b"upper file".to_vec()),
    ] {
        match fs::read(mnt.join(p)) {
            Ok(got) if got == want => {}
            Ok(got) => f.push(format!("{p} while a lower fails: {:?}", show(&got))),
            Err(e) => f.push(format!("reading {p} while a lower fails: {e}")),
        }
    }
    let walk = lstat_walk(&mnt);
    if walk != walk_before {
        f.push(format!(
            "the merged view (lstat of every path) changed: {walk_before:?} -> {walk:?}"
        ));
    }
    // Nothing reached the upper, nothing is left in the work dir.
    f.extend(
        upper_before
            .diff(&snapshot_full(&upper), Fields::NONE)
            .into_iter()
            .map(|d| format!("upper changed by the failed reads and copy-ups: {d}")),
    );
    match fs::read_dir(work.join("tmp")) {
        Ok(rd) => {
            let left: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
            if !left.is_empty() {
                f.push(format!("work/tmp holds {left:?}"));
            }
        }
        Err(e) => f.push(format!("readdir work/tmp: {e}")),
    }
    // A directory rename whose tree copy meets the bad file fails with EIO
    // and shows nothing of the half-made copy.
    check_errno(
        fs::rename(mnt.join("bad/tree"), mnt.join("bad/tree2")),
        libc::EIO,
        "rename of a lower dir holding a file that reads EIO (OCI format: tree copy)",
        &mut f,
    );
    let walk = lstat_walk(&mnt);
    if walk != walk_before {
        f.push(format!(
            "the merged view changed after the failed rename: {walk_before:?} -> {walk:?}"
        ));
    }
    let marks = opaque_markers(&upper.join("bad/tree"));
    if !marks.is_empty() {
        f.push(format!("opaque markers after the failed rename: {marks:?}"));
    }
    expect_absent(&upper.join("bad/tree2"), "after the failed rename", &mut f);
    expect_absent(&upper.join("bad/tree/m"), "after the failed rename", &mut f);
    // And it takes writes.
    match fs::write(mnt.join("bad/new"), b"new") {
        Ok(()) => expect_content(&mnt.join("bad/new"), b"new", 0o644, "new file", &mut f),
        Err(e) => f.push(format!("creating bad/new while a lower fails: {e}")),
    }

    // The device reads again: after a remount everything reads.
    for (at, good) in &bad {
        poke(&image, at, good);
    }
    m.take().expect("mounted").umount();
    m = Some(mount_unionfs(
        &[&top_dir, &lower_dir],
        Some(&upper),
        Some(&work),
        &mnt,
        &args,
    ));
    if let Err(e) = fs::rename(mnt.join("bad/tree"), mnt.join("bad/tree2")) {
        f.push(format!("the rename once the device reads again: {e}"));
    }
    if let Err(e) = fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("bad/hl1"))
        .and_then(|fh| fh.write_all_at(b"CHANGED", 0))
    {
        f.push(format!(
            "the write to bad/hl1 once the device reads again: {e}"
        ));
    }
    let mut hl_want = victim4.clone();
    hl_want[..7].copy_from_slice(b"CHANGED");
    if lstat(&mnt.join("bad/hl2")).ino() != hl_ino {
        f.push("bad/hl2 is another inode than bad/hl1 after the copy-up".into());
    }
    for (p, want) in [
        ("bad/victim", victim.clone()),
        ("bad/victim2", victim2.clone()),
        ("bad/tree2/m", victim3.clone()),
        ("bad/hl2", hl_want.clone()),
        ("bad/tree2/a", tag("lower", "bad/tree/a")),
        ("bad/tree2/sub/z", tag("lower", "bad/tree/sub/z")),
        ("bad/small", tag("lower", "bad/small")),
        ("good/b", tag("top", "good/b")),
        ("up", b"upper file".to_vec()),
        ("bad/new", b"new".to_vec()),
    ] {
        match fs::read(mnt.join(p)) {
            Ok(got) if got == want => {}
            Ok(got) => f.push(format!(
                "{p} after the remount: {} bytes (fnv {:x}), expected {} (fnv {:x})",
                got.len(),
                fnv(&got),
                want.len(),
                fnv(&want)
            )),
            Err(e) => f.push(format!("reading {p} after the device recovered: {e}")),
        }
    }
    // Every file reads (a snapshot reads each one, and panics on an error);
    // the files are those of before, plus bad/new.
    let view = snapshot(&mnt);
    let before_files = walk_before
        .iter()
        .filter(|(_, kind, _)| *kind == format!("{:?}", FileType::File))
        .count();
    let now_files = view
        .nodes
        .values()
        .filter(|n| n.ftype == FileType::File)
        .count();
    if now_files != before_files + 1 {
        f.push(format!(
            "after the remount the view holds {now_files} files, expected {}",
            before_files + 1
        ));
    }
    match fs::metadata(mnt.join("bad/victim2")) {
        Ok(md) if md.mode() & 0o7777 == 0o644 => {}
        other => f.push(format!("bad/victim2 after the failed chmod: {other:?}")),
    }
    m.take().expect("mounted").umount();
    sums.assert_unchanged();
    drop(lower_fs);
    drop(dev);
    assert_no_failures("a lower that returns EIO", &f);
}

/// With one or two inodes left, an operation over a whiteout may get some
/// of its steps done before the upper runs out (a new object, then the
/// opaque marker, then the whiteout's removal): it either fails with ENOSPC
/// and the view is as before, or succeeds and the view is the new one:
/// never the lower object showing through, never half of it; the same
/// after a remount. Each case on a fresh upper.
#[test]
fn few_inodes_left_operations_over_whiteouts_are_all_or_nothing() {
    if !require_mount_env() {
        return;
    }
    let lower = Layer::new("lower")
        .tagged("w/gone")
        .tagged("w/gonedir/x")
        .tagged("w/ldir/q")
        .tagged("w/kept");
    type Op = (&'static str, fn(&Setup) -> io::Result<()>);
    let ops: [Op; 4] = [
        ("create w/gone over its whiteout", |s| {
            fs::write(s.at("w/gone"), b"new")
        }),
        ("mkdir w/gone over a file's whiteout", |s| {
            fs::create_dir(s.at("w/gone"))
        }),
        ("mkdir w/gonedir over a dir's whiteout", |s| {
            fs::create_dir(s.at("w/gonedir"))
        }),
        (
            "rename the lower dir w/ldir over the dir's whiteout w/gonedir",
            |s| fs::rename(s.at("w/ldir"), s.at("w/gonedir")),
        ),
    ];
    // What op `i` shows once done: the listing of the dir it changed (and
    // the new file's content).
    let done = |i: usize, s: &Setup, f: &mut Vec<String>, when: &str| {
        let list = |p: &str| -> Vec<String> {
            fs::read_dir(s.at(p))
                .map(|rd| {
                    let mut v: Vec<String> = rd
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    v.sort();
                    v
                })
                .unwrap_or_else(|e| vec![format!("<readdir {p}: {e}>")])
        };
        let (p, want): (&str, Vec<&str>) = match i {
            0 => {
                expect_content(&s.at("w/gone"), b"new", 0o644, when, f);
                ("w", vec!["gone", "kept", "ldir"])
            }
            1 => ("w/gone", vec![]),
            2 => ("w/gonedir", vec![]),
            _ => {
                expect_absent(&s.at("w/ldir"), when, f);
                ("w/gonedir", vec!["q"])
            }
        };
        let got = list(p);
        if got != want {
            f.push(format!("{when}: {p} lists {got:?}, expected {want:?}"));
        }
    };
    let mut f = Vec::new();
    for format in ["overlay", "oci"] {
        for leave in [1, 2] {
            for (i, (what, op)) in ops.iter().enumerate() {
                let what = format!("{what}, {leave} inode(s) left, --format {format}");
                let mut s = Setup::with_args(
                    "few-inodes",
                    &lower,
                    tmpfs_opts(Full::Inodes { leave }),
                    &["--format", format],
                );
                fs::remove_file(s.at("w/gone")).expect("rm w/gone");
                fs::remove_dir_all(s.at("w/gonedir")).expect("rm -r w/gonedir");
                let filler = fill(&s, Full::Inodes { leave });
                let before = snapshot(s.mnt().path());
                let r = op(&s);
                if let Err(e) = s.serving() {
                    panic!("{what}: the daemon stopped serving: {e}");
                }
                let after = match r {
                    Ok(()) => {
                        done(i, &s, &mut f, &what);
                        snapshot(s.mnt().path())
                    }
                    Err(e) => {
                        if e.raw_os_error() != Some(libc::ENOSPC) {
                            f.push(format!("{what}: failed with {e}, expected ENOSPC"));
                        }
                        let now = snapshot(s.mnt().path());
                        f.extend(
                            before
                                .diff(&now, same_view())
                                .into_iter()
                                .map(|d| format!("{what} (failed): {d}")),
                        );
                        before
                    }
                };
                let tmp = s.temporaries();
                if !tmp.is_empty() {
                    f.push(format!("{what}: work/tmp holds {tmp:?}"));
                }
                s.remount();
                f.extend(
                    after
                        .diff(&snapshot(s.mnt().path()), same_view())
                        .into_iter()
                        .map(|d| format!("{what}, after a remount: {d}")),
                );
                unfill(&filler);
                s.unmount();
                s.sums.assert_unchanged();
            }
        }
    }
    assert_no_failures("operations over whiteouts with few inodes left", &f);
}
