//! `unionfs ls`: a merged directory listing in which every entry names the
//! layer that serves it, with `+` where a directory merges with lower ones
//! and `*` where the entry hides lower copies, and a legend for them.

use std::ffi::OsStr;
use std::io::Write;

use super::offline::{label, show_name, show_path, MergedEntry, Union};
use super::ToolError;
use crate::model::layer::{INDEX, UPPER};

/// `ls -l`-style type letter and permission bits.
pub fn mode_string(mode: u32) -> String {
    let t = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFIFO => 'p',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFSOCK => 's',
        _ => '-',
    };
    let mut s = String::from(t);
    let bits = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ];
    for (bit, c) in bits {
        s.push(if mode & bit != 0 { c } else { '-' });
    }
    s
}

/// What the mark column says.
const LEGEND: &str = "+ merges with lower directories   * hides lower copies";

/// The mark of an entry: `+` for a directory whose contents merge with
/// lower ones, `*` for an entry that hides lower copies (shadows them, or
/// an opaque directory), else blank.
fn mark(union: &Union, dir: &MergedEntry, child: &MergedEntry) -> Result<char, ToolError> {
    if child.parts.len() > 1 {
        return Ok('+');
    }
    let lookup = union.lookup(dir, child.top().name(), true)?;
    Ok(if lookup.cut.is_empty() { ' ' } else { '*' })
}

fn entry_line(
    union: &Union,
    dir: &MergedEntry,
    child: &MergedEntry,
    colour: bool,
    marked: &mut bool,
) -> Result<String, ToolError> {
    let top = child.top();
    let mark = mark(union, dir, child)?;
    *marked |= mark != ' ';
    // An object served from the upper's hard-link index is the upper's.
    let layer_id = if top.layer == INDEX { UPPER } else { top.layer };
    let layer = label(layer_id);
    let layer = if colour {
        let code = if layer_id == UPPER { "33" } else { "36" };
        format!("\x1b[{code}m{layer:<8}\x1b[0m")
    } else {
        format!("{layer:<8}")
    };
    let mut name = show_name(top.name());
    match top.kind() {
        libc::S_IFDIR => name.push('/'),
        libc::S_IFLNK if top.parent.is_some() => {
            name.push_str(" -> ");
            name.push_str(&show_name(&top.link_target()?));
        }
        _ => {}
    }
    Ok(format!(
        "{layer} {mark} {} {:>10} {name}",
        mode_string(top.stat.st_mode),
        top.stat.st_size
    ))
}

fn list(
    union: &Union,
    dir: &MergedEntry,
    recursive: bool,
    colour: bool,
    marked: &mut bool,
    out: &mut dyn Write,
) -> Result<(), ToolError> {
    let children = union.children(dir)?;
    if recursive {
        writeln!(out, "{}:", show_path(&dir.path))?;
    }
    for child in &children {
        writeln!(out, "{}", entry_line(union, dir, child, colour, marked)?)?;
    }
    if recursive {
        for child in children.iter().filter(|c| c.is_dir()) {
            writeln!(out)?;
            list(union, child, recursive, colour, marked, out)?;
        }
    }
    Ok(())
}

/// Lists the merged directory `rel` (relative to the union root).
pub fn run(
    union: &Union,
    rel: &OsStr,
    recursive: bool,
    colour: bool,
    out: &mut dyn Write,
) -> Result<(), ToolError> {
    let Some(node) = union.resolve(rel)? else {
        return Err(ToolError(format!(
            "ls: {}: not in the union (see 'unionfs which')",
            show_path(rel)
        )));
    };
    let mut marked = false;
    if node.is_dir() {
        list(union, &node, recursive, colour, &mut marked, out)?;
    } else {
        let root = union.root()?;
        let parent = match crate::model::layer::split_path(&node.path).0 {
            p if p.is_empty() => root,
            p => union.resolve(p)?.unwrap_or(root),
        };
        writeln!(
            out,
            "{}",
            entry_line(union, &parent, &node, colour, &mut marked)?
        )?;
    }
    if marked {
        writeln!(out, "({LEGEND})")?;
    }
    Ok(())
}
