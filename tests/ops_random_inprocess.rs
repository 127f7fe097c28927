//! Random operation sequences run in process against `unionfs::ops::UnionFs`
//! (no FUSE, no mount) and against a reference model, comparing the merged
//! views after every operation.
//!
//! Each sequence starts from a random stack of 1-3 lowers built with the
//! layer DSL (files, dirs, symlinks, whiteouts and opaque dirs over
//! overlapping names) and an empty upper. The model starts from the
//! harness's lowers-only merged view ([`merged_view`]) and applies each
//! operation as a plain tree would: create, mkdir, symlink, write at an
//! offset (copy-up), unlink, rmdir, rename of files and whole dirs. Only
//! requests the kernel's VFS would pass on to the filesystem are made (the
//! VFS itself refuses, say, an unlink of a dir); the one error a union
//! decides on its own, ENOTEMPTY (of a merged dir whose lower entries may be
//! whited out), is expected where the model's dir has entries. After each
//! operation the outcome and the whole merged view (names, types, file
//! contents, symlink targets, file and dir modes) must match; at the end the
//! lowers are unchanged.
//!
//! A failure prints the seed and the operations so far. Knobs:
//! `UNIONFS_INPROC_SEQUENCES` (default 30), `UNIONFS_INPROC_OPS` (default
//! 40), `UNIONFS_INPROC_BASE` (where the seeds start), `UNIONFS_INPROC_SEED`
//! (hex: run that one sequence).

mod common;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use common::rng::mix;
use common::*;
use unionfs::layer::LayerStack;
use unionfs::node::ROOT_INO;
use unionfs::ops::{Caller, NewObject, Options, UnionFs};
use unionfs::whiteout::WriteFormat;

/// Names at every level, so that layers overlap and operations hit lower
/// objects, whiteouts and opaque dirs.
const NAMES: &[&str] = &["a", "b", "c", "d", "e"];
/// Deepest path (in components) a layer entry or a new object gets.
const MAX_DEPTH: usize = 3;

/// One object of a merged view.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Obj {
    File { content: Vec<u8>, mode: u32 },
    Dir { mode: u32 },
    Symlink(Vec<u8>),
    Other(FileType),
}

type View = BTreeMap<Vec<u8>, Obj>;

#[derive(Clone, Debug)]
enum Op {
    Create(Vec<u8>, Vec<u8>),
    Mkdir(Vec<u8>),
    Symlink(Vec<u8>, Vec<u8>),
    Write(Vec<u8>, u64, Vec<u8>),
    Unlink(Vec<u8>),
    Rmdir(Vec<u8>),
    Rename(Vec<u8>, Vec<u8>),
}

type Outcome = Result<(), i32>;

fn depth(p: &[u8]) -> usize {
    if p.is_empty() {
        0
    } else {
        p.iter().filter(|&&c| c == b'/').count() + 1
    }
}

/// Whether `a` is `b` or below it.
fn within(a: &[u8], b: &[u8]) -> bool {
    a == b || (a.len() > b.len() && a.starts_with(b) && a[b.len()] == b'/')
}

// ---------------------------------------------------------------------------
// Random lowers
// ---------------------------------------------------------------------------

/// One random layer: at each level every name is absent, a file, a dir
/// (maybe opaque, filled recursively), a symlink or a whiteout.
fn random_layer(rng: &mut Rng, name: &str) -> Layer {
    fn fill(rng: &mut Rng, mut l: Layer, dir: &[u8], lname: &str) -> Layer {
        for n in NAMES {
            let p = join_rel(dir, n.as_bytes());
            l = match rng.weighted(&[45, 20, 18, 5, 12]) {
                0 => l,
                1 => l.file(&p, tag(lname, &p)),
                2 if depth(&p) < MAX_DEPTH => {
                    let l = if rng.percent(20) {
                        l.opaque(&p)
                    } else {
                        l.dir(&p)
                    };
                    fill(rng, l, &p, lname)
                }
                2 => l.file(&p, tag(lname, &p)),
                3 => l.symlink(&p, *rng.pick(NAMES)),
                _ => l.whiteout(&p),
            };
        }
        l
    }
    fill(rng, Layer::new(name), b"", name)
}

fn model_of(layers: &[Layer]) -> View {
    let refs: Vec<&Layer> = layers.iter().collect();
    merged_view(&refs)
        .into_iter()
        .filter(|(p, _)| !p.is_empty())
        .map(|(p, e)| {
            let o = match e.ftype {
                FileType::File => Obj::File {
                    content: e.content.unwrap_or_default(),
                    mode: e.mode & 0o7777,
                },
                FileType::Dir => Obj::Dir {
                    mode: e.mode & 0o7777,
                },
                FileType::Symlink => Obj::Symlink(e.target.unwrap_or_default()),
                t => Obj::Other(t),
            };
            (p, o)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------

fn has_children(v: &View, dir: &[u8]) -> bool {
    v.keys().any(|k| k.len() > dir.len() && within(k, dir))
}

fn apply_model(v: &mut View, op: &Op) -> Outcome {
    match op {
        Op::Create(p, data) => {
            v.insert(
                p.clone(),
                Obj::File {
                    content: data.clone(),
                    mode: 0o644,
                },
            );
        }
        Op::Mkdir(p) => {
            v.insert(p.clone(), Obj::Dir { mode: 0o755 });
        }
        Op::Symlink(p, t) => {
            v.insert(p.clone(), Obj::Symlink(t.clone()));
        }
        Op::Write(p, off, data) => {
            let Some(Obj::File { content, .. }) = v.get_mut(p) else {
                panic!("model: write to a non-file {}", show(p));
            };
            let end = *off as usize + data.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[*off as usize..end].copy_from_slice(data);
        }
        Op::Unlink(p) => {
            v.remove(p);
        }
        Op::Rmdir(p) => {
            if has_children(v, p) {
                return Err(libc::ENOTEMPTY);
            }
            v.remove(p);
        }
        Op::Rename(s, d) => {
            if let Some(Obj::Dir { .. }) = v.get(d) {
                if has_children(v, d) {
                    return Err(libc::ENOTEMPTY);
                }
            }
            v.remove(d);
            let moved: Vec<Vec<u8>> = v.keys().filter(|k| within(k, s)).cloned().collect();
            for k in moved {
                let o = v.remove(&k).unwrap();
                let mut nk = d.clone();
                nk.extend_from_slice(&k[s.len()..]);
                v.insert(nk, o);
            }
        }
    }
    Ok(())
}

/// A random operation the VFS would pass on to the filesystem, on paths
/// of the current view (plus fresh names). None when the draw fits nothing.
fn random_op(rng: &mut Rng, v: &View) -> Option<Op> {
    let of = |pred: &dyn Fn(&Obj) -> bool| -> Vec<Vec<u8>> {
        v.iter()
            .filter(|(_, o)| pred(o))
            .map(|(p, _)| p.clone())
            .collect()
    };
    let mut dirs = of(&|o| matches!(o, Obj::Dir { .. }));
    dirs.push(Vec::new());
    let files = of(&|o| matches!(o, Obj::File { .. }));
    let non_dirs = of(&|o| !matches!(o, Obj::Dir { .. }));
    let all: Vec<Vec<u8>> = v.keys().cloned().collect();
    let fresh = |rng: &mut Rng| -> Option<Vec<u8>> {
        let dir = rng.pick(&dirs);
        if depth(dir) >= MAX_DEPTH {
            return None;
        }
        let p = join_rel(dir, rng.pick(NAMES).as_bytes());
        (!v.contains_key(&p)).then_some(p)
    };
    Some(match rng.weighted(&[22, 12, 5, 18, 12, 10, 21]) {
        0 => {
            let p = fresh(rng)?;
            let n = rng.below(64) as usize;
            Op::Create(p, rng.bytes(n))
        }
        1 => Op::Mkdir(fresh(rng)?),
        2 => Op::Symlink(fresh(rng)?, rng.pick(NAMES).as_bytes().to_vec()),
        3 => {
            let p = rng.try_pick(&files)?.clone();
            let Some(Obj::File { content, .. }) = v.get(&p) else {
                unreachable!()
            };
            let off = rng.below(content.len() as u64 + 1);
            let n = 1 + rng.below(32) as usize;
            Op::Write(p, off, rng.bytes(n))
        }
        4 => Op::Unlink(rng.try_pick(&non_dirs)?.clone()),
        5 => Op::Rmdir(rng.try_pick(&dirs[..dirs.len() - 1])?.clone()),
        _ => {
            let s = rng.try_pick(&all)?.clone();
            let d = if rng.percent(40) {
                rng.pick(&all).clone()
            } else {
                fresh(rng)?
            };
            if within(&s, &d) || within(&d, &s) {
                return None;
            }
            let s_dir = matches!(v.get(&s), Some(Obj::Dir { .. }));
            match v.get(&d) {
                Some(Obj::Dir { .. }) if !s_dir => return None,
                Some(o) if s_dir && !matches!(o, Obj::Dir { .. }) => return None,
                _ => {}
            }
            Op::Rename(s, d)
        }
    })
}

// ---------------------------------------------------------------------------
// UnionFs, in process
// ---------------------------------------------------------------------------

fn caller() -> Caller {
    Caller {
        uid: euid(),
        gid: egid(),
        umask: 0,
    }
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn resolve(u: &UnionFs, path: &[u8]) -> Result<u64, i32> {
    let mut ino = ROOT_INO;
    if path.is_empty() {
        return Ok(ino);
    }
    for c in path.split(|&b| b == b'/') {
        ino = u.lookup(ino, os(c)).map_err(|e| e.raw())?.ino;
    }
    Ok(ino)
}

fn parent_of<'a>(u: &UnionFs, path: &'a [u8]) -> Result<(u64, &'a OsStr), i32> {
    let (dir, name) = split_parent(path);
    Ok((resolve(u, dir)?, os(name)))
}

fn apply_union(u: &UnionFs, op: &Op) -> Outcome {
    match op {
        Op::Create(p, data) => {
            let (dir, name) = parent_of(u, p)?;
            let what = NewObject::File {
                mode: libc::S_IFREG | 0o644,
                flags: libc::O_WRONLY,
            };
            let (_, fh) = u.create(caller(), dir, name, what).map_err(|e| e.raw())?;
            let fh = fh.expect("create returns a handle");
            let r = u.write(fh, 0, data).map(|_| ()).map_err(|e| e.raw());
            u.release(fh);
            r
        }
        Op::Mkdir(p) => {
            let (dir, name) = parent_of(u, p)?;
            let what = NewObject::Dir { mode: 0o755 };
            u.create(caller(), dir, name, what)
                .map(|_| ())
                .map_err(|e| e.raw())
        }
        Op::Symlink(p, t) => {
            let (dir, name) = parent_of(u, p)?;
            let what = NewObject::Symlink {
                target: OsString::from_vec(t.clone()),
            };
            u.create(caller(), dir, name, what)
                .map(|_| ())
                .map_err(|e| e.raw())
        }
        Op::Write(p, off, data) => {
            let fh = u
                .open(resolve(u, p)?, libc::O_WRONLY)
                .map_err(|e| e.raw())?;
            let r = u.write(fh, *off, data).map(|_| ()).map_err(|e| e.raw());
            u.release(fh);
            r
        }
        Op::Unlink(p) | Op::Rmdir(p) => {
            let (dir, name) = parent_of(u, p)?;
            u.remove(dir, name, matches!(op, Op::Rmdir(_)))
                .map_err(|e| e.raw())
        }
        Op::Rename(s, d) => {
            let (sdir, sname) = parent_of(u, s)?;
            let (ddir, dname) = parent_of(u, d)?;
            u.rename(sdir, sname, ddir, dname, 0).map_err(|e| e.raw())
        }
    }
}

/// The merged view as UnionFs shows it: a walk by opendir/readdir, lookup,
/// read and readlink.
fn view_of(u: &UnionFs) -> Result<View, String> {
    fn walk(u: &UnionFs, ino: u64, dir: &[u8], out: &mut View) -> Result<(), String> {
        let err = |what: &str, p: &[u8], errno: i32| format!("{what} {}: errno {errno}", show(p));
        let (fh, _) = u.opendir(ino).map_err(|e| err("opendir", dir, e.raw()))?;
        let mut names: Vec<Vec<u8>> = Vec::new();
        let r = u.readdir(fh, 0, true, |_, ent| {
            names.push(ent.name.as_bytes().to_vec());
            false
        });
        u.releasedir(fh);
        r.map_err(|e| err("readdir", dir, e.raw()))?;
        names.retain(|n| n != b"." && n != b"..");
        names.sort();
        for n in names {
            let p = join_rel(dir, &n);
            let a = u
                .lookup(ino, os(&n))
                .map_err(|e| err("lookup", &p, e.raw()))?;
            let mode = a.st.st_mode;
            let o = match mode & libc::S_IFMT {
                libc::S_IFREG => {
                    let fh = u
                        .open(a.ino, libc::O_RDONLY)
                        .map_err(|e| err("open", &p, e.raw()))?;
                    let mut buf = Vec::new();
                    let r = u.read(fh, 0, 1 << 20, &mut buf).map(|d| d.to_vec());
                    u.release(fh);
                    Obj::File {
                        content: r.map_err(|e| err("read", &p, e.raw()))?,
                        mode: mode & 0o7777,
                    }
                }
                libc::S_IFDIR => {
                    walk(u, a.ino, &p, out)?;
                    Obj::Dir {
                        mode: mode & 0o7777,
                    }
                }
                libc::S_IFLNK => Obj::Symlink(
                    u.readlink(a.ino)
                        .map_err(|e| err("readlink", &p, e.raw()))?
                        .into_vec(),
                ),
                libc::S_IFIFO => Obj::Other(FileType::Fifo),
                t => return Err(format!("{}: odd type {t:o}", show(&p))),
            };
            out.insert(p, o);
        }
        Ok(())
    }
    let mut out = View::new();
    walk(u, ROOT_INO, b"", &mut out)?;
    Ok(out)
}

fn desc(o: &Obj) -> String {
    match o {
        Obj::File { content, mode } => format!("file {mode:o} {:?}", show(content)),
        Obj::Dir { mode } => format!("dir {mode:o}"),
        Obj::Symlink(t) => format!("symlink -> {}", show(t)),
        Obj::Other(t) => format!("{t:?}"),
    }
}

fn view_diff(want: &View, got: &View) -> Vec<String> {
    let mut d = Vec::new();
    for (p, w) in want {
        match got.get(p) {
            None => d.push(format!("{}: missing, model has {}", show(p), desc(w))),
            Some(g) if g != w => d.push(format!(
                "{}: unionfs has {}, model {}",
                show(p),
                desc(g),
                desc(w)
            )),
            _ => {}
        }
    }
    for (p, g) in got {
        if !want.contains_key(p) {
            d.push(format!("{}: unexpected {}", show(p), desc(g)));
        }
    }
    d
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One sequence: Err with a report on the first divergence.
fn run_sequence(seed: u64, n_ops: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let n_lowers = rng.range(1, 3);
    let layers: Vec<Layer> = (0..n_lowers)
        .map(|i| random_layer(&mut rng, &format!("lower{i}")))
        .collect();
    let root = euid() == 0;
    // Kernel-format whiteouts (0/0 char devices) need root; OCI does not.
    let format = if root {
        Format::Mixed(mix(seed))
    } else {
        Format::Oci
    };
    let write_format = if root && rng.percent(50) {
        WriteFormat::Overlay
    } else {
        WriteFormat::Oci
    };
    let t = TestDir::new(&format!("inproc-{seed:x}"));
    let lowers = render_stack(&layers, &t.join("lowers"), format);
    let upper = t.mkdir("upper");
    let sums = checksum_layers(&as_paths(&lowers));
    let stack = LayerStack::open(Some(&upper), &lowers).map_err(|e| e.to_string())?;
    let u = UnionFs::new(
        stack,
        Some(&t.join("work")),
        Options {
            read_only: false,
            format: write_format,
        },
    )
    .map_err(|e| e.to_string())?;

    let mut model = model_of(&layers);
    let mut done: Vec<String> = Vec::new();
    let report = |done: &[String], what: String| {
        format!(
            "seed {seed:#x} ({n_lowers} lowers, lowers in {format:?}, upper in {write_format:?}):\n  \
             {}\n{what}",
            done.join("\n  ")
        )
    };
    let start = view_of(&u).map_err(|e| report(&done, e))?;
    let diff = view_diff(&model, &start);
    if !diff.is_empty() {
        return Err(report(&done, format!("initial view:\n{}", diff.join("\n"))));
    }
    for _ in 0..n_ops {
        let Some(op) = random_op(&mut rng, &model) else {
            continue;
        };
        let want = apply_model(&mut model, &op);
        let got = apply_union(&u, &op);
        done.push(format!("{op:?} -> {got:?}"));
        if want != got {
            return Err(report(&done, format!("outcome: model {want:?}")));
        }
        let view = view_of(&u).map_err(|e| report(&done, e))?;
        let diff = view_diff(&model, &view);
        if !diff.is_empty() {
            return Err(report(&done, diff.join("\n")));
        }
    }
    drop(u);
    sums.assert_unchanged();
    Ok(())
}

#[test]
fn random_operations_match_the_reference_model_in_process() {
    let n_ops = env_u64("UNIONFS_INPROC_OPS", 40);
    let seeds: Vec<u64> = match std::env::var("UNIONFS_INPROC_SEED") {
        Ok(s) => vec![u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex seed")],
        Err(_) => {
            let base = env_u64("UNIONFS_INPROC_BASE", 0x1d7a);
            (0..env_u64("UNIONFS_INPROC_SEQUENCES", 30))
                .map(|i| mix(base + i))
                .collect()
        }
    };
    let mut failures = Vec::new();
    for seed in seeds {
        if let Err(e) = run_sequence(seed, n_ops) {
            failures.push(e);
        }
    }
    assert_no_failures("in-process random operations", &failures);
}
