//! POSIX ACL inheritance for objects made in the upper. A new object is
//! built in the work dir, whose filesystem knows nothing of the directory
//! it will land in, so the inheritance the kernel does for a plain create
//! (`posix_acl_create`) is done here: the parent's default ACL, masked by
//! the create mode, becomes the object's access ACL, and a new directory
//! inherits the default ACL itself. Also: the mode an access ACL that is
//! only a mode stands for (kept in the override with forced permissions).

/// The xattr of a directory's default ACL.
pub const DEFAULT_XATTR: &str = "system.posix_acl_default";
/// The xattr of an object's access ACL.
pub const ACCESS_XATTR: &str = "system.posix_acl_access";

const VERSION: u32 = 2;
const HEADER: usize = 4;
const ENTRY: usize = 8;
const USER_OBJ: u16 = 0x01;
const GROUP_OBJ: u16 = 0x04;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// What an object made with `mode` under a default ACL gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inherited {
    /// The mode to give it: the permission bits the ACL leaves, with the
    /// special bits of `mode`.
    pub mode: u32,
    /// Its access ACL, when the mode alone cannot say it (named users or
    /// groups, a mask).
    pub access: Option<Vec<u8>>,
}

/// The permission bits of an access ACL (xattr format) that holds only
/// the owner, owning group and other entries, which is a mode and nothing
/// more (`chacl u::r--,g::rwx,o::rw-`); `None` for any other ACL.
pub fn minimal_mode(acl: &[u8]) -> Option<u32> {
    if acl.len() != HEADER + 3 * ENTRY
        || u32::from_le_bytes(acl[..HEADER].try_into().ok()?) != VERSION
    {
        return None;
    }
    let (mut user, mut group, mut other) = (None, None, None);
    for entry in acl[HEADER..].chunks_exact(ENTRY) {
        let perm = u32::from(u16::from_le_bytes([entry[2], entry[3]]) & 7);
        match u16::from_le_bytes([entry[0], entry[1]]) {
            USER_OBJ => user = Some(perm),
            GROUP_OBJ => group = Some(perm),
            OTHER => other = Some(perm),
            _ => return None,
        }
    }
    Some((user? << 6) | (group? << 3) | other?)
}

/// The inheritance of `default` (a parent's default ACL, xattr format) by
/// an object made with `mode`, as Linux's `posix_acl_create`: the owner,
/// group-class (the mask if there is one, else the owning group) and other
/// entries keep only the permissions `mode` grants. `None` for a value that
/// is not an ACL (it is then ignored, as an unreadable one would be).
pub fn inherit(default: &[u8], mode: u32) -> Option<Inherited> {
    if default.len() < HEADER || (default.len() - HEADER) % ENTRY != 0 {
        return None;
    }
    if u32::from_le_bytes(default[..HEADER].try_into().ok()?) != VERSION {
        return None;
    }
    let mut acl = default.to_vec();
    let (mut user, mut group, mut other, mut mask) = (None, None, None, None);
    let mut extended = false;
    for (i, entry) in acl[HEADER..].chunks_exact(ENTRY).enumerate() {
        match u16::from_le_bytes([entry[0], entry[1]]) {
            USER_OBJ => user = Some(i),
            GROUP_OBJ => group = Some(i),
            OTHER => other = Some(i),
            MASK => mask = Some(i),
            _ => extended = true,
        }
    }
    let (user, group, other) = (user?, group?, other?);
    let mut perm_and = |i: usize, bits: u32| -> u32 {
        let at = HEADER + i * ENTRY + 2;
        let perm = u16::from_le_bytes([acl[at], acl[at + 1]]) & bits as u16;
        acl[at..at + 2].copy_from_slice(&perm.to_le_bytes());
        u32::from(perm)
    };
    let u = perm_and(user, (mode >> 6) & 7);
    let o = perm_and(other, mode & 7);
    // The group-class bits of the mode are the mask's when there is one.
    let g = match mask {
        Some(m) => perm_and(m, (mode >> 3) & 7),
        None => perm_and(group, (mode >> 3) & 7),
    };
    Some(Inherited {
        mode: (mode & !0o777) | (u << 6) | (g << 3) | o,
        access: (extended || mask.is_some()).then_some(acl),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acl_of_three_base_entries_is_a_mode() {
        let acl = |entries: &[(u16, u16)]| {
            let mut v = VERSION.to_le_bytes().to_vec();
            for (tag, perm) in entries {
                v.extend_from_slice(&tag.to_le_bytes());
                v.extend_from_slice(&perm.to_le_bytes());
                v.extend_from_slice(&u32::MAX.to_le_bytes());
            }
            v
        };
        let base = acl(&[(USER_OBJ, 4), (GROUP_OBJ, 7), (OTHER, 6)]);
        assert_eq!(minimal_mode(&base), Some(0o476));
        let masked = acl(&[(USER_OBJ, 7), (GROUP_OBJ, 7), (MASK, 5), (OTHER, 0)]);
        assert_eq!(minimal_mode(&masked), None);
        assert_eq!(minimal_mode(&base[..20]), None);
    }

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = VERSION.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    const NONE: u32 = u32::MAX;

    #[test]
    fn a_minimal_default_acl_only_masks_the_mode() {
        // default u::r--,g::r--,o::--- as generic/099's file2
        let d = acl(&[(USER_OBJ, 4, NONE), (GROUP_OBJ, 4, NONE), (OTHER, 0, NONE)]);
        let got = inherit(&d, 0o100666).unwrap();
        assert_eq!(got.mode, 0o100440);
        assert_eq!(got.access, None);
    }

    #[test]
    fn named_entries_and_the_mask_become_the_access_acl() {
        let d = acl(&[
            (USER_OBJ, 7, NONE),
            (0x02, 7, 1000),
            (GROUP_OBJ, 5, NONE),
            (MASK, 7, NONE),
            (OTHER, 5, NONE),
        ]);
        let got = inherit(&d, 0o4750).unwrap();
        // the mask, not the owning group, takes the group bits of the mode
        assert_eq!(got.mode, 0o4750);
        let want = acl(&[
            (USER_OBJ, 7, NONE),
            (0x02, 7, 1000),
            (GROUP_OBJ, 5, NONE),
            (MASK, 5, NONE),
            (OTHER, 0, NONE),
        ]);
        assert_eq!(got.access, Some(want));
    }

    #[test]
    fn what_is_not_an_acl_is_ignored() {
        assert_eq!(inherit(b"junk", 0o644), None);
        assert_eq!(inherit(&acl(&[(USER_OBJ, 7, NONE)]), 0o644), None);
    }
}
