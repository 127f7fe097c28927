//! Hard links across copy-up (docs/design.md §3 Hard links), as overlayfs's
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
//! * A lower name leaves the count only by becoming an upper link of the
//!   entry (even one about to be unlinked), so the count and the entry's
//!   link count change together: the count is written first as `NEW;OLD`,
//!   with the link waiting in the work dir under a `.place` name, and
//!   settles to `NEW` once the link is in place. A crash in between leaves
//!   the `.place` link behind, and the next mount puts `OLD` back before it
//!   removes it (`undo_placing`), so the merged link count is either the
//!   old one or the new one, never off by one.
//!
//! Entries are named by inode number, which survives remounts, so the index
//! keeps working across them.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use log::debug;

use crate::error::Result;
use crate::model::layer::{Layer, INDEX};
use crate::model::layer_reach::LayerReach;
use crate::sys;

/// The xattr (after the metadata prefix) holding the count of lower names.
pub const LOWER_LINKS: &str = "lower_links";

/// The metadata prefixes a mount may have written with (with and without
/// privilege): offline readers try both.
pub const META_PREFIXES: [&str; 2] = ["trusted.unionfs.", "user.unionfs."];

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

/// The mount reaches its index as one of its layers; here, not in
/// `layer_reach.rs`, so the model never names a union rule.
impl LayerReach {
    /// The hard-link index (mounts with an upper only).
    pub fn index(&self) -> Result<Index<'_>> {
        Ok(Index {
            layer: self.layers.get(INDEX)?,
            meta_prefix: self.nodes.meta_prefix,
        })
    }
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
    /// `lower_links` lower names still shown. The count is on the object
    /// before its entry appears.
    pub fn add(&self, dir: BorrowedFd, name: &OsStr, ino: u64, lower_links: u64) -> Result<()> {
        debug!("index_add {ino} ({lower_links} lower names left)");
        let obj = sys::openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        if let Err(e) = self.write_lower_links(obj.as_fd(), &lower_links.to_string()) {
            // A symlink cannot hold `user.` xattrs (a daemon without
            // privilege): no count reads as 0, so none is needed for 0.
            if lower_links != 0 || self.read_lower_links(obj.as_fd()).ok() != Some(0) {
                return Err(e);
            }
        }
        sys::linkat(dir, name, self.dir(), &key(ino))
    }

    fn entry(&self, ino: u64) -> Result<OwnedFd> {
        sys::openat(self.dir(), &key(ino), libc::O_PATH, 0)
    }

    fn xattr(&self) -> String {
        format!("{}{LOWER_LINKS}", self.meta_prefix)
    }

    fn write_lower_links(&self, fd: BorrowedFd, value: &str) -> Result<()> {
        sys::fsetxattr(fd, OsStr::new(&self.xattr()), value.as_bytes(), 0)
    }

    /// How many lower names of `ino` are still shown.
    pub fn lower_links(&self, ino: u64) -> Result<u64> {
        self.read_lower_links(self.entry(ino)?.as_fd())
    }

    fn read_lower_links(&self, fd: BorrowedFd) -> Result<u64> {
        let v = sys::fgetxattr(fd, OsStr::new(&self.xattr()))?;
        Ok(v.and_then(|v| counts(&v)).map_or(0, |(now, _)| now))
    }

    /// Makes a link of the entry of `ino` at `name` in `tmp` (the work
    /// dir's temporaries, a `.place` name a crashed mount's cleanup knows),
    /// to be placed at one of its lower names, and counts that name as no
    /// longer lower (`NEW;OLD`). `placed` or `not_placed` must follow.
    pub fn link_for_placing(&self, tmp: BorrowedFd, name: OsString, ino: u64) -> Result<Placing> {
        let entry = self.entry(ino)?;
        let old = self.read_lower_links(entry.as_fd())?;
        let left = old.saturating_sub(1);
        debug!("index_link {ino} ({left} lower names left)");
        // The link first: a crash before it leaves no link to undo by.
        sys::linkat(self.dir(), &key(ino), tmp, &name)?;
        if let Err(e) = self.write_lower_links(entry.as_fd(), &format!("{left};{old}")) {
            unlink_placing(tmp, &name);
            return Err(e);
        }
        Ok(Placing {
            tmp: name,
            entry,
            left,
        })
    }

    /// The link from `link_for_placing` is at its name: the count settles.
    pub fn placed(&self, p: &Placing) -> Result<()> {
        self.write_lower_links(p.entry.as_fd(), &p.left.to_string())
    }

    /// The link from `link_for_placing` was not placed: the old count comes
    /// back, then the link goes.
    pub fn not_placed(&self, tmp: BorrowedFd, p: &Placing) {
        if let Err(e) = undo_placing(tmp, &p.tmp) {
            log::warn!(
                "cannot restore the link count of {}: {e}",
                p.tmp.to_string_lossy()
            );
        }
        unlink_placing(tmp, &p.tmp);
    }

    /// The merged link count of an indexed object.
    pub fn nlink(&self, ino: u64, entry_nlink: u64) -> Result<u64> {
        Ok(entry_nlink.saturating_sub(1) + self.lower_links(ino)?)
    }
}

/// Removes a `.place` link (an index entry is never a directory, so one
/// unlink does); a failure leaves it to the next mount's cleanup.
fn unlink_placing(tmp: BorrowedFd, name: &OsStr) {
    if let Err(e) = sys::unlinkat(tmp, name, 0) {
        log::warn!("cannot remove temporary {}: {e}", name.to_string_lossy());
    }
}

/// A link of an index entry on its way to one of the object's names.
pub struct Placing {
    /// Its name in the work dir's `tmp`.
    pub tmp: OsString,
    entry: OwnedFd,
    /// Lower names left once it is placed.
    left: u64,
}

/// `NEW` or `NEW;OLD` (a name being placed) of a `lower_links` value.
pub fn counts(v: &[u8]) -> Option<(u64, Option<u64>)> {
    let s = std::str::from_utf8(v).ok()?;
    match s.split_once(';') {
        Some((new, old)) => Some((new.parse().ok()?, Some(old.parse().ok()?))),
        None => Some((s.parse().ok()?, None)),
    }
}

/// For the `.place` link `name` in the work dir's `tmp` that never reached
/// its name: puts back the count from before (`OLD` of `NEW;OLD`) on the
/// object, whichever metadata prefix it was written with.
pub fn undo_placing(tmp: BorrowedFd, name: &OsStr) -> Result<()> {
    let obj = sys::openat(tmp, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
    for prefix in META_PREFIXES {
        let x = format!("{prefix}{LOWER_LINKS}");
        let v = match sys::fgetxattr(obj.as_fd(), OsStr::new(&x)) {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(e) if e.is(libc::EOPNOTSUPP) || e.is(libc::EPERM) => continue,
            Err(e) => return Err(e),
        };
        if let Some((_, Some(old))) = counts(&v) {
            debug!(
                "index_unlink {} ({old} lower names left)",
                name.to_string_lossy()
            );
            sys::fsetxattr(obj.as_fd(), OsStr::new(&x), old.to_string().as_bytes(), 0)?;
        }
    }
    Ok(())
}

/// The private xattr `what` (after the prefix, e.g. [`LOWER_LINKS`]) of
/// `name` in `dir`, under whichever metadata prefix it was written; `None`
/// when it has none. For offline readers, which do not know the mount's
/// prefix.
pub fn stored(dir: BorrowedFd, name: &OsStr, what: &str) -> Result<Option<Vec<u8>>> {
    for prefix in META_PREFIXES {
        let x = format!("{prefix}{what}");
        match sys::getxattrat(dir, name, OsStr::new(&x)) {
            Ok(Some(v)) => return Ok(Some(v)),
            Ok(None) => {}
            Err(e) if crate::model::whiteout::is_xattr_unsupported(e.raw()) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::counts;

    #[test]
    fn lower_links_values() {
        assert_eq!(counts(b"3"), Some((3, None)));
        assert_eq!(counts(b"2;3"), Some((2, Some(3))));
        assert_eq!(counts(b"x"), None);
        assert_eq!(counts(b"2;"), None);
    }
}
