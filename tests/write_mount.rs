//! Writable unions through a real FUSE mount (docs/design.md §2, §3, §5).
//!
//! Every tree-changing operation over lower-only, upper-only and copied-up
//! objects; whiteouts and opaque dirs in both upper formats; copy-up of every
//! file type with its metadata; sparse and racing copy-ups; ownership and
//! permissions; forgery of markers; statfs; the work dir; and compatibility
//! of the upper with kernel overlayfs and with OCI image layers.
//!
//! Each test checks three things: the merged view (through the mount), which
//! layer holds the bytes afterwards (the upper is read directly, beside the
//! mount), and that every lower is identical afterwards (a full snapshot,
//! xattrs, modes, owners and times included, taken before mounting and
//! compared after unmounting). Fixture files contain the name of the layer
//! they sit in (`tag`), so a read shows which layer served it.
//!
//! Sub-checks are collected ([`Checks`]) so that a failing test lists every
//! deviation at once instead of stopping at the first.

mod common;

use common::sys::Time;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{Debug, Display};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{
    DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const OVERLAY: &str = "overlay";
const OCI: &str = "oci";
const L1: &str = "lower1";
const L2: &str = "lower2";

// ---------------------------------------------------------------------------
// Collected checks
// ---------------------------------------------------------------------------

/// Failed sub-checks of one test, reported together by [`Checks::done`].
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn fail(&mut self, msg: impl Into<String>) {
        self.0.push(msg.into());
    }

    /// Records the error of a `Result<(), String>` check.
    fn r(&mut self, r: Result<(), String>) {
        if let Err(e) = r {
            self.0.push(e);
        }
    }

    fn t(&mut self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            self.0.push(msg());
        }
    }

    fn eq<T: PartialEq + Debug>(&mut self, what: impl Display, got: T, want: T) {
        if got != want {
            self.0
                .push(format!("{what}: got {got:?}, expected {want:?}"));
        }
    }

    fn errno<T: Debug>(&mut self, what: impl Display, r: io::Result<T>, want: i32) {
        if let Err(e) = expect_errno(r, want) {
            self.0.push(format!("{what}: {e}"));
        }
    }

    /// The value of a syscall that must succeed; records the error otherwise.
    fn ok<T>(&mut self, what: impl Display, r: io::Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(format!("{what}: unexpected error {e}"));
                None
            }
        }
    }

    fn done(self, what: &str) {
        assert_no_failures(what, &self.0);
    }
}

// ---------------------------------------------------------------------------
// Small file helpers
// ---------------------------------------------------------------------------

fn lst(p: &Path) -> io::Result<fs::Metadata> {
    fs::symlink_metadata(p)
}

fn exists(p: &Path) -> bool {
    lst(p).is_ok()
}

/// The bytes of a regular file (never through a symlink).
fn rd(p: &Path) -> io::Result<Vec<u8>> {
    let mut f = open_flags(p, libc::O_RDONLY, 0)?;
    let mut v = Vec::new();
    f.read_to_end(&mut v)?;
    Ok(v)
}

fn s(b: &[u8]) -> String {
    let mut t = String::from_utf8_lossy(b).into_owned();
    if t.len() > 120 {
        let cut = t.char_indices().nth(120).map_or(t.len(), |(i, _)| i);
        t.truncate(cut);
        t.push_str("...");
    }
    t
}

/// What sits at `p`, in words (for messages).
fn describe(p: &Path) -> String {
    match lst(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => "nothing".to_string(),
        Err(e) => format!("<lstat error {e}>"),
        Ok(m) => {
            let ft = FileType::of(m.file_type());
            match ft {
                FileType::File => format!(
                    "file {:?} (mode {:o})",
                    s(&rd(p).unwrap_or_default()),
                    m.mode() & 0o7777
                ),
                FileType::Symlink => format!(
                    "symlink -> {:?}",
                    fs::read_link(p).map(|t| t.display().to_string())
                ),
                FileType::CharDev if m.rdev() == 0 => "a whiteout (char 0/0)".to_string(),
                other => format!(
                    "{other:?} (mode {:o}, rdev {})",
                    m.mode() & 0o7777,
                    m.rdev()
                ),
            }
        }
    }
}

/// `rel` with `.wh.` put before its last component.
fn wh_rel(rel: &str) -> String {
    let (parent, name) = split_parent(rel.as_bytes());
    let mut v = parent.to_vec();
    if !v.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(b".wh.");
    v.extend_from_slice(name);
    String::from_utf8(v).expect("ascii")
}

fn umask() -> u32 {
    let st = fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = st
        .lines()
        .find(|l| l.starts_with("Umask:"))
        .expect("Umask line");
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).expect("octal umask")
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn perm(mode: u32) -> fs::Permissions {
    fs::Permissions::from_mode(mode)
}

fn write_at(p: &Path, off: u64, data: &[u8]) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(p)?;
    f.write_all_at(data, off)
}

fn append(p: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().append(true).open(p)?;
    f.write_all(data)
}

/// Every path (relative, `/`-separated) below `root`, with its lstat.
fn walk(root: &Path) -> BTreeMap<String, fs::Metadata> {
    let mut out = BTreeMap::new();
    let mut todo = vec![String::new()];
    while let Some(rel) = todo.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display())) {
            let e = e.expect("dirent");
            let name = e.file_name().to_string_lossy().into_owned();
            let crel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let m = lst(&root.join(&crel)).expect("lstat");
            if m.is_dir() {
                todo.push(crel.clone());
            }
            out.insert(crel, m);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The fixture: lowers rendered, upper empty, mounted
// ---------------------------------------------------------------------------

/// A mounted union over freshly rendered lowers and an empty upper, with a
/// snapshot of the lowers to prove them unchanged at the end.
struct Fx {
    t: TestDir,
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    format: &'static str,
    lowers_before: Vec<Tree>,
    mount: Option<Mount>,
}

impl Fx {
    fn new(name: &str, layers: &[Layer], format: &'static str) -> Fx {
        Fx::with(name, layers, format, |_| {})
    }

    /// Like [`Fx::new`], running `prep` on the rendered lowers before they
    /// are snapshotted and mounted (for what the layer DSL cannot express).
    fn with(
        name: &str,
        layers: &[Layer],
        format: &'static str,
        prep: impl FnOnce(&[PathBuf]),
    ) -> Fx {
        let t = TestDir::new(name);
        let lowers = render_stack(layers, &t.join("lowers"), Format::Kernel);
        prep(&lowers);
        let upper = t.mkdir("upper");
        let work = t.join("work");
        let mnt = t.mkdir("mnt");
        let lowers_before = lowers_snapshot(&lowers);
        let mount = mount_unionfs(
            &as_paths(&lowers),
            Some(&upper),
            Some(&work),
            &mnt,
            &["--format", format],
        );
        Fx {
            t,
            lowers,
            upper,
            work,
            mnt,
            format,
            lowers_before,
            mount: Some(mount),
        }
    }

    /// Path through the mount.
    fn m(&self, rel: &str) -> PathBuf {
        join(&self.mnt, rel)
    }

    /// Path in the upper dir (read directly).
    fn u(&self, rel: &str) -> PathBuf {
        join(&self.upper, rel)
    }

    /// Path in lower `i` (0 is the top lower).
    fn l(&self, i: usize, rel: &str) -> PathBuf {
        join(&self.lowers[i], rel)
    }

    /// Unmounts now (the dirs stay for inspection; `finish` still checks).
    fn unmount(&mut self) {
        if let Some(m) = self.mount.take() {
            m.umount();
        }
    }

    /// Unmounts, checks the lowers are unchanged and the work dir holds no
    /// temporaries, then reports every failed check.
    fn finish(mut self, mut c: Checks, what: &str) {
        if let Some(m) = self.mount.take() {
            m.umount();
        }
        lowers_unchanged(&self.lowers_before, &mut c);
        let tmp = self.work.join("tmp");
        if tmp.is_dir() {
            let left = list_str(&tmp);
            c.t(left.is_empty(), || {
                format!(
                    "temporaries left in {} after unmount: {left:?}",
                    tmp.display()
                )
            });
        }
        c.done(what);
    }

    // -- the merged view ----------------------------------------------------

    fn view_file(&self, rel: &str, want: &[u8]) -> Result<(), String> {
        match rd(&self.m(rel)) {
            Ok(got) if got == want => Ok(()),
            Ok(got) => Err(format!(
                "view {rel}: content {:?}, expected {:?}",
                s(&got),
                s(want)
            )),
            Err(e) => Err(format!(
                "view {rel}: cannot read ({e}), expected {:?}",
                s(want)
            )),
        }
    }

    /// Gone from the view: lstat ENOENT and not listed in its parent.
    fn view_absent(&self, rel: &str) -> Result<(), String> {
        if let Ok(m) = lst(&self.m(rel)) {
            return Err(format!(
                "view {rel}: still there ({:?}), expected it deleted",
                FileType::of(m.file_type())
            ));
        }
        let (parent, name) = split_parent(rel.as_bytes());
        let pdir = join(&self.mnt, parent);
        if let Ok(rd) = fs::read_dir(&pdir) {
            for e in rd.flatten() {
                if e.file_name().as_bytes() == name {
                    return Err(format!(
                        "view {rel}: lstat says ENOENT but readdir lists it"
                    ));
                }
            }
        }
        Ok(())
    }

    fn view_list(&self, rel: &str) -> Vec<String> {
        match fs::read_dir(self.m(rel)) {
            Ok(rd) => {
                let mut v: Vec<String> = rd
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                v.sort();
                v
            }
            Err(e) => vec![format!("<readdir error {e}>")],
        }
    }

    // -- the upper on disk ----------------------------------------------------

    fn upper_file(&self, rel: &str, want: &[u8]) -> Result<(), String> {
        let p = self.u(rel);
        match lst(&p) {
            Ok(m) if m.file_type().is_file() => match rd(&p) {
                Ok(got) if got == want => Ok(()),
                Ok(got) => Err(format!(
                    "upper {rel}: content {:?}, expected {:?}",
                    s(&got),
                    s(want)
                )),
                Err(e) => Err(format!("upper {rel}: read: {e}")),
            },
            _ => Err(format!(
                "upper {rel}: holds {}, expected a file with {:?}",
                describe(&p),
                s(want)
            )),
        }
    }

    fn upper_is(&self, rel: &str, ft: FileType) -> Result<(), String> {
        let p = self.u(rel);
        match lst(&p) {
            Ok(m)
                if FileType::of(m.file_type()) == ft
                    && !(ft == FileType::CharDev && m.rdev() == 0) =>
            {
                Ok(())
            }
            _ => Err(format!(
                "upper {rel}: holds {}, expected a {ft:?}",
                describe(&p)
            )),
        }
    }

    /// Nothing of `rel` in the upper: no object and no whiteout of any format.
    fn upper_absent(&self, rel: &str) -> Result<(), String> {
        let p = self.u(rel);
        if exists(&p) {
            return Err(format!(
                "upper {rel}: holds {}, expected nothing there",
                describe(&p)
            ));
        }
        let w = self.u(&wh_rel(rel));
        if exists(&w) {
            return Err(format!(
                "upper {}: exists, expected no whiteout for {rel}",
                wh_rel(rel)
            ));
        }
        Ok(())
    }

    /// No whiteout of either format for `rel` (an object may be there).
    fn no_marker(&self, rel: &str) -> Result<(), String> {
        let p = self.u(rel);
        if let Ok(m) = lst(&p) {
            if m.file_type().is_char_device() && m.rdev() == 0 {
                return Err(format!("upper {rel}: a whiteout (char 0/0) is left there"));
            }
        }
        if exists(&self.u(&wh_rel(rel))) {
            return Err(format!(
                "upper {}: a whiteout file is left there",
                wh_rel(rel)
            ));
        }
        Ok(())
    }

    /// The whiteout of this fixture's format, exactly: overlay = char device
    /// 0/0 at the name (no `.wh.` file); oci = empty regular file `.wh.NAME`
    /// and nothing at the name.
    fn whiteout(&self, rel: &str) -> Result<(), String> {
        whiteout_in(&self.upper, rel, self.format)
    }

    /// The opaque marker of this fixture's format on upper dir `rel`.
    fn opaque(&self, rel: &str) -> Result<(), String> {
        opaque_in(&self.upper, rel, self.format)
    }

    fn not_opaque(&self, rel: &str) -> Result<(), String> {
        let p = self.u(rel);
        for x in ["trusted.overlay.opaque", "user.overlay.opaque"] {
            if sys::lgetxattr(&p, x.as_bytes()).ok().as_deref() == Some(b"y") {
                return Err(format!("upper {rel}: {x}=y, expected a non-opaque dir"));
            }
        }
        if exists(&p.join(".wh..wh..opq")) {
            return Err(format!(
                "upper {rel}: has .wh..wh..opq, expected a non-opaque dir"
            ));
        }
        Ok(())
    }

    fn upper_meta(&self, rel: &str, mode: u32, uid: u32, gid: u32) -> Result<(), String> {
        match lst(&self.u(rel)) {
            Ok(m) if (m.mode() & 0o7777, m.uid(), m.gid()) == (mode, uid, gid) => Ok(()),
            Ok(m) => Err(format!(
                "upper {rel}: mode {:o} owner {}:{}, expected mode {mode:o} owner {uid}:{gid}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            )),
            Err(e) => Err(format!("upper {rel}: {e}")),
        }
    }

    // -- preparing objects ---------------------------------------------------

    /// Copies `rel` up through the mount (a chmod to the mode it has).
    fn copy_up(&self, c: &mut Checks, rel: &str) {
        let Some(m) = c.ok(format!("lstat {rel} to copy it up"), lst(&self.m(rel))) else {
            return;
        };
        c.ok(
            format!("chmod {rel} (to copy it up)"),
            fs::set_permissions(self.m(rel), perm(m.mode() & 0o7777)),
        );
        c.t(exists(&self.u(rel)), || {
            format!("prep: chmod of {rel} did not copy it up")
        });
    }

    /// Creates the pure-upper file `rel` through the mount; returns its bytes.
    fn make_upper(&self, c: &mut Checks, rel: &str) -> Vec<u8> {
        let body = format!("upper-only file {rel}\n").into_bytes();
        c.ok(format!("create {rel}"), fs::write(self.m(rel), &body));
        body
    }

    /// The three kinds of object an operation must handle, for `base`:
    /// `{base}_lo` only in lowers, `{base}_cu` in lowers and copied up,
    /// `{base}_up` only in the upper. Returns (kind, path, bytes).
    fn trio(&self, c: &mut Checks, base: &str) -> Vec<(&'static str, String, Vec<u8>)> {
        let lo = format!("{base}_lo");
        let cu = format!("{base}_cu");
        let up = format!("{base}_up");
        self.copy_up(c, &cu);
        let up_body = self.make_upper(c, &up);
        vec![
            ("lower-only", lo.clone(), tag(L1, &lo)),
            ("copied-up", cu.clone(), tag(L1, &cu)),
            ("upper-only", up, up_body),
        ]
    }
}

/// Adds `{base}_lo` and `{base}_cu` to both lowers (lower1's copies win).
fn with_trio(mut l1: Layer, mut l2: Layer, bases: &[&str]) -> (Layer, Layer) {
    for b in bases {
        for k in ["lo", "cu"] {
            let n = format!("{b}_{k}");
            l1 = l1.tagged(&n);
            l2 = l2.tagged(&n);
        }
    }
    (l1, l2)
}

/// The whiteout of `format` for `rel` in `upper` (see [`Fx::whiteout`]).
fn whiteout_in(upper: &Path, rel: &str, format: &str) -> Result<(), String> {
    let p = join(upper, rel);
    let w = join(upper, wh_rel(rel));
    match format {
        OVERLAY => match lst(&p) {
            Ok(m) if m.file_type().is_char_device() && m.rdev() == 0 => {
                if exists(&w) {
                    Err(format!(
                        "upper {}: unexpected .wh. file besides the 0/0 whiteout",
                        wh_rel(rel)
                    ))
                } else {
                    Ok(())
                }
            }
            _ => Err(format!(
                "upper {rel}: holds {}, expected a whiteout (char device 0/0)",
                describe(&p)
            )),
        },
        _ => {
            let ok_file = lst(&w).is_ok_and(|m| m.file_type().is_file() && m.len() == 0);
            if !ok_file {
                return Err(format!(
                    "upper {}: holds {}, expected an empty file (OCI whiteout of {rel})",
                    wh_rel(rel),
                    describe(&w)
                ));
            }
            if exists(&p) {
                return Err(format!(
                    "upper {rel}: holds {}, expected nothing beside .wh.{}",
                    describe(&p),
                    rel
                ));
            }
            Ok(())
        }
    }
}

fn opaque_in(upper: &Path, rel: &str, format: &str) -> Result<(), String> {
    let p = join(upper, rel);
    if !lst(&p).is_ok_and(|m| m.is_dir()) {
        return Err(format!(
            "upper {rel}: holds {}, expected an opaque dir",
            describe(&p)
        ));
    }
    match format {
        OVERLAY => match sys::lgetxattr(&p, b"trusted.overlay.opaque") {
            Ok(v) if v == b"y" => Ok(()),
            r => Err(format!(
                "upper {rel}: trusted.overlay.opaque is {:?}, expected \"y\"",
                r.map(|v| s(&v))
            )),
        },
        _ => {
            let o = p.join(".wh..wh..opq");
            if lst(&o).is_ok_and(|m| m.file_type().is_file()) {
                Ok(())
            } else {
                Err(format!(
                    "upper {rel}/.wh..wh..opq: holds {}, expected the OCI opaque marker",
                    describe(&o)
                ))
            }
        }
    }
}

/// Snapshots of `lowers`, to compare after the test with [`lowers_unchanged`].
fn lowers_snapshot(lowers: &[PathBuf]) -> Vec<Tree> {
    lowers.iter().map(|l| snapshot_full(l)).collect()
}

fn lowers_unchanged(before: &[Tree], c: &mut Checks) {
    for b in before {
        for d in b.diff(&snapshot_full(&b.root), Fields::NONE) {
            c.fail(format!("LOWER CHANGED (left: before, right: after): {d}"));
        }
    }
}

// ---------------------------------------------------------------------------
// 1. Every tree-changing operation
// ---------------------------------------------------------------------------

#[test]
fn create_mknod_mkdir_symlink_in_lower_upper_and_copied_up_dirs() {
    if !require_mount_env() {
        return;
    }
    let l1 = Layer::new(L1)
        .tagged("old")
        .tagged("cdir_lo/old")
        .tagged("cdir_cu/old")
        .tagged("ex_lo")
        .tagged("ex_cu")
        .tagged("wr_lo");
    let l2 = Layer::new(L2)
        .tagged("cdir_lo/old2")
        .tagged("ex_lo")
        .tagged("ex_cu");
    let fx = Fx::new("create", &[l1, l2], OVERLAY);
    let mut c = Checks::default();
    let um = umask();
    fx.copy_up(&mut c, "cdir_cu");
    c.ok("mkdir cdir_up", fs::create_dir(fx.m("cdir_up")));
    fx.copy_up(&mut c, "ex_cu");
    let ex_up = fx.make_upper(&mut c, "ex_up");

    // New objects in the upper root, a lower-only dir, a copied-up dir and
    // an upper-only dir.
    for dir in ["", "cdir_lo", "cdir_cu", "cdir_up"] {
        let p = |n: &str| {
            if dir.is_empty() {
                n.to_string()
            } else {
                format!("{dir}/{n}")
            }
        };
        let f = p("new");
        let body = format!("new file in {dir:?}\n").into_bytes();
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(fx.m(&f))
        {
            Ok(mut h) => {
                c.ok(format!("write {f}"), h.write_all(&body));
            }
            Err(e) => c.fail(format!("create O_EXCL {f}: {e}")),
        }
        c.r(fx.view_file(&f, &body));
        c.r(fx.upper_file(&f, &body));
        c.r(fx.upper_meta(&f, 0o640 & !um, 0, 0));

        let specials = [
            ("fifo", libc::S_IFIFO | 0o640, 0, FileType::Fifo),
            ("sock", libc::S_IFSOCK | 0o640, 0, FileType::Socket),
            (
                "chr",
                libc::S_IFCHR | 0o600,
                sys::makedev(1, 3),
                FileType::CharDev,
            ),
            (
                "blk",
                libc::S_IFBLK | 0o640,
                sys::makedev(7, 0),
                FileType::BlockDev,
            ),
        ];
        for (n, mode, dev, ft) in specials {
            let r = p(n);
            if c.ok(format!("mknod {r}"), sys::mknod(&fx.m(&r), mode, dev))
                .is_none()
            {
                continue;
            }
            for (side, path) in [("view", fx.m(&r)), ("upper", fx.u(&r))] {
                match lst(&path) {
                    Ok(m) => {
                        c.eq(format!("{side} {r}: type"), FileType::of(m.file_type()), ft);
                        c.eq(format!("{side} {r}: rdev"), m.rdev(), dev);
                        c.eq(
                            format!("{side} {r}: mode"),
                            m.mode() & 0o7777,
                            mode & 0o7777 & !um,
                        );
                    }
                    Err(e) => c.fail(format!("{side} {r}: {e}")),
                }
            }
        }

        let d = p("sub");
        if c.ok(
            format!("mkdir {d}"),
            fs::DirBuilder::new().mode(0o750).create(fx.m(&d)),
        )
        .is_some()
        {
            c.r(fx.upper_is(&d, FileType::Dir));
            c.r(fx.upper_meta(&d, 0o750 & !um, 0, 0));
            // No lower has the name: the new dir is not marked opaque.
            c.r(fx.not_opaque(&d));
            c.eq(format!("view {d}: listing"), fx.view_list(&d), vec![]);
        }

        let l = p("sl");
        if c.ok(
            format!("symlink {l}"),
            std::os::unix::fs::symlink("old", fx.m(&l)),
        )
        .is_some()
        {
            c.eq(
                format!("view {l}: target"),
                fs::read_link(fx.m(&l)).ok(),
                Some(PathBuf::from("old")),
            );
            c.eq(
                format!("upper {l}: target"),
                fs::read_link(fx.u(&l)).ok(),
                Some(PathBuf::from("old")),
            );
        }
        if !dir.is_empty() {
            c.r(fx.upper_is(dir, FileType::Dir));
            c.r(fx.not_opaque(dir));
        }
    }
    // The lower-only dir merged with its new upper: old names still served
    // by the lowers, not copied.
    c.r(fx.view_file("cdir_lo/old", &tag(L1, "cdir_lo/old")));
    c.r(fx.view_file("cdir_lo/old2", &tag(L2, "cdir_lo/old2")));
    c.r(fx.upper_absent("cdir_lo/old"));
    c.r(fx.upper_absent("cdir_lo/old2"));
    let mut want: Vec<String> = [
        "blk", "chr", "fifo", "new", "old", "old2", "sl", "sock", "sub",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    c.eq(
        "view cdir_lo: listing",
        fx.view_list("cdir_lo"),
        want.clone(),
    );
    want.retain(|n| n != "old2");
    c.eq(
        "view cdir_cu: listing",
        fx.view_list("cdir_cu"),
        want.clone(),
    );
    want.retain(|n| n != "old");
    c.eq("view cdir_up: listing", fx.view_list("cdir_up"), want);
    // Symlink resolved through the mount to the lower file.
    c.eq(
        "read through symlink cdir_lo/sl",
        fs::read(fx.m("cdir_lo/sl")).ok(),
        Some(tag(L1, "cdir_lo/old")),
    );

    // Creating over an existing name: EEXIST for every kind of object, and
    // no copy-up happens.
    for (rel, body) in [
        ("ex_lo", tag(L1, "ex_lo")),
        ("ex_cu", tag(L1, "ex_cu")),
        ("ex_up", ex_up.clone()),
    ] {
        c.errno(
            format!("open O_CREAT|O_EXCL existing {rel}"),
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(fx.m(rel)),
            libc::EEXIST,
        );
        c.errno(
            format!("mknod fifo over {rel}"),
            sys::mknod(&fx.m(rel), libc::S_IFIFO | 0o644, 0),
            libc::EEXIST,
        );
        c.errno(
            format!("mkdir over {rel}"),
            fs::create_dir(fx.m(rel)),
            libc::EEXIST,
        );
        c.errno(
            format!("symlink over {rel}"),
            std::os::unix::fs::symlink("x", fx.m(rel)),
            libc::EEXIST,
        );
        c.errno(
            format!("link old over {rel}"),
            fs::hard_link(fx.m("old"), fx.m(rel)),
            libc::EEXIST,
        );
        c.r(fx.view_file(rel, &body));
    }
    c.r(fx.upper_absent("ex_lo"));
    c.r(fx.upper_absent("old"));

    // O_CREAT without O_EXCL opens the existing lower file; read-only it
    // copies nothing, for writing it copies the bytes up.
    match open_flags(&fx.m("ex_lo"), libc::O_RDONLY | libc::O_CREAT, 0o600) {
        Ok(mut f) => {
            let mut v = Vec::new();
            c.ok("read ex_lo", f.read_to_end(&mut v));
            c.eq(
                "O_CREAT|O_RDONLY ex_lo: content",
                s(&v),
                s(&tag(L1, "ex_lo")),
            );
        }
        Err(e) => c.fail(format!("open O_CREAT|O_RDONLY ex_lo: {e}")),
    }
    c.r(fx.upper_absent("ex_lo"));
    match open_flags(&fx.m("wr_lo"), libc::O_WRONLY | libc::O_CREAT, 0o600) {
        Ok(f) => drop(f),
        Err(e) => c.fail(format!("open O_CREAT|O_WRONLY wr_lo: {e}")),
    }
    c.r(fx.upper_file("wr_lo", &tag(L1, "wr_lo")));
    c.r(fx.view_file("wr_lo", &tag(L1, "wr_lo")));
    fx.finish(c, "create/mknod/mkdir/symlink");
}

#[test]
fn link_of_lower_upper_and_copied_up_files() {
    if !require_mount_env() {
        return;
    }
    let (l1, l2) = with_trio(
        Layer::new(L1).tagged("ldir/inner").dir("lnd"),
        Layer::new(L2).tagged("ldir/inner2"),
        &["ln"],
    );
    let fx = Fx::new("link", &[l1, l2], OVERLAY);
    let mut c = Checks::default();
    for (kind, rel, body) in fx.trio(&mut c, "ln") {
        let new = format!("{rel}.2");
        if c.ok(
            format!("link {rel} ({kind}) -> {new}"),
            fs::hard_link(fx.m(&rel), fx.m(&new)),
        )
        .is_none()
        {
            continue;
        }
        c.r(fx.view_file(&new, &body));
        c.r(fx.view_file(&rel, &body));
        match (lst(&fx.m(&rel)), lst(&fx.m(&new))) {
            (Ok(a), Ok(b)) => {
                c.eq(format!("view {rel} vs {new}: st_ino"), a.ino(), b.ino());
                c.eq(format!("view {rel}: nlink"), a.nlink(), 2);
                c.eq(format!("view {new}: nlink"), b.nlink(), 2);
            }
            r => c.fail(format!("view lstat {rel}/{new}: {r:?}")),
        }
        c.r(fx.upper_file(&rel, &body));
        c.r(fx.upper_file(&new, &body));
        // (The upper inode's own link count may include an index entry in
        // the work dir, so only the view's count is checked.)
        match (lst(&fx.u(&rel)), lst(&fx.u(&new))) {
            (Ok(a), Ok(b)) => {
                c.eq(
                    format!("upper {rel} vs {new}: same inode"),
                    a.ino(),
                    b.ino(),
                );
            }
            r => c.fail(format!("upper lstat {rel}/{new}: {r:?}")),
        }
    }
    // Into a lower-only dir: the dir is copied up, the link shares the inode.
    if c.ok(
        "link ln_lo -> ldir/ln3",
        fs::hard_link(fx.m("ln_lo"), fx.m("ldir/ln3")),
    )
    .is_some()
    {
        c.r(fx.upper_is("ldir", FileType::Dir));
        c.r(fx.upper_file("ldir/ln3", &tag(L1, "ln_lo")));
        c.eq(
            "upper ldir/ln3 vs ln_lo: same inode",
            lst(&fx.u("ldir/ln3")).map(|m| m.ino()).ok(),
            lst(&fx.u("ln_lo")).map(|m| m.ino()).ok(),
        );
        c.eq(
            "view ln_lo: nlink after 2 links",
            lst(&fx.m("ln_lo")).map(|m| m.nlink()).ok(),
            Some(3),
        );
        c.eq(
            "view ldir: listing",
            fx.view_list("ldir"),
            vec!["inner".to_string(), "inner2".into(), "ln3".into()],
        );
    }
    // A write through one name shows through the others.
    c.ok("append ln_lo.2", append(&fx.m("ln_lo.2"), b"+more\n"));
    let mut grown = tag(L1, "ln_lo");
    grown.extend_from_slice(b"+more\n");
    c.r(fx.view_file("ln_lo", &grown));
    c.r(fx.view_file("ldir/ln3", &grown));
    c.r(fx.upper_file("ln_lo", &grown));
    c.errno(
        "link of a directory",
        fs::hard_link(fx.m("lnd"), fx.m("lnd.2")),
        libc::EPERM,
    );
    fx.finish(c, "link");
}

#[test]
fn unlink_and_rmdir_leave_whiteouts_only_over_lowers() {
    if !require_mount_env() {
        return;
    }
    let (l1, l2) = with_trio(
        Layer::new(L1)
            .tagged("rmx/f")
            .tagged("rmx/keep")
            .symlink("rm_sym", "rm_lo")
            .fifo("rm_fifo")
            .dir("rd_lo")
            .dir("rd_cu")
            .tagged("rd_full/f")
            .tagged("rd_m/a")
            .tagged("keepf"),
        Layer::new(L2)
            .tagged("rm_l2")
            .tagged("rd_m/b")
            .dir("rd_m/sub")
            .tagged("rd_l2/f"),
        &["rm"],
    );
    let fx = Fx::new("unlink-rmdir", &[l1, l2], OVERLAY);
    let mut c = Checks::default();

    for (kind, rel, _) in fx.trio(&mut c, "rm") {
        if c.ok(
            format!("unlink {rel} ({kind})"),
            fs::remove_file(fx.m(&rel)),
        )
        .is_none()
        {
            continue;
        }
        c.r(fx.view_absent(&rel));
        c.errno(
            format!("unlink {rel} again"),
            fs::remove_file(fx.m(&rel)),
            libc::ENOENT,
        );
        if kind == "upper-only" {
            c.r(fx.upper_absent(&rel));
        } else {
            c.r(fx.whiteout(&rel));
        }
    }
    for rel in ["rm_l2", "rm_sym", "rm_fifo", "rmx/f"] {
        if c.ok(format!("unlink {rel}"), fs::remove_file(fx.m(rel)))
            .is_some()
        {
            c.r(fx.view_absent(rel));
            c.r(fx.whiteout(rel));
        }
    }
    c.r(fx.upper_is("rmx", FileType::Dir));
    c.r(fx.upper_absent("rmx/keep"));
    c.eq(
        "view rmx: listing",
        fx.view_list("rmx"),
        vec!["keep".to_string()],
    );

    // Wrong type: nothing changes, nothing is copied up.
    c.errno(
        "rmdir of a file",
        fs::remove_dir(fx.m("keepf")),
        libc::ENOTDIR,
    );
    c.errno(
        "unlink of a dir",
        fs::remove_file(fx.m("rd_full")),
        libc::EISDIR,
    );
    c.r(fx.upper_absent("keepf"));

    // Directories.
    c.errno(
        "rmdir non-empty lower dir",
        fs::remove_dir(fx.m("rd_full")),
        libc::ENOTEMPTY,
    );
    c.r(fx.upper_absent("rd_full"));
    c.r(fx.view_file("rd_full/f", &tag(L1, "rd_full/f")));
    fx.copy_up(&mut c, "rd_cu");
    for rel in ["rd_lo", "rd_cu"] {
        if c.ok(format!("rmdir {rel}"), fs::remove_dir(fx.m(rel)))
            .is_some()
        {
            c.r(fx.view_absent(rel));
            c.r(fx.whiteout(rel));
        }
    }
    // A dir of lower2 only, emptied and removed.
    c.ok("unlink rd_l2/f", fs::remove_file(fx.m("rd_l2/f")));
    if c.ok("rmdir rd_l2", fs::remove_dir(fx.m("rd_l2"))).is_some() {
        c.r(fx.view_absent("rd_l2"));
        c.r(fx.whiteout("rd_l2"));
    }
    // Pure upper dirs: removed without a trace; non-empty refused.
    c.ok("mkdir rd_up", fs::create_dir(fx.m("rd_up")));
    if c.ok("rmdir rd_up", fs::remove_dir(fx.m("rd_up"))).is_some() {
        c.r(fx.view_absent("rd_up"));
        c.r(fx.upper_absent("rd_up"));
    }
    c.ok("mkdir rd_upfull", fs::create_dir(fx.m("rd_upfull")));
    c.ok("create rd_upfull/f", fs::write(fx.m("rd_upfull/f"), b"x"));
    c.errno(
        "rmdir non-empty upper dir",
        fs::remove_dir(fx.m("rd_upfull")),
        libc::ENOTEMPTY,
    );
    c.ok("unlink rd_upfull/f", fs::remove_file(fx.m("rd_upfull/f")));
    if c.ok("rmdir rd_upfull", fs::remove_dir(fx.m("rd_upfull")))
        .is_some()
    {
        c.r(fx.upper_absent("rd_upfull"));
    }

    // A merged dir (lower1 + lower2): only once the merged view is empty.
    c.errno(
        "rmdir merged rd_m",
        fs::remove_dir(fx.m("rd_m")),
        libc::ENOTEMPTY,
    );
    c.ok("unlink rd_m/a", fs::remove_file(fx.m("rd_m/a")));
    c.r(fx.whiteout("rd_m/a"));
    c.errno(
        "rmdir rd_m with rd_m/b and rd_m/sub left",
        fs::remove_dir(fx.m("rd_m")),
        libc::ENOTEMPTY,
    );
    c.ok("unlink rd_m/b", fs::remove_file(fx.m("rd_m/b")));
    c.errno(
        "rmdir rd_m with rd_m/sub left",
        fs::remove_dir(fx.m("rd_m")),
        libc::ENOTEMPTY,
    );
    c.ok("rmdir rd_m/sub", fs::remove_dir(fx.m("rd_m/sub")));
    c.eq(
        "view rd_m: listing once emptied",
        fx.view_list("rd_m"),
        vec![],
    );
    if c.ok("rmdir emptied merged rd_m", fs::remove_dir(fx.m("rd_m")))
        .is_some()
    {
        c.r(fx.view_absent("rd_m"));
        // The upper's dir with its whiteouts is gone: one whiteout remains.
        c.r(fx.whiteout("rd_m"));
    }
    c.errno(
        "lstat rd_m/b after rmdir",
        lst(&fx.m("rd_m/b")),
        libc::ENOENT,
    );
    fx.finish(c, "unlink/rmdir");
}

#[test]
fn rename_of_non_directories() {
    if !require_mount_env() {
        return;
    }
    let (l1, l2) = with_trio(
        Layer::new(L1)
            .tagged("mv_src")
            .tagged("mv_dst")
            .tagged("mv_dst2")
            .tagged("mvd_a/f")
            .tagged("mvd_b/other")
            .tagged("nr_src")
            .tagged("nr_dst")
            .tagged("nr_free_src")
            .tagged("x_lo")
            .tagged("xl_a")
            .tagged("xl_b")
            .tagged("wh_t")
            .tagged("wh_t2")
            .tagged("wh_lo")
            .symlink("sym_lo", "some/target"),
        Layer::new(L2).tagged("mv_dst").tagged("mvd_b/l2"),
        &["mv"],
    );
    let fx = Fx::new("rename", &[l1, l2], OVERLAY);
    let mut c = Checks::default();
    let mv = |c: &mut Checks, a: &str, b: &str, flags: u32| {
        c.ok(
            format!("rename {a} -> {b} (flags {flags})"),
            sys::renameat2(&fx.m(a), &fx.m(b), flags),
        )
        .is_some()
    };

    // Plain renames of each kind of object.
    for (kind, rel, body) in fx.trio(&mut c, "mv") {
        let new = format!("{rel}.new");
        if !mv(&mut c, &rel, &new, 0) {
            continue;
        }
        c.r(fx.view_file(&new, &body));
        c.r(fx.view_absent(&rel));
        c.r(fx.upper_file(&new, &body));
        if kind == "upper-only" {
            c.r(fx.upper_absent(&rel));
        } else {
            c.r(fx.whiteout(&rel));
        }
    }
    // Over an existing lower file (lower and upper sources).
    if mv(&mut c, "mv_src", "mv_dst", 0) {
        c.r(fx.view_file("mv_dst", &tag(L1, "mv_src")));
        c.r(fx.view_absent("mv_src"));
        c.r(fx.upper_file("mv_dst", &tag(L1, "mv_src")));
        c.r(fx.whiteout("mv_src"));
    }
    let up2 = fx.make_upper(&mut c, "mv_up2");
    if mv(&mut c, "mv_up2", "mv_dst2", 0) {
        c.r(fx.view_file("mv_dst2", &up2));
        c.r(fx.upper_file("mv_dst2", &up2));
        c.r(fx.upper_absent("mv_up2"));
    }
    // Across lower-only dirs: both dirs copied up.
    if mv(&mut c, "mvd_a/f", "mvd_b/g", 0) {
        c.r(fx.view_file("mvd_b/g", &tag(L1, "mvd_a/f")));
        c.r(fx.upper_file("mvd_b/g", &tag(L1, "mvd_a/f")));
        c.r(fx.whiteout("mvd_a/f"));
        c.eq("view mvd_a: listing", fx.view_list("mvd_a"), vec![]);
        c.eq(
            "view mvd_b: listing",
            fx.view_list("mvd_b"),
            vec!["g".to_string(), "l2".into(), "other".into()],
        );
    }
    // A lower symlink.
    if mv(&mut c, "sym_lo", "sym_new", 0) {
        c.eq(
            "upper sym_new: target",
            fs::read_link(fx.u("sym_new")).ok(),
            Some(PathBuf::from("some/target")),
        );
        c.eq(
            "view sym_new: target",
            fs::read_link(fx.m("sym_new")).ok(),
            Some(PathBuf::from("some/target")),
        );
        c.r(fx.whiteout("sym_lo"));
    }

    // RENAME_NOREPLACE.
    c.errno(
        "RENAME_NOREPLACE lower over lower",
        sys::renameat2(&fx.m("nr_src"), &fx.m("nr_dst"), libc::RENAME_NOREPLACE),
        libc::EEXIST,
    );
    let nr_up = fx.make_upper(&mut c, "nr_up");
    c.errno(
        "RENAME_NOREPLACE upper over lower",
        sys::renameat2(&fx.m("nr_up"), &fx.m("nr_dst"), libc::RENAME_NOREPLACE),
        libc::EEXIST,
    );
    c.r(fx.view_file("nr_src", &tag(L1, "nr_src")));
    c.r(fx.view_file("nr_dst", &tag(L1, "nr_dst")));
    c.r(fx.view_file("nr_up", &nr_up));
    c.r(fx.upper_absent("nr_src"));
    c.r(fx.upper_absent("nr_dst"));
    if mv(&mut c, "nr_free_src", "nr_free_dst", libc::RENAME_NOREPLACE) {
        c.r(fx.view_file("nr_free_dst", &tag(L1, "nr_free_src")));
        c.r(fx.whiteout("nr_free_src"));
    }

    // RENAME_EXCHANGE: lower <-> upper, lower <-> lower.
    let x_up = fx.make_upper(&mut c, "x_up");
    if mv(&mut c, "x_lo", "x_up", libc::RENAME_EXCHANGE) {
        c.r(fx.view_file("x_lo", &x_up));
        c.r(fx.view_file("x_up", &tag(L1, "x_lo")));
        c.r(fx.upper_file("x_lo", &x_up));
        c.r(fx.upper_file("x_up", &tag(L1, "x_lo")));
        c.r(fx.no_marker("x_lo"));
        c.r(fx.no_marker("x_up"));
    }
    if mv(&mut c, "xl_a", "xl_b", libc::RENAME_EXCHANGE) {
        c.r(fx.view_file("xl_a", &tag(L1, "xl_b")));
        c.r(fx.view_file("xl_b", &tag(L1, "xl_a")));
        c.r(fx.upper_file("xl_a", &tag(L1, "xl_b")));
        c.r(fx.upper_file("xl_b", &tag(L1, "xl_a")));
    }
    c.errno(
        "RENAME_EXCHANGE with a missing target",
        sys::renameat2(&fx.m("xl_a"), &fx.m("no_such"), libc::RENAME_EXCHANGE),
        libc::ENOENT,
    );

    // Onto a whited-out name: the whiteout is replaced.
    c.ok("unlink wh_t", fs::remove_file(fx.m("wh_t")));
    let wh_src = fx.make_upper(&mut c, "wh_src");
    if mv(&mut c, "wh_src", "wh_t", 0) {
        c.r(fx.view_file("wh_t", &wh_src));
        c.r(fx.upper_file("wh_t", &wh_src));
        c.r(fx.no_marker("wh_t"));
        c.r(fx.upper_absent("wh_src"));
    }
    c.ok("unlink wh_t2", fs::remove_file(fx.m("wh_t2")));
    if mv(&mut c, "wh_lo", "wh_t2", 0) {
        c.r(fx.view_file("wh_t2", &tag(L1, "wh_lo")));
        c.r(fx.upper_file("wh_t2", &tag(L1, "wh_lo")));
        c.r(fx.no_marker("wh_t2"));
        c.r(fx.whiteout("wh_lo"));
    }
    fx.finish(c, "rename");
}

#[test]
fn writes_at_offsets_appends_and_truncates() {
    if !require_mount_env() {
        return;
    }
    let (l1, l2) = with_trio(
        Layer::new(L1),
        Layer::new(L2),
        &["w", "ap", "tg", "ts", "ft"],
    );
    let fx = Fx::new("write", &[l1, l2], OVERLAY);
    let mut c = Checks::default();
    for (kind, rel, body) in fx.trio(&mut c, "w") {
        let mut want = body.clone();
        want[5..8].copy_from_slice(b"XYZ");
        want.resize(100, 0);
        want.extend_from_slice(b"END");
        let r = OpenOptions::new()
            .write(true)
            .open(fx.m(&rel))
            .and_then(|f| {
                f.write_all_at(b"XYZ", 5)?;
                f.write_all_at(b"END", 100)
            });
        if c.ok(format!("pwrite {rel} ({kind})"), r).is_some() {
            c.r(fx.view_file(&rel, &want));
            c.r(fx.upper_file(&rel, &want));
        }
    }
    for (kind, rel, mut body) in fx.trio(&mut c, "ap") {
        if c.ok(
            format!("O_APPEND {rel} ({kind})"),
            append(&fx.m(&rel), b"+tail\n"),
        )
        .is_some()
        {
            body.extend_from_slice(b"+tail\n");
            c.r(fx.view_file(&rel, &body));
            c.r(fx.upper_file(&rel, &body));
        }
    }
    // truncate(2) by path: grow.
    for (kind, rel, mut body) in fx.trio(&mut c, "tg") {
        if c.ok(
            format!("truncate {rel} ({kind}) to 100"),
            sys::truncate(&fx.m(&rel), 100),
        )
        .is_some()
        {
            body.resize(100, 0);
            c.r(fx.view_file(&rel, &body));
            c.r(fx.upper_file(&rel, &body));
            c.eq(
                format!("view {rel}: st_size"),
                lst(&fx.m(&rel)).map(|m| m.len()).ok(),
                Some(100),
            );
        }
    }
    // ftruncate(2) through an open fd: shrink.
    for (kind, rel, mut body) in fx.trio(&mut c, "ts") {
        let r = OpenOptions::new()
            .write(true)
            .open(fx.m(&rel))
            .and_then(|f| f.set_len(3));
        if c.ok(format!("ftruncate {rel} ({kind}) to 3"), r).is_some() {
            body.truncate(3);
            c.r(fx.view_file(&rel, &body));
            c.r(fx.upper_file(&rel, &body));
        }
    }
    // ftruncate on an O_RDWR fd, then writing on through the same fd.
    for (kind, rel, mut body) in fx.trio(&mut c, "ft") {
        let r = OpenOptions::new()
            .read(true)
            .write(true)
            .open(fx.m(&rel))
            .and_then(|f| {
                f.set_len(4)?;
                f.write_all_at(b"++", 4)
            });
        if c.ok(format!("ftruncate+write {rel} ({kind})"), r).is_some() {
            body.truncate(4);
            body.extend_from_slice(b"++");
            c.r(fx.view_file(&rel, &body));
            c.r(fx.upper_file(&rel, &body));
        }
    }
    fx.finish(c, "write/append/truncate");
}

#[test]
fn chmod_chown_and_utimes_with_now_and_omit() {
    if !require_mount_env() {
        return;
    }
    let (l1, l2) = with_trio(
        Layer::new(L1)
            .tagged("chd/f")
            .symlink("chs", "chd/f")
            .symlink("uts", "chd/f"),
        Layer::new(L2).tagged("chd/g"),
        &["ch", "co", "ut", "un", "uo"],
    );
    // Lower times with nanoseconds, atime after mtime and recent, so that
    // relatime never moves the lower's atime when it is read.
    let now = now_secs();
    let fx = Fx::with("setattr", &[l1, l2], OVERLAY, |lowers| {
        for l in lowers {
            for e in fs::read_dir(l).expect("readdir lower").flatten() {
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    sys::utimensat(
                        &e.path(),
                        Time::At(now - 60, 123_456_789),
                        Time::At(now - 86_400 * 10, 987_654_321),
                    )
                    .expect("set lower times");
                }
            }
        }
    });
    let mut c = Checks::default();
    for (kind, rel, body) in fx.trio(&mut c, "ch") {
        if c.ok(
            format!("chmod {rel} ({kind})"),
            fs::set_permissions(fx.m(&rel), perm(0o600)),
        )
        .is_some()
        {
            c.eq(
                format!("view {rel}: mode"),
                lst(&fx.m(&rel)).map(|m| m.mode() & 0o7777).ok(),
                Some(0o600),
            );
            c.r(fx.upper_meta(&rel, 0o600, 0, 0));
            c.r(fx.upper_file(&rel, &body));
        }
    }
    for (kind, rel, body) in fx.trio(&mut c, "co") {
        if c.ok(
            format!("chown {rel} ({kind})"),
            std::os::unix::fs::lchown(fx.m(&rel), Some(1234), Some(5678)),
        )
        .is_some()
        {
            c.eq(
                format!("view {rel}: owner"),
                lst(&fx.m(&rel)).map(|m| (m.uid(), m.gid())).ok(),
                Some((1234, 5678)),
            );
            c.r(fx.upper_meta(&rel, 0o644, 1234, 5678));
            c.r(fx.upper_file(&rel, &body));
        }
    }
    // A lower-only dir and a lower symlink.
    c.ok("chmod chd", fs::set_permissions(fx.m("chd"), perm(0o711)));
    c.r(fx.upper_meta("chd", 0o711, 0, 0));
    c.eq(
        "view chd: listing after chmod",
        fx.view_list("chd"),
        vec!["f".to_string(), "g".into()],
    );
    c.r(fx.upper_absent("chd/f"));
    if c.ok(
        "lchown symlink chs",
        std::os::unix::fs::lchown(fx.m("chs"), Some(42), Some(43)),
    )
    .is_some()
    {
        c.eq(
            "upper chs: owner",
            lst(&fx.u("chs"))
                .map(|m| (m.uid(), m.gid(), m.file_type().is_symlink()))
                .ok(),
            Some((42, 43, true)),
        );
        c.r(fx.upper_absent("chd/f"));
    }

    let times =
        |p: &Path| lst(p).map(|m| ((m.atime(), m.atime_nsec()), (m.mtime(), m.mtime_nsec())));
    // Explicit times, to the nanosecond.
    let (at, mt) = ((1_500_000_000, 111_111_111), (1_400_000_000, 222_222_222));
    for (kind, rel, body) in fx.trio(&mut c, "ut") {
        if c.ok(
            format!("utimensat {rel} ({kind})"),
            sys::utimensat(&fx.m(&rel), Time::At(at.0, at.1), Time::At(mt.0, mt.1)),
        )
        .is_some()
        {
            c.eq(
                format!("view {rel}: times"),
                times(&fx.m(&rel)).ok(),
                Some((at, mt)),
            );
            c.eq(
                format!("upper {rel}: times"),
                times(&fx.u(&rel)).ok(),
                Some((at, mt)),
            );
            c.r(fx.upper_file(&rel, &body));
        }
    }
    if c.ok(
        "utimensat symlink uts (AT_SYMLINK_NOFOLLOW)",
        sys::utimensat(&fx.m("uts"), Time::At(at.0, at.1), Time::At(mt.0, mt.1)),
    )
    .is_some()
    {
        c.eq("upper uts: times", times(&fx.u("uts")).ok(), Some((at, mt)));
        c.r(fx.upper_is("uts", FileType::Symlink));
    }
    // UTIME_OMIT keeps the old value (copied from the lower), UTIME_NOW sets
    // the clock's.
    for (base, a, m) in [("un", Time::Omit, Time::Now), ("uo", Time::Now, Time::Omit)] {
        for (kind, rel, _) in fx.trio(&mut c, base) {
            let Some(before) = c.ok(format!("stat {rel}"), times(&fx.m(&rel))) else {
                continue;
            };
            let t0 = now_secs();
            if c.ok(
                format!("utimensat {rel} ({kind}) {a:?} {m:?}"),
                sys::utimensat(&fx.m(&rel), a, m),
            )
            .is_none()
            {
                continue;
            }
            let t1 = now_secs();
            for (side, p) in [("view", fx.m(&rel)), ("upper", fx.u(&rel))] {
                let Some((ga, gm)) = c.ok(format!("{side} stat {rel}"), times(&p)) else {
                    continue;
                };
                let (kept, kept_was, fresh, which) = match a {
                    Time::Omit => (ga, before.0, gm, "mtime"),
                    _ => (gm, before.1, ga, "atime"),
                };
                c.eq(format!("{side} {rel}: omitted time kept"), kept, kept_was);
                c.t(fresh.0 >= t0 - 1 && fresh.0 <= t1 + 1, || {
                    format!("{side} {rel}: {which} {fresh:?} not now ({t0}..{t1})")
                });
            }
        }
    }
    fx.finish(c, "chmod/chown/utimes");
}

#[test]
fn fallocate_fsync_fdatasync_and_fsyncdir() {
    if !require_mount_env() {
        return;
    }
    let (l1, l2) = with_trio(
        Layer::new(L1).tagged("ro_lo").tagged("sd_lo/f"),
        Layer::new(L2),
        &["fa", "sy"],
    );
    let fx = Fx::new("fallocate-fsync", &[l1, l2], OVERLAY);
    let mut c = Checks::default();
    const MIB: i64 = 1 << 20;
    for (kind, rel, body) in fx.trio(&mut c, "fa") {
        let Some(f) = c.ok(
            format!("open {rel} ({kind}) O_RDWR"),
            OpenOptions::new().read(true).write(true).open(fx.m(&rel)),
        ) else {
            continue;
        };
        // Allocate 1 MiB: the size grows, the bytes stay.
        if c.ok(
            format!("fallocate {rel} 0..1MiB"),
            sys::fallocate(&f, 0, 0, MIB),
        )
        .is_some()
        {
            let mut want = body.clone();
            want.resize(MIB as usize, 0);
            c.r(fx.view_file(&rel, &want));
            c.r(fx.upper_file(&rel, &want));
            c.t(
                lst(&fx.u(&rel)).is_ok_and(|m| m.blocks() * 512 >= MIB as u64),
                || {
                    format!(
                        "upper {rel}: fallocate did not allocate 1 MiB: {:?}",
                        lst(&fx.u(&rel)).map(|m| m.blocks())
                    )
                },
            );
        }
        // KEEP_SIZE beyond EOF: size unchanged, blocks allocated.
        if c.ok(
            format!("fallocate KEEP_SIZE {rel}"),
            sys::fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, MIB, MIB),
        )
        .is_some()
        {
            c.eq(
                format!("upper {rel}: size after KEEP_SIZE"),
                lst(&fx.u(&rel)).map(|m| m.len()).ok(),
                Some(MIB as u64),
            );
            c.t(
                lst(&fx.u(&rel)).is_ok_and(|m| m.blocks() * 512 >= 2 * MIB as u64),
                || format!("upper {rel}: KEEP_SIZE allocated nothing"),
            );
        }
        // Punch the first 4 KiB: zeros there.
        if c.ok(
            format!("fallocate PUNCH_HOLE {rel}"),
            sys::fallocate(
                &f,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                4096,
            ),
        )
        .is_some()
        {
            let mut buf = vec![1u8; 64];
            c.ok(format!("pread {rel}"), f.read_exact_at(&mut buf, 0));
            c.eq(format!("view {rel}: punched bytes"), buf, vec![0u8; 64]);
            let up = rd(&fx.u(&rel)).unwrap_or_default();
            c.t(
                up.len() == MIB as usize && up[..4096].iter().all(|&b| b == 0),
                || format!("upper {rel}: punched range not zero"),
            );
        }
    }
    // fsync / fdatasync on writable fds of each kind.
    for (kind, rel, mut body) in fx.trio(&mut c, "sy") {
        let r = OpenOptions::new()
            .append(true)
            .open(fx.m(&rel))
            .and_then(|mut f| {
                f.write_all(b"synced\n")?;
                f.sync_data()?;
                f.write_all(b"again\n")?;
                f.sync_all()
            });
        if c.ok(format!("write+fdatasync+fsync {rel} ({kind})"), r)
            .is_some()
        {
            body.extend_from_slice(b"synced\nagain\n");
            c.r(fx.upper_file(&rel, &body));
        }
    }
    // fsync of a read-only fd of a lower file copies nothing up.
    c.ok(
        "fsync+fdatasync O_RDONLY lower file",
        File::open(fx.m("ro_lo")).and_then(|f| {
            f.sync_all()?;
            f.sync_data()
        }),
    );
    c.r(fx.upper_absent("ro_lo"));
    // fsyncdir: the root (upper), a lower-only dir, an upper-only dir.
    c.ok("mkdir sd_up", fs::create_dir(fx.m("sd_up")));
    for d in ["", "sd_lo", "sd_up"] {
        c.ok(
            format!("fsyncdir {d:?}"),
            File::open(fx.m(d)).and_then(|f| {
                f.sync_all()?;
                f.sync_data()
            }),
        );
    }
    c.r(fx.upper_absent("sd_lo"));
    fx.finish(c, "fallocate/fsync/fsyncdir");
}

#[test]
fn user_xattrs_set_and_removed_over_every_kind_of_object() {
    if !require_mount_env() {
        return;
    }
    let mut l1 = Layer::new(L1);
    let mut l2 = Layer::new(L2);
    for b in ["xs", "xr"] {
        for k in ["lo", "cu"] {
            let n = format!("{b}_{k}");
            l1 = l1.tagged(&n).xattr("user.orig", format!("o-{n}"));
            l2 = l2.tagged(&n).xattr("user.l2", "shadowed");
        }
    }
    let l1 = l1
        .tagged("xn_lo")
        .dir("xad")
        .xattr("user.dir", "d")
        .tagged("xad/f");
    let fx = Fx::new("xattr", &[l1, l2], OVERLAY);
    let mut c = Checks::default();
    let get = |p: &Path, n: &str| sys::lgetxattr(p, n.as_bytes());
    for (kind, rel, body) in fx.trio(&mut c, "xs") {
        if c.ok(
            format!("setxattr user.new on {rel} ({kind})"),
            sys::lsetxattr(&fx.m(&rel), b"user.new", b"v1"),
        )
        .is_none()
        {
            continue;
        }
        c.eq(
            format!("view {rel}: user.new"),
            get(&fx.m(&rel), "user.new").ok(),
            Some(b"v1".to_vec()),
        );
        c.eq(
            format!("upper {rel}: user.new"),
            get(&fx.u(&rel), "user.new").ok(),
            Some(b"v1".to_vec()),
        );
        if kind != "upper-only" {
            let o = format!("o-{rel}").into_bytes();
            c.eq(
                format!("view {rel}: user.orig kept"),
                get(&fx.m(&rel), "user.orig").ok(),
                Some(o.clone()),
            );
            c.eq(
                format!("upper {rel}: user.orig copied"),
                get(&fx.u(&rel), "user.orig").ok(),
                Some(o),
            );
            c.errno(
                format!("upper {rel}: user.l2 of the shadowed lower"),
                get(&fx.u(&rel), "user.l2"),
                libc::ENODATA,
            );
        }
        c.r(fx.upper_file(&rel, &body));
        // Replace, then list.
        c.ok(
            format!("setxattr user.new again on {rel}"),
            sys::lsetxattr(&fx.m(&rel), b"user.new", b"v2"),
        );
        c.eq(
            format!("upper {rel}: user.new replaced"),
            get(&fx.u(&rel), "user.new").ok(),
            Some(b"v2".to_vec()),
        );
        let names: BTreeSet<Vec<u8>> = sys::llistxattr(&fx.m(&rel))
            .unwrap_or_default()
            .into_iter()
            .collect();
        c.t(names.contains(&b"user.new"[..]), || {
            format!("view {rel}: listxattr lacks user.new: {names:?}")
        });
    }
    for (kind, rel, body) in fx.trio(&mut c, "xr") {
        if kind == "upper-only" {
            c.ok(
                format!("setxattr user.orig on {rel}"),
                sys::lsetxattr(&fx.m(&rel), b"user.orig", b"x"),
            );
        }
        if c.ok(
            format!("removexattr user.orig on {rel} ({kind})"),
            sys::lremovexattr(&fx.m(&rel), b"user.orig"),
        )
        .is_none()
        {
            continue;
        }
        c.errno(
            format!("view {rel}: user.orig removed"),
            get(&fx.m(&rel), "user.orig"),
            libc::ENODATA,
        );
        c.errno(
            format!("upper {rel}: user.orig removed"),
            get(&fx.u(&rel), "user.orig"),
            libc::ENODATA,
        );
        c.r(fx.upper_file(&rel, &body));
        c.errno(
            format!("removexattr user.orig again on {rel}"),
            sys::lremovexattr(&fx.m(&rel), b"user.orig"),
            libc::ENODATA,
        );
    }
    // Removing an attribute that is not there copies nothing up.
    c.errno(
        "removexattr missing on lower file",
        sys::lremovexattr(&fx.m("xn_lo"), b"user.none"),
        libc::ENODATA,
    );
    c.r(fx.upper_absent("xn_lo"));
    // A lower dir.
    if c.ok(
        "setxattr on lower dir xad",
        sys::lsetxattr(&fx.m("xad"), b"user.more", b"m"),
    )
    .is_some()
    {
        c.eq(
            "upper xad: user.more",
            get(&fx.u("xad"), "user.more").ok(),
            Some(b"m".to_vec()),
        );
        c.eq(
            "upper xad: user.dir copied",
            get(&fx.u("xad"), "user.dir").ok(),
            Some(b"d".to_vec()),
        );
        c.r(fx.upper_absent("xad/f"));
        c.eq(
            "view xad: listing",
            fx.view_list("xad"),
            vec!["f".to_string()],
        );
    }
    fx.finish(c, "setxattr/removexattr");
}

/// The (data, hole) map of a file by SEEK_DATA/SEEK_HOLE from each offset.
/// (offset, SEEK_DATA result, SEEK_HOLE result); errors as errno.
type SeekRow = (i64, Result<i64, i32>, Result<i64, i32>);

fn seek_map(f: &File, offsets: &[i64]) -> Vec<SeekRow> {
    offsets
        .iter()
        .map(|&o| {
            let e = |r: io::Result<i64>| r.map_err(|e| e.raw_os_error().unwrap_or(-1));
            (
                o,
                e(sys::lseek(f, o, libc::SEEK_DATA)),
                e(sys::lseek(f, o, libc::SEEK_HOLE)),
            )
        })
        .collect()
}

#[test]
fn lseek_data_and_hole_on_a_sparse_file_before_and_after_copy_up() {
    if !require_mount_env() {
        return;
    }
    const MIB: u64 = 1 << 20;
    let fx = Fx::with(
        "lseek",
        &[Layer::new(L1).dir("d"), Layer::new(L2)],
        OVERLAY,
        |lowers| {
            let f = File::create(lowers[0].join("sp")).expect("create sparse");
            f.set_len(8 * MIB).expect("set_len");
            f.write_all_at(&vec![b'a'; 64 * 1024], MIB).expect("write");
            f.write_all_at(&vec![b'b'; 4096], 5 * MIB).expect("write");
        },
    );
    let mut c = Checks::default();
    let offs: Vec<i64> = [
        0,
        MIB,
        MIB + 100,
        2 * MIB,
        5 * MIB,
        5 * MIB + 4096,
        6 * MIB,
        8 * MIB - 1,
        8 * MIB,
    ]
    .iter()
    .map(|&o| o as i64)
    .collect();
    let reference = seek_map(&File::open(fx.l(0, "sp")).expect("open lower"), &offs);
    c.t(reference[0].1 == Ok(MIB as i64), || {
        format!("fixture: lower sp is not sparse here: {reference:?}")
    });
    match File::open(fx.m("sp")) {
        Ok(f) => c.eq(
            "SEEK_DATA/SEEK_HOLE through the mount (lower file)",
            seek_map(&f, &offs),
            reference.clone(),
        ),
        Err(e) => c.fail(format!("open sp: {e}")),
    }
    c.r(fx.upper_absent("sp"));
    // After a copy-up by a write inside the data, holes are still holes.
    c.ok("write into sp", write_at(&fx.m("sp"), MIB + 10, b"W"));
    match File::open(fx.u("sp")) {
        Ok(f) => c.eq(
            "SEEK_DATA/SEEK_HOLE of the upper copy",
            seek_map(&f, &offs),
            reference.clone(),
        ),
        Err(e) => c.fail(format!("open upper sp: {e}")),
    }
    match File::open(fx.m("sp")) {
        Ok(f) => c.eq(
            "SEEK_DATA/SEEK_HOLE through the mount (copied up)",
            seek_map(&f, &offs),
            reference,
        ),
        Err(e) => c.fail(format!("open sp: {e}")),
    }
    fx.finish(c, "lseek SEEK_DATA/SEEK_HOLE");
}

#[test]
fn flock_and_posix_locks_between_two_fds() {
    if !require_mount_env() {
        return;
    }
    let fx = Fx::new(
        "locks",
        &[Layer::new(L1).tagged("fl").tagged("pl"), Layer::new(L2)],
        OVERLAY,
    );
    let mut c = Checks::default();
    // flock(2) between two read-only fds of a lower file (no copy-up).
    if let (Some(a), Some(b)) = (
        c.ok("open fl #1", File::open(fx.m("fl"))),
        c.ok("open fl #2", File::open(fx.m("fl"))),
    ) {
        c.ok(
            "flock #1 LOCK_EX",
            sys::flock(&a, libc::LOCK_EX | libc::LOCK_NB),
        );
        c.errno(
            "flock #2 LOCK_SH while #1 holds LOCK_EX",
            sys::flock(&b, libc::LOCK_SH | libc::LOCK_NB),
            libc::EWOULDBLOCK,
        );
        let other = run(
            Command::new("flock")
                .args(["-n", "-E", "42"])
                .arg(fx.m("fl"))
                .arg("true"),
            Duration::from_secs(10),
        );
        c.eq(
            "flock(1) from another process while held: exit code",
            other.code(),
            Some(42),
        );
        c.ok("flock #1 LOCK_UN", sys::flock(&a, libc::LOCK_UN));
        c.ok(
            "flock #2 LOCK_EX after unlock",
            sys::flock(&b, libc::LOCK_EX | libc::LOCK_NB),
        );
        c.ok("flock #2 LOCK_UN", sys::flock(&b, libc::LOCK_UN));
    }
    c.r(fx.upper_absent("fl"));
    // fcntl locks: OFD locks conflict between two fds of one process; classic
    // POSIX locks between processes.
    let rw = || OpenOptions::new().read(true).write(true).open(fx.m("pl"));
    if let (Some(a), Some(b)) = (c.ok("open pl #1", rw()), c.ok("open pl #2", rw())) {
        c.ok(
            "F_OFD_SETLK #1 write 0..10",
            sys::fcntl_lock(&a, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 10),
        );
        c.errno(
            "F_OFD_SETLK #2 write 5..15 (overlaps)",
            sys::fcntl_lock(&b, libc::F_OFD_SETLK, libc::F_WRLCK, 5, 10),
            libc::EAGAIN,
        );
        c.ok(
            "F_OFD_SETLK #2 read 20..30 (disjoint)",
            sys::fcntl_lock(&b, libc::F_OFD_SETLK, libc::F_RDLCK, 20, 10),
        );
        match sys::fcntl_lock(&b, libc::F_OFD_GETLK, libc::F_WRLCK, 0, 10) {
            Ok(fl) => c.eq(
                "F_OFD_GETLK #2 sees #1's lock",
                i32::from(fl.l_type),
                libc::F_WRLCK,
            ),
            Err(e) => c.fail(format!("F_OFD_GETLK: {e}")),
        }
        c.ok(
            "F_OFD_SETLK #1 unlock",
            sys::fcntl_lock(&a, libc::F_OFD_SETLK, libc::F_UNLCK, 0, 10),
        );
        c.ok(
            "F_OFD_SETLK #2 write 5..15 after unlock",
            sys::fcntl_lock(&b, libc::F_OFD_SETLK, libc::F_WRLCK, 5, 10),
        );
        c.ok(
            "F_OFD_SETLK #2 unlock",
            sys::fcntl_lock(&b, libc::F_OFD_SETLK, libc::F_UNLCK, 0, 0),
        );

        c.ok(
            "F_SETLK (process) write 0..100",
            sys::fcntl_lock(&a, libc::F_SETLK, libc::F_WRLCK, 0, 100),
        );
        match sys::posix_lock_in_child(&fx.m("pl"), 50, 10) {
            Ok(Some(e)) if e == libc::EAGAIN || e == libc::EACCES => {}
            r => c.fail(format!(
                "F_SETLK in a child while the parent holds it: {r:?}, expected EAGAIN"
            )),
        }
        c.ok(
            "F_SETLK unlock",
            sys::fcntl_lock(&a, libc::F_SETLK, libc::F_UNLCK, 0, 0),
        );
        match sys::posix_lock_in_child(&fx.m("pl"), 50, 10) {
            Ok(None) => {}
            r => c.fail(format!(
                "F_SETLK in a child after unlock: {r:?}, expected success"
            )),
        }
    }
    fx.finish(c, "flock/fcntl locks");
}

// ---------------------------------------------------------------------------
// 2. Whiteouts and opaque dirs, in both upper formats
// ---------------------------------------------------------------------------

fn whiteout_layers() -> [Layer; 2] {
    [
        Layer::new(L1)
            .tagged("f")
            .tagged("d/x")
            .dir("e")
            .tagged("r")
            .tagged("c")
            .tagged("md/y")
            .tagged("m/a")
            .tagged("keep"),
        Layer::new(L2).tagged("md/z").tagged("m/b").tagged("f"),
    ]
}

#[test]
fn whiteouts_and_opaque_dirs_in_overlay_and_oci_format() {
    if !require_mount_env() {
        return;
    }
    for format in [OVERLAY, OCI] {
        let fx = Fx::new(&format!("whiteouts-{format}"), &whiteout_layers(), format);
        let mut c = Checks::default();
        // unlink of a file two lowers have.
        if c.ok("unlink f", fs::remove_file(fx.m("f"))).is_some() {
            c.r(fx.whiteout("f"));
            c.r(fx.view_absent("f"));
        }
        // rmdir of a lower dir once emptied.
        c.ok("unlink d/x", fs::remove_file(fx.m("d/x")));
        c.r(fx.whiteout("d/x"));
        if c.ok("rmdir d", fs::remove_dir(fx.m("d"))).is_some() {
            c.r(fx.whiteout("d"));
            c.r(fx.view_absent("d"));
        }
        if c.ok("rmdir e", fs::remove_dir(fx.m("e"))).is_some() {
            c.r(fx.whiteout("e"));
        }
        // rename away.
        if c.ok("rename r -> r2", fs::rename(fx.m("r"), fx.m("r2")))
            .is_some()
        {
            c.r(fx.whiteout("r"));
            c.r(fx.upper_file("r2", &tag(L1, "r")));
        }
        // Pure upper objects leave nothing.
        c.ok("create p", fs::write(fx.m("p"), b"p"));
        c.ok("unlink p", fs::remove_file(fx.m("p")));
        c.r(fx.upper_absent("p"));
        c.ok("mkdir pd", fs::create_dir(fx.m("pd")));
        c.ok("create pd/f", fs::write(fx.m("pd/f"), b"p"));
        c.ok("unlink pd/f", fs::remove_file(fx.m("pd/f")));
        c.ok("rmdir pd", fs::remove_dir(fx.m("pd")));
        c.r(fx.upper_absent("pd"));
        c.ok("create p2, rename to p3, unlink", {
            fs::write(fx.m("p2"), b"p")
                .and_then(|_| fs::rename(fx.m("p2"), fx.m("p3")))
                .and_then(|_| fs::remove_file(fx.m("p3")))
        });
        c.r(fx.upper_absent("p2"));
        c.r(fx.upper_absent("p3"));
        // Create over a whiteout replaces it.
        c.ok("unlink c", fs::remove_file(fx.m("c")));
        c.r(fx.whiteout("c"));
        if c.ok(
            "create c over its whiteout",
            fs::write(fx.m("c"), b"new c\n"),
        )
        .is_some()
        {
            c.r(fx.view_file("c", b"new c\n"));
            c.r(fx.upper_file("c", b"new c\n"));
            c.r(fx.no_marker("c"));
        }
        // mkdir over a whiteout: opaque, shows empty.
        c.ok("unlink md/y", fs::remove_file(fx.m("md/y")));
        c.ok("unlink md/z", fs::remove_file(fx.m("md/z")));
        c.ok("rmdir md", fs::remove_dir(fx.m("md")));
        c.r(fx.whiteout("md"));
        if c.ok("mkdir md over its whiteout", fs::create_dir(fx.m("md")))
            .is_some()
        {
            c.r(fx.opaque("md"));
            c.r(fx.no_marker("md"));
            c.eq(
                "view md: listing after mkdir over whiteout",
                fx.view_list("md"),
                vec![],
            );
            c.errno("view md/y", lst(&fx.m("md/y")), libc::ENOENT);
            c.ok("create md/new", fs::write(fx.m("md/new"), b"n"));
            c.eq(
                "view md: listing",
                fx.view_list("md"),
                vec!["new".to_string()],
            );
        }
        // rmdir of a merged dir clears the upper's whiteouts.
        c.ok("unlink m/a", fs::remove_file(fx.m("m/a")));
        c.ok("unlink m/b", fs::remove_file(fx.m("m/b")));
        c.r(fx.whiteout("m/a"));
        c.r(fx.whiteout("m/b"));
        if c.ok("rmdir merged m", fs::remove_dir(fx.m("m"))).is_some() {
            c.r(fx.whiteout("m"));
        }
        c.eq(
            "view root: listing (no whiteouts, no .wh. names)",
            fx.view_list(""),
            vec!["c".to_string(), "keep".into(), "md".into(), "r2".into()],
        );
        c.errno("lookup of a .wh. name", lst(&fx.m(".wh.f")), libc::ENOENT);
        fx.finish(c, &format!("whiteouts ({format} format)"));
    }
}

// ---------------------------------------------------------------------------
// 3. Copy-up of every file type keeps every piece of metadata
// ---------------------------------------------------------------------------

/// Everything copy-up must carry over, read from a real (layer) path.
#[derive(Debug, PartialEq, Clone)]
struct Meta {
    ftype: FileType,
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    size: u64,
    nlink: u64,
    mtime: (i64, i64),
    atime: (i64, i64),
    target: Option<PathBuf>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn meta(p: &Path) -> io::Result<Meta> {
    let m = lst(p)?;
    let mut xattrs = BTreeMap::new();
    for n in sys::llistxattr(p)? {
        let v = sys::lgetxattr(p, &n)?;
        xattrs.insert(String::from_utf8_lossy(&n).into_owned(), v);
    }
    Ok(Meta {
        ftype: FileType::of(m.file_type()),
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev(),
        size: m.len(),
        nlink: m.nlink(),
        mtime: (m.mtime(), m.mtime_nsec()),
        atime: (m.atime(), m.atime_nsec()),
        target: fs::read_link(p).ok(),
        xattrs,
    })
}

/// Field-by-field differences between two [`Meta`]s, skipping `skip`.
fn meta_diff(what: &str, lower: &Meta, upper: &Meta, skip: &[&str]) -> Vec<String> {
    let mut d = Vec::new();
    let mut f = |name: &str, a: String, b: String| {
        if !skip.contains(&name) && a != b {
            d.push(format!("{what}: {name}: lower {a}, upper copy {b}"));
        }
    };
    f(
        "type",
        format!("{:?}", lower.ftype),
        format!("{:?}", upper.ftype),
    );
    f(
        "mode",
        format!("{:o}", lower.mode),
        format!("{:o}", upper.mode),
    );
    f("uid", lower.uid.to_string(), upper.uid.to_string());
    f("gid", lower.gid.to_string(), upper.gid.to_string());
    f("rdev", lower.rdev.to_string(), upper.rdev.to_string());
    f("size", lower.size.to_string(), upper.size.to_string());
    f("nlink", lower.nlink.to_string(), upper.nlink.to_string());
    f(
        "mtime",
        format!("{:?}", lower.mtime),
        format!("{:?}", upper.mtime),
    );
    f(
        "atime",
        format!("{:?}", lower.atime),
        format!("{:?}", upper.atime),
    );
    f(
        "target",
        format!("{:?}", lower.target),
        format!("{:?}", upper.target),
    );
    let keys: BTreeSet<&String> = lower.xattrs.keys().chain(upper.xattrs.keys()).collect();
    for k in keys {
        // The union's own metadata (origin, index counts) is not the file's.
        if skip.contains(&k.as_str()) || is_private(k) {
            continue;
        }
        f(
            &format!("xattr {k}"),
            format!("{:?}", lower.xattrs.get(k).map(|v| s(v))),
            format!("{:?}", upper.xattrs.get(k).map(|v| s(v))),
        );
    }
    d
}

/// Xattr namespaces the union keeps for itself (docs/design.md §2; `trusted.unionfs.`
/// is where the daemon puts its metadata when trusted xattrs are writable).
fn is_private(name: &str) -> bool {
    [
        "trusted.overlay.",
        "user.overlay.",
        "user.fuseoverlayfs.",
        "user.unionfs.",
        "trusted.unionfs.",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// A VFS_CAP_REVISION_2 security.capability blob: cap_net_raw (13) in the
/// permitted set, effective flag set (what `setcap cap_net_raw+ep` writes).
fn capability_v2_blob() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes()); // magic v2 | effective
    v.extend_from_slice(&(1u32 << 13).to_le_bytes()); // permitted[0]
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable[0]
    v.extend_from_slice(&0u32.to_le_bytes()); // permitted[1]
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable[1]
    v
}

fn setfacl(args: &[&str], p: &Path) {
    let out = run(
        Command::new("setfacl").args(args).arg(p),
        Duration::from_secs(10),
    );
    assert!(out.success(), "setfacl failed: {out}");
}

#[test]
fn copy_up_of_every_file_type_keeps_owner_mode_times_xattrs_acls_and_caps() {
    if !require_mount_env() {
        return;
    }
    let now = now_secs();
    // atime after mtime and recent: relatime leaves the lower's atime alone.
    let at = (now - 100, 111_111_111);
    let mt = (now - 200_000, 222_222_222);
    let l1 = Layer::new(L1)
        .tagged("reg")
        .tagged("reg2")
        .tagged("dir/child")
        .symlink("sym", "reg");
    let l2 = Layer::new(L2).tagged("dir/child2");
    let fx = Fx::with("copy-up-types", &[l1, l2], OVERLAY, |lowers| {
        let p = |n: &str| lowers[0].join(n);
        sys::mknod(&p("fifo"), libc::S_IFIFO | 0o640, 0).expect("mkfifo");
        sys::mknod(&p("sock"), libc::S_IFSOCK | 0o751, 0).expect("mknod sock");
        sys::mknod(&p("chr"), libc::S_IFCHR | 0o620, sys::makedev(1, 3)).expect("mknod chr");
        sys::mknod(&p("blk"), libc::S_IFBLK | 0o660, sys::makedev(7, 0)).expect("mknod blk");
        for n in ["reg", "reg2", "dir", "sym", "fifo", "sock", "chr", "blk"] {
            std::os::unix::fs::lchown(p(n), Some(1234), Some(5678)).expect("lchown");
        }
        // Modes after chown (chown clears setuid/setgid).
        for (n, mode) in [
            ("reg", 0o6755),
            ("reg2", 0o4711),
            ("dir", 0o3775),
            ("fifo", 0o640),
            ("sock", 0o751),
            ("chr", 0o620),
            ("blk", 0o660),
        ] {
            fs::set_permissions(p(n), perm(mode)).expect("chmod");
        }
        for n in ["reg", "reg2", "dir"] {
            sys::lsetxattr(&p(n), b"user.a", b"1").expect("user.a");
            sys::lsetxattr(&p(n), b"user.bin", b"\x00\xff\x01").expect("user.bin");
            setfacl(&["-m", "u:1000:rwx,g:4242:r"], &p(n));
        }
        setfacl(&["-d", "-m", "u:1000:rx"], &p("dir"));
        sys::lsetxattr(&p("reg"), b"security.capability", &capability_v2_blob())
            .expect("security.capability");
        for n in ["reg", "reg2", "dir", "sym", "fifo", "sock", "chr", "blk"] {
            sys::utimensat(&p(n), Time::At(at.0, at.1), Time::At(mt.0, mt.1)).expect("times");
        }
    });
    let mut c = Checks::default();
    let lower: BTreeMap<&str, Meta> = ["reg", "reg2", "dir", "sym", "fifo", "sock", "chr", "blk"]
        .iter()
        .map(|&n| (n, meta(&fx.l(0, n)).expect("lower meta")))
        .collect();
    c.t(
        lower["reg"].xattrs.contains_key("system.posix_acl_access"),
        || "fixture: setfacl left no system.posix_acl_access".into(),
    );
    c.t(
        lower["dir"].xattrs.contains_key("system.posix_acl_default"),
        || "fixture: no default ACL on dir".into(),
    );
    c.eq("fixture: reg mode", lower["reg"].mode & 0o6000, 0o6000);

    // Each type copied up by a different kind of change that leaves the
    // metadata as it was (or changes one known field).
    c.ok(
        "open reg O_WRONLY (copy-up without writing)",
        OpenOptions::new().write(true).open(fx.m("reg")),
    );
    c.ok("append to reg2", append(&fx.m("reg2"), b"more\n"));
    c.ok(
        "setxattr user.trigger on dir",
        sys::lsetxattr(&fx.m("dir"), b"user.trigger", b"t"),
    );
    c.ok(
        "lchown sym to its owner",
        std::os::unix::fs::lchown(fx.m("sym"), Some(1234), Some(5678)),
    );
    c.ok(
        "chmod fifo to its mode",
        fs::set_permissions(fx.m("fifo"), perm(0o640)),
    );
    c.ok(
        "utimes sock to its times",
        sys::utimensat(&fx.m("sock"), Time::At(at.0, at.1), Time::At(mt.0, mt.1)),
    );
    c.ok(
        "chown chr to its owner",
        std::os::unix::fs::lchown(fx.m("chr"), Some(1234), Some(5678)),
    );
    c.ok(
        "chmod blk to its mode",
        fs::set_permissions(fx.m("blk"), perm(0o660)),
    );

    for (n, skip) in [
        ("reg", &[][..]),
        // A write changes size and mtime; as root it keeps setuid.
        ("reg2", &["size", "mtime"][..]),
        ("dir", &["user.trigger"][..]),
        ("sym", &[][..]),
        ("fifo", &[][..]),
        ("sock", &[][..]),
        ("chr", &[][..]),
        ("blk", &[][..]),
    ] {
        match meta(&fx.u(n)) {
            Ok(up) => {
                for d in meta_diff(n, &lower[n], &up, skip) {
                    c.fail(d);
                }
            }
            Err(e) => c.fail(format!("upper {n}: not copied up ({e})")),
        }
        // The view shows the same (through the kernel's attribute cache).
        match lst(&fx.m(n)) {
            Ok(m) => {
                let l = &lower[n];
                c.eq(
                    format!("view {n}: type/mode/uid/gid/rdev"),
                    (
                        FileType::of(m.file_type()),
                        m.mode() & 0o7777,
                        m.uid(),
                        m.gid(),
                        m.rdev(),
                    ),
                    (l.ftype, l.mode, l.uid, l.gid, l.rdev),
                );
            }
            Err(e) => c.fail(format!("view {n}: {e}")),
        }
    }
    c.r(fx.upper_file("reg", &tag(L1, "reg")));
    let mut reg2 = tag(L1, "reg2");
    reg2.extend_from_slice(b"more\n");
    c.r(fx.upper_file("reg2", &reg2));
    c.eq(
        "upper dir: user.trigger",
        sys::lgetxattr(&fx.u("dir"), b"user.trigger").ok(),
        Some(b"t".to_vec()),
    );
    // A dir copy-up copies the dir, not its children.
    c.r(fx.upper_absent("dir/child"));
    c.eq(
        "view dir: listing",
        fx.view_list("dir"),
        vec!["child".to_string(), "child2".into()],
    );
    // The capability is also readable through the mount.
    c.eq(
        "view reg: security.capability",
        sys::lgetxattr(&fx.m("reg"), b"security.capability").ok(),
        Some(capability_v2_blob()),
    );
    fx.finish(c, "copy-up metadata");
}

// ---------------------------------------------------------------------------
// 4. A 1 GiB sparse file stays sparse
// ---------------------------------------------------------------------------

/// A cheap fingerprint of a big sparse file: metadata, its data/hole map and
/// a hash of the data extents only (never reads 1 GiB of zeros).
fn sparse_fingerprint(p: &Path) -> String {
    let m = lst(p).expect("lstat");
    let f = File::open(p).expect("open");
    let mut map = Vec::new();
    let mut off = 0i64;
    let mut h = 0u64;
    while off < m.len() as i64 {
        let Ok(start) = sys::lseek(&f, off, libc::SEEK_DATA) else {
            break;
        };
        let end = sys::lseek(&f, start, libc::SEEK_HOLE).expect("SEEK_HOLE");
        let mut buf = vec![0u8; (end - start) as usize];
        f.read_exact_at(&mut buf, start as u64)
            .expect("read extent");
        h ^= fnv(&buf).rotate_left((start % 63) as u32);
        map.push((start, end));
        off = end;
    }
    format!(
        "size {} blocks {} mode {:o} owner {}:{} mtime {}.{} ctime {}.{} ino {} extents {map:?} hash {h:x}",
        m.len(),
        m.blocks(),
        m.mode(),
        m.uid(),
        m.gid(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        m.ino()
    )
}

#[test]
fn one_gib_sparse_lower_copied_up_by_a_small_write_stays_sparse() {
    if !require_mount_env() {
        return;
    }
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    let blocks: [(u64, u8); 3] = [(0, b'A'), (300 * MIB + 4096, b'B'), (GIB - 4096, b'C')];
    let t = TestDir::new("sparse-1g");
    let lower = t.mkdir("lower");
    {
        let f = File::create(lower.join("big")).expect("create");
        f.set_len(GIB).expect("truncate -s 1G");
        for (off, b) in blocks {
            f.write_all_at(&[b; 4096], off).expect("write block");
        }
    }
    let before = sparse_fingerprint(&lower.join("big"));
    let upper = t.mkdir("upper");
    let mnt = t.mkdir("mnt");
    let m = mount_unionfs(
        &[&lower],
        Some(&upper),
        Some(&t.join("work")),
        &mnt,
        &["--format", OVERLAY],
    );
    let mut c = Checks::default();
    let start = std::time::Instant::now();
    c.ok(
        "small write at 512 MiB",
        write_at(&mnt.join("big"), 512 * MIB, b"hello"),
    );
    let took = start.elapsed();
    c.t(took < Duration::from_secs(20), || {
        format!("copy-up of the sparse file took {took:?}")
    });
    let up = upper.join("big");
    match lst(&up) {
        Ok(md) => {
            c.eq("upper big: size", md.len(), GIB);
            c.t(md.blocks() * 512 < 16 * MIB, || {
                format!(
                    "upper big: not sparse: {} bytes allocated",
                    md.blocks() * 512
                )
            });
        }
        Err(e) => c.fail(format!("upper big: not copied up: {e}")),
    }
    let expect_at = |p: &Path, c: &mut Checks, side: &str| {
        let Some(f) = c.ok(format!("open {side} big"), File::open(p)) else {
            return;
        };
        let mut checks: Vec<(u64, Vec<u8>)> =
            blocks.iter().map(|&(o, b)| (o, vec![b; 4096])).collect();
        checks.push((512 * MIB, b"hello".to_vec()));
        checks.push((512 * MIB + 5, vec![0; 100]));
        checks.push((100 * MIB, vec![0; 4096]));
        checks.push((300 * MIB, vec![0; 4096]));
        for (off, want) in checks {
            let mut buf = vec![0xeeu8; want.len()];
            c.ok(
                format!("pread {side} at {off}"),
                f.read_exact_at(&mut buf, off),
            );
            c.t(buf == want, || {
                format!(
                    "{side} big: wrong bytes at offset {off}: {:?}...",
                    &buf[..8.min(buf.len())]
                )
            });
        }
    };
    expect_at(&up, &mut c, "upper");
    expect_at(&mnt.join("big"), &mut c, "view");
    m.umount();
    c.eq(
        "lower big unchanged",
        sparse_fingerprint(&lower.join("big")),
        before,
    );
    c.done("1 GiB sparse copy-up");
}

// ---------------------------------------------------------------------------
// 5. Racing copy-ups
// ---------------------------------------------------------------------------

#[test]
fn racing_writers_copy_up_once_and_keep_every_write() {
    if !require_mount_env() {
        return;
    }
    const THREADS: usize = 8;
    const SLOT: usize = 64 * 1024;
    const ROUNDS: usize = 12;
    let mut l1 = Layer::new(L1);
    for r in 0..ROUNDS {
        l1 = l1.file(format!("race{r}"), vec![b'L'; THREADS * SLOT]);
    }
    let fx = Fx::new("race-writers", &[l1], OVERLAY);
    let mut c = Checks::default();
    for r in 0..ROUNDS {
        let rel = format!("race{r}");
        let path = fx.m(&rel);
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let (path, barrier) = (path.clone(), barrier.clone());
                thread::spawn(move || -> io::Result<()> {
                    barrier.wait();
                    let f = OpenOptions::new().write(true).open(&path)?;
                    // Leave the last 4 KiB of each slot to the lower's bytes.
                    f.write_all_at(&vec![b'0' + i as u8; SLOT - 4096], (i * SLOT) as u64)
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            match h.join() {
                Ok(r) => {
                    c.ok(format!("{rel}: writer {i}"), r);
                }
                Err(_) => c.fail(format!("{rel}: writer {i} panicked")),
            }
        }
        let mut want = Vec::with_capacity(THREADS * SLOT);
        for i in 0..THREADS {
            want.extend(std::iter::repeat_n(b'0' + i as u8, SLOT - 4096));
            want.extend(std::iter::repeat_n(b'L', 4096));
        }
        c.r(fx.upper_file(&rel, &want));
        c.r(fx.view_file(&rel, &want));
    }
    // One upper copy each, nothing else.
    let names: Vec<String> = list_str(&fx.upper);
    let want: Vec<String> = {
        let mut v: Vec<String> = (0..ROUNDS).map(|r| format!("race{r}")).collect();
        v.sort();
        v
    };
    c.eq("upper: entries", names, want);
    let tmp = fx.work.join("tmp");
    c.eq(
        "work/tmp while mounted",
        list_str(&tmp),
        Vec::<String>::new(),
    );
    fx.finish(c, "racing writers");
}

#[test]
fn racing_chmods_copy_up_once_and_parents_first() {
    if !require_mount_env() {
        return;
    }
    const THREADS: usize = 16;
    const ROUNDS: usize = 10;
    let mut l1 = Layer::new(L1);
    for r in 0..ROUNDS {
        l1 = l1.tagged(format!("same{r}"));
        for i in 0..THREADS {
            l1 = l1.tagged(format!("deep{r}/a/b/f{i}"));
        }
    }
    let fx = Fx::new(
        "race-chmod",
        &[l1, Layer::new(L2).tagged("deep0/a/b/l2")],
        OVERLAY,
    );
    let mut c = Checks::default();
    for r in 0..ROUNDS {
        // All threads chmod the same lower file.
        let same = fx.m(&format!("same{r}"));
        let barrier = Arc::new(Barrier::new(THREADS));
        let hs: Vec<_> = (0..THREADS)
            .map(|_| {
                let (p, b) = (same.clone(), barrier.clone());
                thread::spawn(move || {
                    b.wait();
                    fs::set_permissions(&p, perm(0o600))
                })
            })
            .collect();
        for h in hs {
            c.ok(format!("chmod same{r}"), h.join().expect("thread"));
        }
        c.r(fx.upper_file(&format!("same{r}"), &tag(L1, format!("same{r}"))));
        c.r(fx.upper_meta(&format!("same{r}"), 0o600, 0, 0));
        // Each thread chmods its own file below the same lower-only dirs.
        let barrier = Arc::new(Barrier::new(THREADS));
        let hs: Vec<_> = (0..THREADS)
            .map(|i| {
                let (p, b) = (fx.m(&format!("deep{r}/a/b/f{i}")), barrier.clone());
                thread::spawn(move || {
                    b.wait();
                    fs::set_permissions(&p, perm(0o640))
                })
            })
            .collect();
        for (i, h) in hs.into_iter().enumerate() {
            c.ok(format!("chmod deep{r}/a/b/f{i}"), h.join().expect("thread"));
        }
        for i in 0..THREADS {
            let rel = format!("deep{r}/a/b/f{i}");
            c.r(fx.upper_file(&rel, &tag(L1, &rel)));
            c.r(fx.upper_meta(&rel, 0o640, 0, 0));
        }
        let mut want: Vec<String> = (0..THREADS).map(|i| format!("f{i}")).collect();
        if r == 0 {
            want.push("l2".into());
        }
        want.sort();
        c.eq(
            format!("view deep{r}/a/b: listing"),
            fx.view_list(&format!("deep{r}/a/b")),
            want,
        );
    }
    c.eq(
        "work/tmp while mounted",
        list_str(&fx.work.join("tmp")),
        Vec::<String>::new(),
    );
    fx.finish(c, "racing chmods");
}

// ---------------------------------------------------------------------------
// 6, 7. Open file descriptors across copy-up; O_TRUNC
// ---------------------------------------------------------------------------

#[test]
fn reader_opened_before_copy_up_reads_the_new_bytes() {
    if !require_mount_env() {
        return;
    }
    let fx = Fx::new(
        "reader-fd",
        &[Layer::new(L1).tagged("f").tagged("g")],
        OVERLAY,
    );
    let mut c = Checks::default();
    let orig = tag(L1, "f");
    if let Some(reader) = c.ok("open f O_RDONLY", File::open(fx.m("f"))) {
        let mut buf = vec![0u8; orig.len()];
        c.ok("read f before", reader.read_exact_at(&mut buf, 0));
        c.eq("reader before copy-up", s(&buf), s(&orig));
        c.r(fx.upper_absent("f"));
        c.ok(
            "write NEW through another fd",
            write_at(&fx.m("f"), 0, b"NEW"),
        );
        let mut want = orig.clone();
        want[..3].copy_from_slice(b"NEW");
        c.r(fx.upper_file("f", &want));
        let mut buf = vec![0u8; want.len()];
        c.ok("read f after", reader.read_exact_at(&mut buf, 0));
        c.eq("reader after copy-up (page cache)", s(&buf), s(&want));
        // Drop the cached pages: the read now goes to the daemon through the
        // reader's own handle, which must follow the copy-up.
        c.ok("fadvise DONTNEED", sys::fadvise_dontneed(&reader));
        let mut buf = vec![0u8; want.len()];
        c.ok(
            "read f after dropping the cache",
            reader.read_exact_at(&mut buf, 0),
        );
        c.eq("reader after copy-up (from the daemon)", s(&buf), s(&want));
        // A later write, growing the file, shows to the reader as well.
        c.ok("append", append(&fx.m("f"), b"TAIL"));
        want.extend_from_slice(b"TAIL");
        c.ok("fadvise DONTNEED", sys::fadvise_dontneed(&reader));
        let mut v = Vec::new();
        let mut r2 = &reader;
        c.ok(
            "seek+read",
            io::Seek::seek(&mut r2, io::SeekFrom::Start(0)).and_then(|_| r2.read_to_end(&mut v)),
        );
        c.eq("reader sees the appended bytes", s(&v), s(&want));
    }
    // A reader that never read before the copy-up (nothing cached).
    if let Some(reader) = c.ok("open g O_RDONLY", File::open(fx.m("g"))) {
        c.ok("write g", write_at(&fx.m("g"), 0, b"GGG"));
        let mut want = tag(L1, "g");
        want[..3].copy_from_slice(b"GGG");
        let mut buf = vec![0u8; want.len()];
        c.ok("read g", reader.read_exact_at(&mut buf, 0));
        c.eq(
            "reader opened before copy-up, first read after",
            s(&buf),
            s(&want),
        );
    }
    fx.finish(c, "reader fd across copy-up");
}

#[test]
fn open_with_o_trunc_gives_an_empty_upper_file() {
    if !require_mount_env() {
        return;
    }
    let l1 = Layer::new(L1)
        .tagged("t")
        .mode(0o640)
        .owner(1234, 5678)
        .xattr("user.k", "v")
        .tagged("t2");
    let fx = Fx::new("o-trunc", &[l1, Layer::new(L2).tagged("t")], OVERLAY);
    let mut c = Checks::default();
    if c.ok(
        "open t O_WRONLY|O_TRUNC",
        open_flags(&fx.m("t"), libc::O_WRONLY | libc::O_TRUNC, 0),
    )
    .is_some()
    {
        c.r(fx.view_file("t", b""));
        c.r(fx.upper_file("t", b""));
        c.r(fx.upper_meta("t", 0o640, 1234, 5678));
        c.eq(
            "upper t: user.k",
            sys::lgetxattr(&fx.u("t"), b"user.k").ok(),
            Some(b"v".to_vec()),
        );
    }
    c.eq(
        "lower t keeps its bytes",
        rd(&fx.l(0, "t")).ok(),
        Some(tag(L1, "t")),
    );
    // O_TRUNC then write.
    if c.ok("fs::write t2 (O_TRUNC)", fs::write(fx.m("t2"), b"short"))
        .is_some()
    {
        c.r(fx.view_file("t2", b"short"));
        c.r(fx.upper_file("t2", b"short"));
    }
    fx.finish(c, "O_TRUNC");
}

// ---------------------------------------------------------------------------
// 8. Ownership and permissions
// ---------------------------------------------------------------------------

const USER: u32 = 1000;

/// Runs `script` with `sh -c` as uid/gid `USER` with no supplementary
/// groups (umask 022).
fn as_user(script: &str) -> CmdOutput {
    run(
        Command::new("setpriv")
            .arg(format!("--reuid={USER}"))
            .arg(format!("--regid={USER}"))
            .arg("--clear-groups")
            .arg("--")
            .args(["sh", "-c"])
            .arg(format!("umask 022; {script}")),
        Duration::from_secs(20),
    )
}

#[test]
fn new_objects_belong_to_the_caller_setgid_dirs_and_suid_clearing() {
    if !require_mount_env() {
        return;
    }
    let l1 = Layer::new(L1)
        .dir("pub")
        .mode(0o777)
        .dir("sg")
        .owner(0, 4242)
        .mode(0o2777)
        .file("suidw", "abcdef")
        .mode(0o6777)
        .file("suidt", "abcdef")
        .mode(0o6777)
        .tagged("priv")
        .mode(0o600)
        .dir("closed")
        .mode(0o755);
    let fx = Fx::new("ownership", &[l1, Layer::new(L2).tagged("pub/l2")], OVERLAY);
    let mut c = Checks::default();
    let mnt = fx.mnt.display().to_string();

    // New objects belong to the caller.
    let out = as_user(&format!(
        "set -e; cd {mnt}/pub; printf data > f; mkdir d; ln -s f l; mkfifo p; ln f h"
    ));
    c.t(out.success(), || format!("create as uid {USER}: {out}"));
    for (rel, ft) in [
        ("pub/f", FileType::File),
        ("pub/d", FileType::Dir),
        ("pub/l", FileType::Symlink),
        ("pub/p", FileType::Fifo),
    ] {
        for (side, p) in [("view", fx.m(rel)), ("upper", fx.u(rel))] {
            match lst(&p) {
                Ok(m) => c.eq(
                    format!("{side} {rel}: type and owner"),
                    (FileType::of(m.file_type()), m.uid(), m.gid()),
                    (ft, USER, USER),
                ),
                Err(e) => c.fail(format!("{side} {rel}: {e}")),
            }
        }
    }
    c.r(fx.upper_meta("pub/f", 0o644, USER, USER));
    c.r(fx.upper_meta("pub/d", 0o755, USER, USER));
    // The copied-up parent keeps its owner and mode.
    c.r(fx.upper_meta("pub", 0o777, 0, 0));

    // A setgid parent hands down its gid, and the setgid bit to subdirs:
    // in a lower dir and in a dir made in the upper.
    c.ok("mkdir sg2", fs::create_dir(fx.m("sg2")));
    c.ok(
        "chown sg2",
        std::os::unix::fs::lchown(fx.m("sg2"), Some(0), Some(4343)),
    );
    c.ok("chmod sg2", fs::set_permissions(fx.m("sg2"), perm(0o2777)));
    for (dir, gid) in [("sg", 4242), ("sg2", 4343)] {
        let out = as_user(&format!("set -e; cd {mnt}/{dir}; printf x > f; mkdir d"));
        c.t(out.success(), || {
            format!("create in {dir} as uid {USER}: {out}")
        });
        c.r(fx.upper_meta(&format!("{dir}/f"), 0o644, USER, gid));
        c.r(fx.upper_meta(&format!("{dir}/d"), 0o2755, USER, gid));
        c.eq(
            format!("view {dir}/d: mode and gid"),
            lst(&fx.m(&format!("{dir}/d")))
                .map(|m| (m.mode() & 0o7777, m.gid()))
                .ok(),
            Some((0o2755, gid)),
        );
    }

    // A write or truncate by a non-owner with write permission clears
    // setuid/setgid (the copy-up itself keeps them).
    let out = as_user(&format!("set -e; printf XY 1<> {mnt}/suidw"));
    c.t(out.success(), || {
        format!("write suidw as uid {USER}: {out}")
    });
    c.r(fx.upper_file("suidw", b"XYcdef"));
    c.r(fx.upper_meta("suidw", 0o777, 0, 0));
    let out = as_user(&format!("set -e; truncate -s 2 {mnt}/suidt"));
    c.t(out.success(), || {
        format!("truncate suidt as uid {USER}: {out}")
    });
    c.r(fx.upper_file("suidt", b"ab"));
    c.r(fx.upper_meta("suidt", 0o777, 0, 0));
    // Same for a file made in the upper.
    c.ok("create suidu", fs::write(fx.m("suidu"), b"abc"));
    c.ok(
        "chmod suidu",
        fs::set_permissions(fx.m("suidu"), perm(0o6777)),
    );
    let out = as_user(&format!("set -e; printf Z >> {mnt}/suidu"));
    c.t(out.success(), || {
        format!("append suidu as uid {USER}: {out}")
    });
    c.r(fx.upper_meta("suidu", 0o777, 0, 0));
    c.r(fx.upper_file("suidu", b"abcZ"));

    // Another user gets EACCES on a 0600 file, and cannot create in a 0755
    // root-owned dir; nothing is copied up or created.
    for (what, script) in [
        ("read 0600 file", format!("cat {mnt}/priv")),
        ("write 0600 file", format!("printf x >> {mnt}/priv")),
        ("create in 0755 dir", format!("printf x > {mnt}/closed/new")),
        ("mkdir in 0755 dir", format!("mkdir {mnt}/closed/newd")),
    ] {
        let out = as_user(&script);
        c.t(
            !out.success() && out.stderr.contains("Permission denied"),
            || format!("{what} as uid {USER}: expected EACCES (Permission denied): {out}"),
        );
    }
    c.r(fx.upper_absent("priv"));
    c.r(fx.upper_absent("closed"));
    c.r(fx.view_file("priv", &tag(L1, "priv")));
    fx.finish(c, "ownership and permissions");
}

// ---------------------------------------------------------------------------
// 9. Forging whiteouts and markers through the mount is refused
// ---------------------------------------------------------------------------

const PRIVATE_XATTRS: [&str; 7] = [
    "trusted.overlay.opaque",
    "trusted.overlay.whiteout",
    "user.overlay.opaque",
    "user.overlay.whiteout",
    "user.fuseoverlayfs.opaque",
    "user.unionfs.anything",
    "trusted.unionfs.anything",
];

#[test]
fn forging_whiteouts_and_private_xattrs_is_refused() {
    if !require_mount_env() {
        return;
    }
    let l1 = Layer::new(L1)
        .tagged("a")
        .tagged("ldir/f")
        .tagged("priv")
        .xattr("trusted.overlay.origin", "o")
        .xattr("trusted.overlay.opaque", "y")
        .xattr("user.overlay.redirect", "r")
        .xattr("user.unionfs.ino", "i")
        .xattr("user.fuseoverlayfs.x", "f")
        .xattr("user.visible", "v")
        .tagged("gone/f");
    let fx = Fx::new("forgery", &[l1, Layer::new(L2)], OVERLAY);
    let mut c = Checks::default();
    c.ok("mkdir updir", fs::create_dir(fx.m("updir")));
    for dir in ["", "ldir", "updir"] {
        let p = |n: &str| {
            if dir.is_empty() {
                n.to_string()
            } else {
                format!("{dir}/{n}")
            }
        };
        let w = p(".wh.x");
        c.errno(
            format!("create {w}"),
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(fx.m(&w)),
            libc::EPERM,
        );
        c.errno(
            format!("create {}", p(".wh..wh..opq")),
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(fx.m(&p(".wh..wh..opq"))),
            libc::EPERM,
        );
        c.errno(format!("mkdir {w}"), fs::create_dir(fx.m(&w)), libc::EPERM);
        c.errno(
            format!("symlink {w}"),
            std::os::unix::fs::symlink("a", fx.m(&w)),
            libc::EPERM,
        );
        c.errno(
            format!("mkfifo {w}"),
            sys::mknod(&fx.m(&w), libc::S_IFIFO | 0o644, 0),
            libc::EPERM,
        );
        c.errno(
            format!("link a -> {w}"),
            fs::hard_link(fx.m("a"), fx.m(&w)),
            libc::EPERM,
        );
        c.errno(
            format!("rename a -> {w}"),
            fs::rename(fx.m("a"), fx.m(&w)),
            libc::EPERM,
        );
        c.errno(
            format!("mknod char 0/0 {}", p("fake")),
            sys::mknod(&fx.m(&p("fake")), libc::S_IFCHR | 0o644, 0),
            libc::EPERM,
        );
        c.errno(
            format!("lstat {}", p("fake")),
            lst(&fx.m(&p("fake"))),
            libc::ENOENT,
        );
        c.errno(format!("lstat {w}"), lst(&fx.m(&w)), libc::ENOENT);
    }
    c.r(fx.view_file("a", &tag(L1, "a")));
    c.r(fx.upper_absent("a"));
    c.r(fx.upper_absent("fake"));
    c.r(fx.upper_absent(".wh.x"));
    // Private xattrs can be neither set nor removed, on lower and upper
    // objects, files and dirs; nothing is copied up for the attempt.
    for rel in ["a", "ldir", "updir", "priv"] {
        for x in PRIVATE_XATTRS {
            c.errno(
                format!("setxattr {x} on {rel}"),
                sys::lsetxattr(&fx.m(rel), x.as_bytes(), b"y"),
                libc::EPERM,
            );
            c.errno(
                format!("removexattr {x} on {rel}"),
                sys::lremovexattr(&fx.m(rel), x.as_bytes()),
                libc::EPERM,
            );
        }
    }
    c.r(fx.upper_absent("a"));
    c.r(fx.upper_absent("priv"));
    c.r(fx.not_opaque("updir"));
    c.eq(
        "upper updir: xattrs",
        sys::llistxattr(&fx.u("updir")).unwrap_or_default(),
        Vec::<Vec<u8>>::new(),
    );
    // Private xattrs are never listed nor readable: on the lower file, on its
    // copy-up, on an opaque dir made by mkdir over a whiteout.
    let visible = |c: &mut Checks, rel: &str, want: &[&str]| {
        let mut got: Vec<String> = sys::llistxattr(&fx.m(rel))
            .unwrap_or_default()
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        got.sort();
        c.eq(
            format!("view {rel}: listxattr"),
            got,
            want.iter().map(|x| x.to_string()).collect(),
        );
        for x in [
            "trusted.overlay.origin",
            "trusted.overlay.opaque",
            "user.overlay.redirect",
            "user.unionfs.ino",
            "user.fuseoverlayfs.x",
        ] {
            c.errno(
                format!("view {rel}: getxattr {x}"),
                sys::lgetxattr(&fx.m(rel), x.as_bytes()),
                libc::ENODATA,
            );
        }
    };
    visible(&mut c, "priv", &["user.visible"]);
    c.ok(
        "setxattr user.more on priv",
        sys::lsetxattr(&fx.m("priv"), b"user.more", b"m"),
    );
    visible(&mut c, "priv", &["user.more", "user.visible"]);
    c.ok("unlink gone/f", fs::remove_file(fx.m("gone/f")));
    c.ok("rmdir gone", fs::remove_dir(fx.m("gone")));
    c.ok("mkdir gone", fs::create_dir(fx.m("gone")));
    c.r(fx.opaque("gone"));
    visible(&mut c, "gone", &[]);
    fx.finish(c, "forgery");
}

// ---------------------------------------------------------------------------
// 10. statfs reports the upper's filesystem
// ---------------------------------------------------------------------------

#[test]
fn statfs_reports_the_upper_filesystem() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("statfs");
    let lowers = render_stack(
        &[Layer::new(L1).tagged("f")],
        &t.join("lowers"),
        Format::Kernel,
    );
    let lowers_before = lowers_snapshot(&lowers);
    let tm = mount_tmpfs_sized(&t.join("tm"), "64m");
    let upper = tm.path().join("upper");
    fs::create_dir(&upper).expect("mkdir upper");
    let mnt = t.mkdir("mnt");
    let m = mount_unionfs(
        &as_paths(&lowers),
        Some(&upper),
        Some(&tm.path().join("work")),
        &mnt,
        &["--format", OVERLAY],
    );
    let mut c = Checks::default();
    let cmp = |c: &mut Checks, when: &str| {
        let (Ok(sm), Ok(su)) = (sys::statvfs(&mnt), sys::statvfs(&upper)) else {
            c.fail(format!("statvfs failed {when}"));
            return;
        };
        c.eq(
            format!("{when}: f_bsize mount vs upper"),
            sm.bsize,
            su.bsize,
        );
        c.eq(
            format!("{when}: f_blocks*f_frsize mount vs upper"),
            sm.blocks * sm.frsize,
            su.blocks * su.frsize,
        );
        c.eq(
            format!("{when}: total bytes = tmpfs size"),
            sm.blocks * sm.frsize,
            64 << 20,
        );
        c.eq(
            format!("{when}: f_bfree*f_frsize mount vs upper"),
            sm.bfree * sm.frsize,
            su.bfree * su.frsize,
        );
        c.eq(
            format!("{when}: f_files mount vs upper"),
            sm.files,
            su.files,
        );
        c.eq(format!("{when}: f_namemax"), sm.namemax, su.namemax);
    };
    cmp(&mut c, "empty");
    if let Ok(sl) = sys::statvfs(&lowers[0]) {
        c.t(sl.blocks * sl.frsize != 64 << 20, || {
            "the lower is on a 64 MiB fs too: the test proves nothing".into()
        });
    }
    c.ok(
        "write 8 MiB",
        fs::write(mnt.join("big"), vec![7u8; 8 << 20]),
    );
    cmp(&mut c, "after writing 8 MiB");
    m.umount();
    drop(tm);
    lowers_unchanged(&lowers_before, &mut c);
    c.done("statfs");
}

// ---------------------------------------------------------------------------
// 11. The work dir
// ---------------------------------------------------------------------------

fn simple_lowers(t: &TestDir) -> Vec<PathBuf> {
    render_stack(
        &[Layer::new(L1).tagged("f"), Layer::new(L2).tagged("g")],
        &t.join("lowers"),
        Format::Kernel,
    )
}

#[test]
fn a_second_mount_of_the_same_upper_is_refused() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("second-mount");
    let lowers = simple_lowers(&t);
    let lowers_before = lowers_snapshot(&lowers);
    let upper = t.mkdir("upper");
    let work = t.join("work");
    let mnt = t.mkdir("mnt");
    let mnt2 = t.mkdir("mnt2");
    let m = mount_unionfs(&as_paths(&lowers), Some(&upper), Some(&work), &mnt, &[]);
    let mut c = Checks::default();
    c.ok(
        "write through the first mount",
        fs::write(mnt.join("first"), b"1"),
    );
    let work2 = t.join("work2");
    for (what, w) in [
        ("same work dir", Some(work.as_path())),
        ("another work dir", Some(work2.as_path())),
        ("default work dir", None),
    ] {
        let before = snapshot_full(&upper);
        let args = mount_args(Form::Mount, &as_paths(&lowers), Some(&upper), w, &mnt2, &[]);
        let out = unionfs(&args);
        if mount_at(&mnt2).is_some() {
            c.fail(format!("second mount ({what}) is mounted: {out}"));
            lazy_umount(&mnt2);
            continue;
        }
        c.t(!out.success(), || {
            format!("second mount ({what}) exited 0: {out}")
        });
        let lines = out.stderr_lines();
        let low = out.stderr.to_lowercase();
        c.t(
            lines.len() == 1
                && ["already", "lock", "busy", "in use"].iter().any(|k| low.contains(k))
                && out.stderr.contains(&upper.display().to_string()),
            || format!("second mount ({what}): expected one stderr line naming the upper and the lock: {out}"),
        );
        for d in before.diff(&snapshot_full(&upper), Fields::NONE) {
            c.fail(format!("second mount ({what}) changed the upper: {d}"));
        }
    }
    // The first mount is unharmed.
    c.ok(
        "write through the first mount after",
        fs::write(mnt.join("second"), b"2"),
    );
    c.eq(
        "upper after",
        list_str(&upper),
        vec!["first".to_string(), "second".into()],
    );
    m.umount();
    // Once unmounted, the upper can be mounted again.
    let m2 = mount_unionfs(&as_paths(&lowers), Some(&upper), Some(&work), &mnt2, &[]);
    c.eq(
        "remount: view",
        rd(&mnt2.join("first")).ok(),
        Some(b"1".to_vec()),
    );
    m2.umount();
    lowers_unchanged(&lowers_before, &mut c);
    c.done("second mount of one upper");
}

#[test]
fn stale_temporaries_are_removed_at_mount_and_the_default_work_dir_sits_beside_the_upper() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("work-dir");
    let lowers = simple_lowers(&t);
    let lowers_before = lowers_snapshot(&lowers);
    let mut c = Checks::default();

    // Stale temporaries of a crashed mount.
    let upper = t.mkdir("upper");
    let work = t.mkdir("work");
    let tmp = t.mkdir("work/tmp");
    fs::write(tmp.join("#999-1"), b"half a copy-up").expect("stale file");
    fs::create_dir_all(tmp.join("#999-2/sub/deeper")).expect("stale dir");
    fs::write(tmp.join("#999-2/sub/deeper/f"), b"x").expect("stale file");
    fs::set_permissions(tmp.join("#999-2/sub"), perm(0o500)).expect("chmod");
    sys::mknod(&tmp.join("#999-3"), libc::S_IFCHR, 0).expect("stale whiteout");
    std::os::unix::fs::symlink("/etc", tmp.join("#999-4")).expect("stale symlink");
    let mnt = t.mkdir("mnt");
    let m = mount_unionfs(&as_paths(&lowers), Some(&upper), Some(&work), &mnt, &[]);
    c.eq("work/tmp after mount", list_str(&tmp), Vec::<String>::new());
    c.t(exists(&work.join("unionfs.lock")), || {
        "no work/unionfs.lock".into()
    });
    c.t(exists(Path::new("/etc/passwd")), || {
        "a stale symlink was followed".into()
    });
    c.eq("view", list_str(&mnt), vec!["f".to_string(), "g".into()]);
    m.umount();

    // The default work dir: `.<upper name>.unionfs-work` beside the upper.
    let upper2 = t.mkdir("up2");
    let mnt2 = t.mkdir("mnt2");
    let m = mount_unionfs(&as_paths(&lowers), Some(&upper2), None, &mnt2, &[]);
    let def = t.join(".up2.unionfs-work");
    c.t(def.is_dir(), || {
        format!("default work dir {} missing", def.display())
    });
    c.t(
        exists(&def.join("unionfs.lock")) && def.join("tmp").is_dir(),
        || {
            format!(
                "default work dir {} lacks unionfs.lock or tmp/: {:?}",
                def.display(),
                fs::read_dir(&def).map(|r| r.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
            )
        },
    );
    c.eq(
        "default work dir on the upper's fs",
        lst(&def).map(|m| m.dev()).ok(),
        lst(&upper2).map(|m| m.dev()).ok(),
    );
    c.ok("write", fs::write(mnt2.join("new"), b"n"));
    c.eq("upper2", list_str(&upper2), vec!["new".to_string()]);
    c.eq(
        "view root hides the work dir",
        list_str(&mnt2),
        vec!["f".to_string(), "g".into(), "new".into()],
    );
    m.umount();
    lowers_unchanged(&lowers_before, &mut c);
    c.done("work dir");
}

#[test]
fn a_work_dir_on_another_filesystem_is_refused() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("work-xdev");
    let lowers = simple_lowers(&t);
    let lowers_before = lowers_snapshot(&lowers);
    let upper = t.mkdir("upper");
    let mnt = t.mkdir("mnt");
    let other = mount_tmpfs(&t.join("other"));
    let mut c = Checks::default();
    let before_upper = snapshot_full(&upper);
    for (what, work) in [
        ("existing work dir", other.path().join("made")),
        ("missing work dir", other.path().join("not-yet")),
    ] {
        if what.starts_with("existing") {
            fs::create_dir(&work).expect("mkdir");
        }
        let before = snapshot_full(other.path());
        let args = mount_args(
            Form::Mount,
            &as_paths(&lowers),
            Some(&upper),
            Some(&work),
            &mnt,
            &[],
        );
        let out = unionfs(&args);
        if mount_at(&mnt).is_some() {
            c.fail(format!("{what}: mounted: {out}"));
            lazy_umount(&mnt);
            continue;
        }
        c.t(!out.success(), || format!("{what}: exited 0: {out}"));
        c.t(
            out.stderr_lines().len() == 1 && out.stderr.to_lowercase().contains("work"),
            || format!("{what}: expected one stderr line about the work dir: {out}"),
        );
        for d in before.diff(&snapshot_full(other.path()), Fields::NONE) {
            c.fail(format!("{what}: refused mount changed the other fs: {d}"));
        }
    }
    for d in before_upper.diff(&snapshot_full(&upper), Fields::NONE) {
        c.fail(format!("refused mount changed the upper: {d}"));
    }
    drop(other);
    lowers_unchanged(&lowers_before, &mut c);
    c.done("work dir on another fs");
}

// ---------------------------------------------------------------------------
// 12. The upper is a valid kernel overlayfs upper / OCI layer
// ---------------------------------------------------------------------------

fn compat_layers() -> [Layer; 2] {
    [
        Layer::new(L1)
            .tagged("keep")
            .tagged("keep2")
            .tagged("mod")
            .tagged("del")
            .tagged("dird/a")
            .tagged("dird/b")
            .tagged("ren")
            .tagged("over")
            .tagged("md/x")
            .tagged("sub/deep/f")
            .symlink("ln", "keep")
            .tagged("merged/two")
            .tagged("own")
            .xattr("user.x", "1")
            .fifo("lfifo"),
        Layer::new(L2)
            .tagged("mod")
            .tagged("l2only")
            .tagged("md/y")
            .tagged("dird/c")
            .tagged("sub/deep/g")
            .tagged("merged/one")
            .tagged("over")
            .whiteout("nothing"),
    ]
}

/// The operation sequence of the compatibility tests, through the mount at
/// `m`: creates, writes, deletes of lower files and dirs, mkdir over a
/// whiteout, renames, links, attribute changes.
fn compat_sequence(m: &Path, c: &mut Checks) {
    let p = |r: &str| m.join(r);
    let mut step = |what: &str, r: io::Result<()>| {
        c.ok(what, r);
    };
    step("create new", fs::write(p("new"), b"new\n"));
    step("mkdir newdir", fs::create_dir(p("newdir")));
    step("create newdir/f", fs::write(p("newdir/f"), b"f\n"));
    step(
        "link newdir/f2",
        fs::hard_link(p("newdir/f"), p("newdir/f2")),
    );
    step("append mod", append(&p("mod"), b"+appended\n"));
    step(
        "chmod sub/deep/f",
        fs::set_permissions(p("sub/deep/f"), perm(0o600)),
    );
    step("truncate sub/deep/g", sys::truncate(&p("sub/deep/g"), 3));
    step("unlink del", fs::remove_file(p("del")));
    step("unlink l2only", fs::remove_file(p("l2only")));
    for f in ["dird/a", "dird/b", "dird/c"] {
        step(&format!("unlink {f}"), fs::remove_file(p(f)));
    }
    step("rmdir dird", fs::remove_dir(p("dird")));
    step("unlink md/x", fs::remove_file(p("md/x")));
    step("unlink md/y", fs::remove_file(p("md/y")));
    step("rmdir md", fs::remove_dir(p("md")));
    step("mkdir md over whiteout", fs::create_dir(p("md")));
    step("create md/new", fs::write(p("md/new"), b"md new\n"));
    step("rename ren -> ren2", fs::rename(p("ren"), p("ren2")));
    step("rename new -> sub/new", fs::rename(p("new"), p("sub/new")));
    step("create new2", fs::write(p("new2"), b"new2\n"));
    step("rename new2 over keep2", fs::rename(p("new2"), p("keep2")));
    step(
        "rename over -> sub/over2",
        fs::rename(p("over"), p("sub/over2")),
    );
    step("symlink sl", std::os::unix::fs::symlink("mod", p("sl")));
    step(
        "setxattr merged/one",
        sys::lsetxattr(&p("merged/one"), b"user.k", b"v"),
    );
    step("unlink merged/two", fs::remove_file(p("merged/two")));
    step(
        "mkfifo pipe",
        sys::mknod(&p("pipe"), libc::S_IFIFO | 0o644, 0),
    );
    step(
        "chown own",
        std::os::unix::fs::lchown(p("own"), Some(1234), Some(5678)),
    );
    step("mkdir emptyd", fs::create_dir(p("emptyd")));
    step(
        "link keep -> keeplink",
        fs::hard_link(p("keep"), p("keeplink")),
    );
    step("unlink ln", fs::remove_file(p("ln")));
    step(
        "create ln as a file",
        fs::write(p("ln"), b"was a symlink\n"),
    );
}

#[test]
fn overlay_format_upper_mounts_under_kernel_overlayfs_with_the_same_view() {
    if !require_kernel_overlay() {
        return;
    }
    let t = TestDir::new("compat-overlay");
    let lowers = render_stack(&compat_layers(), &t.join("lowers"), Format::Kernel);
    let lowers_before = lowers_snapshot(&lowers);
    let upper = t.mkdir("upper");
    let mnt = t.mkdir("mnt");
    let mut c = Checks::default();
    let m = mount_unionfs(
        &as_paths(&lowers),
        Some(&upper),
        Some(&t.join("work")),
        &mnt,
        &["--format", OVERLAY],
    );
    compat_sequence(&mnt, &mut c);
    let ours = snapshot(&mnt);
    m.umount();

    let kmnt = t.mkdir("kmnt");
    let kwork = t.mkdir("kwork");
    let k = mount_kernel_overlay(&as_paths(&lowers), Some(&upper), Some(&kwork), &kmnt, &[]);
    let theirs = snapshot(&kmnt);
    k.umount();
    // Ignored:
    // * inode numbers (each implementation numbers inodes its own way:
    //   unionfs by layer bits, overlayfs by origin/xino) and, with them, d_ino;
    // * ctimes: kernel overlayfs writes its own trusted.overlay.{uuid,origin,
    //   impure} xattrs onto upper dirs when it mounts and looks them up, which
    //   moves their ctime after unionfs showed it.
    // Everything else (names, types, modes, owners, sizes, contents, symlink
    // targets, user xattrs, link counts, mtimes, device numbers) must agree:
    // both show the same real files.
    for d in ours.diff(&theirs, Fields::INO | Fields::CTIME) {
        c.fail(format!(
            "unionfs view vs kernel overlayfs over the same upper: {d}"
        ));
    }
    c.t(
        theirs.get("md/new").is_some() && theirs.children("md") == vec![b"new".to_vec()],
        || {
            format!(
                "kernel overlayfs: md is not opaque: {:?}",
                theirs.children("md").iter().map(show).collect::<Vec<_>>()
            )
        },
    );
    lowers_unchanged(&lowers_before, &mut c);
    c.done("overlay-format upper under kernel overlayfs");
}

#[test]
fn oci_format_upper_holds_exactly_the_whiteouts_of_an_image_layer_diff() {
    if !require_mount_env() {
        return;
    }
    let l1 = Layer::new(L1)
        .tagged("a")
        .tagged("b")
        .tagged("d/x")
        .tagged("d/y")
        .dir("e")
        .tagged("k/z")
        .tagged("k/w")
        .tagged("r")
        .tagged("c")
        .tagged("md/q")
        .tagged("md2/q");
    let l2 = Layer::new(L2).tagged("md/q2").tagged("k/v");
    let mut fx = Fx::new("compat-oci", &[l1, l2], OCI);
    let mut c = Checks::default();
    let mut step = |what: &str, r: io::Result<()>| {
        c.ok(what, r);
    };
    step("unlink a", fs::remove_file(fx.m("a")));
    step("write b", append(&fx.m("b"), b"+b\n"));
    step("unlink d/x", fs::remove_file(fx.m("d/x")));
    step("unlink d/y", fs::remove_file(fx.m("d/y")));
    step("rmdir d", fs::remove_dir(fx.m("d")));
    step("rmdir e", fs::remove_dir(fx.m("e")));
    step("unlink k/z", fs::remove_file(fx.m("k/z")));
    step("rename r -> r2", fs::rename(fx.m("r"), fx.m("r2")));
    step("unlink c", fs::remove_file(fx.m("c")));
    step("create c", fs::write(fx.m("c"), b"c again\n"));
    step("unlink md/q", fs::remove_file(fx.m("md/q")));
    step("unlink md/q2", fs::remove_file(fx.m("md/q2")));
    step("rmdir md", fs::remove_dir(fx.m("md")));
    step("mkdir md", fs::create_dir(fx.m("md")));
    step("create md/new", fs::write(fx.m("md/new"), b"n\n"));
    step("unlink md2/q", fs::remove_file(fx.m("md2/q")));
    step("create p", fs::write(fx.m("p"), b"p"));
    step("unlink p", fs::remove_file(fx.m("p")));
    step(
        "mkdir pd + rmdir",
        fs::create_dir(fx.m("pd")).and_then(|_| fs::remove_dir(fx.m("pd"))),
    );
    let view = snapshot(&fx.mnt);

    let all = walk(&fx.upper);
    let wh: BTreeSet<String> = all
        .keys()
        .filter(|p| p.rsplit('/').next().is_some_and(|n| n.starts_with(".wh.")))
        .cloned()
        .collect();
    let want_wh: BTreeSet<String> = [
        ".wh.a",
        ".wh.d",
        ".wh.e",
        "k/.wh.z",
        ".wh.r",
        "md/.wh..wh..opq",
        "md2/.wh.q",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    c.eq("upper: .wh. entries", wh, want_wh);
    let want_all: BTreeSet<String> = [
        ".wh.a",
        "b",
        ".wh.d",
        ".wh.e",
        "k",
        "k/.wh.z",
        ".wh.r",
        "r2",
        "c",
        "md",
        "md/.wh..wh..opq",
        "md/new",
        "md2",
        "md2/.wh.q",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    c.eq(
        "upper: every entry",
        all.keys().cloned().collect::<BTreeSet<_>>(),
        want_all,
    );
    for (p, m) in &all {
        c.t(
            !m.file_type().is_char_device() && !m.file_type().is_block_device(),
            || format!("upper {p}: a device node in an OCI-format upper"),
        );
        if p.rsplit('/').next().is_some_and(|n| n.starts_with(".wh.")) {
            c.t(m.file_type().is_file() && m.len() == 0, || {
                format!("upper {p}: not an empty regular file")
            });
        }
    }
    for p in std::iter::once(fx.upper.clone()).chain(all.keys().map(|p| fx.u(p))) {
        for n in sys::llistxattr(&p).unwrap_or_default() {
            c.t(
                !n.starts_with(b"trusted.overlay.") && !n.starts_with(b"user.overlay."),
                || {
                    format!(
                        "upper {}: overlay xattr {} in an OCI-format upper",
                        p.display(),
                        show(&n)
                    )
                },
            );
        }
    }
    // Read back as an image layer by an independent implementation:
    // fuse-overlayfs, with the upper stacked as the top lower, must show the
    // view unionfs showed.
    fx.unmount();
    match which("fuse-overlayfs") {
        None => {
            let msg = "fuse-overlayfs not installed: the OCI upper is not read back";
            c.t(!in_ci(), || msg.to_string());
            eprintln!("WARNING: {msg}");
        }
        Some(fo) => {
            let rmnt = fx.t.mkdir("readback");
            let lowerdir = format!(
                "lowerdir={}:{}:{}",
                fx.upper.display(),
                fx.lowers[0].display(),
                fx.lowers[1].display()
            );
            let out = run(
                Command::new(fo).arg("-o").arg(&lowerdir).arg(&rmnt),
                Duration::from_secs(20),
            );
            if out.success() && is_mounted(&rmnt) {
                let theirs = snapshot(&rmnt);
                let um = run(Command::new("umount").arg(&rmnt), Duration::from_secs(20));
                c.t(um.success(), || format!("umount fuse-overlayfs: {um}"));
                // Ignored: inode numbers (each implementation numbers its own)
                // and times of dirs (fuse-overlayfs reports the top layer's
                // dir, unionfs too, but a read-only stack has no upper).
                for d in view.diff(&theirs, Fields::INO | Fields::DIR_NLINK) {
                    c.fail(format!(
                        "unionfs view vs fuse-overlayfs over upper:lowers: {d}"
                    ));
                }
            } else {
                c.fail(format!("fuse-overlayfs read-back mount failed: {out}"));
                if is_mounted(&rmnt) {
                    lazy_umount(&rmnt);
                }
            }
        }
    }
    fx.finish(c, "oci-format upper");
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(prog))
            .find(|p| p.is_file())
    })
}

// ---------------------------------------------------------------------------
// The demo: four image layers and an empty container layer
// ---------------------------------------------------------------------------

#[test]
fn demo_four_lowers_a_write_lands_in_the_upper_and_the_lower_keeps_its_bytes() {
    if !require_mount_env() {
        return;
    }
    let layers = [
        Layer::new("config")
            .tagged("app/server.conf")
            .tagged("etc/hostname"),
        Layer::new("app")
            .tagged("app/server.conf")
            .tagged("app/bin/server"),
        Layer::new("libs")
            .tagged("usr/lib/libc.so")
            .tagged("etc/motd"),
        Layer::new("base")
            .tagged("etc/motd")
            .tagged("etc/os-release")
            .tagged("usr/lib/libc.so"),
    ];
    let fx = Fx::new("demo", &layers, OVERLAY);
    let mut c = Checks::default();
    c.r(fx.view_file("etc/motd", &tag("libs", "etc/motd")));
    c.r(fx.view_file("app/server.conf", &tag("config", "app/server.conf")));
    c.r(fx.view_file("etc/os-release", &tag("base", "etc/os-release")));
    c.ok(
        "append to etc/motd",
        append(&fx.m("etc/motd"), b"hello from the container\n"),
    );
    let mut want = tag("libs", "etc/motd");
    want.extend_from_slice(b"hello from the container\n");
    c.r(fx.view_file("etc/motd", &want));
    c.r(fx.upper_file("etc/motd", &want));
    c.eq(
        "lower libs keeps its etc/motd",
        rd(&fx.l(2, "etc/motd")).ok(),
        Some(tag("libs", "etc/motd")),
    );
    c.eq(
        "lower base keeps its etc/motd",
        rd(&fx.l(3, "etc/motd")).ok(),
        Some(tag("base", "etc/motd")),
    );
    c.eq(
        "upper holds only the written file",
        walk(&fx.upper).keys().cloned().collect::<Vec<_>>(),
        vec!["etc".to_string(), "etc/motd".into()],
    );
    fx.finish(c, "demo");
}

// ---------------------------------------------------------------------------
// Inode numbers of the upper reused while the kernel still knows the old one
// ---------------------------------------------------------------------------

#[test]
fn an_upper_inode_number_reused_by_the_filesystem_is_a_new_object() {
    if !require_mount_env() {
        return;
    }
    let fx = Fx::new("ino-reuse", &[Layer::new(L1).tagged("f")], OVERLAY);
    let mut c = Checks::default();
    let mut reused = 0;
    for r in 0..5 {
        // A file removed while the kernel still holds its inode (an O_PATH fd:
        // no FORGET is sent, and the daemon has nothing open), then a dir
        // that the upper's filesystem gives the freed inode number.
        let (f, d) = (format!("file{r}"), format!("dir{r}"));
        c.ok(format!("create {f}"), fs::write(fx.m(&f), b"old file"));
        let held = c.ok(
            format!("O_PATH {f}"),
            open_flags(&fx.m(&f), libc::O_RDONLY | libc::O_PATH, 0),
        );
        let old_ino = lst(&fx.u(&f)).map(|m| m.ino()).ok();
        c.ok(format!("unlink {f}"), fs::remove_file(fx.m(&f)));
        c.ok(format!("mkdir {d}"), fs::create_dir(fx.m(&d)));
        if lst(&fx.u(&d)).map(|m| m.ino()).ok() == old_ino {
            reused += 1;
        }
        c.eq(
            format!("view {d}: type"),
            lst(&fx.m(&d)).map(|m| FileType::of(m.file_type())).ok(),
            Some(FileType::Dir),
        );
        c.ok(
            format!("create {d}/x"),
            fs::write(fx.m(&format!("{d}/x")), b"x"),
        );
        c.r(fx.view_file(&format!("{d}/x"), b"x"));
        c.eq(
            format!("view {d}: listing"),
            fx.view_list(&d),
            vec!["x".to_string()],
        );
        drop(held);

        // The other way round: a dir removed while held, then a file.
        let (e, g) = (format!("edir{r}"), format!("gfile{r}"));
        c.ok(format!("mkdir {e}"), fs::create_dir(fx.m(&e)));
        let held = c.ok(
            format!("O_PATH {e}"),
            open_flags(&fx.m(&e), libc::O_RDONLY | libc::O_PATH, 0),
        );
        let old_ino = lst(&fx.u(&e)).map(|m| m.ino()).ok();
        c.ok(format!("rmdir {e}"), fs::remove_dir(fx.m(&e)));
        c.ok(format!("create {g}"), fs::write(fx.m(&g), b"new file"));
        if lst(&fx.u(&g)).map(|m| m.ino()).ok() == old_ino {
            reused += 1;
        }
        c.r(fx.view_file(&g, b"new file"));
        c.ok(format!("append {g}"), append(&fx.m(&g), b"+"));
        c.r(fx.view_file(&g, b"new file+"));
        c.r(fx.upper_file(&g, b"new file+"));
        drop(held);
    }
    if reused == 0 {
        eprintln!("NOTE: the upper's filesystem reused no inode number; this test proved little");
    }
    fx.finish(c, "reused upper inode numbers");
}
