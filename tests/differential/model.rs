//! Random layer stacks: a logical description ([`StackSpec`]) generated from
//! a seed, rendered twice by the shared harness (`common::render_stack`):
//! kernel format for `mount -t overlay`, and a mix of every format of
//! docs/design.md §2 for unionfs.

use std::collections::BTreeMap;

use crate::common::Rng;
use crate::common::{Format, Layer};

/// Names used at every level, in layers and by operations alike, so that
/// layers overlap and operations hit lower objects, whiteouts and opaque dirs.
pub const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f"];

/// Deepest path (in components) a layer entry or a created object gets.
pub const MAX_DEPTH: usize = 3;

/// Symlink targets: relative, without `..`, so that whatever follows a
/// symlink in the mount stays below the symlink's own dir (inside the mount).
pub const TARGETS: &[&str] = &["a", "b", "c/d", "missing", "e/f/a", "f"];

/// Mtimes given to layer entries lie before this (2020-09-13); every time
/// the system sets itself lies after it. Two "old" mtimes must be equal.
pub const OLD_MTIME_LIMIT: i64 = 1_600_000_000;

/// File contents: `prefix` then `chunk` repeated up to `len` bytes (long
/// contents stay short to describe in a repro).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data {
    pub prefix: Vec<u8>,
    pub chunk: Vec<u8>,
    pub len: usize,
}

impl Data {
    pub fn bytes(&self) -> Vec<u8> {
        let mut v = self.prefix.clone();
        if !self.chunk.is_empty() {
            while v.len() < self.prefix.len() + self.len {
                v.extend_from_slice(&self.chunk);
            }
        }
        v.truncate(self.prefix.len() + self.len);
        v
    }

    /// Random data: mostly short, sometimes tens of KiB (past page and
    /// copy-chunk boundaries).
    pub fn random(rng: &mut Rng, prefix: Vec<u8>) -> Data {
        let len = match rng.below(100) {
            0..=39 => rng.range(0, 16),
            40..=84 => rng.range(17, 600),
            85..=94 => rng.range(601, 9000),
            _ => rng.range(9001, 70_000),
        } as usize;
        let clen = rng.range(1, 13) as usize;
        Data {
            prefix,
            chunk: rng.bytes(clen),
            len,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LKind {
    File(Data),
    Dir {
        opaque: bool,
    },
    Symlink(Vec<u8>),
    Fifo,
    Whiteout,
    /// Hard link to the file at this path of the same layer.
    Link(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LEntry {
    pub kind: LKind,
    pub mode: Option<u32>,
    pub owner: Option<(u32, u32)>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub mtime: Option<i64>,
}

/// One lower layer, path -> entry (every dir explicit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSpec {
    pub name: String,
    pub entries: BTreeMap<Vec<u8>, LEntry>,
}

/// A whole stack (top lower first) and how unionfs sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackSpec {
    pub layers: Vec<LayerSpec>,
    /// How the unionfs copy of the lowers is rendered.
    pub unionfs_format: Format,
    /// `--format` of the unionfs mount.
    pub write_format: &'static str,
}

fn depth(p: &[u8]) -> usize {
    if p.is_empty() {
        0
    } else {
        p.iter().filter(|&&c| c == b'/').count() + 1
    }
}

pub fn join_rel(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = dir.to_vec();
    if !v.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

/// Proper ancestors of a relative path, shallowest first (root excluded).
pub fn ancestors(p: &[u8]) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for (i, &c) in p.iter().enumerate() {
        if c == b'/' {
            v.push(p[..i].to_vec());
        }
    }
    v
}

/// True when `p` lies strictly below `dir`.
pub fn is_below(p: &[u8], dir: &[u8]) -> bool {
    if dir.is_empty() {
        return !p.is_empty();
    }
    p.len() > dir.len() && p.starts_with(dir) && p[dir.len()] == b'/'
}

fn old_mtime(rng: &mut Rng) -> Option<i64> {
    Some(rng.range(1_000_000_000, OLD_MTIME_LIMIT as u64 - 1) as i64)
}

fn random_owner(rng: &mut Rng, percent: u64) -> Option<(u32, u32)> {
    if rng.percent(percent) {
        Some(*rng.pick(&[(1000, 1000), (1001, 1002), (0, 1000), (65534, 65534)]))
    } else {
        None
    }
}

fn random_xattrs(rng: &mut Rng, percent: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v = Vec::new();
    for name in ["user.a", "user.b"] {
        if rng.percent(percent) {
            let n = rng.range(0, 12) as usize;
            v.push((name.as_bytes().to_vec(), rng.bytes(n)));
        }
    }
    v
}

impl LayerSpec {
    fn new(name: String) -> LayerSpec {
        LayerSpec {
            name,
            entries: BTreeMap::new(),
        }
    }

    fn is_dir(&self, p: &[u8]) -> bool {
        matches!(
            self.entries.get(p).map(|e| &e.kind),
            Some(LKind::Dir { .. })
        )
    }

    /// Adds `entry` at `path` unless that would make the layer inconsistent
    /// (a non-dir ancestor, a name already used, children under a non-dir).
    /// Missing ancestors become explicit dirs.
    fn try_insert(&mut self, rng: &mut Rng, path: Vec<u8>, entry: LEntry) -> bool {
        if path.is_empty() || depth(&path) > MAX_DEPTH || self.entries.contains_key(&path) {
            return false;
        }
        let anc = ancestors(&path);
        if anc
            .iter()
            .any(|a| self.entries.contains_key(a) && !self.is_dir(a))
        {
            return false;
        }
        let is_dir = matches!(entry.kind, LKind::Dir { .. });
        if !is_dir && self.entries.keys().any(|k| is_below(k, &path)) {
            return false;
        }
        for a in anc {
            let mtime = old_mtime(rng);
            self.entries.entry(a).or_insert_with(|| LEntry {
                kind: LKind::Dir { opaque: false },
                mode: Some(0o755),
                owner: None,
                xattrs: Vec::new(),
                mtime,
            });
        }
        self.entries.insert(path, entry);
        true
    }

    /// The entry `path` and every hard link to it are removed (shrinking).
    pub fn remove(&mut self, path: &[u8]) {
        self.entries.remove(path);
        self.entries
            .retain(|_, e| !matches!(&e.kind, LKind::Link(t) if t.as_slice() == path));
    }

    /// The layer as the shared harness's DSL.
    pub fn to_layer(&self) -> Layer {
        let mut l = Layer::new(&self.name);
        let mut links = Vec::new();
        for (p, e) in &self.entries {
            if let LKind::Link(t) = &e.kind {
                links.push((p.clone(), t.clone()));
                continue;
            }
            l = match &e.kind {
                LKind::File(d) => l.file(p, d.bytes()),
                LKind::Dir { opaque: false } => l.dir(p),
                LKind::Dir { opaque: true } => l.opaque(p),
                LKind::Symlink(t) => l.symlink(p, t),
                LKind::Fifo => l.fifo(p),
                LKind::Whiteout => l.whiteout(p),
                LKind::Link(_) => unreachable!(),
            };
            if let Some((u, g)) = e.owner {
                l = l.owner(u, g);
            }
            if let Some(m) = e.mode {
                l = l.mode(m);
            }
            for (k, v) in &e.xattrs {
                l = l.xattr(k, v);
            }
            if let Some(t) = e.mtime {
                l = l.mtime(t);
            }
        }
        for (p, t) in links {
            l = l.link(p, t);
        }
        l
    }

    pub fn has_links(&self) -> bool {
        self.entries
            .values()
            .any(|e| matches!(e.kind, LKind::Link(_)))
    }
}

impl StackSpec {
    /// A random stack of 1-5 lowers. Layers are made bottom-up; each reuses
    /// paths of the layers below (same or other type), whites some out, and
    /// makes some of their dirs opaque, so every marker hides something.
    /// `lower_links`: whether layers may hold hard links.
    pub fn generate(rng: &mut Rng, lower_links: bool) -> StackSpec {
        let n = rng.range(1, 5) as usize;
        // Union of what the layers below have: path -> is a dir.
        let mut below: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
        let mut bottom_up = Vec::new();
        for i in 0..n {
            let mut spec = LayerSpec::new(format!("l{}", n - 1 - i));
            let want = rng.range(2, 14) as usize;
            let mut tries = 0;
            while spec.entries.len() < want && tries < want * 6 {
                tries += 1;
                let below_paths: Vec<&Vec<u8>> = below.keys().collect();
                let below_dirs: Vec<&Vec<u8>> =
                    below.iter().filter(|(_, d)| **d).map(|(p, _)| p).collect();
                let choice = if below_paths.is_empty() {
                    3
                } else {
                    rng.weighted(&[34, 16, 10, 40])
                };
                let (path, kind) = match choice {
                    0 => {
                        let p = (*rng.pick(&below_paths)).clone();
                        let k = random_kind(rng, &spec, &p, lower_links);
                        (p, k)
                    }
                    1 => ((*rng.pick(&below_paths)).clone(), LKind::Whiteout),
                    2 if !below_dirs.is_empty() => (
                        (*rng.pick(&below_dirs)).clone(),
                        LKind::Dir { opaque: true },
                    ),
                    _ => {
                        let mut dirs: Vec<Vec<u8>> = vec![Vec::new()];
                        dirs.extend(below_dirs.iter().map(|p| (*p).clone()));
                        dirs.extend(
                            spec.entries
                                .iter()
                                .filter(|(_, e)| matches!(e.kind, LKind::Dir { .. }))
                                .map(|(p, _)| p.clone()),
                        );
                        dirs.retain(|d| depth(d) < MAX_DEPTH);
                        let d = rng.pick(&dirs).clone();
                        let p = join_rel(&d, rng.pick(NAMES).as_bytes());
                        let k = random_kind(rng, &spec, &p, lower_links);
                        (p, k)
                    }
                };
                let entry = random_entry(rng, &spec.name, &path, kind);
                spec.try_insert(rng, path, entry);
            }
            for (p, e) in &spec.entries {
                match e.kind {
                    LKind::Whiteout => {}
                    LKind::Dir { .. } => {
                        below.insert(p.clone(), true);
                    }
                    _ => {
                        below.insert(p.clone(), false);
                    }
                }
            }
            bottom_up.push(spec);
        }
        bottom_up.reverse();
        let seed = rng.next_u64();
        let unionfs_format = match rng.below(10) {
            0 => Format::Oci,
            1 => Format::XattrWhiteout,
            2 => Format::UserXattr,
            3 => Format::FuseOverlayfs,
            4 => Format::Kernel,
            _ => Format::Mixed(seed),
        };
        let write_format = if rng.percent(50) { "overlay" } else { "oci" };
        StackSpec {
            layers: bottom_up,
            unionfs_format,
            write_format,
        }
    }

    pub fn to_layers(&self) -> Vec<Layer> {
        self.layers.iter().map(|l| l.to_layer()).collect()
    }

    pub fn has_links(&self) -> bool {
        self.layers.iter().any(|l| l.has_links())
    }

    /// (layer index, path) of every entry, for shrinking.
    pub fn entry_keys(&self) -> Vec<(usize, Vec<u8>)> {
        let mut v = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for p in l.entries.keys() {
                v.push((i, p.clone()));
            }
        }
        v
    }

    pub fn entry_count(&self) -> usize {
        self.layers.iter().map(|l| l.entries.len()).sum()
    }
}

fn random_kind(rng: &mut Rng, spec: &LayerSpec, path: &[u8], links: bool) -> LKind {
    let files: Vec<&Vec<u8>> = spec
        .entries
        .iter()
        .filter(|(p, e)| matches!(e.kind, LKind::File(_)) && p.as_slice() != path)
        .map(|(p, _)| p)
        .collect();
    match rng.weighted(&[40, 25, 12, 6, 12]) {
        0 => LKind::File(Data {
            prefix: Vec::new(),
            chunk: Vec::new(),
            len: 0,
        }),
        1 => LKind::Dir {
            opaque: rng.percent(10),
        },
        2 => LKind::Symlink(rng.pick(TARGETS).as_bytes().to_vec()),
        3 => LKind::Fifo,
        _ if links && !files.is_empty() => LKind::Link((*rng.pick(&files)).clone()),
        _ => LKind::File(Data {
            prefix: Vec::new(),
            chunk: Vec::new(),
            len: 0,
        }),
    }
}

fn random_entry(rng: &mut Rng, layer: &str, path: &[u8], kind: LKind) -> LEntry {
    let mut e = LEntry {
        kind,
        mode: None,
        owner: None,
        xattrs: Vec::new(),
        mtime: None,
    };
    match &mut e.kind {
        LKind::File(d) => {
            let mut prefix = format!("{layer}:").into_bytes();
            prefix.extend_from_slice(path);
            prefix.push(b'\n');
            *d = if rng.percent(60) {
                Data {
                    prefix,
                    chunk: Vec::new(),
                    len: 0,
                }
            } else {
                Data::random(rng, prefix)
            };
            e.mode = Some(*rng.pick(&[
                0o644, 0o644, 0o644, 0o600, 0o755, 0o444, 0o4755, 0o2750, 0o664,
            ]));
            e.owner = random_owner(rng, 30);
            e.xattrs = random_xattrs(rng, 25);
            e.mtime = old_mtime(rng);
        }
        LKind::Dir { .. } => {
            e.mode = Some(*rng.pick(&[0o755, 0o755, 0o755, 0o700, 0o775, 0o2775, 0o1777]));
            e.owner = random_owner(rng, 20);
            e.xattrs = random_xattrs(rng, 15);
            e.mtime = old_mtime(rng);
        }
        LKind::Symlink(_) => {
            e.owner = random_owner(rng, 20);
            e.mtime = old_mtime(rng);
        }
        LKind::Fifo => {
            e.mode = Some(*rng.pick(&[0o644, 0o600, 0o666]));
            e.owner = random_owner(rng, 20);
            e.mtime = old_mtime(rng);
        }
        LKind::Whiteout | LKind::Link(_) => {}
    }
    e
}
