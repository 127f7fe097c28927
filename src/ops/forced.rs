//! Forced permissions (`xattr_permissions=`, see [`crate::model::override_stat`]):
//! reading a layer object's override into its attributes, writing the
//! upper's. Off (no syscall at all) unless the option is given or a layer
//! root carries an override xattr.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};

use super::UnionFs;
use crate::error::Result;
use crate::model::acl;
use crate::model::layer::{LayerId, UPPER};
use crate::model::node::Node;
use crate::model::override_stat::{self, may_carry, Forced};
use crate::sys::{self, Stat};

impl UnionFs {
    /// Reads the override of the object open as `fd` (in `layer`).
    fn forced_of_fd(&self, layer: LayerId, fd: BorrowedFd) -> Option<Forced> {
        let name = self.forced.of(layer)?;
        let value = sys::getxattr_via_proc(fd, OsStr::new(name)).ok()??;
        override_stat::parse(&value)
    }

    /// Shows the override of the object open as `fd` in `st`, if it has one.
    pub(super) fn force_fd(&self, layer: LayerId, fd: BorrowedFd, st: &mut Stat) {
        if self.forced.is_off() || !may_carry(st.st_mode & libc::S_IFMT) {
            return;
        }
        if let Some(f) = self.forced_of_fd(layer, fd) {
            override_stat::apply(&f, st);
        }
    }

    /// Shows the override of `node`'s object in `layer` in `st`.
    pub(super) fn force_at(&self, node: &Node, layer: LayerId, st: &mut Stat) {
        if self.forced.is_off()
            || !may_carry(st.st_mode & libc::S_IFMT)
            || self.forced.of(layer).is_none()
        {
            return;
        }
        let f = self.reach.at(node, layer, |dir, name| {
            let fd = sys::openat(dir.fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
            Ok(self.forced_of_fd(layer, fd.as_fd()))
        });
        if let Ok(Some(f)) = f {
            override_stat::apply(&f, st);
        }
    }

    /// The xattr the upper keeps overrides in; `None` when it keeps owners
    /// and modes in the inodes.
    pub(super) fn upper_forced_name(&self) -> Option<&'static str> {
        self.forced.of(UPPER)
    }

    /// The private xattr the upper keeps access ACLs in; `None` when they
    /// live on the inodes.
    pub(super) fn upper_acl_name(&self) -> Option<&'static str> {
        self.forced.acl_of(UPPER)
    }

    /// The private xattr `node`'s top object keeps its access ACL in, if
    /// that layer uses forced permissions and the object can carry one.
    pub(super) fn private_acl_name(&self, node: &Node) -> Option<&'static str> {
        if self.forced.is_off() || !may_carry(node.kind) {
            return None;
        }
        self.forced.acl_of(node.stack().top()?)
    }

    /// The private xattr `node`'s upper copy keeps its access ACL in, if
    /// the upper uses forced permissions and the object can carry one.
    pub(super) fn upper_acl_name_for(&self, node: &Node) -> Option<&'static str> {
        self.upper_acl_name().filter(|_| may_carry(node.kind))
    }

    /// A chmod to `mode` of the upper object open as `fd`, applied to the
    /// access ACL it keeps privately, as `posix_acl_chmod` does to one on
    /// an inode: the owner, mask and other entries follow the mode.
    pub(super) fn chmod_private_acl(&self, fd: BorrowedFd, mode: u32) -> Result<()> {
        let Some(name) = self.upper_acl_name() else {
            return Ok(());
        };
        let Some(old) = sys::getxattr_via_proc(fd, OsStr::new(name))? else {
            return Ok(());
        };
        match acl::chmod(&old, mode) {
            Some(new) if new != old => self.upper()?.set_private_acl(fd, name, &new),
            _ => Ok(()),
        }
    }

    /// Records `f` as the override of the upper object open as `fd` (type
    /// and device from `mode`, `rdev`). A symlink or device cannot hold
    /// a user xattr: it keeps its real attributes.
    pub(super) fn write_forced(
        &self,
        fd: BorrowedFd,
        f: &Forced,
        mode: u32,
        rdev: u64,
    ) -> Result<()> {
        let Some(name) = self.upper_forced_name() else {
            return Ok(());
        };
        let value = override_stat::format(f, mode, rdev);
        match self.upper()?.set_override(fd, name, value.as_bytes()) {
            Err(e)
                if e.is(libc::EPERM)
                    && mode & libc::S_IFMT != libc::S_IFREG
                    && mode & libc::S_IFMT != libc::S_IFDIR =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// A chown/chmod of the upper object open as `fd` (in `layer`), whose
    /// real lstat is `real`, recorded in its override; the caller leaves
    /// the real owner and mode alone.
    pub(super) fn change_forced(
        &self,
        layer: LayerId,
        fd: BorrowedFd,
        real: &Stat,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
    ) -> Result<()> {
        let mut f = self
            .forced_of_fd(layer, fd)
            .unwrap_or_else(|| override_stat::of_stat(real));
        f.uid = uid.unwrap_or(f.uid);
        f.gid = gid.unwrap_or(f.gid);
        if let Some(mode) = mode {
            f.perm = mode & 0o7777;
        }
        let kind = f.kind.map_or(real.st_mode & libc::S_IFMT, |(k, _)| k);
        let rdev = f.kind.map_or(real.st_rdev, |(_, r)| r);
        self.write_forced(fd, &f, kind, rdev)?;
        match mode {
            Some(mode) => self.chmod_private_acl(fd, mode),
            None => Ok(()),
        }
    }
}
