//! `unionfs check [--repair]`: the fsck of an unmounted union (as
//! `fsck.overlay` of overlayfs-progs). It reads every layer, the merged view
//! (with the rules of [`super::offline`], hence of [`crate::model::whiteout`]) and the
//! work dir, prints one line per problem, and with `--repair` fixes what
//! cannot change the merged view: orphan whiteouts and ignored markers in
//! the upper, leftovers in `WORK/tmp` (a `.place` link undone as the next
//! mount would), a lock file no mount can take. Lowers are only read.
//!
//! It holds the mount's two locks (`WORK/unionfs.lock` and the upper root)
//! while it runs, so no mount starts under it, and refuses a union a live
//! mount holds.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::dir_cache::LayerDir;
use crate::model::layer::{join_path, LayerId, INDEX, UPPER};
use crate::model::node::NodeTable;
use crate::model::whiteout::{self, DirMarks, EntryRole};
use crate::sys::{self, Stat};

use super::offline::{label, show_name, show_path, MergedEntry, Union};
use super::{LayerArgs, ToolError};

/// The work dir's lock file (`workdir.rs`).
const LOCK: &str = "unionfs.lock";
/// The suffix of a link of an index entry on its way to a name (`workdir.rs`).
const PLACING: &[u8] = b".place";

/// One problem, and how `--repair` fixes it when that cannot change what
/// the union shows.
struct Problem {
    /// Where: "upper /a/b", "lower 2 /c", "work tmp/NAME".
    at: String,
    /// What is wrong there.
    what: String,
    fix: Option<Fix>,
}

enum Fix {
    /// Unlink `name` in the upper directory `dir`: a whiteout that hides
    /// nothing.
    Unlink { dir: Arc<dyn AsFd>, name: OsString },
    /// Remove the xattr `xattr` of `name` in the upper directory `dir`: a
    /// marker the readers ignore where it stands.
    RemoveXattr {
        dir: Arc<dyn AsFd>,
        name: OsString,
        xattr: OsString,
    },
    /// Remove the leftover `name` of `WORK/tmp`, after putting back the
    /// count of its index entry when it is a `.place` link.
    Temp { name: OsString, placing: bool },
    /// Remove `WORK/unionfs.lock`, which is no lock file.
    Lock { is_dir: bool },
}

/// The work dir, open.
struct Work {
    root: OwnedFd,
    tmp: Option<OwnedFd>,
    index: Option<OwnedFd>,
}

/// What `check` found.
struct Checker<'a> {
    union: &'a Union,
    problems: Vec<Problem>,
    /// Upper inode -> names the upper has of it (non-directories with
    /// several links only: the other names of an index entry).
    upper_links: HashMap<u64, u64>,
    /// Index entry name -> names of the merged view it serves.
    served: HashMap<OsString, u64>,
}

/// Runs the check; returns the exit status (0 no problem, 1 problems left).
/// An error means the union could not be checked (exit status 2).
pub fn run(
    layers: &LayerArgs,
    repair: bool,
    out: &mut dyn Write,
) -> std::result::Result<u8, ToolError> {
    let upper = layers
        .upper
        .as_deref()
        .ok_or_else(|| ToolError("check needs an upper (-u UPPER)".into()))?;
    let work = match &layers.work {
        Some(w) => Some(open_work(w)?),
        None => None,
    };
    let mut problems = Vec::new();
    // Held until the end: a mount started meanwhile waits, then fails.
    let _locks = take_locks(upper, work.as_ref(), &mut problems)?;
    let union = layers.open()?;
    let mut c = Checker {
        union: &union,
        problems,
        upper_links: HashMap::new(),
        served: HashMap::new(),
    };
    for &id in union.ids() {
        c.layer(id)?;
    }
    c.merged(&union.root()?)?;
    if let Some(w) = &work {
        c.work(w)?;
    }
    report(c.problems, work.as_ref(), repair, out)
}

/// Prints the problems and, with `repair`, fixes what it safely can.
fn report(
    problems: Vec<Problem>,
    work: Option<&Work>,
    repair: bool,
    out: &mut dyn Write,
) -> std::result::Result<u8, ToolError> {
    for p in &problems {
        writeln!(out, "{}: {}", p.at, p.what)?;
    }
    let fixable = problems.iter().filter(|p| p.fix.is_some()).count();
    if problems.is_empty() {
        writeln!(out, "no problem found")?;
        return Ok(0);
    }
    if !repair {
        writeln!(
            out,
            "{} problem(s) found; --repair can fix {fixable} of them",
            problems.len()
        )?;
        return Ok(1);
    }
    let mut fixed = 0;
    for p in &problems {
        let Some(fix) = &p.fix else { continue };
        let at = &p.at;
        match apply(fix, work) {
            Ok(what) => {
                fixed += 1;
                writeln!(out, "repaired: {at}: {what}")?;
            }
            Err(e) => writeln!(out, "not repaired: {at}: {e}")?,
        }
    }
    let left = problems.len() - fixed;
    writeln!(
        out,
        "{} problem(s) found, {fixed} repaired, {left} left",
        problems.len()
    )?;
    Ok(u8::from(left > 0))
}

/// Does one fix; returns what it did, for the user.
fn apply(fix: &Fix, work: Option<&Work>) -> Result<String> {
    match fix {
        Fix::Unlink { dir, name } => {
            crate::union::upper::keep_times(dir.as_fd(), || sys::unlinkat(dir.as_fd(), name, 0))?;
            Ok("removed the orphan whiteout".into())
        }
        Fix::RemoveXattr { dir, name, xattr } => {
            let fd = sys::openat(dir.as_fd(), name, libc::O_PATH, 0)?;
            sys::fremovexattr(fd.as_fd(), xattr)?;
            Ok(format!("removed the ignored xattr {}", show_name(xattr)))
        }
        Fix::Temp { name, placing } => {
            let tmp = work
                .and_then(|w| w.tmp.as_ref())
                .ok_or_else(|| Error::errno(libc::ENOENT))?;
            if *placing {
                crate::union::index::undo_placing(tmp.as_fd(), name)?;
            }
            crate::union::workdir::remove_tree(tmp.as_fd(), name)?;
            Ok(if *placing {
                "put back the index entry's count from before and removed the link".into()
            } else {
                "removed".into()
            })
        }
        Fix::Lock { is_dir } => {
            let root = work.ok_or_else(|| Error::errno(libc::ENOENT))?;
            let flags = if *is_dir { libc::AT_REMOVEDIR } else { 0 };
            sys::unlinkat(root.root.as_fd(), OsStr::new(LOCK), flags)?;
            Ok("removed (the next mount makes a new one)".into())
        }
    }
}

fn open_work(path: &Path) -> Result<Work> {
    let root = sys::open_dir_path(path)?;
    let sub = |name: &str| match sys::openat(
        root.as_fd(),
        OsStr::new(name),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.is(libc::ENOENT) => Ok(None),
        Err(e) => Err(e.context(format!("{}/{name}", path.display()))),
    };
    let tmp = sub("tmp")?;
    let index = sub("index")?;
    Ok(Work { root, tmp, index })
}

/// Takes the locks a mount takes (the work dir's lock file and the upper
/// root), without waiting: a lock held means a live mount (flocks go with
/// the process holding them, so a lock is never stale; the file itself
/// stays between mounts on purpose). A lock file that no mount can take is
/// a problem.
fn take_locks(
    upper: &Path,
    work: Option<&Work>,
    problems: &mut Vec<Problem>,
) -> std::result::Result<Vec<OwnedFd>, ToolError> {
    let busy = |st: &Stat, what: String| {
        let holder = lock_holder(st)
            .map(|pid| format!(" by process {pid}"))
            .unwrap_or_default();
        ToolError(format!(
            "upper {} is in use by a live mount ({what} is locked{holder}); unmount it first",
            upper.display()
        ))
    };
    let mut held = Vec::new();
    if let Some(w) = work {
        match sys::statat(w.root.as_fd(), OsStr::new(LOCK)) {
            Err(e) if e.is(libc::ENOENT) => {}
            Err(e) => return Err(e.into()),
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
                let fd = sys::openat(w.root.as_fd(), OsStr::new(LOCK), libc::O_RDONLY, 0)?;
                match sys::flock(fd.as_fd(), libc::LOCK_EX | libc::LOCK_NB) {
                    Err(e) if e.is(libc::EWOULDBLOCK) => {
                        return Err(busy(&st, format!("work {LOCK}")))
                    }
                    r => r?,
                }
                held.push(fd);
            }
            Ok(st) => {
                // Never opened: a FIFO would block the open.
                let kind = st.st_mode & libc::S_IFMT;
                problems.push(Problem {
                    at: format!("work {LOCK}"),
                    what: format!(
                        "a {}, not a lock file: no mount can take the lock",
                        kind_name(kind)
                    ),
                    fix: Some(Fix::Lock {
                        is_dir: kind == libc::S_IFDIR,
                    }),
                });
            }
        }
    }
    let root = sys::open_dir_path(upper)?;
    let st = sys::fstat(root.as_fd())?;
    match sys::flock(root.as_fd(), libc::LOCK_EX | libc::LOCK_NB) {
        Err(e) if e.is(libc::EWOULDBLOCK) => return Err(busy(&st, "its root".into())),
        r => r?,
    }
    held.push(root);
    Ok(held)
}

/// The process holding an flock on the file `st`, from /proc/locks
/// (`1: FLOCK ADVISORY WRITE PID MAJ:MIN:INO 0 EOF`, numbers of the device
/// in hex). Only for the message.
fn lock_holder(st: &Stat) -> Option<u32> {
    let dev = st.st_dev;
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    let want = format!("{major:02x}:{minor:02x}:{}", st.st_ino);
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Waiters are listed as "N: -> FLOCK ...": not holders.
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str()))
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })
}

/// A file type for messages.
/// What a marker that should be an empty file is instead: a "non-empty
/// file", a "directory", ...
fn not_empty_file(kind: u32) -> String {
    let non_empty = if kind == libc::S_IFREG {
        "non-empty "
    } else {
        ""
    };
    format!("{non_empty}{}", kind_name(kind))
}

fn kind_name(kind: u32) -> &'static str {
    match kind {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symlink",
        libc::S_IFIFO => "FIFO",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        _ => "file of unknown type",
    }
}

/// The entries of an open directory that still exist, sorted by name,
/// each with its lstat.
fn entries(dir: BorrowedFd) -> Result<Vec<(OsString, Stat)>> {
    let mut out = Vec::new();
    for e in sys::read_dir_all(dir)? {
        match sys::statat(dir, &e.name) {
            Ok(st) => out.push((e.name, st)),
            // Gone since the listing: layers are not meant to change.
            Err(err) if err.is(libc::ENOENT) => {}
            Err(err) => return Err(err),
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

fn open_dir(dir: BorrowedFd, name: &OsStr) -> Result<OwnedFd> {
    sys::openat(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

/// Xattrs of the markers every layer is read for (`whiteout.rs`).
fn is_marker_xattr(name: &OsStr) -> bool {
    whiteout::OPAQUE_XATTRS
        .iter()
        .chain(&whiteout::REDIRECT_XATTRS)
        .chain(&whiteout::WHITEOUT_XATTRS)
        .chain(&whiteout::WHITEOUTS_DIR_XATTRS)
        .any(|x| name == *x)
}

fn one_of(name: &OsStr, set: &[&str]) -> bool {
    set.iter().any(|x| name == *x)
}

impl Checker<'_> {
    fn problem(&mut self, at: &str, what: String, fix: Option<Fix>) {
        self.problems.push(Problem {
            at: at.to_owned(),
            what,
            fix,
        });
    }

    /// Every object of one layer, as it lies on disk (hidden parts too):
    /// markers where the readers ignore them, private xattrs on lowers.
    fn layer(&mut self, id: LayerId) -> Result<()> {
        let root = open_dir(self.union.stack.get(id)?.root(), OsStr::new("."))?;
        let root = Arc::new(root);
        let names = list_xattrs(root.as_fd(), None)?;
        self.xattrs(id, &root, OsStr::new("."), "", libc::S_IFDIR, None, &names);
        self.layer_dir(id, &root, OsStr::new(""))
    }

    fn layer_dir(&mut self, id: LayerId, dir: &Arc<OwnedFd>, path: &OsStr) -> Result<()> {
        let marks = whiteout::dir_marks(dir.as_fd())?.0;
        for (name, st) in entries(dir.as_fd())? {
            let rel = join_path(path, &name);
            let at = format!("{} {}", label(id), show_path(&rel));
            let kind = st.st_mode & libc::S_IFMT;
            let empty_file = kind == libc::S_IFREG && st.st_size == 0;
            if name == whiteout::OCI_OPAQUE && !empty_file {
                let what = not_empty_file(kind);
                self.problem(
                    &at,
                    format!(
                        "the OCI opaque marker is a {what}, not an empty file \
                         (its directory is opaque all the same)"
                    ),
                    None,
                );
            } else if whiteout::oci_whited_out_name(&name).is_some() && !empty_file {
                let what = not_empty_file(kind);
                self.problem(
                    &at,
                    format!(
                        "an OCI whiteout that is a {what}, not an empty file \
                         (read as a whiteout all the same)"
                    ),
                    None,
                );
            }
            if id == UPPER && kind != libc::S_IFDIR && st.st_nlink > 1 {
                *self.upper_links.entry(st.st_ino).or_default() += 1;
            }
            let xattrs = list_xattrs(dir.as_fd(), Some(&name))?;
            self.xattrs(id, dir, &name, &at, kind, Some(marks), &xattrs);
            if kind == libc::S_IFDIR {
                let sub = Arc::new(open_dir(dir.as_fd(), &name)?);
                self.layer_dir(id, &sub, &rel)?;
            }
        }
        Ok(())
    }

    /// The xattrs `names` of `name` (a `kind`) in the layer directory `dir`
    /// (whose marks are `parent`; `None` for the layer root).
    #[allow(clippy::too_many_arguments)]
    fn xattrs(
        &mut self,
        id: LayerId,
        dir: &Arc<OwnedFd>,
        name: &OsStr,
        at: &str,
        kind: u32,
        parent: Option<DirMarks>,
        names: &[OsString],
    ) {
        let at = if at.is_empty() {
            format!("{} /", label(id))
        } else {
            at.to_owned()
        };
        let is_dir = kind == libc::S_IFDIR;
        // A metacopy's redirect says where its bytes are: it counts.
        let metacopy =
            kind == libc::S_IFREG && names.iter().any(|n| one_of(n, &whiteout::METACOPY_XATTRS));
        for x in names {
            let shown = show_name(x);
            // Ignored where it stands: removing it from the upper changes
            // nothing the union shows.
            let ignored = (!is_dir
                && (one_of(x, &whiteout::OPAQUE_XATTRS)
                    || (one_of(x, &whiteout::REDIRECT_XATTRS) && !metacopy)
                    || one_of(x, &whiteout::WHITEOUTS_DIR_XATTRS)))
                || (one_of(x, &whiteout::WHITEOUT_XATTRS) && kind != libc::S_IFREG);
            if ignored {
                let what = if one_of(x, &whiteout::OPAQUE_XATTRS) {
                    "opaque marker"
                } else if one_of(x, &whiteout::WHITEOUT_XATTRS) {
                    "whiteout marker"
                } else if one_of(x, &whiteout::REDIRECT_XATTRS) {
                    "redirect"
                } else {
                    "xattr-whiteouts marker"
                };
                let fix = (id == UPPER).then(|| Fix::RemoveXattr {
                    dir: dir.clone(),
                    name: name.to_os_string(),
                    xattr: x.clone(),
                });
                let lower = if id == UPPER {
                    ""
                } else {
                    " (in a lower: reported only)"
                };
                self.problem(
                    &at,
                    format!(
                        "{what} {shown} on a {} (ignored there){lower}",
                        kind_name(kind)
                    ),
                    fix,
                );
                continue;
            }
            if one_of(x, &whiteout::WHITEOUT_XATTRS) && parent.is_some_and(|m| !m.xattr_whiteouts) {
                self.problem(
                    &at,
                    format!(
                        "{shown} on a file whose directory is not marked \
                         overlay.opaque=x: it shows as a file, not as a whiteout"
                    ),
                    None,
                );
                continue;
            }
            if id != UPPER
                && whiteout::is_private_xattr(x)
                && !is_marker_xattr(x)
                && !crate::model::override_stat::is_override_name(x.as_bytes())
                // read from a lower with forced permissions, as the override
                && !crate::model::override_stat::is_acl_name(x.as_bytes())
            {
                self.problem(
                    &at,
                    format!(
                        "private xattr {shown} on a lower: only an upper carries it \
                         (reported only)"
                    ),
                    None,
                );
            }
        }
    }

    /// The merged view from `dir` down: whiteouts that hide nothing,
    /// redirects that lead nowhere, and which index entry serves what.
    fn merged(&mut self, dir: &MergedEntry) -> Result<()> {
        for i in 0..dir.parts.len() {
            let Some(fd) = dir.parts[i].dir.clone() else {
                continue;
            };
            for (name, st) in entries(fd.as_fd())? {
                let role = whiteout::classify_entry(fd.as_fd(), dir.parts[i].marks, &name, &st)?;
                if let EntryRole::WhiteoutOf(hidden) = role {
                    self.whiteout(dir, i, &fd, &name, &hidden, &st)?;
                }
            }
        }
        for child in self.union.children(dir)? {
            if child.is_dir() {
                self.redirects(&child);
                self.merged(&child)?;
            } else if child.layer() == INDEX {
                *self.served.entry(child.top().path.clone()).or_default() += 1;
            }
        }
        Ok(())
    }

    /// The whiteout `name` (of `hidden`) in the part `i` of `dir`: an orphan
    /// when a lookup of `hidden` in the layers below it finds nothing.
    fn whiteout(
        &mut self,
        dir: &MergedEntry,
        i: usize,
        fd: &Arc<LayerDir>,
        name: &OsStr,
        hidden: &OsStr,
        st: &Stat,
    ) -> Result<()> {
        let part = &dir.parts[i];
        if name != hidden {
            // `.wh.NAME` beside a directory NAME makes that directory opaque
            // (it was deleted and made anew in this layer): not a whiteout.
            match sys::statat(fd.as_fd(), hidden) {
                Ok(h) if h.st_mode & libc::S_IFMT == libc::S_IFDIR => return Ok(()),
                Ok(_) => {}
                Err(e) if e.is(libc::ENOENT) || e.is(libc::ENAMETOOLONG) => {}
                Err(e) => return Err(e),
            }
        }
        let below = MergedEntry {
            path: dir.path.clone(),
            parts: dir.parts[i + 1..].to_vec(),
            data: None,
        };
        if !below.parts.is_empty() && self.union.lookup(&below, hidden, false)?.node.is_some() {
            return Ok(());
        }
        let how = if name != hidden {
            "OCI .wh. file"
        } else if whiteout::is_whiteout_stat(st) {
            "char device 0/0"
        } else {
            "overlay.whiteout xattr"
        };
        let why = if part.marks.opaque {
            "its directory is opaque, so nothing below merges".to_owned()
        } else if below.parts.is_empty() {
            "no lower directory merges with its directory".to_owned()
        } else {
            format!("no lower below shows '{}'", show_name(hidden))
        };
        let at = format!(
            "{} {}",
            label(part.layer),
            show_path(&join_path(&part.path, name))
        );
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let (fix, note) = if part.layer != UPPER {
            (None, " (in a lower: reported only)")
        } else if is_dir {
            (None, " (a directory: not removed)")
        } else {
            (
                Some(Fix::Unlink {
                    dir: fd.clone(),
                    name: name.to_os_string(),
                }),
                "",
            )
        };
        self.problem(&at, format!("orphan whiteout ({how}): {why}{note}"), fix);
        Ok(())
    }

    /// A redirect of one of the directories merging into `node` leads to
    /// no directory below it.
    fn redirects(&mut self, node: &MergedEntry) {
        for (i, part) in node.parts.iter().enumerate() {
            let Some(r) = &part.redirect else { continue };
            let at = format!("{} {}", label(part.layer), show_path(&part.path));
            let lower = if part.layer == UPPER {
                ""
            } else {
                " (in a lower)"
            };
            if part.marks.opaque {
                self.problem(
                    &at,
                    format!(
                        "redirect to '{}' is ignored: the directory is opaque{lower}",
                        show_name(r)
                    ),
                    None,
                );
            } else if i + 1 == node.parts.len() {
                self.problem(
                    &at,
                    format!(
                        "redirect to '{}' finds no directory in any lower below{lower}",
                        show_name(r)
                    ),
                    None,
                );
            }
        }
    }

    /// The work dir: leftovers in `tmp/`, then the index entries.
    fn work(&mut self, work: &Work) -> Result<()> {
        let index: Vec<(OsString, Stat)> = match &work.index {
            Some(fd) => entries(fd.as_fd())?,
            None => Vec::new(),
        };
        let entry_of = |ino: u64| {
            index
                .iter()
                .find(|(_, st)| st.st_ino == ino && st.st_mode & libc::S_IFMT != libc::S_IFDIR)
                .map(|(n, _)| show_name(n))
        };
        // Inode -> (links in tmp/, one of them a `.place` link).
        let mut in_tmp: HashMap<u64, (u64, bool)> = HashMap::new();
        if let Some(tmp) = &work.tmp {
            for (name, st) in entries(tmp.as_fd())? {
                let kind = st.st_mode & libc::S_IFMT;
                let placing = name.as_bytes().ends_with(PLACING);
                if kind != libc::S_IFDIR {
                    let e = in_tmp.entry(st.st_ino).or_default();
                    e.0 += 1;
                    e.1 |= placing;
                }
                let at = format!("work tmp/{}", show_name(&name));
                let line = match entry_of(st.st_ino) {
                    Some(key) if placing => format!(
                        "leftover .place link of index entry {key} \
                         (a crash while a name became its link)"
                    ),
                    _ => format!("leftover temporary ({})", kind_name(kind)),
                };
                let fix = Fix::Temp { name, placing };
                self.problem(&at, line, Some(fix));
            }
        }
        if let Some(fd) = &work.index {
            for (name, st) in &index {
                self.index_entry(fd.as_fd(), name, st, &in_tmp)?;
            }
        }
        Ok(())
    }

    /// One index entry: its counts against the names the union shows of
    /// it, its name against its origin. Values are taken as the next mount
    /// will see them, once it has removed what `tmp/` holds.
    fn index_entry(
        &mut self,
        dir: BorrowedFd,
        name: &OsStr,
        st: &Stat,
        in_tmp: &HashMap<u64, (u64, bool)>,
    ) -> Result<()> {
        let at = format!("work index/{}", show_name(name));
        let key = std::str::from_utf8(name.as_bytes())
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok());
        let Some(key) = key else {
            self.problem(
                &at,
                "not an index entry (its name is not an inode number)".into(),
                None,
            );
            return Ok(());
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            self.problem(&at, "a directory, not a link of an upper copy".into(), None);
            return Ok(());
        }
        let stored = crate::union::index::stored(dir, name, crate::union::index::LOWER_LINKS)?;
        let Some((now, old)) = stored.as_deref().and_then(crate::union::index::counts) else {
            let what = match &stored {
                Some(v) => format!(
                    "an unreadable lower_links '{}'",
                    show_name(OsStr::from_bytes(v))
                ),
                None => "no lower_links count".to_owned(),
            };
            self.problem(&at, what, None);
            return Ok(());
        };
        let (tmp_links, placing) = in_tmp.get(&st.st_ino).copied().unwrap_or_default();
        // A `.place` link never reached its name: the count from before holds.
        let lower = if placing { old.unwrap_or(now) } else { now };
        let served = self.served.get(name).copied().unwrap_or(0);
        if lower != served {
            self.problem(
                &at,
                format!(
                    "lower_links says {lower} lower name(s) still show, \
                     the union shows {served}"
                ),
                None,
            );
        }
        let links = st.st_nlink.saturating_sub(tmp_links);
        let upper = self.upper_links.get(&st.st_ino).copied().unwrap_or(0);
        if links != upper + 1 {
            self.problem(
                &at,
                format!(
                    "has {links} link(s), but the upper has {upper} name(s) of it \
                     (expected {} with the entry)",
                    upper + 1
                ),
                None,
            );
        }
        let origin = crate::union::index::stored(dir, name, crate::model::node::ORIGIN)?;
        match origin.as_deref().map(|v| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
        }) {
            Some(Some(o)) if o == key => {}
            Some(Some(o)) => self.problem(
                &at,
                format!("its origin xattr says {o}, but it is named {key}"),
                None,
            ),
            Some(None) => self.problem(&at, "an unreadable origin xattr".into(), None),
            // No origin: an object made in the upper, named by its own number.
            None if st.st_ino >> 48 == 0 => {
                let numbers = NodeTable::new(&self.union.stack, "user.unionfs.");
                let own = numbers.ino_for(self.union.stack.get(UPPER)?, st.st_ino);
                if own != key {
                    self.problem(
                        &at,
                        format!(
                            "no origin xattr, and it is not named by its own \
                             inode number ({own})"
                        ),
                        None,
                    );
                }
            }
            None => {}
        }
        Ok(())
    }
}

/// The xattr names of `name` in `dir` (of `dir` itself for `None`); none
/// where the filesystem keeps none.
fn list_xattrs(dir: BorrowedFd, name: Option<&OsStr>) -> Result<Vec<OsString>> {
    let r = match name {
        Some(n) => sys::listxattrat(dir, n),
        None => sys::flistxattr(dir),
    };
    match r {
        Ok(mut v) => {
            v.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            Ok(v)
        }
        Err(e) if whiteout::is_xattr_unsupported(e.raw()) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}
