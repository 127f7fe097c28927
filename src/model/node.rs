//! The inode table: every object the kernel knows by number, where it sits
//! (parent node and name, never a path), which layers hold it (its stack),
//! how many lookups the kernel holds on it, and its locks.
//!
//! Inode numbers follow overlayfs's `xino`: an object's number is the real
//! inode number of its *origin* (the topmost lower it came from, else its
//! upper), with the index of that layer's filesystem in the high 16 bits.
//! So a number survives copy-up and remount, and layers on different
//! filesystems never collide. The FUSE node id is the same number.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::model::layer::{Layer, LayerId, LayerStack, INDEX, UPPER};
use crate::sys::Stat;

/// The xattr (after the metadata prefix) naming an upper copy's origin.
pub const ORIGIN: &str = "origin";

/// The FUSE root node id.
pub const ROOT_INO: u64 = 1;

const FS_SHIFT: u32 = 48;
const REAL_MASK: u64 = (1 << FS_SHIFT) - 1;
/// Numbers handed out when a real inode number does not fit in 48 bits.
const SYNTHETIC_BASE: u64 = 0xffff << FS_SHIFT;

/// Where a lower layer holds an object, relative to what the lookup
/// started from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LowerAt {
    /// In the parent's directory of that layer, under the object's name.
    Parent,
    /// In the parent's directory of that layer, under another name (a
    /// relative redirect).
    Named(OsString),
    /// At this path from the layer root (an absolute redirect, or a
    /// directory renamed by us), without the leading `/`.
    Root(OsString),
}

/// One lower layer holding an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lower {
    pub layer: LayerId,
    pub at: LowerAt,
}

/// Where an object's bytes live. Which layers hold it, not where: each
/// layer's copy is reached from the parent's directory in that layer (see
/// `layer_reach.rs`), so a rename changes one node and no path goes stale.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stack {
    /// The upper holds the object at its name in the parent.
    pub upper: bool,
    /// Lower layers holding the object, top first. A non-directory has at
    /// most one; a merged directory has one per layer it merges.
    pub lowers: Vec<Lower>,
    /// The object has more than one name: its upper copy is reached through
    /// this entry of the hard-link index (see `index.rs`).
    pub index: Option<OsString>,
    /// The top object is a metadata-only copy (`overlay.metacopy`): owner,
    /// mode, times and xattrs are its own, but its bytes (and so its size
    /// and blocks) are those of the bottom of `lowers`, the data file.
    pub metacopy: bool,
}

impl Stack {
    /// The layer that answers reads and metadata: the index entry, else the
    /// upper, else the top lower.
    pub fn top(&self) -> Option<LayerId> {
        if self.index.is_some() {
            Some(INDEX)
        } else if self.upper {
            Some(UPPER)
        } else {
            self.lowers.first().map(|l| l.layer)
        }
    }

    /// The layer whose file holds the object's bytes: the data file below a
    /// metacopy, else the top.
    pub fn data(&self) -> Option<LayerId> {
        if self.metacopy {
            self.lowers.last().map(|l| l.layer)
        } else {
            self.top()
        }
    }

    /// True when the object's bytes are still a lower's though it has an
    /// upper copy (a metacopy): a write must copy the data up first.
    pub fn needs_data(&self) -> bool {
        self.metacopy && self.has_upper_copy()
    }

    /// Every layer holding the object in the tree, top first.
    pub fn layers(&self) -> impl Iterator<Item = LayerId> + '_ {
        self.upper
            .then_some(UPPER)
            .into_iter()
            .chain(self.lowers.iter().map(|l| l.layer))
    }

    /// Where lower `layer` holds the object, if it does.
    pub fn lower(&self, layer: LayerId) -> Option<&LowerAt> {
        self.lowers.iter().find(|l| l.layer == layer).map(|l| &l.at)
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

/// One object known to the kernel: a dentry-like record of where it sits
/// (parent node and name), which layers hold it, and its locks.
#[derive(Debug)]
pub struct Node {
    pub ino: u64,
    /// `S_IFMT` bits; an object never changes type (a new object at the same
    /// name is a new node).
    pub kind: u32,
    stack: RwLock<Stack>,
    /// Parent node and name in the merged tree. A hard-linked object sits
    /// at the name it was last found by.
    place: RwLock<(u64, OsString)>,
    lookups: AtomicU64,
    /// Serialises copy-up and other changes of this node's stack.
    pub lock: Mutex<()>,
    /// For a directory: serialises changes of the names in it (create,
    /// remove, rename, a copy-up putting an entry in place), as the
    /// kernel's per-directory `i_rwsem` does.
    pub names: Mutex<()>,
    /// For a directory: odd while a change is moving or removing names in
    /// it (see [`Node::changing`]), so that a reader that reached an object
    /// by one of its names, without a lock, can tell it must look again.
    seq: AtomicU64,
    /// Tells this object from an earlier one that had the same number (a
    /// filesystem reuses the inode number of a deleted file); the kernel
    /// then drops its old inode instead of mixing the two up.
    pub generation: u64,
    /// The object's last name is gone (it may still be open): it must not
    /// be copied up to a name, and its number may come back for a new one.
    dead: AtomicBool,
    /// What the object looked like when its last name went, for a `stat`
    /// of it that no open file answers (an open directory: `fstat` of it
    /// is sent without a handle). Boxed: most nodes never die.
    dead_stat: OnceLock<Box<Stat>>,
    /// Bit 0: the object is known to carry no xattr a user sees, so a
    /// getxattr needs no system call (`ls -l` asks for `security.selinux`
    /// of every file). The rest counts xattr changes, so that a look that
    /// raced with a change does not set the bit.
    xattrs: AtomicU64,
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
            names: Mutex::new(()),
            seq: AtomicU64::new(0),
            generation,
            dead: AtomicBool::new(false),
            dead_stat: OnceLock::new(),
            xattrs: AtomicU64::new(0),
        }
    }

    /// True when the object is known to carry no user-visible xattr.
    pub fn has_no_xattrs(&self) -> bool {
        self.xattrs.load(Ordering::Acquire) & 1 == 1
    }

    /// Where xattr changes stand, before a look at the object's xattrs.
    pub fn xattr_state(&self) -> u64 {
        self.xattrs.load(Ordering::Acquire)
    }

    /// The look begun at `state` found no user-visible xattr: remembered,
    /// unless an xattr changed meanwhile.
    pub fn found_no_xattrs(&self, state: u64) {
        let _ = self
            .xattrs
            .compare_exchange(state, state | 1, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// An xattr of the object was set or removed.
    pub fn xattrs_changed(&self) {
        let _ = self
            .xattrs
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| Some((s & !1) + 2));
    }

    /// Marks the object deleted (its last name was removed).
    pub fn set_dead(&self) {
        self.dead.store(true, Ordering::Relaxed);
    }

    /// Marks the object deleted and keeps `st`, its `lstat` as the name
    /// went, to answer a later `stat` that has no open file to ask.
    pub fn set_dead_with(&self, st: Stat) {
        let _ = self.dead_stat.set(Box::new(st));
        self.set_dead();
    }

    /// The `lstat` kept by [`Node::set_dead_with`].
    pub fn dead_stat(&self) -> Option<Stat> {
        self.dead_stat.get().map(|st| **st)
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

    /// Changes the stack in place. Callers hold `lock`.
    pub fn update_stack(&self, f: impl FnOnce(&mut Stack)) {
        f(&mut self.stack.write());
    }

    /// Parent node id and name.
    pub fn place(&self) -> (u64, OsString) {
        self.place.read().clone()
    }

    /// True when the node sits at `name` in `parent`.
    pub fn is_at(&self, parent: u64, name: &OsStr) -> bool {
        let p = self.place.read();
        p.0 == parent && p.1 == name
    }

    pub fn set_place(&self, parent: u64, name: OsString) {
        *self.place.write() = (parent, name);
    }

    /// Marks the directory's names as changing until the guard drops. The
    /// caller holds `names`; nodes must follow their objects before the
    /// guard drops.
    pub fn changing(&self) -> Changing<'_> {
        self.seq.fetch_add(1, Ordering::AcqRel);
        Changing(self)
    }

    /// The change count once no change is under way.
    pub fn settled(&self) -> u64 {
        loop {
            let s = self.seq.load(Ordering::Acquire);
            if s % 2 == 0 {
                return s;
            }
            std::thread::yield_now();
        }
    }

    /// True when no change of names began since `settled` returned `seen`.
    pub fn unchanged_since(&self, seen: u64) -> bool {
        self.seq.load(Ordering::Acquire) == seen
    }
}

/// A change of names in a directory under way (see [`Node::changing`]).
pub struct Changing<'a>(&'a Node);

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        self.0.seq.fetch_add(1, Ordering::AcqRel);
    }
}

/// The table of nodes the kernel holds, by number.
pub struct NodeTable {
    nodes: DashMap<u64, Arc<Node>>,
    /// (fs index, real ino) → number, for real numbers that do not fit.
    synthetic: DashMap<(u16, u64), u64>,
    next_synthetic: AtomicU64,
    /// `trusted.unionfs.` or `user.unionfs.`: where an upper copy records
    /// the number of the object it was copied from.
    pub meta_prefix: &'static str,
    /// `<meta_prefix>origin`, built once: lookups compare listed names to it.
    origin_xattr: OsString,
}

impl NodeTable {
    /// A table holding the root, merged over every layer.
    pub fn new(layers: &LayerStack, meta_prefix: &'static str) -> NodeTable {
        let root = Node::new(
            ROOT_INO,
            libc::S_IFDIR,
            Stack {
                upper: layers.upper().is_some(),
                lowers: layers
                    .lowers()
                    .iter()
                    .map(|l| Lower {
                        layer: l.id,
                        at: LowerAt::Parent,
                    })
                    .collect(),
                index: None,
                metacopy: false,
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
            origin_xattr: format!("{meta_prefix}{ORIGIN}").into(),
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

    /// The xattr in which an upper copy records its origin's number.
    pub fn origin_xattr(&self) -> &OsStr {
        &self.origin_xattr
    }

    /// The number recorded in an upper copy (`<prefix>origin`) at copy-up.
    pub fn read_origin(&self, fd: BorrowedFd) -> Option<u64> {
        let v = crate::sys::getxattr_via_proc(fd, self.origin_xattr()).ok()??;
        String::from_utf8(v).ok()?.parse().ok()
    }

    /// The number of the upper object `name` in `dir`: its recorded origin,
    /// else its own.
    pub fn upper_ino(
        &self,
        layers: &LayerStack,
        dir: BorrowedFd,
        name: &OsStr,
        real_ino: u64,
    ) -> Result<u64> {
        let origin = crate::sys::openat(dir, name, libc::O_PATH, 0)
            .ok()
            .and_then(|fd| self.read_origin(fd.as_fd()));
        match origin {
            Some(ino) => Ok(ino),
            None => Ok(self.ino_for(layers.get(UPPER)?, real_ino)),
        }
    }

    /// Records one kernel lookup of the object `ino`, creating its node if
    /// the kernel did not know it. Returns the node.
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
        if old.is_dead() || old.kind != kind {
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
            old.update_stack(|s| {
                let index = s.index.take().or(stack.index.clone());
                *s = stack;
                s.index = index;
            });
            old.set_place(parent, name.to_os_string());
        }
        entry.lookups.fetch_add(1, Ordering::Relaxed);
        entry.clone()
    }

    /// The kernel dropped `n` lookups of `ino`; the node goes at zero and
    /// is returned.
    pub fn forget(&self, ino: u64, n: u64) -> Option<Arc<Node>> {
        if ino == ROOT_INO {
            return None;
        }
        // Under the shard lock, like `remember`, so the two never interleave.
        self.nodes
            .remove_if(&ino, |_, node| {
                let left = node.lookups.load(Ordering::Relaxed).saturating_sub(n);
                node.lookups.store(left, Ordering::Relaxed);
                left == 0
            })
            .map(|(_, node)| node)
    }
}
