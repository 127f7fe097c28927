//! Bytes and paths, errnos, and file operations that panic with context.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

// Small byte/path helpers
// ---------------------------------------------------------------------------

/// A path from raw bytes (names are bytes, never lossy UTF-8).
pub fn bpath(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// `base/rel` where `rel` is raw bytes; an empty `rel` is `base` itself.
pub fn join(base: &Path, rel: impl AsRef<[u8]>) -> PathBuf {
    let rel = rel.as_ref();
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(bpath(rel))
    }
}

/// Printable form of a byte name: ASCII as is, other bytes as `\xNN`.
pub fn show(bytes: impl AsRef<[u8]>) -> String {
    let b = bytes.as_ref();
    if b.is_empty() {
        ".".to_string()
    } else {
        b.escape_ascii().to_string()
    }
}

/// The bytes of a path.
pub fn pbytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

/// 64-bit FNV-1a: deterministic across runs and machines.
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The content of a fixture file: it names the layer it sits in, so a read
/// through the mount shows which layer served it.
pub fn tag(layer: &str, path: impl AsRef<[u8]>) -> Vec<u8> {
    let mut v = format!("layer:{layer} file:").into_bytes();
    v.extend_from_slice(path.as_ref());
    v.push(b'\n');
    v
}

/// Parent and final name of a relative byte path (`"a/b/c"` -> `("a/b", "c")`).
pub fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&c| c == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[][..], path),
    }
}

pub(crate) fn join_rel(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = dir.to_vec();
    if !v.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

// Errno helpers
// ---------------------------------------------------------------------------

/// The errno of a failed result, `None` on success.
pub fn errno_of<T>(r: &io::Result<T>) -> Option<i32> {
    match r {
        Ok(_) => None,
        Err(e) => Some(e.raw_os_error().unwrap_or(-1)),
    }
}

/// `EROFS (30)`-style name for messages.
pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        _ => "errno",
    };
    format!("{name} ({e})")
}

/// `Ok(())` when `r` failed with exactly `want`, else a readable complaint.
pub fn expect_errno<T: fmt::Debug>(r: io::Result<T>, want: i32) -> Result<(), String> {
    match r {
        Ok(v) => Err(format!("succeeded ({v:?}), expected {}", errno_name(want))),
        Err(e) => match e.raw_os_error() {
            Some(got) if got == want => Ok(()),
            Some(got) => Err(format!(
                "failed with {}, expected {}",
                errno_name(got),
                errno_name(want)
            )),
            None => Err(format!("failed with {e}, expected {}", errno_name(want))),
        },
    }
}

/// Panics with every message in `failures`, one per line, if there is any.
pub fn assert_no_failures(what: &str, failures: &[String]) {
    if !failures.is_empty() {
        panic!(
            "{what}: {} failure(s):\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
}

// Convenience file operations (panic with context)
// ---------------------------------------------------------------------------

/// Opens with raw `open(2)` flags, always adding O_NOFOLLOW (tests never
/// write through a symlink).
pub fn open_flags(path: &Path, flags: i32, mode: u32) -> io::Result<fs::File> {
    let acc = flags & libc::O_ACCMODE;
    fs::OpenOptions::new()
        .read(acc == libc::O_RDONLY || acc == libc::O_RDWR)
        .write(acc == libc::O_WRONLY || acc == libc::O_RDWR)
        .custom_flags((flags & !libc::O_ACCMODE) | libc::O_NOFOLLOW)
        .mode(mode)
        .open(path)
}

/// The bytes of a regular file (O_NOFOLLOW).
pub fn read(path: &Path) -> Vec<u8> {
    let mut f = open_flags(path, libc::O_RDONLY, 0)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut v = Vec::new();
    f.read_to_end(&mut v)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    v
}

pub fn lstat(path: &Path) -> fs::Metadata {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
}

/// Names in a dir (std read_dir: no `.`/`..`), sorted.
pub fn list(dir: &Path) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
                .file_name()
                .into_vec()
        })
        .collect();
    v.sort();
    v
}

/// `list` as printable strings (for readable assertions on ASCII names).
pub fn list_str(dir: &Path) -> Vec<String> {
    list(dir).iter().map(show).collect()
}
