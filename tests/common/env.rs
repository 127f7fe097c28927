//! The machine a test runs on (skip or fail), its private temp dir, and
//! running commands (the unionfs binary among them) with a timeout.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::*;

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
