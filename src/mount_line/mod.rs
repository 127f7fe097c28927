//! A mount command line as typed and as validated: the `mount` flags
//! (clap), the compatibility forms' scanner ([`compat`]), the `-o` option
//! grammar ([`options`]), and the [`MountConfig`] they resolve into.
//!
//! Shared by [`crate::cli`], which resolves a command line against the disk,
//! the daemon, which mounts a `MountConfig`, and the layer tools, which read
//! a live daemon's argv to find its layers ([`typed_layers`]); so none of
//! them depends on `cli`.

mod compat;
mod options;

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::model::idmap::Owners;
use crate::model::whiteout::WriteFormat;

pub(crate) use compat::{scan_compat, utf8, Compat};
pub use options::split_layer_list;
pub(crate) use options::MountOptions;

/// The most lower layers one mount may stack.
pub const MAX_LOWERS: usize = 500;

/// The most FUSE worker threads one may ask for.
pub(crate) const MAX_THREADS: usize = 1024;

/// Exit code for a malformed command line.
pub(crate) const EXIT_USAGE: i32 = 2;

/// Exit code for a well-formed command line that the disk contradicts.
pub(crate) const EXIT_INVALID: i32 = 1;

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
    /// `-o splice_write=on|off`: receive requests by splice so that a big
    /// WRITE's data is spliced into the upper file (off unless asked: see
    /// README, Speed).
    pub splice_write: bool,
    /// One line per accepted but ignored option, e.g. "option 'noatime' has
    /// no effect here; ignored", for the caller to print after its own
    /// "unionfs: warning: " prefix.
    pub warnings: Vec<String>,
    /// `-v`: log each copy-on-write event (copy-up, whiteout, opaque dir,
    /// directory rename) at info level.
    pub verbose: bool,
    /// Hidden `-o test_*` options: see [`TestHooks`].
    pub test_hooks: TestHooks,
}

/// Delays that let the tests in `tests/` watch a mount in a state that is
/// otherwise too brief to catch. Set by hidden `-o` options, absent from
/// the help: `test_copy_delay_ms=N` (copy-up copies by read/write, one MiB
/// at a time, N ms apart) and `test_exit_delay_ms=N` (the daemon lingers N
/// ms after its session ends, the union and its locks still held). Options
/// rather than environment variables: they reach the daemon a test starts
/// as any other mount option does, one mount at a time, and the daemon
/// reads no test switch from its environment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TestHooks {
    pub copy_delay: Option<std::time::Duration>,
    pub exit_delay: Option<std::time::Duration>,
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

pub(crate) fn usage_error(what: impl std::fmt::Display) -> CliError {
    CliError {
        message: format!("unionfs: {what}"),
        exit_code: EXIT_USAGE,
    }
}

pub(crate) fn invalid(what: impl std::fmt::Display) -> CliError {
    CliError {
        message: format!("unionfs: {what}"),
        exit_code: EXIT_INVALID,
    }
}

pub(crate) const MOUNT_AFTER_HELP: &str = "\
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
  splice_write=on|off        receive requests by splice(2), so that the data
                             of big writes reaches the upper file without a
                             copy through the daemon (each other request then
                             costs a system call more); off by default
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

#[derive(Args, Debug)]
#[command(after_help = MOUNT_AFTER_HELP)]
pub(crate) struct MountArgs {
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

pub(crate) fn parse_format(value: &str) -> Result<WriteFormat, String> {
    match value {
        "overlay" => Ok(WriteFormat::Overlay),
        "oci" => Ok(WriteFormat::Oci),
        "auto" => Ok(WriteFormat::Auto),
        _ => Err("expected overlay, oci or auto".to_owned()),
    }
}

pub(crate) fn parse_threads(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(format!("expected a number from 1 to {MAX_THREADS}")),
    }
}

/// A mount request as typed, before any option string is read or any path
/// is looked at.
#[derive(Debug, Default)]
pub(crate) struct RawMount {
    pub(crate) lower: Option<OsString>,
    pub(crate) upper: Option<OsString>,
    pub(crate) work: Option<OsString>,
    /// SOURCE of the mount.fuse form.
    pub(crate) source: Option<OsString>,
    pub(crate) mountpoint: OsString,
    pub(crate) foreground: bool,
    /// Each `-o` argument, in order.
    pub(crate) options: Vec<OsString>,
    pub(crate) format: Option<WriteFormat>,
    pub(crate) log_file: Option<OsString>,
    pub(crate) threads: Option<usize>,
    pub(crate) verbose: bool,
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

/// `unionfs mount ...` alone, as the full command line's parser reads it.
#[derive(Parser, Debug)]
#[command(name = "unionfs", bin_name = "unionfs")]
struct MountLine {
    #[command(subcommand)]
    command: MountLineSub,
}

#[derive(Subcommand, Debug)]
enum MountLineSub {
    Mount(MountArgs),
}

/// Reads a mount command line (argv including argv[0]) the way
/// [`crate::cli::parse_args`] does, without looking at the disk. `None` when it is not
/// a well-formed mount.
pub fn typed_layers(args: &[OsString]) -> Option<TypedLayers> {
    let raw = match args.get(1)?.as_bytes() {
        b"mount" => {
            let MountLineSub::Mount(m) = MountLine::try_parse_from(args).ok()?.command;
            RawMount::from(m)
        }
        _ => match scan_compat(args.get(1..)?).ok()? {
            Compat::Mount(raw) => raw,
            Compat::Help | Compat::Version => return None,
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

/// A layer may be named by its flag or by its `-o` option, not both: there
/// is no safe way to pick one.
pub(crate) fn only_once(
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
