//! A write through a shared mapping updates the file's mtime and ctime as
//! `stat` shows them (xfstests generic/080). As root the daemon serves
//! upper files by FUSE passthrough, where page faults reach the layer's
//! file and never the daemon: the attributes the kernel had cached from
//! before the open (kept for a day) must not be what `stat` answers.

mod common;

use common::*;
use std::fs;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Writes `data` at offset 0 through a shared mapping of `path`.
fn mmap_write(path: &std::path::Path, data: &[u8]) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = 4096;
    // SAFETY: a fresh shared mapping of an open file of at least `len`
    // bytes, written within bounds and unmapped before the file closes.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        let bytes = std::slice::from_raw_parts_mut(p.cast::<u8>(), len);
        let _ = std::ptr::read_volatile(&bytes[0]); // mread first, as generic/080
        bytes[..data.len()].copy_from_slice(data);
        assert_eq!(libc::munmap(p, len), 0, "munmap");
    }
}

/// mtime and ctime by statx(2) asking for just those, as `stat -c %Y`
/// does (a wider mask, e.g. std's, can make the kernel ask the daemon
/// afresh for a field it does not keep, which would hide what its cached
/// answer says).
fn times(path: &std::path::Path) -> (i64, u32, i64, u32) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string and a zeroed statx buffer for the call to fill.
    let st = unsafe {
        let mut st: libc::statx = std::mem::zeroed();
        let r = libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            0,
            libc::STATX_MTIME | libc::STATX_CTIME,
            &mut st,
        );
        assert_eq!(r, 0, "statx {}", path.display());
        st
    };
    (
        st.stx_mtime.tv_sec,
        st.stx_mtime.tv_nsec,
        st.stx_ctime.tv_sec,
        st.stx_ctime.tv_nsec,
    )
}

#[test]
fn mmap_write_updates_mtime_and_ctime_seen_through_the_mount() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("mmap-times");
    let lower = t.mkdir("lower");
    fs::write(lower.join("lowerfile"), vec![b'l'; 4096]).unwrap();
    let upper = t.mkdir("upper");
    let work = t.mkdir("work");
    let mnt = t.mkdir("mnt");
    let sums = checksum_layers(&[&lower]);
    let m = mount_unionfs(&[&lower], Some(&upper), Some(&work), &mnt, &[]);
    let mut fails = Vec::new();
    // a file made through the mount, and a lower file (copied up at its
    // first open for writing); a few rounds each, the bug was intermittent
    fs::write(mnt.join("new"), vec![b'n'; 4096]).unwrap();
    for name in ["new", "lowerfile"] {
        for round in 0..4u8 {
            let before = times(&mnt.join(name));
            std::thread::sleep(Duration::from_millis(30));
            if round % 2 == 0 {
                mmap_write(&mnt.join(name), &[b'0' + round; 16]);
            } else {
                // as generic/080 does it, from another process
                let out = run(
                    std::process::Command::new("xfs_io")
                        .args(["-c", "mmap 0 4k", "-c", "mread 0 4k", "-c"])
                        .arg(format!("mwrite -S 0x{:x} 0 16", b'0' + round))
                        .arg(mnt.join(name)),
                    Duration::from_secs(10),
                );
                assert!(out.success(), "{out}");
            }
            let after = times(&mnt.join(name));
            let real = times(&upper.join(name));
            if after == before || after != real {
                fails.push(format!(
                    "{name} round {round}: mtime/ctime before {before:?}, after {after:?}, \
                     the upper file's {real:?}"
                ));
            }
        }
        // the bytes landed in the upper
        assert_eq!(&fs::read(upper.join(name)).unwrap()[..16], &[b'3'; 16]);
    }
    m.umount();
    assert_no_failures("times after mmap writes", &fails);
    sums.assert_unchanged();
}
