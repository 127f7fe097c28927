//! The fixture of the rename, hard-link and inode-number tests ([`Env`]):
//! rendered lowers, an upper (maybe pre-populated), a work dir and a mount
//! point in one TestDir, mountable as unionfs or as kernel overlayfs; plus
//! the checks they share: subtrees moved intact, opaque dirs and whiteouts in
//! the upper, hard-link groups, d_ino against st_ino.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::sys::DirStream;
use super::*;

pub const NOREPLACE: u32 = libc::RENAME_NOREPLACE;
pub const EXCHANGE: u32 = libc::RENAME_EXCHANGE;

/// One union under test: rendered lowers, an upper (maybe pre-populated),
/// a work dir and a mount point, all inside one TestDir.
pub struct Env {
    pub td: TestDir,
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
    /// `--format` of the unionfs mount: "overlay" or "oci".
    pub format: &'static str,
}

impl Env {
    pub fn new(name: &str, lowers: &[Layer], upper: Option<&Layer>, format: &'static str) -> Env {
        let td = TestDir::new(name);
        let lowers = render_stack(lowers, &td.join("lowers"), Format::Kernel);
        let upper_dir = td.join("upper");
        match upper {
            Some(l) => render(
                l,
                &upper_dir,
                if format == "oci" {
                    Format::Oci
                } else {
                    Format::Kernel
                },
            ),
            None => {
                td.mkdir("upper");
            }
        }
        let work = td.mkdir("work");
        let mnt = td.mkdir("mnt");
        Env {
            td,
            lowers,
            upper: upper_dir,
            work,
            mnt,
            format,
        }
    }

    pub fn lower_paths(&self) -> Vec<&Path> {
        as_paths(&self.lowers)
    }

    pub fn mount(&self) -> Mount {
        mount_unionfs(
            &self.lower_paths(),
            Some(&self.upper),
            Some(&self.work),
            &self.mnt,
            &["--format", self.format],
        )
    }

    /// Kernel overlayfs over the same dirs (use a separate Env: the kernel
    /// writes its own metadata into the upper and work dirs).
    pub fn mount_kernel(&self) -> Mount {
        mount_kernel_overlay(
            &self.lower_paths(),
            Some(&self.upper),
            Some(&self.work),
            &self.mnt,
            &["redirect_dir=on", "index=on"],
        )
    }

    /// A path in the mount.
    pub fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn checksum(&self) -> LayerChecksum {
        checksum_layers(&self.lower_paths())
    }
}

/// What differs between `before` and the view at `mnt` now, inode numbers
/// and times included, each line prefixed "after remount: ".
pub fn remount_diff(before: &Tree, mnt: &Path) -> Vec<String> {
    before
        .diff(&snapshot(mnt), Fields::NONE)
        .into_iter()
        .map(|l| format!("after remount: {l}"))
        .collect()
}

pub fn ino(p: &Path) -> u64 {
    lstat(p).ino()
}

/// Appends `data` to the regular file `p` (O_APPEND, O_NOFOLLOW).
pub fn append_nofollow(p: &Path, data: &[u8]) {
    let mut f = open_flags(p, libc::O_WRONLY | libc::O_APPEND, 0)
        .unwrap_or_else(|e| panic!("open {} for append: {e}", p.display()));
    f.write_all(data)
        .unwrap_or_else(|e| panic!("append to {}: {e}", p.display()));
}

pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

/// The part of `t` at `prefix` (a relative path), keys made relative to it.
pub fn subtree(t: &Tree, prefix: &str) -> Tree {
    let prefix = prefix.as_bytes();
    let mut nodes = BTreeMap::new();
    for (p, n) in &t.nodes {
        if p.as_slice() == prefix {
            nodes.insert(Vec::new(), n.clone());
        } else if prefix.is_empty() {
            nodes.insert(p.clone(), n.clone());
        } else if p.starts_with(prefix) && p.get(prefix.len()) == Some(&b'/') {
            nodes.insert(p[prefix.len() + 1..].to_vec(), n.clone());
        }
    }
    Tree {
        root: join(&t.root, prefix),
        nodes,
    }
}

/// `t` without the subtrees at `prefixes`.
pub fn without(t: &Tree, prefixes: &[&str]) -> Tree {
    let mut nodes = t.nodes.clone();
    nodes.retain(|p, _| {
        !prefixes.iter().any(|pre| {
            let pre = pre.as_bytes();
            p.as_slice() == pre || (p.starts_with(pre) && p.get(pre.len()) == Some(&b'/'))
        })
    });
    Tree {
        root: t.root.clone(),
        nodes,
    }
}

/// `t` with directory mtimes zeroed: a directory that gains or loses
/// entries (or is copied up entry by entry) legitimately gets a new mtime.
pub fn dir_times_zeroed(t: &Tree) -> Tree {
    let mut t = t.clone();
    for n in t.nodes.values_mut() {
        if n.ftype == FileType::Dir {
            n.mtime = (0, 0);
        }
    }
    t
}

/// Differences between the subtree `old` of `before` and `new` of `after`.
/// A rename keeps type, mode, owner, size, content, target, user xattrs,
/// st_ino, d_ino, file link counts and file mtimes of every moved entry
/// (ctime changes; a merged dir's nlink 1 becomes its real count).
pub fn compare_moved(before: &Tree, old: &str, after: &Tree, new: &str) -> Vec<String> {
    let a = dir_times_zeroed(&subtree(before, old));
    let b = dir_times_zeroed(&subtree(after, new));
    if a.nodes.is_empty() {
        return vec![format!("nothing at {old} before the rename")];
    }
    let ignore = Fields::CTIME | Fields::DIR_NLINK | Fields::DIR_SIZE;
    a.diff(&b, ignore)
        .into_iter()
        .map(|l| format!("{old} -> {new}: {l}"))
        .collect()
}

/// Everything but the renamed subtrees is unchanged (dir times, sizes and
/// link counts aside).
pub fn compare_rest(before: &Tree, olds: &[&str], after: &Tree, news: &[&str]) -> Vec<String> {
    let a = dir_times_zeroed(&without(before, olds));
    let b = dir_times_zeroed(&without(after, news));
    a.diff(&b, Fields::CTIME | Fields::DIR_NLINK | Fields::DIR_SIZE)
        .into_iter()
        .map(|l| format!("rest of the view: {l}"))
        .collect()
}

/// The upper's directory `rel` is opaque in the mount's write format.
pub fn check_opaque(upper: &Path, rel: &str, format: &str) -> Result<(), String> {
    let p = upper.join(rel);
    let m = fs::symlink_metadata(&p).map_err(|e| format!("upper/{rel}: {e}"))?;
    if !m.is_dir() {
        return Err(format!("upper/{rel} is not a directory"));
    }
    if format == "oci" {
        match fs::symlink_metadata(p.join(".wh..wh..opq")) {
            Ok(o) if o.is_file() && o.len() == 0 => Ok(()),
            other => Err(format!(
                "upper/{rel} is not opaque: no empty .wh..wh..opq in it ({other:?})"
            )),
        }
    } else {
        match sys::lgetxattr(&p, b"trusted.overlay.opaque") {
            Ok(v) if v == b"y" => Ok(()),
            other => Err(format!(
                "upper/{rel} is not opaque: trusted.overlay.opaque = {:?}, expected \"y\"",
                other.map(show)
            )),
        }
    }
}

/// The upper's directory `rel`, renamed there from `from` (`None`: a
/// directory only the upper had). OCI format: an opaque copy of the whole
/// tree. Overlay format: O(1), as kernel overlayfs `redirect_dir=on`: a
/// redirect to where the lowers hold it and not opaque, or, for an
/// upper-only dir, opaque.
pub fn check_moved_dir(
    upper: &Path,
    rel: &str,
    from: Option<&str>,
    format: &str,
    view: &Tree,
) -> Vec<String> {
    let mut fails = Vec::new();
    if format == "oci" || from.is_none() {
        push_err(&mut fails, check_opaque(upper, rel, format));
        push_err(&mut fails, check_upper_holds(upper, rel, view));
        return fails;
    }
    let p = upper.join(rel);
    let want = format!("/{}", from.unwrap_or_default());
    match sys::lgetxattr(&p, b"trusted.overlay.redirect") {
        Ok(v) if v == want.as_bytes() => {}
        other => fails.push(format!(
            "upper/{rel}: trusted.overlay.redirect = {:?}, expected {want:?}",
            other.map(show)
        )),
    }
    if let Ok(v) = sys::lgetxattr(&p, b"trusted.overlay.opaque") {
        fails.push(format!(
            "upper/{rel} is opaque ({:?}): a redirected dir merges",
            show(v)
        ));
    }
    fails
}

/// The upper holds a whiteout at `rel` in the mount's write format.
pub fn check_whiteout(upper: &Path, rel: &str, format: &str) -> Result<(), String> {
    let p = upper.join(rel);
    if format == "oci" {
        let (parent, name) = split_parent(rel.as_bytes());
        let wh = join(upper, parent).join(format!(".wh.{}", show(name)));
        if fs::symlink_metadata(&p).is_ok() {
            return Err(format!(
                "upper/{rel} exists, expected only .wh.{}",
                show(name)
            ));
        }
        match fs::symlink_metadata(&wh) {
            Ok(m) if m.is_file() => Ok(()),
            other => Err(format!(
                "no OCI whiteout {} for {rel}: {other:?}",
                wh.display()
            )),
        }
    } else {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_char_device() && m.rdev() == 0 => Ok(()),
            Ok(m) => Err(format!(
                "upper/{rel} is {:?} (rdev {}), expected a 0/0 char device whiteout",
                FileType::of(m.file_type()),
                m.rdev()
            )),
            Err(e) => Err(format!("no whiteout at upper/{rel}: {e}")),
        }
    }
}

/// The upper holds the renamed tree `rel` itself (it is opaque, so nothing
/// below it may still come from a lower): its names equal the view's.
pub fn check_upper_holds(upper: &Path, rel: &str, view: &Tree) -> Result<(), String> {
    let up = snapshot_full(&upper.join(rel));
    // Markers (OCI files, 0/0 devices) left inside an opaque dir are
    // harmless: they hide nothing.
    let names: BTreeSet<Vec<u8>> = up
        .nodes
        .iter()
        .filter(|(p, n)| {
            let (_, name) = split_parent(p);
            let marker = name.starts_with(b".wh.") || (n.ftype == FileType::CharDev && n.rdev == 0);
            !marker
        })
        .map(|(p, _)| p.clone())
        .collect();
    let want: BTreeSet<Vec<u8>> = subtree(view, rel).nodes.keys().cloned().collect();
    if names == want {
        Ok(())
    } else {
        let missing: Vec<String> = want.difference(&names).map(show).collect();
        let extra: Vec<String> = names.difference(&want).map(show).collect();
        Err(format!(
            "upper/{rel} does not hold the renamed tree: missing {missing:?}, extra {extra:?}"
        ))
    }
}

pub fn push_err(fails: &mut Vec<String>, r: Result<(), String>) {
    if let Err(e) = r {
        fails.push(e);
    }
}

/// Records `errno`-checked results into `fails`.
pub fn expect_err(fails: &mut Vec<String>, what: &str, r: io::Result<()>, want: i32) {
    if let Err(e) = expect_errno(r, want) {
        fails.push(format!("{what}: {e}"));
    }
}

pub fn expect_ok(fails: &mut Vec<String>, what: &str, r: io::Result<()>) {
    if let Err(e) = r {
        fails.push(format!(
            "{what}: failed with {}, expected success",
            errno_name(e.raw_os_error().unwrap_or(-1))
        ));
    }
}

pub fn gone(fails: &mut Vec<String>, p: &Path) {
    if let Ok(m) = fs::symlink_metadata(p) {
        fails.push(format!(
            "{} still exists after the rename ({:?})",
            p.display(),
            FileType::of(m.file_type())
        ));
    }
}

/// Hard-link groups of a tree: names of regular files sharing an st_ino,
/// groups of two or more names only.
pub type Groups = BTreeSet<BTreeSet<String>>;

pub fn groups_of(t: &Tree) -> Groups {
    let mut by_ino: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for (p, n) in &t.nodes {
        if n.ftype == FileType::File {
            by_ino.entry(n.ino).or_default().insert(show(p));
        }
    }
    by_ino.into_values().filter(|g| g.len() > 1).collect()
}

/// Regular files whose st_nlink differs from the number of names sharing
/// their st_ino in `t` (for trees where every name of a file is visible).
pub fn nlink_not_name_count(t: &Tree) -> Vec<String> {
    let mut count: BTreeMap<u64, u64> = BTreeMap::new();
    for n in t.nodes.values().filter(|n| n.ftype == FileType::File) {
        *count.entry(n.ino).or_default() += 1;
    }
    t.nodes
        .iter()
        .filter(|(_, n)| n.ftype == FileType::File && n.nlink != count[&n.ino])
        .map(|(p, n)| {
            format!(
                "{}: st_nlink {}, but {} name(s) share its st_ino {}",
                show(p),
                n.nlink,
                count[&n.ino],
                n.ino
            )
        })
        .collect()
}

/// The hard-link groups the merged view of `layers` (rendered in `dirs`)
/// must show, from the layers on disk: visible names grouped by (serving
/// layer, real inode). Independent of the daemon.
pub fn expected_groups(layers: &[Layer], dirs: &[PathBuf]) -> Groups {
    let refs: Vec<&Layer> = layers.iter().collect();
    let view = merged_view(&refs);
    let mut by: BTreeMap<(String, u64), BTreeSet<String>> = BTreeMap::new();
    for (p, e) in &view {
        if e.ftype != FileType::File {
            continue;
        }
        let i = layers
            .iter()
            .position(|l| l.name == e.layer)
            .expect("layer");
        let real = lstat(&join(&dirs[i], p)).ino();
        by.entry((e.layer.clone(), real))
            .or_default()
            .insert(show(p));
    }
    by.into_values().filter(|g| g.len() > 1).collect()
}

pub fn groups(list: &[&[&str]]) -> Groups {
    list.iter()
        .map(|g| g.iter().map(|s| s.to_string()).collect())
        .collect()
}

/// Names under `mnt` that `find -inum` reports for `ino`.
pub fn find_inum(mnt: &Path, ino: u64) -> Result<BTreeSet<String>, String> {
    let out = run(
        Command::new("find")
            .arg(mnt)
            .arg("-inum")
            .arg(ino.to_string()),
        Duration::from_secs(30),
    );
    if !out.success() {
        return Err(format!("find -inum failed: {out}"));
    }
    let base = format!("{}/", mnt.display());
    Ok(out
        .stdout
        .lines()
        .map(|l| l.strip_prefix(&base).unwrap_or(l).to_string())
        .collect())
}

/// Checks that `names` are one inode: st_ino `ino`, st_nlink `nlink`, the
/// same `content` through every name, `mode` if given, and that
/// `find -inum` finds exactly these names.
pub fn check_links(
    mnt: &Path,
    what: &str,
    names: &[&str],
    ino: u64,
    nlink: u64,
    content: &[u8],
    mode: Option<u32>,
) -> Vec<String> {
    let mut d = Vec::new();
    for n in names {
        let p = mnt.join(n);
        match fs::symlink_metadata(&p) {
            Err(e) => {
                d.push(format!("{what}: {n}: lstat: {e}"));
                continue;
            }
            Ok(m) => {
                if m.ino() != ino {
                    d.push(format!("{what}: {n}: st_ino {}, expected {ino}", m.ino()));
                }
                if m.nlink() != nlink {
                    d.push(format!(
                        "{what}: {n}: st_nlink {}, expected {nlink}",
                        m.nlink()
                    ));
                }
                if let Some(mode) = mode {
                    if m.mode() & 0o7777 != mode {
                        d.push(format!(
                            "{what}: {n}: mode {:o}, expected {mode:o}",
                            m.mode() & 0o7777
                        ));
                    }
                }
            }
        }
        match fs::read(&p) {
            Ok(c) if c == content => {}
            Ok(c) => d.push(format!(
                "{what}: {n}: content {:?}, expected {:?}",
                String::from_utf8_lossy(&c),
                String::from_utf8_lossy(content)
            )),
            Err(e) => d.push(format!("{what}: {n}: read: {e}")),
        }
    }
    match find_inum(mnt, ino) {
        Ok(found) => {
            let want: BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
            if found != want {
                d.push(format!(
                    "{what}: `find -inum {ino}` found {found:?}, expected {want:?}"
                ));
            }
        }
        Err(e) => d.push(format!("{what}: {e}")),
    }
    d
}

/// For every directory of the mount: each entry's d_ino (libc readdir,
/// "." and ".." included) equals the st_ino of what it names.
pub fn d_ino_mismatches_raw(mnt: &Path) -> Vec<String> {
    let mut d = Vec::new();
    let mut todo = vec![mnt.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let mut ds = match DirStream::open(&dir) {
            Ok(s) => s,
            Err(e) => {
                d.push(format!("opendir {}: {e}", dir.display()));
                continue;
            }
        };
        let entries = match ds.read_all_with_tell() {
            Ok(v) => v,
            Err(e) => {
                d.push(format!("readdir {}: {e}", dir.display()));
                continue;
            }
        };
        drop(ds);
        for (e, _) in entries {
            if e.name == b".." && dir == mnt {
                continue; // the mount root's parent is outside the mount
            }
            let p = join(&dir, &e.name);
            let m = match fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(err) => {
                    d.push(format!("lstat {}: {err}", p.display()));
                    continue;
                }
            };
            if e.ino != m.ino() {
                d.push(format!(
                    "{}: d_ino {} != st_ino {}",
                    p.display(),
                    e.ino,
                    m.ino()
                ));
            }
            if m.is_dir() && e.name != b"." && e.name != b".." {
                todo.push(p);
            }
        }
    }
    d
}

/// Entries below `dir` (or `dir` itself) that cannot be lstat'ed, or, for
/// regular files, opened and read: a listing that shows a name that lookup
/// cannot find.
pub fn unreadable_below(dir: &Path) -> Vec<String> {
    let mut d = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) => {
                d.push(format!("lstat {}: {e}", p.display()));
                continue;
            }
        };
        if m.is_file() {
            if let Err(e) = fs::read(&p) {
                d.push(format!("read {}: {e}", p.display()));
            }
        } else if m.is_dir() {
            match fs::read_dir(&p) {
                Ok(rd) => todo.extend(rd.filter_map(|e| e.ok()).map(|e| e.path())),
                Err(e) => d.push(format!("readdir {}: {e}", p.display())),
            }
        }
    }
    d
}

/// Runs `sh -c script` (paths in it are ours and need no quoting).
pub fn sh(script: &str) -> CmdOutput {
    run(
        Command::new("sh").arg("-c").arg(script),
        Duration::from_secs(60),
    )
}
