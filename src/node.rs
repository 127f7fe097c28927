//! The inode table: every object the kernel knows by number, where its
//! bytes live (its layer stack), how many lookups the kernel holds on it,
//! and the per-node lock that serialises copy-up.
//!
//! Inode numbers follow overlayfs's `xino`: an object's number is the real
//! inode number of its *origin* (the topmost lower it came from, else its
//! upper), with the index of that layer's filesystem in the high 16 bits.
//! So a number survives copy-up and remount, and layers on different
//! filesystems never collide. The FUSE node id is the same number.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::layer::{Layer, LayerId, LayerStack, INDEX, UPPER};
use crate::whiteout::{self, DirMarks};

/// The xattr (after the metadata prefix) naming an upper copy's origin.
const ORIGIN: &str = "origin";

/// The FUSE root node id.
pub const ROOT_INO: u64 = 1;

const FS_SHIFT: u32 = 48;
const REAL_MASK: u64 = (1 << FS_SHIFT) - 1;
/// Numbers handed out when a real inode number does not fit in 48 bits.
const SYNTHETIC_BASE: u64 = 0xffff << FS_SHIFT;

/// Where an object's bytes live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stack {
    /// Path relative to every layer root: the upper holds the object here
    /// when `upper` is set, each lower in `lowers` holds it at `lower_path`.
    pub path: OsString,
    pub upper: bool,
    /// Lower layers holding the object, top first. A non-directory has at
    /// most one; a merged directory has one per layer it merges.
    pub lowers: Vec<LayerId>,
    /// Where the lowers hold it (differs from `path` once renamed).
    pub lower_path: OsString,
    /// The object has more than one name: its upper copy is reached through
    /// this entry of the hard-link index (see `index.rs`).
    pub index: Option<OsString>,
}

impl Stack {
    /// The layer that answers reads and metadata: the index entry, else the
    /// upper, else the top lower.
    pub fn top(&self) -> Option<(LayerId, &OsStr)> {
        if let Some(key) = &self.index {
            Some((INDEX, key.as_os_str()))
        } else if self.upper {
            Some((UPPER, &self.path))
        } else {
            self.lowers
                .first()
                .map(|l| (*l, self.lower_path.as_os_str()))
        }
    }

    /// Every (layer, path) holding the object, top first.
    pub fn entries(&self) -> impl Iterator<Item = (LayerId, &OsStr)> {
        let upper = self.upper.then_some((UPPER, self.path.as_os_str()));
        upper.into_iter().chain(
            self.lowers
                .iter()
                .map(|l| (*l, self.lower_path.as_os_str())),
        )
    }

    /// True when the object has an upper copy (in the tree or the index).
    pub fn has_upper_copy(&self) -> bool {
        self.upper || self.index.is_some()
    }

    /// True when more than one layer contributes (a merged directory).
    pub fn is_merged(&self) -> bool {
        self.lowers.len() + usize::from(self.upper) > 1
    }
}

/// One object known to the kernel.
#[derive(Debug)]
pub struct Node {
    pub ino: u64,
    /// `S_IFMT` bits; an object never changes type (a new object at the same
    /// name is a new node).
    pub kind: u32,
    stack: RwLock<Stack>,
    /// Parent node and name in the merged tree (for "..", and renames).
    place: RwLock<(u64, OsString)>,
    lookups: AtomicU64,
    /// Serialises copy-up and other changes of this node's stack.
    pub lock: Mutex<()>,
    /// Tells this object from an earlier one that had the same number (a
    /// filesystem reuses the inode number of a deleted file); the kernel
    /// then drops its old inode instead of mixing the two up.
    pub generation: u64,
    /// The object's last name is gone (it may still be open): it must not
    /// be copied up to a name, and its number may come back for a new one.
    dead: std::sync::atomic::AtomicBool,
}

impl Node {
    /// A node outside the table, for a look at an object the kernel has not
    /// looked up (e.g. whether a directory about to be removed is empty).
    pub fn detached(ino: u64, kind: u32, stack: Stack, parent: u64, name: &OsStr) -> Node {
        Node::new(ino, kind, stack, parent, name, 0, 0)
    }

    fn new(
        ino: u64,
        kind: u32,
        stack: Stack,
        parent: u64,
        name: &OsStr,
        generation: u64,
        lookups: u64,
    ) -> Node {
        Node {
            ino,
            kind,
            stack: RwLock::new(stack),
            place: RwLock::new((parent, name.to_os_string())),
            lookups: AtomicU64::new(lookups),
            lock: Mutex::new(()),
            generation,
            dead: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Marks the object deleted (its last name was removed).
    pub fn set_dead(&self) {
        self.dead.store(true, Ordering::Relaxed);
    }

    /// True once the object's last name was removed.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    /// A copy of the node's current layer stack.
    pub fn stack(&self) -> Stack {
        self.stack.read().clone()
    }

    /// Replaces the stack (after copy-up, rename...). Callers hold `lock`.
    pub fn set_stack(&self, stack: Stack) {
        *self.stack.write() = stack;
    }

    /// Parent node id and name.
    pub fn place(&self) -> (u64, OsString) {
        self.place.read().clone()
    }

    pub fn set_place(&self, parent: u64, name: OsString) {
        *self.place.write() = (parent, name);
    }
}

/// The table of nodes plus the fds of recently used directories.
pub struct NodeTable {
    nodes: DashMap<u64, Arc<Node>>,
    /// (fs index, real ino) → number, for real numbers that do not fit.
    synthetic: DashMap<(u16, u64), u64>,
    next_synthetic: AtomicU64,
    /// Open directory fds, by (node, layer): lookups and readdir reuse them
    /// instead of walking the path again. Bounded, so a huge tree does not
    /// exhaust fds.
    dir_fds: Mutex<lru::LruCache<(u64, LayerId), Arc<LayerDir>>>,
    /// `trusted.unionfs.` or `user.unionfs.`: where an upper copy records
    /// the number of the object it was copied from.
    pub meta_prefix: &'static str,
}

/// A directory of one layer, held open, with its markers read once.
#[derive(Debug)]
pub struct LayerDir {
    pub fd: OwnedFd,
    pub marks: DirMarks,
    /// For a lower (which never changes): whether any `.wh.NAME` entry is
    /// in it, found by one listing on first need. Most image layers have
    /// none, and then a missing name needs no second look for `.wh.NAME`.
    oci_whiteouts: Option<std::sync::OnceLock<bool>>,
}

impl LayerDir {
    /// Opens the directory at `path` in `layer` and reads its markers.
    pub fn open(layer: &Layer, path: &OsStr) -> Result<LayerDir> {
        // O_RDONLY rather than O_PATH: xattrs and getdents need a real fd.
        let fd = match layer.open(path, libc::O_RDONLY | libc::O_DIRECTORY) {
            Err(e) if e.is(libc::EACCES) => layer.open(path, libc::O_PATH | libc::O_DIRECTORY)?,
            other => other?,
        };
        let marks = whiteout::dir_marks(std::os::fd::AsFd::as_fd(&fd))?;
        let lower = !layer.is_upper() && layer.id != crate::layer::INDEX;
        Ok(LayerDir {
            fd,
            marks,
            oci_whiteouts: lower.then(std::sync::OnceLock::new),
        })
    }

    /// False only when the directory surely holds no `.wh.NAME` whiteout.
    pub fn may_hold_oci_whiteouts(&self) -> bool {
        let Some(known) = &self.oci_whiteouts else {
            return true; // the upper changes: always look
        };
        *known.get_or_init(|| {
            let listed = crate::sys::openat(
                self.fd(),
                OsStr::new("."),
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )
            .and_then(|fd| crate::sys::read_dir_all(std::os::fd::AsFd::as_fd(&fd)));
            match listed {
                Ok(entries) => entries
                    .iter()
                    .any(|e| whiteout::oci_whited_out_name(&e.name).is_some()),
                Err(_) => true,
            }
        })
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }
}

/// How many directory fds stay cached.
const DIR_FD_CACHE: usize = 4096;

impl NodeTable {
    /// A table holding the root, merged over every layer.
    pub fn new(layers: &LayerStack, meta_prefix: &'static str) -> NodeTable {
        let root = Node::new(
            ROOT_INO,
            libc::S_IFDIR,
            Stack {
                path: OsString::new(),
                upper: layers.upper().is_some(),
                lowers: layers.lowers().iter().map(|l| l.id).collect(),
                lower_path: OsString::new(),
                index: None,
            },
            ROOT_INO,
            OsStr::new(""),
            0,
            // The kernel never forgets the root.
            1,
        );
        let nodes = DashMap::new();
        nodes.insert(ROOT_INO, Arc::new(root));
        NodeTable {
            nodes,
            synthetic: DashMap::new(),
            next_synthetic: AtomicU64::new(SYNTHETIC_BASE),
            meta_prefix,
            dir_fds: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(DIR_FD_CACHE).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
        }
    }

    /// The node with this number, if the kernel still holds it.
    pub fn get(&self, ino: u64) -> Result<Arc<Node>> {
        self.nodes
            .get(&ino)
            .map(|n| n.clone())
            .ok_or_else(|| Error::errno(libc::ESTALE).context(format!("no inode {ino}")))
    }

    /// The inode number for an object whose origin is `real_ino` in `layer`.
    pub fn ino_for(&self, layer: &Layer, real_ino: u64) -> u64 {
        let composed = ((layer.fs_index as u64) << FS_SHIFT) | real_ino;
        if real_ino & !REAL_MASK == 0 && composed > ROOT_INO && composed < SYNTHETIC_BASE {
            return composed;
        }
        *self
            .synthetic
            .entry((layer.fs_index, real_ino))
            .or_insert_with(|| self.next_synthetic.fetch_add(1, Ordering::Relaxed))
    }

    /// The number recorded in an upper copy (`<prefix>origin`) at copy-up.
    pub fn read_origin(&self, fd: std::os::fd::BorrowedFd) -> Option<u64> {
        let name = format!("{}{ORIGIN}", self.meta_prefix);
        let v = crate::sys::getxattr_via_proc(fd, OsStr::new(&name)).ok()??;
        String::from_utf8(v).ok()?.parse().ok()
    }

    /// Records in an upper copy the number of the object it copies, so the
    /// number survives the copy-up and remounts.
    pub fn write_origin(&self, fd: std::os::fd::BorrowedFd, ino: u64) -> Result<()> {
        let name = format!("{}{ORIGIN}", self.meta_prefix);
        crate::sys::fsetxattr(fd, OsStr::new(&name), ino.to_string().as_bytes(), 0)
    }

    /// The number of an upper object: its recorded origin, else its own.
    pub fn upper_ino(
        &self,
        layers: &LayerStack,
        dir: std::os::fd::BorrowedFd,
        name: &OsStr,
        real_ino: u64,
    ) -> Result<u64> {
        let origin = crate::sys::openat(dir, name, libc::O_PATH, 0)
            .ok()
            .and_then(|fd| self.read_origin(std::os::fd::AsFd::as_fd(&fd)));
        match origin {
            Some(ino) => Ok(ino),
            None => Ok(self.ino_for(layers.get(UPPER)?, real_ino)),
        }
    }

    /// Records one kernel lookup of the object `ino`, creating its node from
    /// `make` if the kernel did not know it. Returns the node.
    pub fn remember(
        &self,
        ino: u64,
        kind: u32,
        stack: Stack,
        parent: u64,
        name: &OsStr,
    ) -> Arc<Node> {
        // The count is raised under the table's shard lock, so a concurrent
        // `forget` cannot drop the node between our insert and increment.
        let mut entry = self
            .nodes
            .entry(ino)
            .or_insert_with(|| Arc::new(Node::new(ino, kind, stack.clone(), parent, name, 0, 0)));
        let old = entry.value().clone();
        if old.dead.load(Ordering::Relaxed) || old.kind != kind {
            // A new object with a deleted one's number: a new generation.
            // It inherits the count, since the kernel's FORGET of the old
            // inode names only the number.
            let lookups = old.lookups.load(Ordering::Relaxed);
            *entry.value_mut() = Arc::new(Node::new(
                ino,
                kind,
                stack,
                parent,
                name,
                old.generation + 1,
                lookups,
            ));
        } else {
            // A fresh lookup is the truth about where the object is now.
            // Several names of one object are one node: it sits where it was
            // last found, a name the kernel surely still holds (`ops` gives
            // it an index entry before removing the name it is reached by).
            let mut s = old.stack.write();
            let index = s.index.take().or(stack.index.clone());
            *s = stack;
            s.index = index;
            drop(s);
            *old.place.write() = (parent, name.to_os_string());
        }
        entry.lookups.fetch_add(1, Ordering::Relaxed);
        entry.clone()
    }

    /// The kernel dropped `n` lookups of `ino`; the node goes at zero.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        // Under the shard lock, like `remember`, so the two never interleave.
        let removed = self.nodes.remove_if(&ino, |_, node| {
            let left = node.lookups.load(Ordering::Relaxed).saturating_sub(n);
            node.lookups.store(left, Ordering::Relaxed);
            left == 0
        });
        if let Some((_, node)) = removed {
            if node.is_dir() {
                self.forget_dir_fds(&node);
            }
        }
    }

    /// How many nodes the kernel holds (for tests and memory checks).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node (for renames that must update descendants' paths).
    pub fn all(&self) -> Vec<Arc<Node>> {
        self.nodes.iter().map(|e| e.value().clone()).collect()
    }

    /// The directory of `node` in `layer`, from the cache or opened now.
    pub fn dir(&self, layers: &LayerStack, node: &Node, layer: LayerId) -> Result<Arc<LayerDir>> {
        let key = (node.ino, layer);
        if let Some(dir) = self.dir_fds.lock().get(&key) {
            return Ok(dir.clone());
        }
        let stack = node.stack();
        let path = if layer == UPPER {
            &stack.path
        } else {
            &stack.lower_path
        };
        let dir = Arc::new(LayerDir::open(layers.get(layer)?, path)?);
        self.dir_fds.lock().put(key, dir.clone());
        Ok(dir)
    }

    /// Seeds the cache with a directory a lookup has just opened.
    pub fn cache_dir(&self, ino: u64, layer: LayerId, dir: Arc<LayerDir>) {
        self.dir_fds.lock().put((ino, layer), dir);
    }

    /// Drops cached fds of a directory (it was removed, renamed, copied up
    /// or forgotten).
    pub fn forget_dir_fds(&self, node: &Node) {
        self.forget_dir_fds_of(node.ino, &node.stack());
    }

    /// Drops cached fds of the directory `ino` whose stack is `stack`. A
    /// removed directory's fds must go even if the kernel never looked it
    /// up: its number may come back with a new directory.
    pub fn forget_dir_fds_of(&self, ino: u64, stack: &Stack) {
        let mut cache = self.dir_fds.lock();
        cache.pop(&(ino, UPPER));
        for layer in &stack.lowers {
            cache.pop(&(ino, *layer));
        }
    }
}
