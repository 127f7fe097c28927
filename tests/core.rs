//! The core's shape, through real mounts: any depth a plain filesystem
//! allows works (nodes know their place, not a path), and no request waits
//! for a slow change elsewhere in the mount (no mount-wide lock).

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Levels of the deep trees; with names of 200 bytes, 24 levels make
/// paths of about 4.8 KB, beyond PATH_MAX (4096).
const LEVELS: usize = 24;

/// Python run in `dir`: goes down LEVELS directories named by `name(i)`
/// (creating them when `make`) by relative chdir, so no path string is ever
/// longer than one name, then runs `body` at the bottom.
fn deep_script(make: bool, body: &str) -> String {
    format!(
        r#"
import os, sys
def name(i): return ('d%02d' % i) + 'x' * 197
for i in range({LEVELS}):
    if {make} and not os.path.exists(name(i)):
        os.mkdir(name(i))
    os.chdir(name(i))
{body}
"#,
        make = if make { "True" } else { "False" }
    )
}

fn python(dir: &Path, script: &str) -> CmdOutput {
    run(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .current_dir(dir),
        Duration::from_secs(60),
    )
}

/// At the bottom of a tree deeper than PATH_MAX: read, copy up, create,
/// write, rename, link, remove, mkdir and rmdir, on a tree that comes from a
/// lower and on one made through the mount (pure upper); then which layer
/// holds what, read on disk the same way.
#[test]
fn a_tree_deeper_than_path_max_works_at_the_bottom() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("deep");
    let (l1, l2, upper, work, mnt) = (
        t.mkdir("l1"),
        t.mkdir("l2"),
        t.mkdir("upper"),
        t.join("work"),
        t.mkdir("mnt"),
    );
    let out = python(
        &l1,
        &deep_script(
            true,
            "open('f', 'w').write('lower f')\nopen('g', 'w').write('lower g')",
        ),
    );
    assert!(out.success(), "building the deep lower: {out}");
    let digest = |dir: &Path| python(dir, DIGEST).stdout;
    let before = digest(&l1);
    let m = mount_unionfs(&[&l1, &l2], Some(&upper), Some(&work), &mnt, &[]);

    let at_bottom = r#"
out = []
out.append(open('f').read())
with open('f', 'a') as fh: fh.write(' + appended')
out.append(open('f').read())
with open('new', 'w') as fh: fh.write('made at the bottom')
os.rename('new', 'new2')
os.link('new2', 'new3')
out.append(str(os.stat('new3').st_nlink))
os.unlink('g') if os.path.exists('g') else None
os.mkdir('sub'); os.rmdir('sub')
out.append(','.join(sorted(os.listdir('.'))))
print('|'.join(out))
"#;
    // The tree from the lower.
    let out = python(&mnt, &deep_script(false, at_bottom));
    assert!(out.success(), "at the bottom of the lower tree: {out}");
    assert_eq!(
        out.stdout.trim(),
        "lower f|lower f + appended|2|f,new2,new3",
        "{out}"
    );
    // A tree made through the mount: the upper only.
    fs::create_dir(mnt.join("up")).expect("mkdir up");
    let out = python(
        &mnt.join("up"),
        &deep_script(
            true,
            &format!("open('f', 'w').write('lower f')\n{at_bottom}"),
        ),
    );
    assert!(out.success(), "at the bottom of the upper tree: {out}");
    assert_eq!(
        out.stdout.trim(),
        "lower f|lower f + appended|2|f,new2,new3",
        "{out}"
    );

    // On disk: the upper holds the copy-up, the new names (one inode) and
    // a whiteout for the removed lower file; the lowers are untouched.
    let on_disk = r#"
import stat
def entry(n):
    try: st = os.lstat(n)
    except FileNotFoundError: return n + ':absent'
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0: return n + ':whiteout'
    if stat.S_ISREG(st.st_mode): return n + ':' + open(n).read() + ':' + str(st.st_nlink)
    return n + ':other'
names = sorted(set(os.listdir('.')) | {'g'})
print(' '.join(entry(n) for n in names if not n.startswith('.wh.')), 'oci-g' if os.path.exists('.wh.g') else '')
"#;
    let out = python(&upper, &deep_script(false, on_disk));
    assert!(out.success(), "reading the deep upper: {out}");
    let got = out.stdout.trim().to_string();
    assert!(
        got.starts_with(
            "f:lower f + appended:1 g:whiteout new2:made at the bottom:2 new3:made at the bottom:2"
        ) || got.starts_with(
            "f:lower f + appended:1 g:absent new2:made at the bottom:2 new3:made at the bottom:2 oci-g"
        ),
        "the deep upper holds: {got}"
    );
    m.umount();
    assert_eq!(digest(&l1), before, "the deep lower changed");
}

/// A digest of a tree of any depth (names, types, sizes, contents), read
/// through directory fds.
const DIGEST: &str = r#"
import os, hashlib, stat
h = hashlib.sha256()
for root, dirs, files, fd in os.fwalk('.'):
    dirs.sort()
    for n in sorted(files):
        st = os.stat(n, dir_fd=fd, follow_symlinks=False)
        h.update(n.encode() + str(st.st_mode).encode() + str(st.st_size).encode())
        if stat.S_ISREG(st.st_mode):
            f = os.open(n, os.O_RDONLY, dir_fd=fd); h.update(os.read(f, 1 << 20)); os.close(f)
print(h.hexdigest())
"#;

/// While a 1 GiB lower file is being copied up (slowed down by the test
/// hook) and a 10k-file lower directory is renamed in the OCI format (a
/// tree copy), lookups, reads, listings, creates and removals in other
/// directories keep completing; everything finishes under a deadline.
#[test]
fn no_request_waits_for_a_slow_copy_up_or_tree_rename() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("nostall");
    let mut l1 = Layer::new("l1");
    for d in 0..100 {
        for f in 0..100 {
            l1 = l1.tagged(format!("a/tree/d{d:02}/f{f:02}"));
        }
    }
    for i in 0..50 {
        l1 = l1.tagged(format!("other/r{i:02}"));
    }
    let dirs = render_stack(&[l1], t.path(), Format::Kernel);
    let big = dirs[0].join("big");
    {
        let mut f = fs::File::create(&big).expect("create big");
        let chunk = vec![0x5au8; 1 << 20];
        for _ in 0..1024 {
            std::io::Write::write_all(&mut f, &chunk).expect("write big");
        }
    }
    let (upper, work, mnt) = (t.mkdir("upper"), t.join("work"), t.mkdir("mnt"));
    let lowers = as_paths(&dirs);
    let sums = checksum_layers(&lowers);
    let m = mount_unionfs(
        &lowers,
        Some(&upper),
        Some(&work),
        &mnt,
        &["--format", "oci", "-o", "test_copy_delay_ms=4"],
    );

    // The kernel holds a renamed entry's parent locked for the whole
    // rename, as with any filesystem: names in other directories are
    // looked up before, so that only requests to this daemon can wait.
    for i in 0..50 {
        fs::symlink_metadata(mnt.join(format!("other/r{i:02}"))).expect("stat other/*");
    }
    let copy_done = AtomicBool::new(false);
    let rename_done = AtomicBool::new(false);
    let done_meanwhile = AtomicUsize::new(0);
    let mut fails: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    std::thread::scope(|s| {
        let copier = s.spawn(|| {
            let r = fs::OpenOptions::new().append(true).open(mnt.join("big"));
            copy_done.store(true, Ordering::SeqCst);
            r.map(|_| ())
                .map_err(|e| format!("open big for append: {e}"))
        });
        let renamer = s.spawn(|| {
            let r = fs::rename(mnt.join("a/tree"), mnt.join("a/tree2"));
            rename_done.store(true, Ordering::SeqCst);
            r.map_err(|e| format!("rename tree: {e}"))
        });
        // Let both slow requests reach the daemon.
        std::thread::sleep(Duration::from_millis(300));
        let mut i = 0;
        while !(copy_done.load(Ordering::SeqCst) && rename_done.load(Ordering::SeqCst))
            && Instant::now() < deadline
        {
            let both_busy =
                !copy_done.load(Ordering::SeqCst) && !rename_done.load(Ordering::SeqCst);
            let r = (|| -> std::io::Result<()> {
                let name = format!("r{:02}", i % 50);
                let want = tag("l1", format!("other/{name}"));
                if fs::read(mnt.join("other").join(&name))? != want {
                    return Err(std::io::Error::other(format!(
                        "other/{name}: wrong content"
                    )));
                }
                fs::symlink_metadata(mnt.join("other").join(&name))?;
                fs::read_dir(mnt.join("other"))?.count();
                let new = mnt.join("other").join(format!("new{i}"));
                fs::write(&new, b"x")?;
                fs::remove_file(&new)?;
                Ok(())
            })();
            match r {
                Ok(()) if both_busy => {
                    done_meanwhile.fetch_add(1, Ordering::SeqCst);
                }
                Ok(()) => {}
                Err(e) => fails.push(format!("meanwhile, round {i}: {e}")),
            }
            i += 1;
        }
        for (what, h) in [("copy-up", copier), ("rename", renamer)] {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => fails.push(e),
                Err(_) => fails.push(format!("{what} thread panicked")),
            }
        }
    });
    if Instant::now() >= deadline {
        fails.push("the slow requests did not finish within 120 s".into());
    }
    let n = done_meanwhile.load(Ordering::SeqCst);
    eprintln!("core: {n} rounds of other requests completed while both slow requests ran");
    if n < 3 {
        fails.push(format!(
            "only {n} rounds of requests in other directories completed while the copy-up \
             and the tree rename were both under way"
        ));
    }
    // Where the bytes are: the whole copy in the upper, the tree moved.
    match fs::symlink_metadata(upper.join("big")) {
        Ok(md) if md.len() == 1 << 30 => {}
        other => fails.push(format!("upper/big after the copy-up: {other:?}")),
    }
    if read(&mnt.join("a/tree2/d42/f42")) != tag("l1", "a/tree/d42/f42") {
        fails.push("a/tree2/d42/f42 does not read as a/tree/d42/f42 did".into());
    }
    if fs::symlink_metadata(mnt.join("a/tree")).is_ok() {
        fails.push("a/tree still shows after the rename".into());
    }
    if fs::symlink_metadata(upper.join("a/.wh.tree"))
        .ok()
        .map(|m| m.size())
        != Some(0)
    {
        fails.push("no OCI whiteout a/.wh.tree in the upper".into());
    }
    m.umount();
    sums.assert_unchanged();
    assert_no_failures("requests during a slow copy-up and tree rename", &fails);
}

/// The daemon remembers that an object has no xattr (so `ls -l`'s
/// `security.selinux` miss costs no system call); an xattr set afterwards,
/// on a lower file (copied up) or an upper one, is seen at once, and its
/// removal too.
#[test]
fn an_xattr_set_after_a_miss_is_seen() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("xattr-miss");
    let dirs = render_stack(&[Layer::new("l1").tagged("f")], t.path(), Format::Kernel);
    let (upper, work, mnt) = (t.mkdir("upper"), t.join("work"), t.mkdir("mnt"));
    let lowers = as_paths(&dirs);
    let sums = checksum_layers(&lowers);
    let m = mount_unionfs(&lowers, Some(&upper), Some(&work), &mnt, &[]);
    fs::write(mnt.join("g"), b"upper g").expect("create g");
    for name in ["f", "g"] {
        let p = mnt.join(name);
        for _ in 0..2 {
            let miss = common::sys::lgetxattr(&p, b"user.k");
            assert_eq!(errno_of(&miss), Some(libc::ENODATA), "{name}: {miss:?}");
            assert!(
                common::sys::llistxattr(&p).expect("list").is_empty(),
                "{name}"
            );
        }
        common::sys::lsetxattr(&p, b"user.k", b"v").expect("setxattr");
        assert_eq!(
            common::sys::lgetxattr(&p, b"user.k").expect("get"),
            b"v",
            "{name}"
        );
        assert_eq!(
            common::sys::llistxattr(&p).expect("list"),
            [b"user.k".to_vec()],
            "{name}"
        );
        common::sys::lremovexattr(&p, b"user.k").expect("removexattr");
        let gone = common::sys::lgetxattr(&p, b"user.k");
        assert_eq!(errno_of(&gone), Some(libc::ENODATA), "{name}: {gone:?}");
    }
    // The lower file was copied up to take the xattr; the lower is untouched.
    assert_eq!(read(&upper.join("f")), tag("l1", "f"));
    m.umount();
    sums.assert_unchanged();
}

/// A big lower file read through the daemon: the mount reads ahead 4 MiB
/// (FUSE's default is 128 KiB, one request at a time) and the bytes are the
/// lower's; then a write open copies it up on a thread of its own (a long
/// request) and the copy holds the lower's bytes plus the append.
#[test]
fn a_big_lower_file_reads_ahead_and_copies_up_whole() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("big-read");
    let (l1, upper, work, mnt) = (
        t.mkdir("l1"),
        t.mkdir("upper"),
        t.join("work"),
        t.mkdir("mnt"),
    );
    let data: Vec<u8> = (0..(8u32 << 20) / 4)
        .flat_map(|i| fnv(&i.to_le_bytes()).to_le_bytes()[..4].to_vec())
        .collect();
    fs::write(l1.join("big"), &data).expect("write lower big");
    let sums = checksum_layers(&[l1.as_path()]);
    let m = mount_unionfs(&[&l1], Some(&upper), Some(&work), &mnt, &[]);
    let info = mount_at(&mnt).expect("mount in the mount table");
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        info.dev_major, info.dev_minor
    );
    if euid() == 0 {
        assert_eq!(
            fs::read_to_string(&knob).map(|s| s.trim().to_string()).ok(),
            Some("4096".to_string()),
            "{knob}"
        );
    }
    assert!(read(&mnt.join("big")) == data, "read of the lower file");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("big"))
        .expect("open big for append");
    std::io::Write::write_all(&mut f, b"tail").expect("append");
    drop(f);
    let mut want = data.clone();
    want.extend_from_slice(b"tail");
    assert!(read(&upper.join("big")) == want, "the upper copy");
    assert!(read(&mnt.join("big")) == want, "the merged view");
    m.umount();
    sums.assert_unchanged();
}

/// The mount table names the filesystem as `mount -t fuse.unionfs` would,
/// in every invocation form (fuse-overlayfs shows `fuse.fuse-overlayfs`):
/// type `fuse.unionfs`, not bare `fuse` (fuser's mount(2) dropped the
/// subtype); container tools and findmnt -t tell the daemon by it.
#[test]
fn the_mount_table_shows_type_fuse_unionfs() {
    if !require_mount_env() {
        return;
    }
    for form in ALL_FORMS {
        let t = TestDir::new("fstype");
        let (l1, upper, work, mnt) = (
            t.mkdir("l1"),
            t.mkdir("upper"),
            t.join("work"),
            t.mkdir("mnt"),
        );
        let m = mount_unionfs_form(form, &[&l1], Some(&upper), Some(&work), &mnt, &[]);
        let info = mount_at(&mnt).expect("mount in the mount table");
        assert_eq!(info.fstype, "fuse.unionfs", "{form:?}: {info:?}");
        m.umount();
    }
}
