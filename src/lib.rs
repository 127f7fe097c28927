//! unionfs: a union filesystem in userspace.
//!
//! The copy-on-write model in a few lines:
//!
//! * A mount stacks read-only **lower** layers under at most one writable
//!   **upper** layer. Layer 0 is the upper; lowers follow, top first.
//! * **Lookup** walks a directory's layers top-down and stops at the first
//!   whiteout, the first non-directory, or after an opaque directory
//!   ([`union::lookup`]). Directories of the same name merge
//!   ([`union::readdir`]). The mount and the offline tools share these rules.
//! * The first change to a lower object **copies it up**: it is rebuilt in
//!   the work dir and renamed into the upper in one step
//!   ([`union::copy_up`]).
//! * Removing an object that a lower still has leaves a **whiteout** in the
//!   upper ([`model::whiteout`]); lowers are never modified.
//!
//! Nodes know their place, not their path: a node is a parent node and a
//! name ([`model::node`]), and each layer's copy of it is reached from the
//! parent's directory in that layer, held open ([`model::layer_reach`],
//! [`model::dir_cache`]).
//!
//! Follow a request from the kernel: [`daemon::fuse`] converts it, [`ops`]
//! runs the union rule, and [`sys`] makes the system calls. The folders are
//! the layers of the code, each importing only from those below it
//! (docs/design.md §4): [`cli`] and the binary; [`daemon`]; [`ops`] and
//! [`tools`]; [`union`]; [`model`]; [`sys`] and [`error`].

#![deny(unsafe_code)]

// Public: what the binary (main.rs) and the tests in tests/ use. The rest
// is the crate's own, so the compiler sees when an item is no longer used.
// Top to bottom (docs/design.md §4): entry, daemon, operations and tools,
// union rules, model, system.
pub mod cli;
pub mod daemon;
pub(crate) mod error;
pub(crate) mod model;
pub(crate) mod mount_line;
pub(crate) mod mountinfo;
pub mod ops;
pub(crate) mod sys;
pub mod tools;
pub(crate) mod union;

// The paths tests/ name these modules by.
pub use daemon::fuse_conn;
pub use model::{idmap, layer, node, whiteout};

pub use error::{Error, Result};
