//! Reaching a node's objects in the layers without a path: each layer's
//! copy of a node is the name of the node in its parent's directory of
//! that layer, and a directory not held open is reached by walking down
//! from its nearest ancestor that is (docs/design.md §4 "Nodes know their place").
//! So any depth a plain filesystem allows works, and a rename moves one node.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::dir_cache::{Changes, DirCache, LayerDir};
use crate::model::layer::{show_name, show_path, split_path, LayerId, LayerStack, INDEX, UPPER};
use crate::model::node::{LowerAt, Node, NodeTable, Stack, ROOT_INO};
use crate::sys::{self, Stat};

/// The mount's reach into its layers: the layers, the nodes, and the
/// layer directories held open, through which every node's objects are
/// found. (Not a tree: a node table and an fd cache.)
pub struct LayerReach {
    pub layers: LayerStack,
    pub nodes: NodeTable,
    pub dirs: DirCache,
    /// Each layer's root, by layer id (the upper's slot empty without one).
    roots: Vec<Option<Arc<LayerDir>>>,
    index_root: Option<Arc<LayerDir>>,
    /// What may change the upper's directories (by its write format).
    upper_changes: Changes,
}

/// How often a reader looks again when names keep changing under it
/// before it gives up (a livelock guard; one retry is the common case).
const RETRIES: usize = 1000;

/// How one step up from a node reaches its directory in one layer.
enum Step {
    /// This name in the parent's directory of the layer.
    Under(u64, OsString),
    /// This path from the layer root.
    Root(OsString),
}

impl LayerReach {
    /// `upper_changes`: [`Changes::NoOciNames`] when the upper is written
    /// in the overlay format, else [`Changes::Any`].
    pub fn new(
        layers: LayerStack,
        meta_prefix: &'static str,
        upper_changes: Changes,
    ) -> Result<LayerReach> {
        let root_of = |id: LayerId, changes: Changes| -> Result<Arc<LayerDir>> {
            let fd = sys::openat(
                layers.get(id)?.root(),
                OsStr::new("."),
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )?;
            Ok(Arc::new(LayerDir::new(fd, changes)?))
        };
        let mut roots = vec![layers
            .upper()
            .map(|_| root_of(UPPER, upper_changes))
            .transpose()?];
        // Data-only lowers too: a metacopy redirect walks down from their root.
        for l in layers.lowers_with_data() {
            roots.push(Some(root_of(l.id, Changes::Never)?));
        }
        let index_root = layers
            .get(INDEX)
            .ok()
            .map(|_| root_of(INDEX, Changes::Any))
            .transpose()?;
        Ok(LayerReach {
            nodes: NodeTable::new(&layers, meta_prefix),
            layers,
            dirs: DirCache::default(),
            roots,
            index_root,
            upper_changes,
        })
    }

    /// What may change the directories of `layer` while mounted.
    pub fn changes(&self, layer: LayerId) -> Changes {
        if layer == UPPER {
            self.upper_changes
        } else {
            Changes::Never
        }
    }

    /// The root directory of a layer.
    pub fn root_dir(&self, layer: LayerId) -> Result<Arc<LayerDir>> {
        let dir = if layer == INDEX {
            self.index_root.as_ref()
        } else {
            self.roots.get(layer as usize).and_then(|r| r.as_ref())
        };
        dir.cloned()
            .ok_or_else(|| Error::errno(libc::EIO).context(format!("no layer {layer}")))
    }

    /// How `node` is reached in `layer` from one level up.
    fn step(&self, node: &Node, layer: LayerId) -> Result<Step> {
        let (parent, name) = node.place();
        if layer == UPPER {
            return Ok(Step::Under(parent, name));
        }
        match node.stack().lower(layer) {
            Some(LowerAt::Parent) => Ok(Step::Under(parent, name)),
            Some(LowerAt::Named(n)) => Ok(Step::Under(parent, n.clone())),
            Some(LowerAt::Root(path)) => Ok(Step::Root(path.clone())),
            None => Err(Error::errno(libc::ENOENT)
                .context(format!("inode {} is not in layer {layer}", node.ino))),
        }
    }

    /// The directory `node` in `layer`: from the cache, else opened by
    /// walking down from the nearest ancestor held open (or the root).
    pub fn dir(&self, node: &Node, layer: LayerId) -> Result<Arc<LayerDir>> {
        if node.ino == ROOT_INO {
            return self.root_dir(layer);
        }
        if let Some(d) = self.dirs.get(node.ino, layer) {
            return Ok(d);
        }
        for _ in 0..RETRIES {
            if let Some(d) = self.walk_down(node, layer)? {
                return Ok(d);
            }
        }
        Err(Error::errno(libc::EAGAIN).context("directory kept moving"))
    }

    /// One try of [`LayerReach::dir`]; `None` when a change of names in the
    /// upper raced with the walk, which then starts again.
    fn walk_down(&self, node: &Node, layer: LayerId) -> Result<Option<Arc<LayerDir>>> {
        let immutable = layer != UPPER;
        if node.is_dead() {
            return Err(Error::errno(libc::ENOENT).context("directory was removed"));
        }
        // Up: the nodes to open, bottom first, with their parents and
        // names in the layer; stops at a directory held open.
        let mut chain: Vec<(Option<Arc<Node>>, u64, u64, OsString)> = Vec::new();
        let mut cur: Option<Arc<Node>> = None;
        let mut ino = node.ino;
        let mut step = self.step(node, layer)?;
        let mut dir = loop {
            match step {
                Step::Root(path) => {
                    let d = self
                        .walk(layer, &path)?
                        .ok_or_else(|| Error::errno(libc::ENOENT))?;
                    self.dirs.put(ino, layer, d.clone());
                    break d;
                }
                Step::Under(parent, name) => {
                    chain.push((cur.take(), ino, parent, name));
                    if parent == ROOT_INO {
                        break self.root_dir(layer)?;
                    }
                    if let Some(d) = self.dirs.get(parent, layer) {
                        break d;
                    }
                    let p = self.nodes.get(parent)?;
                    ino = parent;
                    step = self.step(&p, layer)?;
                    cur = Some(p);
                }
            }
        };
        // Down, one name at a time. Lowers never change; in the upper each
        // name is checked to have stayed put while it was opened.
        for (held, ino, parent, name) in chain.into_iter().rev() {
            let opened = if immutable {
                LayerDir::open_at(dir.fd(), &name, Changes::Never)
            } else {
                let child: &Node = held.as_deref().unwrap_or(node);
                let pnode = self.nodes.get(parent)?;
                let seen = pnode.settled();
                let opened = LayerDir::open_at(dir.fd(), &name, self.upper_changes);
                if !pnode.unchanged_since(seen) || !child.is_at(parent, &name) {
                    return Ok(None);
                }
                // Removed before we looked: the name may be something else now.
                if child.is_dead() {
                    return Err(Error::errno(libc::ENOENT).context("directory was removed"));
                }
                opened
            };
            let d = Arc::new(opened?);
            self.dirs.put(ino, layer, d.clone());
            // Removed meanwhile (`gone` marks, then forgets): forget again.
            let held = held.as_deref().unwrap_or(node);
            if held.ino == ino && held.is_dead() {
                self.dirs.forget(ino, [layer]);
                return Err(Error::errno(libc::ENOENT).context("directory was removed"));
            }
            dir = d;
        }
        Ok(Some(dir))
    }

    /// The directory of node `ino` in `layer`.
    pub fn dir_of(&self, ino: u64, layer: LayerId) -> Result<Arc<LayerDir>> {
        if ino == ROOT_INO {
            return self.root_dir(layer);
        }
        // Held open: also what reaches a directory the kernel has not looked
        // up (a tree copy walks those), which has no node in the table.
        if let Some(d) = self.dirs.get(ino, layer) {
            return Ok(d);
        }
        let node = self.nodes.get(ino)?;
        self.dir(&node, layer)
    }

    /// The directory holding `node`'s object in `layer`, and its name
    /// there. The root is "." in its own directory.
    pub fn locate(&self, node: &Node, layer: LayerId) -> Result<(Arc<LayerDir>, OsString)> {
        if layer == INDEX {
            let key = node
                .stack()
                .index
                .ok_or_else(|| Error::errno(libc::ESTALE))?;
            return Ok((self.root_dir(INDEX)?, key));
        }
        if node.ino == ROOT_INO {
            return Ok((self.root_dir(layer)?, OsString::from(".")));
        }
        match self.step(node, layer)? {
            Step::Under(parent, name) => Ok((self.dir_of(parent, layer)?, name)),
            Step::Root(path) => {
                let (dir, name) = split_path(&path);
                let d = self
                    .walk(layer, dir)?
                    .ok_or_else(|| Error::errno(libc::ENOENT))?;
                Ok((d, name.to_os_string()))
            }
        }
    }

    /// Where `node`'s object sits in `layer` when no rename or unlink can
    /// move it: in a lower (never changes), or the root. `None`: an upper
    /// name, which `at`/`at_locked` must guard.
    fn fixed_place(
        &self,
        node: &Node,
        layer: LayerId,
    ) -> Result<Option<(Arc<LayerDir>, OsString)>> {
        if layer != UPPER || node.ino == ROOT_INO {
            return self.locate(node, layer).map(Some);
        }
        Ok(None)
    }

    /// Runs `f` on `node`'s object in `layer`, given as its directory there
    /// and its name. Upper names change (rename, unlink): `f` runs again if
    /// such a change in the parent raced with it, so it must have no effect
    /// beyond what it returns (open without O_TRUNC, stat, readlink).
    pub fn at<T>(
        &self,
        node: &Node,
        layer: LayerId,
        f: impl Fn(&LayerDir, &OsStr) -> Result<T>,
    ) -> Result<T> {
        if let Some((dir, name)) = self.fixed_place(node, layer)? {
            return f(&dir, &name);
        }
        for _ in 0..RETRIES {
            let (parent, name) = node.place();
            let pnode = self.nodes.get(parent)?;
            let seen = pnode.settled();
            let r = self.dir(&pnode, UPPER).and_then(|d| f(&d, &name));
            if pnode.unchanged_since(seen) && node.is_at(parent, &name) {
                // Removed before we looked: the name may be a whiteout now.
                if node.is_dead() {
                    return Err(Error::errno(libc::ENOENT).context("object was deleted"));
                }
                return r;
            }
        }
        Err(Error::errno(libc::EAGAIN).context("name kept moving"))
    }

    /// Runs `f` on `node`'s object in `layer` (its directory and name there)
    /// with the names of its parent locked, so `f` may change the object
    /// by its name (chmod, link) without the name moving under it.
    pub fn at_locked<T>(
        &self,
        node: &Node,
        layer: LayerId,
        f: impl FnOnce(&LayerDir, &OsStr) -> Result<T>,
    ) -> Result<T> {
        if let Some((dir, name)) = self.fixed_place(node, layer)? {
            return f(&dir, &name);
        }
        for _ in 0..RETRIES {
            let (parent, name) = node.place();
            let pnode = self.nodes.get(parent)?;
            let dir = self.dir(&pnode, UPPER)?;
            let _names = pnode.names.lock();
            if node.is_at(parent, &name) {
                return f(&dir, &name);
            }
        }
        Err(Error::errno(libc::EAGAIN).context("name kept moving"))
    }

    /// Opens `node`'s object in `layer` (never following a symlink; no
    /// O_TRUNC, see [`LayerReach::at`]).
    pub fn open(&self, node: &Node, layer: LayerId, flags: i32) -> Result<OwnedFd> {
        let flags = flags & !libc::O_TRUNC;
        self.at(node, layer, |dir, name| {
            sys::openat(dir.fd(), name, flags, 0)
        })
    }

    /// `lstat` of `node`'s object in `layer`.
    pub fn stat(&self, node: &Node, layer: LayerId) -> Result<Stat> {
        self.at(node, layer, |dir, name| sys::statat(dir.fd(), name))
    }

    /// Opens the directory at `path` (from the root of `layer`, no leading
    /// `/`) one component at a time; `None` when the layer has no directory
    /// there. Lower directories reached this way are not cached by path.
    pub fn walk(&self, layer: LayerId, path: &OsStr) -> Result<Option<Arc<LayerDir>>> {
        let mut dir = self.root_dir(layer)?;
        for name in path
            .as_bytes()
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty())
        {
            match LayerDir::open_at(dir.fd(), OsStr::from_bytes(name), self.changes(layer)) {
                Ok(d) => dir = Arc::new(d),
                Err(e) if e.is(libc::ENOENT) || e.is(libc::ENOTDIR) || e.is(libc::ELOOP) => {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Some(dir))
    }

    /// The path of `node`'s object in lower `layer`, from the layer root
    /// (no leading `/`): what a redirect to it records.
    pub fn lower_path(&self, node: &Node, layer: LayerId) -> Result<OsString> {
        let mut parts: Vec<OsString> = Vec::new();
        let mut cur: Option<Arc<Node>> = None;
        loop {
            let n = cur.as_deref().unwrap_or(node);
            if n.ino == ROOT_INO {
                break;
            }
            match self.step(n, layer)? {
                Step::Root(path) => {
                    parts.push(path);
                    break;
                }
                Step::Under(parent, name) => {
                    parts.push(name);
                    cur = Some(self.nodes.get(parent)?);
                }
            }
        }
        Ok(join_parts(parts))
    }

    /// The merged path of a node, for log messages only.
    pub fn path_of(&self, node: &Node) -> String {
        let mut parts: Vec<OsString> = Vec::new();
        let (mut parent, name) = node.place();
        parts.push(name);
        while parent != ROOT_INO && parts.len() < 4096 {
            let Ok(p) = self.nodes.get(parent) else {
                parts.push("?".into());
                break;
            };
            let (pp, pname) = p.place();
            parts.push(pname);
            parent = pp;
        }
        show_path(&join_parts(parts))
    }

    /// The merged path of `name` in `parent`, for log messages only.
    pub fn path_in(&self, parent: &Node, name: &OsStr) -> String {
        let base = if parent.ino == ROOT_INO {
            String::new()
        } else {
            self.path_of(parent)
        };
        format!("{base}/{}", show_name(name))
    }

    /// The merged path of `name` in `parent` for a log line, worked out only
    /// if the line is written.
    pub fn shown<'a>(&'a self, parent: &'a Node, name: &'a OsStr) -> PathIn<'a> {
        PathIn {
            reach: self,
            parent,
            name,
        }
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if let Some(node) = self.nodes.forget(ino, n) {
            if node.is_dir() {
                self.forget_dirs(ino, &node.stack());
            }
        }
    }

    /// Drops the held directories of `ino`, whose stack is `stack` (it was
    /// removed, replaced or forgotten; its number may come back).
    pub fn forget_dirs(&self, ino: u64, stack: &Stack) {
        self.dirs.forget(
            ino,
            std::iter::once(UPPER).chain(stack.lowers.iter().map(|l| l.layer)),
        );
    }

    /// The upper object of `node` opened `O_PATH`, for xattrs and times.
    pub fn open_top(&self, node: &Node) -> Result<OwnedFd> {
        let layer = node
            .stack()
            .top()
            .ok_or_else(|| Error::errno(libc::ESTALE))?;
        self.open(node, layer, libc::O_PATH)
    }
}

/// Joins path components given bottom first into "a/b/c".
fn join_parts(parts: Vec<OsString>) -> OsString {
    let mut out = OsString::new();
    for (i, p) in parts.into_iter().rev().enumerate() {
        if i > 0 {
            out.push("/");
        }
        out.push(p);
    }
    out
}

/// See [`LayerReach::shown`].
pub struct PathIn<'a> {
    reach: &'a LayerReach,
    parent: &'a Node,
    name: &'a OsStr,
}

impl std::fmt::Display for PathIn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reach.path_in(self.parent, self.name))
    }
}
