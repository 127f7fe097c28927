//! Concurrency (issue item 4): threads racing on the same names through a
//! real mount: many writers copying up one lower file, rename vs unlink vs
//! write on the same names, readdir while the directory changes, mkdir vs
//! rmdir. Each workload must
//!
//! * not crash the daemon (it is our foreground child: still running, and
//!   the mount answers),
//! * not deadlock (threads must finish within a deadline; past it the
//!   daemon is killed, which fails every blocked call, and the test fails),
//! * keep the invariants: only expected errnos, each file holds one whole
//!   version that was written (or the lower one), the merged view equals
//!   what a fresh mount of the same layers shows, lowers are unchanged.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long a workload may take before it counts as a deadlock.
const DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// RNG, versions
// ---------------------------------------------------------------------------

const UNIT: usize = 16;

/// `size` bytes of version `token`: a 16-byte tag repeated.
fn version(token: u64, size: usize) -> Vec<u8> {
    let u = format!("{:015x}\n", token & 0x0fff_ffff_ffff_ffff).into_bytes();
    (0..size).map(|i| u[i % UNIT]).collect()
}

/// The token of a content that is one whole version, else None.
fn version_of(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < UNIT || bytes[UNIT - 1] != b'\n' {
        return None;
    }
    let token = u64::from_str_radix(std::str::from_utf8(&bytes[..UNIT - 1]).ok()?, 16).ok()?;
    let u = &bytes[..UNIT];
    bytes
        .chunks(UNIT)
        .all(|c| c == &u[..c.len()])
        .then_some(token)
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// Records `r`'s error unless its errno is one of `ok`.
fn allow<T>(r: io::Result<T>, ok: &[i32], what: &str, failures: &Mutex<Vec<String>>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) if ok.contains(&errno(&e)) => None,
        Err(e) => {
            let mut f = failures.lock().unwrap_or_else(|p| p.into_inner());
            if f.len() < 50 {
                f.push(format!("{what}: unexpected {}", errno_name(errno(&e))));
            }
            None
        }
    }
}

// ---------------------------------------------------------------------------
// The daemon, in the foreground, as our child
// ---------------------------------------------------------------------------

/// Still running, and the mount answers.
fn check_alive(d: &Daemon) -> Result<(), String> {
    if !d.alive() {
        return Err(format!("the daemon died; log:\n{}", log_tail(&d.log)));
    }
    fs::symlink_metadata(&d.mnt).map_err(|e| format!("stat of the mount root: {e}"))?;
    sys::statvfs(&d.mnt).map_err(|e| format!("statfs of the mount: {e}"))?;
    Ok(())
}

/// Runs `work` (which starts threads); if it is not done within DEADLINE,
/// kills the daemon so that every blocked call fails, and reports the
/// deadlock.
fn within_deadline<R>(d: &Daemon, what: &str, work: impl FnOnce() -> R) -> Result<R, String> {
    let start = Instant::now();
    let deadline = d.deadline(DEADLINE, &format!("concurrency: {what}"));
    let r = work();
    let fired = deadline.fired();
    drop(deadline);
    if fired {
        Err(format!(
            "{what} did not finish within {DEADLINE:?} (deadlock or hung daemon); \
             the daemon was killed to unblock it"
        ))
    } else {
        eprintln!("concurrency: {what} took {:?}", start.elapsed());
        Ok(r)
    }
}

// ---------------------------------------------------------------------------
// A union on a tmpfs of its own
// ---------------------------------------------------------------------------

struct Union {
    daemon: Option<Daemon>,
    _tmpfs: Mount,
    t: TestDir,
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    sums: LayerChecksum,
}

impl Union {
    fn new(name: &str, layers: &[Layer]) -> Union {
        let t = TestDir::new(name);
        let fsdir = t.join("fs");
        let tmpfs = mount_tmpfs_sized(&fsdir, "512m");
        let lowers = render_stack(layers, &fsdir, Format::Kernel);
        let upper = fsdir.join("upper");
        let work = fsdir.join("work");
        fs::create_dir(&upper).expect("mkdir upper");
        let mnt = t.mkdir("mnt");
        let sums = checksum_layers(&as_paths(&lowers));
        let mut u = Union {
            daemon: None,
            _tmpfs: tmpfs,
            t,
            lowers,
            upper,
            work,
            mnt,
            sums,
        };
        u.mount();
        u
    }

    fn mount(&mut self) {
        let lowers = as_paths(&self.lowers);
        let log = self.t.join("daemon.log");
        let daemon = Daemon::start(
            &lowers,
            &self.upper,
            &self.work,
            &self.mnt,
            &[],
            &log,
            "UNIONFS_TEST_DAEMON_LOG",
        );
        self.daemon = Some(daemon.unwrap_or_else(|e| panic!("{e}")));
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("mounted")
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// After a workload: the daemon is up, the view lists no marker and
    /// every name stats, the view equals a fresh mount's, `work/tmp` is
    /// empty, the lowers are unchanged. Returns the failures.
    fn check_after(&mut self) -> Vec<String> {
        let mut f = Vec::new();
        if let Err(e) = check_alive(self.daemon()) {
            f.push(e);
            return f;
        }
        f.extend(markers_in_view(&self.mnt));
        let before = snapshot(&self.mnt);
        let mut d = self.daemon.take().expect("mounted");
        if let Err(e) = d.unmount() {
            panic!("{e}");
        }
        let tmp: Vec<String> = fs::read_dir(self.work.join("tmp"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if !tmp.is_empty() {
            f.push(format!("work/tmp holds {tmp:?} after a clean unmount"));
        }
        self.mount();
        let after = snapshot(&self.mnt);
        for d in before.diff(&after, Fields::VIEW) {
            f.push(format!("view vs a fresh mount: {d}"));
        }
        self.sums.assert_unchanged();
        f
    }

    fn finish(mut self, what: &str, mut failures: Vec<String>) {
        failures.extend(self.check_after());
        if let Some(mut d) = self.daemon.take() {
            if let Err(e) = d.unmount() {
                failures.push(e);
            }
        }
        if !failures.is_empty() {
            let log = log_tail(&self.t.join("daemon.log"));
            if !log.is_empty() {
                failures.push(format!("(the daemon's log ends with:)\n{log}"));
            }
        }
        self.sums.assert_unchanged();
        assert_no_failures(what, &failures);
    }
}

/// `.wh.` names or whiteouts listed, names that readdir lists but lstat
/// cannot find.
fn markers_in_view(root: &Path) -> Vec<String> {
    let mut f = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(rd) = fs::read_dir(&dir) else {
            f.push(format!("{}: readdir failed", dir.display()));
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".wh.") {
                f.push(format!("{}: a .wh. name in the merged view", p.display()));
            }
            match fs::symlink_metadata(&p) {
                Ok(m) => {
                    use std::os::unix::fs::FileTypeExt;
                    if m.file_type().is_char_device() && m.rdev() == 0 {
                        f.push(format!("{}: a whiteout in the merged view", p.display()));
                    }
                    if m.is_dir() {
                        todo.push(p);
                    }
                }
                Err(e) => f.push(format!("{}: listed but lstat fails: {e}", p.display())),
            }
        }
    }
    f
}

/// Runs `threads` closures (each given its index) together, released by one
/// barrier.
fn race(threads: usize, body: impl Fn(usize) + Sync) {
    let barrier = Barrier::new(threads);
    thread::scope(|s| {
        for i in 0..threads {
            let (barrier, body) = (&barrier, &body);
            s.spawn(move || {
                barrier.wait();
                body(i);
            });
        }
    });
}

// ---------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------

const KIB4: u64 = 4096;

/// The content of block `b` of lower file `name`: its own version.
fn lower_block(file: u64, b: u64) -> Vec<u8> {
    version((1 << 56) | (file << 32) | b, KIB4 as usize)
}

/// What writer `w` writes in block `b` of file `file`.
fn writer_block(file: u64, w: u64, b: u64) -> Vec<u8> {
    version((2 << 56) | (file << 40) | (w << 32) | b, KIB4 as usize)
}

/// Many writers open the same lower file for writing at once and each
/// writes its own blocks, while others chmod/setxattr/utimes it and readers
/// read it: it must be copied up once (every writer's blocks are there in
/// the end), readers see only lower or written blocks, and two names of one
/// lower inode stay one inode.
#[test]
fn many_writers_copy_up_one_lower_file_once() {
    if !require_mount_env() {
        return;
    }
    const FILES: u64 = 6;
    const BLOCKS: u64 = 1024; // 4 MiB
    const WRITERS: u64 = 6;
    const BLOCKS_PER_WRITER: u64 = 8;
    let mut l = Layer::new("lower");
    for file in 0..FILES {
        let data: Vec<u8> = (0..BLOCKS).flat_map(|b| lower_block(file, b)).collect();
        l = l.file(format!("d/big{file}"), data);
    }
    // A hard-linked pair: written through both names at once.
    let hl = 100;
    let data: Vec<u8> = (0..BLOCKS).flat_map(|b| lower_block(hl, b)).collect();
    l = l.file("h/one", data).link("h/two", "h/one");
    let u = Union::new("conc-copy-up", &[l]);
    let failures = Mutex::new(Vec::new());
    // Writer w of file f writes blocks w*BLOCKS/WRITERS + k*7, k < 8.
    let blocks_of = |w: u64| -> Vec<u64> {
        (0..BLOCKS_PER_WRITER)
            .map(|k| w * (BLOCKS / WRITERS) + k * 7)
            .collect()
    };
    let written: BTreeMap<u64, u64> = (0..WRITERS)
        .flat_map(|w| blocks_of(w).into_iter().map(move |b| (b, w)))
        .collect();

    let run = within_deadline(u.daemon(), "copy-up race", || {
        for file in (0..FILES).chain([hl]) {
            let name = |w: u64| {
                if file == hl {
                    if w % 2 == 0 {
                        "h/one".to_string()
                    } else {
                        "h/two".to_string()
                    }
                } else {
                    format!("d/big{file}")
                }
            };
            let stop = AtomicBool::new(false);
            let threads = (WRITERS + 4) as usize;
            race(threads, |i| {
                let i = i as u64;
                if i < WRITERS {
                    let path = u.at(&name(i));
                    let what = format!("writer {i} on {}", name(i));
                    let f = if i % 2 == 0 {
                        fs::OpenOptions::new().write(true).open(&path)
                    } else {
                        fs::OpenOptions::new().read(true).write(true).open(&path)
                    };
                    let Some(f) = allow(f, &[], &format!("{what}: open"), &failures) else {
                        return;
                    };
                    for b in blocks_of(i) {
                        let r = f.write_all_at(&writer_block(file, i, b), b * KIB4);
                        allow(r, &[], &format!("{what}: pwrite block {b}"), &failures);
                    }
                } else if i == WRITERS {
                    let p = u.at(&name(0));
                    let r = fs::set_permissions(&p, fs::Permissions::from_mode(0o640));
                    allow(r, &[], "chmod during the copy-up", &failures);
                    let r = sys::lsetxattr(&p, b"user.race", b"1");
                    allow(r, &[], "setxattr during the copy-up", &failures);
                } else if i == WRITERS + 1 {
                    let r = sys::utimens_nofollow(&u.at(&name(1)), None);
                    allow(r, &[], "utimes during the copy-up", &failures);
                } else {
                    // Readers: every block is the lower one or a written one.
                    let mut rng = Rng::new(i * 77 + file);
                    let mut buf = vec![0u8; KIB4 as usize];
                    for _ in 0..200 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let p = u.at(&name(i));
                        let Some(f) = allow(fs::File::open(&p), &[], "reader open", &failures)
                        else {
                            return;
                        };
                        let b = rng.below(BLOCKS);
                        if allow(f.read_exact_at(&mut buf, b * KIB4), &[], "read", &failures)
                            .is_none()
                        {
                            return;
                        }
                        let ok = buf == lower_block(file, b)
                            || written
                                .get(&b)
                                .is_some_and(|&w| buf == writer_block(file, w, b));
                        if !ok {
                            let mut fl = failures.lock().unwrap_or_else(|p| p.into_inner());
                            fl.push(format!(
                                "reader of {}: block {b} is neither the lower block nor a \
                                 written one: {:?}",
                                name(i),
                                String::from_utf8_lossy(&buf[..32])
                            ));
                            return;
                        }
                    }
                }
            });
            stop.store(true, Ordering::Relaxed);
        }
    });
    let mut failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = run {
        failures.push(e);
    }
    // Every writer's blocks are there: one copy-up, no write lost.
    for file in (0..FILES).chain([hl]) {
        let names: Vec<String> = if file == hl {
            vec!["h/one".into(), "h/two".into()]
        } else {
            vec![format!("d/big{file}")]
        };
        let want: Vec<u8> = (0..BLOCKS)
            .flat_map(|b| match written.get(&b) {
                Some(&w) => writer_block(file, w, b),
                None => lower_block(file, b),
            })
            .collect();
        for n in &names {
            let got = match fs::read(u.at(n)) {
                Ok(g) => g,
                Err(e) => {
                    failures.push(format!("{n}: read after the race: {e}"));
                    continue;
                }
            };
            if got != want {
                let lost: Vec<String> = written
                    .iter()
                    .filter(|(&b, &w)| {
                        got.get((b * KIB4) as usize..((b + 1) * KIB4) as usize)
                            != Some(&writer_block(file, w, b)[..])
                    })
                    .map(|(b, w)| format!("block {b} of writer {w}"))
                    .collect();
                failures.push(format!(
                    "{n}: {} bytes, not the lower file with every written block; \
                     writes lost (copied up twice?): {lost:?}",
                    got.len()
                ));
            }
        }
        if file == hl {
            let (a, b) = (lstat(&u.at("h/one")), lstat(&u.at("h/two")));
            if a.ino() != b.ino() || a.nlink() != 2 || b.nlink() != 2 {
                failures.push(format!(
                    "h/one and h/two: inodes {} and {}, nlink {} and {}: expected one inode \
                     with 2 links",
                    a.ino(),
                    b.ino(),
                    a.nlink(),
                    b.nlink()
                ));
            }
        }
    }
    u.finish("concurrent copy-up of one lower file", failures);
}

/// Threads rename, unlink, (re)write and read the same few names at once.
/// Only ENOENT may fail a call (the name raced away); in the end every file
/// is one whole version that was written (or its lower one).
#[test]
fn rename_unlink_write_race_on_same_names() {
    if !require_mount_env() {
        return;
    }
    const NAMES: [&str; 8] = ["n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7"];
    const SIZE: usize = 4096;
    let mut l1 = Layer::new("l1");
    let mut l2 = Layer::new("l2");
    for (i, n) in NAMES.iter().enumerate().take(6) {
        let token = (1 << 56) | i as u64;
        if i % 2 == 0 {
            l1 = l1.file(format!("r/{n}"), version(token, SIZE));
        } else {
            l2 = l2.file(format!("r/{n}"), version(token, SIZE));
        }
    }
    l2 = l2.tagged("r/sub/keep");
    let u = Union::new("conc-names", &[l1, l2]);
    let failures = Mutex::new(Vec::new());
    let counter = AtomicU64::new(0);
    let written = Mutex::new(BTreeSet::new());
    let deadline = Instant::now() + Duration::from_secs(3);
    let run = within_deadline(u.daemon(), "rename/unlink/write race", || {
        race(6, |t| {
            let mut rng = Rng::new(t as u64 + 1);
            while Instant::now() < deadline {
                let a = u.at(&format!("r/{}", rng.pick(&NAMES)));
                let b = u.at(&format!("r/{}", rng.pick(&NAMES)));
                let enoent = [libc::ENOENT];
                match rng.below(10) {
                    0..=2 => {
                        let token = (2 << 56) | counter.fetch_add(1, Ordering::Relaxed);
                        written
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(token);
                        // No O_TRUNC: a racing writer's whole version stays whole.
                        let f = fs::OpenOptions::new()
                            .write(true)
                            .create(true)
                            .truncate(false)
                            .open(&a);
                        // The name may vanish between lookup and open.
                        if let Some(f) = allow(f, &enoent, "open O_CREAT", &failures) {
                            let r = f.write_all_at(&version(token, SIZE), 0);
                            allow(r, &[], "pwrite of a whole version", &failures);
                        }
                    }
                    3..=4 => {
                        allow(fs::rename(&a, &b), &enoent, "rename", &failures);
                    }
                    5 => {
                        allow(fs::remove_file(&a), &enoent, "unlink", &failures);
                    }
                    6..=7 => {
                        if let Some(mut f) = allow(fs::File::open(&a), &enoent, "open", &failures) {
                            let mut v = Vec::new();
                            allow(f.read_to_end(&mut v), &[], "read", &failures);
                        }
                    }
                    8 => {
                        allow(fs::symlink_metadata(&a), &enoent, "lstat", &failures);
                        let r = fs::set_permissions(&a, fs::Permissions::from_mode(0o600));
                        allow(r, &enoent, "chmod", &failures);
                    }
                    _ => {
                        if let Some(rd) = allow(fs::read_dir(u.at("r")), &[], "readdir", &failures)
                        {
                            let mut seen = BTreeSet::new();
                            for e in rd.flatten() {
                                let n = e.file_name().to_string_lossy().into_owned();
                                if !seen.insert(n.clone()) || n.starts_with(".wh.") {
                                    let mut f = failures.lock().unwrap_or_else(|p| p.into_inner());
                                    f.push(format!("readdir r: {n:?} listed twice or a marker"));
                                }
                            }
                        }
                    }
                }
            }
        });
    });
    let mut failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = run {
        failures.push(e);
    }
    let written = written.into_inner().unwrap_or_else(|p| p.into_inner());
    for n in NAMES {
        let p = u.at(&format!("r/{n}"));
        let Ok(data) = fs::read(&p) else {
            continue;
        };
        match version_of(&data) {
            Some(t) if data.len() == SIZE && (written.contains(&t) || t >> 56 == 1) => {}
            _ => failures.push(format!(
                "r/{n}: {} bytes starting {:?}: not one whole version that was written",
                data.len(),
                String::from_utf8_lossy(&data[..data.len().min(32)])
            )),
        }
    }
    match fs::read(u.at("r/sub/keep")) {
        Ok(d) if d == tag("l2", "r/sub/keep") => {}
        other => failures.push(format!("r/sub/keep (untouched): {other:?}")),
    }
    u.finish("rename vs unlink vs write on the same names", failures);
}

/// Readers list a directory while other threads create, unlink and rename
/// names in it: each listing holds every stable name exactly once, no
/// marker, no name twice, nothing but known names.
#[test]
fn readdir_while_the_dir_changes() {
    if !require_mount_env() {
        return;
    }
    let stable: Vec<String> = (0..150).map(|i| format!("s{i:03}")).collect();
    let churn: Vec<String> = (0..24).map(|i| format!("c{i:02}")).collect();
    let mut l1 = Layer::new("l1");
    let mut l2 = Layer::new("l2");
    for (i, n) in stable.iter().enumerate() {
        if i % 3 == 0 {
            l1 = l1.tagged(format!("d/{n}"));
        } else {
            l2 = l2.tagged(format!("d/{n}"));
        }
    }
    for n in churn.iter().take(12) {
        l2 = l2.tagged(format!("d/{n}"));
    }
    let u = Union::new("conc-readdir", &[l1, l2]);
    let failures = Mutex::new(Vec::new());
    let known: BTreeSet<String> = stable.iter().chain(churn.iter()).cloned().collect();
    let listings = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs(3);
    let run = within_deadline(u.daemon(), "readdir while changing", || {
        race(6, |t| {
            let mut rng = Rng::new(t as u64 + 100);
            while Instant::now() < deadline {
                if t < 3 {
                    // Churn.
                    let a = u.at(&format!("d/{}", rng.pick(&churn)));
                    let b = u.at(&format!("d/{}", rng.pick(&churn)));
                    // A churn name may be a file or (between mkdir and
                    // rmdir) a directory.
                    let ok = [libc::ENOENT, libc::EEXIST, libc::EISDIR, libc::ENOTDIR];
                    match rng.below(4) {
                        0 => {
                            allow(fs::write(&a, b"churn"), &ok, "create", &failures);
                        }
                        1 => {
                            allow(fs::remove_file(&a), &ok, "unlink", &failures);
                        }
                        2 => {
                            allow(fs::rename(&a, &b), &ok, "rename", &failures);
                        }
                        _ => {
                            let r = fs::create_dir(&a).and_then(|()| fs::remove_dir(&a));
                            allow(r, &ok, "mkdir+rmdir", &failures);
                        }
                    }
                } else {
                    let Some(rd) = allow(fs::read_dir(u.at("d")), &[], "opendir", &failures) else {
                        continue;
                    };
                    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
                    for e in rd {
                        let Some(e) = allow(e, &[], "readdir", &failures) else {
                            break;
                        };
                        *seen
                            .entry(e.file_name().to_string_lossy().into_owned())
                            .or_default() += 1;
                    }
                    listings.fetch_add(1, Ordering::Relaxed);
                    let mut bad = Vec::new();
                    for (n, c) in &seen {
                        if *c > 1 {
                            bad.push(format!("{n} listed {c} times"));
                        }
                        if !known.contains(n) {
                            bad.push(format!("unknown name {n:?}"));
                        }
                    }
                    for n in &stable {
                        if !seen.contains_key(n) {
                            bad.push(format!("stable {n} missing"));
                        }
                    }
                    let n = rng.pick(&stable);
                    if let Err(e) = fs::symlink_metadata(u.at(&format!("d/{n}"))) {
                        bad.push(format!("lstat of stable {n}: {e}"));
                    }
                    if !bad.is_empty() {
                        let mut f = failures.lock().unwrap_or_else(|p| p.into_inner());
                        if f.len() < 20 {
                            f.push(format!("a listing of d: {}", bad.join(", ")));
                        }
                    }
                }
            }
        });
    });
    let mut failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = run {
        failures.push(e);
    }
    eprintln!(
        "concurrency: {} listings of d checked",
        listings.load(Ordering::Relaxed)
    );
    u.finish("readdir while the dir changes", failures);
}

/// mkdir, rmdir, rename of dirs and files created in them, all on the same
/// few names, over lower dirs (empty and not): only the errnos the races
/// explain; a lower dir with content is never removed.
#[test]
fn mkdir_rmdir_races() {
    if !require_mount_env() {
        return;
    }
    const DIRS: [&str; 6] = ["x0", "x1", "x2", "x3", "empty", "full"];
    let l = Layer::new("lower")
        .dir("m/empty")
        .dir("m/x0")
        .tagged("m/full/a")
        .tagged("m/full/b");
    let u = Union::new("conc-mkdir", &[l]);
    let failures = Mutex::new(Vec::new());
    let deadline = Instant::now() + Duration::from_secs(3);
    let run = within_deadline(u.daemon(), "mkdir/rmdir race", || {
        race(6, |t| {
            let mut rng = Rng::new(t as u64 + 1000);
            while Instant::now() < deadline {
                let a = u.at(&format!("m/{}", rng.pick(&DIRS)));
                let b = u.at(&format!("m/{}", rng.pick(&DIRS)));
                let ok = [libc::ENOENT, libc::EEXIST, libc::ENOTEMPTY];
                match rng.below(6) {
                    0 => {
                        allow(fs::create_dir(&a), &ok, "mkdir", &failures);
                    }
                    1 => {
                        allow(fs::remove_dir(&a), &ok, "rmdir", &failures);
                    }
                    2 => {
                        let r = fs::write(a.join("f"), b"in a racing dir");
                        allow(r, &ok, "create a file in a dir", &failures);
                    }
                    3 => {
                        allow(
                            fs::remove_file(a.join("f")),
                            &ok,
                            "unlink a file",
                            &failures,
                        );
                    }
                    4 => {
                        allow(fs::rename(&a, &b), &ok, "rename a dir", &failures);
                    }
                    _ => {
                        if let Some(rd) = allow(fs::read_dir(&a), &ok, "readdir", &failures) {
                            for e in rd {
                                allow(e, &ok, "readdir entry", &failures);
                            }
                        }
                    }
                }
            }
        });
    });
    let mut failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = run {
        failures.push(e);
    }
    // Whatever dirs remain hold only what the race puts there; the lower
    // dir with content can only have been renamed, never emptied.
    let mut fulls = 0;
    for d in DIRS {
        let p = u.at(&format!("m/{d}"));
        let Ok(rd) = fs::read_dir(&p) else {
            continue;
        };
        let mut names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.retain(|n| n != "f");
        if names == ["a", "b"] {
            fulls += 1;
            for n in ["a", "b"] {
                match fs::read(p.join(n)) {
                    Ok(c) if c == tag("lower", format!("m/full/{n}")) => {}
                    other => failures.push(format!("m/{d}/{n}: {other:?}")),
                }
            }
        } else if !names.is_empty() {
            failures.push(format!("m/{d} holds {names:?}"));
        }
    }
    if fulls != 1 {
        failures.push(format!(
            "the lower dir m/full (with a and b) shows up {fulls} times, expected once"
        ));
    }
    u.finish("mkdir/rmdir races", failures);
}
