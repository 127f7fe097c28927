//! File data through the mount (docs/design.md §3, §5): writes at offsets,
//! appends and truncates; fallocate, fsync, fdatasync and fsync of a dir;
//! SEEK_DATA / SEEK_HOLE on a sparse file before and after copy-up; flock and
//! POSIX locks between two file descriptors.

mod common;

use common::fixture_fx::*;
use common::*;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::process::Command;
use std::time::Duration;

#[test]
fn writes_at_offsets_appends_and_truncates() {
    if !require_mount_env() {
        return;
    }
    let (l1, l2) = with_trio(
        Layer::new(L1),
        Layer::new(L2),
        &["w", "ap", "tg", "ts", "ft"],
    );
    let fx = Fx::new("write", &[l1, l2], OVERLAY);
    let mut c = Checks::default();
    for (kind, rel, body) in fx.trio(&mut c, "w") {
        let mut want = body.clone();
        want[5..8].copy_from_slice(b"XYZ");
        want.resize(100, 0);
        want.extend_from_slice(b"END");
        let r = OpenOptions::new()
            .write(true)
            .open(fx.m(&rel))
            .and_then(|f| {
                f.write_all_at(b"XYZ", 5)?;
                f.write_all_at(b"END", 100)
            });
        if c.ok(format!("pwrite {rel} ({kind})"), r).is_some() {
            c.r(fx.view_file(&rel, &want));
            c.r(fx.upper_file(&rel, &want));
        }
    }
    for (kind, rel, mut body) in fx.trio(&mut c, "ap") {
        if c.ok(
            format!("O_APPEND {rel} ({kind})"),
            append(&fx.m(&rel), b"+tail\n"),
        )
        .is_some()
        {
            body.extend_from_slice(b"+tail\n");
            c.r(fx.view_file(&rel, &body));
            c.r(fx.upper_file(&rel, &body));
        }
    }
    // truncate(2) by path: grow.
    for (kind, rel, mut body) in fx.trio(&mut c, "tg") {
        if c.ok(
            format!("truncate {rel} ({kind}) to 100"),
            sys::truncate(&fx.m(&rel), 100),
        )
        .is_some()
        {
            body.resize(100, 0);
            c.r(fx.view_file(&rel, &body));
            c.r(fx.upper_file(&rel, &body));
            c.eq(
                format!("view {rel}: st_size"),
                lst(&fx.m(&rel)).map(|m| m.len()).ok(),
                Some(100),
            );
        }
    }
    // ftruncate(2) through an open fd: shrink.
    for (kind, rel, mut body) in fx.trio(&mut c, "ts") {
        let r = OpenOptions::new()
            .write(true)
            .open(fx.m(&rel))
            .and_then(|f| f.set_len(3));
        if c.ok(format!("ftruncate {rel} ({kind}) to 3"), r).is_some() {
            body.truncate(3);
            c.r(fx.view_file(&rel, &body));
            c.r(fx.upper_file(&rel, &body));
        }
    }
    // ftruncate on an O_RDWR fd, then writing on through the same fd.
    for (kind, rel, mut body) in fx.trio(&mut c, "ft") {
        let r = OpenOptions::new()
            .read(true)
            .write(true)
            .open(fx.m(&rel))
            .and_then(|f| {
                f.set_len(4)?;
                f.write_all_at(b"++", 4)
            });
        if c.ok(format!("ftruncate+write {rel} ({kind})"), r).is_some() {
            body.truncate(4);
            body.extend_from_slice(b"++");
            c.r(fx.view_file(&rel, &body));
            c.r(fx.upper_file(&rel, &body));
        }
    }
    fx.finish(c, "write/append/truncate");
}

#[test]
fn fallocate_fsync_fdatasync_and_fsyncdir() {
    if !require_mount_env() {
        return;
    }
    let (l1, l2) = with_trio(
        Layer::new(L1).tagged("ro_lo").tagged("sd_lo/f"),
        Layer::new(L2),
        &["fa", "sy"],
    );
    let fx = Fx::new("fallocate-fsync", &[l1, l2], OVERLAY);
    let mut c = Checks::default();
    const MIB: i64 = 1 << 20;
    for (kind, rel, body) in fx.trio(&mut c, "fa") {
        let Some(f) = c.ok(
            format!("open {rel} ({kind}) O_RDWR"),
            OpenOptions::new().read(true).write(true).open(fx.m(&rel)),
        ) else {
            continue;
        };
        // Allocate 1 MiB: the size grows, the bytes stay.
        if c.ok(
            format!("fallocate {rel} 0..1MiB"),
            sys::fallocate(&f, 0, 0, MIB),
        )
        .is_some()
        {
            let mut want = body.clone();
            want.resize(MIB as usize, 0);
            c.r(fx.view_file(&rel, &want));
            c.r(fx.upper_file(&rel, &want));
            c.t(
                lst(&fx.u(&rel)).is_ok_and(|m| m.blocks() * 512 >= MIB as u64),
                || {
                    format!(
                        "upper {rel}: fallocate did not allocate 1 MiB: {:?}",
                        lst(&fx.u(&rel)).map(|m| m.blocks())
                    )
                },
            );
        }
        // KEEP_SIZE beyond EOF: size unchanged, blocks allocated.
        if c.ok(
            format!("fallocate KEEP_SIZE {rel}"),
            sys::fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, MIB, MIB),
        )
        .is_some()
        {
            c.eq(
                format!("upper {rel}: size after KEEP_SIZE"),
                lst(&fx.u(&rel)).map(|m| m.len()).ok(),
                Some(MIB as u64),
            );
            c.t(
                lst(&fx.u(&rel)).is_ok_and(|m| m.blocks() * 512 >= 2 * MIB as u64),
                || format!("upper {rel}: KEEP_SIZE allocated nothing"),
            );
        }
        // Punch the first 4 KiB: zeros there.
        if c.ok(
            format!("fallocate PUNCH_HOLE {rel}"),
            sys::fallocate(
                &f,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                4096,
            ),
        )
        .is_some()
        {
            let mut buf = vec![1u8; 64];
            c.ok(format!("pread {rel}"), f.read_exact_at(&mut buf, 0));
            c.eq(format!("view {rel}: punched bytes"), buf, vec![0u8; 64]);
            let up = rd(&fx.u(&rel)).unwrap_or_default();
            c.t(
                up.len() == MIB as usize && up[..4096].iter().all(|&b| b == 0),
                || format!("upper {rel}: punched range not zero"),
            );
        }
    }
    // fsync / fdatasync on writable fds of each kind.
    for (kind, rel, mut body) in fx.trio(&mut c, "sy") {
        let r = OpenOptions::new()
            .append(true)
            .open(fx.m(&rel))
            .and_then(|mut f| {
                f.write_all(b"synced\n")?;
                f.sync_data()?;
                f.write_all(b"again\n")?;
                f.sync_all()
            });
        if c.ok(format!("write+fdatasync+fsync {rel} ({kind})"), r)
            .is_some()
        {
            body.extend_from_slice(b"synced\nagain\n");
            c.r(fx.upper_file(&rel, &body));
        }
    }
    // fsync of a read-only fd of a lower file copies nothing up.
    c.ok(
        "fsync+fdatasync O_RDONLY lower file",
        File::open(fx.m("ro_lo")).and_then(|f| {
            f.sync_all()?;
            f.sync_data()
        }),
    );
    c.r(fx.upper_absent("ro_lo"));
    // fsyncdir: the root (upper), a lower-only dir, an upper-only dir.
    c.ok("mkdir sd_up", fs::create_dir(fx.m("sd_up")));
    for d in ["", "sd_lo", "sd_up"] {
        c.ok(
            format!("fsyncdir {d:?}"),
            File::open(fx.m(d)).and_then(|f| {
                f.sync_all()?;
                f.sync_data()
            }),
        );
    }
    c.r(fx.upper_absent("sd_lo"));
    fx.finish(c, "fallocate/fsync/fsyncdir");
}

/// The (data, hole) map of a file by SEEK_DATA/SEEK_HOLE from each offset.
/// (offset, SEEK_DATA result, SEEK_HOLE result); errors as errno.
type SeekRow = (i64, Result<i64, i32>, Result<i64, i32>);

fn seek_map(f: &File, offsets: &[i64]) -> Vec<SeekRow> {
    offsets
        .iter()
        .map(|&o| {
            let e = |r: io::Result<i64>| r.map_err(|e| e.raw_os_error().unwrap_or(-1));
            (
                o,
                e(sys::lseek(f, o, libc::SEEK_DATA)),
                e(sys::lseek(f, o, libc::SEEK_HOLE)),
            )
        })
        .collect()
}

#[test]
fn lseek_data_and_hole_on_a_sparse_file_before_and_after_copy_up() {
    if !require_mount_env() {
        return;
    }
    const MIB: u64 = 1 << 20;
    let fx = Fx::with(
        "lseek",
        &[Layer::new(L1).dir("d"), Layer::new(L2)],
        OVERLAY,
        |lowers| {
            let f = File::create(lowers[0].join("sp")).expect("create sparse");
            f.set_len(8 * MIB).expect("set_len");
            f.write_all_at(&vec![b'a'; 64 * 1024], MIB).expect("write");
            f.write_all_at(&vec![b'b'; 4096], 5 * MIB).expect("write");
        },
    );
    let mut c = Checks::default();
    let offs: Vec<i64> = [
        0,
        MIB,
        MIB + 100,
        2 * MIB,
        5 * MIB,
        5 * MIB + 4096,
        6 * MIB,
        8 * MIB - 1,
        8 * MIB,
    ]
    .iter()
    .map(|&o| o as i64)
    .collect();
    let reference = seek_map(&File::open(fx.l(0, "sp")).expect("open lower"), &offs);
    c.t(reference[0].1 == Ok(MIB as i64), || {
        format!("fixture: lower sp is not sparse here: {reference:?}")
    });
    match File::open(fx.m("sp")) {
        Ok(f) => c.eq(
            "SEEK_DATA/SEEK_HOLE through the mount (lower file)",
            seek_map(&f, &offs),
            reference.clone(),
        ),
        Err(e) => c.fail(format!("open sp: {e}")),
    }
    c.r(fx.upper_absent("sp"));
    // After a copy-up by a write inside the data, holes are still holes.
    c.ok("write into sp", write_at(&fx.m("sp"), MIB + 10, b"W"));
    match File::open(fx.u("sp")) {
        Ok(f) => c.eq(
            "SEEK_DATA/SEEK_HOLE of the upper copy",
            seek_map(&f, &offs),
            reference.clone(),
        ),
        Err(e) => c.fail(format!("open upper sp: {e}")),
    }
    match File::open(fx.m("sp")) {
        Ok(f) => c.eq(
            "SEEK_DATA/SEEK_HOLE through the mount (copied up)",
            seek_map(&f, &offs),
            reference,
        ),
        Err(e) => c.fail(format!("open sp: {e}")),
    }
    fx.finish(c, "lseek SEEK_DATA/SEEK_HOLE");
}

#[test]
fn flock_and_posix_locks_between_two_fds() {
    if !require_mount_env() {
        return;
    }
    let fx = Fx::new(
        "locks",
        &[Layer::new(L1).tagged("fl").tagged("pl"), Layer::new(L2)],
        OVERLAY,
    );
    let mut c = Checks::default();
    // flock(2) between two read-only fds of a lower file (no copy-up).
    if let (Some(a), Some(b)) = (
        c.ok("open fl #1", File::open(fx.m("fl"))),
        c.ok("open fl #2", File::open(fx.m("fl"))),
    ) {
        c.ok(
            "flock #1 LOCK_EX",
            sys::flock(&a, libc::LOCK_EX | libc::LOCK_NB),
        );
        c.errno(
            "flock #2 LOCK_SH while #1 holds LOCK_EX",
            sys::flock(&b, libc::LOCK_SH | libc::LOCK_NB),
            libc::EWOULDBLOCK,
        );
        let other = run(
            Command::new("flock")
                .args(["-n", "-E", "42"])
                .arg(fx.m("fl"))
                .arg("true"),
            Duration::from_secs(10),
        );
        c.eq(
            "flock(1) from another process while held: exit code",
            other.code(),
            Some(42),
        );
        c.ok("flock #1 LOCK_UN", sys::flock(&a, libc::LOCK_UN));
        c.ok(
            "flock #2 LOCK_EX after unlock",
            sys::flock(&b, libc::LOCK_EX | libc::LOCK_NB),
        );
        c.ok("flock #2 LOCK_UN", sys::flock(&b, libc::LOCK_UN));
    }
    c.r(fx.upper_absent("fl"));
    // fcntl locks: OFD locks conflict between two fds of one process; classic
    // POSIX locks between processes.
    let rw = || OpenOptions::new().read(true).write(true).open(fx.m("pl"));
    if let (Some(a), Some(b)) = (c.ok("open pl #1", rw()), c.ok("open pl #2", rw())) {
        c.ok(
            "F_OFD_SETLK #1 write 0..10",
            sys::fcntl_lock(&a, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 10),
        );
        c.errno(
            "F_OFD_SETLK #2 write 5..15 (overlaps)",
            sys::fcntl_lock(&b, libc::F_OFD_SETLK, libc::F_WRLCK, 5, 10),
            libc::EAGAIN,
        );
        c.ok(
            "F_OFD_SETLK #2 read 20..30 (disjoint)",
            sys::fcntl_lock(&b, libc::F_OFD_SETLK, libc::F_RDLCK, 20, 10),
        );
        match sys::fcntl_lock(&b, libc::F_OFD_GETLK, libc::F_WRLCK, 0, 10) {
            Ok(fl) => c.eq(
                "F_OFD_GETLK #2 sees #1's lock",
                i32::from(fl.l_type),
                libc::F_WRLCK,
            ),
            Err(e) => c.fail(format!("F_OFD_GETLK: {e}")),
        }
        c.ok(
            "F_OFD_SETLK #1 unlock",
            sys::fcntl_lock(&a, libc::F_OFD_SETLK, libc::F_UNLCK, 0, 10),
        );
        c.ok(
            "F_OFD_SETLK #2 write 5..15 after unlock",
            sys::fcntl_lock(&b, libc::F_OFD_SETLK, libc::F_WRLCK, 5, 10),
        );
        c.ok(
            "F_OFD_SETLK #2 unlock",
            sys::fcntl_lock(&b, libc::F_OFD_SETLK, libc::F_UNLCK, 0, 0),
        );

        c.ok(
            "F_SETLK (process) write 0..100",
            sys::fcntl_lock(&a, libc::F_SETLK, libc::F_WRLCK, 0, 100),
        );
        match sys::posix_lock_in_child(&fx.m("pl"), 50, 10) {
            Ok(Some(e)) if e == libc::EAGAIN || e == libc::EACCES => {}
            r => c.fail(format!(
                "F_SETLK in a child while the parent holds it: {r:?}, expected EAGAIN"
            )),
        }
        c.ok(
            "F_SETLK unlock",
            sys::fcntl_lock(&a, libc::F_SETLK, libc::F_UNLCK, 0, 0),
        );
        match sys::posix_lock_in_child(&fx.m("pl"), 50, 10) {
            Ok(None) => {}
            r => c.fail(format!(
                "F_SETLK in a child after unlock: {r:?}, expected success"
            )),
        }
    }
    fx.finish(c, "flock/fcntl locks");
}
