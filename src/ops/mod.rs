//! Each filesystem operation as a short script over the union modules, in
//! plain Rust types (no FUSE): `fuse.rs` converts and replies, tests call
//! these directly. By concern: [`inode`] (lookup, attributes, xattrs),
//! [`file`] (open files), [`names`] (listings, create, link, remove) and
//! [`rename`].
//!
//! No lock covers the whole mount. A change of names in a directory holds
//! that directory's `names` lock (two, in a fixed order, for a rename), a
//! copy-up holds the object's node lock, and every layer object is reached
//! through held directory fds, so a request never sees a path caught midway.

mod file;
mod forced;
mod inode;
mod names;
mod rename;

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use crate::error::{fail, Error, Result};
use crate::model::dir_cache::Changes;
use crate::model::idmap::Owners;
use crate::model::layer::{LayerId, LayerStack, INDEX, UPPER};
use crate::model::layer_reach::LayerReach;
use crate::model::node::{Node, Stack};
use crate::model::override_stat::ForcedNames;
use crate::model::whiteout::{self, UpperFormat, WriteFormat};
use crate::sys::{self, Stat};
use crate::union::copy_up::{CopyUp, Data};
use crate::union::handles::Handles;
use crate::union::index;
use crate::union::upper::Upper;
use crate::union::workdir::WorkDir;

pub use crate::sys::SetTime;
pub use crate::union::dir_snapshot::DirEntry;
pub use crate::union::upper::SetAttr;

/// Attributes of a merged object: the top layer's `lstat` with the union's
/// inode number.
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    pub ino: u64,
    pub st: Stat,
    /// Tells the object from an earlier one with the same number.
    pub generation: u64,
}

/// How a mount behaves, beyond its layers.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Refuse every change (no upper, or `-o ro`).
    pub read_only: bool,
    /// How whiteouts and opaque markers are written into the upper.
    pub format: WriteFormat,
}

/// A mounted union: layers, the inode table and the open handles.
pub struct UnionFs {
    reach: LayerReach,
    handles: Handles,
    opts: Options,
    /// The work dir and write format; `None` for a lowers-only mount.
    upper: Option<Upper>,
    /// How owners on disk map to the owners shown (`uidmapping=`, ...).
    owners: Owners,
    /// Where owners and modes are kept in xattrs (`xattr_permissions=`).
    forced: ForcedNames,
    /// `volatile`: syncs are not passed on (the caller will throw the upper
    /// away after a crash anyway, as with overlayfs `volatile`).
    volatile: bool,
}

/// Who asks: new objects belong to the caller (its fsuid/fsgid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// The caller's umask, for what it creates: applied here, not by the
    /// kernel (`FUSE_DONT_MASK`), since a default ACL takes its place.
    pub umask: u32,
}

/// What to create.
#[derive(Debug, Clone)]
pub enum NewObject {
    /// A regular file, opened with these flags.
    File {
        mode: u32,
        flags: i32,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: OsString,
    },
    /// A fifo, socket or device.
    Special {
        mode: u32,
        rdev: u64,
    },
}

/// A request that may first copy an object up.
#[derive(Debug, Clone, Copy)]
pub enum MayCopy<'a> {
    /// An open with these flags (a write open copies the file's data).
    Open { ino: u64, flags: i32 },
    /// A change to the object itself: attributes, xattrs, a new link.
    Change { ino: u64 },
    /// A rename of `name` in `parent`: a lower file is copied up, and in
    /// OCI format a lower directory is copied whole. (The other side of an
    /// exchange is not weighed: a rare case that then runs on the worker.)
    Rename { parent: u64, name: &'a OsStr },
}

/// A copy-up of at least this many bytes counts as long.
const LONG_COPY: i64 = 1 << 20;

/// True for the layers holding upper copies: the upper and the index
/// (where a hard-linked object's copy is reached).
fn is_upper_copy(layer: LayerId) -> bool {
    layer == UPPER || layer == INDEX
}

impl UnionFs {
    /// A union over `layers`. With an upper, `work` is its work dir
    /// (created, locked and cleaned here); errors name the problem.
    pub fn new(mut layers: LayerStack, work: Option<&Path>, mut opts: Options) -> Result<UnionFs> {
        let mut meta_prefix = "user.unionfs.";
        let mut upper = None;
        if let Some(layer) = layers.upper() {
            let work =
                work.ok_or_else(|| Error::errno(libc::EINVAL).context("upper without work dir"))?;
            let work = WorkDir::open(work, layer)?;
            let format = work.choose_format(opts.format);
            meta_prefix = work.meta_prefix();
            let index = index::open_layer(work.root(), layer)?;
            upper = Some(Upper {
                work,
                format,
                copy_delay: None,
                metacopy: None,
            });
            layers.set_index(index);
        } else {
            opts.read_only = true;
        }
        // The overlay format never writes `.wh.` names: a listing of an
        // upper dir without any rules them out for good (`dirs::Changes`).
        let upper_changes = match upper.as_ref().map(|u| u.format) {
            Some(UpperFormat::Oci) => Changes::Any,
            _ => Changes::NoOciNames,
        };
        Ok(UnionFs {
            reach: LayerReach::new(layers, meta_prefix, upper_changes)?,
            handles: Handles::default(),
            opts,
            upper,
            owners: Owners::default(),
            forced: ForcedNames::default(),
            volatile: false,
        })
    }

    /// Keeps owners and modes in override xattrs where a layer root says so
    /// or, in the upper, where `xattr_permissions=option` (1 or 2) asks.
    pub fn with_forced_permissions(mut self, option: u8) -> UnionFs {
        self.forced = ForcedNames::probe(&self.reach.layers, option);
        self
    }

    /// Maps owners between the layers and the view (see [`crate::model::idmap`]).
    pub fn with_owners(mut self, owners: Owners) -> UnionFs {
        self.owners = owners;
        self
    }

    /// `-o metacopy=on`: a metadata change of a lower file copies up its
    /// metadata only (kernel overlayfs's format), its bytes stay below until
    /// a write. Without effect in the OCI format, which has no such file.
    pub fn with_metacopy(mut self, on: bool) -> UnionFs {
        if let Some(upper) = &mut self.upper {
            upper.metacopy = upper.format.metacopy_xattr().filter(|_| on);
            if on && upper.metacopy.is_none() {
                log::warn!("metacopy=on has no effect in the OCI format: copies are whole");
            }
        }
        self
    }

    /// What a change of metadata only copies up: the metadata alone with
    /// `-o metacopy=on`, else everything.
    fn meta_only(&self) -> Data {
        match self.upper.as_ref().and_then(|u| u.metacopy) {
            Some(_) => Data::Meta,
            None => Data::All,
        }
    }

    /// Test hook (`-o test_copy_delay_ms=`, see
    /// [`crate::mount_line::TestHooks`]): copy-up copies by read/write and
    /// sleeps `delay` per MiB, so tests can watch a copy-up under way.
    pub fn with_copy_delay(mut self, delay: Option<std::time::Duration>) -> UnionFs {
        if let Some(upper) = &mut self.upper {
            upper.copy_delay = delay;
        }
        self
    }

    /// Makes fsync, fdatasync and fsyncdir no-ops (`-o volatile`).
    pub fn with_volatile(mut self, volatile: bool) -> UnionFs {
        self.volatile = volatile;
        self
    }

    /// Nothing may change: no upper, or `-o ro`.
    pub fn is_read_only(&self) -> bool {
        self.opts.read_only
    }

    /// EROFS when nothing may change.
    fn check_writable(&self) -> Result<()> {
        if self.opts.read_only {
            return fail(libc::EROFS);
        }
        Ok(())
    }

    /// The writable side; EROFS for a read-only mount.
    pub fn upper(&self) -> Result<&Upper> {
        self.check_writable()?;
        self.upper.as_ref().ok_or_else(|| Error::errno(libc::EROFS))
    }

    /// Whether `req` may take long because it first copies many bytes up
    /// (a big lower file, a lower tree): such requests are run off the few
    /// FUSE workers (`fuse.rs`), so that they keep answering meanwhile.
    pub fn may_take_long(&self, req: MayCopy) -> bool {
        let Some(upper) = &self.upper else {
            return false;
        };
        let (ino, flags) = match req {
            MayCopy::Open { ino, flags } => (ino, flags),
            MayCopy::Change { ino } => (ino, libc::O_WRONLY),
            MayCopy::Rename { parent, name } => {
                let Ok(dir) = self.reach.nodes.get(parent) else {
                    return false;
                };
                if dir.stack().lowers.is_empty() {
                    return false; // only upper objects: a rename moves a name
                }
                return match crate::union::mount_lookup::resolve(&self.reach, &dir, name) {
                    Ok(Some(f)) if f.kind == libc::S_IFDIR => {
                        !f.stack.lowers.is_empty() && upper.format.redirect_xattr().is_none()
                    }
                    Ok(Some(f)) if f.kind == libc::S_IFREG => {
                        !f.stack.has_upper_copy() && f.stat.st_size >= LONG_COPY
                    }
                    _ => false,
                };
            }
        };
        if flags & file::WRITE_FLAGS == 0 || flags & libc::O_TRUNC != 0 {
            return false;
        }
        let Ok(node) = self.reach.nodes.get(ino) else {
            return false;
        };
        let stack = node.stack();
        if node.kind != libc::S_IFREG || (stack.has_upper_copy() && !stack.needs_data()) {
            return false;
        }
        stack.data().is_some_and(|layer| {
            self.reach
                .stat(&node, layer)
                .is_ok_and(|st| st.st_size >= LONG_COPY)
        })
    }

    /// Copy-up over this mount's upper; EROFS for a read-only mount.
    fn copier(&self) -> Result<CopyUp<'_>> {
        Ok(CopyUp {
            reach: &self.reach,
            upper: self.upper()?,
            handles: &self.handles,
            forced: &self.forced,
        })
    }

    /// The attributes of a node, read from its top layer.
    fn attr_of(&self, node: &Node) -> Result<Attr> {
        let stack = node.stack();
        let mut st = if node.is_dead() {
            match self.fd_of_dead(node, libc::O_RDONLY) {
                Ok((layer, fd)) => {
                    let mut st = sys::fstat(fd.as_fd())?;
                    self.force_fd(layer, fd.as_fd(), &mut st);
                    st
                }
                // No open file of it (a directory's handle holds none): what
                // it was as its last name went, with no name left, as the
                // kernel shows a removed directory that is still open.
                Err(e) => {
                    let mut st = node.dead_stat().ok_or(e)?;
                    let mut attr = self.finish_attr(node.ino, &stack, &mut st);
                    attr.st.st_nlink = 0;
                    return Ok(attr);
                }
            }
        } else {
            let layer = stack
                .top()
                .ok_or_else(|| Error::errno(libc::ESTALE).context("node with no layer"))?;
            let mut st = self.reach.stat(node, layer)?;
            self.force_at(node, layer, &mut st);
            if let Some(data) = stack.data().filter(|_| stack.metacopy) {
                // A metacopy's size and blocks are its data file's.
                let dst = self.reach.stat(node, data)?;
                st.st_size = dst.st_size;
                st.st_blocks = dst.st_blocks;
            }
            st
        };
        Ok(self.finish_attr(node.ino, &stack, &mut st))
    }

    /// Puts the union's inode number into a layer's `lstat` and shows its
    /// owners as mapped; a merged directory reports one link, as overlayfs
    /// does, since its real count would miss the subdirectories of the
    /// other layers.
    fn finish_attr(&self, ino: u64, stack: &Stack, st: &mut Stat) -> Attr {
        // A hard-linked object answers from its index entry, which every
        // name shares, and counts its names across layers.
        if let (Some(key), Ok(index)) = (&stack.index, self.reach.index()) {
            if let Ok(ist) = sys::statat(index.layer.root(), key) {
                // A metacopy entry's bytes are the data's, given in `st`.
                let data = (st.st_size, st.st_blocks);
                *st = ist;
                if stack.metacopy {
                    (st.st_size, st.st_blocks) = data;
                }
                st.st_nlink = index.nlink(ino, ist.st_nlink).unwrap_or(ist.st_nlink);
                if !self.forced.is_off() {
                    if let Ok(fd) = sys::openat(index.layer.root(), key, libc::O_PATH, 0) {
                        self.force_fd(INDEX, fd.as_fd(), st);
                    }
                }
            }
        }
        st.st_ino = ino;
        if !self.owners.is_identity() {
            st.st_uid = self.owners.uid.to_shown(st.st_uid);
            st.st_gid = self.owners.gid.to_shown(st.st_gid);
        }
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR && stack.is_merged() {
            st.st_nlink = 1;
        }
        Attr {
            ino,
            st: *st,
            generation: 0,
        }
    }

    /// The parent directory of a change: a directory, copied up.
    fn dir_for_change(&self, parent: u64) -> Result<Arc<Node>> {
        let pnode = self.reach.nodes.get(parent)?;
        if !pnode.is_dir() {
            return fail(libc::ENOTDIR);
        }
        if pnode.is_dead() {
            return fail(libc::ENOENT);
        }
        self.copier()?
            .node(&pnode, Data::All, "an entry in it changes")?;
        Ok(pnode)
    }

    /// EPERM for a name that would forge a whiteout (`.wh.*`).
    fn check_new_name(name: &std::ffi::OsStr) -> Result<()> {
        if whiteout::is_marker_name(name) {
            return Err(Error::errno(libc::EPERM).context("names starting .wh. are reserved"));
        }
        if name.len() > 255 {
            return fail(libc::ENAMETOOLONG);
        }
        Ok(())
    }

    /// An fd on the object of a node whose last name is gone, reopened from
    /// one of its open files (the only way left to reach it).
    fn fd_of_dead(&self, node: &Node, flags: i32) -> Result<(LayerId, OwnedFd)> {
        let h = self
            .handles
            .files_of(node.ino)
            .into_iter()
            .next()
            .ok_or_else(|| Error::errno(libc::ENOENT).context("object was deleted"))?;
        let (layer, fd) = h.real();
        if flags & libc::O_ACCMODE != libc::O_RDONLY && !is_upper_copy(layer) {
            // Its bytes are still a lower's, and it has no name to copy to.
            return fail(libc::ENOENT);
        }
        Ok((layer, sys::reopen(fd.as_fd(), flags)?))
    }
}
