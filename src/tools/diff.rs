//! `unionfs diff`: what the upper changes, as `docker diff` prints it. The
//! merged view (lowers + upper) is compared with the lowers-only view:
//! A = only in the merged view, D = only in the lowers-only view (a deleted
//! directory is one line), C = in both and the upper holds it (or it is
//! served from another lower copy, as under a renamed directory).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use super::offline::{MergedEntry, Union};
use super::ToolError;
use crate::model::layer::{LayerId, INDEX, UPPER};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Changed,
    Deleted,
}

impl Change {
    pub fn letter(self) -> char {
        match self {
            Change::Added => 'A',
            Change::Changed => 'C',
            Change::Deleted => 'D',
        }
    }
}

/// One line of the diff.
#[derive(Debug, Clone)]
pub struct Entry {
    pub change: Change,
    /// Relative to the union root.
    pub path: OsString,
    /// The merged object, for A and C.
    pub merged: Option<MergedEntry>,
    /// The lowers-only object, for C and D.
    pub lower: Option<MergedEntry>,
}

/// The lower copies a node is made of: (layer, path in layer).
fn lower_parts(n: &MergedEntry) -> Vec<(LayerId, &OsStr)> {
    n.parts
        .iter()
        .filter(|p| p.layer != UPPER && p.layer != INDEX)
        .map(|p| (p.layer, p.path.as_os_str()))
        .collect()
}

/// True when the merged object is not simply the lowers' own: the upper
/// holds it, or it is read from other lower copies (a redirect).
pub fn differs(merged: &MergedEntry, lower: &MergedEntry) -> bool {
    merged.in_upper() || lower_parts(merged) != lower_parts(lower)
}

fn added_tree(merged: &Union, node: &MergedEntry, out: &mut Vec<Entry>) -> Result<(), ToolError> {
    out.push(Entry {
        change: Change::Added,
        path: node.path.clone(),
        merged: Some(node.clone()),
        lower: None,
    });
    if node.is_dir() {
        for child in merged.children(node)? {
            added_tree(merged, &child, out)?;
        }
    }
    Ok(())
}

fn compare(
    merged: &Union,
    lowers: &Union,
    m: &MergedEntry,
    l: Option<&MergedEntry>,
    out: &mut Vec<Entry>,
) -> Result<(), ToolError> {
    let mut names = merged.names(m)?;
    if let Some(l) = l {
        names.extend(lowers.names(l)?);
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    names.dedup();
    for name in names {
        let mn = merged.lookup(m, &name, false)?.node;
        let ln = match l {
            Some(l) => lowers.lookup(l, &name, false)?.node,
            None => None,
        };
        match (mn, ln) {
            (Some(mn), None) => added_tree(merged, &mn, out)?,
            (None, Some(ln)) => out.push(Entry {
                change: Change::Deleted,
                path: ln.path.clone(),
                merged: None,
                lower: Some(ln),
            }),
            (Some(mn), Some(ln)) => {
                if !differs(&mn, &ln) {
                    continue;
                }
                let lower_dir = ln.is_dir().then_some(&ln);
                if mn.is_dir() {
                    compare(merged, lowers, &mn, lower_dir, out)?;
                } else if let Some(ld) = lower_dir {
                    // A directory replaced by a non-directory: what was in
                    // it is gone from the merged view.
                    for child in lowers.children(ld)? {
                        out.push(Entry {
                            change: Change::Deleted,
                            path: child.path.clone(),
                            merged: None,
                            lower: Some(child),
                        });
                    }
                }
                out.push(Entry {
                    change: Change::Changed,
                    path: mn.path.clone(),
                    merged: Some(mn),
                    lower: Some(ln),
                });
            }
            (None, None) => {}
        }
    }
    Ok(())
}

/// Every change of the upper, sorted by path bytes (so a directory comes
/// before what is in it).
pub fn changes(merged: &Union, lowers: &Union) -> Result<Vec<Entry>, ToolError> {
    if merged.stack.upper().is_none() {
        return Err(ToolError("diff needs an upper layer (-u UPPER)".into()));
    }
    let mut out = Vec::new();
    compare(
        merged,
        lowers,
        &merged.root()?,
        Some(&lowers.root()?),
        &mut out,
    )?;
    out.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    Ok(out)
}

/// True for a changed directory that must hide the lowers' directory of
/// the same name (opaque, or read from elsewhere through a redirect): an
/// image layer marks it opaque and carries all of its contents.
pub fn hides_lower_dir(e: &Entry) -> bool {
    match (&e.merged, &e.lower) {
        (Some(m), Some(l)) => m.is_dir() && l.is_dir() && lower_parts(m) != lower_parts(l),
        _ => false,
    }
}
