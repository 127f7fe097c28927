//! The layer tools' subcommands (`which`, `ls`, `layers`, `diff`, `commit`,
//! `apply`, `squash`, `check`): their flags, and the layers they name
//! resolved as `mount` resolves them.

use std::ffi::OsString;
use std::path::Path;

use clap::Args;

use super::resolve::{existing_dir, resolve_lowers};
use super::{Command, Sub};
use crate::mount_line::{default_work_dir, usage_error, CliError, EXIT_USAGE};
use crate::tools::{ApplyFormat, LayerArgs, LayerSource, ToolCommand};

/// The layers a tool reads, given as `mount` takes them.
#[derive(Args, Debug)]
pub(super) struct LayerFlags {
    /// Lower layers, top first, separated by ':' (as for mount)
    #[arg(short = 'l', long = "lower", value_name = "LOWER[:LOWER...]")]
    lower: Option<OsString>,
    /// Upper layer
    #[arg(short = 'u', long = "upper", value_name = "UPPER")]
    upper: Option<OsString>,
    /// The upper's work dir, for its hard-link index [default: as mount's, if it exists]
    #[arg(short = 'w', long = "work", value_name = "WORK")]
    work: Option<OsString>,
}

#[derive(Args, Debug)]
#[command(after_help = "Without -l, each PATH is a path in a live unionfs mount.")]
pub(super) struct WhichArgs {
    #[command(flatten)]
    layers: LayerFlags,
    /// Paths in the union (relative to its root with -l)
    #[arg(value_name = "PATH", required = true)]
    paths: Vec<OsString>,
}

#[derive(Args, Debug)]
#[command(after_help = "Without -l, DIR is a directory in a live unionfs mount.

Each line: the layer serving the entry, a mark, mode, size, name. The mark
is '+' for a directory that merges with lower directories of the same name,
'*' for an entry that hides lower copies (a file over lower files, an
opaque directory), blank otherwise.")]
pub(super) struct LsArgs {
    #[command(flatten)]
    layers: LayerFlags,
    /// List subdirectories too
    #[arg(short = 'R', long = "recursive")]
    recursive: bool,
    /// Directory of the union (relative to its root with -l)
    #[arg(value_name = "DIR")]
    dir: Option<OsString>,
}

#[derive(Args, Debug)]
#[command(after_help = "Without -l, MNT is a path in a live unionfs mount, whose layers are read.")]
pub(super) struct LayersArgs {
    #[command(flatten)]
    layers: LayerFlags,
    /// A path in a live unionfs mount (instead of -l and -u)
    #[arg(value_name = "MNT")]
    mnt: Option<OsString>,
}

#[derive(Args, Debug)]
#[command(after_help = "Without -l, MNT is a path in a live unionfs mount, whose layers are read.")]
pub(super) struct CommitArgs {
    #[command(flatten)]
    layers: LayerFlags,
    /// A path in a live unionfs mount (instead of -l and -u)
    #[arg(value_name = "MNT")]
    mnt: Option<OsString>,
    /// Output tarball ('-' for stdout; a name ending .gz or .tgz is compressed)
    #[arg(short = 'o', long = "output", value_name = "LAYER.tar")]
    output: OsString,
    /// Bytes that depend on the content only: times clamped to SOURCE_DATE_EPOCH (0 when unset)
    #[arg(long)]
    reproducible: bool,
}

#[derive(Args, Debug)]
pub(super) struct ApplyArgs {
    /// OCI layer tarball, plain or gzip ('-' for stdin)
    #[arg(value_name = "LAYER.tar")]
    archive: OsString,
    /// Directory to create (or an empty one)
    #[arg(value_name = "DIR")]
    dir: OsString,
    /// Whiteout format to write: overlay, oci or auto (overlay when root) [default: auto]
    #[arg(long, value_name = "FORMAT", value_parser = parse_apply_format)]
    format: Option<ApplyFormat>,
}

#[derive(Args, Debug)]
pub(super) struct SquashArgs {
    #[command(flatten)]
    layers: LayerFlags,
    /// Directory to create (or an empty one)
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    output: OsString,
}

const CHECK_AFTER_HELP: &str = "\
Reports, one line each (where, then what):
  orphan whiteouts (hide nothing in the layers below, as a lookup reads them)
  redirects that lead to no directory below
  markers where they are ignored (opaque or redirect xattrs on non-directories,
    overlay.whiteout outside a directory marked overlay.opaque=x, .wh. entries
    that are not empty files)
  index entries (WORK/index) whose lower_links, link count or origin is wrong
  leftovers in WORK/tmp (temporaries, .place links of index entries)
  private xattrs (*.unionfs.*, overlay.origin, ...) on lowers
  a WORK/unionfs.lock that is not a lock file
--repair fixes what cannot change the merged view, one 'repaired:' line each:
it removes orphan whiteouts and marker xattrs ignored where they stand from the
upper, the leftovers in WORK/tmp (a .place link after putting back its entry's
count, as the next mount would) and a broken lock file. The rest (lowers, index
entries, redirects, odd .wh. entries) is only reported.

The lock is an flock, released by the kernel when its holder exits, so a lock
is never stale: an unlocked unionfs.lock left by an unmounted union is normal.
A union a live mount holds is not checked.

Exit status: 0 no problem; 1 problems found (with --repair: problems left
unrepaired; 0 when every one was repaired); 2 could not check (a missing
directory, a live mount, an I/O error).";

#[derive(Args, Debug)]
#[command(after_help = CHECK_AFTER_HELP)]
pub(super) struct CheckArgs {
    #[command(flatten)]
    layers: LayerFlags,
    /// Fix what is safe (never the lowers), one line per fix
    #[arg(long)]
    repair: bool,
}

fn parse_apply_format(value: &str) -> Result<ApplyFormat, String> {
    match value {
        "overlay" => Ok(ApplyFormat::Overlay),
        "oci" => Ok(ApplyFormat::Oci),
        "auto" => Ok(ApplyFormat::Auto),
        _ => Err("expected overlay, oci or auto".to_owned()),
    }
}

/// Resolves a tool's `-l`/`-u` like mount's; `Ok(None)` when neither is
/// given and the tool may find a live mount instead.
fn tool_layers(flags: LayerFlags, need_upper: bool) -> Result<Option<LayerArgs>, CliError> {
    let Some(lower) = flags.lower else {
        if flags.upper.is_some() || need_upper {
            return Err(usage_error(
                "no lower layers given (use -l LOWER[:LOWER...])",
            ));
        }
        return Ok(None);
    };
    let (lowers, data_lowers) = resolve_lowers(&lower)?;
    if !data_lowers.is_empty() {
        return Err(usage_error(
            "data-only lowers ('::') are for mounts; the layer tools take plain lowers",
        ));
    }
    let upper = match &flags.upper {
        Some(u) => Some(existing_dir("upper dir", Path::new(u))?),
        None if need_upper => return Err(usage_error("no upper layer given (use -u UPPER)")),
        None => None,
    };
    let work = match (&flags.work, &upper) {
        (Some(_), None) => return Err(usage_error("a work dir (-w) needs an upper dir (-u)")),
        (Some(w), Some(_)) => Some(existing_dir("work dir", Path::new(w))?),
        // The mount's default, when a mount has made it.
        (None, Some(u)) => Some(default_work_dir(u)).filter(|w| w.is_dir()),
        (None, None) => None,
    };
    Ok(Some(LayerArgs {
        lowers,
        upper,
        work,
    }))
}

/// `tool_layers` for tools that cannot find a live mount.
fn required_layers(flags: LayerFlags, need_upper: bool) -> Result<LayerArgs, CliError> {
    tool_layers(flags, need_upper)?
        .ok_or_else(|| usage_error("no lower layers given (use -l LOWER[:LOWER...])"))
}

/// The layers a whole-union tool reads: named with `-l`/`-u`, or those of
/// the live mount that `mnt` is in (found when the tool runs).
fn layers_or_mount(
    flags: LayerFlags,
    mnt: Option<OsString>,
    need_upper: bool,
) -> Result<LayerSource, CliError> {
    match (flags.lower.is_some() || flags.upper.is_some(), mnt) {
        (true, Some(m)) => Err(usage_error(format!(
            "unexpected argument '{}': with -l the layers are named, give no mount path",
            m.to_string_lossy()
        ))),
        (true, None) => Ok(LayerSource::Given(required_layers(flags, need_upper)?)),
        (false, Some(m)) => Ok(LayerSource::Mount(m)),
        (false, None) => Err(usage_error(
            "no layers given (use -l LOWER[:LOWER...] -u UPPER, or a path in a live unionfs mount)",
        )),
    }
}

pub(super) fn parse_tool(sub: Sub) -> Result<Command, CliError> {
    let cmd = match sub {
        Sub::Which(a) => ToolCommand::Which {
            layers: tool_layers(a.layers, false)?,
            paths: a.paths,
        },
        Sub::Ls(a) => ToolCommand::Ls {
            layers: tool_layers(a.layers, false)?,
            recursive: a.recursive,
            dir: a.dir,
        },
        Sub::Layers(a) => ToolCommand::Layers(layers_or_mount(a.layers, a.mnt, false)?),
        Sub::Diff(a) => ToolCommand::Diff(layers_or_mount(a.layers, a.mnt, true)?),
        Sub::Commit(a) => ToolCommand::Commit {
            layers: layers_or_mount(a.layers, a.mnt, true)?,
            output: a.output,
            reproducible: a.reproducible,
        },
        Sub::Apply(a) => ToolCommand::Apply {
            archive: a.archive,
            dir: a.dir,
            format: a.format.unwrap_or(ApplyFormat::Auto),
        },
        Sub::Squash(a) => ToolCommand::Squash {
            layers: required_layers(a.layers, false)?,
            output: a.output,
        },
        Sub::Check(a) => ToolCommand::Check {
            // "Could not check" is status 2, whatever the reason.
            layers: required_layers(a.layers, true).map_err(|e| CliError {
                exit_code: EXIT_USAGE,
                ..e
            })?,
            repair: a.repair,
        },
        Sub::Mount(_) | Sub::Umount(_) => {
            return Err(usage_error("internal: not a tool (try 'unionfs --help')"))
        }
    };
    Ok(Command::Tool(cmd))
}
