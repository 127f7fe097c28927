//! Safe wrappers over libc calls that std lacks. Every `unsafe` of the test
//! suite is here; each passes valid NUL-terminated strings and buffers of the
//! stated length.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cpath(p: &Path) -> io::Result<CString> {
    cstr(p.as_os_str().as_bytes())
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// renameat2(2) with AT_FDCWD on both sides (std has no RENAME_* flags).
pub fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let (f, t) = (cpath(from)?, cpath(to)?);
    // SAFETY: two valid NUL-terminated paths that outlive the call.
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    })
}

/// The size-then-fetch protocol of the xattr calls: `call(buf, len)` with a
/// null buffer of length 0 returns the size needed; the fetch is retried on
/// ERANGE (the value grew in between).
fn read_sized(
    mut call: impl FnMut(*mut libc::c_void, usize) -> libc::ssize_t,
) -> io::Result<Vec<u8>> {
    loop {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize + 1];
        let got = call(buf.as_mut_ptr().cast(), buf.len());
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(e);
        }
        buf.truncate(got as usize);
        return Ok(buf);
    }
}

/// lgetxattr(2): the value of `name` (no symlink following).
pub fn lgetxattr(path: &Path, name: &[u8]) -> io::Result<Vec<u8>> {
    let p = cpath(path)?;
    let n = cstr(name)?;
    // SAFETY: valid C strings; read_sized passes a null buffer of length 0
    // or a buffer valid for `len` bytes.
    read_sized(|buf, len| unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf, len) })
}

/// llistxattr(2): every xattr name, in the order the fs lists them.
pub fn llistxattr(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let p = cpath(path)?;
    // SAFETY: a valid C string; read_sized passes a null buffer of length 0
    // or a buffer valid for `len` bytes.
    let buf = read_sized(|buf, len| unsafe { libc::llistxattr(p.as_ptr(), buf.cast(), len) })?;
    Ok(buf
        .split(|&c| c == 0)
        .filter(|s| !s.is_empty())
        .map(|s| s.to_vec())
        .collect())
}

/// lsetxattr(2) with flags 0 (create or replace).
pub fn lsetxattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let p = cpath(path)?;
    let n = cstr(name)?;
    // SAFETY: valid C strings; value valid for value.len() bytes.
    check(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// lremovexattr(2).
pub fn lremovexattr(path: &Path, name: &[u8]) -> io::Result<()> {
    let p = cpath(path)?;
    let n = cstr(name)?;
    // SAFETY: valid C strings.
    check(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) })
}

/// mknod(2): `mode` includes the type bits (S_IFCHR, S_IFIFO, S_IFREG...).
pub fn mknod(path: &Path, mode: u32, dev: u64) -> io::Result<()> {
    let p = cpath(path)?;
    // SAFETY: valid C string.
    check(unsafe { libc::mknod(p.as_ptr(), mode as libc::mode_t, dev as libc::dev_t) })
}

/// makedev(3).
pub fn makedev(major: u32, minor: u32) -> u64 {
    libc::makedev(major, minor)
}

/// truncate(2). Follows symlinks: only call it on regular files.
pub fn truncate(path: &Path, len: i64) -> io::Result<()> {
    let p = cpath(path)?;
    // SAFETY: valid C string.
    check(unsafe { libc::truncate(p.as_ptr(), len as libc::off_t) })
}

/// utimensat(AT_FDCWD, path, times, AT_SYMLINK_NOFOLLOW); `None` sets
/// both times to now. Times are ((atime s, ns), (mtime s, ns)).
pub fn utimens_nofollow(path: &Path, times: Option<((i64, i64), (i64, i64))>) -> io::Result<()> {
    match times {
        Some(((a, an), (m, mn))) => utimensat(path, Time::At(a, an), Time::At(m, mn)),
        None => utimensat(path, Time::Now, Time::Now),
    }
}

/// access(2) (`libc::R_OK`, `W_OK`, `X_OK`, `F_OK`).
pub fn access(path: &Path, mode: i32) -> io::Result<()> {
    let p = cpath(path)?;
    // SAFETY: valid C string.
    check(unsafe { libc::access(p.as_ptr(), mode) })
}

/// The interesting fields of statvfs(3).
#[derive(Clone, Copy, Debug)]
pub struct StatVfs {
    pub bsize: u64,
    pub frsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub flag: u64,
    pub namemax: u64,
}

pub fn statvfs(path: &Path) -> io::Result<StatVfs> {
    let p = cpath(path)?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and a valid out pointer.
    check(unsafe { libc::statvfs(p.as_ptr(), &mut s) })?;
    Ok(StatVfs {
        bsize: s.f_bsize as u64,
        frsize: s.f_frsize as u64,
        blocks: s.f_blocks as u64,
        bfree: s.f_bfree as u64,
        bavail: s.f_bavail as u64,
        files: s.f_files as u64,
        ffree: s.f_ffree as u64,
        flag: s.f_flag as u64,
        namemax: s.f_namemax as u64,
    })
}

/// One entry from readdir(3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawDirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub d_type: u8,
    /// d_off: the position after this entry.
    pub off: i64,
}

/// A `DIR*` stream (opendir/readdir/telldir/seekdir/rewinddir/closedir),
/// for tests of stable directory offsets. Not Send.
pub struct DirStream {
    dir: *mut libc::DIR,
    path: PathBuf,
}

impl DirStream {
    pub fn open(path: &Path) -> io::Result<DirStream> {
        let p = cpath(path)?;
        // SAFETY: valid C string.
        let dir = unsafe { libc::opendir(p.as_ptr()) };
        if dir.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok(DirStream {
            dir,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next entry (`.` and `..` included), `Ok(None)` at the end.
    pub fn read(&mut self) -> io::Result<Option<RawDirEntry>> {
        // SAFETY: errno is thread-local; resetting it distinguishes end
        // of stream from error after readdir returns null.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: self.dir is a live DIR* from opendir.
        let ent = unsafe { libc::readdir(self.dir) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(0) | None => Ok(None),
                Some(_) => Err(e),
            };
        }
        // SAFETY: readdir returned a valid dirent, valid until the next
        // call on this stream; d_name is NUL-terminated.
        let (name, ino, d_type, off) = unsafe {
            let e = &*ent;
            let name = std::ffi::CStr::from_ptr(e.d_name.as_ptr())
                .to_bytes()
                .to_vec();
            (name, e.d_ino, e.d_type, e.d_off)
        };
        Ok(Some(RawDirEntry {
            name,
            ino,
            d_type,
            off,
        }))
    }

    /// telldir(3).
    pub fn tell(&mut self) -> i64 {
        // SAFETY: live DIR*.
        unsafe { libc::telldir(self.dir) as i64 }
    }

    /// seekdir(3) to a value returned by `tell` on this stream.
    pub fn seek(&mut self, pos: i64) {
        // SAFETY: live DIR*.
        unsafe { libc::seekdir(self.dir, pos as libc::c_long) }
    }

    /// rewinddir(3).
    pub fn rewind(&mut self) {
        // SAFETY: live DIR*.
        unsafe { libc::rewinddir(self.dir) }
    }

    /// Reads to the end; each entry with the `tell` taken right after it.
    pub fn read_all_with_tell(&mut self) -> io::Result<Vec<(RawDirEntry, i64)>> {
        let mut v = Vec::new();
        while let Some(e) = self.read()? {
            let t = self.tell();
            v.push((e, t));
        }
        Ok(v)
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: live DIR*, closed exactly once.
        unsafe { libc::closedir(self.dir) };
    }
}

/// A time for utimensat(2).
#[derive(Clone, Copy, Debug)]
pub enum Time {
    Now,
    Omit,
    At(i64, i64),
}

/// utimensat(AT_FDCWD, path, [atime, mtime], AT_SYMLINK_NOFOLLOW).
pub fn utimensat(path: &Path, atime: Time, mtime: Time) -> io::Result<()> {
    let p = cpath(path)?;
    let ts = |t: Time| match t {
        Time::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Time::Omit => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Time::At(s, ns) => libc::timespec {
            tv_sec: s as libc::time_t,
            tv_nsec: ns as _,
        },
    };
    let arr = [ts(atime), ts(mtime)];
    // SAFETY: a valid path and a two-element timespec array.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            arr.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

pub fn fallocate(f: &File, mode: i32, off: i64, len: i64) -> io::Result<()> {
    // SAFETY: a live fd.
    check(unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) })
}

pub fn lseek(f: &File, off: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: a live fd.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub fn flock(f: &File, op: i32) -> io::Result<()> {
    // SAFETY: a live fd.
    check(unsafe { libc::flock(f.as_raw_fd(), op) })
}

fn lock_struct(ltype: i32, start: i64, len: i64) -> libc::flock {
    // SAFETY: struct flock is plain data; zero is valid (and l_pid must
    // be 0 for OFD locks).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ltype as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    fl
}

/// fcntl(fd, cmd, &flock) for F_SETLK / F_GETLK / F_OFD_*; returns the
/// struct as the kernel left it (for the GETLK commands).
pub fn fcntl_lock(f: &File, cmd: i32, ltype: i32, start: i64, len: i64) -> io::Result<libc::flock> {
    let mut fl = lock_struct(ltype, start, len);
    // SAFETY: a live fd and a valid flock struct.
    check(unsafe { libc::fcntl(f.as_raw_fd(), cmd, &mut fl) })?;
    Ok(fl)
}

/// In a forked child process: open `path` O_RDWR and try a POSIX write
/// lock (F_SETLK) on [start, start+len). Ok(None) when the child got the
/// lock, Ok(Some(errno)) when it was refused.
pub fn posix_lock_in_child(path: &Path, start: i64, len: i64) -> io::Result<Option<i32>> {
    let p = cpath(path)?;
    let fl = lock_struct(libc::F_WRLCK, start, len);
    // SAFETY: the child only makes async-signal-safe calls (open, fcntl,
    // _exit) on data prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            let fd = libc::open(p.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            if fd < 0 {
                libc::_exit(200);
            }
            let mut fl = fl;
            if libc::fcntl(fd, libc::F_SETLK, &mut fl) == 0 {
                libc::_exit(0);
            }
            let e = *libc::__errno_location();
            libc::_exit(if e > 0 && e < 200 { e } else { 201 });
        }
    }
    let mut status = 0;
    // SAFETY: our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) {
        return Err(io::Error::other(format!("child died: status {status}")));
    }
    match libc::WEXITSTATUS(status) {
        0 => Ok(None),
        200 => Err(io::Error::other("child could not open the file")),
        201 => Err(io::Error::other("child: odd errno")),
        e => Ok(Some(e)),
    }
}

/// posix_fadvise(POSIX_FADV_DONTNEED): drops the file's clean cached pages.
pub fn fadvise_dontneed(f: &File) -> io::Result<()> {
    // SAFETY: a live fd.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        Err(io::Error::from_raw_os_error(r))
    } else {
        Ok(())
    }
}
