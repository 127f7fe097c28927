//! The upper as other tools read it (docs/design.md §2): an overlay-format
//! upper mounts under kernel overlayfs with the same view; an oci-format
//! upper holds exactly the whiteouts of an image layer diff.

mod common;

use common::fixture_fx::*;
use common::*;
use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn compat_layers() -> [Layer; 2] {
    [
        Layer::new(L1)
            .tagged("keep")
            .tagged("keep2")
            .tagged("mod")
            .tagged("del")
            .tagged("dird/a")
            .tagged("dird/b")
            .tagged("ren")
            .tagged("over")
            .tagged("md/x")
            .tagged("sub/deep/f")
            .symlink("ln", "keep")
            .tagged("merged/two")
            .tagged("own")
            .xattr("user.x", "1")
            .fifo("lfifo"),
        Layer::new(L2)
            .tagged("mod")
            .tagged("l2only")
            .tagged("md/y")
            .tagged("dird/c")
            .tagged("sub/deep/g")
            .tagged("merged/one")
            .tagged("over")
            .whiteout("nothing"),
    ]
}

/// The operation sequence of the compatibility tests, through the mount at
/// `m`: creates, writes, deletes of lower files and dirs, mkdir over a
/// whiteout, renames, links, attribute changes.
fn compat_sequence(m: &Path, c: &mut Checks) {
    let p = |r: &str| m.join(r);
    let mut step = |what: &str, r: io::Result<()>| {
        c.ok(what, r);
    };
    step("create new", fs::write(p("new"), b"new\n"));
    step("mkdir newdir", fs::create_dir(p("newdir")));
    step("create newdir/f", fs::write(p("newdir/f"), b"f\n"));
    step(
        "link newdir/f2",
        fs::hard_link(p("newdir/f"), p("newdir/f2")),
    );
    step("append mod", append(&p("mod"), b"+appended\n"));
    step(
        "chmod sub/deep/f",
        fs::set_permissions(p("sub/deep/f"), perm(0o600)),
    );
    step("truncate sub/deep/g", sys::truncate(&p("sub/deep/g"), 3));
    step("unlink del", fs::remove_file(p("del")));
    step("unlink l2only", fs::remove_file(p("l2only")));
    for f in ["dird/a", "dird/b", "dird/c"] {
        step(&format!("unlink {f}"), fs::remove_file(p(f)));
    }
    step("rmdir dird", fs::remove_dir(p("dird")));
    step("unlink md/x", fs::remove_file(p("md/x")));
    step("unlink md/y", fs::remove_file(p("md/y")));
    step("rmdir md", fs::remove_dir(p("md")));
    step("mkdir md over whiteout", fs::create_dir(p("md")));
    step("create md/new", fs::write(p("md/new"), b"md new\n"));
    step("rename ren -> ren2", fs::rename(p("ren"), p("ren2")));
    step("rename new -> sub/new", fs::rename(p("new"), p("sub/new")));
    step("create new2", fs::write(p("new2"), b"new2\n"));
    step("rename new2 over keep2", fs::rename(p("new2"), p("keep2")));
    step(
        "rename over -> sub/over2",
        fs::rename(p("over"), p("sub/over2")),
    );
    step("symlink sl", std::os::unix::fs::symlink("mod", p("sl")));
    step(
        "setxattr merged/one",
        sys::lsetxattr(&p("merged/one"), b"user.k", b"v"),
    );
    step("unlink merged/two", fs::remove_file(p("merged/two")));
    step(
        "mkfifo pipe",
        sys::mknod(&p("pipe"), libc::S_IFIFO | 0o644, 0),
    );
    step(
        "chown own",
        std::os::unix::fs::lchown(p("own"), Some(1234), Some(5678)),
    );
    step("mkdir emptyd", fs::create_dir(p("emptyd")));
    step(
        "link keep -> keeplink",
        fs::hard_link(p("keep"), p("keeplink")),
    );
    step("unlink ln", fs::remove_file(p("ln")));
    step(
        "create ln as a file",
        fs::write(p("ln"), b"was a symlink\n"),
    );
}

#[test]
fn overlay_format_upper_mounts_under_kernel_overlayfs_with_the_same_view() {
    if !require_kernel_overlay() {
        return;
    }
    let t = TestDir::new("compat-overlay");
    let lowers = render_stack(&compat_layers(), &t.join("lowers"), Format::Kernel);
    let lowers_before = lowers_snapshot(&lowers);
    let upper = t.mkdir("upper");
    let mnt = t.mkdir("mnt");
    let mut c = Checks::default();
    let m = mount_unionfs(
        &as_paths(&lowers),
        Some(&upper),
        Some(&t.join("work")),
        &mnt,
        &["--format", OVERLAY],
    );
    compat_sequence(&mnt, &mut c);
    let ours = snapshot(&mnt);
    m.umount();

    let kmnt = t.mkdir("kmnt");
    let kwork = t.mkdir("kwork");
    let k = mount_kernel_overlay(&as_paths(&lowers), Some(&upper), Some(&kwork), &kmnt, &[]);
    let theirs = snapshot(&kmnt);
    k.umount();
    // Ignored:
    // * inode numbers (each implementation numbers inodes its own way:
    //   unionfs by layer bits, overlayfs by origin/xino) and, with them, d_ino;
    // * ctimes: kernel overlayfs writes its own trusted.overlay.{uuid,origin,
    //   impure} xattrs onto upper dirs when it mounts and looks them up, which
    //   moves their ctime after unionfs showed it.
    // Everything else (names, types, modes, owners, sizes, contents, symlink
    // targets, user xattrs, link counts, mtimes, device numbers) must agree:
    // both show the same real files.
    for d in ours.diff(&theirs, Fields::INO | Fields::CTIME) {
        c.fail(format!(
            "unionfs view vs kernel overlayfs over the same upper: {d}"
        ));
    }
    c.t(
        theirs.get("md/new").is_some() && theirs.children("md") == vec![b"new".to_vec()],
        || {
            format!(
                "kernel overlayfs: md is not opaque: {:?}",
                theirs.children("md").iter().map(show).collect::<Vec<_>>()
            )
        },
    );
    lowers_unchanged(&lowers_before, &mut c);
    c.done("overlay-format upper under kernel overlayfs");
}

#[test]
fn oci_format_upper_holds_exactly_the_whiteouts_of_an_image_layer_diff() {
    if !require_mount_env() {
        return;
    }
    let l1 = Layer::new(L1)
        .tagged("a")
        .tagged("b")
        .tagged("d/x")
        .tagged("d/y")
        .dir("e")
        .tagged("k/z")
        .tagged("k/w")
        .tagged("r")
        .tagged("c")
        .tagged("md/q")
        .tagged("md2/q");
    let l2 = Layer::new(L2).tagged("md/q2").tagged("k/v");
    let mut fx = Fx::new("compat-oci", &[l1, l2], OCI);
    let mut c = Checks::default();
    let mut step = |what: &str, r: io::Result<()>| {
        c.ok(what, r);
    };
    step("unlink a", fs::remove_file(fx.m("a")));
    step("write b", append(&fx.m("b"), b"+b\n"));
    step("unlink d/x", fs::remove_file(fx.m("d/x")));
    step("unlink d/y", fs::remove_file(fx.m("d/y")));
    step("rmdir d", fs::remove_dir(fx.m("d")));
    step("rmdir e", fs::remove_dir(fx.m("e")));
    step("unlink k/z", fs::remove_file(fx.m("k/z")));
    step("rename r -> r2", fs::rename(fx.m("r"), fx.m("r2")));
    step("unlink c", fs::remove_file(fx.m("c")));
    step("create c", fs::write(fx.m("c"), b"c again\n"));
    step("unlink md/q", fs::remove_file(fx.m("md/q")));
    step("unlink md/q2", fs::remove_file(fx.m("md/q2")));
    step("rmdir md", fs::remove_dir(fx.m("md")));
    step("mkdir md", fs::create_dir(fx.m("md")));
    step("create md/new", fs::write(fx.m("md/new"), b"n\n"));
    step("unlink md2/q", fs::remove_file(fx.m("md2/q")));
    step("create p", fs::write(fx.m("p"), b"p"));
    step("unlink p", fs::remove_file(fx.m("p")));
    step(
        "mkdir pd + rmdir",
        fs::create_dir(fx.m("pd")).and_then(|_| fs::remove_dir(fx.m("pd"))),
    );
    let view = snapshot(&fx.mnt);

    let all = walk(&fx.upper);
    let wh: BTreeSet<String> = all
        .keys()
        .filter(|p| p.rsplit('/').next().is_some_and(|n| n.starts_with(".wh.")))
        .cloned()
        .collect();
    let want_wh: BTreeSet<String> = [
        ".wh.a",
        ".wh.d",
        ".wh.e",
        "k/.wh.z",
        ".wh.r",
        "md/.wh..wh..opq",
        "md2/.wh.q",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    c.eq("upper: .wh. entries", wh, want_wh);
    let want_all: BTreeSet<String> = [
        ".wh.a",
        "b",
        ".wh.d",
        ".wh.e",
        "k",
        "k/.wh.z",
        ".wh.r",
        "r2",
        "c",
        "md",
        "md/.wh..wh..opq",
        "md/new",
        "md2",
        "md2/.wh.q",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    c.eq(
        "upper: every entry",
        all.keys().cloned().collect::<BTreeSet<_>>(),
        want_all,
    );
    for (p, m) in &all {
        c.t(
            !m.file_type().is_char_device() && !m.file_type().is_block_device(),
            || format!("upper {p}: a device node in an OCI-format upper"),
        );
        if p.rsplit('/').next().is_some_and(|n| n.starts_with(".wh.")) {
            c.t(m.file_type().is_file() && m.len() == 0, || {
                format!("upper {p}: not an empty regular file")
            });
        }
    }
    for p in std::iter::once(fx.upper.clone()).chain(all.keys().map(|p| fx.u(p))) {
        for n in sys::llistxattr(&p).unwrap_or_default() {
            c.t(
                !n.starts_with(b"trusted.overlay.") && !n.starts_with(b"user.overlay."),
                || {
                    format!(
                        "upper {}: overlay xattr {} in an OCI-format upper",
                        p.display(),
                        show(&n)
                    )
                },
            );
        }
    }
    // Read back as an image layer by an independent implementation:
    // fuse-overlayfs, with the upper stacked as the top lower, must show the
    // view unionfs showed.
    fx.unmount();
    match which("fuse-overlayfs") {
        None => {
            let msg = "fuse-overlayfs not installed: the OCI upper is not read back";
            c.t(!in_ci(), || msg.to_string());
            eprintln!("WARNING: {msg}");
        }
        Some(fo) => {
            let rmnt = fx.t.mkdir("readback");
            let lowerdir = format!(
                "lowerdir={}:{}:{}",
                fx.upper.display(),
                fx.lowers[0].display(),
                fx.lowers[1].display()
            );
            let out = run(
                Command::new(fo).arg("-o").arg(&lowerdir).arg(&rmnt),
                Duration::from_secs(20),
            );
            if out.success() && is_mounted(&rmnt) {
                let theirs = snapshot(&rmnt);
                let um = run(Command::new("umount").arg(&rmnt), Duration::from_secs(20));
                c.t(um.success(), || format!("umount fuse-overlayfs: {um}"));
                // Ignored: inode numbers (each implementation numbers its own)
                // and times of dirs (fuse-overlayfs reports the top layer's
                // dir, unionfs too, but a read-only stack has no upper).
                for d in view.diff(&theirs, Fields::INO | Fields::DIR_NLINK) {
                    c.fail(format!(
                        "unionfs view vs fuse-overlayfs over upper:lowers: {d}"
                    ));
                }
            } else {
                c.fail(format!("fuse-overlayfs read-back mount failed: {out}"));
                if is_mounted(&rmnt) {
                    lazy_umount(&rmnt);
                }
            }
        }
    }
    fx.finish(c, "oci-format upper");
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(prog))
            .find(|p| p.is_file())
    })
}
