//! FUSE passthrough (kernel 6.9+, CAP_SYS_ADMIN): which opens the kernel
//! serves from the layer's file itself, at native speed, instead of asking
//! the daemon for every read and write.
//!
//! The kernel keeps one I/O mode per inode: while any open of it is served
//! through the daemon ("cached"), an open in passthrough fails with EIO, and
//! all passthrough opens of an inode must share one backing file. So the
//! mode is decided per inode, at its first open, and kept until its last
//! release.
//!
//! Only files that cannot change layer are eligible: upper copies, and any
//! file of a lowers-only mount. A lower file of a writable mount is served
//! through the daemon, so that an fd opened before a copy-up reads what
//! writers write to the copy (as kernel overlayfs does).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// How the open files of one inode are served.
enum Mode<B> {
    /// Through the daemon; the number of open files.
    Cached(usize),
    /// By the kernel from this backing file; the number of open files.
    Through(Arc<B>, usize),
}

/// The I/O mode of every inode with open files.
pub struct Passthrough<B> {
    modes: Mutex<HashMap<u64, Mode<B>>>,
}

impl<B> Default for Passthrough<B> {
    fn default() -> Self {
        Passthrough {
            modes: Mutex::new(HashMap::new()),
        }
    }
}

impl<B> Passthrough<B> {
    /// A new open of `ino`: the backing file to serve it from, or `None`
    /// to serve it through the daemon. `eligible` says whether this open's
    /// file may be served by the kernel; `register` makes its backing file
    /// (only called for the inode's first open).
    pub fn open<E: std::fmt::Display>(
        &self,
        ino: u64,
        eligible: bool,
        register: impl FnOnce() -> Result<B, E>,
    ) -> Option<Arc<B>> {
        let mut modes = self.modes.lock();
        match modes.get_mut(&ino) {
            Some(Mode::Cached(n)) => {
                *n += 1;
                None
            }
            // Another open of the inode is in passthrough: so must this one
            // be, from the same file (an inode's copy never changes layer
            // once it is an upper copy).
            Some(Mode::Through(b, n)) => {
                *n += 1;
                Some(b.clone())
            }
            None => {
                let mode = if eligible {
                    match register() {
                        Ok(b) => Mode::Through(Arc::new(b), 1),
                        Err(e) => {
                            log::debug!("no passthrough for inode {ino}: {e}");
                            Mode::Cached(1)
                        }
                    }
                } else {
                    Mode::Cached(1)
                };
                let out = match &mode {
                    Mode::Through(b, _) => Some(b.clone()),
                    Mode::Cached(_) => None,
                };
                modes.insert(ino, mode);
                out
            }
        }
    }

    /// True while the open files of `ino` are served by the kernel.
    pub fn through(&self, ino: u64) -> bool {
        matches!(self.modes.lock().get(&ino), Some(Mode::Through(..)))
    }

    /// An open file of `ino` was released.
    pub fn release(&self, ino: u64) {
        let mut modes = self.modes.lock();
        let left = match modes.get_mut(&ino) {
            Some(Mode::Cached(n)) | Some(Mode::Through(_, n)) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => return,
        };
        if left == 0 {
            modes.remove(&ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(id: u32) -> impl FnOnce() -> Result<u32, String> {
        move || Ok(id)
    }

    #[test]
    fn first_open_decides_the_mode_until_the_last_release() {
        let p = Passthrough::default();
        // A lower file of a writable mount: through the daemon.
        assert!(p.open(1, false, ok(7)).is_none());
        // Copied up meanwhile: still cached while the first is open.
        assert!(p.open(1, true, ok(8)).is_none());
        p.release(1);
        p.release(1);
        // All closed: the next eligible open goes through the kernel.
        assert_eq!(p.open(1, true, ok(9)).as_deref(), Some(&9));
        // Later opens share the backing file, never register another.
        assert_eq!(
            p.open(1, true, || -> Result<u32, String> {
                panic!("registered twice")
            })
            .as_deref(),
            Some(&9)
        );
        p.release(1);
        p.release(1);
        p.release(1); // an extra release is harmless
        assert!(p.open(1, false, ok(1)).is_none());
    }

    #[test]
    fn a_failed_registration_serves_through_the_daemon() {
        let p: Passthrough<u32> = Passthrough::default();
        assert!(p.open(2, true, || Err("EPERM")).is_none());
        assert!(p.open(2, true, ok(3)).is_none());
    }
}
