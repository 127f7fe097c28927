//! The layers of a mount: the upper (index 0, optional) and the lowers
//! (index 1.., top first), each held open as a directory fd for the life of
//! the mount, so no layer is ever reached by an absolute path again.
//!
//! Lowers given after `::` are *data-only* (kernel overlayfs 6.5+): they
//! sit at the bottom of the stack but no name is ever looked up in them;
//! only the absolute `overlay.redirect` of a metacopy file reaches them.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::sys;

/// Index of a layer in the stack: 0 is the upper, 1.. the lowers, top first.
pub type LayerId = u16;

/// The upper's index; a lowers-only mount has no layer there.
pub const UPPER: LayerId = 0;

/// The hard-link index (`WORK/index`, on the upper's filesystem), reached
/// like a layer so that a node can read and write through its entry.
pub const INDEX: LayerId = LayerId::MAX;

/// One layer: a directory held open.
#[derive(Debug)]
pub struct Layer {
    pub id: LayerId,
    /// As given at mount (symlinks resolved), for messages only.
    pub path: PathBuf,
    root: OwnedFd,
    /// Filesystem of the layer root.
    pub dev: u64,
    /// Which distinct filesystem among the layers this one sits on (0 for
    /// the first seen, upper before lowers); inode numbers carry it in their
    /// high bits so that layers on different filesystems never collide.
    pub fs_index: u16,
}

impl Layer {
    pub fn new(id: LayerId, path: PathBuf, root: OwnedFd, dev: u64, fs_index: u16) -> Layer {
        Layer {
            id,
            path,
            root,
            dev,
            fs_index,
        }
    }

    /// The layer's root directory fd.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    pub fn is_upper(&self) -> bool {
        self.id == UPPER
    }
}

/// Splits "a/b/c" into ("a/b", "c"); "c" into ("", "c").
pub fn split_path(path: &OsStr) -> (&OsStr, &OsStr) {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_bytes();
    match bytes.iter().rposition(|b| *b == b'/') {
        Some(i) => (
            OsStr::from_bytes(&bytes[..i]),
            OsStr::from_bytes(&bytes[i + 1..]),
        ),
        None => (OsStr::new(""), path),
    }
}

/// Joins a relative dir path and a name.
pub fn join_path(dir: &OsStr, name: &OsStr) -> std::ffi::OsString {
    if dir.is_empty() {
        return name.to_os_string();
    }
    let mut p = dir.to_os_string();
    p.push("/");
    p.push(name);
    p
}

/// All layers of a mount.
#[derive(Debug)]
pub struct LayerStack {
    upper: Option<Layer>,
    lowers: Vec<Layer>,
    /// How many of `lowers` (the first ones) are looked up by name; the
    /// rest are data-only.
    normal: usize,
    index: Option<Layer>,
}

impl LayerStack {
    /// Opens every layer root. Paths were validated by the CLI; this only
    /// fails if one vanished since.
    pub fn open(upper: Option<&Path>, lowers: &[PathBuf]) -> Result<LayerStack> {
        LayerStack::open_with_data(upper, lowers, &[])
    }

    /// [`LayerStack::open`] with data-only lowers below the others (given
    /// after `::`), reached only through metacopy redirects.
    pub fn open_with_data(
        upper: Option<&Path>,
        lowers: &[PathBuf],
        data_only: &[PathBuf],
    ) -> Result<LayerStack> {
        let mut devs: Vec<u64> = Vec::new();
        let mut open_one = |id: LayerId, path: &Path| -> Result<Layer> {
            let root = sys::open_dir_path(path)?;
            let dev = sys::fstat(root.as_fd())?.st_dev;
            let fs_index = match devs.iter().position(|d| *d == dev) {
                Some(i) => i,
                None => {
                    devs.push(dev);
                    devs.len() - 1
                }
            };
            Ok(Layer {
                id,
                path: path.to_path_buf(),
                root,
                dev,
                fs_index: fs_index as u16,
            })
        };
        let upper = upper.map(|p| open_one(UPPER, p)).transpose()?;
        let normal = lowers.len();
        let lowers = lowers
            .iter()
            .chain(data_only)
            .enumerate()
            .map(|(i, p)| open_one((i + 1) as LayerId, p))
            .collect::<Result<Vec<_>>>()?;
        if normal == 0 {
            return Err(Error::errno(libc::EINVAL).context("no lower layer"));
        }
        Ok(LayerStack {
            upper,
            lowers,
            normal,
            index: None,
        })
    }

    /// The upper layer, if the mount has one.
    pub fn upper(&self) -> Option<&Layer> {
        self.upper.as_ref()
    }

    /// The layer with this index. Indices come only from this stack, so an
    /// unknown one is a bug; it maps to EIO rather than a panic.
    pub fn get(&self, id: LayerId) -> Result<&Layer> {
        let layer = if id == UPPER {
            self.upper.as_ref()
        } else if id == INDEX {
            self.index.as_ref()
        } else {
            self.lowers.get(id as usize - 1)
        };
        layer.ok_or_else(|| Error::errno(libc::EIO).context(format!("no layer {id}")))
    }

    /// Installs the hard-link index (once the work dir is open).
    pub fn set_index(&mut self, index: Layer) {
        self.index = Some(index);
    }

    /// The lowers looked up by name, top first (data-only ones left out:
    /// no name is ever found in them, see [`LayerStack::data_only`]).
    pub fn lowers(&self) -> &[Layer] {
        &self.lowers[..self.normal]
    }

    /// The data-only lowers (given after `::`), top first.
    pub fn data_only(&self) -> &[Layer] {
        &self.lowers[self.normal..]
    }

    /// Every lower, data-only ones included, top first.
    pub fn lowers_with_data(&self) -> &[Layer] {
        &self.lowers
    }

    /// Every layer looked up by name, top first: the upper (if any), then
    /// the lowers (data-only ones left out).
    pub fn all(&self) -> impl Iterator<Item = &Layer> {
        self.upper.iter().chain(self.lowers().iter())
    }

    /// Ids of every layer, top first.
    pub fn all_ids(&self) -> Vec<LayerId> {
        self.all().map(|l| l.id).collect()
    }
}

/// A merged path for display: `/` plus the relative path, non-UTF-8 bytes
/// escaped (display only: what is written keeps the bytes).
pub fn show_path(rel: &OsStr) -> String {
    let mut s = String::from("/");
    s.push_str(&show_name(rel));
    s
}

/// A name for display: printable UTF-8 as is, control characters and `\`
/// escaped, other bytes as `\xNN`, so no two names show the same.
pub fn show_name(name: &OsStr) -> String {
    let mut out = String::new();
    for chunk in name.as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}
