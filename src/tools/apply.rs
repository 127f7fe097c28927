//! `unionfs apply`: unpacks an OCI image layer tarball (plain or gzip) into
//! a new directory that can serve as a layer, its whiteouts and opaque
//! markers written in the chosen format. Entries that would leave the
//! directory (`..`, absolute paths, hard links out of it, paths through a
//! symlink) are refused, and a failure leaves nothing behind.

use std::cell::{Cell, RefCell};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::rc::Rc;

use flate2::read::GzDecoder;
use tar::{Archive, EntryType};

use super::offline::show_path;
use super::stage::{Meta, Stage};
use super::{ApplyFormat, ToolError};
use crate::model::layer::{join_path, split_path};
use crate::model::whiteout::{self, UpperFormat};
use crate::sys;

/// An entry path made relative and plain: `./` and empty components
/// dropped; absolute paths and `..` refused.
fn clean(raw: &[u8], what: &str) -> Result<OsString, ToolError> {
    let shown = OsStr::from_bytes(raw).to_string_lossy().into_owned();
    if raw.starts_with(b"/") {
        return Err(ToolError(format!(
            "{what} '{shown}' is an absolute path; refusing the archive (nothing written)"
        )));
    }
    let mut out = OsString::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                return Err(ToolError(format!(
                    "{what} '{shown}' escapes the directory ('..'); refusing the archive (nothing written)"
                )))
            }
            c => out = join_path(&out, OsStr::from_bytes(c)),
        }
    }
    Ok(out)
}

/// Why a `.wh.` entry named `name` cannot be applied, if it cannot: a
/// whiteout of `.`, `..` or the empty name would mark the entry's own
/// directory or its parent (outside DIR at the top) opaque, and the
/// readers ignore such names, so the two formats would disagree.
fn bad_marker(name: &OsStr) -> Option<&'static str> {
    match name.as_bytes().strip_prefix(whiteout::WH_PREFIX)? {
        b"" => Some("a whiteout of the empty name"),
        b"." => Some("a whiteout of '.' (its own directory)"),
        b".." => Some("a whiteout of '..' (the parent directory)"),
        _ => None,
    }
}

/// The archive's bytes on their way to the tar reader. It remembers how
/// many came through and what failed below the tar format (a read error,
/// a broken gzip stream), so a failure is described by its cause rather
/// than by what the tar parser made of the bytes.
struct Tracked {
    inner: Box<dyn Read>,
    seen: Rc<Seen>,
}

#[derive(Default)]
struct Seen {
    bytes: Cell<u64>,
    failure: RefCell<Option<io::Error>>,
}

impl Read for Tracked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.seen.bytes.set(self.seen.bytes.get() + n as u64);
                Ok(n)
            }
            Err(e) => {
                let kept = io::Error::new(e.kind(), e.to_string());
                *self.seen.failure.borrow_mut() = Some(kept);
                Err(e)
            }
        }
    }
}

/// The archive being read, for messages about it.
struct Source {
    /// The file's name, or "standard input".
    shown: String,
    gzip: bool,
    seen: Rc<Seen>,
}

impl Source {
    /// Opens `archive` ('-': stdin), gzip or plain by its first bytes.
    fn open(archive: &OsStr) -> Result<(Source, Tracked), ToolError> {
        let (shown, raw): (String, Box<dyn Read>) = if archive == "-" {
            ("standard input".to_owned(), Box::new(io::stdin()))
        } else {
            let shown = std::path::Path::new(archive).display().to_string();
            let f = File::open(archive)
                .map_err(|e| ToolError(format!("{shown}: {}", ToolError::from(e))))?;
            (shown, Box::new(f))
        };
        let mut buf = BufReader::new(raw);
        // gzip by its magic number, whatever the name says.
        let gzip = buf
            .fill_buf()
            .map_err(|e| ToolError(format!("{shown}: {}", ToolError::from(e))))?
            .starts_with(&[0x1f, 0x8b]);
        let inner: Box<dyn Read> = if gzip {
            Box::new(GzDecoder::new(buf))
        } else {
            Box::new(buf)
        };
        let seen = Rc::new(Seen::default());
        let source = Source {
            shown,
            gzip,
            seen: seen.clone(),
        };
        Ok((source, Tracked { inner, seen }))
    }

    /// Describes a failure to read the archive, `last` the entry read last.
    fn failed(&self, last: Option<&OsStr>, e: &io::Error) -> ToolError {
        let shown = &self.shown;
        let at = match last {
            Some(p) => format!(" (after entry '{}')", show_path(p)),
            None => String::new(),
        };
        let cause = match self.seen.failure.borrow().as_ref() {
            Some(f) if self.gzip && f.kind() == io::ErrorKind::UnexpectedEof => {
                "truncated gzip data".to_owned()
            }
            Some(f) if self.gzip => format!("corrupt gzip data ({})", super::io_text(f)),
            Some(f) => format!("read error: {}", super::io_text(f)),
            None if last.is_none() => {
                let what = if self.gzip {
                    "gzip data that is not a tar archive"
                } else {
                    "not a tar archive"
                };
                return ToolError(format!("{shown}: {what}"));
            }
            None => tar_cause(e).to_owned(),
        };
        ToolError(format!("{shown}: {cause}{at}"))
    }
}

/// A tar parser's complaint in a few words, without the field's bytes it
/// quotes (which may be anything: the file was not a tar archive).
fn tar_cause(e: &io::Error) -> &'static str {
    let text = e.to_string();
    if text.contains("numeric field") {
        "corrupt header (a number field holds something else)"
    } else if text.contains("checksum") {
        "corrupt header (checksum mismatch)"
    } else if e.kind() == io::ErrorKind::UnexpectedEof
        || text.contains("entire block")
        || text.contains("EOF")
    {
        "truncated archive"
    } else {
        "corrupt archive"
    }
}

/// Unpacks `archive` into the new directory `dir`.
pub fn run(archive: &OsStr, dir: &OsStr, format: ApplyFormat) -> Result<(), ToolError> {
    let is_root = sys::geteuid() == 0;
    let overlay = match format {
        ApplyFormat::Overlay => true,
        ApplyFormat::Oci => false,
        ApplyFormat::Auto => is_root,
    };
    let (source, input) = Source::open(archive)?;
    let mut stage = Stage::new(dir)?;
    let mut whiteouts: Vec<(OsString, OsString)> = Vec::new();
    let mut opaques: Vec<OsString> = Vec::new();
    let mut tar = Archive::new(input);
    // The entry read last, for messages about a failure after it.
    let mut last: Option<OsString> = None;
    let entries = tar.entries().map_err(|e| source.failed(None, &e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| source.failed(last.as_deref(), &e))?;
        let named = |e: ToolError| ToolError(format!("{}: {}", source.shown, e.0));
        let rel = clean(&entry.path_bytes(), "entry").map_err(named)?;
        last = Some(rel.clone());
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            continue;
        }
        let header = entry.header();
        let field = |what: &str| {
            ToolError(format!(
                "{}: entry '{}': corrupt header ({what} is not a number)",
                source.shown,
                show_path(&rel)
            ))
        };
        let meta = Meta {
            mode: header.mode().map_err(|_| field("mode"))? & 0o7777,
            uid: header.uid().map_err(|_| field("uid"))? as u32,
            gid: header.gid().map_err(|_| field("gid"))? as u32,
            mtime: (header.mtime().map_err(|_| field("mtime"))? as i64, 0),
            xattrs: Vec::new(),
        };
        let (parent, name) = {
            let (p, n) = split_path(&rel);
            (p.to_os_string(), n.to_os_string())
        };
        if rel.is_empty() {
            if kind == EntryType::Directory {
                stage.set_root_meta(meta);
            }
            continue;
        }
        if let Some(why) = bad_marker(&name) {
            return Err(ToolError(format!(
                "{}: entry '{}': {why}; refusing the archive (nothing written)",
                source.shown,
                show_path(&rel)
            )));
        }
        if name == whiteout::OCI_OPAQUE {
            if overlay {
                opaques.push(parent);
                continue;
            }
        } else if let Some(hidden) = whiteout::oci_whited_out_name(&name) {
            if overlay {
                whiteouts.push((parent, hidden.to_os_string()));
                continue;
            }
        } else if whiteout::is_marker_name(&name) {
            // AUFS private entries (.wh..wh.plnk and the like) mean nothing
            // in a layer.
            continue;
        }
        let mut meta = meta;
        let pax = |e: io::Error| source.failed(Some(&rel), &e);
        if let Some(exts) = entry.pax_extensions().map_err(pax)? {
            for ext in exts {
                let ext = ext.map_err(pax)?;
                if let Some(x) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    let x = OsStr::from_bytes(x);
                    // A layer must not forge the union's own markers.
                    if !whiteout::is_private_xattr(x) {
                        meta.xattrs
                            .push((x.to_os_string(), ext.value_bytes().to_vec()));
                    }
                }
            }
        }
        let pfd = stage.dir(&parent).map_err(|e| {
            ToolError(format!(
                "entry '{}': {e}; refusing the archive (nothing written)",
                show_path(&rel)
            ))
        })?;
        let fail = |e: crate::Error| ToolError(format!("{}: {e}", show_path(&rel)));
        let existing = match sys::statat(pfd.as_fd(), &name) {
            Ok(st) => Some(st.st_mode & libc::S_IFMT),
            Err(e) if e.is(libc::ENOENT) => None,
            Err(e) => return Err(fail(e)),
        };
        // A later entry replaces an earlier one, except that a directory
        // entry over a directory only updates it.
        if existing.is_some() && !(kind == EntryType::Directory && existing == Some(libc::S_IFDIR))
        {
            stage.clear(pfd.as_fd(), &name)?;
        }
        let st_kind = match kind {
            EntryType::Directory => {
                if existing != Some(libc::S_IFDIR) {
                    sys::mkdirat(pfd.as_fd(), &name, 0o700).map_err(fail)?;
                }
                libc::S_IFDIR
            }
            EntryType::Regular | EntryType::Continuous => {
                let fd = sys::openat(
                    pfd.as_fd(),
                    &name,
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                    0o600,
                )
                .map_err(fail)?;
                let mut file = File::from(fd);
                io::copy(&mut entry, &mut file).map_err(|e| {
                    if source.seen.failure.borrow().is_some()
                        || e.kind() == io::ErrorKind::UnexpectedEof
                    {
                        source.failed(Some(&rel), &e)
                    } else {
                        fail(e.into())
                    }
                })?;
                libc::S_IFREG
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        ToolError(format!("{}: symlink without a target", show_path(&rel)))
                    })?
                    .into_owned();
                sys::symlinkat(&OsString::from_vec(target), pfd.as_fd(), &name).map_err(fail)?;
                libc::S_IFLNK
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().ok_or_else(|| {
                    ToolError(format!("{}: hard link without a target", show_path(&rel)))
                })?;
                let target = clean(&target, "hard link target").map_err(named)?;
                let (tp, tn) = split_path(&target);
                let tdir = stage.dir(tp)?;
                sys::linkat(tdir.as_fd(), tn, pfd.as_fd(), &name).map_err(|e| {
                    ToolError(format!(
                        "{}: hard link to {}: {e}",
                        show_path(&rel),
                        show_path(&target)
                    ))
                })?;
                // The link shares the target's inode and metadata.
                continue;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (t, rdev) = match kind {
                    EntryType::Fifo => (libc::S_IFIFO, 0),
                    t => (
                        if t == EntryType::Char {
                            libc::S_IFCHR
                        } else {
                            libc::S_IFBLK
                        },
                        libc::makedev(
                            entry
                                .header()
                                .device_major()
                                .map_err(|_| field("device major"))?
                                .unwrap_or(0),
                            entry
                                .header()
                                .device_minor()
                                .map_err(|_| field("device minor"))?
                                .unwrap_or(0),
                        ),
                    ),
                };
                sys::mknodat(pfd.as_fd(), &name, t | 0o600, rdev).map_err(fail)?;
                t
            }
            other => {
                return Err(ToolError(format!(
                    "{}: unsupported tar entry type {other:?} (nothing written)",
                    show_path(&rel)
                )))
            }
        };
        stage.set_meta(pfd.as_fd(), &rel, st_kind, meta)?;
    }
    // OCI markers become overlay ones once every entry is in place: a
    // whiteout beside a directory of the same layer makes that directory
    // opaque (it was deleted and made anew), else it is a 0/0 device.
    let upper_format = UpperFormat::Overlay { trusted: is_root };
    for (parent, name) in &whiteouts {
        let pfd = stage.dir(parent)?;
        let at = join_path(parent, name);
        let fail = |e: crate::Error| ToolError(format!("{}: whiteout: {e}", show_path(&at)));
        match sys::statat(pfd.as_fd(), name) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                let d = sys::openat(pfd.as_fd(), name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                    .map_err(fail)?;
                whiteout::write_opaque(upper_format, d.as_fd()).map_err(fail)?;
            }
            Ok(_) => {}
            Err(e) if e.is(libc::ENOENT) => whiteout::write_whiteout(upper_format, pfd.as_fd(), name)
                .map_err(|e| {
                    if e.is(libc::EPERM) {
                        ToolError(format!(
                            "{}: cannot make a 0/0 device whiteout without privilege (use --format oci)",
                            show_path(&at)
                        ))
                    } else {
                        fail(e)
                    }
                })?,
            Err(e) => return Err(fail(e)),
        }
    }
    for dir in &opaques {
        let d = stage.dir(dir)?;
        whiteout::write_opaque(upper_format, d.as_fd())
            .map_err(|e| ToolError(format!("{}: opaque marker: {e}", show_path(dir))))?;
    }
    if source.seen.bytes.get() == 0 {
        return Err(ToolError(format!(
            "{}: empty, not a tar archive",
            source.shown
        )));
    }
    stage.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_are_made_plain_or_refused() {
        assert_eq!(clean(b"./etc/motd", "entry").unwrap(), "etc/motd");
        assert_eq!(clean(b"etc//x/./y/", "entry").unwrap(), "etc/x/y");
        assert_eq!(clean(b"./", "entry").unwrap(), "");
        assert!(clean(b"/etc/passwd", "entry").is_err());
        assert!(clean(b"a/../../x", "entry").is_err());
        assert!(clean(b"..", "entry").is_err());
        assert_eq!(
            clean(b"bin/\xff", "entry").unwrap().as_bytes(),
            b"bin/\xff",
            "names are bytes"
        );
    }
}
