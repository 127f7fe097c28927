//! Crash safety (docs/design.md §3 "a crash at any instant leaves either the old view
//! or the new one, plus temporaries that the next mount removes"):
//! an operation storm (big copy-ups of several MiB, file and directory
//! renames, deletes, links, whole-file replacements, fsyncs) runs against a
//! daemon started in the foreground as our child, which is killed with
//! SIGKILL after a random 0..50 ms; the same layers are mounted again and
//! checked:
//!
//! * the work dir's `tmp/` is empty once the mount is live;
//! * the merged view lists no `.wh.` name and no whiteout, and every listed
//!   name can be stat'ed;
//! * every file shows exactly one known version (every version is a whole
//!   file of one repeated 16-byte tag), and the whole view equals the model
//!   either before or after the one system call each storm thread had in
//!   flight (a half-copied file, a rename seen half done, a deleted lower
//!   file showing through all fail this);
//! * what was fsync'ed before the kill is there (or a later version);
//! * files in the upper and the index hold only whole versions;
//! * the lowers are byte-for-byte unchanged;
//! * `unionfs check` of the unmounted union, between the kill and the
//!   remount, finds nothing but leftovers in `WORK/tmp` and stray whiteouts
//!   in (and below) a directory a rename just made opaque, and after each
//!   round's clean unmount nothing but those strays, which `check --repair`
//!   removes.
//!
//! Every few kills the upper is thrown away (so that big lower files are
//! copied up again), alternating the write format (overlay, oci) and the
//! upper's file system (tmpfs, the test dir's disk).
//!
//! Knobs (environment): `UNIONFS_CRASH_KILLS` (default 100),
//! `UNIONFS_CRASH_SEED`, `UNIONFS_CRASH_MAX_DELAY_MS` (default 50),
//! `UNIONFS_CRASH_KEEP_DIR` (copy the layers of a failing round there),
//! `UNIONFS_CRASH_LOG` (the daemon's RUST_LOG; its log is kept with the layers).
//! `scripts/crash_soak.sh [N]` runs many more kills.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Knobs
// ---------------------------------------------------------------------------

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// The process umask (from /proc, no unsafe): the kernel applies it to the
/// modes of new files and dirs before the daemon sees them.
fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .unwrap_or(0o022)
}

// ---------------------------------------------------------------------------
// Versions: every file content is one 16-byte tag repeated
// ---------------------------------------------------------------------------

const UNIT: usize = 16;

/// The repeated unit of a version: 15 hex digits and a newline.
fn unit(token: u64) -> [u8; UNIT] {
    let s = format!("{:015x}\n", token & 0x0fff_ffff_ffff_ffff);
    let mut u = [0u8; UNIT];
    u.copy_from_slice(s.as_bytes());
    u
}

/// The content of version `token` at `size` bytes. A prefix of a version is
/// the same version at a smaller size.
fn content(token: u64, size: u64) -> Vec<u8> {
    let u = unit(token);
    (0..size as usize).map(|i| u[i % UNIT]).collect()
}

/// What a file holds: nothing, a whole version, or something else.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Content {
    Empty,
    Version(u64),
    Garbage(String),
}

fn classify(bytes: &[u8]) -> Content {
    if bytes.is_empty() {
        return Content::Empty;
    }
    let token = if bytes.len() >= UNIT && bytes[UNIT - 1] == b'\n' {
        std::str::from_utf8(&bytes[..UNIT - 1])
            .ok()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
    } else {
        None
    };
    let Some(token) = token else {
        return Content::Garbage(format!(
            "{} bytes starting {:?}: no version tag",
            bytes.len(),
            show(&bytes[..bytes.len().min(UNIT)])
        ));
    };
    let u = unit(token);
    match bytes
        .chunks(UNIT)
        .position(|c| c != &u[..c.len()])
        .map(|i| i * UNIT)
    {
        None => Content::Version(token),
        Some(off) => {
            let zeros = bytes[off..].iter().all(|&b| b == 0);
            Content::Garbage(format!(
                "{} bytes of version {token:x} up to offset {off}, then {:?}{}",
                bytes.len(),
                show(&bytes[off..(off + UNIT).min(bytes.len())]),
                if zeros {
                    " and only zeros to the end (a copy cut short?)"
                } else {
                    ""
                }
            ))
        }
    }
}

fn describe(c: &Content, size: u64) -> String {
    match c {
        Content::Empty => "empty".to_string(),
        Content::Version(t) => format!("version {t:x} ({size} bytes)"),
        Content::Garbage(g) => format!("NO VERSION: {g}"),
    }
}

// ---------------------------------------------------------------------------
// The model of one storm thread's subtree
// ---------------------------------------------------------------------------

/// A file object (an inode: hard links share it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Data {
    token: u64,
    size: u64,
    mode: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32 },
    File { node: u64 },
}

/// The merged view as it must be: paths relative to the mount root.
#[derive(Clone, Debug, Default)]
struct Model {
    entries: BTreeMap<String, Entry>,
    nodes: BTreeMap<u64, Data>,
    next_node: u64,
}

/// One system call of the storm that changes the view (or `Same`, which
/// must not change it: copy-up triggers, fsync, close...).
#[derive(Clone, Debug)]
enum Step {
    Create {
        path: String,
        mode: u32,
    },
    /// Writes a version into a fresh (empty) file: a kill mid-call may leave
    /// any prefix of it.
    Write {
        path: String,
        token: u64,
        size: u64,
    },
    /// Overwrites a file of at most one page with a version of its size, in
    /// one pwrite at offset 0.
    Overwrite {
        path: String,
        token: u64,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Rename {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Link {
        from: String,
        to: String,
    },
    // Read through Debug, in failure messages.
    #[allow(dead_code)]
    Same {
        what: String,
        path: String,
    },
}

/// Between the calls of a history printed several to a line.
const HISTORY_SEP: &str = " ;; ";

/// A history as printed in a failure: several calls to a line, so that a
/// long one survives a CI log viewer that keeps only the first and last
/// lines of an output; `replay_history` reads it back as it is.
fn packed(history: &[String]) -> String {
    history
        .chunks(8)
        .map(|c| c.join(HISTORY_SEP))
        .collect::<Vec<_>>()
        .join("\n      ")
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

fn under(path: &str, dir: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

impl Model {
    fn add_file(&mut self, path: &str, data: Data) -> u64 {
        let node = self.next_node;
        self.next_node += 1;
        self.nodes.insert(node, data);
        self.entries.insert(path.to_string(), Entry::File { node });
        node
    }

    fn file(&self, path: &str) -> Option<Data> {
        match self.entries.get(path) {
            Some(Entry::File { node }) => self.nodes.get(node).copied(),
            _ => None,
        }
    }

    fn node_of(&self, path: &str) -> Option<u64> {
        match self.entries.get(path) {
            Some(Entry::File { node }) => Some(*node),
            _ => None,
        }
    }

    fn is_dir(&self, path: &str) -> bool {
        matches!(self.entries.get(path), Some(Entry::Dir { .. }))
    }

    fn is_empty_dir(&self, path: &str) -> bool {
        self.is_dir(path) && !self.entries.keys().any(|p| under(p, path))
    }

    fn files_under(&self, root: &str) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(p, e)| under(p, root) && matches!(e, Entry::File { .. }))
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn dirs_under(&self, root: &str, with_root: bool) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(p, e)| {
                (under(p, root) || (with_root && p.as_str() == root))
                    && matches!(e, Entry::Dir { .. })
            })
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn links(&self, node: u64) -> u64 {
        self.entries
            .values()
            .filter(|e| **e == Entry::File { node })
            .count() as u64
    }

    fn apply(&mut self, step: &Step) {
        match step {
            Step::Create { path, mode } => {
                self.add_file(
                    path,
                    Data {
                        token: 0,
                        size: 0,
                        mode: *mode,
                    },
                );
            }
            Step::Write { path, token, size } => {
                let node = self.node_of(path).expect("write to a modelled file");
                let d = self.nodes.get_mut(&node).expect("node");
                d.token = *token;
                d.size = *size;
            }
            Step::Overwrite { path, token } => {
                let node = self.node_of(path).expect("overwrite of a modelled file");
                self.nodes.get_mut(&node).expect("node").token = *token;
            }
            Step::Chmod { path, mode } => match self.entries.get_mut(path) {
                Some(Entry::Dir { mode: m }) => *m = *mode,
                Some(Entry::File { node }) => {
                    let node = *node;
                    self.nodes.get_mut(&node).expect("node").mode = *mode;
                }
                None => panic!("chmod of unmodelled {path}"),
            },
            Step::Rename { from, to } => {
                let src = *self.entries.get(from).expect("rename source");
                if let (Entry::File { node: a }, Some(Entry::File { node: b })) =
                    (src, self.entries.get(to))
                {
                    if a == *b {
                        return; // two names of one file: rename(2) does nothing
                    }
                }
                self.entries.remove(to);
                if let Entry::Dir { .. } = src {
                    let moved: Vec<(String, Entry)> = self
                        .entries
                        .iter()
                        .filter(|(p, _)| under(p, from))
                        .map(|(p, e)| (p.clone(), *e))
                        .collect();
                    for (p, e) in moved {
                        self.entries.remove(&p);
                        self.entries.insert(format!("{to}{}", &p[from.len()..]), e);
                    }
                }
                self.entries.remove(from);
                self.entries.insert(to.clone(), src);
            }
            Step::Unlink { path } | Step::Rmdir { path } => {
                self.entries.remove(path);
            }
            Step::Mkdir { path, mode } => {
                self.entries
                    .insert(path.clone(), Entry::Dir { mode: *mode });
            }
            Step::Link { from, to } => {
                let e = *self.entries.get(from).expect("link source");
                self.entries.insert(to.clone(), e);
            }
            Step::Same { .. } => {}
        }
    }
}

// ---------------------------------------------------------------------------
// What the mount shows
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Obs {
    Dir {
        mode: u32,
    },
    File {
        content: Content,
        size: u64,
        mode: u32,
        ino: u64,
        nlink: u64,
    },
    // Read through Debug, in failure messages.
    #[allow(dead_code)]
    Other(String),
}

/// Walks `mnt/root` through the mount. Problems that no model can excuse
/// (a `.wh.` name or a whiteout listed, a listed name that cannot be
/// stat'ed, an unreadable file) go to `problems`.
fn observe(mnt: &Path, root: &str, problems: &mut Vec<String>) -> BTreeMap<String, Obs> {
    let mut out = BTreeMap::new();
    match fs::symlink_metadata(mnt.join(root)) {
        Ok(m) if m.is_dir() => {
            out.insert(
                root.to_string(),
                Obs::Dir {
                    mode: m.mode() & 0o7777,
                },
            );
        }
        Ok(m) => {
            problems.push(format!("{root}: not a directory ({:?})", m.file_type()));
            return out;
        }
        Err(e) => {
            problems.push(format!("{root}: lstat through the mount: {e}"));
            return out;
        }
    }
    let mut todo = vec![root.to_string()];
    while let Some(dir) = todo.pop() {
        let rd = match fs::read_dir(mnt.join(&dir)) {
            Ok(rd) => rd,
            Err(e) => {
                problems.push(format!("{dir}: readdir: {e}"));
                continue;
            }
        };
        for ent in rd {
            let ent = match ent {
                Ok(e) => e,
                Err(e) => {
                    problems.push(format!("{dir}: readdir: {e}"));
                    break;
                }
            };
            let name = ent.file_name();
            let name = name.to_string_lossy().into_owned();
            let rel = format!("{dir}/{name}");
            if name.starts_with(".wh.") {
                problems.push(format!("{rel}: a .wh. name is listed in the merged view"));
                continue;
            }
            let md = match fs::symlink_metadata(mnt.join(&rel)) {
                Ok(m) => m,
                Err(e) => {
                    problems.push(format!(
                        "{rel}: listed by readdir but lstat fails ({e}): whited out and present?"
                    ));
                    continue;
                }
            };
            let ft = md.file_type();
            let mode = md.mode() & 0o7777;
            if ft.is_dir() {
                out.insert(rel.clone(), Obs::Dir { mode });
                todo.push(rel);
            } else if ft.is_file() {
                match fs::read(mnt.join(&rel)) {
                    Ok(bytes) => {
                        out.insert(
                            rel,
                            Obs::File {
                                content: classify(&bytes),
                                size: bytes.len() as u64,
                                mode,
                                ino: md.ino(),
                                nlink: md.nlink(),
                            },
                        );
                    }
                    Err(e) => problems.push(format!("{rel}: read: {e}")),
                }
            } else {
                use std::os::unix::fs::FileTypeExt;
                if ft.is_char_device() && md.rdev() == 0 {
                    problems.push(format!("{rel}: a whiteout (char 0/0) is listed"));
                }
                out.insert(rel, Obs::Other(format!("{ft:?}")));
            }
        }
    }
    out
}

/// Differences between the model (under `root`) and what the mount shows.
/// `prefix_ok` names the file whose in-flight write may have been cut short.
fn diff_model(
    model: &Model,
    root: &str,
    obs: &BTreeMap<String, Obs>,
    prefix_ok: Option<&str>,
) -> Vec<String> {
    let mut d = Vec::new();
    let mut inos: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for (p, e) in model
        .entries
        .iter()
        .filter(|(p, _)| p.as_str() == root || under(p, root))
    {
        let Some(o) = obs.get(p) else {
            d.push(format!("{p}: missing (model: {e:?})"));
            continue;
        };
        match (e, o) {
            (Entry::Dir { mode }, Obs::Dir { mode: m }) => {
                if mode != m {
                    d.push(format!("{p}: dir mode {m:o}, expected {mode:o}"));
                }
            }
            (
                Entry::File { node },
                Obs::File {
                    content,
                    size,
                    mode,
                    ino,
                    nlink,
                },
            ) => {
                let want = model.nodes[node];
                let is_version = match content {
                    Content::Empty => true,
                    Content::Version(t) => *t == want.token,
                    Content::Garbage(_) => false,
                };
                let ok = if prefix_ok == Some(p.as_str()) {
                    is_version && *size <= want.size
                } else {
                    is_version && *size == want.size
                };
                if !ok {
                    d.push(format!(
                        "{p}: content is {}, expected version {:x} ({} bytes{})",
                        describe(content, *size),
                        want.token,
                        want.size,
                        if prefix_ok == Some(p.as_str()) {
                            " or a prefix"
                        } else {
                            ""
                        }
                    ));
                }
                if *mode != want.mode {
                    d.push(format!("{p}: mode {mode:o}, expected {:o}", want.mode));
                }
                let links = model.links(*node);
                if *nlink != links {
                    d.push(format!(
                        "{p}: nlink {nlink}, expected {links} (names of this file in the model)"
                    ));
                }
                inos.entry(*node).or_default().insert(*ino);
            }
            (e, o) => d.push(format!("{p}: shows {o:?}, expected {e:?}")),
        }
    }
    for (node, set) in inos {
        if set.len() > 1 {
            let names: Vec<&String> = model
                .entries
                .iter()
                .filter(|(_, e)| **e == Entry::File { node })
                .map(|(p, _)| p)
                .collect();
            d.push(format!(
                "hard links {names:?} show different inode numbers {set:?}"
            ));
        }
    }
    for (p, o) in obs {
        if !model.entries.contains_key(p) {
            let what = match o {
                Obs::File { content, size, .. } => describe(content, *size),
                other => format!("{other:?}"),
            };
            d.push(format!("{p}: unexpected entry ({what})"));
        }
    }
    d
}

// ---------------------------------------------------------------------------
// The daemon, in the foreground, as our child
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Storm threads
// ---------------------------------------------------------------------------

const FILE_NAMES: [&str; 8] = ["f0", "f1", "f2", "f3", "f4", "t0", "t1", "t2"];
const DIR_NAMES: [&str; 3] = ["d0", "d1", "d2"];
const MAX_DEPTH: usize = 4;
const BIG: u64 = 1 << 20;

/// The daemon's SIGKILL ended the storm (or something failed before it).
struct Stop;

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    ops: u64,
    steps: u64,
    big_touches: u64,
    dir_renames: u64,
    fsyncs: u64,
}

/// One storm thread: it owns the subtree `root` of the merged view and a
/// model of it, kept across kills.
struct Worker {
    id: u64,
    root: String,
    rng: Rng,
    model: Model,
    /// Names whose current content was fsync'ed (file, or dir after rename).
    durable: BTreeMap<String, (u64, u64)>,
    counter: u64,
    umask: u32,
    inflight: Option<Step>,
    failures: Vec<String>,
    stats: Stats,
    /// Calls completed since the round's upper was fresh (for failure
    /// reports: the sequence that led there, to replay by hand).
    history: Vec<String>,
    /// The mount point, to report what it shows when a call fails.
    mnt: PathBuf,
}

impl Step {
    /// The merged paths the step acts on.
    fn paths(&self) -> Vec<&str> {
        match self {
            Step::Rename { from, to } | Step::Link { from, to } => vec![from, to],
            Step::Create { path, .. }
            | Step::Write { path, .. }
            | Step::Overwrite { path, .. }
            | Step::Chmod { path, .. }
            | Step::Unlink { path }
            | Step::Mkdir { path, .. }
            | Step::Rmdir { path }
            | Step::Same { path, .. } => vec![path],
        }
    }
}

/// What the mount shows for each path `step` acts on and for their parent
/// dirs: the kernel's view (type, inode, link count) or the error, to tell
/// a daemon's refusal from a stale cache in a failure report.
fn shown_now(mnt: &Path, step: &Step) -> String {
    let mut paths = step.paths();
    let parents: Vec<&str> = paths
        .iter()
        .filter_map(|p| p.rsplit_once('/').map(|(d, _)| d))
        .collect();
    paths.extend(parents);
    paths
        .iter()
        .map(|p| match fs::symlink_metadata(mnt.join(p)) {
            Ok(m) => format!("{p}: {:o} ino {} nlink {}", m.mode(), m.ino(), m.nlink()),
            Err(e) => format!("{p}: {e}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn depth(path: &str) -> usize {
    path.matches('/').count()
}

impl Worker {
    fn token(&mut self) -> u64 {
        self.counter += 1;
        (2 << 56) | (self.id << 48) | self.counter
    }

    fn size(&mut self) -> u64 {
        match self.rng.below(100) {
            0..=69 => self.rng.range(16, 8191),
            70..=94 => self.rng.range(8192, (256 << 10) - 1),
            _ => self.rng.range(BIG, 2 * BIG - 1),
        }
    }

    /// Runs `f` as the model step `step`: applied to the model when it
    /// returns, left in flight when it fails (the daemon was killed).
    fn step<T>(
        &mut self,
        killed: &AtomicBool,
        step: Step,
        f: impl FnOnce() -> io::Result<T>,
    ) -> Result<T, Stop> {
        self.inflight = Some(step);
        match f() {
            Ok(v) => {
                let s = self.inflight.take().expect("in flight");
                self.model.apply(&s);
                self.history.push(format!("{s:?}"));
                let m = &self.model;
                self.durable
                    .retain(|p, (t, sz)| m.file(p).is_some_and(|d| d.token == *t && d.size == *sz));
                self.stats.steps += 1;
                Ok(v)
            }
            Err(e) => {
                if !killed.load(Ordering::SeqCst) {
                    let step = self.inflight.as_ref().expect("in flight");
                    self.failures.push(format!(
                        "{step:?} failed with the daemon alive: {e}\n    the mount shows now: {}\n    \
                         calls since the upper was fresh \
                         (kills between them marked; {HISTORY_SEP:?} between calls):\n      {}",
                        shown_now(&self.mnt, step),
                        packed(&self.history)
                    ));
                }
                Err(Stop)
            }
        }
    }

    fn mark_durable(&mut self, path: &str) {
        if let Some(d) = self.model.file(path) {
            self.durable.insert(path.to_string(), (d.token, d.size));
        }
    }

    fn random_file(&mut self, prefer_big: bool) -> Option<String> {
        let files = self.model.files_under(&self.root);
        if prefer_big && self.rng.percent(60) {
            let big: Vec<String> = files
                .iter()
                .filter(|p| self.model.file(p).is_some_and(|d| d.size >= BIG))
                .cloned()
                .collect();
            if let Some(p) = self.rng.try_pick(&big) {
                return Some(p.clone());
            }
        }
        self.rng.try_pick(&files).cloned()
    }

    fn random_dir(&mut self) -> String {
        let dirs = self.model.dirs_under(&self.root, true);
        self.rng
            .try_pick(&dirs)
            .cloned()
            .unwrap_or_else(|| self.root.clone())
    }

    /// A name from `pool` that does not exist in `dir` (None if all do).
    fn new_name(&mut self, dir: &str, pool: &[&str]) -> Option<String> {
        let free: Vec<String> = pool
            .iter()
            .map(|n| format!("{dir}/{n}"))
            .filter(|p| !self.model.entries.contains_key(p))
            .collect();
        self.rng.try_pick(&free).cloned()
    }

    /// Runs operations until the daemon dies under it.
    fn storm(&mut self, mnt: &Path, killed: &AtomicBool) {
        self.inflight = None;
        while !killed.load(Ordering::SeqCst) {
            if self.one_op(mnt, killed).is_err() {
                return;
            }
            self.stats.ops += 1;
        }
    }

    fn one_op(&mut self, mnt: &Path, k: &AtomicBool) -> Result<(), Stop> {
        let at = |p: &str| mnt.join(p);
        match self.rng.below(100) {
            // Copy-up triggers that keep the content (big files preferred).
            0..=21 => {
                let Some(path) = self.random_file(true) else {
                    return Ok(());
                };
                let d = self.model.file(&path).expect("file");
                if d.size >= BIG {
                    self.stats.big_touches += 1;
                }
                let p = at(&path);
                match self.rng.below(5) {
                    0 => {
                        let mode = if d.mode == 0o600 { 0o644 } else { 0o600 };
                        self.step(k, Step::Chmod { path, mode }, || {
                            fs::set_permissions(&p, fs::Permissions::from_mode(mode))
                        })?;
                    }
                    1 => {
                        let what = "open O_RDWR".to_string();
                        let _f = self.step(k, Step::Same { what, path }, || {
                            fs::OpenOptions::new().read(true).write(true).open(&p)
                        })?;
                    }
                    2 => {
                        let what = "open O_WRONLY".to_string();
                        let f = self.step(
                            k,
                            Step::Same {
                                what,
                                path: path.clone(),
                            },
                            || fs::OpenOptions::new().write(true).open(&p),
                        )?;
                        let same = content(d.token, d.size.min(4096));
                        let what = "pwrite of the same bytes".to_string();
                        self.step(k, Step::Same { what, path }, || f.write_all_at(&same, 0))?;
                    }
                    3 => {
                        let v = format!("{:x}", self.counter);
                        let what = "setxattr user.crash".to_string();
                        self.step(k, Step::Same { what, path }, || {
                            sys::lsetxattr(&p, b"user.crash", v.as_bytes())
                        })?;
                    }
                    _ => {
                        let what = "utimes".to_string();
                        self.step(k, Step::Same { what, path }, || {
                            sys::utimens_nofollow(&p, None)
                        })?;
                    }
                }
            }
            // Whole-file replacement: temporary, write, fsync?, rename over.
            22..=41 => {
                let target = if self.rng.percent(60) {
                    self.random_file(false)
                } else {
                    let dir = self.random_dir();
                    self.new_name(&dir, &FILE_NAMES[..5])
                };
                let Some(target) = target else {
                    return Ok(());
                };
                let dir = parent_of(&target).to_string();
                let Some(tmp) = self.new_name(&dir, &FILE_NAMES[5..]) else {
                    return Ok(());
                };
                let (token, size) = (self.token(), self.size());
                let mode = 0o644 & !self.umask;
                let tp = at(&tmp);
                let f = self.step(
                    k,
                    Step::Create {
                        path: tmp.clone(),
                        mode,
                    },
                    || {
                        fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o644)
                            .open(&tp)
                    },
                )?;
                let data = content(token, size);
                let step = Step::Write {
                    path: tmp.clone(),
                    token,
                    size,
                };
                self.step(k, step, || (&f).write_all(&data))?;
                let sync = self.rng.percent(50);
                if sync {
                    let what = "fsync".to_string();
                    let path = tmp.clone();
                    self.step(k, Step::Same { what, path }, || f.sync_all())?;
                    self.mark_durable(&tmp);
                    self.stats.fsyncs += 1;
                }
                drop(f);
                let step = Step::Rename {
                    from: tmp,
                    to: target.clone(),
                };
                let tgt = at(&target);
                self.step(k, step, || fs::rename(&tp, &tgt))?;
                if sync {
                    let what = "fsync of the dir".to_string();
                    let dp = at(&dir);
                    self.step(k, Step::Same { what, path: dir }, || {
                        fs::File::open(&dp)?.sync_all()
                    })?;
                    self.mark_durable(&target);
                }
            }
            // A new file written in place.
            42..=49 => {
                let dir = self.random_dir();
                let Some(path) = self.new_name(&dir, &FILE_NAMES[..5]) else {
                    return Ok(());
                };
                let (token, size) = (self.token(), self.size());
                let mode = 0o644 & !self.umask;
                let p = at(&path);
                let create = Step::Create {
                    path: path.clone(),
                    mode,
                };
                let f = self.step(k, create, || {
                    fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o644)
                        .open(&p)
                })?;
                let data = content(token, size);
                let step = Step::Write {
                    path: path.clone(),
                    token,
                    size,
                };
                self.step(k, step, || (&f).write_all(&data))?;
                if self.rng.percent(50) {
                    let what = "fsync".to_string();
                    self.step(
                        k,
                        Step::Same {
                            what,
                            path: path.clone(),
                        },
                        || f.sync_all(),
                    )?;
                    self.mark_durable(&path);
                    self.stats.fsyncs += 1;
                }
            }
            // In-place overwrite of a small file (copy-up first if lower).
            50..=59 => {
                let small: Vec<String> = self
                    .model
                    .files_under(&self.root)
                    .into_iter()
                    .filter(|p| {
                        self.model
                            .file(p)
                            .is_some_and(|d| (UNIT as u64..=4096).contains(&d.size))
                    })
                    .collect();
                let Some(path) = self.rng.try_pick(&small).cloned() else {
                    return Ok(());
                };
                let d = self.model.file(&path).expect("file");
                let token = self.token();
                let p = at(&path);
                let what = "open O_WRONLY".to_string();
                let f = self.step(
                    k,
                    Step::Same {
                        what,
                        path: path.clone(),
                    },
                    || fs::OpenOptions::new().write(true).open(&p),
                )?;
                let data = content(token, d.size);
                let step = Step::Overwrite {
                    path: path.clone(),
                    token,
                };
                self.step(k, step, || f.write_all_at(&data, 0))?;
                if self.rng.percent(50) {
                    let what = "fsync".to_string();
                    self.step(
                        k,
                        Step::Same {
                            what,
                            path: path.clone(),
                        },
                        || f.sync_all(),
                    )?;
                    self.mark_durable(&path);
                    self.stats.fsyncs += 1;
                }
            }
            // Rename a file, to a new name or over another file.
            60..=71 => {
                let Some(from) = self.random_file(true) else {
                    return Ok(());
                };
                let to = if self.rng.percent(40) {
                    self.random_file(false)
                } else {
                    let dir = self.random_dir();
                    self.new_name(&dir, &FILE_NAMES[..5])
                };
                let Some(to) = to.filter(|t| *t != from) else {
                    return Ok(());
                };
                if self.model.file(&from).is_some_and(|d| d.size >= BIG) {
                    self.stats.big_touches += 1;
                }
                let (fp, tp) = (at(&from), at(&to));
                self.step(k, Step::Rename { from, to }, || fs::rename(&fp, &tp))?;
            }
            // Rename a directory (merged lower dirs too: copied up whole).
            72..=78 => {
                let dirs = self.model.dirs_under(&self.root, false);
                let Some(from) = self.rng.try_pick(&dirs).cloned() else {
                    return Ok(());
                };
                let height = self
                    .model
                    .entries
                    .keys()
                    .filter(|p| under(p, &from))
                    .map(|p| depth(p) - depth(&from))
                    .max()
                    .unwrap_or(0);
                let targets: Vec<String> = self
                    .model
                    .dirs_under(&self.root, true)
                    .into_iter()
                    .filter(|d| *d != from && !under(d, &from))
                    .collect();
                let Some(tdir) = self.rng.try_pick(&targets).cloned() else {
                    return Ok(());
                };
                let to = if self.rng.percent(30) {
                    // Over an empty directory (not an ancestor of `from`).
                    let empty: Vec<String> = self
                        .model
                        .dirs_under(&self.root, false)
                        .into_iter()
                        .filter(|d| {
                            *d != from
                                && !under(&from, d)
                                && self.model.is_empty_dir(d)
                                && parent_of(d) != from
                        })
                        .collect();
                    self.rng.try_pick(&empty).cloned()
                } else {
                    self.new_name(&tdir, &DIR_NAMES)
                };
                let Some(to) = to else {
                    return Ok(());
                };
                if depth(&to) - depth(&self.root) + height > MAX_DEPTH {
                    return Ok(());
                }
                self.stats.dir_renames += 1;
                let (fp, tp) = (at(&from), at(&to));
                self.step(k, Step::Rename { from, to }, || fs::rename(&fp, &tp))?;
            }
            // Unlink.
            79..=86 => {
                let Some(path) = self.random_file(false) else {
                    return Ok(());
                };
                let p = at(&path);
                self.step(k, Step::Unlink { path }, || fs::remove_file(&p))?;
            }
            // rmdir of an empty dir.
            87..=89 => {
                let empty: Vec<String> = self
                    .model
                    .dirs_under(&self.root, false)
                    .into_iter()
                    .filter(|d| self.model.is_empty_dir(d))
                    .collect();
                let Some(path) = self.rng.try_pick(&empty).cloned() else {
                    return Ok(());
                };
                let p = at(&path);
                self.step(k, Step::Rmdir { path }, || fs::remove_dir(&p))?;
            }
            // mkdir.
            90..=94 => {
                let dir = self.random_dir();
                if depth(&dir) - depth(&self.root) >= MAX_DEPTH {
                    return Ok(());
                }
                let Some(path) = self.new_name(&dir, &DIR_NAMES) else {
                    return Ok(());
                };
                let mode = 0o755 & !self.umask;
                let p = at(&path);
                self.step(k, Step::Mkdir { path, mode }, || fs::create_dir(&p))?;
            }
            // Hard link.
            _ => {
                let Some(from) = self.random_file(true) else {
                    return Ok(());
                };
                let dir = self.random_dir();
                let Some(to) = self.new_name(&dir, &FILE_NAMES[..5]) else {
                    return Ok(());
                };
                let (fp, tp) = (at(&from), at(&to));
                self.step(k, Step::Link { from, to }, || fs::hard_link(&fp, &tp))?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------

/// Builds the two lowers and the model of their merge.
struct Fixture {
    top: Layer,
    bottom: Layer,
    model: Model,
    n: u64,
}

impl Fixture {
    /// A file of a fresh lower version in the top (`top`) or bottom layer;
    /// in the model too when `shown`.
    fn file(&mut self, top: bool, shown: bool, w: u64, path: &str, size: u64, mode: u32) {
        self.n += 1;
        let token = (1 << 56) | (w << 48) | self.n;
        let p = format!("w{w}/{path}");
        let layer = if top { &mut self.top } else { &mut self.bottom };
        *layer = std::mem::replace(layer, Layer::new(""))
            .file(&p, content(token, size))
            .mode(mode);
        if shown {
            self.model.add_file(&p, Data { token, size, mode });
        }
    }
}

/// Two lowers; per storm thread a subtree `wN` with big files (2-6 MiB) in
/// merged dirs, a lower hard-link pair, an opaque dir, a whited-out file and
/// dir, an empty dir. Returns the layers (top first) and the model of their
/// merge.
fn fixture(workers: u64, rng: &mut Rng) -> (Layer, Layer, Model) {
    let mut fx = Fixture {
        top: Layer::new("l1"),
        bottom: Layer::new("l2"),
        model: Model::default(),
        n: 0,
    };
    for w in 0..workers {
        let r = format!("w{w}");
        for d in ["", "/a", "/a/sub", "/b", "/c", "/o", "/e"] {
            fx.model
                .entries
                .insert(format!("{r}{d}"), Entry::Dir { mode: 0o755 });
        }
        let big: Vec<u64> = (0..4).map(|_| rng.range(2 * BIG, 6 * BIG - 1)).collect();
        let s: Vec<u64> = (0..10).map(|_| rng.range(UNIT as u64, 4096)).collect();
        // The bottom layer.
        fx.file(false, true, w, "a/big0", big[0], 0o644);
        fx.file(false, true, w, "a/s1", s[1], 0o640);
        fx.file(false, true, w, "a/sub/big1", big[1], 0o644);
        fx.file(false, true, w, "a/sub/s2", s[2], 0o644);
        fx.file(false, true, w, "b/s3", s[3], 0o644);
        fx.file(false, true, w, "b/h0", s[4], 0o644);
        fx.bottom = std::mem::replace(&mut fx.bottom, Layer::new(""))
            .link(format!("{r}/a/h1"), format!("{r}/b/h0"));
        let h0 = fx.model.node_of(&format!("{r}/b/h0")).expect("h0");
        fx.model
            .entries
            .insert(format!("{r}/a/h1"), Entry::File { node: h0 });
        // Hidden by the top layer: a file it overrides, one in a dir it
        // makes opaque, a file and a dir it whites out.
        fx.file(false, false, w, "a/s0", s[0], 0o644);
        fx.file(false, false, w, "o/x0", s[5], 0o644);
        fx.file(false, false, w, "g", s[6], 0o644);
        fx.file(false, false, w, "gd/z", s[7], 0o644);
        fx.bottom = std::mem::replace(&mut fx.bottom, Layer::new("")).dir(format!("{r}/e"));
        // The top layer.
        fx.file(true, true, w, "a/big2", big[2], 0o644);
        fx.file(true, true, w, "a/s0", s[0], 0o644);
        fx.file(true, true, w, "a/s4", s[8], 0o644);
        fx.file(true, true, w, "a/sub/s6", s[9], 0o644);
        fx.file(true, true, w, "c/big3", big[3], 0o644);
        fx.file(true, true, w, "c/s5", s[5], 0o644);
        fx.top = std::mem::replace(&mut fx.top, Layer::new("")).opaque(format!("{r}/o"));
        fx.file(true, true, w, "o/y0", s[6], 0o644);
        fx.top = std::mem::replace(&mut fx.top, Layer::new(""))
            .whiteout(format!("{r}/g"))
            .whiteout(format!("{r}/gd"));
    }
    (fx.top, fx.bottom, fx.model)
}

/// Regular files in `dir` (recursively, not through the mount) that hold
/// something other than a whole version or nothing.
fn scan_layer_dir(dir: &Path, what: &str, problems: &mut Vec<String>) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for ent in rd.flatten() {
        let p = ent.path();
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        if md.is_dir() {
            scan_layer_dir(&p, what, problems);
        } else if md.is_file() && md.len() > 0 {
            if let Ok(bytes) = fs::read(&p) {
                if let Content::Garbage(g) = classify(&bytes) {
                    problems.push(format!("{what} {}: {g}", p.display()));
                }
            }
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    let _ = fs::create_dir_all(to);
    let out = run(
        Command::new("cp").arg("-a").arg(from).arg(to),
        Duration::from_secs(60),
    );
    if !out.success() {
        eprintln!("crash tests: keeping {} failed: {out}", from.display());
    }
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

struct Round<'a> {
    lowers: Vec<&'a Path>,
    upper: PathBuf,
    work: PathBuf,
    format: &'static str,
    fs_name: &'static str,
}

/// What a kill may leave that `unionfs check` reports, beyond `WORK/tmp`:
/// whiteouts in a directory a rename just made opaque and in the
/// directories below it (which then merge with no lower), which the rename
/// drops right after (`drop_stray_whiteouts`). No mount removes them (they
/// hide nothing and do not show); `check --repair` does.
fn is_stray_whiteout(line: &str) -> bool {
    line.contains(": orphan whiteout (")
        && (line.contains("its directory is opaque")
            || line.contains("no lower directory merges with its directory"))
}

/// `unionfs check [--repair]` of the round's unmounted union.
fn run_check(round: &Round, repair: bool) -> CmdOutput {
    let mut args: Vec<std::ffi::OsString> = vec!["check".into()];
    if repair {
        args.push("--repair".into());
    }
    args.push("-l".into());
    args.push(lowers_arg(&round.lowers));
    for (flag, dir) in [("-u", &round.upper), ("-w", &round.work)] {
        args.push(flag.into());
        args.push(dir.into());
    }
    unionfs(&args)
}

/// `unionfs check` of the round's unmounted union. Right after a kill
/// (`crashed`) leftovers in `WORK/tmp` are expected (the next mount removes
/// them, a `.place` link after putting its count back), and stray
/// whiteouts in opaque dirs; after a clean unmount only those strays, and
/// only if a kill of the round left some (`strays`), which `--repair` then
/// must remove. Err(failure); Ok(true) when strays were found.
fn check_union(round: &Round, crashed: bool, strays: bool) -> Result<bool, String> {
    let out = run_check(round, false);
    let fail = |out: &CmdOutput, unexpected: &[&str]| {
        format!(
            "unionfs check of the {} upper ({}) {}:\n  {}\n{out}",
            round.format,
            round.fs_name,
            if crashed {
                "right after a kill"
            } else {
                "after a clean unmount"
            },
            unexpected.join("\n  ")
        )
    };
    // Problem lines say where first; the summary line does not.
    let problems: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("upper") || l.starts_with("lower") || l.starts_with("work"))
        .collect();
    let found_strays = problems.iter().any(|l| is_stray_whiteout(l));
    let unexpected: Vec<&str> = problems
        .iter()
        .copied()
        .filter(|l| !(crashed && l.starts_with("work tmp/")))
        .filter(|l| !((crashed || strays) && is_stray_whiteout(l)))
        .collect();
    let status_ok = match out.code() {
        Some(0) => problems.is_empty(),
        Some(1) => !problems.is_empty(),
        _ => false,
    };
    if !status_ok || !unexpected.is_empty() {
        return Err(fail(&out, &unexpected));
    }
    if !crashed && found_strays {
        let fixed = run_check(round, true);
        let again = run_check(round, false);
        if fixed.code() != Some(0) || again.code() != Some(0) {
            return Err(format!(
                "{}\n--repair of the stray whiteouts: {fixed}\nthen: {again}",
                fail(&out, &["(stray whiteouts in opaque dirs)"])
            ));
        }
    }
    Ok(found_strays)
}

/// Checks the mount after a (re)mount against each worker's model before
/// and after its in-flight step; on success, moves each model to the state
/// found. Returns the failures.
fn check_round(
    mnt: &Path,
    round: &Round,
    workers: &mut [Worker],
    inflight: &[Option<Step>],
    outcomes: &mut BTreeMap<&'static str, u64>,
) -> Vec<String> {
    let mut f = Vec::new();
    // Stale temporaries are gone once the mount is live.
    match fs::read_dir(round.work.join("tmp")) {
        Ok(rd) => {
            let left: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if !left.is_empty() {
                f.push(format!(
                    "work/tmp is not empty after the mount: {left:?} (stale temporaries must be removed at mount)"
                ));
            }
        }
        Err(e) => f.push(format!("work/tmp: {e}")),
    }
    scan_layer_dir(&round.upper, "upper file", &mut f);
    scan_layer_dir(&round.work.join("index"), "index entry", &mut f);
    for (w, step) in workers.iter_mut().zip(inflight) {
        let mut problems = Vec::new();
        let obs = observe(mnt, &w.root, &mut problems);
        f.extend(problems);
        let before = diff_model(&w.model, &w.root, &obs, None);
        let mut after_model = None;
        let verdict = if before.is_empty() {
            Ok("before")
        } else if let Some(s) = step {
            let mut m = w.model.clone();
            m.apply(s);
            let prefix = match s {
                Step::Write { path, .. } => Some(path.as_str()),
                _ => None,
            };
            let after = diff_model(&m, &w.root, &obs, prefix);
            if after.is_empty() {
                // A write cut short: the model takes the size found.
                if let Some(p) = prefix {
                    if let (Some(Obs::File { size, .. }), Some(node)) = (obs.get(p), m.node_of(p)) {
                        m.nodes.get_mut(&node).expect("node").size = *size;
                    }
                }
                after_model = Some(m);
                Ok("after")
            } else {
                Err((before, after))
            }
        } else {
            Err((before, Vec::new()))
        };
        match verdict {
            Ok(which) => {
                *outcomes.entry(which).or_default() += 1;
                if let Some(s) = step {
                    let mut s = s.clone();
                    if let (Step::Write { path, size, .. }, Some(m)) = (&mut s, &after_model) {
                        *size = m.file(path).map_or(*size, |d| d.size);
                    }
                    w.history.push(if which == "after" {
                        format!("--- found applied: {s:?}")
                    } else {
                        "--- found not applied".to_string()
                    });
                }
                // Fsync'ed content of names the in-flight step did not touch.
                let m = after_model.as_ref().unwrap_or(&w.model);
                for (p, (t, sz)) in &w.durable {
                    let still = m.file(p).is_some_and(|d| d.token == *t && d.size == *sz);
                    if !still {
                        continue; // the in-flight step replaced it
                    }
                    match obs.get(p) {
                        Some(Obs::File { content, size, .. })
                            if *content == Content::Version(*t) && size == sz => {}
                        other => f.push(format!(
                            "{p}: fsync'ed version {t:x} ({sz} bytes) is lost: shows {other:?}"
                        )),
                    }
                }
                if let Some(m) = after_model {
                    w.model = m;
                }
                let m = &w.model;
                w.durable
                    .retain(|p, (t, sz)| m.file(p).is_some_and(|d| d.token == *t && d.size == *sz));
            }
            Err((before, after)) => {
                let cut = |v: &[String]| {
                    let mut v: Vec<String> = v.iter().take(15).cloned().collect();
                    if v.len() == 15 {
                        v.push("...".into());
                    }
                    v.join("\n      ")
                };
                f.push(format!(
                    "{}: the view is neither the state before nor after the call in flight ({:?}):\n    \
                     vs before:\n      {}\n    vs after:\n      {}\n    \
                     calls since the upper was fresh ({HISTORY_SEP:?} between them):\n      {}",
                    w.root,
                    step,
                    cut(&before),
                    if step.is_some() {
                        cut(&after)
                    } else {
                        "(nothing was in flight)".into()
                    },
                    packed(&w.history)
                ));
            }
        }
    }
    if !f.is_empty() {
        f.insert(
            0,
            format!(
                "[format {}, upper on {}, upper {}]",
                round.format,
                round.fs_name,
                round.upper.display()
            ),
        );
    }
    f
}

#[test]
fn kill9_during_storms_then_remount() {
    if !require_mount_env() {
        return;
    }
    let kills = env_u64("UNIONFS_CRASH_KILLS", 100);
    let seed = env_u64("UNIONFS_CRASH_SEED", 0x00c0_ffee);
    let max_delay = env_u64("UNIONFS_CRASH_MAX_DELAY_MS", 50);
    let keep = std::env::var_os("UNIONFS_CRASH_KEEP_DIR").map(PathBuf::from);
    const WORKERS: u64 = 2;
    const EPOCH: u64 = 10;
    eprintln!("crash: {kills} kills, seed {seed:#x}, delays 0..{max_delay} ms");
    let started = Instant::now();

    let t = TestDir::new("crash");
    // Lowers and one of the two upper places on a tmpfs; the other upper
    // place is the test dir's own disk.
    let fsdir = t.join("fs");
    let _tmpfs = mount_tmpfs_sized(&fsdir, "1g");
    let mut rng = Rng::new(seed);
    let (l1, l2, initial) = fixture(WORKERS, &mut rng);
    let layers = render_stack(&[l1.clone(), l2.clone()], &fsdir, Format::Kernel);
    // The model of the lowers agrees with the harness's reference merge.
    {
        let oracle = merged_view(&[&l1, &l2]);
        let mine: BTreeSet<String> = initial.entries.keys().cloned().collect();
        let theirs: BTreeSet<String> = oracle
            .keys()
            .filter(|k| !k.is_empty())
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert_eq!(mine, theirs, "test bug: fixture model != reference merge");
    }
    let lowers: Vec<&Path> = as_paths(&layers);
    let sums = checksum_layers(&lowers);
    let mnt = t.mkdir("mnt");
    let log = t.join("daemon.log");
    let um = umask();

    let mut workers: Vec<Worker> = (0..WORKERS)
        .map(|id| Worker {
            id,
            root: format!("w{id}"),
            rng: Rng::new(seed.wrapping_add(1 + id).wrapping_mul(0x9e37_79b9)),
            model: initial.clone(),
            durable: BTreeMap::new(),
            counter: 0,
            umask: um,
            inflight: None,
            failures: Vec::new(),
            stats: Stats::default(),
            history: Vec::new(),
            mnt: mnt.clone(),
        })
        .collect();

    let mut failures: Vec<String> = Vec::new();
    let mut outcomes: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut done = 0u64;
    let mut epoch = 0u64;
    let mut failed_rounds = 0u64;
    while done < kills && failed_rounds < 30 {
        let format = ["overlay", "oci"][(epoch % 2) as usize];
        let (base, fs_name) = if (epoch / 2) % 2 == 0 {
            (fsdir.clone(), "tmpfs")
        } else {
            (t.path().to_path_buf(), "disk")
        };
        let round = Round {
            lowers: lowers.clone(),
            upper: base.join(format!("upper{epoch}")),
            work: base.join(format!("work{epoch}")),
            format,
            fs_name,
        };
        fs::create_dir_all(&round.upper).expect("mkdir upper");
        for w in workers.iter_mut() {
            w.model = initial.clone();
            w.durable.clear();
            w.history.clear();
        }
        let start = |what: &str| {
            Daemon::start(
                &round.lowers,
                &round.upper,
                &round.work,
                &mnt,
                &["--format", round.format],
                &log,
                "UNIONFS_CRASH_LOG",
            )
            .unwrap_or_else(|e| panic!("{what}: {e}"))
        };
        let mut daemon = start("first mount of the round");
        // A kill of this round left stray whiteouts (`is_stray_whiteout`).
        let mut strays = false;
        let none: Vec<Option<Step>> = vec![None; WORKERS as usize];
        let first = {
            let _d = daemon.deadline(Duration::from_secs(60), "checking the first mount");
            check_round(&mnt, &round, &mut workers, &none, &mut outcomes)
        };
        let mut round_failed = !first.is_empty();
        failures.extend(first);
        let mut in_round = 0;
        while !round_failed && in_round < EPOCH && done < kills {
            // Storm, then SIGKILL after a random delay.
            let killed = AtomicBool::new(false);
            let delay = Duration::from_micros(rng.below(max_delay * 1000 + 1));
            thread::scope(|s| {
                let handles: Vec<_> = workers
                    .iter_mut()
                    .map(|w| {
                        let (mnt, killed) = (&mnt, &killed);
                        s.spawn(move || w.storm(mnt, killed))
                    })
                    .collect();
                thread::sleep(delay);
                killed.store(true, Ordering::SeqCst);
                daemon.kill();
                for h in handles {
                    h.join().expect("storm thread panicked");
                }
            });
            // Only once every storm thread has stopped: after `umount -l`
            // a path would reach the empty directory under the mount.
            daemon.detach();
            done += 1;
            in_round += 1;
            let inflight: Vec<Option<Step>> = workers.iter().map(|w| w.inflight.clone()).collect();
            for w in workers.iter_mut() {
                w.history
                    .push(format!("--- kill {done}, in flight: {:?}", w.inflight));
            }
            for w in workers.iter_mut() {
                for e in w.failures.drain(..) {
                    failures.push(format!("[kill {done}] {}: {e}", w.root));
                    round_failed = true;
                }
            }
            // Between the kill and the remount the union is unmounted and
            // unlocked: everything but what `WORK/tmp` holds must be sound.
            match check_union(&round, true, strays) {
                Ok(found) => strays |= found,
                Err(p) => {
                    round_failed = true;
                    failures.push(format!("[kill {done}] before the remount: {p}"));
                }
            }
            daemon = start(&format!("remount after kill {done}"));
            let d = daemon.deadline(Duration::from_secs(60), "checking a remount");
            let found = check_round(&mnt, &round, &mut workers, &inflight, &mut outcomes);
            if d.fired() {
                failures.push(format!(
                    "kill {done}: checking the remounted view took over 60 s (daemon hung?)"
                ));
            }
            drop(d);
            if !daemon.alive() {
                failures.push(format!(
                    "kill {done}: the daemon died while its view was checked; log:\n{}",
                    log_tail(&log)
                ));
            }
            if !found.is_empty() {
                round_failed = true;
                failures.push(format!(
                    "after kill {done} (delay {delay:?}):\n  {}",
                    found.join("\n  ")
                ));
            }
        }
        if round_failed {
            failed_rounds += 1;
            if let Some(k) = &keep {
                let dest = k.join(format!("round{epoch}"));
                copy_tree(&fsdir.join("l1"), &dest);
                copy_tree(&fsdir.join("l2"), &dest);
                copy_tree(&round.upper, &dest);
                copy_tree(&round.work, &dest);
                let _ = fs::copy(&log, dest.join("daemon.log"));
                eprintln!(
                    "crash: layers of failed round {epoch} kept in {}",
                    dest.display()
                );
            }
        }
        match daemon.unmount() {
            Err(e) => failures.push(format!("end of round {epoch}: {e}")),
            // Unmounted cleanly after the remounts' cleanups: no problem.
            Ok(()) => {
                if let Err(p) = check_union(&round, false, strays) {
                    failures.push(format!("end of round {epoch}: {p}"));
                }
            }
        }
        sums.assert_unchanged();
        let _ = fs::remove_dir_all(&round.upper);
        let _ = fs::remove_dir_all(&round.work);
        epoch += 1;
    }
    let mut total = Stats::default();
    for w in &workers {
        total.ops += w.stats.ops;
        total.steps += w.stats.steps;
        total.big_touches += w.stats.big_touches;
        total.dir_renames += w.stats.dir_renames;
        total.fsyncs += w.stats.fsyncs;
    }
    eprintln!(
        "crash: {done} kills in {epoch} rounds, {:.1} s; {} ops ({} calls) completed, \
         {} big-file copy-up triggers, {} dir renames, {} fsyncs; views matched {:?}",
        started.elapsed().as_secs_f64(),
        total.ops,
        total.steps,
        total.big_touches,
        total.dir_renames,
        total.fsyncs,
        outcomes
    );
    sums.assert_unchanged();
    // The first reports in full (with the calls that led there, to replay
    // with `replay_history`), the others by their first line.
    let shown: Vec<String> = failures
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if i < 6 {
                f.clone()
            } else {
                format!("{} [...]", f.lines().next().unwrap_or(""))
            }
        })
        .collect();
    assert_no_failures(
        &format!(
            "crash safety (seed {seed:#x}, {done} kills, {failed_rounds} of {epoch} rounds failed)"
        ),
        &shown,
    );
    assert!(done >= kills, "only {done} of {kills} kills were done");
}

// ---------------------------------------------------------------------------
// Replaying a history (to turn a failure into a deterministic reproduction)
// ---------------------------------------------------------------------------

/// Parses one history line (a `Step` in its Debug form).
fn parse_step(line: &str) -> Option<Step> {
    let (kind, rest) = line.split_once(" {")?;
    let mut f: BTreeMap<&str, String> = BTreeMap::new();
    let mut s = rest.trim().trim_end_matches('}').trim();
    while !s.is_empty() {
        let (k, v) = s.split_once(": ")?;
        let k = k.trim().trim_start_matches(',').trim();
        let (val, tail) = if let Some(v) = v.strip_prefix('"') {
            let end = v.find('"')?;
            (v[..end].to_string(), &v[end + 1..])
        } else {
            let end = v.find(',').unwrap_or(v.len());
            (v[..end].trim().to_string(), &v[end..])
        };
        f.insert(k, val);
        s = tail.trim_start_matches(',').trim();
    }
    let st = |k: &str| f.get(k).cloned();
    let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
    Some(match kind.trim() {
        "Create" => Step::Create {
            path: st("path")?,
            mode: num("mode")? as u32,
        },
        "Write" => Step::Write {
            path: st("path")?,
            token: num("token")?,
            size: num("size")?,
        },
        "Overwrite" => Step::Overwrite {
            path: st("path")?,
            token: num("token")?,
        },
        "Chmod" => Step::Chmod {
            path: st("path")?,
            mode: num("mode")? as u32,
        },
        "Rename" => Step::Rename {
            from: st("from")?,
            to: st("to")?,
        },
        "Unlink" => Step::Unlink { path: st("path")? },
        "Mkdir" => Step::Mkdir {
            path: st("path")?,
            mode: num("mode")? as u32,
        },
        "Rmdir" => Step::Rmdir { path: st("path")? },
        "Link" => Step::Link {
            from: st("from")?,
            to: st("to")?,
        },
        "Same" => Step::Same {
            what: st("what")?,
            path: st("path")?,
        },
        _ => return None,
    })
}

/// Does `step` through the mount, as the storm does it (one call each,
/// plus the opens it needs).
fn exec_step(mnt: &Path, model: &Model, step: &Step) -> io::Result<()> {
    let at = |p: &str| mnt.join(p);
    let open_w = |p: &str| fs::OpenOptions::new().write(true).open(at(p));
    match step {
        Step::Create { path, .. } => fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(at(path))
            .map(drop),
        Step::Write { path, token, size } => open_w(path)?.write_all(&content(*token, *size)),
        Step::Overwrite { path, token } => {
            let size = model.file(path).map_or(0, |d| d.size);
            open_w(path)?.write_all_at(&content(*token, size), 0)
        }
        Step::Chmod { path, mode } => {
            fs::set_permissions(at(path), fs::Permissions::from_mode(*mode))
        }
        Step::Rename { from, to } => fs::rename(at(from), at(to)),
        Step::Unlink { path } => fs::remove_file(at(path)),
        Step::Mkdir { path, .. } => fs::create_dir(at(path)),
        Step::Rmdir { path } => fs::remove_dir(at(path)),
        Step::Link { from, to } => fs::hard_link(at(from), at(to)),
        Step::Same { what, path } => match what.as_str() {
            "open O_RDWR" => fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(at(path))
                .map(drop),
            "open O_WRONLY" => open_w(path).map(drop),
            "pwrite of the same bytes" => {
                let d = model.file(path).map_or((0, 0), |d| (d.token, d.size));
                open_w(path)?.write_all_at(&content(d.0, d.1.min(4096)), 0)
            }
            "setxattr user.crash" => sys::lsetxattr(&at(path), b"user.crash", b"1"),
            "utimes" => sys::utimens_nofollow(&at(path), None),
            "fsync" | "fsync of the dir" => fs::File::open(at(path))?.sync_all(),
            other => Err(io::Error::other(format!("unknown call {other:?}"))),
        },
    }
}

/// Whether `step` can be done on `model` as it stands (for reduction:
/// dropping calls may leave later ones pointing at nothing).
fn valid(model: &Model, step: &Step) -> bool {
    let has_parent = |p: &str| model.is_dir(parent_of(p));
    let absent = |p: &str| !model.entries.contains_key(p) && has_parent(p);
    match step {
        Step::Create { path, .. } | Step::Mkdir { path, .. } => absent(path),
        Step::Write { path, .. } | Step::Overwrite { path, .. } | Step::Unlink { path } => {
            model.file(path).is_some()
        }
        Step::Chmod { path, .. } => model.entries.contains_key(path),
        Step::Same { what, path } => {
            if what == "fsync of the dir" {
                model.is_dir(path)
            } else {
                model.file(path).is_some()
            }
        }
        Step::Rmdir { path } => model.is_empty_dir(path),
        Step::Link { from, to } => model.file(from).is_some() && absent(to),
        Step::Rename { from, to } => {
            let Some(src) = model.entries.get(from) else {
                return false;
            };
            if from == to || under(to, from) || !has_parent(to) {
                return false;
            }
            match (src, model.entries.get(to)) {
                (_, None) => true,
                (Entry::File { .. }, Some(Entry::File { .. })) => true,
                (Entry::Dir { .. }, Some(Entry::Dir { .. })) => {
                    model.is_empty_dir(to) && !under(from, to)
                }
                _ => false,
            }
        }
    }
}

/// A history item: a call, or a remount (a kill mark).
#[derive(Clone, Debug)]
enum Item {
    Call(Step),
    Remount,
}

struct Replayer {
    // Dropped in this order: the tmpfs before the dir it sits in.
    _tmpfs: Mount,
    _t: TestDir,
    lowers: Vec<PathBuf>,
    base: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
    format: &'static str,
    kill: bool,
    initial: Model,
    root: String,
    runs: u64,
}

impl Replayer {
    /// Replays `items` on a fresh upper; Err(first divergence) or
    /// Err("invalid") when a call does not apply to the model.
    fn run(&mut self, items: &[Item], check_each: bool, verbose: bool) -> Result<(), String> {
        self.runs += 1;
        let upper = self.base.join(format!("upper{}", self.runs));
        let work = self.base.join(format!("work{}", self.runs));
        fs::create_dir_all(&upper).expect("mkdir upper");
        let lowers: Vec<&Path> = as_paths(&self.lowers);
        let start = || {
            Daemon::start(
                &lowers,
                &upper,
                &work,
                &self.mnt,
                &["--format", self.format],
                &self.log,
                "UNIONFS_CRASH_LOG",
            )
        };
        let mut daemon = start()?;
        let mut model = self.initial.clone();
        let check = |model: &Model, what: &str| -> Result<(), String> {
            let mut problems = Vec::new();
            let obs = observe(&self.mnt, &self.root, &mut problems);
            problems.extend(diff_model(model, &self.root, &obs, None));
            if problems.is_empty() {
                Ok(())
            } else {
                Err(format!("diverges {what}:\n  {}", problems.join("\n  ")))
            }
        };
        let mut result = Ok(());
        let mut n = 0;
        for item in items {
            match item {
                Item::Remount => {
                    if self.kill {
                        daemon.kill();
                        daemon.detach();
                    } else {
                        daemon.unmount()?;
                    }
                    daemon = start()?;
                    if verbose {
                        eprintln!("     [remount]");
                    }
                    result = check(&model, "after a remount");
                }
                Item::Call(step) => {
                    n += 1;
                    if !valid(&model, step) {
                        result = Err("invalid".into());
                        break;
                    }
                    if verbose {
                        eprintln!("{n:4} {step:?}");
                    }
                    if let Err(e) = exec_step(&self.mnt, &model, step) {
                        result = Err(format!("call {n} ({step:?}) failed: {e}"));
                        break;
                    }
                    model.apply(step);
                    if check_each {
                        result = check(&model, &format!("after call {n} ({step:?})"));
                    }
                }
            }
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = check(&model, "at the end");
        }
        if result.is_ok() {
            daemon.unmount()?;
            daemon = start()?;
            result = check(&model, "after a final remount");
        }
        daemon.unmount()?;
        let _ = fs::remove_dir_all(&upper);
        let _ = fs::remove_dir_all(&work);
        result
    }
}

/// Replays a history printed by a failure of the crash test on a fresh
/// upper, checking the view against the model (after every call unless
/// `UNIONFS_CRASH_REPLAY_CHECK=end`), and stops at the first divergence.
///
/// * `UNIONFS_CRASH_REPLAY=FILE`: history lines of one storm thread, as
///   printed (several calls to a line, separated by `HISTORY_SEP`);
/// * `UNIONFS_CRASH_SEED`: as in the failing run (the fixture depends on it);
/// * `UNIONFS_CRASH_REPLAY_FORMAT=overlay|oci`, `UNIONFS_CRASH_REPLAY_DISK=1`
///   (upper on disk, not tmpfs), `UNIONFS_CRASH_REPLAY_KILL=1` (kill -9 at
///   kill marks instead of a clean remount);
/// * `UNIONFS_CRASH_REPLAY_REDUCE=1`: when it fails, shrinks the history to
///   a minimal one that still fails (ddmin) and prints it.
#[test]
#[ignore = "a debugging tool: replays UNIONFS_CRASH_REPLAY"]
fn replay_history() {
    let Some(file) = std::env::var_os("UNIONFS_CRASH_REPLAY") else {
        eprintln!("set UNIONFS_CRASH_REPLAY=FILE");
        return;
    };
    let seed = env_u64("UNIONFS_CRASH_SEED", 0x00c0_ffee);
    let format = std::env::var("UNIONFS_CRASH_REPLAY_FORMAT").unwrap_or("overlay".into());
    let disk = std::env::var_os("UNIONFS_CRASH_REPLAY_DISK").is_some();
    let check_each = std::env::var("UNIONFS_CRASH_REPLAY_CHECK").as_deref() != Ok("end");
    let reduce = std::env::var_os("UNIONFS_CRASH_REPLAY_REDUCE").is_some();
    let text = fs::read_to_string(&file).expect("read the history");
    let mut items = Vec::new();
    let calls = text.lines().flat_map(|l| l.split(HISTORY_SEP));
    for line in calls.map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with("--- kill") {
            items.push(Item::Remount);
        } else if line.starts_with("--- found not applied") {
        } else {
            let line = line.strip_prefix("--- found applied: ").unwrap_or(line);
            let step = parse_step(line).unwrap_or_else(|| panic!("cannot parse {line:?}"));
            items.push(Item::Call(step));
        }
    }
    let root = items
        .iter()
        .find_map(|i| match i {
            Item::Call(
                Step::Same { path, .. } | Step::Create { path, .. } | Step::Unlink { path },
            ) => path.split('/').next().map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| "w0".into());

    let t = TestDir::new("crash-replay");
    let fsdir = t.join("fs");
    let tmpfs = mount_tmpfs_sized(&fsdir, "1g");
    let mut rng = Rng::new(seed);
    let (l1, l2, initial) = fixture(2, &mut rng);
    let lowers = render_stack(&[l1, l2], &fsdir, Format::Kernel);
    let base = if disk {
        t.path().to_path_buf()
    } else {
        fsdir.clone()
    };
    let mnt = t.mkdir("mnt");
    let log = t.join("daemon.log");
    let mut r = Replayer {
        _tmpfs: tmpfs,
        _t: t,
        lowers,
        base,
        mnt,
        log,
        format: if format == "oci" { "oci" } else { "overlay" },
        kill: std::env::var_os("UNIONFS_CRASH_REPLAY_KILL").is_some(),
        initial,
        root,
        runs: 0,
    };
    let first = r.run(&items, check_each, true);
    let Err(e) = first else {
        eprintln!("replay: {} items, no divergence", items.len());
        return;
    };
    if !reduce {
        panic!("replay {e}");
    }
    eprintln!("replay {e}\nreducing {} items...", items.len());
    // ddmin: drop chunks while the replay still diverges (not "invalid").
    let fails = |r: &mut Replayer, c: &[Item]| match r.run(c, check_each, false) {
        Err(e) => e != "invalid",
        Ok(()) => false,
    };
    let mut cur = items;
    let mut n = 2usize;
    while cur.len() >= 2 {
        let chunk = cur.len().div_ceil(n);
        let mut smaller = None;
        for i in 0..n {
            let (lo, hi) = (i * chunk, ((i + 1) * chunk).min(cur.len()));
            if lo >= hi {
                continue;
            }
            let mut cand = cur[..lo].to_vec();
            cand.extend_from_slice(&cur[hi..]);
            if fails(&mut r, &cand) {
                smaller = Some(cand);
                break;
            }
        }
        if let Some(c) = smaller {
            cur = c;
            n = (n - 1).max(2);
        } else {
            if n >= cur.len() {
                break;
            }
            n = (n * 2).min(cur.len());
        }
        eprintln!("  {} items ({} runs)", cur.len(), r.runs);
    }
    let last = r.run(&cur, check_each, true);
    let listing: Vec<String> = cur
        .iter()
        .map(|i| match i {
            Item::Call(s) => format!("{s:?}"),
            Item::Remount => "--- kill (remount)".into(),
        })
        .collect();
    panic!(
        "minimal history ({} items, {} runs):\n  {}\n{:?}",
        cur.len(),
        r.runs,
        listing.join("\n  "),
        last
    );
}
