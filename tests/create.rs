//! Creating objects through the mount (docs/design.md §3): create, mknod,
//! mkdir and symlink in lower-only, upper-only and copied-up dirs; new
//! objects belong to the caller, setgid dirs pass their group on, writes
//! clear suid/sgid.

mod common;

use common::fixture_fx::*;
use common::*;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

#[test]
fn create_mknod_mkdir_symlink_in_lower_upper_and_copied_up_dirs() {
    if !require_mount_env() {
        return;
    }
    let l1 = Layer::new(L1)
        .tagged("old")
        .tagged("cdir_lo/old")
        .tagged("cdir_cu/old")
        .tagged("ex_lo")
        .tagged("ex_cu")
        .tagged("wr_lo");
    let l2 = Layer::new(L2)
        .tagged("cdir_lo/old2")
        .tagged("ex_lo")
        .tagged("ex_cu");
    let fx = Fx::new("create", &[l1, l2], OVERLAY);
    let mut c = Checks::default();
    let um = umask();
    fx.copy_up(&mut c, "cdir_cu");
    c.ok("mkdir cdir_up", fs::create_dir(fx.m("cdir_up")));
    fx.copy_up(&mut c, "ex_cu");
    let ex_up = fx.make_upper(&mut c, "ex_up");

    // New objects in the upper root, a lower-only dir, a copied-up dir and
    // an upper-only dir.
    for dir in ["", "cdir_lo", "cdir_cu", "cdir_up"] {
        let p = |n: &str| {
            if dir.is_empty() {
                n.to_string()
            } else {
                format!("{dir}/{n}")
            }
        };
        let f = p("new");
        let body = format!("new file in {dir:?}\n").into_bytes();
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(fx.m(&f))
        {
            Ok(mut h) => {
                c.ok(format!("write {f}"), h.write_all(&body));
            }
            Err(e) => c.fail(format!("create O_EXCL {f}: {e}")),
        }
        c.r(fx.view_file(&f, &body));
        c.r(fx.upper_file(&f, &body));
        c.r(fx.upper_meta(&f, 0o640 & !um, 0, 0));

        let specials = [
            ("fifo", libc::S_IFIFO | 0o640, 0, FileType::Fifo),
            ("sock", libc::S_IFSOCK | 0o640, 0, FileType::Socket),
            (
                "chr",
                libc::S_IFCHR | 0o600,
                sys::makedev(1, 3),
                FileType::CharDev,
            ),
            (
                "blk",
                libc::S_IFBLK | 0o640,
                sys::makedev(7, 0),
                FileType::BlockDev,
            ),
        ];
        for (n, mode, dev, ft) in specials {
            let r = p(n);
            if c.ok(format!("mknod {r}"), sys::mknod(&fx.m(&r), mode, dev))
                .is_none()
            {
                continue;
            }
            for (side, path) in [("view", fx.m(&r)), ("upper", fx.u(&r))] {
                match lst(&path) {
                    Ok(m) => {
                        c.eq(format!("{side} {r}: type"), FileType::of(m.file_type()), ft);
                        c.eq(format!("{side} {r}: rdev"), m.rdev(), dev);
                        c.eq(
                            format!("{side} {r}: mode"),
                            m.mode() & 0o7777,
                            mode & 0o7777 & !um,
                        );
                    }
                    Err(e) => c.fail(format!("{side} {r}: {e}")),
                }
            }
        }

        let d = p("sub");
        if c.ok(
            format!("mkdir {d}"),
            fs::DirBuilder::new().mode(0o750).create(fx.m(&d)),
        )
        .is_some()
        {
            c.r(fx.upper_is(&d, FileType::Dir));
            c.r(fx.upper_meta(&d, 0o750 & !um, 0, 0));
            // No lower has the name: the new dir is not marked opaque.
            c.r(fx.not_opaque(&d));
            c.eq(format!("view {d}: listing"), fx.view_list(&d), vec![]);
        }

        let l = p("sl");
        if c.ok(
            format!("symlink {l}"),
            std::os::unix::fs::symlink("old", fx.m(&l)),
        )
        .is_some()
        {
            c.eq(
                format!("view {l}: target"),
                fs::read_link(fx.m(&l)).ok(),
                Some(PathBuf::from("old")),
            );
            c.eq(
                format!("upper {l}: target"),
                fs::read_link(fx.u(&l)).ok(),
                Some(PathBuf::from("old")),
            );
        }
        if !dir.is_empty() {
            c.r(fx.upper_is(dir, FileType::Dir));
            c.r(fx.not_opaque(dir));
        }
    }
    // The lower-only dir merged with its new upper: old names still served
    // by the lowers, not copied.
    c.r(fx.view_file("cdir_lo/old", &tag(L1, "cdir_lo/old")));
    c.r(fx.view_file("cdir_lo/old2", &tag(L2, "cdir_lo/old2")));
    c.r(fx.upper_absent("cdir_lo/old"));
    c.r(fx.upper_absent("cdir_lo/old2"));
    let mut want: Vec<String> = [
        "blk", "chr", "fifo", "new", "old", "old2", "sl", "sock", "sub",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    c.eq(
        "view cdir_lo: listing",
        fx.view_list("cdir_lo"),
        want.clone(),
    );
    want.retain(|n| n != "old2");
    c.eq(
        "view cdir_cu: listing",
        fx.view_list("cdir_cu"),
        want.clone(),
    );
    want.retain(|n| n != "old");
    c.eq("view cdir_up: listing", fx.view_list("cdir_up"), want);
    // Symlink resolved through the mount to the lower file.
    c.eq(
        "read through symlink cdir_lo/sl",
        fs::read(fx.m("cdir_lo/sl")).ok(),
        Some(tag(L1, "cdir_lo/old")),
    );

    // Creating over an existing name: EEXIST for every kind of object, and
    // no copy-up happens.
    for (rel, body) in [
        ("ex_lo", tag(L1, "ex_lo")),
        ("ex_cu", tag(L1, "ex_cu")),
        ("ex_up", ex_up.clone()),
    ] {
        c.errno(
            format!("open O_CREAT|O_EXCL existing {rel}"),
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(fx.m(rel)),
            libc::EEXIST,
        );
        c.errno(
            format!("mknod fifo over {rel}"),
            sys::mknod(&fx.m(rel), libc::S_IFIFO | 0o644, 0),
            libc::EEXIST,
        );
        c.errno(
            format!("mkdir over {rel}"),
            fs::create_dir(fx.m(rel)),
            libc::EEXIST,
        );
        c.errno(
            format!("symlink over {rel}"),
            std::os::unix::fs::symlink("x", fx.m(rel)),
            libc::EEXIST,
        );
        c.errno(
            format!("link old over {rel}"),
            fs::hard_link(fx.m("old"), fx.m(rel)),
            libc::EEXIST,
        );
        c.r(fx.view_file(rel, &body));
    }
    c.r(fx.upper_absent("ex_lo"));
    c.r(fx.upper_absent("old"));

    // O_CREAT without O_EXCL opens the existing lower file; read-only it
    // copies nothing, for writing it copies the bytes up.
    match open_flags(&fx.m("ex_lo"), libc::O_RDONLY | libc::O_CREAT, 0o600) {
        Ok(mut f) => {
            let mut v = Vec::new();
            c.ok("read ex_lo", f.read_to_end(&mut v));
            c.eq(
                "O_CREAT|O_RDONLY ex_lo: content",
                s(&v),
                s(&tag(L1, "ex_lo")),
            );
        }
        Err(e) => c.fail(format!("open O_CREAT|O_RDONLY ex_lo: {e}")),
    }
    c.r(fx.upper_absent("ex_lo"));
    match open_flags(&fx.m("wr_lo"), libc::O_WRONLY | libc::O_CREAT, 0o600) {
        Ok(f) => drop(f),
        Err(e) => c.fail(format!("open O_CREAT|O_WRONLY wr_lo: {e}")),
    }
    c.r(fx.upper_file("wr_lo", &tag(L1, "wr_lo")));
    c.r(fx.view_file("wr_lo", &tag(L1, "wr_lo")));
    fx.finish(c, "create/mknod/mkdir/symlink");
}

const USER: u32 = 1000;

/// Runs `script` with `sh -c` as uid/gid `USER` with no supplementary
/// groups (umask 022).
fn as_user(script: &str) -> CmdOutput {
    run(
        Command::new("setpriv")
            .arg(format!("--reuid={USER}"))
            .arg(format!("--regid={USER}"))
            .arg("--clear-groups")
            .arg("--")
            .args(["sh", "-c"])
            .arg(format!("umask 022; {script}")),
        Duration::from_secs(20),
    )
}

#[test]
fn new_objects_belong_to_the_caller_setgid_dirs_and_suid_clearing() {
    if !require_mount_env() {
        return;
    }
    let l1 = Layer::new(L1)
        .dir("pub")
        .mode(0o777)
        .dir("sg")
        .owner(0, 4242)
        .mode(0o2777)
        .file("suidw", "abcdef")
        .mode(0o6777)
        .file("suidt", "abcdef")
        .mode(0o6777)
        .tagged("priv")
        .mode(0o600)
        .dir("closed")
        .mode(0o755);
    let fx = Fx::new("ownership", &[l1, Layer::new(L2).tagged("pub/l2")], OVERLAY);
    let mut c = Checks::default();
    let mnt = fx.mnt.display().to_string();

    // New objects belong to the caller.
    let out = as_user(&format!(
        "set -e; cd {mnt}/pub; printf data > f; mkdir d; ln -s f l; mkfifo p; ln f h"
    ));
    c.t(out.success(), || format!("create as uid {USER}: {out}"));
    for (rel, ft) in [
        ("pub/f", FileType::File),
        ("pub/d", FileType::Dir),
        ("pub/l", FileType::Symlink),
        ("pub/p", FileType::Fifo),
    ] {
        for (side, p) in [("view", fx.m(rel)), ("upper", fx.u(rel))] {
            match lst(&p) {
                Ok(m) => c.eq(
                    format!("{side} {rel}: type and owner"),
                    (FileType::of(m.file_type()), m.uid(), m.gid()),
                    (ft, USER, USER),
                ),
                Err(e) => c.fail(format!("{side} {rel}: {e}")),
            }
        }
    }
    c.r(fx.upper_meta("pub/f", 0o644, USER, USER));
    c.r(fx.upper_meta("pub/d", 0o755, USER, USER));
    // The copied-up parent keeps its owner and mode.
    c.r(fx.upper_meta("pub", 0o777, 0, 0));

    // A setgid parent hands down its gid, and the setgid bit to subdirs:
    // in a lower dir and in a dir made in the upper.
    c.ok("mkdir sg2", fs::create_dir(fx.m("sg2")));
    c.ok(
        "chown sg2",
        std::os::unix::fs::lchown(fx.m("sg2"), Some(0), Some(4343)),
    );
    c.ok("chmod sg2", fs::set_permissions(fx.m("sg2"), perm(0o2777)));
    for (dir, gid) in [("sg", 4242), ("sg2", 4343)] {
        let out = as_user(&format!("set -e; cd {mnt}/{dir}; printf x > f; mkdir d"));
        c.t(out.success(), || {
            format!("create in {dir} as uid {USER}: {out}")
        });
        c.r(fx.upper_meta(&format!("{dir}/f"), 0o644, USER, gid));
        c.r(fx.upper_meta(&format!("{dir}/d"), 0o2755, USER, gid));
        c.eq(
            format!("view {dir}/d: mode and gid"),
            lst(&fx.m(&format!("{dir}/d")))
                .map(|m| (m.mode() & 0o7777, m.gid()))
                .ok(),
            Some((0o2755, gid)),
        );
    }

    // A write or truncate by a non-owner with write permission clears
    // setuid/setgid (the copy-up itself keeps them).
    let out = as_user(&format!("set -e; printf XY 1<> {mnt}/suidw"));
    c.t(out.success(), || {
        format!("write suidw as uid {USER}: {out}")
    });
    c.r(fx.upper_file("suidw", b"XYcdef"));
    c.r(fx.upper_meta("suidw", 0o777, 0, 0));
    let out = as_user(&format!("set -e; truncate -s 2 {mnt}/suidt"));
    c.t(out.success(), || {
        format!("truncate suidt as uid {USER}: {out}")
    });
    c.r(fx.upper_file("suidt", b"ab"));
    c.r(fx.upper_meta("suidt", 0o777, 0, 0));
    // Same for a file made in the upper.
    c.ok("create suidu", fs::write(fx.m("suidu"), b"abc"));
    c.ok(
        "chmod suidu",
        fs::set_permissions(fx.m("suidu"), perm(0o6777)),
    );
    let out = as_user(&format!("set -e; printf Z >> {mnt}/suidu"));
    c.t(out.success(), || {
        format!("append suidu as uid {USER}: {out}")
    });
    c.r(fx.upper_meta("suidu", 0o777, 0, 0));
    c.r(fx.upper_file("suidu", b"abcZ"));

    // Another user gets EACCES on a 0600 file, and cannot create in a 0755
    // root-owned dir; nothing is copied up or created.
    for (what, script) in [
        ("read 0600 file", format!("cat {mnt}/priv")),
        ("write 0600 file", format!("printf x >> {mnt}/priv")),
        ("create in 0755 dir", format!("printf x > {mnt}/closed/new")),
        ("mkdir in 0755 dir", format!("mkdir {mnt}/closed/newd")),
    ] {
        let out = as_user(&script);
        c.t(
            !out.success() && out.stderr.contains("Permission denied"),
            || format!("{what} as uid {USER}: expected EACCES (Permission denied): {out}"),
        );
    }
    c.r(fx.upper_absent("priv"));
    c.r(fx.upper_absent("closed"));
    c.r(fx.view_file("priv", &tag(L1, "priv")));
    fx.finish(c, "ownership and permissions");
}
