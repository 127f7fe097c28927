//! `commit`, `apply` and `squash` on real layers in every whiteout format:
//! the round trip (the lowers plus apply(commit(upper)), mounted read-only,
//! show exactly the merged view of the lowers plus the upper), reproducible
//! archives, refusal of archives that would escape, and the squash.

mod common;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

fn long_name() -> Vec<u8> {
    let mut p = b"long/".to_vec();
    p.extend(vec![b'd'; 120]);
    p.extend_from_slice(b"/file-with-a-long-name");
    p
}

fn stack() -> Vec<Layer> {
    let lower2 = Layer::new("lower2")
        .tagged("etc/motd")
        .tagged("etc/os-release")
        .tagged("app/server.conf")
        .tagged("app/keep.conf")
        .tagged("data/a")
        .tagged("data/b")
        .tagged("gone/dir/f")
        .tagged("df/inner")
        .symlink("lib", "usr/lib")
        .tagged("h1")
        .link("h2", "h1")
        .fifo("p");
    let lower1 = Layer::new("lower1")
        .tagged("etc/motd")
        .whiteout("etc/os-release")
        .tagged("x/y");
    let upper = Layer::new("upper")
        .tagged("etc/motd")
        .mode(0o600)
        .owner(1000, 1001)
        .xattr("user.k", "v")
        .dir("etc/newsub")
        .xattr("user.dir", "x")
        .whiteout("app/server.conf")
        .opaque("data")
        .tagged("data/c")
        .xattr("user.d", "1")
        .tagged("new.txt")
        .whiteout("gone")
        .tagged("df")
        .tagged("newdir/f")
        .mode(0o4755)
        .symlink("ln2", "t".repeat(300))
        .tagged("hl/a")
        .link("hl/b", "hl/a")
        .fifo("newfifo")
        .tagged(b"bytes/\xff\xfename")
        .tagged(long_name());
    vec![upper, lower1, lower2]
}

fn run_ok(args: &[&OsStr]) -> CmdOutput {
    let out = unionfs(args);
    assert!(out.success(), "{out}");
    out
}

fn lowers_of(dirs: &[PathBuf]) -> OsString {
    lowers_arg(&as_paths(dirs))
}

/// Commit `upper` over `lowers` to `tar`, apply it as `applied` in
/// `format`, and check that lowers + applied mounted read-only show what
/// `expected` shows.
fn round_trip(
    t: &TestDir,
    lowers: &[PathBuf],
    upper: &Path,
    expected: &Tree,
    format: &str,
    what: &str,
) {
    let tar = t.join(format!("layer-{format}.tar.gz"));
    let applied = t.join(format!("applied-{format}"));
    let l = lowers_of(lowers);
    run_ok(&[
        "commit".as_ref(),
        "-l".as_ref(),
        &l,
        "-u".as_ref(),
        upper.as_os_str(),
        "-o".as_ref(),
        tar.as_os_str(),
    ]);
    run_ok(&[
        "apply".as_ref(),
        tar.as_os_str(),
        applied.as_os_str(),
        "--format".as_ref(),
        format.as_ref(),
    ]);
    let mnt = t.mkdir(format!("mnt-applied-{format}"));
    let mut stack: Vec<&Path> = vec![&applied];
    stack.extend(lowers.iter().map(|p| p.as_path()));
    let m = mount_unionfs(&stack, None, None, &mnt, &[]);
    let got = snapshot(m.path());
    m.umount();
    let mut d = expected.diff(&got, Fields::VIEW);
    d.retain(|l| !l.starts_with(". ") && !l.starts_with(".:"));
    assert_no_failures(&format!("{what}: round trip ({format})"), &d);
}

#[test]
fn commit_then_apply_gives_back_the_merged_view_in_every_format() {
    if !require_mount_env() {
        return;
    }
    for format in ALL_FORMATS {
        let t = TestDir::new(&format!("commit-{format:?}"));
        let dirs = render_stack(&stack(), t.path(), format);
        let before = checksum_layers(&as_paths(&dirs));
        // The merged view of the lowers plus the upper, read-only.
        let mnt = t.mkdir("mnt-expected");
        let m = mount_unionfs(&as_paths(&dirs), None, None, &mnt, &[]);
        let expected = snapshot(m.path());
        m.umount();
        for apply_format in ["overlay", "oci"] {
            round_trip(
                &t,
                &dirs[1..],
                &dirs[0],
                &expected,
                apply_format,
                &format!("{format:?}"),
            );
        }
        // Kernel overlayfs reads the applied layer (overlay markers) the
        // same way, over lowers in its own format.
        if format == Format::Kernel && require_kernel_overlay() {
            let mnt = t.mkdir("mnt-kernel");
            let applied = t.join("applied-overlay");
            let m = mount_kernel_overlay(&[&applied, &dirs[1], &dirs[2]], None, None, &mnt, &[]);
            let got = snapshot(m.path());
            m.umount();
            let mut d = expected.diff(&got, Fields::VIEW);
            d.retain(|l| !l.starts_with(". ") && !l.starts_with(".:"));
            assert_no_failures("kernel overlayfs over the applied layer", &d);
        }
        before.assert_unchanged();
    }
}

#[test]
fn an_upper_written_through_a_mount_round_trips() {
    if !require_mount_env() {
        return;
    }
    for write_format in ["overlay", "oci"] {
        let t = TestDir::new(&format!("commit-live-{write_format}"));
        let lowers = render_stack(&stack()[1..], t.path(), Format::Kernel);
        let upper = t.mkdir("upper");
        let mnt = t.mkdir("mnt");
        let m = mount_unionfs(
            &as_paths(&lowers),
            Some(&upper),
            None,
            &mnt,
            &["--format", write_format],
        );
        fs::write(m.join("etc/motd"), b"changed\n").unwrap();
        fs::remove_file(m.join("app/server.conf")).unwrap();
        fs::remove_dir_all(m.join("gone")).unwrap();
        fs::rename(m.join("x"), m.join("x-renamed")).unwrap();
        fs::create_dir(m.join("fresh")).unwrap();
        fs::write(m.join("fresh/f"), b"fresh\n").unwrap();
        fs::hard_link(m.join("fresh/f"), m.join("fresh/g")).unwrap();
        fs::remove_dir_all(m.join("data")).unwrap();
        fs::create_dir(m.join("data")).unwrap();
        fs::write(m.join("data/only"), b"only\n").unwrap();
        sys::lsetxattr(&m.join("fresh/f"), b"user.note", b"hi").unwrap();
        let expected = snapshot(m.path());
        m.umount();

        let out = run_ok(&[
            "diff".as_ref(),
            "-l".as_ref(),
            &lowers_of(&lowers),
            "-u".as_ref(),
            upper.as_os_str(),
        ]);
        for line in [
            "C /etc/motd",
            "D /app/server.conf",
            "D /gone",
            "D /x",
            "A /x-renamed/y",
            "A /fresh/g",
            "C /data",
            "D /data/a",
        ] {
            assert!(
                out.stdout.lines().any(|l| l == line),
                "{write_format}: no '{line}' in\n{}",
                out.stdout
            );
        }
        round_trip(&t, &lowers, &upper, &expected, "overlay", write_format);
    }
}

fn commit_bytes(dirs: &[PathBuf], out: &Path, epoch: &str) -> Vec<u8> {
    let mut cmd = Command::new(unionfs_bin());
    cmd.arg("commit")
        .arg("-l")
        .arg(lowers_of(&dirs[1..]))
        .arg("-u")
        .arg(&dirs[0])
        .arg("-o")
        .arg(out)
        .arg("--reproducible")
        .env("SOURCE_DATE_EPOCH", epoch);
    let r = run(&mut cmd, Duration::from_secs(30));
    assert!(r.success(), "{r}");
    fs::read(out).unwrap()
}

#[test]
fn commit_reproducible_gives_identical_bytes() {
    let t = TestDir::new("commit-repro");
    let dirs = render_stack(&stack(), t.path(), Format::Mixed(7));
    for name in ["a.tar", "a.tar.gz"] {
        let first = commit_bytes(&dirs, &t.join(name), "1000");
        // Change what an archive must not depend on: access and change
        // times.
        let motd = dirs[0].join("etc/motd");
        let _ = fs::read(&motd).unwrap();
        fs::set_permissions(&motd, fs::metadata(&motd).unwrap().permissions()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let second = commit_bytes(&dirs, &t.join(name), "1000");
        assert!(first == second, "{name}: two reproducible commits differ");
        // Every time clamped to the epoch.
        let reader: Box<dyn Read> = if name.ends_with(".gz") {
            Box::new(flate2::read::GzDecoder::new(&second[..]))
        } else {
            Box::new(&second[..])
        };
        let mut ar = tar::Archive::new(reader);
        let mut n = 0;
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            assert!(
                e.header().mtime().unwrap() <= 1000,
                "{name}: mtime not clamped"
            );
            n += 1;
        }
        assert!(n > 10, "{name}: only {n} entries");
    }
    // `-o -` writes the same bytes to stdout.
    let mut cmd = Command::new(unionfs_bin());
    cmd.arg("commit")
        .arg("-l")
        .arg(lowers_of(&dirs[1..]))
        .arg("-u")
        .arg(&dirs[0])
        .args(["-o", "-", "--reproducible"])
        .env("SOURCE_DATE_EPOCH", "1000");
    let piped = cmd.output().unwrap();
    assert!(piped.status.success());
    assert!(
        piped.stdout == commit_bytes(&dirs, &t.join("c.tar"), "1000"),
        "-o - differs"
    );
    let a = commit_bytes(&dirs, &t.join("b.tar"), "1000");
    let b = commit_bytes(&dirs, &t.join("b.tar"), "2000000000");
    assert!(a != b, "the epoch must show in the archive");
}

#[test]
fn commit_writes_oci_markers_and_xattrs() {
    let t = TestDir::new("commit-content");
    let dirs = render_stack(&stack(), t.path(), Format::Kernel);
    let out = t.join("l.tar");
    run_ok(&[
        "commit".as_ref(),
        "-l".as_ref(),
        &lowers_of(&dirs[1..]),
        "-u".as_ref(),
        dirs[0].as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    let bytes = fs::read(&out).unwrap();
    let mut ar = tar::Archive::new(&bytes[..]);
    let mut names = Vec::new();
    let mut xattrs = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path_bytes().into_owned();
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                let x = x.unwrap();
                xattrs.push((show(&p), x.key().unwrap().to_string()));
            }
        }
        if e.header().entry_type() == tar::EntryType::Link {
            names.push(format!(
                "{} => {}",
                show(&p),
                show(e.link_name_bytes().unwrap())
            ));
        } else {
            names.push(show(&p));
        }
    }
    for want in [
        "app/.wh.server.conf",
        "data/.wh..wh..opq",
        ".wh.gone",
        "df/inner",
        "hl/b => hl/a",
        "bytes/\\xff\\xfename",
    ] {
        let found = if want == "df/inner" {
            !names.iter().any(|n| n.contains("df/"))
        } else {
            names.iter().any(|n| n == want)
        };
        assert!(found, "{want}: {names:?}");
    }
    assert!(
        names.iter().any(|n| n.as_bytes() == long_name().as_slice()),
        "{names:?}"
    );
    assert!(
        xattrs.contains(&("etc/motd".into(), "SCHILY.xattr.user.k".into())),
        "{xattrs:?}"
    );
    assert!(
        !xattrs.iter().any(|(_, k)| k.contains("overlay")),
        "{xattrs:?}"
    );
    assert!(!names.iter().any(|n| n.starts_with("data/a")), "{names:?}");
}

/// A tar with raw entry names (the tar crate refuses to write `..`).
fn evil_tar(entries: &[(&[u8], tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(if *kind == tar::EntryType::Regular {
            4
        } else {
            0
        });
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_cksum();
        let data: &[u8] = if *kind == tar::EntryType::Regular {
            b"evil"
        } else {
            b""
        };
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn apply_refuses_archives_that_escape_and_leaves_nothing() {
    use tar::EntryType::{Link, Regular, Symlink};
    let t = TestDir::new("apply-evil");
    let outside = t.mkdir("outside");
    let work = t.mkdir("work");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            evil_tar(&[(b"ok", Regular, b""), (b"../evil", Regular, b"")]),
        ),
        ("absolute", evil_tar(&[(b"/tmp/evil", Regular, b"")])),
        (
            "through a symlink",
            evil_tar(&[
                (b"a", Symlink, outside.as_os_str().as_bytes()),
                (b"a/evil", Regular, b""),
            ]),
        ),
        (
            "hard link out",
            evil_tar(&[(b"h", Link, b"../../../etc/passwd")]),
        ),
        (
            "absolute hard link",
            evil_tar(&[(b"h", Link, b"/etc/passwd")]),
        ),
    ];
    for (what, bytes) in cases {
        let tar = t.join("evil.tar");
        fs::write(&tar, bytes).unwrap();
        let dest = work.join("dest");
        let out = unionfs([OsStr::new("apply"), tar.as_os_str(), dest.as_os_str()]);
        assert_eq!(out.code(), Some(1), "{what}: {out}");
        assert_eq!(out.stderr_lines().len(), 1, "{what}: {out}");
        assert!(!dest.exists(), "{what}: {} left behind", dest.display());
        assert_eq!(list(&work), Vec::<Vec<u8>>::new(), "{what}: leftovers");
        assert_eq!(
            list(&outside),
            Vec::<Vec<u8>>::new(),
            "{what}: wrote outside"
        );
        assert!(!t.path().join("evil").exists(), "{what}");
    }
    // A non-empty destination is refused too.
    let good = t.join("good.tar");
    fs::write(&good, evil_tar(&[(b"f", Regular, b"")])).unwrap();
    let busy = t.mkdir("busy");
    fs::write(busy.join("x"), b"x").unwrap();
    let out = unionfs([OsStr::new("apply"), good.as_os_str(), busy.as_os_str()]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("not empty"), "{out}");
}

#[test]
fn squash_writes_the_merged_view_without_markers_in_every_format() {
    if !require_mount_env() {
        return;
    }
    for format in ALL_FORMATS {
        let t = TestDir::new(&format!("squash-{format:?}"));
        let dirs = render_stack(&stack(), t.path(), format);
        let mnt = t.mkdir("mnt");
        let m = mount_unionfs(&as_paths(&dirs), None, None, &mnt, &[]);
        let expected = snapshot(m.path());
        m.umount();
        let out_dir = t.join("squashed");
        run_ok(&[
            "squash".as_ref(),
            "-l".as_ref(),
            &lowers_of(&dirs[1..]),
            "-u".as_ref(),
            dirs[0].as_os_str(),
            "-o".as_ref(),
            out_dir.as_os_str(),
        ]);
        let got = snapshot_full(&out_dir);
        let mut failures: Vec<String> = expected
            .diff(&snapshot(&out_dir), Fields::VIEW)
            .into_iter()
            .filter(|l| !l.starts_with(". ") && !l.starts_with(".:"))
            .collect();
        for (p, n) in &got.nodes {
            if p.starts_with(b".wh.") || p.windows(5).any(|w| w == b"/.wh.") {
                failures.push(format!("{}: marker name", show(p)));
            }
            if n.ftype == FileType::CharDev && n.rdev == 0 {
                failures.push(format!("{}: 0/0 device", show(p)));
            }
            if n.xattrs
                .keys()
                .any(|k| k.windows(8).any(|w| w == b"overlay."))
            {
                failures.push(format!("{}: overlay xattr", show(p)));
            }
        }
        assert_no_failures(&format!("{format:?}"), &failures);
    }
}

#[test]
fn hard_links_copied_up_through_one_name_round_trip() {
    if !require_mount_env() {
        return;
    }
    // Two names of one lower inode; a write through one name copies the
    // object up and the mount serves the other name from WORK/index.
    let t = TestDir::new("commit-index");
    let lower = Layer::new("lower")
        .tagged("d/h1")
        .link("d/h2", "d/h1")
        .tagged("other");
    let lowers = render_stack(&[lower], t.path(), Format::Kernel);
    let upper = t.mkdir("upper");
    let mnt = t.mkdir("mnt");
    let m = mount_unionfs(&as_paths(&lowers), Some(&upper), None, &mnt, &[]);
    fs::write(m.join("d/h1"), b"written through h1\n").unwrap();
    let expected = snapshot(m.path());
    m.umount();
    assert_eq!(
        expected.get("d/h2").map(|n| n.nlink),
        Some(2),
        "the mount's view"
    );

    let l = lowers_of(&lowers);
    let out = run_ok(&[
        "diff".as_ref(),
        "-l".as_ref(),
        &l,
        "-u".as_ref(),
        upper.as_os_str(),
    ]);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines, ["C /d", "C /d/h1", "C /d/h2"], "{out}");
    let out = run_ok(&[
        "which".as_ref(),
        "-l".as_ref(),
        &l,
        "-u".as_ref(),
        upper.as_os_str(),
        "d/h2".as_ref(),
    ]);
    assert!(
        out.stdout.contains("served by  upper (hard-link index)"),
        "{out}"
    );
    round_trip(&t, &lowers, &upper, &expected, "overlay", "index");
    let flat = t.join("flat");
    run_ok(&[
        "squash".as_ref(),
        "-l".as_ref(),
        &l,
        "-u".as_ref(),
        upper.as_os_str(),
        "-o".as_ref(),
        flat.as_os_str(),
    ]);
    let squashed = snapshot(&flat);
    assert_eq!(squashed.get("d/h2").map(|n| n.nlink), Some(2));
    assert_eq!(
        squashed.get("d/h2").map(|n| n.hash),
        expected.get("d/h2").map(|n| n.hash)
    );
}
