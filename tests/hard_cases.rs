//! The hard cases of a union filesystem, through real mounts (docs/design.md §3
//! Rename, Hard links, Inode numbers):
//!
//! 1. renaming a directory that comes from a lower layer (lower-only or
//!    merged) works, never EXDEV, with RENAME_NOREPLACE / RENAME_EXCHANGE,
//!    across parents, over empty and merged-empty targets, with the right
//!    errors (EINVAL, ENOTEMPTY, ENOTDIR, EISDIR, EEXIST), for a 10k-file
//!    tree, with files held open, and across remounts;
//! 2. hard links of a lower inode stay one inode after either name is
//!    written, chmod'ed or renamed, link(2) of a lower file makes a real hard
//!    link, and all of it survives remount;
//! 3. st_ino is unchanged by copy-up and remount, unique when layers sit on
//!    different filesystems, equal to readdir's d_ino; directory link counts
//!    do not break `find`;
//! 4. `tar` and `rsync -H` of the mount keep the hard-link groups;
//! 5. every entry of a 3-lower tree keeps its number through copy-up of
//!    everything and remount;
//! 6. kernel overlayfs (redirect_dir=on, index=on) over a copy of the same
//!    layers shows the same merged view after the same operations.
//!
//! Every test also checks that the lowers are unchanged.

mod common;

use common::sys::{self as csys, DirStream};
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const NOREPLACE: u32 = libc::RENAME_NOREPLACE;
const EXCHANGE: u32 = libc::RENAME_EXCHANGE;

/// One union under test: rendered lowers, an upper (maybe pre-populated),
/// a work dir and a mount point, all inside one TestDir.
struct Env {
    td: TestDir,
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    /// `--format` of the unionfs mount: "overlay" or "oci".
    format: &'static str,
}

impl Env {
    fn new(name: &str, lowers: &[Layer], upper: Option<&Layer>, format: &'static str) -> Env {
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

    fn lower_paths(&self) -> Vec<&Path> {
        as_paths(&self.lowers)
    }

    fn mount(&self) -> Mount {
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
    fn mount_kernel(&self) -> Mount {
        mount_kernel_overlay(
            &self.lower_paths(),
            Some(&self.upper),
            Some(&self.work),
            &self.mnt,
            &["redirect_dir=on", "index=on"],
        )
    }

    /// A path in the mount.
    fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    fn checksum(&self) -> LayerChecksum {
        checksum_layers(&self.lower_paths())
    }
}

fn ino(p: &Path) -> u64 {
    lstat(p).ino()
}

/// Appends `data` to the regular file `p` (O_APPEND, O_NOFOLLOW).
fn append(p: &Path, data: &[u8]) {
    let mut f = open_flags(p, libc::O_WRONLY | libc::O_APPEND, 0)
        .unwrap_or_else(|e| panic!("open {} for append: {e}", p.display()));
    f.write_all(data)
        .unwrap_or_else(|e| panic!("append to {}: {e}", p.display()));
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

/// The part of `t` at `prefix` (a relative path), keys made relative to it.
fn subtree(t: &Tree, prefix: &str) -> Tree {
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
fn without(t: &Tree, prefixes: &[&str]) -> Tree {
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
fn dir_times_zeroed(t: &Tree) -> Tree {
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
fn compare_moved(before: &Tree, old: &str, after: &Tree, new: &str) -> Vec<String> {
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
fn compare_rest(before: &Tree, olds: &[&str], after: &Tree, news: &[&str]) -> Vec<String> {
    let a = dir_times_zeroed(&without(before, olds));
    let b = dir_times_zeroed(&without(after, news));
    a.diff(&b, Fields::CTIME | Fields::DIR_NLINK | Fields::DIR_SIZE)
        .into_iter()
        .map(|l| format!("rest of the view: {l}"))
        .collect()
}

/// The upper's directory `rel` is opaque in the mount's write format.
fn check_opaque(upper: &Path, rel: &str, format: &str) -> Result<(), String> {
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
        match csys::lgetxattr(&p, b"trusted.overlay.opaque") {
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
fn check_moved_dir(
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
    match csys::lgetxattr(&p, b"trusted.overlay.redirect") {
        Ok(v) if v == want.as_bytes() => {}
        other => fails.push(format!(
            "upper/{rel}: trusted.overlay.redirect = {:?}, expected {want:?}",
            other.map(show)
        )),
    }
    if let Ok(v) = csys::lgetxattr(&p, b"trusted.overlay.opaque") {
        fails.push(format!(
            "upper/{rel} is opaque ({:?}): a redirected dir merges",
            show(v)
        ));
    }
    fails
}

/// The upper holds a whiteout at `rel` in the mount's write format.
fn check_whiteout(upper: &Path, rel: &str, format: &str) -> Result<(), String> {
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
fn check_upper_holds(upper: &Path, rel: &str, view: &Tree) -> Result<(), String> {
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

fn push_err(fails: &mut Vec<String>, r: Result<(), String>) {
    if let Err(e) = r {
        fails.push(e);
    }
}

/// Records `errno`-checked results into `fails`.
fn expect_err(fails: &mut Vec<String>, what: &str, r: io::Result<()>, want: i32) {
    if let Err(e) = expect_errno(r, want) {
        fails.push(format!("{what}: {e}"));
    }
}

fn expect_ok(fails: &mut Vec<String>, what: &str, r: io::Result<()>) {
    if let Err(e) = r {
        fails.push(format!(
            "{what}: failed with {}, expected success",
            errno_name(e.raw_os_error().unwrap_or(-1))
        ));
    }
}

fn gone(fails: &mut Vec<String>, p: &Path) {
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
type Groups = BTreeSet<BTreeSet<String>>;

fn groups_of(t: &Tree) -> Groups {
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
fn nlink_not_name_count(t: &Tree) -> Vec<String> {
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
fn expected_groups(layers: &[Layer], dirs: &[PathBuf]) -> Groups {
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

fn groups(list: &[&[&str]]) -> Groups {
    list.iter()
        .map(|g| g.iter().map(|s| s.to_string()).collect())
        .collect()
}

/// Names under `mnt` that `find -inum` reports for `ino`.
fn find_inum(mnt: &Path, ino: u64) -> Result<BTreeSet<String>, String> {
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
fn check_links(
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
fn d_ino_mismatches_raw(mnt: &Path) -> Vec<String> {
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
fn unreadable_below(dir: &Path) -> Vec<String> {
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
fn sh(script: &str) -> CmdOutput {
    run(
        Command::new("sh").arg("-c").arg(script),
        Duration::from_secs(60),
    )
}

// ---------------------------------------------------------------------------
// 1. Directory rename
// ---------------------------------------------------------------------------

/// `mg/` merged over the upper and both lowers (one name whited out in
/// lower1, one in the upper); `lo/` only in lower2, with a nested dir, a
/// symlink, a hard-link pair, a fifo, an empty dir and modes, owners and
/// xattrs; `dst/` a lower-only parent to move into; `keep` a lower file.
fn rename_fixture() -> (Vec<Layer>, Layer) {
    let l1 = Layer::new("lower1")
        .tagged("mg/top1")
        .tagged("mg/sub/s1")
        .whiteout("mg/gone1")
        .tagged("keep");
    let l2 = Layer::new("lower2")
        .tagged("mg/low2")
        .mode(0o640)
        .xattr("user.k", "mg-low2")
        .tagged("mg/sub/s2")
        .tagged("mg/gone1")
        .tagged("mg/gone_up")
        .tagged("lo/a")
        .mode(0o600)
        .owner(1234, 4321)
        .xattr("user.k", "lo-a")
        .mtime(1_000_000_000)
        .tagged("lo/b/c")
        .symlink("lo/ln", "a")
        .tagged("lo/h1")
        .link("lo/h2", "lo/h1")
        .dir("lo/empty")
        .mode(0o700)
        .fifo("lo/p")
        .dir("dst");
    let up = Layer::new("upper").tagged("mg/up").whiteout("mg/gone_up");
    (vec![l1, l2], up)
}

fn dir_rename_lower_only_and_merged(format: &'static str) {
    if !require_mount_env() {
        return;
    }
    let (lowers, up) = rename_fixture();
    let env = Env::new(&format!("dir-rename-{format}"), &lowers, Some(&up), format);
    let sums = env.checksum();
    let m = env.mount();
    // A dir only the upper has (no lower has the name).
    fs::create_dir_all(env.m("newd/x")).expect("mkdir newd/x");
    fs::write(env.m("newd/x/f"), b"new\n").expect("write newd/x/f");
    let before = snapshot(&env.mnt);
    assert_eq!(
        list_str(&env.m("mg")),
        ["low2", "sub", "top1", "up"],
        "fixture: merged mg/"
    );
    assert_eq!(list_str(&env.m("mg/sub")), ["s1", "s2"], "fixture: mg/sub");
    let mut fails = Vec::new();

    // A lower-only directory, across parents, plain rename(2).
    expect_ok(
        &mut fails,
        "rename lo -> dst/lo2",
        fs::rename(env.m("lo"), env.m("dst/lo2")),
    );
    // A merged directory, same parent, RENAME_NOREPLACE.
    expect_ok(
        &mut fails,
        "renameat2(mg -> mg2, NOREPLACE)",
        csys::renameat2(&env.m("mg"), &env.m("mg2"), NOREPLACE),
    );
    // RENAME_NOREPLACE onto names that only a lower has.
    expect_err(
        &mut fails,
        "renameat2(mg2 -> keep, NOREPLACE), keep a lower file",
        csys::renameat2(&env.m("mg2"), &env.m("keep"), NOREPLACE),
        libc::EEXIST,
    );
    expect_err(
        &mut fails,
        "renameat2(mg2 -> dst, NOREPLACE), dst a lower dir",
        csys::renameat2(&env.m("mg2"), &env.m("dst"), NOREPLACE),
        libc::EEXIST,
    );
    // A pure-upper dir into a moved one: no whiteout is needed where it was.
    expect_ok(
        &mut fails,
        "rename newd -> dst/newd2",
        fs::rename(env.m("newd"), env.m("dst/newd2")),
    );
    // Back and forth inside the moved tree still works.
    expect_ok(
        &mut fails,
        "rename dst/lo2/b -> dst/lo2/b2 -> dst/lo2/b",
        fs::rename(env.m("dst/lo2/b"), env.m("dst/lo2/b2"))
            .and_then(|()| fs::rename(env.m("dst/lo2/b2"), env.m("dst/lo2/b"))),
    );

    gone(&mut fails, &env.m("lo"));
    gone(&mut fails, &env.m("mg"));
    gone(&mut fails, &env.m("newd"));
    let after = snapshot(&env.mnt);
    for old in ["lo", "mg", "newd"] {
        if list(&env.mnt).contains(&old.as_bytes().to_vec()) {
            fails.push(format!("readdir of the root still lists {old}"));
        }
    }
    fails.extend(compare_moved(&before, "lo", &after, "dst/lo2"));
    fails.extend(compare_moved(&before, "mg", &after, "mg2"));
    fails.extend(compare_moved(&before, "newd", &after, "dst/newd2"));
    fails.extend(compare_rest(
        &before,
        &["lo", "mg", "newd"],
        &after,
        &["dst/lo2", "mg2", "dst/newd2"],
    ));
    fails.extend(after.d_ino_mismatches());
    if list_str(&env.m("mg2")) != ["low2", "sub", "top1", "up"] {
        fails.push(format!("mg2 lists {:?}", list_str(&env.m("mg2"))));
    }

    // The upper: the moved dirs are opaque and whole, the old names whited
    // out (a lower has them).
    fails.extend(check_moved_dir(
        &env.upper,
        "mg2",
        Some("mg"),
        format,
        &after,
    ));
    fails.extend(check_moved_dir(
        &env.upper,
        "dst/lo2",
        Some("lo"),
        format,
        &after,
    ));
    push_err(&mut fails, check_whiteout(&env.upper, "lo", format));
    push_err(&mut fails, check_whiteout(&env.upper, "mg", format));
    for leftover in ["newd", ".wh.newd"] {
        if fs::symlink_metadata(env.upper.join(leftover)).is_ok() {
            fails.push(format!(
                "upper/{leftover} exists after renaming the pure-upper dir newd away \
                 (no lower has newd: nothing to white out)"
            ));
        }
    }
    m.umount();
    sums.assert_unchanged();

    // Remount: identical, inode numbers and times included.
    let m = env.mount();
    let again = snapshot(&env.mnt);
    fails.extend(
        after
            .diff(&again, Fields::NONE)
            .into_iter()
            .map(|l| format!("after remount: {l}")),
    );
    m.umount();
    sums.assert_unchanged();
    assert_no_failures(&format!("directory rename ({format} format)"), &fails);
}

#[test]
fn dir_rename_lower_only_and_merged_overlay_format() {
    dir_rename_lower_only_and_merged("overlay");
}

#[test]
fn dir_rename_lower_only_and_merged_oci_format() {
    dir_rename_lower_only_and_merged("oci");
}

/// Targets: `empty/` (empty lower dir), `me/` and `me2/` (become
/// merged-empty: every lower entry unlinked through the mount), `wd`
/// (a lower dir removed through the mount: only a whiteout is left),
/// `ne/` (non-empty, lower only), `mne/` (merged, one lower entry of two
/// unlinked), `file` (a lower file). Sources: `src/`, `src2/`, `src3/`
/// (lower only), `mg/` (merged over both lowers).
fn target_fixture() -> Vec<Layer> {
    let l1 = Layer::new("lower1")
        .tagged("mg/p")
        .tagged("me2/r")
        .tagged("mne/k1");
    let l2 = Layer::new("lower2")
        .tagged("src/f")
        .tagged("src/sub/g")
        .tagged("src2/y")
        .tagged("src3/z")
        .tagged("mg/q")
        .dir("empty")
        .tagged("me/a")
        .tagged("me/b")
        .tagged("me2/s")
        .tagged("wd/old")
        .tagged("ne/x")
        .tagged("mne/k2")
        .tagged("file");
    vec![l1, l2]
}

fn dir_rename_targets(format: &'static str) {
    if !require_mount_env() {
        return;
    }
    let lowers = target_fixture();
    let env = Env::new(
        &format!("dir-rename-targets-{format}"),
        &lowers,
        None,
        format,
    );
    let sums = env.checksum();
    let m = env.mount();
    // Make the merged-empty targets and the whited-out dir.
    for f in ["me/a", "me/b", "me2/r", "me2/s", "mne/k2", "wd/old"] {
        fs::remove_file(env.m(f)).unwrap_or_else(|e| panic!("unlink {f}: {e}"));
    }
    fs::remove_dir(env.m("wd")).expect("rmdir wd");
    for d in ["me", "me2"] {
        assert!(list(&env.m(d)).is_empty(), "fixture: {d} merged-empty");
    }
    let mut fails = Vec::new();

    // Failures first: nothing may change.
    let view0 = snapshot(&env.mnt);
    let upper0 = snapshot_full(&env.upper);
    let cases: [(&str, &str, u32, i32); 10] = [
        ("src", "ne", 0, libc::ENOTEMPTY),
        ("src", "mne", 0, libc::ENOTEMPTY),
        ("mg", "ne", 0, libc::ENOTEMPTY),
        ("src", "src/sub/x", 0, libc::EINVAL),
        ("src", "src/sub", 0, libc::EINVAL),
        ("src", "file", 0, libc::ENOTDIR),
        ("file", "empty", 0, libc::EISDIR),
        ("src", "empty", NOREPLACE, libc::EEXIST),
        ("src", "me", NOREPLACE, libc::EEXIST),
        ("src", "nothing", EXCHANGE, libc::ENOENT),
    ];
    for (from, to, flags, want) in cases {
        expect_err(
            &mut fails,
            &format!("renameat2({from} -> {to}, flags {flags})"),
            csys::renameat2(&env.m(from), &env.m(to), flags),
            want,
        );
    }
    fails.extend(
        view0
            .diff(&snapshot(&env.mnt), Fields::NONE)
            .into_iter()
            .map(|l| format!("view changed by failed renames: {l}")),
    );
    fails.extend(
        upper0
            .diff(&snapshot_full(&env.upper), Fields::NONE)
            .into_iter()
            .map(|l| format!("upper changed by failed renames: {l}")),
    );

    // Over an empty lower dir.
    let before = snapshot(&env.mnt);
    expect_ok(
        &mut fails,
        "rename src -> empty",
        fs::rename(env.m("src"), env.m("empty")),
    );
    // Over merged-empty dirs: a lower-only source, then a merged one.
    expect_ok(
        &mut fails,
        "rename src2 -> me",
        fs::rename(env.m("src2"), env.m("me")),
    );
    expect_ok(
        &mut fails,
        "rename mg -> me2",
        fs::rename(env.m("mg"), env.m("me2")),
    );
    // RENAME_NOREPLACE onto a whited-out name (a lower dir was there).
    expect_ok(
        &mut fails,
        "renameat2(src3 -> wd, NOREPLACE) over a whiteout",
        csys::renameat2(&env.m("src3"), &env.m("wd"), NOREPLACE),
    );
    let after = snapshot(&env.mnt);
    for (old, new, want) in [
        ("src", "empty", &["f", "sub"][..]),
        ("src2", "me", &["y"][..]),
        ("mg", "me2", &["p", "q"][..]),
        ("src3", "wd", &["z"][..]),
    ] {
        gone(&mut fails, &env.m(old));
        fails.extend(compare_moved(&before, old, &after, new));
        let got = list_str(&env.m(new));
        if got != want {
            fails.push(format!(
                "{new} lists {got:?} after rename from {old}, expected {want:?} \
                 (the target's lower entries must stay hidden)"
            ));
        }
        fails.extend(check_moved_dir(&env.upper, new, Some(old), format, &after));
        push_err(&mut fails, check_whiteout(&env.upper, old, format));
    }
    fails.extend(after.d_ino_mismatches());
    m.umount();
    sums.assert_unchanged();

    let m = env.mount();
    let again = snapshot(&env.mnt);
    fails.extend(
        after
            .diff(&again, Fields::NONE)
            .into_iter()
            .map(|l| format!("after remount: {l}")),
    );
    m.umount();
    sums.assert_unchanged();
    assert_no_failures(&format!("rename over targets ({format} format)"), &fails);
}

#[test]
fn dir_rename_over_empty_merged_empty_and_bad_targets_overlay_format() {
    dir_rename_targets("overlay");
}

#[test]
fn dir_rename_over_empty_merged_empty_and_bad_targets_oci_format() {
    dir_rename_targets("oci");
}

/// RENAME_EXCHANGE: lower-only dir <-> merged dir, lower dir <-> lower file,
/// lower dir <-> upper-only dir in another parent (which lands where a
/// lower has a dir of that name: that lower must not show through).
#[test]
fn dir_rename_exchange() {
    if !require_mount_env() {
        return;
    }
    for format in ["overlay", "oci"] {
        let l1 = Layer::new("lower1").tagged("M/m1").tagged("C/c1");
        let l2 = Layer::new("lower2")
            .tagged("A/a1")
            .tagged("A/sub/a2")
            .tagged("B/b1")
            .tagged("M/m2")
            .tagged("f")
            .tagged("C/c2");
        let env = Env::new(&format!("exchange-{format}"), &[l1, l2], None, format);
        let sums = env.checksum();
        let m = env.mount();
        fs::create_dir_all(env.m("up/U/inner")).expect("mkdir up/U/inner");
        fs::write(env.m("up/U/u1"), b"upper u1\n").expect("write up/U/u1");
        let before = snapshot(&env.mnt);
        let mut fails = Vec::new();
        let pairs = [("A", "M"), ("B", "f"), ("C", "up/U")];
        for (x, y) in pairs {
            expect_ok(
                &mut fails,
                &format!("renameat2({x} <-> {y}, EXCHANGE)"),
                csys::renameat2(&env.m(x), &env.m(y), EXCHANGE),
            );
        }
        // Every name below the exchanged dirs opens (checked before the
        // snapshot, which would stop at the first failure).
        for d in ["A", "M", "f", "C", "up/U"] {
            fails.extend(unreadable_below(&env.m(d)));
        }
        assert_no_failures(&format!("RENAME_EXCHANGE ({format} format)"), &fails);
        let after = snapshot(&env.mnt);
        for (x, y) in pairs {
            fails.extend(compare_moved(&before, x, &after, y));
            fails.extend(compare_moved(&before, y, &after, x));
        }
        for (name, want) in [
            ("M", &["a1", "sub"][..]),
            ("A", &["m1", "m2"][..]),
            ("f", &["b1"][..]),
            ("up/U", &["c1", "c2"][..]),
            ("C", &["inner", "u1"][..]),
        ] {
            let got = list_str(&env.m(name));
            if got != want {
                fails.push(format!("{name} lists {got:?}, expected {want:?}"));
            }
        }
        for (d, from) in [
            ("A", Some("M")),
            ("M", Some("A")),
            ("f", Some("B")),
            ("C", None),
            ("up/U", Some("C")),
        ] {
            fails.extend(check_moved_dir(&env.upper, d, from, format, &after));
        }
        fails.extend(after.d_ino_mismatches());
        m.umount();
        sums.assert_unchanged();
        let m = env.mount();
        fails.extend(
            after
                .diff(&snapshot(&env.mnt), Fields::NONE)
                .into_iter()
                .map(|l| format!("after remount: {l}")),
        );
        m.umount();
        assert_no_failures(&format!("RENAME_EXCHANGE ({format} format)"), &fails);
    }
}

/// A 10k-file lower tree (100 dirs x 100 files, on a tmpfs lower; the
/// upper on disk) renamed in one rename(2). The time is printed, never
/// asserted.
#[test]
fn dir_rename_of_a_10k_file_lower_tree() {
    if !require_mount_env() {
        return;
    }
    let td = TestDir::new("rename-10k");
    let lower = td.join("lower");
    let tmpfs = mount_tmpfs_sized(&lower, "256m");
    let t0 = Instant::now();
    for d in 0..100 {
        let dir = lower.join(format!("big/d{d:02}"));
        fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..100 {
            let rel = format!("big/d{d:02}/f{f:02}");
            fs::write(dir.join(format!("f{f:02}")), tag("lower", &rel)).expect("write");
        }
    }
    eprintln!("10k tree: created in {:?}", t0.elapsed());
    let upper = td.mkdir("upper");
    let work = td.mkdir("work");
    let mnt = td.mkdir("mnt");
    let sums = checksum_layers(&[&lower]);
    let m = mount_unionfs(&[&lower], Some(&upper), Some(&work), &mnt, &[]);
    let sample = ["big/d00/f00", "big/d42/f17", "big/d99/f99", "big/d50"];
    let inos: Vec<u64> = sample.iter().map(|s| ino(&mnt.join(s))).collect();

    let t = Instant::now();
    let r = fs::rename(mnt.join("big"), mnt.join("big2"));
    let took = t.elapsed();
    eprintln!("10k tree: rename(2) of the lower dir took {took:?} (r = {r:?})");
    r.expect("rename big -> big2 (a 10k-file lower tree)");

    let mut fails = Vec::new();
    gone(&mut fails, &mnt.join("big"));
    let mut files = 0;
    for d in 0..100 {
        let dir = mnt.join(format!("big2/d{d:02}"));
        let names = list_str(&dir);
        if names.len() != 100 {
            fails.push(format!(
                "{} has {} entries, expected 100",
                dir.display(),
                names.len()
            ));
        }
        for f in 0..100 {
            let rel = format!("big/d{d:02}/f{f:02}");
            let p = dir.join(format!("f{f:02}"));
            match fs::read(&p) {
                Ok(c) if c == tag("lower", &rel) => files += 1,
                Ok(c) => fails.push(format!(
                    "{}: content {:?}",
                    p.display(),
                    String::from_utf8_lossy(&c)
                )),
                Err(e) => fails.push(format!("{}: {e}", p.display())),
            }
        }
    }
    if files != 10_000 {
        fails.push(format!("{files} of 10000 files read back correctly"));
    }
    for (s, i) in sample.iter().zip(&inos) {
        let new = mnt.join(s.replacen("big", "big2", 1));
        let now = ino(&new);
        if now != *i {
            fails.push(format!(
                "{}: st_ino {now}, was {i} before the rename",
                new.display()
            ));
        }
    }
    // O(1): the directory alone moved, with a redirect; nothing was copied.
    let after = snapshot(&mnt);
    fails.extend(check_moved_dir(
        &upper,
        "big2",
        Some("big"),
        "overlay",
        &after,
    ));
    match fs::read_dir(upper.join("big2")) {
        Ok(rd) => {
            let n = rd.count();
            if n != 0 {
                fails.push(format!("upper/big2 holds {n} entries: the tree was copied"));
            }
        }
        Err(e) => fails.push(format!("upper/big2: {e}")),
    }
    push_err(&mut fails, check_whiteout(&upper, "big", "overlay"));
    m.umount();
    sums.assert_unchanged();
    tmpfs.umount();
    assert_no_failures("rename of a 10k-file lower tree", &fails);
}

/// Files (and a directory stream) opened before a directory rename keep
/// reading and writing the right object after it.
#[test]
fn open_files_survive_dir_rename() {
    if !require_mount_env() {
        return;
    }
    let l1 = Layer::new("lower1").tagged("d/r").tagged("d/w");
    let l2 = Layer::new("lower2")
        .tagged("d/rw")
        .tagged("d/sub/deep")
        .tagged("d/w");
    let env = Env::new("open-files-dir-rename", &[l1, l2], None, "overlay");
    let sums = env.checksum();
    let m = env.mount();
    let mut fails = Vec::new();
    let r_tag = tag("lower1", "d/r");
    let w_tag = tag("lower1", "d/w");
    let rw_tag = tag("lower2", "d/rw");
    let deep_tag = tag("lower2", "d/sub/deep");
    {
        let fr = open_flags(&env.m("d/r"), libc::O_RDONLY, 0).expect("open d/r");
        let mut fw = open_flags(&env.m("d/w"), libc::O_WRONLY | libc::O_APPEND, 0)
            .expect("open d/w for append");
        let frw = open_flags(&env.m("d/rw"), libc::O_RDWR, 0).expect("open d/rw rdwr");
        let fdeep = open_flags(&env.m("d/sub/deep"), libc::O_RDONLY, 0).expect("open deep");
        let mut ds = DirStream::open(&env.m("d")).expect("opendir d");
        let ino_r = fr.metadata().expect("fstat").ino();

        fs::rename(env.m("d"), env.m("e")).expect("rename d -> e");

        let mut buf = vec![0u8; 4096];
        let n = fr.read_at(&mut buf, 0).expect("pread old fd of d/r");
        if buf[..n] != r_tag[..] {
            fails.push(format!(
                "fd of d/r opened before the rename reads {:?}",
                String::from_utf8_lossy(&buf[..n])
            ));
        }
        // A write through the new name shows through the old read-only fd.
        append(&env.m("e/r"), b"X\n");
        let mut want = r_tag.clone();
        want.extend_from_slice(b"X\n");
        let n = fr.read_at(&mut buf, 0).expect("pread");
        if buf[..n] != want[..] {
            fails.push(format!(
                "fd of d/r opened before the rename reads {:?} after a write through e/r, \
                 expected {:?}",
                String::from_utf8_lossy(&buf[..n]),
                String::from_utf8_lossy(&want)
            ));
        }
        match fr.metadata() {
            Ok(st) if st.ino() == ino_r && st.ino() == ino(&env.m("e/r")) => {}
            other => fails.push(format!(
                "fstat of the old fd of d/r: {:?}, expected st_ino {ino_r} = e/r's",
                other.map(|s| s.ino())
            )),
        }
        // Writes through fds opened before the rename land in the moved file.
        fw.write_all(b"Y\n").expect("write old fd of d/w");
        let mut want = w_tag.clone();
        want.extend_from_slice(b"Y\n");
        if read(&env.m("e/w")) != want {
            fails.push(format!(
                "e/w reads {:?} after a write through the fd opened as d/w",
                String::from_utf8_lossy(&read(&env.m("e/w")))
            ));
        }
        frw.write_at(b"Z", 0).expect("pwrite old fd of d/rw");
        let mut want = rw_tag.clone();
        want[0] = b'Z';
        if read(&env.m("e/rw")) != want {
            fails.push(format!(
                "e/rw reads {:?} after a write through the fd opened as d/rw",
                String::from_utf8_lossy(&read(&env.m("e/rw")))
            ));
        }
        // Unlinked after the rename, still readable through its old fd.
        fs::remove_file(env.m("e/sub/deep")).expect("unlink e/sub/deep");
        let n = fdeep.read_at(&mut buf, 0).expect("pread deep");
        if buf[..n] != deep_tag[..] {
            fails.push(format!(
                "fd of d/sub/deep reads {:?} after rename and unlink",
                String::from_utf8_lossy(&buf[..n])
            ));
        }
        // The directory stream opened before the rename lists the entries.
        let mut names: Vec<String> = Vec::new();
        while let Some(e) = ds.read().expect("readdir old dir stream") {
            names.push(show(&e.name));
        }
        names.sort();
        if names != [".", "..", "r", "rw", "sub", "w"] {
            fails.push(format!(
                "dir stream opened before the rename lists {names:?}"
            ));
        }
    }
    m.umount();
    sums.assert_unchanged();
    assert_no_failures("open files across a directory rename", &fails);
}

/// A renamed dir holding every kind of object, with modes, owners, xattrs,
/// times and hard links, is identical after unmount and remount.
#[test]
fn renamed_dir_survives_remount_identically() {
    if !require_mount_env() {
        return;
    }
    let l1 = Layer::new("lower1")
        .tagged("t/top")
        .mode(0o751)
        .owner(7, 8)
        .xattr("user.x", "1")
        .mtime(1_100_000_000)
        .symlink("t/ln", "../elsewhere")
        .dir("t/d1/d2/d3")
        .tagged("t/d1/d2/d3/leaf");
    let l2 = Layer::new("lower2")
        .tagged("t/low")
        .tagged("t/hl1")
        .link("t/d1/hl2", "t/hl1")
        .fifo("t/fifo")
        .dir("t/d1")
        .mode(0o711)
        .xattr("user.dir", "d1")
        .tagged("t/d1/x");
    let env = Env::new("renamed-dir-remount", &[l1, l2], None, "overlay");
    let sums = env.checksum();
    let m = env.mount();
    let before = snapshot(&env.mnt);
    fs::create_dir(env.m("dest")).expect("mkdir dest");
    fs::rename(env.m("t"), env.m("dest/t2")).expect("rename t -> dest/t2");
    let after = snapshot(&env.mnt);
    let mut fails = compare_moved(&before, "t", &after, "dest/t2");
    m.umount();
    for _ in 0..2 {
        let m = env.mount();
        let again = snapshot(&env.mnt);
        fails.extend(
            after
                .diff(&again, Fields::NONE)
                .into_iter()
                .map(|l| format!("after remount: {l}")),
        );
        gone(&mut fails, &env.m("t"));
        m.umount();
    }
    sums.assert_unchanged();
    assert_no_failures("renamed dir across remounts", &fails);
}

/// A directory moved in from a lower (overlay format: a redirect) keeps its
/// whiteouts when a directory above it becomes opaque: a redirect from the
/// layer root still merges below an opaque directory, so those whiteouts
/// still hide lower entries, now and after a remount. Kernel overlayfs over
/// the same layers, after the same calls, is the reference.
fn redirect_below_new_opaque_dir(format: &'static str) -> Vec<String> {
    let lower = Layer::new("lower")
        .tagged("o/gone")
        .tagged("o/kept")
        .tagged("o/sub/deep")
        .tagged("o/sub/deep2")
        .dir("e");
    let run = |env: &Env| {
        fs::create_dir(env.m("n")).expect("mkdir n");
        fs::rename(env.m("o"), env.m("n/d")).expect("rename o -> n/d");
        fs::remove_file(env.m("n/d/gone")).expect("rm n/d/gone");
        fs::remove_file(env.m("n/d/sub/deep")).expect("rm n/d/sub/deep");
        // `e` is a lower dir, empty: `n` lands over it and must not merge
        // with it, so it becomes opaque.
        fs::rename(env.m("n"), env.m("e")).expect("rename n -> e");
    };
    let mut fails = Vec::new();
    let env = Env::new(
        &format!("redirect-under-opaque-{format}"),
        std::slice::from_ref(&lower),
        None,
        format,
    );
    let sums = env.checksum();
    let m = env.mount();
    run(&env);
    let live = snapshot(&env.mnt);
    m.umount();
    let m = env.mount();
    fails.extend(
        live.diff(&snapshot(&env.mnt), Fields::NONE)
            .into_iter()
            .map(|l| format!("{format}: after remount: {l}")),
    );
    for gone_name in ["e/d/gone", "e/d/sub/deep", "o", "n"] {
        gone(&mut fails, &env.m(gone_name));
    }
    for kept in ["e/d/kept", "e/d/sub/deep2"] {
        if fs::symlink_metadata(env.m(kept)).is_err() {
            fails.push(format!("{format}: {kept} is missing"));
        }
    }
    // Which layer holds what: `e` is opaque in the upper. Overlay format:
    // `e/d` is the moved dir with its redirect, and the upper holds the
    // whiteouts while the kept files stay in the lower only. OCI format:
    // `e/d` is an opaque copy of the tree, holding the kept files.
    push_err(&mut fails, check_opaque(&env.upper, "e", format));
    let upper_has = |rel: &str| fs::symlink_metadata(env.upper.join(rel)).is_ok();
    if format == "overlay" {
        for wh in ["e/d/gone", "e/d/sub/deep"] {
            push_err(&mut fails, check_whiteout(&env.upper, wh, format));
        }
        match csys::lgetxattr(&env.upper.join("e/d"), b"trusted.overlay.redirect") {
            Ok(v) if v == b"/o" => {}
            other => fails.push(format!(
                "upper/e/d: redirect {:?}, expected \"/o\"",
                other.map(show)
            )),
        }
        if upper_has("e/d/kept") {
            fails.push("overlay: upper/e/d/kept exists: the moved dir was copied".into());
        }
    } else {
        push_err(&mut fails, check_opaque(&env.upper, "e/d", format));
        if !upper_has("e/d/kept") || upper_has("e/d/gone") {
            fails.push("oci: upper/e/d is not the copied tree (kept in, gone out)".into());
        }
    }
    m.umount();
    sums.assert_unchanged();
    let kenv = Env::new(
        &format!("redirect-under-opaque-kernel-{format}"),
        &[lower],
        None,
        format,
    );
    let k = kenv.mount_kernel();
    run(&kenv);
    fails.extend(
        snapshot(&kenv.mnt)
            .diff(&live, Fields::VIEW)
            .into_iter()
            .map(|l| format!("{format}: kernel overlayfs vs unionfs: {l}")),
    );
    k.umount();
    fails
}

#[test]
fn redirected_dir_keeps_its_whiteouts_below_a_new_opaque_dir() {
    if !require_mount_env() {
        return;
    }
    let mut fails = redirect_below_new_opaque_dir("overlay");
    fails.extend(redirect_below_new_opaque_dir("oci"));
    assert_no_failures("whiteouts below a new opaque dir", &fails);
}

// ---------------------------------------------------------------------------
// 2. Hard links
// ---------------------------------------------------------------------------

/// lower1: `hl/a`, `hl/b`, `other/c` one inode (3 names); `solo`; lower2:
/// `hl/z` (so `hl/` is merged), `deep/dir/` (lower-only).
fn link_fixture() -> Vec<Layer> {
    let l1 = Layer::new("lower1")
        .tagged("hl/a")
        .mode(0o644)
        .link("hl/b", "hl/a")
        .link("other/c", "hl/a")
        .tagged("solo");
    let l2 = Layer::new("lower2")
        .tagged("hl/z")
        .tagged("deep/dir/x")
        .tagged("solo");
    vec![l1, l2]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    Append,
    Truncate,
    Chmod,
    SetXattr,
    Utimes,
    OpenRdwr,
    RenameInDir,
    RenameAcrossDirs,
}

/// The three names of the lower inode of [`link_fixture`].
const GROUP: [&str; 3] = ["hl/a", "hl/b", "other/c"];

/// Applies `t` through the name `GROUP[via]`; returns the names of the
/// object afterwards, its content and its mode.
fn apply_trigger(env: &Env, t: Trigger, via: usize, content: &[u8]) -> (Vec<String>, Vec<u8>, u32) {
    let name = GROUP[via];
    let b = env.m(name);
    let mut names: Vec<String> = GROUP.iter().map(|s| s.to_string()).collect();
    let mut content = content.to_vec();
    let mut mode = 0o644;
    match t {
        Trigger::Append => {
            let line = format!("appended via {name}\n");
            append(&b, line.as_bytes());
            content.extend_from_slice(line.as_bytes());
        }
        Trigger::Truncate => {
            csys::truncate(&b, 5).expect("truncate");
            content.truncate(5);
        }
        Trigger::Chmod => {
            chmod(&b, 0o600);
            mode = 0o600;
        }
        Trigger::SetXattr => {
            csys::lsetxattr(&b, b"user.t", b"v").expect("setxattr");
        }
        Trigger::Utimes => {
            csys::utimens_nofollow(&b, Some(((1, 0), (2, 0)))).expect("utimes");
        }
        Trigger::OpenRdwr => {
            drop(open_flags(&b, libc::O_RDWR, 0).expect("open rdwr"));
        }
        Trigger::RenameInDir => {
            let to = format!("{name}-renamed");
            fs::rename(&b, env.m(&to)).unwrap_or_else(|e| panic!("rename {name} {to}: {e}"));
            names[via] = to;
        }
        Trigger::RenameAcrossDirs => {
            let to = if name.starts_with("hl/") {
                "other/moved"
            } else {
                "hl/moved"
            };
            fs::rename(&b, env.m(to)).unwrap_or_else(|e| panic!("rename {name} {to}: {e}"));
            names[via] = to.to_string();
        }
    }
    (names, content, mode)
}

#[test]
fn hard_links_survive_copy_up_by_any_name_and_remount() {
    if !require_mount_env() {
        return;
    }
    let triggers = [
        Trigger::Append,
        Trigger::Truncate,
        Trigger::Chmod,
        Trigger::SetXattr,
        Trigger::Utimes,
        Trigger::OpenRdwr,
        Trigger::RenameInDir,
        Trigger::RenameAcrossDirs,
    ];
    let mut fails = Vec::new();
    for (t, via) in triggers.iter().flat_map(|t| [(*t, 1), (*t, 2)]) {
        let env = Env::new(
            &format!("hardlink-{t:?}-{via}"),
            &link_fixture(),
            None,
            "overlay",
        );
        let sums = env.checksum();
        let m = env.mount();
        let ino0 = ino(&env.m("hl/a"));
        let tag0 = tag("lower1", "hl/a");
        let pre = check_links(&env.mnt, "before", &GROUP, ino0, 3, &tag0, Some(0o644));
        assert_no_failures("fixture: lower hard links", &pre);
        let (owned, mut content, mode) = apply_trigger(&env, t, via, &tag0);
        let names: Vec<&str> = owned.iter().map(String::as_str).collect();
        let what = format!("[{t:?} via {}]", GROUP[via]);
        fails.extend(check_links(
            &env.mnt,
            &format!("{what} after"),
            &names,
            ino0,
            3,
            &content,
            Some(mode),
        ));
        if t == Trigger::SetXattr {
            for n in &names {
                match csys::lgetxattr(&env.m(n), b"user.t") {
                    Ok(v) if v == b"v" => {}
                    other => fails.push(format!(
                        "{what}: {n}: user.t = {:?}, expected \"v\"",
                        other.map(show)
                    )),
                }
            }
        }
        // Writes through the other names show through all of them.
        for w in (0..3).filter(|i| *i != via).map(|i| names[i]) {
            let line = format!("written via {w}\n");
            append(&env.m(w), line.as_bytes());
            content.extend_from_slice(line.as_bytes());
            fails.extend(check_links(
                &env.mnt,
                &format!("{what} write via {w}"),
                &names,
                ino0,
                3,
                &content,
                Some(mode),
            ));
        }
        m.umount();
        let m = env.mount();
        fails.extend(check_links(
            &env.mnt,
            &format!("{what} after remount"),
            &names,
            ino0,
            3,
            &content,
            Some(mode),
        ));
        // Unlinking one name: the others count one link fewer.
        fs::remove_file(env.m(names[0])).expect("unlink");
        let rest = &names[1..];
        fails.extend(check_links(
            &env.mnt,
            &format!("{what} after unlink {}", names[0]),
            rest,
            ino0,
            2,
            &content,
            Some(mode),
        ));
        append(&env.m(rest[0]), b"last\n");
        content.extend_from_slice(b"last\n");
        m.umount();
        let m = env.mount();
        fails.extend(check_links(
            &env.mnt,
            &format!("{what} after unlink + remount"),
            rest,
            ino0,
            2,
            &content,
            Some(mode),
        ));
        m.umount();
        sums.assert_unchanged();
    }
    assert_no_failures("hard links across copy-up", &fails);
}

/// link(2) of lower files, renaming and unlinking names, across remounts.
/// A crash while a lower name of a hard-linked object becomes a link of its
/// index entry leaves one of two states on disk; each is made here by hand
/// from the real layout after a copy-up, and the next mount must show the
/// old link count or the new one, never one off:
/// * the link still waits in `WORK/tmp` (`*.place`) and the count reads
///   `NEW;OLD`: the name never got there, so `OLD` is put back;
/// * the name is in place and the count still reads `NEW;OLD`: `NEW` holds,
///   and later link(2) and unlink keep counting from it.
#[test]
fn a_crash_while_a_lower_name_becomes_a_link_keeps_the_link_count() {
    if !require_mount_env() {
        return;
    }
    const COUNT: &[u8] = b"trusted.unionfs.lower_links";
    let mut fails = Vec::new();
    let env = Env::new("hardlink-crash-states", &link_fixture(), None, "overlay");
    let sums = env.checksum();
    let tag0 = tag("lower1", "hl/a");
    let m = env.mount();
    let ino0 = ino(&env.m("hl/a"));
    chmod(&env.m("hl/a"), 0o640);
    m.umount();
    let entry = env.work.join("index").join(ino0.to_string());
    let count =
        |what: &str, fails: &mut Vec<String>, want: &[u8]| match csys::lgetxattr(&entry, COUNT) {
            Ok(v) if v == want => {}
            other => fails.push(format!(
                "{what}: lower_links = {:?}, expected {:?}",
                other.map(show),
                show(want)
            )),
        };
    count("after the copy-up of hl/a", &mut fails, b"2");
    // Every name shows the one object, with `n` links, mode 0640.
    let links = |what: &str, names: &[&str], n: u64| {
        check_links(&env.mnt, what, names, ino0, n, &tag0, Some(0o640))
    };

    // The link never reached hl/a.
    let waiting = env.work.join("tmp").join("#1-1.place");
    fs::rename(env.upper.join("hl/a"), &waiting).expect("move hl/a to tmp");
    csys::lsetxattr(&entry, COUNT, b"2;3").expect("set lower_links");
    let m = env.mount();
    fails.extend(links("crash before placing", &GROUP, 3));
    if waiting.exists() {
        fails.push("the .place link is still in WORK/tmp after mount".into());
    }
    count("crash before placing", &mut fails, b"3");
    if fs::symlink_metadata(env.upper.join("hl/a")).is_ok() {
        fails.push("crash before placing: upper/hl/a exists".into());
    }
    // A rename places the name again, now as a link of the index entry;
    // then the other state.
    fs::rename(env.m("hl/a"), env.m("hl/a2")).expect("rename hl/a hl/a2");
    m.umount();
    count("placed again", &mut fails, b"2");
    csys::lsetxattr(&entry, COUNT, b"2;3").expect("set lower_links");
    let m = env.mount();
    fails.extend(links(
        "crash before settling",
        &["hl/a2", "hl/b", "other/c"],
        3,
    ));
    fs::hard_link(env.m("hl/a2"), env.m("hl/new")).expect("link hl/a2 hl/new");
    let four = ["hl/a2", "hl/b", "other/c", "hl/new"];
    fails.extend(links("crash before settling, link", &four, 4));
    fs::remove_file(env.m("hl/b")).expect("unlink hl/b");
    // The lower name went the way of an upper one: a whiteout in its place.
    push_err(&mut fails, check_whiteout(&env.upper, "hl/b", "overlay"));
    let three = ["hl/a2", "other/c", "hl/new"];
    fails.extend(links("crash before settling, unlink", &three, 3));
    m.umount();
    let m = env.mount();
    fails.extend(links("crash before settling, remount", &three, 3));
    m.umount();
    sums.assert_unchanged();
    assert_no_failures("link counts across a crash in copy-up", &fails);
}

#[test]
fn link_of_lower_files_makes_real_hard_links() {
    if !require_mount_env() {
        return;
    }
    let env = Env::new("link-lower", &link_fixture(), None, "overlay");
    let sums = env.checksum();
    let m = env.mount();
    let mut fails = Vec::new();
    let solo0 = ino(&env.m("solo"));
    let grp0 = ino(&env.m("hl/a"));
    let mut solo_c = tag("lower1", "solo");
    let mut grp_c = tag("lower1", "hl/a");

    // A single-name lower file gets a second name.
    fs::hard_link(env.m("solo"), env.m("solo2")).expect("link solo solo2");
    fails.extend(check_links(
        &env.mnt,
        "link solo solo2",
        &["solo", "solo2"],
        solo0,
        2,
        &solo_c,
        None,
    ));
    append(&env.m("solo2"), b"via solo2\n");
    solo_c.extend_from_slice(b"via solo2\n");
    fails.extend(check_links(
        &env.mnt,
        "write via solo2",
        &["solo", "solo2"],
        solo0,
        2,
        &solo_c,
        None,
    ));
    // Into a lower-only dir of another layer.
    fs::hard_link(env.m("solo"), env.m("deep/dir/solo3")).expect("link into deep/dir");
    let solo_names = ["solo", "solo2", "deep/dir/solo3"];
    fails.extend(check_links(
        &env.mnt,
        "link into deep/dir",
        &solo_names,
        solo0,
        3,
        &solo_c,
        None,
    ));
    // One more name of a lower hard-link group, none of it copied up yet.
    fs::hard_link(env.m("hl/a"), env.m("hl/d")).expect("link hl/a hl/d");
    let grp = ["hl/a", "hl/b", "other/c", "hl/d"];
    fails.extend(check_links(
        &env.mnt,
        "link hl/a hl/d",
        &grp,
        grp0,
        4,
        &grp_c,
        None,
    ));
    append(&env.m("hl/d"), b"via hl/d\n");
    grp_c.extend_from_slice(b"via hl/d\n");
    fails.extend(check_links(
        &env.mnt,
        "write via hl/d",
        &grp,
        grp0,
        4,
        &grp_c,
        None,
    ));
    m.umount();

    let m = env.mount();
    fails.extend(check_links(
        &env.mnt,
        "remount",
        &solo_names,
        solo0,
        3,
        &solo_c,
        None,
    ));
    fails.extend(check_links(
        &env.mnt, "remount", &grp, grp0, 4, &grp_c, None,
    ));
    // Unlink and rename names.
    fs::remove_file(env.m("solo")).expect("unlink solo");
    let solo_names = ["solo2", "deep/dir/solo3"];
    fails.extend(check_links(
        &env.mnt,
        "unlink solo",
        &solo_names,
        solo0,
        2,
        &solo_c,
        None,
    ));
    fs::rename(env.m("hl/b"), env.m("other/b3")).expect("rename hl/b other/b3");
    let grp = ["hl/a", "other/b3", "other/c", "hl/d"];
    fails.extend(check_links(
        &env.mnt,
        "rename hl/b other/b3",
        &grp,
        grp0,
        4,
        &grp_c,
        None,
    ));
    fs::remove_file(env.m("other/c")).expect("unlink other/c");
    let grp = ["hl/a", "other/b3", "hl/d"];
    fails.extend(check_links(
        &env.mnt,
        "unlink other/c",
        &grp,
        grp0,
        3,
        &grp_c,
        None,
    ));
    // rename(2) of one name over another name of the same inode: no-op.
    expect_ok(
        &mut fails,
        "rename hl/a over other/b3 (same inode)",
        fs::rename(env.m("hl/a"), env.m("other/b3")),
    );
    fails.extend(check_links(
        &env.mnt,
        "rename onto own link",
        &grp,
        grp0,
        3,
        &grp_c,
        None,
    ));
    m.umount();

    let m = env.mount();
    fails.extend(check_links(
        &env.mnt,
        "final remount",
        &solo_names,
        solo0,
        2,
        &solo_c,
        None,
    ));
    fails.extend(check_links(
        &env.mnt,
        "final remount",
        &grp,
        grp0,
        3,
        &grp_c,
        None,
    ));
    let view = snapshot(&env.mnt);
    fails.extend(view.d_ino_mismatches());
    m.umount();
    sums.assert_unchanged();
    assert_no_failures("link(2) of lower files", &fails);
}

// ---------------------------------------------------------------------------
// 3. Inode numbers
// ---------------------------------------------------------------------------

/// Every copy-up trigger keeps st_ino (and d_ino); numbers of files and dirs
/// (lower, copied up, or new) survive remount.
#[test]
fn st_ino_unchanged_by_copy_up_and_remount() {
    if !require_mount_env() {
        return;
    }
    let l1 = Layer::new("lower1")
        .tagged("w")
        .tagged("c")
        .tagged("x")
        .tagged("t")
        .tagged("u")
        .tagged("o")
        .tagged("ch")
        .dir("dc")
        .dir("dx")
        .tagged("dn/inner")
        .symlink("sl", "w")
        .fifo("fifo");
    let l2 = Layer::new("lower2")
        .tagged("w")
        .tagged("dn/low")
        .tagged("deep/er/est");
    let env = Env::new("ino-copy-up", &[l1, l2], None, "overlay");
    let sums = env.checksum();
    let m = env.mount();
    let before = snapshot(&env.mnt);
    let mut fails = Vec::new();

    append(&env.m("w"), b"more\n");
    chmod(&env.m("c"), 0o600);
    csys::lsetxattr(&env.m("x"), b"user.new", b"1").expect("setxattr x");
    csys::truncate(&env.m("t"), 0).expect("truncate t");
    csys::utimens_nofollow(&env.m("u"), None).expect("utimes u");
    drop(open_flags(&env.m("o"), libc::O_RDWR, 0).expect("open o rdwr"));
    std::os::unix::fs::lchown(env.m("ch"), Some(5), Some(6)).expect("chown ch");
    chmod(&env.m("dc"), 0o700);
    csys::lsetxattr(&env.m("dx"), b"user.new", b"1").expect("setxattr dx");
    fs::write(env.m("dn/new"), b"new\n").expect("create in dn");
    fs::write(env.m("deep/er/est"), b"rewritten\n").expect("rewrite deep/er/est");
    std::os::unix::fs::lchown(env.m("sl"), Some(9), Some(9)).expect("lchown sl");
    chmod(&env.m("fifo"), 0o600);
    fs::create_dir(env.m("newdir")).expect("mkdir newdir");
    fs::write(env.m("newfile"), b"n\n").expect("create newfile");

    let after = snapshot(&env.mnt);
    for p in [
        "w",
        "c",
        "x",
        "t",
        "u",
        "o",
        "ch",
        "dc",
        "dx",
        "dn",
        "deep",
        "deep/er",
        "deep/er/est",
        "sl",
        "fifo",
    ] {
        if fs::symlink_metadata(env.upper.join(p)).is_err() {
            fails.push(format!("fixture: {p} was not copied up"));
        }
    }
    for (p, n) in &before.nodes {
        match after.get(p) {
            Some(a) if a.ino == n.ino && a.d_ino == n.d_ino => {}
            Some(a) => fails.push(format!(
                "{}: st_ino/d_ino {}/{:?} after copy-up, {}/{:?} before",
                show(p),
                a.ino,
                a.d_ino,
                n.ino,
                n.d_ino
            )),
            None => fails.push(format!("{}: gone after copy-up", show(p))),
        }
    }
    fails.extend(after.d_ino_mismatches());
    m.umount();
    let m = env.mount();
    let again = snapshot(&env.mnt);
    for (p, n) in &after.nodes {
        let Some(a) = again.get(p) else {
            fails.push(format!("{}: gone after remount", show(p)));
            continue;
        };
        if a.ino == n.ino {
            continue;
        }
        let msg = format!(
            "{}: st_ino {} after remount, {} before ({:?})",
            show(p),
            a.ino,
            n.ino,
            n.ftype
        );
        if matches!(n.ftype, FileType::File | FileType::Dir) {
            fails.push(msg);
        } else {
            eprintln!("NOTE (allowed, not a failure): {msg}");
        }
    }
    fails.extend(again.d_ino_mismatches());
    fails.extend(d_ino_mismatches_raw(&env.mnt));
    m.umount();
    sums.assert_unchanged();
    assert_no_failures("st_ino across copy-up and remount", &fails);
}

/// Two lowers on two tmpfs (whose raw inode numbers collide), one lower and
/// the upper on disk: all st_ino in the mount are distinct (hard links
/// aside), st_dev is the mount's, d_ino = st_ino; also after copy-ups, new
/// files, and remount.
#[test]
fn st_ino_unique_across_filesystems() {
    if !require_mount_env() {
        return;
    }
    let td = TestDir::new("ino-unique");
    let t1 = mount_tmpfs(&td.join("tmpfs1"));
    let t2 = mount_tmpfs(&td.join("tmpfs2"));
    let mk = |name: &str, n: usize| {
        let mut l = Layer::new(name).tagged(format!("common/{name}"));
        for i in 0..n {
            l = l.tagged(format!("{name}/f{i}"));
        }
        l.dir(format!("{name}/sub/dir"))
            .tagged(format!("{name}/sub/h1"))
            .link(format!("{name}/h2"), format!("{name}/sub/h1"))
            .symlink(format!("{name}/ln"), "f0")
    };
    let layers = [mk("l1", 30), mk("l2", 30), mk("l3", 30)];
    let dirs = [
        td.join("tmpfs1/l1"),
        td.join("tmpfs2/l2"),
        td.join("disk/l3"),
    ];
    for (l, d) in layers.iter().zip(&dirs) {
        render(l, d, Format::Kernel);
    }
    let up = mk("up", 30);
    let upper = td.join("upper");
    render(&up, &upper, Format::Kernel);
    let work = td.mkdir("work");
    let mnt = td.mkdir("mnt");

    // Raw collisions between the layers: what the test is about.
    let mut raw: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for d in dirs.iter().chain([&upper]) {
        for (p, n) in &snapshot(d).nodes {
            raw.entry(n.ino)
                .or_default()
                .insert(format!("{}/{}", d.display(), show(p)));
        }
    }
    let collisions = raw.values().filter(|v| v.len() > 1).count();
    eprintln!("raw inode numbers shared by entries of different layers: {collisions}");
    if collisions == 0 {
        eprintln!("WARNING: no raw inode collision between the tmpfs lowers; test is weak");
    }

    let lowers: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let sums = checksum_layers(&lowers);
    let mut fails = Vec::new();
    let check = |what: &str, fails: &mut Vec<String>| -> Tree {
        let t = snapshot(&mnt);
        let dev = lstat(&mnt).dev();
        let mut by: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (p, n) in &t.nodes {
            by.entry(n.ino).or_default().push(show(p));
            let m = lstat(&join(&mnt, p));
            if m.dev() != dev {
                fails.push(format!(
                    "{what}: {}: st_dev {} != mount's {dev}",
                    show(p),
                    m.dev()
                ));
            }
        }
        for (i, mut ps) in by {
            // The only names that may share a number: one layer's h2/sub/h1.
            ps.sort();
            let layer = ps[0].split('/').next().unwrap_or("").to_string();
            let is_group = ps == [format!("{layer}/h2"), format!("{layer}/sub/h1")];
            if ps.len() > 1 && !is_group {
                fails.push(format!("{what}: st_ino {i} shared by {ps:?}"));
            }
        }
        fails.extend(
            t.d_ino_mismatches()
                .into_iter()
                .map(|l| format!("{what}: {l}")),
        );
        t
    };
    let m = mount_unionfs(&lowers, Some(&upper), Some(&work), &mnt, &[]);
    let first = check("fresh mount", &mut fails);
    for l in ["l1", "l2", "l3"] {
        for i in 0..10 {
            append(&mnt.join(format!("{l}/f{i}")), b"+\n");
        }
        append(&mnt.join(format!("{l}/h2")), b"+\n");
        chmod(&mnt.join(format!("{l}/sub/dir")), 0o700);
        fs::write(mnt.join(format!("{l}/new")), b"new\n").expect("create");
        fs::create_dir(mnt.join(format!("{l}/newdir"))).expect("mkdir");
    }
    let second = check("after copy-ups", &mut fails);
    for (p, n) in &first.nodes {
        match second.get(p) {
            Some(s) if s.ino == n.ino => {}
            other => fails.push(format!(
                "{}: st_ino {:?} after copy-up, {} before",
                show(p),
                other.map(|s| s.ino),
                n.ino
            )),
        }
    }
    fails.extend(d_ino_mismatches_raw(&mnt));
    m.umount();
    let m = mount_unionfs(&lowers, Some(&upper), Some(&work), &mnt, &[]);
    let third = check("after remount", &mut fails);
    for (p, n) in &second.nodes {
        match third.get(p) {
            Some(s) if s.ino == n.ino => {}
            Some(s) if n.ftype == FileType::Symlink => eprintln!(
                "NOTE (allowed): symlink {} st_ino {} after remount, {} before",
                show(p),
                s.ino,
                n.ino
            ),
            other => fails.push(format!(
                "{}: st_ino {:?} after remount, {} before",
                show(p),
                other.map(|s| s.ino),
                n.ino
            )),
        }
    }
    m.umount();
    sums.assert_unchanged();
    drop(t2);
    drop(t1);
    assert_no_failures("st_ino unique across filesystems", &fails);
}

/// Directory link counts: merged dirs report 1 (as kernel overlayfs does),
/// others 1 or their exact count, so `find` (which trusts st_nlink to skip
/// leaves) sees every entry; also after changes.
#[test]
fn dir_nlink_and_find_see_every_entry() {
    if !require_mount_env() {
        return;
    }
    let l1 = Layer::new("lower1")
        .dir("m1/a/aa")
        .dir("m1/b")
        .tagged("m1/f1")
        .dir("lo1/x/xx")
        .dir("lo1/y")
        .dir("lo1/z")
        .tagged("lo1/file")
        .opaque("op")
        .dir("op/only1");
    let l2 = Layer::new("lower2")
        .dir("m1/c/cc/ccc")
        .tagged("m1/f2")
        .dir("lo2/p/q/r/s")
        .dir("lo2/p/q2")
        .dir("op/hidden2/deeper");
    let up = Layer::new("upper")
        .dir("up/u1/uu")
        .dir("up/u2")
        .dir("m1/fromup");
    let env = Env::new("dir-nlink-find", &[l1, l2], Some(&up), "overlay");
    let sums = env.checksum();
    let m = env.mount();
    let mut fails = Vec::new();
    let check = |what: &str, merged: &[&str], fails: &mut Vec<String>| {
        let t = snapshot(&env.mnt);
        for (p, n) in &t.nodes {
            if n.ftype != FileType::Dir {
                continue;
            }
            let subdirs = t
                .children(p)
                .iter()
                .filter(|c| {
                    let mut cp = p.clone();
                    if !cp.is_empty() {
                        cp.push(b'/');
                    }
                    cp.extend_from_slice(c);
                    t.get(&cp).map(|x| x.ftype) == Some(FileType::Dir)
                })
                .count() as u64;
            let name = show(p);
            if merged.contains(&name.as_str()) {
                if n.nlink != 1 {
                    fails.push(format!(
                        "{what}: merged dir {name}: st_nlink {}, expected 1 (as overlayfs)",
                        n.nlink
                    ));
                }
            } else if n.nlink != 1 && n.nlink != 2 + subdirs {
                fails.push(format!(
                    "{what}: dir {name}: st_nlink {} but it has {subdirs} subdirs \
                     (must be 1 or {}; a wrong count makes find skip entries)",
                    n.nlink,
                    2 + subdirs
                ));
            }
        }
        let dirs = t
            .nodes
            .values()
            .filter(|n| n.ftype == FileType::Dir)
            .count();
        for (args, want) in [("", t.nodes.len()), ("-type d", dirs)] {
            let out = sh(&format!("find {} {args} | wc -l", env.mnt.display()));
            let got: usize = out.stdout.trim().parse().unwrap_or(usize::MAX);
            if !out.success() || got != want {
                fails.push(format!(
                    "{what}: `find MNT {args} | wc -l` = {got}, expected {want}: {out}"
                ));
            }
        }
        // du walks the tree too.
        let out = sh(&format!("du -a {} | wc -l", env.mnt.display()));
        let got: usize = out.stdout.trim().parse().unwrap_or(usize::MAX);
        if got != t.nodes.len() {
            fails.push(format!(
                "{what}: `du -a | wc -l` = {got}, expected {}",
                t.nodes.len()
            ));
        }
    };
    check("fresh mount", &["", "m1"], &mut fails);
    fs::create_dir(env.m("m1/new")).expect("mkdir m1/new");
    fs::create_dir(env.m("lo1/x/new")).expect("mkdir lo1/x/new");
    fs::remove_dir(env.m("lo1/y")).expect("rmdir lo1/y");
    fs::rename(env.m("lo2"), env.m("lo2r")).expect("rename lo2 lo2r");
    fs::rename(env.m("m1/c"), env.m("up/c")).expect("rename m1/c up/c");
    check("after changes", &["", "m1", "lo1", "lo1/x"], &mut fails);
    m.umount();
    let m = env.mount();
    check("after remount", &["", "m1", "lo1", "lo1/x"], &mut fails);
    m.umount();
    sums.assert_unchanged();
    assert_no_failures("directory link counts and find", &fails);
}

// ---------------------------------------------------------------------------
// 4. Archives
// ---------------------------------------------------------------------------

/// Hard-link groups in each of 3 lowers, one of them with a name shadowed
/// by a higher layer, and one spanning directories.
fn archive_fixture() -> Vec<Layer> {
    let l1 = Layer::new("lower1")
        .tagged("g1a")
        .link("d1/g1b", "g1a")
        .tagged("s2")
        .tagged("solo1")
        .tagged("mergedd/x");
    let l2 = Layer::new("lower2")
        .tagged("g2/x")
        .link("g2/y", "g2/x")
        .link("g2/sub/z", "g2/x")
        .tagged("plain");
    let l3 = Layer::new("lower3")
        .tagged("g3a")
        .link("g3b", "g3a")
        .tagged("s1")
        .link("s2", "s1")
        .tagged("mergedd/y");
    vec![l1, l2, l3]
}

/// tar and rsync -aH of the mount (into fresh dirs); the copies' hard-link
/// groups and contents.
fn archive_copies(env: &Env, what: &str, want: &Groups, fails: &mut Vec<String>) {
    let view = snapshot(&env.mnt);
    let got = groups_of(&view);
    if &got != want {
        fails.push(format!(
            "{what}: the mount's hard-link groups are {got:?}, expected {want:?}"
        ));
    }
    let n = fails.len();
    let tar_dest = env.td.mkdir(format!("tar-{what}").replace(' ', "_"));
    let out = sh(&format!(
        "tar -cf - -C {} . | tar -xf - -C {}",
        env.mnt.display(),
        tar_dest.display()
    ));
    let rsync_dest = env.td.mkdir(format!("rsync-{what}").replace(' ', "_"));
    let out2 = sh(&format!(
        "rsync -aH {}/ {}/",
        env.mnt.display(),
        rsync_dest.display()
    ));
    for (tool, o, dest) in [("tar", out, tar_dest), ("rsync -aH", out2, rsync_dest)] {
        if !o.success() || !o.stderr.trim().is_empty() {
            fails.push(format!("{what}: {tool}: {o}"));
        }
        let copy = snapshot(&dest);
        let g = groups_of(&copy);
        if &g != want {
            fails.push(format!(
                "{what}: {tool} copy has hard-link groups {g:?}, expected {want:?}"
            ));
        }
        let ignore = Fields::INO
            | Fields::NLINK
            | Fields::TIMES
            | Fields::DIR_SIZE
            | Fields::XATTRS
            | Fields::OWNER;
        fails.extend(
            view.diff(&copy, ignore)
                .into_iter()
                .map(|l| format!("{what}: {tool} copy: {l}")),
        );
    }
    if fails.len() == n {
        eprintln!(
            "{what}: tar and rsync -aH copies keep {} hard-link groups",
            want.len()
        );
    }
}

#[test]
fn tar_and_rsync_keep_hard_link_groups() {
    if !require_mount_env() {
        return;
    }
    let layers = archive_fixture();
    let env = Env::new("archive", &layers, None, "overlay");
    let want0 = expected_groups(&layers, &env.lowers);
    assert_eq!(
        want0,
        groups(&[
            &["d1/g1b", "g1a"],
            &["g2/sub/z", "g2/x", "g2/y"],
            &["g3a", "g3b"]
        ]),
        "fixture: expected groups"
    );
    let sums = env.checksum();
    let m = env.mount();
    let mut fails = Vec::new();
    archive_copies(&env, "before copy-up", &want0, &mut fails);
    append(&env.m("g1a"), b"more\n");
    chmod(&env.m("g2/y"), 0o600);
    fs::rename(env.m("g3a"), env.m("d1/g3a_moved")).expect("rename g3a");
    fs::hard_link(env.m("solo1"), env.m("solo1_link")).expect("link solo1");
    fs::remove_file(env.m("g2/sub/z")).expect("unlink g2/sub/z");
    let want1 = groups(&[
        &["d1/g1b", "g1a"],
        &["g2/x", "g2/y"],
        &["d1/g3a_moved", "g3b"],
        &["solo1", "solo1_link"],
    ]);
    archive_copies(&env, "after copy-ups", &want1, &mut fails);
    m.umount();
    let m = env.mount();
    archive_copies(&env, "after remount", &want1, &mut fails);
    m.umount();
    sums.assert_unchanged();
    assert_no_failures("archives of the mount", &fails);
}

// ---------------------------------------------------------------------------
// 5. Inode numbers of every entry of a 3-lower tree
// ---------------------------------------------------------------------------

fn three_lower_tree() -> Vec<Layer> {
    let l1 = Layer::new("lower1")
        .tagged("a")
        .tagged("d/x")
        .symlink("d/ln", "x")
        .symlink("lnk", "a")
        .tagged("hl1")
        .link("hl2", "hl1")
        .tagged("dir1/sub/f")
        .tagged("m/top");
    let l2 = Layer::new("lower2")
        .tagged("a")
        .tagged("m/mid")
        .tagged("g/p")
        .link("q/r", "g/p")
        .tagged("b")
        .symlink("ln2", "nowhere")
        .tagged("dir2/deep/deeper/f2");
    let l3 = Layer::new("lower3")
        .tagged("m/bot")
        .tagged("c")
        .tagged("d/y")
        .fifo("pipe")
        .dir("m/emptydir");
    vec![l1, l2, l3]
}

type InoMap = BTreeMap<String, (FileType, u64, Option<u64>)>;

fn ino_map(t: &Tree) -> InoMap {
    t.nodes
        .iter()
        .map(|(p, n)| (show(p), (n.ftype, n.ino, n.d_ino)))
        .collect()
}

#[test]
fn every_entry_keeps_its_number_through_full_copy_up_and_remount() {
    if !require_mount_env() {
        return;
    }
    let layers = three_lower_tree();
    let env = Env::new("ino-3-lowers", &layers, None, "overlay");
    let sums = env.checksum();
    let m = env.mount();
    let t0 = snapshot(&env.mnt);
    let rec0 = ino_map(&t0);
    let mut fails = Vec::new();
    fails.extend(t0.d_ino_mismatches());
    // Distinct numbers, hard links aside.
    let want_groups = expected_groups(&layers, &env.lowers);
    let mut by: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for (p, (_, i, _)) in &rec0 {
        by.entry(*i).or_default().insert(p.clone());
    }
    let shared: Groups = by.into_values().filter(|g| g.len() > 1).collect();
    if shared != want_groups {
        fails.push(format!(
            "names sharing an st_ino: {shared:?}, expected the hard links {want_groups:?}"
        ));
    }

    // Copy up everything, parents first.
    for (p, n) in &t0.nodes {
        let path = join(&env.mnt, p);
        match n.ftype {
            _ if p.is_empty() => {}
            FileType::File => append(&path, b"+\n"),
            FileType::Dir | FileType::Fifo => chmod(&path, n.mode),
            FileType::Symlink => {
                std::os::unix::fs::lchown(&path, Some(n.uid), Some(n.gid)).expect("lchown")
            }
            _ => {}
        }
    }
    // Each entry has its upper copy: in the upper tree, or, for a further
    // name of a hard-linked file, in the index entry all names share
    // (WORK/index/<st_ino>, as overlayfs index=on).
    for (p, (_, i, _)) in rec0.iter().filter(|(p, _)| p.as_str() != ".") {
        let in_upper = fs::symlink_metadata(env.upper.join(p)).is_ok();
        let linked = want_groups.iter().any(|g| g.contains(p));
        let in_index = linked && fs::symlink_metadata(env.work.join(format!("index/{i}"))).is_ok();
        if !in_upper && !in_index {
            fails.push(format!("{p} has no upper copy after copy-up of everything"));
        }
    }
    let t1 = snapshot(&env.mnt);
    let rec1 = ino_map(&t1);
    for (p, v) in &rec0 {
        if rec1.get(p) != Some(v) {
            fails.push(format!(
                "{p}: (type, st_ino, d_ino) {:?} after copy-up, {v:?} before",
                rec1.get(p)
            ));
        }
    }
    m.umount();
    let m = env.mount();
    let rec2 = ino_map(&snapshot(&env.mnt));
    let mut notes = Vec::new();
    for (p, v) in &rec0 {
        if rec2.get(p) == Some(v) {
            continue;
        }
        let msg = format!("{p}: {:?} after remount, {v:?} before", rec2.get(p));
        if matches!(v.0, FileType::File | FileType::Dir) {
            fails.push(msg);
        } else {
            notes.push(msg);
        }
    }
    if notes.is_empty() {
        eprintln!("symlinks and the fifo kept their numbers across remount too");
    } else {
        eprintln!(
            "NOTE (allowed): special entries renumbered by remount:\n  {}",
            notes.join("\n  ")
        );
    }
    fails.extend(d_ino_mismatches_raw(&env.mnt));
    m.umount();
    sums.assert_unchanged();
    assert_no_failures("inode numbers of every entry", &fails);
}

// ---------------------------------------------------------------------------
// 6. Kernel overlayfs comparison
// ---------------------------------------------------------------------------

fn kernel_cmp_fixture() -> Vec<Layer> {
    let l1 = Layer::new("lower1")
        .tagged("mg/top1")
        .tagged("mg/sub/s1")
        .tagged("M/m1")
        .tagged("me2/r")
        .tagged("hl/a")
        .link("hl/b", "hl/a")
        .link("other/c", "hl/a")
        .tagged("solo");
    let l2 = Layer::new("lower2")
        .tagged("mg/low2")
        .mode(0o640)
        .tagged("mg/sub/s2")
        .tagged("lo/a")
        .tagged("lo/b/c")
        .symlink("lo/ln", "a")
        .tagged("lo/h1")
        .link("lo/h2", "lo/h1")
        .dir("dst")
        .dir("empty")
        .tagged("src/f")
        .tagged("src/sub/g")
        .tagged("me/a")
        .tagged("me/b")
        .tagged("me2/s")
        .tagged("ne/x")
        .tagged("A/a1")
        .tagged("M/m2")
        .tagged("hl/z")
        .tagged("file")
        .tagged("deep/dir/x");
    vec![l1, l2]
}

/// Which operations a kernel comparison runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CmpOps {
    DirRenames,
    HardLinks,
}

/// The same operations on any mount; returns each one's outcome.
fn kernel_cmp_ops(mnt: &Path, which: CmpOps) -> Vec<String> {
    let p = |r: &str| mnt.join(r);
    let res = |r: io::Result<()>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => errno_name(e.raw_os_error().unwrap_or(-1)),
    };
    let mut log = Vec::new();
    let mut step = |what: &str, r: io::Result<()>| log.push(format!("{what}: {}", res(r)));
    let appended = |path: PathBuf, data: &[u8]| {
        open_flags(&path, libc::O_WRONLY | libc::O_APPEND, 0).and_then(|mut f| f.write_all(data))
    };
    let chmodded =
        |path: PathBuf, mode: u32| fs::set_permissions(path, fs::Permissions::from_mode(mode));
    match which {
        CmpOps::DirRenames => {
            step("rename lo dst/lo2", fs::rename(p("lo"), p("dst/lo2")));
            step(
                "rename mg mg2",
                csys::renameat2(&p("mg"), &p("mg2"), NOREPLACE),
            );
            step("rename src empty", fs::rename(p("src"), p("empty")));
            step("unlink me/a", fs::remove_file(p("me/a")));
            step("unlink me/b", fs::remove_file(p("me/b")));
            step("unlink me2/r", fs::remove_file(p("me2/r")));
            step("unlink me2/s", fs::remove_file(p("me2/s")));
            step("rename mg2 me", fs::rename(p("mg2"), p("me")));
            step("rename dst me2", fs::rename(p("dst"), p("me2")));
            step("rename empty ne", fs::rename(p("empty"), p("ne")));
            step("rename me file", fs::rename(p("me"), p("file")));
            step("rename me me/sub/x", fs::rename(p("me"), p("me/sub/x")));
            step("exchange A M", csys::renameat2(&p("A"), &p("M"), EXCHANGE));
            step("rename me2/lo2 lo3", fs::rename(p("me2/lo2"), p("lo3")));
            step("append lo3/h1", appended(p("lo3/h1"), b"via lo3/h1\n"));
        }
        CmpOps::HardLinks => {
            step("append hl/b", appended(p("hl/b"), b"via hl/b\n"));
            step("chmod other/c", chmodded(p("other/c"), 0o600));
            step("rename hl/a hl/a2", fs::rename(p("hl/a"), p("hl/a2")));
            step("link solo solo2", fs::hard_link(p("solo"), p("solo2")));
            step(
                "link solo deep/dir/solo3",
                fs::hard_link(p("solo"), p("deep/dir/solo3")),
            );
            step("link hl/a2 hl/d", fs::hard_link(p("hl/a2"), p("hl/d")));
            step("unlink other/c", fs::remove_file(p("other/c")));
            step("append solo2", appended(p("solo2"), b"via solo2\n"));
            step("rename lo/h2 lo/h3", fs::rename(p("lo/h2"), p("lo/h3")));
            step("unlink solo", fs::remove_file(p("solo")));
        }
    }
    log
}

/// Compares the two views: names, types, modes, contents, symlink targets,
/// user xattrs and hard-link groups must match; link-count differences are
/// printed (kernel overlayfs is the reference, but may count differently).
fn compare_with_kernel(what: &str, ours: &Tree, kernel: &Tree, fails: &mut Vec<String>) {
    let ignore = Fields::VIEW | Fields::NLINK | Fields::CTIME;
    let ours_z = dir_times_zeroed(ours);
    let kernel_z = dir_times_zeroed(kernel);
    fails.extend(
        ours_z
            .diff(&kernel_z, ignore)
            .into_iter()
            .map(|l| format!("{what}: unionfs vs kernel overlayfs: {l}")),
    );
    // unionfs must count every name (the fixture shadows no name of a
    // hard-linked lower file, so the visible names are all of them).
    fails.extend(
        nlink_not_name_count(ours)
            .into_iter()
            .map(|l| format!("{what}: unionfs: {l}")),
    );
    let (g1, g2) = (groups_of(ours), groups_of(kernel));
    if g1 != g2 {
        fails.push(format!(
            "{what}: hard-link groups: unionfs {g1:?}, kernel overlayfs {g2:?}"
        ));
    }
    let all_but_nlink = Fields::INO
        | Fields::TIMES
        | Fields::DIR_SIZE
        | Fields::XATTRS
        | Fields::OWNER
        | Fields::MODE
        | Fields::RDEV;
    let nl: Vec<String> = ours
        .diff(kernel, all_but_nlink)
        .into_iter()
        .filter(|l| l.contains(": nlink "))
        .collect();
    if nl.is_empty() {
        eprintln!("{what}: link counts equal to kernel overlayfs's");
    } else {
        eprintln!(
            "{what}: link counts differing from kernel overlayfs (left unionfs, right \
             kernel; not a failure):\n  {}",
            nl.join("\n  ")
        );
    }
}

fn kernel_comparison(which: CmpOps) {
    if !require_kernel_overlay() {
        return;
    }
    let layers = kernel_cmp_fixture();
    let ours = Env::new(&format!("kcmp-{which:?}-unionfs"), &layers, None, "overlay");
    let kern = Env::new(&format!("kcmp-{which:?}-kernel"), &layers, None, "overlay");
    let sums = ours.checksum();
    let ksums = kern.checksum();
    let what = format!("unionfs vs kernel overlayfs ({which:?})");
    let mut fails = Vec::new();

    let m = ours.mount();
    let k = kern.mount_kernel();
    compare_with_kernel(
        "fresh mounts",
        &snapshot(&ours.mnt),
        &snapshot(&kern.mnt),
        &mut fails,
    );
    let log_ours = kernel_cmp_ops(&ours.mnt, which);
    let log_kern = kernel_cmp_ops(&kern.mnt, which);
    for (a, b) in log_ours.iter().zip(&log_kern) {
        if a != b {
            fails.push(format!("outcome: unionfs `{a}`, kernel overlayfs `{b}`"));
        }
    }
    fails.extend(
        unreadable_below(&ours.mnt)
            .into_iter()
            .map(|l| format!("unionfs after the operations: {l}")),
    );
    assert_no_failures(&what, &fails);
    let (t_ours, t_kern) = (snapshot(&ours.mnt), snapshot(&kern.mnt));
    compare_with_kernel("after the operations", &t_ours, &t_kern, &mut fails);
    // Spot checks of what both must show.
    let spots: &[(&str, &[&str])] = match which {
        CmpOps::DirRenames => &[
            ("me", &["low2", "sub", "top1"]),
            ("me2", &[]),
            ("lo3", &["a", "b", "h1", "h2", "ln"]),
            ("M", &["a1"]),
            ("A", &["m1", "m2"]),
        ],
        CmpOps::HardLinks => &[
            ("hl", &["a2", "b", "d", "z"]),
            ("other", &[]),
            ("lo", &["a", "b", "h1", "h3", "ln"]),
        ],
    };
    for (dir, want) in spots {
        let got = list_str(&ours.m(dir));
        if got != *want {
            fails.push(format!("unionfs: {dir} lists {got:?}, expected {want:?}"));
        }
    }
    m.umount();
    k.umount();
    sums.assert_unchanged();
    ksums.assert_unchanged();

    let m = ours.mount();
    let k = kern.mount_kernel();
    let (r_ours, r_kern) = (snapshot(&ours.mnt), snapshot(&kern.mnt));
    compare_with_kernel("after remount", &r_ours, &r_kern, &mut fails);
    fails.extend(
        t_ours
            .diff(&r_ours, Fields::NONE)
            .into_iter()
            .map(|l| format!("unionfs after remount: {l}")),
    );
    m.umount();
    k.umount();
    sums.assert_unchanged();
    ksums.assert_unchanged();
    assert_no_failures(&what, &fails);
}

#[test]
fn same_view_as_kernel_overlayfs_after_dir_renames() {
    kernel_comparison(CmpOps::DirRenames);
}

#[test]
fn same_view_as_kernel_overlayfs_after_hard_link_operations() {
    kernel_comparison(CmpOps::HardLinks);
}
