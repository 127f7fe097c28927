//! Snapshots of a merged tree that never panic (an error becomes part of the
//! snapshot, so it shows up as a difference) and their comparison.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirEntryExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::common::{fnv, join, show, sys, FileType};
use crate::model::{join_rel, OLD_MTIME_LIMIT};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ent {
    /// `None` when lstat failed.
    pub ftype: Option<FileType>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub hash: Option<u64>,
    pub target: Option<Vec<u8>>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub ino: u64,
    pub d_ino: Option<u64>,
    pub nlink: u64,
    pub mtime: (i64, i64),
    /// Only for the lower-layer check (never compared between mounts).
    pub ctime: (i64, i64),
    /// Errors met while reading this entry (lstat, read, readlink, xattrs,
    /// readdir), as `what: errno`.
    pub errors: Vec<String>,
}

pub type Snap = BTreeMap<Vec<u8>, Ent>;

fn errno(e: &std::io::Error) -> String {
    errno_name(e.raw_os_error().unwrap_or(-1))
}

/// `ESTALE (116)`-style name: the shared harness's names plus a few more.
pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::ESTALE => "ESTALE",
        libc::ENXIO => "ENXIO",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::E2BIG => "E2BIG",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        _ => return crate::common::errno_name(e),
    };
    format!("{name} ({e})")
}

fn stat_ent(p: &Path, all_xattrs: bool) -> Ent {
    let mut e = Ent::default();
    let m = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(err) => {
            e.errors.push(format!("lstat: {}", errno(&err)));
            return e;
        }
    };
    let ft = FileType::of(m.file_type());
    e.ftype = Some(ft);
    e.mode = m.mode() & 0o7777;
    e.uid = m.uid();
    e.gid = m.gid();
    e.size = m.size();
    e.ino = m.ino();
    e.nlink = m.nlink();
    e.mtime = (m.mtime(), m.mtime_nsec());
    e.ctime = (m.ctime(), m.ctime_nsec());
    match ft {
        FileType::File => {
            let r = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(p)
                .and_then(|mut f| {
                    let mut buf = Vec::new();
                    f.read_to_end(&mut buf).map(|_| buf)
                });
            match r {
                Ok(buf) => {
                    if buf.len() as u64 != e.size {
                        e.errors
                            .push(format!("read {} bytes, st_size {}", buf.len(), e.size));
                    }
                    e.hash = Some(fnv(&buf));
                }
                Err(err) => e.errors.push(format!("read: {}", errno(&err))),
            }
        }
        FileType::Symlink => match fs::read_link(p) {
            Ok(t) => e.target = Some(t.into_os_string().into_vec()),
            Err(err) => e.errors.push(format!("readlink: {}", errno(&err))),
        },
        _ => {}
    }
    match sys::llistxattr(p) {
        Ok(names) => {
            for name in names {
                if !all_xattrs && !name.starts_with(b"user.") {
                    continue;
                }
                match sys::lgetxattr(p, &name) {
                    Ok(v) => {
                        e.xattrs.insert(name, v);
                    }
                    Err(err) => e
                        .errors
                        .push(format!("getxattr {}: {}", show(&name), errno(&err))),
                }
            }
        }
        Err(err) => e.errors.push(format!("listxattr: {}", errno(&err))),
    }
    e
}

/// Every entry below `root` (the root itself is `""`), user xattrs only
/// unless `all_xattrs`. Never follows symlinks; never panics.
pub fn snap_with(root: &Path, all_xattrs: bool) -> Snap {
    let mut out = Snap::new();
    let r = stat_ent(root, all_xattrs);
    let is_dir = r.ftype == Some(FileType::Dir);
    out.insert(Vec::new(), r);
    let mut todo: Vec<Vec<u8>> = if is_dir { vec![Vec::new()] } else { vec![] };
    while let Some(rel) = todo.pop() {
        let dir = join(root, &rel);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(err) => {
                if let Some(e) = out.get_mut(&rel) {
                    e.errors.push(format!("opendir: {}", errno(&err)));
                }
                continue;
            }
        };
        for ent in rd {
            let ent = match ent {
                Ok(x) => x,
                Err(err) => {
                    if let Some(e) = out.get_mut(&rel) {
                        e.errors.push(format!("readdir: {}", errno(&err)));
                    }
                    break;
                }
            };
            let name = ent.file_name().into_vec();
            let crel = join_rel(&rel, &name);
            let mut e = stat_ent(&join(root, &crel), all_xattrs);
            e.d_ino = Some(ent.ino());
            if e.ftype == Some(FileType::Dir) {
                todo.push(crel.clone());
            }
            if out.insert(crel.clone(), e).is_some() {
                if let Some(e) = out.get_mut(&rel) {
                    e.errors
                        .push(format!("readdir returned {} twice", show(&name)));
                }
            }
        }
    }
    out
}

/// A merged view: user xattrs only.
pub fn snap(root: &Path) -> Snap {
    snap_with(root, false)
}

/// One difference between the kernel's view and unionfs's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diff {
    pub path: Vec<u8>,
    pub field: &'static str,
    /// The left entry is a directory.
    pub is_dir: bool,
    /// The reference side (kernel overlayfs, or unionfs before a remount).
    pub left: String,
    pub right: String,
}

impl Diff {
    pub fn line(&self) -> String {
        format!(
            "{}: {}: {} / {}",
            show(&self.path),
            self.field,
            self.left,
            self.right
        )
    }
}

fn xattrs_str(x: &BTreeMap<Vec<u8>, Vec<u8>>) -> String {
    let v: Vec<String> = x
        .iter()
        .map(|(k, v)| {
            let v = if v.len() > 24 {
                format!("<{} bytes, fnv {:x}>", v.len(), fnv(v))
            } else {
                show(v)
            };
            format!("{}={}", show(k), v)
        })
        .collect();
    format!("{{{}}}", v.join(", "))
}

fn ftype_str(t: Option<FileType>) -> String {
    t.map_or("?".to_string(), |t| format!("{t:?}"))
}

/// The type of an entry, or why it has none (`unstatable (lstat: ENOENT (2))`).
fn presence_str(e: &Ent) -> String {
    match e.ftype {
        Some(t) => format!("{t:?}"),
        None => format!("unstatable ({})", e.errors.join(", ")),
    }
}

/// For each non-directory path, the other paths with the same st_ino.
fn link_groups(s: &Snap) -> BTreeMap<&[u8], Vec<&[u8]>> {
    let mut by_ino: BTreeMap<u64, Vec<&[u8]>> = BTreeMap::new();
    for (p, e) in s {
        if e.ftype.is_some() && e.ftype != Some(FileType::Dir) {
            by_ino.entry(e.ino).or_default().push(p);
        }
    }
    let mut out = BTreeMap::new();
    for group in by_ino.values() {
        for &p in group {
            let others: Vec<&[u8]> = group.iter().copied().filter(|&o| o != p).collect();
            out.insert(p, others);
        }
    }
    out
}

fn is_old(t: (i64, i64)) -> bool {
    t.0 < OLD_MTIME_LIMIT
}

/// Every difference between the two merged views. Inode numbers, atimes,
/// ctimes and directory sizes are not compared; mtimes only where at least
/// one side shows a time set explicitly (by a layer or by utimes), not one
/// the system took from its clock.
pub fn compare(k: &Snap, u: &Snap) -> Vec<Diff> {
    let mut d = Vec::new();
    let dirs: BTreeSet<&Vec<u8>> = k
        .iter()
        .filter(|(_, e)| e.ftype == Some(FileType::Dir))
        .map(|(p, _)| p)
        .collect();
    let mut push = |path: &[u8], field: &'static str, left: String, right: String| {
        d.push(Diff {
            path: path.to_vec(),
            field,
            is_dir: dirs.contains(&path.to_vec()),
            left,
            right,
        })
    };
    let paths: BTreeSet<&Vec<u8>> = k.keys().chain(u.keys()).collect();
    for p in paths {
        let (a, b) = match (k.get(p), u.get(p)) {
            (Some(a), Some(b)) => (a, b),
            (Some(a), None) => {
                push(p, "presence", presence_str(a), "absent".into());
                continue;
            }
            (None, Some(b)) => {
                push(p, "presence", "absent".into(), presence_str(b));
                continue;
            }
            (None, None) => unreachable!(),
        };
        if a.errors != b.errors {
            push(
                p,
                "errors",
                format!("{:?}", a.errors),
                format!("{:?}", b.errors),
            );
        }
        if a.ftype != b.ftype {
            push(p, "type", ftype_str(a.ftype), ftype_str(b.ftype));
            continue;
        }
        let is_dir = a.ftype == Some(FileType::Dir);
        let is_link = a.ftype == Some(FileType::Symlink);
        if !is_link && a.mode != b.mode {
            push(p, "mode", format!("{:o}", a.mode), format!("{:o}", b.mode));
        }
        if (a.uid, a.gid) != (b.uid, b.gid) {
            push(
                p,
                "owner",
                format!("{}:{}", a.uid, a.gid),
                format!("{}:{}", b.uid, b.gid),
            );
        }
        if !is_dir && a.size != b.size {
            push(p, "size", a.size.to_string(), b.size.to_string());
        }
        if a.hash != b.hash {
            push(
                p,
                "content",
                format!("{:?}", a.hash),
                format!("{:?}", b.hash),
            );
        }
        if a.target != b.target {
            let t = |x: &Option<Vec<u8>>| x.as_deref().map_or("-".into(), show);
            push(p, "symlink target", t(&a.target), t(&b.target));
        }
        if a.xattrs != b.xattrs {
            push(p, "xattrs", xattrs_str(&a.xattrs), xattrs_str(&b.xattrs));
        }
        if a.nlink != b.nlink {
            let field = if is_dir { "dir nlink" } else { "nlink" };
            push(p, field, a.nlink.to_string(), b.nlink.to_string());
        }
        if (is_old(a.mtime) || is_old(b.mtime)) && a.mtime != b.mtime {
            let t = |m: (i64, i64)| format!("{}.{:09}", m.0, m.1);
            push(p, "mtime", t(a.mtime), t(b.mtime));
        }
    }
    let (gk, gu) = (link_groups(k), link_groups(u));
    for (p, ko) in &gk {
        if let Some(uo) = gu.get(p) {
            if ko != uo {
                let s = |v: &Vec<&[u8]>| {
                    format!("[{}]", v.iter().map(show).collect::<Vec<_>>().join(" "))
                };
                push(p, "hard links (same st_ino as)", s(ko), s(uo));
            }
        }
    }
    d
}

/// What unionfs promises beyond the comparison: each readdir d_ino equals
/// the entry's st_ino (docs/design.md §3 Readdir).
pub fn unionfs_invariants(u: &Snap) -> Vec<Diff> {
    u.iter()
        .filter(|(_, e)| e.ftype.is_some() && e.d_ino.is_some_and(|d| d != e.ino))
        .map(|(p, e)| Diff {
            path: p.clone(),
            field: "d_ino == st_ino (unionfs)",
            is_dir: e.ftype == Some(FileType::Dir),
            left: "-".into(),
            right: format!("d_ino {} st_ino {}", e.d_ino.unwrap_or(0), e.ino),
        })
        .collect()
}

/// Differences of a layer dir before/after (everything: xattrs of every
/// namespace, mtimes, inode numbers, link counts).
pub fn layer_changes(before: &Snap, after: &Snap) -> Vec<String> {
    let mut d = Vec::new();
    let paths: BTreeSet<&Vec<u8>> = before.keys().chain(after.keys()).collect();
    for p in paths {
        match (before.get(p), after.get(p)) {
            (Some(a), Some(b)) if a != b => {
                d.push(format!("{}: changed: {:?} -> {:?}", show(p), a, b))
            }
            (Some(_), None) => d.push(format!("{}: removed", show(p))),
            (None, Some(_)) => d.push(format!("{}: added", show(p))),
            _ => {}
        }
    }
    d
}

/// The view the offline tools (`unionfs ls`, `which`, `diff`...) have of
/// the unmounted layers, through the library reader they share, in the
/// shape of a mounted [`snap`]: what a tool can tell of each entry
/// (type, mode, owner, size, bytes, symlink target, user xattrs, mtime).
pub fn offline_snap(lowers: &[&Path], upper: &Path, work: &Path) -> Snap {
    use std::os::unix::ffi::OsStrExt;
    use unionfs::tools::offline::{portable_xattrs, MergedEntry, Union};

    let lowers: Vec<std::path::PathBuf> = lowers.iter().map(|p| p.to_path_buf()).collect();
    let union = match Union::open(&lowers, Some(upper), Some(work)) {
        Ok(u) => u,
        Err(e) => panic!("offline reader: open: {e}"),
    };
    let ent = |n: &MergedEntry| -> Ent {
        let top = n.top();
        let st = top.stat;
        let mut e = Ent {
            ftype: Some(match top.kind() {
                libc::S_IFDIR => FileType::Dir,
                libc::S_IFREG => FileType::File,
                libc::S_IFLNK => FileType::Symlink,
                libc::S_IFIFO => FileType::Fifo,
                libc::S_IFSOCK => FileType::Socket,
                libc::S_IFCHR => FileType::CharDev,
                _ => FileType::BlockDev,
            }),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            // A metacopy's size is its data file's, as the mount shows it.
            size: n.data_part().stat.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ..Ent::default()
        };
        match top.kind() {
            libc::S_IFREG => {
                let r = n
                    .data_part()
                    .open(libc::O_RDONLY | libc::O_NOFOLLOW)
                    .map(fs::File::from)
                    .map_err(|e| e.to_string())
                    .and_then(|mut f| {
                        let mut buf = Vec::new();
                        f.read_to_end(&mut buf)
                            .map(|_| buf)
                            .map_err(|e| e.to_string())
                    });
                match r {
                    Ok(buf) => e.hash = Some(fnv(&buf)),
                    Err(err) => e.errors.push(format!("read: {err}")),
                }
            }
            libc::S_IFLNK => match top.link_target() {
                Ok(t) => e.target = Some(t.into_vec()),
                Err(err) => e.errors.push(format!("readlink: {err}")),
            },
            _ => {}
        }
        match portable_xattrs(top) {
            Ok(x) => {
                e.xattrs = x
                    .into_iter()
                    .filter(|(k, _)| k.as_bytes().starts_with(b"user."))
                    .map(|(k, v)| (k.into_vec(), v))
                    .collect()
            }
            Err(err) => e.errors.push(format!("xattrs: {err}")),
        }
        e
    };
    let mut out = Snap::new();
    let root = union
        .root()
        .unwrap_or_else(|e| panic!("offline reader: root: {e}"));
    out.insert(Vec::new(), ent(&root));
    let r = union.walk(
        &root,
        &mut |n: &MergedEntry| -> Result<(), unionfs::Error> {
            out.insert(n.path.clone().into_vec(), ent(n));
            Ok(())
        },
    );
    if let Err(e) = r {
        panic!("offline reader: walk: {e}");
    }
    out
}

/// What the mounted view `u` and the offline one `o` disagree on, among
/// what the offline view tells (see [`offline_snap`]).
pub fn compare_offline(u: &Snap, o: &Snap) -> Vec<Diff> {
    let told = |e: &Ent| Ent {
        ftype: e.ftype,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        size: e.size,
        hash: e.hash,
        target: e.target.clone(),
        xattrs: e.xattrs.clone(),
        mtime: e.mtime,
        errors: e.errors.clone(),
        ..Ent::default()
    };
    let u: Snap = u.iter().map(|(p, e)| (p.clone(), told(e))).collect();
    compare(&u, o)
        .into_iter()
        // Both sides number nothing here: every file would share st_ino 0.
        .filter(|d| d.field != "hard links (same st_ino as)")
        .collect()
}
