//! Directories: listings, and the changes of names in one directory
//! (create, link, remove). Each copies up the directory first, then makes
//! its change under the directory's `names` lock, after checking the name
//! again, through `upper.rs`.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;

use super::file::real_open_flags;
use super::{Attr, Caller, NewObject, UnionFs};
use crate::error::{fail, Error, Result};
use crate::model::acl;
use crate::model::layer::UPPER;
use crate::model::node::{Node, Stack};
use crate::model::override_stat;
use crate::model::whiteout;
use crate::sys;
use crate::union::copy_up::Data;
use crate::union::dir_snapshot::{self, DirEntry};
use crate::union::index;
use crate::union::mount_lookup::{self, Resolved};
use crate::union::upper::{Leave, Shape, Temp};

impl UnionFs {
    /// Opens a directory: its handle number, and whether the kernel may
    /// keep the listing. Only a directory without an upper part may: its
    /// listing cannot change until a change comes through the kernel (which
    /// then drops its copy), whereas the kernel's cached offsets would mix
    /// the snapshots of a directory that changes while it is listed.
    pub fn opendir(&self, ino: u64) -> Result<(u64, bool)> {
        let node = self.reach.nodes.get(ino)?;
        if !node.is_dir() || node.is_dead() {
            // Removed while the caller was opening it; or the kernel holds a
            // directory by this number and this node is a newer object that
            // took the number of a removed one.
            return fail(libc::ENOENT);
        }
        let cacheable = !node.stack().upper;
        // The listing is read at the first readdir, not now: names made
        // between opendir(3) and rewinddir(3) must show after the rewind
        // (POSIX; xfstests generic/471), and a listing the kernel keeps is
        // then usually never asked for.
        Ok((self.handles.open_dir(ino), cacheable))
    }

    /// Hands the entries of the snapshot from `offset` on to `add`, each
    /// with the offset of the entry after it (what the kernel passes back to
    /// continue), until `add` says the reply is full. With `inos`, each
    /// entry's number is settled first (readdir); readdirplus looks each
    /// entry up instead. Only the entries handed out cost anything.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        inos: bool,
        mut add: impl FnMut(u64, &DirEntry) -> bool,
    ) -> Result<()> {
        let h = self.handles.dir(fh)?;
        let node = self.reach.nodes.get(h.ino)?;
        let mut guard = h.entries.lock();
        let rewound = offset == 0 && h.served.swap(false, Ordering::Relaxed);
        if rewound || guard.is_none() {
            // rewinddir(3): show the directory as it is now.
            *guard = Some(dir_snapshot::snapshot(&self.reach, &node)?);
        }
        let Some(entries) = guard.as_mut() else {
            return Ok(());
        };
        let start = (offset as usize).min(entries.len());
        for (i, e) in entries.iter_mut().enumerate().skip(start) {
            if inos {
                dir_snapshot::settle_ino(&self.reach, &node, e)?;
            }
            h.served.store(true, Ordering::Relaxed);
            if add((i + 1) as u64, e) {
                break;
            }
        }
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.close_dir(fh);
    }

    /// The attributes of a directory entry for readdirplus, counting a
    /// lookup like `lookup` does ("." and ".." are not counted by the kernel).
    pub fn entry_attr(&self, dir: u64, entry: &DirEntry) -> Result<Attr> {
        if entry.name == "." || entry.name == ".." {
            return self.getattr(if entry.name == "." { dir } else { entry.ino }, None);
        }
        self.lookup_listed(dir, &entry.name, Some(entry.listed))
    }

    /// The default ACL of the upper directory `pdir`, if it has one.
    fn default_acl(&self, pdir: BorrowedFd) -> Result<Option<Vec<u8>>> {
        match sys::fgetxattr(pdir, OsStr::new(acl::DEFAULT_XATTR)) {
            Ok(v) => Ok(v),
            Err(e) if whiteout::is_xattr_unsupported(e.raw()) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Gives a new object built in the work dir its mode `mode`, masked by
    /// `default`, the default ACL of the upper directory it goes to if that
    /// has one, with the access ACL (and, for a directory, the default ACL)
    /// that the kernel would have given it there (see `acl`).
    fn inherit_acl(&self, temp: &Temp, mode: u32, default: Option<&[u8]>) -> Result<()> {
        let upper = self.upper()?;
        let Some(inherited) = default.and_then(|d| acl::inherit(d, mode)) else {
            return upper.chmod_temp(temp, mode);
        };
        upper.chmod_temp(temp, inherited.mode)?;
        if let Some(access) = &inherited.access {
            upper.set_xattr(temp.fd.as_fd(), OsStr::new(acl::ACCESS_XATTR), access, 0)?;
        }
        if let (libc::S_IFDIR, Some(d)) = (temp.kind, default) {
            upper.set_xattr(temp.fd.as_fd(), OsStr::new(acl::DEFAULT_XATTR), d, 0)?;
        }
        Ok(())
    }

    /// Creates a file, directory, symlink or special file owned by the
    /// caller. Returns its attributes and, for a file, its open handle.
    pub fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        what: NewObject,
    ) -> Result<(Attr, Option<u64>)> {
        let upper = self.upper()?;
        Self::check_new_name(name)?;
        // The new object is stored under the caller's ids on disk.
        let (uid, gid) = self.owners.caller_to_disk(caller.uid, caller.gid);
        if let NewObject::Special { mode, rdev } = what {
            if mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0 {
                return Err(Error::errno(libc::EPERM).context("a 0/0 device is a whiteout"));
            }
        }
        let pnode = self.dir_for_change(parent)?;
        let pdir = self.reach.dir(&pnode, UPPER)?;
        let mut pst = sys::fstat(pdir.fd())?;
        self.force_fd(UPPER, pdir.fd(), &mut pst);
        // A setgid directory hands its group down (and, to directories, the bit).
        let setgid_parent = pst.st_mode & libc::S_ISGID != 0;
        let gid = if setgid_parent { pst.st_gid } else { gid };
        let (shape, mode) = match &what {
            NewObject::File { mode, .. } => (Shape::File, *mode),
            NewObject::Dir { mode } => {
                let extra = if setgid_parent { libc::S_ISGID } else { 0 };
                (Shape::Dir, mode | extra)
            }
            NewObject::Symlink { target } => (Shape::Symlink(target), 0o777),
            NewObject::Special { mode, rdev } => {
                (Shape::Special(mode & libc::S_IFMT, *rdev), *mode)
            }
        };
        let is_dir = matches!(what, NewObject::Dir { .. });
        let default_acl = self.default_acl(pdir.fd())?;
        // A default ACL takes the umask's place (POSIX.1e).
        let mode = match default_acl {
            Some(_) => mode,
            None => mode & !(caller.umask & 0o777),
        };
        // With forced permissions the daemon owns the inode and the owner
        // and mode live in the override xattr.
        let forced = self.upper_forced_name().is_some();
        let temp = if forced {
            upper.make_temp(shape, sys::geteuid(), u32::MAX)?
        } else {
            upper.make_temp(shape, uid, gid)?
        };
        let placed = (|| -> Result<()> {
            if forced {
                upper.chmod_temp(&temp, override_stat::real_perm(mode, is_dir))?;
                // The mode shown is the override's: a default ACL masks it
                // as it would the file's own, and the access ACL it hands
                // down is kept privately (the inode's mode is the daemon's).
                let inherited = default_acl.as_deref().and_then(|d| acl::inherit(d, mode));
                let perm = inherited.as_ref().map_or(mode, |i| i.mode);
                let f = override_stat::Forced {
                    uid,
                    gid,
                    perm: perm & 0o7777,
                    kind: None,
                };
                let rdev = match what {
                    NewObject::Special { rdev, .. } => rdev,
                    _ => 0,
                };
                self.write_forced(temp.fd.as_fd(), &f, temp.kind, rdev)?;
                let access = inherited.and_then(|i| i.access);
                if let (Some(access), Some(name)) = (access, self.upper_acl_name()) {
                    // A device or fifo cannot hold a user xattr, nor an
                    // override: it shows its real mode.
                    if override_stat::may_carry(temp.kind) {
                        upper.set_private_acl(temp.fd.as_fd(), name, &access)?;
                    }
                }
                // A new directory inherits the default ACL itself, on the
                // inode: it takes no part in access checks, and nothing the
                // daemon makes inherits from it (objects are built in the
                // work dir), so it cannot touch the daemon's own rights.
                if let (true, Some(d)) = (is_dir, default_acl.as_deref()) {
                    upper.set_xattr(temp.fd.as_fd(), OsStr::new(acl::DEFAULT_XATTR), d, 0)?;
                }
            } else if temp.kind == libc::S_IFLNK {
                upper.chmod_temp(&temp, mode)?;
            } else {
                self.inherit_acl(&temp, mode, default_acl.as_deref())?;
            }
            // Over a name a lower still has, the new directory must not
            // merge with it: it starts empty. (Lowers never change: what
            // they hold is settled before the lock.)
            let in_lowers = mount_lookup::in_lowers(&self.reach, &pnode, name)?;
            if is_dir && in_lowers {
                let why = "made over a name a lower has: opaque so the lower's entries stay hidden";
                upper.make_opaque(temp.fd.as_fd(), &self.reach.shown(&pnode, name), why)?;
            }
            let _names = pnode.names.lock();
            // The name shows something unless the upper hides the lowers'
            // copy with a whiteout.
            let slot = pdir.upper_slot(name)?;
            if slot.object || (in_lowers && !slot.is_whiteout()) {
                return fail(libc::EEXIST);
            }
            upper.place_in(&temp.name, &pdir, name, is_dir, slot)
        })();
        if let Err(e) = placed {
            upper.discard(&temp);
            return Err(e);
        }

        let mut st = sys::fstat(temp.fd.as_fd())?;
        self.force_fd(UPPER, temp.fd.as_fd(), &mut st);
        let ino = self
            .reach
            .nodes
            .ino_for(self.reach.layers.get(UPPER)?, st.st_ino);
        let stack = Stack {
            upper: true,
            ..Stack::default()
        };
        let mut attr = self.finish_attr(ino, &stack, &mut st);
        let kind = st.st_mode & libc::S_IFMT;
        let node = self.reach.nodes.remember(ino, kind, stack, parent, name);
        attr.generation = node.generation;
        let fh = match what {
            NewObject::File { flags, .. } => {
                // The fd it was built through serves, unless the caller asked
                // for flags that change how I/O is done.
                let special = libc::O_SYNC | libc::O_DSYNC | libc::O_DIRECT | libc::O_NOATIME;
                let fd = if flags & special == 0 {
                    temp.fd
                } else {
                    self.reach
                        .open(&node, UPPER, real_open_flags(flags) & !libc::O_TRUNC)?
                };
                Some(self.handles.open_file(ino, UPPER, fd))
            }
            _ => None,
        };
        Ok((attr, fh))
    }

    /// A hard link `newname` in `newparent` to `ino`.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<Attr> {
        let upper = self.upper()?;
        Self::check_new_name(newname)?;
        let node = self.reach.nodes.get(ino)?;
        if node.is_dir() {
            return fail(libc::EPERM);
        }
        let pnode = self.dir_for_change(newparent)?;
        let why = "hard-linked (a new name is made in the upper)";
        let copier = self.copier()?;
        copier.node(&node, self.meta_only(), why)?;
        // The new name is none its lowers hold: a metacopy's data is found
        // by path from now on.
        copier.pin_data(&node)?;
        // A plain hard link in the upper, of the upper copy (or of the index
        // entry, for an object that already has one), so the upper stays a
        // layer kernel overlayfs reads with the same link counts.
        let layer = node
            .stack()
            .top()
            .ok_or_else(|| Error::errno(libc::ESTALE))?;
        let tmp = self
            .reach
            .at_locked(&node, layer, |dir, name| upper.link_temp(dir.fd(), name))?;
        let pdir = self.reach.dir(&pnode, UPPER)?;
        let placed = (|| -> Result<()> {
            let _names = pnode.names.lock();
            if mount_lookup::resolve(&self.reach, &pnode, newname)?.is_some() {
                return fail(libc::EEXIST);
            }
            upper.place(&tmp, &pdir, newname, false).map(|_| ())
        })();
        if let Err(e) = placed {
            upper.work.remove(&tmp);
            return Err(e);
        }
        let mut attr = self.attr_of(&node)?;
        let node = self
            .reach
            .nodes
            .remember(ino, node.kind, node.stack(), newparent, newname);
        attr.generation = node.generation;
        Ok(attr)
    }

    /// unlink(2) (`dir` false) or rmdir(2) (`dir` true).
    pub fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<()> {
        let upper = self.upper()?;
        let pnode = self.reach.nodes.get(parent)?;
        let found = mount_lookup::resolve(&self.reach, &pnode, name)?
            .ok_or_else(|| Error::errno(libc::ENOENT))?;
        let is_dir = found.kind == libc::S_IFDIR;
        match (dir, is_dir) {
            (true, false) => return fail(libc::ENOTDIR),
            (false, true) => return fail(libc::EISDIR),
            _ => {}
        }
        if is_dir && !self.is_empty_dir(&pnode, name, &found)? {
            return fail(libc::ENOTEMPTY);
        }
        let why = "an entry in it removed";
        self.copier()?
            .node(&pnode, crate::union::copy_up::Data::All, why)?;
        let pdir = self.reach.dir(&pnode, UPPER)?;
        let leave = if mount_lookup::found_in_lowers(&self.reach, &pnode, name, &found)? {
            Leave::Whiteout
        } else {
            Leave::Nothing
        };
        self.link_goes(&pnode, name, &found)?;
        let _names = pnode.names.lock();
        // Again under the lock: a copy-up may have given it an upper copy.
        let now = mount_lookup::recheck(&self.reach, &pnode, name, found)?
            .ok_or_else(|| Error::errno(libc::ENOENT))?;
        let _changing = pnode.changing();
        if now.stack.upper {
            upper.remove(&pdir, name, is_dir, leave, &self.reach.shown(&pnode, name))?;
        } else {
            upper.whiteout(&pdir, name, &self.reach.shown(&pnode, name))?;
        }
        self.gone(&pnode, name, &now);
        Ok(())
    }

    /// True when the directory `found` (at `name` in `parent`) shows nothing.
    pub(super) fn is_empty_dir(
        &self,
        parent: &Node,
        name: &OsStr,
        found: &Resolved,
    ) -> Result<bool> {
        let probe = Node::detached(found.ino, found.kind, found.stack.clone(), parent.ino, name);
        Ok(dir_snapshot::snapshot(&self.reach, &probe)?.len() <= 2)
    }

    /// The name `found` was reached by is gone. If it was the object's
    /// last, the node is marked dead: an open file of it must not be copied
    /// up to a name again, and a new object given its number (a filesystem
    /// reuses numbers) gets a new node.
    pub(super) fn gone(&self, parent: &Node, name: &OsStr, found: &Resolved) {
        let last_name = found.kind == libc::S_IFDIR || found.stat.st_nlink <= 1;
        if let Ok(node) = self.reach.nodes.get(found.ino) {
            // The node of an object with one name sits at that name: one
            // sitting elsewhere is another object that took the number.
            if found.stack.index.is_none() && last_name && node.is_at(parent.ino, name) {
                node.set_dead_with(found.stat);
            }
        }
        // After the mark: a walk that holds the directory open again drops
        // it once it sees the mark (`LayerReach::dir`), so no fd of the removed
        // directory stays cached for a new one that reuses its number.
        if found.kind == libc::S_IFDIR {
            self.reach.forget_dirs(found.ino, &found.stack);
        }
    }

    /// Before the name `name` (in `parent`) of a hard-linked object is
    /// removed or replaced. A lower name first becomes an upper link of the
    /// object's index entry, so that its other names count one link fewer
    /// once it goes like any upper name (see `index.rs`). An upper name by
    /// which the node reaches its copy gives it an index entry to reach it
    /// by from now on.
    pub(super) fn link_goes(&self, parent: &Node, name: &OsStr, found: &Resolved) -> Result<()> {
        if found.kind == libc::S_IFDIR || found.stat.st_nlink <= 1 {
            return Ok(());
        }
        if !found.stack.upper {
            let why = "to be removed or replaced";
            // Whole: the copy is the index entry other names will share.
            return self.copier()?.entry(parent, name, found, Data::All, why);
        }
        let Ok(node) = self.reach.nodes.get(found.ino) else {
            return Ok(());
        };
        let _guard = node.lock.lock();
        if node.stack().index.is_some() || !node.is_at(parent.ino, name) {
            return Ok(());
        }
        let pdir = self.reach.dir(parent, UPPER)?;
        self.reach.index()?.add(pdir.fd(), name, found.ino, 0)?;
        node.update_stack(|s| s.index = Some(index::key(found.ino)));
        Ok(())
    }
}
