//! Layer building: the layer DSL ([`Layer`]) and [`render`] in every
//! whiteout/opaque [`Format`] of docs/design.md §2.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;

// Layer DSL
// ---------------------------------------------------------------------------

/// What an entry of a layer spec is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(Vec<u8>),
    Fifo,
    /// The name is deleted (hides lower layers).
    Whiteout,
    /// The dir (created if absent) hides the same dir in lower layers.
    Opaque,
    /// A hard link to the file at this (layer-relative) path.
    Link(Vec<u8>),
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub path: Vec<u8>,
    pub kind: Kind,
    pub mode: Option<u32>,
    pub owner: Option<(u32, u32)>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub mtime: Option<i64>,
}

/// A logical layer: a list of entries, rendered to disk by [`render`] in any
/// [`Format`]. Parents are created implicitly (mode 0755). Modifiers
/// (`mode`, `owner`, `xattr`, `mtime`) apply to the entry added last.
///
/// ```ignore
/// let l = Layer::new("lower1")
///     .tagged("a/b")                      // content "layer:lower1 file:a/b\n"
///     .mode(0o600).xattr("user.k", "v")
///     .symlink("ln", "/etc")
///     .whiteout("gone")
///     .opaque("d");
/// ```
#[derive(Clone, Debug)]
pub struct Layer {
    pub name: String,
    pub entries: Vec<Entry>,
}

impl Layer {
    pub fn new(name: &str) -> Layer {
        Layer {
            name: name.to_string(),
            entries: Vec::new(),
        }
    }

    pub fn push(mut self, path: impl AsRef<[u8]>, kind: Kind) -> Layer {
        let path = path.as_ref();
        assert!(
            !path.is_empty() && !path.starts_with(b"/") && !path.ends_with(b"/"),
            "layer {}: bad entry path {:?}",
            self.name,
            show(path)
        );
        self.entries.push(Entry {
            path: path.to_vec(),
            kind,
            mode: None,
            owner: None,
            xattrs: Vec::new(),
            mtime: None,
        });
        self
    }

    pub fn file(self, path: impl AsRef<[u8]>, content: impl AsRef<[u8]>) -> Layer {
        let c = content.as_ref().to_vec();
        self.push(path, Kind::File(c))
    }

    /// A file whose content names this layer and the path ([`tag`]).
    pub fn tagged(self, path: impl AsRef<[u8]>) -> Layer {
        let c = tag(&self.name, path.as_ref());
        self.push(path, Kind::File(c))
    }

    pub fn dir(self, path: impl AsRef<[u8]>) -> Layer {
        self.push(path, Kind::Dir)
    }

    pub fn symlink(self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Layer {
        let t = target.as_ref().to_vec();
        self.push(path, Kind::Symlink(t))
    }

    pub fn fifo(self, path: impl AsRef<[u8]>) -> Layer {
        self.push(path, Kind::Fifo)
    }

    pub fn whiteout(self, path: impl AsRef<[u8]>) -> Layer {
        self.push(path, Kind::Whiteout)
    }

    pub fn opaque(self, dir: impl AsRef<[u8]>) -> Layer {
        self.push(dir, Kind::Opaque)
    }

    /// Hard link `path` to the already listed file `existing`.
    pub fn link(self, path: impl AsRef<[u8]>, existing: impl AsRef<[u8]>) -> Layer {
        let e = existing.as_ref().to_vec();
        self.push(path, Kind::Link(e))
    }

    fn last(&mut self) -> &mut Entry {
        let name = self.name.clone();
        self.entries
            .last_mut()
            .unwrap_or_else(|| panic!("layer {name}: modifier before any entry"))
    }

    pub fn mode(mut self, mode: u32) -> Layer {
        self.last().mode = Some(mode);
        self
    }

    pub fn owner(mut self, uid: u32, gid: u32) -> Layer {
        self.last().owner = Some((uid, gid));
        self
    }

    pub fn xattr(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Layer {
        let kv = (name.as_ref().to_vec(), value.as_ref().to_vec());
        self.last().xattrs.push(kv);
        self
    }

    pub fn mtime(mut self, secs: i64) -> Layer {
        self.last().mtime = Some(secs);
        self
    }
}

/// Whiteout/opaque on-disk formats (docs/design.md §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// whiteout = char device 0/0; opaque = `trusted.overlay.opaque=y`.
    Kernel,
    /// whiteout = empty file `.wh.NAME`; opaque = empty file `.wh..wh..opq`.
    Oci,
    /// whiteout = empty file NAME with `trusted.overlay.whiteout`, its parent
    /// marked `trusted.overlay.opaque=x`; opaque = `trusted.overlay.opaque=y`.
    /// (An opaque dir holds no xattr whiteouts — kernel doc — so a whiteout
    /// inside a dir opaque in the same layer is a char device 0/0.)
    XattrWhiteout,
    /// whiteout = char device 0/0; opaque = `user.overlay.opaque=y`.
    UserXattr,
    /// opaque = `user.fuseoverlayfs.opaque=y`; whiteouts char 0/0 or `.wh.`
    /// (chosen per entry, deterministically).
    FuseOverlayfs,
    /// A per-entry choice among all of the above (and `user.overlay.whiteout`
    /// xattr whiteouts), from the seed.
    Mixed(u64),
}

/// Every format, with a few Mixed seeds.
pub const ALL_FORMATS: [Format; 8] = [
    Format::Kernel,
    Format::Oci,
    Format::XattrWhiteout,
    Format::UserXattr,
    Format::FuseOverlayfs,
    Format::Mixed(1),
    Format::Mixed(2),
    Format::Mixed(3),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WhiteoutStyle {
    CharDev,
    OciFile,
    XattrTrusted,
    XattrUser,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpaqueStyle {
    TrustedY,
    UserY,
    FuseY,
    OciOpq,
}

fn pick(seed: u64, layer: &str, path: &[u8], n: u64) -> u64 {
    mix(seed ^ fnv(path) ^ fnv(layer.as_bytes()).rotate_left(17)) % n
}

/// Renders `layer` into the (new or empty) directory `dir`.
///
/// Order: entries in order (parents implicitly 0755), then modes (explicit,
/// else dirs 0755 and files/fifos 0644, independent of umask), owners,
/// xattrs, and finally mtimes (deepest first).
pub fn render(layer: &Layer, dir: &Path, format: Format) {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let opaque_dirs: BTreeSet<&[u8]> = layer
        .entries
        .iter()
        .filter(|e| e.kind == Kind::Opaque)
        .map(|e| e.path.as_slice())
        .collect();
    let ctx = |e: &Entry| format!("layer {}: entry {}", layer.name, show(&e.path));
    // Dirs we create (explicitly or implicitly), for default modes.
    let mut made_dirs: BTreeSet<Vec<u8>> = BTreeSet::new();
    made_dirs.insert(Vec::new());
    let mut defaults: Vec<(Vec<u8>, u32)> = Vec::new();

    let ensure_dir = |rel: &[u8], made: &mut BTreeSet<Vec<u8>>| {
        let mut cur = Vec::new();
        for comp in rel.split(|&c| c == b'/').filter(|c| !c.is_empty()) {
            cur = join_rel(&cur, comp);
            let p = join(dir, &cur);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => panic!(
                    "layer {}: {} exists and is not a dir",
                    layer.name,
                    show(&cur)
                ),
                Err(_) => {
                    fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
                    made.insert(cur.clone());
                }
            }
        }
    };

    for e in &layer.entries {
        let p = join(dir, &e.path);
        let (parent, name) = split_parent(&e.path);
        ensure_dir(parent, &mut made_dirs);
        match &e.kind {
            Kind::File(content) => {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&p)
                    .unwrap_or_else(|err| panic!("{}: create: {err}", ctx(e)));
                f.write_all(content).expect("write fixture");
                defaults.push((e.path.clone(), 0o644));
            }
            Kind::Dir | Kind::Opaque => {
                ensure_dir(&e.path, &mut made_dirs);
                if e.kind == Kind::Opaque {
                    let style = match format {
                        Format::Kernel | Format::XattrWhiteout => OpaqueStyle::TrustedY,
                        Format::UserXattr => OpaqueStyle::UserY,
                        Format::FuseOverlayfs => OpaqueStyle::FuseY,
                        Format::Oci => OpaqueStyle::OciOpq,
                        Format::Mixed(seed) => [
                            OpaqueStyle::TrustedY,
                            OpaqueStyle::UserY,
                            OpaqueStyle::FuseY,
                            OpaqueStyle::OciOpq,
                        ][pick(seed, &layer.name, &e.path, 4) as usize],
                    };
                    let set = |n: &str| {
                        sys::lsetxattr(&p, n.as_bytes(), b"y")
                            .unwrap_or_else(|err| panic!("{}: setxattr {n}: {err}", ctx(e)))
                    };
                    match style {
                        OpaqueStyle::TrustedY => set("trusted.overlay.opaque"),
                        OpaqueStyle::UserY => set("user.overlay.opaque"),
                        OpaqueStyle::FuseY => set("user.fuseoverlayfs.opaque"),
                        OpaqueStyle::OciOpq => {
                            fs::write(p.join(".wh..wh..opq"), b"").expect("write .wh..wh..opq")
                        }
                    }
                }
            }
            Kind::Symlink(target) => {
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &p)
                    .unwrap_or_else(|err| panic!("{}: symlink: {err}", ctx(e)));
            }
            Kind::Fifo => {
                sys::mknod(&p, libc::S_IFIFO | 0o644, 0)
                    .unwrap_or_else(|err| panic!("{}: mkfifo: {err}", ctx(e)));
                defaults.push((e.path.clone(), 0o644));
            }
            Kind::Link(existing) => {
                fs::hard_link(join(dir, existing), &p)
                    .unwrap_or_else(|err| panic!("{}: link: {err}", ctx(e)));
            }
            Kind::Whiteout => {
                let parent_opaque = opaque_dirs.contains(parent);
                let mut style = match format {
                    Format::Kernel | Format::UserXattr => WhiteoutStyle::CharDev,
                    Format::Oci => WhiteoutStyle::OciFile,
                    Format::XattrWhiteout => WhiteoutStyle::XattrTrusted,
                    Format::FuseOverlayfs => {
                        if fnv(&e.path) % 2 == 0 {
                            WhiteoutStyle::CharDev
                        } else {
                            WhiteoutStyle::OciFile
                        }
                    }
                    Format::Mixed(seed) => [
                        WhiteoutStyle::CharDev,
                        WhiteoutStyle::OciFile,
                        WhiteoutStyle::XattrTrusted,
                        WhiteoutStyle::XattrUser,
                    ][pick(seed, &layer.name, &e.path, 4) as usize],
                };
                if parent_opaque
                    && matches!(
                        style,
                        WhiteoutStyle::XattrTrusted | WhiteoutStyle::XattrUser
                    )
                {
                    style = WhiteoutStyle::CharDev;
                }
                match style {
                    WhiteoutStyle::CharDev => sys::mknod(&p, libc::S_IFCHR, 0)
                        .unwrap_or_else(|err| panic!("{}: mknod c 0 0: {err}", ctx(e))),
                    WhiteoutStyle::OciFile => {
                        let mut wh = b".wh.".to_vec();
                        wh.extend_from_slice(name);
                        let whp = join(dir, join_rel(parent, &wh));
                        fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&whp)
                            .unwrap_or_else(|err| panic!("{}: create .wh.: {err}", ctx(e)));
                    }
                    WhiteoutStyle::XattrTrusted | WhiteoutStyle::XattrUser => {
                        let ns = if style == WhiteoutStyle::XattrTrusted {
                            "trusted"
                        } else {
                            "user"
                        };
                        fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&p)
                            .unwrap_or_else(|err| panic!("{}: create: {err}", ctx(e)));
                        sys::lsetxattr(&p, format!("{ns}.overlay.whiteout").as_bytes(), b"")
                            .unwrap_or_else(|err| panic!("{}: xattr whiteout: {err}", ctx(e)));
                        sys::lsetxattr(
                            &join(dir, parent),
                            format!("{ns}.overlay.opaque").as_bytes(),
                            b"x",
                        )
                        .unwrap_or_else(|err| panic!("{}: parent opaque=x: {err}", ctx(e)));
                        defaults.push((e.path.clone(), 0o644));
                    }
                }
            }
        }
    }

    // Modes: defaults first (umask-independent), then explicit ones.
    for d in &made_dirs {
        fs::set_permissions(join(dir, d), fs::Permissions::from_mode(0o755)).expect("chmod dir");
    }
    for (rel, m) in &defaults {
        fs::set_permissions(join(dir, rel), fs::Permissions::from_mode(*m)).expect("chmod");
    }
    for e in &layer.entries {
        let p = join(dir, &e.path);
        // Owner before mode: chown clears setuid/setgid bits.
        if let Some((u, g)) = e.owner {
            std::os::unix::fs::lchown(&p, Some(u), Some(g))
                .unwrap_or_else(|err| panic!("{}: lchown: {err}", ctx(e)));
        }
        if let Some(m) = e.mode {
            assert!(
                !matches!(e.kind, Kind::Symlink(_)),
                "{}: a symlink has no mode",
                ctx(e)
            );
            fs::set_permissions(&p, fs::Permissions::from_mode(m))
                .unwrap_or_else(|err| panic!("{}: chmod: {err}", ctx(e)));
        }
        for (k, v) in &e.xattrs {
            sys::lsetxattr(&p, k, v).unwrap_or_else(|err| {
                panic!(
                    "{}: setxattr {} (user.* cannot go on a symlink): {err}",
                    ctx(e),
                    show(k)
                )
            });
        }
    }
    let mut timed: Vec<&Entry> = layer.entries.iter().filter(|e| e.mtime.is_some()).collect();
    timed.sort_by_key(|e| std::cmp::Reverse(e.path.iter().filter(|&&c| c == b'/').count()));
    for e in timed {
        let t = e.mtime.expect("filtered");
        sys::utimens_nofollow(&join(dir, &e.path), Some(((t, 0), (t, 0))))
            .unwrap_or_else(|err| panic!("{}: utimensat: {err}", ctx(e)));
    }
}

/// Renders each layer into `base/<layer.name>` and returns those dirs in the
/// same order (top lower first). A `Mixed` seed is varied per layer.
pub fn render_stack(layers: &[Layer], base: &Path, format: Format) -> Vec<PathBuf> {
    layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let d = base.join(&l.name);
            let f = match format {
                Format::Mixed(s) => Format::Mixed(mix(s.wrapping_add(i as u64))),
                f => f,
            };
            render(l, &d, f);
            d
        })
        .collect()
}

/// `&[PathBuf]` -> `Vec<&Path>` for the mount helpers.
pub fn as_paths(v: &[PathBuf]) -> Vec<&Path> {
    v.iter().map(|p| p.as_path()).collect()
}
