//! `unionfs layers`: one row per layer (top first) with its entries, bytes,
//! whiteouts and opaque directories, and the bytes that layers above hide
//! ("wasted", as dive counts them), then a total and an efficiency line.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};

use super::offline::{label, Union};
use super::ToolError;
use crate::model::layer::LayerId;
use crate::model::whiteout::{self, EntryRole};
use crate::sys;

/// What one layer holds, read from its directory alone.
#[derive(Debug, Default, Clone)]
pub struct LayerStats {
    /// Real objects (not markers), the root excluded.
    pub entries: u64,
    /// Bytes of regular files, each inode once.
    pub bytes: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    /// Bytes of regular files the merged view does not show.
    pub wasted: u64,
}

/// Walks one layer directory, calling `file` for each regular file's inode
/// (once per inode).
fn scan(
    dir: BorrowedFd,
    stats: &mut LayerStats,
    inodes: &mut HashSet<u64>,
    file: &mut dyn FnMut(u64, u64),
) -> Result<(), ToolError> {
    let (marks, _) = whiteout::dir_marks(dir)?;
    if marks.opaque {
        stats.opaque_dirs += 1;
    }
    for e in sys::read_dir_all(dir)? {
        let st = match sys::statat(dir, &e.name) {
            Ok(st) => st,
            Err(err) if err.is(libc::ENOENT) => continue,
            Err(err) => return Err(err.into()),
        };
        match whiteout::classify_entry(dir, marks, &e.name, &st)? {
            EntryRole::WhiteoutOf(_) => stats.whiteouts += 1,
            EntryRole::OpaqueMarker | EntryRole::Private => {}
            EntryRole::Plain => {
                stats.entries += 1;
                match st.st_mode & libc::S_IFMT {
                    libc::S_IFDIR => {
                        let fd = sys::openat(dir, &e.name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                        scan(fd.as_fd(), stats, inodes, file)?;
                    }
                    libc::S_IFREG if inodes.insert(st.st_ino) => {
                        stats.bytes += st.st_size as u64;
                        file(st.st_ino, st.st_size as u64);
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// Statistics of every layer, top first.
pub fn stats(union: &Union) -> Result<Vec<(LayerId, LayerStats)>, ToolError> {
    // The inodes the merged view serves, per layer; every other regular
    // file of a layer is hidden by a layer above it.
    let mut served: HashSet<(LayerId, u64)> = HashSet::new();
    let root = union.root()?;
    union.walk::<ToolError>(&root, &mut |n| {
        let top = n.top();
        if top.kind() == libc::S_IFREG {
            served.insert((top.layer, top.stat.st_ino));
        }
        Ok(())
    })?;
    let mut out = Vec::new();
    for &id in union.ids() {
        let layer = union.stack.get(id)?;
        let fd = sys::openat(
            layer.root(),
            OsStr::new("."),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?;
        let mut st = LayerStats::default();
        let mut wasted = 0;
        scan(
            fd.as_fd(),
            &mut st,
            &mut HashSet::new(),
            &mut |ino, size| {
                if !served.contains(&(id, ino)) {
                    wasted += size;
                }
            },
        )?;
        st.wasted = wasted;
        out.push((id, st));
    }
    Ok(out)
}

/// Prints the table.
pub fn run(union: &Union, out: &mut dyn Write) -> Result<(), ToolError> {
    let rows = stats(union)?;
    writeln!(
        out,
        "{:<9} {:>8} {:>12} {:>9} {:>6} {:>12}  PATH",
        "LAYER", "ENTRIES", "BYTES", "WHITEOUTS", "OPAQUE", "WASTED"
    )?;
    let mut total = LayerStats::default();
    for (id, s) in &rows {
        writeln!(
            out,
            "{:<9} {:>8} {:>12} {:>9} {:>6} {:>12}  {}",
            label(*id),
            s.entries,
            s.bytes,
            s.whiteouts,
            s.opaque_dirs,
            s.wasted,
            union.layer_path(*id)
        )?;
        total.entries += s.entries;
        total.bytes += s.bytes;
        total.whiteouts += s.whiteouts;
        total.opaque_dirs += s.opaque_dirs;
        total.wasted += s.wasted;
    }
    writeln!(
        out,
        "{:<9} {:>8} {:>12} {:>9} {:>6} {:>12}",
        "total", total.entries, total.bytes, total.whiteouts, total.opaque_dirs, total.wasted
    )?;
    let visible = total.bytes - total.wasted.min(total.bytes);
    let pct = if total.bytes == 0 {
        100.0
    } else {
        visible as f64 * 100.0 / total.bytes as f64
    };
    writeln!(
        out,
        "efficiency: {pct:.1}% ({visible} of {} bytes are visible in the merged view, {} wasted)",
        total.bytes, total.wasted
    )?;
    Ok(())
}
