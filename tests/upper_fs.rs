//! The upper (and its work dir) on every file system it is likely to sit
//! on: ext4, xfs and btrfs (loop images made here, sparse) and tmpfs.
//!
//! * On each, one sequence of writes through the mount (copy-up by append,
//!   truncate, chmod, rename of a lower file and of a lower dir merged from
//!   two lowers, rm leaving whiteouts, mkdir over a whiteout, a write to one
//!   name of a hard-linked lower file, new files) runs on unionfs and on
//!   kernel overlayfs (`redirect_dir=on,index=on`, as tests/differential.rs)
//!   over identical layers on the same file system. Each operation's outcome
//!   and the merged trees are compared with the differential test's
//!   comparison (names, types, modes, owners, sizes, contents, symlink
//!   targets, user xattrs, link counts, hard-link groups); a remount of
//!   unionfs shows the same tree with the same inode numbers; the lowers are
//!   unchanged.
//! * On xfs (reflink=1) and btrfs, a copy-up of a 4 MiB lower file on the
//!   upper's file system (by a 1-byte append) shares the lower's extents
//!   (`filefrag -v` marks them `shared`) instead of copying the data.
//!
//! A file system whose mkfs tool (or kernel support) is missing is said
//! loudly and skipped, and fails the test under `CI=true`.

mod common;

#[allow(dead_code)]
#[path = "differential/model.rs"]
mod model;
#[allow(dead_code)]
#[path = "differential/tree.rs"]
mod tree;

use common::*;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// Kernel overlayfs options of the comparison, as tests/differential.rs
/// (`runner::KERNEL_OPTS`): directory renames and hard links behave as in
/// unionfs.
const KERNEL_OPTS: &[&str] = &["redirect_dir=on", "index=on"];

/// A recognisable content: `name:offset` records.
fn pattern(name: &str, len: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len as usize + 32);
    while (v.len() as u64) < len {
        v.extend_from_slice(format!("{name}:{:010}\n", v.len()).as_bytes());
    }
    v.truncate(len as usize);
    v
}

/// A file system mounted at `root` for the test, on a loop image of its own
/// (or a tmpfs). Fields drop in order: the mount, then the loop device.
struct TestFs {
    root: PathBuf,
    _dev_mount: Option<DevMount>,
    _tmpfs: Option<Mount>,
    _loop: Option<LoopDev>,
}

/// Makes and mounts a `kind` file system (`ext4`, `xfs`, `btrfs`, `tmpfs`)
/// at `t/fs`; None (after saying so) when this machine cannot.
fn make_fs(t: &TestDir, kind: &str) -> Option<TestFs> {
    let root = t.join("fs");
    if kind == "tmpfs" {
        let m = mount_tmpfs_sized(&root, "300m");
        return Some(TestFs {
            root,
            _dev_mount: None,
            _tmpfs: Some(m),
            _loop: None,
        });
    }
    let (mkfs, args): (&str, &[&str]) = match kind {
        "ext4" => ("mkfs.ext4", &["-q", "-F"]),
        "xfs" => ("mkfs.xfs", &["-q", "-f", "-m", "reflink=1"]),
        "btrfs" => ("mkfs.btrfs", &["-q", "-f"]),
        _ => panic!("unknown file system {kind}"),
    };
    if !require_commands(&[mkfs, "losetup"]) {
        return None;
    }
    let known = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !known
        .lines()
        .any(|l| l.split_whitespace().last() == Some(kind))
    {
        skip_or_fail(&format!("the kernel has no {kind} (/proc/filesystems)"));
        return None;
    }
    let image = t.join(format!("{kind}.img"));
    sparse_image(&image, 320 * MIB);
    run_ok(Command::new(mkfs).args(args).arg(&image), mkfs);
    let dev = LoopDev::attach(&image);
    let m = DevMount::new(&dev.dev, kind, "", &root);
    Some(TestFs {
        root,
        _dev_mount: Some(m),
        _tmpfs: None,
        _loop: Some(dev),
    })
}

/// The two lowers of the sequence (top first).
fn layers() -> Vec<Layer> {
    let top = Layer::new("top")
        .tagged("app/data/z")
        .tagged("app/top")
        .tagged("mvdir/w")
        .xattr("user.k", "top")
        .tagged("gone2");
    let bottom = Layer::new("bottom")
        .tagged("app/conf")
        .mode(0o640)
        .tagged("app/data/x")
        .tagged("app/data/y")
        .file("big", pattern("big", MIB))
        .tagged("links/h1")
        .link("links/h2", "links/h1")
        .tagged("rmme/a")
        .tagged("rmme/sub/b")
        .tagged("gone")
        .tagged("trunc")
        .tagged("mode")
        .tagged("mvfile")
        .mtime(1_500_000_000)
        .tagged("mvdir/inner/z")
        .symlink("mvdir/ln", "inner/z");
    vec![top, bottom]
}

fn append(p: &Path, data: &[u8]) -> io::Result<()> {
    fs::OpenOptions::new().append(true).open(p)?.write_all(data)
}

type Step = (&'static str, fn(&Path) -> io::Result<()>);

/// The sequence, each step run on a merged root.
const STEPS: &[Step] = &[
    ("append to app/conf (copy-up)", |m| {
        append(&m.join("app/conf"), b"appended\n")
    }),
    ("append 1 byte to big (copy-up of 1 MiB)", |m| {
        append(&m.join("big"), b"!")
    }),
    ("truncate trunc to 5", |m| {
        fs::OpenOptions::new()
            .write(true)
            .open(m.join("trunc"))?
            .set_len(5)
    }),
    ("chmod mode 0600", |m| {
        fs::set_permissions(m.join("mode"), fs::Permissions::from_mode(0o600))
    }),
    ("rename mvfile app/mvfile2", |m| {
        fs::rename(m.join("mvfile"), m.join("app/mvfile2"))
    }),
    ("rename mvdir mvdir2 (merged from both lowers)", |m| {
        fs::rename(m.join("mvdir"), m.join("mvdir2"))
    }),
    ("write mvdir2/inner/z (below the renamed dir)", |m| {
        append(&m.join("mvdir2/inner/z"), b"more\n")
    }),
    ("rm gone", |m| fs::remove_file(m.join("gone"))),
    ("rm gone2", |m| fs::remove_file(m.join("gone2"))),
    ("rm app/data/x", |m| fs::remove_file(m.join("app/data/x"))),
    ("rm -r rmme", |m| fs::remove_dir_all(m.join("rmme"))),
    ("mkdir rmme (over a whiteout)", |m| {
        fs::create_dir(m.join("rmme"))
    }),
    ("create rmme/new", |m| {
        fs::write(m.join("rmme/new"), b"new\n")
    }),
    ("create gone (over a whiteout)", |m| {
        fs::write(m.join("gone"), b"back\n")
    }),
    ("append to links/h1 (hard-link copy-up)", |m| {
        append(&m.join("links/h1"), b"via h1\n")
    }),
    ("create app/data/new", |m| {
        fs::write(m.join("app/data/new"), b"new\n")
    }),
    ("link app/data/new app/data/new.link", |m| {
        fs::hard_link(m.join("app/data/new"), m.join("app/data/new.link"))
    }),
    ("symlink app/ln", |m| {
        std::os::unix::fs::symlink("data/z", m.join("app/ln"))
    }),
    ("rename app/data/y over app/top", |m| {
        fs::rename(m.join("app/data/y"), m.join("app/top"))
    }),
];

/// Runs the sequence on `mnt`: each step's outcome (`ok` or the errno).
fn run_steps(mnt: &Path) -> Vec<String> {
    STEPS
        .iter()
        .map(|(what, step)| match step(mnt) {
            Ok(()) => format!("{what}: ok"),
            Err(e) => format!(
                "{what}: {}",
                tree::errno_name(e.raw_os_error().unwrap_or(-1))
            ),
        })
        .collect()
}

/// Differences of two merged trees, but for the one that is not a bug
/// (tests/differential.rs `dir-nlink-merged`: both report 1 for a merged
/// dir but may disagree on whether a dir merges).
fn tree_diffs(a: &tree::Snap, b: &tree::Snap, what: &str) -> Vec<String> {
    tree::compare(a, b)
        .into_iter()
        .filter(|d| !(d.field == "dir nlink" && (d.left == "1" || d.right == "1")))
        .map(|d| format!("{what}: {}", d.line()))
        .collect()
}

/// The sequence on unionfs and on kernel overlayfs, everything on a `kind`
/// file system.
fn sequence_matches_kernel_overlayfs(kind: &str) {
    if !require_kernel_overlay() {
        return;
    }
    let t = TestDir::new(&format!("upper-{kind}"));
    let Some(tfs) = make_fs(&t, kind) else {
        return;
    };
    let root = &tfs.root;
    let ls = layers();
    let k_lowers = render_stack(&ls, &root.join("k.lowers"), Format::Kernel);
    let u_lowers = render_stack(&ls, &root.join("u.lowers"), Format::Kernel);
    let sums = checksum_layers(&as_paths(&u_lowers));
    let k_sums = checksum_layers(&as_paths(&k_lowers));
    for d in ["k.upper", "k.work", "u.upper"] {
        fs::create_dir(root.join(d)).expect("mkdir");
    }
    let (u_upper, u_work, u_mnt) = (root.join("u.upper"), root.join("u.work"), t.mkdir("u.mnt"));
    let k_mnt = t.mkdir("k.mnt");
    let mut f = Vec::new();

    let km = mount_kernel_overlay(
        &as_paths(&k_lowers),
        Some(&root.join("k.upper")),
        Some(&root.join("k.work")),
        &k_mnt,
        KERNEL_OPTS,
    );
    let args = ["--format", "overlay"];
    let um = mount_unionfs(
        &as_paths(&u_lowers),
        Some(&u_upper),
        Some(&u_work),
        &u_mnt,
        &args,
    );
    f.extend(tree_diffs(
        &tree::snap(&k_mnt),
        &tree::snap(&u_mnt),
        "before any write",
    ));
    let (k_out, u_out) = (run_steps(&k_mnt), run_steps(&u_mnt));
    for (k, u) in k_out.iter().zip(&u_out) {
        if k != u {
            f.push(format!("outcome: kernel overlayfs {k:?}, unionfs {u:?}"));
        }
        // Every step is one a plain file system allows.
        if !u.ends_with(": ok") {
            f.push(format!("unionfs failed a step: {u}"));
        }
    }
    let k_view = tree::snap(&k_mnt);
    let u_view = tree::snap(&u_mnt);
    f.extend(tree_diffs(&k_view, &u_view, "after the writes"));
    // What the writes must have done at all (a comparison of two equally
    // wrong views would not see it).
    let expect = |p: &str, want: &[u8], f: &mut Vec<String>| match fs::read(u_mnt.join(p)) {
        Ok(got) if got == want => {}
        Ok(got) => f.push(format!(
            "unionfs {p}: {:?}, expected {:?}",
            show(&got),
            show(want)
        )),
        Err(e) => f.push(format!("unionfs {p}: {e}")),
    };
    let mut conf = tag("bottom", "app/conf");
    conf.extend_from_slice(b"appended\n");
    expect("app/conf", &conf, &mut f);
    let mut h = tag("bottom", "links/h1");
    h.extend_from_slice(b"via h1\n");
    expect("links/h2", &h, &mut f);
    expect("mvdir2/w", &tag("top", "mvdir/w"), &mut f);
    if lstat(&u_mnt.join("links/h1")).ino() != lstat(&u_mnt.join("links/h2")).ino() {
        f.push("unionfs links/h1 and links/h2 are two inodes after the copy-up".into());
    }
    // A remount shows the same.
    um.umount();
    let um = mount_unionfs(
        &as_paths(&u_lowers),
        Some(&u_upper),
        Some(&u_work),
        &u_mnt,
        &args,
    );
    let again = tree::snap(&u_mnt);
    f.extend(tree_diffs(&u_view, &again, "unionfs remounted"));
    // Inode numbers of files and dirs survive the remount (docs/design.md §3).
    for (p, e) in &u_view {
        let keeps = matches!(e.ftype, Some(FileType::File) | Some(FileType::Dir));
        if let Some(a) = again.get(p).filter(|a| keeps && a.ino != e.ino) {
            f.push(format!(
                "unionfs remounted: {} changed inode number {} -> {}",
                show(p),
                e.ino,
                a.ino
            ));
        }
    }
    um.umount();
    km.umount();
    sums.assert_unchanged();
    k_sums.assert_unchanged();
    assert_no_failures(
        &format!("the sequence on {kind}: unionfs against kernel overlayfs"),
        &f,
    );
}

#[test]
fn sequence_on_ext4_upper_matches_kernel_overlayfs() {
    sequence_matches_kernel_overlayfs("ext4");
}

#[test]
fn sequence_on_xfs_upper_matches_kernel_overlayfs() {
    sequence_matches_kernel_overlayfs("xfs");
}

#[test]
fn sequence_on_btrfs_upper_matches_kernel_overlayfs() {
    sequence_matches_kernel_overlayfs("btrfs");
}

#[test]
fn sequence_on_tmpfs_upper_matches_kernel_overlayfs() {
    sequence_matches_kernel_overlayfs("tmpfs");
}

/// Extents of a file from `filefrag -v`: (length in bytes, flags).
fn extents(path: &Path) -> Vec<(u64, String)> {
    let out = run(
        Command::new("filefrag").arg("-v").arg(path),
        Duration::from_secs(30),
    );
    assert!(out.success(), "filefrag: {out}");
    let block: u64 = out
        .stdout
        .split("blocks of ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no block size in filefrag's output:\n{}", out.stdout));
    out.stdout
        .lines()
        .filter(|l| l.contains(".."))
        .filter_map(|l| {
            // ` 0:  0.. 1023:  24.. 1047:  1024:  [expected:]  flags`
            let cols: Vec<&str> = l.split(':').map(str::trim).collect();
            let len: u64 = cols.get(3)?.parse().ok()?;
            Some((len * block, cols.last()?.to_string()))
        })
        .collect()
}

/// A copy-up on a file system that can reflink (xfs reflink=1, btrfs)
/// shares the lower's data: a 4 MiB lower file on the upper's file system,
/// copied up by a 1-byte append, has its first 4 MiB in extents marked
/// shared, and reads as the lower plus that byte.
fn reflink_copy_up_shares_extents(kind: &str) {
    if !require_mount_env() || !require_commands(&["filefrag"]) {
        return;
    }
    let t = TestDir::new(&format!("reflink-{kind}"));
    let Some(tfs) = make_fs(&t, kind) else {
        return;
    };
    let root = &tfs.root;
    let big = pattern("big", 4 * MIB);
    let lower = Layer::new("lower").file("big", &big).tagged("small");
    let lower_dir = root.join("lower");
    render(&lower, &lower_dir, Format::Kernel);
    let sums = checksum_layers(&[&lower_dir]);
    let upper = root.join("upper");
    fs::create_dir(&upper).expect("mkdir upper");
    let mnt = t.mkdir("mnt");
    let m = mount_unionfs(
        &[&lower_dir],
        Some(&upper),
        Some(&root.join("work")),
        &mnt,
        &[],
    );
    let mut f = Vec::new();
    if let Err(e) = append(&m.join("big"), b"!") {
        f.push(format!("append to big: {e}"));
    }
    let mut want = big.clone();
    want.push(b'!');
    match fs::read(m.join("big")) {
        Ok(got) if got == want => {}
        Ok(got) => f.push(format!("big reads {} bytes, not the lower + 1", got.len())),
        Err(e) => f.push(format!("read big: {e}")),
    }
    m.umount();
    let copy = upper.join("big");
    fs::File::open(&copy)
        .and_then(|fh| fh.sync_all())
        .expect("fsync the upper copy");
    let ext = extents(&copy);
    let shared: u64 = ext
        .iter()
        .filter(|(_, flags)| flags.contains("shared"))
        .map(|(len, _)| len)
        .sum();
    if shared < 4 * MIB {
        f.push(format!(
            "the copy-up on {kind} shares {shared} bytes of extents with the lower, \
             expected the whole 4 MiB (reflink): extents {ext:?}"
        ));
    }
    let lower_shared: u64 = extents(&lower_dir.join("big"))
        .iter()
        .filter(|(_, flags)| flags.contains("shared"))
        .map(|(len, _)| len)
        .sum();
    if lower_shared < 4 * MIB {
        f.push(format!(
            "the lower file shows {lower_shared} bytes of shared extents, expected 4 MiB"
        ));
    }
    sums.assert_unchanged();
    assert_no_failures(&format!("reflink copy-up on {kind}"), &f);
}

#[test]
fn reflink_copy_up_shares_extents_on_xfs() {
    reflink_copy_up_shares_extents("xfs");
}

#[test]
fn reflink_copy_up_shares_extents_on_btrfs() {
    reflink_copy_up_shares_extents("btrfs");
}
