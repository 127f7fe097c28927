//! Finding the layers of a live unionfs mount from a path inside it: the
//! mount from `/proc/self/mountinfo`, its layers from the command line of
//! the daemon serving it (read the way `mount` reads it, [`crate::cli`]).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::{LayerArgs, ToolError};
use crate::{mount_line, mountinfo};

/// A path of a live mount, as layers and a path relative to the union root.
pub struct LivePath {
    pub layers: LayerArgs,
    pub rel: OsString,
}

/// `path` made absolute, with `.`/`..` resolved through the real parents
/// but the last name kept as it is (it may be a symlink, or deleted).
fn place(path: &Path) -> Result<PathBuf, ToolError> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name))
            if !matches!(abs.components().next_back(), Some(Component::ParentDir)) =>
        {
            let parent = fs::canonicalize(parent)
                .map_err(|e| ToolError(format!("{}: {}", parent.display(), ToolError::from(e))))?;
            Ok(parent.join(name))
        }
        _ => fs::canonicalize(&abs)
            .map_err(|e| ToolError(format!("{}: {}", abs.display(), ToolError::from(e)))),
    }
}

/// Command lines of processes that may be unionfs daemons.
fn daemons() -> Vec<(PathBuf, Vec<OsString>)> {
    let own_exe = fs::read_link("/proc/self/exe").ok();
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name.as_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let base = entry.path();
        let Ok(cmdline) = fs::read(base.join("cmdline")) else {
            continue;
        };
        let args: Vec<OsString> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| OsStr::from_bytes(a).to_os_string())
            .collect();
        let Some(argv0) = args.first() else { continue };
        let exe = fs::read_link(base.join("exe")).ok();
        let named = Path::new(argv0)
            .file_name()
            .is_some_and(|n| n.as_bytes().starts_with(b"unionfs"));
        if !(named || (exe.is_some() && exe == own_exe)) {
            continue;
        }
        let Ok(cwd) = fs::read_link(base.join("cwd")) else {
            continue;
        };
        out.push((cwd, args));
    }
    out
}

fn resolve_in(cwd: &Path, p: &OsStr) -> PathBuf {
    let p = Path::new(p);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    };
    fs::canonicalize(&joined).unwrap_or(joined)
}

/// Finds the live mount holding `path` and the layers its daemon serves.
pub fn find(path: &Path) -> Result<LivePath, ToolError> {
    let at = place(path)?;
    let mount = mountinfo::mounts()
        .map_err(|e| ToolError(format!("cannot read /proc/self/mountinfo: {e}")))?
        .into_iter()
        .filter(|m| at.starts_with(&m.point))
        // Mounted over each other: the last one listed is the one seen.
        .max_by_key(|m| m.point.as_os_str().len())
        .and_then(|m| m.fuse.then_some(m.point))
        .ok_or_else(|| {
            ToolError(format!(
                "{} is not inside a unionfs mount (name the layers with -l LOWER[:LOWER...] [-u UPPER])",
                path.display()
            ))
        })?;
    let rel = at
        .strip_prefix(&mount)
        .map(|r| r.as_os_str().to_os_string())
        .unwrap_or_default();
    for (cwd, args) in daemons() {
        let Some(typed) = mount_line::typed_layers(&args) else {
            continue;
        };
        if resolve_in(&cwd, &typed.mountpoint) != mount {
            continue;
        }
        return Ok(LivePath {
            layers: LayerArgs {
                lowers: typed.lowers.iter().map(|l| resolve_in(&cwd, l)).collect(),
                upper: typed.upper.as_deref().map(|u| resolve_in(&cwd, u)),
                work: match (&typed.work, &typed.upper) {
                    (Some(w), _) => Some(resolve_in(&cwd, w)),
                    (None, Some(u)) => Some(mount_line::default_work_dir(&resolve_in(&cwd, u))),
                    (None, None) => None,
                }
                .filter(|w| w.is_dir()),
            },
            rel,
        });
    }
    Err(ToolError(format!(
        "no unionfs daemon found serving {} (name the layers with -l LOWER[:LOWER...] [-u UPPER])",
        mount.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_command_line_names_its_layers() {
        let argv = |s: &[&str]| s.iter().map(OsString::from).collect::<Vec<_>>();
        let t = mount_line::typed_layers(&argv(&[
            "unionfs", "mount", "-l", "a\\:b:c", "-u", "up", "-f", "mnt",
        ]))
        .unwrap();
        assert_eq!(t.lowers, ["a:b", "c"]);
        assert_eq!(t.upper.as_deref(), Some(OsStr::new("up")));
        assert_eq!(t.mountpoint, "mnt");
        let t = mount_line::typed_layers(&argv(&[
            "/usr/bin/unionfs",
            "-o",
            "lowerdir=l1:l2,upperdir=u,workdir=w",
            "/m",
        ]))
        .unwrap();
        assert_eq!(t.lowers, ["l1", "l2"]);
        assert_eq!(t.mountpoint, "/m");
        let t =
            mount_line::typed_layers(&argv(&["unionfs", "src", "/m", "-o", "lowerdir=l"])).unwrap();
        assert_eq!((t.lowers, t.upper), (vec![OsString::from("l")], None));
        assert!(mount_line::typed_layers(&argv(&["unionfs", "--version"])).is_none());
        assert!(mount_line::typed_layers(&argv(&["unionfs", "umount", "/m"])).is_none());
    }
}
