//! Copy-up (docs/design.md §3): the first change to a lower object rebuilds it in
//! the upper. Parents first; each object is built in the work dir (data,
//! then owner, xattrs, mode, capabilities, times) and renamed into place in
//! one step, so no reader ever sees a partial file and a crash leaves only
//! a temporary that the next mount removes.
//!
//! With `-o metacopy=on` a change of metadata only copies a regular file up
//! as a *metacopy* (kernel overlayfs's format): an empty file of the data's
//! size carrying `overlay.metacopy`, whose bytes stay in the lower. The
//! first write copies them in ([`CopyUp::node`] with [`Data::All`]) into
//! that same inode, so its hard links stay one; removing the xattr last is
//! the commit point, so a crash midway leaves the metacopy, still reading
//! the lower's bytes, never a partial file.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use log::{debug, info};

use crate::error::{Error, Result};
use crate::model::acl;
use crate::model::dir_cache::LayerDir;
use crate::model::layer::UPPER;
use crate::model::layer_reach::LayerReach;
use crate::model::node::{Lower, LowerAt, Node, Stack, ROOT_INO};
use crate::model::override_stat::{self, ForcedNames};
use crate::model::whiteout;
use crate::sys::{self, SetTime, Stat};
use crate::union::dir_snapshot;
use crate::union::handles::Handles;
use crate::union::index;
use crate::union::mount_lookup::{self, Resolved};
use crate::union::upper::{keep_times, Shape, Temp, Upper};

/// Whether the file's bytes come along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    All,
    /// The caller truncates to zero right after (open with O_TRUNC), so
    /// copying the bytes would be wasted.
    Skip,
    /// Only the metadata changes (chmod, chown, times, xattrs, rename,
    /// link): with `-o metacopy=on` a regular file's bytes stay below.
    Meta,
}

/// The xattr applied last: writing data or changing the owner clears it.
const CAPABILITY: &str = "security.capability";

/// What copy-up needs: the tree, the upper it writes, and the open files
/// to point at the copy.
pub struct CopyUp<'a> {
    pub reach: &'a LayerReach,
    pub upper: &'a Upper,
    pub handles: &'a Handles,
    /// Which override xattr each layer keeps forced permissions in.
    pub forced: &'a ForcedNames,
}

impl CopyUp<'_> {
    /// Makes sure `node` has its upper copy, copying its ancestors up first.
    ///
    /// A hard-linked object whose copy is already in the index needs nothing
    /// more: its data and metadata live there, whatever name it was reached
    /// by (giving it an upper name here could bring back a name since
    /// unlinked). `why` says in a few words what asked for the copy, for
    /// the log ("opened for writing"). Unless `data` is `Meta`, a metacopy
    /// gets its bytes too.
    pub fn node(&self, node: &Node, data: Data, why: &str) -> Result<()> {
        self.meta(node, data, why)?;
        if data != Data::Meta && node.stack().needs_data() {
            return self.data_up(node, data, why);
        }
        Ok(())
    }

    /// [`CopyUp::node`] short of a metacopy's bytes: the object has its
    /// upper copy after it, a metacopy where `data` is `Meta` and the mount
    /// makes them (or where one already was).
    fn meta(&self, node: &Node, data: Data, why: &str) -> Result<()> {
        if node.stack().has_upper_copy() {
            return Ok(());
        }
        if node.is_dead() {
            // Its last name was removed: there is nowhere to copy it to, and
            // copying it to its old name would bring a deleted file back.
            return Err(Error::errno(libc::ENOENT).context("object was deleted"));
        }
        if node.ino == ROOT_INO {
            return Err(Error::errno(libc::EIO).context("root has no upper"));
        }
        // Parents first, each under its own lock: no thread ever holds two
        // node locks here, so copy-ups cannot deadlock each other.
        let (parent_ino, name) = node.place();
        let parent = self.reach.nodes.get(parent_ino)?;
        self.meta(&parent, Data::All, "to hold the copy below it")?;

        let _guard = node.lock.lock();
        if node.stack().has_upper_copy() {
            return Ok(()); // another writer copied it up while we waited
        }
        // Re-check on disk too: another name of the object, or a directory
        // rename's tree copy, may have made the copy without this node.
        if let Some(now) = mount_lookup::resolve(self.reach, &parent, &name)? {
            if now.ino == node.ino && now.stack.has_upper_copy() {
                node.set_stack(now.stack.clone());
                return self.follow(node.ino, node);
            }
        }
        let new = self.name(&parent, &name, node, data, why)?;
        node.set_stack(new);
        self.follow(node.ino, node)
    }

    /// Copies the bytes of a metacopy into its upper copy (the same inode,
    /// so hard links stay one), or only empties it for `Data::Skip`; the
    /// metacopy xattr goes last, once the bytes are all there.
    fn data_up(&self, node: &Node, data: Data, why: &str) -> Result<()> {
        {
            let _guard = node.lock.lock();
            let stack = node.stack();
            let (Some(top), Some(from)) = (stack.top(), stack.data()) else {
                return Ok(());
            };
            if !stack.needs_data() {
                return Ok(()); // another writer did it while we waited
            }
            let started = Instant::now();
            let before = self.reach.stat(node, top)?;
            let to = match self.reach.open(node, top, libc::O_WRONLY) {
                // A daemon without CAP_DAC_OVERRIDE (rootless) may not
                // write a file whose mode says read-only: writable for the
                // copy, its mode put back below.
                Err(e) if e.is(libc::EACCES) => self.reach.at_locked(node, top, |dir, name| {
                    sys::fchmodat(dir.fd(), name, (before.st_mode | 0o200) & 0o7777)?;
                    sys::openat(dir.fd(), name, libc::O_WRONLY, 0)
                })?,
                r => r?,
            };
            let to = to.as_fd();
            // Writing drops a capability and may drop setuid/setgid: they
            // are put back after. The mtime stays the copy's, as kernel
            // overlayfs leaves it (so an open for write that writes nothing
            // still changes it there, and here alike).
            let capability = match sys::fgetxattr(to, OsStr::new(CAPABILITY)) {
                Ok(v) => v,
                Err(e) if whiteout::is_xattr_unsupported(e.raw()) => None,
                Err(e) => return Err(e),
            };
            // Never emptied before the bytes are in: an empty file is no
            // metacopy to a lookup, so a crash would show it empty. Bytes
            // a crashed copy left are the same bytes at the same offsets.
            let mut method = "no bytes (truncated)";
            let mut bytes = 0;
            if data != Data::All {
                sys::ftruncate(to, 0)?;
            } else {
                let src = self.reach.open(node, from, libc::O_RDONLY)?;
                let st = sys::fstat(src.as_fd())?;
                method = match self.upper.copy_delay {
                    None => copy_data(src.as_fd(), to, &st)?,
                    Some(delay) => {
                        copy_slowly(src.as_fd(), to, st.st_size as u64, delay)?;
                        "read/write, slowed for a test"
                    }
                };
                sys::ftruncate(to, st.st_size as u64)?;
                bytes = st.st_size;
            }
            if sys::fstat(to)?.st_mode != before.st_mode {
                sys::fchmod(to, before.st_mode & 0o7777)?;
            }
            if let Some(cap) = capability {
                sys::fsetxattr(to, OsStr::new(CAPABILITY), &cap, 0)?;
            }
            for x in whiteout::METACOPY_XATTRS {
                match sys::fremovexattr(to, OsStr::new(x)) {
                    Ok(()) => {}
                    Err(e) if whiteout::is_xattr_unsupported(e.raw()) => {}
                    Err(e) => return Err(e),
                }
            }
            node.update_stack(|s| s.metacopy = false);
            info!(
                target: "unionfs",
                "copy-up {} data from lower {from}: {why} (a metacopy gets its bytes: \
                 {bytes} bytes, {method}, {} ms)",
                self.reach.path_of(node),
                started.elapsed().as_millis()
            );
        }
        self.follow(node.ino, node)
    }

    /// A metacopy's lowers reached by their paths from the layer roots from
    /// now on, the top one recorded as an absolute `overlay.redirect` on its
    /// copy: before it gets a name its lowers do not hold (rename, link).
    /// Returns the lowers it now has when it pinned them.
    pub fn pin_data(&self, node: &Node) -> Result<Option<Vec<Lower>>> {
        let _guard = node.lock.lock();
        let stack = node.stack();
        let (Some(top), Some(xattr)) = (stack.top(), self.upper.format.redirect_xattr()) else {
            return Ok(None);
        };
        if !stack.needs_data()
            || matches!(stack.lowers.first(), Some(l) if matches!(l.at, LowerAt::Root(_)))
        {
            return Ok(None);
        }
        let mut lowers = Vec::new();
        for l in &stack.lowers {
            lowers.push(Lower {
                layer: l.layer,
                at: LowerAt::Root(self.reach.lower_path(node, l.layer)?),
            });
        }
        let Some(Lower {
            at: LowerAt::Root(path),
            ..
        }) = lowers.first()
        else {
            return Ok(None);
        };
        let mut value = b"/".to_vec();
        value.extend_from_slice(path.as_encoded_bytes());
        let fd = self.reach.open(node, top, libc::O_PATH)?;
        debug!("metacopy redirect {}", crate::model::layer::show_path(path));
        sys::fsetxattr(fd.as_fd(), OsStr::new(xattr), &value, 0)?;
        node.update_stack(|s| s.lowers = lowers.clone());
        Ok(Some(lowers))
    }

    /// Points the files opened before a copy-up at the copy, so they see what
    /// writers write from here on (kernel overlayfs does the same). A
    /// metacopy's readers stay on its data file.
    pub fn follow(&self, ino: u64, copied: &Node) -> Result<()> {
        let Some(layer) = copied.stack().data() else {
            return Ok(());
        };
        for h in self.handles.files_of(ino) {
            if h.real().0 != layer {
                h.set_real(layer, self.reach.open(copied, layer, libc::O_RDONLY)?);
            }
        }
        Ok(())
    }

    /// Copies up the directory `dir` (at `name` in `parent`, which is in the
    /// upper) and everything shown below it: in the OCI format a directory
    /// rename moves the whole tree into the upper before it is made opaque.
    /// Returns the nodes the kernel holds below it (their lowers no longer
    /// count once the tree is opaque).
    pub fn tree_of(&self, parent: &Node, name: &OsStr, dir: &Node) -> Result<Vec<Arc<Node>>> {
        {
            let _guard = dir.lock.lock();
            let stack = dir.stack();
            if !stack.upper {
                let why = "renamed, and the OCI format has no redirect: its whole tree is copied";
                let new = self.name(parent, name, dir, Data::All, why)?;
                dir.set_stack(new);
            }
        }
        let udir = self.reach.dir(dir, UPPER)?;
        let mut live = Vec::new();
        keep_times(udir.fd(), || self.children(dir, &mut live))?;
        Ok(live)
    }

    /// Copies up everything shown in `dir` (whose upper copy exists).
    fn children(&self, dir: &Node, live: &mut Vec<Arc<Node>>) -> Result<()> {
        for entry in dir_snapshot::snapshot(self.reach, dir)?.iter().skip(2) {
            let Some(found) = mount_lookup::resolve(self.reach, dir, &entry.name)? else {
                continue;
            };
            let held = self
                .reach
                .nodes
                .get(found.ino)
                .ok()
                .filter(|n| n.is_at(dir.ino, &entry.name));
            if let Some(n) = &held {
                live.push(n.clone());
            }
            if found.kind == libc::S_IFDIR {
                for (layer, d) in &found.dirs {
                    self.reach.dirs.put(found.ino, *layer, d.clone());
                }
                let child = held.unwrap_or_else(|| {
                    Arc::new(Node::detached(
                        found.ino,
                        found.kind,
                        found.stack.clone(),
                        dir.ino,
                        &entry.name,
                    ))
                });
                let below = self.tree_of(dir, &entry.name, &child)?;
                live.extend(below);
            } else {
                self.entry(
                    dir,
                    &entry.name,
                    &found,
                    Data::All,
                    "in a directory whose tree is copied",
                )?;
            }
        }
        Ok(())
    }

    /// Gives the entry `name` of `parent` (in the upper) its own upper copy:
    /// per name, not per node, since two names of one hard-linked object are
    /// one node. `found` is what `name` resolved to; `why` as for `node`.
    pub fn entry(
        &self,
        parent: &Node,
        name: &OsStr,
        found: &Resolved,
        data: Data,
        why: &str,
    ) -> Result<()> {
        if found.stack.upper {
            return Ok(());
        }
        let live = self.reach.nodes.get(found.ino).ok();
        let _guard = live.as_ref().map(|n| n.lock.lock());
        // A node the kernel holds may have been copied up by a racing writer
        // while we waited for its lock: look again.
        let stack = match &live {
            Some(_) => match mount_lookup::resolve(self.reach, parent, name)? {
                Some(now) if now.stack.upper => return Ok(()),
                Some(now) => now.stack,
                None => return Err(Error::errno(libc::ENOENT)),
            },
            None => found.stack.clone(),
        };
        let src = Node::detached(found.ino, found.kind, stack, parent.ino, name);
        let new = self.name(parent, name, &src, data, why)?;
        src.set_stack(new.clone());
        self.follow(found.ino, &src)?;
        // The node of a hard-linked object may sit at another name.
        if let Some(n) = &live {
            if !n.stack().has_upper_copy() || n.is_at(parent.ino, name) {
                n.set_stack(new);
            }
        }
        Ok(())
    }

    /// Gives `name` in `parent` (already in the upper) an upper copy of the
    /// object `src` (whose place and stack say where it is now); returns the
    /// object's new stack. The caller holds the object's node lock if the
    /// kernel knows it.
    fn name(
        &self,
        parent: &Node,
        name: &OsStr,
        src: &Node,
        data: Data,
        why: &str,
    ) -> Result<Stack> {
        let upper = self.upper;
        let stack = src.stack();
        let pdir = self.reach.dir(parent, UPPER)?;
        let mut new = stack.clone();
        new.upper = true;

        if let Some(key) = &stack.index {
            // Another name of the object already has the upper copy: this name
            // becomes one more link of it, so all names stay one inode.
            debug!("copy_up_link {} from index {}", show(name), show(key));
            self.place_index_link(parent, &pdir, name, src.ino)?;
            info!(
                target: "unionfs",
                "link {}: {why}: a hard link of a file copied up through another name \
                 becomes a link of that copy (its index entry), no data copied",
                self.reach.shown(parent, name)
            );
            return Ok(new);
        }

        let started = Instant::now();
        let built = self.build(src, data)?;
        new.metacopy = built.metacopy;
        if built.indexed {
            // The copy is the index entry now: this name is a link of it.
            new.index = Some(index::key(src.ino));
            upper.work.remove(&built.temp.name);
            self.place_index_link(parent, &pdir, name, src.ino)?;
        } else {
            let is_dir = built.temp.kind == libc::S_IFDIR;
            let tmp = &built.temp.name;
            if let Err(e) = self.place(parent, &pdir, name, tmp, is_dir) {
                upper.work.remove(tmp);
                return Err(e);
            }
        }
        if log::log_enabled!(log::Level::Info) {
            let what = match built.kind {
                libc::S_IFREG => format!(
                    "{} bytes, {}, {} ms",
                    built.bytes,
                    built.method,
                    started.elapsed().as_millis()
                ),
                libc::S_IFDIR => "a directory: its own metadata, not its entries".to_owned(),
                libc::S_IFLNK => "a symlink".to_owned(),
                _ => "a special file".to_owned(),
            };
            let links = if built.indexed {
                format!(
                    "; hard-linked ({} names): the copy is its index entry, \
                     which the other names now share",
                    built.links
                )
            } else {
                String::new()
            };
            info!(
                target: "unionfs",
                "copy-up {} from lower {}: {why} ({what}){links}",
                self.reach.shown(parent, name),
                built.from
            );
        }
        Ok(new)
    }

    /// Puts a new link of the index entry of `ino` at its lower name `name`
    /// in `parent`: the object's count of lower names drops by one as its
    /// upper links grow by one (see `index`).
    fn place_index_link(
        &self,
        parent: &Node,
        pdir: &LayerDir,
        name: &OsStr,
        ino: u64,
    ) -> Result<()> {
        let index = self.reach.index()?;
        let work = &self.upper.work;
        let link = index.link_for_placing(work.tmp(), work.placing_name(), ino)?;
        match self.place(parent, pdir, name, &link.tmp, false) {
            Ok(()) => index.placed(&link),
            Err(e) => {
                index.not_placed(work.tmp(), &link);
                Err(e)
            }
        }
    }

    /// Puts the temporary `tmp` at `name` in `parent`, under the parent's
    /// names lock and only if the name still shows the lower object being
    /// copied (an unlink or rename may have happened while the copy was
    /// made); the caller removes `tmp` if not. Lowers never change, so the
    /// name shows it still exactly while the upper holds nothing there, no
    /// object and no whiteout.
    fn place(
        &self,
        parent: &Node,
        pdir: &LayerDir,
        name: &OsStr,
        tmp: &OsStr,
        is_dir: bool,
    ) -> Result<()> {
        let _names = parent.names.lock();
        let slot = pdir.upper_slot(name)?;
        if slot.object || slot.is_whiteout() {
            return Err(Error::errno(libc::ENOENT).context("changed during copy-up"));
        }
        keep_times(pdir.fd(), || {
            self.upper.place_in(tmp, pdir, name, is_dir, slot)
        })
    }

    /// Builds the copy of the object's top layer in the work dir, records
    /// its origin, and enters it in the index when it has several names in
    /// the lower.
    fn build(&self, src: &Node, data: Data) -> Result<Built> {
        let upper = self.upper;
        let layer = src
            .stack()
            .top()
            .ok_or_else(|| Error::errno(libc::ESTALE))?;
        let (sdir, sname) = self.reach.locate(src, layer)?;
        let st = sys::statat(sdir.fd(), &sname)?;
        debug!("copy_up {} from layer {layer} ({data:?})", show(&sname));
        let mut method = "metadata only";
        // The bytes of a lower metacopy are its data file's.
        let stack = src.stack();
        let data_file = match stack.data().filter(|_| stack.metacopy) {
            Some(l) => {
                let fd = self.reach.open(src, l, libc::O_RDONLY)?;
                let st = sys::fstat(fd.as_fd())?;
                Some((fd, st))
            }
            None => None,
        };
        let size = data_file.as_ref().map_or(st.st_size, |(_, st)| st.st_size);
        // A metadata change copies no bytes where a metacopy can say so.
        let metacopy = match upper.metacopy {
            Some(x)
                if data == Data::Meta && st.st_mode & libc::S_IFMT == libc::S_IFREG && size > 0 =>
            {
                Some(x)
            }
            _ => None,
        };
        let data = match data {
            Data::Meta if metacopy.is_none() => Data::All,
            d => d,
        };
        let source = Source {
            data: data_file.as_ref().map(|(fd, st)| (fd.as_fd(), st)),
            metacopy,
        };
        let temp = build(upper, sdir.fd(), &sname, &st, data, &source, &mut method)
            .and_then(|temp| {
                self.carry_override(layer, sdir.fd(), &sname, &temp)
                    .map(|()| temp)
            })
            .map_err(|e| e.context(format!("copy-up of {}", show(&sname))))?;
        let recorded =
            upper.write_origin(temp.fd.as_fd(), self.reach.nodes.origin_xattr(), src.ino);
        let links = st.st_nlink;
        let hardlinked = st.st_mode & libc::S_IFMT != libc::S_IFDIR && links > 1;
        let indexed = recorded.and_then(|()| {
            if hardlinked {
                // Every lower name still shows: each leaves the count as it
                // becomes a link of the entry.
                self.reach
                    .index()?
                    .add(upper.work.tmp(), &temp.name, src.ino, links)?;
            }
            Ok(())
        });
        if let Err(e) = indexed {
            upper.discard(&temp);
            return Err(e.context(format!("copy-up of {}", show(&sname))));
        }
        Ok(Built {
            kind: temp.kind,
            links,
            temp,
            indexed: hardlinked,
            from: layer,
            bytes: if data == Data::All { size as u64 } else { 0 },
            method,
            metacopy: metacopy.is_some(),
        })
    }
}

impl CopyUp<'_> {
    /// Forced permissions: the copy keeps the override of the object `name`
    /// in `dir` (of `layer`), under the upper's xattr name (private xattrs
    /// are not copied with the others), and the access ACL it shows, in
    /// the upper's private ACL xattr and not on the inode.
    fn carry_override(
        &self,
        layer: crate::model::layer::LayerId,
        dir: BorrowedFd,
        name: &OsStr,
        temp: &Temp,
    ) -> Result<()> {
        let Some(to) = self.forced.of(UPPER) else {
            return Ok(());
        };
        if !matches!(temp.kind, libc::S_IFREG | libc::S_IFDIR) {
            return Ok(());
        }
        let (mut shown_perm, mut private) = (None, None);
        if let Some(from) = self.forced.of(layer) {
            let src = sys::openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
            if let Some(value) = sys::getxattr_via_proc(src.as_fd(), OsStr::new(from))? {
                shown_perm = override_stat::parse(&value).map(|f| f.perm);
                self.upper.set_override(temp.fd.as_fd(), to, &value)?;
            }
            let acl_name = override_stat::acl_name_for(from);
            private = sys::getxattr_via_proc(src.as_fd(), OsStr::new(acl_name))?;
        }
        // A real ACL came with the other xattrs; it shows fitted to the
        // shown mode (as `access_acl` in ops says).
        let access = OsStr::new(acl::ACCESS_XATTR);
        let real = match sys::fgetxattr(temp.fd.as_fd(), access) {
            Ok(v) => v,
            Err(e) if whiteout::is_xattr_unsupported(e.raw()) => None,
            Err(e) => return Err(e),
        };
        if real.is_some() {
            sys::fremovexattr(temp.fd.as_fd(), access)?;
        }
        let shown = match (private, real) {
            (Some(p), _) => p,
            (None, Some(r)) => match shown_perm {
                Some(perm) => acl::chmod(&r, perm).unwrap_or(r),
                None => r,
            },
            (None, None) => return Ok(()),
        };
        let to_acl = override_stat::acl_name_for(to);
        self.upper.set_private_acl(temp.fd.as_fd(), to_acl, &shown)
    }
}

/// What `CopyUp::build` made.
struct Built {
    temp: Temp,
    /// It has several names in its lower, so it went into the index.
    indexed: bool,
    /// For the narration: the layer copied from, bytes, how, what kind of
    /// object (`S_IFMT`) and how many names it has in its lower.
    from: u16,
    bytes: u64,
    method: &'static str,
    kind: u32,
    links: u64,
    /// A metacopy: its bytes stay below.
    metacopy: bool,
}

/// Where a copy's bytes come from when not from the object itself.
struct Source<'a> {
    /// The data file of a lower metacopy, and its `stat`.
    data: Option<(BorrowedFd<'a>, &'a Stat)>,
    /// Make a metacopy marked with this xattr instead of copying bytes.
    metacopy: Option<&'static str>,
}

fn show(name: &OsStr) -> String {
    crate::model::layer::show_name(name)
}

/// Builds the copy of `src` (the object `name` in `dir`, whose lstat is
/// `st`) as a temporary in the work dir: data first, then owner, xattrs,
/// mode, capabilities, times.
fn build(
    upper: &Upper,
    dir: BorrowedFd,
    name: &OsStr,
    st: &Stat,
    data: Data,
    source: &Source,
    method: &mut &'static str,
) -> Result<Temp> {
    let kind = st.st_mode & libc::S_IFMT;
    let from = match kind {
        libc::S_IFREG => sys::openat(dir, name, libc::O_RDONLY, 0)?,
        libc::S_IFDIR => sys::openat(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?,
        _ => sys::openat(dir, name, libc::O_PATH, 0)?,
    };
    let target;
    let shape = match kind {
        libc::S_IFREG => Shape::File,
        libc::S_IFDIR => Shape::Dir,
        libc::S_IFLNK => {
            // readlinkat(2) of "" reads the symlink the fd holds.
            target = sys::readlinkat(from.as_fd(), OsStr::new(""))?;
            Shape::Symlink(&target)
        }
        _ => Shape::Special(kind, st.st_rdev),
    };
    // The daemon owns it (as made) until the data is in: chown after
    // writing keeps a setuid file from ever being writable with its bits on.
    let temp = upper.make_temp(shape, u32::MAX, u32::MAX)?;
    let filled = (|| -> Result<()> {
        let (data_fd, data_st) = source.data.unwrap_or((from.as_fd(), st));
        if let (libc::S_IFREG, Some(_)) = (kind, source.metacopy) {
            // A hole of the data's size: the kernel shows the upper's size
            // for a metacopy.
            sys::ftruncate(temp.fd.as_fd(), data_st.st_size as u64)?;
            *method = "metacopy: no bytes";
        } else if kind == libc::S_IFREG && data == Data::All {
            *method = match upper.copy_delay {
                None => copy_data(data_fd, temp.fd.as_fd(), data_st)?,
                Some(delay) => {
                    copy_slowly(data_fd, temp.fd.as_fd(), data_st.st_size as u64, delay)?;
                    "read/write, slowed for a test"
                }
            };
        }
        upper.chown_temp(&temp, st.st_uid, st.st_gid)?;
        let xattrs = read_xattrs(from.as_fd())?;
        set_xattrs(temp.fd.as_fd(), &xattrs, false)?;
        // After chown, which clears setuid/setgid.
        upper.chmod_temp(&temp, st.st_mode)?;
        set_xattrs(temp.fd.as_fd(), &xattrs, true)?;
        if let (libc::S_IFREG, Some(x)) = (kind, source.metacopy) {
            // Empty: the kernel's v0 metacopy, which carries no digest.
            sys::fsetxattr(temp.fd.as_fd(), OsStr::new(x), b"", 0)?;
        }
        sys::utimensat(upper.work.tmp(), &temp.name, atime(st), mtime(st))
    })();
    if let Err(e) = filled {
        upper.discard(&temp);
        return Err(e);
    }
    Ok(temp)
}

fn atime(st: &Stat) -> SetTime {
    SetTime::At(st.st_atime, st.st_atime_nsec)
}

fn mtime(st: &Stat) -> SetTime {
    SetTime::At(st.st_mtime, st.st_mtime_nsec)
}

/// The user-visible xattrs of an object (private ones left out).
fn read_xattrs(from: BorrowedFd) -> Result<Vec<(OsString, Vec<u8>)>> {
    let names = match sys::flistxattr(from) {
        Ok(n) => n,
        Err(e) if whiteout::is_xattr_unsupported(e.raw()) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if whiteout::is_private_xattr(&name) {
            continue;
        }
        if let Some(value) = sys::fgetxattr(from, &name)? {
            out.push((name, value));
        }
    }
    Ok(out)
}

/// Sets xattrs on the copy: all but the capability, or only it (which goes
/// last, as writing data or changing the owner clears it).
fn set_xattrs(to: BorrowedFd, xattrs: &[(OsString, Vec<u8>)], capability_only: bool) -> Result<()> {
    for (name, value) in xattrs {
        if (name == CAPABILITY) != capability_only {
            continue;
        }
        match sys::fsetxattr(to, name, value, 0) {
            Ok(()) => {}
            // user.* cannot sit on a symlink or device; nothing to keep.
            Err(e) if e.is(libc::EPERM) && name.as_encoded_bytes().starts_with(b"user.") => {}
            Err(e) => return Err(e.context(format!("copying xattr {}", name.to_string_lossy()))),
        }
    }
    Ok(())
}

/// The upper refused a reflink once: it cannot share blocks (one upper per
/// daemon), so later copy-ups do not ask again.
static NO_REFLINK: AtomicBool = AtomicBool::new(false);

/// Copies the file `st` describes: shares the blocks where the filesystem
/// can (reflink), else copies only the data extents so that holes stay
/// holes. Returns how.
fn copy_data(from: BorrowedFd, to: BorrowedFd, st: &Stat) -> Result<&'static str> {
    let len = st.st_size as u64;
    if len == 0 {
        return Ok("empty");
    }
    if !NO_REFLINK.load(Ordering::Relaxed) {
        match sys::ficlone(to, from) {
            Ok(()) => return Ok("reflink"),
            Err(e) if matches!(e.raw(), libc::EOPNOTSUPP | libc::ENOTTY | libc::EXDEV) => {
                NO_REFLINK.store(true, Ordering::Relaxed)
            }
            Err(_) => {}
        }
    }
    // Blocks for every byte: no hole to keep, so no extent map to read.
    if st.st_blocks as u64 * 512 >= len {
        return Ok(if copy_range(from, to, 0, len)? {
            "copy_file_range"
        } else {
            "read/write"
        });
    }
    let mut method = "copy_file_range";
    let mut off = 0u64;
    while off < len {
        let start = match sys::lseek(from, off as i64, libc::SEEK_DATA) {
            Ok(s) => s as u64,
            Err(e) if e.is(libc::ENXIO) => break, // only a hole is left
            Err(e) if e.is(libc::EINVAL) => off,  // no SEEK_DATA here: copy all
            Err(e) => return Err(e),
        };
        let end = match sys::lseek(from, start as i64, libc::SEEK_HOLE) {
            Ok(e) => (e as u64).min(len),
            Err(_) => len,
        };
        if !copy_range(from, to, start, end)? {
            method = "read/write";
        }
        off = end;
    }
    // Sets the size when the file ends in a hole.
    sys::ftruncate(to, len)?;
    Ok(method)
}

/// Copies bytes [start, end) at the same offsets; false when it had to
/// fall back to read/write.
fn copy_range(from: BorrowedFd, to: BorrowedFd, start: u64, end: u64) -> Result<bool> {
    let mut off = start;
    while off < end {
        let want = (end - off).min(1 << 30) as usize;
        match sys::copy_file_range(from, off, to, off, want) {
            Ok(0) => break,
            Ok(n) => off += n as u64,
            Err(e)
                if matches!(
                    e.raw(),
                    libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP
                ) =>
            {
                copy_by_read(from, to, off, end)?;
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The test hook's copy: 1 MiB at a time, sleeping `delay` after each.
fn copy_slowly(
    from: BorrowedFd,
    to: BorrowedFd,
    len: u64,
    delay: std::time::Duration,
) -> Result<()> {
    let mut off = 0;
    while off < len {
        let end = (off + (1 << 20)).min(len);
        copy_by_read(from, to, off, end)?;
        std::thread::sleep(delay);
        off = end;
    }
    Ok(())
}

fn copy_by_read(from: BorrowedFd, to: BorrowedFd, mut off: u64, end: u64) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while off < end {
        let want = ((end - off) as usize).min(buf.len());
        let n = sys::pread(from, &mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        sys::pwrite(to, &buf[..n], off)?;
        off += n as u64;
    }
    Ok(())
}
