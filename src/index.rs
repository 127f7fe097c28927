//! Hard links across copy-up (DESIGN §3 Hard links), as overlayfs's
//! `index=on` does: an object with more than one name gets an *index
//! entry*, a hard link of its upper copy at `WORK/index/<inode number>`.
//!
//! * Every name of the object reaches the same upper inode through it: a
//!   lower name not yet copied up reads the index entry, and its copy-up is
//!   a link of the entry, not a second copy.
//! * The node reads and writes through the entry, whose path never goes
//!   stale when one of the names is unlinked or renamed.
//! * The entry's `lower_links` xattr counts the lower names still shown, so
//!   `st_nlink` = (upper names) + (lower names left).
//!
//! Entries are named by inode number, which survives remounts, so the index
//! keeps working across them.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use log::debug;

use crate::error::Result;
use crate::layer::{Layer, INDEX};
use crate::sys;

/// The xattr (after the metadata prefix) holding the count of lower names.
const LOWER_LINKS: &str = "lower_links";

/// Index entry name for an inode number.
pub fn key(ino: u64) -> OsString {
    OsString::from(ino.to_string())
}

/// Opens (creating) `WORK/index` as the pseudo-layer the index lives in.
pub fn open_layer(work_root: BorrowedFd, upper: &Layer) -> Result<Layer> {
    match sys::mkdirat(work_root, OsStr::new("index"), 0o700) {
        Err(e) if !e.is(libc::EEXIST) => return Err(e.context("creating work/index")),
        _ => {}
    }
    let fd = sys::openat(
        work_root,
        OsStr::new("index"),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )?;
    Ok(Layer::new(
        INDEX,
        upper.path.join("<index>"),
        fd,
        upper.dev,
        upper.fs_index,
    ))
}

/// The index of a mount: the `WORK/index` directory.
#[derive(Debug)]
pub struct Index<'a> {
    pub layer: &'a Layer,
    /// `trusted.unionfs.` or `user.unionfs.`.
    pub meta_prefix: &'static str,
}

impl Index<'_> {
    fn dir(&self) -> BorrowedFd<'_> {
        self.layer.root()
    }

    /// True when the object numbered `ino` has an entry.
    pub fn has(&self, ino: u64) -> Result<bool> {
        match sys::statat(self.dir(), &key(ino)) {
            Ok(_) => Ok(true),
            Err(e) if e.is(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Links `name` in `dir` (an upper copy) as the entry of `ino`, with
    /// `lower_links` lower names still shown.
    pub fn add(&self, dir: BorrowedFd, name: &OsStr, ino: u64, lower_links: u64) -> Result<()> {
        debug!("index_add {ino} ({lower_links} lower names left)");
        let k = key(ino);
        sys::linkat(dir, name, self.dir(), &k)?;
        self.set_lower_links(ino, lower_links)
    }

    fn entry(&self, ino: u64) -> Result<OwnedFd> {
        sys::openat(self.dir(), &key(ino), libc::O_PATH, 0)
    }

    /// How many lower names of `ino` are still shown.
    pub fn lower_links(&self, ino: u64) -> Result<u64> {
        let fd = self.entry(ino)?;
        let name = format!("{}{LOWER_LINKS}", self.meta_prefix);
        let v = sys::fgetxattr(fd.as_fd(), OsStr::new(&name))?;
        Ok(v.and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    pub fn set_lower_links(&self, ino: u64, n: u64) -> Result<()> {
        let fd = self.entry(ino)?;
        let name = format!("{}{LOWER_LINKS}", self.meta_prefix);
        sys::fsetxattr(fd.as_fd(), OsStr::new(&name), n.to_string().as_bytes(), 0)
    }

    /// One lower name of `ino` went away (copied up or whited out).
    pub fn lower_name_gone(&self, ino: u64) -> Result<()> {
        let n = self.lower_links(ino)?;
        self.set_lower_links(ino, n.saturating_sub(1))
    }

    /// The merged link count of an indexed object.
    pub fn nlink(&self, ino: u64, entry_nlink: u64) -> Result<u64> {
        Ok(entry_nlink.saturating_sub(1) + self.lower_links(ino)?)
    }
}
