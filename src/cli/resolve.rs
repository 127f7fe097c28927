//! Resolution: a [`RawMount`] as typed becomes a [`MountConfig`] whose every
//! path is absolute, resolved and checked against the disk (layers exist,
//! do not overlap, the work dir is on the upper's filesystem, the mount
//! point is an empty directory).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::model::whiteout::WriteFormat;
use crate::mount_line::{
    default_work_dir, invalid, only_once, split_layer_list, usage_error, utf8, CliError,
    MountConfig, MountOptions, RawMount, MAX_LOWERS,
};

/// Merges flags and `-o`, resolves every path, and checks the layout.
pub(super) fn resolve(raw: RawMount) -> Result<MountConfig, CliError> {
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
        splice_write: opts.splice_write.unwrap_or(false),
        warnings: opts.warnings,
        verbose: raw.verbose,
        test_hooks: opts.test_hooks,
    })
}

/// The lowers looked up by name and the data-only ones (after `::`).
pub(super) fn resolve_lowers(list: &OsStr) -> Result<(Vec<PathBuf>, Vec<PathBuf>), CliError> {
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
pub(super) fn existing_dir(what: &str, path: &Path) -> Result<PathBuf, CliError> {
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
pub(super) fn resolve_umount(path: &OsStr) -> Result<PathBuf, CliError> {
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
