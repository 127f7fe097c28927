//! The flags of a real mount: a mount by root honours setuid bits and
//! device nodes as kernel overlayfs does, unless told `nosuid`/`nodev`;
//! and `mount -o remount,ro` and back: mount(8) hands a remount of a
//! `fuse.unionfs` mount to the `mount.fuse.unionfs` helper, which runs
//! `unionfs -o remount,ro SOURCE MNT` (xfstests generic/294, 306 and 452
//! remount their scratch mount read-only).

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

/// A device node made through a root mount works (xfstests generic/184
/// writes to a null device it makes), and the mount is not nosuid (a
/// container image's setuid `su` or `ping`); with `-o nodev,nosuid` both
/// are refused as asked.
#[test]
fn a_root_mount_honours_devices_and_setuid_unless_told_not_to() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("mount-flags");
    let lower = t.mkdir("lower");
    let sum = checksum_layers(&[&lower]);
    for (extra, honoured) in [(vec![], true), (vec!["-o", "nodev,nosuid"], false)] {
        let upper = t.mkdir(if honoured { "upper1" } else { "upper2" });
        let mnt = t.mkdir(if honoured { "mnt1" } else { "mnt2" });
        let m = mount_unionfs(&[&lower], Some(&upper), None, &mnt, &extra);
        let flags = mount_at(&mnt).expect("mounted").mount_opts;
        assert_eq!(!flags.contains("nosuid"), honoured, "{flags}");
        assert_eq!(!flags.contains("nodev"), honoured, "{flags}");
        let node = mnt.join("null");
        let made = run(
            std::process::Command::new("mknod")
                .arg(&node)
                .args(["c", "1", "3"]),
            std::time::Duration::from_secs(10),
        );
        assert!(made.success(), "{made}");
        let written = fs::OpenOptions::new().write(true).open(&node);
        // The device is the upper's, made as asked.
        let made = fs::symlink_metadata(upper.join("null")).expect("in the upper");
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(
            &made.file_type()
        ));
        if honoured {
            written.expect("a null device made in the mount opens");
        } else {
            expect_errno(written, libc::EACCES).unwrap();
        }
        drop(m);
    }
    sum.assert_unchanged();
}
