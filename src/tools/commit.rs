//! `unionfs commit`: the upper as an OCI image layer tarball. Exactly the
//! entries of `diff`: added and changed objects in full (owners, modes,
//! mtimes, portable xattrs as PAX `SCHILY.xattr.*` records, hard links as
//! tar hard links), deletions as `.wh.NAME`, directories that hide the
//! lowers' one with `.wh..wh..opq`. OCI has no redirect, so a renamed
//! directory is written out in full at its new name.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{Builder, EntryType, Header};

use super::diff::{self, Change};
use super::offline::{portable_xattrs, show_path, MergedEntry, Union};
use super::ToolError;
use crate::model::layer::{join_path, split_path};
use crate::model::whiteout;

/// Where the archive goes: plain or gzip.
enum Sink<W: Write> {
    Plain(W),
    Gzip(GzEncoder<W>),
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Gzip(g) => g.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Gzip(g) => g.flush(),
        }
    }
}

impl<W: Write> Sink<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Sink::Plain(mut w) => {
                w.flush()?;
                Ok(w)
            }
            Sink::Gzip(g) => {
                let mut w = g.finish()?;
                w.flush()?;
                Ok(w)
            }
        }
    }
}

fn sink<W: Write>(w: W, gzip: bool) -> Sink<W> {
    if gzip {
        // flate2 writes no time and no name in the gzip header, so the
        // bytes depend on the content only.
        Sink::Gzip(GzEncoder::new(w, Compression::default()))
    } else {
        Sink::Plain(w)
    }
}

fn wants_gzip(output: &OsStr) -> bool {
    let b = output.as_bytes();
    b.ends_with(b".gz") || b.ends_with(b".tgz")
}

/// The archive writer: headers from layer objects, times clamped when
/// asked.
struct Archive<W: Write> {
    tar: Builder<W>,
    clamp: Option<i64>,
}

impl<W: Write> Archive<W> {
    fn header(&self, kind: EntryType, mode: u32, uid: u32, gid: u32, mtime: i64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode & 0o7777);
        h.set_uid(u64::from(uid));
        h.set_gid(u64::from(gid));
        let t = match self.clamp {
            Some(c) => mtime.min(c),
            None => mtime,
        };
        h.set_mtime(t.max(0) as u64);
        h.set_size(0);
        h
    }

    fn whiteout(&mut self, path: &OsStr, mtime: i64) -> Result<(), ToolError> {
        let mut h = self.header(EntryType::Regular, 0o644, 0, 0, mtime);
        self.tar
            .append_data(&mut h, Path::new(path), io::empty())
            .map_err(|e| ToolError(format!("{}: {e}", show_path(path))))
    }

    fn xattrs(&mut self, node: &MergedEntry) -> Result<(), ToolError> {
        let mut records: Vec<(String, Vec<u8>)> = Vec::new();
        for (k, v) in portable_xattrs(node.top())? {
            match k.to_str() {
                Some(k) => records.push((format!("SCHILY.xattr.{k}"), v)),
                None => eprintln!(
                    "unionfs: warning: {}: xattr {} has a non-UTF-8 name; not archived",
                    show_path(&node.path),
                    k.to_string_lossy()
                ),
            }
        }
        if !records.is_empty() {
            self.tar
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        Ok(())
    }

    fn object(
        &mut self,
        node: &MergedEntry,
        links: &mut HashMap<(u64, u64), OsString>,
    ) -> Result<(), ToolError> {
        let top = node.top();
        let st = &top.stat;
        let path = &node.path;
        let fail = |e: &dyn std::fmt::Display| ToolError(format!("{}: {e}", show_path(path)));
        let head = |a: &Self, kind| a.header(kind, st.st_mode, st.st_uid, st.st_gid, st.st_mtime);
        match top.kind() {
            libc::S_IFREG if st.st_nlink > 1 && links.contains_key(&(st.st_dev, st.st_ino)) => {
                let first = links[&(st.st_dev, st.st_ino)].clone();
                let mut h = head(self, EntryType::Link);
                self.tar
                    .append_link(&mut h, Path::new(path), Path::new(&first))
                    .map_err(|e| fail(&e))?;
            }
            libc::S_IFREG => {
                if st.st_nlink > 1 {
                    links.insert((st.st_dev, st.st_ino), path.clone());
                }
                self.xattrs(node)?;
                let mut h = head(self, EntryType::Regular);
                // A metacopy's bytes are its data file's.
                let bytes = node.data_part();
                let size = bytes.stat.st_size as u64;
                h.set_size(size);
                let f = File::from(bytes.open(libc::O_RDONLY)?);
                // A file that changes size while archived would corrupt the
                // archive; take exactly the size in the header.
                let mut data = io::Read::take(f, size);
                self.tar
                    .append_data(&mut h, Path::new(path), &mut data)
                    .map_err(|e| fail(&e))?;
            }
            libc::S_IFDIR => {
                self.xattrs(node)?;
                let mut h = head(self, EntryType::Directory);
                let mut p = path.clone();
                p.push("/");
                self.tar
                    .append_data(&mut h, Path::new(&p), io::empty())
                    .map_err(|e| fail(&e))?;
            }
            libc::S_IFLNK => {
                let target = top.link_target()?;
                let mut h = head(self, EntryType::Symlink);
                self.tar
                    .append_link(&mut h, Path::new(path), Path::new(&target))
                    .map_err(|e| fail(&e))?;
            }
            libc::S_IFSOCK => {
                eprintln!(
                    "unionfs: warning: {}: a socket cannot be archived; skipped",
                    show_path(path)
                );
            }
            kind => {
                self.xattrs(node)?;
                let t = match kind {
                    libc::S_IFIFO => EntryType::Fifo,
                    libc::S_IFCHR => EntryType::Char,
                    _ => EntryType::Block,
                };
                let mut h = head(self, t);
                if kind != libc::S_IFIFO {
                    h.set_device_major(libc::major(st.st_rdev))?;
                    h.set_device_minor(libc::minor(st.st_rdev))?;
                }
                self.tar
                    .append_data(&mut h, Path::new(path), io::empty())
                    .map_err(|e| fail(&e))?;
            }
        }
        Ok(())
    }
}

/// Writes every change of the upper to `w`; `own` is the name of the
/// archive's temporary and `output` the archive, for the error when the
/// temporary shows among the changes.
fn write_layer<W: Write>(
    merged: &Union,
    lowers: &Union,
    w: W,
    clamp: Option<i64>,
    (own, output): (&OsStr, &OsStr),
) -> Result<W, ToolError> {
    let mut a = Archive {
        tar: Builder::new(w),
        clamp,
    };
    let changes = diff::changes(merged, lowers)?;
    if let Some(c) = changes.iter().find(|c| split_path(&c.path).1 == own) {
        return Err(super::output::output_in_union(output, &c.path));
    }
    // Directories written with an opaque marker: a deletion below one is
    // already implied.
    let mut opaque: Vec<OsString> = Vec::new();
    let mut links = HashMap::new();
    let under = |dirs: &[OsString], p: &OsStr| {
        dirs.iter().any(|d| {
            p.as_bytes().starts_with(d.as_bytes()) && p.as_bytes().get(d.len()) == Some(&b'/')
        })
    };
    for e in &changes {
        match e.change {
            Change::Deleted => {
                if under(&opaque, &e.path) {
                    continue;
                }
                let (parent, name) = split_path(&e.path);
                // Below a directory that a non-directory replaced: the new
                // entry replaces the whole directory already.
                if !parent.is_empty() && !merged.resolve(parent)?.is_some_and(|n| n.is_dir()) {
                    continue;
                }
                let wh = join_path(parent, &whiteout::oci_whiteout_name(name));
                let mtime = e.lower.as_ref().map(|n| n.top().stat.st_mtime).unwrap_or(0);
                a.whiteout(&wh, mtime)?;
            }
            Change::Added | Change::Changed => {
                let Some(node) = &e.merged else { continue };
                a.object(node, &mut links)?;
                if diff::hides_lower_dir(e) {
                    let marker = join_path(&e.path, OsStr::new(whiteout::OCI_OPAQUE));
                    a.whiteout(&marker, node.top().stat.st_mtime)?;
                    opaque.push(e.path.clone());
                }
            }
        }
    }
    Ok(a.tar.into_inner()?)
}

/// `SOURCE_DATE_EPOCH`, or 0 when unset.
fn source_date_epoch() -> Result<i64, ToolError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse::<i64>()
            .map_err(|_| ToolError(format!("SOURCE_DATE_EPOCH={v}: not a number of seconds"))),
        Err(_) => Ok(0),
    }
}

/// Writes the archive to `output` ('-' for stdout). A file is written
/// beside its final name and renamed when complete, so a failure leaves no
/// partial archive.
pub fn run(
    merged: &Union,
    lowers: &Union,
    output: &OsStr,
    reproducible: bool,
) -> Result<(), ToolError> {
    let clamp = if reproducible {
        Some(source_date_epoch()?)
    } else {
        None
    };
    if output == "-" {
        let out = io::stdout();
        let own = (OsStr::new(""), output);
        let sink = write_layer(
            merged,
            lowers,
            sink(out.lock(), wants_gzip(output)),
            clamp,
            own,
        )?;
        drop(sink.finish()?);
        return Ok(());
    }
    let path = Path::new(output);
    let name = path
        .file_name()
        .ok_or_else(|| ToolError(format!("{}: not a file name", path.display())))?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".unionfs-tmp-{}", std::process::id()));
    let tmp = path.with_file_name(&tmp_name);
    let file = File::create(&tmp)
        .map_err(|e| ToolError(format!("{}: {}", path.display(), ToolError::from(e))))?;
    let own = (tmp_name.as_os_str(), output);
    let result = write_layer(merged, lowers, sink(file, wants_gzip(output)), clamp, own)
        .and_then(|sink| Ok(sink.finish()?))
        .and_then(|f| Ok(f.sync_all()?))
        .and_then(|()| Ok(std::fs::rename(&tmp, path)?));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
