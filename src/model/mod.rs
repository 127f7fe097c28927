//! The model: what a mount and the tools hold of the layers, beneath every
//! union rule. The layers themselves ([`layer`]), the inode table
//! ([`node`]), the open layer directories ([`dir_cache`]) and how a node's
//! objects are reached through them ([`layer_reach`]); and the on-disk
//! formats read from the layers: whiteout and opaque markers
//! ([`whiteout`]), forced permissions ([`override_stat`]), owner mapping
//! ([`idmap`]) and ACLs ([`acl`]). Nothing here decides what the union
//! shows: that is [`crate::union`].

pub(crate) mod acl;
pub(crate) mod dir_cache;
pub mod idmap;
pub mod layer;
pub(crate) mod layer_reach;
pub mod node;
pub(crate) mod override_stat;
pub mod whiteout;
