//! Differential conformance: unionfs against kernel overlayfs.
//!
//! unionfs promises kernel-overlayfs semantics (docs/design.md, "where it is
//! silent, do what kernel overlayfs does"). This test checks that promise on
//! random inputs:
//!
//! 1. A seeded generator ([`model`]) builds a random stack of 1-5 lowers:
//!    overlapping names across layers, nested dirs, files (some with
//!    tens of KiB), symlinks, fifos, hard links, whiteouts and opaque dirs
//!    placed where they hide something, random modes, owners, user xattrs
//!    and mtimes.
//! 2. The stack is rendered twice with the shared harness: in kernel format
//!    for `mount -t overlay` (with [`runner::KERNEL_OPTS`]), and in one of
//!    the formats of docs/design.md §2 (mostly a per-entry mix of all of them) for
//!    unionfs, which writes its upper in `--format overlay` or `oci`.
//! 3. A random sequence of operations ([`ops`]), on paths taken from the
//!    current merged tree plus fresh names, runs on both mounts. After each
//!    one the outcomes (success value or errno) and the merged trees are
//!    compared ([`tree::compare`]): names, types, modes, owners, sizes,
//!    contents, symlink targets, user xattrs, link counts, hard-link groups
//!    (paths sharing an st_ino), and mtimes where one side shows a time set
//!    explicitly (layers and utimes use dates before 2020-09-13; the clock is
//!    later). Inode numbers, atimes, ctimes, dir sizes are not compared.
//! 4. At the end: the lowers are unchanged (every byte, xattr, time); the
//!    offline tools' reader (`unionfs ls`, `which`, ...) sees in the
//!    unmounted layers what the mount showed; a
//!    remount of unionfs shows the same view and inode numbers; an upper
//!    written in overlay format shows the same view under kernel overlayfs.
//!
//! Where the two may legitimately differ is listed in ONE place,
//! [`EXPECTED_DIFFERENCES`], with the reason for each. Open unionfs bugs
//! found by this test are in [`KNOWN_BUGS`]: they fail the test unless a run
//! skips them explicitly.
//!
//! A failing sequence is shrunk (delta debugging over operations and layer
//! entries, each candidate replayed on fresh mounts) and reported with its
//! seed and a self-contained repro script (bash + python3, as root).
//!
//! Knobs (environment): `UNIONFS_DIFF_SEQUENCES` (default 300),
//! `UNIONFS_DIFF_OPS` (operations per sequence, default 50),
//! `UNIONFS_DIFF_SEED` (base seed, decimal or 0x-hex; default fixed),
//! `UNIONFS_DIFF_SEQ_SEED` (run just this one sequence seed),
//! `UNIONFS_DIFF_THREADS` (default: cores, at most 4), `UNIONFS_DIFF_SHRINK`
//! (seconds of shrinking per failure shrunk, default 120; 0: off),
//! `UNIONFS_DIFF_MAX_SHRINKS` (failures shrunk, one per kind first, default
//! 12), `UNIONFS_DIFF_REPRO_DIR` (where repro scripts are written; default
//! `target/tmp/differential-repros`), `UNIONFS_DIFF_SKIP_KNOWN_BUGS` (ids of
//! [`KNOWN_BUGS`] to tolerate, or `all`). To keep a bug that no matcher
//! isolates out of a run: `UNIONFS_DIFF_SKIP_OPS` (comma-separated operation
//! kinds never generated, e.g. `link,rename-exchange`) and
//! `UNIONFS_DIFF_NO_LOWER_LINKS=1` (no hard links in the lowers); both
//! change what a seed generates. `UNIONFS_DIFF_METACOPY=1` runs both sides
//! with metadata-only copy-up (kernel `metacopy=on`, unionfs
//! `-o metacopy=on`). `scripts/differential.sh [N] [SEED]` runs
//! long campaigns.

mod common;

#[path = "differential/model.rs"]
mod model;
#[path = "differential/ops.rs"]
mod ops;
#[path = "differential/runner.rs"]
mod runner;
#[path = "differential/tree.rs"]
mod tree;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use common::rng::{mix, Rng};
use common::{mount_tmpfs_sized, require_kernel_overlay, TestDir};
use model::StackSpec;
use ops::{Op, Outcome};
use runner::{Divergence, Source};
use tree::Diff;

// ---------------------------------------------------------------------------
// Expected differences: the ONE place where unionfs may legitimately differ
// from kernel overlayfs in this test.

/// Where a difference shows.
pub enum Site<'a> {
    /// Outcomes of one operation differ (kernel overlayfs vs unionfs).
    Outcome {
        op: &'a Op,
        kernel: &'a Outcome,
        unionfs: &'a Outcome,
    },
    /// One field of one path differs between two views. `check`: `view`
    /// (kernel overlayfs vs unionfs after an operation), `invariant`
    /// (unionfs alone), `offline` (unionfs mounted vs the offline tools'
    /// view of its unmounted layers), `remount` / `remount-ino` (unionfs
    /// before vs after a remount), `kernel-reads-upper` (unionfs vs kernel overlayfs mounting
    /// unionfs's upper). `op` is the operation just run, if any.
    Tree {
        check: &'static str,
        op: Option<&'a Op>,
        diff: &'a Diff,
    },
}

pub struct Expected {
    pub id: &'static str,
    /// Why the difference is legitimate (or, in [`KNOWN_BUGS`], what the
    /// bug is).
    pub reason: &'static str,
    pub applies: fn(&Site) -> bool,
}

/// Differences that are not bugs. An outcome difference listed here ends the
/// sequence (the two mounts are no longer comparable); a tree difference is
/// ignored. Kept empty where a mount option makes the kernel comparable:
///
/// * Renaming a lower or merged dir: kernel overlayfs answers EXDEV unless
///   `redirect_dir=on`, while unionfs copies the tree up and succeeds
///   (docs/design.md §3 Rename). The kernel mount uses `redirect_dir=on`, so both
///   succeed and show the same view.
/// * Hard links: without `index=on` the kernel breaks lower hard links on
///   copy-up, while unionfs keeps them (docs/design.md §3 Hard links). The kernel
///   mount uses `index=on`.
pub const EXPECTED_DIFFERENCES: &[Expected] = &[
    Expected {
        id: "dir-nlink-merged",
        reason: "Both report nlink 1 for a merged dir (upper and lower, or several \
                 lowers) and the real count otherwise, but they do not always agree on \
                 whether a dir has been copied up: a renamed dir stays merged with its \
                 lowers in kernel overlayfs (a redirect) while unionfs copies the tree up \
                 and makes it opaque (docs/design.md §3 Rename); and failing operations copy up \
                 as a side effect in different orders (kernel ovl_rename copies the \
                 source up before the upper rename fails with ENOTEMPTY; unionfs copies \
                 the parents up before checking). Dir link counts are compared only \
                 where neither side shows the merged 1.",
        applies: |s| {
            matches!(s, Site::Tree { check: "view", diff, .. }
                if diff.field == "dir nlink" && (diff.left == "1" || diff.right == "1"))
        },
    },
    Expected {
        id: "index-link-seen-by-kernel",
        reason: "unionfs keeps one more name of each hard-linked upper file in its \
                 index (WORK/index, docs/design.md §3 Hard links), as kernel overlayfs does \
                 with index=on; kernel overlayfs mounting the upper with another \
                 work dir counts that name: nlink one higher.",
        applies: |s| {
            matches!(s, Site::Tree { check: "kernel-reads-upper", diff, .. }
                if diff.field == "nlink"
                    && diff.left.parse::<u64>().ok().map(|n| n + 1) == diff.right.parse().ok())
        },
    },
    Expected {
        id: "kernel-lists-whiteout-in-unmerged-dir",
        reason: "Kernel overlayfs lists a whiteout that sits in a dir it does not \
                 merge (nothing below to hide: e.g. the dir is only in one layer) and \
                 then fails lstat on it with ENOENT; unionfs never shows a whiteout \
                 (docs/design.md §2). Common in real image layers.",
        applies: |s| {
            matches!(s, Site::Tree { check: "view", diff, .. }
                if diff.field == "presence" && diff.right == "absent"
                    && diff.left.starts_with("unstatable (lstat: ENOENT"))
        },
    },
];

/// unionfs bugs found by this test and still open when it was written. NOT
/// skipped by default: the test fails on them until they are fixed. While
/// working on one, skip the others with `UNIONFS_DIFF_SKIP_KNOWN_BUGS=id,id`
/// (or `all`). A bug no matcher can isolate can be kept out of a run with
/// the generation knobs instead (`UNIONFS_DIFF_SKIP_OPS`,
/// `UNIONFS_DIFF_NO_LOWER_LINKS`). Remove an entry once its bug is fixed.
pub const KNOWN_BUGS: &[Expected] = &[];

/// Ids of [`KNOWN_BUGS`] skipped in this run (`UNIONFS_DIFF_SKIP_KNOWN_BUGS`).
static SKIPPED_BUGS: OnceLock<Vec<&'static str>> = OnceLock::new();

fn skipped_bugs() -> &'static [&'static str] {
    SKIPPED_BUGS.get_or_init(|| {
        let v = std::env::var("UNIONFS_DIFF_SKIP_KNOWN_BUGS").unwrap_or_default();
        let want: Vec<&str> = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        for w in &want {
            assert!(
                *w == "all" || KNOWN_BUGS.iter().any(|b| b.id == *w),
                "UNIONFS_DIFF_SKIP_KNOWN_BUGS: unknown id {w:?}"
            );
        }
        KNOWN_BUGS
            .iter()
            .filter(|b| want.contains(&"all") || want.contains(&b.id))
            .map(|b| b.id)
            .collect()
    })
}

/// The id of the table entry that excuses a difference, if any.
pub fn expected_for(site: &Site) -> Option<&'static str> {
    let skipped = skipped_bugs();
    EXPECTED_DIFFERENCES
        .iter()
        .chain(KNOWN_BUGS.iter().filter(|b| skipped.contains(&b.id)))
        .find(|e| (e.applies)(site))
        .map(|e| e.id)
}

// ---------------------------------------------------------------------------
// Configuration

struct Config {
    sequences: usize,
    ops: usize,
    seed: u64,
    only: Option<u64>,
    threads: usize,
    shrink_secs: u64,
    max_shrinks: usize,
    repro_dir: PathBuf,
    skip_ops: Vec<String>,
    lower_links: bool,
}

fn env_num(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let r = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    };
    Some(r.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

impl Config {
    fn from_env() -> Config {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Config {
            sequences: env_num("UNIONFS_DIFF_SEQUENCES").unwrap_or(300) as usize,
            ops: env_num("UNIONFS_DIFF_OPS").unwrap_or(50) as usize,
            seed: env_num("UNIONFS_DIFF_SEED").unwrap_or(0x0dd_f00d),
            only: env_num("UNIONFS_DIFF_SEQ_SEED"),
            threads: env_num("UNIONFS_DIFF_THREADS").map_or(cores.min(4), |n| n.max(1) as usize),
            shrink_secs: env_num("UNIONFS_DIFF_SHRINK").unwrap_or(120),
            max_shrinks: env_num("UNIONFS_DIFF_MAX_SHRINKS").unwrap_or(12) as usize,
            repro_dir: std::env::var_os("UNIONFS_DIFF_REPRO_DIR").map_or_else(
                || Path::new(env!("CARGO_TARGET_TMPDIR")).join("differential-repros"),
                PathBuf::from,
            ),
            skip_ops: std::env::var("UNIONFS_DIFF_SKIP_OPS")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            lower_links: env_num("UNIONFS_DIFF_NO_LOWER_LINKS").unwrap_or(0) == 0,
        }
    }

    /// Environment settings that change what a seed generates, for the
    /// command line that reruns one sequence.
    fn generation_env(&self) -> String {
        let mut s = format!("UNIONFS_DIFF_OPS={}", self.ops);
        if !self.skip_ops.is_empty() {
            s.push_str(&format!(
                " UNIONFS_DIFF_SKIP_OPS={}",
                self.skip_ops.join(",")
            ));
        }
        if !self.lower_links {
            s.push_str(" UNIONFS_DIFF_NO_LOWER_LINKS=1");
        }
        if runner::metacopy() {
            s.push_str(" UNIONFS_DIFF_METACOPY=1");
        }
        if let Ok(v) = std::env::var("UNIONFS_DIFF_SKIP_KNOWN_BUGS") {
            s.push_str(&format!(" UNIONFS_DIFF_SKIP_KNOWN_BUGS={v}"));
        }
        s
    }

    /// The seed of sequence `i`.
    fn seq_seed(&self, i: usize) -> u64 {
        match self.only {
            Some(s) => s,
            None => mix(self.seed ^ mix(i as u64 + 1)),
        }
    }
}

// ---------------------------------------------------------------------------
// The test

/// A failure found by one sequence.
struct Failure {
    /// Index of the sequence (failures are reported in this order).
    index: usize,
    seq_seed: u64,
    spec: StackSpec,
    ops: Vec<Op>,
    divergence: Divergence,
    /// Filled for the failures picked for shrinking.
    report: Option<String>,
}

#[derive(Default)]
struct Totals {
    sequences: usize,
    ops: usize,
    ended_early: BTreeMap<&'static str, usize>,
    tolerated: BTreeMap<&'static str, usize>,
    /// Per operation kind: (succeeded, failed) on kernel overlayfs.
    outcomes: BTreeMap<&'static str, (usize, usize)>,
    failures: Vec<Failure>,
}

/// Runs `f(i)` for `i in 0..n` on `threads` threads.
fn parallel(threads: usize, n: usize, f: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.min(n.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                f(i);
            });
        }
    });
}

/// Which failures to shrink, at most `max`: first one per kind (an
/// operation's outcome, or the main field of a tree difference), then one
/// per remaining signature.
fn pick_for_shrinking(failures: &[Failure], max: usize) -> Vec<usize> {
    let mut picked: Vec<usize> = Vec::new();
    let mut seen = Vec::new();
    for (i, f) in failures.iter().enumerate() {
        let sig = f.divergence.signature();
        let kind = match f.divergence.class {
            "outcome" => sig,
            _ => sig.split(" after ").next().unwrap_or("").to_string(),
        };
        if !seen.contains(&kind) {
            seen.push(kind);
            picked.push(i);
        }
    }
    let mut sigs: Vec<String> = picked
        .iter()
        .map(|&i| failures[i].divergence.signature())
        .collect();
    for (i, f) in failures.iter().enumerate() {
        let sig = f.divergence.signature();
        if !sigs.contains(&sig) {
            sigs.push(sig);
            picked.push(i);
        }
    }
    picked.truncate(max);
    picked
}

/// The failure's description, shrunk, with a repro script written.
fn shrink_report(cfg: &Config, base: &Path, f: &Failure) -> String {
    let (seq_seed, spec, ops, div) = (f.seq_seed, &f.spec, &f.ops, &f.divergence);
    let mut r = format!(
        "sequence seed {seq_seed:#x} ({} lowers, unionfs lowers {:?}, --format {}): {} at {:?}\n  \
         rerun just this sequence: UNIONFS_DIFF_SEQ_SEED={seq_seed:#x} {} \
         cargo test --test differential -- --nocapture\n",
        spec.layers.len(),
        spec.unionfs_format,
        spec.write_format,
        div.signature(),
        div.step,
        cfg.generation_env(),
    );
    for d in &div.details {
        r.push_str(&format!("    {d}\n"));
    }
    let tag = format!("shrink-{seq_seed:x}");
    let s = runner::shrink(base, &tag, spec, ops, div, cfg.shrink_secs);
    if !s.reproduced {
        r.push_str(&format!(
            "  NOT reproduced by a replay on fresh mounts (flaky?); operations ({}):\n{}\n",
            ops.len(),
            ops::describe(ops)
        ));
        return r;
    }
    r.push_str(&format!(
        "  shrunk in {} replays to {} operation(s) over {} layer entries; it then shows as:\n",
        s.replays,
        s.ops.len(),
        s.spec.entry_count()
    ));
    for d in &s.divergence.details {
        r.push_str(&format!("    {d}\n"));
    }
    r.push_str(&format!(
        "  minimal operations:\n{}\n",
        ops::describe(&s.ops)
    ));
    let title = format!(
        "unionfs differential repro: sequence seed {seq_seed:#x}, {}",
        s.divergence.signature()
    );
    let script = runner::repro_script(base, &tag, &s.spec, &s.ops, &title);
    let _ = std::fs::create_dir_all(&cfg.repro_dir);
    let p = cfg.repro_dir.join(format!("repro-{seq_seed:x}.sh"));
    match std::fs::write(&p, &script) {
        Ok(()) => r.push_str(&format!(
            "  repro script (bash, as root): {}\n",
            p.display()
        )),
        Err(e) => r.push_str(&format!(
            "  (writing {}: {e})\n----8<----\n{script}----8<----\n",
            p.display()
        )),
    }
    r
}

#[test]
fn differential_against_kernel_overlayfs() {
    if !require_kernel_overlay() {
        return;
    }
    let cfg = Config::from_env();
    let n = if cfg.only.is_some() { 1 } else { cfg.sequences };
    let td = TestDir::new("differential");
    // Everything on one tmpfs: fast, and kernel overlayfs accepts it as upper.
    let fs_guard = mount_tmpfs_sized(&td.join("fs"), "1g");
    let base = fs_guard.path().to_path_buf();
    eprintln!(
        "differential: {n} sequence(s) of {} operations, base seed {:#x}, {} thread(s) ({})",
        cfg.ops,
        cfg.seed,
        cfg.threads,
        cfg.generation_env()
    );
    let start = Instant::now();
    let totals = Mutex::new(Totals::default());
    parallel(cfg.threads, n, |i| {
        let seq_seed = cfg.seq_seed(i);
        let mut rng = Rng::new(seq_seed);
        let spec = StackSpec::generate(&mut rng, cfg.lower_links);
        let r = runner::run(
            &base,
            &format!("s{seq_seed:x}"),
            &spec,
            Source::Random {
                rng: &mut rng,
                n: cfg.ops,
                skip: &cfg.skip_ops,
            },
        );
        let mut t = totals.lock().unwrap();
        t.sequences += 1;
        t.ops += r.ops.len();
        if let Some(id) = r.ended_by {
            *t.ended_early.entry(id).or_default() += 1;
        }
        for id in r.tolerated {
            *t.tolerated.entry(id).or_default() += 1;
        }
        for (k, (ok, err)) in r.outcomes {
            let c = t.outcomes.entry(k).or_default();
            c.0 += ok;
            c.1 += err;
        }
        if let Some(d) = r.divergence {
            eprintln!(
                "differential: sequence {seq_seed:#x} diverged: {} (after {} ops)",
                d.signature(),
                r.ops.len()
            );
            t.failures.push(Failure {
                index: i,
                seq_seed,
                spec,
                ops: r.ops,
                divergence: d,
                report: None,
            });
        }
        if t.sequences % 100 == 0 {
            eprintln!(
                "differential: {} sequences, {} operations, {} failure(s), {:.0?}",
                t.sequences,
                t.ops,
                t.failures.len(),
                start.elapsed()
            );
        }
    });
    let mut t = totals.into_inner().unwrap();
    t.failures.sort_by_key(|f| f.index);
    let run_time = start.elapsed();
    eprintln!(
        "differential: {} sequences, {} operations in {:.1?} ({} thread(s)); \
         ended early by an expected difference: {:?}; expected differences tolerated: {:?}",
        t.sequences, t.ops, run_time, cfg.threads, t.ended_early, t.tolerated
    );
    let mix: Vec<String> = t
        .outcomes
        .iter()
        .map(|(k, (ok, err))| format!("{k} {ok}/{}", ok + err))
        .collect();
    eprintln!(
        "differential: operations that succeeded / run, per kind: {}",
        mix.join(", ")
    );
    if !skipped_bugs().is_empty() {
        eprintln!(
            "differential: WARNING: known bugs skipped (UNIONFS_DIFF_SKIP_KNOWN_BUGS): {:?}",
            skipped_bugs()
        );
    }
    if t.failures.is_empty() {
        return;
    }
    // Shrink a few failures (in parallel), then fail with the reports.
    let picked = if cfg.shrink_secs > 0 {
        pick_for_shrinking(&t.failures, cfg.max_shrinks)
    } else {
        Vec::new()
    };
    let reports: Vec<Mutex<Option<String>>> = picked.iter().map(|_| Mutex::new(None)).collect();
    parallel(cfg.threads, picked.len(), |k| {
        let r = shrink_report(&cfg, &base, &t.failures[picked[k]]);
        *reports[k].lock().unwrap() = Some(r);
    });
    for (k, &i) in picked.iter().enumerate() {
        t.failures[i].report = reports[k].lock().unwrap().take();
    }
    eprintln!(
        "differential: shrank {} failure(s) in {:.1?}",
        picked.len(),
        start.elapsed() - run_time
    );
    drop(fs_guard);
    let mut by_sig: BTreeMap<String, Vec<&Failure>> = BTreeMap::new();
    for f in &t.failures {
        by_sig.entry(f.divergence.signature()).or_default().push(f);
    }
    let mut msg = format!(
        "{} of {} sequences diverged from kernel overlayfs ({} kinds):\n",
        t.failures.len(),
        t.sequences,
        by_sig.len()
    );
    for (sig, fs) in &by_sig {
        let seeds: Vec<String> = fs
            .iter()
            .take(8)
            .map(|f| format!("{:#x} (op {})", f.seq_seed, f.ops.len()))
            .collect();
        let more = if fs.len() > 8 {
            format!(" and {} more", fs.len() - 8)
        } else {
            String::new()
        };
        msg.push_str(&format!("  {sig}: seeds {}{more}\n", seeds.join(", ")));
    }
    msg.push_str(&format!(
        "\nshrunk reports ({} of {} kinds; rerun any seed with UNIONFS_DIFF_SEQ_SEED=...):\n",
        picked.len(),
        by_sig.len()
    ));
    for f in &t.failures {
        if let Some(r) = &f.report {
            msg.push_str(r);
            msg.push('\n');
        }
    }
    panic!("{msg}");
}

/// The generator is a pure function of the seed (a seed printed by a failure
/// reproduces it).
#[test]
fn generation_is_deterministic() {
    for seed in 0..200u64 {
        let a = StackSpec::generate(&mut Rng::new(seed), true);
        let b = StackSpec::generate(&mut Rng::new(seed), true);
        assert_eq!(a, b, "seed {seed}");
        assert!(!a.layers.is_empty() && a.layers.len() <= 5);
        // Every layer renders to a consistent DSL (links after targets).
        for l in &a.layers {
            let layer = l.to_layer();
            assert_eq!(layer.entries.len(), l.entries.len());
        }
    }
}

/// The comparison sees every field it promises to compare (a harness that
/// compares nothing would pass everything).
#[test]
fn comparison_sees_each_field() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let td = TestDir::new("differential-compare");
    let make = |name: &str| {
        let root = td.join(name);
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), b"same").unwrap();
        std::fs::hard_link(root.join("d/f"), root.join("h")).unwrap();
        std::fs::write(root.join("g"), b"other").unwrap();
        symlink("d/f", root.join("s")).unwrap();
        common::sys::lsetxattr(&root.join("g"), b"user.k", b"v").unwrap();
        root
    };
    let a = make("a");
    let fresh = |name: &str, change: &dyn Fn(&Path)| {
        let b = make(name);
        change(&b);
        let d = tree::compare(&tree::snap(&a), &tree::snap(&b));
        d.iter().map(|d| d.field).collect::<Vec<_>>()
    };
    assert!(tree::compare(&tree::snap(&a), &tree::snap(&make("same"))).is_empty());
    type Change = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "presence",
            Box::new(|b| std::fs::write(b.join("new"), b"").unwrap()),
        ),
        (
            "content",
            Box::new(|b| std::fs::write(b.join("g"), b"OTHER").unwrap()),
        ),
        (
            "size",
            Box::new(|b| std::fs::write(b.join("g"), b"longer").unwrap()),
        ),
        (
            "mode",
            Box::new(|b| {
                std::fs::set_permissions(b.join("g"), std::fs::Permissions::from_mode(0o600))
                    .unwrap()
            }),
        ),
        (
            "xattrs",
            Box::new(|b| common::sys::lsetxattr(&b.join("g"), b"user.k", b"w").unwrap()),
        ),
        (
            "symlink target",
            Box::new(|b| {
                std::fs::remove_file(b.join("s")).unwrap();
                symlink("g", b.join("s")).unwrap();
            }),
        ),
        (
            "hard links (same st_ino as)",
            Box::new(|b| {
                std::fs::remove_file(b.join("h")).unwrap();
                std::fs::write(b.join("h"), b"same").unwrap();
            }),
        ),
        (
            "mtime",
            Box::new(|b| {
                common::sys::utimens_nofollow(&b.join("g"), Some(((1, 0), (1_000_000_000, 5))))
                    .unwrap()
            }),
        ),
        (
            "type",
            Box::new(|b| {
                std::fs::remove_file(b.join("g")).unwrap();
                std::fs::create_dir(b.join("g")).unwrap();
            }),
        ),
    ];
    for (i, (field, change)) in cases.iter().enumerate() {
        let fields = fresh(&format!("b{i}"), change.as_ref());
        assert!(
            fields.contains(field),
            "changing {field} shows as {fields:?}"
        );
    }
    if common::euid() == 0 {
        let fields = fresh("owner", &|b: &Path| {
            std::os::unix::fs::lchown(b.join("g"), Some(1000), Some(1000)).unwrap()
        });
        assert!(fields.contains(&"owner"), "{fields:?}");
    }
}
