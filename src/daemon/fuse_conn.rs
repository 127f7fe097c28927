//! Which processes serve a FUSE mount, so `unionfs umount` can return only
//! once the daemon has let go (its locks on the upper and work dir with it),
//! and `umount && mount` of the same upper never finds it still locked.
//!
//! umount(2) returns as soon as the mount is detached; the daemon learns of
//! it on its next read of /dev/fuse and exits a moment later. The kernel
//! names the connection of each open /dev/fuse in its fdinfo
//! (`fuse_connection: N`, N being the minor of the mount's st_dev), so the
//! processes holding it are found before unmounting, and their exit is
//! waited for after.
//! Only /proc is read; a process we may not look into (another user's) is
//! not ours to wait for.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The FUSE connection number of the filesystem mounted at `mnt`: the minor
/// of its st_dev (FUSE mounts have anonymous devices, major 0). `None` when
/// it cannot be stat'ed (a dead daemon answers ENOTCONN: nothing to wait for).
pub fn connection_of(mnt: &Path) -> Option<u64> {
    let dev = fs::metadata(mnt).ok()?.dev();
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    (major == 0).then_some(minor)
}

/// Reads `fuse_connection:` from the text of an fdinfo file.
fn fdinfo_connection(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("fuse_connection:"))
        .and_then(|v| v.trim().parse().ok())
}

/// True when process `pid` holds an open /dev/fuse of connection `conn`.
fn holds(pid: u32, conn: u64) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|t| t == Path::new("/dev/fuse"))
            && fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .ok()
            .and_then(|t| fdinfo_connection(&t))
                == Some(conn)
    })
}

/// The processes (other than this one) holding connection `conn` open.
pub fn holders(conn: u64) -> Vec<u32> {
    let me = std::process::id();
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && holds(pid, conn))
        .collect()
}

/// True while process `pid` runs (not exited, not a zombie waiting to be
/// reaped: a zombie holds no files and no locks).
fn running(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `PID (COMM) STATE ...`; COMM may hold spaces and parentheses.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// Waits until every one of `pids` (the processes that served the mount)
/// has exited, for at most `limit`; returns those still running. Exit, not
/// just closing /dev/fuse: the daemon drops its FUSE channel before the
/// union (and its locks on the upper and work dir) is released.
pub fn wait_exited(mut pids: Vec<u32>, limit: Duration) -> Vec<u32> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        pids.retain(|&pid| running(pid));
        if pids.is_empty() || start.elapsed() >= limit {
            return pids;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_connection_from_fdinfo() {
        let text = "pos:\t0\nflags:\t02100002\nmnt_id:\t24\nino:\t90\nfuse_connection:\t39\n";
        assert_eq!(fdinfo_connection(text), Some(39));
        assert_eq!(fdinfo_connection("pos:\t0\nflags:\t02\n"), None);
    }

    #[test]
    fn no_holders_of_a_connection_nobody_has() {
        assert!(holders(u64::MAX).is_empty());
    }

    #[test]
    fn waits_for_exit_only_as_long_as_allowed() {
        let me = std::process::id();
        assert!(running(me));
        let start = Instant::now();
        assert_eq!(wait_exited(vec![me], Duration::from_millis(100)), vec![me]);
        assert!(start.elapsed() >= Duration::from_millis(100));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Exited but not reaped yet (a zombie) counts as gone.
        assert!(wait_exited(vec![pid], Duration::from_secs(5)).is_empty());
        child.wait().unwrap();
    }
}
