//! `unionfs umount` returns only once the daemon has let go of the mount:
//! its FUSE connection is closed, and the same upper mounts again at once
//! (the daemon's lock on it is gone), with no retry, even when the daemon
//! takes its time to exit. A daemon whose mount is gone never unmounts
//! its path again on the way out (something newer may be mounted there).

mod common;

use common::*;
use std::fs;

#[test]
fn umount_returns_after_the_daemon_let_go() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("umount-wait");
    let lower = t.mkdir("lower");
    fs::write(lower.join("f"), b"lower").unwrap();
    let upper = t.mkdir("upper");
    let work = t.join("work");
    let mnt = t.mkdir("mnt");
    let sum = checksum_layers(&[&lower]);
    for round in 0..10 {
        // The daemon lingers a while after its session ends, locks held,
        // as a slow exit would.
        let args = mount_args(
            Form::Mount,
            &[&lower],
            Some(&upper),
            Some(&work),
            &mnt,
            &["-o", "test_exit_delay_ms=200"],
        );
        // No retry: the previous round's daemon must be gone already.
        let m = try_mount_unionfs_args(&args, &mnt)
            .unwrap_or_else(|e| panic!("round {round}: remount right after umount: {e}"));
        fs::write(m.join("f"), format!("round {round}")).unwrap();
        let conn = unionfs::fuse_conn::connection_of(m.path()).expect("a FUSE connection");
        let daemons = unionfs::fuse_conn::holders(conn);
        assert!(!daemons.is_empty(), "no process serves connection {conn}");
        // `unionfs umount`, checking that nothing is left mounted.
        m.umount();
        for pid in &daemons {
            let fds = fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count());
            assert!(
                matches!(fds, Err(_) | Ok(0)),
                "round {round}: daemon {pid} still has {fds:?} fds after umount returned"
            );
        }
        // (Not `holders(conn)` again: the number is free for the next
        // FUSE mount on this machine as soon as ours is gone.)
    }
    assert_eq!(fs::read(upper.join("f")).unwrap(), b"round 9");
    sum.assert_unchanged();
}

/// A daemon whose mount the kernel took away (here: its connection aborted
/// through fusectl; `umount` and a remount at the same path are the same
/// race) must not unmount the path on its way out: whatever is mounted
/// there now is not its own. A tmpfs stacked on the mount stands for the
/// container that was started on the same merged dir in the meantime.
#[test]
fn an_ended_daemon_leaves_a_newer_mount_at_its_path_alone() {
    if !require_mount_env() || !require_commands(&["unshare", "pgrep", "mountpoint"]) {
        return;
    }
    let t = TestDir::new("umount-newer");
    let lower = t.mkdir("lower");
    let upper = t.mkdir("upper");
    let mnt = t.mkdir("mnt");
    let log = t.join("daemon.log");
    let script = format!(
        "set -e; M={m}; L={log}; \
         mountpoint -q /sys/fs/fuse/connections || mount -t fusectl fusectl /sys/fs/fuse/connections; \
         RUST_LOG=warn {bin} mount -l {lo} -u {up} --log-file \"$L\" \"$M\"; \
         pid=$(pgrep -f -- \"--log-file $L\"); \
         conn=$(awk -v m=\"$M\" '$5 == m {{ print $3 }}' /proc/self/mountinfo | cut -d: -f2); \
         mount -t tmpfs newer \"$M\"; touch \"$M/newer\"; \
         echo 1 > /sys/fs/fuse/connections/$conn/abort; \
         for i in $(seq 1 50); do [ -d /proc/$pid ] || break; sleep 0.1; done; \
         [ ! -d /proc/$pid ] && echo DAEMON-GONE; \
         [ -e \"$M/newer\" ] && echo NEWER-KEPT; \
         umount \"$M\" 2>/dev/null || true; umount -l \"$M\" 2>/dev/null || true",
        m = mnt.display(),
        log = log.display(),
        bin = unionfs_bin(),
        lo = lower.display(),
        up = upper.display(),
    );
    let out = run(
        std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(&script),
        std::time::Duration::from_secs(60),
    );
    assert!(out.success(), "{out}");
    assert!(
        out.stdout.contains("DAEMON-GONE"),
        "{out}\n{}",
        log_tail(&log)
    );
    assert!(
        out.stdout.contains("NEWER-KEPT"),
        "the ended daemon unmounted the newer mount at its path: {out}\n{}",
        log_tail(&log)
    );
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("Failed to umount"), "{text}");
}
