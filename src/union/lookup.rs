//! Top-down resolution of a name in a merged directory (docs/design.md §3
//! Lookup): walk the parent's layers from the top and stop at the first
//! whiteout, the first non-directory, or after an opaque directory.
//! Directories of the same name merge.
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

use super::{Layers, Obj, OpaqueWhy, Sink, Stop, WhiteoutKind};
use crate::error::Result;
use crate::model::dir_cache::LayerDir;
use crate::model::layer::{split_path, LayerId, UPPER};
use crate::model::node::{Lower, LowerAt, Stack};
use crate::model::whiteout::{self, FileXattrs};
use crate::sys::{self, Stat};

/// What one layer holds at a name.
pub enum InLayer {
    Absent,
    /// A whiteout: nothing below shows.
    WhiteOut(WhiteoutKind),
    Object(Stat),
}

/// Looks at `name` in one layer's copy of a directory.
pub fn probe(dir: &LayerDir, name: &OsStr) -> Result<InLayer> {
    if dir.surely_lacks(name) {
        return Ok(InLayer::Absent);
    }
    let st = match sys::statat(dir.fd(), name) {
        Ok(st) => st,
        Err(e) if e.is(libc::ENOENT) => {
            let whited =
                dir.may_hold_oci_whiteouts() && whiteout::has_oci_whiteout(dir.fd(), name)?;
            return Ok(if whited {
                InLayer::WhiteOut(WhiteoutKind::Oci)
            } else {
                InLayer::Absent
            });
        }
        Err(e) => return Err(e),
    };
    if whiteout::is_whiteout_stat(&st) {
        return Ok(InLayer::WhiteOut(WhiteoutKind::Device));
    }
    if whiteout::is_whiteout(dir.fd(), dir.marks, name, &st)? {
        return Ok(InLayer::WhiteOut(WhiteoutKind::Xattr));
    }
    Ok(InLayer::Object(st))
}

/// Where the next layer down is searched.
struct Cursor {
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

impl Cursor {
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
    Stop(Stop),
}

/// Where `layer` holds `name` of `parent`, per `at`. On the way down a
/// redirect's path, an opaque directory ends the search after this layer
/// (`*opaque_on_path`), as kernel overlayfs does.
fn place_in<L: Layers>(
    layers: &L,
    parent: &L::Dir,
    layer: LayerId,
    name: &OsStr,
    at: &LowerAt,
    opaque_on_path: &mut bool,
) -> Result<Place> {
    let path = match at {
        LowerAt::Parent => return Ok(Place::At(layers.dir(parent, layer)?, name.to_os_string())),
        LowerAt::Named(n) => return Ok(Place::At(layers.dir(parent, layer)?, n.clone())),
        LowerAt::Root(path) => path,
    };
    let (dir_path, base) = split_path(path);
    let mut dir = layers.root_dir(layer)?;
    for c in dir_path
        .as_bytes()
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
    {
        let c = OsStr::from_bytes(c);
        match probe(&dir, c)? {
            InLayer::Absent => return Ok(Place::Absent),
            InLayer::WhiteOut(kind) => return Ok(Place::Stop(Stop::Whiteout { layer, kind })),
            InLayer::Object(st) if st.st_mode & libc::S_IFMT != libc::S_IFDIR => {
                return Ok(Place::Stop(Stop::Shadow { layer }))
            }
            InLayer::Object(_) => {}
        }
        let replaced = dir.may_hold_oci_whiteouts() && whiteout::has_oci_whiteout(dir.fd(), c)?;
        let next = LayerDir::open_at(dir.fd(), c, layers.changes(layer))?;
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
            LowerAt::Root(crate::model::layer::join_path(dir, redirect))
        }
        _ => LowerAt::Named(redirect.to_os_string()),
    }
}

/// Which lower layers' listings of a directory hold a name (as an object,
/// not a whiteout), learnt by a listing of it (`union/readdir.rs`): a lookup of
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

/// What a lookup found, before a reader numbers it.
#[derive(Debug, Default)]
pub struct Walk {
    /// `lstat` of the top object; `None`: the name does not show.
    pub top: Option<Stat>,
    /// Every layer holding the object, with the metacopies below a
    /// metacopy top and its data file last (no index entry: that is the
    /// reader's to look for).
    pub stack: Stack,
    /// The topmost lower object, whose number the object takes.
    pub origin: Option<(LayerId, Stat)>,
    /// `lstat` of a metacopy's data file.
    pub data: Option<Stat>,
    /// Directories opened on the way (top first).
    pub dirs: Vec<(LayerId, Arc<LayerDir>)>,
    /// The xattrs listed of a non-empty regular top file (to look for a
    /// metacopy), which settle what else it carries.
    pub top_xattrs: Option<FileXattrs>,
    /// The top is a metacopy and no data file was found below it (the
    /// kernel says EIO).
    pub data_missing: bool,
}

/// Resolves `name` in the merged directory `parent` by the union's rules,
/// telling `sink` what it meets. `listed`: which lowers a listing of
/// `parent` saw the name in (readdirplus looks up every name it lists).
pub fn walk<L: Layers, S: Sink>(
    layers: &L,
    parent: &L::Dir,
    name: &OsStr,
    listed: Option<Listed>,
    sink: &mut S,
) -> Result<Walk> {
    let mut w = Walk::default();
    if whiteout::is_marker_name(name) {
        return Ok(w);
    }
    let mut cursor = Cursor {
        parent_layers: layers.layers_of(parent),
        from_root: false,
        n_lowers: layers.n_lowers(),
        n_with_data: layers.n_with_data(),
        to_data: false,
    };
    let mut at = LowerAt::Parent;
    let mut layer = None;
    let mut last_part = UPPER;
    let mut opaque_on_path = false;
    // Past the stop, only to tell the sink what it hides.
    let mut stopped = false;
    // Records a stop; true when the walk ends there.
    let end = |sink: &mut S, stop: Stop, stopped: &mut bool| {
        if !*stopped {
            sink.stop(stop);
        }
        *stopped = sink.explains();
        !*stopped
    };
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
        let on_path = Stop::Opaque {
            layer: layer_id,
            why: OpaqueWhy::OnPath,
        };
        let (pdir, here) = match place_in(layers, parent, layer_id, name, &at, &mut opaque_on_path)?
        {
            Place::At(dir, here) => (dir, here),
            Place::Absent if opaque_on_path && (cursor.to_data || !stopped) => {
                if cursor.to_data || end(sink, on_path, &mut stopped) {
                    break;
                }
                continue;
            }
            Place::Absent => continue,
            Place::Stop(_) if cursor.to_data => break,
            Place::Stop(stop) => {
                if end(sink, stop, &mut stopped) {
                    break;
                }
                continue;
            }
        };
        let st = match probe(&pdir, &here)? {
            InLayer::Absent if opaque_on_path && (cursor.to_data || !stopped) => {
                if cursor.to_data || end(sink, on_path, &mut stopped) {
                    break;
                }
                continue;
            }
            InLayer::Absent => continue,
            InLayer::WhiteOut(_) if cursor.to_data => break,
            InLayer::WhiteOut(kind) => {
                let stop = Stop::Whiteout {
                    layer: layer_id,
                    kind,
                };
                if end(sink, stop, &mut stopped) {
                    break;
                }
                continue;
            }
            InLayer::Object(st) => st,
        };
        let kind = st.st_mode & libc::S_IFMT;
        let is_dir = kind == libc::S_IFDIR;
        let is_reg = kind == libc::S_IFREG;
        let obj = |dir| Obj {
            layer: layer_id,
            at: &at,
            parent: &pdir,
            stat: &st,
            dir,
        };
        if cursor.to_data {
            // A metacopy's data must be a regular file (the kernel says EIO).
            if !is_reg {
                break;
            }
            w.stack.lowers.push(Lower {
                layer: layer_id,
                at: at.clone(),
            });
            w.origin.get_or_insert((layer_id, st));
            // An empty file's bytes are nobody's: no metacopy to look for.
            let meta = match st.st_size > 0 {
                true => whiteout::file_xattrs(pdir.fd(), &here)?.metacopy,
                false => None,
            };
            match meta {
                Some(redirect) => {
                    if let Some(r) = redirect {
                        at = redirected(&at, &r);
                        cursor.from_root |= matches!(at, LowerAt::Root(_));
                    }
                    continue;
                }
                None => {
                    sink.data(&obj(None));
                    w.data = Some(st);
                    cursor.to_data = false;
                    if stopped {
                        continue;
                    }
                    break;
                }
            }
        }
        if stopped {
            sink.cut(&obj(None));
            continue;
        }
        if w.top.is_some() && !is_dir {
            // Below a directory only directories merge; anything else ends it.
            sink.cut(&obj(None));
            if end(sink, Stop::Shadow { layer: last_part }, &mut stopped) {
                break;
            }
            continue;
        }
        w.top.get_or_insert(st);
        last_part = layer_id;
        if layer_id == UPPER {
            w.stack.upper = true;
        } else {
            w.stack.lowers.push(Lower {
                layer: layer_id,
                at: at.clone(),
            });
            w.origin.get_or_insert((layer_id, st));
        }
        if !is_dir {
            // The top, a non-directory: it shadows everything below, and
            // a metacopy's bytes are further down.
            sink.part(&obj(None));
            let meta = match is_reg && st.st_size > 0 {
                true => {
                    let mut seen = whiteout::file_xattrs(pdir.fd(), &here)?;
                    let meta = seen.metacopy.take();
                    w.top_xattrs = Some(seen);
                    meta
                }
                false => None,
            };
            let shadow = Stop::Shadow { layer: layer_id };
            let Some(redirect) = meta else {
                if end(sink, shadow, &mut stopped) {
                    break;
                }
                continue;
            };
            sink.stop(shadow);
            stopped = sink.explains();
            w.stack.metacopy = true;
            cursor.to_data = true;
            if let Some(r) = redirect {
                at = redirected(&at, &r);
                cursor.from_root |= matches!(at, LowerAt::Root(_));
            }
            continue;
        }
        let held = match w.origin {
            Some((l, ost)) if layer_id != UPPER => layers.held((l, &ost), layer_id, st.st_ino),
            _ => None,
        };
        let dir = match held {
            Some(d) => d,
            None => Arc::new(LayerDir::open_known(
                pdir.fd(),
                &here,
                layers.changes(layer_id),
                st.st_ino,
            )?),
        };
        sink.part(&obj(Some(&dir)));
        // `.wh.NAME` beside a directory NAME in one layer: the directory was
        // deleted and made anew there, so nothing below it shows. Nor does
        // anything below a layer whose path to it, down a redirect, crossed
        // an opaque directory (the kernel's `d->stop` in ovl_lookup_single).
        let opaque = if dir.marks.opaque {
            Some(OpaqueWhy::Marker)
        } else if pdir.may_hold_oci_whiteouts() && whiteout::has_oci_whiteout(pdir.fd(), &here)? {
            Some(OpaqueWhy::OciBeside)
        } else if opaque_on_path {
            Some(OpaqueWhy::OnPath)
        } else {
            None
        };
        if let Some(r) = &dir.redirect {
            at = redirected(&at, r);
            cursor.from_root |= matches!(at, LowerAt::Root(_));
        }
        w.dirs.push((layer_id, dir));
        if let Some(why) = opaque {
            let stop = Stop::Opaque {
                layer: layer_id,
                why,
            };
            if end(sink, stop, &mut stopped) {
                break;
            }
        }
    }
    w.data_missing = cursor.to_data && w.top.is_some();
    Ok(w)
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
