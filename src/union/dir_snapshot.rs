//! The mount's merged directory listings: a snapshot of the names the
//! union's rules show (`union/readdir.rs`), numbered as lookups number
//! them. Offsets index the snapshot, so telldir/seekdir stay stable while
//! the directory changes.

use std::ffi::OsString;

use crate::error::Result;
use crate::model::layer::UPPER;
use crate::model::layer_reach::LayerReach;
use crate::model::node::Node;
use crate::union;
use crate::union::mount_lookup::{self, Listed};

/// One name of a merged directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: OsString,
    /// `S_IFMT` bits.
    pub kind: u32,
    /// Equal to the entry's `st_ino` (what a lookup of it returns), once
    /// `pending` is settled.
    pub ino: u64,
    /// An upper entry whose number needs a look at the object itself (its
    /// recorded origin, or whether it merges): left for [`settle_inos`], as
    /// readdirplus looks every entry up anyway and never needs it.
    pub pending: Option<Pending>,
    /// The lowers whose listings hold the name: its lookup asks only them.
    pub listed: Listed,
}

/// What an upper entry's number is worked out from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    real_ino: u64,
    /// A lower below also has a directory of this name.
    dir_below: bool,
}

/// Lists the merged directory `dir`: "." and "..", then every visible name.
pub fn snapshot(reach: &LayerReach, dir: &Node) -> Result<Vec<DirEntry>> {
    let (parent_ino, _) = dir.place();
    let names = union::readdir::names(reach, dir)?;
    let mut out = Vec::with_capacity(names.len() + 2);
    out.push(DirEntry {
        name: ".".into(),
        kind: libc::S_IFDIR,
        ino: dir.ino,
        pending: None,
        listed: Listed::default(),
    });
    out.push(DirEntry {
        name: "..".into(),
        kind: libc::S_IFDIR,
        ino: parent_ino,
        pending: None,
        listed: Listed::default(),
    });
    for s in names {
        let (ino, pending) = if s.layer == UPPER {
            let pending = Pending {
                real_ino: s.real_ino,
                dir_below: s.dir_below,
            };
            (0, Some(pending))
        } else {
            (
                reach.nodes.ino_for(reach.layers.get(s.layer)?, s.real_ino),
                None,
            )
        };
        out.push(DirEntry {
            name: s.name,
            kind: s.kind,
            ino,
            pending,
            listed: s.listed,
        });
    }
    Ok(out)
}

/// Works out the number of an upper entry of the directory `dir`, if it
/// is still pending: a copied-up object keeps its origin's number, and an
/// upper directory that may merge with a lower one needs a real lookup to
/// tell whether it is opaque.
pub fn settle_ino(reach: &LayerReach, dir: &Node, e: &mut DirEntry) -> Result<()> {
    let Some(p) = e.pending.take() else {
        return Ok(());
    };
    let merged = if p.dir_below {
        mount_lookup::resolve(reach, dir, &e.name)?.map(|f| f.ino)
    } else {
        None
    };
    e.ino = match merged {
        Some(ino) => ino,
        None => {
            let udir = reach.dir(dir, UPPER)?;
            reach
                .nodes
                .upper_ino(&reach.layers, udir.fd(), &e.name, p.real_ino)?
        }
    };
    Ok(())
}
