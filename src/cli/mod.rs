//! The command line: `mount`/`umount` subcommands, the layer tools and the
//! two compatibility forms (fuse-overlayfs `-o` style, mount.fuse style), all
//! turned into one validated [`Command`].
//!
//! Parsing has two steps. First the arguments are read as typed into a
//! [`RawMount`](crate::mount_line::RawMount) (clap for the subcommands, a
//! small hand-written scanner for the compatibility forms, which clap cannot
//! express; both in [`crate::mount_line`]). Then one resolve step
//! ([`resolve`]) reads the `-o` strings, merges them with the flags, and
//! checks everything against the disk. So all three forms agree by
//! construction: they differ only in how they fill a `RawMount`.
//!
//! Nothing here writes to the disk; it only stats paths and lists the mount
//! point. Paths stay bytes (`OsString`) from argv to `MountConfig`.

mod resolve;
mod tools;

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::mount_line::{scan_compat, usage_error, Compat, MountArgs, MountOptions, RawMount};
use resolve::{resolve, resolve_umount};
use tools::{
    parse_tool, ApplyArgs, CheckArgs, CommitArgs, LayersArgs, LsArgs, SquashArgs, WhichArgs,
};

pub use crate::model::idmap::Owners;
pub use crate::model::whiteout::WriteFormat;
pub use crate::mount_line::{
    default_work_dir, split_layer_list, CliError, MountConfig, Remount, MAX_LOWERS,
};

/// What the command line asks for.
// Made once per run: boxing the large variant would save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Command {
    Mount(MountConfig),
    /// `unionfs umount MNT`: an absolute path, the parent resolved.
    Umount(PathBuf),
    /// `mount -o remount[,ro|rw] MNT`, which mount(8) hands to the
    /// `mount.fuse.unionfs` helper: flip the live mount read-only or back.
    Remount(Remount),
    /// Help or version text: print it (it has no trailing newline) to stdout
    /// and exit 0.
    Print(String),
    /// One of the layer tools (`which`, `ls`, `layers`, `diff`, `commit`,
    /// `apply`, `squash`).
    Tool(crate::tools::ToolCommand),
}

const USAGE: &str = "\
unionfs mount -l LOWER[:LOWER...] [-u UPPER [-w WORK]] [-v] [OPTIONS] MNT
       unionfs umount MNT
       unionfs which|ls|layers|diff|commit|squash -l LOWER[:LOWER...] [-u UPPER] ...
       unionfs which|ls|layers|diff|commit ... PATH-IN-A-LIVE-MOUNT
       unionfs check [--repair] -l LOWER[:LOWER...] -u UPPER [-w WORK]
       unionfs apply LAYER.tar[.gz] DIR [--format overlay|oci|auto]
       unionfs -o lowerdir=LOWER[:LOWER...][,upperdir=UPPER,workdir=WORK][,OPTS] [-f] MNT
       unionfs SOURCE MNT -o lowerdir=LOWER[:LOWER...][,OPTS]";

const EXAMPLES: &str = "\
Examples:
  Stack two read-only layers (top first) under a writable one:
    unionfs mount -l /img/top:/img/base -u /data/upper /mnt/merged
  The same, read-only (no upper):
    unionfs mount -l /img/top:/img/base /mnt/merged
  fuse-overlayfs style, as run by containers/storage (mount_program):
    unionfs -o lowerdir=/img/top:/img/base,upperdir=/data/upper,workdir=/data/work /mnt/merged
  mount.fuse style, as run by `mount -t fuse.unionfs`:
    mount -t fuse.unionfs unionfs /mnt/merged -o lowerdir=/img/top:/img/base,upperdir=/data/upper
  The same as a line of /etc/fstab (not a command):
    unionfs  /mnt/merged  fuse.unionfs  lowerdir=/img/top:/img/base,upperdir=/data/upper  0 0
  Unmount:
    unionfs umount /mnt/merged

See 'unionfs mount --help' for the options.";

#[derive(Parser, Debug)]
#[command(
    name = "unionfs",
    // Not argv[0]: mount.fuse and container tools call us by full path.
    bin_name = "unionfs",
    version,
    about = "A union filesystem in userspace: read-only lower layers under one writable upper",
    override_usage = USAGE,
    after_help = EXAMPLES,
    propagate_version = true,
    color = clap::ColorChoice::Never
)]
struct Cli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Mount a union of LOWER layers (and an optional UPPER) at MNT
    Mount(MountArgs),
    /// Unmount a unionfs mount
    Umount(UmountArgs),
    /// Which layer serves each path, what it shadows, what hides other copies
    Which(WhichArgs),
    /// List a merged directory with the layer serving each entry
    Ls(LsArgs),
    /// Per-layer entries, bytes, whiteouts, opaque dirs and wasted bytes
    Layers(LayersArgs),
    /// What the upper changes (A/C/D lines, as docker diff)
    Diff(LayersArgs),
    /// Write the upper's changes as an OCI image layer tarball
    Commit(CommitArgs),
    /// Unpack an OCI image layer tarball into a directory usable as a layer
    Apply(ApplyArgs),
    /// Write the merged view as one plain directory
    Squash(SquashArgs),
    /// Check an unmounted union for inconsistencies (fsck); --repair fixes the safe ones
    Check(CheckArgs),
}

#[derive(Args, Debug)]
struct UmountArgs {
    /// The mount point
    #[arg(value_name = "MNT")]
    mountpoint: OsString,
}

fn version_line() -> String {
    format!("unionfs {}", env!("CARGO_PKG_VERSION"))
}

fn help_text() -> String {
    Cli::command()
        .render_help()
        .to_string()
        .trim_end()
        .to_owned()
}

/// Turns a clap outcome that is not a parse into ours: help and version
/// become text to print, and a real error becomes one line (clap's message
/// without its usage block, pointing at the help of `sub`, the subcommand
/// typed, if any).
fn from_clap(e: clap::Error, sub: Option<&str>) -> Result<Command, CliError> {
    match e.kind() {
        // Subcommands would say "unionfs-mount 0.1.0"; tools probe for ours.
        ErrorKind::DisplayVersion => Ok(Command::Print(version_line())),
        ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            Ok(Command::Print(e.to_string().trim_end().to_owned()))
        }
        _ => {
            let text = e.to_string();
            let first = text.split("\n\n").next().unwrap_or_default();
            let first = first.strip_prefix("error: ").unwrap_or(first);
            let line = first.split_whitespace().collect::<Vec<_>>().join(" ");
            let help = match sub {
                Some(sub) if sub != "help" => format!("unionfs {sub} --help"),
                _ => "unionfs --help".to_owned(),
            };
            Err(usage_error(format!("{line} (try '{help}')")))
        }
    }
}

/// Parses argv (including argv[0]) into a validated [`Command`].
///
/// `mount`, `umount`, `help` and the help/version flags go to clap; anything
/// else is one of the compatibility forms. Reads the disk (stats, lists the
/// mount point) but changes nothing.
pub fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<Command, CliError> {
    let args: Vec<OsString> = args.into_iter().collect();
    let Some(first) = args.get(1) else {
        return Err(usage_error("missing arguments (try 'unionfs --help')"));
    };
    match first.as_bytes() {
        b"mount" | b"umount" | b"help" | b"--help" | b"-h" | b"--version" | b"-V" | b"which"
        | b"ls" | b"layers" | b"diff" | b"commit" | b"apply" | b"squash" | b"check" => {
            match Cli::try_parse_from(&args) {
                Ok(Cli {
                    command: Sub::Mount(m),
                }) => resolve(RawMount::from(m)).map(Command::Mount),
                Ok(Cli {
                    command: Sub::Umount(u),
                }) => resolve_umount(&u.mountpoint).map(Command::Umount),
                Ok(Cli { command }) => parse_tool(command),
                Err(e) => from_clap(e, first.to_str().filter(|f| !f.starts_with('-'))),
            }
        }
        _ => parse_compat(args.get(1..).unwrap_or_default()),
    }
}

/// The fuse-overlayfs form (`-o DATA MNT`) and the mount.fuse form
/// (`SOURCE MNT -o DATA`), flags and positionals in any order.
fn parse_compat(args: &[OsString]) -> Result<Command, CliError> {
    match scan_compat(args)? {
        Compat::Mount(raw) => {
            let opts = MountOptions::parse(&raw.options)?;
            if opts.remount {
                return Ok(Command::Remount(Remount {
                    mountpoint: resolve_umount(&raw.mountpoint)?,
                    read_only: opts.read_only,
                    kernel_options: opts.kernel_options,
                }));
            }
            resolve(raw).map(Command::Mount)
        }
        Compat::Help => Ok(Command::Print(help_text())),
        Compat::Version => Ok(Command::Print(version_line())),
    }
}
