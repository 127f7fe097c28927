//! The layer tools facing hostile or mistaken input, through the real
//! binary: `apply` of whiteouts of `.`, `..` and the empty name, `squash`
//! and `commit` with an output inside a layer or a live mount of the
//! layers, archive errors that name the file and the cause, and the
//! smaller messages and marks of `umount`, usage errors, `which`, `ls`,
//! the help texts and the tools that take a mount path. One test per
//! defect fixed by "Tools refuse hostile input ..." (7ae45e8); each one
//! failed before it.
//!
//! `UNIONFS_HOSTILE_BIN=/path/to/unionfs` runs the tool commands with
//! another build (to show these tests fail on an older one); mounts always
//! use the binary under test.

mod common;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// The legend `ls` prints under a listing with marks.
const LEGEND: &str = "(+ merges with lower directories   * hides lower copies)";

/// The binary whose tools are run.
fn bin() -> OsString {
    std::env::var_os("UNIONFS_HOSTILE_BIN").unwrap_or_else(|| unionfs_bin().into())
}

/// Runs a tool command in `cwd` (if given), killed after `timeout`.
fn tool_in<I, S>(cwd: Option<&Path>, timeout: Duration, args: I) -> CmdOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(bin());
    cmd.args(args).env_remove("RUST_LOG");
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    run(&mut cmd, timeout)
}

/// Runs a tool command (30 s timeout).
fn tool<I, S>(args: I) -> CmdOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    tool_in(None, Duration::from_secs(30), args)
}

/// A refusal is immediate; what ran without end before is killed soon.
fn tool_quick<I, S>(args: I) -> CmdOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    tool_in(None, Duration::from_secs(5), args)
}

/// Asserts exit status `code` and exactly one stderr line; returns it.
fn one_line(out: &CmdOutput, code: i32, what: &str) -> String {
    assert!(!out.timed_out, "{what}: never ended: {out}");
    assert_eq!(out.code(), Some(code), "{what}: {out}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{what}: one stderr line: {out}");
    lines[0].to_owned()
}

fn os(p: &Path) -> &OsStr {
    p.as_os_str()
}

/// A tar of empty regular files with raw names (the tar crate refuses to
/// write some of them).
fn raw_tar(names: &[&[u8]]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for name in names {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, &b""[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// A tar holding one file `name` with `data`.
fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, name, data).unwrap();
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Bytes that do not compress (so a cut gzip stream is cut in its data).
fn noise(len: usize) -> Vec<u8> {
    scrambled(7, len)
}

/// A lower `lo` and an upper `up` in the kernel format, in `t`.
fn two_layers(t: &TestDir) -> (PathBuf, PathBuf) {
    let lower = Layer::new("lo")
        .tagged("etc/motd")
        .tagged("etc/issue")
        .tagged("data/a")
        .tagged("data/b")
        .tagged("gone");
    let upper = Layer::new("up")
        .tagged("etc/motd")
        .tagged("new.txt")
        .whiteout("gone")
        .whiteout("data/a");
    let dirs = render_stack(&[lower, upper], t.path(), Format::Kernel);
    (dirs[0].clone(), dirs[1].clone())
}

/// Defect: `apply` of a layer holding a whiteout of `..`, `.` or the empty
/// name marked a directory outside the entry's own opaque (for `.wh...` at
/// the top: the parent of the target), or (oci) kept the marker as a file.
#[test]
fn apply_refuses_whiteouts_of_dot_dotdot_and_the_empty_name() {
    let t = TestDir::new("hostile-apply-markers");
    let cases: [(&str, &str); 4] = [
        (".wh...", "whiteout of '..'"),
        ("a/.wh...", "whiteout of '..'"),
        (".wh..", "whiteout of '.'"),
        (".wh.", "whiteout of the empty name"),
    ];
    let mut n = 0;
    for format in ["overlay", "oci"] {
        for (entry, why) in cases {
            n += 1;
            let what = format!("--format {format}, entry {entry}");
            let tar = t.join(format!("marker-{n}.tar"));
            fs::write(&tar, raw_tar(&[entry.as_bytes()])).unwrap();
            let boxdir = t.mkdir(format!("box{n}"));
            let dest = boxdir.join("t5");
            let out = tool([
                OsStr::new("apply"),
                os(&tar),
                os(&dest),
                OsStr::new("--format"),
                OsStr::new(format),
            ]);
            let line = one_line(&out, 1, &what);
            assert!(line.contains(&format!("entry '/{entry}'")), "{what}: {out}");
            assert!(line.contains(why), "{what}: {out}");
            assert!(line.contains("nothing written"), "{what}: {out}");
            assert_eq!(
                sys::llistxattr(&boxdir).unwrap(),
                Vec::<Vec<u8>>::new(),
                "{what}: xattrs set on {}",
                boxdir.display()
            );
            assert_eq!(list(&boxdir), Vec::<Vec<u8>>::new(), "{what}: left behind");
        }
    }
}

/// Defect: `squash` with its output inside one of the layers it reads read
/// its own output without end; `commit` wrote its archive into the layer
/// it describes. Both now refuse at once and write nothing.
#[test]
fn squash_and_commit_refuse_an_output_inside_a_layer() {
    let t = TestDir::new("hostile-output-in-layer");
    let (lo, up) = two_layers(&t);
    let lnk = t.join("lnk");
    std::os::unix::fs::symlink(&lo, &lnk).unwrap();
    let sums = checksum_layers(&[&lo, &up]);
    let lo_arg = lo.as_os_str().to_owned();
    let cases: Vec<(&str, Vec<&OsStr>, PathBuf, &str)> = vec![
        ("squash", vec![&lo_arg], lo.join("flat"), "inside lower 1"),
        (
            "squash",
            vec![&lo_arg, os(&up)],
            up.join("flat"),
            "inside the upper",
        ),
        (
            "squash",
            vec![&lo_arg, os(&up)],
            lo.join("etc/flat"),
            "inside lower 1",
        ),
        ("squash", vec![&lo_arg], lnk.join("flat"), "inside lower 1"),
        (
            "commit",
            vec![&lo_arg, os(&up)],
            up.join("x.tar"),
            "inside the upper",
        ),
        (
            "commit",
            vec![&lo_arg, os(&up)],
            lo.join("x.tar.gz"),
            "inside lower 1",
        ),
        (
            "commit",
            vec![&lo_arg, os(&up)],
            lnk.join("x.tar"),
            "inside lower 1",
        ),
    ];
    for (cmd, layers, output, inside) in cases {
        let mut args: Vec<&OsStr> = vec![OsStr::new(cmd), OsStr::new("-l"), layers[0]];
        if let Some(u) = layers.get(1) {
            args.extend([OsStr::new("-u"), u]);
        }
        args.extend([OsStr::new("-o"), os(&output)]);
        let what = format!("{cmd} -o {}", output.display());
        let out = tool_quick(&args);
        let line = one_line(&out, 1, &what);
        assert!(line.contains(inside), "{what}: {out}");
        assert!(line.contains("nothing written"), "{what}: {out}");
        assert!(fs::symlink_metadata(&output).is_err(), "{what}: written");
        sums.assert_unchanged();
    }
}

/// Defect: an output inside a live mount of the layers (through the
/// mount, it lands in the upper being read) was written, and squash read
/// its own output without end.
#[test]
fn squash_and_commit_refuse_an_output_inside_a_live_mount_of_the_layers() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("hostile-output-in-mount");
    let (lo, up) = two_layers(&t);
    let mnt = t.mkdir("mnt");
    let m = mount_unionfs(&[&lo], Some(&up), None, &mnt, &[]);
    let before = snapshot_full(&up);
    let sums = checksum_layers(&[&lo]);
    let into = m.join("x.tar");
    let flat = m.join("flat");
    let cases: Vec<Vec<&OsStr>> = vec![
        vec!["commit".as_ref(), os(&mnt), "-o".as_ref(), os(&into)],
        vec![
            "commit".as_ref(),
            "-l".as_ref(),
            os(&lo),
            "-u".as_ref(),
            os(&up),
            "-o".as_ref(),
            os(&into),
        ],
        vec![
            "squash".as_ref(),
            "-l".as_ref(),
            os(&lo),
            "-u".as_ref(),
            os(&up),
            "-o".as_ref(),
            os(&flat),
        ],
    ];
    for args in cases {
        let what = format!("{args:?}");
        let out = tool_quick(&args);
        let line = one_line(&out, 1, &what);
        assert!(
            line.contains("inside a live mount of these layers"),
            "{what}: {out}"
        );
        assert!(line.contains("nothing written"), "{what}: {out}");
        before.assert_same(&snapshot_full(&up), Fields::NONE, &what);
        sums.assert_unchanged();
    }
    assert!(!up.join("x.tar").exists() && !up.join("flat").exists());
    m.umount();
}

/// Defect: `cd up && unionfs commit -l ../lo -u . -o layer.tar` wrote the
/// archive into the upper while reading it, so the archive listed its own
/// temporary `.layer.tar.unionfs-tmp-N`.
#[test]
fn commit_refuses_a_relative_output_in_the_upper_it_reads() {
    let t = TestDir::new("hostile-commit-cwd");
    let (_lo, up) = two_layers(&t);
    let sums = checksum_layers(&[&up]);
    let out = tool_in(
        Some(&up),
        Duration::from_secs(30),
        ["commit", "-l", "../lo", "-u", ".", "-o", "layer.tar"],
    );
    let line = one_line(&out, 1, "commit -o layer.tar in the upper");
    assert!(line.starts_with("unionfs: layer.tar: "), "{out}");
    assert!(line.contains("inside the upper"), "{out}");
    assert!(line.contains("nothing written"), "{out}");
    assert!(!up.join("layer.tar").exists(), "archive written: {out}");
    sums.assert_unchanged();
}

/// Defect: `apply` of a file that is no (whole) tar archive said what the
/// tar parser made of its bytes, quoting them (or, for an empty file,
/// succeeded). Now one line names the file and the cause, and the
/// destination is not created.
#[test]
fn apply_names_the_file_and_the_cause_of_a_bad_archive() {
    let t = TestDir::new("hostile-archive-errors");
    let dir = t.mkdir("in");
    let outs = t.mkdir("out");
    let readme_text: String = (0..40)
        .map(|i| format!("Quokka{i} marmalade zeppelin paragraph {i} of the readme.\n"))
        .collect();
    assert!(readme_text.len() > 1024);
    let big = tar_of("big", &noise(256 * 1024));
    let tgz = gzip(&big);
    let long = tar_of("long", &noise(8192));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "notes.txt",
            b"just a few words\n".to_vec(),
            "not a tar archive",
        ),
        (
            "x.tar.gz",
            readme_text.clone().into_bytes(),
            "not a tar archive",
        ),
        (
            "cut.tgz",
            tgz[..tgz.len() / 2].to_vec(),
            "truncated gzip data",
        ),
        ("cut.tar", long[..512 + 3000].to_vec(), "truncated archive"),
        ("empty.tar", Vec::new(), "empty, not a tar archive"),
        (
            "text.gz",
            gzip(b"plain words, gzipped\n"),
            "gzip data that is not a tar archive",
        ),
    ];
    for (name, bytes, cause) in cases {
        let file = dir.join(name);
        fs::write(&file, &bytes).unwrap();
        let dest = outs.join(format!("dest-{name}"));
        let out = tool(["apply".as_ref(), os(&file), os(&dest)]);
        let line = one_line(&out, 1, name);
        let head = format!("unionfs: {}: ", file.display());
        assert!(line.starts_with(&head), "{name}: {out}");
        let rest = &line[head.len()..];
        assert!(rest.starts_with(cause), "{name}: want {cause:?}: {out}");
        if cause.contains("not a tar archive") {
            assert_eq!(rest, cause, "{name}: {out}");
        }
        assert!(!dest.exists(), "{name}: destination created");
        assert_eq!(list(&outs), Vec::<Vec<u8>>::new(), "{name}: left behind");
    }
    // Nothing of the README's text shows in the message.
    let file = dir.join("x.tar.gz");
    let out = tool(["apply".as_ref(), os(&file), os(&outs.join("d"))]);
    for word in ["Quokka", "marmalade", "zeppelin", "paragraph", "readme"] {
        assert!(!out.stderr.contains(word), "quotes the file: {out}");
    }
}

/// Defect: `umount` of a directory that is no mount point said "Invalid
/// argument".
#[test]
fn umount_of_a_plain_dir_says_not_a_mount_point() {
    let t = TestDir::new("hostile-umount-plain");
    let d = t.mkdir("plain");
    let out = tool(["umount".as_ref(), os(&d)]);
    let line = one_line(&out, 1, "umount of a plain dir");
    assert_eq!(
        line,
        format!("unionfs: cannot unmount {}: not a mount point", d.display()),
        "{out}"
    );
}

/// Defect: a usage error of a subcommand pointed at `unionfs --help`
/// rather than at the subcommand's own help.
#[test]
fn a_usage_error_points_at_the_subcommand_help() {
    let t = TestDir::new("hostile-usage");
    let (lo, up) = two_layers(&t);
    let out = tool([
        "commit".as_ref(),
        "-l".as_ref(),
        os(&lo),
        "-u".as_ref(),
        os(&up),
    ]);
    let line = one_line(&out, 2, "commit without -o");
    assert!(line.contains("-o"), "{out}");
    assert!(line.ends_with("(try 'unionfs commit --help')"), "{out}");
}

/// Defect: `which` of a name whited out by an OCI `.wh.NAME` file gave the
/// name's own path as the marker's (`at /data/a`), not the file's.
#[test]
fn which_names_the_oci_whiteout_file_itself() {
    let t = TestDir::new("hostile-which-oci");
    let lower = Layer::new("lo").tagged("data/a").tagged("data/b");
    let upper = Layer::new("up").whiteout("data/a");
    let dirs = render_stack(&[lower, upper], t.path(), Format::Oci);
    assert!(dirs[1].join("data/.wh.a").exists(), "the OCI marker");
    let out = tool([
        "which".as_ref(),
        "-l".as_ref(),
        os(&dirs[0]),
        "-u".as_ref(),
        os(&dirs[1]),
        "data/a".as_ref(),
    ]);
    let line = one_line(&out, 1, "which of a whited-out name");
    assert!(line.contains("whited out in upper"), "{out}");
    assert!(line.contains("at /data/.wh.a)"), "{out}");
}

/// Defect: `which` of a path hidden by an opaque directory said only
/// "opaque marker", not which marker (the xattr or the OCI file).
#[test]
fn which_names_the_opaque_marker_kind() {
    for (format, marker) in [
        (Format::Kernel, "trusted.overlay.opaque=y"),
        (Format::Oci, ".wh..wh..opq file"),
    ] {
        let t = TestDir::new(&format!("hostile-which-opaque-{format:?}"));
        let lower = Layer::new("lo").tagged("d/x");
        let upper = Layer::new("up").opaque("d").tagged("d/y");
        let dirs = render_stack(&[lower, upper], t.path(), format);
        let out = tool([
            "which".as_ref(),
            "-l".as_ref(),
            os(&dirs[0]),
            "-u".as_ref(),
            os(&dirs[1]),
            "d/x".as_ref(),
        ]);
        let what = format!("{format:?}");
        let line = one_line(&out, 1, &what);
        assert!(
            line.contains("hidden by opaque dir /d in upper"),
            "{what}: {out}"
        );
        assert!(line.contains(&format!("({marker})")), "{what}: {out}");
    }
}

/// Defect: `ls` marked a merged directory and a file over lower files
/// alike (`*`) and never said what the mark means.
#[test]
fn ls_marks_merging_dirs_and_hiding_entries_with_a_legend() {
    let t = TestDir::new("hostile-ls-marks");
    let (lo, up) = two_layers(&t);
    let mark_of = |stdout: &str, name: &str| -> char {
        let line = stdout
            .lines()
            .find(|l| l.ends_with(&format!(" {name}")) || l.ends_with(&format!(" {name}/")))
            .unwrap_or_else(|| panic!("{name} not listed:\n{stdout}"));
        line.chars().nth(9).expect("a mark column")
    };
    let out = tool([
        "ls".as_ref(),
        "-l".as_ref(),
        os(&lo),
        "-u".as_ref(),
        os(&up),
    ]);
    assert!(out.success(), "{out}");
    assert_eq!(mark_of(&out.stdout, "etc"), '+', "{out}");
    assert_eq!(mark_of(&out.stdout, "new.txt"), ' ', "{out}");
    assert_eq!(out.stdout.lines().last(), Some(LEGEND), "{out}");
    let out = tool([
        "ls".as_ref(),
        "-l".as_ref(),
        os(&lo),
        "-u".as_ref(),
        os(&up),
        "etc".as_ref(),
    ]);
    assert!(out.success(), "{out}");
    assert_eq!(mark_of(&out.stdout, "motd"), '*', "{out}");
    assert_eq!(mark_of(&out.stdout, "issue"), ' ', "{out}");
    assert_eq!(out.stdout.lines().last(), Some(LEGEND), "{out}");
    // No mark, no legend.
    let out = tool(["ls".as_ref(), "-l".as_ref(), os(&lo), "etc".as_ref()]);
    assert!(out.success(), "{out}");
    assert!(!out.stdout.contains(LEGEND), "{out}");
}

/// Defect: `commit --help` promised "Sorted entries" for
/// --reproducible, and `unionfs --help` showed an /etc/fstab line as if it
/// were a command.
#[test]
fn help_texts_say_what_they_mean() {
    let out = tool(["commit", "--help"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("--reproducible"), "{out}");
    assert!(!out.stdout.contains("Sorted entries"), "{out}");
    let out = tool(["--help"]);
    assert!(out.success(), "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.contains("fstab") && l.contains("(not a command)"))
        .unwrap_or_else(|| panic!("no fstab line labelled '(not a command)': {out}"));
    let next = lines.get(i + 1).map(|l| l.trim_start()).unwrap_or_default();
    assert!(
        next.starts_with("unionfs ") && next.contains("fuse.unionfs") && next.ends_with(" 0 0"),
        "the fstab line: {out}"
    );
}

/// Defect: `diff`, `layers` and `commit` took no mount path (only -l/-u);
/// now they read the layers of the live mount a path is in, as with
/// -l/-u, and refuse both at once.
#[test]
fn layers_diff_and_commit_take_a_mount_path() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("hostile-mount-path");
    let (lo, up) = two_layers(&t);
    let mnt = t.mkdir("mnt");
    let m = mount_unionfs(&[&lo], Some(&up), None, &mnt, &[]);
    let given: [&OsStr; 4] = ["-l".as_ref(), os(&lo), "-u".as_ref(), os(&up)];
    for cmd in ["diff", "layers"] {
        let by_mount = tool([OsStr::new(cmd), os(&mnt)]);
        assert!(by_mount.success(), "{by_mount}");
        let by_flags = tool([&[OsStr::new(cmd)][..], &given].concat());
        assert!(by_flags.success(), "{by_flags}");
        assert_eq!(by_mount.stdout, by_flags.stdout, "{cmd}");
        assert!(!by_mount.stdout.is_empty(), "{cmd}");
    }
    let a = t.join("by-mount.tar");
    let b = t.join("by-flags.tar");
    let out = tool([
        "commit".as_ref(),
        os(&mnt),
        "-o".as_ref(),
        os(&a),
        "--reproducible".as_ref(),
    ]);
    assert!(out.success(), "{out}");
    let out = tool(
        [
            &[OsStr::new("commit")][..],
            &given,
            &["-o".as_ref(), os(&b), "--reproducible".as_ref()],
        ]
        .concat(),
    );
    assert!(out.success(), "{out}");
    assert_eq!(read(&a), read(&b), "commit through the mount path");
    // Layers named and a mount path: refused.
    let out = tool(["diff".as_ref(), "-l".as_ref(), os(&lo), os(&mnt)]);
    let line = one_line(&out, 2, "diff -l LO MNT");
    assert!(line.contains("give no mount path"), "{out}");
    m.umount();
}

/// Defect: an output that reaches a layer by another mount (a bind mount
/// of a lower, kernel overlayfs over the same layers) passed the path
/// check, and squash read its own output without end. The tool now stops
/// when its own temporary shows in the union it reads.
#[test]
fn squash_and_commit_refuse_an_output_reaching_a_layer_through_another_mount() {
    if !require_kernel_overlay() {
        return;
    }
    let t = TestDir::new("hostile-output-other-mount");
    let (lo, up) = two_layers(&t);
    let sums = checksum_layers(&[&lo]);
    let bind = t.mkdir("bind");
    let ovl = t.mkdir("ovl");
    let work = t.mkdir("ovl-work");
    let mounted = |what: &str, out: std::process::Output| {
        assert!(out.status.success(), "{what}: {out:?}");
    };
    mounted(
        "bind mount",
        Command::new("mount")
            .arg("--bind")
            .arg(&lo)
            .arg(&bind)
            .output()
            .unwrap(),
    );
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lo.display(),
        up.display(),
        work.display()
    );
    mounted(
        "overlay mount",
        Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &data])
            .arg(&ovl)
            .output()
            .unwrap(),
    );
    let lo_arg = lo.as_os_str();
    let cases: Vec<(&str, bool, PathBuf)> = vec![
        ("squash", false, bind.join("flat")),
        ("squash", true, ovl.join("flat")),
        ("commit", true, ovl.join("x.tar")),
    ];
    let mut failures = Vec::new();
    for (cmd, with_upper, output) in &cases {
        let mut args: Vec<&OsStr> = vec![OsStr::new(cmd), OsStr::new("-l"), lo_arg];
        if *with_upper {
            args.extend([OsStr::new("-u"), up.as_os_str()]);
        }
        args.extend([OsStr::new("-o"), os(output)]);
        let what = format!("{cmd} -o {}", output.display());
        let out = tool_quick(&args);
        // The bind mount is seen before anything is written; through
        // overlayfs, once the output's temporary shows in the union.
        let said = if *with_upper {
            "inside one of the layers"
        } else {
            "inside lower 1"
        };
        if out.code() != Some(1)
            || !out.stderr.contains(said)
            || !out.stderr.contains("nothing written")
        {
            failures.push(format!("{what}: {out}"));
        }
        if fs::symlink_metadata(output).is_ok() {
            failures.push(format!("{what}: written"));
        }
    }
    let leftovers: Vec<String> = [&lo, &up]
        .iter()
        .flat_map(|d| fs::read_dir(d).unwrap().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("unionfs-tmp"))
        .collect();
    for m in [&ovl, &bind] {
        let _ = Command::new("umount").arg(m).status();
    }
    assert!(
        leftovers.is_empty(),
        "temporaries left in a layer: {leftovers:?}"
    );
    assert_no_failures("output through another mount", &failures);
    sums.assert_unchanged();
}
