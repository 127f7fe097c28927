//! rename(2), for every type, directories from lowers included (never
//! EXDEV). The source gets its upper copy first; then the upper rename is
//! made under both directories' `names` locks, and the node follows.
//!
//! A directory that lowers contribute to moves in O(1) in the overlay
//! format: it is copied up alone and records where its lower contents live
//! in an `overlay.redirect` xattr, as kernel overlayfs `redirect_dir=on`
//! does (`rename_redirect`). The OCI format has no redirect: the tree is
//! copied up and made opaque (`rename_tree_copy`).

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::sync::Arc;

use parking_lot::MutexGuard;

use super::UnionFs;

use crate::error::{fail, Error, Result};
use crate::model::layer::UPPER;
use crate::model::node::{Lower, LowerAt, Node};
use crate::sys;
use crate::union::copy_up::Data;
use crate::union::mount_lookup::{self, Resolved};
use crate::union::upper::{keep_times, Leave};

/// What readying one side of a rename changed, for its node to follow.
#[derive(Default)]
struct Ready {
    /// The node's lowers from now on, when they change: reached through
    /// the redirect, or none once the directory is opaque.
    lowers: Option<Vec<Lower>>,
    /// The directory was made opaque: whiteouts below it hide nothing.
    opaque: bool,
    /// Nodes the kernel holds below a tree copied up: they merge no more.
    below: Vec<Arc<Node>>,
}

/// Locks the names of two directories, lower number first, so two renames
/// never wait for each other crosswise.
fn lock_pair<'a>(a: &'a Node, b: &'a Node) -> (MutexGuard<'a, ()>, Option<MutexGuard<'a, ()>>) {
    if a.ino == b.ino {
        return (a.names.lock(), None);
    }
    let (first, second) = if a.ino < b.ino { (a, b) } else { (b, a) };
    let g1 = first.names.lock();
    (g1, Some(second.names.lock()))
}

impl UnionFs {
    /// rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let upper = self.upper()?;
        Self::check_new_name(newname)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        if flags & !(libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE) != 0 || (exchange && noreplace)
        {
            return fail(libc::EINVAL);
        }
        let pnode = self.dir_for_change(parent)?;
        let npnode = self.dir_for_change(newparent)?;
        let src = mount_lookup::resolve(&self.reach, &pnode, name)?
            .ok_or_else(|| Error::errno(libc::ENOENT))?;
        let dst = mount_lookup::resolve(&self.reach, &npnode, newname)?;
        match &dst {
            None if exchange => return fail(libc::ENOENT),
            Some(_) if noreplace => return fail(libc::EEXIST),
            // Two names of one object: rename(2) does nothing.
            Some(d) if d.ino == src.ino && !exchange => return Ok(()),
            _ => {}
        }
        let src_dir = src.kind == libc::S_IFDIR;
        if let Some(d) = dst.as_ref().filter(|_| !exchange) {
            match (src_dir, d.kind == libc::S_IFDIR) {
                (false, true) => return fail(libc::EISDIR),
                (true, false) => return fail(libc::ENOTDIR),
                (true, true) if !self.is_empty_dir(&npnode, newname, d)? => {
                    return fail(libc::ENOTEMPTY)
                }
                _ => {}
            }
        }

        // Copies first, with no directory locked: they may be long.
        let src_ready = self.ready(&pnode, name, &src, &npnode, newname)?;
        let dst_ready = match dst.as_ref().filter(|_| exchange) {
            Some(d) => Some(self.ready(&npnode, newname, d, &pnode, name)?),
            None => None,
        };
        if let Some(d) = dst.as_ref().filter(|_| !exchange) {
            self.link_goes(&npnode, newname, d)?;
        }

        let pdir = self.reach.dir(&pnode, UPPER)?;
        let npdir = self.reach.dir(&npnode, UPPER)?;
        let _locks = lock_pair(&pnode, &npnode);
        // Again under the locks: the names must still show what was readied.
        let now = mount_lookup::resolve(&self.reach, &pnode, name)?
            .filter(|f| f.ino == src.ino && f.stack.upper)
            .ok_or_else(|| Error::errno(libc::ENOENT).context("source changed during rename"))?;
        let at_target = mount_lookup::resolve(&self.reach, &npnode, newname)?;
        if at_target.as_ref().map(|f| f.ino) != dst.as_ref().map(|f| f.ino) {
            return Err(Error::errno(libc::EBUSY).context("target changed during rename"));
        }
        let leave = if !exchange && mount_lookup::found_in_lowers(&self.reach, &pnode, name, &src)?
        {
            Leave::Whiteout
        } else {
            Leave::Nothing
        };
        {
            let _changing = (
                pnode.changing(),
                (npnode.ino != pnode.ino).then(|| npnode.changing()),
            );
            let (from, to) = (
                self.reach.shown(&pnode, name),
                self.reach.shown(&npnode, newname),
            );
            let paths: (&dyn std::fmt::Display, &dyn std::fmt::Display) = (&from, &to);
            upper.rename(&pdir, name, &npdir, newname, exchange, leave, paths)?;
            if let Some(d) = at_target.as_ref().filter(|_| !exchange) {
                self.gone(&npnode, newname, d);
            }
            // The nodes follow their objects; their descendants do not move.
            self.moved(&now, newparent, newname, src_ready.lowers, src_ready.below);
            if let (Some(d), Some(ready)) = (at_target.as_ref().filter(|_| exchange), &dst_ready) {
                self.moved(d, parent, name, ready.lowers.clone(), Vec::new());
            }
        }
        // Under an opaque directory whiteouts hide nothing: drop them, once
        // the rename is done (so they cannot free the room it needed).
        if src_ready.opaque {
            upper.drop_stray_whiteouts(npdir.fd(), newname, &self.reach.shown(&npnode, newname))?;
        }
        if dst_ready.as_ref().is_some_and(|r| r.opaque) {
            upper.drop_stray_whiteouts(pdir.fd(), name, &self.reach.shown(&pnode, name))?;
        }
        Ok(())
    }

    /// Readies one side of a rename (`found`, at `name` in `parent`, going
    /// to `to_name` in `to_parent`): its upper copy exists, and a directory
    /// keeps showing its own lower contents, and only those, where it lands.
    fn ready(
        &self,
        parent: &Node,
        name: &OsStr,
        found: &Resolved,
        to_parent: &Node,
        to_name: &OsStr,
    ) -> Result<Ready> {
        let copier = self.copier()?;
        if found.kind != libc::S_IFDIR {
            let data = self.meta_only();
            copier.entry(parent, name, found, data, "renamed")?;
            // No metacopy was there nor made: nothing more to look at.
            if !found.stack.metacopy && data != Data::Meta {
                return Ok(Ready::default());
            }
            // A metacopy lands where its lowers do not hold it: its data is
            // found by path from now on.
            let Some(now) = mount_lookup::resolve(&self.reach, parent, name)? else {
                return fail(libc::ENOENT);
            };
            if !now.stack.needs_data() {
                return Ok(Ready::default());
            }
            let node = Node::detached(now.ino, now.kind, now.stack, parent.ino, name);
            return Ok(Ready {
                lowers: copier.pin_data(&node)?,
                ..Ready::default()
            });
        }
        let node = match self.reach.nodes.get(found.ino) {
            Ok(n) if n.is_at(parent.ino, name) => n,
            _ => Arc::new(Node::detached(
                found.ino,
                found.kind,
                found.stack.clone(),
                parent.ino,
                name,
            )),
        };
        let to = self.reach.shown(to_parent, to_name);
        if found.stack.lowers.is_empty() {
            // Only the upper has it: nothing to copy. Landing where a lower
            // has the name, it must not merge with that.
            let udir = self.upper_dir(parent, name)?;
            let opaque = mount_lookup::in_lowers(&self.reach, to_parent, to_name)?
                && !crate::model::whiteout::dir_marks(udir.as_fd())?.0.opaque;
            if opaque {
                let why =
                    "renamed onto a name a lower has: opaque so the lower's entries stay hidden";
                keep_times(udir.as_fd(), || {
                    copier.upper.make_opaque(udir.as_fd(), &to, why)
                })?;
            }
            return Ok(Ready {
                opaque,
                ..Ready::default()
            });
        }
        if self.upper()?.format.redirect_xattr().is_some() {
            self.rename_redirect(parent, name, found, &node, &to)
        } else {
            self.rename_tree_copy(parent, name, found, &node, &to)
        }
    }

    /// The upper directory `name` of `parent`, opened to mark it.
    fn upper_dir(&self, parent: &Node, name: &OsStr) -> Result<std::os::fd::OwnedFd> {
        let pdir = self.reach.dir(parent, UPPER)?;
        sys::openat(pdir.fd(), name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
    }

    /// The directory alone is copied up, and records in a redirect the path
    /// of its top lower; each lower is from now on reached by its path.
    fn rename_redirect(
        &self,
        parent: &Node,
        name: &OsStr,
        found: &Resolved,
        node: &Node,
        to: &dyn std::fmt::Display,
    ) -> Result<Ready> {
        let copier = self.copier()?;
        // Where each lower holds it, worked out before anything moves.
        let mut lowers = Vec::new();
        for l in &found.stack.lowers {
            let path = self.reach.lower_path(node, l.layer)?;
            lowers.push(Lower {
                layer: l.layer,
                at: LowerAt::Root(path),
            });
        }
        if !found.stack.upper {
            copier.entry(parent, name, found, Data::All, "renamed")?;
        }
        let udir = self.upper_dir(parent, name)?;
        if let Some(Lower {
            at: LowerAt::Root(top),
            ..
        }) = lowers.first()
        {
            keep_times(udir.as_fd(), || {
                copier.upper.set_redirect(udir.as_fd(), to, top)
            })?;
        }
        Ok(Ready {
            lowers: Some(lowers),
            ..Ready::default()
        })
    }

    /// The whole tree is copied up, then made opaque.
    fn rename_tree_copy(
        &self,
        parent: &Node,
        name: &OsStr,
        found: &Resolved,
        node: &Node,
        to: &dyn std::fmt::Display,
    ) -> Result<Ready> {
        let copier = self.copier()?;
        let below = copier.tree_of(parent, name, node)?;
        let udir = self.upper_dir(parent, name)?;
        // Opaque, it no longer takes its number from the lowers: record the
        // number it had (an upper dir we did not copy up lacks it).
        if self.reach.nodes.read_origin(udir.as_fd()).is_none() {
            copier
                .upper
                .write_origin(udir.as_fd(), self.reach.nodes.origin_xattr(), found.ino)?;
        }
        let why = "its tree copied up whole (the OCI format has no redirect): \
                   opaque so the lower's entries do not merge again where it lands";
        keep_times(udir.as_fd(), || {
            copier.upper.make_opaque(udir.as_fd(), to, why)
        })?;
        Ok(Ready {
            lowers: Some(Vec::new()),
            opaque: true,
            below,
        })
    }

    /// The object `found` now sits at `name` in `parent`: its node (if the
    /// kernel holds one) moves there, with its new `lowers` if they
    /// changed; nothing below it changes, but for the nodes `below` a tree
    /// made opaque, which merge with no lower any more.
    fn moved(
        &self,
        found: &Resolved,
        parent: u64,
        name: &OsStr,
        lowers: Option<Vec<Lower>>,
        below: Vec<Arc<Node>>,
    ) {
        if let Ok(node) = self.reach.nodes.get(found.ino) {
            let old = node.stack();
            node.set_place(parent, name.to_os_string());
            node.update_stack(|s| {
                s.upper = true;
                if let Some(lowers) = &lowers {
                    s.lowers = lowers.clone();
                }
            });
            if lowers.as_ref().is_some_and(|l| l.is_empty()) {
                self.reach
                    .dirs
                    .forget(node.ino, old.lowers.iter().map(|l| l.layer));
            }
        }
        for n in below {
            let old = n.stack();
            n.update_stack(|s| s.lowers.clear());
            if n.is_dir() {
                self.reach
                    .dirs
                    .forget(n.ino, old.lowers.iter().map(|l| l.layer));
            }
        }
    }
}
