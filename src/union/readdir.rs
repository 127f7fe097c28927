//! The names of a merged directory (docs/design.md §3 Readdir): all its
//! layers' names, the top one winning, whiteouts and the names they hide
//! dropped. Merging stops where the lookup that found the directory
//! stopped: an opaque directory's stack holds no layer below it.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;

use super::lookup::Listed;
use super::Layers;
use crate::error::Result;
use crate::model::layer::LayerId;
use crate::model::whiteout;
use crate::sys;

/// One visible name of a merged directory.
#[derive(Debug)]
pub struct Name {
    pub name: OsString,
    /// The layer whose entry shows.
    pub layer: LayerId,
    /// `S_IFMT` bits.
    pub kind: u32,
    /// The entry's inode number in its layer.
    pub real_ino: u64,
    /// Some lower below the winning layer also has a directory here, so the
    /// entry may be a merged directory.
    pub dir_below: bool,
    /// The lowers whose listings hold the name: its lookup asks only them.
    pub listed: Listed,
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

/// The visible names of the merged directory `dir`, in the order the
/// layers list them, top layer first.
pub fn names<L: Layers>(layers: &L, dir: &L::Dir) -> Result<Vec<Name>> {
    let mut out: Vec<Name> = Vec::new();
    let mut at: HashMap<OsString, usize> = HashMap::new();
    // Names whited out by a layer above the one being read.
    let mut hidden: HashSet<OsString> = HashSet::new();
    for layer_id in layers.layers_of(dir) {
        let ldir = layers.dir(dir, layer_id)?;
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
                    // Gone since the listing: the name is not there.
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
            match at.get(&raw.name) {
                Some(&i) => {
                    let top = &mut out[i];
                    if top.kind == libc::S_IFDIR && kind == libc::S_IFDIR {
                        top.dir_below = true;
                    }
                    top.listed.add(layer_id);
                }
                None => {
                    let mut listed = Listed::default();
                    listed.add(layer_id);
                    at.insert(raw.name.clone(), out.len());
                    out.push(Name {
                        name: raw.name,
                        layer: layer_id,
                        kind,
                        real_ino: raw.ino,
                        dir_below: false,
                        listed,
                    });
                }
            }
        }
        // A layer's whiteouts hide the layers below it, not its own names.
        hidden.extend(whited_here);
    }
    Ok(out)
}
