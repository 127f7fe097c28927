//! unionfs patch: requests received by splice(2) from /dev/fuse into a
//! pipe, so that a WRITE's data can be spliced on into the file it is for
//! without being copied through the daemon (libfuse's "splice read").
//!
//! The device puts a request into a pipe as its header in a page of its
//! own followed by references to the writer's pages, not copies. The
//! header is read out of the pipe; a big WRITE's data stays there for the
//! filesystem (`Filesystem::write_from_pipe`), anything else is read into
//! the thread's buffer and dispatched as if read(2) had delivered it.
//!
//! The pipe must hold a whole request: the device fails a request that
//! does not fit with EIO (the writer sees it). The session sizes the pipe
//! from the negotiated max_write, and a thread whose pipe cannot grow that
//! far (an unprivileged daemon may not pass fs.pipe-max-size) reads
//! instead.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use log::warn;
use nix::errno::Errno;

use crate::ll::argument::ArgumentIterator;
use crate::ll::fuse_abi::{fuse_in_header, fuse_opcode, fuse_write_in};

/// Requests smaller than this are read out of the pipe whole: a spliced
/// WRITE costs a third system call, worth it only when the copy it saves
/// is big.
const MIN_SPLICED_WRITE: usize = 32 * 1024;

pub(crate) const HEAD: usize = size_of::<fuse_in_header>() + size_of::<fuse_write_in>();

/// The bytes of one WRITE request still in the receiving pipe.
#[derive(Debug)]
pub struct PipeData<'a> {
    pipe: BorrowedFd<'a>,
    left: usize,
}

impl PipeData<'_> {
    /// Bytes not yet taken.
    pub fn len(&self) -> usize {
        self.left
    }

    /// Whether every byte has been taken.
    pub fn is_empty(&self) -> bool {
        self.left == 0
    }

    /// `splice(pipe, NULL, file, &offset, left, 0)`: moves up to all that
    /// is left into `file` at `offset`; returns how much moved (the rest
    /// is still here, for another call or `read_rest`).
    pub fn splice_to(&mut self, file: BorrowedFd<'_>, offset: u64) -> io::Result<usize> {
        let mut off = offset as libc::loff_t;
        loop {
            // SAFETY: both fds are open for the call; `off` outlives it.
            let n = unsafe {
                libc::splice(
                    self.pipe.as_raw_fd(),
                    std::ptr::null_mut(),
                    file.as_raw_fd(),
                    &mut off,
                    self.left,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.left -= n as usize;
            return Ok(n as usize);
        }
    }

    /// Reads what is left into `buf` (cleared first).
    pub fn read_rest(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.clear();
        buf.resize(self.left, 0);
        read_exact(self.pipe, buf)?;
        self.left = 0;
        Ok(())
    }
}

/// What one splice from the device delivered.
pub(crate) enum Received {
    /// A whole request, in the buffer's first N bytes.
    Whole(usize),
    /// A WRITE: its header and `fuse_write_in` in the buffer's first
    /// `HEAD` bytes, `data` bytes of payload still in the pipe.
    Write { data: usize },
}

/// One thread's receiving pipe.
#[derive(Debug)]
pub(crate) struct SplicedReceiver {
    read: OwnedFd,
    write: OwnedFd,
}

impl SplicedReceiver {
    /// A pipe that holds `capacity` bytes, or an error saying why not.
    pub(crate) fn new(capacity: usize) -> io::Result<SplicedReceiver> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are fresh descriptors we own.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_SETPIPE_SZ takes an int and touches no memory of ours.
        let got = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, capacity as i32) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        if (got as usize) < capacity {
            return Err(io::Error::other(format!(
                "pipe holds {got} bytes, not {capacity}"
            )));
        }
        Ok(SplicedReceiver { read, write })
    }

    /// Receives one request: splices it from `dev` into the pipe, then
    /// reads all of it into `buf`, or only the head of a big WRITE.
    /// Errors are the device's (ENODEV when unmounted), to be treated as
    /// read(2)'s; on any other failure the pipe may hold stray bytes and
    /// must be dropped.
    pub(crate) fn receive(&mut self, dev: BorrowedFd<'_>, buf: &mut [u8]) -> nix::Result<Received> {
        let n = loop {
            // SAFETY: both fds are open for the call; no offsets are passed.
            let n = unsafe {
                libc::splice(
                    dev.as_raw_fd(),
                    std::ptr::null_mut(),
                    self.write.as_raw_fd(),
                    std::ptr::null_mut(),
                    buf.len(),
                    0,
                )
            };
            if n >= 0 {
                break n as usize;
            }
            match Errno::last() {
                Errno::ENOENT | Errno::EINTR | Errno::EAGAIN => continue,
                e => return Err(e),
            }
        };
        if n < MIN_SPLICED_WRITE + HEAD {
            read_exact(self.read.as_fd(), &mut buf[..n]).map_err(errno_of)?;
            return Ok(Received::Whole(n));
        }
        read_exact(self.read.as_fd(), &mut buf[..HEAD]).map_err(errno_of)?;
        if let Some(data) = write_payload(&buf[..HEAD], n) {
            return Ok(Received::Write { data });
        }
        read_exact(self.read.as_fd(), &mut buf[HEAD..n]).map_err(errno_of)?;
        Ok(Received::Whole(n))
    }

    /// The pipe a `Received::Write`'s data is in.
    pub(crate) fn data(&self, len: usize) -> PipeData<'_> {
        PipeData {
            pipe: self.read.as_fd(),
            left: len,
        }
    }

    /// Empties the pipe of `left` bytes a filesystem did not take (it
    /// failed part way). An error means the pipe cannot be trusted.
    pub(crate) fn discard(&self, left: usize) -> io::Result<()> {
        if left > 0 {
            warn!("discarding {left} bytes of a WRITE the filesystem did not take");
            let mut scratch = vec![0; left];
            read_exact(self.read.as_fd(), &mut scratch)?;
        }
        Ok(())
    }
}

/// For a WRITE whose `n` bytes fit the header's lengths, the payload size.
fn write_payload(head: &[u8], n: usize) -> Option<usize> {
    let mut args = ArgumentIterator::new(head);
    let header: &fuse_in_header = args.fetch()?;
    let arg: &fuse_write_in = args.fetch()?;
    let is_write = header.opcode == fuse_opcode::FUSE_WRITE as u32;
    (is_write && header.len as usize == n && arg.size as usize == n - HEAD).then_some(n - HEAD)
}

fn errno_of(e: io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Reads exactly `buf.len()` bytes from the pipe (its bytes are already
/// there, so a short read means something is wrong).
fn read_exact(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match nix::unistd::read(fd, &mut buf[done..]) {
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
            Ok(k) => done += k,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Hands a spliced WRITE (its head in `head`, `data` bytes in the pipe) to
/// the filesystem, replying through `sender`, then empties the pipe of
/// whatever it left. An error means the pipe is no longer usable.
pub(crate) fn dispatch_write<FS: crate::Filesystem>(
    fs: &FS,
    sender: crate::channel::ChannelSender,
    receiver: &SplicedReceiver,
    head: &[u8],
    data: usize,
) -> io::Result<()> {
    use crate::reply::{Reply, ReplySender};
    use crate::{FileHandle, INodeNo, LockOwner, OpenFlags, ReplyWrite, Request, WriteFlags};

    let mut args = ArgumentIterator::new(head);
    let (Some(header), Some(arg)) = (
        args.fetch::<fuse_in_header>(),
        args.fetch::<fuse_write_in>(),
    ) else {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    };
    log::debug!(
        "FUSE({:3}) ino {:#018x} WRITE fh {} offset {} size {} (data in a pipe)",
        header.unique,
        header.nodeid,
        arg.fh,
        arg.offset,
        arg.size
    );
    let reply: ReplyWrite = Reply::new(
        crate::ll::RequestId(header.unique),
        ReplySender::Channel(sender),
    );
    let mut pipe = receiver.data(data);
    if arg.offset < 0 {
        reply.error(crate::Errno::EINVAL);
    } else {
        let write_flags = WriteFlags::from_bits_retain(arg.write_flags);
        let lock_owner = write_flags
            .contains(WriteFlags::FUSE_WRITE_LOCKOWNER)
            .then_some(LockOwner(arg.lock_owner));
        fs.write_from_pipe(
            Request::ref_cast(header),
            INodeNo(header.nodeid),
            FileHandle(arg.fh),
            arg.offset as u64,
            &mut pipe,
            write_flags,
            OpenFlags(arg.flags),
            lock_owner,
            reply,
        );
    }
    receiver.discard(pipe.len())
}
