//! The fixture of the write tests through a real mount ([`Fx`]): lowers
//! rendered from the layer DSL, an empty upper, mounted. Each test checks
//! three things: the merged view (through the mount), which layer holds the
//! bytes afterwards (the upper is read directly, beside the mount), and that
//! every lower is identical afterwards (a full snapshot, xattrs, modes,
//! owners and times included, taken before mounting and compared after
//! unmounting). Fixture files contain the name of the layer they sit in
//! (`tag`), so a read shows which layer served it.
//!
//! Sub-checks are collected ([`Checks`]) so that a failing test lists every
//! deviation at once instead of stopping at the first.

use std::collections::BTreeMap;
use std::fmt::{Debug, Display};
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::*;

pub const OVERLAY: &str = "overlay";
pub const OCI: &str = "oci";
pub const L1: &str = "lower1";
pub const L2: &str = "lower2";

/// Failed sub-checks of one test, reported together by [`Checks::done`].
#[derive(Default)]
pub struct Checks(Vec<String>);

impl Checks {
    pub fn fail(&mut self, msg: impl Into<String>) {
        self.0.push(msg.into());
    }

    /// Records the error of a `Result<(), String>` check.
    pub fn r(&mut self, r: Result<(), String>) {
        if let Err(e) = r {
            self.0.push(e);
        }
    }

    pub fn t(&mut self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            self.0.push(msg());
        }
    }

    pub fn eq<T: PartialEq + Debug>(&mut self, what: impl Display, got: T, want: T) {
        if got != want {
            self.0
                .push(format!("{what}: got {got:?}, expected {want:?}"));
        }
    }

    pub fn errno<T: Debug>(&mut self, what: impl Display, r: io::Result<T>, want: i32) {
        if let Err(e) = expect_errno(r, want) {
            self.0.push(format!("{what}: {e}"));
        }
    }

    /// The value of a syscall that must succeed; records the error otherwise.
    pub fn ok<T>(&mut self, what: impl Display, r: io::Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(format!("{what}: unexpected error {e}"));
                None
            }
        }
    }

    pub fn done(self, what: &str) {
        assert_no_failures(what, &self.0);
    }
}

pub fn lst(p: &Path) -> io::Result<fs::Metadata> {
    fs::symlink_metadata(p)
}

pub fn exists(p: &Path) -> bool {
    lst(p).is_ok()
}

/// The bytes of a regular file (never through a symlink).
pub fn rd(p: &Path) -> io::Result<Vec<u8>> {
    let mut f = open_flags(p, libc::O_RDONLY, 0)?;
    let mut v = Vec::new();
    f.read_to_end(&mut v)?;
    Ok(v)
}

pub fn s(b: &[u8]) -> String {
    let mut t = String::from_utf8_lossy(b).into_owned();
    if t.len() > 120 {
        let cut = t.char_indices().nth(120).map_or(t.len(), |(i, _)| i);
        t.truncate(cut);
        t.push_str("...");
    }
    t
}

/// What sits at `p`, in words (for messages).
pub fn describe(p: &Path) -> String {
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
pub fn wh_rel(rel: &str) -> String {
    let (parent, name) = split_parent(rel.as_bytes());
    let mut v = parent.to_vec();
    if !v.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(b".wh.");
    v.extend_from_slice(name);
    String::from_utf8(v).expect("ascii")
}

pub fn umask() -> u32 {
    let st = fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = st
        .lines()
        .find(|l| l.starts_with("Umask:"))
        .expect("Umask line");
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).expect("octal umask")
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

pub fn perm(mode: u32) -> fs::Permissions {
    fs::Permissions::from_mode(mode)
}

pub fn write_at(p: &Path, off: u64, data: &[u8]) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(p)?;
    f.write_all_at(data, off)
}

pub fn append(p: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().append(true).open(p)?;
    f.write_all(data)
}

/// Every path (relative, `/`-separated) below `root`, with its lstat.
pub fn walk(root: &Path) -> BTreeMap<String, fs::Metadata> {
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

/// A mounted union over freshly rendered lowers and an empty upper, with a
/// snapshot of the lowers to prove them unchanged at the end.
pub struct Fx {
    pub t: TestDir,
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
    pub format: &'static str,
    pub lowers_before: Vec<Tree>,
    pub mount: Option<Mount>,
}

impl Fx {
    pub fn new(name: &str, layers: &[Layer], format: &'static str) -> Fx {
        Fx::with(name, layers, format, |_| {})
    }

    /// Like [`Fx::new`], running `prep` on the rendered lowers before they
    /// are snapshotted and mounted (for what the layer DSL cannot express).
    pub fn with(
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
    pub fn m(&self, rel: &str) -> PathBuf {
        join(&self.mnt, rel)
    }

    /// Path in the upper dir (read directly).
    pub fn u(&self, rel: &str) -> PathBuf {
        join(&self.upper, rel)
    }

    /// Path in lower `i` (0 is the top lower).
    pub fn l(&self, i: usize, rel: &str) -> PathBuf {
        join(&self.lowers[i], rel)
    }

    /// Unmounts now (the dirs stay for inspection; `finish` still checks).
    pub fn unmount(&mut self) {
        if let Some(m) = self.mount.take() {
            m.umount();
        }
    }

    /// Unmounts, checks the lowers are unchanged and the work dir holds no
    /// temporaries, then reports every failed check.
    pub fn finish(mut self, mut c: Checks, what: &str) {
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

    pub fn view_file(&self, rel: &str, want: &[u8]) -> Result<(), String> {
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
    pub fn view_absent(&self, rel: &str) -> Result<(), String> {
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

    pub fn view_list(&self, rel: &str) -> Vec<String> {
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

    pub fn upper_file(&self, rel: &str, want: &[u8]) -> Result<(), String> {
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

    pub fn upper_is(&self, rel: &str, ft: FileType) -> Result<(), String> {
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
    pub fn upper_absent(&self, rel: &str) -> Result<(), String> {
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
    pub fn no_marker(&self, rel: &str) -> Result<(), String> {
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
    pub fn whiteout(&self, rel: &str) -> Result<(), String> {
        whiteout_in(&self.upper, rel, self.format)
    }

    /// The opaque marker of this fixture's format on upper dir `rel`.
    pub fn opaque(&self, rel: &str) -> Result<(), String> {
        opaque_in(&self.upper, rel, self.format)
    }

    pub fn not_opaque(&self, rel: &str) -> Result<(), String> {
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

    pub fn upper_meta(&self, rel: &str, mode: u32, uid: u32, gid: u32) -> Result<(), String> {
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
    pub fn copy_up(&self, c: &mut Checks, rel: &str) {
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
    pub fn make_upper(&self, c: &mut Checks, rel: &str) -> Vec<u8> {
        let body = format!("upper-only file {rel}\n").into_bytes();
        c.ok(format!("create {rel}"), fs::write(self.m(rel), &body));
        body
    }

    /// The three kinds of object an operation must handle, for `base`:
    /// `{base}_lo` only in lowers, `{base}_cu` in lowers and copied up,
    /// `{base}_up` only in the upper. Returns (kind, path, bytes).
    pub fn trio(&self, c: &mut Checks, base: &str) -> Vec<(&'static str, String, Vec<u8>)> {
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
pub fn with_trio(mut l1: Layer, mut l2: Layer, bases: &[&str]) -> (Layer, Layer) {
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
pub fn whiteout_in(upper: &Path, rel: &str, format: &str) -> Result<(), String> {
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

pub fn opaque_in(upper: &Path, rel: &str, format: &str) -> Result<(), String> {
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
pub fn lowers_snapshot(lowers: &[PathBuf]) -> Vec<Tree> {
    lowers.iter().map(|l| snapshot_full(l)).collect()
}

pub fn lowers_unchanged(before: &[Tree], c: &mut Checks) {
    for b in before {
        for d in b.diff(&snapshot_full(&b.root), Fields::NONE) {
            c.fail(format!("LOWER CHANGED (left: before, right: after): {d}"));
        }
    }
}

/// Xattr namespaces the union keeps for itself (docs/design.md §2; `trusted.unionfs.`
/// is where the daemon puts its metadata when trusted xattrs are writable).
pub fn is_private(name: &str) -> bool {
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
