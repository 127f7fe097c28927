//! Every change to the upper layer goes through these few helpers, and each
//! logs what it does, so `RUST_LOG=debug` narrates every change and `-v`
//! (`unionfs=info`) the copy-on-write events: whiteouts, opaque dirs,
//! redirects and the renames that leave a whiteout, each with its merged
//! path (`at`, worked out only when the line is written) and why. New
//! objects are built in the work dir ([`Upper::make_temp`]) and put in
//! place with one rename, so a reader (or a crash) sees either the old
//! state or the new one.
//!
//! The cases are named as in kernel overlayfs: `create_upper` vs
//! `create_over_whiteout`, `remove_upper` vs `remove_and_whiteout`.

use std::ffi::{OsStr, OsString};
use std::fmt::Display;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use log::{debug, info};

use crate::error::Result;
use crate::model::dir_cache::LayerDir;
use crate::model::whiteout::{self, UpperFormat};
use crate::sys::{self, SetTime};
use crate::union::workdir::WorkDir;

/// The attribute changes of a setattr.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// The kind of object [`Upper::make_temp`] makes.
#[derive(Debug, Clone, Copy)]
pub enum Shape<'a> {
    File,
    Dir,
    Symlink(&'a OsStr),
    /// A fifo, socket or device: `S_IFMT` bits and device number.
    Special(u32, u64),
}

/// An object being built in the work dir, not yet in the tree.
pub struct Temp {
    pub name: OsString,
    /// Writable for a file, readable for a directory, `O_PATH` for a
    /// symlink or special file.
    pub fd: OwnedFd,
    /// `S_IFMT` bits.
    pub kind: u32,
}

/// The writable side of a mount: work dir plus the format to write.
#[derive(Debug)]
pub struct Upper {
    pub work: WorkDir,
    pub format: UpperFormat,
    /// Test hook: copy-up copies by read/write and sleeps this long per
    /// MiB (`-o test_copy_delay_ms=`), so tests can watch a mount
    /// while a copy-up is under way.
    pub copy_delay: Option<std::time::Duration>,
    /// `-o metacopy=on` in the overlay format: the xattr that marks a
    /// metadata-only copy (a metadata change copies no bytes).
    pub metacopy: Option<&'static str>,
}

/// What a removal must leave behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// Nothing below has the name: just remove it.
    Nothing,
    /// A lower still has the name: leave a whiteout.
    Whiteout,
}

fn show(name: &OsStr) -> String {
    crate::model::layer::show_name(name)
}

impl Upper {
    /// Starts a new object in the work dir: a file, directory, symlink or
    /// special file owned by `uid:gid` (private until it is placed).
    pub fn make_temp(&self, shape: Shape, uid: u32, gid: u32) -> Result<Temp> {
        let work = self.work.tmp();
        let name = self.work.temp_name();
        let made = (|| -> Result<Temp> {
            let (fd, kind) = match shape {
                Shape::File => (
                    sys::openat(
                        work,
                        &name,
                        libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
                        0o600,
                    )?,
                    libc::S_IFREG,
                ),
                Shape::Dir => {
                    sys::mkdirat(work, &name, 0o700)?;
                    (
                        sys::openat(work, &name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?,
                        libc::S_IFDIR,
                    )
                }
                Shape::Symlink(target) => {
                    sys::symlinkat(target, work, &name)?;
                    (sys::openat(work, &name, libc::O_PATH, 0)?, libc::S_IFLNK)
                }
                Shape::Special(kind, rdev) => {
                    sys::mknodat(work, &name, kind | 0o600, rdev)?;
                    (sys::openat(work, &name, libc::O_PATH, 0)?, kind)
                }
            };
            let temp = Temp {
                name: name.clone(),
                fd,
                kind,
            };
            self.chown_temp(&temp, uid, gid)?;
            Ok(temp)
        })();
        if made.is_err() {
            self.work.remove(&name);
        }
        made
    }

    /// Sets a temporary's owner (before its mode: chown clears setuid).
    pub fn chown_temp(&self, temp: &Temp, uid: u32, gid: u32) -> Result<()> {
        if uid == u32::MAX && gid == u32::MAX {
            return Ok(()); // as made: the daemon's
        }
        match temp.kind {
            libc::S_IFREG | libc::S_IFDIR => sys::fchown(temp.fd.as_fd(), uid, gid),
            // An O_PATH fd cannot be chowned: by name in the work dir.
            _ => sys::lchownat(self.work.tmp(), &temp.name, uid, gid),
        }
    }

    /// Sets a temporary's permission bits (a symlink has none).
    pub fn chmod_temp(&self, temp: &Temp, mode: u32) -> Result<()> {
        match temp.kind {
            libc::S_IFREG | libc::S_IFDIR => sys::fchmod(temp.fd.as_fd(), mode & 0o7777),
            libc::S_IFLNK => Ok(()),
            _ => sys::fchmodat(self.work.tmp(), &temp.name, mode & 0o7777),
        }
    }

    /// Drops a temporary that will not be placed.
    pub fn discard(&self, temp: &Temp) {
        self.work.remove(&temp.name);
    }

    /// Applies a setattr to the upper object `name` in `dir` (after its
    /// copy-up). The size alone: ftruncate(2) arrives with "mtime = now"
    /// of its own, truncate(2) without, and the layer's truncate then keeps
    /// the times when the size does not change.
    pub fn set_attr(
        &self,
        dir: BorrowedFd,
        name: &OsStr,
        kind: u32,
        set: SetAttr,
        resized: bool,
    ) -> Result<()> {
        debug!("setattr_upper {} {set:?}", show(name));
        if let Some(size) = set.size {
            let fd = sys::openat(dir, name, libc::O_PATH, 0)?;
            sys::truncate_via_proc(fd.as_fd(), size)?;
            if resized && set.mtime.is_none() {
                sys::utimensat(dir, name, SetTime::Omit, SetTime::Now)?;
            }
        }
        if set.uid.is_some() || set.gid.is_some() {
            sys::lchownat(
                dir,
                name,
                set.uid.unwrap_or(u32::MAX),
                set.gid.unwrap_or(u32::MAX),
            )?;
        }
        if let Some(mode) = set.mode {
            // A symlink has no permission bits of its own.
            if kind != libc::S_IFLNK {
                sys::fchmodat(dir, name, mode & 0o7777)?;
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            sys::utimensat(
                dir,
                name,
                set.atime.unwrap_or(SetTime::Omit),
                set.mtime.unwrap_or(SetTime::Omit),
            )?;
        }
        Ok(())
    }

    /// Applies a setattr through an fd (an open object with no name left).
    pub fn set_attr_fd(&self, fd: BorrowedFd, set: SetAttr) -> Result<()> {
        debug!("setattr_upper_fd {set:?}");
        if let Some(size) = set.size {
            sys::truncate_via_proc(fd, size)?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            sys::fchown(fd, set.uid.unwrap_or(u32::MAX), set.gid.unwrap_or(u32::MAX))?;
        }
        if let Some(mode) = set.mode {
            sys::fchmod(fd, mode & 0o7777)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            sys::futimens(
                fd,
                set.atime.unwrap_or(SetTime::Omit),
                set.mtime.unwrap_or(SetTime::Omit),
            )?;
        }
        Ok(())
    }

    /// Sets a user's xattr on an upper object.
    pub fn set_xattr(&self, fd: BorrowedFd, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        debug!("setxattr_upper {}", show(name));
        sys::fsetxattr(fd, name, value, flags)
    }

    /// Records an object's forced owner and mode (`xattr_permissions=`) in
    /// the override xattr `name`.
    pub fn set_override(&self, fd: BorrowedFd, name: &str, value: &[u8]) -> Result<()> {
        debug!("override_stat {name}={}", String::from_utf8_lossy(value));
        sys::fsetxattr(fd, OsStr::new(name), value, 0)
    }

    /// Records an object's access ACL in the private xattr `name` (forced
    /// permissions keep it off the inode).
    pub fn set_private_acl(&self, fd: BorrowedFd, name: &str, acl: &[u8]) -> Result<()> {
        debug!("private_acl {name} ({} bytes)", acl.len());
        sys::fsetxattr(fd, OsStr::new(name), acl, 0)
    }

    pub fn remove_xattr(&self, fd: BorrowedFd, name: &OsStr) -> Result<()> {
        debug!("removexattr_upper {}", show(name));
        sys::fremovexattr(fd, name)
    }

    /// Makes a second name of an upper object, as a temporary to place.
    pub fn link_temp(&self, dir: BorrowedFd, name: &OsStr) -> Result<OsString> {
        let tmp = self.work.temp_name();
        debug!("link_upper {} (as {})", show(name), show(&tmp));
        sys::linkat(dir, name, self.work.tmp(), &tmp)?;
        Ok(tmp)
    }

    /// Records in an upper copy the number of the object it copies
    /// (`xattr` is the private origin xattr), so the number survives the
    /// copy-up and remounts.
    pub fn write_origin(&self, fd: BorrowedFd, xattr: &OsStr, ino: u64) -> Result<()> {
        debug!("origin {ino}");
        match sys::fsetxattr(fd, xattr, ino.to_string().as_bytes(), 0) {
            // user.* xattrs cannot sit on symlinks and devices; their
            // numbers are only promised stable while mounted.
            Err(e) if e.is(libc::EPERM) => Ok(()),
            other => other,
        }
    }

    /// Records where a renamed directory's lower contents live (a path from
    /// the lower root), as kernel overlayfs `redirect_dir` does.
    /// `at` is where the directory is going.
    pub fn set_redirect(
        &self,
        dir: BorrowedFd,
        at: &dyn Display,
        lower_path: &OsStr,
    ) -> Result<()> {
        let xattr = self
            .format
            .redirect_xattr()
            .ok_or_else(|| crate::error::Error::errno(libc::EXDEV))?;
        let mut value = b"/".to_vec();
        value.extend_from_slice(lower_path.as_encoded_bytes());
        let lower = crate::model::layer::show_path(lower_path);
        info!(
            target: "unionfs",
            "redirect {at}: {xattr}={lower}, a directory moved without copying its tree: \
             its lower entries stay at {lower}"
        );
        sys::fsetxattr(dir, OsStr::new(xattr), &value, 0)
    }

    /// Puts the temporary `tmp` (built in the work dir) at `name` in the
    /// upper directory `dir`, replacing a whiteout there if there is one.
    /// Returns true when it replaced a whiteout (a new dir then must have
    /// been made opaque by the caller, before this call).
    pub fn place(&self, tmp: &OsStr, dir: &LayerDir, name: &OsStr, is_dir: bool) -> Result<bool> {
        let slot = dir.upper_slot(name)?;
        if slot.object {
            self.work.remove(tmp);
            return Err(crate::error::Error::errno(libc::EEXIST));
        }
        self.place_in(tmp, dir, name, is_dir, slot)?;
        Ok(slot.is_whiteout())
    }

    /// As `place`, for a caller that has read `slot` itself, under the
    /// directory's names lock, and found no object there.
    pub fn place_in(
        &self,
        tmp: &OsStr,
        dir: &LayerDir,
        name: &OsStr,
        is_dir: bool,
        slot: whiteout::UpperSlot,
    ) -> Result<()> {
        if slot.whiteout_at_name {
            self.create_over_whiteout(tmp, dir.fd(), name, is_dir)?;
        } else {
            debug!("create_upper {}", show(name));
            sys::renameat2(self.work.tmp(), tmp, dir.fd(), name, libc::RENAME_NOREPLACE)?;
        }
        if slot.oci_whiteout {
            // The new object already wins over `.wh.NAME` in the same layer,
            // so removing the marker now opens no window onto the lowers.
            sys::unlinkat(dir.fd(), &whiteout::oci_whiteout_name(name), 0)?;
        }
        Ok(())
    }

    fn create_over_whiteout(
        &self,
        tmp: &OsStr,
        dir: BorrowedFd,
        name: &OsStr,
        is_dir: bool,
    ) -> Result<()> {
        debug!("create_over_whiteout {}", show(name));
        if is_dir {
            // rename(2) will not put a directory over a file: swap the two,
            // then drop the whiteout, now in the work dir.
            sys::renameat2(self.work.tmp(), tmp, dir, name, libc::RENAME_EXCHANGE)?;
            self.work.remove(tmp);
        } else {
            sys::renameat2(self.work.tmp(), tmp, dir, name, 0)?;
        }
        Ok(())
    }

    /// Creates a whiteout at `name` (merged path `at`), where the upper
    /// holds nothing (the object is only in lowers).
    pub fn whiteout(&self, dir: &LayerDir, name: &OsStr, at: &dyn Display) -> Result<()> {
        info!(
            target: "unionfs",
            "whiteout {at}: deleted, and a lower has it ({})",
            self.format.whiteout_words()
        );
        whiteout::write_whiteout(self.format, dir.fd(), name)
    }

    /// Removes the upper object at `name`, leaving a whiteout if a lower
    /// still has the name. A directory is moved to the work dir first and
    /// emptied there, so it vanishes at once.
    pub fn remove(
        &self,
        dir: &LayerDir,
        name: &OsStr,
        is_dir: bool,
        leave: Leave,
        at: &dyn Display,
    ) -> Result<()> {
        match leave {
            Leave::Nothing => self.remove_upper(dir.fd(), name, is_dir, at),
            Leave::Whiteout => self.remove_and_whiteout(dir.fd(), name, at),
        }
    }

    fn remove_upper(
        &self,
        dir: BorrowedFd,
        name: &OsStr,
        is_dir: bool,
        at: &dyn Display,
    ) -> Result<()> {
        debug!("remove_upper {at}");
        if !is_dir {
            return sys::unlinkat(dir, name, 0);
        }
        let tmp = self.work.temp_name();
        sys::renameat2(dir, name, self.work.tmp(), &tmp, 0)?;
        self.work.remove(&tmp);
        Ok(())
    }

    fn remove_and_whiteout(&self, dir: BorrowedFd, name: &OsStr, at: &dyn Display) -> Result<()> {
        info!(
            target: "unionfs",
            "whiteout {at}: its upper copy deleted, and a lower has it too ({})",
            self.format.whiteout_words()
        );
        let tmp = self.work.temp_name();
        match self.format {
            UpperFormat::Oci => {
                // `.wh.NAME` first: while NAME is still there it wins, and
                // once it is gone the marker hides the lowers.
                whiteout::write_oci_whiteout(dir, name)?;
                sys::renameat2(dir, name, self.work.tmp(), &tmp, 0)?;
            }
            UpperFormat::Overlay { .. } => {
                // One step where the filesystem can: move the object out and
                // leave a whiteout in its place.
                match sys::renameat2(dir, name, self.work.tmp(), &tmp, libc::RENAME_WHITEOUT) {
                    Ok(()) => {}
                    Err(e) if e.is(libc::EINVAL) || e.is(libc::EPERM) => {
                        // Else build the whiteout aside and swap it in.
                        sys::mknodat(self.work.tmp(), &tmp, libc::S_IFCHR, 0)?;
                        sys::renameat2(self.work.tmp(), &tmp, dir, name, libc::RENAME_EXCHANGE)?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.work.remove(&tmp);
        Ok(())
    }

    /// Renames `sname` in `sdir` to `dname` in `ddir`, both in the upper,
    /// swapping the two when `exchange`, else replacing what stands at
    /// `dname` (an object or a whiteout) and leaving at `sname` what `leave`
    /// says. `from` and `to` are the merged paths, for the log.
    #[allow(clippy::too_many_arguments)]
    pub fn rename(
        &self,
        sdir: &LayerDir,
        sname: &OsStr,
        ddir: &LayerDir,
        dname: &OsStr,
        exchange: bool,
        leave: Leave,
        (from, to): (&dyn Display, &dyn Display),
    ) -> Result<()> {
        let (s, d) = (sdir.fd(), ddir.fd());
        if exchange {
            debug!("exchange_upper {from} <-> {to}");
            return sys::renameat2(s, sname, d, dname, libc::RENAME_EXCHANGE);
        }
        if leave == Leave::Whiteout {
            info!(target: "unionfs", "rename {from} -> {to}");
            info!(
                target: "unionfs",
                "whiteout {from}: left at the old name, as a lower has it ({})",
                self.format.whiteout_words()
            );
        }
        let src_is_dir = sys::statat(s, sname)?.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let slot = ddir.upper_slot(dname)?;
        if slot.object && src_is_dir {
            return self.rename_over_dir(s, sname, d, dname, leave);
        }
        debug!(
            "rename_upper {} -> {} (leave {:?}, {:?})",
            show(sname),
            show(dname),
            leave,
            self.format
        );
        if src_is_dir && slot.whiteout_at_name {
            // A directory cannot replace a whiteout file: swap them, which
            // leaves the whiteout at the old name, as `leave` may want.
            sys::renameat2(s, sname, d, dname, libc::RENAME_EXCHANGE)?;
            match (leave, self.format) {
                (Leave::Whiteout, UpperFormat::Overlay { .. }) => {}
                (Leave::Whiteout, UpperFormat::Oci) => {
                    whiteout::write_oci_whiteout(s, sname)?;
                    sys::unlinkat(s, sname, 0)?;
                }
                (Leave::Nothing, _) => sys::unlinkat(s, sname, 0)?,
            }
        } else {
            match (leave, self.format) {
                (Leave::Nothing, _) => sys::renameat2(s, sname, d, dname, 0)?,
                (Leave::Whiteout, UpperFormat::Oci) => {
                    whiteout::write_oci_whiteout(s, sname)?;
                    sys::renameat2(s, sname, d, dname, 0)?;
                }
                (Leave::Whiteout, UpperFormat::Overlay { .. }) => {
                    match sys::renameat2(s, sname, d, dname, libc::RENAME_WHITEOUT) {
                        Ok(()) => {}
                        Err(e) if e.is(libc::EINVAL) || e.is(libc::EPERM) => {
                            self.rename_then_whiteout(s, sname, d, dname, src_is_dir)?
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if slot.oci_whiteout {
            sys::unlinkat(d, &whiteout::oci_whiteout_name(dname), 0)?;
        }
        Ok(())
    }

    /// A directory renamed over an (empty in the merged view) upper
    /// directory, which may still hold whiteouts that rename(2) refuses:
    /// swap the two, then take the old target away from the old name.
    /// Whatever needs space is made before anything moves, and the old
    /// target is made opaque first, so a failure or crash midway never shows
    /// a lower's entries again.
    fn rename_over_dir(
        &self,
        s: BorrowedFd,
        sname: &OsStr,
        d: BorrowedFd,
        dname: &OsStr,
        leave: Leave,
    ) -> Result<()> {
        debug!("rename_over_dir {} -> {}", show(sname), show(dname));
        let wh = match (leave, self.format) {
            (Leave::Whiteout, UpperFormat::Overlay { .. }) => {
                let t = self.work.temp_name();
                sys::mknodat(self.work.tmp(), &t, libc::S_IFCHR, 0)?;
                Some(t)
            }
            (Leave::Whiteout, UpperFormat::Oci) => {
                whiteout::write_oci_whiteout(s, sname)?;
                None
            }
            (Leave::Nothing, _) => None,
        };
        let prepared = sys::openat(d, dname, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .and_then(|old| {
                let why = "replaced by a rename: hides nothing while it is removed";
                self.make_opaque(old.as_fd(), &show(dname), why)
            })
            .and_then(|()| sys::renameat2(s, sname, d, dname, libc::RENAME_EXCHANGE));
        if let Err(e) = prepared {
            if let Some(t) = &wh {
                self.work.remove(t);
            }
            return Err(e);
        }
        let out = self.work.temp_name();
        match wh {
            Some(t) => {
                sys::renameat2(self.work.tmp(), &t, s, sname, libc::RENAME_EXCHANGE)?;
                self.work.remove(&t);
            }
            None => {
                sys::renameat2(s, sname, self.work.tmp(), &out, 0)?;
                self.work.remove(&out);
            }
        }
        Ok(())
    }

    /// Where RENAME_WHITEOUT is not supported. A file gets a second name in
    /// the work dir first, so its old name can be swapped for a whiteout in
    /// one rename before it appears at the new one.
    fn rename_then_whiteout(
        &self,
        s: BorrowedFd,
        sname: &OsStr,
        d: BorrowedFd,
        dname: &OsStr,
        is_dir: bool,
    ) -> Result<()> {
        let wh = self.work.temp_name();
        sys::mknodat(self.work.tmp(), &wh, libc::S_IFCHR, 0)?;
        if is_dir {
            sys::renameat2(s, sname, d, dname, 0)?;
            return sys::renameat2(self.work.tmp(), &wh, s, sname, libc::RENAME_NOREPLACE);
        }
        let link = self.work.temp_name();
        sys::linkat(s, sname, self.work.tmp(), &link)?;
        sys::renameat2(self.work.tmp(), &wh, s, sname, 0)?;
        sys::renameat2(self.work.tmp(), &link, d, dname, 0)
    }

    /// Marks an upper directory opaque; `at` names it in the log, `why`
    /// says why in a few words.
    pub fn make_opaque(&self, dir: BorrowedFd, at: &dyn Display, why: &str) -> Result<()> {
        info!(
            target: "unionfs",
            "opaque {at}: {why} ({})",
            self.format.opaque_words()
        );
        whiteout::write_opaque(self.format, dir)
    }

    /// Drops the whiteouts below the opaque upper directory `name` in
    /// `parent` (merged path `at`): they hide nothing any more, and kernel
    /// overlayfs would list them in a directory that does not merge.
    pub fn drop_stray_whiteouts(
        &self,
        parent: BorrowedFd,
        name: &OsStr,
        at: &dyn Display,
    ) -> Result<()> {
        let dir = sys::openat(parent, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        let marks = whiteout::dir_marks(dir.as_fd())?.0;
        drop_whiteouts_below(dir.as_fd(), marks, &at.to_string())
    }
}

/// Removes every whiteout in `dir` (merged path `at`, markers `marks`) and the
/// directories below it (under an opaque directory nothing merges, so they
/// hide nothing), keeping each directory's times. A directory with a
/// redirect is left whole: it was moved in from a lower and still merges
/// with it, as a redirect from the layer root holds below an opaque
/// directory too (kernel overlayfs), so its whiteouts still hide entries.
fn drop_whiteouts_below(dir: BorrowedFd, marks: whiteout::DirMarks, at: &str) -> Result<()> {
    keep_times(dir, || {
        for e in sys::read_dir_all(dir)? {
            if e.d_type == libc::DT_DIR {
                let sub = sys::openat(dir, &e.name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                let (sub_marks, redirect) = whiteout::dir_marks(sub.as_fd())?;
                if redirect.is_none() {
                    let sub_at = format!("{at}/{}", crate::model::layer::show_name(&e.name));
                    drop_whiteouts_below(sub.as_fd(), sub_marks, &sub_at)?;
                }
                continue;
            }
            let oci = whiteout::oci_whited_out_name(&e.name).is_some();
            let other = matches!(e.d_type, libc::DT_CHR | libc::DT_REG | libc::DT_UNKNOWN)
                && match sys::statat(dir, &e.name) {
                    Ok(st) => whiteout::is_whiteout(dir, marks, &e.name, &st)?,
                    Err(_) => false,
                };
            if oci || other {
                info!(
                    target: "unionfs",
                    "whiteout {at}/{} dropped: below an opaque directory it hides nothing",
                    crate::model::layer::show_name(&e.name)
                );
                sys::unlinkat(dir, &e.name, 0)?;
            }
        }
        Ok(())
    })
}

/// Runs `f`, which fills or changes the upper directory `dir` without
/// changing what the merged view shows, and puts the directory's times back
/// as they were, as kernel overlayfs does: a copy-up is not a change a user
/// made.
pub fn keep_times<T>(dir: BorrowedFd, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let before = sys::fstat(dir)?;
    let out = f()?;
    if let Err(e) = sys::futimens(
        dir,
        SetTime::At(before.st_atime, before.st_atime_nsec),
        SetTime::At(before.st_mtime, before.st_mtime_nsec),
    ) {
        debug!("cannot restore directory times: {e}");
    }
    Ok(out)
}
