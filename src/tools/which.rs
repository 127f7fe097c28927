//! `unionfs which`: for a path of the union, the layer that serves it, the
//! lower copies it shadows, and the whiteout or opaque directory that hides
//! any other copy; or, for a path the union does not show, why.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::AsFd;

use super::offline::{components, label, show_path, Lookup, MergedEntry, Union, WordedStop};
use super::ToolError;
use crate::model::layer::{join_path, split_path, LayerId};
use crate::sys;

/// A copy of the path in some layer that the merged view does not show.
struct Hidden {
    layer: LayerId,
    path: OsString,
    why: String,
}

/// What `which` finds for one path.
struct Explained {
    node: Option<MergedEntry>,
    /// Why the path is missing, when it is.
    missing: Option<String>,
    hidden: Vec<Hidden>,
}

fn describe_stop(stop: &WordedStop, at: &OsStr) -> String {
    match stop {
        WordedStop::Whiteout { layer, how, oci } => {
            let (dir, name) = split_path(at);
            let marker = match oci {
                true => join_path(dir, &crate::model::whiteout::oci_whiteout_name(name)),
                false => at.to_os_string(),
            };
            format!(
                "whited out in {} ({how} at {})",
                label(*layer),
                show_path(&marker)
            )
        }
        WordedStop::Opaque { layer, how } => format!(
            "hidden by opaque dir {} in {} ({how})",
            show_path(at),
            label(*layer)
        ),
        WordedStop::Shadow { layer } => {
            format!("shadowed by {} in {}", show_path(at), label(*layer))
        }
    }
}

/// True when `rest` exists below `dir` (a path in `layer`), as a plain
/// object, not following symlinks.
fn exists_below(union: &Union, layer: LayerId, dir: &OsStr, rest: &OsStr) -> bool {
    let Ok(l) = union.stack.get(layer) else {
        return false;
    };
    let full = join_path(dir, rest);
    let (d, name) = split_path(&full);
    match sys::open_beneath(l.root(), d, libc::O_PATH | libc::O_DIRECTORY, 0) {
        Ok(fd) => sys::statat(fd.as_fd(), name)
            .map(|st| !crate::model::whiteout::is_whiteout_stat(&st))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn explain(union: &Union, rel: &OsStr) -> Result<Explained, ToolError> {
    let comps: Vec<&OsStr> = components(rel).collect();
    let mut node = union.root()?;
    let mut hidden = Vec::new();
    for (i, comp) in comps.iter().enumerate() {
        if !node.is_dir() {
            return Ok(Explained {
                missing: Some(format!(
                    "{} is a {}, not a directory (served by {})",
                    show_path(&node.path),
                    kind_word(node.top().kind()),
                    label(node.layer())
                )),
                node: None,
                hidden,
            });
        }
        let Lookup {
            node: found,
            stop,
            cut,
        } = union.lookup(&node, comp, true)?;
        let here = join_path(&node.path, comp);
        let rest: OsString = comps[i + 1..]
            .iter()
            .map(|c| c.to_os_string())
            .reduce(|a, b| join_path(&a, &b))
            .unwrap_or_default();
        if let Some(stop) = &stop {
            let why = describe_stop(stop, &here);
            for (layer, path, kind) in cut {
                if rest.is_empty() {
                    hidden.push(Hidden {
                        layer,
                        path,
                        why: why.clone(),
                    });
                } else if kind == libc::S_IFDIR && exists_below(union, layer, &path, &rest) {
                    hidden.push(Hidden {
                        layer,
                        path: join_path(&path, &rest),
                        why: why.clone(),
                    });
                }
            }
        }
        match found {
            Some(n) => node = n,
            None => {
                let why = match &stop {
                    Some(s @ WordedStop::Whiteout { .. }) => describe_stop(s, &here),
                    _ => match hidden.first() {
                        Some(h) => h.why.clone(),
                        None => "no layer has it".to_owned(),
                    },
                };
                return Ok(Explained {
                    node: None,
                    missing: Some(why),
                    hidden,
                });
            }
        }
    }
    Ok(Explained {
        node: Some(node),
        missing: None,
        hidden,
    })
}

/// Prints the report for each path to `out`; returns one line per path the
/// union does not show (for stderr, and exit status 1).
pub fn run(
    union: &Union,
    paths: &[OsString],
    out: &mut dyn Write,
) -> Result<Vec<String>, ToolError> {
    let mut missing = Vec::new();
    for rel in paths {
        let rel_clean: OsString = components(rel)
            .map(|c| c.to_os_string())
            .reduce(|a, b| join_path(&a, &b))
            .unwrap_or_default();
        let e = explain(union, &rel_clean)?;
        let shown = show_path(&rel_clean);
        let place = |layer: LayerId, path: &OsStr| {
            format!(
                "{} ({}) {}",
                label(layer),
                union.layer_path(layer),
                show_path(path)
            )
        };
        match &e.node {
            Some(node) => {
                writeln!(out, "{shown}")?;
                let top = node.top();
                writeln!(
                    out,
                    "  served by  {} [{}]",
                    place(top.layer, &top.path),
                    kind_word(top.kind())
                )?;
                if let Some(r) = &top.redirect {
                    writeln!(
                        out,
                        "  redirect   lower contents at {}",
                        super::offline::show_name(r)
                    )?;
                }
                if let Some(d) = &node.data {
                    writeln!(
                        out,
                        "  bytes of   {} (a metacopy: only its metadata is above)",
                        place(d.layer, &d.path)
                    )?;
                }
                for p in &node.parts[1..] {
                    writeln!(out, "  merges     {}", place(p.layer, &p.path))?;
                }
            }
            None => {
                writeln!(
                    out,
                    "{shown}: not in the union: {}",
                    e.missing.as_deref().unwrap_or("")
                )?;
            }
        }
        for h in &e.hidden {
            if e.node.is_some() && h.why.starts_with("shadowed") {
                writeln!(out, "  shadows    {}", place(h.layer, &h.path))?;
            } else {
                writeln!(out, "  hidden     {}: {}", place(h.layer, &h.path), h.why)?;
            }
        }
        if let Some(why) = &e.missing {
            missing.push(format!("{shown}: not in the union: {why}"));
        }
    }
    Ok(missing)
}

/// One word for an `S_IFMT` kind.
pub fn kind_word(kind: u32) -> &'static str {
    match kind {
        libc::S_IFDIR => "directory",
        libc::S_IFREG => "file",
        libc::S_IFLNK => "symlink",
        libc::S_IFIFO => "fifo",
        libc::S_IFCHR => "char device",
        libc::S_IFBLK => "block device",
        libc::S_IFSOCK => "socket",
        _ => "unknown",
    }
}
