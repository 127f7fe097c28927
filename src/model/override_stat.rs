//! Forced permissions (fuse-overlayfs `xattr_permissions=`): owner, mode
//! and type kept in an xattr instead of in the inode, for layers written by
//! someone who could not chown (rootless containers/storage) or a daemon
//! that cannot.
//!
//! The value is containers/storage's: `UID:GID:MODE[:TYPE]`, MODE in octal
//! with the setuid/setgid/sticky bits, TYPE one of `file`, `dir`,
//! `symlink`, `pipe`, `socket`, `block-MAJ-MIN`, `char-MAJ-MIN` (so an
//! empty regular file can stand for a device). Three names exist; each
//! layer uses the one its root carries (as fuse-overlayfs decides per
//! layer), and the upper the one `xattr_permissions=` names when its root
//! carries none.
//!
//! Parsing and formatting, and which name each layer uses
//! ([`ForcedNames`], probed once at mount); `ops` reads and writes the
//! xattrs.

use std::ffi::OsStr;

use crate::model::layer::{LayerId, LayerStack, INDEX, UPPER};
use crate::sys;

/// `xattr_permissions=1`: only root may write it.
pub const PRIVILEGED: &str = "security.fuseoverlayfs.override_stat";
/// `xattr_permissions=2`, and what containers/storage writes rootless.
pub const CONTAINERS: &str = "user.containers.override_stat";
/// fuse-overlayfs's older unprivileged name.
pub const USER: &str = "user.fuseoverlayfs.override_stat";

/// Every name, in the order a layer root is probed.
pub const NAMES: [&str; 3] = [PRIVILEGED, CONTAINERS, USER];

/// The xattr `xattr_permissions=N` writes in the upper: `None` for 0.
pub fn name_for_option(n: u8) -> Option<&'static str> {
    match n {
        1 => Some(PRIVILEGED),
        2 => Some(CONTAINERS),
        _ => None,
    }
}

/// With forced permissions an object's access ACL lives in a private xattr
/// next to its override, never on the inode: on the inode, its owner entry
/// and mask would rewrite the real mode the daemon needs for its own access
/// (a 0600 directory given `u:ID:r` would lose the daemon's search right),
/// and the kernel would check access against an ACL that follows the real
/// mode instead of the shown one. Under `user.unionfs.` beside a `user.`
/// override, `trusted.unionfs.` beside the privileged one: private names,
/// hidden and refused through the mount as every `*.unionfs.` name is.
pub const ACL_USER: &str = "user.unionfs.posix_acl_access";
/// The private access ACL beside a `security.` override.
pub const ACL_TRUSTED: &str = "trusted.unionfs.posix_acl_access";

/// The xattr an object whose override is named `override_name` keeps its
/// access ACL in.
pub fn acl_name_for(override_name: &str) -> &'static str {
    if override_name.starts_with("security.") {
        ACL_TRUSTED
    } else {
        ACL_USER
    }
}

/// True for a private access ACL name: it shows as `system.posix_acl_access`.
pub fn is_acl_name(name: &[u8]) -> bool {
    name == ACL_USER.as_bytes() || name == ACL_TRUSTED.as_bytes()
}

/// True for an override name: never shown, never set through the mount
/// (it would let a user forge an owner).
pub fn is_override_name(name: &[u8]) -> bool {
    NAMES.iter().any(|n| n.as_bytes() == name)
}

/// What an override says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forced {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits, setuid/setgid/sticky included.
    pub perm: u32,
    /// `S_IFMT` bits and device number, when the value names a type.
    pub kind: Option<(u32, u64)>,
}

fn makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xfff) << 8) | ((major & !0xfff) << 32) | (minor & 0xff) | ((minor & !0xff) << 12)
}

fn parse_device(rest: &str) -> Option<u64> {
    // `-MAJ-MIN`; more parts are ignored, as containers/storage does, to
    // stay compatible with later additions.
    let mut parts = rest.strip_prefix('-')?.split('-');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some(makedev(major, minor))
}

/// Parses a value; `None` for a malformed one (the object then shows its
/// real attributes, as fuse-overlayfs does).
pub fn parse(value: &[u8]) -> Option<Forced> {
    let text = std::str::from_utf8(value).ok()?.trim_end_matches('\0');
    let mut parts = text.splitn(4, ':');
    let uid = parts.next()?.parse().ok()?;
    let gid = parts.next()?.parse().ok()?;
    let perm = u32::from_str_radix(parts.next()?, 8).ok()?;
    if perm > 0o7777 {
        return None;
    }
    let kind = match parts.next() {
        None => None,
        Some(t) => Some(if t.starts_with("file") {
            (libc::S_IFREG, 0)
        } else if t.starts_with("dir") {
            (libc::S_IFDIR, 0)
        } else if t.starts_with("symlink") {
            (libc::S_IFLNK, 0)
        } else if t.starts_with("pipe") {
            (libc::S_IFIFO, 0)
        } else if t.starts_with("socket") {
            (libc::S_IFSOCK, 0)
        } else if let Some(rest) = t.strip_prefix("block") {
            (libc::S_IFBLK, parse_device(rest)?)
        } else if let Some(rest) = t.strip_prefix("char") {
            (libc::S_IFCHR, parse_device(rest)?)
        } else {
            return None;
        }),
    };
    Some(Forced {
        uid,
        gid,
        perm,
        kind,
    })
}

/// Formats a value for an object of type `mode & S_IFMT` (device `rdev`).
pub fn format(f: &Forced, mode: u32, rdev: u64) -> String {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    let kind = match mode & libc::S_IFMT {
        libc::S_IFDIR => "dir".to_owned(),
        libc::S_IFLNK => "symlink".to_owned(),
        libc::S_IFIFO => "pipe".to_owned(),
        libc::S_IFSOCK => "socket".to_owned(),
        libc::S_IFBLK => format!("block-{major}-{minor}"),
        libc::S_IFCHR => format!("char-{major}-{minor}"),
        _ => "file".to_owned(),
    };
    format!("{}:{}:{:04o}:{kind}", f.uid, f.gid, f.perm & 0o7777)
}

/// What an object shows with override `f`: its owner, permission bits and
/// (when named) type replaced.
pub fn apply(f: &Forced, st: &mut libc::stat) {
    st.st_uid = f.uid;
    st.st_gid = f.gid;
    let kind = match f.kind {
        Some((kind, rdev)) => {
            if matches!(kind, libc::S_IFBLK | libc::S_IFCHR) {
                st.st_rdev = rdev;
            }
            kind
        }
        None => st.st_mode & libc::S_IFMT,
    };
    st.st_mode = kind | (f.perm & 0o7777);
}

/// The override of an object as it shows now (`st`, real or already
/// overridden), for a chown/chmod to change.
pub fn of_stat(st: &libc::stat) -> Forced {
    Forced {
        uid: st.st_uid,
        gid: st.st_gid,
        perm: st.st_mode & 0o7777,
        kind: None,
    }
}

/// The real permission bits of an object whose shown mode is `perm`: what
/// it shows for its owner, at least read/write (and search, for a
/// directory) for the daemon that owns it, and no setuid/setgid/sticky
/// bits (the real owner is not the shown one).
pub fn real_perm(perm: u32, is_dir: bool) -> u32 {
    let own = if is_dir { 0o700 } else { 0o600 };
    (perm & 0o777) | own
}

/// Which override xattr each layer uses (index = layer id, 0 the upper);
/// empty when no layer uses one.
#[derive(Debug, Clone, Default)]
pub struct ForcedNames(Vec<Option<&'static str>>);

impl ForcedNames {
    /// Probes each layer root for an override xattr, as fuse-overlayfs
    /// does; the upper falls back to the one `xattr_permissions=N` names.
    pub fn probe(layers: &LayerStack, option: u8) -> ForcedNames {
        let mut names = Vec::new();
        for id in layers.all_ids() {
            let Ok(layer) = layers.get(id) else { continue };
            let on_root = NAMES
                .into_iter()
                .find(|n| matches!(sys::fgetxattr(layer.root(), OsStr::new(n)), Ok(Some(_))));
            let name = match (on_root, id) {
                (Some(n), _) => Some(n),
                (None, UPPER) if layer.is_upper() => name_for_option(option),
                _ => None,
            };
            let i = usize::from(id);
            if names.len() <= i {
                names.resize(i + 1, None);
            }
            names[i] = name;
        }
        if names.iter().all(Option::is_none) {
            names.clear();
        }
        ForcedNames(names)
    }

    pub fn is_off(&self) -> bool {
        self.0.is_empty()
    }

    /// The name objects in `layer` keep their override in.
    pub fn of(&self, layer: LayerId) -> Option<&'static str> {
        let layer = if layer == INDEX { UPPER } else { layer };
        self.0.get(usize::from(layer)).copied().flatten()
    }

    /// The private name objects in `layer` keep their access ACL in.
    pub fn acl_of(&self, layer: LayerId) -> Option<&'static str> {
        self.of(layer).map(acl_name_for)
    }
}

/// Only regular files and directories carry overrides (a device or symlink
/// cannot hold a user xattr; containers/storage stores a rootless device as
/// a file with a `char-M-m` override).
/// `kind` is the type bits (`S_IFMT`) of a mode.
pub fn may_carry(kind: u32) -> bool {
    matches!(kind, libc::S_IFREG | libc::S_IFDIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real `stat` (of "/", libc::stat has no Default) made over.
    fn stat(mode: u32) -> libc::stat {
        use std::os::fd::AsFd;
        let root = std::fs::File::open("/").unwrap();
        let mut st = crate::sys::fstat(root.as_fd()).unwrap();
        st.st_mode = mode;
        st.st_uid = 1000;
        st.st_gid = 1000;
        st.st_rdev = 0;
        st
    }

    #[test]
    fn parses_the_containers_storage_forms() {
        assert_eq!(
            parse(b"0:0:755"),
            Some(Forced {
                uid: 0,
                gid: 0,
                perm: 0o755,
                kind: None
            })
        );
        assert_eq!(
            parse(b"1000:100:4755:file"),
            Some(Forced {
                uid: 1000,
                gid: 100,
                perm: 0o4755,
                kind: Some((libc::S_IFREG, 0))
            })
        );
        assert_eq!(
            parse(b"0:0:0755:dir").unwrap().kind,
            Some((libc::S_IFDIR, 0))
        );
        let dev = parse(b"0:6:0660:char-1-3").unwrap().kind.unwrap();
        assert_eq!(dev.0, libc::S_IFCHR);
        assert_eq!(dev.1, makedev(1, 3));
        assert_eq!(
            parse(b"0:0:0660:block-8-0-extra").unwrap().kind.unwrap().0,
            libc::S_IFBLK
        );
        for bad in [
            &b"0:0"[..],
            b"a:0:755",
            b"0:0:999",
            b"0:0:755:weird",
            b"0:0:660:char-x-1",
            b"0:0:17777",
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn formats_what_it_parses() {
        let f = Forced {
            uid: 5,
            gid: 6,
            perm: 0o2755,
            kind: None,
        };
        assert_eq!(format(&f, libc::S_IFDIR, 0), "5:6:2755:dir");
        assert_eq!(format(&f, libc::S_IFREG, 0), "5:6:2755:file");
        let v = format(&f, libc::S_IFCHR, makedev(10, 229));
        assert_eq!(v, "5:6:2755:char-10-229");
        assert_eq!(
            parse(v.as_bytes()).unwrap().kind,
            Some((libc::S_IFCHR, makedev(10, 229)))
        );
    }

    #[test]
    fn applies_owner_mode_and_type() {
        let mut st = stat(libc::S_IFREG | 0o600);
        apply(&parse(b"0:0:4755").unwrap(), &mut st);
        assert_eq!(
            (st.st_uid, st.st_gid, st.st_mode),
            (0, 0, libc::S_IFREG | 0o4755)
        );
        let mut st = stat(libc::S_IFREG | 0o600);
        apply(&parse(b"0:5:0620:char-4-1").unwrap(), &mut st);
        assert_eq!(st.st_mode, libc::S_IFCHR | 0o620);
        assert_eq!(st.st_rdev, makedev(4, 1));
        assert_eq!(of_stat(&st).perm, 0o620);
    }

    #[test]
    fn names_and_real_modes() {
        assert_eq!(name_for_option(0), None);
        assert_eq!(name_for_option(1), Some(PRIVILEGED));
        assert_eq!(name_for_option(2), Some(CONTAINERS));
        assert!(NAMES.iter().all(|n| is_override_name(n.as_bytes())));
        assert!(!is_override_name(b"user.x"));
        assert_eq!(acl_name_for(PRIVILEGED), ACL_TRUSTED);
        assert_eq!(acl_name_for(CONTAINERS), ACL_USER);
        assert_eq!(acl_name_for(USER), ACL_USER);
        assert!(is_acl_name(ACL_USER.as_bytes()) && !is_acl_name(b"system.posix_acl_access"));
        assert_eq!(real_perm(0o4755, false), 0o755);
        assert_eq!(real_perm(0o000, false), 0o600);
        assert_eq!(real_perm(0o000, true), 0o700);
    }
}
