//! The daemon's life: mount (the FUSE handshake, then fork, so `unionfs
//! mount` returns exactly when the mount is live), signals that unmount,
//! and `unionfs umount`. Beside it, the glue between the kernel and
//! [`ops`](crate::ops): [`fuse`] (requests in, replies out), [`splice`]
//! (READ replies), [`passthrough`], [`fuse_conn`] and [`logging`].

pub(crate) mod fuse;
pub mod fuse_conn;
pub mod logging;
pub(crate) mod passthrough;
pub(crate) mod splice;

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, Session, SessionACL};
use log::{debug, error, info};

use crate::error::Error;
use crate::model::layer::LayerStack;
use crate::mount_line::{MountConfig, Remount};
use crate::ops::{Options, UnionFs};
use crate::sys;
use fuse::{FuseFs, Transport};

/// Mounts per `config` and serves until unmounted. Returns the process exit
/// code; errors were already reported (stderr before detaching, the log after).
pub fn mount(config: &MountConfig) -> Result<(), String> {
    sys::raise_nofile_limit();
    crate::daemon::splice::configure_from_env();
    let layers =
        LayerStack::open_with_data(config.upper.as_deref(), &config.lowers, &config.data_lowers)
            .map_err(|e| format!("cannot open layers: {e}"))?;
    let opts = Options {
        read_only: config.read_only || config.upper.is_none(),
        format: config.format,
    };
    // Modes arrive with the caller's umask applied; ours must not apply twice.
    sys::set_umask(0);
    let mut owners = config.owners.clone();
    owners.uid.overflow = overflow_id("uid");
    owners.gid.overflow = overflow_id("gid");
    let fs = UnionFs::new(layers, config.work.as_deref(), opts)
        .map_err(|e| e.to_string())?
        .with_owners(owners)
        .with_forced_permissions(config.xattr_permissions)
        .with_volatile(config.volatile)
        .with_metacopy(config.metacopy)
        .with_copy_delay(config.test_hooks.copy_delay);
    let fs = Arc::new(fs);

    let is_root = sys::geteuid() == 0;
    let allow_other = config.allow_other.unwrap_or(is_root);
    let mut options = vec![
        MountOption::FSName(config.fsname.clone()),
        // The mount table's type `fuse.unionfs` (fuse-overlayfs shows
        // `fuse.fuse-overlayfs`). As a kernel option: fuser's own mount(2)
        // passes type "fuse" and drops `Subtype`, which only fusermount3
        // would read; fusermount3 reads `subtype=` from the options too.
        MountOption::CUSTOM("subtype=unionfs".into()),
        MountOption::DefaultPermissions,
    ];
    if crate::daemon::splice::enabled() {
        // READ replies are spliced through pipes the daemon may not grow
        // past 1 MiB without CAP_SYS_RESOURCE (fs.pipe-max-size); a 1 MiB
        // request with its header would not fit, and go through a buffer.
        options.push(MountOption::CUSTOM(format!(
            "max_read={}",
            crate::daemon::splice::MAX_READ
        )));
    }
    if opts.read_only {
        options.push(MountOption::RO);
    }
    for o in &config.kernel_options {
        options.push(kernel_option(o));
    }
    // As kernel overlayfs, a mount by root honours setuid bits and device
    // nodes (a container image's `su`, `ping`, `passwd`), unless told
    // `nosuid`/`nodev`; fuser would default to both. Without privilege
    // fusermount3 always adds them.
    if is_root {
        let given = |a: &str, b: &str| config.kernel_options.iter().any(|o| o == a || o == b);
        if !given("suid", "nosuid") {
            options.push(MountOption::Suid);
        }
        if !given("dev", "nodev") {
            options.push(MountOption::Dev);
        }
    }
    let mut fuse_config = Config::default();
    fuse_config.mount_options = options;
    fuse_config.acl = if allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    // One worker per CPU: a caller that waits for each answer (`ls -lR`,
    // `find`) is served fastest so (warm `ls -lR`: 4.0 s with 2 workers on 2
    // CPUs, 6.6 s with 4). Long requests run on threads of their own
    // (`FuseFs::run`), so they hold no worker.
    let threads = config.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .max(2)
    });
    fuse_config.n_threads = Some(threads);
    fuse_config.clone_fd = true;
    // A big WRITE's data spliced from /dev/fuse into the upper file
    // (src/daemon/splice.rs), as READ replies are spliced the other way.
    let transport = Transport {
        io_uring: config.io_uring,
        splice_write: config.splice_write && crate::daemon::splice::enabled(),
    };
    fuse_config.splice_writes = transport.splice_write;

    let fuse_fs = FuseFs::new(fs.clone(), transport);
    let notifier = fuse_fs.notifier_slot();
    let session = Session::new(fuse_fs, &config.mountpoint, &fuse_config)
        .map_err(|e| format!("cannot mount {}: {e}", config.mountpoint.display()))?;
    let _ = notifier.set(session.notifier());

    raise_readahead(&config.mountpoint);

    // The mount is live (the kernel handshake is done): now detach, so that
    // `unionfs mount` returns exactly when the mount can be used.
    if !config.foreground {
        match sys::fork() {
            Ok(sys::Forked::Parent) => sys::exit_now(0),
            Ok(sys::Forked::Child) => {}
            Err(e) => return Err(format!("cannot fork the daemon: {e}")),
        }
        crate::daemon::logging::detached(config.log_file.is_some());
        if let Err(e) = sys::detach_stdio(crate::daemon::logging::file_fd()) {
            error!("detaching: {e}");
        }
    }
    let lowers: Vec<String> = (config.lowers.iter().enumerate())
        .map(|(i, l)| format!("lower {} {}", i + 1, l.display()))
        .collect();
    let upper = match &config.upper {
        Some(u) => format!("upper {}", u.display()),
        None => "no upper (read-only)".to_owned(),
    };
    info!(
        target: "unionfs",
        "mounted {}: {upper}, {}",
        config.mountpoint.display(),
        lowers.join(", ")
    );
    if !config.owners.is_identity() {
        info!("owners mapped: {:?}", config.owners);
    }
    if config.volatile {
        info!("volatile: fsync, fdatasync and fsyncdir are not passed on");
    }

    // SIGTERM/SIGINT unmount; the session then ends by itself.
    sys::block_signals(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
    let mountpoint = config.mountpoint.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = sys::wait_signal(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
            info!("signal {sig}: unmounting {}", mountpoint.display());
            if let Err(e) = unmount_detached(&mountpoint) {
                error!("unmount on signal: {e}");
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;

    let r = session.run();
    match &r {
        Ok(()) => info!(
            target: "unionfs",
            "unmounted {}; read replies: {}; requests through io_uring: {}",
            config.mountpoint.display(),
            crate::daemon::splice::summary(),
            fuser::ring_requests()
        ),
        Err(e) => error!("the FUSE session ended with an error: {e}"),
    }
    // Test hook: linger with the union (and its locks) still held, as a
    // slow exit would, so tests can check that `unionfs umount` waits.
    if let Some(delay) = config.test_hooks.exit_delay {
        std::thread::sleep(delay);
    }
    drop(fs);
    r.map_err(|e| format!("session ended: {e}"))
}

/// How far the kernel may read ahead in a file served through the daemon.
const READ_AHEAD_KB: u32 = 4096;

/// FUSE caps a new mount's read-ahead at 128 KiB (its bdi's default), so a
/// sequential read of a lower file waits for one 128 KiB request at a time.
/// With 4 MiB the kernel keeps several 1 MiB requests in flight (`dd` of a
/// 1 GiB lower file: 0.37 s instead of 0.64 s). Best effort: the knob is in
/// sysfs, writable by root only.
fn raise_readahead(mountpoint: &Path) {
    // From the mount table, not stat(2): nobody serves the mount yet.
    let dev = crate::mountinfo::mounts().ok().and_then(|all| {
        all.into_iter()
            .rev()
            .find(|m| m.fuse && m.point == mountpoint)
            .map(|m| m.dev)
    });
    let Some(dev) = dev else {
        debug!("read-ahead left at the default: mount not found in the mount table");
        return;
    };
    let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    match std::fs::write(&knob, READ_AHEAD_KB.to_string()) {
        Ok(()) => debug!("read-ahead: {READ_AHEAD_KB} KiB ({knob})"),
        Err(e) => debug!("read-ahead left at the default: {knob}: {e}"),
    }
}

/// What the kernel shows for an owner it cannot map (`kind` is "uid" or
/// "gid"), so an unmapped owner looks the same here as in a user namespace.
fn overflow_id(kind: &str) -> u32 {
    std::fs::read_to_string(format!("/proc/sys/kernel/overflow{kind}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(crate::model::idmap::DEFAULT_OVERFLOW)
}

fn kernel_option(o: &str) -> MountOption {
    match o {
        "nodev" => MountOption::NoDev,
        "dev" => MountOption::Dev,
        "nosuid" => MountOption::NoSuid,
        "suid" => MountOption::Suid,
        "noexec" => MountOption::NoExec,
        "exec" => MountOption::Exec,
        "sync" => MountOption::Sync,
        "async" => MountOption::Async,
        "dirsync" => MountOption::DirSync,
        other => MountOption::CUSTOM(other.to_string()),
    }
}

/// Lazily detaches the mount (a signal must not fail because a file is open).
fn unmount_detached(mnt: &Path) -> Result<(), Error> {
    match sys::umount_detach(mnt) {
        Err(e) if e.is(libc::EPERM) => fusermount_unmount(mnt, true),
        other => other,
    }
}

/// `fusermount3 -u [-z] MNT`, for a user that may not call umount(2).
fn fusermount_unmount(mnt: &Path, lazy: bool) -> Result<(), Error> {
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd
        .arg(mnt)
        .output()
        .map_err(|e| Error::from(e).context("running fusermount3"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::errno(libc::EPERM)
            .context(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// True when the mount table lists `mnt` (false when it cannot be read).
fn is_mount_point(mnt: &Path) -> bool {
    crate::mountinfo::mounts().is_ok_and(|ms| ms.iter().any(|m| m.point == mnt))
}

/// How long `unionfs umount` waits for the daemon to let go.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// `mount -o remount,ro MNT` (or `rw`): the kernel then refuses every
/// change with EROFS before it reaches the daemon, which keeps serving.
/// The mount's other flags (nosuid, nodev, noatime, ...) are kept, as
/// remount(2) would otherwise clear them; flags given with it are added.
pub fn remount(r: &Remount) -> Result<(), String> {
    let mnt = &r.mountpoint;
    let fail = |e: Error| format!("cannot remount {}: {e}", mnt.display());
    if !is_mount_point(mnt) {
        return Err(format!(
            "cannot remount {}: not a mount point",
            mnt.display()
        ));
    }
    let fd = sys::open_dir_path(mnt).map_err(fail)?;
    let now = sys::fstatvfs(fd.as_fd()).map_err(fail)?.f_flag;
    drop(fd);
    let mut flags: libc::c_ulong = 0;
    for (st, ms) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
        (libc::ST_SYNCHRONOUS, libc::MS_SYNCHRONOUS),
    ] {
        if now & st != 0 {
            flags |= ms;
        }
    }
    for o in &r.kernel_options {
        match o.as_str() {
            "nosuid" => flags |= libc::MS_NOSUID,
            "suid" => flags &= !libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "dev" => flags &= !libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "exec" => flags &= !libc::MS_NOEXEC,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "async" => flags &= !libc::MS_SYNCHRONOUS,
            "dirsync" => flags |= libc::MS_DIRSYNC,
            _ => {}
        }
    }
    if r.read_only {
        flags |= libc::MS_RDONLY;
    }
    sys::remount(mnt, flags).map_err(fail)?;
    info!(
        "remounted {} {}",
        mnt.display(),
        if r.read_only {
            "read-only"
        } else {
            "read-write"
        }
    );
    Ok(())
}

/// `unionfs umount MNT`: unmounts, refusing (EBUSY) while files are open,
/// and returns once the processes serving the mount have let go of it
/// (the daemon exits and drops its locks a moment after the unmount), so
/// that the same upper can be mounted again at once.
pub fn unmount(mnt: &Path) -> Result<(), String> {
    let conn = fuse_conn::connection_of(mnt);
    let serving = conn.map(fuse_conn::holders).unwrap_or_default();
    let r = match sys::umount(mnt) {
        Err(e) if e.is(libc::EPERM) => fusermount_unmount(mnt, false),
        other => other,
    };
    r.map_err(|e| {
        // umount(2) says EINVAL for a path that is no mount point; say that.
        if e.is(libc::EINVAL) && !is_mount_point(mnt) {
            format!("cannot unmount {}: not a mount point", mnt.display())
        } else {
            format!("cannot unmount {}: {e}", mnt.display())
        }
    })?;
    if conn.is_some() {
        let left = fuse_conn::wait_exited(serving, RELEASE_WAIT);
        if !left.is_empty() {
            // Unmounted all the same: say why a remount may find it busy.
            eprintln!(
                "unionfs: warning: {} unmounted, but process(es) {left:?} that served it \
                 still run after {} s",
                mnt.display(),
                RELEASE_WAIT.as_secs()
            );
        }
    }
    Ok(())
}
