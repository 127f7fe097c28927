//! `unionfs check [--repair]`, the fsck of an unmounted union, through the
//! real binary: one test per kind of problem (layers built by hand holding
//! it: `check` exits 1 and names the path, `--repair` says what it fixed
//! and a second `check` finds it gone, lowers byte-identical), a live mount
//! (exit 2), missing dirs (exit 2), and unions made by real mounts, which
//! must check clean (a false positive fails there).

mod common;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;

/// Layers rendered into a test dir, an upper and an (existing) work dir.
struct Union {
    t: TestDir,
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
}

impl Union {
    /// `lowers` (top first) and `upper` rendered in the kernel format.
    fn new(name: &str, lowers: &[Layer], upper: &Layer) -> Union {
        let t = TestDir::new(name);
        let lowers = render_stack(lowers, t.path(), Format::Kernel);
        let upper_dir = t.join("upper");
        render(upper, &upper_dir, Format::Kernel);
        let work = t.mkdir("work");
        Union {
            t,
            lowers,
            upper: upper_dir,
            work,
        }
    }

    fn lower(&self, i: usize) -> &Path {
        &self.lowers[i]
    }

    fn args(&self, what: &[&str]) -> Vec<OsString> {
        let mut a: Vec<OsString> = what.iter().map(OsString::from).collect();
        a.push("-l".into());
        a.push(lowers_arg(&as_paths(&self.lowers)));
        a.push("-u".into());
        a.push(self.upper.clone().into());
        a.push("-w".into());
        a.push(self.work.clone().into());
        a
    }

    fn check(&self) -> CmdOutput {
        unionfs(self.args(&["check"]))
    }

    fn repair(&self) -> CmdOutput {
        unionfs(self.args(&["check", "--repair"]))
    }

    /// What the union shows, and from which layer (to prove a repair
    /// changed nothing the union shows).
    fn view(&self) -> String {
        let out = unionfs(self.args(&["ls", "-R"]));
        assert!(out.success(), "{out}");
        out.stdout
    }

    fn sums(&self) -> LayerChecksum {
        checksum_layers(&as_paths(&self.lowers))
    }
}

/// `out` exited with `code`, has a line containing each of `want` (each
/// piece of a `want` in order on one line), and no line containing any of
/// `unwanted`.
fn expect(out: &CmdOutput, code: i32, want: &[&[&str]], unwanted: &[&str]) {
    assert_eq!(out.code(), Some(code), "exit status: {out}");
    for pieces in want {
        let found = out.stdout.lines().any(|l| {
            let mut rest = l;
            pieces.iter().all(|p| match rest.find(p) {
                Some(i) => {
                    rest = &rest[i + p.len()..];
                    true
                }
                None => false,
            })
        });
        assert!(found, "no line with {pieces:?}: {out}");
    }
    for u in unwanted {
        assert!(
            !out.stdout.lines().any(|l| l.contains(u)),
            "a line has {u:?}: {out}"
        );
    }
}

fn mknod_whiteout(path: &Path) {
    sys::mknod(path, libc::S_IFCHR | 0o600, 0)
        .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
}

fn setx(path: &Path, name: &str, value: &str) {
    sys::lsetxattr(path, name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", path.display()));
}

#[test]
fn orphan_whiteouts_in_the_upper_are_reported_and_removed() {
    if !require_mount_env() {
        return;
    }
    let lower2 = Layer::new("lower2")
        .tagged("d/x")
        .tagged("d/kept")
        .tagged("o/y")
        .tagged("o/sub/y")
        .tagged("orig/f")
        .tagged("xw/kept")
        .tagged("dd/in");
    let lower1 = Layer::new("lower1").tagged("d/l1").whiteout("d/kept");
    let upper = Layer::new("upper")
        // Hides lower 2's d/x: kept.
        .whiteout("d/x")
        // Hides what lower 1 already hides: nothing below shows it.
        .whiteout("d/kept")
        // No lower has it.
        .whiteout("d/none")
        // Inside an opaque dir nothing below merges.
        .opaque("o")
        .whiteout("o/y")
        // Below an opaque dir: merges with nothing.
        .whiteout("o/sub/y")
        .dir("ren")
        .whiteout("ren/f")
        .whiteout("ren/g")
        .dir("xw")
        .tagged("dd/in");
    let u = Union::new("check-orphans", &[lower1, lower2], &upper);
    let up = |p: &str| u.upper.join(p);
    // A renamed dir: its lower contents live at /orig, where f is.
    setx(&up("ren"), "trusted.overlay.redirect", "/orig");
    // OCI whiteouts: one orphan, one hiding lower 2's dd... beside the
    // upper's own dir dd (an opaque marker then, not a whiteout).
    fs::write(up(".wh.nothing"), b"").unwrap();
    fs::write(up(".wh.dd"), b"").unwrap();
    // Kernel 6.7 xattr whiteouts in a dir marked overlay.opaque=x.
    setx(&up("xw"), "trusted.overlay.opaque", "x");
    for n in ["kept", "zz"] {
        fs::write(up(&format!("xw/{n}")), b"").unwrap();
        setx(&up(&format!("xw/{n}")), "trusted.overlay.whiteout", "y");
    }
    mknod_whiteout(&up("d/none2"));
    let sums = u.sums();
    let view = u.view();

    let out = u.check();
    let orphans: [&[&str]; 8] = [
        &["upper /d/kept: orphan whiteout (char device 0/0)"],
        &["upper /d/none: orphan whiteout (char device 0/0)", "'none'"],
        &["upper /d/none2: orphan whiteout"],
        &["upper /o/y: orphan whiteout", "its directory is opaque"],
        &[
            "upper /o/sub/y: orphan whiteout",
            "no lower directory merges with its directory",
        ],
        &["upper /ren/g: orphan whiteout"],
        &["upper /.wh.nothing: orphan whiteout (OCI .wh. file)"],
        &["upper /xw/zz: orphan whiteout (overlay.whiteout xattr)"],
    ];
    let kept = ["/d/x:", "/ren/f:", "/xw/kept:", "/.wh.dd:", "/dd:"];
    expect(&out, 1, &orphans, &kept);
    assert_eq!(out.stdout.lines().count(), orphans.len() + 1, "{out}");

    let fixed = u.repair();
    let repaired: Vec<Vec<String>> = orphans
        .iter()
        .map(|o| {
            let at = o[0].split(": ").next().unwrap();
            vec![format!("repaired: {at}: removed the orphan whiteout")]
        })
        .collect();
    let repaired: Vec<Vec<&str>> = repaired
        .iter()
        .map(|v| v.iter().map(String::as_str).collect())
        .collect();
    let repaired: Vec<&[&str]> = repaired.iter().map(Vec::as_slice).collect();
    expect(&fixed, 0, &repaired, &["not repaired"]);
    for gone in [
        "d/kept",
        "d/none",
        "d/none2",
        "o/y",
        "ren/g",
        ".wh.nothing",
        "xw/zz",
    ] {
        assert!(
            fs::symlink_metadata(up(gone)).is_err(),
            "{gone} still there"
        );
    }
    for kept in ["d/x", "ren/f", "xw/kept", ".wh.dd"] {
        assert!(fs::symlink_metadata(up(kept)).is_ok(), "{kept} removed");
    }
    expect(&u.check(), 0, &[&["no problem found"]], &[]);
    assert_eq!(u.view(), view, "the repair changed what the union shows");
    sums.assert_unchanged();
}

#[test]
fn redirects_that_lead_nowhere_are_reported_not_repaired() {
    if !require_mount_env() {
        return;
    }
    let lower2 = Layer::new("lower2").tagged("orig/f").tagged("c2/f");
    let lower1 = Layer::new("lower1").dir("lc");
    let upper = Layer::new("upper")
        .dir("good")
        .dir("bad")
        .opaque("op")
        .dir("rel");
    let u = Union::new("check-redirects", &[lower1, lower2], &upper);
    setx(&u.upper.join("good"), "trusted.overlay.redirect", "/orig");
    setx(&u.upper.join("bad"), "trusted.overlay.redirect", "/nowhere");
    setx(&u.upper.join("op"), "trusted.overlay.redirect", "/orig");
    // A relative redirect: a name in the same parent, which no lower has.
    setx(&u.upper.join("rel"), "user.overlay.redirect", "gone");
    setx(&u.lower(0).join("lc"), "trusted.overlay.redirect", "/none");
    let sums = u.sums();
    let want: [&[&str]; 4] = [
        &["upper /bad: redirect to '/nowhere' finds no directory"],
        &["upper /op: redirect to '/orig' is ignored: the directory is opaque"],
        &["upper /rel: redirect to 'gone' finds no directory"],
        &[
            "lower 1 /lc: redirect to '/none' finds no directory",
            "(in a lower)",
        ],
    ];
    expect(&u.check(), 1, &want, &["/good"]);
    let fixed = u.repair();
    expect(&fixed, 1, &want, &["repaired:"]);
    assert!(fixed.stdout.contains("0 repaired, 4 left"), "{fixed}");
    assert_eq!(
        sys::lgetxattr(&u.upper.join("bad"), b"trusted.overlay.redirect").unwrap(),
        b"/nowhere"
    );
    sums.assert_unchanged();
}

#[test]
fn markers_where_they_are_ignored_are_reported_and_removed_from_the_upper() {
    if !require_mount_env() {
        return;
    }
    let lower = Layer::new("lower1").tagged("big").tagged("q/f");
    let upper = Layer::new("upper")
        .tagged("f")
        .tagged("g")
        .tagged("plain/w")
        .dir("q");
    let u = Union::new("check-markers", &[lower], &upper);
    let up = |p: &str| u.upper.join(p);
    setx(&up("f"), "trusted.overlay.opaque", "y");
    setx(&up("g"), "trusted.overlay.redirect", "/big");
    // A whiteout xattr in a dir not marked overlay.opaque=x: a plain file.
    setx(&up("plain/w"), "trusted.overlay.whiteout", "y");
    // The OCI opaque marker as a directory, an OCI whiteout with data.
    fs::create_dir(up("q/.wh..wh..opq")).unwrap();
    fs::write(up(".wh.big"), b"data").unwrap();
    let sums = u.sums();
    let view = u.view();
    let fixable: [&[&str]; 2] = [
        &["upper /f: opaque marker trusted.overlay.opaque on a regular file"],
        &["upper /g: redirect trusted.overlay.redirect on a regular file"],
    ];
    let left: [&[&str]; 3] = [
        &[
            "upper /plain/w: trusted.overlay.whiteout",
            "not marked",
            "shows as a file",
        ],
        &["upper /q/.wh..wh..opq: the OCI opaque marker is a directory"],
        &["upper /.wh.big: an OCI whiteout that is a non-empty regular file"],
    ];
    let all: Vec<&[&str]> = fixable.iter().chain(&left).copied().collect();
    expect(&u.check(), 1, &all, &[]);
    let fixed = u.repair();
    expect(
        &fixed,
        1,
        &[
            &["repaired: upper /f: removed the ignored xattr trusted.overlay.opaque"],
            &["repaired: upper /g: removed the ignored xattr trusted.overlay.redirect"],
            &["2 repaired, 3 left"],
        ],
        &[],
    );
    assert!(sys::lgetxattr(&up("f"), b"trusted.overlay.opaque").is_err());
    expect(&u.check(), 1, &left, &["upper /f:", "upper /g:"]);
    assert_eq!(u.view(), view, "the repair changed what the union shows");
    sums.assert_unchanged();
}

#[test]
fn problems_in_lowers_are_reported_never_repaired() {
    if !require_mount_env() {
        return;
    }
    let lower2 = Layer::new("lower2").tagged("a");
    let lower1 = Layer::new("lower1")
        .tagged("b")
        .whiteout("a")
        .whiteout("ghost")
        .opaque("od")
        .tagged("od/f")
        .dir("ud");
    let u = Union::new("check-lowers", &[lower1, lower2], &Layer::new("upper"));
    let l1 = |p: &str| u.lower(0).join(p);
    setx(&l1("b"), "trusted.unionfs.origin", "12");
    setx(&l1("od"), "trusted.overlay.origin", "x");
    setx(&l1("od/f"), "trusted.overlay.opaque", "y");
    // Read from every layer: not a problem.
    setx(&l1("ud"), "user.overlay.opaque", "y");
    let sums = u.sums();
    let want: [&[&str]; 4] = [
        &["lower 1 /b: private xattr trusted.unionfs.origin on a lower"],
        &["lower 1 /od: private xattr trusted.overlay.origin on a lower"],
        &[
            "lower 1 /od/f: opaque marker trusted.overlay.opaque on a regular file",
            "reported only",
        ],
        &[
            "lower 1 /ghost: orphan whiteout",
            "(in a lower: reported only)",
        ],
    ];
    expect(&u.check(), 1, &want, &["/ud", "lower 1 /a:"]);
    let fixed = u.repair();
    expect(&fixed, 1, &want, &["repaired:"]);
    assert!(fixed.stdout.contains("0 repaired, 4 left"), "{fixed}");
    sums.assert_unchanged();
}

/// A union whose upper has an index entry, made by a real mount: `h1`, `h2`
/// and `h3` are one lower file; `h1` was written, `h2` unlinked.
fn indexed_union(name: &str) -> (Union, PathBuf) {
    let lower = Layer::new("lower1")
        .tagged("hl/h1")
        .link("hl/h2", "hl/h1")
        .link("hl/h3", "hl/h1");
    let u = Union::new(name, &[lower], &Layer::new("upper"));
    let mnt = u.t.mkdir("mnt");
    let m = mount_unionfs(
        &as_paths(&u.lowers),
        Some(&u.upper),
        Some(&u.work),
        &mnt,
        &[],
    );
    fs::write(m.join("hl/h1"), b"written").unwrap();
    fs::remove_file(m.join("hl/h2")).unwrap();
    m.umount();
    let index: Vec<_> = fs::read_dir(u.work.join("index"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(index.len(), 1, "one index entry: {index:?}");
    let entry = index[0].clone();
    (u, entry)
}

#[test]
fn index_entries_with_a_wrong_count_or_origin_are_reported() {
    if !require_mount_env() {
        return;
    }
    let (u, entry) = indexed_union("check-index");
    let key = entry.file_name().unwrap().to_str().unwrap().to_owned();
    let at = format!("work index/{key}");
    let sums = u.sums();
    expect(&u.check(), 0, &[&["no problem found"]], &[]);
    // One lower name (h3) still shows, one upper name (h1) is a link.
    assert_eq!(
        sys::lgetxattr(&entry, b"trusted.unionfs.lower_links").unwrap(),
        b"1"
    );

    setx(&entry, "trusted.unionfs.lower_links", "2");
    expect(
        &u.check(),
        1,
        &[&[
            &at,
            "lower_links says 2 lower name(s) still show, the union shows 1",
        ]],
        &[],
    );
    setx(&entry, "trusted.unionfs.lower_links", "1");

    setx(&entry, "trusted.unionfs.origin", "12");
    expect(
        &u.check(),
        1,
        &[&[&at, &format!("origin xattr says 12, but it is named {key}")]],
        &[],
    );
    setx(&entry, "trusted.unionfs.origin", &key);

    // A link of the entry the upper does not have.
    fs::hard_link(&entry, u.work.join("stray")).unwrap();
    expect(
        &u.check(),
        1,
        &[&[&at, "has 3 link(s), but the upper has 1 name(s) of it"]],
        &[],
    );
    // Index entries are only reported.
    let fixed = u.repair();
    expect(&fixed, 1, &[&["0 repaired, 1 left"]], &["repaired:"]);
    fs::remove_file(u.work.join("stray")).unwrap();

    fs::write(u.work.join("index/notanumber"), b"").unwrap();
    expect(
        &u.check(),
        1,
        &[&["work index/notanumber: not an index entry"]],
        &[],
    );
    fs::remove_file(u.work.join("index/notanumber")).unwrap();
    expect(&u.check(), 0, &[], &[]);
    sums.assert_unchanged();
}

#[test]
fn work_dir_leftovers_are_removed_as_the_next_mount_would() {
    if !require_mount_env() {
        return;
    }
    let (u, entry) = indexed_union("check-leftovers");
    let key = entry.file_name().unwrap().to_str().unwrap().to_owned();
    let tmp = u.work.join("tmp");
    // A crash while h3 became a link of the entry: the link waits in tmp/
    // and the count says "0, was 1".
    fs::hard_link(&entry, tmp.join("#77-3.place")).unwrap();
    setx(&entry, "trusted.unionfs.lower_links", "0;1");
    fs::write(tmp.join("#77-1"), b"half a copy").unwrap();
    fs::create_dir_all(tmp.join("#77-2/sub")).unwrap();
    fs::write(tmp.join("#77-2/sub/f"), b"x").unwrap();
    let sums = u.sums();
    let view = u.view();
    let want: [&[&str]; 3] = [
        &["work tmp/#77-1: leftover temporary (regular file)"],
        &["work tmp/#77-2: leftover temporary (directory)"],
        &[&format!(
            "work tmp/#77-3.place: leftover .place link of index entry {key}"
        )],
    ];
    // The entry's counts are read as the next mount will see them (the
    // link gone, the old count back): no index problem.
    expect(&u.check(), 1, &want, &["work index/"]);
    let fixed = u.repair();
    expect(
        &fixed,
        0,
        &[
            &["repaired: work tmp/#77-1: removed"],
            &["repaired: work tmp/#77-2: removed"],
            &["repaired: work tmp/#77-3.place: put back the index entry's count"],
        ],
        &[],
    );
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "tmp/ not emptied");
    assert_eq!(
        sys::lgetxattr(&entry, b"trusted.unionfs.lower_links").unwrap(),
        b"1"
    );
    assert_eq!(fs::metadata(&entry).unwrap().nlink(), 2);
    expect(&u.check(), 0, &[&["no problem found"]], &[]);
    assert_eq!(u.view(), view);
    sums.assert_unchanged();
}

#[test]
fn a_live_mount_is_refused_and_a_broken_lock_file_removed() {
    if !require_mount_env() {
        return;
    }
    let lower = Layer::new("lower1").tagged("f");
    let u = Union::new("check-lock", &[lower], &Layer::new("upper"));
    let mnt = u.t.mkdir("mnt");
    let m = mount_unionfs(
        &as_paths(&u.lowers),
        Some(&u.upper),
        Some(&u.work),
        &mnt,
        &[],
    );
    for out in [u.check(), u.repair()] {
        assert_eq!(out.code(), Some(2), "{out}");
        assert!(
            out.stderr.contains("is in use by a live mount")
                && out.stderr.contains("unmount it first"),
            "{out}"
        );
    }
    // Even named through another work dir: the upper root is locked too.
    let other = u.t.mkdir("otherwork");
    let mut args = u.args(&["check"]);
    *args.last_mut().unwrap() = other.into();
    assert_eq!(unionfs(args).code(), Some(2));
    m.umount();
    // The lock file stays between mounts: not a problem.
    assert!(u.work.join("unionfs.lock").exists());
    expect(&u.check(), 0, &[&["no problem found"]], &[]);

    // A FIFO where the lock file belongs would hang the next mount.
    fs::remove_file(u.work.join("unionfs.lock")).unwrap();
    sys::mknod(&u.work.join("unionfs.lock"), libc::S_IFIFO | 0o600, 0).unwrap();
    expect(
        &u.check(),
        1,
        &[&["work unionfs.lock: a FIFO, not a lock file"]],
        &[],
    );
    expect(
        &u.repair(),
        0,
        &[&["repaired: work unionfs.lock: removed"]],
        &[],
    );
    expect(&u.check(), 0, &[], &[]);
    mount_unionfs(
        &as_paths(&u.lowers),
        Some(&u.upper),
        Some(&u.work),
        &mnt,
        &[],
    )
    .umount();
}

#[test]
fn missing_dirs_mean_no_check() {
    let t = TestDir::new("check-missing");
    let l = t.mkdir("l");
    let up = t.mkdir("u");
    let missing = t.join("missing");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    for args in [
        vec!["check", "-l", &s(&missing), "-u", &s(&up)],
        vec!["check", "-l", &s(&l), "-u", &s(&missing)],
        vec!["check", "-l", &s(&l), "-u", &s(&up), "-w", &s(&missing)],
        vec!["check", "-l", &s(&l)],
    ] {
        let out = unionfs(&args);
        assert_eq!(out.code(), Some(2), "{out}");
        assert!(out.stderr.starts_with("unionfs: "), "{out}");
    }
}

/// Copy-ups, deletes, directory renames, hard links written, renamed and
/// unlinked, a directory made over a deleted one: what a mount leaves is
/// consistent, in both write formats (default work dir).
#[test]
fn a_union_made_by_a_real_mount_checks_clean() {
    if !require_mount_env() {
        return;
    }
    for format in ["overlay", "oci"] {
        let lower2 = Layer::new("lower2")
            .tagged("dir/b")
            .tagged("dir/sub/deep")
            .tagged("hl/h1")
            .link("hl/h2", "hl/h1")
            .link("hl/h3", "hl/h1")
            .link("hl/h4", "hl/h1")
            .tagged("x")
            .tagged("gone/g")
            .tagged("re/made/f");
        let lower1 = Layer::new("lower1")
            .tagged("dir/a")
            .tagged("y")
            .whiteout("x")
            .tagged("other/o");
        let t = TestDir::new(&format!("check-clean-{format}"));
        let lowers = render_stack(&[lower1, lower2], t.path(), Format::Kernel);
        let upper = t.mkdir("upper");
        let mnt = t.mkdir("mnt");
        let lp = as_paths(&lowers);
        let sums = checksum_layers(&lp);
        let m = mount_unionfs(&lp, Some(&upper), None, &mnt, &["--format", format]);
        let p = |r: &str| m.join(r);
        fs::write(p("dir/a"), b"copied up").unwrap();
        fs::remove_file(p("y")).unwrap();
        fs::remove_dir_all(p("gone")).unwrap();
        fs::rename(p("dir"), p("dir2")).unwrap();
        fs::rename(p("dir2/sub"), p("moved")).unwrap();
        fs::write(p("hl/h1"), b"hard-link write").unwrap();
        fs::remove_file(p("hl/h2")).unwrap();
        fs::rename(p("hl/h3"), p("h3-moved")).unwrap();
        fs::hard_link(p("hl/h4"), p("hl/h5")).unwrap();
        fs::write(p("new"), b"n").unwrap();
        fs::hard_link(p("new"), p("new2")).unwrap();
        fs::remove_file(p("new")).unwrap();
        fs::remove_dir_all(p("re")).unwrap();
        fs::create_dir_all(p("re/made")).unwrap();
        fs::write(p("other/o"), b"o2").unwrap();
        fs::rename(p("other"), p("other2")).unwrap();
        fs::create_dir(p("other")).unwrap();
        m.umount();
        let mut args: Vec<OsString> = vec!["check".into(), "-l".into(), lowers_arg(&lp)];
        args.push("-u".into());
        args.push(upper.clone().into());
        let out = unionfs(&args);
        assert_eq!(
            out.code(),
            Some(0),
            "{format}: a union made by a mount: {out}"
        );
        // The hard link's index entry was there to be checked.
        let work = t.join(".upper.unionfs-work");
        assert!(
            fs::read_dir(work.join("index")).unwrap().count() > 0,
            "{format}: no index entry was made"
        );
        sums.assert_unchanged();
    }
}
