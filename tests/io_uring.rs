//! FUSE over io_uring (the vendored fuser's uring.rs), through real mounts,
//! as root and as an unprivileged user: with fuse's `enable_uring` on, the
//! daemon takes its requests from per-CPU io_uring queues, and a workload of
//! every kind of request (lookups, reads, copy-ups, a copy-up long enough
//! to be answered from another thread, creates from four processes at
//! once, renames, whiteouts, links, a 6 MiB write) gives the same merged
//! view and the same upper with `-o io_uring=on`; without the option (the
//! default), or with the kernel not offering the rings, the mount serves
//! through /dev/fuse with the same results. The daemon's unmount line says
//! how many requests came through the rings.
//!
//! `enable_uring` is a global switch of the fuse module: the tests here set
//! it one at a time (an flock on the switch's sysfs file orders them
//! across test processes too) and put the old value back.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const ENABLE: &str = "/sys/module/fuse/parameters/enable_uring";
const USER: u32 = 1000;
/// Over `LONG_COPY` (1 MiB): its copy-up runs off the queue's thread,
/// whose reply then arrives from another thread.
const BIG: usize = 5 << 20;

static SWITCH: Mutex<()> = Mutex::new(());

/// Holds fuse's `enable_uring` at a value for the test's length.
struct EnableUring {
    old: String,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
    /// The switch's sysfs file, flock(2)ed: another test process that
    /// wants the switch waits.
    _lock: fs::File,
}

impl EnableUring {
    /// None (after saying so loudly, or failing under CI) when the kernel
    /// has no FUSE over io_uring.
    fn set(on: bool) -> Option<EnableUring> {
        let guard = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(lock) = fs::File::open(ENABLE) else {
            skip_or_fail(&format!(
                "{ENABLE} is missing: a kernel without FUSE over io_uring (6.14+, CONFIG_FUSE_IO_URING)"
            ));
            return None;
        };
        sys::flock(&lock, libc::LOCK_EX).expect("flock enable_uring");
        let old = fs::read_to_string(ENABLE).expect("read enable_uring");
        fs::write(ENABLE, if on { "Y" } else { "N" }).expect("set enable_uring");
        Some(EnableUring {
            old: old.trim().to_owned(),
            _one_at_a_time: guard,
            _lock: lock,
        })
    }
}

impl Drop for EnableUring {
    fn drop(&mut self) {
        let _ = fs::write(ENABLE, &self.old);
    }
}

struct Layers {
    t: TestDir,
    top: PathBuf,
    base: PathBuf,
    upper: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

fn layers(name: &str) -> Layers {
    let t = TestDir::new(name);
    let top = t.mkdir("top");
    let base = t.mkdir("base");
    let upper = t.mkdir("upper");
    fs::create_dir_all(top.join("low/dir/deep")).unwrap();
    fs::write(top.join("low/a"), "a\n").unwrap();
    fs::write(top.join("low/gone"), "gone\n").unwrap();
    fs::write(top.join("low/dir/deep/x"), "x\n").unwrap();
    fs::create_dir_all(base.join("low")).unwrap();
    fs::write(base.join("low/big"), pattern(BIG, 7)).unwrap();
    fs::write(base.join("low/a"), "hidden by the top lower\n").unwrap();
    fs::write(t.join("rand"), pattern(6 << 20, 3)).unwrap();
    let mnt = t.mkdir("mnt");
    let log = t.join("daemon.log");
    Layers {
        t,
        top,
        base,
        upper,
        mnt,
        log,
    }
}

/// Mounts with `opts`, runs every kind of request, checks the merged view
/// from inside (each check prints a word), unmounts.
fn script(l: &Layers, opts: &str) -> String {
    format!(
        "set -e; M={m}; \
         RUST_LOG=unionfs=info {bin} mount -l {top}:{base} -u {up} {opts} --log-file {log} \"$M\"; \
         cd \"$M\"; \
         cat low/a >/dev/null; echo appended >> low/a; \
         echo tail >> low/big; \
         mkdir -p new/sub; for i in $(seq 1 300); do echo n$i > new/sub/f$i; done; \
         for p in 1 2 3 4; do ( for i in $(seq 1 150); do echo $p.$i > new/p$p-$i; cat new/p$p-$i >/dev/null; done ) & done; wait; \
         mv low/dir moved; rm low/gone; ln new/sub/f1 new/hard; ln -s ../low/a new/sym; \
         cp {rand} new/rand; chmod 640 new/sub/f3; \
         [ \"$(cat low/a)\" = \"$(printf 'a\\nappended')\" ] && echo A-OK; \
         [ \"$(tail -c 5 low/big)\" = tail ] && echo BIG-OK; \
         [ $(ls new/sub | wc -l) = 300 ] && [ $(ls new | grep -c '^p') = 600 ] && echo CREATES-OK; \
         [ -f moved/deep/x ] && [ ! -e low/dir ] && [ ! -e low/gone ] && echo NAMES-OK; \
         [ \"$(stat -c %h new/hard)\" = 2 ] && [ \"$(cat new/sym)\" = \"$(cat low/a)\" ] && echo LINKS-OK; \
         cmp new/rand {rand} && [ \"$(stat -c %a new/sub/f3)\" = 640 ] && echo DATA-OK; \
         cd /; {bin} umount \"$M\"",
        m = l.mnt.display(),
        bin = unionfs_bin(),
        top = l.top.display(),
        base = l.base.display(),
        up = l.upper.display(),
        log = l.log.display(),
        rand = l.t.join("rand").display(),
    )
}

const WORDS: [&str; 6] = [
    "A-OK",
    "BIG-OK",
    "CREATES-OK",
    "NAMES-OK",
    "LINKS-OK",
    "DATA-OK",
];

/// The daemon's "transport: ..." line and its count of requests through
/// io_uring (from the unmount line).
fn transport(log: &Path) -> (String, u64) {
    let text = fs::read_to_string(log).unwrap_or_default();
    let line = (text.lines())
        .find_map(|l| l.split_once("transport: "))
        .unwrap_or_else(|| panic!("no transport line in the daemon log:\n{text}"))
        .1
        .to_owned();
    let count = (text.lines().rev())
        .find_map(|l| l.split_once("requests through io_uring: "))
        .unwrap_or_else(|| panic!("no io_uring count in the daemon log:\n{text}"))
        .1
        .trim()
        .parse()
        .unwrap();
    // The workload's reads (cat, cmp, tail) came through the rings too:
    // then their bytes went straight into the ring's buffer.
    let in_ring: u64 = (text.lines().rev())
        .find_map(|l| l.split_once(" read into an io_uring buffer"))
        .and_then(|(before, _)| before.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no ring read count in the daemon log:\n{text}"));
    assert_eq!(
        count > 0,
        in_ring > 0,
        "{count} requests, {in_ring} reads in the rings"
    );
    (line, count)
}

/// What the upper holds after the workload, whatever the transport.
fn check_upper(l: &Layers) {
    let up = &l.upper;
    assert_eq!(read(&up.join("low/a")), b"a\nappended\n");
    let mut big = pattern(BIG, 7);
    big.extend_from_slice(b"tail\n");
    assert!(read(&up.join("low/big")) == big, "upper low/big differs");
    assert_eq!(list(&up.join("new/sub")).len(), 300);
    assert_eq!(read(&up.join("new/rand")), read(&l.t.join("rand")));
    assert_eq!(read(&up.join("new/p3-150")), b"3.150\n");
    // The renamed lower dir and the deleted lower file are hidden at their
    // old names by something in the upper (a whiteout).
    assert!(fs::symlink_metadata(up.join("low/gone")).is_ok());
    assert!(fs::symlink_metadata(up.join("low/dir")).is_ok());
}

/// Runs the workload as root with `opts`; returns the transport line and
/// the io_uring request count.
fn as_root(name: &str, opts: &str) -> (String, u64) {
    let l = layers(name);
    let sum = checksum_layers(&[&l.top, &l.base]);
    let out = run(
        std::process::Command::new("sh").args(["-c", &script(&l, opts)]),
        std::time::Duration::from_secs(120),
    );
    assert!(out.success(), "{out}\n{}", log_tail(&l.log));
    for w in WORDS {
        assert!(out.stdout.contains(w), "{w} missing: {out}");
    }
    check_upper(&l);
    sum.assert_unchanged();
    transport(&l.log)
}

#[test]
fn requests_come_through_io_uring_queues() {
    if !require_mount_env() {
        return;
    }
    let Some(_on) = EnableUring::set(true) else {
        return;
    };
    let (line, count) = as_root("uring-root", "-o io_uring=on");
    assert_eq!(line, "FUSE over io_uring");
    // 300 + 600 creates alone are over 2000 requests.
    assert!(count > 2000, "{count} requests through io_uring");
}

#[test]
fn by_default_requests_come_through_dev_fuse() {
    if !require_mount_env() {
        return;
    }
    let Some(_on) = EnableUring::set(true) else {
        return;
    };
    let (line, count) = as_root("uring-default", "");
    assert_eq!(line, "/dev/fuse");
    assert_eq!(count, 0);
    let (line, count) = as_root("uring-off", "-o io_uring=off");
    assert_eq!(line, "/dev/fuse");
    assert_eq!(count, 0);
}

#[test]
fn without_enable_uring_the_mount_falls_back_to_dev_fuse() {
    if !require_mount_env() {
        return;
    }
    let Some(_off) = EnableUring::set(false) else {
        return;
    };
    let (line, count) = as_root("uring-not-offered", "-o io_uring=on");
    assert!(
        line.starts_with("/dev/fuse (the kernel does not offer io_uring"),
        "{line}"
    );
    assert_eq!(count, 0);
}

/// The unprivileged daemon (uid 1000, through fusermount3) uses the rings
/// too: nothing in FUSE over io_uring needs privilege once root has set
/// `enable_uring`.
#[test]
fn rootless_requests_come_through_io_uring_queues() {
    if !require_mount_env()
        || !require_commands(&["unshare", "setpriv", "fusermount3", "cmp", "stat"])
    {
        return;
    }
    let Some(_on) = EnableUring::set(true) else {
        return;
    };
    let l = layers("uring-rootless");
    chown_tree(l.t.path(), USER);
    let fuse = fuse_node(l.t.path());
    let sum = checksum_layers(&[&l.top, &l.base]);
    let out = as_user_through_fusermount(&fuse, &l.mnt, USER, &script(&l, "-o io_uring=on"));
    assert!(out.success(), "{out}\n{}", log_tail(&l.log));
    for w in WORDS {
        assert!(out.stdout.contains(w), "{w} missing: {out}");
    }
    check_upper(&l);
    sum.assert_unchanged();
    let (line, count) = transport(&l.log);
    assert_eq!(line, "FUSE over io_uring");
    assert!(count > 2000, "{count} requests through io_uring");
}
