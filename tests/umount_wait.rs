//! `unionfs umount` returns only once the daemon has let go of the mount:
//! its FUSE connection is closed, and the same upper mounts again at once
//! (the daemon's lock on it is gone), with no retry, even when the daemon
//! takes its time to exit.

mod common;

use common::*;
use std::fs;

#[test]
fn umount_returns_after_the_daemon_let_go() {
    if !require_mount_env() {
        return;
    }
    // The daemons of this test (the only one in this binary) linger a
    // while after their session ends, locks held, as a slow exit would.
    std::env::set_var("UNIONFS_TEST_EXIT_DELAY_MS", "200");
    let t = TestDir::new("umount-wait");
    let lower = t.mkdir("lower");
    fs::write(lower.join("f"), b"lower").unwrap();
    let upper = t.mkdir("upper");
    let work = t.join("work");
    let mnt = t.mkdir("mnt");
    let sum = checksum_layers(&[&lower]);
    for round in 0..10 {
        let args = mount_args(Form::Mount, &[&lower], Some(&upper), Some(&work), &mnt, &[]);
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
