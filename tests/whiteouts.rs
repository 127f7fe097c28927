//! Whiteouts and opaque dirs (docs/design.md §2, §3): unlink and rmdir leave
//! a whiteout only where a lower has the name; whiteouts and opaque dirs as
//! written in the overlay and oci upper formats; forging a whiteout or a
//! private xattr through the mount is refused.

mod common;

use common::fixture_fx::*;
use common::*;
use std::fs::{self, OpenOptions};

#[test]
fn unlink_and_rmdir_leave_whiteouts_only_over_lowers() {
    if !require_mount_env() {
        return;
    }
    let (l1, l2) = with_trio(
        Layer::new(L1)
            .tagged("rmx/f")
            .tagged("rmx/keep")
            .symlink("rm_sym", "rm_lo")
            .fifo("rm_fifo")
            .dir("rd_lo")
            .dir("rd_cu")
            .tagged("rd_full/f")
            .tagged("rd_m/a")
            .tagged("keepf"),
        Layer::new(L2)
            .tagged("rm_l2")
            .tagged("rd_m/b")
            .dir("rd_m/sub")
            .tagged("rd_l2/f"),
        &["rm"],
    );
    let fx = Fx::new("unlink-rmdir", &[l1, l2], OVERLAY);
    let mut c = Checks::default();

    for (kind, rel, _) in fx.trio(&mut c, "rm") {
        if c.ok(
            format!("unlink {rel} ({kind})"),
            fs::remove_file(fx.m(&rel)),
        )
        .is_none()
        {
            continue;
        }
        c.r(fx.view_absent(&rel));
        c.errno(
            format!("unlink {rel} again"),
            fs::remove_file(fx.m(&rel)),
            libc::ENOENT,
        );
        if kind == "upper-only" {
            c.r(fx.upper_absent(&rel));
        } else {
            c.r(fx.whiteout(&rel));
        }
    }
    for rel in ["rm_l2", "rm_sym", "rm_fifo", "rmx/f"] {
        if c.ok(format!("unlink {rel}"), fs::remove_file(fx.m(rel)))
            .is_some()
        {
            c.r(fx.view_absent(rel));
            c.r(fx.whiteout(rel));
        }
    }
    c.r(fx.upper_is("rmx", FileType::Dir));
    c.r(fx.upper_absent("rmx/keep"));
    c.eq(
        "view rmx: listing",
        fx.view_list("rmx"),
        vec!["keep".to_string()],
    );

    // Wrong type: nothing changes, nothing is copied up.
    c.errno(
        "rmdir of a file",
        fs::remove_dir(fx.m("keepf")),
        libc::ENOTDIR,
    );
    c.errno(
        "unlink of a dir",
        fs::remove_file(fx.m("rd_full")),
        libc::EISDIR,
    );
    c.r(fx.upper_absent("keepf"));

    // Directories.
    c.errno(
        "rmdir non-empty lower dir",
        fs::remove_dir(fx.m("rd_full")),
        libc::ENOTEMPTY,
    );
    c.r(fx.upper_absent("rd_full"));
    c.r(fx.view_file("rd_full/f", &tag(L1, "rd_full/f")));
    fx.copy_up(&mut c, "rd_cu");
    for rel in ["rd_lo", "rd_cu"] {
        if c.ok(format!("rmdir {rel}"), fs::remove_dir(fx.m(rel)))
            .is_some()
        {
            c.r(fx.view_absent(rel));
            c.r(fx.whiteout(rel));
        }
    }
    // A dir of lower2 only, emptied and removed.
    c.ok("unlink rd_l2/f", fs::remove_file(fx.m("rd_l2/f")));
    if c.ok("rmdir rd_l2", fs::remove_dir(fx.m("rd_l2"))).is_some() {
        c.r(fx.view_absent("rd_l2"));
        c.r(fx.whiteout("rd_l2"));
    }
    // Pure upper dirs: removed without a trace; non-empty refused.
    c.ok("mkdir rd_up", fs::create_dir(fx.m("rd_up")));
    if c.ok("rmdir rd_up", fs::remove_dir(fx.m("rd_up"))).is_some() {
        c.r(fx.view_absent("rd_up"));
        c.r(fx.upper_absent("rd_up"));
    }
    c.ok("mkdir rd_upfull", fs::create_dir(fx.m("rd_upfull")));
    c.ok("create rd_upfull/f", fs::write(fx.m("rd_upfull/f"), b"x"));
    c.errno(
        "rmdir non-empty upper dir",
        fs::remove_dir(fx.m("rd_upfull")),
        libc::ENOTEMPTY,
    );
    c.ok("unlink rd_upfull/f", fs::remove_file(fx.m("rd_upfull/f")));
    if c.ok("rmdir rd_upfull", fs::remove_dir(fx.m("rd_upfull")))
        .is_some()
    {
        c.r(fx.upper_absent("rd_upfull"));
    }

    // A merged dir (lower1 + lower2): only once the merged view is empty.
    c.errno(
        "rmdir merged rd_m",
        fs::remove_dir(fx.m("rd_m")),
        libc::ENOTEMPTY,
    );
    c.ok("unlink rd_m/a", fs::remove_file(fx.m("rd_m/a")));
    c.r(fx.whiteout("rd_m/a"));
    c.errno(
        "rmdir rd_m with rd_m/b and rd_m/sub left",
        fs::remove_dir(fx.m("rd_m")),
        libc::ENOTEMPTY,
    );
    c.ok("unlink rd_m/b", fs::remove_file(fx.m("rd_m/b")));
    c.errno(
        "rmdir rd_m with rd_m/sub left",
        fs::remove_dir(fx.m("rd_m")),
        libc::ENOTEMPTY,
    );
    c.ok("rmdir rd_m/sub", fs::remove_dir(fx.m("rd_m/sub")));
    c.eq(
        "view rd_m: listing once emptied",
        fx.view_list("rd_m"),
        vec![],
    );
    if c.ok("rmdir emptied merged rd_m", fs::remove_dir(fx.m("rd_m")))
        .is_some()
    {
        c.r(fx.view_absent("rd_m"));
        // The upper's dir with its whiteouts is gone: one whiteout remains.
        c.r(fx.whiteout("rd_m"));
    }
    c.errno(
        "lstat rd_m/b after rmdir",
        lst(&fx.m("rd_m/b")),
        libc::ENOENT,
    );
    fx.finish(c, "unlink/rmdir");
}

fn whiteout_layers() -> [Layer; 2] {
    [
        Layer::new(L1)
            .tagged("f")
            .tagged("d/x")
            .dir("e")
            .tagged("r")
            .tagged("c")
            .tagged("md/y")
            .tagged("m/a")
            .tagged("keep"),
        Layer::new(L2).tagged("md/z").tagged("m/b").tagged("f"),
    ]
}

#[test]
fn whiteouts_and_opaque_dirs_in_overlay_and_oci_format() {
    if !require_mount_env() {
        return;
    }
    for format in [OVERLAY, OCI] {
        let fx = Fx::new(&format!("whiteouts-{format}"), &whiteout_layers(), format);
        let mut c = Checks::default();
        // unlink of a file two lowers have.
        if c.ok("unlink f", fs::remove_file(fx.m("f"))).is_some() {
            c.r(fx.whiteout("f"));
            c.r(fx.view_absent("f"));
        }
        // rmdir of a lower dir once emptied.
        c.ok("unlink d/x", fs::remove_file(fx.m("d/x")));
        c.r(fx.whiteout("d/x"));
        if c.ok("rmdir d", fs::remove_dir(fx.m("d"))).is_some() {
            c.r(fx.whiteout("d"));
            c.r(fx.view_absent("d"));
        }
        if c.ok("rmdir e", fs::remove_dir(fx.m("e"))).is_some() {
            c.r(fx.whiteout("e"));
        }
        // rename away.
        if c.ok("rename r -> r2", fs::rename(fx.m("r"), fx.m("r2")))
            .is_some()
        {
            c.r(fx.whiteout("r"));
            c.r(fx.upper_file("r2", &tag(L1, "r")));
        }
        // Pure upper objects leave nothing.
        c.ok("create p", fs::write(fx.m("p"), b"p"));
        c.ok("unlink p", fs::remove_file(fx.m("p")));
        c.r(fx.upper_absent("p"));
        c.ok("mkdir pd", fs::create_dir(fx.m("pd")));
        c.ok("create pd/f", fs::write(fx.m("pd/f"), b"p"));
        c.ok("unlink pd/f", fs::remove_file(fx.m("pd/f")));
        c.ok("rmdir pd", fs::remove_dir(fx.m("pd")));
        c.r(fx.upper_absent("pd"));
        c.ok("create p2, rename to p3, unlink", {
            fs::write(fx.m("p2"), b"p")
                .and_then(|_| fs::rename(fx.m("p2"), fx.m("p3")))
                .and_then(|_| fs::remove_file(fx.m("p3")))
        });
        c.r(fx.upper_absent("p2"));
        c.r(fx.upper_absent("p3"));
        // Create over a whiteout replaces it.
        c.ok("unlink c", fs::remove_file(fx.m("c")));
        c.r(fx.whiteout("c"));
        if c.ok(
            "create c over its whiteout",
            fs::write(fx.m("c"), b"new c\n"),
        )
        .is_some()
        {
            c.r(fx.view_file("c", b"new c\n"));
            c.r(fx.upper_file("c", b"new c\n"));
            c.r(fx.no_marker("c"));
        }
        // mkdir over a whiteout: opaque, shows empty.
        c.ok("unlink md/y", fs::remove_file(fx.m("md/y")));
        c.ok("unlink md/z", fs::remove_file(fx.m("md/z")));
        c.ok("rmdir md", fs::remove_dir(fx.m("md")));
        c.r(fx.whiteout("md"));
        if c.ok("mkdir md over its whiteout", fs::create_dir(fx.m("md")))
            .is_some()
        {
            c.r(fx.opaque("md"));
            c.r(fx.no_marker("md"));
            c.eq(
                "view md: listing after mkdir over whiteout",
                fx.view_list("md"),
                vec![],
            );
            c.errno("view md/y", lst(&fx.m("md/y")), libc::ENOENT);
            c.ok("create md/new", fs::write(fx.m("md/new"), b"n"));
            c.eq(
                "view md: listing",
                fx.view_list("md"),
                vec!["new".to_string()],
            );
        }
        // rmdir of a merged dir clears the upper's whiteouts.
        c.ok("unlink m/a", fs::remove_file(fx.m("m/a")));
        c.ok("unlink m/b", fs::remove_file(fx.m("m/b")));
        c.r(fx.whiteout("m/a"));
        c.r(fx.whiteout("m/b"));
        if c.ok("rmdir merged m", fs::remove_dir(fx.m("m"))).is_some() {
            c.r(fx.whiteout("m"));
        }
        c.eq(
            "view root: listing (no whiteouts, no .wh. names)",
            fx.view_list(""),
            vec!["c".to_string(), "keep".into(), "md".into(), "r2".into()],
        );
        c.errno("lookup of a .wh. name", lst(&fx.m(".wh.f")), libc::ENOENT);
        fx.finish(c, &format!("whiteouts ({format} format)"));
    }
}

const PRIVATE_XATTRS: [&str; 7] = [
    "trusted.overlay.opaque",
    "trusted.overlay.whiteout",
    "user.overlay.opaque",
    "user.overlay.whiteout",
    "user.fuseoverlayfs.opaque",
    "user.unionfs.anything",
    "trusted.unionfs.anything",
];

#[test]
fn forging_whiteouts_and_private_xattrs_is_refused() {
    if !require_mount_env() {
        return;
    }
    let l1 = Layer::new(L1)
        .tagged("a")
        .tagged("ldir/f")
        .tagged("priv")
        .xattr("trusted.overlay.origin", "o")
        .xattr("trusted.overlay.opaque", "y")
        .xattr("user.overlay.redirect", "r")
        .xattr("user.unionfs.ino", "i")
        .xattr("user.fuseoverlayfs.x", "f")
        .xattr("user.visible", "v")
        .tagged("gone/f");
    let fx = Fx::new("forgery", &[l1, Layer::new(L2)], OVERLAY);
    let mut c = Checks::default();
    c.ok("mkdir updir", fs::create_dir(fx.m("updir")));
    for dir in ["", "ldir", "updir"] {
        let p = |n: &str| {
            if dir.is_empty() {
                n.to_string()
            } else {
                format!("{dir}/{n}")
            }
        };
        let w = p(".wh.x");
        c.errno(
            format!("create {w}"),
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(fx.m(&w)),
            libc::EPERM,
        );
        c.errno(
            format!("create {}", p(".wh..wh..opq")),
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(fx.m(&p(".wh..wh..opq"))),
            libc::EPERM,
        );
        c.errno(format!("mkdir {w}"), fs::create_dir(fx.m(&w)), libc::EPERM);
        c.errno(
            format!("symlink {w}"),
            std::os::unix::fs::symlink("a", fx.m(&w)),
            libc::EPERM,
        );
        c.errno(
            format!("mkfifo {w}"),
            sys::mknod(&fx.m(&w), libc::S_IFIFO | 0o644, 0),
            libc::EPERM,
        );
        c.errno(
            format!("link a -> {w}"),
            fs::hard_link(fx.m("a"), fx.m(&w)),
            libc::EPERM,
        );
        c.errno(
            format!("rename a -> {w}"),
            fs::rename(fx.m("a"), fx.m(&w)),
            libc::EPERM,
        );
        c.errno(
            format!("mknod char 0/0 {}", p("fake")),
            sys::mknod(&fx.m(&p("fake")), libc::S_IFCHR | 0o644, 0),
            libc::EPERM,
        );
        c.errno(
            format!("lstat {}", p("fake")),
            lst(&fx.m(&p("fake"))),
            libc::ENOENT,
        );
        c.errno(format!("lstat {w}"), lst(&fx.m(&w)), libc::ENOENT);
    }
    c.r(fx.view_file("a", &tag(L1, "a")));
    c.r(fx.upper_absent("a"));
    c.r(fx.upper_absent("fake"));
    c.r(fx.upper_absent(".wh.x"));
    // Private xattrs can be neither set nor removed, on lower and upper
    // objects, files and dirs; nothing is copied up for the attempt.
    for rel in ["a", "ldir", "updir", "priv"] {
        for x in PRIVATE_XATTRS {
            c.errno(
                format!("setxattr {x} on {rel}"),
                sys::lsetxattr(&fx.m(rel), x.as_bytes(), b"y"),
                libc::EPERM,
            );
            c.errno(
                format!("removexattr {x} on {rel}"),
                sys::lremovexattr(&fx.m(rel), x.as_bytes()),
                libc::EPERM,
            );
        }
    }
    c.r(fx.upper_absent("a"));
    c.r(fx.upper_absent("priv"));
    c.r(fx.not_opaque("updir"));
    c.eq(
        "upper updir: xattrs",
        sys::llistxattr(&fx.u("updir")).unwrap_or_default(),
        Vec::<Vec<u8>>::new(),
    );
    // Private xattrs are never listed nor readable: on the lower file, on its
    // copy-up, on an opaque dir made by mkdir over a whiteout.
    let visible = |c: &mut Checks, rel: &str, want: &[&str]| {
        let mut got: Vec<String> = sys::llistxattr(&fx.m(rel))
            .unwrap_or_default()
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        got.sort();
        c.eq(
            format!("view {rel}: listxattr"),
            got,
            want.iter().map(|x| x.to_string()).collect(),
        );
        for x in [
            "trusted.overlay.origin",
            "trusted.overlay.opaque",
            "user.overlay.redirect",
            "user.unionfs.ino",
            "user.fuseoverlayfs.x",
        ] {
            c.errno(
                format!("view {rel}: getxattr {x}"),
                sys::lgetxattr(&fx.m(rel), x.as_bytes()),
                libc::ENODATA,
            );
        }
    };
    visible(&mut c, "priv", &["user.visible"]);
    c.ok(
        "setxattr user.more on priv",
        sys::lsetxattr(&fx.m("priv"), b"user.more", b"m"),
    );
    visible(&mut c, "priv", &["user.more", "user.visible"]);
    c.ok("unlink gone/f", fs::remove_file(fx.m("gone/f")));
    c.ok("rmdir gone", fs::remove_dir(fx.m("gone")));
    c.ok("mkdir gone", fs::create_dir(fx.m("gone")));
    c.r(fx.opaque("gone"));
    visible(&mut c, "gone", &[]);
    fx.finish(c, "forgery");
}
