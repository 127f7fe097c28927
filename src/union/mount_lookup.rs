//! The mount's lookups: a name resolved by the union's rules
//! (`union/lookup.rs`) over the mount's held directories, numbered (the
//! origin's inode number, as overlayfs xino) and joined to its hard-link
//! index entry; and the checks a change of names makes again under its
//! directory's lock.

use std::ffi::OsStr;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::dir_cache::{Changes, LayerDir};
use crate::model::layer::{LayerId, INDEX, UPPER};
use crate::model::layer_reach::LayerReach;
use crate::model::node::{LowerAt, Node, Stack};
use crate::model::whiteout;
use crate::sys::Stat;
use crate::union;
use crate::union::lookup::InLayer;
pub use crate::union::lookup::Listed;

/// What a name resolves to.
#[derive(Debug)]
pub struct Resolved {
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

/// Resolves `name` in the merged directory `parent`. `None`: not in the
/// merged view (absent everywhere, or whited out).
pub fn resolve(reach: &LayerReach, parent: &Node, name: &OsStr) -> Result<Option<Resolved>> {
    resolve_listed(reach, parent, name, None)
}

/// [`resolve`], knowing which lowers list the name in `parent` (readdirplus
/// looks up every name it has just listed).
pub fn resolve_listed(
    reach: &LayerReach,
    parent: &Node,
    name: &OsStr,
    listed: Option<Listed>,
) -> Result<Option<Resolved>> {
    let union::lookup::Walk {
        top,
        mut stack,
        origin,
        data,
        dirs,
        top_xattrs,
        data_missing,
    } = union::lookup::walk(reach, parent, name, listed, &mut union::Quiet)?;
    // The top object's xattrs, listed to look for a metacopy, show none.
    let top_shows_no_xattrs = top_xattrs.as_ref().is_some_and(|x| x.none_shown);
    // That listing has no origin xattr: the top records no origin.
    let top_lacks_origin = top_xattrs
        .and_then(|x| x.names)
        .is_some_and(|names| !names.iter().any(|n| n == reach.nodes.origin_xattr()));
    let Some(mut stat) = top else {
        return Ok(None);
    };
    if data_missing {
        return Err(Error::errno(libc::EIO).context(format!(
            "metacopy file {} has no data file below it",
            crate::model::layer::show_name(name)
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
        || -> Result<u64> { Ok(reach.nodes.ino_for(reach.layers.get(UPPER)?, stat.st_ino)) };
    let ino = match (origin, dirs.first()) {
        (Some((layer, st)), _) => reach.nodes.ino_for(reach.layers.get(layer)?, st.st_ino),
        // Upper only, and its listed xattrs hold no origin: its own number.
        (None, _) if top_lacks_origin => own_number()?,
        // An upper-only directory is open already: its origin is read there.
        (None, Some((UPPER, d))) => match reach.nodes.read_origin(d.fd()) {
            Some(ino) => ino,
            None => own_number()?,
        },
        (None, _) => {
            let pdir = reach.dir(parent, UPPER)?;
            reach
                .nodes
                .upper_ino(&reach.layers, pdir.fd(), name, stat.st_ino)?
        }
    };
    // An object with several names may have its upper copy in the index.
    if kind != libc::S_IFDIR
        && stat.st_nlink > 1
        && reach.layers.get(INDEX).is_ok()
        && reach.index()?.has(ino)?
    {
        stack.index = Some(crate::union::index::key(ino));
        // A name only a lower shows, of an object whose copy (shared by
        // every name) is a metacopy: that lower file is its data.
        if !stack.metacopy && !stack.lowers.is_empty() {
            let key = crate::union::index::key(ino);
            let root = reach.root_dir(INDEX)?;
            stack.metacopy = whiteout::metacopy_of(root.fd(), &key)?.is_some();
        }
    }
    // (An indexed object's xattrs are its index entry's, not listed here.)
    let no_xattrs = top_shows_no_xattrs && stack.index.is_none();
    Ok(Some(Resolved {
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
pub fn recheck(
    reach: &LayerReach,
    parent: &Node,
    name: &OsStr,
    found: Resolved,
) -> Result<Option<Resolved>> {
    let may_be_indexed = found.kind != libc::S_IFDIR && found.stat.st_nlink > 1;
    if !found.stack.upper && !may_be_indexed {
        let slot = reach.dir(parent, UPPER)?.upper_slot(name)?;
        if !slot.object && !slot.is_whiteout() {
            return Ok(Some(found));
        }
    }
    Ok(resolve(reach, parent, name)?.filter(|f| f.ino == found.ino))
}

/// True when a lower layer of `parent` still has `name` (what the upper
/// hides): removing or renaming it away then needs a whiteout, and a new
/// directory there must be opaque.
pub fn in_lowers(reach: &LayerReach, parent: &Node, name: &OsStr) -> Result<bool> {
    for lower in parent.stack().lowers {
        let dir = reach.dir(parent, lower.layer)?;
        match union::lookup::probe(&dir, name)? {
            InLayer::Absent => continue,
            InLayer::WhiteOut(_) => return Ok(false),
            InLayer::Object(_) => return Ok(true),
        }
    }
    Ok(false)
}

/// [`in_lowers`] for the name `found` resolved to: when a lower of its own
/// stack holds it at this name (not through a redirect), that settles it
/// without asking the lowers again; an upper object may still hide a lower
/// one of the name.
pub fn found_in_lowers(
    reach: &LayerReach,
    parent: &Node,
    name: &OsStr,
    found: &Resolved,
) -> Result<bool> {
    if found.stack.lowers.iter().any(|l| l.at == LowerAt::Parent) {
        return Ok(true);
    }
    in_lowers(reach, parent, name)
}

/// The mount reaches a merged directory's layer directories through its
/// fd cache. (Here, not in `layer_reach.rs`, so the model never names a
/// union rule.)
impl crate::union::Layers for LayerReach {
    type Dir = Node;

    fn layers_of(&self, dir: &Node) -> Vec<LayerId> {
        dir.stack().layers().collect()
    }

    fn dir(&self, dir: &Node, layer: LayerId) -> Result<Arc<LayerDir>> {
        LayerReach::dir(self, dir, layer)
    }

    fn root_dir(&self, layer: LayerId) -> Result<Arc<LayerDir>> {
        LayerReach::root_dir(self, layer)
    }

    fn changes(&self, layer: LayerId) -> Changes {
        LayerReach::changes(self, layer)
    }

    fn n_lowers(&self) -> LayerId {
        self.layers.lowers().len() as LayerId
    }

    fn n_with_data(&self) -> LayerId {
        self.layers.lowers_with_data().len() as LayerId
    }

    fn held(
        &self,
        origin: (LayerId, &Stat),
        layer: LayerId,
        real_ino: u64,
    ) -> Option<Arc<LayerDir>> {
        let ino = self
            .nodes
            .ino_for(self.layers.get(origin.0).ok()?, origin.1.st_ino);
        self.dirs.get(ino, layer).filter(|d| d.real_ino == real_ino)
    }
}
