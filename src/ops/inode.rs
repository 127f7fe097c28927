//! Lookup, attributes and xattrs of one object.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use super::{is_upper_copy, Attr, UnionFs};
use crate::error::{fail, Error, Result};
use crate::model::acl;
use crate::model::idmap::Way;
use crate::model::layer::UPPER;
use crate::model::node::{Node, ROOT_INO};
use crate::model::override_stat;
use crate::model::whiteout;
use crate::sys;
use crate::union::copy_up::Data;
use crate::union::handles;
use crate::union::mount_lookup;
use crate::union::upper::SetAttr;

impl UnionFs {
    /// Resolves `name` in `parent` and records one kernel lookup of it.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        self.lookup_listed(parent, name, None)
    }

    /// [`UnionFs::lookup`] of a name a listing has just shown, knowing
    /// which lowers hold it.
    pub fn lookup_listed(
        &self,
        parent: u64,
        name: &OsStr,
        listed: Option<mount_lookup::Listed>,
    ) -> Result<Attr> {
        let pnode = self.reach.nodes.get(parent)?;
        if !pnode.is_dir() {
            return fail(libc::ENOTDIR);
        }
        let found = mount_lookup::resolve_listed(&self.reach, &pnode, name, listed)?
            .ok_or_else(|| Error::errno(libc::ENOENT))?;
        let mut st = found.stat;
        if let Some(layer) = found.stack.top() {
            let probe = Node::detached(found.ino, found.kind, found.stack.clone(), parent, name);
            self.force_at(&probe, layer, &mut st);
        }
        let mut attr = self.finish_attr(found.ino, &found.stack, &mut st);
        let node = self
            .reach
            .nodes
            .remember(found.ino, found.kind, found.stack, parent, name);
        attr.generation = node.generation;
        if found.no_xattrs {
            // Seen by this lookup's listing: taken only while no xattr of
            // the object has changed since the node was made (state 0), so
            // a change racing with the listing always wins.
            node.found_no_xattrs(0);
        }
        if node.is_dir() {
            for (layer, dir) in found.dirs {
                self.reach.dirs.put(node.ino, layer, dir);
            }
        }
        Ok(attr)
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.reach.forget(ino, n);
    }

    /// Attributes of `ino`; through the open file `fh` when given, so an
    /// open file that was unlinked still answers fstat(2).
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<Attr> {
        let node = self.reach.nodes.get(ino)?;
        // A metacopy read through the data file: its metadata is the top's.
        let metacopy = node.stack().metacopy && !node.is_dead();
        if let Some(h) = fh
            .filter(|_| !metacopy)
            .and_then(|fh| self.handles.file(fh).ok())
        {
            let real = h.real();
            let mut st = sys::fstat(handles::fd_of(&real))?;
            self.force_fd(real.0, handles::fd_of(&real), &mut st);
            return Ok(self.finish_attr(ino, &node.stack(), &mut st));
        }
        self.attr_of(&node)
    }

    pub fn readlink(&self, ino: u64) -> Result<OsString> {
        let node = self.reach.nodes.get(ino)?;
        if node.kind != libc::S_IFLNK {
            return fail(libc::EINVAL);
        }
        let layer = node
            .stack()
            .top()
            .ok_or_else(|| Error::errno(libc::ESTALE))?;
        self.reach
            .at(&node, layer, |dir, name| sys::readlinkat(dir.fd(), name))
    }

    /// Checks `access(2)` modes. The kernel checks permission bits itself
    /// (`default_permissions`); this adds what only the union knows.
    pub fn access(&self, ino: u64, mask: i32) -> Result<()> {
        self.reach.nodes.get(ino)?;
        if mask & libc::W_OK != 0 {
            self.check_writable()?;
        }
        Ok(())
    }

    pub fn statfs(&self) -> Result<libc::statvfs> {
        // The upper takes the writes, so its free space is what matters.
        let layer = match self.reach.layers.upper() {
            Some(u) => u,
            None => self.reach.layers.get(1)?,
        };
        sys::fstatvfs(layer.root())
    }

    /// The xattr names a user sees on a node's top object.
    fn xattr_names(&self, node: &Node) -> Result<Vec<OsString>> {
        let mut names = match node.stack().top() {
            Some(layer) if !node.is_dead() => self
                .reach
                .at(node, layer, |dir, name| sys::listxattrat(dir.fd(), name))?,
            _ => sys::flistxattr(self.top_fd(node)?.as_fd())?,
        };
        // A privately kept access ACL shows under its own name.
        let private_acl = self
            .private_acl_name(node)
            .is_some_and(|p| names.iter().any(|n| n == p));
        names.retain(|n| !whiteout::is_private_xattr(n));
        if private_acl && !names.iter().any(|n| n == acl::ACCESS_XATTR) {
            names.push(acl::ACCESS_XATTR.into());
        }
        Ok(names)
    }

    /// The access ACL a node shows (disk ids). With forced permissions it
    /// is the private one; failing that, a real one (a lower written by
    /// another tool, or an upper written before ACLs were kept privately)
    /// shows with its owner, mask and other entries taken from the shown
    /// mode, as a chmod to that mode would leave it: the named entries a
    /// user set stay, and the ACL never contradicts the mode (a plain
    /// layer's ACL already agrees with its mode, and shows unchanged).
    fn access_acl(&self, node: &Node) -> Result<Option<Vec<u8>>> {
        let access = OsStr::new(acl::ACCESS_XATTR);
        let Some(private) = self.private_acl_name(node) else {
            return self.top_xattr(node, access);
        };
        if let Some(value) = self.top_xattr(node, OsStr::new(private))? {
            return Ok(Some(value));
        }
        let Some(real) = self.top_xattr(node, access)? else {
            return Ok(None);
        };
        let mode = self.attr_of(node)?.st.st_mode;
        Ok(Some(acl::chmod(&real, mode).unwrap_or(real)))
    }

    /// One xattr of a node's top object; `None` when absent.
    fn top_xattr(&self, node: &Node, attr: &OsStr) -> Result<Option<Vec<u8>>> {
        match node.stack().top() {
            Some(layer) if !node.is_dead() => self.reach.at(node, layer, |dir, name| {
                sys::getxattrat(dir.fd(), name, attr)
            }),
            _ => sys::getxattr_via_proc(self.top_fd(node)?.as_fd(), attr),
        }
    }

    /// The fd to read or change a node's xattrs through: its top object.
    fn top_fd(&self, node: &Node) -> Result<OwnedFd> {
        if node.is_dead() {
            return Ok(self.fd_of_dead(node, libc::O_RDONLY)?.1);
        }
        self.reach.open_top(node)
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        let node = self.reach.nodes.get(ino)?;
        if whiteout::is_private_xattr(name) || node.has_no_xattrs() {
            return fail(libc::ENODATA);
        }
        // The names first: most objects have none (one call, then the memo),
        // and a missing name needs no second call.
        let state = node.xattr_state();
        let names = self.xattr_names(&node)?;
        if names.is_empty() {
            node.found_no_xattrs(state);
        }
        if !names.iter().any(|n| n == name) {
            return fail(libc::ENODATA);
        }
        let value = match name == acl::ACCESS_XATTR {
            true => self.access_acl(&node)?,
            false => self.top_xattr(&node, name)?,
        };
        let Some(value) = value else {
            return fail(libc::ENODATA);
        };
        if self.owners.maps_xattr(name.as_bytes()) {
            // A stored value that is no ACL is shown as it is.
            return Ok(self.owners.map_acl(&value, Way::ToShown).unwrap_or(value));
        }
        Ok(value)
    }

    /// The node's xattr names, NUL-terminated each, private ones left out.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.reach.nodes.get(ino)?;
        if node.has_no_xattrs() {
            return Ok(Vec::new());
        }
        let state = node.xattr_state();
        let names = self.xattr_names(&node)?;
        if names.is_empty() {
            node.found_no_xattrs(state);
        }
        let mut out = Vec::new();
        for name in names {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    /// setxattr(2). `in_group(gid)`: whether the caller is in group `gid`
    /// or holds CAP_FSETID, asked only when an access ACL is set.
    pub fn setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        in_group: &dyn Fn(u32) -> bool,
    ) -> Result<()> {
        let upper = self.upper()?;
        if whiteout::is_private_xattr(name) {
            return Err(Error::errno(libc::EPERM).context("private xattr"));
        }
        let mapped;
        let value = if self.owners.maps_xattr(name.as_bytes()) {
            mapped = self
                .owners
                .map_acl(value, Way::ToDisk)
                .ok_or_else(|| Error::errno(libc::EINVAL).context("ACL names an unmapped id"))?;
            &mapped[..]
        } else {
            value
        };
        let node = self.reach.nodes.get(ino)?;
        if name == acl::ACCESS_XATTR && self.upper_forced_name().is_some() {
            if let Some(bits) = acl::minimal_mode(value) {
                return self.acl_as_forced_mode(ino, bits, in_group);
            }
            if override_stat::may_carry(node.kind) {
                return self.acl_kept_privately(&node, value, in_group);
            }
        }
        self.copier()?
            .node(&node, self.meta_only(), "an xattr set")?;
        let fd = self.top_fd(&node)?;
        let r = upper.set_xattr(fd.as_fd(), name, value, flags);
        // After the change: a look that began before it then keeps nothing.
        node.xattrs_changed();
        r?;
        if name == acl::ACCESS_XATTR {
            self.acl_drops_setgid(&node, fd.as_fd(), in_group)?;
        }
        Ok(())
    }

    /// With forced permissions, an access ACL with named users or groups is
    /// kept in the private xattr (see `override_stat::ACL_USER`) and the
    /// shown mode takes the bits it stands for, as `posix_acl_update_mode`
    /// does on a local filesystem (setgid dropped for a caller outside the
    /// group); a real one left on the inode goes.
    fn acl_kept_privately(
        &self,
        node: &Node,
        value: &[u8],
        in_group: &dyn Fn(u32) -> bool,
    ) -> Result<()> {
        // The kernel hands over only ACLs it has checked; a raw value that
        // is none would leave no mode to show.
        let bits = acl::mode_bits(value)
            .ok_or_else(|| Error::errno(libc::EINVAL).context("not a valid access ACL"))?;
        let name = self
            .upper_acl_name()
            .ok_or_else(|| Error::errno(libc::EROFS))?;
        self.copier()?
            .node(node, self.meta_only(), "an xattr set")?;
        let shown = self.attr_of(node)?.st;
        let mode = setgid_for_caller((shown.st_mode & 0o7000) | bits, shown.st_gid, in_group);
        let fd = self.top_fd(node)?;
        let r = self.upper()?.set_private_acl(fd.as_fd(), name, value);
        node.xattrs_changed();
        r?;
        self.drop_real_acl(node, fd.as_fd(), mode)?;
        // The mode the ACL stands for: the chmod leaves the ACL as it is.
        self.setattr(
            node.ino,
            SetAttr {
                mode: Some(mode),
                ..SetAttr::default()
            },
        )?;
        Ok(())
    }

    /// Removes a real access ACL from the upper object open as `fd` (one
    /// written before ACLs were kept privately with forced permissions),
    /// and gives the inode back the real mode a new object with the shown
    /// mode `mode` gets: the ACL's owner entry and mask had rewritten it,
    /// possibly locking the daemon out of its own directory.
    fn drop_real_acl(&self, node: &Node, fd: BorrowedFd, mode: u32) -> Result<()> {
        match self
            .upper()?
            .remove_xattr(fd, OsStr::new(acl::ACCESS_XATTR))
        {
            Ok(()) => {}
            Err(e) if e.is(libc::ENODATA) || whiteout::is_xattr_unsupported(e.raw()) => {
                return Ok(())
            }
            Err(e) => return Err(e),
        }
        node.xattrs_changed();
        let real = override_stat::real_perm(mode, node.is_dir());
        if node.ino == ROOT_INO {
            return sys::fchmod(self.reach.root_dir(UPPER)?.fd(), real);
        }
        self.reach
            .at_locked(node, UPPER, |dir, name| sys::fchmodat(dir.fd(), name, real))
    }

    /// With forced permissions, an access ACL that is only a mode is a
    /// chmod of the mode the override keeps: set on the real file it would
    /// change the real mode (which the daemon needs for its own access), not
    /// the one shown. Setgid goes as `acl_drops_setgid` says, and an older
    /// access ACL goes too, private or on the real file (the kernel then
    /// shows the mode).
    fn acl_as_forced_mode(
        &self,
        ino: u64,
        bits: u32,
        in_group: &dyn Fn(u32) -> bool,
    ) -> Result<()> {
        let node = self.reach.nodes.get(ino)?;
        let shown = self.attr_of(&node)?.st;
        let mode = setgid_for_caller((shown.st_mode & 0o7000) | bits, shown.st_gid, in_group);
        self.setattr(
            ino,
            SetAttr {
                mode: Some(mode),
                ..SetAttr::default()
            },
        )?;
        let fd = self.top_fd(&node)?;
        self.remove_private_acl(&node, fd.as_fd())?;
        self.drop_real_acl(&node, fd.as_fd(), mode)
    }

    /// Removes the access ACL the upper object open as `fd` keeps
    /// privately, if it has one.
    fn remove_private_acl(&self, node: &Node, fd: BorrowedFd) -> Result<()> {
        // A fifo or device has none, and refuses the call.
        let Some(name) = self.upper_acl_name_for(node) else {
            return Ok(());
        };
        let r = self.upper()?.remove_xattr(fd, OsStr::new(name));
        node.xattrs_changed();
        match r {
            Err(e) if !e.is(libc::ENODATA) => Err(e),
            _ => Ok(()),
        }
    }

    /// An access ACL also sets the mode, and a local filesystem then drops
    /// the setgid bit when the caller is neither in the file's group nor
    /// holds CAP_FSETID (`posix_acl_update_mode`). The daemon set it with
    /// its own rights, which always keep the bit: drop it for the caller.
    fn acl_drops_setgid(
        &self,
        node: &Node,
        fd: BorrowedFd,
        in_group: &dyn Fn(u32) -> bool,
    ) -> Result<()> {
        if self.upper_forced_name().is_some() {
            return Ok(()); // the shown mode is the override's, not the file's
        }
        let st = sys::fstat(fd)?;
        if st.st_mode & libc::S_ISGID == 0 {
            return Ok(());
        }
        let mode = setgid_for_caller(st.st_mode & 0o7777, self.attr_of(node)?.st.st_gid, in_group);
        if mode == st.st_mode & 0o7777 {
            return Ok(());
        }
        self.reach
            .at_locked(node, UPPER, |dir, name| sys::fchmodat(dir.fd(), name, mode))
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        let upper = self.upper()?;
        if whiteout::is_private_xattr(name) {
            return Err(Error::errno(libc::EPERM).context("private xattr"));
        }
        let node = self.reach.nodes.get(ino)?;
        let private_acl = name == acl::ACCESS_XATTR && self.upper_acl_name_for(&node).is_some();
        // Nothing to copy up for an attribute that is not there.
        let there = match private_acl {
            true => self.access_acl(&node)?.is_some(),
            false => self.top_xattr(&node, name)?.is_some(),
        };
        if !there {
            return fail(libc::ENODATA);
        }
        self.copier()?
            .node(&node, self.meta_only(), "an xattr removed")?;
        let fd = self.top_fd(&node)?;
        if private_acl {
            // The mode stays what it is, as on a local filesystem.
            self.remove_private_acl(&node, fd.as_fd())?;
            let mode = self.attr_of(&node)?.st.st_mode;
            return self.drop_real_acl(&node, fd.as_fd(), mode);
        }
        let r = upper.remove_xattr(fd.as_fd(), name);
        node.xattrs_changed();
        r
    }

    /// setattr: truncate, chmod, chown, utimes (after copy-up).
    pub fn setattr(&self, ino: u64, mut set: SetAttr) -> Result<Attr> {
        let upper = self.upper()?;
        // Owners are stored as their disk ids; one with none cannot be
        // stored (it would read back as another id), as chown(2) refuses an
        // id that has no mapping in the caller's namespace.
        let unmapped = || Error::errno(libc::EINVAL).context("owner id is not mapped");
        if let Some(uid) = set.uid {
            set.uid = Some(self.owners.uid.to_disk(uid).ok_or_else(unmapped)?);
        }
        if let Some(gid) = set.gid {
            set.gid = Some(self.owners.gid.to_disk(gid).ok_or_else(unmapped)?);
        }
        let node = self.reach.nodes.get(ino)?;
        if node.is_dead() {
            return self.setattr_dead(&node, set);
        }
        if node.ino == ROOT_INO {
            // The root has no parent to name it by: change it through its fd.
            let root = self.reach.root_dir(UPPER)?;
            let set = self.set_forced(root.fd(), set)?;
            upper.set_attr_fd(root.fd(), set)?;
            return self.attr_of(&node);
        }
        if set.size.is_some() && node.is_dir() {
            return fail(libc::EISDIR);
        }
        let data = match set.size {
            Some(0) => Data::Skip,
            Some(_) => Data::All,
            None => self.meta_only(),
        };
        // A size change sets the mtime; a truncate to zero copies no data,
        // so the copy is already empty and the layer would not see one.
        let resized = match set.size {
            Some(size) => self.attr_of(&node)?.st.st_size as u64 != size,
            None => false,
        };
        let why = if set.size.is_some() {
            "truncated"
        } else if set.mode.is_some() {
            "chmod"
        } else if set.uid.is_some() || set.gid.is_some() {
            "chown"
        } else {
            "its times set"
        };
        self.copier()?.node(&node, data, why)?;
        let layer = node
            .stack()
            .top()
            .ok_or_else(|| Error::errno(libc::ESTALE))?;
        self.reach.at_locked(&node, layer, |dir, name| {
            let set = match self.upper_forced_name() {
                None => set,
                Some(_) => {
                    let fd = sys::openat(dir.fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
                    self.set_forced(fd.as_fd(), set)?
                }
            };
            upper.set_attr(dir.fd(), name, node.kind, set, resized)
        })?;
        self.attr_of(&node)
    }

    /// With forced permissions, records the owner and mode changes of `set`
    /// in the override of the upper object open as `fd` (a file or
    /// directory) and returns what is left to apply to the inode.
    fn set_forced(&self, fd: std::os::fd::BorrowedFd, mut set: SetAttr) -> Result<SetAttr> {
        if self.upper_forced_name().is_none()
            || (set.uid.is_none() && set.gid.is_none() && set.mode.is_none())
        {
            return Ok(set);
        }
        let real = sys::fstat(fd)?;
        if !override_stat::may_carry(real.st_mode & libc::S_IFMT) {
            return Ok(set);
        }
        self.change_forced(UPPER, fd, &real, set.uid, set.gid, set.mode)?;
        set.uid = None;
        set.gid = None;
        set.mode = None;
        Ok(set)
    }

    /// setattr of an object whose last name is gone, through one of its
    /// open files (fchmod(2) on an fd of an unlinked file).
    fn setattr_dead(&self, node: &Node, set: SetAttr) -> Result<Attr> {
        let flags = if set.size.is_some() {
            libc::O_WRONLY
        } else {
            libc::O_RDONLY
        };
        let (layer, fd) = self.fd_of_dead(node, flags)?;
        if !is_upper_copy(layer) {
            return fail(libc::ENOENT);
        }
        self.upper()?.set_attr_fd(fd.as_fd(), set)?;
        self.attr_of(node)
    }
}

/// `mode` as an access ACL leaves it for a caller: without its setgid bit
/// unless the caller is in the file's group `gid` or holds CAP_FSETID
/// (`in_group`), as the kernel's `posix_acl_update_mode` decides.
fn setgid_for_caller(mode: u32, gid: u32, in_group: &dyn Fn(u32) -> bool) -> u32 {
    if mode & libc::S_ISGID != 0 && !in_group(gid) {
        mode & !libc::S_ISGID
    } else {
        mode
    }
}
