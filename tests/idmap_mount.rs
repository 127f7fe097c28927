//! Owner mapping through a real mount (`-o uidmapping=`, `gidmapping=`,
//! `squash_to_*`), as containers/storage uses it: the layers keep the
//! container's ids (0..), the mount shows the host's (100000..).
//!
//! Each test checks what a user sees through the mount, which ids land on
//! disk in the upper, and that the lowers are unchanged.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const L1: &str = "lower1";
const MAP: &str = "uidmapping=0:100000:65536,gidmapping=0:100000:65536";
/// Shown id of disk id 0.
const BASE: u32 = 100000;

/// Runs `script` with `sh -c` as `uid`:`uid`, no supplementary groups.
fn as_id(uid: u32, script: &str) -> CmdOutput {
    run(
        Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg("--")
            .args(["sh", "-c"])
            .arg(format!("umask 022; {script}")),
        Duration::from_secs(20),
    )
}

fn owner(path: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.gid())
}

/// A POSIX ACL xattr value (version 2) with `user` and `group` entries.
fn acl(user: u32, group: u32) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    let undefined = u32::MAX;
    for (tag, perm, id) in [
        (0x01u16, 6u16, undefined), // owner
        (0x02, 4, user),            // named user
        (0x04, 4, undefined),       // owning group
        (0x08, 4, group),           // named group
        (0x10, 4, undefined),       // mask
        (0x20, 0, undefined),       // other
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// The named user and group ids of an ACL value.
fn acl_ids(v: &[u8]) -> Vec<u32> {
    v[4..]
        .chunks(8)
        .filter(|e| matches!(u16::from_le_bytes([e[0], e[1]]), 0x02 | 0x08))
        .map(|e| u32::from_le_bytes([e[4], e[5], e[6], e[7]]))
        .collect()
}

#[test]
fn owners_map_both_ways_and_unmapped_ids_are_refused() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("idmap");
    let l1 = Layer::new(L1)
        .dir("etc")
        .owner(0, 0)
        .mode(0o755)
        .tagged("etc/conf")
        .owner(0, 0)
        .mode(0o644)
        .dir("home")
        .owner(1000, 1001)
        .tagged("far")
        .owner(70000, 70001)
        .mode(0o666)
        .tagged("acl")
        .owner(0, 0)
        .xattr("system.posix_acl_access", acl(5, 6));
    let lowers = render_stack(&[l1], t.path(), Format::Kernel);
    let upper = t.mkdir("upper");
    let work = t.join("work");
    let mnt = t.mkdir("mnt");
    let sum = checksum_layers(&as_paths(&lowers));
    let m = mount_unionfs(
        &as_paths(&lowers),
        Some(&upper),
        Some(&work),
        &mnt,
        &["-o", MAP],
    );

    // Reading: disk ids shift; one outside every range shows as overflow.
    assert_eq!(owner(&m.join("etc/conf")), (BASE, BASE));
    assert_eq!(owner(&m.join("home")), (BASE + 1000, BASE + 1001));
    assert_eq!(owner(&m.join("far")), (65534, 65534));
    // The root is the upper dir, root's on disk.
    assert_eq!(owner(m.path()), (BASE, BASE));

    // A create by the shown root lands as disk root; a copy-up by it keeps
    // the disk ids of the lower object (and of its copied-up parent).
    let out = as_id(
        BASE,
        &format!(
            "echo new > {0}/etc/new && echo more >> {0}/etc/conf && mkdir {0}/etc/d",
            m.path().display()
        ),
    );
    assert!(out.success(), "{out}");
    assert_eq!(owner(&upper.join("etc/new")), (0, 0));
    assert_eq!(owner(&upper.join("etc/d")), (0, 0));
    assert_eq!(owner(&upper.join("etc/conf")), (0, 0));
    assert_eq!(owner(&upper.join("etc")), (0, 0));
    assert_eq!(owner(&m.join("etc/new")), (BASE, BASE));
    assert_eq!(
        read(&m.join("etc/conf")),
        [tag(L1, "etc/conf"), b"more\n".to_vec()].concat()
    );

    // chown maps; an id with no place on disk is refused.
    std::os::unix::fs::chown(m.join("etc/new"), Some(BASE + 1234), Some(BASE + 5)).unwrap();
    assert_eq!(owner(&upper.join("etc/new")), (1234, 5));
    assert_eq!(owner(&m.join("etc/new")), (BASE + 1234, BASE + 5));
    for (uid, gid) in [
        (Some(5), None),
        (None, Some(BASE + 65536)),
        (Some(0), Some(0)),
    ] {
        let r = std::os::unix::fs::chown(m.join("etc/new"), uid, gid);
        assert_eq!(
            errno_of(&r),
            Some(libc::EINVAL),
            "chown {uid:?}:{gid:?}: {r:?}"
        );
    }
    assert_eq!(owner(&upper.join("etc/new")), (1234, 5));

    // A caller with no id on disk (the host's root, as podman filling in
    // /etc/mtab) creates as the overflow id, as fuse-overlayfs does; a file
    // owned by an unmapped id cannot be chmod'ed by the mapped root.
    fs::write(m.join("byroot"), b"x").unwrap();
    assert_eq!(owner(&upper.join("byroot")), (65534, 65534));
    assert_eq!(owner(&m.join("byroot")), (BASE + 65534, BASE + 65534));
    let out = as_id(BASE + 1, &format!("echo x >> {}/far", m.path().display()));
    assert!(out.success(), "mode 0666 lets anyone write: {out}");
    let out = as_id(BASE, &format!("chmod 600 {}/far", m.path().display()));
    assert!(
        !out.success(),
        "chmod of a file owned by overflow id: {out}"
    );
    assert_eq!(
        owner(&upper.join("far")),
        (70000, 70001),
        "copy-up kept disk ids"
    );

    // ACL entries name owners too: mapped when read, and when written.
    let shown = sys::lgetxattr(&m.join("acl"), b"system.posix_acl_access").unwrap();
    assert_eq!(acl_ids(&shown), vec![BASE + 5, BASE + 6]);
    sys::lsetxattr(
        &m.join("etc/new"),
        b"system.posix_acl_access",
        &acl(BASE + 7, BASE + 8),
    )
    .unwrap();
    let disk = sys::lgetxattr(&upper.join("etc/new"), b"system.posix_acl_access").unwrap();
    assert_eq!(acl_ids(&disk), vec![7, 8]);
    let back = sys::lgetxattr(&m.join("etc/new"), b"system.posix_acl_access").unwrap();
    assert_eq!(acl_ids(&back), vec![BASE + 7, BASE + 8]);
    let r = sys::lsetxattr(
        &m.join("etc/new"),
        b"system.posix_acl_access",
        &acl(7, BASE),
    );
    assert_eq!(errno_of(&r), Some(libc::EINVAL), "{r:?}");
    // A copy-up copies the stored ACL as it is (disk ids).
    sys::lsetxattr(&m.join("acl"), b"user.x", b"1").unwrap();
    let disk = sys::lgetxattr(&upper.join("acl"), b"system.posix_acl_access").unwrap();
    assert_eq!(acl_ids(&disk), vec![5, 6]);

    m.umount();
    sum.assert_unchanged();
}

#[test]
fn squash_shows_one_owner_and_writes_the_callers() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("squash");
    let l1 = Layer::new(L1)
        .dir("pub")
        .owner(0, 0)
        .mode(0o777)
        .tagged("a")
        .owner(1000, 1001);
    let lowers = render_stack(&[l1], t.path(), Format::Kernel);
    let upper = t.mkdir("upper");
    let work = t.join("work");
    let mnt = t.mkdir("mnt");
    let sum = checksum_layers(&as_paths(&lowers));
    let m = mount_unionfs(
        &as_paths(&lowers),
        Some(&upper),
        Some(&work),
        &mnt,
        &["-o", "squash_to_root,squash_to_gid=42"],
    );
    assert_eq!(owner(&m.join("a")), (0, 42));
    assert_eq!(owner(&m.join("pub")), (0, 42));
    let out = as_id(1000, &format!("echo x > {}/pub/mine", m.path().display()));
    assert!(out.success(), "{out}");
    assert_eq!(owner(&upper.join("pub/mine")), (1000, 1000));
    assert_eq!(owner(&m.join("pub/mine")), (0, 42));
    m.umount();
    sum.assert_unchanged();
}

#[test]
fn containers_storage_option_string_mounts() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("idmap-cs");
    let l1 = Layer::new(L1).tagged("etc/conf").owner(0, 0);
    let lowers = render_stack(&[l1], t.path(), Format::Kernel);
    let upper = t.mkdir("upper");
    let work = t.join("work");
    let mnt = t.mkdir("mnt");
    let sum = checksum_layers(&as_paths(&lowers));
    // As containers/storage runs its mount_program: `PROGRAM -o DATA MNT`,
    // with a leading-colon mapping, a quoted SELinux context holding a
    // comma, an empty element and volatile.
    let m = mount_unionfs_form(
        Form::DashO,
        &as_paths(&lowers),
        Some(&upper),
        Some(&work),
        &mnt,
        &[
            "-o",
            "uidmapping=:0:100000:65536,gidmapping=0:100000:1:1:200001:65535,\
             context=\"system_u:object_r:container_file_t:s0:c1,c2\",,volatile",
        ],
    );
    assert_eq!(owner(&m.join("etc/conf")), (BASE, BASE));
    let out = as_id(
        BASE,
        &format!(
            "echo x >> {}/etc/conf && sync {0}/etc/conf",
            m.path().display()
        ),
    );
    assert!(out.success(), "{out}");
    assert_eq!(owner(&upper.join("etc/conf")), (0, 0));
    std::os::unix::fs::chown(m.join("etc/conf"), None, Some(200001)).unwrap();
    assert_eq!(owner(&upper.join("etc/conf")), (0, 1));
    m.umount();
    sum.assert_unchanged();
}
