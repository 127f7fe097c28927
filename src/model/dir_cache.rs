//! Open layer directories: a directory of one layer held open with its
//! markers read once ([`LayerDir`]), and the bounded cache of them that
//! lookups and listings reuse ([`DirCache`]), sharded so that lookups on
//! different directories never wait for each other.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::error::Result;
use crate::model::layer::LayerId;
use crate::model::whiteout::{self, DirMarks};
use crate::sys;

/// A directory of one layer, held open, with its markers read once.
#[derive(Debug)]
pub struct LayerDir {
    fd: OwnedFd,
    pub marks: DirMarks,
    /// Where the lower layers below hold this directory's contents (an
    /// `overlay.redirect`): a path from the layer root when it starts with
    /// `/`, else a name in the same parent.
    pub redirect: Option<OsString>,
    /// The directory's inode number in its layer, when known (0 if not):
    /// tells a lookup that a held lower directory is the one it found.
    pub real_ino: u64,
    /// What one listing, made on first need, settled about it.
    known: Known,
}

/// What may change a layer directory while the union is mounted, which says
/// what one listing of it can settle for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changes {
    /// A lower: nothing changes it.
    Never,
    /// The upper written in the overlay format: only the daemon changes it,
    /// and it never puts a `.wh.` name there (its whiteouts are devices,
    /// and such names cannot be made through the mount).
    NoOciNames,
    /// The upper written in the OCI format: its whiteouts come and go.
    Any,
}

/// What a listing settled, per [`Changes`].
#[derive(Debug)]
enum Known {
    /// A lower: the names it holds (see [`Listing`]).
    Listing(OnceLock<Listing>),
    /// An overlay-format upper: whether it holds any `.wh.` entry. Once
    /// false it stays false, so a missing name needs no look for
    /// `.wh.NAME`, the second failed `fstatat` of every create.
    OciWhiteouts(OnceLock<bool>),
    Nothing,
}

/// What a lower directory's one listing settles for every later lookup in
/// it: a name it lacks (and whose `.wh.NAME` it lacks) is absent without a
/// stat, and with no `.wh.NAME` entry at all a missing name needs no second
/// look for its OCI whiteout. A lookup that misses in a lower (a name
/// created in the upper, held by another lower, or nowhere) is the common
/// case in a merged directory, and each was a failed `fstatat` per lower.
#[derive(Debug)]
struct Listing {
    oci_whiteouts: bool,
    /// Hashes of the entries' names; `None` when the listing failed (then
    /// every name may be there).
    names: Option<HashSet<u64>>,
}

impl Listing {
    /// What a listing says; `None`: it failed.
    fn of(entries: Option<&[sys::RawDirEntry]>) -> Listing {
        match entries {
            Some(entries) => Listing {
                oci_whiteouts: has_oci_whiteout(entries),
                names: Some(entries.iter().map(|e| name_hash(&e.name)).collect()),
            },
            None => Listing {
                oci_whiteouts: true,
                names: None,
            },
        }
    }
}

/// A name's hash for [`Listing`] (a collision only costs the stat it would
/// have saved).
fn name_hash(name: &OsStr) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

impl LayerDir {
    /// Wraps an open directory fd of a layer, reading its markers.
    pub fn new(fd: OwnedFd, changes: Changes) -> Result<LayerDir> {
        let (marks, redirect) = whiteout::dir_marks(fd.as_fd())?;
        Ok(LayerDir {
            fd,
            marks,
            redirect,
            real_ino: 0,
            known: match changes {
                Changes::Never => Known::Listing(OnceLock::new()),
                Changes::NoOciNames => Known::OciWhiteouts(OnceLock::new()),
                Changes::Any => Known::Nothing,
            },
        })
    }

    /// Opens the directory `name` in `parent` (one component, no symlink
    /// followed).
    pub fn open_at(parent: BorrowedFd, name: &OsStr, changes: Changes) -> Result<LayerDir> {
        // O_RDONLY rather than O_PATH: xattrs and getdents need a real fd.
        let fd = match sys::openat(parent, name, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
            Err(e) if e.is(libc::EACCES) => {
                sys::openat(parent, name, libc::O_PATH | libc::O_DIRECTORY, 0)?
            }
            other => other?,
        };
        LayerDir::new(fd, changes)
    }

    /// [`LayerDir::open_at`] of a directory whose inode number is known.
    pub fn open_known(
        parent: BorrowedFd,
        name: &OsStr,
        changes: Changes,
        real_ino: u64,
    ) -> Result<LayerDir> {
        let mut d = LayerDir::open_at(parent, name, changes)?;
        d.real_ino = real_ino;
        Ok(d)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// False only when the directory surely holds no `.wh.NAME` whiteout.
    pub fn may_hold_oci_whiteouts(&self) -> bool {
        match &self.known {
            Known::Listing(known) => {
                known
                    .get_or_init(|| Listing::of(self.read_entries().ok().as_deref()))
                    .oci_whiteouts
            }
            Known::OciWhiteouts(known) => *known.get_or_init(|| {
                self.read_entries()
                    .map_or(true, |entries| has_oci_whiteout(&entries))
            }),
            Known::Nothing => true,
        }
    }

    /// True when a lower's listing, if one was made already, shows neither
    /// `name` nor `.wh.NAME`: the name is absent here, no stat needed. False
    /// when it may be there, or nothing is known yet (a lookup that finds
    /// its name needs no listing).
    pub fn surely_lacks(&self, name: &OsStr) -> bool {
        let Known::Listing(known) = &self.known else {
            return false; // the upper changes: always look
        };
        let Some(Listing {
            names: Some(names),
            oci_whiteouts,
        }) = known.get()
        else {
            return false;
        };
        let listed = |n: &OsStr| names.contains(&name_hash(n));
        // With no `.wh.` entry at all, no need to look for `.wh.NAME`.
        let whited = || *oci_whiteouts && listed(&whiteout::oci_whiteout_name(name));
        !(listed(name) || whited())
    }

    /// Every entry of the directory. The listing also settles what
    /// [`Known`] records, so that later lookups need not list it again.
    pub fn list(&self) -> Result<Vec<sys::RawDirEntry>> {
        let entries = self.read_entries()?;
        match &self.known {
            Known::Listing(known) if known.get().is_none() => {
                let _ = known.set(Listing::of(Some(&entries)));
            }
            Known::OciWhiteouts(known) if known.get().is_none() => {
                let _ = known.set(has_oci_whiteout(&entries));
            }
            _ => {}
        }
        Ok(entries)
    }

    /// What the upper directory holds at `name`, for a change that puts
    /// something there.
    pub fn upper_slot(&self, name: &OsStr) -> Result<whiteout::UpperSlot> {
        let oci_whiteout =
            self.may_hold_oci_whiteouts() && whiteout::has_oci_whiteout(self.fd(), name)?;
        whiteout::upper_slot(self.fd(), self.marks, name, oci_whiteout)
    }

    /// Every entry of the directory. Through a fresh fd: the held one may
    /// be read by another listing at the same time, and a directory fd
    /// carries one read offset.
    fn read_entries(&self) -> Result<Vec<sys::RawDirEntry>> {
        let fd = sys::openat(
            self.fd(),
            OsStr::new("."),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?;
        sys::read_dir_all(fd.as_fd())
    }
}

impl AsFd for LayerDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn has_oci_whiteout(entries: &[sys::RawDirEntry]) -> bool {
    entries
        .iter()
        .any(|e| whiteout::oci_whited_out_name(&e.name).is_some())
}

/// How many directory fds stay cached, over all shards.
const CACHED_DIRS: usize = 4096;
/// Shards of the cache: each has its own lock.
const SHARDS: usize = 16;

type Key = (u64, LayerId);

/// Open directories by (node, layer), least recently used dropped first,
/// so a huge tree does not exhaust fds.
pub struct DirCache {
    shards: Vec<Mutex<lru::LruCache<Key, Arc<LayerDir>>>>,
}

impl Default for DirCache {
    fn default() -> Self {
        let per_shard = NonZeroUsize::new(CACHED_DIRS / SHARDS).unwrap_or(NonZeroUsize::MIN);
        DirCache {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(lru::LruCache::new(per_shard)))
                .collect(),
        }
    }
}

impl DirCache {
    fn shard(&self, key: Key) -> &Mutex<lru::LruCache<Key, Arc<LayerDir>>> {
        // Node numbers carry the filesystem in their high bits; the low
        // bits spread well enough.
        let h = key.0 ^ (key.0 >> 29) ^ (key.1 as u64).wrapping_mul(0x9e37_79b9);
        &self.shards[(h as usize) % SHARDS]
    }

    pub fn get(&self, ino: u64, layer: LayerId) -> Option<Arc<LayerDir>> {
        self.shard((ino, layer)).lock().get(&(ino, layer)).cloned()
    }

    pub fn put(&self, ino: u64, layer: LayerId, dir: Arc<LayerDir>) {
        self.shard((ino, layer)).lock().put((ino, layer), dir);
    }

    /// Drops the fds of the directory `ino` in these layers (it was
    /// removed, replaced or forgotten: its number may come back).
    pub fn forget(&self, ino: u64, layers: impl IntoIterator<Item = LayerId>) {
        for layer in layers {
            self.shard((ino, layer)).lock().pop(&(ino, layer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_listing_settles_which_names_are_absent() {
        let dir = std::env::temp_dir().join(format!("unionfs-dirs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["a", ".wh.b"] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        let open = |changes| LayerDir::new(sys::open_dir_path(&dir).unwrap(), changes).unwrap();
        let lower = open(Changes::Never);
        // Nothing is known before a listing: every name may be there.
        assert!(!lower.surely_lacks(OsStr::new("c")));
        assert!(lower.may_hold_oci_whiteouts());
        assert!(lower.surely_lacks(OsStr::new("c")), "neither c nor .wh.c");
        assert!(!lower.surely_lacks(OsStr::new("a")), "listed");
        assert!(
            !lower.surely_lacks(OsStr::new("b")),
            "its whiteout is listed"
        );
        // The upper changes under us: it is never answered from a listing.
        let upper = open(Changes::Any);
        upper.list().unwrap();
        assert!(!upper.surely_lacks(OsStr::new("c")));
        assert!(upper.may_hold_oci_whiteouts());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_overlay_format_upper_without_oci_whiteouts_is_never_asked_for_one() {
        let dir = std::env::temp_dir().join(format!("unionfs-dirs-oci-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a"), b"").unwrap();
        let open =
            || LayerDir::new(sys::open_dir_path(&dir).unwrap(), Changes::NoOciNames).unwrap();
        let clean = open();
        assert!(!clean.may_hold_oci_whiteouts(), "no .wh. entry listed");
        assert!(!clean.upper_slot(OsStr::new("a")).unwrap().oci_whiteout);
        // Names still change in the upper: never answered from the listing.
        assert!(!clean.surely_lacks(OsStr::new("c")));
        // A `.wh.` entry that was there (an imported layer): always looked for.
        std::fs::write(dir.join(".wh.b"), b"").unwrap();
        let marked = open();
        assert!(marked.may_hold_oci_whiteouts());
        assert!(marked.upper_slot(OsStr::new("b")).unwrap().oci_whiteout);
        assert!(!marked.upper_slot(OsStr::new("a")).unwrap().oci_whiteout);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
