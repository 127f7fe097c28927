//! The union rules, written once for the mount and the offline tools:
//! top-down lookup with its stop rules and redirects ([`lookup`]) and the
//! merged listing ([`readdir`]), over [`Layers`], the one thing that
//! differs between them: how a merged directory's layer directories are
//! reached. The mount reaches them through its fd cache
//! (`model/layer_reach.rs`), the tools through the directories their walk
//! holds (`tools/offline.rs`).
//!
//! Both are generic parameters, not trait objects: the mount's lookup runs
//! per request, and monomorphised it costs what a hand-written one would.
//!
//! The mount's own side of the rules lives here too, beneath `ops`: its
//! numbered lookups ([`mount_lookup`]) and listings ([`dir_snapshot`]),
//! open handles ([`handles`]), copy-up ([`copy_up`]), every change to the
//! upper ([`upper`]), the work dir ([`workdir`]) and the hard-link index
//! ([`index`]).

pub(crate) mod copy_up;
pub(crate) mod dir_snapshot;
pub(crate) mod handles;
pub(crate) mod index;
pub mod lookup;
pub(crate) mod mount_lookup;
pub mod readdir;
pub(crate) mod upper;
pub(crate) mod workdir;

use std::sync::Arc;

use crate::error::Result;
use crate::model::dir_cache::{Changes, LayerDir};
use crate::model::layer::LayerId;
use crate::model::node::LowerAt;
use crate::sys::Stat;

/// How a reader of a union reaches its layers' directories.
pub trait Layers {
    /// A merged directory as this reader holds it.
    type Dir: ?Sized;

    /// The layers whose directories merge into `dir`, top first.
    fn layers_of(&self, dir: &Self::Dir) -> Vec<LayerId>;

    /// `dir`'s directory in `layer` (one of [`Layers::layers_of`]).
    fn dir(&self, dir: &Self::Dir, layer: LayerId) -> Result<Arc<LayerDir>>;

    /// The root directory of `layer` (data-only lowers included).
    fn root_dir(&self, layer: LayerId) -> Result<Arc<LayerDir>>;

    /// What may change `layer`'s directories while this reader holds them.
    fn changes(&self, layer: LayerId) -> Changes;

    /// How many lowers are looked up by name.
    fn n_lowers(&self) -> LayerId;

    /// How many lowers a metacopy's data is searched in (data-only too).
    fn n_with_data(&self) -> LayerId;

    /// A directory of lower `layer` (inode `real_ino` there) that is held
    /// open already for the object whose origin is `origin`: lowers never
    /// change, so a lookup repeated for every name below it needs no open.
    fn held(
        &self,
        origin: (LayerId, &Stat),
        layer: LayerId,
        real_ino: u64,
    ) -> Option<Arc<LayerDir>> {
        let _ = (origin, layer, real_ino);
        None
    }
}

/// One layer's object met by a lookup.
pub struct Obj<'a> {
    pub layer: LayerId,
    /// Where the layer holds it, relative to the lookup's parent.
    pub at: &'a LowerAt,
    /// The layer directory holding it.
    pub parent: &'a Arc<LayerDir>,
    pub stat: &'a Stat,
    /// For a directory: itself, open.
    pub dir: Option<&'a Arc<LayerDir>>,
}

/// What a lookup tells besides its result, for a reader that explains a
/// view (`which`, `ls`). Every method does nothing by default, which is
/// what the mount uses.
pub trait Sink {
    /// Go on below the stop to report, through [`Sink::cut`], what it
    /// hides. A constant per sink type, so the mount's check folds away.
    fn explains(&self) -> bool {
        false
    }

    /// An object that shows: the top one, or a directory merging into it.
    fn part(&mut self, obj: &Obj<'_>) {
        let _ = obj;
    }

    /// The file holding a metacopy's bytes.
    fn data(&mut self, obj: &Obj<'_>) {
        let _ = obj;
    }

    /// Why the lookup stopped above the bottom layer (the first stop only).
    fn stop(&mut self, stop: Stop) {
        let _ = stop;
    }

    /// With [`Sink::explains`]: an object below the stop, not shown.
    fn cut(&mut self, obj: &Obj<'_>) {
        let _ = obj;
    }
}

/// The sink of a lookup that only wants its result.
pub struct Quiet;

impl Sink for Quiet {}

/// Why a lookup stopped before the bottom layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A whiteout in this layer deletes the name.
    Whiteout { layer: LayerId, kind: WhiteoutKind },
    /// This layer's directory of the name hides the ones below.
    Opaque { layer: LayerId, why: OpaqueWhy },
    /// A non-directory in this layer (or a directory above a non-directory)
    /// shadows what lies below.
    Shadow { layer: LayerId },
}

/// Which format a whiteout is in (docs/design.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutKind {
    /// A character device 0/0 at the name.
    Device,
    /// A regular file at the name with `overlay.whiteout`.
    Xattr,
    /// The file `.wh.NAME` beside the name.
    Oci,
}

/// Why a directory hides the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpaqueWhy {
    /// Its opaque xattr or `.wh..wh..opq`.
    Marker,
    /// `.wh.NAME` beside it: deleted and made anew in its layer.
    OciBeside,
    /// An opaque directory on a redirect's path from the layer root.
    OnPath,
}
