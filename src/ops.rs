//! Each filesystem operation as a short script over the union modules, in
//! plain Rust types (no FUSE): `fuse.rs` converts and replies, tests call
//! these directly.

use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::cli::WriteFormat;
use crate::error::{fail, Error, Result};
use crate::handles::{self, Handles};
use crate::layer::{LayerStack, UPPER};
use crate::lookup;
use crate::node::{Node, NodeTable, ROOT_INO};
use crate::readdir::{self, DirEntry};
use crate::sys::{self, Stat};
use crate::whiteout;

/// Attributes of a merged object: the top layer's `lstat` with the union's
/// inode number.
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    pub ino: u64,
    pub st: Stat,
}

/// How a mount behaves, beyond its layers.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Refuse every change (no upper, or `-o ro`).
    pub read_only: bool,
    /// How whiteouts and opaque markers are written into the upper.
    pub format: WriteFormat,
}

/// A mounted union: layers, the inode table and the open handles.
pub struct UnionFs {
    pub layers: LayerStack,
    pub nodes: NodeTable,
    pub handles: Handles,
    pub opts: Options,
}

/// Open flags that ask to change the file.
const WRITE_FLAGS: i32 = libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC | libc::O_APPEND;

impl UnionFs {
    pub fn new(layers: LayerStack, mut opts: Options) -> UnionFs {
        if layers.upper().is_none() {
            opts.read_only = true;
        }
        UnionFs {
            nodes: NodeTable::new(&layers),
            layers,
            handles: Handles::default(),
            opts,
        }
    }

    /// EROFS when nothing may change.
    fn check_writable(&self) -> Result<()> {
        if self.opts.read_only {
            return fail(libc::EROFS);
        }
        Ok(())
    }

    /// The attributes of a node, read from its top layer.
    fn attr_of(&self, node: &Node) -> Result<Attr> {
        let stack = node.stack();
        let (layer, path) = stack
            .top()
            .ok_or_else(|| Error::errno(libc::ESTALE).context("node with no layer"))?;
        let mut st = self.layers.get(layer)?.stat(path)?;
        Ok(self.finish_attr(node.ino, &stack, &mut st))
    }

    /// Puts the union's inode number into a layer's `lstat`; a merged
    /// directory reports one link, as overlayfs does, since its real count
    /// would miss the subdirectories of the other layers.
    fn finish_attr(&self, ino: u64, stack: &crate::node::Stack, st: &mut Stat) -> Attr {
        st.st_ino = ino;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR && stack.is_merged() {
            st.st_nlink = 1;
        }
        Attr { ino, st: *st }
    }

    // -----------------------------------------------------------------------
    // Lookup and attributes

    /// Resolves `name` in `parent` and records one kernel lookup of it.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        let pnode = self.nodes.get(parent)?;
        if !pnode.is_dir() {
            return fail(libc::ENOTDIR);
        }
        let found = lookup::resolve(&self.layers, &self.nodes, &pnode, name)?
            .ok_or_else(|| Error::errno(libc::ENOENT))?;
        let mut st = found.stat;
        let attr = self.finish_attr(found.ino, &found.stack, &mut st);
        let node = self
            .nodes
            .remember(found.ino, found.kind, found.stack, parent, name);
        if node.is_dir() {
            for (layer, dir) in found.dirs {
                self.nodes.cache_dir(node.ino, layer, dir);
            }
        }
        Ok(attr)
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.nodes.forget(ino, n);
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let node = self.nodes.get(ino)?;
        self.attr_of(&node)
    }

    pub fn readlink(&self, ino: u64) -> Result<OsString> {
        let node = self.nodes.get(ino)?;
        if node.kind != libc::S_IFLNK {
            return fail(libc::EINVAL);
        }
        let stack = node.stack();
        let (layer, path) = stack.top().ok_or_else(|| Error::errno(libc::ESTALE))?;
        let (dir, name) = crate::layer::split_path(path);
        let dirfd = self
            .layers
            .get(layer)?
            .open(dir, libc::O_PATH | libc::O_DIRECTORY)?;
        sys::readlinkat(dirfd.as_fd(), name)
    }

    /// Checks `access(2)` modes. The kernel checks permission bits itself
    /// (`default_permissions`); this adds what only the union knows.
    pub fn access(&self, ino: u64, mask: i32) -> Result<()> {
        self.nodes.get(ino)?;
        if mask & libc::W_OK != 0 {
            self.check_writable()?;
        }
        Ok(())
    }

    pub fn statfs(&self) -> Result<libc::statvfs> {
        // The upper takes the writes, so its free space is what matters.
        let layer = match self.layers.upper() {
            Some(u) => u,
            None => self.layers.get(1)?,
        };
        sys::fstatvfs(layer.root())
    }

    // -----------------------------------------------------------------------
    // Extended attributes

    /// The fd to read a node's xattrs from: its top layer's object.
    fn top_path_fd(&self, node: &Node) -> Result<std::os::fd::OwnedFd> {
        let stack = node.stack();
        let (layer, path) = stack.top().ok_or_else(|| Error::errno(libc::ESTALE))?;
        self.layers.get(layer)?.open(path, libc::O_PATH)
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        let node = self.nodes.get(ino)?;
        if whiteout::is_private_xattr(name) {
            return fail(libc::ENODATA);
        }
        let fd = self.top_path_fd(&node)?;
        sys::fgetxattr(fd.as_fd(), name)?.ok_or_else(|| Error::errno(libc::ENODATA))
    }

    /// The node's xattr names, NUL-terminated each, private ones left out.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.nodes.get(ino)?;
        let fd = self.top_path_fd(&node)?;
        let mut out = Vec::new();
        for name in sys::flistxattr(fd.as_fd())? {
            if !whiteout::is_private_xattr(&name) {
                out.extend_from_slice(name.as_bytes());
                out.push(0);
            }
        }
        Ok(out)
    }

    // -----------------------------------------------------------------------
    // Files

    /// Opens a regular file; returns the handle number.
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        let node = self.nodes.get(ino)?;
        if flags & WRITE_FLAGS != 0 {
            self.check_writable()?;
            return fail(libc::EROFS);
        }
        let stack = node.stack();
        let (layer, path) = stack.top().ok_or_else(|| Error::errno(libc::ESTALE))?;
        let keep = flags & (libc::O_NONBLOCK | libc::O_NOATIME);
        let fd = self
            .layers
            .get(layer)?
            .open(path, libc::O_RDONLY | keep)?;
        Ok(self.handles.open_file(ino, layer, fd, flags))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let h = self.handles.file(fh)?;
        let real = h.real();
        let mut buf = vec![0u8; size as usize];
        let n = sys::pread(handles::fd_of(&real), &mut buf, offset)?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn release(&self, fh: u64) {
        self.handles.close_file(fh);
    }

    // -----------------------------------------------------------------------
    // Directories

    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let node = self.nodes.get(ino)?;
        if !node.is_dir() {
            return fail(libc::ENOTDIR);
        }
        let entries = readdir::snapshot(&self.layers, &self.nodes, &node)?;
        Ok(self.handles.open_dir(ino, entries))
    }

    /// Entries of the snapshot from `offset` on, each with the offset of the
    /// entry after it (what the kernel passes back to continue).
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Vec<(u64, DirEntry)>> {
        let h = self.handles.dir(fh)?;
        if offset == 0 && h.served.swap(false, Ordering::Relaxed) {
            // rewinddir(3): show the directory as it is now.
            let node = self.nodes.get(h.ino)?;
            *h.entries.lock() = readdir::snapshot(&self.layers, &self.nodes, &node)?;
        }
        let entries = h.entries.lock();
        let start = (offset as usize).min(entries.len());
        let out: Vec<_> = entries[start..]
            .iter()
            .enumerate()
            .map(|(i, e)| ((start + i + 1) as u64, e.clone()))
            .collect();
        if !out.is_empty() {
            h.served.store(true, Ordering::Relaxed);
        }
        Ok(out)
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.close_dir(fh);
    }

    /// The attributes of a directory entry for readdirplus, counting a
    /// lookup like `lookup` does ("." and ".." are not counted by the kernel).
    pub fn entry_attr(&self, dir: u64, entry: &DirEntry) -> Result<Attr> {
        if entry.name == "." || entry.name == ".." {
            return self.getattr(if entry.name == "." { dir } else { entry.ino });
        }
        self.lookup(dir, &entry.name)
    }

    // -----------------------------------------------------------------------
    // Changes: the writable upper comes with copy-up; until then a change is
    // refused, never pretended.

    pub fn refuse_change(&self) -> Result<Attr> {
        self.check_writable()?;
        fail(libc::EROFS)
    }

    /// The root node, for tests.
    pub fn root(&self) -> Result<Arc<Node>> {
        self.nodes.get(ROOT_INO)
    }

    /// Is `ino` the upper layer's object? (for tests and logs)
    pub fn in_upper(&self, ino: u64) -> Result<bool> {
        Ok(self.nodes.get(ino)?.stack().upper && self.layers.get(UPPER).is_ok())
    }
}
