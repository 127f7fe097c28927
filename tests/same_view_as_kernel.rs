//! Kernel overlayfs (redirect_dir=on, index=on) over a copy of the same
//! layers shows the same merged view as unionfs after the same directory
//! renames and hard-link operations.

mod common;

use common::fixture_env::*;

use common::*;
use std::fmt::Debug;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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
                sys::renameat2(&p("mg"), &p("mg2"), NOREPLACE),
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
            step("exchange A M", sys::renameat2(&p("A"), &p("M"), EXCHANGE));
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
