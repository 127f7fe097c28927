//! The union semantics driven in-process through `ops`, with no FUSE mount:
//! what a lookup resolves to, what a listing shows, and where each change
//! lands on disk. Needs no /dev/fuse; creating 0/0 whiteouts needs root, so
//! those cases use the OCI format when not root.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use unionfs::layer::LayerStack;
use unionfs::node::ROOT_INO;
use unionfs::ops::{Caller, NewObject, Options, UnionFs};
use unionfs::whiteout::WriteFormat;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A temp dir with `lower1`, `lower2`, `upper` and `work`, removed on drop.
struct Fixture {
    root: PathBuf,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let root = std::env::temp_dir().join(format!(
            "unionfs-ops-{}-{}-{name}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        for d in ["lower1", "lower2", "upper"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        Fixture { root }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn put(&self, rel: &str, content: &str) {
        let p = self.p(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    fn union(&self, format: WriteFormat) -> UnionFs {
        let layers = LayerStack::open(
            Some(&self.p("upper")),
            &[self.p("lower1"), self.p("lower2")],
        )
        .unwrap();
        UnionFs::new(
            layers,
            Some(&self.p("work")),
            Options {
                read_only: false,
                format,
            },
        )
        .unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn names(fs: &UnionFs, dir: u64) -> Vec<String> {
    let (fh, _) = fs.opendir(dir).unwrap();
    let mut out: Vec<String> = Vec::new();
    fs.readdir(fh, 0, true, |_, e| {
        out.push(e.name.to_string_lossy().into_owned());
        false
    })
    .unwrap();
    out.retain(|n| n != "." && n != "..");
    fs.releasedir(fh);
    out.sort();
    out
}

fn read_all(fs: &UnionFs, ino: u64) -> String {
    let fh = fs.open(ino, libc::O_RDONLY).unwrap();
    let mut buf = Vec::new();
    let data = fs.read(fh, 0, 1 << 20, &mut buf).unwrap();
    let text = String::from_utf8(data.to_vec()).unwrap();
    fs.release(fh);
    text
}

fn me() -> Caller {
    Caller {
        uid: my_uid(),
        gid: 0,
        umask: 0,
    }
}

fn my_uid() -> u32 {
    fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)
}

fn format_for_env() -> WriteFormat {
    if my_uid() == 0 {
        WriteFormat::Overlay
    } else {
        WriteFormat::Oci
    }
}

fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        out.push(e.unwrap().file_name().to_string_lossy().into_owned());
    }
    out.sort();
    out
}

#[test]
fn lookup_takes_the_top_layer_and_merges_directories() {
    let f = Fixture::new("lookup");
    f.put("lower1/a", "lower1");
    f.put("lower2/a", "lower2");
    f.put("lower1/d/x", "lower1");
    f.put("lower2/d/y", "lower2");
    let u = f.union(format_for_env());
    let a = u.lookup(ROOT_INO, OsStr::new("a")).unwrap();
    assert_eq!(read_all(&u, a.ino), "lower1");
    let d = u.lookup(ROOT_INO, OsStr::new("d")).unwrap();
    assert_eq!(names(&u, d.ino), ["x", "y"]);
    // A merged directory reports one link, as kernel overlayfs does.
    assert_eq!(d.st.st_nlink, 1);
    assert_eq!(names(&u, ROOT_INO), ["a", "d"]);
}

#[test]
fn oci_whiteouts_and_opaque_markers_hide_lower_names() {
    let f = Fixture::new("oci");
    f.put("lower1/.wh.gone", "");
    f.put("lower2/gone", "lower2");
    f.put("lower1/d/.wh..wh..opq", "");
    f.put("lower1/d/kept", "lower1");
    f.put("lower2/d/hidden", "lower2");
    let u = f.union(WriteFormat::Oci);
    assert!(u.lookup(ROOT_INO, OsStr::new("gone")).is_err());
    assert!(u.lookup(ROOT_INO, OsStr::new(".wh.gone")).is_err());
    let d = u.lookup(ROOT_INO, OsStr::new("d")).unwrap();
    assert_eq!(names(&u, d.ino), ["kept"]);
    assert_eq!(names(&u, ROOT_INO), ["d"]);
}

#[test]
fn write_copies_up_and_leaves_the_lower_alone() {
    let f = Fixture::new("copyup");
    f.put("lower2/dir/file", "lower2 bytes");
    let u = f.union(format_for_env());
    let dir = u.lookup(ROOT_INO, OsStr::new("dir")).unwrap();
    let file = u.lookup(dir.ino, OsStr::new("file")).unwrap();
    let fh = u.open(file.ino, libc::O_WRONLY).unwrap();
    u.write(fh, 0, b"UPPER").unwrap();
    u.release(fh);
    assert_eq!(read_all(&u, file.ino), "UPPER2 bytes");
    assert_eq!(
        fs::read_to_string(f.p("upper/dir/file")).unwrap(),
        "UPPER2 bytes"
    );
    assert_eq!(
        fs::read_to_string(f.p("lower2/dir/file")).unwrap(),
        "lower2 bytes"
    );
    // The number survives the copy-up.
    assert_eq!(u.getattr(file.ino, None).unwrap().ino, file.ino);
    // Nothing is left in the work dir's temporaries.
    assert!(tree(&f.p("work/tmp")).is_empty());
}

#[test]
fn unlink_of_a_lower_file_leaves_a_whiteout_and_create_replaces_it() {
    let f = Fixture::new("unlink");
    f.put("lower1/f", "lower1");
    let u = f.union(WriteFormat::Oci);
    u.lookup(ROOT_INO, OsStr::new("f")).unwrap();
    u.remove(ROOT_INO, OsStr::new("f"), false).unwrap();
    assert!(u.lookup(ROOT_INO, OsStr::new("f")).is_err());
    assert_eq!(tree(&f.p("upper")), [".wh.f"]);
    assert_eq!(fs::read_to_string(f.p("lower1/f")).unwrap(), "lower1");

    let what = NewObject::File {
        mode: libc::S_IFREG | 0o644,
        flags: libc::O_WRONLY,
    };
    let (attr, fh) = u.create(me(), ROOT_INO, OsStr::new("f"), what).unwrap();
    let fh = fh.unwrap();
    u.write(fh, 0, b"new").unwrap();
    u.release(fh);
    assert_eq!(read_all(&u, attr.ino), "new");
    assert_eq!(tree(&f.p("upper")), ["f"]);
}

#[test]
fn rmdir_needs_an_empty_merged_view_and_mkdir_over_a_whiteout_is_opaque() {
    let f = Fixture::new("rmdir");
    f.put("lower2/d/x", "lower2");
    let u = f.union(WriteFormat::Oci);
    let d = u.lookup(ROOT_INO, OsStr::new("d")).unwrap();
    let err = u.remove(ROOT_INO, OsStr::new("d"), true).unwrap_err();
    assert!(err.is(libc::ENOTEMPTY));
    u.lookup(d.ino, OsStr::new("x")).unwrap();
    u.remove(d.ino, OsStr::new("x"), false).unwrap();
    u.remove(ROOT_INO, OsStr::new("d"), true).unwrap();
    assert_eq!(tree(&f.p("upper")), [".wh.d"]);

    let (d2, _) = u
        .create(
            me(),
            ROOT_INO,
            OsStr::new("d"),
            NewObject::Dir { mode: 0o755 },
        )
        .unwrap();
    assert!(
        names(&u, d2.ino).is_empty(),
        "the lower's x must stay hidden"
    );
    assert_eq!(tree(&f.p("upper/d")), [".wh..wh..opq"]);
}

#[test]
fn forged_whiteouts_are_refused() {
    let f = Fixture::new("forge");
    let u = f.union(WriteFormat::Oci);
    let what = NewObject::File {
        mode: libc::S_IFREG | 0o644,
        flags: libc::O_WRONLY,
    };
    let err = u
        .create(me(), ROOT_INO, OsStr::new(".wh.x"), what)
        .unwrap_err();
    assert!(err.is(libc::EPERM));
    let dev = NewObject::Special {
        mode: libc::S_IFCHR | 0o600,
        rdev: 0,
    };
    assert!(u
        .create(me(), ROOT_INO, OsStr::new("c"), dev)
        .unwrap_err()
        .is(libc::EPERM));
    let err = u
        .setxattr(
            ROOT_INO,
            OsStr::new("user.overlay.opaque"),
            b"y",
            0,
            &|_| true,
        )
        .unwrap_err();
    assert!(err.is(libc::EPERM));
    assert!(tree(&f.p("upper")).is_empty());
}

#[test]
fn directory_rename_moves_the_whole_lower_tree() {
    let f = Fixture::new("dirrename");
    f.put("lower1/src/a", "lower1");
    f.put("lower2/src/sub/b", "lower2");
    let u = f.union(WriteFormat::Oci);
    u.lookup(ROOT_INO, OsStr::new("src")).unwrap();
    u.rename(ROOT_INO, OsStr::new("src"), ROOT_INO, OsStr::new("dst"), 0)
        .unwrap();
    assert!(u.lookup(ROOT_INO, OsStr::new("src")).is_err());
    let dst = u.lookup(ROOT_INO, OsStr::new("dst")).unwrap();
    assert_eq!(names(&u, dst.ino), ["a", "sub"]);
    let sub = u.lookup(dst.ino, OsStr::new("sub")).unwrap();
    let b = u.lookup(sub.ino, OsStr::new("b")).unwrap();
    assert_eq!(read_all(&u, b.ino), "lower2");
    assert_eq!(tree(&f.p("upper")), [".wh.src", "dst"]);
    assert_eq!(tree(&f.p("upper/dst")), [".wh..wh..opq", "a", "sub"]);
    assert_eq!(
        fs::read_to_string(f.p("lower2/src/sub/b")).unwrap(),
        "lower2"
    );
}

#[test]
fn a_second_union_on_the_same_upper_is_refused() {
    let f = Fixture::new("lock");
    let _first = f.union(WriteFormat::Oci);
    let layers = LayerStack::open(Some(&f.p("upper")), &[f.p("lower1"), f.p("lower2")]).unwrap();
    let err = UnionFs::new(
        layers,
        Some(&f.p("other-work")),
        Options {
            read_only: false,
            format: WriteFormat::Oci,
        },
    )
    .err()
    .expect("second union must fail");
    assert!(err.to_string().contains("already used"), "{err}");
}
