//! Hard links through the mount (docs/design.md §3 Hard links): link(2) of
//! lower, upper and copied-up files; hard links of a lower inode stay one
//! inode after either name is written, chmod'ed or renamed, and after a crash
//! mid copy-up; link(2) of a lower file makes a real hard link; all of it
//! survives remount; `tar` and `rsync -H` of the mount keep the hard-link
//! groups. Every test also checks that the lowers are unchanged.

mod common;

use common::fixture_env::*;
use common::fixture_fx::*;

use common::*;
use std::fmt::Debug;
use std::fs;
use std::os::unix::fs::MetadataExt;

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
            append_nofollow(&b, line.as_bytes());
            content.extend_from_slice(line.as_bytes());
        }
        Trigger::Truncate => {
            sys::truncate(&b, 5).expect("truncate");
            content.truncate(5);
        }
        Trigger::Chmod => {
            chmod(&b, 0o600);
            mode = 0o600;
        }
        Trigger::SetXattr => {
            sys::lsetxattr(&b, b"user.t", b"v").expect("setxattr");
        }
        Trigger::Utimes => {
            sys::utimens_nofollow(&b, Some(((1, 0), (2, 0)))).expect("utimes");
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
                match sys::lgetxattr(&env.m(n), b"user.t") {
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
            append_nofollow(&env.m(w), line.as_bytes());
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
        append_nofollow(&env.m(rest[0]), b"last\n");
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
        |what: &str, fails: &mut Vec<String>, want: &[u8]| match sys::lgetxattr(&entry, COUNT) {
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
    sys::lsetxattr(&entry, COUNT, b"2;3").expect("set lower_links");
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
    sys::lsetxattr(&entry, COUNT, b"2;3").expect("set lower_links");
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
    append_nofollow(&env.m("solo2"), b"via solo2\n");
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
    append_nofollow(&env.m("hl/d"), b"via hl/d\n");
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
    append_nofollow(&env.m("g1a"), b"more\n");
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
