//! The offline union reader: the merged view of unmounted layers, resolved
//! by the mount's own rules ([`crate::union`]) over the directories this
//! walk holds, plus, on request, what each lookup hid and why (for `which`
//! and `ls`).
//!
//! Layers are reached only through held directory fds and `*at` calls that
//! never follow a symlink, and are only ever read.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::dir_cache::{Changes, LayerDir};
use crate::model::layer::{join_path, split_path, LayerId, LayerStack, INDEX, UPPER};
use crate::model::node::{LowerAt, NodeTable};
use crate::model::whiteout::{self, DirMarks};
use crate::sys::{self, Stat};
use crate::union::{self, Layers, Obj, OpaqueWhy, WhiteoutKind};

/// "upper" or "lower N", as every tool names a layer.
pub fn label(layer: LayerId) -> String {
    if layer == UPPER {
        "upper".to_owned()
    } else if layer == INDEX {
        "upper (hard-link index)".to_owned()
    } else {
        format!("lower {layer}")
    }
}

pub use crate::model::layer::{show_name, show_path};

/// One layer's copy of a merged object.
#[derive(Debug, Clone)]
pub struct Part {
    pub layer: LayerId,
    /// Path inside the layer (differs from the merged path under a redirect).
    pub path: OsString,
    pub stat: Stat,
    /// The directory holding it (`None` only for a layer root).
    pub parent: Option<Arc<LayerDir>>,
    /// For a directory: the directory itself, open.
    pub dir: Option<Arc<LayerDir>>,
    pub marks: DirMarks,
    /// `overlay.redirect` of a directory.
    pub redirect: Option<OsString>,
}

impl Part {
    pub fn kind(&self) -> u32 {
        self.stat.st_mode & libc::S_IFMT
    }

    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }

    /// The name inside its parent directory.
    pub fn name(&self) -> &OsStr {
        split_path(&self.path).1
    }

    /// A symlink's target: `readlinkat(parent, name)` (EIO for a layer
    /// root, which has no parent and is never a link).
    pub fn link_target(&self) -> Result<OsString> {
        match &self.parent {
            Some(p) => sys::readlinkat(p.fd(), self.name()),
            None => Err(Error::errno(libc::EIO)),
        }
    }

    /// Opens the object itself (`O_PATH` for anything but reading data).
    pub fn open(&self, flags: i32) -> Result<OwnedFd> {
        match (&self.parent, &self.dir) {
            (Some(p), _) => sys::openat(p.fd(), self.name(), flags, 0),
            (None, Some(d)) => sys::openat(d.fd(), OsStr::new("."), flags, 0),
            (None, None) => Err(Error::errno(libc::EIO)),
        }
    }
}

/// An object of the merged view with its stack: for a directory every layer
/// directory that merges into it (top first), else the one serving copy.
#[derive(Debug, Clone)]
pub struct MergedEntry {
    /// Relative to the union root; empty for the root.
    pub path: OsString,
    pub parts: Vec<Part>,
    /// For a metacopy (`overlay.metacopy`): the file below holding its
    /// bytes; its metadata is the serving copy's.
    pub data: Option<Part>,
}

impl MergedEntry {
    /// The serving copy.
    pub fn top(&self) -> &Part {
        // A node is only ever built with at least one part.
        &self.parts[0]
    }

    pub fn is_dir(&self) -> bool {
        self.top().is_dir()
    }

    pub fn layer(&self) -> LayerId {
        self.top().layer
    }

    /// The copy holding the bytes: the data file of a metacopy, else the
    /// serving copy.
    pub fn data_part(&self) -> &Part {
        self.data.as_ref().unwrap_or_else(|| self.top())
    }

    /// The upper holds this object (copied up, created, or a directory of
    /// the upper that merges with lower ones), directly or through its
    /// hard-link index.
    pub fn in_upper(&self) -> bool {
        self.parts
            .iter()
            .any(|p| p.layer == UPPER || p.layer == INDEX)
    }
}

/// Why a lookup stopped before the bottom layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WordedStop {
    /// A whiteout in this layer deletes the name; `how` names its format,
    /// `oci` says the marker is the file `.wh.NAME` beside the name.
    Whiteout {
        layer: LayerId,
        how: String,
        oci: bool,
    },
    /// This layer's directory of the name is opaque.
    Opaque { layer: LayerId, how: String },
    /// A non-directory in this layer (or a directory above a non-directory)
    /// shadows what lies below.
    Shadow { layer: LayerId },
}

/// The result of resolving one name in a merged directory.
#[derive(Debug)]
pub struct Lookup {
    pub node: Option<MergedEntry>,
    pub stop: Option<WordedStop>,
    /// With `explain`: the objects of that name below the stop, which the
    /// merged view does not show (layer, path in the layer, `S_IFMT`).
    pub cut: Vec<(LayerId, OsString, u32)>,
}

/// The layers of one union, open, and the rules to read them.
pub struct Union {
    pub stack: LayerStack,
    /// Layer ids, top first.
    ids: Vec<LayerId>,
    /// Each layer's root directory, by layer id.
    roots: Vec<Option<Arc<LayerDir>>>,
    /// The upper's hard-link index (`WORK/index`), if the work dir has one.
    index: Option<HardLinkIndex>,
}

/// `WORK/index`: an object with several lower names that was copied up
/// through one of them serves every name from its entry there, named by
/// the number the mount gives the object ([`NodeTable::ino_for`]).
struct HardLinkIndex {
    path: PathBuf,
    dir: Arc<LayerDir>,
    numbers: NodeTable,
}

impl Union {
    /// Opens the layers (lowers top first). Nothing is written.
    pub fn open(
        lowers: &[PathBuf],
        upper: Option<&std::path::Path>,
        work: Option<&std::path::Path>,
    ) -> Result<Union> {
        let stack = LayerStack::open(upper, lowers)?;
        let ids = stack.all_ids();
        let index = match work.filter(|_| upper.is_some()) {
            Some(w) => {
                let path = w.join("index");
                match sys::open_dir_path(&path) {
                    Ok(fd) => Some(HardLinkIndex {
                        path,
                        dir: Arc::new(LayerDir::new(fd, Changes::Any)?),
                        // Only its numbering is used; the prefix is for
                        // origin xattrs, which the numbers do not read.
                        numbers: NodeTable::new(&stack, "user.unionfs."),
                    }),
                    Err(e) if e.is(libc::ENOENT) => None,
                    Err(e) => return Err(e),
                }
            }
            None => None,
        };
        let mut roots = Vec::new();
        for &id in &ids {
            let dir = LayerDir::open_at(stack.get(id)?.root(), OsStr::new("."), Changes::Any)?;
            let slot = id as usize;
            if roots.len() <= slot {
                roots.resize(slot + 1, None);
            }
            roots[slot] = Some(Arc::new(dir));
        }
        Ok(Union {
            stack,
            ids,
            roots,
            index,
        })
    }

    /// The index entry serving a lower object with several names, if its
    /// object was copied up through another name.
    fn indexed(&self, lower: &Part) -> Result<Option<Part>> {
        let Some(index) = &self.index else {
            return Ok(None);
        };
        if lower.layer == UPPER || lower.is_dir() || lower.stat.st_nlink < 2 {
            return Ok(None);
        }
        let ino = index
            .numbers
            .ino_for(self.stack.get(lower.layer)?, lower.stat.st_ino);
        let key = crate::union::index::key(ino);
        match sys::statat(index.dir.fd(), &key) {
            Ok(stat) => Ok(Some(Part {
                layer: INDEX,
                path: key,
                stat,
                parent: Some(index.dir.clone()),
                dir: None,
                marks: DirMarks::default(),
                redirect: None,
            })),
            Err(e) if e.is(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The layer ids, top first.
    pub fn ids(&self) -> &[LayerId] {
        &self.ids
    }

    /// Where a layer lives, for messages.
    pub fn layer_path(&self, layer: LayerId) -> String {
        if layer == INDEX {
            return self
                .index
                .as_ref()
                .map(|i| i.path.display().to_string())
                .unwrap_or_default();
        }
        self.stack
            .get(layer)
            .map(|l| l.path.display().to_string())
            .unwrap_or_default()
    }

    /// The root of the union: every layer's root directory.
    pub fn root(&self) -> Result<MergedEntry> {
        let mut parts = Vec::new();
        for &id in &self.ids {
            let dir = Layers::root_dir(self, id)?;
            parts.push(Part {
                layer: id,
                path: OsString::new(),
                stat: sys::fstat(dir.fd())?,
                parent: None,
                marks: dir.marks,
                dir: Some(dir),
                redirect: None,
            });
        }
        Ok(MergedEntry {
            path: OsString::new(),
            parts,
            data: None,
        })
    }

    /// Resolves `name` in the merged directory `parent` with the mount's
    /// stop rules. With `explain`, goes on below the stop to list what the
    /// stop hides.
    pub fn lookup(&self, parent: &MergedEntry, name: &OsStr, explain: bool) -> Result<Lookup> {
        let mut out = Lookup {
            node: None,
            stop: None,
            cut: Vec::new(),
        };
        if name.is_empty() || name == "." || name == ".." {
            return Ok(out);
        }
        let mut seen = Collect {
            parent,
            name,
            explain,
            parts: Vec::new(),
            data: None,
            stop: None,
            cut: Vec::new(),
        };
        let walk = union::lookup::walk(self, parent, name, None, &mut seen)?;
        let Collect {
            mut parts,
            mut data,
            stop,
            cut,
            ..
        } = seen;
        out.cut = cut;
        out.stop = stop
            .map(|s| stop_in_words(s, &parts, explain))
            .transpose()?;
        let mut want_data = walk.data_missing;
        if let Some(entry) = parts
            .first()
            .map(|p| self.indexed(p))
            .transpose()?
            .flatten()
        {
            if explain {
                let lower = &parts[0];
                out.cut
                    .insert(0, (lower.layer, lower.path.clone(), lower.kind()));
                out.stop.get_or_insert(WordedStop::Shadow { layer: INDEX });
            }
            // A lower name of an object whose shared copy is a metacopy:
            // that lower file holds the bytes.
            let meta = match (entry.kind() == libc::S_IFREG, &entry.parent) {
                (true, Some(p)) => whiteout::metacopy_of(p.fd(), entry.name())?.is_some(),
                _ => false,
            };
            if meta && data.is_none() && parts[0].layer != UPPER {
                data = Some(parts[0].clone());
                want_data = false;
            }
            parts = vec![entry];
        }
        if want_data {
            return Err(Error::errno(libc::EIO).context(format!(
                "metacopy {} has no data file below it",
                show_path(&join_path(&parent.path, name))
            )));
        }
        if !parts.is_empty() {
            out.node = Some(MergedEntry {
                path: join_path(&parent.path, name),
                parts,
                data,
            });
        }
        Ok(out)
    }

    /// Resolves a relative path from the root; `None` when the union does
    /// not show it.
    pub fn resolve(&self, rel: &OsStr) -> Result<Option<MergedEntry>> {
        let mut node = self.root()?;
        for comp in components(rel) {
            if !node.is_dir() {
                return Ok(None);
            }
            match self.lookup(&node, comp, false)?.node {
                Some(n) => node = n,
                None => return Ok(None),
            }
        }
        Ok(Some(node))
    }

    /// The visible names of a merged directory, sorted by bytes.
    pub fn names(&self, dir: &MergedEntry) -> Result<Vec<OsString>> {
        let mut names: Vec<OsString> = union::readdir::names(self, dir)?
            .into_iter()
            .map(|n| n.name)
            .collect();
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        Ok(names)
    }

    /// The children of a merged directory, sorted by name.
    pub fn children(&self, dir: &MergedEntry) -> Result<Vec<MergedEntry>> {
        let mut out = Vec::new();
        for name in self.names(dir)? {
            if let Some(n) = self.lookup(dir, &name, false)?.node {
                out.push(n);
            }
        }
        Ok(out)
    }

    /// Visits every node below `dir` (not `dir` itself), parents before
    /// children, in path order.
    pub fn walk<E: From<crate::Error>>(
        &self,
        dir: &MergedEntry,
        f: &mut dyn FnMut(&MergedEntry) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        for child in self.children(dir)? {
            f(&child)?;
            if child.is_dir() {
                self.walk(&child, f)?;
            }
        }
        Ok(())
    }
}

/// The tools reach a merged directory's layer directories through the
/// ones its lookup held open. Nothing changes the layers of an unmounted
/// union, but the tools do not cache what a listing settles either (see
/// [`Changes::Any`]): one read is all they make of most directories.
impl Layers for Union {
    type Dir = MergedEntry;

    fn layers_of(&self, dir: &MergedEntry) -> Vec<LayerId> {
        dir.parts
            .iter()
            .filter(|p| p.dir.is_some())
            .map(|p| p.layer)
            .collect()
    }

    fn dir(&self, dir: &MergedEntry, layer: LayerId) -> Result<Arc<LayerDir>> {
        dir.parts
            .iter()
            .find(|p| p.layer == layer)
            .and_then(|p| p.dir.clone())
            .ok_or_else(|| Error::errno(libc::ENOTDIR))
    }

    fn root_dir(&self, layer: LayerId) -> Result<Arc<LayerDir>> {
        self.roots
            .get(layer as usize)
            .and_then(|r| r.clone())
            .ok_or_else(|| Error::errno(libc::EIO).context(format!("no layer {layer}")))
    }

    fn changes(&self, _layer: LayerId) -> Changes {
        Changes::Any
    }

    fn n_lowers(&self) -> LayerId {
        self.stack.lowers().len() as LayerId
    }

    fn n_with_data(&self) -> LayerId {
        self.stack.lowers_with_data().len() as LayerId
    }
}

/// What one lookup met, as the tools show it: the parts of the object, the
/// data file of a metacopy and, when explaining, what the stop hid.
struct Collect<'a> {
    parent: &'a MergedEntry,
    name: &'a OsStr,
    explain: bool,
    parts: Vec<Part>,
    data: Option<Part>,
    stop: Option<union::Stop>,
    cut: Vec<(LayerId, OsString, u32)>,
}

impl Collect<'_> {
    /// The path inside its layer of an object the lookup met.
    fn path(&self, obj: &Obj<'_>) -> OsString {
        let in_parent = |name: &OsStr| {
            let dir = self.parent.parts.iter().find(|p| p.layer == obj.layer);
            join_path(dir.map_or(OsStr::new(""), |p| &p.path), name)
        };
        match obj.at {
            LowerAt::Parent => in_parent(self.name),
            LowerAt::Named(n) => in_parent(n),
            LowerAt::Root(path) => path.clone(),
        }
    }

    fn part(&self, obj: &Obj<'_>) -> Part {
        Part {
            layer: obj.layer,
            path: self.path(obj),
            stat: *obj.stat,
            parent: Some(obj.parent.clone()),
            dir: obj.dir.cloned(),
            marks: obj.dir.map(|d| d.marks).unwrap_or_default(),
            redirect: obj.dir.and_then(|d| d.redirect.clone()),
        }
    }
}

impl union::Sink for Collect<'_> {
    fn explains(&self) -> bool {
        self.explain
    }

    fn part(&mut self, obj: &Obj<'_>) {
        let part = Collect::part(self, obj);
        self.parts.push(part);
    }

    fn data(&mut self, obj: &Obj<'_>) {
        self.data = Some(Collect::part(self, obj));
    }

    fn stop(&mut self, stop: union::Stop) {
        self.stop.get_or_insert(stop);
    }

    fn cut(&mut self, obj: &Obj<'_>) {
        let path = self.path(obj);
        self.cut
            .push((obj.layer, path, obj.stat.st_mode & libc::S_IFMT));
    }
}

/// A stop as `which` words it. `parts`: what the lookup found, among them
/// the opaque directory of an opaque stop.
fn stop_in_words(stop: union::Stop, parts: &[Part], explain: bool) -> Result<WordedStop> {
    Ok(match stop {
        union::Stop::Whiteout { layer, kind } => {
            let how = match kind {
                WhiteoutKind::Device => "char device 0/0",
                WhiteoutKind::Xattr => "overlay.whiteout xattr",
                WhiteoutKind::Oci => ".wh. file",
            };
            WordedStop::Whiteout {
                layer,
                how: how.to_owned(),
                oci: kind == WhiteoutKind::Oci,
            }
        }
        union::Stop::Opaque { layer, why } => {
            let part = parts.iter().rev().find(|p| p.layer == layer);
            let how = match (why, part) {
                (OpaqueWhy::Marker, Some(Part { dir: Some(d), .. })) if explain => {
                    whiteout::opaque_marker(d.fd())?
                }
                (OpaqueWhy::OciBeside, Some(p)) => {
                    Some(format!(".wh.{} beside it", show_name(p.name())))
                }
                (OpaqueWhy::OnPath, _) => Some("opaque dir on the redirect's path".to_owned()),
                _ => None,
            };
            WordedStop::Opaque {
                layer,
                how: how.unwrap_or_else(|| "opaque marker".to_owned()),
            }
        }
        union::Stop::Shadow { layer } => WordedStop::Shadow { layer },
    })
}

/// The non-empty components of a relative path (`.` skipped).
pub fn components(rel: &OsStr) -> impl Iterator<Item = &OsStr> {
    rel.as_bytes()
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(OsStr::from_bytes)
}

/// Xattrs a tool carries over from a layer object into an image layer or a
/// squashed tree: user ones (not the union's private ones), file
/// capabilities and ACLs. Sorted by name.
pub fn portable_xattrs(part: &Part) -> Result<Vec<(OsString, Vec<u8>)>> {
    if part.kind() == libc::S_IFLNK {
        // Linux allows no user.* xattrs on a symlink, and none of the others
        // apply to one.
        return Ok(Vec::new());
    }
    let fd: OwnedFd = part.open(libc::O_PATH)?;
    let names = match sys::flistxattr(fd.as_fd()) {
        Ok(n) => n,
        Err(e) if whiteout::is_xattr_unsupported(e.raw()) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        if !is_portable_xattr(&name) {
            continue;
        }
        if let Some(v) = sys::fgetxattr(fd.as_fd(), &name)? {
            out.push((name, v));
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

/// True for xattrs that belong to the file rather than to the union.
pub fn is_portable_xattr(name: &OsStr) -> bool {
    let n = name.as_bytes();
    if whiteout::is_private_xattr(name) {
        return false;
    }
    n.starts_with(b"user.")
        || n == b"security.capability"
        || n == b"system.posix_acl_access"
        || n == b"system.posix_acl_default"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_show_with_bytes_escaped() {
        assert_eq!(show_name(OsStr::new("plain é")), "plain é");
        assert_eq!(show_name(OsStr::from_bytes(b"a\xffb")), "a\\xffb");
        assert_eq!(show_name(OsStr::new("tab\there")), "tab\\there");
        assert_eq!(show_path(OsStr::new("")), "/");
        let comps: Vec<&OsStr> = components(OsStr::new("/a//./b/")).collect();
        assert_eq!(comps, ["a", "b"]);
        assert!(is_portable_xattr(OsStr::new("user.k")));
        assert!(is_portable_xattr(OsStr::new("security.capability")));
        assert!(!is_portable_xattr(OsStr::new("user.overlay.opaque")));
        assert!(!is_portable_xattr(OsStr::new("trusted.unionfs.origin")));
    }
}
