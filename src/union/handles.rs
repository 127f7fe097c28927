//! Open file and directory handles: what a FUSE `fh` stands for.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::model::layer::LayerId;
use crate::union::dir_snapshot::DirEntry;

/// An open regular file.
#[derive(Debug)]
pub struct FileHandle {
    pub ino: u64,
    /// Layer the fd points into, and the fd. Swapped to the upper copy when
    /// the file is copied up while open, so a reader sees what a writer
    /// wrote (as with kernel overlayfs).
    real: RwLock<(LayerId, Arc<OwnedFd>)>,
}

impl FileHandle {
    /// The layer and fd this handle reads and writes.
    pub fn real(&self) -> (LayerId, Arc<OwnedFd>) {
        let r = self.real.read();
        (r.0, r.1.clone())
    }

    /// Points the handle at another copy of the same file.
    pub fn set_real(&self, layer: LayerId, fd: OwnedFd) {
        *self.real.write() = (layer, Arc::new(fd));
    }
}

/// An open directory: the snapshot its readdir calls page through.
#[derive(Debug)]
pub struct DirHandle {
    pub ino: u64,
    /// Taken at the first readdir, retaken on a rewind to offset 0 after
    /// reading; `None` before.
    pub entries: Mutex<Option<Vec<DirEntry>>>,
    /// Set once a readdir past offset 0 has been answered from `entries`.
    pub served: AtomicBool,
}

/// Every handle of the mount, by the number given to the kernel.
#[derive(Default)]
pub struct Handles {
    files: DashMap<u64, Arc<FileHandle>>,
    dirs: DashMap<u64, Arc<DirHandle>>,
    next: AtomicU64,
}

impl Handles {
    fn next_fh(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers an open file; returns its handle number.
    pub fn open_file(&self, ino: u64, layer: LayerId, fd: OwnedFd) -> u64 {
        let fh = self.next_fh();
        self.files.insert(
            fh,
            Arc::new(FileHandle {
                ino,
                real: RwLock::new((layer, Arc::new(fd))),
            }),
        );
        fh
    }

    pub fn file(&self, fh: u64) -> Result<Arc<FileHandle>> {
        self.files
            .get(&fh)
            .map(|h| h.clone())
            .ok_or_else(|| Error::errno(libc::EBADF))
    }

    pub fn close_file(&self, fh: u64) -> Option<Arc<FileHandle>> {
        self.files.remove(&fh).map(|(_, h)| h)
    }

    /// Every open handle of one inode (to repoint them after copy-up).
    pub fn files_of(&self, ino: u64) -> Vec<Arc<FileHandle>> {
        self.files
            .iter()
            .filter(|h| h.ino == ino)
            .map(|h| h.value().clone())
            .collect()
    }

    /// Registers an open directory (its listing is read at first readdir).
    pub fn open_dir(&self, ino: u64) -> u64 {
        let fh = self.next_fh();
        self.dirs.insert(
            fh,
            Arc::new(DirHandle {
                ino,
                entries: Mutex::new(None),
                served: AtomicBool::new(false),
            }),
        );
        fh
    }

    pub fn dir(&self, fh: u64) -> Result<Arc<DirHandle>> {
        self.dirs
            .get(&fh)
            .map(|h| h.clone())
            .ok_or_else(|| Error::errno(libc::EBADF))
    }

    pub fn close_dir(&self, fh: u64) {
        self.dirs.remove(&fh);
    }
}

/// Borrows the fd of a handle's current real file.
pub fn fd_of(real: &(LayerId, Arc<OwnedFd>)) -> BorrowedFd<'_> {
    real.1.as_fd()
}
