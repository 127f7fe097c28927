//! Whiteouts and opaque markers: how a layer says "deleted" or "hide what
//! is below", in every format of docs/design.md §2 (read from every layer, whatever
//! the format the upper is written in).
//!
//! | marker | meaning |
//! |---|---|
//! | char device 0/0 `NAME` | `NAME` deleted (overlay) |
//! | regular file `.wh.NAME` | `NAME` deleted (OCI/AUFS) |
//! | regular file `NAME` with `*.overlay.whiteout`, parent `overlay.opaque=x` | `NAME` deleted (kernel 6.7+) |
//! | dir with `*.overlay.opaque=y` or `user.fuseoverlayfs.opaque=y` | opaque |
//! | dir containing `.wh..wh..opq` | opaque (OCI/AUFS) |
//! | dir with `*.overlay.redirect` | its lower contents live at the path it names |
//! | regular file with `*.overlay.metacopy` | metadata only: its bytes are the lower file's (at its `*.overlay.redirect`, else the same name) |

use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::error::Result;
use crate::sys;

/// Prefix of OCI/AUFS whiteouts and of their private entries.
pub const WH_PREFIX: &[u8] = b".wh.";
/// The OCI/AUFS opaque marker file.
pub const OCI_OPAQUE: &str = ".wh..wh..opq";

/// Xattrs whose value `y` marks a dir opaque (`x`: holds xattr whiteouts).
pub const OPAQUE_XATTRS: [&str; 3] = [
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];
/// Xattrs that, on a regular file, make it a whiteout (kernel 6.7+).
pub const WHITEOUT_XATTRS: [&str; 2] = ["trusted.overlay.whiteout", "user.overlay.whiteout"];
/// Xattrs naming where a renamed directory's lower contents live: a path
/// from the layer root (`/a/b`) or a name in the same parent (kernel
/// overlayfs `redirect_dir`).
pub const REDIRECT_XATTRS: [&str; 2] = ["trusted.overlay.redirect", "user.overlay.redirect"];
/// Xattrs that, on a regular file, make it a metadata-only copy whose data
/// is a lower file's (kernel overlayfs `metacopy=on`). The kernel's v0 value
/// is empty; later ones carry a version and an fs-verity digest, which we
/// do not check.
pub const METACOPY_XATTRS: [&str; 2] = ["trusted.overlay.metacopy", "user.overlay.metacopy"];
/// Xattrs from the first proposal of xattr whiteouts, on the parent dir.
pub const WHITEOUTS_DIR_XATTRS: [&str; 2] = ["trusted.overlay.whiteouts", "user.overlay.whiteouts"];

/// Xattr name prefixes that belong to the union itself. They are never shown
/// through the mount, and a user may not set them (that would forge a
/// whiteout or an opaque marker).
pub const PRIVATE_XATTR_PREFIXES: [&[u8]; 5] = [
    b"trusted.overlay.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
    b"user.unionfs.",
    b"trusted.unionfs.",
];

/// True for an xattr name a user must neither see nor set.
pub fn is_private_xattr(name: &OsStr) -> bool {
    let n = name.as_bytes();
    // Forced permissions' overrides are the union's too: setting one would
    // forge an owner.
    PRIVATE_XATTR_PREFIXES.iter().any(|p| n.starts_with(p))
        || crate::model::override_stat::is_override_name(n)
}

/// True for names that are format markers and never appear in the merged
/// view (and cannot be created through it): anything starting `.wh.`.
pub fn is_marker_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WH_PREFIX)
}

/// For an OCI whiteout `.wh.NAME`, the hidden `NAME`. `None` for other
/// names and for AUFS-private `.wh..wh.*` entries (the opaque marker among
/// them), which hide nothing by name.
pub fn oci_whited_out_name(name: &OsStr) -> Option<&OsStr> {
    let n = name.as_bytes();
    let rest = n.strip_prefix(WH_PREFIX)?;
    // `.wh..` and `.wh...` name no entry a directory can hold.
    if rest.starts_with(WH_PREFIX) || matches!(rest, b"" | b"." | b"..") {
        return None;
    }
    Some(OsStr::from_bytes(rest))
}

/// `.wh.NAME` for `NAME`.
pub fn oci_whiteout_name(name: &OsStr) -> OsString {
    let mut s = OsString::from(".wh.");
    s.push(name);
    s
}

/// True for an overlay-format whiteout: a character device numbered 0/0.
pub fn is_whiteout_stat(st: &sys::Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// What a directory of one layer says about the layers below it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirMarks {
    /// Lower dirs of the same name are hidden.
    pub opaque: bool,
    /// Regular files in it may be xattr whiteouts (`overlay.opaque=x`).
    pub xattr_whiteouts: bool,
}

/// Reads the opaque markers of an open directory (xattrs and `.wh..wh..opq`)
/// and its redirect, if it has one.
pub fn dir_marks(dir: BorrowedFd) -> Result<(DirMarks, Option<OsString>)> {
    let mut marks = DirMarks::default();
    let mut redirect = None;
    // One listing first: most directories carry no marker xattr at all.
    let names = match sys::flistxattr(dir) {
        Ok(names) => names,
        Err(e) if is_xattr_unsupported(e.raw()) => Vec::new(),
        Err(e) => return Err(e),
    };
    for name in names.iter().filter(|n| n.as_bytes().ends_with(b"opaque")) {
        if !OPAQUE_XATTRS.iter().any(|x| name == x) {
            continue;
        }
        match sys::fgetxattr(dir, name) {
            Ok(Some(v)) if v.as_slice() == b"y" => marks.opaque = true,
            Ok(Some(v)) if v.as_slice() == b"x" => marks.xattr_whiteouts = true,
            Ok(_) => {}
            // trusted.* read without privilege: the marker just is not there.
            Err(e) if is_xattr_unsupported(e.raw()) => {}
            Err(e) => return Err(e),
        }
    }
    if names
        .iter()
        .any(|n| WHITEOUTS_DIR_XATTRS.iter().any(|x| n == x))
    {
        marks.xattr_whiteouts = true;
    }
    for name in names
        .iter()
        .filter(|n| REDIRECT_XATTRS.iter().any(|x| n == x))
    {
        match sys::fgetxattr(dir, name) {
            Ok(Some(v)) if !v.is_empty() => redirect = Some(OsString::from_vec(v)),
            Ok(_) => {}
            Err(e) if is_xattr_unsupported(e.raw()) => {}
            Err(e) => return Err(e),
        }
    }
    if !marks.opaque {
        match sys::statat(dir, OsStr::new(OCI_OPAQUE)) {
            Ok(_) => marks.opaque = true,
            Err(e) if e.is(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((marks, redirect))
}

/// Which marker makes the open directory `dir` opaque, in words (for the
/// tools that explain a view): `trusted.overlay.opaque=y`, `.wh..wh..opq`.
pub fn opaque_marker(dir: BorrowedFd) -> Result<Option<String>> {
    for x in OPAQUE_XATTRS {
        match sys::fgetxattr(dir, OsStr::new(x)) {
            Ok(Some(v)) if v.as_slice() == b"y" => return Ok(Some(format!("{x}=y"))),
            Ok(_) => {}
            Err(e) if is_xattr_unsupported(e.raw()) => {}
            Err(e) => return Err(e),
        }
    }
    match sys::statat(dir, OsStr::new(OCI_OPAQUE)) {
        Ok(_) => Ok(Some(format!("{OCI_OPAQUE} file"))),
        Err(e) if e.is(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// True when the object `name` of a layer's directory `dir`, whose lstat is
/// `st`, is a whiteout: a 0/0 device, or a regular file carrying a whiteout
/// xattr where the directory says it holds such files.
pub fn is_whiteout(dir: BorrowedFd, marks: DirMarks, name: &OsStr, st: &sys::Stat) -> Result<bool> {
    if is_whiteout_stat(st) {
        return Ok(true);
    }
    Ok(marks.xattr_whiteouts
        && st.st_mode & libc::S_IFMT == libc::S_IFREG
        && is_xattr_whiteout(dir, name)?)
}

/// True when a regular file in a dir with xattr whiteouts is one.
fn is_xattr_whiteout(dir: BorrowedFd, name: &OsStr) -> Result<bool> {
    let fd = sys::openat(dir, name, libc::O_PATH, 0)?;
    for x in WHITEOUT_XATTRS {
        match sys::fgetxattr(std::os::fd::AsFd::as_fd(&fd), OsStr::new(x)) {
            Ok(Some(_)) => return Ok(true),
            Ok(None) => {}
            Err(e) if is_xattr_unsupported(e.raw()) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// For the regular file `name` in a layer's directory `dir`: `None` when it
/// holds its own bytes, else `Some(redirect)` when it is a metacopy, with
/// the path or name its data file is at (`None`: the same name in the
/// layers below). One listing of its xattrs answers the common case.
pub fn metacopy_of(dir: BorrowedFd, name: &OsStr) -> Result<Option<Option<OsString>>> {
    Ok(file_xattrs(dir, name)?.metacopy)
}

/// What the one listing of a regular file's xattrs that a lookup makes
/// settles.
#[derive(Debug)]
pub struct FileXattrs {
    /// As [`metacopy_of`] says.
    pub metacopy: Option<Option<OsString>>,
    /// It carries no xattr a user sees (only private ones, or none): later
    /// getxattr and listxattr calls need not ask the layer.
    pub none_shown: bool,
    /// The names it carries (`None`: the layer has no xattrs), for a
    /// caller that looks for one of its own (an upper copy's origin).
    pub names: Option<Vec<OsString>>,
}

/// [`metacopy_of`], saying also whether the file shows any xattr.
pub fn file_xattrs(dir: BorrowedFd, name: &OsStr) -> Result<FileXattrs> {
    let names = match sys::listxattrat(dir, name) {
        Ok(names) => names,
        Err(e) if is_xattr_unsupported(e.raw()) => {
            return Ok(FileXattrs {
                metacopy: None,
                none_shown: false,
                names: None,
            })
        }
        Err(e) => return Err(e),
    };
    // A private access ACL shows, as system.posix_acl_access.
    let none_shown = names
        .iter()
        .all(|n| is_private_xattr(n) && !crate::model::override_stat::is_acl_name(n.as_bytes()));
    let metacopy = metacopy_in(dir, name, &names)?;
    Ok(FileXattrs {
        metacopy,
        none_shown,
        names: Some(names),
    })
}

/// The metacopy the xattr `names` of `name` in `dir` say it is, if any.
fn metacopy_in(
    dir: BorrowedFd,
    name: &OsStr,
    names: &[OsString],
) -> Result<Option<Option<OsString>>> {
    if !names.iter().any(|n| METACOPY_XATTRS.iter().any(|x| n == x)) {
        return Ok(None);
    }
    for x in REDIRECT_XATTRS {
        if !names.iter().any(|n| n == x) {
            continue;
        }
        match sys::getxattrat(dir, name, OsStr::new(x)) {
            Ok(Some(v)) if !v.is_empty() => return Ok(Some(Some(OsString::from_vec(v)))),
            Ok(_) => {}
            Err(e) if is_xattr_unsupported(e.raw()) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(None))
}

/// Errnos meaning "this xattr cannot be here", not a failure.
pub fn is_xattr_unsupported(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENOTSUP | libc::EPERM | libc::EACCES | libc::ENODATA
    )
}

/// True when `.wh.NAME` exists in `dir` (an OCI whiteout for `NAME`).
pub fn has_oci_whiteout(dir: BorrowedFd, name: &OsStr) -> Result<bool> {
    let wh = oci_whiteout_name(name);
    if wh.len() > 255 {
        return Ok(false);
    }
    match sys::statat(dir, &wh) {
        Ok(_) => Ok(true),
        Err(e) if e.is(libc::ENOENT) || e.is(libc::ENAMETOOLONG) => Ok(false),
        Err(e) => Err(e),
    }
}

/// What one entry of a layer's directory listing is, by the rules above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryRole {
    /// A real object, shown in the merged view if nothing above hides it.
    Plain,
    /// A whiteout of the given name (itself for 0/0 and xattr whiteouts,
    /// `NAME` for `.wh.NAME`).
    WhiteoutOf(OsString),
    /// `.wh..wh..opq`: its directory is opaque.
    OpaqueMarker,
    /// Another AUFS-private `.wh..wh.*` entry: never shown, hides nothing.
    Private,
}

/// Classifies the entry `name` (lstat `st`) of the layer directory `dir`.
pub fn classify_entry(
    dir: BorrowedFd,
    marks: DirMarks,
    name: &OsStr,
    st: &sys::Stat,
) -> Result<EntryRole> {
    if name == OCI_OPAQUE {
        return Ok(EntryRole::OpaqueMarker);
    }
    if is_marker_name(name) {
        return Ok(match oci_whited_out_name(name) {
            Some(hidden) => EntryRole::WhiteoutOf(hidden.to_os_string()),
            None => EntryRole::Private,
        });
    }
    if is_whiteout(dir, marks, name, st)? {
        return Ok(EntryRole::WhiteoutOf(name.to_os_string()));
    }
    Ok(EntryRole::Plain)
}

/// The format a user asks for (`--format`): how whiteouts and opaque
/// markers are written into the upper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFormat {
    /// Kernel overlayfs: 0/0 char devices and `overlay.opaque` xattrs.
    Overlay,
    /// OCI/AUFS: `.wh.NAME` files and `.wh..wh..opq`.
    Oci,
    /// Overlay where the upper allows a 0/0 device, else OCI.
    Auto,
}

/// How whiteouts and opaque markers are written into the upper (docs/design.md §2),
/// decided once at mount from the [`WriteFormat`] asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpperFormat {
    /// Char device 0/0 whiteouts and an `overlay.opaque=y` xattr, in the
    /// `trusted.` namespace when we may write it, else `user.` (as kernel
    /// overlayfs's `userxattr`).
    Overlay { trusted: bool },
    /// `.wh.NAME` files and a `.wh..wh..opq` file.
    Oci,
}

impl UpperFormat {
    fn opaque_xattr(self) -> &'static str {
        match self {
            UpperFormat::Overlay { trusted: true } => OPAQUE_XATTRS[0],
            _ => OPAQUE_XATTRS[1],
        }
    }

    /// How this format marks a deleted name, in words for the log.
    pub fn whiteout_words(self) -> &'static str {
        match self {
            UpperFormat::Overlay { .. } => "a 0/0 char device",
            UpperFormat::Oci => "a .wh. file",
        }
    }

    /// How this format marks an opaque directory, in words for the log.
    pub fn opaque_words(self) -> &'static str {
        match self {
            UpperFormat::Overlay { trusted: true } => "trusted.overlay.opaque=y",
            UpperFormat::Overlay { trusted: false } => "user.overlay.opaque=y",
            UpperFormat::Oci => "a .wh..wh..opq file",
        }
    }

    /// What marks a metadata-only copy (`-o metacopy=on`); `None` in the
    /// OCI format, which has no such file (its copies are whole).
    pub fn metacopy_xattr(self) -> Option<&'static str> {
        match self {
            UpperFormat::Overlay { trusted: true } => Some(METACOPY_XATTRS[0]),
            UpperFormat::Overlay { trusted: false } => Some(METACOPY_XATTRS[1]),
            UpperFormat::Oci => None,
        }
    }

    /// Where a renamed directory records its lowers' path; `None` in the
    /// OCI format, which has no redirects (a renamed tree is copied).
    pub fn redirect_xattr(self) -> Option<&'static str> {
        match self {
            UpperFormat::Overlay { trusted: true } => Some(REDIRECT_XATTRS[0]),
            UpperFormat::Overlay { trusted: false } => Some(REDIRECT_XATTRS[1]),
            UpperFormat::Oci => None,
        }
    }
}

/// Marks an open directory opaque.
pub fn write_opaque(format: UpperFormat, dir: BorrowedFd) -> Result<()> {
    match format {
        UpperFormat::Overlay { .. } => {
            sys::fsetxattr(dir, OsStr::new(format.opaque_xattr()), b"y", 0)
        }
        UpperFormat::Oci => {
            match sys::openat(
                dir,
                OsStr::new(OCI_OPAQUE),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                0o600,
            ) {
                Ok(_) => Ok(()),
                Err(e) if e.is(libc::EEXIST) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

/// Makes a whiteout for `name` in `dir`, where nothing stands at `name`.
pub fn write_whiteout(format: UpperFormat, dir: BorrowedFd, name: &OsStr) -> Result<()> {
    match format {
        UpperFormat::Overlay { .. } => sys::mknodat(dir, name, libc::S_IFCHR, 0),
        UpperFormat::Oci => write_oci_whiteout(dir, name),
    }
}

/// Creates the empty file `.wh.NAME` in `dir` (kept if already there).
pub fn write_oci_whiteout(dir: BorrowedFd, name: &OsStr) -> Result<()> {
    match sys::openat(
        dir,
        &oci_whiteout_name(name),
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
        0o600,
    ) {
        Ok(_) => Ok(()),
        Err(e) if e.is(libc::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// What the upper holds at a name, for a change that puts something there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperSlot {
    /// A whiteout occupies the name itself (0/0 device or xattr whiteout).
    pub whiteout_at_name: bool,
    /// `.wh.NAME` exists beside it.
    pub oci_whiteout: bool,
    /// A real object occupies the name.
    pub object: bool,
}

impl UpperSlot {
    pub fn is_whiteout(&self) -> bool {
        self.whiteout_at_name || self.oci_whiteout
    }
}

/// Reads what the upper directory `dir` holds at `name`, given whether
/// `.wh.NAME` is there (`LayerDir::upper_slot` knows when it cannot be).
pub fn upper_slot(
    dir: BorrowedFd,
    marks: DirMarks,
    name: &OsStr,
    oci_whiteout: bool,
) -> Result<UpperSlot> {
    let mut slot = UpperSlot {
        whiteout_at_name: false,
        oci_whiteout,
        object: false,
    };
    match sys::statat(dir, name) {
        Ok(st) if is_whiteout(dir, marks, name, &st)? => slot.whiteout_at_name = true,
        Ok(_) => slot.object = true,
        Err(e) if e.is(libc::ENOENT) => {}
        Err(e) => return Err(e),
    }
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_names() {
        assert_eq!(
            oci_whited_out_name(OsStr::new(".wh.foo")),
            Some(OsStr::new("foo"))
        );
        assert_eq!(oci_whited_out_name(OsStr::new(OCI_OPAQUE)), None);
        assert_eq!(oci_whited_out_name(OsStr::new(".wh.")), None);
        assert_eq!(oci_whited_out_name(OsStr::new("foo")), None);
        assert!(is_marker_name(OsStr::new(".wh.x")));
        assert!(!is_marker_name(OsStr::new(".whx")));
    }

    #[test]
    fn private_xattrs() {
        assert!(is_private_xattr(OsStr::new("trusted.overlay.opaque")));
        assert!(is_private_xattr(OsStr::new("user.unionfs.ino")));
        assert!(!is_private_xattr(OsStr::new("user.comment")));
        assert!(!is_private_xattr(OsStr::new("security.capability")));
    }
}
