//! Copy-up (docs/design.md §3, §5): of every file type with owner, mode,
//! times, xattrs, ACLs and capabilities; a 1 GiB sparse lower stays sparse;
//! racing writers and racing chmods copy up once; a reader opened before
//! copy-up reads the new bytes; O_TRUNC gives an empty upper file; the demo
//! (a write lands in the upper, the lower keeps its bytes).

mod common;

use common::fixture_fx::*;
use common::sys::Time;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

/// Everything copy-up must carry over, read from a real (layer) path.
#[derive(Debug, PartialEq, Clone)]
struct Meta {
    ftype: FileType,
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    size: u64,
    nlink: u64,
    mtime: (i64, i64),
    atime: (i64, i64),
    target: Option<PathBuf>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn meta(p: &Path) -> io::Result<Meta> {
    let m = lst(p)?;
    let mut xattrs = BTreeMap::new();
    for n in sys::llistxattr(p)? {
        let v = sys::lgetxattr(p, &n)?;
        xattrs.insert(String::from_utf8_lossy(&n).into_owned(), v);
    }
    Ok(Meta {
        ftype: FileType::of(m.file_type()),
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev(),
        size: m.len(),
        nlink: m.nlink(),
        mtime: (m.mtime(), m.mtime_nsec()),
        atime: (m.atime(), m.atime_nsec()),
        target: fs::read_link(p).ok(),
        xattrs,
    })
}

/// Field-by-field differences between two [`Meta`]s, skipping `skip`.
fn meta_diff(what: &str, lower: &Meta, upper: &Meta, skip: &[&str]) -> Vec<String> {
    let mut d = Vec::new();
    let mut f = |name: &str, a: String, b: String| {
        if !skip.contains(&name) && a != b {
            d.push(format!("{what}: {name}: lower {a}, upper copy {b}"));
        }
    };
    f(
        "type",
        format!("{:?}", lower.ftype),
        format!("{:?}", upper.ftype),
    );
    f(
        "mode",
        format!("{:o}", lower.mode),
        format!("{:o}", upper.mode),
    );
    f("uid", lower.uid.to_string(), upper.uid.to_string());
    f("gid", lower.gid.to_string(), upper.gid.to_string());
    f("rdev", lower.rdev.to_string(), upper.rdev.to_string());
    f("size", lower.size.to_string(), upper.size.to_string());
    f("nlink", lower.nlink.to_string(), upper.nlink.to_string());
    f(
        "mtime",
        format!("{:?}", lower.mtime),
        format!("{:?}", upper.mtime),
    );
    f(
        "atime",
        format!("{:?}", lower.atime),
        format!("{:?}", upper.atime),
    );
    f(
        "target",
        format!("{:?}", lower.target),
        format!("{:?}", upper.target),
    );
    let keys: BTreeSet<&String> = lower.xattrs.keys().chain(upper.xattrs.keys()).collect();
    for k in keys {
        // The union's own metadata (origin, index counts) is not the file's.
        if skip.contains(&k.as_str()) || is_private(k) {
            continue;
        }
        f(
            &format!("xattr {k}"),
            format!("{:?}", lower.xattrs.get(k).map(|v| s(v))),
            format!("{:?}", upper.xattrs.get(k).map(|v| s(v))),
        );
    }
    d
}

/// A VFS_CAP_REVISION_2 security.capability blob: cap_net_raw (13) in the
/// permitted set, effective flag set (what `setcap cap_net_raw+ep` writes).
fn capability_v2_blob() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes()); // magic v2 | effective
    v.extend_from_slice(&(1u32 << 13).to_le_bytes()); // permitted[0]
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable[0]
    v.extend_from_slice(&0u32.to_le_bytes()); // permitted[1]
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable[1]
    v
}

fn setfacl(args: &[&str], p: &Path) {
    let out = run(
        Command::new("setfacl").args(args).arg(p),
        Duration::from_secs(10),
    );
    assert!(out.success(), "setfacl failed: {out}");
}

#[test]
fn copy_up_of_every_file_type_keeps_owner_mode_times_xattrs_acls_and_caps() {
    if !require_mount_env() {
        return;
    }
    let now = now_secs();
    // atime after mtime and recent: relatime leaves the lower's atime alone.
    let at = (now - 100, 111_111_111);
    let mt = (now - 200_000, 222_222_222);
    let l1 = Layer::new(L1)
        .tagged("reg")
        .tagged("reg2")
        .tagged("dir/child")
        .symlink("sym", "reg");
    let l2 = Layer::new(L2).tagged("dir/child2");
    let fx = Fx::with("copy-up-types", &[l1, l2], OVERLAY, |lowers| {
        let p = |n: &str| lowers[0].join(n);
        sys::mknod(&p("fifo"), libc::S_IFIFO | 0o640, 0).expect("mkfifo");
        sys::mknod(&p("sock"), libc::S_IFSOCK | 0o751, 0).expect("mknod sock");
        sys::mknod(&p("chr"), libc::S_IFCHR | 0o620, sys::makedev(1, 3)).expect("mknod chr");
        sys::mknod(&p("blk"), libc::S_IFBLK | 0o660, sys::makedev(7, 0)).expect("mknod blk");
        for n in ["reg", "reg2", "dir", "sym", "fifo", "sock", "chr", "blk"] {
            std::os::unix::fs::lchown(p(n), Some(1234), Some(5678)).expect("lchown");
        }
        // Modes after chown (chown clears setuid/setgid).
        for (n, mode) in [
            ("reg", 0o6755),
            ("reg2", 0o4711),
            ("dir", 0o3775),
            ("fifo", 0o640),
            ("sock", 0o751),
            ("chr", 0o620),
            ("blk", 0o660),
        ] {
            fs::set_permissions(p(n), perm(mode)).expect("chmod");
        }
        for n in ["reg", "reg2", "dir"] {
            sys::lsetxattr(&p(n), b"user.a", b"1").expect("user.a");
            sys::lsetxattr(&p(n), b"user.bin", b"\x00\xff\x01").expect("user.bin");
            setfacl(&["-m", "u:1000:rwx,g:4242:r"], &p(n));
        }
        setfacl(&["-d", "-m", "u:1000:rx"], &p("dir"));
        sys::lsetxattr(&p("reg"), b"security.capability", &capability_v2_blob())
            .expect("security.capability");
        for n in ["reg", "reg2", "dir", "sym", "fifo", "sock", "chr", "blk"] {
            sys::utimensat(&p(n), Time::At(at.0, at.1), Time::At(mt.0, mt.1)).expect("times");
        }
    });
    let mut c = Checks::default();
    let lower: BTreeMap<&str, Meta> = ["reg", "reg2", "dir", "sym", "fifo", "sock", "chr", "blk"]
        .iter()
        .map(|&n| (n, meta(&fx.l(0, n)).expect("lower meta")))
        .collect();
    c.t(
        lower["reg"].xattrs.contains_key("system.posix_acl_access"),
        || "fixture: setfacl left no system.posix_acl_access".into(),
    );
    c.t(
        lower["dir"].xattrs.contains_key("system.posix_acl_default"),
        || "fixture: no default ACL on dir".into(),
    );
    c.eq("fixture: reg mode", lower["reg"].mode & 0o6000, 0o6000);

    // Each type copied up by a different kind of change that leaves the
    // metadata as it was (or changes one known field).
    c.ok(
        "open reg O_WRONLY (copy-up without writing)",
        OpenOptions::new().write(true).open(fx.m("reg")),
    );
    c.ok("append to reg2", append(&fx.m("reg2"), b"more\n"));
    c.ok(
        "setxattr user.trigger on dir",
        sys::lsetxattr(&fx.m("dir"), b"user.trigger", b"t"),
    );
    c.ok(
        "lchown sym to its owner",
        std::os::unix::fs::lchown(fx.m("sym"), Some(1234), Some(5678)),
    );
    c.ok(
        "chmod fifo to its mode",
        fs::set_permissions(fx.m("fifo"), perm(0o640)),
    );
    c.ok(
        "utimes sock to its times",
        sys::utimensat(&fx.m("sock"), Time::At(at.0, at.1), Time::At(mt.0, mt.1)),
    );
    c.ok(
        "chown chr to its owner",
        std::os::unix::fs::lchown(fx.m("chr"), Some(1234), Some(5678)),
    );
    c.ok(
        "chmod blk to its mode",
        fs::set_permissions(fx.m("blk"), perm(0o660)),
    );

    for (n, skip) in [
        ("reg", &[][..]),
        // A write changes size and mtime; as root it keeps setuid.
        ("reg2", &["size", "mtime"][..]),
        ("dir", &["user.trigger"][..]),
        ("sym", &[][..]),
        ("fifo", &[][..]),
        ("sock", &[][..]),
        ("chr", &[][..]),
        ("blk", &[][..]),
    ] {
        match meta(&fx.u(n)) {
            Ok(up) => {
                for d in meta_diff(n, &lower[n], &up, skip) {
                    c.fail(d);
                }
            }
            Err(e) => c.fail(format!("upper {n}: not copied up ({e})")),
        }
        // The view shows the same (through the kernel's attribute cache).
        match lst(&fx.m(n)) {
            Ok(m) => {
                let l = &lower[n];
                c.eq(
                    format!("view {n}: type/mode/uid/gid/rdev"),
                    (
                        FileType::of(m.file_type()),
                        m.mode() & 0o7777,
                        m.uid(),
                        m.gid(),
                        m.rdev(),
                    ),
                    (l.ftype, l.mode, l.uid, l.gid, l.rdev),
                );
            }
            Err(e) => c.fail(format!("view {n}: {e}")),
        }
    }
    c.r(fx.upper_file("reg", &tag(L1, "reg")));
    let mut reg2 = tag(L1, "reg2");
    reg2.extend_from_slice(b"more\n");
    c.r(fx.upper_file("reg2", &reg2));
    c.eq(
        "upper dir: user.trigger",
        sys::lgetxattr(&fx.u("dir"), b"user.trigger").ok(),
        Some(b"t".to_vec()),
    );
    // A dir copy-up copies the dir, not its children.
    c.r(fx.upper_absent("dir/child"));
    c.eq(
        "view dir: listing",
        fx.view_list("dir"),
        vec!["child".to_string(), "child2".into()],
    );
    // The capability is also readable through the mount.
    c.eq(
        "view reg: security.capability",
        sys::lgetxattr(&fx.m("reg"), b"security.capability").ok(),
        Some(capability_v2_blob()),
    );
    fx.finish(c, "copy-up metadata");
}

/// A cheap fingerprint of a big sparse file: metadata, its data/hole map and
/// a hash of the data extents only (never reads 1 GiB of zeros).
fn sparse_fingerprint(p: &Path) -> String {
    let m = lst(p).expect("lstat");
    let f = File::open(p).expect("open");
    let mut map = Vec::new();
    let mut off = 0i64;
    let mut h = 0u64;
    while off < m.len() as i64 {
        let Ok(start) = sys::lseek(&f, off, libc::SEEK_DATA) else {
            break;
        };
        let end = sys::lseek(&f, start, libc::SEEK_HOLE).expect("SEEK_HOLE");
        let mut buf = vec![0u8; (end - start) as usize];
        f.read_exact_at(&mut buf, start as u64)
            .expect("read extent");
        h ^= fnv(&buf).rotate_left((start % 63) as u32);
        map.push((start, end));
        off = end;
    }
    format!(
        "size {} blocks {} mode {:o} owner {}:{} mtime {}.{} ctime {}.{} ino {} extents {map:?} hash {h:x}",
        m.len(),
        m.blocks(),
        m.mode(),
        m.uid(),
        m.gid(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        m.ino()
    )
}

#[test]
fn one_gib_sparse_lower_copied_up_by_a_small_write_stays_sparse() {
    if !require_mount_env() {
        return;
    }
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    let blocks: [(u64, u8); 3] = [(0, b'A'), (300 * MIB + 4096, b'B'), (GIB - 4096, b'C')];
    let t = TestDir::new("sparse-1g");
    let lower = t.mkdir("lower");
    {
        let f = File::create(lower.join("big")).expect("create");
        f.set_len(GIB).expect("truncate -s 1G");
        for (off, b) in blocks {
            f.write_all_at(&[b; 4096], off).expect("write block");
        }
    }
    let before = sparse_fingerprint(&lower.join("big"));
    let upper = t.mkdir("upper");
    let mnt = t.mkdir("mnt");
    let m = mount_unionfs(
        &[&lower],
        Some(&upper),
        Some(&t.join("work")),
        &mnt,
        &["--format", OVERLAY],
    );
    let mut c = Checks::default();
    let start = std::time::Instant::now();
    c.ok(
        "small write at 512 MiB",
        write_at(&mnt.join("big"), 512 * MIB, b"hello"),
    );
    let took = start.elapsed();
    c.t(took < Duration::from_secs(20), || {
        format!("copy-up of the sparse file took {took:?}")
    });
    let up = upper.join("big");
    match lst(&up) {
        Ok(md) => {
            c.eq("upper big: size", md.len(), GIB);
            c.t(md.blocks() * 512 < 16 * MIB, || {
                format!(
                    "upper big: not sparse: {} bytes allocated",
                    md.blocks() * 512
                )
            });
        }
        Err(e) => c.fail(format!("upper big: not copied up: {e}")),
    }
    let expect_at = |p: &Path, c: &mut Checks, side: &str| {
        let Some(f) = c.ok(format!("open {side} big"), File::open(p)) else {
            return;
        };
        let mut checks: Vec<(u64, Vec<u8>)> =
            blocks.iter().map(|&(o, b)| (o, vec![b; 4096])).collect();
        checks.push((512 * MIB, b"hello".to_vec()));
        checks.push((512 * MIB + 5, vec![0; 100]));
        checks.push((100 * MIB, vec![0; 4096]));
        checks.push((300 * MIB, vec![0; 4096]));
        for (off, want) in checks {
            let mut buf = vec![0xeeu8; want.len()];
            c.ok(
                format!("pread {side} at {off}"),
                f.read_exact_at(&mut buf, off),
            );
            c.t(buf == want, || {
                format!(
                    "{side} big: wrong bytes at offset {off}: {:?}...",
                    &buf[..8.min(buf.len())]
                )
            });
        }
    };
    expect_at(&up, &mut c, "upper");
    expect_at(&mnt.join("big"), &mut c, "view");
    m.umount();
    c.eq(
        "lower big unchanged",
        sparse_fingerprint(&lower.join("big")),
        before,
    );
    c.done("1 GiB sparse copy-up");
}

#[test]
fn racing_writers_copy_up_once_and_keep_every_write() {
    if !require_mount_env() {
        return;
    }
    const THREADS: usize = 8;
    const SLOT: usize = 64 * 1024;
    const ROUNDS: usize = 12;
    let mut l1 = Layer::new(L1);
    for r in 0..ROUNDS {
        l1 = l1.file(format!("race{r}"), vec![b'L'; THREADS * SLOT]);
    }
    let fx = Fx::new("race-writers", &[l1], OVERLAY);
    let mut c = Checks::default();
    for r in 0..ROUNDS {
        let rel = format!("race{r}");
        let path = fx.m(&rel);
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let (path, barrier) = (path.clone(), barrier.clone());
                thread::spawn(move || -> io::Result<()> {
                    barrier.wait();
                    let f = OpenOptions::new().write(true).open(&path)?;
                    // Leave the last 4 KiB of each slot to the lower's bytes.
                    f.write_all_at(&vec![b'0' + i as u8; SLOT - 4096], (i * SLOT) as u64)
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            match h.join() {
                Ok(r) => {
                    c.ok(format!("{rel}: writer {i}"), r);
                }
                Err(_) => c.fail(format!("{rel}: writer {i} panicked")),
            }
        }
        let mut want = Vec::with_capacity(THREADS * SLOT);
        for i in 0..THREADS {
            want.extend(std::iter::repeat_n(b'0' + i as u8, SLOT - 4096));
            want.extend(std::iter::repeat_n(b'L', 4096));
        }
        c.r(fx.upper_file(&rel, &want));
        c.r(fx.view_file(&rel, &want));
    }
    // One upper copy each, nothing else.
    let names: Vec<String> = list_str(&fx.upper);
    let want: Vec<String> = {
        let mut v: Vec<String> = (0..ROUNDS).map(|r| format!("race{r}")).collect();
        v.sort();
        v
    };
    c.eq("upper: entries", names, want);
    let tmp = fx.work.join("tmp");
    c.eq(
        "work/tmp while mounted",
        list_str(&tmp),
        Vec::<String>::new(),
    );
    fx.finish(c, "racing writers");
}

#[test]
fn racing_chmods_copy_up_once_and_parents_first() {
    if !require_mount_env() {
        return;
    }
    const THREADS: usize = 16;
    const ROUNDS: usize = 10;
    let mut l1 = Layer::new(L1);
    for r in 0..ROUNDS {
        l1 = l1.tagged(format!("same{r}"));
        for i in 0..THREADS {
            l1 = l1.tagged(format!("deep{r}/a/b/f{i}"));
        }
    }
    let fx = Fx::new(
        "race-chmod",
        &[l1, Layer::new(L2).tagged("deep0/a/b/l2")],
        OVERLAY,
    );
    let mut c = Checks::default();
    for r in 0..ROUNDS {
        // All threads chmod the same lower file.
        let same = fx.m(&format!("same{r}"));
        let barrier = Arc::new(Barrier::new(THREADS));
        let hs: Vec<_> = (0..THREADS)
            .map(|_| {
                let (p, b) = (same.clone(), barrier.clone());
                thread::spawn(move || {
                    b.wait();
                    fs::set_permissions(&p, perm(0o600))
                })
            })
            .collect();
        for h in hs {
            c.ok(format!("chmod same{r}"), h.join().expect("thread"));
        }
        c.r(fx.upper_file(&format!("same{r}"), &tag(L1, format!("same{r}"))));
        c.r(fx.upper_meta(&format!("same{r}"), 0o600, 0, 0));
        // Each thread chmods its own file below the same lower-only dirs.
        let barrier = Arc::new(Barrier::new(THREADS));
        let hs: Vec<_> = (0..THREADS)
            .map(|i| {
                let (p, b) = (fx.m(&format!("deep{r}/a/b/f{i}")), barrier.clone());
                thread::spawn(move || {
                    b.wait();
                    fs::set_permissions(&p, perm(0o640))
                })
            })
            .collect();
        for (i, h) in hs.into_iter().enumerate() {
            c.ok(format!("chmod deep{r}/a/b/f{i}"), h.join().expect("thread"));
        }
        for i in 0..THREADS {
            let rel = format!("deep{r}/a/b/f{i}");
            c.r(fx.upper_file(&rel, &tag(L1, &rel)));
            c.r(fx.upper_meta(&rel, 0o640, 0, 0));
        }
        let mut want: Vec<String> = (0..THREADS).map(|i| format!("f{i}")).collect();
        if r == 0 {
            want.push("l2".into());
        }
        want.sort();
        c.eq(
            format!("view deep{r}/a/b: listing"),
            fx.view_list(&format!("deep{r}/a/b")),
            want,
        );
    }
    c.eq(
        "work/tmp while mounted",
        list_str(&fx.work.join("tmp")),
        Vec::<String>::new(),
    );
    fx.finish(c, "racing chmods");
}

#[test]
fn reader_opened_before_copy_up_reads_the_new_bytes() {
    if !require_mount_env() {
        return;
    }
    let fx = Fx::new(
        "reader-fd",
        &[Layer::new(L1).tagged("f").tagged("g")],
        OVERLAY,
    );
    let mut c = Checks::default();
    let orig = tag(L1, "f");
    if let Some(reader) = c.ok("open f O_RDONLY", File::open(fx.m("f"))) {
        let mut buf = vec![0u8; orig.len()];
        c.ok("read f before", reader.read_exact_at(&mut buf, 0));
        c.eq("reader before copy-up", s(&buf), s(&orig));
        c.r(fx.upper_absent("f"));
        c.ok(
            "write NEW through another fd",
            write_at(&fx.m("f"), 0, b"NEW"),
        );
        let mut want = orig.clone();
        want[..3].copy_from_slice(b"NEW");
        c.r(fx.upper_file("f", &want));
        let mut buf = vec![0u8; want.len()];
        c.ok("read f after", reader.read_exact_at(&mut buf, 0));
        c.eq("reader after copy-up (page cache)", s(&buf), s(&want));
        // Drop the cached pages: the read now goes to the daemon through the
        // reader's own handle, which must follow the copy-up.
        c.ok("fadvise DONTNEED", sys::fadvise_dontneed(&reader));
        let mut buf = vec![0u8; want.len()];
        c.ok(
            "read f after dropping the cache",
            reader.read_exact_at(&mut buf, 0),
        );
        c.eq("reader after copy-up (from the daemon)", s(&buf), s(&want));
        // A later write, growing the file, shows to the reader as well.
        c.ok("append", append(&fx.m("f"), b"TAIL"));
        want.extend_from_slice(b"TAIL");
        c.ok("fadvise DONTNEED", sys::fadvise_dontneed(&reader));
        let mut v = Vec::new();
        let mut r2 = &reader;
        c.ok(
            "seek+read",
            io::Seek::seek(&mut r2, io::SeekFrom::Start(0)).and_then(|_| r2.read_to_end(&mut v)),
        );
        c.eq("reader sees the appended bytes", s(&v), s(&want));
    }
    // A reader that never read before the copy-up (nothing cached).
    if let Some(reader) = c.ok("open g O_RDONLY", File::open(fx.m("g"))) {
        c.ok("write g", write_at(&fx.m("g"), 0, b"GGG"));
        let mut want = tag(L1, "g");
        want[..3].copy_from_slice(b"GGG");
        let mut buf = vec![0u8; want.len()];
        c.ok("read g", reader.read_exact_at(&mut buf, 0));
        c.eq(
            "reader opened before copy-up, first read after",
            s(&buf),
            s(&want),
        );
    }
    fx.finish(c, "reader fd across copy-up");
}

#[test]
fn open_with_o_trunc_gives_an_empty_upper_file() {
    if !require_mount_env() {
        return;
    }
    let l1 = Layer::new(L1)
        .tagged("t")
        .mode(0o640)
        .owner(1234, 5678)
        .xattr("user.k", "v")
        .tagged("t2");
    let fx = Fx::new("o-trunc", &[l1, Layer::new(L2).tagged("t")], OVERLAY);
    let mut c = Checks::default();
    if c.ok(
        "open t O_WRONLY|O_TRUNC",
        open_flags(&fx.m("t"), libc::O_WRONLY | libc::O_TRUNC, 0),
    )
    .is_some()
    {
        c.r(fx.view_file("t", b""));
        c.r(fx.upper_file("t", b""));
        c.r(fx.upper_meta("t", 0o640, 1234, 5678));
        c.eq(
            "upper t: user.k",
            sys::lgetxattr(&fx.u("t"), b"user.k").ok(),
            Some(b"v".to_vec()),
        );
    }
    c.eq(
        "lower t keeps its bytes",
        rd(&fx.l(0, "t")).ok(),
        Some(tag(L1, "t")),
    );
    // O_TRUNC then write.
    if c.ok("fs::write t2 (O_TRUNC)", fs::write(fx.m("t2"), b"short"))
        .is_some()
    {
        c.r(fx.view_file("t2", b"short"));
        c.r(fx.upper_file("t2", b"short"));
    }
    fx.finish(c, "O_TRUNC");
}

#[test]
fn demo_four_lowers_a_write_lands_in_the_upper_and_the_lower_keeps_its_bytes() {
    if !require_mount_env() {
        return;
    }
    let layers = [
        Layer::new("config")
            .tagged("app/server.conf")
            .tagged("etc/hostname"),
        Layer::new("app")
            .tagged("app/server.conf")
            .tagged("app/bin/server"),
        Layer::new("libs")
            .tagged("usr/lib/libc.so")
            .tagged("etc/motd"),
        Layer::new("base")
            .tagged("etc/motd")
            .tagged("etc/os-release")
            .tagged("usr/lib/libc.so"),
    ];
    let fx = Fx::new("demo", &layers, OVERLAY);
    let mut c = Checks::default();
    c.r(fx.view_file("etc/motd", &tag("libs", "etc/motd")));
    c.r(fx.view_file("app/server.conf", &tag("config", "app/server.conf")));
    c.r(fx.view_file("etc/os-release", &tag("base", "etc/os-release")));
    c.ok(
        "append to etc/motd",
        append(&fx.m("etc/motd"), b"hello from the container\n"),
    );
    let mut want = tag("libs", "etc/motd");
    want.extend_from_slice(b"hello from the container\n");
    c.r(fx.view_file("etc/motd", &want));
    c.r(fx.upper_file("etc/motd", &want));
    c.eq(
        "lower libs keeps its etc/motd",
        rd(&fx.l(2, "etc/motd")).ok(),
        Some(tag("libs", "etc/motd")),
    );
    c.eq(
        "lower base keeps its etc/motd",
        rd(&fx.l(3, "etc/motd")).ok(),
        Some(tag("base", "etc/motd")),
    );
    c.eq(
        "upper holds only the written file",
        walk(&fx.upper).keys().cloned().collect::<Vec<_>>(),
        vec!["etc".to_string(), "etc/motd".into()],
    );
    fx.finish(c, "demo");
}
