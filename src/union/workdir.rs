//! The work dir: where copy-ups and whiteouts are built before one rename
//! puts them in place, and the lock that keeps a second live mount off the
//! same upper. It sits on the upper's filesystem (a rename cannot cross
//! filesystems) and is never shown through the mount.
//!
//! Layout: `WORK/unionfs.lock` (flock held while mounted) and `WORK/tmp/`
//! (temporaries; whatever is left there from a crash is removed at mount,
//! a `.place` link of an index entry after its count is put back).

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use log::{debug, info, warn};

use crate::error::{Error, Result};
use crate::model::layer::Layer;
use crate::model::whiteout::UpperFormat;
use crate::model::whiteout::WriteFormat;
use crate::sys;

const TMP: &str = "tmp";
const LOCK: &str = "unionfs.lock";
/// The suffix of `placing_name`.
const PLACING: &str = ".place";

/// The open work dir of a mount.
#[derive(Debug)]
pub struct WorkDir {
    pub path: PathBuf,
    root: OwnedFd,
    tmp: OwnedFd,
    _lock: OwnedFd,
    counter: AtomicU64,
    /// The process id in temporaries' names, read once: the counter keeps
    /// names apart within a mount, the id apart from an older mount's.
    pid: u32,
}

impl WorkDir {
    /// Creates (if needed), checks, locks and cleans the work dir for
    /// `upper`. Errors are for the user: they name the problem.
    pub fn open(path: &Path, upper: &Layer) -> Result<WorkDir> {
        // Only the daemon looks inside; the umask is 0 here, so say so.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| Error::from(e).context(format!("creating work dir {}", path.display())))?;
        let root = sys::open_dir_path(path)?;
        let dev = sys::fstat(root.as_fd())?.st_dev;
        if dev != upper.dev {
            return Err(Error::errno(libc::EXDEV).context(format!(
                "work dir {} is not on the upper's filesystem",
                path.display()
            )));
        }
        // Two locks: the one in the work dir keeps two mounts off one work
        // dir, the one on the upper root keeps two mounts off one upper
        // whatever work dirs they were given.
        // Read-only: flock needs no more, and a writable fd would keep the
        // upper's filesystem from being remounted read-only under us.
        let lock = sys::openat(
            root.as_fd(),
            OsStr::new(LOCK),
            libc::O_CREAT | libc::O_RDONLY,
            0o600,
        )?;
        let busy = |e: Error| {
            if e.is(libc::EWOULDBLOCK) {
                Error::errno(libc::EBUSY).context(format!(
                    "upper {} is already used by a live mount (lock in {})",
                    upper.path.display(),
                    path.display()
                ))
            } else {
                e
            }
        };
        lock_briefly(lock.as_fd()).map_err(busy)?;
        lock_briefly(upper.root()).map_err(busy)?;

        match sys::mkdirat(root.as_fd(), OsStr::new(TMP), 0o700) {
            Err(e) if !e.is(libc::EEXIST) => return Err(e.context("creating work/tmp")),
            _ => {}
        }
        let tmp = sys::openat(
            root.as_fd(),
            OsStr::new(TMP),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?;
        let work = WorkDir {
            path: path.to_path_buf(),
            root,
            tmp,
            _lock: lock,
            counter: AtomicU64::new(0),
            pid: std::process::id(),
        };
        work.remove_stale()?;
        Ok(work)
    }

    /// The work dir itself.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Where private metadata goes: `trusted.unionfs.` when we may write
    /// trusted xattrs (hidden from users even when the upper is mounted by
    /// kernel overlayfs), else `user.unionfs.`.
    pub fn meta_prefix(&self) -> &'static str {
        if self.can_set_xattr("trusted.unionfs.probe") {
            "trusted.unionfs."
        } else {
            "user.unionfs."
        }
    }

    /// The temporaries directory.
    pub fn tmp(&self) -> BorrowedFd<'_> {
        self.tmp.as_fd()
    }

    /// A fresh name for a temporary.
    pub fn temp_name(&self) -> OsString {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        OsString::from(format!("#{}-{n}", self.pid))
    }

    /// A fresh name for a link of an index entry on its way to one of the
    /// object's names (see `index`): a crash leaves it for `remove_stale`
    /// to undo.
    pub fn placing_name(&self) -> OsString {
        let mut name = self.temp_name();
        name.push(PLACING);
        name
    }

    /// Removes a temporary, recursively if it is a directory.
    pub fn remove(&self, name: &OsStr) {
        if let Err(e) = remove_tree(self.tmp(), name) {
            warn!("cannot remove temporary {}: {e}", name.to_string_lossy());
        }
    }

    /// Removes what a crashed mount left in tmp/.
    fn remove_stale(&self) -> Result<()> {
        let entries = sys::read_dir_all(self.tmp())?;
        if !entries.is_empty() {
            info!(
                target: "unionfs",
                "removing {} temporaries a crashed mount left in {}",
                entries.len(),
                self.path.display()
            );
        }
        for e in entries {
            if e.name.as_bytes().ends_with(PLACING.as_bytes()) {
                crate::union::index::undo_placing(self.tmp(), &e.name)?;
            }
            remove_tree(self.tmp(), &e.name)?;
        }
        Ok(())
    }

    /// Decides how whiteouts and opaque markers are written to the upper:
    /// `auto` takes the overlay format where a 0/0 device can be made there.
    pub fn choose_format(&self, requested: WriteFormat) -> UpperFormat {
        let trusted = self.can_set_xattr("trusted.overlay.probe");
        let overlay = UpperFormat::Overlay { trusted };
        let format = match requested {
            WriteFormat::Oci => UpperFormat::Oci,
            WriteFormat::Overlay => overlay,
            WriteFormat::Auto => {
                let name = self.temp_name();
                match sys::mknodat(self.tmp(), &name, libc::S_IFCHR, 0) {
                    Ok(()) => {
                        self.remove(&name);
                        overlay
                    }
                    // A full upper cannot tell; root can make devices.
                    Err(e) if is_full(&e) && sys::geteuid() == 0 => overlay,
                    Err(e) => {
                        debug!("no 0/0 device in the upper ({e}): oci format");
                        UpperFormat::Oci
                    }
                }
            }
        };
        info!(
            target: "unionfs",
            "upper format: {}: a whiteout is {}, an opaque directory carries {}",
            match format {
                UpperFormat::Overlay { .. } => "overlay",
                UpperFormat::Oci => "oci",
            },
            format.whiteout_words(),
            format.opaque_words()
        );
        format
    }

    fn can_set_xattr(&self, name: &str) -> bool {
        let tmp = self.temp_name();
        if let Err(e) = sys::mkdirat(self.tmp(), &tmp, 0o700) {
            // A full upper cannot tell. The answer must not change from one
            // mount to the next (metadata written before must still be
            // read), and root may write trusted xattrs.
            return is_full(&e) && sys::geteuid() == 0;
        }
        let ok = sys::openat(self.tmp(), &tmp, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .and_then(|fd| sys::fsetxattr(fd.as_fd(), OsStr::new(name), b"y", 0))
            .is_ok();
        self.remove(&tmp);
        ok
    }
}

/// Takes an exclusive flock, waiting up to two seconds: a mount that was
/// just unmounted may still be exiting and holding it.
fn lock_briefly(fd: BorrowedFd) -> Result<()> {
    for _ in 0..20 {
        match sys::flock(fd, libc::LOCK_EX | libc::LOCK_NB) {
            Err(e) if e.is(libc::EWOULDBLOCK) => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            other => return other,
        }
    }
    sys::flock(fd, libc::LOCK_EX | libc::LOCK_NB)
}

/// Out of space or inodes.
fn is_full(e: &Error) -> bool {
    e.is(libc::ENOSPC) || e.is(libc::EDQUOT)
}

/// Removes `name` in `dir`, and everything below it when it is a directory.
/// Never follows a symlink.
pub fn remove_tree(dir: BorrowedFd, name: &OsStr) -> Result<()> {
    match sys::unlinkat(dir, name, 0) {
        Ok(()) => return Ok(()),
        Err(e) if e.is(libc::EISDIR) || e.is(libc::EPERM) => {}
        Err(e) if e.is(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    }
    let sub = sys::openat(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    for e in sys::read_dir_all(sub.as_fd())? {
        remove_tree(sub.as_fd(), &e.name)?;
    }
    sys::unlinkat(dir, name, libc::AT_REMOVEDIR)
}
