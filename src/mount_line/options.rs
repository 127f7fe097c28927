//! The `-o` option grammar: what each comma-separated option asks for,
//! which ones are passed to the kernel, ignored with a warning, or refused.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use super::compat::{bad_value, os, utf8};
use super::{parse_format, parse_threads, usage_error, CliError, TestHooks};
use crate::model::idmap::{self, IdMap, Owners, Range};
use crate::model::whiteout::WriteFormat;

/// What the `-o` strings ask for.
#[derive(Debug, Default)]
pub(crate) struct MountOptions {
    /// `remount`: change the flags of a live mount, mount nothing.
    pub(crate) remount: bool,
    pub(crate) lowerdir: Option<OsString>,
    pub(crate) upperdir: Option<OsString>,
    pub(crate) workdir: Option<OsString>,
    pub(crate) format: Option<WriteFormat>,
    pub(crate) read_only: bool,
    pub(crate) allow_other: Option<bool>,
    pub(crate) threads: Option<usize>,
    pub(crate) log_file: Option<OsString>,
    pub(crate) fsname: Option<String>,
    pub(crate) kernel_options: Vec<String>,
    pub(crate) warnings: Vec<String>,
    pub(crate) uidmapping: Option<Vec<Range>>,
    pub(crate) gidmapping: Option<Vec<Range>>,
    pub(crate) squash_to_root: bool,
    pub(crate) squash_to_uid: Option<u32>,
    pub(crate) squash_to_gid: Option<u32>,
    pub(crate) volatile: bool,
    pub(crate) xattr_permissions: u8,
    pub(crate) metacopy: bool,
    pub(crate) io_uring: Option<bool>,
    pub(crate) splice_write: Option<bool>,
    pub(crate) test_hooks: TestHooks,
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
    pub(crate) fn parse(strings: &[OsString]) -> Result<MountOptions, CliError> {
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
            // Hidden: for tests/ only (see `TestHooks`).
            "test_copy_delay_ms" | "test_exit_delay_ms" => {
                let v = text_value(name, value)?;
                let ms = v
                    .parse::<u64>()
                    .map_err(|_| bad_value(name, &v, "expected milliseconds".into()))?;
                let delay = Some(std::time::Duration::from_millis(ms));
                if name == "test_copy_delay_ms" {
                    self.test_hooks.copy_delay = delay;
                } else {
                    self.test_hooks.exit_delay = delay;
                }
                Ok(())
            }
            "io_uring" | "splice_write" => {
                let v = text_value(name, value)?;
                let on = match v.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => return Err(bad_value(name, &v, "expected on or off".into())),
                };
                if name == "io_uring" {
                    self.io_uring = Some(on);
                } else {
                    self.splice_write = Some(on);
                }
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
    pub(crate) fn owners(&self) -> Owners {
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
