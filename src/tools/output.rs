//! Where a tool may write its output: never inside the layers it reads
//! (`squash` would read what it writes without end, and an archive would
//! become part of the layer it describes), by path, by directory identity
//! (bind mounts), through a live mount of the layers, and, as a last
//! guard, when the output's own temporary shows in the union being read.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{live, offline, LayerArgs, ToolError};

impl LayerArgs {
    /// Refuses an output path inside any of the layers (or the work dir),
    /// symlinks resolved: a squash there would read what it writes without
    /// end, and an archive would become part of the layer it describes.
    pub fn refuse_output_inside(&self, output: &OsStr) -> Result<(), ToolError> {
        if output == "-" {
            return Ok(());
        }
        let Some(out) = resolved(Path::new(output)) else {
            // A parent that does not resolve fails with its own message
            // when the output is written.
            return Ok(());
        };
        let upper = self.upper.iter().map(|u| ("the upper".to_owned(), u));
        let work = self.work.iter().map(|w| ("the work dir".to_owned(), w));
        let lowers = (self.lowers.iter().enumerate()).map(|(i, l)| (format!("lower {}", i + 1), l));
        // The output's directories, by identity: a bind mount of a layer
        // is the layer under another path.
        let ids: Vec<(u64, u64)> = out
            .ancestors()
            .skip(1)
            .filter_map(|a| std::fs::metadata(a).ok())
            .map(|m| (m.dev(), m.ino()))
            .collect();
        for (what, layer) in upper.chain(work).chain(lowers) {
            let layer = std::fs::canonicalize(layer).unwrap_or_else(|_| layer.clone());
            let same = std::fs::metadata(&layer).is_ok_and(|m| ids.contains(&(m.dev(), m.ino())));
            if out.starts_with(&layer) || same {
                return Err(ToolError(format!(
                    "{}: inside {what} ({}); write it outside every layer (nothing written)",
                    Path::new(output).display(),
                    layer.display()
                )));
            }
        }
        // Through a live mount of these layers it would land in the upper.
        if let Some(found) = out.parent().and_then(|p| live::find(p).ok()) {
            let theirs: Vec<&PathBuf> = found
                .layers
                .lowers
                .iter()
                .chain(&found.layers.upper)
                .collect();
            if self
                .lowers
                .iter()
                .chain(&self.upper)
                .any(|l| theirs.contains(&l))
            {
                return Err(ToolError(format!(
                    "{}: inside a live mount of these layers; write it outside the union (nothing written)",
                    Path::new(output).display()
                )));
            }
        }
        Ok(())
    }
}

/// The error for an output whose own temporary showed in the union being
/// read (at `seen`): it is inside a layer by a way the checks before
/// writing cannot see (another union of the same layers), and writing on
/// would read its own output.
pub fn output_in_union(output: &OsStr, seen: &OsStr) -> ToolError {
    ToolError(format!(
        "{}: inside one of the layers (its temporary showed in the union at {}); \
         write it outside every layer (nothing written)",
        Path::new(output).display(),
        offline::show_path(seen)
    ))
}

/// `path` made absolute with its parent's symlinks resolved (the last
/// name kept, as it is replaced rather than followed); the whole path
/// resolved when it names an existing directory.
fn resolved(path: &Path) -> Option<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    if let Ok(full) = std::fs::canonicalize(&abs) {
        if full.is_dir() {
            return Some(full);
        }
    }
    let parent = std::fs::canonicalize(abs.parent()?).ok()?;
    Some(parent.join(abs.file_name()?))
}
