//! Top-down resolution of a name in a merged directory (docs/design.md §3 Lookup):
//! walk the parent's layers from the top and stop at the first whiteout,
//! the first non-directory, or after an opaque directory. Directories of the
//! same name merge; the result is the object's layer stack.
//!
//! A directory carrying an `overlay.redirect` (a renamed directory, ours or
//! kernel overlayfs's) sends the layers below it elsewhere: to a path from
//! each lower root (`/a/b`, after which every lower below is searched, as
//! the kernel does), or to another name in the same parent.
//!
//! A regular file carrying `overlay.metacopy` holds only metadata: the walk
//! goes on below it (to its redirect, else the same name) to the first file
//! that holds its own bytes, the data file. An absolute redirect of one is
//! the only way into data-only lowers (given after `::`).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use crate::dirs::LayerDir;
use crate::error::{Error, Result};
use crate::layer::{split_path, LayerId, INDEX, UPPER};
use crate::node::{Lower, LowerAt, Node, Stack};
use crate::sys::{self, Stat};
use crate::tree::Tree;
use crate::whiteout;

/// What a name resolves to.
#[derive(Debug)]
pub struct Found {
    pub ino: u64,
    /// `S_IFMT` bits.
    pub kind: u32,
    pub stack: Stack,
    /// `lstat` of the top layer's object (the one that answers reads).
    pub stat: Stat,
    /// Directories opened on the way (top first), to seed the fd cache.
    pub dirs: Vec<(LayerId, Arc<LayerDir>)>,
    /// The lookup listed the top object's xattrs and it shows none.
    pub no_xattrs: bool,
}

/// What one layer holds at a name.
enum InLayer {
    Absent,
    /// A whiteout (any format): nothing below shows.
    WhiteOut,
    Object(Stat),
}

/// Looks at `name` in one layer's copy of the parent directory.
fn probe(dir: &LayerDir, name: &OsStr) -> Result<InLayer> {
    if dir.surely_lacks(name) {
        return Ok(InLayer::Absent);
    }
    let st = match sys::statat(dir.fd(), name) {
        Ok(st) => st,
        Err(e) if e.is(libc::ENOENT) => {
            let whited =
                dir.may_hold_oci_whiteouts() && whiteout::has_oci_whiteout(dir.fd(), name)?;
            return Ok(if whited {
                InLayer::WhiteOut
            } else {
                InLayer::Absent
            });
        }
        Err(e) => return Err(e),
    };
    if whiteout::is_whiteout(dir.fd(), dir.marks, name, &st)? {
        return Ok(InLayer::WhiteOut);
    }
    Ok(InLayer::Object(st))
}

/// Where the next layer down is searched.
struct Cursor<'a> {
    parent: &'a Node,
    /// The parent's layers, top first.
    parent_layers: Vec<LayerId>,
    /// An absolute redirect was met: every lower below is searched.
    from_root: bool,
    /// Lowers looked up by name.
    n_lowers: LayerId,
    /// Lowers including data-only ones, searched for a metacopy's data.
    n_with_data: LayerId,
    /// Looking for a metacopy's data: data-only lowers count too.
    to_data: bool,
}

impl Cursor<'_> {
    /// The layer after `after` (`None`: the first).
    fn next(&self, after: Option<LayerId>) -> Option<LayerId> {
        match after {
            None => self.parent_layers.first().copied(),
            Some(cur) if self.from_root => {
                let last = if self.to_data {
                    self.n_with_data
                } else {
                    self.n_lowers
                };
                (cur < last).then_some(cur + 1)
            }
            Some(cur) => self.parent_layers.iter().copied().find(|l| *l > cur),
        }
    }
}

/// Where a layer holds the name, per `at`.
enum Place {
    /// This directory of the layer, and the name in it.
    At(Arc<LayerDir>, OsString),
    /// The layer has no directory there: look further down.
    Absent,
    /// A whiteout or non-directory on a redirect's path: nothing below shows.
    Stop,
}

/// Where `layer` holds `name` of `parent`, per `at`. On the way down a
/// redirect's path, an opaque directory ends the search after this layer
/// (`*opaque_on_path`), as kernel overlayfs does.
fn place_in(
    tree: &Tree,
    parent: &Node,
    layer: LayerId,
    name: &OsStr,
    at: &LowerAt,
    opaque_on_path: &mut bool,
) -> Result<Place> {
    let path = match at {
        LowerAt::Parent => return Ok(Place::At(tree.dir(parent, layer)?, name.to_os_string())),
        LowerAt::Named(n) => return Ok(Place::At(tree.dir(parent, layer)?, n.clone())),
        LowerAt::Root(path) => path,
    };
    let (dir_path, base) = split_path(path);
    let mut dir = tree.root_dir(layer)?;
    for c in dir_path
        .as_bytes()
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
    {
        let c = OsStr::from_bytes(c);
        match probe(&dir, c)? {
            InLayer::Absent => return Ok(Place::Absent),
            InLayer::WhiteOut => return Ok(Place::Stop),
            InLayer::Object(st) if st.st_mode & libc::S_IFMT != libc::S_IFDIR => {
                return Ok(Place::Stop)
            }
            InLayer::Object(_) => {}
        }
        let replaced = dir.may_hold_oci_whiteouts() && whiteout::has_oci_whiteout(dir.fd(), c)?;
        let next = LayerDir::open_at(dir.fd(), c, tree.changes(layer))?;
        *opaque_on_path |= next.marks.opaque || replaced;
        dir = Arc::new(next);
    }
    Ok(Place::At(dir, base.to_os_string()))
}

/// Where the layers below a directory with this redirect hold it, given
/// where this layer held it.
fn redirected(at: &LowerAt, redirect: &OsStr) -> LowerAt {
    let r = redirect.as_bytes();
    if let Some(abs) = r.strip_prefix(b"/") {
        return LowerAt::Root(OsStr::from_bytes(abs).to_os_string());
    }
    match at {
        // A relative redirect replaces the last component of the path.
        LowerAt::Root(path) => {
            let (dir, _) = split_path(path);
            LowerAt::Root(crate::layer::join_path(dir, redirect))
        }
        _ => LowerAt::Named(redirect.to_os_string()),
    }
}

/// Which lower layers' listings of a directory hold a name (as an object,
/// not a whiteout), learnt by a listing of it (`readdir.rs`): a lookup of
/// the name then skips the lowers that lack it instead of asking each.
/// Lowers never change, so what a listing saw stays true.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Listed(u64);

impl Listed {
    /// Records that lower `layer` holds the name.
    pub fn add(&mut self, layer: LayerId) {
        if let Some(bit) = 1u64.checked_shl(u32::from(layer)) {
            self.0 |= bit;
        }
    }

    /// False only when the listing of `layer` surely lacks the name (layers
    /// past the 63rd are not recorded, so they may hold it).
    fn may_hold(self, layer: LayerId) -> bool {
        1u64.checked_shl(u32::from(layer))
            .map_or(true, |bit| self.0 & bit != 0)
    }
}

/// Resolves `name` in the merged directory `parent`. `None`: not in the
/// merged view (absent everywhere, or whited out).
pub fn resolve(tree: &Tree, parent: &Node, name: &OsStr) -> Result<Option<Found>> {
    resolve_listed(tree, parent, name, None)
}

/// [`resolve`], knowing which lowers list the name in `parent` (readdirplus
/// looks up every name it has just listed).
pub fn resolve_listed(
    tree: &Tree,
    parent: &Node,
    name: &OsStr,
    listed: Option<Listed>,
) -> Result<Option<Found>> {
    if whiteout::is_marker_name(name) {
        return Ok(None);
    }
    let mut cursor = Cursor {
        parent,
        parent_layers: parent.stack().layers().collect(),
        from_root: false,
        n_lowers: tree.layers.lowers().len() as LayerId,
        n_with_data: tree.layers.lowers_with_data().len() as LayerId,
        to_data: false,
    };
    let mut stack = Stack::default();
    let mut top: Option<Stat> = None;
    let mut origin: Option<(LayerId, Stat)> = None;
    let mut dirs = Vec::new();
    let mut at = LowerAt::Parent;
    let mut layer = None;
    let mut opaque_on_path = false;
    // The data file a metacopy's bytes come from, once found.
    let mut data: Option<Stat> = None;
    // The top object's xattrs, listed to look for a metacopy, show none.
    let mut top_shows_no_xattrs = false;
    // That listing has no origin xattr: the top records no origin.
    let mut top_lacks_origin = false;
    while let Some(layer_id) = cursor.next(layer) {
        layer = Some(layer_id);
        // A lower whose listing of the parent lacks the name: nothing there
        // (a whiteout there hid the name from the listings below it too).
        // Only in the parent's own directory: a redirect leads elsewhere.
        if let Some(listed) = listed {
            if layer_id != UPPER
                && at == LowerAt::Parent
                && !cursor.from_root
                && !listed.may_hold(layer_id)
            {
                continue;
            }
        }
        let (pdir, here) = match place_in(
            tree,
            cursor.parent,
            layer_id,
            name,
            &at,
            &mut opaque_on_path,
        )? {
            Place::At(dir, here) => (dir, here),
            Place::Absent if opaque_on_path => break,
            Place::Absent => continue,
            Place::Stop => break,
        };
        let st = match probe(&pdir, &here)? {
            InLayer::Absent if opaque_on_path => break,
            InLayer::Absent => continue,
            InLayer::WhiteOut => break,
            InLayer::Object(st) => st,
        };
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let is_reg = st.st_mode & libc::S_IFMT == libc::S_IFREG;
        let is_top = top.is_none();
        match top {
            None => top = Some(st),
            // A metacopy's data must be a regular file (the kernel says EIO).
            Some(_) if cursor.to_data && !is_reg => break,
            // Below a directory only directories merge; anything else ends it.
            Some(_) if !is_dir && !cursor.to_data => break,
            Some(_) => {}
        }
        if layer_id == UPPER {
            stack.upper = true;
        } else {
            stack.lowers.push(Lower {
                layer: layer_id,
                at: at.clone(),
            });
            if origin.is_none() {
                origin = Some((layer_id, st));
            }
        }
        if !is_dir {
            // An empty file's bytes are nobody's: no metacopy to look for.
            let meta = match is_reg && st.st_size > 0 {
                true => {
                    let seen = whiteout::file_xattrs(pdir.fd(), &here)?;
                    top_shows_no_xattrs |= is_top && seen.none_shown;
                    top_lacks_origin |= is_top
                        && seen.names.as_ref().is_some_and(|names| {
                            !names.iter().any(|n| n == tree.nodes.origin_xattr())
                        });
                    seen.metacopy
                }
                false => None,
            };
            let Some(redirect) = meta else {
                if cursor.to_data {
                    data = Some(st);
                }
                cursor.to_data = false;
                break;
            };
            stack.metacopy |= is_top;
            cursor.to_data = true;
            if let Some(r) = redirect {
                at = redirected(&at, &r);
                if matches!(at, LowerAt::Root(_)) {
                    cursor.from_root = true;
                }
            }
            continue;
        }
        // A lower directory never changes: one held open for this node
        // serves again (a lookup repeats for every name below it).
        let held = match origin {
            Some((l, ost)) if layer_id != UPPER => tree
                .dirs
                .get(
                    tree.nodes.ino_for(tree.layers.get(l)?, ost.st_ino),
                    layer_id,
                )
                .filter(|d| d.real_ino == st.st_ino),
            _ => None,
        };
        let dir = match held {
            Some(d) => d,
            None => Arc::new(LayerDir::open_known(
                pdir.fd(),
                &here,
                tree.changes(layer_id),
                st.st_ino,
            )?),
        };
        let opaque = dir.marks.opaque;
        if let Some(r) = &dir.redirect {
            at = redirected(&at, r);
            if matches!(at, LowerAt::Root(_)) {
                cursor.from_root = true;
            }
        }
        dirs.push((layer_id, dir));
        // `.wh.NAME` beside a directory NAME in one layer: the directory was
        // deleted and made anew there, so nothing below it shows.
        if opaque
            || (pdir.may_hold_oci_whiteouts() && whiteout::has_oci_whiteout(pdir.fd(), &here)?)
        {
            break;
        }
    }
    let Some(mut stat) = top else {
        return Ok(None);
    };
    if cursor.to_data {
        return Err(Error::errno(libc::EIO).context(format!(
            "metacopy file {} has no data file below it",
            crate::layer::show_name(name)
        )));
    }
    if let Some(d) = data {
        // Its size and blocks are the data's (the kernel's metacopy shows
        // the same: the upper file is a hole of the data's size).
        stat.st_size = d.st_size;
        stat.st_blocks = d.st_blocks;
    }
    let kind = stat.st_mode & libc::S_IFMT;
    let own_number =
        || -> Result<u64> { Ok(tree.nodes.ino_for(tree.layers.get(UPPER)?, stat.st_ino)) };
    let ino = match (origin, dirs.first()) {
        (Some((layer, st)), _) => tree.nodes.ino_for(tree.layers.get(layer)?, st.st_ino),
        // Upper only, and its listed xattrs hold no origin: its own number.
        (None, _) if top_lacks_origin => own_number()?,
        // An upper-only directory is open already: its origin is read there.
        (None, Some((UPPER, d))) => match tree.nodes.read_origin(d.fd()) {
            Some(ino) => ino,
            None => own_number()?,
        },
        (None, _) => {
            let pdir = tree.dir(parent, UPPER)?;
            tree.nodes
                .upper_ino(&tree.layers, pdir.fd(), name, stat.st_ino)?
        }
    };
    // An object with several names may have its upper copy in the index.
    if kind != libc::S_IFDIR
        && stat.st_nlink > 1
        && tree.layers.get(INDEX).is_ok()
        && tree.index()?.has(ino)?
    {
        stack.index = Some(crate::index::key(ino));
        // A name only a lower shows, of an object whose copy (shared by
        // every name) is a metacopy: that lower file is its data.
        if !stack.metacopy && !stack.lowers.is_empty() {
            let key = crate::index::key(ino);
            let root = tree.root_dir(INDEX)?;
            stack.metacopy = whiteout::metacopy_of(root.fd(), &key)?.is_some();
        }
    }
    // (An indexed object's xattrs are its index entry's, not listed here.)
    let no_xattrs = top_shows_no_xattrs && stack.index.is_none();
    Ok(Some(Found {
        ino,
        kind,
        stack,
        stat,
        dirs,
        no_xattrs,
    }))
}

/// [`resolve`] again, under the parent's names lock, for a change about to
/// act on `found` (what `name` resolved to before the lock): `None` when the
/// name no longer shows that object. Lowers never change, so while `found`
/// has no upper copy, cannot have gained one through the index (it has one
/// name), and the upper still holds nothing at the name, `found` stands:
/// one `fstatat` of the upper instead of a walk down every layer.
pub fn recheck(tree: &Tree, parent: &Node, name: &OsStr, found: Found) -> Result<Option<Found>> {
    let may_be_indexed = found.kind != libc::S_IFDIR && found.stat.st_nlink > 1;
    if !found.stack.upper && !may_be_indexed {
        let slot = tree.dir(parent, UPPER)?.upper_slot(name)?;
        if !slot.object && !slot.is_whiteout() {
            return Ok(Some(found));
        }
    }
    Ok(resolve(tree, parent, name)?.filter(|f| f.ino == found.ino))
}

/// True when a lower layer of `parent` still has `name` (what the upper
/// hides): removing or renaming it away then needs a whiteout, and a new
/// directory there must be opaque.
pub fn in_lowers(tree: &Tree, parent: &Node, name: &OsStr) -> Result<bool> {
    for lower in parent.stack().lowers {
        let dir = tree.dir(parent, lower.layer)?;
        match probe(&dir, name)? {
            InLayer::Absent => continue,
            InLayer::WhiteOut => return Ok(false),
            InLayer::Object(_) => return Ok(true),
        }
    }
    Ok(false)
}

/// [`in_lowers`] for the name `found` resolved to: when a lower of its own
/// stack holds it at this name (not through a redirect), that settles it
/// without asking the lowers again; an upper object may still hide a lower
/// one of the name.
pub fn found_in_lowers(tree: &Tree, parent: &Node, name: &OsStr, found: &Found) -> Result<bool> {
    if found.stack.lowers.iter().any(|l| l.at == LowerAt::Parent) {
        return Ok(true);
    }
    in_lowers(tree, parent, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_rules_out_only_the_lowers_it_saw_without_the_name() {
        let mut l = Listed::default();
        l.add(2);
        l.add(70); // past the mask: not recorded
        assert!(l.may_hold(2));
        assert!(!l.may_hold(1));
        assert!(!l.may_hold(3));
        // Layers the mask cannot tell about may always hold it.
        assert!(l.may_hold(64));
        assert!(l.may_hold(70));
        assert!(l.may_hold(200));
    }
}
