//! Mounts: /proc/self/mountinfo, unionfs / kernel overlayfs / tmpfs mount
//! guards (unmount on Drop, a watchdog for a hung daemon), loop devices, and a
//! daemon run in the foreground as our child (crash and concurrency tests).

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::*;

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

/// Ids of what is mounted at `mnt` now, to tell a new mount there from an
/// old one.
pub fn mount_ids_at(mnt: &Path) -> BTreeSet<u32> {
    mountinfo()
        .iter()
        .filter(|m| m.mount_point == mnt)
        .map(|m| m.mount_id)
        .collect()
}

/// [`try_mount_unionfs_args`] with `env` in the daemon's environment.
pub fn try_mount_unionfs_args_env(
    args: &[OsString],
    mnt: &Path,
    env: &[(&str, &str)],
) -> Result<Mount, String> {
    // Ids of what is already mounted at `mnt` (ids are recycled, so only
    // compare them for this mount point).
    let before = mount_ids_at(mnt);
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

/// The numbers on the last line of a daemon log that contains `key` (e.g.
/// the unmount line "read replies: N spliced, M from a buffer"), in order.
pub fn log_numbers(log: &Path, key: &str) -> Vec<u64> {
    let text = fs::read_to_string(log).unwrap_or_default();
    let counts = text
        .lines()
        .rev()
        .find_map(|l| l.split_once(key))
        .unwrap_or_else(|| panic!("no '{key}' line in the daemon log:\n{text}"))
        .1;
    counts
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect()
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
        let before = mount_ids_at(mnt);
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
