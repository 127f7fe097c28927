//! The offline union reader: the merged view of unmounted layers, resolved
//! with the mount's marker rules (docs/design.md §2, §3) from [`crate::whiteout`],
//! plus, on request, what each lookup hid and why (for `which`).
//!
//! Layers are reached only through held directory fds and `*at` calls that
//! never follow a symlink, and are only ever read.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::Result;
use crate::layer::{join_path, split_path, LayerId, LayerStack, INDEX, UPPER};
use crate::node::NodeTable;
use crate::sys::{self, Stat};
use crate::whiteout::{self, DirMarks, EntryRole};

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

pub use crate::layer::{show_name, show_path};

/// One layer's copy of a merged object.
#[derive(Debug, Clone)]
pub struct Part {
    pub layer: LayerId,
    /// Path inside the layer (differs from the merged path under a redirect).
    pub path: OsString,
    pub stat: Stat,
    /// The directory holding it (`None` only for a layer root).
    pub parent: Option<Arc<OwnedFd>>,
    /// For a directory: the directory itself, open for reading.
    pub dir: Option<Arc<OwnedFd>>,
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

    /// Opens the object itself (`O_PATH` for anything but reading data).
    pub fn open(&self, flags: i32) -> Result<OwnedFd> {
        match (&self.parent, &self.dir) {
            (Some(p), _) => sys::openat(p.as_fd(), self.name(), flags, 0),
            (None, Some(d)) => sys::openat(d.as_fd(), OsStr::new("."), flags, 0),
            (None, None) => Err(crate::error::Error::errno(libc::EIO)),
        }
    }
}

/// An object of the merged view with its stack: for a directory every layer
/// directory that merges into it (top first), else the one serving copy.
#[derive(Debug, Clone)]
pub struct Node {
    /// Relative to the union root; empty for the root.
    pub path: OsString,
    pub parts: Vec<Part>,
    /// For a metacopy (`overlay.metacopy`): the file below holding its
    /// bytes; its metadata is the serving copy's.
    pub data: Option<Part>,
}

impl Node {
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
pub enum Stop {
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
    pub node: Option<Node>,
    pub stop: Option<Stop>,
    /// With `explain`: the objects of that name below the stop, which the
    /// merged view does not show (layer, path in the layer, `S_IFMT`).
    pub cut: Vec<(LayerId, OsString, u32)>,
}

/// What a layer directory holds at a name.
enum Probe {
    Absent,
    Whiteout(String, bool),
    Object(Stat),
}

/// Where a layer holds a name on a redirect's path from the layer root.
enum Place {
    /// This directory (its fd, marks and path) and the name in it.
    At(Arc<OwnedFd>, DirMarks, OsString, OsString),
    /// The layer has no directory there: look further down.
    Absent,
    /// A whiteout or non-directory on the path: nothing below shows.
    Stop(Stop),
}

/// The layers of one union, open, and the rules to read them.
pub struct Union {
    pub stack: LayerStack,
    /// Layer ids, top first.
    ids: Vec<LayerId>,
    /// The upper's hard-link index (`WORK/index`), if the work dir has one.
    index: Option<HardLinkIndex>,
}

/// `WORK/index`: an object with several lower names that was copied up
/// through one of them serves every name from its entry there, named by
/// the number the mount gives the object ([`NodeTable::ino_for`]).
struct HardLinkIndex {
    path: PathBuf,
    dir: Arc<OwnedFd>,
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
                        dir: Arc::new(fd),
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
        Ok(Union { stack, ids, index })
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
        let key = crate::index::key(ino);
        match sys::statat(index.dir.as_fd(), &key) {
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

    fn root_fd(&self, layer: LayerId) -> Result<BorrowedFd<'_>> {
        Ok(self.stack.get(layer)?.root())
    }

    /// The root of the union: every layer's root directory.
    pub fn root(&self) -> Result<Node> {
        let mut parts = Vec::new();
        for &id in &self.ids {
            let root = self.root_fd(id)?;
            let fd = sys::openat(root, OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            let (marks, _) = whiteout::dir_marks(fd.as_fd())?;
            parts.push(Part {
                layer: id,
                path: OsString::new(),
                stat: sys::fstat(fd.as_fd())?,
                parent: None,
                dir: Some(Arc::new(fd)),
                marks,
                redirect: None,
            });
        }
        Ok(Node {
            path: OsString::new(),
            parts,
            data: None,
        })
    }

    /// Looks at `name` in one layer directory.
    fn probe(&self, dir: BorrowedFd, marks: DirMarks, name: &OsStr) -> Result<Probe> {
        let st = match sys::statat(dir, name) {
            Ok(st) => st,
            Err(e) if e.is(libc::ENOENT) => {
                return Ok(if whiteout::has_oci_whiteout(dir, name)? {
                    Probe::Whiteout(".wh. file".into(), true)
                } else {
                    Probe::Absent
                });
            }
            Err(e) => return Err(e),
        };
        if whiteout::is_whiteout_stat(&st) {
            return Ok(Probe::Whiteout("char device 0/0".into(), false));
        }
        if whiteout::is_whiteout(dir, marks, name, &st)? {
            return Ok(Probe::Whiteout("overlay.whiteout xattr".into(), false));
        }
        Ok(Probe::Object(st))
    }

    /// Walks a redirect's path `abs` down from the root of `layer`, as the
    /// mount's lookup does: a whiteout or non-directory on the way stops
    /// the lookup, an opaque directory on the way sets `opaque_on_path`.
    fn place_on_path(
        &self,
        layer: LayerId,
        abs: &OsStr,
        opaque_on_path: &mut bool,
    ) -> Result<Place> {
        let (dir_path, base) = split_path(abs);
        let open_dir =
            |d: BorrowedFd, n: &OsStr| sys::openat(d, n, libc::O_RDONLY | libc::O_DIRECTORY, 0);
        let mut fd = open_dir(self.root_fd(layer)?, OsStr::new("."))?;
        let mut marks = whiteout::dir_marks(fd.as_fd())?.0;
        let mut walked = OsString::new();
        for c in components(dir_path) {
            walked = join_path(&walked, c);
            match self.probe(fd.as_fd(), marks, c)? {
                Probe::Absent => return Ok(Place::Absent),
                Probe::Whiteout(how, oci) => {
                    return Ok(Place::Stop(Stop::Whiteout { layer, how, oci }))
                }
                Probe::Object(st) if st.st_mode & libc::S_IFMT != libc::S_IFDIR => {
                    return Ok(Place::Stop(Stop::Shadow { layer }))
                }
                Probe::Object(_) => {}
            }
            let replaced = whiteout::has_oci_whiteout(fd.as_fd(), c)?;
            let next = open_dir(fd.as_fd(), c)?;
            marks = whiteout::dir_marks(next.as_fd())?.0;
            *opaque_on_path |= marks.opaque || replaced;
            fd = next;
        }
        Ok(Place::At(Arc::new(fd), marks, walked, base.to_os_string()))
    }

    /// Resolves `name` in the merged directory `parent` with the mount's
    /// stop rules. With `explain`, goes on below the stop to list what the
    /// stop hides.
    pub fn lookup(&self, parent: &Node, name: &OsStr, explain: bool) -> Result<Lookup> {
        let mut out = Lookup {
            node: None,
            stop: None,
            cut: Vec::new(),
        };
        if whiteout::is_marker_name(name) || name.is_empty() || name == "." || name == ".." {
            return Ok(out);
        }
        let mut parts: Vec<Part> = Vec::new();
        // Where the layers below look, once a redirect was met: an absolute
        // path from each layer root, or another name in the same parent.
        let mut absolute: Option<(LayerId, OsString)> = None;
        let mut lower_name = name.to_os_string();
        // An opaque directory met on the way down a redirect's path: the
        // search ends at the first layer without the name.
        let mut opaque_on_path = false;
        // Below a metacopy: looking for the file that holds its bytes.
        let mut want_data = false;
        let mut data: Option<Part> = None;
        // Where the layers below look after a redirect `r` met in layer `id`.
        let follow = |absolute: &mut Option<(LayerId, OsString)>,
                      lower_name: &mut OsString,
                      id: LayerId,
                      r: &OsStr| {
            match (r.as_bytes().strip_prefix(b"/"), &*absolute) {
                (Some(abs), _) => *absolute = Some((id, OsStr::from_bytes(abs).to_os_string())),
                // A relative redirect on a path from the root replaces its
                // last component.
                (None, Some((_, abs))) => *absolute = Some((id, join_path(split_path(abs).0, r))),
                (None, None) => *lower_name = r.to_os_string(),
            }
        };
        // Sets the stop (the first one wins); true when the walk ends here.
        let stop_at = |out: &mut Lookup, stop: Stop| {
            if out.stop.is_none() {
                out.stop = Some(stop);
                return !explain;
            }
            false
        };
        for &id in &self.ids {
            let (pfd, pmarks, ppath, pname) = match &absolute {
                Some((above, abs)) => {
                    if id <= *above {
                        continue;
                    }
                    match self.place_on_path(id, abs, &mut opaque_on_path)? {
                        Place::At(fd, marks, dir, base) => (fd, marks, dir, base),
                        Place::Absent if opaque_on_path => {
                            let how = "opaque dir on the redirect's path".to_owned();
                            if stop_at(&mut out, Stop::Opaque { layer: id, how }) {
                                break;
                            }
                            continue;
                        }
                        Place::Absent => continue,
                        Place::Stop(_) if want_data => break,
                        Place::Stop(stop) => {
                            if stop_at(&mut out, stop) {
                                break;
                            }
                            continue;
                        }
                    }
                }
                None => {
                    let Some(pp) = parent.parts.iter().find(|p| p.layer == id) else {
                        continue;
                    };
                    let Some(dir) = &pp.dir else { continue };
                    (dir.clone(), pp.marks, pp.path.clone(), lower_name.clone())
                }
            };
            let path_in_layer = join_path(&ppath, &pname);
            let st = match self.probe(pfd.as_fd(), pmarks, &pname)? {
                Probe::Absent if opaque_on_path && out.stop.is_none() => {
                    let how = "opaque dir on the redirect's path".to_owned();
                    if stop_at(&mut out, Stop::Opaque { layer: id, how }) {
                        break;
                    }
                    continue;
                }
                Probe::Absent => continue,
                Probe::Whiteout(..) if want_data => break,
                Probe::Whiteout(how, oci) => {
                    if stop_at(
                        &mut out,
                        Stop::Whiteout {
                            layer: id,
                            how,
                            oci,
                        },
                    ) {
                        break;
                    }
                    continue;
                }
                Probe::Object(st) => st,
            };
            let kind = st.st_mode & libc::S_IFMT;
            if want_data {
                // A metacopy's bytes: the first regular file below that is
                // no metacopy itself (anything else: none, as the mount says).
                if kind != libc::S_IFREG {
                    break;
                }
                match whiteout::metacopy_of(pfd.as_fd(), &pname)? {
                    Some(Some(r)) => follow(&mut absolute, &mut lower_name, id, &r),
                    Some(None) => {}
                    None => {
                        want_data = false;
                        data = Some(Part {
                            layer: id,
                            path: path_in_layer,
                            stat: st,
                            parent: Some(pfd.clone()),
                            dir: None,
                            marks: DirMarks::default(),
                            redirect: None,
                        });
                        if !explain {
                            break;
                        }
                    }
                }
                continue;
            }
            if out.stop.is_some() {
                out.cut.push((id, path_in_layer, kind));
                continue;
            }
            let is_dir = kind == libc::S_IFDIR;
            if let Some(top) = parts.first() {
                if !is_dir || !top.is_dir() {
                    out.stop = Some(Stop::Shadow {
                        layer: parts.last().map(|p| p.layer).unwrap_or(id),
                    });
                    out.cut.push((id, path_in_layer, kind));
                    if !explain {
                        break;
                    }
                    continue;
                }
            }
            let mut part = Part {
                layer: id,
                path: path_in_layer,
                stat: st,
                parent: Some(pfd.clone()),
                dir: None,
                marks: DirMarks::default(),
                redirect: None,
            };
            if is_dir {
                let fd = sys::openat(pfd.as_fd(), &pname, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                (part.marks, part.redirect) = whiteout::dir_marks(fd.as_fd())?;
                let fd = Arc::new(fd);
                part.dir = Some(fd.clone());
                // `.wh.NAME` beside a directory NAME: deleted and made anew
                // in this layer, so nothing below shows (as the mount reads it).
                let how = if part.marks.opaque && explain {
                    whiteout::opaque_marker(fd.as_fd())?
                } else if part.marks.opaque {
                    Some("opaque marker".to_owned())
                } else if whiteout::has_oci_whiteout(pfd.as_fd(), &pname)? {
                    Some(format!(".wh.{} beside it", show_name(&pname)))
                } else {
                    None
                };
                if let Some(r) = &part.redirect {
                    follow(&mut absolute, &mut lower_name, id, r);
                }
                parts.push(part);
                if let Some(how) = how {
                    out.stop = Some(Stop::Opaque { layer: id, how });
                    if !explain {
                        break;
                    }
                }
            } else {
                let meta = match kind == libc::S_IFREG && st.st_size > 0 {
                    true => whiteout::metacopy_of(pfd.as_fd(), &pname)?,
                    false => None,
                };
                parts.push(part);
                out.stop = Some(Stop::Shadow { layer: id });
                match meta {
                    Some(r) => {
                        want_data = true;
                        if let Some(r) = r {
                            follow(&mut absolute, &mut lower_name, id, &r);
                        }
                    }
                    None if !explain => break,
                    None => {}
                }
            }
        }
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
                out.stop.get_or_insert(Stop::Shadow { layer: INDEX });
            }
            // A lower name of an object whose shared copy is a metacopy:
            // that lower file holds the bytes.
            let meta = match (entry.kind() == libc::S_IFREG, &entry.parent) {
                (true, Some(p)) => whiteout::metacopy_of(p.as_fd(), entry.name())?.is_some(),
                _ => false,
            };
            if meta && data.is_none() && parts[0].layer != UPPER {
                data = Some(parts[0].clone());
                want_data = false;
            }
            parts = vec![entry];
        }
        if want_data {
            return Err(crate::error::Error::errno(libc::EIO).context(format!(
                "metacopy {} has no data file below it",
                show_path(&join_path(&parent.path, name))
            )));
        }
        if !parts.is_empty() {
            out.node = Some(Node {
                path: join_path(&parent.path, name),
                parts,
                data,
            });
        }
        Ok(out)
    }

    /// Resolves a relative path from the root; `None` when the union does
    /// not show it.
    pub fn resolve(&self, rel: &OsStr) -> Result<Option<Node>> {
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
    pub fn names(&self, dir: &Node) -> Result<Vec<OsString>> {
        let mut hidden: HashSet<OsString> = HashSet::new();
        let mut seen: HashSet<OsString> = HashSet::new();
        for part in &dir.parts {
            let Some(fd) = &part.dir else { continue };
            let mut whited = Vec::new();
            for e in sys::read_dir_all(fd.as_fd())? {
                let st = match sys::statat(fd.as_fd(), &e.name) {
                    Ok(st) => st,
                    // Gone since the listing: layers are not meant to change.
                    Err(err) if err.is(libc::ENOENT) => continue,
                    Err(err) => return Err(err),
                };
                match whiteout::classify_entry(fd.as_fd(), part.marks, &e.name, &st)? {
                    EntryRole::Plain => {
                        if !hidden.contains(&e.name) {
                            seen.insert(e.name);
                        }
                    }
                    EntryRole::WhiteoutOf(n) => whited.push(n),
                    EntryRole::OpaqueMarker | EntryRole::Private => {}
                }
            }
            // A layer's whiteouts hide the layers below it, not its own names.
            hidden.extend(whited);
        }
        let mut names: Vec<OsString> = seen.into_iter().collect();
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        Ok(names)
    }

    /// The children of a merged directory, sorted by name.
    pub fn children(&self, dir: &Node) -> Result<Vec<Node>> {
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
        dir: &Node,
        f: &mut dyn FnMut(&Node) -> std::result::Result<(), E>,
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
    let fd = part.open(libc::O_PATH)?;
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
