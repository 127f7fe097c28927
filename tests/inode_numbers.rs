//! Inode numbers through the mount (docs/design.md §3 Inode numbers): st_ino
//! unchanged by copy-up and remount, unique when layers sit on different
//! filesystems, equal to readdir's d_ino; directory link counts do not break
//! `find`; every entry of a 3-lower tree keeps its number through copy-up of
//! everything and remount; an upper inode number reused by the filesystem is
//! a new object.

mod common;

use common::fixture_env::*;
use common::fixture_fx::*;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

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

    append_nofollow(&env.m("w"), b"more\n");
    chmod(&env.m("c"), 0o600);
    sys::lsetxattr(&env.m("x"), b"user.new", b"1").expect("setxattr x");
    sys::truncate(&env.m("t"), 0).expect("truncate t");
    sys::utimens_nofollow(&env.m("u"), None).expect("utimes u");
    drop(open_flags(&env.m("o"), libc::O_RDWR, 0).expect("open o rdwr"));
    std::os::unix::fs::lchown(env.m("ch"), Some(5), Some(6)).expect("chown ch");
    chmod(&env.m("dc"), 0o700);
    sys::lsetxattr(&env.m("dx"), b"user.new", b"1").expect("setxattr dx");
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
            append_nofollow(&mnt.join(format!("{l}/f{i}")), b"+\n");
        }
        append_nofollow(&mnt.join(format!("{l}/h2")), b"+\n");
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
            FileType::File => append_nofollow(&path, b"+\n"),
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
