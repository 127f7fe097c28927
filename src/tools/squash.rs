//! `unionfs squash`: the merged view written out as one plain directory, no
//! markers, with owners, modes, times, portable xattrs and hard links kept.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd;

use super::offline::{portable_xattrs, show_path, MergedEntry, Part, Union};
use super::stage::{Meta, Stage};
use super::ToolError;
use crate::model::layer::split_path;
use crate::sys;

/// The metadata of a layer object, as a squash or an archive carries it.
pub fn meta_of(part: &Part) -> Result<Meta, ToolError> {
    Ok(Meta {
        mode: part.stat.st_mode & 0o7777,
        uid: part.stat.st_uid,
        gid: part.stat.st_gid,
        mtime: (part.stat.st_mtime, part.stat.st_mtime_nsec),
        xattrs: portable_xattrs(part)?,
    })
}

/// Copies a regular file's data (copy_file_range where the kernel can).
pub fn copy_data(from: &Part, to: &mut File) -> Result<(), ToolError> {
    let mut src = File::from(from.open(libc::O_RDONLY)?);
    std::io::copy(&mut src, to)?;
    Ok(())
}

fn write_node(
    stage: &mut Stage,
    links: &mut HashMap<(u64, u64), std::ffi::OsString>,
    node: &MergedEntry,
) -> Result<(), ToolError> {
    let top = node.top();
    let (parent, name) = split_path(&node.path);
    let dir = stage.dir(parent)?;
    let kind = top.kind();
    let fail = |e: crate::Error| ToolError(format!("{}: {e}", show_path(&node.path)));
    match kind {
        libc::S_IFDIR => sys::mkdirat(dir.as_fd(), name, 0o700).map_err(fail)?,
        libc::S_IFREG => {
            if top.stat.st_nlink > 1 {
                let key = (top.stat.st_dev, top.stat.st_ino);
                if let Some(first) = links.get(&key) {
                    let (fp, fname) = split_path(first);
                    let fdir = stage.dir(fp)?;
                    return sys::linkat(fdir.as_fd(), fname, dir.as_fd(), name).map_err(fail);
                }
                links.insert(key, node.path.clone());
            }
            let fd = sys::openat(
                dir.as_fd(),
                name,
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                0o600,
            )
            .map_err(fail)?;
            // A metacopy's bytes are its data file's.
            copy_data(node.data_part(), &mut File::from(fd))?;
        }
        libc::S_IFLNK => {
            let target = top.link_target().map_err(fail)?;
            sys::symlinkat(&target, dir.as_fd(), name).map_err(fail)?;
        }
        _ => sys::mknodat(dir.as_fd(), name, kind | 0o600, top.stat.st_rdev).map_err(fail)?,
    }
    stage.set_meta(dir.as_fd(), &node.path, kind, meta_of(top)?)
}

/// Writes the merged view of `union` to the new directory `output`.
pub fn run(union: &Union, output: &OsStr) -> Result<(), ToolError> {
    let mut stage = Stage::new(output)?;
    let root = union.root()?;
    stage.set_root_meta(meta_of(root.top())?);
    let mut links = HashMap::new();
    let tmp = stage.tmp_name().to_os_string();
    union.walk::<ToolError>(&root, &mut |node| {
        if split_path(&node.path).1 == tmp {
            return Err(super::output::output_in_union(output, &node.path));
        }
        write_node(&mut stage, &mut links, node)
    })?;
    stage.finish()
}
