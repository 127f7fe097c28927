//! Snapshots of a tree ([`snapshot`], [`Tree::diff`]) and of whole layers
//! ([`checksum_layers`]), to compare views and prove layers unchanged.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::ops::BitOr;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::*;

// Snapshots
// ---------------------------------------------------------------------------

/// One entry of a [`Tree`]; `mode` is the permission bits (`& 0o7777`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub ftype: FileType,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// FNV-1a of the content, regular files only.
    pub hash: Option<u64>,
    pub target: Option<Vec<u8>>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub ino: u64,
    /// d_ino from the parent's readdir (None for the root).
    pub d_ino: Option<u64>,
    pub nlink: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub rdev: u64,
}

/// A recursive snapshot of a directory tree; keys are relative paths as
/// bytes, sorted (`""` is the root itself). Never follows symlinks.
#[derive(Clone, Debug)]
pub struct Tree {
    pub root: PathBuf,
    pub nodes: BTreeMap<Vec<u8>, Node>,
}

/// Fields that [`Tree::diff`] may ignore; combine with `|`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fields(u32);

impl Fields {
    pub const NONE: Fields = Fields(0);
    /// st_ino and d_ino.
    pub const INO: Fields = Fields(1);
    /// nlink of every entry.
    pub const NLINK: Fields = Fields(2);
    /// nlink of directories only.
    pub const DIR_NLINK: Fields = Fields(4);
    /// mtime and ctime.
    pub const TIMES: Fields = Fields(8);
    /// ctime only.
    pub const CTIME: Fields = Fields(16);
    /// st_size of directories.
    pub const DIR_SIZE: Fields = Fields(32);
    pub const XATTRS: Fields = Fields(64);
    pub const OWNER: Fields = Fields(128);
    pub const MODE: Fields = Fields(256);
    pub const RDEV: Fields = Fields(512);
    /// What differs legitimately between two mounts of the same logical
    /// stack: inode numbers, times, dir sizes and dir link counts (kernel
    /// overlayfs reports nlink 1 for merged dirs; dir sizes depend on the
    /// rendering, e.g. `.wh.*` files).
    pub const VIEW: Fields = Fields(1 | 4 | 8 | 32);

    pub fn contains(self, other: Fields) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Fields {
    type Output = Fields;
    fn bitor(self, o: Fields) -> Fields {
        Fields(self.0 | o.0)
    }
}

pub(crate) fn show_xattrs(x: &BTreeMap<Vec<u8>, Vec<u8>>) -> String {
    let items: Vec<String> = x
        .iter()
        .map(|(k, v)| format!("{}={}", show(k), show(v)))
        .collect();
    format!("{{{}}}", items.join(", "))
}

impl Tree {
    pub fn get(&self, rel: impl AsRef<[u8]>) -> Option<&Node> {
        self.nodes.get(rel.as_ref())
    }

    /// Names directly inside `dir` (relative path), sorted.
    pub fn children(&self, dir: impl AsRef<[u8]>) -> Vec<Vec<u8>> {
        let dir = dir.as_ref();
        self.nodes
            .keys()
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (parent, name) = split_parent(p);
                (parent == dir).then(|| name.to_vec())
            })
            .collect()
    }

    /// Every difference between `self` and `other`, one readable line each.
    pub fn diff(&self, other: &Tree, ignore: Fields) -> Vec<String> {
        let mut d = Vec::new();
        let (l, r) = (self.root.display(), other.root.display());
        for (p, a) in &self.nodes {
            let Some(b) = other.nodes.get(p) else {
                d.push(format!("{}: only in {l} ({:?})", show(p), a.ftype));
                continue;
            };
            let mut f = |what: &str, x: String, y: String| {
                if x != y {
                    d.push(format!("{}: {what} {x} ({l}) != {y} ({r})", show(p)));
                }
            };
            if a.ftype != b.ftype {
                f("type", format!("{:?}", a.ftype), format!("{:?}", b.ftype));
                continue;
            }
            let is_dir = a.ftype == FileType::Dir;
            if !ignore.contains(Fields::MODE) {
                f("mode", format!("{:o}", a.mode), format!("{:o}", b.mode));
            }
            if !ignore.contains(Fields::OWNER) {
                f(
                    "owner",
                    format!("{}:{}", a.uid, a.gid),
                    format!("{}:{}", b.uid, b.gid),
                );
            }
            if !(is_dir && ignore.contains(Fields::DIR_SIZE)) {
                f("size", a.size.to_string(), b.size.to_string());
            }
            f(
                "content hash",
                format!("{:?}", a.hash),
                format!("{:?}", b.hash),
            );
            f(
                "symlink target",
                format!("{:?}", a.target.as_deref().map(show)),
                format!("{:?}", b.target.as_deref().map(show)),
            );
            if !ignore.contains(Fields::XATTRS) {
                f("xattrs", show_xattrs(&a.xattrs), show_xattrs(&b.xattrs));
            }
            if !ignore.contains(Fields::INO) {
                f("st_ino", a.ino.to_string(), b.ino.to_string());
                f("d_ino", format!("{:?}", a.d_ino), format!("{:?}", b.d_ino));
            }
            if !(ignore.contains(Fields::NLINK) || is_dir && ignore.contains(Fields::DIR_NLINK)) {
                f("nlink", a.nlink.to_string(), b.nlink.to_string());
            }
            if !ignore.contains(Fields::TIMES) {
                f("mtime", format!("{:?}", a.mtime), format!("{:?}", b.mtime));
                if !ignore.contains(Fields::CTIME) {
                    f("ctime", format!("{:?}", a.ctime), format!("{:?}", b.ctime));
                }
            }
            if !ignore.contains(Fields::RDEV) {
                f("rdev", a.rdev.to_string(), b.rdev.to_string());
            }
        }
        for (p, b) in &other.nodes {
            if !self.nodes.contains_key(p) {
                d.push(format!("{}: only in {r} ({:?})", show(p), b.ftype));
            }
        }
        d
    }

    /// Panics listing every difference.
    pub fn assert_same(&self, other: &Tree, ignore: Fields, what: &str) {
        let d = self.diff(other, ignore);
        assert_no_failures(what, &d);
    }

    /// Entries whose d_ino (from readdir) differs from st_ino.
    pub fn d_ino_mismatches(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.d_ino.is_some_and(|d| d != n.ino))
            .map(|(p, n)| {
                format!(
                    "{}: d_ino {} != st_ino {}",
                    show(p),
                    n.d_ino.unwrap_or(0),
                    n.ino
                )
            })
            .collect()
    }
}

/// Snapshot with user.* xattrs only (what a merged view should show).
pub fn snapshot(root: &Path) -> Tree {
    snapshot_with(root, false)
}

/// Snapshot with every xattr (trusted.*, security.* too).
pub fn snapshot_full(root: &Path) -> Tree {
    snapshot_with(root, true)
}

fn stat_node(path: &Path, all_xattrs: bool) -> io::Result<Node> {
    let m = fs::symlink_metadata(path)?;
    let ftype = FileType::of(m.file_type());
    let hash = if ftype == FileType::File {
        let mut f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Some(fnv(&buf))
    } else {
        None
    };
    let target = if ftype == FileType::Symlink {
        Some(fs::read_link(path)?.into_os_string().into_vec())
    } else {
        None
    };
    let mut xattrs = BTreeMap::new();
    for name in sys::llistxattr(path)? {
        if !all_xattrs && !name.starts_with(b"user.") {
            continue;
        }
        match sys::lgetxattr(path, &name) {
            Ok(v) => {
                xattrs.insert(name, v);
            }
            Err(e) => {
                xattrs.insert(name, format!("<getxattr error: {e}>").into_bytes());
            }
        }
    }
    Ok(Node {
        ftype,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        size: m.size(),
        hash,
        target,
        xattrs,
        ino: m.ino(),
        d_ino: None,
        nlink: m.nlink(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
        rdev: m.rdev(),
    })
}

fn snapshot_with(root: &Path, all_xattrs: bool) -> Tree {
    let mut nodes = BTreeMap::new();
    let root_node =
        stat_node(root, all_xattrs).unwrap_or_else(|e| panic!("snapshot {}: {e}", root.display()));
    let root_is_dir = root_node.ftype == FileType::Dir;
    nodes.insert(Vec::new(), root_node);
    let mut todo: Vec<Vec<u8>> = if root_is_dir {
        vec![Vec::new()]
    } else {
        vec![]
    };
    while let Some(rel) = todo.pop() {
        let dir = join(root, &rel);
        let rd = fs::read_dir(&dir).unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
        for ent in rd {
            let ent = ent.unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
            let name = ent.file_name().into_vec();
            let crel = join_rel(&rel, &name);
            let p = join(root, &crel);
            let mut n = stat_node(&p, all_xattrs)
                .unwrap_or_else(|e| panic!("snapshot {}: {e}", p.display()));
            n.d_ino = Some(std::os::unix::fs::DirEntryExt::ino(&ent));
            if n.ftype == FileType::Dir {
                todo.push(crel.clone());
            }
            assert!(
                nodes.insert(crel.clone(), n).is_none(),
                "readdir of {} returned {} twice",
                dir.display(),
                show(&name)
            );
        }
    }
    Tree {
        root: root.to_path_buf(),
        nodes,
    }
}

/// Full snapshots (every xattr, mtimes, ctimes, device numbers, inodes) of
/// layer dirs, to prove they are unchanged.
pub struct LayerChecksum {
    trees: Vec<Tree>,
}

pub fn checksum_layers(dirs: &[&Path]) -> LayerChecksum {
    LayerChecksum {
        trees: dirs.iter().map(|d| snapshot_full(d)).collect(),
    }
}

impl LayerChecksum {
    /// Panics listing every change in any layer since the checksum was taken.
    pub fn assert_unchanged(&self) {
        let mut d = Vec::new();
        for t in &self.trees {
            let now = snapshot_full(&t.root);
            d.extend(t.diff(&now, Fields::NONE));
        }
        assert_no_failures("lower layers changed (left: before, right: after)", &d);
    }
}
