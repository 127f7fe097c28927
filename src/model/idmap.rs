//! Owner mapping between the ids stored in the layers and the ids a mount
//! shows: fuse-overlayfs's `uidmapping=`/`gidmapping=` and `squash_to_*`.
//!
//! A mapping is a list of ranges `DISK:SHOWN:LEN` (containers/storage
//! passes `uidmapping=0:100000:65536`: the layers keep the container's ids,
//! 0.., and the host sees 100000..). Reading maps disk to shown; an id no
//! range covers shows as the kernel's overflow id (65534), as a user
//! namespace shows an unmapped owner. Writing maps shown to disk. A chown or
//! ACL naming an id no range covers is refused (stored, it would come back
//! as another id). A new object made by a caller no range covers (the host's
//! root, when podman fills in /etc/hostname or /etc/mtab) is stored with the
//! overflow id, as fuse-overlayfs does: refusing would break podman.
//! Squashing only changes what is shown: writes still store the caller's
//! (mapped) ids, as fuse-overlayfs does.
//!
//! Pure: no system calls, so every rule is unit-tested here.

/// One range: disk ids `disk..disk+len` show as `shown..shown+len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub disk: u32,
    pub shown: u32,
    pub len: u32,
}

/// The mapping of one kind of id (user or group).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    /// Empty: ids are stored as shown.
    pub ranges: Vec<Range>,
    /// `squash_to_root` / `squash_to_uid=`: every owner shows as this.
    pub squash: Option<u32>,
    /// What an unmapped disk id shows as.
    pub overflow: u32,
}

/// The kernel's overflow id, when /proc does not say otherwise.
pub const DEFAULT_OVERFLOW: u32 = 65534;

/// Parses a mapping as containers/storage and fuse-overlayfs write it:
/// `DISK:SHOWN:LEN` triples joined by `:`. Empty elements are skipped
/// (`:0:100000:65536`, which some versions of containers/storage produce by
/// joining with a leading `:`, and `a::b` from sloppy joins); ranges may not
/// be empty, wrap around, or overlap on either side (one id must map one way).
pub fn parse_ranges(text: &str) -> Result<Vec<Range>, String> {
    let bad = |why: &str| format!("invalid id mapping '{text}': {why}");
    let mut numbers = Vec::new();
    for part in text.split(':').filter(|p| !p.is_empty()) {
        let n: u32 = part
            .trim()
            .parse()
            .map_err(|_| bad(&format!("'{part}' is not a number")))?;
        numbers.push(n);
    }
    if numbers.is_empty() {
        return Err(bad("no ranges"));
    }
    if numbers.len() % 3 != 0 {
        return Err(bad("expected DISK:SHOWN:LEN triples"));
    }
    let ranges: Vec<Range> = numbers
        .chunks(3)
        .map(|c| Range {
            disk: c[0],
            shown: c[1],
            len: c[2],
        })
        .collect();
    for r in &ranges {
        if r.len == 0 {
            return Err(bad("a range of length 0"));
        }
        if r.disk.checked_add(r.len - 1).is_none() || r.shown.checked_add(r.len - 1).is_none() {
            return Err(bad("a range past the largest id"));
        }
    }
    for (i, a) in ranges.iter().enumerate() {
        for b in &ranges[i + 1..] {
            let overlap =
                |x: u32, y: u32| x < y.saturating_add(b.len) && y < x.saturating_add(a.len);
            if overlap(a.disk, b.disk) || overlap(a.shown, b.shown) {
                return Err(bad("overlapping ranges"));
            }
        }
    }
    Ok(ranges)
}

impl IdMap {
    /// True when ids pass unchanged both ways.
    pub fn is_identity(&self) -> bool {
        self.ranges.is_empty() && self.squash.is_none()
    }

    /// The id a stored id shows as.
    pub fn to_shown(&self, disk: u32) -> u32 {
        if let Some(id) = self.squash {
            return id;
        }
        if self.ranges.is_empty() {
            return disk;
        }
        self.ranges
            .iter()
            .find(|r| disk >= r.disk && disk - r.disk < r.len)
            .map_or(self.overflow, |r| r.shown + (disk - r.disk))
    }

    /// The id to store for a shown id; `None` when no range covers it.
    pub fn to_disk(&self, shown: u32) -> Option<u32> {
        if self.ranges.is_empty() {
            return Some(shown);
        }
        self.ranges
            .iter()
            .find(|r| shown >= r.shown && shown - r.shown < r.len)
            .map(|r| r.disk + (shown - r.shown))
    }
}

/// User and group mappings of a mount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    pub uid: IdMap,
    pub gid: IdMap,
}

/// The names of the xattrs holding POSIX ACLs, whose entries name owners.
pub const ACL_XATTRS: [&[u8]; 2] = [b"system.posix_acl_access", b"system.posix_acl_default"];

const ACL_VERSION: u32 = 2;
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;
/// Header (version) and entry (tag, perm, id) sizes of the xattr format.
const ACL_HEADER: usize = 4;
const ACL_ENTRY: usize = 8;

/// Which way an ACL is converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Read from a layer, for the caller.
    ToShown,
    /// From the caller, to store.
    ToDisk,
}

impl Owners {
    /// True when nothing is mapped or squashed (the common case: no work).
    pub fn is_identity(&self) -> bool {
        self.uid.is_identity() && self.gid.is_identity()
    }

    /// Owner ids for a new object made by a caller with these ids; an id
    /// with no place on disk becomes the overflow id.
    pub fn caller_to_disk(&self, uid: u32, gid: u32) -> (u32, u32) {
        (
            self.uid.to_disk(uid).unwrap_or(self.uid.overflow),
            self.gid.to_disk(gid).unwrap_or(self.gid.overflow),
        )
    }

    /// True when `name` is an ACL xattr whose value needs converting.
    pub fn maps_xattr(&self, name: &[u8]) -> bool {
        !self.is_identity() && ACL_XATTRS.contains(&name)
    }

    /// Converts the named users and groups of an ACL xattr value. `None` for
    /// a value that is not an ACL (the caller answers EINVAL, as the kernel
    /// does) or, going to disk, names an id that cannot be stored.
    pub fn map_acl(&self, value: &[u8], way: Way) -> Option<Vec<u8>> {
        if value.len() < ACL_HEADER || (value.len() - ACL_HEADER) % ACL_ENTRY != 0 {
            return None;
        }
        let version = u32::from_le_bytes(value[..4].try_into().ok()?);
        if version != ACL_VERSION {
            return None;
        }
        let mut out = value.to_vec();
        for entry in out[ACL_HEADER..].chunks_exact_mut(ACL_ENTRY) {
            let tag = u16::from_le_bytes([entry[0], entry[1]]);
            let map = match tag {
                ACL_USER => &self.uid,
                ACL_GROUP => &self.gid,
                _ => continue,
            };
            let id = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
            let new = match way {
                Way::ToShown => map.to_shown(id),
                Way::ToDisk => map.to_disk(id)?,
            };
            entry[4..8].copy_from_slice(&new.to_le_bytes());
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(text: &str) -> IdMap {
        IdMap {
            ranges: parse_ranges(text).unwrap(),
            squash: None,
            overflow: DEFAULT_OVERFLOW,
        }
    }

    #[test]
    fn parses_containers_storage_forms() {
        let r = parse_ranges("0:1000:1:1:100000:65536").unwrap();
        assert_eq!(
            r,
            vec![
                Range {
                    disk: 0,
                    shown: 1000,
                    len: 1
                },
                Range {
                    disk: 1,
                    shown: 100000,
                    len: 65536
                }
            ]
        );
        assert_eq!(parse_ranges(":0:100000:65536").unwrap().len(), 1);
        assert_eq!(parse_ranges("0:100000:65536:").unwrap().len(), 1);
        assert_eq!(parse_ranges("0::100000:65536").unwrap().len(), 1);
    }

    #[test]
    fn refuses_bad_mappings() {
        for bad in [
            "",
            ":",
            "0:1000",
            "0:1000:1:2",
            "a:1:1",
            "0:1:0",
            "-1:0:1",
            "0:0:10:5:100:1",
        ] {
            assert!(parse_ranges(bad).is_err(), "{bad:?} accepted");
        }
        // Overlapping on the shown side.
        assert!(parse_ranges("0:100:10:20:105:1").is_err());
        // Past the largest id.
        assert!(parse_ranges("4294967295:0:2").is_err());
        assert!(parse_ranges("4294967295:0:1").is_ok());
    }

    #[test]
    fn maps_both_ways_and_overflows() {
        let m = map("0:100000:65536");
        assert_eq!(m.to_shown(0), 100000);
        assert_eq!(m.to_shown(65535), 165535);
        assert_eq!(m.to_shown(65536), DEFAULT_OVERFLOW);
        assert_eq!(m.to_disk(100000), Some(0));
        assert_eq!(m.to_disk(165535), Some(65535));
        assert_eq!(m.to_disk(99999), None);
        assert_eq!(m.to_disk(0), None);
        let two = map("0:1000:1:1:100000:65536");
        assert_eq!(two.to_shown(0), 1000);
        assert_eq!(two.to_shown(1), 100000);
        assert_eq!(two.to_disk(1000), Some(0));
        assert_eq!(two.to_disk(100001), Some(2));
    }

    #[test]
    fn identity_and_squash() {
        let id = IdMap::default();
        assert!(id.is_identity());
        assert_eq!(id.to_shown(7), 7);
        assert_eq!(id.to_disk(7), Some(7));
        let squash = IdMap {
            squash: Some(0),
            ..IdMap::default()
        };
        assert!(!squash.is_identity());
        assert_eq!(squash.to_shown(1234), 0);
        // Writes are not squashed.
        assert_eq!(squash.to_disk(1234), Some(1234));
    }

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = ACL_VERSION.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    #[test]
    fn acl_entries_mapped() {
        let owners = Owners {
            uid: map("0:100000:65536"),
            gid: map("0:200000:65536"),
        };
        let u = u32::MAX; // ACL_UNDEFINED_ID for the owner/other entries
        let disk = acl(&[
            (0x01, 6, u),
            (ACL_USER, 4, 5),
            (ACL_GROUP, 4, 7),
            (0x20, 0, u),
        ]);
        let shown = acl(&[
            (0x01, 6, u),
            (ACL_USER, 4, 100005),
            (ACL_GROUP, 4, 200007),
            (0x20, 0, u),
        ]);
        assert_eq!(owners.map_acl(&disk, Way::ToShown).unwrap(), shown);
        assert_eq!(owners.map_acl(&shown, Way::ToDisk).unwrap(), disk);
        // An id with no place on disk is refused; junk is not an ACL.
        assert!(owners
            .map_acl(&acl(&[(ACL_USER, 4, 5)]), Way::ToDisk)
            .is_none());
        assert!(owners.map_acl(b"abc", Way::ToShown).is_none());
        assert!(owners.maps_xattr(b"system.posix_acl_access"));
        assert!(!owners.maps_xattr(b"user.x"));
        assert!(!Owners::default().maps_xattr(b"system.posix_acl_access"));
        // A caller with no place on disk creates as the overflow id.
        assert_eq!(owners.caller_to_disk(100001, 5), (1, DEFAULT_OVERFLOW));
    }
}
