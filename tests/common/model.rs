//! The reference model: the lowers-only merged view computed from the layer
//! DSL ([`merged_view`]), an oracle independent of the daemon, and
//! [`check_view`] comparing a snapshot with it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use super::*;

// Reference model of the lowers-only merged view
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDev,
    BlockDev,
    Socket,
}

impl FileType {
    pub fn of(ft: fs::FileType) -> FileType {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_symlink() {
            FileType::Symlink
        } else if ft.is_dir() {
            FileType::Dir
        } else if ft.is_file() {
            FileType::File
        } else if ft.is_fifo() {
            FileType::Fifo
        } else if ft.is_char_device() {
            FileType::CharDev
        } else if ft.is_block_device() {
            FileType::BlockDev
        } else {
            FileType::Socket
        }
    }
}

/// What the merged view must show at one path, and which layer serves it.
#[derive(Clone, Debug)]
pub struct ViewEntry {
    pub ftype: FileType,
    pub content: Option<Vec<u8>>,
    pub target: Option<Vec<u8>>,
    /// Name of the serving (topmost) layer.
    pub layer: String,
    pub mode: u32,
    pub owner: Option<(u32, u32)>,
    /// user.* xattrs, private ones (overlay, fuseoverlayfs, unionfs) removed.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Names of this inode inside its layer (hard links), for files.
    pub nlink: u64,
}

/// True for xattr names that a merged view must never show.
pub fn is_private_xattr(name: &[u8]) -> bool {
    [
        &b"trusted.overlay."[..],
        b"user.overlay.",
        b"user.fuseoverlayfs.",
        b"user.unionfs.",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

#[derive(Clone, Debug)]
struct SpecNode {
    kind: Kind,
    opaque: bool,
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    link_group: Vec<u8>,
}

fn index_layer(layer: &Layer) -> BTreeMap<Vec<u8>, SpecNode> {
    let mut m: BTreeMap<Vec<u8>, SpecNode> = BTreeMap::new();
    let dir_node = || SpecNode {
        kind: Kind::Dir,
        opaque: false,
        mode: None,
        owner: None,
        xattrs: Vec::new(),
        link_group: Vec::new(),
    };
    m.insert(Vec::new(), dir_node());
    for e in &layer.entries {
        let (parent, _) = split_parent(&e.path);
        let mut cur = Vec::new();
        for comp in parent.split(|&c| c == b'/').filter(|c| !c.is_empty()) {
            cur = join_rel(&cur, comp);
            m.entry(cur.clone()).or_insert_with(dir_node);
        }
        let node = m.entry(e.path.clone()).or_insert_with(dir_node);
        match &e.kind {
            Kind::Dir => {}
            Kind::Opaque => node.opaque = true,
            Kind::Link(existing) => {
                node.kind = Kind::Link(existing.clone());
            }
            k => node.kind = k.clone(),
        }
        if e.mode.is_some() {
            node.mode = e.mode;
        }
        if e.owner.is_some() {
            node.owner = e.owner;
        }
        node.xattrs.extend(e.xattrs.iter().cloned());
    }
    // Resolve hard links to their target's data and metadata.
    let links: Vec<(Vec<u8>, Vec<u8>)> = m
        .iter()
        .filter_map(|(p, n)| match &n.kind {
            Kind::Link(t) => Some((p.clone(), t.clone())),
            _ => None,
        })
        .collect();
    for (p, t) in links {
        let target = m
            .get(&t)
            .unwrap_or_else(|| panic!("layer {}: link to missing {}", layer.name, show(&t)))
            .clone();
        let mut n = target;
        n.link_group = t.clone();
        m.insert(p, n);
        m.get_mut(&t).expect("target").link_group = t.clone();
    }
    m
}

/// The merged view of a lowers-only stack (`layers` top first), by the rules
/// of docs/design.md §3: lookup stops at the first whiteout, the first non-dir, or
/// after an opaque dir; dirs of the same name merge; the top one wins.
/// Keys are relative paths (`""` is the root).
pub fn merged_view(layers: &[&Layer]) -> BTreeMap<Vec<u8>, ViewEntry> {
    let idx: Vec<BTreeMap<Vec<u8>, SpecNode>> = layers.iter().map(|l| index_layer(l)).collect();
    let mut out = BTreeMap::new();
    let root_layers: Vec<usize> = (0..layers.len()).collect();
    out.insert(Vec::new(), view_entry(layers, &idx, 0, b""));
    merge_dir(layers, &idx, b"", &root_layers, &mut out);
    out
}

fn view_entry(
    layers: &[&Layer],
    idx: &[BTreeMap<Vec<u8>, SpecNode>],
    l: usize,
    path: &[u8],
) -> ViewEntry {
    let n = &idx[l][path];
    let (ftype, content, target, def_mode) = match &n.kind {
        Kind::File(c) => (FileType::File, Some(c.clone()), None, 0o644),
        Kind::Dir | Kind::Opaque => (FileType::Dir, None, None, 0o755),
        Kind::Symlink(t) => (FileType::Symlink, None, Some(t.clone()), 0o777),
        Kind::Fifo => (FileType::Fifo, None, None, 0o644),
        Kind::Whiteout | Kind::Link(_) => unreachable!("resolved"),
    };
    let nlink = if ftype == FileType::File && !n.link_group.is_empty() {
        idx[l]
            .values()
            .filter(|o| o.link_group == n.link_group)
            .count() as u64
    } else {
        1
    };
    ViewEntry {
        ftype,
        content,
        target,
        layer: layers[l].name.clone(),
        mode: n.mode.unwrap_or(def_mode),
        owner: n.owner,
        xattrs: n
            .xattrs
            .iter()
            .filter(|(k, _)| k.starts_with(b"user.") && !is_private_xattr(k))
            .cloned()
            .collect(),
        nlink,
    }
}

fn merge_dir(
    layers: &[&Layer],
    idx: &[BTreeMap<Vec<u8>, SpecNode>],
    dir: &[u8],
    dir_layers: &[usize],
    out: &mut BTreeMap<Vec<u8>, ViewEntry>,
) {
    let mut names: BTreeSet<Vec<u8>> = BTreeSet::new();
    for &l in dir_layers {
        for p in idx[l].keys() {
            if p.is_empty() {
                continue;
            }
            let (parent, name) = split_parent(p);
            if parent == dir {
                names.insert(name.to_vec());
            }
        }
    }
    for name in names {
        let path = join_rel(dir, &name);
        let mut stack = Vec::new();
        for &l in dir_layers {
            let Some(n) = idx[l].get(&path) else { continue };
            match n.kind {
                Kind::Whiteout => break,
                Kind::Dir | Kind::Opaque => {
                    stack.push(l);
                    if n.opaque {
                        break;
                    }
                }
                _ => {
                    if stack.is_empty() {
                        stack.push(l);
                    }
                    break;
                }
            }
        }
        let Some(&top) = stack.first() else { continue };
        let e = view_entry(layers, idx, top, &path);
        let is_dir = e.ftype == FileType::Dir;
        out.insert(path.clone(), e);
        if is_dir {
            merge_dir(layers, idx, &path, &stack, out);
        }
    }
}

/// Compares a snapshot of a merged view with the model: same paths, types,
/// contents, symlink targets, modes, owners (where the spec set them), user
/// xattrs and file link counts. Returns the differences.
pub fn check_view(tree: &Tree, expected: &BTreeMap<Vec<u8>, ViewEntry>) -> Vec<String> {
    let mut d = Vec::new();
    for (p, e) in expected {
        let Some(n) = tree.nodes.get(p) else {
            d.push(format!(
                "{}: missing (expected {:?} from {})",
                show(p),
                e.ftype,
                e.layer
            ));
            continue;
        };
        if n.ftype != e.ftype {
            d.push(format!(
                "{}: type {:?}, expected {:?} from {}",
                show(p),
                n.ftype,
                e.ftype,
                e.layer
            ));
            continue;
        }
        if let Some(c) = &e.content {
            if n.hash != Some(fnv(c)) || n.size != c.len() as u64 {
                d.push(format!(
                    "{}: content differs from {}'s (size {} vs {}; expected {:?})",
                    show(p),
                    e.layer,
                    n.size,
                    c.len(),
                    String::from_utf8_lossy(c)
                ));
            }
        }
        if e.target.is_some() && n.target != e.target {
            d.push(format!(
                "{}: symlink target {:?}, expected {:?} from {}",
                show(p),
                n.target.as_deref().map(show),
                e.target.as_deref().map(show),
                e.layer
            ));
        }
        if e.ftype != FileType::Symlink && n.mode != e.mode {
            d.push(format!(
                "{}: mode {:o}, expected {:o} from {}",
                show(p),
                n.mode,
                e.mode,
                e.layer
            ));
        }
        if let Some((u, g)) = e.owner {
            if (n.uid, n.gid) != (u, g) {
                d.push(format!(
                    "{}: owner {}:{}, expected {u}:{g} from {}",
                    show(p),
                    n.uid,
                    n.gid,
                    e.layer
                ));
            }
        }
        if n.xattrs != e.xattrs {
            d.push(format!(
                "{}: user xattrs {}, expected {} from {}",
                show(p),
                show_xattrs(&n.xattrs),
                show_xattrs(&e.xattrs),
                e.layer
            ));
        }
        if e.ftype == FileType::File && n.nlink != e.nlink {
            d.push(format!(
                "{}: nlink {}, expected {} (as in {})",
                show(p),
                n.nlink,
                e.nlink,
                e.layer
            ));
        }
    }
    for (p, n) in &tree.nodes {
        if !expected.contains_key(p) {
            d.push(format!("{}: unexpected {:?} in the view", show(p), n.ftype));
        }
    }
    d
}
