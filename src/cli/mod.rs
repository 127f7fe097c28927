//! The command line: `mount`/`umount` subcommands and the two compatibility
//! forms (fuse-overlayfs `-o` style, mount.fuse style), all turned into one
//! validated [`MountConfig`].
//!
//! Parsing has two steps. First the arguments are read as typed into a
//! [`RawMount`] (clap for the subcommands, a small hand-written scanner for the
//! compatibility forms, which clap cannot express). Then one resolve step
//! reads the `-o` strings, merges them with the flags, and checks everything
//! against the disk. So all three forms agree by construction: they differ
//! only in how they fill a `RawMount`.
//!
//! Nothing here writes to the disk; it only stats paths and lists the mount
//! point. Paths stay bytes (`OsString`) from argv to `MountConfig`.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use clap::error::ErrorKind;

use crate::idmap::{self, IdMap, Range};
use clap::{Args, CommandFactory, Parser, Subcommand};

/// The most lower layers one mount may stack.
pub const MAX_LOWERS: usize = 500;

/// The most FUSE worker threads one may ask for.
const MAX_THREADS: usize = 1024;

/// Exit code for a malformed command line.
const EXIT_USAGE: i32 = 2;
/// Exit code for a well-formed command line that the disk contradicts.
const EXIT_INVALID: i32 = 1;

pub use crate::idmap::Owners;
pub use crate::whiteout::WriteFormat;

/// A validated mount request: every path absolute and resolved, every layer
/// an existing directory, the layout free of overlaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountConfig {
    /// Lower layers, top first; each an existing directory, symlinks resolved.
    pub lowers: Vec<PathBuf>,
    /// Data-only lower layers (after `::` in the lower list), top first:
    /// never looked up by name, reached only by metacopy redirects.
    pub data_lowers: Vec<PathBuf>,
    /// `-o metacopy=on`: a metadata change copies up metadata only.
    pub metacopy: bool,
    /// The writable layer; `None` for a read-only union.
    pub upper: Option<PathBuf>,
    /// `Some` exactly when `upper` is. May not exist yet: the mount creates it.
    pub work: Option<PathBuf>,
    /// True when `work` is [`default_work_dir`] of the upper.
    pub work_is_default: bool,
    /// An existing empty directory.
    pub mountpoint: PathBuf,
    /// `-f`: stay in the foreground.
    pub foreground: bool,
    /// `--format` / `-o format=`; `Auto` unless given.
    pub format: WriteFormat,
    /// `-o ro`. A mount without an upper is read-only whatever this says.
    pub read_only: bool,
    /// `--log-file` / `-o log_file=`, made absolute (the daemon changes dir).
    pub log_file: Option<PathBuf>,
    /// `-o fsname=`, else the SOURCE of the mount.fuse form, else "unionfs".
    pub fsname: String,
    /// `Some(true)` for `-o allow_other`/`allow_root`; `None` lets the daemon
    /// decide (on when run as root).
    pub allow_other: Option<bool>,
    /// Generic mount flags for the kernel, in the order given, without
    /// duplicates: nodev, nosuid, noexec, dev, suid, exec, sync, async, dirsync.
    pub kernel_options: Vec<String>,
    /// `--threads` / `-o threads=`: FUSE worker threads, 1 to 1024.
    pub threads: Option<usize>,
    /// `-o uidmapping=`, `gidmapping=`, `squash_to_root`, `squash_to_uid=`,
    /// `squash_to_gid=`: owners shown vs stored. The overflow ids are the
    /// default (65534); the daemon reads the kernel's.
    pub owners: Owners,
    /// `-o volatile` (or fuse-overlayfs's `fsync=0`): syncs are not passed on.
    pub volatile: bool,
    /// `-o xattr_permissions=0|1|2`: keep owners and modes written into the
    /// upper in `security.fuseoverlayfs.override_stat` (1) or
    /// `user.containers.override_stat` (2) instead of the inode.
    pub xattr_permissions: u8,
    /// `-o io_uring=on|off`: take requests through FUSE over io_uring when
    /// the kernel offers it (off unless asked: see README, Speed).
    pub io_uring: bool,
    /// One line per accepted but ignored option, e.g. "option 'noatime' has
    /// no effect here; ignored", for the caller to print after its own
    /// "unionfs: warning: " prefix.
    pub warnings: Vec<String>,
    /// `-v`: log each copy-on-write event (copy-up, whiteout, opaque dir,
    /// directory rename) at info level.
    pub verbose: bool,
}

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

/// A remount of a live mount (no daemon is started).
#[derive(Debug, PartialEq, Eq)]
pub struct Remount {
    /// Absolute, the parent resolved.
    pub mountpoint: PathBuf,
    pub read_only: bool,
    /// Per-mount flags given with it (`nosuid`, `noexec`, ...): these are
    /// added to the ones the mount has.
    pub kernel_options: Vec<String>,
}

/// A bad command line.
#[derive(Debug)]
pub struct CliError {
    /// One line for stderr, starting with "unionfs: ", no trailing newline.
    pub message: String,
    /// 2 for a malformed command line, 1 when the disk contradicts it.
    pub exit_code: i32,
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

fn usage_error(what: impl std::fmt::Display) -> CliError {
    CliError {
        message: format!("unionfs: {what}"),
        exit_code: EXIT_USAGE,
    }
}

fn invalid(what: impl std::fmt::Display) -> CliError {
    CliError {
        message: format!("unionfs: {what}"),
        exit_code: EXIT_INVALID,
    }
}

// ---------------------------------------------------------------------------
// clap definitions

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

const MOUNT_AFTER_HELP: &str = "\
Options for -o (comma-separated; '\\,' is a literal comma):
  lowerdir=L1:L2  upperdir=DIR  workdir=DIR   the layers, as -l, -u and -w
  format=overlay|oci|auto    whiteout format written into the upper
  ro, rw                     read-only or read-write mount
  allow_other, allow_root    let other users in (on by default for root)
  threads=N                  FUSE worker threads
  log_file=PATH              as --log-file
  fsname=NAME                the source name shown in the mount table
  nodev nosuid noexec dev suid exec sync async dirsync
                             passed to the kernel
  uidmapping=D:S:L[:D:S:L...]  gidmapping=...
                             owners stored as D.. in the layers show as S..
                             (L ids per range); unmapped ones show as 65534
  squash_to_root  squash_to_uid=N  squash_to_gid=N
                             show every owner as root / N (writes unchanged)
  volatile, fsync=0          do not pass fsync/fdatasync/fsyncdir on
  xattr_permissions=0|1|2    keep owners and modes of new and changed files in
                             security.fuseoverlayfs.override_stat (1) or
                             user.containers.override_stat (2); layers whose
                             root carries one of those are read that way
  io_uring=on|off            take requests through FUSE over io_uring where the
                             kernel offers it (fuse's enable_uring, set by
                             root); off by default: /dev/fuse
  metacopy=on|off            chown, chmod, utimes, xattrs, rename and link of a
                             lower file copy up its metadata only (kernel
                             overlayfs's metacopy); its bytes at the first write
Options of fuse-overlayfs and overlayfs that mean nothing here (noatime,
context=, xino=, index=, ...) are accepted with a warning. Layout changing
ones (plugins=, ...) are refused.

Write a ':' inside a lower path as '\\:' and a '\\' as '\\\\'. Lowers after '::'
(L1:L2::D1::D2) are data-only, as in kernel overlayfs: no name is looked up
in them; only the absolute redirect of a metacopy file reaches them. The work dir must
be on the upper's filesystem and outside it; by default it is
.UPPER-NAME.unionfs-work next to the upper.

Examples:
  unionfs mount -l /img/top:/img/base -u /data/upper /mnt/merged
  unionfs mount -l /img/base /mnt/ro -o ro,format=oci --log-file /tmp/unionfs.log";

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

/// The layers a tool reads, given as `mount` takes them.
#[derive(Args, Debug)]
struct LayerFlags {
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
struct WhichArgs {
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
struct LsArgs {
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
struct LayersArgs {
    #[command(flatten)]
    layers: LayerFlags,
    /// A path in a live unionfs mount (instead of -l and -u)
    #[arg(value_name = "MNT")]
    mnt: Option<OsString>,
}

#[derive(Args, Debug)]
#[command(after_help = "Without -l, MNT is a path in a live unionfs mount, whose layers are read.")]
struct CommitArgs {
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
struct ApplyArgs {
    /// OCI layer tarball, plain or gzip ('-' for stdin)
    #[arg(value_name = "LAYER.tar")]
    archive: OsString,
    /// Directory to create (or an empty one)
    #[arg(value_name = "DIR")]
    dir: OsString,
    /// Whiteout format to write: overlay, oci or auto (overlay when root) [default: auto]
    #[arg(long, value_name = "FORMAT", value_parser = parse_apply_format)]
    format: Option<crate::tools::ApplyFormat>,
}

#[derive(Args, Debug)]
struct SquashArgs {
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
struct CheckArgs {
    #[command(flatten)]
    layers: LayerFlags,
    /// Fix what is safe (never the lowers), one line per fix
    #[arg(long)]
    repair: bool,
}

fn parse_apply_format(value: &str) -> Result<crate::tools::ApplyFormat, String> {
    use crate::tools::ApplyFormat;
    match value {
        "overlay" => Ok(ApplyFormat::Overlay),
        "oci" => Ok(ApplyFormat::Oci),
        "auto" => Ok(ApplyFormat::Auto),
        _ => Err("expected overlay, oci or auto".to_owned()),
    }
}

/// Resolves a tool's `-l`/`-u` like mount's; `Ok(None)` when neither is
/// given and the tool may find a live mount instead.
fn tool_layers(
    flags: LayerFlags,
    need_upper: bool,
) -> Result<Option<crate::tools::LayerArgs>, CliError> {
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
    Ok(Some(crate::tools::LayerArgs {
        lowers,
        upper,
        work,
    }))
}

/// `tool_layers` for tools that cannot find a live mount.
fn required_layers(
    flags: LayerFlags,
    need_upper: bool,
) -> Result<crate::tools::LayerArgs, CliError> {
    tool_layers(flags, need_upper)?
        .ok_or_else(|| usage_error("no lower layers given (use -l LOWER[:LOWER...])"))
}

/// The layers a whole-union tool reads: named with `-l`/`-u`, or those of
/// the live mount that `mnt` is in (found when the tool runs).
fn layers_or_mount(
    flags: LayerFlags,
    mnt: Option<OsString>,
    need_upper: bool,
) -> Result<crate::tools::LayerSource, CliError> {
    use crate::tools::LayerSource;
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

fn parse_tool(sub: Sub) -> Result<Command, CliError> {
    use crate::tools::{ApplyFormat, ToolCommand};
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

/// The layers a mount command line names, as typed (nothing resolved or
/// checked): how the tools find a live mount's layers from its daemon's
/// argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedLayers {
    pub lowers: Vec<OsString>,
    pub upper: Option<OsString>,
    pub work: Option<OsString>,
    pub mountpoint: OsString,
}

/// Reads a mount command line (argv including argv[0]) the way
/// [`parse_args`] does, without looking at the disk. `None` when it is not
/// a well-formed mount.
pub fn typed_layers(args: &[OsString]) -> Option<TypedLayers> {
    let raw = match args.get(1)?.as_bytes() {
        b"mount" => match Cli::try_parse_from(args).ok()?.command {
            Sub::Mount(m) => RawMount::from(m),
            _ => return None,
        },
        _ => match scan_compat(args.get(1..)?).ok()? {
            Compat::Mount(raw) => raw,
            Compat::Print(_) => return None,
        },
    };
    let opts = MountOptions::parse(&raw.options).ok()?;
    let lower = only_once(raw.lower, "-l", opts.lowerdir, "lowerdir=").ok()??;
    let upper = only_once(raw.upper, "-u", opts.upperdir, "upperdir=").ok()?;
    let work = only_once(raw.work, "-w", opts.workdir, "workdir=").ok()?;
    Some(TypedLayers {
        lowers: split_layer_list(&lower),
        upper,
        work,
        mountpoint: raw.mountpoint,
    })
}

#[derive(Args, Debug)]
#[command(after_help = MOUNT_AFTER_HELP)]
struct MountArgs {
    /// Lower layers, top first, separated by ':'
    #[arg(short = 'l', long = "lower", value_name = "LOWER[:LOWER...]")]
    lower: Option<OsString>,
    /// Writable upper layer; without one the union is read-only
    #[arg(short = 'u', long = "upper", value_name = "UPPER")]
    upper: Option<OsString>,
    /// Work dir for unionfs's temporaries: on the upper's filesystem, outside the upper
    #[arg(short = 'w', long = "work", value_name = "WORK")]
    work: Option<OsString>,
    /// Empty directory to mount on
    #[arg(value_name = "MNT")]
    mountpoint: OsString,
    /// Stay in the foreground instead of detaching
    #[arg(short = 'f', long = "foreground")]
    foreground: bool,
    /// Mount options, comma-separated (see below); may be repeated
    #[arg(short = 'o', value_name = "OPTS")]
    options: Vec<OsString>,
    /// Whiteout format written into the upper: overlay, oci or auto [default: auto]
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    format: Option<WriteFormat>,
    /// Write the daemon's log to PATH
    #[arg(long, value_name = "PATH")]
    log_file: Option<OsString>,
    /// FUSE worker threads [default: one per CPU, at least 2]
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    threads: Option<usize>,
    /// Log each copy-on-write event (copy-up, whiteout, opaque dir, dir rename)
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
}

#[derive(Args, Debug)]
struct UmountArgs {
    /// The mount point
    #[arg(value_name = "MNT")]
    mountpoint: OsString,
}

fn parse_format(value: &str) -> Result<WriteFormat, String> {
    match value {
        "overlay" => Ok(WriteFormat::Overlay),
        "oci" => Ok(WriteFormat::Oci),
        "auto" => Ok(WriteFormat::Auto),
        _ => Err("expected overlay, oci or auto".to_owned()),
    }
}

fn parse_threads(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(format!("expected a number from 1 to {MAX_THREADS}")),
    }
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

// ---------------------------------------------------------------------------
// Step 1: argv -> RawMount

/// A mount request as typed, before any option string is read or any path
/// is looked at.
#[derive(Debug, Default)]
struct RawMount {
    lower: Option<OsString>,
    upper: Option<OsString>,
    work: Option<OsString>,
    /// SOURCE of the mount.fuse form.
    source: Option<OsString>,
    mountpoint: OsString,
    foreground: bool,
    /// Each `-o` argument, in order.
    options: Vec<OsString>,
    format: Option<WriteFormat>,
    log_file: Option<OsString>,
    threads: Option<usize>,
    verbose: bool,
}

impl From<MountArgs> for RawMount {
    fn from(m: MountArgs) -> RawMount {
        RawMount {
            lower: m.lower,
            upper: m.upper,
            work: m.work,
            source: None,
            mountpoint: m.mountpoint,
            foreground: m.foreground,
            options: m.options,
            format: m.format,
            log_file: m.log_file,
            threads: m.threads,
            verbose: m.verbose,
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
        Compat::Print(text) => Ok(Command::Print(text)),
    }
}

/// A compatibility-form command line as typed: a mount, or help/version.
enum Compat {
    Mount(RawMount),
    Print(String),
}

fn scan_compat(args: &[OsString]) -> Result<Compat, CliError> {
    let mut raw = RawMount::default();
    let mut positional: Vec<OsString> = Vec::new();
    let mut rest = args.iter();
    let mut options_ended = false;
    while let Some(arg) = rest.next() {
        let bytes = arg.as_bytes();
        if options_ended || !bytes.starts_with(b"-") || bytes == b"-" {
            positional.push(arg.clone());
            continue;
        }
        match bytes {
            b"--" => options_ended = true,
            b"-h" | b"--help" => return Ok(Compat::Print(help_text())),
            b"-V" | b"--version" => return Ok(Compat::Print(version_line())),
            b"-f" => raw.foreground = true,
            b"-v" | b"--verbose" => raw.verbose = true,
            // fuse-overlayfs's (and libfuse's) debug switch, which implies -f.
            b"-d" | b"--debug" => {
                raw.foreground = true;
                raw.options.push("debug".into());
            }
            b"-o" => raw.options.push(flag_value(&mut rest, "-o")?),
            _ if bytes.starts_with(b"-o") => raw.options.push(os(&bytes[2..])),
            _ => {
                let (name, inline) = match bytes.iter().position(|&b| b == b'=') {
                    Some(i) => (&bytes[..i], Some(os(&bytes[i + 1..]))),
                    None => (bytes, None),
                };
                let mut value = |flag: &str| match inline.clone() {
                    Some(v) => Ok(v),
                    None => flag_value(&mut rest, flag),
                };
                match name {
                    b"--format" => {
                        let v = utf8(&value("--format")?)?;
                        raw.format =
                            Some(parse_format(&v).map_err(|e| bad_value("--format", &v, e))?);
                    }
                    b"--threads" => {
                        let v = utf8(&value("--threads")?)?;
                        raw.threads =
                            Some(parse_threads(&v).map_err(|e| bad_value("--threads", &v, e))?);
                    }
                    b"--log-file" => raw.log_file = Some(value("--log-file")?),
                    _ => {
                        return Err(usage_error(format!(
                            "unknown option '{}' (try 'unionfs --help')",
                            arg.to_string_lossy()
                        )))
                    }
                }
            }
        }
    }
    match positional.as_slice() {
        [] => return Err(usage_error("missing mount point (try 'unionfs --help')")),
        [mountpoint] => raw.mountpoint = mountpoint.clone(),
        [source, mountpoint] => {
            raw.source = Some(source.clone());
            raw.mountpoint = mountpoint.clone();
        }
        [_, _, extra, ..] => {
            return Err(usage_error(format!(
                "unexpected argument '{}' (try 'unionfs --help')",
                extra.to_string_lossy()
            )))
        }
    }
    Ok(Compat::Mount(raw))
}

fn bad_value(option: &str, value: &str, expected: String) -> CliError {
    usage_error(format!("invalid value '{value}' for {option}: {expected}"))
}

fn flag_value<'a>(
    rest: &mut impl Iterator<Item = &'a OsString>,
    flag: &str,
) -> Result<OsString, CliError> {
    rest.next()
        .cloned()
        .ok_or_else(|| usage_error(format!("option '{flag}' needs a value")))
}

fn os(bytes: &[u8]) -> OsString {
    OsStr::from_bytes(bytes).to_owned()
}

fn utf8(value: &OsStr) -> Result<String, CliError> {
    value
        .to_str()
        .map(str::to_owned)
        .ok_or_else(|| usage_error(format!("'{}' is not valid UTF-8", value.to_string_lossy())))
}

// ---------------------------------------------------------------------------
// Step 2: the -o strings

/// What the `-o` strings ask for.
#[derive(Debug, Default)]
struct MountOptions {
    /// `remount`: change the flags of a live mount, mount nothing.
    remount: bool,
    lowerdir: Option<OsString>,
    upperdir: Option<OsString>,
    workdir: Option<OsString>,
    format: Option<WriteFormat>,
    read_only: bool,
    allow_other: Option<bool>,
    threads: Option<usize>,
    log_file: Option<OsString>,
    fsname: Option<String>,
    kernel_options: Vec<String>,
    warnings: Vec<String>,
    uidmapping: Option<Vec<Range>>,
    gidmapping: Option<Vec<Range>>,
    squash_to_root: bool,
    squash_to_uid: Option<u32>,
    squash_to_gid: Option<u32>,
    volatile: bool,
    xattr_permissions: u8,
    metacopy: bool,
    io_uring: Option<bool>,
}

/// Flags handed to the kernel as they are.
const KERNEL_FLAGS: &[&str] = &[
    "nodev", "nosuid", "noexec", "dev", "suid", "exec", "sync", "async", "dirsync",
];

/// Flags (no value) that fuse-overlayfs, overlayfs or mount(8) users pass and
/// that change nothing here: atime handling is the underlying filesystems'
/// business, fsync is always honoured, and the rest are for mount(8) itself.
const IGNORED_FLAGS: &[&str] = &[
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "nodiratime",
    "diratime",
    "atime",
    "lazytime",
    "nolazytime",
    "noacl",
    "static_nlink",
    "debug",
    "userxattr",
    "auto_unmount",
    "_netdev",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "nofail",
];

/// Options with a value that change nothing here: SELinux labels (the
/// labels on the layers' files apply), overlayfs tuning, fuse-overlayfs and
/// libfuse tuning.
const IGNORED_WITH_VALUE: &[&str] = &[
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "xino",
    "index",
    "redirect_dir",
    "uuid",
    "timeout",
    "threaded",
    "fast_ino",
    "writeback",
    "max_write",
    "max_read",
    "max_readahead",
    "subtype",
];

/// Options that would change what the mount shows, with why they are refused.
const REFUSED: &[(&str, &str)] = &[
    ("plugins", "unionfs has no layer plugins"),
    ("ino32_t", "unionfs inode numbers are 64-bit"),
    ("nfs_export", "unionfs does not support NFS export"),
    (
        "noxattrs",
        "unionfs always passes extended attributes through",
    ),
    ("nonempty", "unionfs mounts only on an empty directory"),
];

/// Refused options whose value that means "off" is harmless, so accepted with
/// a warning (e.g. `metacopy=off`).
const REFUSED_UNLESS_OFF: &[(&str, &[&str])] = &[
    ("metacopy", &["off"]),
    ("nfs_export", &["off"]),
    ("noxattrs", &["0"]),
];

impl MountOptions {
    fn parse(strings: &[OsString]) -> Result<MountOptions, CliError> {
        let mut opts = MountOptions::default();
        for string in strings {
            // Empty items (`a,,b`, a trailing comma) are skipped: mount(8) and
            // libfuse tolerate them, and scripts that join lists produce them.
            for item in split_options(string).iter().filter(|i| !i.is_empty()) {
                opts.apply(item)?;
            }
        }
        Ok(opts)
    }

    fn apply(&mut self, item: &[u8]) -> Result<(), CliError> {
        let shown = String::from_utf8_lossy(item);
        let (name, value) = match item.iter().position(|&b| b == b'=') {
            Some(i) => (&item[..i], Some(&item[i + 1..])),
            None => (item, None),
        };
        if name.is_empty() {
            return Err(usage_error(format!("malformed option '{shown}' in -o")));
        }
        let unknown = || usage_error(format!("unknown option '{shown}' in -o"));
        let name = std::str::from_utf8(name).map_err(|_| unknown())?;

        if let Some((_, off)) = REFUSED_UNLESS_OFF.iter().find(|(n, _)| *n == name) {
            if value.is_some_and(|v| off.iter().any(|o| o.as_bytes() == v)) {
                self.warn(&shown);
                return Ok(());
            }
        }
        if let Some((_, why)) = REFUSED.iter().find(|(n, _)| *n == name) {
            return Err(usage_error(format!(
                "option '{name}' is not supported: {why}"
            )));
        }

        match name {
            "lowerdir" => set_once(&mut self.lowerdir, name, path_value(name, value)?),
            "upperdir" => set_once(&mut self.upperdir, name, path_value(name, value)?),
            "workdir" => set_once(&mut self.workdir, name, path_value(name, value)?),
            "log_file" => {
                self.log_file = Some(path_value(name, value)?);
                Ok(())
            }
            "format" => {
                let v = text_value(name, value)?;
                self.format = Some(parse_format(&v).map_err(|e| bad_value(name, &v, e))?);
                Ok(())
            }
            "threads" => {
                let v = text_value(name, value)?;
                self.threads = Some(parse_threads(&v).map_err(|e| bad_value(name, &v, e))?);
                Ok(())
            }
            "fsname" => {
                self.fsname = Some(text_value(name, value)?);
                Ok(())
            }
            "uidmapping" | "gidmapping" => {
                let v = text_value(name, value)?;
                let ranges = idmap::parse_ranges(&v).map_err(usage_error)?;
                let slot = if name == "uidmapping" {
                    &mut self.uidmapping
                } else {
                    &mut self.gidmapping
                };
                if slot.is_some() {
                    return Err(usage_error(format!("option '{name}' given twice")));
                }
                *slot = Some(ranges);
                Ok(())
            }
            "squash_to_root" => {
                no_value(name, value)?;
                self.squash_to_root = true;
                Ok(())
            }
            "squash_to_uid" | "squash_to_gid" => {
                let v = text_value(name, value)?;
                let id = v
                    .parse::<u32>()
                    .map_err(|_| bad_value(name, &v, "expected a numeric id".into()))?;
                if name == "squash_to_uid" {
                    self.squash_to_uid = Some(id);
                } else {
                    self.squash_to_gid = Some(id);
                }
                Ok(())
            }
            "metacopy" => {
                let v = text_value(name, value)?;
                self.metacopy = match v.as_str() {
                    "on" => true,
                    _ => return Err(bad_value(name, &v, "expected on or off".into())),
                };
                Ok(())
            }
            "io_uring" => {
                let v = text_value(name, value)?;
                self.io_uring = Some(match v.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => return Err(bad_value(name, &v, "expected on or off".into())),
                });
                Ok(())
            }
            "xattr_permissions" => {
                let v = text_value(name, value)?;
                self.xattr_permissions = match v.as_str() {
                    "0" => 0,
                    "1" => 1,
                    "2" => 2,
                    _ => return Err(bad_value(name, &v, "expected 0, 1 or 2".into())),
                };
                Ok(())
            }
            // Kernel overlayfs's `volatile`; fuse-overlayfs spells it `fsync=0`.
            "volatile" => {
                no_value(name, value)?;
                self.volatile = true;
                Ok(())
            }
            "fsync" => {
                let v = text_value(name, value)?;
                match v.as_str() {
                    "0" => self.volatile = true,
                    "1" => self.volatile = false,
                    _ => return Err(bad_value(name, &v, "expected 0 or 1".into())),
                }
                Ok(())
            }
            "ro" | "rw" => {
                no_value(name, value)?;
                self.read_only = name == "ro";
                Ok(())
            }
            "remount" => {
                no_value(name, value)?;
                self.remount = true;
                Ok(())
            }
            "allow_other" | "allow_root" => {
                no_value(name, value)?;
                self.allow_other = Some(true);
                Ok(())
            }
            // The kernel always checks permissions for us; `defaults` is
            // mount(8)'s "nothing special".
            "default_permissions" | "defaults" => no_value(name, value),
            _ if KERNEL_FLAGS.contains(&name) => {
                no_value(name, value)?;
                if !self.kernel_options.iter().any(|k| k == name) {
                    self.kernel_options.push(name.to_owned());
                }
                Ok(())
            }
            _ if IGNORED_FLAGS.contains(&name) && value.is_none() => {
                self.warn(&shown);
                Ok(())
            }
            _ if IGNORED_WITH_VALUE.contains(&name) && value.is_some() => {
                self.warn(&shown);
                Ok(())
            }
            // mount(8) passes x-* options (systemd's among them) to helpers.
            _ if name.starts_with("x-") => {
                self.warn(&shown);
                Ok(())
            }
            _ => Err(unknown()),
        }
    }

    /// The owner mapping asked for. Squashing to a given id wins over
    /// squashing to root, as in fuse-overlayfs.
    fn owners(&self) -> Owners {
        let root = self.squash_to_root.then_some(0);
        let map = |ranges: &Option<Vec<Range>>, squash: Option<u32>| IdMap {
            ranges: ranges.clone().unwrap_or_default(),
            squash: squash.or(root),
            overflow: idmap::DEFAULT_OVERFLOW,
        };
        Owners {
            uid: map(&self.uidmapping, self.squash_to_uid),
            gid: map(&self.gidmapping, self.squash_to_gid),
        }
    }

    fn warn(&mut self, shown: &str) {
        let line = format!("option '{shown}' has no effect here; ignored");
        if !self.warnings.contains(&line) {
            self.warnings.push(line);
        }
    }
}

/// Splits one `-o` string on commas. `\,` is a literal comma; any other
/// backslash pair is kept as it is, so that `\:` and `\\` reach the lowerdir
/// parser intact. As in mount(8), a comma inside double quotes does not
/// split (SELinux `context="...:c1,c2"`), and the quotes are kept.
fn split_options(s: &OsStr) -> Vec<Vec<u8>> {
    let mut items = Vec::new();
    let mut current = Vec::new();
    let mut quoted = false;
    let mut bytes = s.as_bytes().iter().copied();
    while let Some(b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(b',') => current.push(b','),
                Some(next) => current.extend_from_slice(&[b'\\', next]),
                None => current.push(b'\\'),
            },
            b'"' => {
                quoted = !quoted;
                current.push(b);
            }
            b',' if !quoted => items.push(std::mem::take(&mut current)),
            _ => current.push(b),
        }
    }
    items.push(current);
    items
}

fn set_once(slot: &mut Option<OsString>, name: &str, value: OsString) -> Result<(), CliError> {
    if slot.is_some() {
        return Err(usage_error(format!("option '{name}' given twice")));
    }
    *slot = Some(value);
    Ok(())
}

fn path_value(name: &str, value: Option<&[u8]>) -> Result<OsString, CliError> {
    match value {
        Some(v) if !v.is_empty() => Ok(os(v)),
        _ => Err(usage_error(format!(
            "option '{name}' needs a value ({name}=...)"
        ))),
    }
}

fn text_value(name: &str, value: Option<&[u8]>) -> Result<String, CliError> {
    utf8(&path_value(name, value)?)
}

fn no_value(name: &str, value: Option<&[u8]>) -> Result<(), CliError> {
    match value {
        None => Ok(()),
        Some(_) => Err(usage_error(format!("option '{name}' takes no value"))),
    }
}

/// Splits a lowerdir list on ':'. `\:` is a literal colon and `\\` a literal
/// backslash; any other backslash is kept as it is. Works on bytes, and
/// keeps empty elements (`a::b`, a trailing ':') so the caller can refuse
/// them.
pub fn split_layer_list(list: &OsStr) -> Vec<OsString> {
    let mut layers = Vec::new();
    let mut current = Vec::new();
    let mut bytes = list.as_bytes().iter().copied();
    while let Some(b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(next @ (b':' | b'\\')) => current.push(next),
                Some(next) => current.extend_from_slice(&[b'\\', next]),
                None => current.push(b'\\'),
            },
            b':' => layers.push(OsString::from_vec(std::mem::take(&mut current))),
            _ => current.push(b),
        }
    }
    layers.push(OsString::from_vec(current));
    layers
}

/// The work dir used when an upper is given without one:
/// `<parent of upper>/.<upper name>.unionfs-work`, e.g. `/data/.upper.unionfs-work`
/// for `/data/upper`.
///
/// The work dir must be outside the upper (its temporaries must never show in
/// the merged view) but on the upper's filesystem (finished copies are renamed
/// into the upper). A hidden sibling is both, unless the upper is itself the
/// root of a mount, in which case the mount is refused and the user must pick
/// a work dir. Expects a resolved path; for `/` it returns `/.unionfs-work`.
pub fn default_work_dir(upper: &Path) -> PathBuf {
    match (upper.parent(), upper.file_name()) {
        (Some(parent), Some(name)) => {
            let mut hidden = OsString::from(".");
            hidden.push(name);
            hidden.push(".unionfs-work");
            parent.join(hidden)
        }
        _ => upper.join(".unionfs-work"),
    }
}

// ---------------------------------------------------------------------------
// Step 3: resolve and validate

/// Merges flags and `-o`, resolves every path, and checks the layout.
fn resolve(raw: RawMount) -> Result<MountConfig, CliError> {
    let opts = MountOptions::parse(&raw.options)?;
    let owners = opts.owners();

    let lower_list = only_once(raw.lower, "-l", opts.lowerdir, "lowerdir=")?.ok_or_else(|| {
        usage_error("no lower layers given (use -l LOWER[:LOWER...] or -o lowerdir=...)")
    })?;
    let upper_arg = only_once(raw.upper, "-u", opts.upperdir, "upperdir=")?;
    let work_arg = only_once(raw.work, "-w", opts.workdir, "workdir=")?;
    if work_arg.is_some() && upper_arg.is_none() {
        return Err(usage_error(
            "a work dir (-w / workdir=) needs an upper dir (-u / upperdir=)",
        ));
    }

    let (lowers, data_lowers) = resolve_lowers(&lower_list)?;
    let upper = match &upper_arg {
        Some(u) => Some(existing_dir("upper dir", Path::new(u))?),
        None => None,
    };
    let (work, work_is_default) = match (&upper, &work_arg) {
        (None, _) => (None, false),
        (Some(_), Some(w)) => (Some(resolve_work(Path::new(w))?), false),
        (Some(u), None) => (Some(resolve_work(&default_work_dir(u))?), true),
    };
    let mountpoint = resolve_mountpoint(&raw.mountpoint)?;

    let all_lowers: Vec<PathBuf> = lowers.iter().chain(&data_lowers).cloned().collect();
    check_layout(
        &all_lowers,
        upper.as_deref(),
        work.as_ref().map(|w| w.path.as_path()),
        &mountpoint,
    )?;
    if let (Some(upper), Some(work)) = (&upper, &work) {
        check_same_filesystem(upper, work, work_is_default)?;
    }

    let fsname = match (opts.fsname, raw.source) {
        (Some(name), _) => name,
        (None, Some(source)) => utf8(&source)?,
        (None, None) => "unionfs".to_owned(),
    };
    // fuser hands fsname to the kernel inside a comma-separated option string.
    if fsname.is_empty() || fsname.contains(',') {
        return Err(usage_error(format!(
            "source name '{fsname}' must be non-empty and have no ','"
        )));
    }
    let log_file = match raw.log_file.or(opts.log_file) {
        Some(path) if path.is_empty() => {
            return Err(usage_error("option '--log-file' needs a value"))
        }
        Some(path) => Some(absolute(Path::new(&path))?),
        None => None,
    };

    Ok(MountConfig {
        lowers,
        data_lowers,
        metacopy: opts.metacopy,
        upper,
        work: work.map(|w| w.path),
        work_is_default,
        mountpoint,
        foreground: raw.foreground,
        format: raw.format.or(opts.format).unwrap_or(WriteFormat::Auto),
        read_only: opts.read_only,
        log_file,
        fsname,
        allow_other: opts.allow_other,
        kernel_options: opts.kernel_options,
        threads: raw.threads.or(opts.threads),
        owners,
        volatile: opts.volatile,
        xattr_permissions: opts.xattr_permissions,
        io_uring: opts.io_uring.unwrap_or(false),
        warnings: opts.warnings,
        verbose: raw.verbose,
    })
}

/// A layer may be named by its flag or by its `-o` option, not both: there
/// is no safe way to pick one.
fn only_once(
    flag: Option<OsString>,
    flag_name: &str,
    option: Option<OsString>,
    option_name: &str,
) -> Result<Option<OsString>, CliError> {
    match (flag, option) {
        (Some(_), Some(_)) => Err(usage_error(format!(
            "{flag_name} and -o {option_name} both given; use one"
        ))),
        (flag, option) => Ok(flag.or(option)),
    }
}

/// The lowers looked up by name and the data-only ones (after `::`).
fn resolve_lowers(list: &OsStr) -> Result<(Vec<PathBuf>, Vec<PathBuf>), CliError> {
    let shown = list.to_string_lossy();
    if list.is_empty() {
        return Err(usage_error("empty lower layer list"));
    }
    let mut names = split_layer_list(list);
    // `a::b` splits as a, "", b: the first empty entry starts the data-only
    // layers, each after its own `::`, as the kernel reads the list.
    let data_names = match names.iter().position(|n| n.is_empty()) {
        Some(i) if i > 0 => {
            let rest = names.split_off(i);
            let mut data = Vec::new();
            for pair in rest.chunks(2) {
                match pair {
                    [sep, name] if sep.is_empty() && !name.is_empty() => data.push(name.clone()),
                    [_] | [_, _] if pair.iter().all(|n| n.is_empty()) => {
                        return Err(usage_error(format!(
                            "empty entry in lower layer list '{shown}'"
                        )))
                    }
                    _ => {
                        return Err(usage_error(format!(
                            "lower layer list '{shown}': data-only layers (after '::') \
                             are each given after '::'"
                        )))
                    }
                }
            }
            data
        }
        _ => Vec::new(),
    };
    if names.iter().any(|n| n.is_empty()) {
        return Err(usage_error(format!(
            "empty entry in lower layer list '{shown}'"
        )));
    }
    if names.len() + data_names.len() > MAX_LOWERS {
        return Err(usage_error(format!(
            "{} lower layers given; at most {MAX_LOWERS} are supported",
            names.len() + data_names.len()
        )));
    }
    let resolve = |names: &[OsString], what: &str| {
        names
            .iter()
            .map(|name| existing_dir(what, Path::new(name)))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok((
        resolve(&names, "lower layer")?,
        resolve(&data_names, "data-only lower layer")?,
    ))
}

/// Resolves `path` (symlinks and all) to an existing directory.
fn existing_dir(what: &str, path: &Path) -> Result<PathBuf, CliError> {
    let fail = |why: String| invalid(format!("{what} {}: {why}", path.display()));
    let resolved = fs::canonicalize(path).map_err(|e| fail(describe(&e)))?;
    match fs::metadata(&resolved) {
        Ok(meta) if meta.is_dir() => Ok(resolved),
        Ok(_) => Err(fail("not a directory".into())),
        Err(e) => Err(fail(describe(&e))),
    }
}

/// A work dir, resolved, and the device it is (or will be created) on.
struct Work {
    path: PathBuf,
    dev: u64,
}

/// Resolves a work dir that may not exist yet: an existing one like any
/// layer, a missing one as its nearest existing ancestor (resolved) plus the
/// missing components, which the mount will create there.
fn resolve_work(path: &Path) -> Result<Work, CliError> {
    let fail = |why: String| invalid(format!("work dir {}: {why}", path.display()));
    match fs::symlink_metadata(path) {
        Ok(_) => {
            let resolved = existing_dir("work dir", path)?;
            let dev = fs::metadata(&resolved)
                .map_err(|e| fail(describe(&e)))?
                .dev();
            return Ok(Work {
                path: resolved,
                dev,
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(describe(&e))),
    }

    let absolute = absolute(path)?;
    let mut missing: Vec<&OsStr> = Vec::new();
    let mut ancestor = absolute.as_path();
    loop {
        match fs::symlink_metadata(ancestor) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(format!("{}: {}", ancestor.display(), describe(&e)))),
        }
        // A `..` below a missing directory has nothing to resolve against.
        let (Some(parent), Some(name)) = (ancestor.parent(), ancestor.file_name()) else {
            return Err(fail("'..' after a directory that does not exist".into()));
        };
        missing.push(name);
        ancestor = parent;
    }
    let fail_at = |why: String| fail(format!("{}: {why}", ancestor.display()));
    let mut resolved = fs::canonicalize(ancestor).map_err(|e| fail_at(describe(&e)))?;
    let meta = fs::metadata(&resolved).map_err(|e| fail_at(describe(&e)))?;
    if !meta.is_dir() {
        return Err(fail_at("not a directory".into()));
    }
    // The missing names are plain (`file_name()` never yields `.` or `..`),
    // and the mount creates them as real directories: nothing to resolve.
    for name in missing.iter().rev() {
        resolved.push(name);
    }
    Ok(Work {
        path: resolved,
        dev: meta.dev(),
    })
}

fn resolve_mountpoint(path: &OsStr) -> Result<PathBuf, CliError> {
    let shown = Path::new(path).display();
    // mount.fuse's drop_privileges hands over an open /dev/fuse as /dev/fd/N.
    if path.as_bytes().starts_with(b"/dev/fd/") {
        return Err(invalid(format!(
            "mount point {shown}: a pre-opened FUSE device (drop_privileges) is not supported"
        )));
    }
    if path.is_empty() {
        return Err(usage_error("empty mount point"));
    }
    let resolved = existing_dir("mount point", Path::new(path))?;
    let mut entries = fs::read_dir(&resolved)
        .map_err(|e| invalid(format!("mount point {shown}: {}", describe(&e))))?;
    if entries.next().is_some() {
        return Err(invalid(format!("mount point {shown}: not empty")));
    }
    Ok(resolved)
}

/// Refuses layouts where one layer would see another's files or where the
/// mount would cover its own layers. All paths are resolved, so comparing
/// components is enough.
fn check_layout(
    lowers: &[PathBuf],
    upper: Option<&Path>,
    work: Option<&Path>,
    mountpoint: &Path,
) -> Result<(), CliError> {
    let clash = |a: &str, a_path: &Path, rel: &str, b: &str, b_path: &Path| {
        invalid(format!(
            "{a} {} {rel} {b} {}",
            a_path.display(),
            b_path.display()
        ))
    };
    // Names the relation of `a` to `b`, if they overlap.
    let overlap = |a: &Path, b: &Path| {
        if a == b {
            Some("is the same directory as")
        } else if a.starts_with(b) {
            Some("is inside")
        } else if b.starts_with(a) {
            Some("contains")
        } else {
            None
        }
    };

    for lower in lowers {
        if let Some(upper) = upper {
            if let Some(rel) = overlap(lower, upper) {
                return Err(clash("lower layer", lower, rel, "the upper dir", upper));
            }
        }
        if let Some(work) = work {
            if let Some(rel) = overlap(work, lower) {
                return Err(clash("work dir", work, rel, "lower layer", lower));
            }
        }
    }
    if let (Some(upper), Some(work)) = (upper, work) {
        if let Some(rel) = overlap(work, upper) {
            return Err(clash("work dir", work, rel, "the upper dir", upper));
        }
    }
    // The mount would hide the upper or work dir from the daemon itself.
    // (It may sit inside a lower: a lower is read only through fds opened
    // before the mount.)
    for (what, dir) in [("the upper dir", upper), ("the work dir", work)] {
        if let Some(dir) = dir {
            if let Some(rel) = overlap(mountpoint, dir) {
                return Err(clash("mount point", mountpoint, rel, what, dir));
            }
        }
    }
    Ok(())
}

/// Copy-up renames from the work dir into the upper, which only works within
/// one filesystem.
fn check_same_filesystem(upper: &Path, work: &Work, is_default: bool) -> Result<(), CliError> {
    let upper_dev = fs::metadata(upper)
        .map_err(|e| invalid(format!("upper dir {}: {}", upper.display(), describe(&e))))?
        .dev();
    if upper_dev != work.dev {
        // The default sits next to the upper, so this means the upper is the
        // root of a mount: no work dir can be both outside it and on it.
        let hint = if is_default {
            " (the upper is a mount point: use a directory inside it as the upper, and -w)"
        } else {
            ""
        };
        return Err(invalid(format!(
            "work dir {} is not on the same filesystem as the upper dir {}{hint}",
            work.path.display(),
            upper.display()
        )));
    }
    Ok(())
}

/// Resolves the mount point to unmount. Only the parent is resolved when the
/// mount point itself cannot be stat'ed: a mount whose daemon died answers
/// ENOTCONN, and that is exactly when one needs to unmount it.
fn resolve_umount(path: &OsStr) -> Result<PathBuf, CliError> {
    let path = Path::new(path);
    let fail = |why: String| invalid(format!("mount point {}: {why}", path.display()));
    if path.as_os_str().is_empty() {
        return Err(usage_error("empty mount point"));
    }
    match fs::canonicalize(path) {
        Ok(resolved) => Ok(resolved),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(fail(describe(&e))),
        Err(e) => {
            let absolute = absolute(path)?;
            match (absolute.parent(), absolute.file_name()) {
                (Some(parent), Some(name)) => fs::canonicalize(parent)
                    .map(|p| p.join(name))
                    .map_err(|_| fail(describe(&e))),
                _ => Err(fail(describe(&e))),
            }
        }
    }
}

/// Makes `path` absolute against the current directory, without touching
/// the disk or resolving anything.
fn absolute(path: &Path) -> Result<PathBuf, CliError> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir()
        .map_err(|e| invalid(format!("current directory: {}", describe(&e))))?;
    let mut joined = cwd;
    for component in path.components() {
        match component {
            Component::CurDir => {}
            other => joined.push(other),
        }
    }
    Ok(joined)
}

/// An io::Error as a short phrase, without Rust's "(os error N)" suffix.
fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => "no such directory".into(),
        Some(libc::ENOTDIR) => "not a directory".into(),
        _ => {
            let text = e.to_string();
            match text.find(" (os error") {
                Some(i) => text[..i].to_owned(),
                None => text,
            }
        }
    }
}
