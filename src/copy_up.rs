//! Copy-up (DESIGN §3): the first change to a lower object rebuilds it in
//! the upper. Parents first; each object is built in the work dir (data,
//! then owner, xattrs, mode, capabilities, times) and renamed into place in
//! one step, so no reader ever sees a partial file and a crash leaves only
//! a temporary that the next mount removes.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};

use log::debug;

use crate::error::{Error, Result};
use crate::layer::{join_path, split_path, Layer, UPPER};
use crate::node::{Node, ROOT_INO};
use crate::ops::UnionFs;
use crate::sys::{self, SetTime, Stat};
use crate::whiteout;

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
pub fn copy_up(fs: &UnionFs, node: &Node, data: Data) -> Result<()> {
    if node.stack().upper {
        return Ok(());
    }
    let upper = fs.upper()?;
    // Parents first, each under its own lock: no thread ever holds two
    // node locks here, so copy-ups cannot deadlock each other.
    let (parent_ino, name) = node.place();
    if node.ino == ROOT_INO {
        return Err(Error::errno(libc::EIO).context("root has no upper"));
    }
    let parent = fs.nodes.get(parent_ino)?;
    copy_up(fs, &parent, Data::All)?;

    let _guard = node.lock.lock();
    let mut stack = node.stack();
    if stack.upper {
        return Ok(()); // another writer copied it up while we waited
    }
    let (layer_id, lower_path) = stack.top().ok_or_else(|| Error::errno(libc::ESTALE))?;
    let layer = fs.layers.get(layer_id)?;
    let src = layer.stat(lower_path)?;
    let pdir = fs.nodes.dir(&fs.layers, &parent, UPPER)?;
    let tmp = upper.work.temp_name();
    debug!(
        "copy_up {} from layer {layer_id} ({:?})",
        lower_path.to_string_lossy(),
        data
    );
    if let Err(e) = build(fs, layer, lower_path, &src, &tmp, data) {
        upper.work.remove(&tmp);
        return Err(e.context(format!("copy-up of {}", lower_path.to_string_lossy())));
    }
    upper.place(
        &tmp,
        &pdir,
        &name,
        src.st_mode & libc::S_IFMT == libc::S_IFDIR,
    )?;

    stack.upper = true;
    stack.path = join_path(&parent.stack().path, &name);
    node.set_stack(stack.clone());
    // A file opened before the copy-up now reads the copy, so it sees what
    // writers write from here on (kernel overlayfs does the same).
    if node.kind == libc::S_IFREG {
        for h in fs.handles.files_of(node.ino) {
            let fd = fs.layers.get(UPPER)?.open(&stack.path, libc::O_RDONLY)?;
            h.set_real(UPPER, fd);
        }
    }
    Ok(())
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
            copy_xattrs(from.as_fd(), to.as_fd(), false)?;
            // After chown, which clears setuid/setgid.
            sys::fchmod(to.as_fd(), mode)?;
            copy_xattrs(from.as_fd(), to.as_fd(), true)?;
            sys::futimens(to.as_fd(), atime(src), mtime(src))
        }
        libc::S_IFDIR => {
            let from = layer.open(path, libc::O_RDONLY | libc::O_DIRECTORY)?;
            sys::mkdirat(work, tmp, 0o700)?;
            let to = sys::openat(work, tmp, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            sys::fchown(to.as_fd(), src.st_uid, src.st_gid)?;
            copy_xattrs(from.as_fd(), to.as_fd(), false)?;
            sys::fchmod(to.as_fd(), mode)?;
            sys::futimens(to.as_fd(), atime(src), mtime(src))
        }
        kind => {
            if kind == libc::S_IFLNK {
                let (dir, name) = split_path(path);
                let dirfd = layer.open(dir, libc::O_PATH | libc::O_DIRECTORY)?;
                let target = sys::readlinkat(dirfd.as_fd(), name)?;
                sys::symlinkat(&target, work, tmp)?;
            } else {
                sys::mknodat(work, tmp, kind | 0o600, src.st_rdev)?;
            }
            sys::lchownat(work, tmp, src.st_uid, src.st_gid)?;
            let from = layer.open(path, libc::O_PATH)?;
            let to = sys::openat(work, tmp, libc::O_PATH, 0)?;
            copy_xattrs(from.as_fd(), to.as_fd(), false)?;
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

/// Copies the user-visible xattrs: all but the capability, or only it.
fn copy_xattrs(from: BorrowedFd, to: BorrowedFd, capability_only: bool) -> Result<()> {
    let names = match sys::flistxattr(from) {
        Ok(n) => n,
        Err(e) if whiteout::is_xattr_unsupported(e.raw()) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in names {
        if whiteout::is_private_xattr(&name) || (name == CAPABILITY) != capability_only {
            continue;
        }
        let Some(value) = sys::fgetxattr(from, &name)? else {
            continue;
        };
        match sys::fsetxattr(to, &name, &value, 0) {
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
