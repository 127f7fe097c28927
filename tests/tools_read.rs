//! The read-only layer tools (`which`, `ls`, `layers`, `diff`) on real
//! layers in every whiteout format, checked against the harness's
//! reference model of the merged view, and through a live mount.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use common::*;

/// Two lowers and an upper that exercise every kind of change.
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
        .fifo("p")
        .tagged("shadowed/deep/f");
    let lower1 = Layer::new("lower1")
        .tagged("etc/motd")
        .whiteout("etc/os-release")
        .tagged("x/y")
        .opaque("shadowed")
        .tagged("shadowed/top");
    let upper = Layer::new("upper")
        .tagged("etc/motd")
        .mode(0o600)
        .xattr("user.k", "v")
        .whiteout("app/server.conf")
        .opaque("data")
        .tagged("data/c")
        .tagged("new.txt")
        .whiteout("gone")
        .tagged("df")
        .tagged("newdir/f")
        .symlink("ln2", "target");
    vec![upper, lower1, lower2]
}

fn label_of(layer_name: &str) -> String {
    match layer_name {
        "upper" => "upper".into(),
        "lower1" => "lower 1".into(),
        "lower2" => "lower 2".into(),
        other => panic!("unknown layer {other}"),
    }
}

struct Rendered {
    _t: TestDir,
    upper: PathBuf,
    lowers: Vec<PathBuf>,
    layers: Vec<Layer>,
}

impl Rendered {
    fn new(format: Format) -> Rendered {
        let t = TestDir::new(&format!("tools-read-{format:?}"));
        let layers = stack();
        let dirs = render_stack(&layers, t.path(), format);
        Rendered {
            upper: dirs[0].clone(),
            lowers: dirs[1..].to_vec(),
            _t: t,
            layers,
        }
    }

    fn args(&self, tool: &str, with_upper: bool) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![tool.into(), "-l".into()];
        let lowers: Vec<&Path> = self.lowers.iter().map(|p| p.as_path()).collect();
        v.push(lowers_arg(&lowers));
        if with_upper {
            v.push("-u".into());
            v.push(self.upper.clone().into());
        }
        v
    }

    fn run(&self, tool: &str, with_upper: bool, extra: &[&str]) -> CmdOutput {
        let mut a = self.args(tool, with_upper);
        a.extend(extra.iter().map(OsString::from));
        unionfs(a)
    }

    fn all_dirs(&self) -> Vec<&Path> {
        let mut v = vec![self.upper.as_path()];
        v.extend(self.lowers.iter().map(|p| p.as_path()));
        v
    }
}

/// Parses `ls -R` output into path -> (layer label, mark, mode string).
fn parse_ls(text: &str) -> BTreeMap<String, (String, char, String)> {
    let mut out = BTreeMap::new();
    let mut dir = String::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if line.starts_with('(') {
            assert_eq!(
                line, "(+ merges with lower directories   * hides lower copies)",
                "the legend"
            );
            continue;
        }
        if let Some(d) = line.strip_suffix(':') {
            dir = d.trim_start_matches('/').to_string();
            continue;
        }
        let label = line[..8].trim().to_string();
        let star = line[9..10].chars().next().expect("a mark column");
        let rest = &line[11..];
        let mode = rest[..10].to_string();
        let after = rest[10..].trim_start();
        let (_, name) = after.split_once(' ').expect("size and name");
        let name = name.split(" -> ").next().unwrap_or(name);
        let name = name.trim_end_matches('/');
        let path = if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        };
        out.insert(path, (label, star, mode));
    }
    out
}

#[test]
fn ls_shows_the_serving_layer_of_every_entry_in_every_format() {
    for format in ALL_FORMATS {
        let r = Rendered::new(format);
        let refs: Vec<&Layer> = r.layers.iter().collect();
        let model = merged_view(&refs);
        let out = r.run("ls", true, &["-R"]);
        assert!(out.success(), "{format:?}: {out}");
        let listed = parse_ls(&out.stdout);
        let mut failures = Vec::new();
        for (path, e) in &model {
            if path.is_empty() {
                continue;
            }
            let p = show(path);
            match listed.get(&p) {
                None => failures.push(format!("{p}: in the model, not listed")),
                Some((label, _, mode)) => {
                    if *label != label_of(&e.layer) {
                        failures.push(format!("{p}: listed as {label}, model {}", e.layer));
                    }
                    let t = match e.ftype {
                        FileType::Dir => 'd',
                        FileType::Symlink => 'l',
                        FileType::Fifo => 'p',
                        _ => '-',
                    };
                    if !mode.starts_with(t) {
                        failures.push(format!("{p}: mode {mode}, model {:?}", e.ftype));
                    }
                }
            }
        }
        for p in listed.keys() {
            if !model.contains_key(p.as_bytes()) {
                failures.push(format!("{p}: listed, not in the model"));
            }
        }
        // '+' where a directory merges, '*' where lower copies are hidden.
        for (p, mark) in [
            ("etc/motd", '*'),
            ("etc", '+'),
            ("shadowed", '*'),
            ("new.txt", ' '),
            ("x/y", ' '),
        ] {
            if listed.get(p).map(|l| l.1) != Some(mark) {
                failures.push(format!("{p}: mark should be {mark:?}"));
            }
        }
        assert_no_failures(&format!("{format:?}"), &failures);
    }
}

#[test]
fn which_names_the_serving_layer_shadows_and_hiders_in_every_format() {
    for format in ALL_FORMATS {
        let r = Rendered::new(format);
        let before = checksum_layers(&r.all_dirs());
        let up = r.upper.display().to_string();
        let l1 = r.lowers[0].display().to_string();
        let l2 = r.lowers[1].display().to_string();

        let out = r.run("which", true, &["etc/motd"]);
        assert!(out.success(), "{format:?}: {out}");
        let want = format!(
            "/etc/motd\n  served by  upper ({up}) /etc/motd [file]\n  shadows    lower 1 ({l1}) /etc/motd\n  shadows    lower 2 ({l2}) /etc/motd\n"
        );
        assert_eq!(out.stdout, want, "{format:?}");

        let out = r.run("which", true, &["/etc/"]);
        assert!(out.success(), "{format:?}: {out}");
        assert!(
            out.stdout.contains("  merges     lower 2"),
            "{format:?}: {out}"
        );

        // Whited out in the upper: exit 1, the reason, the hidden copy.
        let out = r.run("which", true, &["app/server.conf"]);
        assert_eq!(out.code(), Some(1), "{format:?}: {out}");
        assert!(
            out.stderr
                .contains("/app/server.conf: not in the union: whited out in upper"),
            "{format:?}: {out}"
        );
        assert!(
            out.stdout.contains(&format!(
                "hidden     lower 2 ({l2}) /app/server.conf: whited out in upper"
            )),
            "{format:?}: {out}"
        );

        // Below an opaque dir of the upper.
        let out = r.run("which", true, &["data/a"]);
        assert_eq!(out.code(), Some(1), "{format:?}: {out}");
        assert!(
            out.stderr.contains("hidden by opaque dir /data in upper"),
            "{format:?}: {out}"
        );
        // Whited out in a lower; in a dir that an upper whiteout deletes.
        let out = r.run("which", true, &["etc/os-release", "gone/dir/f"]);
        assert_eq!(out.code(), Some(1), "{format:?}: {out}");
        assert!(
            out.stderr
                .contains("/etc/os-release: not in the union: whited out in lower 1"),
            "{format:?}: {out}"
        );
        assert!(
            out.stderr
                .contains("/gone/dir/f: not in the union: whited out in upper"),
            "{format:?}: {out}"
        );
        assert!(
            out.stdout.contains(&format!("lower 2 ({l2}) /gone/dir/f")),
            "{format:?}: {out}"
        );
        // A file over a lower directory; never existed.
        let out = r.run("which", true, &["df/inner"]);
        assert_eq!(out.code(), Some(1), "{format:?}: {out}");
        assert!(
            out.stderr.contains("/df is a file, not a directory"),
            "{format:?}: {out}"
        );
        assert!(
            out.stdout.contains("shadowed by /df in upper"),
            "{format:?}: {out}"
        );
        let out = r.run("which", true, &["no/such"]);
        assert_eq!(out.code(), Some(1), "{format:?}: {out}");
        assert!(out.stderr.contains("no layer has it"), "{format:?}: {out}");
        // A lower's opaque dir hides the one below.
        let out = r.run("which", true, &["shadowed/deep/f"]);
        assert_eq!(out.code(), Some(1), "{format:?}: {out}");
        assert!(
            out.stderr
                .contains("hidden by opaque dir /shadowed in lower 1"),
            "{format:?}: {out}"
        );
        before.assert_unchanged();
    }
}

/// The docker-diff lines the model predicts: A/D/C from the merged view
/// and the lowers-only view (a deleted dir is one line).
fn model_diff(layers: &[Layer]) -> Vec<String> {
    let all: Vec<&Layer> = layers.iter().collect();
    let merged = merged_view(&all);
    let lowers = merged_view(&all[1..]);
    let mut out = Vec::new();
    let mut deleted: Vec<Vec<u8>> = Vec::new();
    let keys: BTreeSet<&Vec<u8>> = merged.keys().chain(lowers.keys()).collect();
    for p in keys {
        if p.is_empty() {
            continue;
        }
        let line = match (merged.get(p), lowers.get(p)) {
            (Some(_), None) => format!("A /{}", show(p)),
            (None, Some(_)) => {
                if deleted
                    .iter()
                    .any(|d| p.starts_with(d) && p.get(d.len()) == Some(&b'/'))
                {
                    continue;
                }
                deleted.push(p.clone());
                format!("D /{}", show(p))
            }
            (Some(m), Some(_)) if m.layer == "upper" => format!("C /{}", show(p)),
            _ => continue,
        };
        out.push(line);
    }
    out.sort_by(|a, b| a.as_bytes()[2..].cmp(&b.as_bytes()[2..]));
    out
}

#[test]
fn diff_lists_what_the_upper_changes_in_every_format() {
    let expected_kernel = [
        "C /app",
        "D /app/server.conf",
        "C /data",
        "D /data/a",
        "D /data/b",
        "A /data/c",
        "C /df",
        "D /df/inner",
        "C /etc",
        "C /etc/motd",
        "D /gone",
        "A /ln2",
        "A /new.txt",
        "A /newdir",
        "A /newdir/f",
    ];
    for format in ALL_FORMATS {
        let r = Rendered::new(format);
        let before = checksum_layers(&r.all_dirs());
        let out = r.run("diff", true, &[]);
        assert!(out.success(), "{format:?}: {out}");
        let got: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(got, expected_kernel, "{format:?}");
        assert_eq!(got, model_diff(&r.layers), "{format:?}: model");
        before.assert_unchanged();
    }
}

#[test]
fn layers_counts_entries_whiteouts_opaque_dirs_and_wasted_bytes() {
    for format in ALL_FORMATS {
        let r = Rendered::new(format);
        let refs: Vec<&Layer> = r.layers.iter().collect();
        let model = merged_view(&refs);
        let out = r.run("layers", true, &[]);
        assert!(out.success(), "{format:?}: {out}");
        let rows: Vec<Vec<String>> = out
            .stdout
            .lines()
            .skip(1)
            .map(|l| {
                let l = l.replacen("lower ", "lower_", 1);
                l.split_whitespace().map(str::to_string).collect()
            })
            .collect();
        let find = |label: &str| {
            rows.iter()
                .find(|r| r[0] == label)
                .unwrap_or_else(|| panic!("{format:?}: no row {label}: {out}"))
                .clone()
        };
        for (layer, label, whiteouts, opaque) in [
            (&r.layers[0], "upper", 2, 1),
            (&r.layers[1], "lower_1", 1, 1),
            (&r.layers[2], "lower_2", 0, 0),
        ] {
            let row = find(label);
            let mut bytes = 0u64;
            let mut wasted = 0u64;
            for e in &layer.entries {
                if let Kind::File(c) = &e.kind {
                    bytes += c.len() as u64;
                    let names: Vec<&Vec<u8>> = std::iter::once(&e.path)
                        .chain(layer.entries.iter().filter_map(|o| match &o.kind {
                            Kind::Link(t) if *t == e.path => Some(&o.path),
                            _ => None,
                        }))
                        .collect();
                    let served = names
                        .iter()
                        .any(|n| model.get(*n).is_some_and(|v| v.layer == layer.name));
                    if !served {
                        wasted += c.len() as u64;
                    }
                }
            }
            assert_eq!(row[2], bytes.to_string(), "{format:?} {label} bytes: {out}");
            assert_eq!(
                row[3],
                whiteouts.to_string(),
                "{format:?} {label} whiteouts: {out}"
            );
            assert_eq!(
                row[4],
                opaque.to_string(),
                "{format:?} {label} opaque: {out}"
            );
            assert_eq!(
                row[5],
                wasted.to_string(),
                "{format:?} {label} wasted: {out}"
            );
        }
        assert!(out.stdout.contains("efficiency: "), "{out}");
    }
}

#[test]
fn tools_refuse_bad_input_with_one_line() {
    let r = Rendered::new(Format::Kernel);
    let out = unionfs(["diff", "-l", r.lowers[0].to_str().unwrap()]);
    assert_eq!(out.code(), Some(2), "{out}");
    assert_eq!(out.stderr_lines().len(), 1, "{out}");
    let out = unionfs(["layers", "-l", "/nonexistent/layer"]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert_eq!(out.stderr_lines().len(), 1, "{out}");
    let out = r.run("ls", true, &["no/such/dir"]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert_eq!(out.stderr_lines().len(), 1, "{out}");
}

#[test]
fn redirected_directory_reads_from_its_recorded_lower_path() {
    // A directory renamed by kernel overlayfs with redirect_dir=on: the
    // upper has `b` with redirect "/a" (and "c" with the sibling form), and
    // a whiteout at the old names.
    let t = TestDir::new("tools-redirect");
    let lower = Layer::new("lower")
        .tagged("a/x")
        .tagged("a/sub/y")
        .tagged("s/z");
    let upper = Layer::new("upper")
        .dir("b")
        .tagged("b/new")
        .whiteout("a")
        .dir("c")
        .whiteout("s");
    let dirs = render_stack(&[upper, lower], t.path(), Format::Kernel);
    sys::lsetxattr(&dirs[0].join("b"), b"trusted.overlay.redirect", b"/a").unwrap();
    sys::lsetxattr(&dirs[0].join("c"), b"trusted.overlay.redirect", b"s").unwrap();
    let (up, lo) = (dirs[0].to_str().unwrap(), dirs[1].to_str().unwrap());
    let out = unionfs(["which", "-l", lo, "-u", up, "b/sub/y", "c/z"]);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout
            .contains(&format!("served by  lower 1 ({lo}) /a/sub/y [file]")),
        "{out}"
    );
    assert!(
        out.stdout
            .contains(&format!("served by  lower 1 ({lo}) /s/z [file]")),
        "{out}"
    );
    let out = unionfs(["diff", "-l", lo, "-u", up]);
    assert!(out.success(), "{out}");
    let got: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        got,
        [
            "D /a",
            "A /b",
            "A /b/new",
            "A /b/sub",
            "A /b/sub/y",
            "A /b/x",
            "A /c",
            "A /c/z",
            "D /s"
        ],
        "{out}"
    );
    // Kernel overlayfs reads the same layers the same way.
    if require_kernel_overlay() {
        let mnt = t.mkdir("kmnt");
        let m = mount_kernel_overlay(
            &[&dirs[0], &dirs[1]],
            None,
            None,
            &mnt,
            &["redirect_dir=follow"],
        );
        let view = snapshot(m.path());
        let mut names: Vec<String> = view.nodes.keys().map(show).collect();
        names.sort();
        assert_eq!(
            names,
            [".", "b", "b/new", "b/sub", "b/sub/y", "b/x", "c", "c/z"],
            "kernel view"
        );
        m.umount();
    }
}

#[test]
fn which_and_ls_find_the_layers_of_a_live_mount() {
    if !require_mount_env() {
        return;
    }
    let r = Rendered::new(Format::Kernel);
    let t = TestDir::new("tools-live");
    let mnt = t.mkdir("mnt");
    let lowers: Vec<&Path> = r.lowers.iter().map(|p| p.as_path()).collect();
    let m = mount_unionfs(&lowers, Some(&r.upper), None, &mnt, &[]);
    let out = unionfs([
        std::ffi::OsStr::new("which"),
        m.join("etc/motd").as_os_str(),
    ]);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout.contains(&format!(
            "served by  upper ({}) /etc/motd",
            r.upper.display()
        )),
        "{out}"
    );
    let out = unionfs([std::ffi::OsStr::new("which"), m.join("gone").as_os_str()]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("whited out in upper"), "{out}");
    let out = unionfs([std::ffi::OsStr::new("ls"), m.join("etc").as_os_str()]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("upper    * -rw------- "), "{out}");
    let out = unionfs(["which", "/tmp"]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("not inside a unionfs mount"), "{out}");
    m.umount();
}

#[test]
fn mount_v_turns_on_the_narration() {
    let t = TestDir::new("tools-mount-v");
    let lower = t.mkdir("lower");
    let upper = t.mkdir("upper");
    let mnt = t.mkdir("mnt");
    let args = |extra: &[&str]| {
        let mut v: Vec<OsString> = vec!["unionfs".into(), "mount".into()];
        v.extend(extra.iter().map(OsString::from));
        v.extend([
            "-l".into(),
            lower.clone().into(),
            "-u".into(),
            upper.clone().into(),
            mnt.clone().into(),
        ]);
        v
    };
    for (extra, want) in [
        (&["-v"][..], true),
        (&["--verbose"][..], true),
        (&[][..], false),
    ] {
        match unionfs::cli::parse_args(args(extra)) {
            Ok(unionfs::cli::Command::Mount(c)) => assert_eq!(c.verbose, want, "{extra:?}"),
            other => panic!("{extra:?}: {other:?}"),
        }
    }
    if !require_mount_env() {
        return;
    }
    // A live mount with -v logs at info (the upper format, at least).
    let log = t.join("narrate.log");
    let m = mount_unionfs(
        &[&lower],
        Some(&upper),
        None,
        &mnt,
        &["-v", "--log-file", log.to_str().unwrap()],
    );
    std::fs::write(m.join("f"), b"x").unwrap();
    m.umount();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(" INFO unionfs"),
        "no info lines in the log:\n{text}"
    );
}

#[test]
fn redirect_paths_stop_like_kernel_overlayfs() {
    if !require_kernel_overlay() {
        return;
    }
    // Three redirected dirs: one whose path crosses a whiteout in lower 1,
    // one whose path crosses an opaque dir of lower 1 that lacks the
    // target, one plain; and a relative redirect under an absolute one.
    let t = TestDir::new("tools-redirect-stops");
    let upper = Layer::new("upper")
        .tagged("w/mine")
        .tagged("o/mine")
        .tagged("ok/mine")
        .dir("ok/rel");
    let lower1 = Layer::new("lower1")
        .whiteout("p")
        .opaque("q")
        .tagged("q/other");
    let lower2 = Layer::new("lower2")
        .tagged("p/t/hidden")
        .tagged("q/t/hidden")
        .tagged("r/t/shown")
        .tagged("r/t/sib/deep");
    let dirs = render_stack(&[upper, lower1, lower2], t.path(), Format::Kernel);
    let set = |rel: &str, v: &[u8]| {
        sys::lsetxattr(&dirs[0].join(rel), b"trusted.overlay.redirect", v).unwrap()
    };
    set("w", b"/p/t");
    set("o", b"/q/t");
    set("ok", b"/r/t");
    set("ok/rel", b"sib");
    let flat = t.join("flat");
    let out = unionfs([
        OsString::from("squash"),
        "-l".into(),
        lowers_arg(&[&dirs[0], &dirs[1], &dirs[2]]),
        "-o".into(),
        flat.clone().into(),
    ]);
    assert!(out.success(), "{out}");
    let mnt = t.mkdir("kmnt");
    let m = mount_kernel_overlay(
        &[&dirs[0], &dirs[1], &dirs[2]],
        None,
        None,
        &mnt,
        &["redirect_dir=follow"],
    );
    let kernel = snapshot(m.path());
    m.umount();
    let ours = snapshot(&flat);
    let mut d = kernel.diff(&ours, Fields::VIEW | Fields::OWNER | Fields::MODE);
    d.retain(|l| !l.starts_with(". ") && !l.starts_with(".:"));
    assert_no_failures("squash vs kernel overlayfs with redirects", &d);
    assert!(ours.get("ok/shown").is_some() && ours.get("ok/rel/deep").is_some());
    assert!(ours.get("w/hidden").is_none() && ours.get("o/hidden").is_none());
}
