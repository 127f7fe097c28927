//! The operations applied to both mounts: generation from the current merged
//! tree, execution through plain system calls, and a shell form for repros.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::Path;

use crate::common::Rng;
use crate::common::{join, sys, FileType};
use crate::model::{join_rel, Data, MAX_DEPTH, NAMES, TARGETS};
use crate::tree::Snap;

/// What an operation returned: a value to compare (bytes written, entries
/// removed; 0 for most), or the errno.
pub type Outcome = Result<u64, i32>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameFlag {
    None,
    NoReplace,
    Exchange,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// open(O_CREAT|O_WRONLY [|O_EXCL] [|O_TRUNC], mode), then pwrite at 0.
    Create {
        path: Vec<u8>,
        mode: u32,
        excl: bool,
        trunc: bool,
        data: Data,
    },
    /// open(O_WRONLY), pwrite at `off`.
    Write {
        path: Vec<u8>,
        off: u64,
        data: Data,
    },
    /// open(O_WRONLY|O_APPEND), write.
    Append {
        path: Vec<u8>,
        data: Data,
    },
    /// open(O_WRONLY|O_TRUNC), write.
    OpenTrunc {
        path: Vec<u8>,
        data: Data,
    },
    /// truncate(2).
    Truncate {
        path: Vec<u8>,
        len: u64,
    },
    Mkdir {
        path: Vec<u8>,
        mode: u32,
    },
    Rmdir {
        path: Vec<u8>,
    },
    Unlink {
        path: Vec<u8>,
    },
    /// `rm -rf`: depth first, names sorted, stops at the first error (a
    /// child already gone is none).
    RmRf {
        path: Vec<u8>,
    },
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
        flag: RenameFlag,
    },
    Link {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Symlink {
        target: Vec<u8>,
        path: Vec<u8>,
    },
    /// fchmodat2(AT_SYMLINK_NOFOLLOW).
    Chmod {
        path: Vec<u8>,
        mode: u32,
    },
    /// lchown(2); `None` leaves the id.
    Chown {
        path: Vec<u8>,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    /// utimensat(AT_SYMLINK_NOFOLLOW): atime and mtime to `time`, or now.
    Utimes {
        path: Vec<u8>,
        time: Option<(i64, i64)>,
    },
    /// lsetxattr(2) with flags 0, XATTR_CREATE or XATTR_REPLACE.
    SetXattr {
        path: Vec<u8>,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: i32,
    },
    RemoveXattr {
        path: Vec<u8>,
        name: Vec<u8>,
    },
    Mkfifo {
        path: Vec<u8>,
        mode: u32,
    },
}

impl Op {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Write { .. } => "write",
            Op::Append { .. } => "append",
            Op::OpenTrunc { .. } => "open-trunc",
            Op::Truncate { .. } => "truncate",
            Op::Mkdir { .. } => "mkdir",
            Op::Rmdir { .. } => "rmdir",
            Op::Unlink { .. } => "unlink",
            Op::RmRf { .. } => "rm-rf",
            Op::Rename {
                flag: RenameFlag::None,
                ..
            } => "rename",
            Op::Rename {
                flag: RenameFlag::NoReplace,
                ..
            } => "rename-noreplace",
            Op::Rename {
                flag: RenameFlag::Exchange,
                ..
            } => "rename-exchange",
            Op::Link { .. } => "link",
            Op::Symlink { .. } => "symlink",
            Op::Chmod { .. } => "chmod",
            Op::Chown { .. } => "chown",
            Op::Utimes { .. } => "utimes",
            Op::SetXattr { .. } => "setxattr",
            Op::RemoveXattr { .. } => "removexattr",
            Op::Mkfifo { .. } => "mkfifo",
        }
    }

    /// The paths the operation names.
    pub fn paths(&self) -> Vec<&[u8]> {
        match self {
            Op::Rename { from, to, .. } | Op::Link { from, to } => vec![from, to],
            Op::Create { path, .. }
            | Op::Write { path, .. }
            | Op::Append { path, .. }
            | Op::OpenTrunc { path, .. }
            | Op::Truncate { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Rmdir { path }
            | Op::Unlink { path }
            | Op::RmRf { path }
            | Op::Symlink { path, .. }
            | Op::Chmod { path, .. }
            | Op::Chown { path, .. }
            | Op::Utimes { path, .. }
            | Op::SetXattr { path, .. }
            | Op::RemoveXattr { path, .. }
            | Op::Mkfifo { path, .. } => vec![path],
        }
    }

    /// Runs the operation in the mount at `root`. Opens use O_NONBLOCK (a
    /// fifo must not block) and may follow symlinks: every symlink target is
    /// relative without `..`, so nothing leaves the mount.
    pub fn exec(&self, root: &Path) -> Outcome {
        let p = |rel: &[u8]| join(root, rel);
        let r: io::Result<u64> = match self {
            Op::Create {
                path,
                mode,
                excl,
                trunc,
                data,
            } => (|| {
                let mut o = fs::OpenOptions::new();
                o.write(true)
                    .truncate(*trunc)
                    .mode(*mode)
                    .custom_flags(libc::O_NONBLOCK);
                if *excl {
                    o.create_new(true);
                } else {
                    o.create(true);
                }
                let f = o.open(p(path))?;
                let d = data.bytes();
                f.write_all_at(&d, 0)?;
                Ok(d.len() as u64)
            })(),
            Op::Write { path, off, data } => (|| {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(p(path))?;
                let d = data.bytes();
                f.write_all_at(&d, *off)?;
                Ok(d.len() as u64)
            })(),
            Op::Append { path, data } => (|| {
                use std::io::Write;
                let mut f = fs::OpenOptions::new()
                    .append(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(p(path))?;
                let d = data.bytes();
                f.write_all(&d)?;
                Ok(d.len() as u64)
            })(),
            Op::OpenTrunc { path, data } => (|| {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(p(path))?;
                let d = data.bytes();
                f.write_all_at(&d, 0)?;
                Ok(d.len() as u64)
            })(),
            Op::Truncate { path, len } => sys::truncate(&p(path), *len as i64).map(|_| 0),
            Op::Mkdir { path, mode } => {
                fs::DirBuilder::new().mode(*mode).create(p(path)).map(|_| 0)
            }
            Op::Rmdir { path } => fs::remove_dir(p(path)).map(|_| 0),
            Op::Unlink { path } => fs::remove_file(p(path)).map(|_| 0),
            Op::RmRf { path } => rm_rf(&p(path)),
            Op::Rename { from, to, flag } => {
                let f = match flag {
                    RenameFlag::None => 0,
                    RenameFlag::NoReplace => libc::RENAME_NOREPLACE,
                    RenameFlag::Exchange => libc::RENAME_EXCHANGE,
                };
                crate::common::sys::renameat2(&p(from), &p(to), f).map(|_| 0)
            }
            Op::Link { from, to } => fs::hard_link(p(from), p(to)).map(|_| 0),
            Op::Symlink { target, path } => {
                std::os::unix::fs::symlink(crate::common::bpath(target), p(path)).map(|_| 0)
            }
            Op::Chmod { path, mode } => xsys::chmod_nofollow(&p(path), *mode).map(|_| 0),
            Op::Chown { path, uid, gid } => {
                std::os::unix::fs::lchown(p(path), *uid, *gid).map(|_| 0)
            }
            Op::Utimes { path, time } => xsys::utimes_nofollow(&p(path), *time).map(|_| 0),
            Op::SetXattr {
                path,
                name,
                value,
                flags,
            } => xsys::lsetxattr(&p(path), name, value, *flags).map(|_| 0),
            Op::RemoveXattr { path, name } => sys::lremovexattr(&p(path), name).map(|_| 0),
            Op::Mkfifo { path, mode } => sys::mknod(&p(path), libc::S_IFIFO | mode, 0).map(|_| 0),
        };
        r.map_err(|e| e.raw_os_error().unwrap_or(-1))
    }

    /// One line for the repro script: a call of the `op` helper it defines.
    pub fn shell(&self) -> String {
        let q = shq;
        let data = |d: &Data| format!("{} {} {}", hex(&d.prefix), hex(&d.chunk), d.len);
        match self {
            Op::Create {
                path,
                mode,
                excl,
                trunc,
                data: d,
            } => {
                let mut fl = String::new();
                if *excl {
                    fl.push('x');
                }
                if *trunc {
                    fl.push('t');
                }
                if fl.is_empty() {
                    fl.push('-');
                }
                format!("op create {} {mode:o} {fl} {}", q(path), data(d))
            }
            Op::Write { path, off, data: d } => {
                format!("op write {} {off} {}", q(path), data(d))
            }
            Op::Append { path, data: d } => format!("op append {} {}", q(path), data(d)),
            Op::OpenTrunc { path, data: d } => format!("op opentrunc {} {}", q(path), data(d)),
            Op::Truncate { path, len } => format!("op truncate {} {len}", q(path)),
            Op::Mkdir { path, mode } => format!("op mkdir {} {mode:o}", q(path)),
            Op::Rmdir { path } => format!("op rmdir {}", q(path)),
            Op::Unlink { path } => format!("op unlink {}", q(path)),
            Op::RmRf { path } => format!("op rmrf {}", q(path)),
            Op::Rename { from, to, flag } => {
                let f = match flag {
                    RenameFlag::None => "0",
                    RenameFlag::NoReplace => "noreplace",
                    RenameFlag::Exchange => "exchange",
                };
                format!("op rename {} {} {f}", q(from), q(to))
            }
            Op::Link { from, to } => format!("op link {} {}", q(from), q(to)),
            Op::Symlink { target, path } => format!("op symlink {} {}", q(target), q(path)),
            Op::Chmod { path, mode } => format!("op chmod {} {mode:o}", q(path)),
            Op::Chown { path, uid, gid } => {
                let id = |v: &Option<u32>| v.map_or("-1".to_string(), |x| x.to_string());
                format!("op chown {} {} {}", q(path), id(uid), id(gid))
            }
            Op::Utimes { path, time } => match time {
                Some((s, ns)) => format!("op utimes {} {s} {ns}", q(path)),
                None => format!("op utimes {} now 0", q(path)),
            },
            Op::SetXattr {
                path,
                name,
                value,
                flags,
            } => {
                let f = match *flags {
                    libc::XATTR_CREATE => "create",
                    libc::XATTR_REPLACE => "replace",
                    _ => "0",
                };
                format!(
                    "op setxattr {} {} {} {f}",
                    q(path),
                    q(name),
                    if value.is_empty() {
                        "-".to_string()
                    } else {
                        hex(value)
                    }
                )
            }
            Op::RemoveXattr { path, name } => {
                format!("op removexattr {} {}", q(path), q(name))
            }
            Op::Mkfifo { path, mode } => format!("op mkfifo {} {mode:o}", q(path)),
        }
    }
}

/// Lowercase hex of `b` (`-` when empty).
pub fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "-".to_string();
    }
    b.iter().map(|c| format!("{c:02x}")).collect()
}

/// A shell word for `b`: as is when plain, else quoted (`$'..'` for bytes
/// that are not printable ASCII). The empty path is `.`.
pub fn shq(b: &[u8]) -> String {
    if b.is_empty() {
        return ".".to_string();
    }
    if b.iter()
        .all(|c| c.is_ascii_alphanumeric() || b"/._-+:@%=,".contains(c))
    {
        return String::from_utf8_lossy(b).into_owned();
    }
    let mut s = String::from("$'");
    for &c in b {
        match c {
            b'\'' => s.push_str("\\'"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s.push('\'');
    s
}

/// `rm -rf`: like rm(1) with -f, a child that is gone by the time it is
/// removed (ENOENT) is no error.
fn rm_rf(p: &Path) -> io::Result<u64> {
    let md = fs::symlink_metadata(p)?;
    if md.is_dir() {
        let mut names: Vec<_> = fs::read_dir(p)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        let mut n = 0;
        for name in names {
            match rm_rf(&p.join(name)) {
                Ok(k) => n += k,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        fs::remove_dir(p)?;
        Ok(n + 1)
    } else {
        fs::remove_file(p)?;
        Ok(1)
    }
}

// ---------------------------------------------------------------------------
// Generation

const FILE_MODES: &[u32] = &[0o644, 0o600, 0o755, 0o444, 0o4755, 0o2755, 0o000, 0o777];
const DIR_MODES: &[u32] = &[0o755, 0o700, 0o775, 0o2775, 0o1777, 0o555];
const XATTR_NAMES: &[&str] = &["user.a", "user.b", "user.c"];

struct View<'a> {
    all: Vec<&'a [u8]>,
    dirs: Vec<&'a [u8]>,
    files: Vec<&'a [u8]>,
    nondirs: Vec<&'a [u8]>,
}

fn depth(p: &[u8]) -> usize {
    if p.is_empty() {
        0
    } else {
        p.iter().filter(|&&c| c == b'/').count() + 1
    }
}

impl<'a> View<'a> {
    fn new(snap: &'a Snap) -> View<'a> {
        let mut v = View {
            all: Vec::new(),
            dirs: Vec::new(),
            files: Vec::new(),
            nondirs: Vec::new(),
        };
        for (p, e) in snap {
            let p = p.as_slice();
            match e.ftype {
                Some(FileType::Dir) => v.dirs.push(p),
                Some(FileType::File) => {
                    v.files.push(p);
                    v.nondirs.push(p);
                }
                _ => v.nondirs.push(p),
            }
            if !p.is_empty() {
                v.all.push(p);
            }
        }
        v
    }

    /// A name in a random dir (often one that exists, whited out or not).
    fn fresh(&self, rng: &mut Rng) -> Vec<u8> {
        let dirs: Vec<&[u8]> = self
            .dirs
            .iter()
            .copied()
            .filter(|d| depth(d) < MAX_DEPTH)
            .collect();
        let d: &[u8] = match dirs.is_empty() {
            true => b"",
            false => dirs[rng.below(dirs.len() as u64) as usize],
        };
        join_rel(d, rng.pick(NAMES).as_bytes())
    }

    /// From `set` with `percent`% (when it has anything), else any existing
    /// path, else a fresh one.
    fn from(&self, rng: &mut Rng, set: &[&[u8]], percent: u64) -> Vec<u8> {
        let set: Vec<&[u8]> = set.iter().copied().filter(|p| !p.is_empty()).collect();
        if !set.is_empty() && rng.percent(percent) {
            return rng.pick(&set).to_vec();
        }
        if !self.all.is_empty() && rng.percent(85) {
            return rng.pick(&self.all).to_vec();
        }
        self.fresh(rng)
    }

    fn fresh_or_any(&self, rng: &mut Rng, fresh_percent: u64) -> Vec<u8> {
        if self.all.is_empty() || rng.percent(fresh_percent) {
            self.fresh(rng)
        } else {
            rng.pick(&self.all).to_vec()
        }
    }

    /// Any existing path, the root now and then.
    fn target(&self, rng: &mut Rng) -> Vec<u8> {
        if rng.percent(4) {
            Vec::new()
        } else {
            self.from(rng, &self.all, 90)
        }
    }
}

fn wdata(rng: &mut Rng) -> Data {
    Data::random(rng, Vec::new())
}

/// A random operation on paths of the merged tree `snap` (plus fresh names),
/// of a kind not in `skip`.
pub fn generate(rng: &mut Rng, snap: &Snap, skip: &[String]) -> Op {
    loop {
        let op = generate_any(rng, snap);
        if !skip.iter().any(|k| k == op.kind()) {
            return op;
        }
    }
}

fn generate_any(rng: &mut Rng, snap: &Snap) -> Op {
    let v = View::new(snap);
    let weights = [10, 10, 5, 3, 5, 8, 5, 7, 3, 15, 5, 4, 5, 4, 4, 5, 3, 2];
    match rng.weighted(&weights) {
        0 => Op::Create {
            path: v.fresh_or_any(rng, 70),
            mode: *rng.pick(FILE_MODES),
            excl: rng.percent(30),
            trunc: rng.percent(30),
            data: wdata(rng),
        },
        1 => {
            let path = v.from(rng, &v.files, 80);
            let size = snap.get(&path).map_or(0, |e| e.size);
            let off = match rng.below(4) {
                0 => 0,
                1 => size,
                2 => rng.range(0, size + 200),
                _ => rng.range(0, size.max(1) * 2 + 70_000),
            };
            Op::Write {
                path,
                off,
                data: wdata(rng),
            }
        }
        2 => Op::Append {
            path: v.from(rng, &v.files, 80),
            data: wdata(rng),
        },
        3 => Op::OpenTrunc {
            path: v.from(rng, &v.files, 80),
            data: if rng.percent(50) {
                Data {
                    prefix: Vec::new(),
                    chunk: Vec::new(),
                    len: 0,
                }
            } else {
                wdata(rng)
            },
        },
        4 => {
            let path = v.from(rng, &v.files, 80);
            let size = snap.get(&path).map_or(0, |e| e.size);
            let len = match rng.below(4) {
                0 => 0,
                1 => rng.range(0, size),
                2 => size + rng.range(1, 100),
                _ => rng.range(0, 100_000),
            };
            Op::Truncate { path, len }
        }
        5 => Op::Mkdir {
            path: v.fresh_or_any(rng, 75),
            mode: *rng.pick(DIR_MODES),
        },
        6 => Op::Rmdir {
            path: v.from(rng, &v.dirs, 85),
        },
        7 => Op::Unlink {
            path: v.from(rng, &v.nondirs, 80),
        },
        8 => Op::RmRf {
            path: v.from(rng, &v.dirs, 70),
        },
        9 => {
            let from = v.from(rng, &v.all, 95);
            let from_dir = snap
                .get(&from)
                .is_some_and(|e| e.ftype == Some(FileType::Dir));
            let same_type: Vec<&[u8]> = if from_dir {
                v.dirs.clone()
            } else {
                v.nondirs.clone()
            };
            let to = match rng.weighted(&[35, 30, 20, 10]) {
                0 => v.fresh(rng),
                1 => v.from(rng, &v.all, 95),
                2 => v.from(rng, &same_type, 95),
                _ => {
                    // Into itself (EINVAL) or a sibling name.
                    let (parent, _) = crate::common::split_parent(&from);
                    if from_dir && rng.percent(50) {
                        join_rel(&from, rng.pick(NAMES).as_bytes())
                    } else {
                        join_rel(parent, rng.pick(NAMES).as_bytes())
                    }
                }
            };
            let flag = match rng.weighted(&[60, 20, 20]) {
                0 => RenameFlag::None,
                1 => RenameFlag::NoReplace,
                _ => RenameFlag::Exchange,
            };
            Op::Rename { from, to, flag }
        }
        10 => Op::Link {
            from: v.from(rng, &v.nondirs, 85),
            to: v.fresh_or_any(rng, 80),
        },
        11 => Op::Symlink {
            target: rng.pick(TARGETS).as_bytes().to_vec(),
            path: v.fresh_or_any(rng, 80),
        },
        12 => Op::Chmod {
            path: v.target(rng),
            mode: if rng.percent(50) {
                *rng.pick(FILE_MODES)
            } else {
                *rng.pick(DIR_MODES)
            },
        },
        13 => {
            let ids = [0, 1000, 1001, 65534];
            let uid = rng.percent(80).then(|| *rng.pick(&ids));
            let gid = rng.percent(80).then(|| *rng.pick(&ids));
            Op::Chown {
                path: v.target(rng),
                uid,
                gid,
            }
        }
        14 => Op::Utimes {
            path: v.target(rng),
            time: if rng.percent(75) {
                Some((
                    rng.range(1_000_000_000, 1_500_000_000) as i64,
                    rng.below(1_000_000_000) as i64,
                ))
            } else {
                None
            },
        },
        15 => {
            let n = rng.range(0, 20) as usize;
            let n = if rng.percent(5) { 3000 } else { n };
            Op::SetXattr {
                path: v.target(rng),
                name: rng.pick(XATTR_NAMES).as_bytes().to_vec(),
                value: rng.bytes(n),
                flags: *rng.pick(&[0, 0, libc::XATTR_CREATE, libc::XATTR_REPLACE]),
            }
        }
        16 => {
            // Mostly an attribute that is there (on a lower or an upper object).
            let with: Vec<(&Vec<u8>, &Vec<u8>)> = snap
                .iter()
                .flat_map(|(p, e)| e.xattrs.keys().map(move |k| (p, k)))
                .collect();
            if !with.is_empty() && rng.percent(75) {
                let (p, k) = *rng.pick(&with);
                Op::RemoveXattr {
                    path: p.clone(),
                    name: k.clone(),
                }
            } else {
                Op::RemoveXattr {
                    path: v.target(rng),
                    name: rng.pick(XATTR_NAMES).as_bytes().to_vec(),
                }
            }
        }
        _ => Op::Mkfifo {
            path: v.fresh_or_any(rng, 80),
            mode: *rng.pick(&[0o644, 0o600, 0o640]),
        },
    }
}

/// Printable list of operations, numbered.
pub fn describe(ops: &[Op]) -> String {
    ops.iter()
        .enumerate()
        .map(|(i, o)| format!("  {:>3}. {}", i + 1, o.shell()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The few libc calls std and `common::sys` lack.
mod xsys {
    use std::ffi::CString;
    use std::io;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    fn cpath(p: &Path) -> io::Result<CString> {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }

    fn check(r: libc::c_int) -> io::Result<()> {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// chmod that never follows a final symlink: fchmodat2(2) with
    /// AT_SYMLINK_NOFOLLOW (EOPNOTSUPP on a symlink). Not glibc's fchmodat:
    /// its emulation goes through /proc and turns ENOENT into EOPNOTSUPP.
    pub fn chmod_nofollow(p: &Path, mode: u32) -> io::Result<()> {
        let c = cpath(p)?;
        // SAFETY: a valid NUL-terminated string; fchmodat2 takes (dirfd,
        // path, mode, flags).
        let r = unsafe {
            libc::syscall(
                libc::SYS_fchmodat2,
                libc::AT_FDCWD,
                c.as_ptr(),
                mode as libc::c_uint,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        check(if r < 0 { -1 } else { 0 })
    }

    /// atime and mtime both to `t`, or both to now.
    pub fn utimes_nofollow(p: &Path, t: Option<(i64, i64)>) -> io::Result<()> {
        let c = cpath(p)?;
        let ts = match t {
            Some((s, ns)) => libc::timespec {
                tv_sec: s as libc::time_t,
                tv_nsec: ns as _,
            },
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
        };
        let arr = [ts, ts];
        // SAFETY: a valid string and a 2-element timespec array.
        check(unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                arr.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
    }

    pub fn lsetxattr(p: &Path, name: &[u8], value: &[u8], flags: i32) -> io::Result<()> {
        let c = cpath(p)?;
        let n = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: valid strings; value valid for value.len() bytes.
        check(unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        })
    }
}
