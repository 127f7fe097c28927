//! The compatibility forms, fuse-overlayfs's `-o DATA MNT` and mount.fuse's
//! `SOURCE MNT -o DATA`, scanned by hand into a [`RawMount`]: clap cannot
//! express positionals and flags in any order with libfuse's spellings.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use super::{parse_format, parse_threads, usage_error, CliError, RawMount};

/// A compatibility-form command line as typed: a mount, or help/version.
pub(crate) enum Compat {
    Mount(RawMount),
    /// `-h`/`--help`: the caller prints its help.
    Help,
    /// `-V`/`--version`.
    Version,
}

pub(crate) fn scan_compat(args: &[OsString]) -> Result<Compat, CliError> {
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
            b"-h" | b"--help" => return Ok(Compat::Help),
            b"-V" | b"--version" => return Ok(Compat::Version),
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

pub(super) fn bad_value(option: &str, value: &str, expected: String) -> CliError {
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

pub(super) fn os(bytes: &[u8]) -> OsString {
    OsStr::from_bytes(bytes).to_owned()
}

pub(crate) fn utf8(value: &OsStr) -> Result<String, CliError> {
    value
        .to_str()
        .map(str::to_owned)
        .ok_or_else(|| usage_error(format!("'{}' is not valid UTF-8", value.to_string_lossy())))
}
