//! Renames through the mount (docs/design.md §3 Rename): of non-directories
//! (lower-only, upper-only, copied-up, over existing targets); of
//! directories that come from a lower layer (lower-only or merged), never
//! EXDEV, with RENAME_NOREPLACE / RENAME_EXCHANGE, across parents, over empty
//! and merged-empty targets, with the right errors (EINVAL, ENOTEMPTY,
//! ENOTDIR, EISDIR, EEXIST), for a 10k-file tree, with files held open, and
//! across remounts; a redirected dir keeps its whiteouts below a new opaque
//! dir. Every test also checks that the lowers are unchanged.

mod common;

use common::fixture_env::*;
use common::fixture_fx::*;
use common::sys::DirStream;
use common::*;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::time::Instant;

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
        sys::renameat2(&env.m("mg"), &env.m("mg2"), NOREPLACE),
    );
    // RENAME_NOREPLACE onto names that only a lower has.
    expect_err(
        &mut fails,
        "renameat2(mg2 -> keep, NOREPLACE), keep a lower file",
        sys::renameat2(&env.m("mg2"), &env.m("keep"), NOREPLACE),
        libc::EEXIST,
    );
    expect_err(
        &mut fails,
        "renameat2(mg2 -> dst, NOREPLACE), dst a lower dir",
        sys::renameat2(&env.m("mg2"), &env.m("dst"), NOREPLACE),
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
    fails.extend(remount_diff(&after, &env.mnt));
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
            sys::renameat2(&env.m(from), &env.m(to), flags),
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
        sys::renameat2(&env.m("src3"), &env.m("wd"), NOREPLACE),
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
    fails.extend(remount_diff(&after, &env.mnt));
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
                sys::renameat2(&env.m(x), &env.m(y), EXCHANGE),
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
        append_nofollow(&env.m("e/r"), b"X\n");
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
        fails.extend(remount_diff(&after, &env.mnt));
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
        match sys::lgetxattr(&env.upper.join("e/d"), b"trusted.overlay.redirect") {
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
