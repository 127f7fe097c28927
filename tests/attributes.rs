//! Metadata changes through the mount (docs/design.md §3): chmod, chown and
//! utimes (UTIME_NOW and UTIME_OMIT included); user xattrs set and removed
//! over every kind of object, lower, upper and copied-up.

mod common;

use common::fixture_fx::*;
use common::sys::Time;
use common::*;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[test]
fn chmod_chown_and_utimes_with_now_and_omit() {
    if !require_mount_env() {
        return;
    }
    let (l1, l2) = with_trio(
        Layer::new(L1)
            .tagged("chd/f")
            .symlink("chs", "chd/f")
            .symlink("uts", "chd/f"),
        Layer::new(L2).tagged("chd/g"),
        &["ch", "co", "ut", "un", "uo"],
    );
    // Lower times with nanoseconds, atime after mtime and recent, so that
    // relatime never moves the lower's atime when it is read.
    let now = now_secs();
    let fx = Fx::with("setattr", &[l1, l2], OVERLAY, |lowers| {
        for l in lowers {
            for e in fs::read_dir(l).expect("readdir lower").flatten() {
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    sys::utimensat(
                        &e.path(),
                        Time::At(now - 60, 123_456_789),
                        Time::At(now - 86_400 * 10, 987_654_321),
                    )
                    .expect("set lower times");
                }
            }
        }
    });
    let mut c = Checks::default();
    for (kind, rel, body) in fx.trio(&mut c, "ch") {
        if c.ok(
            format!("chmod {rel} ({kind})"),
            fs::set_permissions(fx.m(&rel), perm(0o600)),
        )
        .is_some()
        {
            c.eq(
                format!("view {rel}: mode"),
                lst(&fx.m(&rel)).map(|m| m.mode() & 0o7777).ok(),
                Some(0o600),
            );
            c.r(fx.upper_meta(&rel, 0o600, 0, 0));
            c.r(fx.upper_file(&rel, &body));
        }
    }
    for (kind, rel, body) in fx.trio(&mut c, "co") {
        if c.ok(
            format!("chown {rel} ({kind})"),
            std::os::unix::fs::lchown(fx.m(&rel), Some(1234), Some(5678)),
        )
        .is_some()
        {
            c.eq(
                format!("view {rel}: owner"),
                lst(&fx.m(&rel)).map(|m| (m.uid(), m.gid())).ok(),
                Some((1234, 5678)),
            );
            c.r(fx.upper_meta(&rel, 0o644, 1234, 5678));
            c.r(fx.upper_file(&rel, &body));
        }
    }
    // A lower-only dir and a lower symlink.
    c.ok("chmod chd", fs::set_permissions(fx.m("chd"), perm(0o711)));
    c.r(fx.upper_meta("chd", 0o711, 0, 0));
    c.eq(
        "view chd: listing after chmod",
        fx.view_list("chd"),
        vec!["f".to_string(), "g".into()],
    );
    c.r(fx.upper_absent("chd/f"));
    if c.ok(
        "lchown symlink chs",
        std::os::unix::fs::lchown(fx.m("chs"), Some(42), Some(43)),
    )
    .is_some()
    {
        c.eq(
            "upper chs: owner",
            lst(&fx.u("chs"))
                .map(|m| (m.uid(), m.gid(), m.file_type().is_symlink()))
                .ok(),
            Some((42, 43, true)),
        );
        c.r(fx.upper_absent("chd/f"));
    }

    let times =
        |p: &Path| lst(p).map(|m| ((m.atime(), m.atime_nsec()), (m.mtime(), m.mtime_nsec())));
    // Explicit times, to the nanosecond.
    let (at, mt) = ((1_500_000_000, 111_111_111), (1_400_000_000, 222_222_222));
    for (kind, rel, body) in fx.trio(&mut c, "ut") {
        if c.ok(
            format!("utimensat {rel} ({kind})"),
            sys::utimensat(&fx.m(&rel), Time::At(at.0, at.1), Time::At(mt.0, mt.1)),
        )
        .is_some()
        {
            c.eq(
                format!("view {rel}: times"),
                times(&fx.m(&rel)).ok(),
                Some((at, mt)),
            );
            c.eq(
                format!("upper {rel}: times"),
                times(&fx.u(&rel)).ok(),
                Some((at, mt)),
            );
            c.r(fx.upper_file(&rel, &body));
        }
    }
    if c.ok(
        "utimensat symlink uts (AT_SYMLINK_NOFOLLOW)",
        sys::utimensat(&fx.m("uts"), Time::At(at.0, at.1), Time::At(mt.0, mt.1)),
    )
    .is_some()
    {
        c.eq("upper uts: times", times(&fx.u("uts")).ok(), Some((at, mt)));
        c.r(fx.upper_is("uts", FileType::Symlink));
    }
    // UTIME_OMIT keeps the old value (copied from the lower), UTIME_NOW sets
    // the clock's.
    for (base, a, m) in [("un", Time::Omit, Time::Now), ("uo", Time::Now, Time::Omit)] {
        for (kind, rel, _) in fx.trio(&mut c, base) {
            let Some(before) = c.ok(format!("stat {rel}"), times(&fx.m(&rel))) else {
                continue;
            };
            let t0 = now_secs();
            if c.ok(
                format!("utimensat {rel} ({kind}) {a:?} {m:?}"),
                sys::utimensat(&fx.m(&rel), a, m),
            )
            .is_none()
            {
                continue;
            }
            let t1 = now_secs();
            for (side, p) in [("view", fx.m(&rel)), ("upper", fx.u(&rel))] {
                let Some((ga, gm)) = c.ok(format!("{side} stat {rel}"), times(&p)) else {
                    continue;
                };
                let (kept, kept_was, fresh, which) = match a {
                    Time::Omit => (ga, before.0, gm, "mtime"),
                    _ => (gm, before.1, ga, "atime"),
                };
                c.eq(format!("{side} {rel}: omitted time kept"), kept, kept_was);
                c.t(fresh.0 >= t0 - 1 && fresh.0 <= t1 + 1, || {
                    format!("{side} {rel}: {which} {fresh:?} not now ({t0}..{t1})")
                });
            }
        }
    }
    fx.finish(c, "chmod/chown/utimes");
}

#[test]
fn user_xattrs_set_and_removed_over_every_kind_of_object() {
    if !require_mount_env() {
        return;
    }
    let mut l1 = Layer::new(L1);
    let mut l2 = Layer::new(L2);
    for b in ["xs", "xr"] {
        for k in ["lo", "cu"] {
            let n = format!("{b}_{k}");
            l1 = l1.tagged(&n).xattr("user.orig", format!("o-{n}"));
            l2 = l2.tagged(&n).xattr("user.l2", "shadowed");
        }
    }
    let l1 = l1
        .tagged("xn_lo")
        .dir("xad")
        .xattr("user.dir", "d")
        .tagged("xad/f");
    let fx = Fx::new("xattr", &[l1, l2], OVERLAY);
    let mut c = Checks::default();
    let get = |p: &Path, n: &str| sys::lgetxattr(p, n.as_bytes());
    for (kind, rel, body) in fx.trio(&mut c, "xs") {
        if c.ok(
            format!("setxattr user.new on {rel} ({kind})"),
            sys::lsetxattr(&fx.m(&rel), b"user.new", b"v1"),
        )
        .is_none()
        {
            continue;
        }
        c.eq(
            format!("view {rel}: user.new"),
            get(&fx.m(&rel), "user.new").ok(),
            Some(b"v1".to_vec()),
        );
        c.eq(
            format!("upper {rel}: user.new"),
            get(&fx.u(&rel), "user.new").ok(),
            Some(b"v1".to_vec()),
        );
        if kind != "upper-only" {
            let o = format!("o-{rel}").into_bytes();
            c.eq(
                format!("view {rel}: user.orig kept"),
                get(&fx.m(&rel), "user.orig").ok(),
                Some(o.clone()),
            );
            c.eq(
                format!("upper {rel}: user.orig copied"),
                get(&fx.u(&rel), "user.orig").ok(),
                Some(o),
            );
            c.errno(
                format!("upper {rel}: user.l2 of the shadowed lower"),
                get(&fx.u(&rel), "user.l2"),
                libc::ENODATA,
            );
        }
        c.r(fx.upper_file(&rel, &body));
        // Replace, then list.
        c.ok(
            format!("setxattr user.new again on {rel}"),
            sys::lsetxattr(&fx.m(&rel), b"user.new", b"v2"),
        );
        c.eq(
            format!("upper {rel}: user.new replaced"),
            get(&fx.u(&rel), "user.new").ok(),
            Some(b"v2".to_vec()),
        );
        let names: BTreeSet<Vec<u8>> = sys::llistxattr(&fx.m(&rel))
            .unwrap_or_default()
            .into_iter()
            .collect();
        c.t(names.contains(&b"user.new"[..]), || {
            format!("view {rel}: listxattr lacks user.new: {names:?}")
        });
    }
    for (kind, rel, body) in fx.trio(&mut c, "xr") {
        if kind == "upper-only" {
            c.ok(
                format!("setxattr user.orig on {rel}"),
                sys::lsetxattr(&fx.m(&rel), b"user.orig", b"x"),
            );
        }
        if c.ok(
            format!("removexattr user.orig on {rel} ({kind})"),
            sys::lremovexattr(&fx.m(&rel), b"user.orig"),
        )
        .is_none()
        {
            continue;
        }
        c.errno(
            format!("view {rel}: user.orig removed"),
            get(&fx.m(&rel), "user.orig"),
            libc::ENODATA,
        );
        c.errno(
            format!("upper {rel}: user.orig removed"),
            get(&fx.u(&rel), "user.orig"),
            libc::ENODATA,
        );
        c.r(fx.upper_file(&rel, &body));
        c.errno(
            format!("removexattr user.orig again on {rel}"),
            sys::lremovexattr(&fx.m(&rel), b"user.orig"),
            libc::ENODATA,
        );
    }
    // Removing an attribute that is not there copies nothing up.
    c.errno(
        "removexattr missing on lower file",
        sys::lremovexattr(&fx.m("xn_lo"), b"user.none"),
        libc::ENODATA,
    );
    c.r(fx.upper_absent("xn_lo"));
    // A lower dir.
    if c.ok(
        "setxattr on lower dir xad",
        sys::lsetxattr(&fx.m("xad"), b"user.more", b"m"),
    )
    .is_some()
    {
        c.eq(
            "upper xad: user.more",
            get(&fx.u("xad"), "user.more").ok(),
            Some(b"m".to_vec()),
        );
        c.eq(
            "upper xad: user.dir copied",
            get(&fx.u("xad"), "user.dir").ok(),
            Some(b"d".to_vec()),
        );
        c.r(fx.upper_absent("xad/f"));
        c.eq(
            "view xad: listing",
            fx.view_list("xad"),
            vec!["f".to_string()],
        );
    }
    fx.finish(c, "setxattr/removexattr");
}
