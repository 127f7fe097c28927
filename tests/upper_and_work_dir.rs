//! The upper and work dirs (docs/design.md §2, §5): statfs reports the
//! upper's filesystem; a second mount of the same upper is refused; stale
//! temporaries are removed at mount and the default work dir sits beside the
//! upper; a work dir on another filesystem is refused.

mod common;

use common::fixture_fx::*;
use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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
