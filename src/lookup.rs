//! Top-down resolution of a name in a merged directory (DESIGN §3 Lookup):
//! walk the parent's layers from the top and stop at the first whiteout,
//! the first non-directory, or after an opaque directory. Directories of the
//! same name merge; the result is the object's layer stack.

use std::ffi::OsStr;
use std::sync::Arc;

use crate::error::Result;
use crate::index::Index;
use crate::layer::{join_path, LayerId, LayerStack, INDEX, UPPER};
use crate::node::{LayerDir, Node, NodeTable, Stack};
use crate::sys::{self, Stat};
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

/// Resolves `name` in the merged directory `parent`. `None`: not in the
/// merged view (absent everywhere, or whited out).
pub fn resolve(
    layers: &LayerStack,
    table: &NodeTable,
    parent: &Node,
    name: &OsStr,
) -> Result<Option<Found>> {
    if whiteout::is_marker_name(name) {
        return Ok(None);
    }
    let pstack = parent.stack();
    let path = join_path(&pstack.path, name);
    let lower_path = join_path(&pstack.lower_path, name);
    let mut stack = Stack {
        path,
        upper: false,
        lowers: Vec::new(),
        lower_path,
        index: None,
    };
    let mut top: Option<Stat> = None;
    let mut origin: Option<(LayerId, Stat)> = None;
    let mut dirs = Vec::new();
    let entries: Vec<LayerId> = pstack.entries().map(|(l, _)| l).collect();
    for (i, &layer_id) in entries.iter().enumerate() {
        let pdir = table.dir(layers, parent, layer_id)?;
        let st = match probe(&pdir, name)? {
            InLayer::Absent => continue,
            InLayer::WhiteOut => break,
            InLayer::Object(st) => st,
        };
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        match top {
            None => top = Some(st),
            // Below a directory only directories merge; anything else ends it.
            Some(_) if !is_dir => break,
            Some(_) => {}
        }
        if layer_id == UPPER {
            stack.upper = true;
        } else {
            stack.lowers.push(layer_id);
            if origin.is_none() {
                origin = Some((layer_id, st));
            }
        }
        if !is_dir {
            break;
        }
        let more_below = i + 1 < entries.len();
        let layer = layers.get(layer_id)?;
        let dir_path = if layer_id == UPPER {
            &stack.path
        } else {
            &stack.lower_path
        };
        let dir = Arc::new(LayerDir::open(layer, dir_path)?);
        let opaque = dir.marks.opaque;
        dirs.push((layer_id, dir));
        // `.wh.NAME` beside a directory NAME in one layer: the directory was
        // deleted and made anew there, so nothing below it shows.
        if !more_below
            || opaque
            || (pdir.may_hold_oci_whiteouts() && whiteout::has_oci_whiteout(pdir.fd(), name)?)
        {
            break;
        }
    }
    let Some(stat) = top else {
        return Ok(None);
    };
    let kind = stat.st_mode & libc::S_IFMT;
    let ino = match origin {
        Some((layer, st)) => table.ino_for(layers.get(layer)?, st.st_ino),
        None => {
            let pdir = table.dir(layers, parent, UPPER)?;
            table.upper_ino(layers, pdir.fd(), name, stat.st_ino)?
        }
    };
    // An object with several names may have its upper copy in the index.
    if kind != libc::S_IFDIR && stat.st_nlink > 1 {
        if let Ok(layer) = layers.get(INDEX) {
            let index = Index {
                layer,
                meta_prefix: table.meta_prefix,
            };
            if index.has(ino)? {
                stack.index = Some(crate::index::key(ino));
            }
        }
    }
    Ok(Some(Found {
        ino,
        kind,
        stack,
        stat,
        dirs,
    }))
}

/// True when a lower layer of `parent` still has `name` (what the upper
/// hides): removing or renaming it away then needs a whiteout, and a new
/// directory there must be opaque.
pub fn in_lowers(
    layers: &LayerStack,
    table: &NodeTable,
    parent: &Node,
    name: &OsStr,
) -> Result<bool> {
    let pstack = parent.stack();
    for &layer in &pstack.lowers {
        let dir = table.dir(layers, parent, layer)?;
        match probe(&dir, name)? {
            InLayer::Absent => continue,
            InLayer::WhiteOut => return Ok(false),
            InLayer::Object(_) => return Ok(true),
        }
    }
    Ok(false)
}
