//! `mount -o remount,ro` and back through a real mount: mount(8) hands a
//! remount of a `fuse.unionfs` mount to the `mount.fuse.unionfs` helper,
//! which runs `unionfs -o remount,ro SOURCE MNT` (xfstests generic/294,
//! 306 and 452 remount their scratch mount read-only).

mod common;

use common::*;
use std::fs;
use std::io::Write;

/// `unionfs -o OPTS unionfs MNT`, the mount.fuse helper form.
fn helper(opts: &str, mnt: &std::path::Path) -> CmdOutput {
    unionfs([
        std::ffi::OsStr::new("-o"),
        std::ffi::OsStr::new(opts),
        std::ffi::OsStr::new("unionfs"),
        mnt.as_os_str(),
    ])
}

fn append(path: &std::path::Path, what: &[u8]) -> std::io::Result<()> {
    fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(what)
}

#[test]
fn remount_read_only_refuses_changes_and_back_read_write_allows_them() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("remount");
    let lower = t.mkdir("lower");
    fs::write(lower.join("f"), b"lower\n").unwrap();
    let upper = t.mkdir("upper");
    let mnt = t.mkdir("mnt");
    let sum = checksum_layers(&[&lower]);
    let m = mount_unionfs(&[&lower], Some(&upper), None, &mnt, &[]);
    let flags = |m: &std::path::Path| mount_at(m).expect("still mounted").mount_opts;
    let before = flags(&mnt);
    assert!(before.starts_with("rw"), "{before}");

    let out = helper("remount,ro", &mnt);
    assert!(out.success(), "{out}");
    let ro = flags(&mnt);
    assert!(ro.starts_with("ro"), "{ro}");
    // The mount's own flags survive (remount(2) would clear them).
    for keep in ["nosuid", "nodev"] {
        assert_eq!(before.contains(keep), ro.contains(keep), "{before} -> {ro}");
    }
    // Reads still served; every change refused, and none reached a layer.
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"lower\n");
    expect_errno(append(&mnt.join("f"), b"x"), libc::EROFS).unwrap();
    expect_errno(fs::write(mnt.join("new"), b"x"), libc::EROFS).unwrap();
    expect_errno(fs::remove_file(mnt.join("f")), libc::EROFS).unwrap();
    assert!(list(&upper).is_empty(), "upper: {:?}", list_str(&upper));

    let out = helper("remount,rw", &mnt);
    assert!(out.success(), "{out}");
    assert!(flags(&mnt).starts_with("rw"));
    append(&mnt.join("f"), b"upper\n").unwrap();
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"lower\nupper\n");
    assert_eq!(fs::read(upper.join("f")).unwrap(), b"lower\nupper\n");
    drop(m);
    sum.assert_unchanged();
}

#[test]
fn remount_of_a_plain_directory_says_it_is_no_mount_point() {
    let t = TestDir::new("remount-plain");
    let dir = t.mkdir("plain");
    let out = helper("remount,ro", &dir);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out}");
    assert!(out.stderr.contains("not a mount point"), "{out}");
}
