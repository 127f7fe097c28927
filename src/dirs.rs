//! Open layer directories: a directory of one layer held open with its
//! markers read once ([`LayerDir`]), and the bounded cache of them that
//! lookups and listings reuse ([`DirCache`]), sharded so that lookups on
//! different directories never wait for each other.

use std::ffi::{OsStr, OsString};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::error::Result;
use crate::layer::LayerId;
use crate::sys;
use crate::whiteout::{self, DirMarks};

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
    /// For a lower (which never changes): whether any `.wh.NAME` entry is
    /// in it, found by one listing on first need. Most image layers have
    /// none, and then a missing name needs no second look for `.wh.NAME`.
    oci_whiteouts: Option<OnceLock<bool>>,
}

impl LayerDir {
    /// Wraps an open directory fd of a layer, reading its markers.
    pub fn new(fd: OwnedFd, immutable: bool) -> Result<LayerDir> {
        let (marks, redirect) = whiteout::dir_marks(fd.as_fd())?;
        Ok(LayerDir {
            fd,
            marks,
            redirect,
            real_ino: 0,
            oci_whiteouts: immutable.then(OnceLock::new),
        })
    }

    /// Opens the directory `name` in `parent` (one component, no symlink
    /// followed). `immutable` for lowers, whose contents never change.
    pub fn open_at(parent: BorrowedFd, name: &OsStr, immutable: bool) -> Result<LayerDir> {
        // O_RDONLY rather than O_PATH: xattrs and getdents need a real fd.
        let fd = match sys::openat(parent, name, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
            Err(e) if e.is(libc::EACCES) => {
                sys::openat(parent, name, libc::O_PATH | libc::O_DIRECTORY, 0)?
            }
            other => other?,
        };
        LayerDir::new(fd, immutable)
    }

    /// [`LayerDir::open_at`] of a directory whose inode number is known.
    pub fn open_known(
        parent: BorrowedFd,
        name: &OsStr,
        immutable: bool,
        real_ino: u64,
    ) -> Result<LayerDir> {
        let mut d = LayerDir::open_at(parent, name, immutable)?;
        d.real_ino = real_ino;
        Ok(d)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// False only when the directory surely holds no `.wh.NAME` whiteout.
    pub fn may_hold_oci_whiteouts(&self) -> bool {
        let Some(known) = &self.oci_whiteouts else {
            return true; // the upper changes: always look
        };
        *known.get_or_init(|| match self.read_entries() {
            Ok(entries) => has_oci_whiteout(&entries),
            Err(_) => true,
        })
    }

    /// Every entry of the directory. A lower's listing also settles
    /// [`LayerDir::may_hold_oci_whiteouts`], so that a lookup of a missing
    /// name does not list it again.
    pub fn list(&self) -> Result<Vec<sys::RawDirEntry>> {
        let entries = self.read_entries()?;
        if let Some(known) = &self.oci_whiteouts {
            let _ = known.set(has_oci_whiteout(&entries));
        }
        Ok(entries)
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
