//! POSIX ACL inheritance for objects made in the upper. A new object is
//! built in the work dir, whose filesystem knows nothing of the directory
//! it will land in, so the inheritance the kernel does for a plain create
//! (`posix_acl_create`) is done here: the parent's default ACL, masked by
//! the create mode, becomes the object's access ACL, and a new directory
//! inherits the default ACL itself. Also, for forced permissions (where
//! the access ACL is kept in a private xattr, see [`crate::model::override_stat`]):
//! the mode an access ACL stands for, and what a chmod does to one.

/// The xattr of a directory's default ACL.
pub const DEFAULT_XATTR: &str = "system.posix_acl_default";
/// The xattr of an object's access ACL.
pub const ACCESS_XATTR: &str = "system.posix_acl_access";

const VERSION: u32 = 2;
const HEADER: usize = 4;
const ENTRY: usize = 8;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
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

/// Where the entries that stand for the mode sit in an ACL (indices).
struct Base {
    user: usize,
    group: usize,
    other: usize,
    mask: Option<usize>,
    /// It has named users or groups.
    extended: bool,
}

/// The base entries of `acl` (xattr format); `None` for a value that is
/// not an ACL or lacks an owner, owning group or other entry, or names
/// users or groups without a mask (what `posix_acl_valid` refuses).
fn base(acl: &[u8]) -> Option<Base> {
    if acl.len() < HEADER || (acl.len() - HEADER) % ENTRY != 0 {
        return None;
    }
    if u32::from_le_bytes(acl[..HEADER].try_into().ok()?) != VERSION {
        return None;
    }
    let (mut user, mut group, mut other, mut mask) = (None, None, None, None);
    let mut extended = false;
    for (i, entry) in acl[HEADER..].chunks_exact(ENTRY).enumerate() {
        match u16::from_le_bytes([entry[0], entry[1]]) {
            USER_OBJ => user = Some(i),
            GROUP_OBJ => group = Some(i),
            OTHER => other = Some(i),
            MASK => mask = Some(i),
            USER | GROUP => extended = true,
            _ => return None,
        }
    }
    if extended && mask.is_none() {
        return None;
    }
    Some(Base {
        user: user?,
        group: group?,
        other: other?,
        mask,
        extended,
    })
}

fn perm_at(acl: &[u8], i: usize) -> u32 {
    let at = HEADER + i * ENTRY + 2;
    u32::from(u16::from_le_bytes([acl[at], acl[at + 1]]) & 7)
}

fn set_perm_at(acl: &mut [u8], i: usize, perm: u32) {
    let at = HEADER + i * ENTRY + 2;
    acl[at..at + 2].copy_from_slice(&((perm & 7) as u16).to_le_bytes());
}

/// The permission bits an access ACL (xattr format) gives the mode, as
/// `posix_acl_equiv_mode` / `posix_acl_update_mode`: owner from the owner
/// entry, group from the mask if there is one (else the owning group),
/// other from the other entry. `None` for a value that is not a valid ACL.
pub fn mode_bits(acl: &[u8]) -> Option<u32> {
    let b = base(acl)?;
    let group = perm_at(acl, b.mask.unwrap_or(b.group));
    Some((perm_at(acl, b.user) << 6) | (group << 3) | perm_at(acl, b.other))
}

/// `acl` (an access ACL, xattr format) after a chmod to `mode`, as
/// `posix_acl_chmod`: the owner, mask (else owning group) and other entries
/// take the mode's bits; named entries stay. `None` for a value that is not
/// a valid ACL.
pub fn chmod(acl: &[u8], mode: u32) -> Option<Vec<u8>> {
    let b = base(acl)?;
    let mut out = acl.to_vec();
    set_perm_at(&mut out, b.user, mode >> 6);
    set_perm_at(&mut out, b.mask.unwrap_or(b.group), mode >> 3);
    set_perm_at(&mut out, b.other, mode);
    Some(out)
}

/// The inheritance of `default` (a parent's default ACL, xattr format) by
/// an object made with `mode`, as Linux's `posix_acl_create`: the owner,
/// group-class (the mask if there is one, else the owning group) and other
/// entries keep only the permissions `mode` grants. `None` for a value that
/// is not an ACL (it is then ignored, as an unreadable one would be).
pub fn inherit(default: &[u8], mode: u32) -> Option<Inherited> {
    let b = base(default)?;
    let mut acl = default.to_vec();
    let mut perm_and = |i: usize, bits: u32| -> u32 {
        let perm = perm_at(&acl, i) & bits;
        set_perm_at(&mut acl, i, perm);
        perm
    };
    let u = perm_and(b.user, mode >> 6);
    let o = perm_and(b.other, mode);
    // The group-class bits of the mode are the mask's when there is one.
    let g = perm_and(b.mask.unwrap_or(b.group), mode >> 3);
    Some(Inherited {
        mode: (mode & !0o777) | (u << 6) | (g << 3) | o,
        access: (b.extended || b.mask.is_some()).then_some(acl),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// True for an ACL with named users or groups or a mask: one a mode
    /// cannot stand for (what `inherit` keeps as an access ACL).
    fn is_extended(acl: &[u8]) -> bool {
        base(acl).is_some_and(|b| b.extended || b.mask.is_some())
    }

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

    #[test]
    fn an_acl_gives_the_mode_and_follows_a_chmod() {
        let a = acl(&[
            (USER_OBJ, 6, NONE),
            (0x02, 4, 1234),
            (GROUP_OBJ, 0, NONE),
            (MASK, 4, NONE),
            (OTHER, 0, NONE),
        ]);
        // generic/105's dir: the mask, not the owning group, is the group
        assert_eq!(mode_bits(&a), Some(0o640));
        assert!(is_extended(&a));
        let chmodded = chmod(&a, 0o751).unwrap();
        let want = acl(&[
            (USER_OBJ, 7, NONE),
            (0x02, 4, 1234),
            (GROUP_OBJ, 0, NONE),
            (MASK, 5, NONE),
            (OTHER, 1, NONE),
        ]);
        assert_eq!(chmodded, want);
        assert_eq!(mode_bits(&chmodded), Some(0o751));
        // without a mask the owning group takes the group bits
        let plain = acl(&[(USER_OBJ, 7, NONE), (GROUP_OBJ, 5, NONE), (OTHER, 0, NONE)]);
        assert!(!is_extended(&plain));
        assert_eq!(mode_bits(&chmod(&plain, 0o640).unwrap()), Some(0o640));
    }

    #[test]
    fn what_is_no_valid_acl_has_no_mode() {
        // a named user without a mask, an unknown tag, a torn entry
        let no_mask = acl(&[
            (USER_OBJ, 7, NONE),
            (0x02, 4, 1234),
            (GROUP_OBJ, 0, NONE),
            (OTHER, 0, NONE),
        ]);
        assert_eq!(mode_bits(&no_mask), None);
        assert_eq!(chmod(&no_mask, 0o644), None);
        let odd = acl(&[
            (USER_OBJ, 7, NONE),
            (0x40, 7, NONE),
            (GROUP_OBJ, 0, NONE),
            (OTHER, 0, NONE),
        ]);
        assert_eq!(mode_bits(&odd), None);
        assert_eq!(mode_bits(&odd[..10]), None);
        assert!(!is_extended(b"junk"));
    }
}
