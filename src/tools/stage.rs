//! Writing a new directory tree (for `apply` and `squash`) so that a failure
//! leaves nothing behind: everything is built in a hidden sibling of the
//! destination, renamed onto it at the end, and removed on any error.
//! Inside it, every object is made with `*at` calls relative to held fds
//! that never follow a symlink, so an archive cannot write outside it.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::offline::show_path;
use super::ToolError;
use crate::model::layer::{join_path, split_path};
use crate::model::whiteout;
use crate::sys::{self, SetTime};

/// Owner, permissions, times and xattrs to give an object.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// Permission bits (`& 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

/// A directory being built; see the module doc.
pub struct Stage {
    /// For messages.
    dest: OsString,
    parent: OwnedFd,
    name: OsString,
    tmp: OsString,
    root: OwnedFd,
    /// Directories whose metadata is set last, deepest first, so that
    /// read-only modes and mtimes survive the writing of their children.
    dirs: Vec<(OsString, Meta)>,
    done: bool,
    is_root: bool,
}

fn is_escape(e: &crate::Error) -> bool {
    e.is(libc::ELOOP) || e.is(libc::EXDEV) || e.is(libc::ENOTDIR)
}

impl Stage {
    /// Starts building `dest`, which must not exist or be an empty directory.
    pub fn new(dest: &OsStr) -> Result<Stage, ToolError> {
        let path = Path::new(dest);
        let shown = path.display().to_string();
        let name = match path.file_name() {
            Some(n) => n.to_os_string(),
            None => return Err(ToolError(format!("{shown}: not a directory name"))),
        };
        let parent_path = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let parent = sys::open_dir_path(parent_path)
            .map_err(|e| ToolError(format!("{shown}: parent directory: {e}")))?;
        match sys::statat(parent.as_fd(), &name) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                let fd = sys::openat(parent.as_fd(), &name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                if !sys::read_dir_all(fd.as_fd())?.is_empty() {
                    return Err(ToolError(format!("{shown}: exists and is not empty")));
                }
            }
            Ok(_) => return Err(ToolError(format!("{shown}: exists and is not a directory"))),
            Err(e) if e.is(libc::ENOENT) => {}
            Err(e) => return Err(ToolError(format!("{shown}: {e}"))),
        }
        let mut tmp = OsString::from(".");
        tmp.push(&name);
        tmp.push(format!(".unionfs-tmp-{}", std::process::id()));
        // A leftover of a killed run of ours with the same pid.
        remove_tree(parent.as_fd(), &tmp)?;
        sys::mkdirat(parent.as_fd(), &tmp, 0o700)
            .map_err(|e| ToolError(format!("{shown}: cannot create a directory beside it: {e}")))?;
        let root = sys::openat(parent.as_fd(), &tmp, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        // What a layer root is unless the caller says otherwise.
        sys::fchmod(root.as_fd(), 0o755)?;
        Ok(Stage {
            dest: dest.to_os_string(),
            parent,
            name,
            tmp,
            root,
            dirs: Vec::new(),
            done: false,
            is_root: sys::geteuid() == 0,
        })
    }

    /// Opens the directory `rel` of the tree, creating missing components
    /// (mode 0755). Refuses a path through a symlink or a non-directory.
    pub fn dir(&self, rel: &OsStr) -> Result<OwnedFd, ToolError> {
        let mut cur = sys::openat(
            self.root.as_fd(),
            OsStr::new("."),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?;
        let mut walked = OsString::new();
        for comp in super::offline::components(rel) {
            if comp == ".." {
                return Err(ToolError(format!(
                    "{}: escapes the directory",
                    show_path(rel)
                )));
            }
            walked = join_path(&walked, comp);
            let open = |d: BorrowedFd| sys::openat(d, comp, libc::O_RDONLY | libc::O_DIRECTORY, 0);
            let next = match open(cur.as_fd()) {
                Ok(fd) => fd,
                Err(e) if e.is(libc::ENOENT) => {
                    sys::mkdirat(cur.as_fd(), comp, 0o755)?;
                    let fd = open(cur.as_fd())?;
                    // Whatever the umask: an implied directory is 0755.
                    sys::fchmod(fd.as_fd(), 0o755)?;
                    fd
                }
                Err(e) if is_escape(&e) => {
                    return Err(ToolError(format!(
                        "{} is a symlink or not a directory",
                        show_path(&walked)
                    )))
                }
                Err(e) => return Err(e.into()),
            };
            cur = next;
        }
        Ok(cur)
    }

    /// Removes whatever stands at `name` in `dir` (a directory with all it
    /// holds), so a later archive entry can replace an earlier one.
    pub fn clear(&self, dir: BorrowedFd, name: &OsStr) -> Result<(), ToolError> {
        Ok(remove_tree(dir, name)?)
    }

    /// Gives an object its metadata now, or for a directory at the end.
    pub fn set_meta(
        &mut self,
        dir: BorrowedFd,
        rel: &OsStr,
        kind: u32,
        meta: Meta,
    ) -> Result<(), ToolError> {
        if kind == libc::S_IFDIR {
            self.dirs.push((rel.to_os_string(), meta));
            return Ok(());
        }
        apply_meta(dir, split_path(rel).1, kind, &meta, self.is_root)
            .map_err(|e| ToolError(format!("{}: {e}", show_path(rel))))
    }

    /// Metadata for the root of the tree.
    pub fn set_root_meta(&mut self, meta: Meta) {
        self.dirs.push((OsString::new(), meta));
    }

    /// The hidden name the tree is built under, beside the destination.
    pub fn tmp_name(&self) -> &OsStr {
        &self.tmp
    }

    /// The tree's root, for callers that create objects themselves.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Sets the deferred directory metadata and renames the tree onto the
    /// destination.
    pub fn finish(mut self) -> Result<(), ToolError> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|(p, _)| {
            std::cmp::Reverse(
                p.as_bytes().iter().filter(|b| **b == b'/').count() + usize::from(!p.is_empty()),
            )
        });
        for (rel, meta) in &dirs {
            let (parent, name) = split_path(rel);
            let (pfd, name) = if rel.is_empty() {
                (self.parent.try_clone()?, self.tmp.as_os_str())
            } else {
                (self.dir(parent)?, name)
            };
            apply_meta(pfd.as_fd(), name, libc::S_IFDIR, meta, self.is_root)
                .map_err(|e| ToolError(format!("{}: {e}", show_path(rel))))?;
        }
        sys::renameat2(
            self.parent.as_fd(),
            &self.tmp,
            self.parent.as_fd(),
            &self.name,
            0,
        )
        .map_err(|e| {
            ToolError(format!(
                "{}: cannot move the finished tree into place: {e}",
                Path::new(&self.dest).display()
            ))
        })?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = remove_tree(self.parent.as_fd(), &self.tmp) {
                eprintln!(
                    "unionfs: warning: could not remove the unfinished {}: {e}",
                    show_path(&self.tmp)
                );
            }
        }
    }
}

/// Owner, then mode (chown clears setuid bits), then xattrs (chown also
/// drops file capabilities), then times.
fn apply_meta(
    dir: BorrowedFd,
    name: &OsStr,
    kind: u32,
    meta: &Meta,
    is_root: bool,
) -> crate::Result<()> {
    if is_root {
        sys::lchownat(dir, name, meta.uid, meta.gid)?;
    }
    if kind != libc::S_IFLNK {
        sys::fchmodat(dir, name, meta.mode & 0o7777)?;
        if !meta.xattrs.is_empty() {
            let fd = sys::openat(dir, name, libc::O_PATH, 0)?;
            for (k, v) in &meta.xattrs {
                match sys::fsetxattr(fd.as_fd(), k, v, 0) {
                    Ok(()) => {}
                    // user.* cannot go on fifos and devices.
                    Err(e)
                        if kind != libc::S_IFREG
                            && kind != libc::S_IFDIR
                            && whiteout::is_xattr_unsupported(e.raw()) => {}
                    Err(e) => return Err(e.context(format!("setxattr {}", k.to_string_lossy()))),
                }
            }
        }
    }
    let t = SetTime::At(meta.mtime.0, meta.mtime.1);
    sys::utimensat(dir, name, t, t)
}

/// Removes `name` from `dir` with everything below it; absent is fine.
pub fn remove_tree(dir: BorrowedFd, name: &OsStr) -> crate::Result<()> {
    let st = match sys::statat(dir, name) {
        Ok(st) => st,
        Err(e) if e.is(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return sys::unlinkat(dir, name, 0);
    }
    // A read-only directory of a half-built tree must still be emptied.
    if st.st_mode & 0o700 != 0o700 {
        sys::fchmodat(dir, name, 0o700)?;
    }
    let fd = sys::openat(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    for e in sys::read_dir_all(fd.as_fd())? {
        remove_tree(fd.as_fd(), &e.name)?;
    }
    sys::unlinkat(dir, name, libc::AT_REMOVEDIR)
}
