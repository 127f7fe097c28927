//! Every change to the upper layer goes through these few helpers, and each
//! logs what it does, so `RUST_LOG=debug` narrates copy-on-write. Each
//! change is built in the work dir and put in place with one rename, so a
//! reader (or a crash) sees either the old state or the new one.
//!
//! The cases are named as in kernel overlayfs: `create_upper` vs
//! `create_over_whiteout`, `remove_upper` vs `remove_and_whiteout`.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;

use log::debug;

use crate::error::Result;
use crate::node::LayerDir;
use crate::sys;
use crate::whiteout::{self, UpperFormat};
use crate::workdir::WorkDir;

/// The writable side of a mount: work dir plus the format to write.
#[derive(Debug)]
pub struct Upper {
    pub work: WorkDir,
    pub format: UpperFormat,
}

/// What a removal must leave behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// Nothing below has the name: just remove it.
    Nothing,
    /// A lower still has the name: leave a whiteout.
    Whiteout,
}

fn show(name: &OsStr) -> std::borrow::Cow<'_, str> {
    name.to_string_lossy()
}

impl Upper {
    /// Puts the temporary `tmp` (built in the work dir) at `name` in the
    /// upper directory `dir`, replacing a whiteout there if there is one.
    /// Returns true when it replaced a whiteout (a new dir then must have
    /// been made opaque by the caller, before this call).
    pub fn place(&self, tmp: &OsStr, dir: &LayerDir, name: &OsStr, is_dir: bool) -> Result<bool> {
        let slot = whiteout::upper_slot(dir.fd(), dir.marks, name)?;
        if slot.object {
            self.work.remove(tmp);
            return Err(crate::error::Error::errno(libc::EEXIST));
        }
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
        Ok(slot.is_whiteout())
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

    /// Creates a whiteout at `name`, where the upper holds nothing (the
    /// object is only in lowers).
    pub fn whiteout(&self, dir: &LayerDir, name: &OsStr) -> Result<()> {
        debug!("whiteout {} ({:?})", show(name), self.format);
        whiteout::write_whiteout(self.format, dir.fd(), name)
    }

    /// Removes the upper object at `name`, leaving a whiteout if a lower
    /// still has the name. A directory is moved to the work dir first and
    /// emptied there, so it vanishes at once.
    pub fn remove(&self, dir: &LayerDir, name: &OsStr, is_dir: bool, leave: Leave) -> Result<()> {
        match leave {
            Leave::Nothing => self.remove_upper(dir.fd(), name, is_dir),
            Leave::Whiteout => self.remove_and_whiteout(dir.fd(), name),
        }
    }

    fn remove_upper(&self, dir: BorrowedFd, name: &OsStr, is_dir: bool) -> Result<()> {
        debug!("remove_upper {}", show(name));
        if !is_dir {
            return sys::unlinkat(dir, name, 0);
        }
        let tmp = self.work.temp_name();
        sys::renameat2(dir, name, self.work.tmp(), &tmp, 0)?;
        self.work.remove(&tmp);
        Ok(())
    }

    fn remove_and_whiteout(&self, dir: BorrowedFd, name: &OsStr) -> Result<()> {
        debug!("remove_and_whiteout {} ({:?})", show(name), self.format);
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
    /// says.
    pub fn rename(
        &self,
        sdir: &LayerDir,
        sname: &OsStr,
        ddir: &LayerDir,
        dname: &OsStr,
        exchange: bool,
        leave: Leave,
    ) -> Result<()> {
        let (s, d) = (sdir.fd(), ddir.fd());
        if exchange {
            debug!("exchange_upper {} <-> {}", show(sname), show(dname));
            return sys::renameat2(s, sname, d, dname, libc::RENAME_EXCHANGE);
        }
        let src_is_dir = sys::statat(s, sname)?.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let slot = whiteout::upper_slot(d, ddir.marks, dname)?;
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
            .and_then(|old| self.make_opaque(std::os::fd::AsFd::as_fd(&old)))
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

    /// Marks an upper directory opaque.
    pub fn make_opaque(&self, dir: BorrowedFd) -> Result<()> {
        debug!("make_opaque ({:?})", self.format);
        whiteout::write_opaque(self.format, dir)
    }

    /// Drops the whiteouts below the opaque upper directory at `path`: they
    /// hide nothing any more, and kernel overlayfs would list them in a
    /// directory that does not merge.
    pub fn drop_stray_whiteouts(&self, layer: &crate::layer::Layer, path: &OsStr) -> Result<()> {
        let dir = layer.open(path, libc::O_RDONLY | libc::O_DIRECTORY)?;
        drop_whiteouts_below(std::os::fd::AsFd::as_fd(&dir))
    }
}

/// Removes every whiteout in `dir` and the directories below it (under an
/// opaque directory nothing merges, so they hide nothing), keeping each
/// directory's times.
fn drop_whiteouts_below(dir: BorrowedFd) -> Result<()> {
    crate::copy_up::keep_times(dir, || {
        for e in sys::read_dir_all(dir)? {
            if e.d_type == libc::DT_DIR {
                let sub = sys::openat(dir, &e.name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                drop_whiteouts_below(std::os::fd::AsFd::as_fd(&sub))?;
                continue;
            }
            let oci = whiteout::oci_whited_out_name(&e.name).is_some();
            let dev = e.d_type == libc::DT_CHR
                && sys::statat(dir, &e.name).is_ok_and(|st| whiteout::is_whiteout_stat(&st));
            if oci || dev {
                debug!("drop_whiteout {} (under an opaque dir)", show(&e.name));
                sys::unlinkat(dir, &e.name, 0)?;
            }
        }
        Ok(())
    })
}
