//! Open files: open (copying up for a write), read, write and friends. An
//! open file reads and writes one layer's file through its fd; copy-up
//! points it at the copy.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use super::{is_upper_copy, UnionFs};
use crate::error::{fail, Error, Result};
use crate::model::layer::UPPER;
use crate::sys;
use crate::union::copy_up::Data;
use crate::union::handles;

/// Open flags that ask to change the file.
pub(super) const WRITE_FLAGS: i32 = libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC | libc::O_APPEND;

/// The flags to open a layer's file with for a caller's open. O_APPEND is
/// dropped: the kernel already passes the end of file as the offset, and
/// pwrite(2) on an O_APPEND fd would ignore offsets. Creation flags were
/// handled by the union.
pub(super) fn real_open_flags(flags: i32) -> i32 {
    let keep = libc::O_ACCMODE
        | libc::O_TRUNC
        | libc::O_NONBLOCK
        | libc::O_NOATIME
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_DIRECT;
    flags & keep
}

/// Runs `io` on `fd`. When the fd is O_DIRECT and its filesystem refuses
/// the I/O with EINVAL (buffer, offset or length not aligned: FUSE takes
/// any, and the daemon's buffer sits where the request put it), the fd is
/// made buffered and `io` runs again: the same bytes reach the same file,
/// only through the upper filesystem's page cache from then on. It runs
/// again also when the flag is already gone: another request on the same
/// fd may have cleared it after this one failed.
fn direct_or_buffered<T>(fd: BorrowedFd, mut io: impl FnMut() -> Result<T>) -> Result<T> {
    match io() {
        Err(e) if e.is(libc::EINVAL) => {
            let flags = sys::get_status_flags(fd)?;
            if flags & libc::O_DIRECT != 0 {
                sys::set_status_flags(fd, flags & !libc::O_DIRECT)?;
            }
            io()
        }
        other => other,
    }
}

impl UnionFs {
    /// Opens a regular file; returns the handle number.
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        let node = self.reach.nodes.get(ino)?;
        if node.kind != libc::S_IFREG {
            // As in opendir: a newer object with a removed file's number.
            return fail(libc::ENOENT);
        }
        if node.is_dead() {
            // Reopened through /proc/PID/fd after its last name was removed.
            let (layer, fd) = self.fd_of_dead(&node, real_open_flags(flags) & !libc::O_TRUNC)?;
            return Ok(self.handles.open_file(ino, layer, fd));
        }
        if flags & WRITE_FLAGS != 0 {
            let (data, why) = if flags & libc::O_TRUNC != 0 {
                (Data::Skip, "opened for writing with O_TRUNC")
            } else {
                (Data::All, "opened for writing")
            };
            self.copier()?.node(&node, data, why)?;
        }
        // A read of a metacopy is served by its data file (a write open
        // copied the data up above, so the top holds it then).
        let layer = node
            .stack()
            .data()
            .ok_or_else(|| Error::errno(libc::ESTALE))?;
        let fd = self.reach.open(&node, layer, real_open_flags(flags))?;
        if flags & libc::O_TRUNC != 0 && is_upper_copy(layer) {
            // Through the fd, once it is surely this file's (see LayerReach::at),
            // with the times O_TRUNC sets.
            let fd = fd.as_fd();
            sys::truncate_via_proc(fd, 0)?;
            sys::futimens(fd, sys::SetTime::Omit, sys::SetTime::Now)?;
        }
        Ok(self.handles.open_file(ino, layer, fd))
    }

    /// The layer file the open file `fh` reads and writes now, and whether
    /// the kernel may serve its I/O from that file directly (FUSE
    /// passthrough) for as long as it is open: only when no copy-up can
    /// move the open file to another copy, which the kernel would not see.
    /// In a read-only mount nothing is copied up; otherwise only an upper
    /// copy (or its index entry) is final.
    pub fn passthrough_candidate(&self, fh: u64) -> Result<(Arc<OwnedFd>, bool)> {
        let (layer, fd) = self.handles.file(fh)?.real();
        Ok((fd, self.opts.read_only || is_upper_copy(layer)))
    }

    /// Reads up to `size` bytes into `buf` (kept by the caller from one
    /// read to the next: a fresh megabyte per request costs more in page
    /// faults than the copy) and returns them.
    pub fn read<'b>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        buf: &'b mut Vec<u8>,
    ) -> Result<&'b [u8]> {
        if buf.len() < size as usize {
            buf.resize(size as usize, 0);
        }
        let n = self.read_into(fh, offset, &mut buf[..size as usize])?;
        Ok(&buf[..n])
    }

    /// Reads into `dst` (a reply's own buffer: FUSE over io_uring), from
    /// the file [`UnionFs::read`] would read.
    pub fn read_into(&self, fh: u64, offset: u64, dst: &mut [u8]) -> Result<usize> {
        self.read_with(fh, |fd| sys::pread(fd, dst, offset))
    }

    /// Runs `io` on the file a read of handle `fh` reads now (the upper
    /// copy once the file is copied up, even for a handle opened before),
    /// for a reply spliced straight from it; O_DIRECT is dropped as for
    /// [`UnionFs::read`] when the layer refuses it.
    pub fn read_with<T>(&self, fh: u64, mut io: impl FnMut(BorrowedFd) -> Result<T>) -> Result<T> {
        let real = self.handles.file(fh)?.real();
        let fd = handles::fd_of(&real);
        direct_or_buffered(fd, || io(fd))
    }

    pub fn release(&self, fh: u64) {
        self.handles.close_file(fh);
    }

    /// Writes through an open handle (always on the upper copy).
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize> {
        self.write_with(fh, |fd| sys::pwrite(fd, data, offset))
    }

    /// A WRITE on handle `fh` done by `io`, given the upper file the
    /// handle writes to (a write arriving as a pipe splices into it). `io`
    /// runs again after an O_DIRECT refusal, as in `direct_or_buffered`.
    pub fn write_with(
        &self,
        fh: u64,
        mut io: impl FnMut(BorrowedFd) -> Result<usize>,
    ) -> Result<usize> {
        let h = self.handles.file(fh)?;
        let real = h.real();
        if !is_upper_copy(real.0) {
            return fail(libc::EBADF);
        }
        let fd = handles::fd_of(&real);
        direct_or_buffered(fd, || io(fd))
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
        if self.volatile {
            return Ok(());
        }
        let real = h.real();
        if !is_upper_copy(real.0) {
            return Ok(()); // nothing of ours to flush in a lower
        }
        sys::fsync(handles::fd_of(&real), data_only)
    }

    pub fn fsyncdir(&self, ino: u64, data_only: bool) -> Result<()> {
        let node = self.reach.nodes.get(ino)?;
        if self.volatile || !node.stack().upper || self.upper.is_none() {
            return Ok(());
        }
        let dir = self.reach.dir(&node, UPPER)?;
        sys::fsync(dir.fd(), data_only)
    }

    /// lseek for SEEK_DATA / SEEK_HOLE (the kernel does the others).
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let h = self.handles.file(fh)?;
        let real = h.real();
        sys::lseek(handles::fd_of(&real), offset, whence)
    }
}
