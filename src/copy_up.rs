//! Copy-up (DESIGN §3): the first change to a lower object rebuilds it in
//! the upper. Parents first; each object is built in the work dir (data,
//! then owner, xattrs, mode, capabilities, times) and renamed into place in
//! one step, so no reader ever sees a partial file and a crash leaves only
//! a temporary that the next mount removes.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};

use log::debug;

use crate::error::{Error, Result};
use crate::index;
use crate::layer::{join_path, Layer, UPPER};
use crate::lookup::{self, Found};
use crate::node::{Node, Stack, ROOT_INO};
use crate::ops::UnionFs;
use crate::readdir;
use crate::sys::{self, SetTime, Stat};
use crate::whiteout;
use std::sync::Arc;

/// Whether the file's bytes come along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    All,
    /// The caller truncates to zero right after (open with O_TRUNC), so
    /// copying the bytes would be wasted.
    Skip,
}

/// The xattr applied last: writing data or changing the owner clears it.
const CAPABILITY: &str = "security.capability";

/// Makes sure `node` has its upper copy, copying its ancestors up first.
///
/// A hard-linked object whose copy is already in the index needs nothing
/// more: its data and metadata live there, whatever name it was reached by
/// (giving it an upper name here could bring back a name since unlinked).
pub fn copy_up(fs: &UnionFs, node: &Node, data: Data) -> Result<()> {
    if node.stack().has_upper_copy() {
        return Ok(());
    }
    if node.is_dead() {
        // Its last name was removed: there is nowhere to copy it to, and
        // copying it to its old name would bring a deleted file back.
        return Err(Error::errno(libc::ENOENT).context("object was deleted"));
    }
    fs.upper()?;
    // Parents first, each under its own lock: no thread ever holds two
    // node locks here, so copy-ups cannot deadlock each other.
    let (parent_ino, name) = node.place();
    if node.ino == ROOT_INO {
        return Err(Error::errno(libc::EIO).context("root has no upper"));
    }
    let parent = fs.nodes.get(parent_ino)?;
    copy_up(fs, &parent, Data::All)?;

    let _guard = node.lock.lock();
    let stack = node.stack();
    if stack.has_upper_copy() {
        return Ok(()); // another writer copied it up while we waited
    }
    // Re-check on disk too: another name of the object, or a directory
    // rename's tree copy, may have made the copy without this node.
    if let Some(now) = lookup::resolve(&fs.layers, &fs.nodes, &parent, &name)? {
        if now.ino == node.ino && now.stack.has_upper_copy() {
            node.set_stack(now.stack.clone());
            return follow_copy(fs, node.ino, &now.stack);
        }
    }
    let new = copy_up_name(fs, &parent, &name, node.ino, &stack, data)?;
    node.set_stack(new.clone());
    follow_copy(fs, node.ino, &new)
}

/// Points the files opened before a copy-up at the copy, so they see what
/// writers write from here on (kernel overlayfs does the same).
pub fn follow_copy(fs: &UnionFs, ino: u64, stack: &Stack) -> Result<()> {
    let Some((layer, path)) = stack.top() else {
        return Ok(());
    };
    for h in fs.handles.files_of(ino) {
        if h.real().0 != layer {
            h.set_real(layer, fs.layers.get(layer)?.open(path, libc::O_RDONLY)?);
        }
    }
    Ok(())
}

/// Copies up the directory `dir` (at `name` in `parent`, which is in the
/// upper) and everything shown below it: a directory rename moves the whole
/// tree into the upper before it is made opaque.
pub fn copy_up_tree(fs: &UnionFs, parent: &Node, name: &OsStr, dir: &Node) -> Result<()> {
    {
        let _guard = dir.lock.lock();
        let stack = dir.stack();
        if !stack.upper {
            let new = copy_up_name(fs, parent, name, dir.ino, &stack, Data::All)?;
            dir.set_stack(new);
        }
    }
    let udir = fs.nodes.dir(&fs.layers, dir, UPPER)?;
    keep_times(udir.fd(), || copy_children(fs, dir))
}

/// Copies up everything shown in `dir` (whose upper copy exists).
fn copy_children(fs: &UnionFs, dir: &Node) -> Result<()> {
    for entry in readdir::snapshot(&fs.layers, &fs.nodes, dir)?
        .iter()
        .skip(2)
    {
        let Some(found) = lookup::resolve(&fs.layers, &fs.nodes, dir, &entry.name)? else {
            continue;
        };
        if found.kind == libc::S_IFDIR {
            let live = fs
                .nodes
                .get(found.ino)
                .ok()
                .filter(|n| n.place() == (dir.ino, entry.name.clone()));
            let child = live.unwrap_or_else(|| {
                Arc::new(Node::detached(
                    found.ino,
                    found.kind,
                    found.stack.clone(),
                    dir.ino,
                    &entry.name,
                ))
            });
            copy_up_tree(fs, dir, &entry.name, &child)?;
        } else {
            copy_up_entry(fs, dir, &entry.name, &found)?;
        }
    }
    Ok(())
}

/// Gives the entry `name` of `parent` (in the upper) its own upper copy:
/// per name, not per node, since two names of one hard-linked object are
/// one node. `found` is what `name` resolved to.
pub fn copy_up_entry(fs: &UnionFs, parent: &Node, name: &OsStr, found: &Found) -> Result<()> {
    if found.stack.upper {
        return Ok(());
    }
    let live = fs.nodes.get(found.ino).ok();
    let _guard = live.as_ref().map(|n| n.lock.lock());
    // A node the kernel holds may have been copied up by a racing writer
    // while we waited for its lock: look again.
    let stack = match &live {
        Some(_) => match lookup::resolve(&fs.layers, &fs.nodes, parent, name)? {
            Some(now) if now.stack.upper => return Ok(()),
            Some(now) => now.stack,
            None => return Err(Error::errno(libc::ENOENT)),
        },
        None => found.stack.clone(),
    };
    let new = copy_up_name(fs, parent, name, found.ino, &stack, Data::All)?;
    follow_copy(fs, found.ino, &new)?;
    // The node of a hard-linked object may sit at another name.
    if let Some(n) = &live {
        if !n.stack().has_upper_copy() || n.place() == (parent.ino, name.to_os_string()) {
            n.set_stack(new);
        }
    }
    Ok(())
}

/// Gives `name` in `parent` (already in the upper) an upper copy of the
/// object `ino`, whose stack is `stack`; returns the object's new stack.
/// The caller holds the object's node lock if the kernel knows it.
pub fn copy_up_name(
    fs: &UnionFs,
    parent: &Node,
    name: &OsStr,
    ino: u64,
    stack: &Stack,
    data: Data,
) -> Result<Stack> {
    let upper = fs.upper()?;
    let pdir = fs.nodes.dir(&fs.layers, parent, UPPER)?;
    let mut new = stack.clone();
    new.upper = true;
    new.path = join_path(&parent.stack().path, name);
    let tmp = upper.work.temp_name();

    if let Some(key) = &stack.index {
        // Another name of the object already has the upper copy: this name
        // becomes one more link of it, so all names stay one inode.
        debug!("copy_up_link {} from index {}", show(name), show(key));
        sys::linkat(fs.index()?.layer.root(), key, upper.work.tmp(), &tmp)?;
        keep_times(pdir.fd(), || {
            upper.place(&tmp, &pdir, name, false).map(|_| ())
        })?;
        fs.index()?.lower_name_gone(ino)?;
        return Ok(new);
    }

    let built = build_copy(fs, stack, ino, &tmp, data)?;
    if built.indexed {
        new.index = Some(index::key(ino));
    }
    let is_dir = built.kind == libc::S_IFDIR;
    keep_times(pdir.fd(), || {
        upper.place(&tmp, &pdir, name, is_dir).map(|_| ())
    })?;
    Ok(new)
}

/// Copies a hard-linked object into the index only, with no name in the
/// upper tree: one of its lower names is going away, and the others must
/// then count one link fewer.
pub fn copy_up_to_index(fs: &UnionFs, ino: u64, stack: &Stack) -> Result<Stack> {
    let upper = fs.upper()?;
    let tmp = upper.work.temp_name();
    let mut new = stack.clone();
    let built = build_copy(fs, stack, ino, &tmp, Data::All)?;
    // The index entry (if any) keeps the inode; the temporary name goes.
    upper.work.remove(&tmp);
    if built.indexed {
        new.index = Some(index::key(ino));
    }
    Ok(new)
}

/// Runs `f`, which fills or changes the upper directory `dir` without
/// changing what the merged view shows, and puts the directory's times back
/// as they were, as kernel overlayfs does: a copy-up is not a change a user
/// made.
pub fn keep_times<T>(dir: BorrowedFd, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let before = sys::fstat(dir)?;
    let out = f()?;
    if let Err(e) = sys::futimens(dir, atime(&before), mtime(&before)) {
        debug!("cannot restore directory times: {e}");
    }
    Ok(out)
}

/// What `build_copy` made.
struct Built {
    /// `S_IFMT` bits of the object.
    kind: u32,
    /// It has several names in its lower, so it went into the index.
    indexed: bool,
}

/// Builds the copy of the object's top layer as `tmp` in the work dir,
/// records its origin, and enters it in the index when it has several
/// names in the lower.
fn build_copy(fs: &UnionFs, stack: &Stack, ino: u64, tmp: &OsStr, data: Data) -> Result<Built> {
    let upper = fs.upper()?;
    let (layer_id, path) = stack.top().ok_or_else(|| Error::errno(libc::ESTALE))?;
    let layer = fs.layers.get(layer_id)?;
    let src = layer.stat(path)?;
    debug!("copy_up {} from layer {layer_id} ({data:?})", show(path));
    let built = build(fs, layer, path, &src, tmp, data).and_then(|()| {
        let fd = sys::openat(upper.work.tmp(), tmp, libc::O_PATH, 0)?;
        match fs.nodes.write_origin(fd.as_fd(), ino) {
            // user.* xattrs cannot sit on symlinks and devices; their
            // numbers are only promised stable while mounted.
            Err(e) if e.is(libc::EPERM) => Ok(()),
            other => other,
        }
    });
    let links = src.st_nlink;
    let hardlinked = src.st_mode & libc::S_IFMT != libc::S_IFDIR && links > 1;
    let indexed = built.and_then(|()| {
        if hardlinked {
            // This name is now copied (or going away): the others remain.
            fs.index()?.add(upper.work.tmp(), tmp, ino, links - 1)?;
        }
        Ok(())
    });
    if let Err(e) = indexed {
        upper.work.remove(tmp);
        return Err(e.context(format!("copy-up of {}", show(path))));
    }
    Ok(Built {
        kind: src.st_mode & libc::S_IFMT,
        indexed: hardlinked,
    })
}

fn show(name: &OsStr) -> std::borrow::Cow<'_, str> {
    name.to_string_lossy()
}

/// Builds the copy of `src` (at `path` in `layer`) as `tmp` in the work dir.
fn build(
    fs: &UnionFs,
    layer: &Layer,
    path: &OsStr,
    src: &Stat,
    tmp: &OsStr,
    data: Data,
) -> Result<()> {
    let work = fs.upper()?.work.tmp();
    let mode = src.st_mode & 0o7777;
    match src.st_mode & libc::S_IFMT {
        libc::S_IFREG => {
            let from = layer.open(path, libc::O_RDONLY)?;
            let to = sys::openat(
                work,
                tmp,
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                0o600,
            )?;
            if data == Data::All {
                copy_data(from.as_fd(), to.as_fd(), src.st_size as u64)?;
            }
            sys::fchown(to.as_fd(), src.st_uid, src.st_gid)?;
            let xattrs = read_xattrs(from.as_fd())?;
            set_xattrs(to.as_fd(), &xattrs, false)?;
            // After chown, which clears setuid/setgid.
            sys::fchmod(to.as_fd(), mode)?;
            set_xattrs(to.as_fd(), &xattrs, true)?;
            sys::futimens(to.as_fd(), atime(src), mtime(src))
        }
        libc::S_IFDIR => {
            let from = layer.open(path, libc::O_RDONLY | libc::O_DIRECTORY)?;
            sys::mkdirat(work, tmp, 0o700)?;
            let to = sys::openat(work, tmp, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            sys::fchown(to.as_fd(), src.st_uid, src.st_gid)?;
            set_xattrs(to.as_fd(), &read_xattrs(from.as_fd())?, false)?;
            sys::fchmod(to.as_fd(), mode)?;
            sys::futimens(to.as_fd(), atime(src), mtime(src))
        }
        kind => {
            let from = layer.open(path, libc::O_PATH)?;
            if kind == libc::S_IFLNK {
                // readlinkat(2) of "" reads the symlink the fd holds.
                let target = sys::readlinkat(from.as_fd(), OsStr::new(""))?;
                sys::symlinkat(&target, work, tmp)?;
            } else {
                sys::mknodat(work, tmp, kind | 0o600, src.st_rdev)?;
            }
            sys::lchownat(work, tmp, src.st_uid, src.st_gid)?;
            let to = sys::openat(work, tmp, libc::O_PATH, 0)?;
            set_xattrs(to.as_fd(), &read_xattrs(from.as_fd())?, false)?;
            if kind != libc::S_IFLNK {
                sys::fchmodat(work, tmp, mode)?;
            }
            sys::utimensat(work, tmp, atime(src), mtime(src))
        }
    }
}

fn atime(st: &Stat) -> SetTime {
    SetTime::At(st.st_atime, st.st_atime_nsec)
}

fn mtime(st: &Stat) -> SetTime {
    SetTime::At(st.st_mtime, st.st_mtime_nsec)
}

/// The user-visible xattrs of an object (private ones left out).
fn read_xattrs(from: BorrowedFd) -> Result<Vec<(OsString, Vec<u8>)>> {
    let names = match sys::flistxattr(from) {
        Ok(n) => n,
        Err(e) if whiteout::is_xattr_unsupported(e.raw()) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if whiteout::is_private_xattr(&name) {
            continue;
        }
        if let Some(value) = sys::fgetxattr(from, &name)? {
            out.push((name, value));
        }
    }
    Ok(out)
}

/// Sets xattrs on the copy: all but the capability, or only it (which goes
/// last, as writing data or changing the owner clears it).
fn set_xattrs(to: BorrowedFd, xattrs: &[(OsString, Vec<u8>)], capability_only: bool) -> Result<()> {
    for (name, value) in xattrs {
        if (name == CAPABILITY) != capability_only {
            continue;
        }
        match sys::fsetxattr(to, name, value, 0) {
            Ok(()) => {}
            // user.* cannot sit on a symlink or device; nothing to keep.
            Err(e) if e.is(libc::EPERM) && name.as_encoded_bytes().starts_with(b"user.") => {}
            Err(e) => return Err(e.context(format!("copying xattr {}", name.to_string_lossy()))),
        }
    }
    Ok(())
}

/// Copies `len` bytes: shares the blocks where the filesystem can (reflink),
/// else copies only the data extents so that holes stay holes.
fn copy_data(from: BorrowedFd, to: BorrowedFd, len: u64) -> Result<()> {
    if len == 0 || sys::ficlone(to, from).is_ok() {
        return Ok(());
    }
    let mut off = 0u64;
    while off < len {
        let start = match sys::lseek(from, off as i64, libc::SEEK_DATA) {
            Ok(s) => s as u64,
            Err(e) if e.is(libc::ENXIO) => break, // only a hole is left
            Err(e) if e.is(libc::EINVAL) => off,  // no SEEK_DATA here: copy all
            Err(e) => return Err(e),
        };
        let end = match sys::lseek(from, start as i64, libc::SEEK_HOLE) {
            Ok(e) => (e as u64).min(len),
            Err(_) => len,
        };
        copy_range(from, to, start, end)?;
        off = end;
    }
    // Sets the size when the file ends in a hole.
    sys::ftruncate(to, len)
}

/// Copies bytes [start, end) at the same offsets.
fn copy_range(from: BorrowedFd, to: BorrowedFd, start: u64, end: u64) -> Result<()> {
    let mut off = start;
    while off < end {
        let want = (end - off).min(1 << 30) as usize;
        match sys::copy_file_range(from, off, to, off, want) {
            Ok(0) => break,
            Ok(n) => off += n as u64,
            Err(e)
                if matches!(
                    e.raw(),
                    libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP
                ) =>
            {
                return copy_by_read(from, to, off, end);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn copy_by_read(from: BorrowedFd, to: BorrowedFd, mut off: u64, end: u64) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while off < end {
        let want = ((end - off) as usize).min(buf.len());
        let n = sys::pread(from, &mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        sys::pwrite(to, &buf[..n], off)?;
        off += n as u64;
    }
    Ok(())
}
