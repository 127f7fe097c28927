//! Metadata-only copy-up (`-o metacopy=on`) and data-only lowers (`::`),
//! through real mounts: what the merged view shows (the lower's bytes under
//! the changed metadata), what lands in the upper (an empty file of the
//! data's size carrying `overlay.metacopy`, the bytes only after a write),
//! that the lowers stay untouched, and that kernel overlayfs and unionfs
//! read each other's metacopy layers the same.

mod common;

use common::*;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const L1: &str = "lower1";
const META: &[u8] = b"trusted.overlay.metacopy";
const REDIRECT: &[u8] = b"trusted.overlay.redirect";
/// Big enough to have data blocks, so st_blocks tells data from metadata.
const BIG: usize = 200_000;

/// The view of kernel overlayfs mounted at `kmnt` with `-o data` (for what
/// the harness's mount helper cannot say: data-only lowers), unmounted again.
fn kernel_overlay_view(data: &std::ffi::OsStr, kmnt: &Path) -> Tree {
    let out = run(
        Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(data)
            .arg(kmnt),
        Duration::from_secs(30),
    );
    assert!(out.success(), "kernel overlay mount: {out}");
    let view = snapshot(kmnt);
    lazy_umount(kmnt);
    view
}

struct Setup {
    t: TestDir,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

fn setup(name: &str) -> Setup {
    let t = TestDir::new(name);
    let l1 = Layer::new(L1)
        .tagged("a")
        .tagged("b")
        .tagged("c")
        .tagged("d")
        .tagged("dir/f")
        .file("big", vec![b'x'; BIG])
        .file("empty", b"")
        .tagged("linked")
        .link("linked2", "linked");
    let lower = render_stack(&[l1], t.path(), Format::Kernel).remove(0);
    Setup {
        lower,
        upper: t.mkdir("upper"),
        work: t.mkdir("work"),
        mnt: t.mkdir("mnt"),
        t,
    }
}

impl Setup {
    fn mount(&self, extra: &[&str]) -> Mount {
        mount_unionfs(
            &[&self.lower],
            Some(&self.upper),
            Some(&self.work),
            &self.mnt,
            extra,
        )
    }
}

fn tagged(path: &str) -> Vec<u8> {
    tag(L1, path)
}

/// The upper file `rel` is a metacopy: the xattr, the data's size, no bytes.
fn assert_metacopy(upper: &Path, rel: &str, size: u64) {
    let p = upper.join(rel);
    assert_eq!(
        sys::lgetxattr(&p, META).ok().as_deref(),
        Some(&b""[..]),
        "{rel}: the kernel's empty (v0) metacopy xattr"
    );
    assert_eq!(
        lstat(&p).size(),
        size,
        "{rel}: a metacopy has the data's size"
    );
    assert!(
        read(&p).iter().all(|b| *b == 0),
        "{rel}: a metacopy holds no bytes of the data"
    );
}

fn assert_not_metacopy(upper: &Path, rel: &str) {
    assert!(
        sys::lgetxattr(&upper.join(rel), META).is_err(),
        "{rel}: still a metacopy"
    );
}

#[test]
fn metadata_changes_copy_up_metadata_only_and_a_write_brings_the_bytes() {
    if !require_mount_env() {
        return;
    }
    let s = setup("meta-changes");
    let sum = checksum_layers(&[&s.lower]);
    let m = s.mount(&["-o", "metacopy=on"]);

    std::os::unix::fs::lchown(m.join("a"), Some(1234), Some(5678)).unwrap();
    fs::set_permissions(m.join("b"), fs::Permissions::from_mode(0o600)).unwrap();
    sys::utimens_nofollow(&m.join("c"), Some(((1_000_000, 0), (2_000_000, 0)))).unwrap();
    sys::lsetxattr(&m.join("d"), b"user.note", b"kept").unwrap();
    fs::set_permissions(m.join("big"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(m.join("dir/f"), fs::Permissions::from_mode(0o604)).unwrap();
    fs::set_permissions(m.join("empty"), fs::Permissions::from_mode(0o606)).unwrap();

    // The view: the lower's bytes, size and blocks under the new metadata.
    for rel in ["a", "b", "c", "d", "dir/f", "big"] {
        let low = lstat(&s.lower.join(rel));
        let seen = lstat(&m.join(rel));
        assert_eq!(read(&m.join(rel)), read(&s.lower.join(rel)), "{rel}: bytes");
        assert_eq!(seen.size(), low.size(), "{rel}: size");
        assert_eq!(seen.blocks(), low.blocks(), "{rel}: blocks are the data's");
        assert_metacopy(&s.upper, rel, low.size());
    }
    assert!(lstat(&m.join("big")).blocks() > 0);
    let a = lstat(&m.join("a"));
    assert_eq!((a.uid(), a.gid()), (1234, 5678));
    assert_eq!(lstat(&m.join("b")).mode() & 0o7777, 0o600);
    assert_eq!(lstat(&m.join("c")).mtime(), 2_000_000);
    assert_eq!(sys::lgetxattr(&m.join("d"), b"user.note").unwrap(), b"kept");
    // The metadata is the upper file's own.
    let ua = lstat(&s.upper.join("a"));
    assert_eq!((ua.uid(), ua.gid()), (1234, 5678));
    assert_eq!(lstat(&s.upper.join("b")).mode() & 0o7777, 0o600);
    assert_eq!(lstat(&s.upper.join("c")).mtime(), 2_000_000);
    assert_eq!(
        sys::lgetxattr(&s.upper.join("d"), b"user.note").unwrap(),
        b"kept"
    );
    assert_eq!(lstat(&s.upper.join("dir/f")).mode() & 0o7777, 0o604);
    // An empty file has no bytes to leave below: a plain copy.
    assert_not_metacopy(&s.upper, "empty");
    assert_eq!(lstat(&m.join("empty")).mode() & 0o7777, 0o606);
    // Private xattrs never show.
    let names = sys::llistxattr(&m.join("a")).unwrap();
    assert!(
        names.iter().all(|n| !n.starts_with(b"trusted.")),
        "{names:?}"
    );

    // Reads through mmap are the data's too.
    if have_command("xfs_io") {
        let out = run(
            Command::new("xfs_io")
                .args(["-r", "-c", "mmap -r 0 4k", "-c", "mread -v 0 8"])
                .arg(m.join("big")),
            Duration::from_secs(10),
        );
        assert!(out.success(), "{out}");
        assert!(out.stdout.contains("78 78 78 78"), "mmap read: {out}");
    }

    // A write brings the bytes up into the same file, metadata kept.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.join("a"))
        .unwrap();
    f.write_all(b"more\n").unwrap();
    drop(f);
    let mut want = tagged("a");
    want.extend_from_slice(b"more\n");
    assert_eq!(read(&m.join("a")), want);
    assert_eq!(read(&s.upper.join("a")), want);
    assert_not_metacopy(&s.upper, "a");
    let ua2 = lstat(&s.upper.join("a"));
    assert_eq!((ua2.ino(), ua2.uid(), ua2.gid()), (ua.ino(), 1234, 5678));
    // Truncate to some size copies the bytes, then cuts.
    sys::truncate(&m.join("big"), 10).unwrap();
    assert_eq!(read(&m.join("big")), vec![b'x'; 10]);
    assert_not_metacopy(&s.upper, "big");
    assert_eq!(lstat(&s.upper.join("big")).mode() & 0o7777, 0o640);
    // O_TRUNC copies none.
    fs::write(m.join("b"), b"new\n").unwrap();
    assert_eq!(read(&m.join("b")), b"new\n");
    assert_eq!(read(&s.upper.join("b")), b"new\n");
    assert_not_metacopy(&s.upper, "b");
    m.umount();

    // The upper reads the same without the option: metacopies are read
    // from any layer.
    let m = s.mount(&[]);
    assert_eq!(read(&m.join("a")), want);
    assert_eq!(read(&m.join("c")), tagged("c"));
    assert_eq!(lstat(&m.join("c")).mtime(), 2_000_000);
    assert_eq!(read(&m.join("dir/f")), tagged("dir/f"));
    assert_eq!(lstat(&m.join("dir/f")).mode() & 0o7777, 0o604);
    // ... and a write without the option still brings the bytes up.
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("c"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    let mut c = tagged("c");
    c.push(b'+');
    assert_eq!(read(&m.join("c")), c);
    assert_not_metacopy(&s.upper, "c");
    m.umount();
    sum.assert_unchanged();
}

#[test]
fn rename_and_link_of_a_metacopy_record_where_its_data_is() {
    if !require_mount_env() {
        return;
    }
    let s = setup("meta-rename");
    let sum = checksum_layers(&[&s.lower]);
    let m = s.mount(&["-o", "metacopy=on"]);
    fs::create_dir(m.join("new")).unwrap();
    // A lower file renamed: a metacopy with an absolute redirect.
    fs::rename(m.join("a"), m.join("new/a2")).unwrap();
    // One already a metacopy, renamed within its dir.
    fs::set_permissions(m.join("b"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(m.join("b"), m.join("b2")).unwrap();
    // A hard link made through the mount.
    fs::hard_link(m.join("dir/f"), m.join("new/f-link")).unwrap();

    let check = |m: &Mount| {
        assert_eq!(read(&m.join("new/a2")), tagged("a"));
        assert_eq!(read(&m.join("b2")), tagged("b"));
        assert_eq!(lstat(&m.join("b2")).mode() & 0o7777, 0o600);
        assert_eq!(read(&m.join("new/f-link")), tagged("dir/f"));
        assert_eq!(read(&m.join("dir/f")), tagged("dir/f"));
        assert_eq!(
            lstat(&m.join("new/f-link")).ino(),
            lstat(&m.join("dir/f")).ino()
        );
        assert_eq!(lstat(&m.join("dir/f")).nlink(), 2);
        for gone in ["a", "b"] {
            assert!(fs::symlink_metadata(m.join(gone)).is_err(), "{gone} shows");
        }
    };
    check(&m);
    m.umount();
    let u = &s.upper;
    assert_metacopy(u, "new/a2", tagged("a").len() as u64);
    assert_eq!(sys::lgetxattr(&u.join("new/a2"), REDIRECT).unwrap(), b"/a");
    assert_eq!(sys::lgetxattr(&u.join("b2"), REDIRECT).unwrap(), b"/b");
    assert_eq!(
        sys::lgetxattr(&u.join("dir/f"), REDIRECT).unwrap(),
        b"/dir/f"
    );
    assert_eq!(
        lstat(&u.join("dir/f")).ino(),
        lstat(&u.join("new/f-link")).ino(),
        "one upper inode for both names"
    );
    // A remount reads it all back, with or without the option.
    for extra in [&["-o", "metacopy=on"][..], &[]] {
        let m = s.mount(extra);
        check(&m);
        m.umount();
    }
    // The bytes come up once for both names of the link.
    let m = s.mount(&["-o", "metacopy=on"]);
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("new/f-link"))
        .unwrap()
        .write_all(b"!")
        .unwrap();
    let mut f = tagged("dir/f");
    f.push(b'!');
    assert_eq!(read(&m.join("dir/f")), f);
    assert_eq!(read(&u.join("dir/f")), f);
    assert_not_metacopy(u, "new/f-link");
    m.umount();
    sum.assert_unchanged();
}

#[test]
fn hard_links_of_a_lower_file_stay_one_inode() {
    if !require_mount_env() {
        return;
    }
    let s = setup("meta-links");
    let sum = checksum_layers(&[&s.lower]);
    let m = s.mount(&["-o", "metacopy=on"]);
    fs::set_permissions(m.join("linked"), fs::Permissions::from_mode(0o600)).unwrap();
    let (one, two) = (lstat(&m.join("linked")), lstat(&m.join("linked2")));
    assert_eq!((one.ino(), one.nlink()), (two.ino(), 2));
    assert_eq!(
        two.mode() & 0o7777,
        0o600,
        "the other name shares the metadata"
    );
    assert_eq!(read(&m.join("linked2")), tagged("linked"));
    assert_metacopy(&s.upper, "linked", tagged("linked").len() as u64);
    // A write through the other name: both show it.
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("linked2"))
        .unwrap()
        .write_all(b"2")
        .unwrap();
    let mut want = tagged("linked");
    want.push(b'2');
    assert_eq!(read(&m.join("linked")), want);
    assert_eq!(read(&m.join("linked2")), want);
    assert_eq!(
        lstat(&m.join("linked")).ino(),
        lstat(&m.join("linked2")).ino()
    );
    m.umount();
    assert_not_metacopy(&s.upper, "linked");
    let m = s.mount(&[]);
    assert_eq!(read(&m.join("linked")), want);
    assert_eq!(read(&m.join("linked2")), want);
    m.umount();
    sum.assert_unchanged();
}

/// Kernel overlayfs's upper after metadata changes, renames and a move
/// with `metacopy=on`; then the same view under unionfs.
#[test]
fn a_kernel_metacopy_upper_reads_the_same_under_unionfs() {
    if !require_mount_env() || !require_kernel_overlay() {
        return;
    }
    let s = setup("meta-from-kernel");
    let sum = checksum_layers(&[&s.lower]);
    let kmnt = s.t.mkdir("kmnt");
    let opts = ["metacopy=on", "redirect_dir=on"];
    let k = mount_kernel_overlay(&[&s.lower], Some(&s.upper), Some(&s.work), &kmnt, &opts);
    changes(&k);
    let kernel_view = snapshot(k.path());
    k.umount();
    // What the kernel wrote: metacopies with redirects, no bytes.
    assert_metacopy(&s.upper, "c", tagged("c").len() as u64);
    assert_metacopy(&s.upper, "sub/moved", tagged("a").len() as u64);
    assert_eq!(
        sys::lgetxattr(&s.upper.join("sub/moved"), REDIRECT).unwrap(),
        b"/a"
    );

    let work = s.t.mkdir("uwork");
    for extra in [&["-o", "metacopy=on"][..], &[]] {
        let m = mount_unionfs(&[&s.lower], Some(&s.upper), Some(&work), &s.mnt, extra);
        snapshot(m.path()).assert_same(&kernel_view, Fields::VIEW, "unionfs vs kernel");
        let low = lstat(&s.lower.join("big"));
        assert_eq!(
            lstat(&m.join("big2")).blocks(),
            low.blocks(),
            "blocks of the data"
        );
        m.umount();
    }
    sum.assert_unchanged();
}

/// The same changes made by unionfs with `-o metacopy=on`: kernel
/// overlayfs shows the same view of our upper.
#[test]
fn our_metacopy_upper_reads_the_same_under_kernel_overlayfs() {
    if !require_mount_env() || !require_kernel_overlay() {
        return;
    }
    let s = setup("meta-to-kernel");
    let sum = checksum_layers(&[&s.lower]);
    let m = s.mount(&["-o", "metacopy=on"]);
    changes(&m);
    let ours = snapshot(m.path());
    m.umount();
    assert_metacopy(&s.upper, "c", tagged("c").len() as u64);
    assert_metacopy(&s.upper, "sub/moved", tagged("a").len() as u64);

    let kmnt = s.t.mkdir("kmnt");
    let kwork = s.t.mkdir("kwork");
    let opts = ["metacopy=on", "redirect_dir=on"];
    let k = mount_kernel_overlay(&[&s.lower], Some(&s.upper), Some(&kwork), &kmnt, &opts);
    let kernel_view = snapshot(k.path());
    // The kernel takes the bytes from below, and brings them up on a write.
    fs::OpenOptions::new()
        .append(true)
        .open(k.join("c"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    k.umount();
    ours.assert_same(&kernel_view, Fields::VIEW, "kernel vs unionfs");
    let mut c = tagged("c");
    c.push(b'+');
    assert_eq!(read(&s.upper.join("c")), c);
    sum.assert_unchanged();
}

/// Metadata changes, a rename into a new dir and one in place, on either
/// mount.
fn changes(m: &Mount) {
    std::os::unix::fs::lchown(m.join("c"), Some(1234), Some(5678)).unwrap();
    fs::set_permissions(m.join("d"), fs::Permissions::from_mode(0o600)).unwrap();
    sys::lsetxattr(&m.join("dir/f"), b"user.note", b"x").unwrap();
    fs::set_permissions(m.join("big"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::rename(m.join("big"), m.join("big2")).unwrap();
    fs::create_dir(m.join("sub")).unwrap();
    fs::rename(m.join("a"), m.join("sub/moved")).unwrap();
}

/// Layers in the kernel's format built by hand: a normal lower whose
/// metacopy files redirect into data-only lowers. unionfs shows what
/// kernel overlayfs shows, never a name only a data-only lower has, and a
/// write copies the bytes up from the data-only lower.
#[test]
fn data_only_lowers_are_reached_only_through_metacopy_redirects() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("meta-data-only");
    let l1 = t.mkdir("l1");
    let d1 = t.mkdir("d1");
    let d2 = t.mkdir("d2");
    t.write("d1/blobs/ab", b"data of f in d1\n");
    t.write("d1/only-in-data", b"never shown\n");
    t.write("d2/blobs/cd", b"data of g in d2\n");
    t.write("l1/plain", b"plain in l1\n");
    let meta = |name: &str, target: &str, size: usize| {
        let p = t.write(format!("l1/{name}"), b"");
        sys::truncate(&p, size as i64).unwrap();
        sys::lsetxattr(&p, META, b"").unwrap();
        sys::lsetxattr(&p, REDIRECT, target.as_bytes()).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    };
    meta("f", "/blobs/ab", 16);
    meta("g", "/blobs/cd", 16);
    let sum = checksum_layers(&[&l1, &d1, &d2]);
    let list = |a: &Path, b: &Path, c: &Path| {
        let mut s = lowers_arg(&[a]);
        for p in [b, c] {
            s.push("::");
            s.push(p);
        }
        s
    };
    let mnt = t.mkdir("mnt");
    let lowers = list(&l1, &d1, &d2);
    let ours = {
        let mut args = vec!["mount".into(), "-l".into(), lowers.clone()];
        args.push(mnt.clone().into());
        let m = try_mount_unionfs_args(&args, &mnt).unwrap();
        assert_eq!(read(&m.join("f")), b"data of f in d1\n");
        assert_eq!(read(&m.join("g")), b"data of g in d2\n");
        assert_eq!(lstat(&m.join("f")).mode() & 0o7777, 0o640);
        for hidden in ["only-in-data", "blobs"] {
            assert!(
                fs::symlink_metadata(m.join(hidden)).is_err(),
                "{hidden} shows"
            );
        }
        assert_eq!(list_str(m.path()), ["f", "g", "plain"]);
        let view = snapshot(m.path());
        m.umount();
        view
    };
    if require_kernel_overlay() {
        let kmnt = t.mkdir("kmnt");
        let mut data = std::ffi::OsString::from("lowerdir=");
        data.push(&lowers);
        data.push(",metacopy=on,redirect_dir=on");
        let kernel_view = kernel_overlay_view(&data, &kmnt);
        ours.assert_same(
            &kernel_view,
            Fields::VIEW,
            "unionfs vs kernel, data-only lowers",
        );
    }

    // With an upper: a chmod keeps the bytes below, a write brings them up
    // from the data-only lower.
    let upper = t.mkdir("upper");
    let work = t.mkdir("work");
    let mut args: Vec<std::ffi::OsString> = vec!["mount".into(), "-l".into(), lowers];
    for a in [
        "-u".as_ref(),
        upper.as_os_str(),
        "-w".as_ref(),
        work.as_os_str(),
    ] {
        args.push(a.into());
    }
    args.extend(["-o".into(), "metacopy=on".into(), mnt.clone().into()]);
    let m = try_mount_unionfs_args(&args, &mnt).unwrap();
    fs::set_permissions(m.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(read(&m.join("f")), b"data of f in d1\n");
    assert_metacopy(&upper, "f", 16);
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("g"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    assert_eq!(read(&m.join("g")), b"data of g in d2\n+");
    assert_eq!(read(&upper.join("g")), b"data of g in d2\n+");
    assert_not_metacopy(&upper, "g");
    assert_eq!(lstat(&m.join("g")).mode() & 0o7777, 0o640);
    // Renamed, it finds its bytes through the chain: its own redirect to
    // the metacopy of l1, whose redirect leads into d1.
    fs::create_dir(m.join("sub")).unwrap();
    fs::rename(m.join("f"), m.join("sub/f2")).unwrap();
    assert_eq!(read(&m.join("sub/f2")), b"data of f in d1\n");
    assert_eq!(
        sys::lgetxattr(&upper.join("sub/f2"), REDIRECT).unwrap(),
        b"/f"
    );
    let ours = snapshot(m.path());
    m.umount();
    if require_kernel_overlay() {
        // Kernel overlayfs reads the upper over the same layers alike.
        let kmnt = t.mkdir("kmnt2");
        let kwork = t.mkdir("kwork2");
        let mut data = std::ffi::OsString::from("lowerdir=");
        data.push(list(&l1, &d1, &d2));
        data.push(",upperdir=");
        data.push(&upper);
        data.push(",workdir=");
        data.push(&kwork);
        data.push(",metacopy=on,redirect_dir=on");
        let kernel_view = kernel_overlay_view(&data, &kmnt);
        ours.assert_same(
            &kernel_view,
            Fields::VIEW,
            "our upper over data-only lowers, kernel",
        );
    }
    sum.assert_unchanged();
}

/// As an unprivileged user through fusermount3 (no `trusted.` xattrs): the
/// metacopy is marked `user.overlay.metacopy`, and reads back; a lower's
/// `user.overlay.` metacopy leads into a data-only lower.
#[test]
fn unprivileged_user_makes_user_xattr_metacopies() {
    if !require_mount_env() || !require_commands(&["unshare", "setpriv", "fusermount3"]) {
        return;
    }
    const USER: u32 = 1000;
    let s = setup("meta-rootless");
    for dir in [&s.lower, &s.upper, &s.work, &s.mnt] {
        run_ok(
            Command::new("chown")
                .args(["-R", &format!("{USER}:{USER}")])
                .arg(dir),
            "chown",
        );
    }
    // A normal lower whose metacopy leads, by user.overlay.* xattrs (the
    // kernel's userxattr names), into a data-only lower.
    let meta_l = s.t.mkdir("meta-l");
    let data_l = s.t.mkdir("data-l");
    s.t.write("data-l/blobs/x", b"bytes in the data-only lower\n");
    s.t.write("data-l/only-here", b"never shown\n");
    let f = s.t.write("meta-l/f", b"");
    sys::truncate(&f, 29).unwrap();
    sys::lsetxattr(&f, b"user.overlay.metacopy", b"").unwrap();
    sys::lsetxattr(&f, b"user.overlay.redirect", b"/blobs/x").unwrap();
    let mnt2 = s.t.mkdir("mnt2");
    for dir in [&meta_l, &data_l, &mnt2] {
        run_ok(
            Command::new("chown")
                .args(["-R", &format!("{USER}:{USER}")])
                .arg(dir),
            "chown",
        );
    }
    let sum = checksum_layers(&[&s.lower, &meta_l, &data_l]);
    let fuse = fuse_node(s.t.path());
    let m = s.mnt.display();
    let user_script = format!(
        "set -e; B={bin}; \"$B\" mount -l {l} -u {u} -w {w} -o metacopy=on {m}; \
         chmod 600 {m}/a; mv {m}/b {m}/b2; \
         echo \"A $(stat -c %a {m}/a) $(cat {m}/a)\"; echo \"B2 $(cat {m}/b2)\"; \
         \"$B\" umount {m}; \"$B\" mount -l {l} -u {u} -w {w} {m}; \
         echo \"AGAIN $(cat {m}/a) $(cat {m}/b2)\"; echo more >> {m}/a; \
         echo \"WROTE $(cat {m}/a | tr '\\n' ' ')\"; \"$B\" umount {m}; \
         \"$B\" mount -l {ml}::{dl} {m2}; \
         echo \"DATA-ONLY $(cat {m2}/f) LIST $(ls {m2} | tr '\\n' ' ')\"; \"$B\" umount {m2}",
        bin = unionfs_bin(),
        l = s.lower.display(),
        u = s.upper.display(),
        w = s.work.display(),
        ml = meta_l.display(),
        dl = data_l.display(),
        m2 = mnt2.display(),
    );
    let out = as_user_through_fusermount(&fuse, &s.mnt, USER, &user_script);
    assert!(out.success(), "{out}");
    let a = String::from_utf8(tagged("a")).unwrap();
    let b = String::from_utf8(tagged("b")).unwrap();
    let (a, b) = (a.trim_end(), b.trim_end());
    assert!(out.stdout.contains(&format!("A 600 {a}")), "{out}");
    assert!(out.stdout.contains(&format!("B2 {b}")), "{out}");
    assert!(out.stdout.contains(&format!("AGAIN {a} {b}")), "{out}");
    assert!(out.stdout.contains(&format!("WROTE {a} more")), "{out}");
    assert!(
        out.stdout
            .contains("DATA-ONLY bytes in the data-only lower LIST f \n"),
        "{out}"
    );
    // Where it landed: user.overlay.* marks, never trusted.*.
    let b2 = s.upper.join("b2");
    assert_eq!(sys::lgetxattr(&b2, b"user.overlay.metacopy").unwrap(), b"");
    assert_eq!(
        sys::lgetxattr(&b2, b"user.overlay.redirect").unwrap(),
        b"/b"
    );
    assert!(read(&b2).iter().all(|c| *c == 0));
    assert!(sys::lgetxattr(&b2, META).is_err());
    let ua = s.upper.join("a");
    assert!(sys::lgetxattr(&ua, b"user.overlay.metacopy").is_err());
    assert_eq!(read(&ua), format!("{a}\nmore\n").into_bytes());
    sum.assert_unchanged();
}

/// The offline tools read a metacopy's bytes from its data file: a squash
/// and a committed layer hold the lower's bytes under the new metadata, and
/// `check` finds nothing wrong with a metacopy upper.
#[test]
fn check_squash_and_commit_take_a_metacopy_for_what_it_is() {
    if !require_mount_env() || !require_commands(&["tar"]) {
        return;
    }
    let s = setup("meta-tools");
    let m = s.mount(&["-o", "metacopy=on"]);
    fs::set_permissions(m.join("a"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(m.join("b"), m.join("b2")).unwrap();
    fs::set_permissions(m.join("linked"), fs::Permissions::from_mode(0o604)).unwrap();
    m.umount();
    assert_metacopy(&s.upper, "a", tagged("a").len() as u64);
    let (l, u) = (s.lower.as_os_str(), s.upper.as_os_str());

    // `check` takes a metacopy's redirect for what it is, not a stray
    // marker on a file (`--repair` removed it, losing the bytes).
    let out = unionfs([
        "check".as_ref(),
        "--repair".as_ref(),
        "-l".as_ref(),
        l,
        "-u".as_ref(),
        u,
        "-w".as_ref(),
        s.work.as_os_str(),
    ]);
    assert!(out.success(), "{out}");
    assert!(!out.stdout.contains("repaired"), "{out}");
    assert_eq!(
        sys::lgetxattr(&s.upper.join("b2"), REDIRECT).unwrap(),
        b"/b"
    );

    // `which` says where the bytes are.
    let out = unionfs([
        "which".as_ref(),
        "-l".as_ref(),
        l,
        "-u".as_ref(),
        u,
        "b2".as_ref(),
    ]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("served by  upper"), "{out}");
    assert!(out.stdout.contains("bytes of   lower 1"), "{out}");
    assert!(out.stdout.contains("/b (a metacopy"), "{out}");

    let out_dir = s.t.join("squashed");
    let out = unionfs([
        "squash".as_ref(),
        "-l".as_ref(),
        l,
        "-u".as_ref(),
        u,
        "-o".as_ref(),
        out_dir.as_os_str(),
    ]);
    assert!(out.success(), "{out}");
    let tar_file = s.t.join("layer.tar");
    let out = unionfs([
        "commit".as_ref(),
        "-l".as_ref(),
        l,
        "-u".as_ref(),
        u,
        "-o".as_ref(),
        tar_file.as_os_str(),
    ]);
    assert!(out.success(), "{out}");
    let unpacked = s.t.mkdir("unpacked");
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&tar_file)
            .arg("-C")
            .arg(&unpacked),
        "tar -x",
    );
    for dir in [&out_dir, &unpacked] {
        assert_eq!(read(&dir.join("a")), tagged("a"), "{}", dir.display());
        assert_eq!(lstat(&dir.join("a")).mode() & 0o7777, 0o600);
        assert_eq!(read(&dir.join("b2")), tagged("b"), "{}", dir.display());
        assert_eq!(
            read(&dir.join("linked")),
            tagged("linked"),
            "{}",
            dir.display()
        );
    }
    assert_eq!(read(&out_dir.join("linked2")), tagged("linked"));
}

/// The daemon killed while a metacopy's bytes are being copied in: the
/// upper file is still a metacopy (its xattr goes last), so the next mount
/// shows the lower's bytes under the kept metadata, never a partial file,
/// and a write then completes the copy.
#[test]
fn a_crash_while_the_bytes_come_up_leaves_the_metacopy() {
    if !require_mount_env() {
        return;
    }
    let s = setup("meta-crash");
    let big = s.lower.join("big8");
    let want: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(&big, &want).unwrap();
    let sum = checksum_layers(&[&s.lower]);
    let log = s.t.join("daemon.log");
    // 1 MiB at a time, 300 ms apart: the copy takes over 2 s.
    let started = Daemon::start(
        &[&s.lower],
        &s.upper,
        &s.work,
        &s.mnt,
        &["-o", "metacopy=on,test_copy_delay_ms=300"],
        &log,
        "UNIONFS_TEST_LOG",
    );
    let mut d = started.unwrap();
    let shown = s.mnt.join("big8");
    fs::set_permissions(&shown, fs::Permissions::from_mode(0o600)).unwrap();
    assert_metacopy(&s.upper, "big8", want.len() as u64);
    let writer = std::thread::spawn(move || fs::OpenOptions::new().append(true).open(shown));
    std::thread::sleep(Duration::from_millis(800));
    d.kill();
    assert!(
        writer.join().unwrap().is_err(),
        "the open outlived the daemon"
    );
    d.detach();
    // Midway: some bytes are in, the xattr still says they are not.
    let partial = read(&s.upper.join("big8"));
    assert!(
        partial[..1 << 20] == want[..1 << 20],
        "the copy had begun when the daemon died"
    );
    assert_eq!(
        partial.len(),
        want.len(),
        "the size stays the data's throughout (kernel overlayfs shows it)"
    );
    assert_eq!(
        sys::lgetxattr(&s.upper.join("big8"), META).ok().as_deref(),
        Some(&b""[..]),
        "the metacopy xattr goes only once every byte is in"
    );

    let m = s.mount(&["-o", "metacopy=on"]);
    assert!(
        read(&m.join("big8")) == want,
        "the lower's bytes, not a partial copy"
    );
    assert_eq!(lstat(&m.join("big8")).mode() & 0o7777, 0o600);
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("big8"))
        .unwrap()
        .write_all(b"end")
        .unwrap();
    let mut whole = want.clone();
    whole.extend_from_slice(b"end");
    assert!(read(&m.join("big8")) == whole);
    m.umount();
    assert_not_metacopy(&s.upper, "big8");
    assert!(read(&s.upper.join("big8")) == whole);
    sum.assert_unchanged();
}
