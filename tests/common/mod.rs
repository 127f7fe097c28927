//! Shared harness for the integration tests (real mounts through the binary).
//!
//! What lives here, in reading order:
//!
//! * [`TestDir`]: a private temp dir per test, cleaned (and unmounted) on Drop.
//! * [`require_mount_env`] / [`require_kernel_overlay`]: skip loudly, or fail
//!   under `CI=true`, when the machine cannot run the test.
//! * Running commands ([`run`], [`unionfs`]) with a timeout and stdout/stderr
//!   captured through files (a daemon that keeps the pipes open cannot hang us).
//! * Mount guards: [`mount_unionfs`], [`mount_kernel_overlay`], [`mount_tmpfs`].
//!   A guard unmounts on Drop and checks nothing is left mounted; a watchdog
//!   aborts a FUSE connection whose daemon hangs, so a test fails instead of
//!   blocking forever.
//! * The layer DSL ([`Layer`]) and [`render`] in every whiteout/opaque
//!   [`Format`] of docs/design.md §2, plus [`merged_view`], a small reference model of
//!   the lowers-only merge (an oracle independent of the daemon).
//! * [`snapshot`] / [`Tree::diff`] and [`checksum_layers`].
//! * [`sys`]: the only `unsafe` in the tests (xattrs, mknod, telldir/seekdir,
//!   truncate, utimensat, statvfs, access), wrapped in safe functions that
//!   return `io::Result`, so the test files themselves need no `unsafe`.
//!
//! Every test file includes this module (`mod common;`) and uses only part of
//! it, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::ops::BitOr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Small byte/path helpers
// ---------------------------------------------------------------------------

/// A path from raw bytes (names are bytes, never lossy UTF-8).
pub fn bpath(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// `base/rel` where `rel` is raw bytes; an empty `rel` is `base` itself.
pub fn join(base: &Path, rel: impl AsRef<[u8]>) -> PathBuf {
    let rel = rel.as_ref();
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(bpath(rel))
    }
}

/// Printable form of a byte name: ASCII as is, other bytes as `\xNN`.
pub fn show(bytes: impl AsRef<[u8]>) -> String {
    let b = bytes.as_ref();
    if b.is_empty() {
        ".".to_string()
    } else {
        b.escape_ascii().to_string()
    }
}

/// The bytes of a path.
pub fn pbytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

/// 64-bit FNV-1a: deterministic across runs and machines.
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The content of a fixture file: it names the layer it sits in, so a read
/// through the mount shows which layer served it.
pub fn tag(layer: &str, path: impl AsRef<[u8]>) -> Vec<u8> {
    let mut v = format!("layer:{layer} file:").into_bytes();
    v.extend_from_slice(path.as_ref());
    v.push(b'\n');
    v
}

/// Parent and final name of a relative byte path (`"a/b/c"` -> `("a/b", "c")`).
pub fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&c| c == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[][..], path),
    }
}

fn join_rel(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = dir.to_vec();
    if !v.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

// ---------------------------------------------------------------------------
// Errno helpers
// ---------------------------------------------------------------------------

/// The errno of a failed result, `None` on success.
pub fn errno_of<T>(r: &io::Result<T>) -> Option<i32> {
    match r {
        Ok(_) => None,
        Err(e) => Some(e.raw_os_error().unwrap_or(-1)),
    }
}

/// `EROFS (30)`-style name for messages.
pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        _ => "errno",
    };
    format!("{name} ({e})")
}

/// `Ok(())` when `r` failed with exactly `want`, else a readable complaint.
pub fn expect_errno<T: fmt::Debug>(r: io::Result<T>, want: i32) -> Result<(), String> {
    match r {
        Ok(v) => Err(format!("succeeded ({v:?}), expected {}", errno_name(want))),
        Err(e) => match e.raw_os_error() {
            Some(got) if got == want => Ok(()),
            Some(got) => Err(format!(
                "failed with {}, expected {}",
                errno_name(got),
                errno_name(want)
            )),
            None => Err(format!("failed with {e}, expected {}", errno_name(want))),
        },
    }
}

/// Panics with every message in `failures`, one per line, if there is any.
pub fn assert_no_failures(what: &str, failures: &[String]) {
    if !failures.is_empty() {
        panic!(
            "{what}: {} failure(s):\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
}

// ---------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------

/// True when `CI` is `true` (or `1`): missing capabilities fail instead of skip.
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// Effective uid of this process (from /proc, no unsafe).
pub fn euid() -> u32 {
    proc_status_ids("Uid:").1
}

/// Effective gid of this process.
pub fn egid() -> u32 {
    proc_status_ids("Gid:").1
}

fn proc_status_ids(key: &str) -> (u32, u32) {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/self/status"));
    let ids: Vec<u32> = line[key.len()..]
        .split_whitespace()
        .map(|s| s.parse().expect("numeric id"))
        .collect();
    (ids[0], ids[1])
}

fn test_name() -> String {
    thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string()
}

pub fn skip_or_fail(what: &str) -> bool {
    let msg = format!(
        "\n\
         ************************************************************\n\
         * TEST NOT RUN: {}\n\
         * reason: {what}\n\
         * (run as root with /dev/fuse; under CI=true this is a failure)\n\
         ************************************************************\n",
        test_name()
    );
    eprintln!("{msg}");
    if in_ci() {
        panic!("CI=true and the test environment is incomplete: {what}");
    }
    false
}

/// True when mount tests can run here (root and /dev/fuse). Otherwise prints a
/// loud message and returns false (the test should return early), or panics
/// under `CI=true`.
pub fn require_mount_env() -> bool {
    let mut missing = Vec::new();
    if euid() != 0 {
        missing.push("not running as root".to_string());
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse does not exist".to_string());
    }
    if missing.is_empty() {
        true
    } else {
        skip_or_fail(&missing.join(", "))
    }
}

/// Like [`require_mount_env`], plus kernel overlayfs support (for the
/// differential tests that compare with `mount -t overlay`).
pub fn require_kernel_overlay() -> bool {
    if !require_mount_env() {
        return false;
    }
    let fss = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if fss
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        true
    } else {
        skip_or_fail("kernel overlayfs not available (no `overlay` in /proc/filesystems)")
    }
}

// ---------------------------------------------------------------------------
// TestDir
// ---------------------------------------------------------------------------

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique temp dir `/tmp/unionfs-test-<pid>-<n>-<name>`. On Drop, anything
/// still mounted inside it is lazily unmounted (only paths inside it), then
/// it is removed.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = PathBuf::from(format!(
            "/tmp/unionfs-test-{}-{}-{}",
            std::process::id(),
            n,
            safe
        ));
        if path.exists() {
            // A leftover of an earlier run with the same pid.
            cleanup_dir(&path);
        }
        fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod testdir");
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self/rel` (no file system access).
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Creates `self/rel` (and parents) as a directory with mode 0755.
    pub fn mkdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.path.join(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    /// Writes `self/rel` with `content` (parents created).
    pub fn write(&self, rel: impl AsRef<Path>, content: &[u8]) -> PathBuf {
        let p = self.path.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("mkdir parent");
        }
        fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        cleanup_dir(&self.path);
    }
}

fn cleanup_dir(path: &Path) {
    for _ in 0..5 {
        let mut left = mounts_under(path);
        if left.is_empty() {
            break;
        }
        // Deepest first.
        left.sort_by_key(|m| std::cmp::Reverse(pbytes(&m.mount_point).len()));
        for m in &left {
            eprintln!(
                "unionfs tests: {} ({}) still mounted at cleanup; lazy-unmounting",
                m.mount_point.display(),
                m.fstype
            );
            lazy_umount(&m.mount_point);
        }
    }
    if !mounts_under(path).is_empty() {
        eprintln!(
            "unionfs tests: WARNING: mounts remain under {}, not removing it",
            path.display()
        );
        return;
    }
    if let Err(e) = fs::remove_dir_all(path) {
        eprintln!("unionfs tests: WARNING: remove {}: {e}", path.display());
    }
}

/// `umount -l PATH` (MNT_DETACH). Only ever call it on paths inside a TestDir.
pub fn lazy_umount(path: &Path) {
    let out = run(
        Command::new("umount").arg("-l").arg(path),
        Duration::from_secs(20),
    );
    if !out.success() {
        eprintln!("unionfs tests: umount -l failed: {out}");
    }
}

// ---------------------------------------------------------------------------
// /proc/self/mountinfo
// ---------------------------------------------------------------------------

/// One line of /proc/self/mountinfo.
#[derive(Clone, Debug)]
pub struct MountInfo {
    pub mount_id: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub mount_point: PathBuf,
    pub mount_opts: String,
    pub fstype: String,
    pub source: String,
    pub super_opts: String,
}

fn unescape_mountinfo(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 3 < s.len()
            && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (s[i + 1] - b'0') * 64 + (s[i + 2] - b'0') * 8 + (s[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// All mounts of this mount namespace.
pub fn mountinfo() -> Vec<MountInfo> {
    let raw = fs::read("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let mut v = Vec::new();
    for line in raw.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
        let f: Vec<&[u8]> = line.split(|&c| c == b' ').collect();
        let sep = f
            .iter()
            .position(|x| *x == b"-")
            .expect("mountinfo separator");
        let s = |b: &[u8]| String::from_utf8_lossy(&unescape_mountinfo(b)).into_owned();
        let dev = s(f[2]);
        let (maj, min) = dev.split_once(':').expect("maj:min");
        v.push(MountInfo {
            mount_id: s(f[0]).parse().unwrap_or(0),
            dev_major: maj.parse().unwrap_or(0),
            dev_minor: min.parse().unwrap_or(0),
            mount_point: PathBuf::from(OsString::from_vec(unescape_mountinfo(f[4]))),
            mount_opts: s(f[5]),
            fstype: s(f[sep + 1]),
            source: f.get(sep + 2).map(|b| s(b)).unwrap_or_default(),
            super_opts: f.get(sep + 3).map(|b| s(b)).unwrap_or_default(),
        });
    }
    v
}

/// Mounts at `dir` or below it.
pub fn mounts_under(dir: &Path) -> Vec<MountInfo> {
    mountinfo()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect()
}

/// The topmost mount exactly at `path`, if any.
pub fn mount_at(path: &Path) -> Option<MountInfo> {
    mountinfo()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path)
}

pub fn is_mounted(path: &Path) -> bool {
    mount_at(path).is_some()
}

// ---------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------

/// What a finished (or killed) command produced.
pub struct CmdOutput {
    pub command: String,
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }

    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// Non-empty stderr lines.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` ", self.command)?;
        if self.timed_out {
            write!(f, "TIMED OUT (killed)")?;
        } else {
            match self.status {
                Some(s) => write!(f, "exited with {s}")?,
                None => write!(f, "did not run")?,
            }
        }
        write!(
            f,
            "\n--- stdout ---\n{}--- stderr ---\n{}--------------",
            self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` with stdin from /dev/null and stdout/stderr captured through
/// files (not pipes: a daemon child that keeps them open must not block us),
/// killing it after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let base = format!("/tmp/unionfs-test-{}-{}-cmd", std::process::id(), n);
    let out_path = PathBuf::from(format!("{base}.out"));
    let err_path = PathBuf::from(format!("{base}.err"));
    let describe = {
        let mut s = cmd.get_program().to_string_lossy().into_owned();
        for a in cmd.get_args() {
            s.push(' ');
            let a = a.to_string_lossy();
            if a.len() > 300 {
                s.push_str(&a[..a.char_indices().nth(300).map_or(a.len(), |(i, _)| i)]);
                s.push_str("...");
            } else {
                s.push_str(&a);
            }
        }
        s
    };
    let out_f = fs::File::create(&out_path).expect("create stdout file");
    let err_f = fs::File::create(&err_path).expect("create stderr file");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out_f))
        .stderr(Stdio::from(err_f));
    let mut result = CmdOutput {
        command: describe,
        status: None,
        stdout: String::new(),
        stderr: String::new(),
        timed_out: false,
    };
    match cmd.spawn() {
        Err(e) => {
            result.stderr = format!("<spawn failed: {e}>");
        }
        Ok(mut child) => {
            let start = Instant::now();
            loop {
                match child.try_wait() {
                    Ok(Some(st)) => {
                        result.status = Some(st);
                        break;
                    }
                    Ok(None) if start.elapsed() > timeout => {
                        // Our own child, by its pid.
                        let _ = child.kill();
                        result.status = child.wait().ok();
                        result.timed_out = true;
                        break;
                    }
                    Ok(None) => thread::sleep(Duration::from_millis(5)),
                    Err(e) => {
                        result.stderr = format!("<wait failed: {e}>");
                        break;
                    }
                }
            }
        }
    }
    let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    result.stdout = read(&out_path);
    result.stderr.push_str(&read(&err_path));
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    result
}

/// A 0666 node of /dev/fuse at `dir/fuse`, for [`as_user_through_fusermount`]
/// to lend over /dev/fuse (which may be root-only).
pub fn fuse_node(dir: &Path) -> PathBuf {
    let fuse = dir.join("fuse");
    sys::mknod(&fuse, libc::S_IFCHR | 0o666, sys::makedev(10, 229)).expect("mknod fuse");
    fs::set_permissions(&fuse, fs::Permissions::from_mode(0o666)).unwrap();
    fuse
}

/// `chown -Rh uid:uid p`.
pub fn chown_tree(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
    if fs::symlink_metadata(p).unwrap().is_dir() {
        for e in fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path(), uid);
        }
    }
}

/// Path of the binary under test.
pub fn unionfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_unionfs")
}

/// Runs `user_script` with `sh -c` as `uid`, in a private mount namespace
/// of its own where root lends `fuse` (a 0666 node of /dev/fuse) over
/// /dev/fuse, so the user mounts through the setuid fusermount3; whatever
/// stays mounted at `mnt` is detached after. 60 s timeout.
pub fn as_user_through_fusermount(
    fuse: &Path,
    mnt: &Path,
    uid: u32,
    user_script: &str,
) -> CmdOutput {
    let outer = format!(
        "mount --bind {fuse} /dev/fuse || exit 97; \
         setpriv --reuid={uid} --regid={uid} --clear-groups -- sh -c '{inner}'; rc=$?; \
         umount -l {m} 2>/dev/null; exit $rc",
        fuse = fuse.display(),
        inner = user_script.replace('\'', "'\\''"),
        m = mnt.display(),
    );
    run(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(outer),
        Duration::from_secs(60),
    )
}

/// Runs the binary under test with `args` (RUST_LOG removed so stderr holds
/// only what a user would see), 30 s timeout.
pub fn unionfs<I, S>(args: I) -> CmdOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    unionfs_env(args, &[])
}

/// [`unionfs`] with `env` added to its environment (a mount's daemon
/// keeps it).
pub fn unionfs_env<I, S>(args: I, env: &[(&str, &str)]) -> CmdOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(unionfs_bin());
    cmd.args(args).env_remove("RUST_LOG");
    cmd.envs(env.iter().copied());
    run(&mut cmd, Duration::from_secs(30))
}

/// Lower paths joined with `:`, a `:` inside a path written `\:` (docs/design.md §1).
pub fn lowers_arg(lowers: &[&Path]) -> OsString {
    let mut v = Vec::new();
    for (i, l) in lowers.iter().enumerate() {
        if i > 0 {
            v.push(b':');
        }
        for &c in pbytes(l) {
            if c == b':' {
                v.push(b'\\');
            }
            v.push(c);
        }
    }
    OsString::from_vec(v)
}

// ---------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------

/// The three invocation forms of docs/design.md §1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `unionfs mount -l L1:L2 [-u U] [-w W] [extra] MNT`
    Mount,
    /// `unionfs -o lowerdir=L1:L2[,upperdir=U,workdir=W] [extra] MNT`
    DashO,
    /// `unionfs unionfs MNT -o lowerdir=...` (mount.fuse style)
    Source,
}

pub const ALL_FORMS: [Form; 3] = [Form::Mount, Form::DashO, Form::Source];

fn o_data(lowers: &[&Path], upper: Option<&Path>, work: Option<&Path>) -> OsString {
    let mut d = OsString::from("lowerdir=");
    d.push(lowers_arg(lowers));
    if let Some(u) = upper {
        d.push(",upperdir=");
        d.push(u);
    }
    if let Some(w) = work {
        d.push(",workdir=");
        d.push(w);
    }
    d
}

/// The argument list for mounting in the given form.
pub fn mount_args(
    form: Form,
    lowers: &[&Path],
    upper: Option<&Path>,
    work: Option<&Path>,
    mnt: &Path,
    extra: &[&str],
) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    match form {
        Form::Mount => {
            a.push("mount".into());
            a.push("-l".into());
            a.push(lowers_arg(lowers));
            if let Some(u) = upper {
                a.push("-u".into());
                a.push(u.into());
            }
            if let Some(w) = work {
                a.push("-w".into());
                a.push(w.into());
            }
            a.extend(extra.iter().map(OsString::from));
            a.push(mnt.into());
        }
        Form::DashO => {
            a.push("-o".into());
            a.push(o_data(lowers, upper, work));
            a.extend(extra.iter().map(OsString::from));
            a.push(mnt.into());
        }
        Form::Source => {
            a.push("unionfs".into());
            a.push(mnt.into());
            a.push("-o".into());
            a.push(o_data(lowers, upper, work));
            a.extend(extra.iter().map(OsString::from));
        }
    }
    a
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountKind {
    Unionfs,
    KernelOverlay,
    Tmpfs,
}

/// A live mount; unmounts on Drop and checks that nothing is left mounted.
pub struct Mount {
    mnt: PathBuf,
    kind: MountKind,
    info: MountInfo,
    watchdog: Option<Watchdog>,
    done: bool,
}

impl Mount {
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// `mnt/rel` with `rel` as raw bytes.
    pub fn join(&self, rel: impl AsRef<[u8]>) -> PathBuf {
        join(&self.mnt, rel)
    }

    pub fn info(&self) -> &MountInfo {
        &self.info
    }

    pub fn kind(&self) -> MountKind {
        self.kind
    }

    /// Unmounts now, panicking if that fails or leaves anything mounted.
    pub fn umount(mut self) {
        self.done = true;
        if let Err(e) = self.do_umount() {
            panic!("{e}");
        }
    }

    fn do_umount(&mut self) -> Result<(), String> {
        if let Some(w) = self.watchdog.take() {
            let aborted = w.aborted.clone();
            drop(w);
            if aborted.load(Ordering::SeqCst) {
                return Err(format!(
                    "the watchdog aborted {} (daemon hung or test too slow)",
                    self.mnt.display()
                ));
            }
        }
        let mut problems = Vec::new();
        match self.kind {
            MountKind::Unionfs => {
                // Parallel tests fork children (setpriv, lock tests) that
                // hold every fd of this process until they exec or exit, so
                // a mount can be busy for a moment: retry briefly. A test
                // that really leaks an open file still fails.
                let mut out = unionfs([OsStr::new("umount"), self.mnt.as_os_str()]);
                for _ in 0..30 {
                    if out.success() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(100));
                    out = unionfs([OsStr::new("umount"), self.mnt.as_os_str()]);
                }
                if !out.success() {
                    problems.push(format!(
                        "`unionfs umount` failed (EBUSY? a test still holds a file or dir \
                         open in the mount): {out}"
                    ));
                    lazy_umount(&self.mnt);
                }
            }
            MountKind::KernelOverlay | MountKind::Tmpfs => {
                // Parallel tests fork children that hold every fd of this
                // process until they exec (as for unionfs mounts above), so
                // the mount can be busy for a moment: retry briefly.
                let mut out = run(
                    Command::new("umount").arg(&self.mnt),
                    Duration::from_secs(20),
                );
                for _ in 0..20 {
                    if out.success() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(100));
                    out = run(
                        Command::new("umount").arg(&self.mnt),
                        Duration::from_secs(20),
                    );
                }
                if !out.success() {
                    problems.push(format!("umount failed: {out}"));
                    lazy_umount(&self.mnt);
                }
            }
        }
        // The mount we made must be gone. Mount ids are recycled as soon as
        // a mount goes away (parallel tests mount all the time), so match
        // the id *and* the mount point; something mounted there before us
        // may legitimately remain.
        if mountinfo()
            .iter()
            .any(|m| m.mount_id == self.info.mount_id && m.mount_point == self.mnt)
        {
            problems.push(format!(
                "{} is still mounted after unmount",
                self.mnt.display()
            ));
            lazy_umount(&self.mnt);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Err(e) = self.do_umount() {
            if thread::panicking() {
                eprintln!("unionfs tests: while unwinding: {e}");
            } else {
                panic!("{e}");
            }
        }
    }
}

/// Seconds a FUSE mount may live before the watchdog aborts its connection
/// (a hung daemon then fails the test instead of blocking it forever).
/// `UNIONFS_TEST_DEADLINE_SECS` overrides the default of 120.
fn deadline() -> Duration {
    let secs = std::env::var("UNIONFS_TEST_DEADLINE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    handle: Option<thread::JoinHandle<()>>,
    aborted: Arc<AtomicBool>,
}

impl Watchdog {
    fn start(mnt: PathBuf, minor: u32, timeout: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let aborted = Arc::new(AtomicBool::new(false));
        let flag = aborted.clone();
        let handle = thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
                flag.store(true, Ordering::SeqCst);
                abort_fuse_connection(&mnt, minor, timeout);
            }
        });
        Watchdog {
            stop: Some(tx),
            handle: Some(handle),
            aborted,
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Writes to `<fusectl>/<minor>/abort`, mounting fusectl next to the mount
/// point (inside the TestDir) if the system has not mounted it.
fn abort_fuse_connection(mnt: &Path, minor: u32, after: Duration) {
    eprintln!(
        "\n!!!!! unionfs tests: mount {} still alive after {:?}: the daemon seems hung; \
         aborting its FUSE connection {minor} (requests now fail with ENOTCONN) !!!!!\n",
        mnt.display(),
        after
    );
    let sys = PathBuf::from(format!("/sys/fs/fuse/connections/{minor}/abort"));
    if fs::write(&sys, b"1").is_ok() {
        lazy_umount(mnt);
        return;
    }
    let Some(parent) = mnt.parent() else { return };
    let ctl = parent.join(format!(
        ".fusectl-{}",
        mnt.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let _ = fs::create_dir_all(&ctl);
    let out = run(
        Command::new("mount")
            .args(["-t", "fusectl", "fusectl"])
            .arg(&ctl),
        Duration::from_secs(10),
    );
    if out.success() {
        if let Err(e) = fs::write(ctl.join(format!("{minor}/abort")), b"1") {
            eprintln!("unionfs tests: abort connection {minor}: {e}");
        }
        let _ = run(Command::new("umount").arg(&ctl), Duration::from_secs(10));
    } else {
        eprintln!("unionfs tests: cannot mount fusectl: {out}");
    }
    lazy_umount(mnt);
}

/// Mounts unionfs with `unionfs mount -l ... MNT` and returns the guard;
/// panics with the command's output when it does not end up mounted.
pub fn mount_unionfs(
    lowers: &[&Path],
    upper: Option<&Path>,
    work: Option<&Path>,
    mnt: &Path,
    extra_args: &[&str],
) -> Mount {
    mount_unionfs_form(Form::Mount, lowers, upper, work, mnt, extra_args)
}

/// [`mount_unionfs`] in a given invocation form.
pub fn mount_unionfs_form(
    form: Form,
    lowers: &[&Path],
    upper: Option<&Path>,
    work: Option<&Path>,
    mnt: &Path,
    extra_args: &[&str],
) -> Mount {
    let args = mount_args(form, lowers, upper, work, mnt, extra_args);
    match try_mount_unionfs_args(&args, mnt) {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    }
}

/// Runs the binary with `args` (expected to mount at `mnt`); Ok(guard) when
/// it exited 0 and the mount is live, Err(explanation) otherwise.
pub fn try_mount_unionfs_args(args: &[OsString], mnt: &Path) -> Result<Mount, String> {
    try_mount_unionfs_args_env(args, mnt, &[])
}

/// [`try_mount_unionfs_args`] with `env` in the daemon's environment.
pub fn try_mount_unionfs_args_env(
    args: &[OsString],
    mnt: &Path,
    env: &[(&str, &str)],
) -> Result<Mount, String> {
    // Ids of what is already mounted at `mnt` (ids are recycled, so only
    // compare them for this mount point).
    let before: BTreeSet<u32> = mountinfo()
        .iter()
        .filter(|m| m.mount_point == mnt)
        .map(|m| m.mount_id)
        .collect();
    let out = unionfs_env(args, env);
    let new = mount_at(mnt).filter(|m| !before.contains(&m.mount_id));
    match (out.success(), new) {
        (true, Some(info)) => {
            if !info.fstype.starts_with("fuse") {
                let e = format!(
                    "mounted at {} but fstype is {:?}, not fuse.*",
                    mnt.display(),
                    info.fstype
                );
                lazy_umount(mnt);
                return Err(e);
            }
            let watchdog = Some(Watchdog::start(
                mnt.to_path_buf(),
                info.dev_minor,
                deadline(),
            ));
            Ok(Mount {
                mnt: mnt.to_path_buf(),
                kind: MountKind::Unionfs,
                info,
                watchdog,
                done: false,
            })
        }
        (true, None) => Err(format!(
            "unionfs exited 0 but {} is not mounted (mount must return only once \
             the mount is live): {out}",
            mnt.display()
        )),
        (false, Some(_)) => {
            lazy_umount(mnt);
            Err(format!(
                "unionfs failed but left {} mounted: {out}",
                mnt.display()
            ))
        }
        (false, None) => Err(format!("unionfs mount failed: {out}")),
    }
}

/// `mount -t overlay overlay -o lowerdir=...[,upperdir=..,workdir=..][,opts] MNT`.
/// Without an upper the kernel needs at least two lowers: a single lower is
/// paired with an empty dir made next to `mnt` (it changes nothing in the view).
pub fn mount_kernel_overlay(
    lowers: &[&Path],
    upper: Option<&Path>,
    work: Option<&Path>,
    mnt: &Path,
    opts: &[&str],
) -> Mount {
    let mut lowers: Vec<PathBuf> = lowers.iter().map(|p| p.to_path_buf()).collect();
    if upper.is_none() && lowers.len() == 1 {
        let empty = mnt.with_file_name(format!(
            "{}.empty-lower",
            mnt.file_name().expect("mnt name").to_string_lossy()
        ));
        fs::create_dir_all(&empty).expect("mkdir empty lower");
        lowers.push(empty);
    }
    let check = |p: &Path| {
        assert!(
            !pbytes(p)
                .iter()
                .any(|&c| c == b',' || c == b':' || c == b'\\'),
            "kernel overlay helper: path {} has a , : or \\",
            p.display()
        );
    };
    let mut data = OsString::from("lowerdir=");
    for (i, l) in lowers.iter().enumerate() {
        check(l);
        if i > 0 {
            data.push(":");
        }
        data.push(l);
    }
    if let Some(u) = upper {
        check(u);
        data.push(",upperdir=");
        data.push(u);
    }
    if let Some(w) = work {
        check(w);
        data.push(",workdir=");
        data.push(w);
    }
    for o in opts {
        data.push(",");
        data.push(o);
    }
    let out = run(
        Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(&data)
            .arg(mnt),
        Duration::from_secs(30),
    );
    let info = match (out.success(), mount_at(mnt)) {
        (true, Some(i)) if i.fstype == "overlay" => i,
        _ => panic!("kernel overlay mount failed: {out}"),
    };
    Mount {
        mnt: mnt.to_path_buf(),
        kind: MountKind::KernelOverlay,
        info,
        watchdog: None,
        done: false,
    }
}

/// A small tmpfs at `dir` (e.g. to put a work dir on another file system).
pub fn mount_tmpfs(dir: &Path) -> Mount {
    mount_tmpfs_sized(dir, "16m")
}

/// A tmpfs of `size` (e.g. "256m") at `dir`: also a fast place for big
/// fixtures (creating files on some CI disks costs ~0.5 ms each).
pub fn mount_tmpfs_sized(dir: &Path, size: &str) -> Mount {
    fs::create_dir_all(dir).expect("mkdir tmpfs mount point");
    let out = run(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0755"))
            .arg("tmpfs")
            .arg(dir),
        Duration::from_secs(20),
    );
    let info = match (out.success(), mount_at(dir)) {
        (true, Some(i)) => i,
        _ => panic!("tmpfs mount failed: {out}"),
    };
    Mount {
        mnt: dir.to_path_buf(),
        kind: MountKind::Tmpfs,
        info,
        watchdog: None,
        done: false,
    }
}

// ---------------------------------------------------------------------------
// Block devices: loop images and their mounts
// ---------------------------------------------------------------------------

/// True when `cmd` is on PATH (or an absolute path that exists).
pub fn have_command(cmd: &str) -> bool {
    if cmd.contains('/') {
        return Path::new(cmd).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(cmd).is_file()))
}

/// True when every command of `cmds` exists; otherwise says loudly which do
/// not (and fails under `CI=true`, scripts/deps.sh installs them).
pub fn require_commands(cmds: &[&str]) -> bool {
    let missing: Vec<&str> = cmds.iter().copied().filter(|c| !have_command(c)).collect();
    if missing.is_empty() {
        true
    } else {
        skip_or_fail(&format!(
            "missing command(s) {} (scripts/deps.sh installs them)",
            missing.join(", ")
        ))
    }
}

/// Runs `cmd` (60 s at most) and panics with its output when it fails.
pub fn run_ok(cmd: &mut Command, what: &str) -> CmdOutput {
    let out = run(cmd, Duration::from_secs(60));
    if !out.success() {
        panic!("{what}: {out}");
    }
    out
}

/// A sparse file of `size` bytes (a disk image).
pub fn sparse_image(path: &Path, size: u64) {
    let f = fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.set_len(size)
        .unwrap_or_else(|e| panic!("size {}: {e}", path.display()));
}

/// A loop device over an image file; detached on Drop (drop what sits on
/// it first).
pub struct LoopDev {
    pub dev: PathBuf,
}

impl LoopDev {
    pub fn attach(image: &Path) -> LoopDev {
        let out = run_ok(
            Command::new("losetup")
                .args(["--find", "--show"])
                .arg(image),
            "losetup",
        );
        LoopDev {
            dev: PathBuf::from(out.stdout.trim()),
        }
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        for _ in 0..50 {
            let out = run(
                Command::new("losetup").arg("-d").arg(&self.dev),
                Duration::from_secs(20),
            );
            if out.success() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "unionfs tests: WARNING: could not detach {}",
            self.dev.display()
        );
    }
}

/// A block device's file system mounted at a dir; unmounted on Drop.
pub struct DevMount {
    pub dir: PathBuf,
    done: bool,
}

impl DevMount {
    /// `mount -t FSTYPE [-o OPTS] DEV DIR` (DIR created).
    pub fn new(dev: &Path, fstype: &str, opts: &str, dir: &Path) -> DevMount {
        fs::create_dir_all(dir).expect("mkdir mount point");
        let mut cmd = Command::new("mount");
        cmd.args(["-t", fstype]);
        if !opts.is_empty() {
            cmd.args(["-o", opts]);
        }
        run_ok(cmd.arg(dev).arg(dir), "mount of a block device");
        DevMount {
            dir: dir.to_path_buf(),
            done: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Unmounts now, panicking when it cannot.
    pub fn umount(mut self) {
        self.done = true;
        if let Err(e) = self.do_umount() {
            panic!("{e}");
        }
    }

    fn do_umount(&mut self) -> Result<(), String> {
        let mut out = run(
            Command::new("umount").arg(&self.dir),
            Duration::from_secs(60),
        );
        for _ in 0..30 {
            if out.success() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(100));
            out = run(
                Command::new("umount").arg(&self.dir),
                Duration::from_secs(60),
            );
        }
        lazy_umount(&self.dir);
        Err(format!("umount {}: {out}", self.dir.display()))
    }
}

impl Drop for DevMount {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Err(e) = self.do_umount() {
            eprintln!("unionfs tests: {e}");
        }
    }
}

// ---------------------------------------------------------------------------
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
    splitmix(seed ^ fnv(path) ^ fnv(layer.as_bytes()).rotate_left(17)) % n
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
                Format::Mixed(s) => Format::Mixed(splitmix(s.wrapping_add(i as u64))),
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

// ---------------------------------------------------------------------------
// Reference model of the lowers-only merged view
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDev,
    BlockDev,
    Socket,
}

impl FileType {
    pub fn of(ft: fs::FileType) -> FileType {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_symlink() {
            FileType::Symlink
        } else if ft.is_dir() {
            FileType::Dir
        } else if ft.is_file() {
            FileType::File
        } else if ft.is_fifo() {
            FileType::Fifo
        } else if ft.is_char_device() {
            FileType::CharDev
        } else if ft.is_block_device() {
            FileType::BlockDev
        } else {
            FileType::Socket
        }
    }
}

/// What the merged view must show at one path, and which layer serves it.
#[derive(Clone, Debug)]
pub struct ViewEntry {
    pub ftype: FileType,
    pub content: Option<Vec<u8>>,
    pub target: Option<Vec<u8>>,
    /// Name of the serving (topmost) layer.
    pub layer: String,
    pub mode: u32,
    pub owner: Option<(u32, u32)>,
    /// user.* xattrs, private ones (overlay, fuseoverlayfs, unionfs) removed.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Names of this inode inside its layer (hard links), for files.
    pub nlink: u64,
}

/// True for xattr names that a merged view must never show.
pub fn is_private_xattr(name: &[u8]) -> bool {
    [
        &b"trusted.overlay."[..],
        b"user.overlay.",
        b"user.fuseoverlayfs.",
        b"user.unionfs.",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

#[derive(Clone, Debug)]
struct SpecNode {
    kind: Kind,
    opaque: bool,
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    link_group: Vec<u8>,
}

fn index_layer(layer: &Layer) -> BTreeMap<Vec<u8>, SpecNode> {
    let mut m: BTreeMap<Vec<u8>, SpecNode> = BTreeMap::new();
    let dir_node = || SpecNode {
        kind: Kind::Dir,
        opaque: false,
        mode: None,
        owner: None,
        xattrs: Vec::new(),
        link_group: Vec::new(),
    };
    m.insert(Vec::new(), dir_node());
    for e in &layer.entries {
        let (parent, _) = split_parent(&e.path);
        let mut cur = Vec::new();
        for comp in parent.split(|&c| c == b'/').filter(|c| !c.is_empty()) {
            cur = join_rel(&cur, comp);
            m.entry(cur.clone()).or_insert_with(dir_node);
        }
        let node = m.entry(e.path.clone()).or_insert_with(dir_node);
        match &e.kind {
            Kind::Dir => {}
            Kind::Opaque => node.opaque = true,
            Kind::Link(existing) => {
                node.kind = Kind::Link(existing.clone());
            }
            k => node.kind = k.clone(),
        }
        if e.mode.is_some() {
            node.mode = e.mode;
        }
        if e.owner.is_some() {
            node.owner = e.owner;
        }
        node.xattrs.extend(e.xattrs.iter().cloned());
    }
    // Resolve hard links to their target's data and metadata.
    let links: Vec<(Vec<u8>, Vec<u8>)> = m
        .iter()
        .filter_map(|(p, n)| match &n.kind {
            Kind::Link(t) => Some((p.clone(), t.clone())),
            _ => None,
        })
        .collect();
    for (p, t) in links {
        let target = m
            .get(&t)
            .unwrap_or_else(|| panic!("layer {}: link to missing {}", layer.name, show(&t)))
            .clone();
        let mut n = target;
        n.link_group = t.clone();
        m.insert(p, n);
        m.get_mut(&t).expect("target").link_group = t.clone();
    }
    m
}

/// The merged view of a lowers-only stack (`layers` top first), by the rules
/// of docs/design.md §3: lookup stops at the first whiteout, the first non-dir, or
/// after an opaque dir; dirs of the same name merge; the top one wins.
/// Keys are relative paths (`""` is the root).
pub fn merged_view(layers: &[&Layer]) -> BTreeMap<Vec<u8>, ViewEntry> {
    let idx: Vec<BTreeMap<Vec<u8>, SpecNode>> = layers.iter().map(|l| index_layer(l)).collect();
    let mut out = BTreeMap::new();
    let root_layers: Vec<usize> = (0..layers.len()).collect();
    out.insert(Vec::new(), view_entry(layers, &idx, 0, b""));
    merge_dir(layers, &idx, b"", &root_layers, &mut out);
    out
}

fn view_entry(
    layers: &[&Layer],
    idx: &[BTreeMap<Vec<u8>, SpecNode>],
    l: usize,
    path: &[u8],
) -> ViewEntry {
    let n = &idx[l][path];
    let (ftype, content, target, def_mode) = match &n.kind {
        Kind::File(c) => (FileType::File, Some(c.clone()), None, 0o644),
        Kind::Dir | Kind::Opaque => (FileType::Dir, None, None, 0o755),
        Kind::Symlink(t) => (FileType::Symlink, None, Some(t.clone()), 0o777),
        Kind::Fifo => (FileType::Fifo, None, None, 0o644),
        Kind::Whiteout | Kind::Link(_) => unreachable!("resolved"),
    };
    let nlink = if ftype == FileType::File && !n.link_group.is_empty() {
        idx[l]
            .values()
            .filter(|o| o.link_group == n.link_group)
            .count() as u64
    } else {
        1
    };
    ViewEntry {
        ftype,
        content,
        target,
        layer: layers[l].name.clone(),
        mode: n.mode.unwrap_or(def_mode),
        owner: n.owner,
        xattrs: n
            .xattrs
            .iter()
            .filter(|(k, _)| k.starts_with(b"user.") && !is_private_xattr(k))
            .cloned()
            .collect(),
        nlink,
    }
}

fn merge_dir(
    layers: &[&Layer],
    idx: &[BTreeMap<Vec<u8>, SpecNode>],
    dir: &[u8],
    dir_layers: &[usize],
    out: &mut BTreeMap<Vec<u8>, ViewEntry>,
) {
    let mut names: BTreeSet<Vec<u8>> = BTreeSet::new();
    for &l in dir_layers {
        for p in idx[l].keys() {
            if p.is_empty() {
                continue;
            }
            let (parent, name) = split_parent(p);
            if parent == dir {
                names.insert(name.to_vec());
            }
        }
    }
    for name in names {
        let path = join_rel(dir, &name);
        let mut stack = Vec::new();
        for &l in dir_layers {
            let Some(n) = idx[l].get(&path) else { continue };
            match n.kind {
                Kind::Whiteout => break,
                Kind::Dir | Kind::Opaque => {
                    stack.push(l);
                    if n.opaque {
                        break;
                    }
                }
                _ => {
                    if stack.is_empty() {
                        stack.push(l);
                    }
                    break;
                }
            }
        }
        let Some(&top) = stack.first() else { continue };
        let e = view_entry(layers, idx, top, &path);
        let is_dir = e.ftype == FileType::Dir;
        out.insert(path.clone(), e);
        if is_dir {
            merge_dir(layers, idx, &path, &stack, out);
        }
    }
}

/// Compares a snapshot of a merged view with the model: same paths, types,
/// contents, symlink targets, modes, owners (where the spec set them), user
/// xattrs and file link counts. Returns the differences.
pub fn check_view(tree: &Tree, expected: &BTreeMap<Vec<u8>, ViewEntry>) -> Vec<String> {
    let mut d = Vec::new();
    for (p, e) in expected {
        let Some(n) = tree.nodes.get(p) else {
            d.push(format!(
                "{}: missing (expected {:?} from {})",
                show(p),
                e.ftype,
                e.layer
            ));
            continue;
        };
        if n.ftype != e.ftype {
            d.push(format!(
                "{}: type {:?}, expected {:?} from {}",
                show(p),
                n.ftype,
                e.ftype,
                e.layer
            ));
            continue;
        }
        if let Some(c) = &e.content {
            if n.hash != Some(fnv(c)) || n.size != c.len() as u64 {
                d.push(format!(
                    "{}: content differs from {}'s (size {} vs {}; expected {:?})",
                    show(p),
                    e.layer,
                    n.size,
                    c.len(),
                    String::from_utf8_lossy(c)
                ));
            }
        }
        if e.target.is_some() && n.target != e.target {
            d.push(format!(
                "{}: symlink target {:?}, expected {:?} from {}",
                show(p),
                n.target.as_deref().map(show),
                e.target.as_deref().map(show),
                e.layer
            ));
        }
        if e.ftype != FileType::Symlink && n.mode != e.mode {
            d.push(format!(
                "{}: mode {:o}, expected {:o} from {}",
                show(p),
                n.mode,
                e.mode,
                e.layer
            ));
        }
        if let Some((u, g)) = e.owner {
            if (n.uid, n.gid) != (u, g) {
                d.push(format!(
                    "{}: owner {}:{}, expected {u}:{g} from {}",
                    show(p),
                    n.uid,
                    n.gid,
                    e.layer
                ));
            }
        }
        if n.xattrs != e.xattrs {
            d.push(format!(
                "{}: user xattrs {}, expected {} from {}",
                show(p),
                show_xattrs(&n.xattrs),
                show_xattrs(&e.xattrs),
                e.layer
            ));
        }
        if e.ftype == FileType::File && n.nlink != e.nlink {
            d.push(format!(
                "{}: nlink {}, expected {} (as in {})",
                show(p),
                n.nlink,
                e.nlink,
                e.layer
            ));
        }
    }
    for (p, n) in &tree.nodes {
        if !expected.contains_key(p) {
            d.push(format!("{}: unexpected {:?} in the view", show(p), n.ftype));
        }
    }
    d
}

// ---------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------

/// One entry of a [`Tree`]; `mode` is the permission bits (`& 0o7777`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub ftype: FileType,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// FNV-1a of the content, regular files only.
    pub hash: Option<u64>,
    pub target: Option<Vec<u8>>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub ino: u64,
    /// d_ino from the parent's readdir (None for the root).
    pub d_ino: Option<u64>,
    pub nlink: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub rdev: u64,
}

/// A recursive snapshot of a directory tree; keys are relative paths as
/// bytes, sorted (`""` is the root itself). Never follows symlinks.
#[derive(Clone, Debug)]
pub struct Tree {
    pub root: PathBuf,
    pub nodes: BTreeMap<Vec<u8>, Node>,
}

/// Fields that [`Tree::diff`] may ignore; combine with `|`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fields(u32);

impl Fields {
    pub const NONE: Fields = Fields(0);
    /// st_ino and d_ino.
    pub const INO: Fields = Fields(1);
    /// nlink of every entry.
    pub const NLINK: Fields = Fields(2);
    /// nlink of directories only.
    pub const DIR_NLINK: Fields = Fields(4);
    /// mtime and ctime.
    pub const TIMES: Fields = Fields(8);
    /// ctime only.
    pub const CTIME: Fields = Fields(16);
    /// st_size of directories.
    pub const DIR_SIZE: Fields = Fields(32);
    pub const XATTRS: Fields = Fields(64);
    pub const OWNER: Fields = Fields(128);
    pub const MODE: Fields = Fields(256);
    pub const RDEV: Fields = Fields(512);
    /// What differs legitimately between two mounts of the same logical
    /// stack: inode numbers, times, dir sizes and dir link counts (kernel
    /// overlayfs reports nlink 1 for merged dirs; dir sizes depend on the
    /// rendering, e.g. `.wh.*` files).
    pub const VIEW: Fields = Fields(1 | 4 | 8 | 32);

    pub fn contains(self, other: Fields) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Fields {
    type Output = Fields;
    fn bitor(self, o: Fields) -> Fields {
        Fields(self.0 | o.0)
    }
}

fn show_xattrs(x: &BTreeMap<Vec<u8>, Vec<u8>>) -> String {
    let items: Vec<String> = x
        .iter()
        .map(|(k, v)| format!("{}={}", show(k), show(v)))
        .collect();
    format!("{{{}}}", items.join(", "))
}

impl Tree {
    pub fn get(&self, rel: impl AsRef<[u8]>) -> Option<&Node> {
        self.nodes.get(rel.as_ref())
    }

    /// Names directly inside `dir` (relative path), sorted.
    pub fn children(&self, dir: impl AsRef<[u8]>) -> Vec<Vec<u8>> {
        let dir = dir.as_ref();
        self.nodes
            .keys()
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (parent, name) = split_parent(p);
                (parent == dir).then(|| name.to_vec())
            })
            .collect()
    }

    /// Every difference between `self` and `other`, one readable line each.
    pub fn diff(&self, other: &Tree, ignore: Fields) -> Vec<String> {
        let mut d = Vec::new();
        let (l, r) = (self.root.display(), other.root.display());
        for (p, a) in &self.nodes {
            let Some(b) = other.nodes.get(p) else {
                d.push(format!("{}: only in {l} ({:?})", show(p), a.ftype));
                continue;
            };
            let mut f = |what: &str, x: String, y: String| {
                if x != y {
                    d.push(format!("{}: {what} {x} ({l}) != {y} ({r})", show(p)));
                }
            };
            if a.ftype != b.ftype {
                f("type", format!("{:?}", a.ftype), format!("{:?}", b.ftype));
                continue;
            }
            let is_dir = a.ftype == FileType::Dir;
            if !ignore.contains(Fields::MODE) {
                f("mode", format!("{:o}", a.mode), format!("{:o}", b.mode));
            }
            if !ignore.contains(Fields::OWNER) {
                f(
                    "owner",
                    format!("{}:{}", a.uid, a.gid),
                    format!("{}:{}", b.uid, b.gid),
                );
            }
            if !(is_dir && ignore.contains(Fields::DIR_SIZE)) {
                f("size", a.size.to_string(), b.size.to_string());
            }
            f(
                "content hash",
                format!("{:?}", a.hash),
                format!("{:?}", b.hash),
            );
            f(
                "symlink target",
                format!("{:?}", a.target.as_deref().map(show)),
                format!("{:?}", b.target.as_deref().map(show)),
            );
            if !ignore.contains(Fields::XATTRS) {
                f("xattrs", show_xattrs(&a.xattrs), show_xattrs(&b.xattrs));
            }
            if !ignore.contains(Fields::INO) {
                f("st_ino", a.ino.to_string(), b.ino.to_string());
                f("d_ino", format!("{:?}", a.d_ino), format!("{:?}", b.d_ino));
            }
            if !(ignore.contains(Fields::NLINK) || is_dir && ignore.contains(Fields::DIR_NLINK)) {
                f("nlink", a.nlink.to_string(), b.nlink.to_string());
            }
            if !ignore.contains(Fields::TIMES) {
                f("mtime", format!("{:?}", a.mtime), format!("{:?}", b.mtime));
                if !ignore.contains(Fields::CTIME) {
                    f("ctime", format!("{:?}", a.ctime), format!("{:?}", b.ctime));
                }
            }
            if !ignore.contains(Fields::RDEV) {
                f("rdev", a.rdev.to_string(), b.rdev.to_string());
            }
        }
        for (p, b) in &other.nodes {
            if !self.nodes.contains_key(p) {
                d.push(format!("{}: only in {r} ({:?})", show(p), b.ftype));
            }
        }
        d
    }

    /// Panics listing every difference.
    pub fn assert_same(&self, other: &Tree, ignore: Fields, what: &str) {
        let d = self.diff(other, ignore);
        assert_no_failures(what, &d);
    }

    /// Entries whose d_ino (from readdir) differs from st_ino.
    pub fn d_ino_mismatches(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.d_ino.is_some_and(|d| d != n.ino))
            .map(|(p, n)| {
                format!(
                    "{}: d_ino {} != st_ino {}",
                    show(p),
                    n.d_ino.unwrap_or(0),
                    n.ino
                )
            })
            .collect()
    }
}

/// Snapshot with user.* xattrs only (what a merged view should show).
pub fn snapshot(root: &Path) -> Tree {
    snapshot_with(root, false)
}

/// Snapshot with every xattr (trusted.*, security.* too).
pub fn snapshot_full(root: &Path) -> Tree {
    snapshot_with(root, true)
}

fn stat_node(path: &Path, all_xattrs: bool) -> io::Result<Node> {
    let m = fs::symlink_metadata(path)?;
    let ftype = FileType::of(m.file_type());
    let hash = if ftype == FileType::File {
        let mut f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Some(fnv(&buf))
    } else {
        None
    };
    let target = if ftype == FileType::Symlink {
        Some(fs::read_link(path)?.into_os_string().into_vec())
    } else {
        None
    };
    let mut xattrs = BTreeMap::new();
    for name in sys::llistxattr(path)? {
        if !all_xattrs && !name.starts_with(b"user.") {
            continue;
        }
        match sys::lgetxattr(path, &name) {
            Ok(v) => {
                xattrs.insert(name, v);
            }
            Err(e) => {
                xattrs.insert(name, format!("<getxattr error: {e}>").into_bytes());
            }
        }
    }
    Ok(Node {
        ftype,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        size: m.size(),
        hash,
        target,
        xattrs,
        ino: m.ino(),
        d_ino: None,
        nlink: m.nlink(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
        rdev: m.rdev(),
    })
}

fn snapshot_with(root: &Path, all_xattrs: bool) -> Tree {
    let mut nodes = BTreeMap::new();
    let root_node =
        stat_node(root, all_xattrs).unwrap_or_else(|e| panic!("snapshot {}: {e}", root.display()));
    let root_is_dir = root_node.ftype == FileType::Dir;
    nodes.insert(Vec::new(), root_node);
    let mut todo: Vec<Vec<u8>> = if root_is_dir {
        vec![Vec::new()]
    } else {
        vec![]
    };
    while let Some(rel) = todo.pop() {
        let dir = join(root, &rel);
        let rd = fs::read_dir(&dir).unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
        for ent in rd {
            let ent = ent.unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
            let name = ent.file_name().into_vec();
            let crel = join_rel(&rel, &name);
            let p = join(root, &crel);
            let mut n = stat_node(&p, all_xattrs)
                .unwrap_or_else(|e| panic!("snapshot {}: {e}", p.display()));
            n.d_ino = Some(std::os::unix::fs::DirEntryExt::ino(&ent));
            if n.ftype == FileType::Dir {
                todo.push(crel.clone());
            }
            assert!(
                nodes.insert(crel.clone(), n).is_none(),
                "readdir of {} returned {} twice",
                dir.display(),
                show(&name)
            );
        }
    }
    Tree {
        root: root.to_path_buf(),
        nodes,
    }
}

/// Full snapshots (every xattr, mtimes, ctimes, device numbers, inodes) of
/// layer dirs, to prove they are unchanged.
pub struct LayerChecksum {
    trees: Vec<Tree>,
}

pub fn checksum_layers(dirs: &[&Path]) -> LayerChecksum {
    LayerChecksum {
        trees: dirs.iter().map(|d| snapshot_full(d)).collect(),
    }
}

impl LayerChecksum {
    /// Panics listing every change in any layer since the checksum was taken.
    pub fn assert_unchanged(&self) {
        let mut d = Vec::new();
        for t in &self.trees {
            let now = snapshot_full(&t.root);
            d.extend(t.diff(&now, Fields::NONE));
        }
        assert_no_failures("lower layers changed (left: before, right: after)", &d);
    }
}

// ---------------------------------------------------------------------------
// Convenience file operations (panic with context)
// ---------------------------------------------------------------------------

/// Opens with raw `open(2)` flags, always adding O_NOFOLLOW (tests never
/// write through a symlink).
pub fn open_flags(path: &Path, flags: i32, mode: u32) -> io::Result<fs::File> {
    let acc = flags & libc::O_ACCMODE;
    fs::OpenOptions::new()
        .read(acc == libc::O_RDONLY || acc == libc::O_RDWR)
        .write(acc == libc::O_WRONLY || acc == libc::O_RDWR)
        .custom_flags((flags & !libc::O_ACCMODE) | libc::O_NOFOLLOW)
        .mode(mode)
        .open(path)
}

/// The bytes of a regular file (O_NOFOLLOW).
pub fn read(path: &Path) -> Vec<u8> {
    let mut f = open_flags(path, libc::O_RDONLY, 0)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut v = Vec::new();
    f.read_to_end(&mut v)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    v
}

pub fn lstat(path: &Path) -> fs::Metadata {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
}

/// Names in a dir (std read_dir: no `.`/`..`), sorted.
pub fn list(dir: &Path) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
                .file_name()
                .into_vec()
        })
        .collect();
    v.sort();
    v
}

/// `list` as printable strings (for readable assertions on ASCII names).
pub fn list_str(dir: &Path) -> Vec<String> {
    list(dir).iter().map(show).collect()
}

// ---------------------------------------------------------------------------
// sys: the only unsafe code of the tests (libc calls the std library lacks)
// ---------------------------------------------------------------------------

/// Safe wrappers over libc calls that std lacks. Every `unsafe` of the test
/// suite is here; each passes valid NUL-terminated strings and buffers of the
/// stated length.
pub mod sys {
    use std::ffi::CString;
    use std::io;
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};

    fn cstr(b: &[u8]) -> io::Result<CString> {
        CString::new(b).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }

    fn cpath(p: &Path) -> io::Result<CString> {
        cstr(p.as_os_str().as_bytes())
    }

    fn check(ret: libc::c_int) -> io::Result<()> {
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// flock(fd, LOCK_EX): waits for an exclusive lock on the open file
    /// (std's File::lock is newer than the crate's MSRV).
    pub fn flock_exclusive(file: &std::fs::File) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: flock takes a live fd (borrowed from `file`) and a flag.
        check(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) })
    }

    /// renameat2(2) with AT_FDCWD on both sides (std has no RENAME_* flags).
    pub fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
        let (f, t) = (cpath(from)?, cpath(to)?);
        // SAFETY: two valid NUL-terminated paths that outlive the call.
        check(unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                flags,
            )
        })
    }

    /// lgetxattr(2): the value of `name` (no symlink following).
    pub fn lgetxattr(path: &Path, name: &[u8]) -> io::Result<Vec<u8>> {
        let p = cpath(path)?;
        let n = cstr(name)?;
        loop {
            // SAFETY: valid C strings; a null buffer of size 0 asks for the size.
            let size = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
            if size < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buf = vec![0u8; size as usize + 1];
            // SAFETY: buf is valid for buf.len() bytes.
            let got = unsafe {
                libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            };
            if got < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ERANGE) {
                    continue;
                }
                return Err(e);
            }
            buf.truncate(got as usize);
            return Ok(buf);
        }
    }

    /// llistxattr(2): every xattr name, in the order the fs lists them.
    pub fn llistxattr(path: &Path) -> io::Result<Vec<Vec<u8>>> {
        let p = cpath(path)?;
        loop {
            // SAFETY: valid C string; null buffer of size 0 asks for the size.
            let size = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
            if size < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buf = vec![0u8; size as usize + 1];
            // SAFETY: buf is valid for buf.len() bytes.
            let got = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            if got < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ERANGE) {
                    continue;
                }
                return Err(e);
            }
            buf.truncate(got as usize);
            return Ok(buf
                .split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| s.to_vec())
                .collect());
        }
    }

    /// lsetxattr(2) with flags 0 (create or replace).
    pub fn lsetxattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
        let p = cpath(path)?;
        let n = cstr(name)?;
        // SAFETY: valid C strings; value valid for value.len() bytes.
        check(unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        })
    }

    /// lremovexattr(2).
    pub fn lremovexattr(path: &Path, name: &[u8]) -> io::Result<()> {
        let p = cpath(path)?;
        let n = cstr(name)?;
        // SAFETY: valid C strings.
        check(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) })
    }

    /// mknod(2): `mode` includes the type bits (S_IFCHR, S_IFIFO, S_IFREG...).
    pub fn mknod(path: &Path, mode: u32, dev: u64) -> io::Result<()> {
        let p = cpath(path)?;
        // SAFETY: valid C string.
        check(unsafe { libc::mknod(p.as_ptr(), mode as libc::mode_t, dev as libc::dev_t) })
    }

    /// makedev(3).
    pub fn makedev(major: u32, minor: u32) -> u64 {
        libc::makedev(major, minor)
    }

    /// truncate(2). Follows symlinks: only call it on regular files.
    pub fn truncate(path: &Path, len: i64) -> io::Result<()> {
        let p = cpath(path)?;
        // SAFETY: valid C string.
        check(unsafe { libc::truncate(p.as_ptr(), len as libc::off_t) })
    }

    /// utimensat(AT_FDCWD, path, times, AT_SYMLINK_NOFOLLOW); `None` sets
    /// both times to now. Times are ((atime s, ns), (mtime s, ns)).
    pub fn utimens_nofollow(
        path: &Path,
        times: Option<((i64, i64), (i64, i64))>,
    ) -> io::Result<()> {
        let p = cpath(path)?;
        let ts = |(s, ns): (i64, i64)| libc::timespec {
            tv_sec: s as libc::time_t,
            tv_nsec: ns as _,
        };
        let now = libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        };
        let arr = match times {
            Some((a, m)) => [ts(a), ts(m)],
            None => [now, now],
        };
        // SAFETY: valid C string and a 2-element timespec array.
        check(unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                p.as_ptr(),
                arr.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
    }

    /// access(2) (`libc::R_OK`, `W_OK`, `X_OK`, `F_OK`).
    pub fn access(path: &Path, mode: i32) -> io::Result<()> {
        let p = cpath(path)?;
        // SAFETY: valid C string.
        check(unsafe { libc::access(p.as_ptr(), mode) })
    }

    /// The interesting fields of statvfs(3).
    #[derive(Clone, Copy, Debug)]
    pub struct StatVfs {
        pub bsize: u64,
        pub frsize: u64,
        pub blocks: u64,
        pub bfree: u64,
        pub bavail: u64,
        pub files: u64,
        pub ffree: u64,
        pub flag: u64,
        pub namemax: u64,
    }

    pub fn statvfs(path: &Path) -> io::Result<StatVfs> {
        let p = cpath(path)?;
        // SAFETY: statvfs is plain old data; zeroed is a valid value.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid C string and a valid out pointer.
        check(unsafe { libc::statvfs(p.as_ptr(), &mut s) })?;
        Ok(StatVfs {
            bsize: s.f_bsize as u64,
            frsize: s.f_frsize as u64,
            blocks: s.f_blocks as u64,
            bfree: s.f_bfree as u64,
            bavail: s.f_bavail as u64,
            files: s.f_files as u64,
            ffree: s.f_ffree as u64,
            flag: s.f_flag as u64,
            namemax: s.f_namemax as u64,
        })
    }

    /// One entry from readdir(3).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct RawDirEntry {
        pub name: Vec<u8>,
        pub ino: u64,
        pub d_type: u8,
        /// d_off: the position after this entry.
        pub off: i64,
    }

    /// A `DIR*` stream (opendir/readdir/telldir/seekdir/rewinddir/closedir),
    /// for tests of stable directory offsets. Not Send.
    pub struct DirStream {
        dir: *mut libc::DIR,
        path: PathBuf,
    }

    impl DirStream {
        pub fn open(path: &Path) -> io::Result<DirStream> {
            let p = cpath(path)?;
            // SAFETY: valid C string.
            let dir = unsafe { libc::opendir(p.as_ptr()) };
            if dir.is_null() {
                return Err(io::Error::last_os_error());
            }
            Ok(DirStream {
                dir,
                path: path.to_path_buf(),
            })
        }

        pub fn path(&self) -> &Path {
            &self.path
        }

        /// The next entry (`.` and `..` included), `Ok(None)` at the end.
        pub fn read(&mut self) -> io::Result<Option<RawDirEntry>> {
            // SAFETY: errno is thread-local; resetting it distinguishes end
            // of stream from error after readdir returns null.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: self.dir is a live DIR* from opendir.
            let ent = unsafe { libc::readdir(self.dir) };
            if ent.is_null() {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(0) | None => Ok(None),
                    Some(_) => Err(e),
                };
            }
            // SAFETY: readdir returned a valid dirent, valid until the next
            // call on this stream; d_name is NUL-terminated.
            let (name, ino, d_type, off) = unsafe {
                let e = &*ent;
                let name = std::ffi::CStr::from_ptr(e.d_name.as_ptr())
                    .to_bytes()
                    .to_vec();
                (name, e.d_ino, e.d_type, e.d_off)
            };
            Ok(Some(RawDirEntry {
                name,
                ino,
                d_type,
                off,
            }))
        }

        /// telldir(3).
        pub fn tell(&mut self) -> i64 {
            // SAFETY: live DIR*.
            unsafe { libc::telldir(self.dir) as i64 }
        }

        /// seekdir(3) to a value returned by `tell` on this stream.
        pub fn seek(&mut self, pos: i64) {
            // SAFETY: live DIR*.
            unsafe { libc::seekdir(self.dir, pos as libc::c_long) }
        }

        /// rewinddir(3).
        pub fn rewind(&mut self) {
            // SAFETY: live DIR*.
            unsafe { libc::rewinddir(self.dir) }
        }

        /// Reads to the end; each entry with the `tell` taken right after it.
        pub fn read_all_with_tell(&mut self) -> io::Result<Vec<(RawDirEntry, i64)>> {
            let mut v = Vec::new();
            while let Some(e) = self.read()? {
                let t = self.tell();
                v.push((e, t));
            }
            Ok(v)
        }
    }

    impl Drop for DirStream {
        fn drop(&mut self) {
            // SAFETY: live DIR*, closed exactly once.
            unsafe { libc::closedir(self.dir) };
        }
    }
}

/// A small seeded generator (splitmix64), so randomized tests replay
/// exactly from a printed seed without a dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            None
        } else {
            Some(&v[self.below(v.len() as u64) as usize])
        }
    }

    /// One element of a non-empty slice.
    pub fn choose<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------
// A daemon in the foreground, as our child (crash and concurrency tests)

/// `unionfs mount ... -f` spawned as our child: we know its pid, kill it with
/// SIGKILL (only it), and clean up its dead mount point with `umount -l`.
pub struct Daemon {
    child: Arc<Mutex<Child>>,
    pub mnt: PathBuf,
    mount_id: u32,
    pub log: PathBuf,
    /// Mounted and not yet cleaned up.
    live: bool,
}

fn lock_child(child: &Mutex<Child>) -> std::sync::MutexGuard<'_, Child> {
    child.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn log_tail(log: &Path) -> String {
    let s = String::from_utf8_lossy(&fs::read(log).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl Daemon {
    /// `unionfs mount -f` with `extra` arguments as our child, its output
    /// in `log`, `RUST_LOG` taken from the variable `log_env`; returns once
    /// the mount is live.
    pub fn start(
        lowers: &[&Path],
        upper: &Path,
        work: &Path,
        mnt: &Path,
        extra: &[&str],
        log: &Path,
        log_env: &str,
    ) -> Result<Daemon, String> {
        let before: BTreeSet<u32> = mountinfo()
            .iter()
            .filter(|m| m.mount_point == mnt)
            .map(|m| m.mount_id)
            .collect();
        let mut args: Vec<&str> = vec!["-f"];
        args.extend_from_slice(extra);
        let argv = mount_args(Form::Mount, lowers, Some(upper), Some(work), mnt, &args);
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("open {}: {e}", log.display()))?;
        let logf2 = logf.try_clone().map_err(|e| e.to_string())?;
        let mut child = Command::new(unionfs_bin())
            .args(&argv)
            .env_remove("RUST_LOG")
            .envs(std::env::var(log_env).map(|l| ("RUST_LOG", l)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(logf))
            .stderr(Stdio::from(logf2))
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", unionfs_bin()))?;
        let start = Instant::now();
        loop {
            if let Some(m) = mount_at(mnt) {
                if !before.contains(&m.mount_id) && m.fstype.starts_with("fuse") {
                    return Ok(Daemon {
                        child: Arc::new(Mutex::new(child)),
                        mnt: mnt.to_path_buf(),
                        mount_id: m.mount_id,
                        log: log.to_path_buf(),
                        live: true,
                    });
                }
            }
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!(
                    "the daemon exited ({st}) without mounting {}; its log:\n{}",
                    mnt.display(),
                    log_tail(log)
                ));
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                if mount_at(mnt).is_some_and(|m| !before.contains(&m.mount_id)) {
                    lazy_umount(mnt);
                }
                return Err(format!(
                    "no mount at {} 20 s after starting the daemon; its log:\n{}",
                    mnt.display(),
                    log_tail(log)
                ));
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn alive(&self) -> bool {
        matches!(lock_child(&self.child).try_wait(), Ok(None))
    }

    /// SIGKILL to our child, then reap it. The mount point stays (dead)
    /// until [`Daemon::detach`].
    pub fn kill(&self) {
        let mut c = lock_child(&self.child);
        let _ = c.kill();
        let _ = c.wait();
    }

    /// `umount -l` of our (dead) mount.
    pub fn detach(&mut self) {
        if mountinfo()
            .iter()
            .any(|m| m.mount_id == self.mount_id && m.mount_point == self.mnt)
        {
            lazy_umount(&self.mnt);
        }
        self.live = false;
    }

    /// Clean unmount (`unionfs umount`), then the daemon must exit 0.
    pub fn unmount(&mut self) -> Result<(), String> {
        self.live = false;
        let out = unionfs([std::ffi::OsStr::new("umount"), self.mnt.as_os_str()]);
        if !out.success() {
            self.kill();
            self.live = true;
            self.detach();
            return Err(format!("clean unmount failed: {out}"));
        }
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = lock_child(&self.child).try_wait() {
                return if st.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "the daemon exited with {st} after unmount; log:\n{}",
                        log_tail(&self.log)
                    ))
                };
            }
            if start.elapsed() > Duration::from_secs(20) {
                self.kill();
                return Err("the daemon did not exit 20 s after its unmount".into());
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the daemon if `what` is not done within `limit` (a hung daemon
    /// then fails the test with ENOTCONN instead of blocking it).
    pub fn deadline(&self, limit: Duration, what: &str) -> Deadline {
        let (tx, rx) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let (child, flag, what) = (self.child.clone(), fired.clone(), what.to_string());
        let handle = thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                flag.store(true, Ordering::SeqCst);
                eprintln!("!!!!! {what} not done after {limit:?}: killing the daemon");
                let _ = lock_child(&child).kill();
            }
        });
        Deadline {
            stop: Some(tx),
            handle: Some(handle),
            fired,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.live {
            self.kill();
            self.detach();
        }
    }
}

pub struct Deadline {
    stop: Option<mpsc::Sender<()>>,
    handle: Option<thread::JoinHandle<()>>,
    fired: Arc<AtomicBool>,
}

impl Deadline {
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
