//! Shared harness for the integration tests (real mounts through the binary),
//! one module per concern, all re-exported here so a test file needs only
//! `mod common; use common::*;`:
//!
//! * [`env`]: [`TestDir`], a private temp dir per test, cleaned (and
//!   unmounted) on Drop; [`require_mount_env`] / [`require_kernel_overlay`]:
//!   skip loudly, or fail under `CI=true`, when the machine cannot run the
//!   test; running commands ([`run`], [`unionfs`]) with a timeout and
//!   stdout/stderr captured through files (a daemon that keeps the pipes open
//!   cannot hang us).
//! * [`mounting`]: mount guards [`mount_unionfs`], [`mount_kernel_overlay`],
//!   [`mount_tmpfs`]. A guard unmounts on Drop and checks nothing is left
//!   mounted; a watchdog aborts a FUSE connection whose daemon hangs, so a
//!   test fails instead of blocking forever. Loop devices, and [`Daemon`], a
//!   daemon in the foreground as our child.
//! * [`layers`]: the layer DSL ([`Layer`]) and [`render`] in every
//!   whiteout/opaque [`Format`] of docs/design.md §2.
//! * [`model`]: [`merged_view`], a small reference model of the lowers-only
//!   merge (an oracle independent of the daemon).
//! * [`snapshot`]: [`snapshot`] / [`Tree::diff`] and [`checksum_layers`].
//! * [`sys`]: the only `unsafe` in the tests (xattrs, mknod, telldir/seekdir,
//!   truncate, utimensat, locks, statvfs, access), wrapped in safe functions
//!   that return `io::Result`, so the test files themselves need no `unsafe`.
//! * [`rng`]: [`Rng`], the one seeded generator of the tests.
//! * [`paths`]: byte/path helpers, errno helpers, file operations that panic
//!   with context.
//! * [`fixture_fx`] and [`fixture_env`]: the mounted-union fixtures of the
//!   write tests (copy_up, whiteouts, rename, hard_links, ...), not
//!   re-exported (their helper names are short): `use common::fixture_fx::*;`.
//!
//! Every test file includes this module (`mod common;`) and uses only part of
//! it, hence the `dead_code` allowance (and `unused_imports` on the re-exports).
#![allow(dead_code)]

pub mod env;
pub mod fixture_env;
pub mod fixture_fx;
pub mod layers;
pub mod model;
pub mod mounting;
pub mod paths;
pub mod rng;
pub mod snapshot;
pub mod sys;

// A test binary uses only part of what is re-exported.
#[allow(unused_imports)]
pub use {env::*, layers::*, model::*, mounting::*, paths::*, rng::*, snapshot::*};
