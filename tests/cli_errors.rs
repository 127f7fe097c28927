//! Bad input through the binary: a non-zero exit, exactly one line on stderr
//! naming the problem, nothing mounted, nothing created or changed.
//!
//! Each test checks every invocation form it applies to and reports all
//! failing variants at once.

mod common;

use common::*;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

/// `t/l1`, `t/l2` (valid lowers), `t/x/upper`, `t/x/work`, `t/mnt` (empty).
struct Setup {
    t: TestDir,
    l1: PathBuf,
    l2: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

fn setup(name: &str) -> Setup {
    let t = TestDir::new(name);
    let l1 = t.mkdir("l1");
    render(&Layer::new("l1").tagged("f1"), &l1, Format::Kernel);
    let l2 = t.mkdir("l2");
    render(&Layer::new("l2").tagged("f2"), &l2, Format::Kernel);
    let upper = t.mkdir("x/upper");
    let work = t.mkdir("x/work");
    let mnt = t.mkdir("mnt");
    Setup {
        t,
        l1,
        l2,
        upper,
        work,
        mnt,
    }
}

fn os(v: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    v.iter().map(|s| s.as_ref().to_os_string()).collect()
}

fn disp(p: &Path) -> String {
    p.display().to_string()
}

/// Runs `args` and returns every way the refusal falls short of the
/// contract: exit non-zero (not a crash, not a timeout), exactly one stderr
/// line containing each keyword (case-insensitive), nothing newly mounted
/// under the test dir, the test dir unchanged.
fn refused(t: &TestDir, what: &str, args: &[OsString], keywords: &[&str]) -> Vec<String> {
    let before = snapshot_full(t.path());
    // (mount id, mount point): ids alone are recycled by parallel tests.
    let key = |m: &MountInfo| (m.mount_id, m.mount_point.clone());
    let mounted_before: Vec<(u32, PathBuf)> = mounts_under(t.path()).iter().map(key).collect();
    let out = unionfs(args);
    let mut f = Vec::new();
    if out.timed_out {
        f.push("timed out (did it mount in the foreground?)".to_string());
    } else if out.success() {
        f.push("exited 0".to_string());
    } else if out.code().is_none() {
        f.push("killed by a signal".to_string());
    } else if out.code() == Some(101) {
        f.push("exit 101: the binary panicked".to_string());
    }
    let stderr = out.stderr.trim_end();
    let lines = stderr.lines().count();
    if stderr.is_empty() {
        f.push("nothing on stderr".to_string());
    } else if lines != 1 {
        f.push(format!("{lines} lines on stderr, expected exactly one"));
    }
    let low = stderr.to_lowercase();
    for k in keywords {
        if !low.contains(&k.to_lowercase()) {
            f.push(format!("stderr does not mention {k:?}"));
        }
    }
    let mounted: Vec<MountInfo> = mounts_under(t.path())
        .into_iter()
        .filter(|m| !mounted_before.contains(&key(m)))
        .collect();
    if !mounted.is_empty() {
        let ps: Vec<String> = mounted.iter().map(|m| disp(&m.mount_point)).collect();
        f.push(format!("left mounted: {ps:?}"));
        for m in mounted.iter().rev() {
            lazy_umount(&m.mount_point);
        }
    }
    if mounted.is_empty() {
        let after = snapshot_full(t.path());
        for d in before.diff(&after, Fields::NONE) {
            f.push(format!("changed: {d}"));
        }
    }
    if f.is_empty() {
        Vec::new()
    } else {
        vec![format!("{what}: {}\n    {out}", f.join("; "))]
    }
}

/// [`refused`] for a lowers-only mount in every invocation form.
fn refused_all_forms(
    s: &Setup,
    what: &str,
    lowers: &[&Path],
    mnt: &Path,
    keywords: &[&str],
) -> Vec<String> {
    let mut f = Vec::new();
    for form in ALL_FORMS {
        let args = mount_args(form, lowers, None, None, mnt, &[]);
        f.extend(refused(
            &s.t,
            &format!("{what} ({form:?} form)"),
            &args,
            keywords,
        ));
    }
    f
}

#[test]
fn missing_lower_dir() {
    let s = setup("cli-missing-lower");
    let missing = s.t.join("no-such-lower");
    let mut f = refused_all_forms(
        &s,
        "missing top lower",
        &[&missing, &s.l2],
        &s.mnt,
        &[&disp(&missing)],
    );
    f.extend(refused_all_forms(
        &s,
        "missing bottom lower",
        &[&s.l1, &missing],
        &s.mnt,
        &[&disp(&missing)],
    ));
    assert_no_failures("missing lower dir", &f);
}

#[test]
fn lower_that_is_not_a_directory() {
    let s = setup("cli-lower-file");
    let file = s.t.write("plainfile", b"not a dir\n");
    let link = s.t.join("link-to-file");
    std::os::unix::fs::symlink(&file, &link).expect("symlink");
    let mut f = refused_all_forms(
        &s,
        "regular file as lower",
        &[&s.l1, &file],
        &s.mnt,
        &[&disp(&file)],
    );
    f.extend(refused_all_forms(
        &s,
        "symlink to a file as lower",
        &[&link, &s.l2],
        &s.mnt,
        &["link-to-file"],
    ));
    assert_no_failures("lower not a directory", &f);
}

#[test]
fn missing_or_non_directory_upper_and_work() {
    let s = setup("cli-upper-work");
    let missing = s.t.join("x/no-such-upper");
    let file = s.t.write("x/upperfile", b"file\n");
    let mut f = Vec::new();
    for (what, upper, work, kw) in [
        ("missing upper", &missing, &s.work, disp(&missing)),
        ("upper is a file", &file, &s.work, disp(&file)),
        ("work is a file", &s.upper, &file, disp(&file)),
    ] {
        for form in [Form::Mount, Form::DashO] {
            let args = mount_args(form, &[&s.l1, &s.l2], Some(upper), Some(work), &s.mnt, &[]);
            f.extend(refused(
                &s.t,
                &format!("{what} ({form:?} form)"),
                &args,
                &[&kw],
            ));
        }
    }
    assert_no_failures("bad upper or work dir", &f);
}

#[test]
fn lower_equal_to_or_nested_with_the_upper() {
    let s = setup("cli-nested");
    let inside_upper = s.t.mkdir("x/upper/sub");
    let upper_in_lower = s.t.mkdir("l1/sub/upper");
    let mut f = Vec::new();
    let cases: [(&str, Vec<&Path>, &Path, String); 4] = [
        (
            "lower equal to upper",
            vec![&s.l1, &s.upper],
            &s.upper,
            disp(&s.upper),
        ),
        (
            "lower nested in upper",
            vec![&inside_upper, &s.l2],
            &s.upper,
            disp(&s.upper),
        ),
        (
            "upper nested in lower",
            vec![&s.l1, &s.l2],
            &upper_in_lower,
            disp(&s.l1),
        ),
        (
            "upper is the top lower",
            vec![&s.upper],
            &s.upper,
            disp(&s.upper),
        ),
    ];
    for (what, lowers, upper, path_kw) in &cases {
        for form in [Form::Mount, Form::DashO] {
            let args = mount_args(form, lowers, Some(upper), Some(&s.work), &s.mnt, &[]);
            f.extend(refused(
                &s.t,
                &format!("{what} ({form:?} form)"),
                &args,
                &["upper", path_kw],
            ));
        }
    }
    assert_no_failures("lower/upper overlap", &f);
}

#[test]
fn work_dir_on_another_filesystem_than_the_upper() {
    if !require_mount_env() {
        return;
    }
    let s = setup("cli-work-xdev");
    let tmpfs = mount_tmpfs(&s.t.join("tmpfs"));
    let work = tmpfs.path().join("work");
    fs::create_dir(&work).expect("mkdir work on tmpfs");
    let mut f = Vec::new();
    for form in [Form::Mount, Form::DashO] {
        let args = mount_args(
            form,
            &[&s.l1, &s.l2],
            Some(&s.upper),
            Some(&work),
            &s.mnt,
            &[],
        );
        f.extend(refused(
            &s.t,
            &format!(
                "work dir on tmpfs, upper on {} ({form:?} form)",
                s.upper.display()
            ),
            &args,
            &["work"],
        ));
    }
    assert_no_failures("work dir on another file system", &f);
    drop(tmpfs);
}

#[test]
fn mount_point_missing_not_a_dir_or_not_empty() {
    let s = setup("cli-mountpoint");
    let missing = s.t.join("no-such-mnt");
    let file = s.t.write("mnt-file", b"x\n");
    let full = s.t.mkdir("mnt-full");
    fs::write(full.join("something"), b"x\n").expect("write");
    let hidden = s.t.mkdir("mnt-hidden");
    fs::create_dir(hidden.join(".dot")).expect("mkdir");
    let mut f = Vec::new();
    for (what, mnt) in [
        ("missing mount point", &missing),
        ("mount point is a file", &file),
        ("mount point not empty", &full),
        ("mount point holds a dot dir", &hidden),
    ] {
        f.extend(refused_all_forms(
            &s,
            what,
            &[&s.l1, &s.l2],
            mnt,
            &[&disp(mnt)],
        ));
    }
    assert_no_failures("bad mount point", &f);
}

#[test]
fn more_than_500_layers() {
    let s = setup("cli-501");
    let base = s.t.mkdir("many");
    let dirs: Vec<PathBuf> = (0..501)
        .map(|i| {
            let d = base.join(format!("{i:03}"));
            fs::create_dir(&d).expect("mkdir layer");
            d
        })
        .collect();
    let f = refused_all_forms(&s, "501 lowers", &as_paths(&dirs), &s.mnt, &["500"]);
    assert_no_failures("more than 500 layers", &f);
}

#[test]
fn empty_lower_list() {
    let s = setup("cli-empty-lowers");
    let mnt = &s.mnt;
    let mut f = Vec::new();
    for (what, args) in [
        ("-l \"\"", os(&[&"mount", &"-l", &"", mnt])),
        ("no -l at all", os(&[&"mount", mnt])),
        ("-o lowerdir=", os(&[&"-o", &"lowerdir=", mnt])),
        (
            "source form lowerdir=",
            os(&[&"unionfs", mnt, &"-o", &"lowerdir="]),
        ),
        ("-o without lowerdir", os(&[&"-o", &"ro", mnt])),
    ] {
        f.extend(refused(&s.t, what, &args, &["lower"]));
    }
    // An empty element in the list is a missing directory, not "skip it".
    // (`L1::L2` is no empty element: L2 is a data-only lower, as in kernel
    // overlayfs; three colons are one.)
    let mut triple = s.l1.clone().into_os_string();
    triple.push(":::");
    triple.push(&s.l2);
    let mut trailing = s.l1.clone().into_os_string();
    trailing.push(":");
    let mut dbl_trailing = s.l1.clone().into_os_string();
    dbl_trailing.push("::");
    for (what, list) in [
        ("-l L1:::L2", triple),
        ("-l L1:", trailing),
        ("-l L1::", dbl_trailing),
        ("-l :", OsString::from(":")),
    ] {
        f.extend(refused(
            &s.t,
            what,
            &os(&[&"mount", &"-l", &list, mnt]),
            &[],
        ));
    }
    assert_no_failures("empty lower list", &f);
}

#[test]
fn malformed_o_strings() {
    let s = setup("cli-bad-o");
    let mnt = &s.mnt;
    let l = |rest: &str| {
        let mut o = OsString::from("lowerdir=");
        o.push(&s.l1);
        o.push(rest);
        o
    };
    let mut f = Vec::new();
    for (what, data, kw) in [
        (
            "lowerdir without =",
            OsString::from("lowerdir"),
            vec!["lowerdir"],
        ),
        ("upperdir without value", l(",upperdir"), vec!["upperdir"]),
        ("workdir without value", l(",workdir"), vec!["workdir"]),
        ("empty key", l(",=x"), vec![]),
    ] {
        f.extend(refused(
            &s.t,
            &format!("-o {what}"),
            &os(&[&"-o", &data, mnt]),
            &kw,
        ));
        f.extend(refused(
            &s.t,
            &format!("source form, -o {what}"),
            &os(&[&"unionfs", mnt, &"-o", &data]),
            &kw,
        ));
    }
    assert_no_failures("malformed -o", &f);
}

#[test]
fn failed_mount_with_upper_creates_no_default_work_dir() {
    let s = setup("cli-no-default-work");
    // Upper given, no work dir: a default work dir must not appear when the
    // command is refused (the generic "test dir unchanged" check sees it).
    let upper = s.t.mkdir("y/upper");
    let missing_mnt = s.t.join("no-such-mnt");
    let missing_lower = s.t.join("no-such-lower");
    let mut f = Vec::new();
    for form in [Form::Mount, Form::DashO, Form::Source] {
        let args = mount_args(form, &[&s.l1], Some(&upper), None, &missing_mnt, &[]);
        f.extend(refused(
            &s.t,
            &format!("missing mount point, upper without -w ({form:?} form)"),
            &args,
            &[&disp(&missing_mnt)],
        ));
        let args = mount_args(form, &[&missing_lower], Some(&upper), None, &s.mnt, &[]);
        f.extend(refused(
            &s.t,
            &format!("missing lower, upper without -w ({form:?} form)"),
            &args,
            &[&disp(&missing_lower)],
        ));
    }
    assert_no_failures("no default work dir on failure", &f);
}

/// The control for the tests above: the same layout with valid arguments
/// mounts in every form (so the refusals are not the binary failing at
/// everything), serves the top lower's file, and `unionfs umount` cleans up.
#[test]
fn control_valid_invocations_mount() {
    if !require_mount_env() {
        return;
    }
    let s = setup("cli-control");
    let mut f = Vec::new();
    for form in ALL_FORMS {
        let args = mount_args(form, &[&s.l1, &s.l2], None, None, &s.mnt, &[]);
        match try_mount_unionfs_args(&args, &s.mnt) {
            Ok(m) => {
                if read(&m.join("f1")) != tag("l1", "f1") || read(&m.join("f2")) != tag("l2", "f2")
                {
                    f.push(format!("{form:?}: wrong content"));
                }
                m.umount();
            }
            Err(e) => f.push(format!("{form:?}: {e}")),
        }
    }
    assert!(
        mounts_under(s.t.path()).is_empty(),
        "something left mounted"
    );
    assert_no_failures("valid invocations", &f);
}

#[test]
fn version_prints_one_line() {
    let out = unionfs(["--version"]);
    assert!(out.success(), "{out}");
    let line = out.stdout.trim_end();
    assert!(
        line.lines().count() == 1 && line.contains(char::is_numeric),
        "expected one version line on stdout: {out}"
    );
}
