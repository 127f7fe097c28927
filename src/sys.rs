//! Every `unsafe` and raw libc call of the crate, as small safe wrappers.
//!
//! Layer access goes through a held directory fd plus a name or a relative
//! path, never an absolute path, and never follows a symlink: names go to
//! `*at` calls with `AT_SYMLINK_NOFOLLOW`/`O_NOFOLLOW`, relative paths to
//! `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`. Each wrapper's doc
//! line names the C call it makes.

#![allow(unsafe_code)]

use std::ffi::{CStr, CString, OsStr, OsString};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// The result of `fstatat(2)`.
pub type Stat = libc::stat;

fn cstr(name: &OsStr) -> Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| Error::errno(libc::EINVAL))
}

fn check(ret: libc::c_int) -> Result<libc::c_int> {
    if ret < 0 {
        Err(Error::last())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: libc::ssize_t) -> Result<usize> {
    if ret < 0 {
        Err(Error::last())
    } else {
        Ok(ret as usize)
    }
}

/// Repeats a call while it fails with EINTR.
fn retry<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    loop {
        match f() {
            Err(e) if e.is(libc::EINTR) => continue,
            other => return other,
        }
    }
}

// ---------------------------------------------------------------------------
// Opening

/// `openat2(dir, path, flags | O_NOFOLLOW | O_CLOEXEC, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`:
/// opens a path relative to `dir` without following any symlink in it and
/// without leaving `dir`. An empty path or "." opens `dir` itself.
pub fn open_beneath(dir: BorrowedFd, path: &OsStr, flags: i32, mode: u32) -> Result<OwnedFd> {
    let path = if path.is_empty() {
        OsStr::new(".")
    } else {
        path
    };
    let c = cstr(path)?;
    // SAFETY: open_how is plain data; all-zero is its "no options" value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64;
    if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        how.mode = mode as u64;
    }
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    let fd = retry(|| {
        // SAFETY: `c` is a valid C string and `how` a valid open_how for the
        // duration of the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r < 0 {
            Err(Error::last())
        } else {
            Ok(r as RawFd)
        }
    })?;
    // SAFETY: the kernel returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`: one path component.
pub fn openat(dir: BorrowedFd, name: &OsStr, flags: i32, mode: u32) -> Result<OwnedFd> {
    let c = cstr(name)?;
    let fd = retry(|| {
        // SAFETY: valid C string; the fd is checked before use.
        check(unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        })
    })?;
    // SAFETY: fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `open(path, O_DIRECTORY | O_RDONLY | O_CLOEXEC)`: opens a layer root given
/// on the command line (symlinks were resolved once, at mount).
pub fn open_dir_path(path: &std::path::Path) -> Result<OwnedFd> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: valid C string.
    let fd = check(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC,
        )
    })
    .map_err(|e| e.context(path.display()))?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `open("/proc/self/fd/N", flags)`: reopens an `O_PATH` fd with real access
/// flags. The magic link leads to the very inode the fd holds, so no name
/// is resolved again.
pub fn reopen(fd: BorrowedFd, flags: i32) -> Result<OwnedFd> {
    let path = proc_fd_path(fd);
    let raw = retry(|| {
        // SAFETY: valid C string.
        check(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })
    })?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn proc_fd_path(fd: BorrowedFd) -> CString {
    // A formatted integer never contains NUL.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Metadata

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn statat(dir: BorrowedFd, name: &OsStr) -> Result<Stat> {
    let c = cstr(name)?;
    let mut st = MaybeUninit::<Stat>::uninit();
    // SAFETY: st is written by the kernel before we read it (checked ret).
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so st is initialised.
    Ok(unsafe { st.assume_init() })
}

/// `fstat(fd)`.
pub fn fstat(fd: BorrowedFd) -> Result<Stat> {
    let mut st = MaybeUninit::<Stat>::uninit();
    // SAFETY: as in statat.
    check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded.
    Ok(unsafe { st.assume_init() })
}

/// `fstatvfs(fd)`.
pub fn fstatvfs(fd: BorrowedFd) -> Result<libc::statvfs> {
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: as in statat.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs succeeded.
    Ok(unsafe { st.assume_init() })
}

/// `readlinkat(dir, name)`.
pub fn readlinkat(dir: BorrowedFd, name: &OsStr) -> Result<OsString> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: buf is writable for buf.len() bytes.
    let n = check_size(unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(OsString::from_vec(buf))
}

// ---------------------------------------------------------------------------
// Extended attributes. An fd opened with O_PATH cannot be used with f*xattr;
// those go through its /proc/self/fd magic link, which names the same inode.

/// `fgetxattr(fd, name)`; `None` when the attribute is absent.
pub fn fgetxattr(fd: BorrowedFd, name: &OsStr) -> Result<Option<Vec<u8>>> {
    let c = cstr(name)?;
    xattr_value(|buf| {
        xattr_call(fd, |path| match path {
            // SAFETY: buf is writable for buf.len() bytes; c and p are valid.
            None => unsafe {
                libc::fgetxattr(
                    fd.as_raw_fd(),
                    c.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            },
            // SAFETY: as above.
            Some(p) => unsafe {
                libc::getxattr(p.as_ptr(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            },
        })
    })
}

/// `getxattr("/proc/self/fd/N", name)`: for an `O_PATH` fd, one call
/// instead of a failing `fgetxattr` first. `None` when absent.
pub fn getxattr_via_proc(fd: BorrowedFd, name: &OsStr) -> Result<Option<Vec<u8>>> {
    let c = cstr(name)?;
    let path = proc_fd_path(fd);
    xattr_value(|buf| {
        // SAFETY: buf is writable for buf.len() bytes; both strings valid.
        retry(|| {
            check_size(unsafe {
                libc::getxattr(
                    path.as_ptr(),
                    c.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            })
        })
    })
}

/// Reads an xattr value with `call`, growing the buffer on ERANGE; `None`
/// for ENODATA.
fn xattr_value(mut call: impl FnMut(&mut [u8]) -> Result<usize>) -> Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    loop {
        match call(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(e) if e.is(libc::ENODATA) => return Ok(None),
            Err(e) if e.is(libc::ERANGE) && buf.len() < 65536 * 2 => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e),
        }
    }
}

/// `flistxattr(fd)`: the attribute names, each without its NUL.
pub fn flistxattr(fd: BorrowedFd) -> Result<Vec<OsString>> {
    xattr_list(|buf| {
        xattr_call(fd, |path| match path {
            // SAFETY: buf is writable for buf.len() bytes.
            None => unsafe { libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) },
            // SAFETY: as above; p is a valid C string.
            Some(p) => unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) },
        })
    })
}

/// Reads a list of xattr names with `call`, growing the buffer on ERANGE.
fn xattr_list(mut call: impl FnMut(&mut [u8]) -> Result<usize>) -> Result<Vec<OsString>> {
    let mut buf = vec![0u8; 1024];
    loop {
        match call(&mut buf) {
            Ok(n) => {
                return Ok(buf[..n]
                    .split(|b| *b == 0)
                    .filter(|n| !n.is_empty())
                    .map(|n| OsString::from_vec(n.to_vec()))
                    .collect())
            }
            Err(e) if e.is(libc::ERANGE) && buf.len() < 65536 * 4 => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e),
        }
    }
}

/// `fsetxattr(fd, name, value, flags)`.
pub fn fsetxattr(fd: BorrowedFd, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
    let c = cstr(name)?;
    xattr_call(fd, |path| match path {
        // SAFETY: value is readable for value.len() bytes.
        None => unsafe {
            libc::fsetxattr(
                fd.as_raw_fd(),
                c.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            ) as libc::ssize_t
        },
        // SAFETY: as above.
        Some(p) => unsafe {
            libc::setxattr(
                p.as_ptr(),
                c.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            ) as libc::ssize_t
        },
    })
    .map(|_| ())
}

/// `fremovexattr(fd, name)`.
pub fn fremovexattr(fd: BorrowedFd, name: &OsStr) -> Result<()> {
    let c = cstr(name)?;
    xattr_call(fd, |path| match path {
        // SAFETY: valid fd and C string.
        None => unsafe { libc::fremovexattr(fd.as_raw_fd(), c.as_ptr()) as libc::ssize_t },
        // SAFETY: valid C strings.
        Some(p) => unsafe { libc::removexattr(p.as_ptr(), c.as_ptr()) as libc::ssize_t },
    })
    .map(|_| ())
}

/// getxattrat(2) and listxattrat(2) (Linux 6.13), numbered from the table
/// the architectures below share (mips offsets its numbers: not used there).
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;

/// The kernel lacks the `*xattrat` calls: use an `O_PATH` fd instead.
static NO_XATTRAT: AtomicBool = AtomicBool::new(!cfg!(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "powerpc64",
    target_arch = "s390x"
)));

/// `listxattrat(dir, name, AT_SYMLINK_NOFOLLOW)`: the attribute names of
/// `name` in `dir`, in one call (`ls -l` asks for an xattr of every file;
/// through an `O_PATH` fd it took an open, a /proc walk and a close).
pub fn listxattrat(dir: BorrowedFd, name: &OsStr) -> Result<Vec<OsString>> {
    if NO_XATTRAT.load(Ordering::Relaxed) {
        return flistxattr(openat(dir, name, libc::O_PATH, 0)?.as_fd());
    }
    let c = cstr(name)?;
    let r = xattr_list(|buf| {
        // SAFETY: buf is writable for buf.len() bytes; c is a valid C string.
        retry(|| {
            check_size(unsafe {
                libc::syscall(
                    SYS_LISTXATTRAT,
                    dir.as_raw_fd(),
                    c.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                    buf.as_mut_ptr(),
                    buf.len(),
                ) as libc::ssize_t
            })
        })
    });
    match r {
        Err(e) if e.is(libc::ENOSYS) => {
            NO_XATTRAT.store(true, Ordering::Relaxed);
            listxattrat(dir, name)
        }
        other => other,
    }
}

/// `getxattrat(dir, name, AT_SYMLINK_NOFOLLOW, attr)`; `None` when absent.
pub fn getxattrat(dir: BorrowedFd, name: &OsStr, attr: &OsStr) -> Result<Option<Vec<u8>>> {
    if NO_XATTRAT.load(Ordering::Relaxed) {
        return getxattr_via_proc(openat(dir, name, libc::O_PATH, 0)?.as_fd(), attr);
    }
    /// `struct xattr_args` of the kernel's uapi.
    #[repr(C)]
    struct XattrArgs {
        value: u64,
        size: u32,
        flags: u32,
    }
    let c = cstr(name)?;
    let a = cstr(attr)?;
    let r = xattr_value(|buf| {
        let mut args = XattrArgs {
            value: buf.as_mut_ptr() as u64,
            size: buf.len() as u32,
            flags: 0,
        };
        // SAFETY: args points at buf, writable for args.size bytes; the
        // strings are valid; the kernel reads args for its declared size.
        retry(|| {
            check_size(unsafe {
                libc::syscall(
                    SYS_GETXATTRAT,
                    dir.as_raw_fd(),
                    c.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                    a.as_ptr(),
                    &mut args as *mut XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                ) as libc::ssize_t
            })
        })
    });
    match r {
        Err(e) if e.is(libc::ENOSYS) => {
            NO_XATTRAT.store(true, Ordering::Relaxed);
            getxattrat(dir, name, attr)
        }
        other => other,
    }
}

/// Runs an f*xattr call, retrying through /proc/self/fd when the fd is an
/// `O_PATH` fd (EBADF).
fn xattr_call(fd: BorrowedFd, mut f: impl FnMut(Option<&CStr>) -> libc::ssize_t) -> Result<usize> {
    match retry(|| check_size(f(None))) {
        Err(e) if e.is(libc::EBADF) => {
            let path = proc_fd_path(fd);
            retry(|| check_size(f(Some(&path))))
        }
        other => other,
    }
}

// ---------------------------------------------------------------------------
// Directories

/// One entry read by `getdents64(2)`.
#[derive(Debug, Clone)]
pub struct RawDirEntry {
    pub ino: u64,
    /// `DT_*` type from the directory; `DT_UNKNOWN` on some filesystems.
    pub d_type: u8,
    pub name: OsString,
}

/// `getdents64(fd)` until the end: every entry but "." and "..".
/// The fd's offset is rewound first, so a held fd can be read again.
pub fn read_dir_all(fd: BorrowedFd) -> Result<Vec<RawDirEntry>> {
    // SAFETY: plain lseek on a valid fd.
    check(unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_SET) } as libc::c_int)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = retry(|| {
            // SAFETY: buf is writable for buf.len() bytes.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    fd.as_raw_fd(),
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            };
            if r < 0 {
                Err(Error::last())
            } else {
                Ok(r as usize)
            }
        })?;
        if n == 0 {
            return Ok(out);
        }
        let mut off = 0;
        // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
        while off + 19 <= n {
            let rec = &buf[off..n];
            let ino = u64::from_ne_bytes(rec[0..8].try_into().unwrap_or([0; 8]));
            let reclen = u16::from_ne_bytes([rec[16], rec[17]]) as usize;
            let d_type = rec[18];
            if reclen < 19 || reclen > rec.len() {
                return Err(Error::errno(libc::EIO).context("getdents64: bad record"));
            }
            let name_bytes = &rec[19..reclen];
            let len = name_bytes
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(name_bytes.len());
            let name = &name_bytes[..len];
            if name != b"." && name != b".." {
                out.push(RawDirEntry {
                    ino,
                    d_type,
                    name: OsString::from_vec(name.to_vec()),
                });
            }
            off += reclen;
        }
    }
}

// ---------------------------------------------------------------------------
// Data

/// `pread(fd, buf, offset)`, reading until `buf` is full or end of file.
pub fn pread(fd: BorrowedFd, buf: &mut [u8], offset: u64) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: rest is writable for rest.len() bytes.
        let n = retry(|| {
            check_size(unsafe {
                libc::pread(
                    fd.as_raw_fd(),
                    rest.as_mut_ptr().cast(),
                    rest.len(),
                    (offset + done as u64) as libc::off_t,
                )
            })
        })?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// `pwrite(fd, buf, offset)`, writing all of `buf`.
pub fn pwrite(fd: BorrowedFd, buf: &[u8], offset: u64) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &buf[done..];
        // SAFETY: rest is readable for rest.len() bytes.
        let n = retry(|| {
            check_size(unsafe {
                libc::pwrite(
                    fd.as_raw_fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    (offset + done as u64) as libc::off_t,
                )
            })
        })?;
        if n == 0 {
            return Err(Error::errno(libc::EIO));
        }
        done += n;
    }
    Ok(done)
}

/// `pipe2(O_CLOEXEC)`: (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both are open descriptors we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `fcntl(pipe, F_SETPIPE_SZ, size)`: the pipe's capacity becomes at least
/// `size` bytes; returns the capacity it got.
pub fn set_pipe_size(pipe: BorrowedFd, size: usize) -> Result<usize> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) })
        .map(|n| n as usize)
}

/// `splice(from, from_offset, to, NULL, len, SPLICE_F_MOVE)`: moves up to
/// `len` bytes from `from` (a file read at `from_offset`, or a pipe: `None`)
/// into `to` (a pipe, or a file such as /dev/fuse when `from` is a pipe)
/// without copying them through user space; 0 at end of file.
pub fn splice(
    from: BorrowedFd,
    from_offset: Option<u64>,
    to: BorrowedFd,
    len: usize,
) -> Result<usize> {
    let mut off = from_offset.unwrap_or(0) as libc::loff_t;
    let off_ptr: *mut libc::loff_t = match from_offset {
        Some(_) => &mut off,
        None => std::ptr::null_mut(),
    };
    // SAFETY: off_ptr is null or points at `off`, live across the call.
    retry(|| {
        check_size(unsafe {
            libc::splice(
                from.as_raw_fd(),
                off_ptr,
                to.as_raw_fd(),
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE,
            )
        })
    })
}

/// `write(fd, buf)`, once: returns what the call wrote.
pub fn write(fd: BorrowedFd, buf: &[u8]) -> Result<usize> {
    // SAFETY: buf is readable for buf.len() bytes.
    retry(|| check_size(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) }))
}

// ---------------------------------------------------------------------------
// Mounting and process control

/// `umount2(path, 0)`.
pub fn umount(path: &std::path::Path) -> Result<()> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: valid C string.
    check(unsafe { libc::umount2(c.as_ptr(), 0) }).map(|_| ())
}

/// `mount(NULL, path, NULL, MS_REMOUNT | flags, NULL)`: new flags for a
/// live mount (read-only, nosuid, ...), its filesystem untouched.
pub fn remount(path: &std::path::Path, flags: libc::c_ulong) -> Result<()> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: valid C string; a remount takes no source, type or data.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | flags,
            std::ptr::null(),
        )
    })
    .map(|_| ())
}

/// `geteuid()`.
pub fn geteuid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() }
}

/// Which side of a `fork(2)` we are on.
pub enum Forked {
    Parent,
    Child,
}

/// `fork()`. Only called before any thread is started.
pub fn fork() -> Result<Forked> {
    // SAFETY: the caller guarantees the process is single-threaded, so the
    // child may run arbitrary code.
    match unsafe { libc::fork() } {
        -1 => Err(Error::last()),
        0 => Ok(Forked::Child),
        _ => Ok(Forked::Parent),
    }
}

/// `_exit(code)`: leaves without running destructors, so a parent that
/// forked off the daemon does not unmount the daemon's mount on the way out.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// `setsid()` and `dup2(/dev/null or log, 0/1/2)`: detaches the daemon from
/// the terminal and from the pipes of whoever ran `unionfs mount`, so they
/// see end-of-file once the parent exits.
pub fn detach_stdio(log_fd: Option<BorrowedFd>) -> Result<()> {
    // SAFETY: setsid has no memory-safety preconditions.
    unsafe { libc::setsid() };
    let null = open_dir_free_null()?;
    let out = log_fd.map(|f| f.as_raw_fd()).unwrap_or(null.as_raw_fd());
    for (src, dst) in [(null.as_raw_fd(), 0), (out, 1), (out, 2)] {
        // SAFETY: both fds are valid; dup2 atomically replaces dst.
        check(unsafe { libc::dup2(src, dst) })?;
    }
    Ok(())
}

fn open_dir_free_null() -> Result<OwnedFd> {
    // SAFETY: valid static C string.
    let fd = check(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openlog(ident, LOG_PID, LOG_DAEMON)`.
pub fn open_syslog() {
    // openlog keeps the pointer, so the ident must live forever.
    static IDENT: &CStr = c"unionfs";
    // SAFETY: IDENT is 'static.
    unsafe { libc::openlog(IDENT.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
}

/// `syslog(priority, "%s", message)`.
pub fn syslog(priority: i32, message: &str) {
    let msg = CString::new(message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: format string is a literal "%s" with one valid C string arg.
    unsafe { libc::syslog(priority, c"%s".as_ptr(), msg.as_ptr()) };
}

/// `setrlimit(RLIMIT_NOFILE, hard)`: the daemon holds fds for open files and
/// directories, so it takes all it may.
pub fn raise_nofile_limit() {
    let mut lim = MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: lim is written by getrlimit before being read.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, lim.as_mut_ptr()) } == 0 {
        // SAFETY: getrlimit succeeded.
        let mut lim = unsafe { lim.assume_init() };
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: valid rlimit struct.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

/// `umount2(path, MNT_DETACH)`.
pub fn umount_detach(path: &std::path::Path) -> Result<()> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: valid C string.
    check(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) }).map(|_| ())
}

fn sigset(signals: &[i32]) -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset takes valid signals.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for s in signals {
            libc::sigaddset(set.as_mut_ptr(), *s);
        }
        set.assume_init()
    }
}

/// `pthread_sigmask(SIG_BLOCK, signals)`: threads started afterwards inherit
/// the mask, so only the thread in [`wait_signal`] receives them.
pub fn block_signals(signals: &[i32]) {
    let set = sigset(signals);
    // SAFETY: valid set; old mask not requested.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// `sigwait(signals)`: blocks until one arrives; returns it.
pub fn wait_signal(signals: &[i32]) -> i32 {
    let set = sigset(signals);
    let mut sig: libc::c_int = 0;
    loop {
        // SAFETY: valid set and out pointer.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            return sig;
        }
    }
}

// ---------------------------------------------------------------------------
// Changing a layer (only ever the upper or the work dir)

/// `mkdirat(dir, name, mode)`.
pub fn mkdirat(dir: BorrowedFd, name: &OsStr, mode: u32) -> Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) }).map(|_| ())
}

/// `mknodat(dir, name, mode, rdev)`.
pub fn mknodat(dir: BorrowedFd, name: &OsStr, mode: u32, rdev: u64) -> Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string.
    check(unsafe {
        libc::mknodat(
            dir.as_raw_fd(),
            c.as_ptr(),
            mode as libc::mode_t,
            rdev as libc::dev_t,
        )
    })
    .map(|_| ())
}

/// `symlinkat(target, dir, name)`.
pub fn symlinkat(target: &OsStr, dir: BorrowedFd, name: &OsStr) -> Result<()> {
    let t = cstr(target)?;
    let c = cstr(name)?;
    // SAFETY: valid C strings.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) }).map(|_| ())
}

/// `linkat(olddir, oldname, newdir, newname, 0)`: never follows a symlink.
pub fn linkat(
    olddir: BorrowedFd,
    oldname: &OsStr,
    newdir: BorrowedFd,
    newname: &OsStr,
) -> Result<()> {
    let o = cstr(oldname)?;
    let n = cstr(newname)?;
    // SAFETY: valid C strings.
    check(unsafe {
        libc::linkat(
            olddir.as_raw_fd(),
            o.as_ptr(),
            newdir.as_raw_fd(),
            n.as_ptr(),
            0,
        )
    })
    .map(|_| ())
}

/// `unlinkat(dir, name, flags)` (`AT_REMOVEDIR` for a directory).
pub fn unlinkat(dir: BorrowedFd, name: &OsStr, flags: i32) -> Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) }).map(|_| ())
}

/// `renameat2(olddir, oldname, newdir, newname, flags)`.
pub fn renameat2(
    olddir: BorrowedFd,
    oldname: &OsStr,
    newdir: BorrowedFd,
    newname: &OsStr,
    flags: u32,
) -> Result<()> {
    let o = cstr(oldname)?;
    let n = cstr(newname)?;
    // SAFETY: valid C strings.
    check(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            o.as_ptr(),
            newdir.as_raw_fd(),
            n.as_ptr(),
            flags,
        )
    })
    .map(|_| ())
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)`; `u32::MAX` keeps a value.
pub fn lchownat(dir: BorrowedFd, name: &OsStr, uid: u32, gid: u32) -> Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            c.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(|_| ())
}

/// `fchmodat(dir, name, mode, 0)`. Never called on a symlink (Linux keeps
/// no mode there), so following is not a concern; callers check the type.
pub fn fchmodat(dir: BorrowedFd, name: &OsStr, mode: u32) -> Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t, 0) })
        .map(|_| ())
}

/// `fcntl(fd, F_GETFL)`: the file status flags.
pub fn get_status_flags(fd: BorrowedFd) -> Result<i32> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })
}

/// `fcntl(fd, F_SETFL, flags)`: sets the changeable status flags
/// (O_APPEND, O_NONBLOCK, O_DIRECT, O_NOATIME, ...).
pub fn set_status_flags(fd: BorrowedFd, flags: i32) -> Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) }).map(|_| ())
}

/// `fchown(fd, uid, gid)`.
pub fn fchown(fd: BorrowedFd, uid: u32, gid: u32) -> Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) }).map(|_| ())
}

/// `fchmod(fd, mode)`.
pub fn fchmod(fd: BorrowedFd, mode: u32) -> Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }).map(|_| ())
}

/// A time for [`utimensat`]: a value, "now", or "leave as is".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Omit,
    Now,
    At(i64, i64),
}

fn timespec(t: SetTime) -> libc::timespec {
    let (sec, nsec) = match t {
        SetTime::Omit => (0, libc::UTIME_OMIT),
        SetTime::Now => (0, libc::UTIME_NOW),
        SetTime::At(s, n) => (s, n),
    };
    libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as libc::c_long,
    }
}

/// `utimensat(dir, name, [atime, mtime], AT_SYMLINK_NOFOLLOW)`.
pub fn utimensat(dir: BorrowedFd, name: &OsStr, atime: SetTime, mtime: SetTime) -> Result<()> {
    let c = cstr(name)?;
    let times = [timespec(atime), timespec(mtime)];
    // SAFETY: valid C string and a two-element timespec array.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(|_| ())
}

/// `futimens(fd, [atime, mtime])`.
pub fn futimens(fd: BorrowedFd, atime: SetTime, mtime: SetTime) -> Result<()> {
    let times = [timespec(atime), timespec(mtime)];
    // SAFETY: a two-element timespec array.
    check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) }).map(|_| ())
}

/// `ftruncate(fd, len)`.
pub fn ftruncate(fd: BorrowedFd, len: u64) -> Result<()> {
    // SAFETY: plain syscall on a valid fd.
    retry(|| check(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) })).map(|_| ())
}

/// `truncate("/proc/self/fd/N", len)`: the size change alone, as
/// truncate(2) asks (ftruncate(2) would also set the times, even when the
/// size stays).
pub fn truncate_via_proc(fd: BorrowedFd, len: u64) -> Result<()> {
    let path = proc_fd_path(fd);
    // SAFETY: valid C string.
    retry(|| check(unsafe { libc::truncate(path.as_ptr(), len as libc::off_t) })).map(|_| ())
}

/// `fallocate(fd, mode, offset, len)`.
pub fn fallocate(fd: BorrowedFd, mode: i32, offset: u64, len: u64) -> Result<()> {
    // SAFETY: plain syscall on a valid fd.
    retry(|| {
        check(unsafe {
            libc::fallocate(
                fd.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        })
    })
    .map(|_| ())
}

/// `fsync(fd)`, or `fdatasync(fd)` when `data_only`.
pub fn fsync(fd: BorrowedFd, data_only: bool) -> Result<()> {
    // SAFETY: plain syscalls on a valid fd.
    retry(|| {
        check(unsafe {
            if data_only {
                libc::fdatasync(fd.as_raw_fd())
            } else {
                libc::fsync(fd.as_raw_fd())
            }
        })
    })
    .map(|_| ())
}

/// `lseek(fd, offset, whence)`.
pub fn lseek(fd: BorrowedFd, offset: i64, whence: i32) -> Result<i64> {
    // SAFETY: plain syscall on a valid fd.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset as libc::off_t, whence) };
    if r < 0 {
        Err(Error::last())
    } else {
        Ok(r as i64)
    }
}

/// `ioctl(dst, FICLONE, src)`: shares all of `src`'s blocks with `dst`.
pub fn ficlone(dst: BorrowedFd, src: BorrowedFd) -> Result<()> {
    // SAFETY: FICLONE takes the source fd as its argument.
    check(unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) }).map(|_| ())
}

/// `copy_file_range(src, &off_in, dst, &off_out, len, 0)`; returns bytes copied.
pub fn copy_file_range(
    src: BorrowedFd,
    off_in: u64,
    dst: BorrowedFd,
    off_out: u64,
    len: usize,
) -> Result<usize> {
    let mut i = off_in as libc::loff_t;
    let mut o = off_out as libc::loff_t;
    // SAFETY: the offsets are valid pointers for the call's duration.
    retry(|| {
        check_size(unsafe {
            libc::copy_file_range(src.as_raw_fd(), &mut i, dst.as_raw_fd(), &mut o, len, 0)
        })
    })
}

/// `flock(fd, op)`.
pub fn flock(fd: BorrowedFd, op: i32) -> Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::flock(fd.as_raw_fd(), op) }).map(|_| ())
}

/// `umask(mask)`: the daemon creates with exact modes (the kernel has
/// already applied the caller's umask).
pub fn set_umask(mask: u32) {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) };
}
