//! Merged directory listings (docs/design.md §3 Readdir): a snapshot of the names
//! of all the directory's layers, the top one winning, whiteouts and the
//! names they hide dropped. Offsets index the snapshot, so telldir/seekdir
//! stay stable while the directory changes.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;

use crate::error::Result;
use crate::layer::{LayerId, UPPER};
use crate::lookup::{self, Listed};
use crate::node::Node;
use crate::sys;
use crate::tree::Tree;
use crate::whiteout;

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

/// Converts a `DT_*` value to `S_IFMT` bits; `None` for `DT_UNKNOWN`.
fn dtype_to_kind(d_type: u8) -> Option<u32> {
    Some(match d_type {
        libc::DT_REG => libc::S_IFREG,
        libc::DT_DIR => libc::S_IFDIR,
        libc::DT_LNK => libc::S_IFLNK,
        libc::DT_CHR => libc::S_IFCHR,
        libc::DT_BLK => libc::S_IFBLK,
        libc::DT_FIFO => libc::S_IFIFO,
        libc::DT_SOCK => libc::S_IFSOCK,
        _ => return None,
    })
}

/// A name found in one layer, before merging.
struct Seen {
    layer: LayerId,
    kind: u32,
    real_ino: u64,
    /// Some lower below the winning layer also has a directory here, so the
    /// entry may be a merged directory whose number comes from that lower.
    dir_below: bool,
    listed: Listed,
}

/// Lists the merged directory `dir`: "." and "..", then every visible name.
pub fn snapshot(tree: &Tree, dir: &Node) -> Result<Vec<DirEntry>> {
    let stack = dir.stack();
    let (parent_ino, _) = dir.place();
    let mut order: Vec<OsString> = Vec::new();
    let mut seen: HashMap<OsString, Seen> = HashMap::new();
    // Names whited out by a layer above the one being read.
    let mut hidden: HashSet<OsString> = HashSet::new();

    for layer_id in stack.layers() {
        let ldir = tree.dir(dir, layer_id)?;
        let mut whited_here: Vec<OsString> = Vec::new();
        for raw in ldir.list()? {
            if let Some(target) = whiteout::oci_whited_out_name(&raw.name) {
                whited_here.push(target.to_os_string());
                continue;
            }
            if whiteout::is_marker_name(&raw.name) {
                continue; // the OCI opaque marker and other AUFS entries
            }
            // Only an entry that may be a whiteout (or whose type the
            // listing does not give) costs an lstat.
            let mut kind = dtype_to_kind(raw.d_type);
            let may_be_whiteout = match kind {
                None | Some(libc::S_IFCHR) => true,
                Some(libc::S_IFREG) => ldir.marks.xattr_whiteouts,
                Some(_) => false,
            };
            if may_be_whiteout {
                let st = match sys::statat(ldir.fd(), &raw.name) {
                    Ok(st) => st,
                    Err(e) if e.is(libc::ENOENT) => continue,
                    Err(e) => return Err(e),
                };
                if whiteout::is_whiteout(ldir.fd(), ldir.marks, &raw.name, &st)? {
                    whited_here.push(raw.name);
                    continue;
                }
                kind = Some(st.st_mode & libc::S_IFMT);
            }
            let kind = kind.unwrap_or(libc::S_IFREG);
            if hidden.contains(&raw.name) {
                continue;
            }
            match seen.get_mut(&raw.name) {
                Some(top) => {
                    if top.kind == libc::S_IFDIR && kind == libc::S_IFDIR {
                        top.dir_below = true;
                    }
                    top.listed.add(layer_id);
                }
                None => {
                    order.push(raw.name.clone());
                    let mut listed = Listed::default();
                    listed.add(layer_id);
                    seen.insert(
                        raw.name,
                        Seen {
                            layer: layer_id,
                            kind,
                            real_ino: raw.ino,
                            dir_below: false,
                            listed,
                        },
                    );
                }
            }
        }
        hidden.extend(whited_here);
    }

    let mut out = Vec::with_capacity(order.len() + 2);
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
    for name in order {
        let Some(s) = seen.remove(&name) else {
            continue;
        };
        let (ino, pending) = if s.layer == UPPER {
            let pending = Pending {
                real_ino: s.real_ino,
                dir_below: s.dir_below,
            };
            (0, Some(pending))
        } else {
            (
                tree.nodes.ino_for(tree.layers.get(s.layer)?, s.real_ino),
                None,
            )
        };
        out.push(DirEntry {
            name,
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
pub fn settle_ino(tree: &Tree, dir: &Node, e: &mut DirEntry) -> Result<()> {
    let Some(p) = e.pending.take() else {
        return Ok(());
    };
    let merged = if p.dir_below {
        lookup::resolve(tree, dir, &e.name)?.map(|f| f.ino)
    } else {
        None
    };
    e.ino = match merged {
        Some(ino) => ino,
        None => {
            let udir = tree.dir(dir, UPPER)?;
            tree.nodes
                .upper_ino(&tree.layers, udir.fd(), &e.name, p.real_ino)?
        }
    };
    Ok(())
}
