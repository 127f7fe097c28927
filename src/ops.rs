//! Each filesystem operation as a short script over the union modules, in
//! plain Rust types (no FUSE): `fuse.rs` converts and replies, tests call
//! these directly.

use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::path::Path;

use crate::cli::WriteFormat;
use crate::copy_up::{self, Data};
use crate::error::{fail, Error, Result};
use crate::handles::{self, Handles};
use crate::index::{self, Index};
use crate::layer::{join_path, LayerId, LayerStack, INDEX, UPPER};
use crate::lookup;
use crate::node::{Node, NodeTable, Stack, ROOT_INO};
use crate::readdir::{self, DirEntry};
use crate::sys::SetTime;
use crate::sys::{self, Stat};
use crate::upper::{Leave, Upper};
use crate::whiteout;
use crate::workdir::WorkDir;
use log::debug;
use parking_lot::{RwLock, RwLockUpgradableReadGuard};

/// Attributes of a merged object: the top layer's `lstat` with the union's
/// inode number.
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    pub ino: u64,
    pub st: Stat,
    /// Tells the object from an earlier one with the same number.
    pub generation: u64,
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
    /// The work dir and write format; `None` for a lowers-only mount.
    upper: Option<Upper>,
    /// Names change under a write lock (rename, unlink, rmdir: the upper
    /// change and the nodes' new paths together); every other request holds
    /// it shared, so it never reaches the upper by a path caught midway.
    ns: RwLock<()>,
}

/// Who asks: new objects belong to the caller (its fsuid/fsgid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// What to create.
#[derive(Debug, Clone)]
pub enum NewObject {
    /// A regular file, opened with these flags.
    File {
        mode: u32,
        flags: i32,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: OsString,
    },
    /// A fifo, socket or device.
    Special {
        mode: u32,
        rdev: u64,
    },
}

/// The attribute changes of a setattr.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// Open flags that ask to change the file.
const WRITE_FLAGS: i32 = libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC | libc::O_APPEND;

/// Applies a setattr to an open object (an fd, not a name).
fn apply_setattr(fd: std::os::fd::BorrowedFd, set: SetAttr) -> Result<()> {
    if let Some(size) = set.size {
        sys::truncate_via_proc(fd, size)?;
    }
    if set.uid.is_some() || set.gid.is_some() {
        sys::fchown(fd, set.uid.unwrap_or(u32::MAX), set.gid.unwrap_or(u32::MAX))?;
    }
    if let Some(mode) = set.mode {
        sys::fchmod(fd, mode & 0o7777)?;
    }
    if set.atime.is_some() || set.mtime.is_some() {
        sys::futimens(
            fd,
            set.atime.unwrap_or(SetTime::Omit),
            set.mtime.unwrap_or(SetTime::Omit),
        )?;
    }
    Ok(())
}

/// True for the layers holding upper copies: the upper and the index
/// (where a hard-linked object's copy is reached).
fn is_upper_copy(layer: LayerId) -> bool {
    layer == UPPER || layer == INDEX
}

/// The flags to open a layer's file with for a caller's open. O_APPEND is
/// dropped: the kernel already passes the end of file as the offset, and
/// pwrite(2) on an O_APPEND fd would ignore offsets. Creation flags were
/// handled by the union.
fn real_open_flags(flags: i32) -> i32 {
    let keep = libc::O_ACCMODE
        | libc::O_TRUNC
        | libc::O_NONBLOCK
        | libc::O_NOATIME
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_DIRECT;
    flags & keep
}

impl UnionFs {
    /// A union over `layers`. With an upper, `work` is its work dir
    /// (created, locked and cleaned here); errors name the problem.
    pub fn new(mut layers: LayerStack, work: Option<&Path>, mut opts: Options) -> Result<UnionFs> {
        let mut meta_prefix = "user.unionfs.";
        let mut upper = None;
        if let Some(layer) = layers.upper() {
            let work =
                work.ok_or_else(|| Error::errno(libc::EINVAL).context("upper without work dir"))?;
            let work = WorkDir::open(work, layer)?;
            let format = work.choose_format(opts.format);
            meta_prefix = work.meta_prefix();
            let index = index::open_layer(work.root(), layer)?;
            upper = Some(Upper { work, format });
            layers.set_index(index);
        } else {
            opts.read_only = true;
        }
        Ok(UnionFs {
            nodes: NodeTable::new(&layers, meta_prefix),
            layers,
            handles: Handles::default(),
            opts,
            upper,
            ns: RwLock::new(()),
        })
    }

    /// The hard-link index (mounts with an upper only).
    pub fn index(&self) -> Result<Index<'_>> {
        Ok(Index {
            layer: self.layers.get(INDEX)?,
            meta_prefix: self.nodes.meta_prefix,
        })
    }

    /// EROFS when nothing may change.
    fn check_writable(&self) -> Result<()> {
        if self.opts.read_only {
            return fail(libc::EROFS);
        }
        Ok(())
    }

    /// The writable side; EROFS for a read-only mount.
    pub fn upper(&self) -> Result<&Upper> {
        self.check_writable()?;
        self.upper.as_ref().ok_or_else(|| Error::errno(libc::EROFS))
    }

    /// The attributes of a node, read from its top layer.
    fn attr_of(&self, node: &Node) -> Result<Attr> {
        let stack = node.stack();
        if node.is_dead() {
            let (_, fd) = self.fd_of_dead(node, libc::O_RDONLY)?;
            let mut st = sys::fstat(fd.as_fd())?;
            return Ok(self.finish_attr(node.ino, &stack, &mut st));
        }
        let (layer, path) = stack
            .top()
            .ok_or_else(|| Error::errno(libc::ESTALE).context("node with no layer"))?;
        let mut st = self.layers.get(layer)?.stat(path)?;
        Ok(self.finish_attr(node.ino, &stack, &mut st))
    }

    /// Puts the union's inode number into a layer's `lstat`; a merged
    /// directory reports one link, as overlayfs does, since its real count
    /// would miss the subdirectories of the other layers.
    fn finish_attr(&self, ino: u64, stack: &Stack, st: &mut Stat) -> Attr {
        // A hard-linked object answers from its index entry, which every
        // name shares, and counts its names across layers.
        if let (Some(key), Ok(index)) = (&stack.index, self.index()) {
            if let Ok(ist) = index.layer.stat(key) {
                *st = ist;
                st.st_nlink = index.nlink(ino, ist.st_nlink).unwrap_or(ist.st_nlink);
            }
        }
        st.st_ino = ino;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR && stack.is_merged() {
            st.st_nlink = 1;
        }
        Attr {
            ino,
            st: *st,
            generation: 0,
        }
    }

    // -----------------------------------------------------------------------
    // Lookup and attributes

    /// Resolves `name` in `parent` and records one kernel lookup of it.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        let _ns = self.ns.read();
        let pnode = self.nodes.get(parent)?;
        if !pnode.is_dir() {
            return fail(libc::ENOTDIR);
        }
        let found = lookup::resolve(&self.layers, &self.nodes, &pnode, name)?
            .ok_or_else(|| Error::errno(libc::ENOENT))?;
        let mut st = found.stat;
        let mut attr = self.finish_attr(found.ino, &found.stack, &mut st);
        let node = self
            .nodes
            .remember(found.ino, found.kind, found.stack, parent, name);
        attr.generation = node.generation;
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

    /// Attributes of `ino`; through the open file `fh` when given, so an
    /// open file that was unlinked still answers fstat(2).
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<Attr> {
        let _ns = self.ns.read();
        let node = self.nodes.get(ino)?;
        if let Some(h) = fh.and_then(|fh| self.handles.file(fh).ok()) {
            let real = h.real();
            let mut st = sys::fstat(handles::fd_of(&real))?;
            return Ok(self.finish_attr(ino, &node.stack(), &mut st));
        }
        self.attr_of(&node)
    }

    pub fn readlink(&self, ino: u64) -> Result<OsString> {
        let _ns = self.ns.read();
        let node = self.nodes.get(ino)?;
        if node.kind != libc::S_IFLNK {
            return fail(libc::EINVAL);
        }
        let (dir, name) = self.top_parent(&node)?;
        sys::readlinkat(dir.as_fd(), &name)
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
        if node.is_dead() {
            return Ok(self.fd_of_dead(node, libc::O_RDONLY)?.1);
        }
        let stack = node.stack();
        let (layer, path) = stack.top().ok_or_else(|| Error::errno(libc::ESTALE))?;
        self.layers.get(layer)?.open(path, libc::O_PATH)
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        let _ns = self.ns.read();
        let node = self.nodes.get(ino)?;
        if whiteout::is_private_xattr(name) {
            return fail(libc::ENODATA);
        }
        let fd = self.top_path_fd(&node)?;
        sys::getxattr_via_proc(fd.as_fd(), name)?.ok_or_else(|| Error::errno(libc::ENODATA))
    }

    /// The node's xattr names, NUL-terminated each, private ones left out.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let _ns = self.ns.read();
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
        let _ns = self.ns.read();
        let node = self.nodes.get(ino)?;
        if node.kind != libc::S_IFREG {
            // As in opendir: a newer object with a removed file's number.
            return fail(libc::ENOENT);
        }
        if node.is_dead() {
            // Reopened through /proc/PID/fd after its last name was removed.
            let (layer, fd) = self.fd_of_dead(&node, real_open_flags(flags) & !libc::O_TRUNC)?;
            return Ok(self.handles.open_file(ino, layer, fd, flags));
        }
        if flags & WRITE_FLAGS != 0 {
            self.upper()?;
            let data = if flags & libc::O_TRUNC != 0 {
                Data::Skip
            } else {
                Data::All
            };
            copy_up::copy_up(self, &node, data)?;
        }
        let stack = node.stack();
        let (layer, path) = stack.top().ok_or_else(|| Error::errno(libc::ESTALE))?;
        let fd = self.layers.get(layer)?.open(path, real_open_flags(flags))?;
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
        let _ns = self.ns.read();
        let node = self.nodes.get(ino)?;
        if !node.is_dir() || node.is_dead() {
            // Removed while the caller was opening it; or the kernel holds a
            // directory by this number and this node is a newer object that
            // took the number of a removed one.
            return fail(libc::ENOENT);
        }
        let entries = readdir::snapshot(&self.layers, &self.nodes, &node)?;
        Ok(self.handles.open_dir(ino, entries))
    }

    /// Entries of the snapshot from `offset` on, each with the offset of the
    /// entry after it (what the kernel passes back to continue). With
    /// `inos`, every entry's number is settled (readdir); readdirplus looks
    /// each entry up instead.
    pub fn readdir(&self, fh: u64, offset: u64, inos: bool) -> Result<Vec<(u64, DirEntry)>> {
        let _ns = self.ns.read();
        let h = self.handles.dir(fh)?;
        let node = self.nodes.get(h.ino)?;
        if offset == 0 && h.served.swap(false, Ordering::Relaxed) {
            // rewinddir(3): show the directory as it is now.
            *h.entries.lock() = readdir::snapshot(&self.layers, &self.nodes, &node)?;
        }
        let mut entries = h.entries.lock();
        let start = (offset as usize).min(entries.len());
        if inos {
            readdir::settle_inos(&self.layers, &self.nodes, &node, &mut entries[start..])?;
        }
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
            return self.getattr(if entry.name == "." { dir } else { entry.ino }, None);
        }
        self.lookup(dir, &entry.name)
    }

    // -----------------------------------------------------------------------
    // Changes to the tree. Each copies up what it touches, then changes the
    // upper through `upper.rs`.

    /// EPERM for a name that would forge a whiteout (`.wh.*`).
    fn check_new_name(name: &OsStr) -> Result<()> {
        if whiteout::is_marker_name(name) {
            return Err(Error::errno(libc::EPERM).context("names starting .wh. are reserved"));
        }
        if name.len() > 255 {
            return fail(libc::ENAMETOOLONG);
        }
        Ok(())
    }

    /// The parent directory of a change: a directory, copied up.
    fn dir_for_change(&self, parent: u64) -> Result<Arc<Node>> {
        let pnode = self.nodes.get(parent)?;
        if !pnode.is_dir() {
            return fail(libc::ENOTDIR);
        }
        copy_up::copy_up(self, &pnode, Data::All)?;
        Ok(pnode)
    }

    /// The directory holding `node`'s top object (its upper copy after a
    /// copy-up, or its index entry) and the object's name in it.
    fn top_parent(&self, node: &Node) -> Result<(std::os::fd::OwnedFd, OsString)> {
        let stack = node.stack();
        let (layer, path) = stack.top().ok_or_else(|| Error::errno(libc::ESTALE))?;
        let (dir, name) = crate::layer::split_path(path);
        let fd = self
            .layers
            .get(layer)?
            .open(dir, libc::O_PATH | libc::O_DIRECTORY)?;
        Ok((fd, name.to_os_string()))
    }

    /// Creates a file, directory, symlink or special file owned by the
    /// caller. Returns its attributes and, for a file, its open handle.
    pub fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        what: NewObject,
    ) -> Result<(Attr, Option<u64>)> {
        let _ns = self.ns.read();
        let upper = self.upper()?;
        Self::check_new_name(name)?;
        if let NewObject::Special { mode, rdev } = what {
            if mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0 {
                return Err(Error::errno(libc::EPERM).context("a 0/0 device is a whiteout"));
            }
        }
        let pnode = self.dir_for_change(parent)?;
        if lookup::resolve(&self.layers, &self.nodes, &pnode, name)?.is_some() {
            return fail(libc::EEXIST);
        }
        let pdir = self.nodes.dir(&self.layers, &pnode, UPPER)?;
        let pst = sys::fstat(pdir.fd())?;
        // A setgid directory hands its group down (and, to directories, the bit).
        let setgid_parent = pst.st_mode & libc::S_ISGID != 0;
        let gid = if setgid_parent {
            pst.st_gid
        } else {
            caller.gid
        };
        let work = upper.work.tmp();
        let tmp = upper.work.temp_name();
        let built = (|| -> Result<()> {
            match &what {
                NewObject::File { mode, .. } => {
                    let fd = sys::openat(
                        work,
                        &tmp,
                        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                        0o600,
                    )?;
                    sys::fchown(fd.as_fd(), caller.uid, gid)?;
                    sys::fchmod(fd.as_fd(), mode & 0o7777)
                }
                NewObject::Dir { mode } => {
                    sys::mkdirat(work, &tmp, 0o700)?;
                    let fd = sys::openat(work, &tmp, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                    sys::fchown(fd.as_fd(), caller.uid, gid)?;
                    let extra = if setgid_parent { libc::S_ISGID } else { 0 };
                    sys::fchmod(fd.as_fd(), (mode & 0o7777) | extra)?;
                    // Over a name a lower still has, the new directory must
                    // not merge with it: it starts empty.
                    if lookup::in_lowers(&self.layers, &self.nodes, &pnode, name)? {
                        upper.make_opaque(fd.as_fd())?;
                    }
                    Ok(())
                }
                NewObject::Symlink { target } => {
                    sys::symlinkat(target, work, &tmp)?;
                    sys::lchownat(work, &tmp, caller.uid, gid)
                }
                NewObject::Special { mode, rdev } => {
                    sys::mknodat(work, &tmp, (mode & libc::S_IFMT) | 0o600, *rdev)?;
                    sys::lchownat(work, &tmp, caller.uid, gid)?;
                    sys::fchmodat(work, &tmp, mode & 0o7777)
                }
            }
        })();
        if let Err(e) = built {
            upper.work.remove(&tmp);
            return Err(e);
        }
        let is_dir = matches!(what, NewObject::Dir { .. });
        upper.place(&tmp, &pdir, name, is_dir)?;

        let mut st = sys::statat(pdir.fd(), name)?;
        let ino = self.nodes.ino_for(self.layers.get(UPPER)?, st.st_ino);
        let pstack = pnode.stack();
        let stack = Stack {
            path: join_path(&pstack.path, name),
            upper: true,
            lowers: Vec::new(),
            lower_path: join_path(&pstack.lower_path, name),
            index: None,
        };
        let mut attr = self.finish_attr(ino, &stack, &mut st);
        let kind = st.st_mode & libc::S_IFMT;
        let node = self.nodes.remember(ino, kind, stack, parent, name);
        attr.generation = node.generation;
        let fh = match what {
            NewObject::File { flags, .. } => {
                let fd = self
                    .layers
                    .get(UPPER)?
                    .open(&node.stack().path, real_open_flags(flags) & !libc::O_TRUNC)?;
                Some(self.handles.open_file(ino, UPPER, fd, flags))
            }
            _ => None,
        };
        Ok((attr, fh))
    }

    /// A hard link `newname` in `newparent` to `ino`.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<Attr> {
        let _ns = self.ns.read();
        let upper = self.upper()?;
        Self::check_new_name(newname)?;
        let node = self.nodes.get(ino)?;
        if node.is_dir() {
            return fail(libc::EPERM);
        }
        let pnode = self.dir_for_change(newparent)?;
        if lookup::resolve(&self.layers, &self.nodes, &pnode, newname)?.is_some() {
            return fail(libc::EEXIST);
        }
        copy_up::copy_up(self, &node, Data::All)?;
        // A plain hard link in the upper, of the upper copy (or of the index
        // entry, for an object that already has one), so the upper stays a
        // layer kernel overlayfs reads with the same link counts.
        let (sdir, sname) = self.top_parent(&node)?;
        let tmp = upper.work.temp_name();
        debug!(
            "link {} as {}",
            sname.to_string_lossy(),
            newname.to_string_lossy()
        );
        sys::linkat(sdir.as_fd(), &sname, upper.work.tmp(), &tmp)?;
        let pdir = self.nodes.dir(&self.layers, &pnode, UPPER)?;
        upper.place(&tmp, &pdir, newname, false)?;
        let mut attr = self.attr_of(&node)?;
        let node = self
            .nodes
            .remember(ino, node.kind, node.stack(), newparent, newname);
        attr.generation = node.generation;
        Ok(attr)
    }

    /// unlink(2) (`dir` false) or rmdir(2) (`dir` true).
    pub fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<()> {
        let ns = self.ns.upgradable_read();
        let upper = self.upper()?;
        let pnode = self.nodes.get(parent)?;
        let found = lookup::resolve(&self.layers, &self.nodes, &pnode, name)?
            .ok_or_else(|| Error::errno(libc::ENOENT))?;
        let is_dir = found.kind == libc::S_IFDIR;
        match (dir, is_dir) {
            (true, false) => return fail(libc::ENOTDIR),
            (false, true) => return fail(libc::EISDIR),
            _ => {}
        }
        if is_dir {
            let probe = Node::detached(found.ino, found.kind, found.stack.clone(), parent, name);
            if readdir::snapshot(&self.layers, &self.nodes, &probe)?.len() > 2 {
                return fail(libc::ENOTEMPTY);
            }
        }
        copy_up::copy_up(self, &pnode, Data::All)?;
        let pdir = self.nodes.dir(&self.layers, &pnode, UPPER)?;
        let leave = if lookup::in_lowers(&self.layers, &self.nodes, &pnode, name)? {
            Leave::Whiteout
        } else {
            Leave::Nothing
        };
        if !is_dir && !found.stack.upper && found.stat.st_nlink > 1 {
            self.lower_name_gone(found.ino, &found.stack)?;
        }
        self.keep_reachable(&pnode, name, &found)?;
        let _ns = RwLockUpgradableReadGuard::upgrade(ns);
        if found.stack.upper {
            upper.remove(&pdir, name, is_dir, leave)?;
        } else {
            upper.whiteout(&pdir, name)?;
        }
        self.gone(&found);
        Ok(())
    }

    /// The name `found` was reached by is gone. If it was the object's
    /// last, the node is marked dead: an open file of it must not be copied
    /// up to a name again, and a new object given its number (a filesystem
    /// reuses numbers) gets a new node.
    fn gone(&self, found: &lookup::Found) {
        if found.kind == libc::S_IFDIR {
            self.nodes.forget_dir_fds_of(found.ino, &found.stack);
        }
        let Ok(node) = self.nodes.get(found.ino) else {
            return;
        };
        let last_name = found.kind == libc::S_IFDIR || found.stat.st_nlink <= 1;
        if found.stack.index.is_none() && last_name {
            node.set_dead();
        }
    }

    /// Before the upper name `name` (in `parent`) of a hard-linked object is
    /// removed or replaced: if the node reaches its upper copy by that very
    /// name, give it an index entry to reach it by from now on.
    fn keep_reachable(&self, parent: &Node, name: &OsStr, found: &lookup::Found) -> Result<()> {
        if !found.stack.upper || found.kind == libc::S_IFDIR || found.stat.st_nlink <= 1 {
            return Ok(());
        }
        let Ok(node) = self.nodes.get(found.ino) else {
            return Ok(());
        };
        let _guard = node.lock.lock();
        let mut stack = node.stack();
        if stack.index.is_some() || stack.path != join_path(&parent.stack().path, name) {
            return Ok(());
        }
        let pdir = self.nodes.dir(&self.layers, parent, UPPER)?;
        self.index()?.add(pdir.fd(), name, found.ino, 0)?;
        stack.index = Some(index::key(found.ino));
        node.set_stack(stack);
        Ok(())
    }

    /// An fd on the object of a node whose last name is gone, reopened from
    /// one of its open files (the only way left to reach it).
    fn fd_of_dead(&self, node: &Node, flags: i32) -> Result<(LayerId, std::os::fd::OwnedFd)> {
        let h = self
            .handles
            .files_of(node.ino)
            .into_iter()
            .next()
            .ok_or_else(|| Error::errno(libc::ENOENT).context("object was deleted"))?;
        let (layer, fd) = h.real();
        if flags & libc::O_ACCMODE != libc::O_RDONLY && !is_upper_copy(layer) {
            // Its bytes are still a lower's, and it has no name to copy to.
            return fail(libc::ENOENT);
        }
        Ok((layer, sys::reopen(fd.as_fd(), flags)?))
    }

    /// A lower name of a hard-linked object goes away (unlink, or rename
    /// after which the name is copied): the object's other names must count
    /// one link fewer, which only an index entry can record.
    fn lower_name_gone(&self, ino: u64, stack: &Stack) -> Result<()> {
        let live = self.nodes.get(ino).ok();
        let _guard = live.as_ref().map(|n| n.lock.lock());
        let current = live.as_ref().map(|n| n.stack());
        let indexed = current
            .as_ref()
            .and_then(|s| s.index.clone())
            .or(stack.index.clone());
        if indexed.is_some() {
            return self.index()?.lower_name_gone(ino);
        }
        let new = copy_up::copy_up_to_index(self, ino, stack)?;
        if let (Some(node), Some(key)) = (&live, new.index) {
            let mut s = node.stack();
            s.index = Some(key);
            node.set_stack(s);
        }
        Ok(())
    }

    /// rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE, for every type,
    /// directories from lowers included (never EXDEV): the source is copied
    /// up (a directory with everything below it, then made opaque), renamed
    /// in the upper, and a whiteout left at the old name if a lower has it.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let ns = self.ns.upgradable_read();
        let upper = self.upper()?;
        Self::check_new_name(newname)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        if flags & !(libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE) != 0 || (exchange && noreplace)
        {
            return fail(libc::EINVAL);
        }
        let pnode = self.dir_for_change(parent)?;
        let npnode = self.dir_for_change(newparent)?;
        let src = lookup::resolve(&self.layers, &self.nodes, &pnode, name)?
            .ok_or_else(|| Error::errno(libc::ENOENT))?;
        let dst = lookup::resolve(&self.layers, &self.nodes, &npnode, newname)?;
        match &dst {
            None if exchange => return fail(libc::ENOENT),
            Some(_) if noreplace => return fail(libc::EEXIST),
            // Two names of one object: rename(2) does nothing.
            Some(d) if d.ino == src.ino && !exchange => return Ok(()),
            _ => {}
        }
        let src_dir = src.kind == libc::S_IFDIR;
        if let Some(d) = dst.as_ref().filter(|_| !exchange) {
            match (src_dir, d.kind == libc::S_IFDIR) {
                (false, true) => return fail(libc::EISDIR),
                (true, false) => return fail(libc::ENOTDIR),
                (true, true) => {
                    let probe = Node::detached(d.ino, d.kind, d.stack.clone(), newparent, newname);
                    if readdir::snapshot(&self.layers, &self.nodes, &probe)?.len() > 2 {
                        return fail(libc::ENOTEMPTY);
                    }
                }
                (false, false) => {}
            }
        }
        let src = self.prepare_rename_source(&pnode, name, src, &npnode, newname)?;
        let dst_dir = dst
            .as_ref()
            .is_some_and(|d| exchange && d.kind == libc::S_IFDIR);
        if let Some(d) = dst.filter(|_| exchange) {
            self.prepare_rename_source(&npnode, newname, d, &pnode, name)?;
        }

        let pdir = self.nodes.dir(&self.layers, &pnode, UPPER)?;
        let npdir = self.nodes.dir(&self.layers, &npnode, UPPER)?;
        let leave = if !exchange && lookup::in_lowers(&self.layers, &self.nodes, &pnode, name)? {
            Leave::Whiteout
        } else {
            Leave::Nothing
        };
        // What stands at the target now (after the copy-ups): replaced by
        // a plain rename, moved to the old name by an exchange.
        let at_target = lookup::resolve(&self.layers, &self.nodes, &npnode, newname)?;
        let (replaced, dnode) = if exchange {
            (None, at_target.and_then(|d| self.nodes.get(d.ino).ok()))
        } else {
            (at_target, None)
        };
        if let Some(d) = replaced.as_ref().filter(|d| d.kind != libc::S_IFDIR) {
            if !d.stack.upper && d.stat.st_nlink > 1 {
                self.lower_name_gone(d.ino, &d.stack)?;
            }
            self.keep_reachable(&npnode, newname, d)?;
        }
        let _ns = RwLockUpgradableReadGuard::upgrade(ns);
        upper.rename(&pdir, name, &npdir, newname, exchange, leave)?;
        if let Some(d) = replaced.as_ref() {
            self.gone(d);
        }

        // Under an opaque directory whiteouts hide nothing: drop them, once
        // the rename is done (so they cannot free the room it needed).
        if src_dir {
            upper.drop_stray_whiteouts(
                self.layers.get(UPPER)?,
                &join_path(&npnode.stack().path, newname),
            )?;
        }
        if dst_dir {
            upper.drop_stray_whiteouts(
                self.layers.get(UPPER)?,
                &join_path(&pnode.stack().path, name),
            )?;
        }

        // The nodes follow their objects (both at once for an exchange, so
        // one move's new paths are not taken for the other's old ones).
        let mut moves = Vec::new();
        if let Ok(snode) = self.nodes.get(src.ino) {
            moves.push((
                snode,
                newparent,
                newname.to_os_string(),
                npnode.stack().path,
            ));
        }
        if let Some(d) = dnode {
            moves.push((d, parent, name.to_os_string(), pnode.stack().path));
        }
        self.moved(&moves);
        Ok(())
    }

    /// Readies one side of a rename: its upper copy exists (a directory's
    /// whole tree, then opaque), and a directory landing where a lower has
    /// the name is opaque before it lands, so the lower never shows in it.
    fn prepare_rename_source(
        &self,
        parent: &Node,
        name: &OsStr,
        found: lookup::Found,
        to_parent: &Node,
        to_name: &OsStr,
    ) -> Result<lookup::Found> {
        let is_dir = found.kind == libc::S_IFDIR;
        let had_lowers = !found.stack.lowers.is_empty();
        if is_dir {
            let node = match self.nodes.get(found.ino) {
                Ok(n) => n,
                Err(_) => Arc::new(Node::detached(
                    found.ino,
                    found.kind,
                    found.stack.clone(),
                    parent.ino,
                    name,
                )),
            };
            copy_up::copy_up_tree(self, parent, name, &node)?;
        } else {
            copy_up::copy_up_entry(self, parent, name, &found)?;
        }
        let now = lookup::resolve(&self.layers, &self.nodes, parent, name)?
            .ok_or_else(|| Error::errno(libc::ENOENT))?;
        if is_dir
            && (had_lowers || lookup::in_lowers(&self.layers, &self.nodes, to_parent, to_name)?)
        {
            let fd = self
                .layers
                .get(UPPER)?
                .open(&now.stack.path, libc::O_RDONLY | libc::O_DIRECTORY)?;
            // Opaque, it no longer takes its number from the lowers: record
            // the number it had (an upper dir we did not copy up lacks it).
            if had_lowers && self.nodes.read_origin(fd.as_fd()).is_none() {
                self.nodes.write_origin(fd.as_fd(), found.ino)?;
            }
            copy_up::keep_times(fd.as_fd(), || self.upper()?.make_opaque(fd.as_fd()))?;
        }
        Ok(now)
    }

    /// Records that each node now sits at a name in a parent (whose upper
    /// path is given), and moves the paths of everything the kernel knows
    /// below the directories among them.
    fn moved(&self, moves: &[(Arc<Node>, u64, OsString, OsString)]) {
        let mut prefixes = Vec::new();
        for (node, parent, name, parent_path) in moves {
            let old = node.stack();
            let mut stack = old.clone();
            stack.path = join_path(parent_path, name);
            stack.upper = true;
            // A moved directory is opaque (or had no lowers): nothing below
            // it merges with a lower any more.
            stack.lowers.clear();
            node.set_place(*parent, name.clone());
            node.set_stack(stack.clone());
            if node.is_dir() {
                let mut prefix = old.path.as_bytes().to_vec();
                prefix.push(b'/');
                prefixes.push((prefix, stack.path));
            }
        }
        if prefixes.is_empty() {
            return;
        }
        let moved: Vec<u64> = moves.iter().map(|m| m.0.ino).collect();
        for n in self.nodes.all() {
            if moved.contains(&n.ino) {
                continue;
            }
            let mut s = n.stack();
            let hit = prefixes.iter().find_map(|(prefix, to)| {
                s.path
                    .as_bytes()
                    .strip_prefix(prefix.as_slice())
                    .map(|rest| join_path(to, OsStr::from_bytes(rest)))
            });
            if let Some(path) = hit {
                s.path = path;
                s.lowers.clear();
                if n.is_dir() {
                    self.nodes.forget_dir_fds(&n);
                }
                n.set_stack(s);
            }
        }
    }

    /// setattr: truncate, chmod, chown, utimes (after copy-up).
    pub fn setattr(&self, ino: u64, set: SetAttr) -> Result<Attr> {
        let _ns = self.ns.read();
        self.upper()?;
        let node = self.nodes.get(ino)?;
        if node.is_dead() {
            return self.setattr_dead(&node, set);
        }
        if node.ino == ROOT_INO {
            // The root has no parent to name it by: change it through its fd.
            let root = self.layers.get(UPPER)?;
            apply_setattr(root.root(), set)?;
            return self.attr_of(&node);
        }
        let data = if set.size == Some(0) {
            Data::Skip
        } else {
            Data::All
        };
        // A size change sets the mtime; a truncate to zero copies no data,
        // so the copy is already empty and the layer would not see one.
        let resized = match set.size {
            Some(size) => self.attr_of(&node)?.st.st_size as u64 != size,
            None => false,
        };
        copy_up::copy_up(self, &node, data)?;
        let (dir, name) = self.top_parent(&node)?;
        if let Some(size) = set.size {
            if node.is_dir() {
                return fail(libc::EISDIR);
            }
            // The size alone: ftruncate(2) arrives with "mtime = now" of its
            // own, truncate(2) without, and the layer's truncate then keeps
            // the times when the size does not change.
            let fd = sys::openat(dir.as_fd(), &name, libc::O_PATH, 0)?;
            sys::truncate_via_proc(fd.as_fd(), size)?;
            if resized && set.mtime.is_none() {
                sys::utimensat(dir.as_fd(), &name, SetTime::Omit, SetTime::Now)?;
            }
        }
        if set.uid.is_some() || set.gid.is_some() {
            sys::lchownat(
                dir.as_fd(),
                &name,
                set.uid.unwrap_or(u32::MAX),
                set.gid.unwrap_or(u32::MAX),
            )?;
        }
        if let Some(mode) = set.mode {
            if node.kind != libc::S_IFLNK {
                sys::fchmodat(dir.as_fd(), &name, mode & 0o7777)?;
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            sys::utimensat(
                dir.as_fd(),
                &name,
                set.atime.unwrap_or(SetTime::Omit),
                set.mtime.unwrap_or(SetTime::Omit),
            )?;
        }
        self.attr_of(&node)
    }

    /// setattr of an object whose last name is gone, through one of its
    /// open files (fchmod(2) on an fd of an unlinked file).
    fn setattr_dead(&self, node: &Node, set: SetAttr) -> Result<Attr> {
        let flags = if set.size.is_some() {
            libc::O_WRONLY
        } else {
            libc::O_RDONLY
        };
        let (layer, fd) = self.fd_of_dead(node, flags)?;
        if !is_upper_copy(layer) {
            return fail(libc::ENOENT);
        }
        apply_setattr(fd.as_fd(), set)?;
        self.attr_of(node)
    }

    /// Writes through an open handle (always on the upper copy).
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let h = self.handles.file(fh)?;
        let real = h.real();
        if !is_upper_copy(real.0) {
            return fail(libc::EBADF);
        }
        sys::pwrite(handles::fd_of(&real), data, offset)
    }

    pub fn fallocate(&self, fh: u64, mode: i32, offset: u64, len: u64) -> Result<()> {
        let h = self.handles.file(fh)?;
        let real = h.real();
        if !is_upper_copy(real.0) {
            return fail(libc::EBADF);
        }
        sys::fallocate(handles::fd_of(&real), mode, offset, len)
    }

    pub fn fsync(&self, fh: u64, data_only: bool) -> Result<()> {
        let h = self.handles.file(fh)?;
        let real = h.real();
        if !is_upper_copy(real.0) {
            return Ok(()); // nothing of ours to flush in a lower
        }
        sys::fsync(handles::fd_of(&real), data_only)
    }

    pub fn fsyncdir(&self, ino: u64, data_only: bool) -> Result<()> {
        let _ns = self.ns.read();
        let node = self.nodes.get(ino)?;
        if !node.stack().upper || self.upper.is_none() {
            return Ok(());
        }
        let dir = self.nodes.dir(&self.layers, &node, UPPER)?;
        sys::fsync(dir.fd(), data_only)
    }

    /// lseek for SEEK_DATA / SEEK_HOLE (the kernel does the others).
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let h = self.handles.file(fh)?;
        let real = h.real();
        sys::lseek(handles::fd_of(&real), offset, whence)
    }

    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        let _ns = self.ns.read();
        self.upper()?;
        if whiteout::is_private_xattr(name) {
            return Err(Error::errno(libc::EPERM).context("private xattr"));
        }
        let node = self.nodes.get(ino)?;
        copy_up::copy_up(self, &node, Data::All)?;
        let fd = self.top_path_fd(&node)?;
        sys::fsetxattr(fd.as_fd(), name, value, flags)
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        let _ns = self.ns.read();
        self.upper()?;
        if whiteout::is_private_xattr(name) {
            return Err(Error::errno(libc::EPERM).context("private xattr"));
        }
        let node = self.nodes.get(ino)?;
        let fd = self.top_path_fd(&node)?;
        // Nothing to copy up for an attribute that is not there.
        if sys::fgetxattr(fd.as_fd(), name)?.is_none() {
            return fail(libc::ENODATA);
        }
        copy_up::copy_up(self, &node, Data::All)?;
        let fd = self.top_path_fd(&node)?;
        sys::fremovexattr(fd.as_fd(), name)
    }
}
