//! `-o volatile` through a real mount: fsync, fdatasync and fsyncdir reach
//! the daemon and return success, but the daemon makes no sync call (seen
//! with strace on the daemon), while a normal mount does.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The pid of the daemon serving `mnt` (its command line names `mnt`).
fn daemon_pid(mnt: &Path) -> Option<u32> {
    let want = mnt.as_os_str().as_encoded_bytes();
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        let is_ours = args.first().is_some_and(|a| a.ends_with(b"unionfs"));
        if is_ours && args.contains(&want) {
            return Some(pid);
        }
    }
    None
}

/// Starts strace on every thread of `pid`, writing the sync calls to `out`,
/// and waits until every thread is traced. The caller stops and reaps it.
#[allow(clippy::zombie_processes)] // returned to the caller, who waits
fn trace_syncs(pid: u32, out: &Path) -> Child {
    let child = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=fsync,fdatasync,syncfs,sync_file_range",
        ])
        .arg("-o")
        .arg(out)
        .arg("-p")
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run strace");
    let start = Instant::now();
    loop {
        let traced = fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| {
                d.flatten().all(|t| {
                    fs::read_to_string(t.path().join("status"))
                        .map(|s| {
                            s.lines()
                                .any(|l| l.starts_with("TracerPid:") && !l.ends_with("\t0"))
                        })
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false);
        if traced {
            return child;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            panic!("strace did not attach to {pid}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Mounts, syncs a new file (fsync and fdatasync) and its directory through
/// the mount, and returns the sync calls the daemon made.
fn syncs_made(t: &TestDir, name: &str, extra: &[&str]) -> String {
    let lower = t.mkdir(format!("{name}-lower"));
    fs::write(lower.join("f"), b"lower").unwrap();
    let upper = t.mkdir(format!("{name}-upper"));
    let work = t.join(format!("{name}-work"));
    let mnt = t.mkdir(format!("{name}-mnt"));
    let sum = checksum_layers(&[&lower]);
    let m = mount_unionfs(&[&lower], Some(&upper), Some(&work), &mnt, extra);
    let pid = daemon_pid(m.path()).expect("daemon pid");
    let log = t.join(format!("{name}.strace"));
    let mut strace = trace_syncs(pid, &log);
    fs::create_dir(m.join("d")).unwrap();
    fs::write(m.join("d/new"), b"data").unwrap();
    let file = m.join("d/new");
    let dir = m.join("d");
    let out = run(Command::new("sync").arg(&file), Duration::from_secs(20));
    assert!(out.success(), "sync FILE: {out}");
    let out = run(
        Command::new("sync").arg("-d").arg(&file),
        Duration::from_secs(20),
    );
    assert!(out.success(), "sync -d FILE: {out}");
    let out = run(Command::new("sync").arg(&dir), Duration::from_secs(20));
    assert!(out.success(), "sync DIR: {out}");
    // SIGINT detaches strace, which then writes out what it saw.
    let _ = Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status();
    let _ = strace.wait();
    assert_eq!(fs::read(upper.join("d/new")).unwrap(), b"data");
    m.umount();
    sum.assert_unchanged();
    // An strace older than the kernel prints calls it has no name for
    // (`syscall_0x1d1`, listxattrat) whatever the filter: keep the syncs.
    fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("sync"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn volatile_makes_syncs_no_ops() {
    if !require_mount_env() {
        return;
    }
    if Command::new("strace").arg("-V").output().is_err() {
        skip_or_fail("strace is not installed (scripts/deps.sh installs it)");
        return;
    }
    let t = TestDir::new("volatile");
    let normal = syncs_made(&t, "normal", &[]);
    assert!(
        normal.contains("fsync(") && normal.contains("fdatasync("),
        "a normal mount passes syncs on; strace saw:\n{normal}"
    );
    let volatile = syncs_made(&t, "volatile", &["-o", "volatile"]);
    assert!(
        volatile.trim().is_empty(),
        "a volatile mount made sync calls:\n{volatile}"
    );
}
