//! Forced permissions through a real mount (`-o xattr_permissions=`): owner,
//! mode and type read from `user.containers.override_stat` (as rootless
//! containers/storage writes layers) and written there for new and
//! changed objects in the upper, the inode keeping the daemon's owner.
//!
//! Each test checks what a user sees, what lands in the upper (inode and
//! xattr), and that the lowers are unchanged.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const L1: &str = "lower1";
const XATTR: &str = "user.containers.override_stat";

/// `l1` rendered as the one lower, its root marked as containers/storage
/// marks a layer written with forced permissions, mounted with
/// `-o xattr_permissions=2` over a new upper.
struct Forced {
    upper: PathBuf,
    sum: LayerChecksum,
    m: Mount,
}

fn mount_forced(t: &TestDir, l1: Layer) -> Forced {
    let lowers = render_stack(&[l1], t.path(), Format::Kernel);
    sys::lsetxattr(&lowers[0], XATTR.as_bytes(), b"0:0:0755:dir").unwrap();
    let upper = t.mkdir("upper");
    let sum = checksum_layers(&as_paths(&lowers));
    let m = mount_unionfs(
        &as_paths(&lowers),
        Some(&upper),
        Some(&t.join("work")),
        &t.mkdir("mnt"),
        &["-o", "xattr_permissions=2"],
    );
    Forced { upper, sum, m }
}

fn st(path: &Path) -> fs::Metadata {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn override_of(path: &Path) -> String {
    let v = sys::lgetxattr(path, XATTR.as_bytes())
        .unwrap_or_else(|e| panic!("{}: {XATTR}: {e}", path.display()));
    String::from_utf8(v).unwrap()
}

#[test]
fn overrides_are_shown_hidden_and_written() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("forced");
    let l1 = Layer::new(L1)
        .dir("bin")
        .xattr(XATTR, "0:0:0755:dir")
        .tagged("bin/su")
        .owner(1000, 1000)
        .mode(0o644)
        .xattr(XATTR, "0:0:4755:file")
        .file("dev-null", "")
        .owner(1000, 1000)
        .mode(0o600)
        .xattr(XATTR, "0:0:0666:char-1-3")
        .dir("pub")
        .owner(1000, 1000)
        .mode(0o700)
        .xattr(XATTR, "0:0:0777:dir")
        .tagged("plain")
        .owner(1000, 1001)
        .mode(0o640);
    let Forced { upper, sum, m } = mount_forced(&t, l1);

    // Read: owner, mode and type from the override.
    let su = st(&m.join("bin/su"));
    assert_eq!(
        (su.uid(), su.gid(), su.mode()),
        (0, 0, libc::S_IFREG | 0o4755)
    );
    let dev = st(&m.join("dev-null"));
    assert!(dev.file_type().is_char_device(), "{:o}", dev.mode());
    assert_eq!(
        (dev.mode() & 0o7777, dev.rdev()),
        (0o666, sys::makedev(1, 3))
    );
    let plain = st(&m.join("plain"));
    assert_eq!(
        (plain.uid(), plain.gid(), plain.mode() & 0o7777),
        (1000, 1001, 0o640)
    );
    let pubd = st(&m.join("pub"));
    assert_eq!((pubd.uid(), pubd.mode() & 0o7777), (0, 0o777));

    // The override is the union's: not listed, not readable, not settable.
    let names = sys::llistxattr(&m.join("bin/su")).unwrap();
    assert!(!names.iter().any(|n| n == XATTR.as_bytes()), "{names:?}");
    let r = sys::lgetxattr(&m.join("bin/su"), XATTR.as_bytes());
    assert_eq!(errno_of(&r), Some(libc::ENODATA), "{r:?}");
    let r = sys::lsetxattr(&m.join("plain"), XATTR.as_bytes(), b"0:0:4777");
    assert_eq!(errno_of(&r), Some(libc::EPERM), "{r:?}");

    // chown: the copy-up keeps the lower's override, the change goes into
    // it, the inode keeps its real owner and mode.
    std::os::unix::fs::lchown(m.join("bin/su"), Some(123), Some(456)).unwrap();
    let su = st(&m.join("bin/su"));
    assert_eq!((su.uid(), su.gid()), (123, 456));
    let real = st(&upper.join("bin/su"));
    assert_eq!(
        (real.uid(), real.gid(), real.mode() & 0o7777),
        (1000, 1000, 0o644)
    );
    let o = override_of(&upper.join("bin/su"));
    assert!(o.starts_with("123:456:") && o.ends_with(":file"), "{o}");
    assert_eq!(o, format!("123:456:{:04o}:file", su.mode() & 0o7777));
    assert_eq!(override_of(&upper.join("bin")), "0:0:0755:dir");

    // chmod of an object without an override starts one from its inode.
    fs::set_permissions(m.join("plain"), fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(st(&m.join("plain")).mode() & 0o7777, 0o700);
    assert_eq!(st(&upper.join("plain")).mode() & 0o7777, 0o640);
    assert_eq!(override_of(&upper.join("plain")), "1000:1001:0700:file");

    // A create by uid 1000: the inode is the daemon's, the override the
    // caller's; kernel permission checks use what the override shows.
    let out = run(
        Command::new("setpriv")
            .args(["--reuid=1000", "--regid=1000", "--clear-groups", "--"])
            .args(["sh", "-c"])
            .arg(format!(
                "umask 022; echo mine > {0}/pub/mine && mkdir {0}/pub/d",
                m.path().display()
            )),
        Duration::from_secs(20),
    );
    assert!(out.success(), "{out}");
    let mine = st(&m.join("pub/mine"));
    assert_eq!(
        (mine.uid(), mine.gid(), mine.mode() & 0o7777),
        (1000, 1000, 0o644)
    );
    assert_eq!(st(&upper.join("pub/mine")).uid(), 0);
    assert_eq!(override_of(&upper.join("pub/mine")), "1000:1000:0644:file");
    assert_eq!(override_of(&upper.join("pub/d")), "1000:1000:0755:dir");
    assert_eq!(st(&upper.join("pub/d")).mode() & 0o7777, 0o755);
    assert_eq!(read(&m.join("pub/mine")), b"mine\n");

    m.umount();
    sum.assert_unchanged();
}

#[test]
fn hard_links_share_their_override_after_copy_up() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("forced-links");
    let l1 = Layer::new(L1)
        .tagged("a")
        .owner(1000, 1000)
        .mode(0o644)
        .xattr(XATTR, "0:0:0700:file")
        .link("b", "a");
    let Forced { upper, sum, m } = mount_forced(&t, l1);
    assert_eq!(st(&m.join("b")).mode() & 0o7777, 0o700);
    fs::set_permissions(m.join("a"), fs::Permissions::from_mode(0o750)).unwrap();
    for name in ["a", "b"] {
        let s = st(&m.join(name));
        assert_eq!(
            (s.uid(), s.mode() & 0o7777, s.nlink()),
            (0, 0o750, 2),
            "{name}"
        );
    }
    assert_eq!(override_of(&upper.join("a")), "0:0:0750:file");
    m.umount();
    sum.assert_unchanged();
}

/// An access ACL in xattr format: (tag, perm, id) entries.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

const NO_ID: u32 = u32::MAX;
const ACCESS: &str = "system.posix_acl_access";
const PRIVATE_ACL: &str = "user.unionfs.posix_acl_access";

/// Access ACLs of a forced lower: a real one (written by another tool)
/// shows with the owner, mask and other entries of the shown mode, as a
/// chmod to it would leave it; a private one (an earlier unionfs upper)
/// shows as it is. Copy-up moves or carries each into the upper's private
/// xattr, and a chmod changes it there; nothing goes onto the inode.
#[test]
fn a_forced_lowers_acls_show_fitted_to_the_shown_mode() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("forced-acl");
    let real_acl = acl(&[
        (0x01, 6, NO_ID),
        (0x02, 4, 1234),
        (0x04, 4, NO_ID),
        (0x10, 4, NO_ID),
        (0x20, 4, NO_ID),
    ]);
    let kept_acl = acl(&[
        (0x01, 6, NO_ID),
        (0x02, 4, 1234),
        (0x04, 0, NO_ID),
        (0x10, 4, NO_ID),
        (0x20, 0, NO_ID),
    ]);
    let l1 = Layer::new(L1)
        .tagged("real")
        .owner(1000, 1000)
        .mode(0o644)
        .xattr(XATTR, "0:0:0600:file")
        .xattr(ACCESS, &real_acl)
        .tagged("kept")
        .owner(1000, 1000)
        .mode(0o600)
        .xattr(XATTR, "0:0:0640:file")
        .xattr(PRIVATE_ACL, &kept_acl);
    let Forced { upper, sum, m } = mount_forced(&t, l1);
    let shown = |name: &str| sys::lgetxattr(&m.join(name), ACCESS.as_bytes()).unwrap();
    // 0600 shown: the mask and other entries are the mode's, the named
    // entry stays
    assert_eq!(st(&m.join("real")).mode() & 0o7777, 0o600);
    let fitted = acl(&[
        (0x01, 6, NO_ID),
        (0x02, 4, 1234),
        (0x04, 4, NO_ID),
        (0x10, 0, NO_ID),
        (0x20, 0, NO_ID),
    ]);
    assert_eq!(shown("real"), fitted);
    assert_eq!(st(&m.join("kept")).mode() & 0o7777, 0o640);
    assert_eq!(shown("kept"), kept_acl);
    let names = sys::llistxattr(&m.join("kept")).unwrap();
    assert!(names.iter().any(|n| n == ACCESS.as_bytes()), "{names:?}");
    assert!(
        !names.iter().any(|n| n == PRIVATE_ACL.as_bytes()),
        "{names:?}"
    );

    // copy-up by chmod and chown
    fs::set_permissions(m.join("real"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::lchown(m.join("kept"), Some(5), None).unwrap();
    let chmodded = acl(&[
        (0x01, 6, NO_ID),
        (0x02, 4, 1234),
        (0x04, 4, NO_ID),
        (0x10, 4, NO_ID),
        (0x20, 0, NO_ID),
    ]);
    assert_eq!(shown("real"), chmodded);
    assert_eq!(shown("kept"), kept_acl);
    for (name, want) in [("real", &chmodded), ("kept", &kept_acl)] {
        let p = upper.join(name);
        let r = sys::lgetxattr(&p, ACCESS.as_bytes());
        assert_eq!(errno_of(&r), Some(libc::ENODATA), "{name}: {r:?}");
        assert_eq!(
            &sys::lgetxattr(&p, PRIVATE_ACL.as_bytes()).unwrap(),
            want,
            "{name}"
        );
    }
    m.umount();
    sum.assert_unchanged();
}
