//! READ replies spliced from the backing file into /dev/fuse, as libfuse
//! does: the bytes move through a pipe as page references and are never
//! copied through the daemon's memory. (A reply from a buffer costs a
//! pread copy into it and a writev copy out of it; spliced, only the
//! device's copy into the request's pages is left.)
//!
//! The kernel takes a reply from a pipe only whole: the 16-byte header,
//! whose length field counts the data, then the data. How many bytes the
//! file gives is known only once they are in a pipe (end of file, a file
//! shortened meanwhile), so each thread keeps two pipes: the data is
//! spliced into the first, the header written into the second, the data
//! moved behind it, and the second spliced whole into the device.
//!
//! Anything unexpected (a pipe the user's limits will not grow, a file the
//! kernel will not splice, an O_DIRECT file that wants aligned buffers)
//! returns an error before the device is written to, and the caller
//! answers the request from a buffer instead. After any error the thread's
//! pipes are dropped, so no stray bytes can reach a later reply.
//!
//! WRITE requests come the other way (fuser's `Config::splice_writes`):
//! the session splices each request from /dev/fuse into a pipe, and a big
//! WRITE's data, references to the writer's pages, is spliced on into the
//! upper file (`write_from_pipe`) instead of read into a buffer and
//! written out of it. A pipe must hold a whole request, so max_write is
//! what the daemon's pipes can hold (`max_write`).

use std::cell::RefCell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use fuser::PipeData;

use crate::error::{Error, Result};
use crate::sys;

/// An unexpected state of the pipes or the device: EIO, saying which.
fn broken(what: &str) -> Error {
    Error::errno(libc::EIO).context(what.to_owned())
}

/// `struct fuse_out_header`: len (u32), error (i32), unique (u64).
const HEADER_LEN: usize = 16;
const PAGE: usize = 4096;

/// The largest READ to ask of the kernel (its `max_read` mount option):
/// 254 pages, so that the data, even at an offset inside a page (255 pipe
/// slots), and the header fit the 256 slots of a 1 MiB pipe, the most an
/// unprivileged daemon may have (fs.pipe-max-size).
pub const MAX_READ: usize = 254 * PAGE;

/// Smaller READs are answered from a buffer: a splice costs four system
/// calls where a buffer costs two, and below this the copy it saves is
/// small. (Measured rootless on `tar c` of 30000 small lower files, the
/// difference is within the machine's noise.) The kernel asks for a small
/// file's pages in one request of its size, for a big file's read-ahead
/// in 128 KiB requests (rootless) or more.
pub const MIN_SPLICE: u32 = 32 * 1024;

/// Off when `UNIONFS_SPLICE=0` is in the daemon's environment: every READ
/// is then answered from a buffer (to measure the difference, or to rule
/// splice out when a kernel misbehaves).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Reads `UNIONFS_SPLICE` once, at mount.
pub fn configure_from_env() {
    let off = std::env::var_os("UNIONFS_SPLICE").is_some_and(|v| v == "0");
    ENABLED.store(!off, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// READ replies sent by splice and from a buffer, and WRITE data spliced
/// or written from a buffer after a refused splice, for the unmount log
/// line (tests read it to see which path served them).
static SPLICED: AtomicU64 = AtomicU64::new(0);
static BUFFERED: AtomicU64 = AtomicU64::new(0);
static IN_RING: AtomicU64 = AtomicU64::new(0);
static WRITES_SPLICED: AtomicU64 = AtomicU64::new(0);
static WRITES_UNSPLICED: AtomicU64 = AtomicU64::new(0);

/// One READ answered by reading straight into an io_uring entry's buffer
/// (FUSE over io_uring, where splice does not apply).
pub fn count_in_ring() {
    IN_RING.fetch_add(1, Ordering::Relaxed);
}

/// Counts a READ answered from a buffer.
pub fn count_buffered() {
    BUFFERED.fetch_add(1, Ordering::Relaxed);
}

/// "N spliced, M from a buffer": the READ replies sent so far; then the
/// WRITEs whose data arrived in a pipe.
pub fn summary() -> String {
    format!(
        "{} spliced, {} from a buffer, {} read into an io_uring buffer; \
         writes from a pipe: {} spliced, {} through a buffer",
        SPLICED.load(Ordering::Relaxed),
        BUFFERED.load(Ordering::Relaxed),
        IN_RING.load(Ordering::Relaxed),
        WRITES_SPLICED.load(Ordering::Relaxed),
        WRITES_UNSPLICED.load(Ordering::Relaxed),
    )
}

/// Pages of the largest pipe an unprivileged daemon may have
/// (fs.pipe-max-size's default, 1 MiB).
const PIPE_MAX_PAGES: usize = 256;

/// The max_write to ask of the kernel. A spliced WRITE needs a pipe slot
/// for its header's page and one for each page its data touches, one more
/// than its size in pages when it does not start on a page. When the
/// daemon may grow a pipe past 1 MiB (root), 1 MiB writes fit; otherwise
/// writes are cut to 254 pages so that they fit a 1 MiB pipe.
pub fn max_write(splice_writes: bool) -> usize {
    const MIB: usize = 1 << 20;
    if !splice_writes {
        return MIB;
    }
    let roomy = sys::pipe()
        .and_then(|(_, w)| sys::set_pipe_size(w.as_fd(), 2 * MIB))
        .is_ok_and(|got| got >= MIB + 2 * PAGE);
    if roomy {
        MIB
    } else {
        (PIPE_MAX_PAGES - 2) * PAGE
    }
}

/// Moves a WRITE's data from the pipe it arrived in into `file` at
/// `offset`; returns the bytes written (fewer when the file takes fewer,
/// as pwrite). A file that refuses splice with EINVAL (an O_DIRECT file
/// wanting alignment, a filesystem without splice) gets the data read
/// into `buf` and written from there; `buf` keeps it for a second call
/// (the caller's retry without O_DIRECT).
pub fn write_from_pipe(
    file: BorrowedFd,
    offset: u64,
    data: &mut PipeData,
    buf: &mut Vec<u8>,
) -> Result<usize> {
    if !buf.is_empty() {
        return sys::pwrite(file, buf, offset);
    }
    let mut done = 0;
    while !data.is_empty() {
        match data.splice_to(file, offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(_) if done > 0 => break,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                data.read_rest(buf)?;
                WRITES_UNSPLICED.fetch_add(1, Ordering::Relaxed);
                return sys::pwrite(file, buf, offset);
            }
            Err(e) => return Err(e.into()),
        }
    }
    WRITES_SPLICED.fetch_add(1, Ordering::Relaxed);
    Ok(done)
}

/// One thread's two pipes (read end, write end), and what each can hold.
struct Pipes {
    data: (OwnedFd, OwnedFd),
    message: (OwnedFd, OwnedFd),
    capacity: usize,
}

impl Pipes {
    fn new(capacity: usize) -> Result<Pipes> {
        let mut p = Pipes {
            data: sys::pipe()?,
            message: sys::pipe()?,
            capacity: 0,
        };
        p.grow(capacity)?;
        Ok(p)
    }

    /// Makes both pipes hold at least `capacity` bytes (they are empty
    /// between replies, so they can always be resized).
    fn grow(&mut self, capacity: usize) -> Result<()> {
        if self.capacity >= capacity {
            return Ok(());
        }
        let a = sys::set_pipe_size(self.data.1.as_fd(), capacity)?;
        let b = sys::set_pipe_size(self.message.1.as_fd(), capacity)?;
        self.capacity = a.min(b);
        Ok(())
    }
}

thread_local! {
    static PIPES: RefCell<Option<Pipes>> = const { RefCell::new(None) };
}

/// The pipe capacity a reply of up to `size` bytes read at `offset` needs:
/// a page-cache splice puts at most one page in each pipe slot, and the
/// header takes a slot of its own.
fn capacity_for(offset: u64, size: usize) -> usize {
    let first = offset as usize % PAGE;
    let data_slots = (first + size).div_ceil(PAGE);
    ((data_slots + 1) * PAGE).next_power_of_two()
}

/// Answers READ request `unique` on the FUSE device `dev` with up to `size`
/// bytes of `file` at `offset`, by splice. An error means the device was
/// not written to: the request is still to be answered.
pub fn reply_read(
    dev: BorrowedFd,
    unique: u64,
    file: BorrowedFd,
    offset: u64,
    size: usize,
) -> Result<()> {
    PIPES.with_borrow_mut(|slot| {
        let sent = prepare(slot, unique, file, offset, size).and_then(|(pipes, total)| {
            match sys::splice(pipes.message.0.as_fd(), None, dev, total) {
                Ok(m) if m == total => Ok(true),
                Ok(_) => Err(broken("short splice of a reply into /dev/fuse")),
                // The request was interrupted and the kernel no longer
                // waits for it: answered, as far as anyone can tell.
                Err(e) if e.is(libc::ENOENT) => Ok(false),
                Err(e) => Err(e),
            }
        });
        // The pipes are known empty only after a whole reply went out.
        if matches!(sent, Ok(true)) {
            SPLICED.fetch_add(1, Ordering::Relaxed);
        } else {
            *slot = None;
        }
        sent.map(|_| ())
    })
}

/// Puts the whole reply (header, then the data) into the thread's message
/// pipe; returns the pipes and the reply's length.
fn prepare<'p>(
    slot: &'p mut Option<Pipes>,
    unique: u64,
    file: BorrowedFd,
    offset: u64,
    size: usize,
) -> Result<(&'p Pipes, usize)> {
    let need = capacity_for(offset, size);
    let pipes = match slot {
        Some(p) => {
            p.grow(need)?;
            p
        }
        None => slot.insert(Pipes::new(need)?),
    };
    let n = fill(pipes.data.1.as_fd(), file, offset, size)?;
    let total = HEADER_LEN + n;
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&(total as u32).to_ne_bytes());
    header[8..16].copy_from_slice(&unique.to_ne_bytes());
    if sys::write(pipes.message.1.as_fd(), &header)? != HEADER_LEN {
        return Err(broken("short write of a reply header into a pipe"));
    }
    let mut moved = 0;
    while moved < n {
        let from = pipes.data.0.as_fd();
        match sys::splice(from, None, pipes.message.1.as_fd(), n - moved)? {
            0 => return Err(broken("data pipe emptied early")),
            m => moved += m,
        }
    }
    Ok((pipes, total))
}

/// Splices up to `size` bytes of `file` at `offset` into the pipe `into`;
/// returns how many (fewer at end of file).
fn fill(into: BorrowedFd, file: BorrowedFd, offset: u64, size: usize) -> Result<usize> {
    let mut n = 0;
    while n < size {
        match sys::splice(file, Some(offset + n as u64), into, size - n) {
            Ok(0) => break,
            Ok(m) => n += m,
            // A read that fails after some bytes is a short read, as pread.
            Err(_) if n > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
