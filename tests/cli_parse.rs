//! Command-line parsing: the three invocation forms, option policy, and every
//! validation error, through `unionfs::cli::parse_args` on real temp dirs.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use unionfs::cli::{
    default_work_dir, parse_args, split_layer_list, CliError, Command, MountConfig, WriteFormat,
    MAX_LOWERS,
};

/// A private directory tree under the system temp dir, removed on drop.
struct Scratch {
    root: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let root =
            std::env::temp_dir().join(format!("unionfs-cli-{}-{tag}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).expect("create scratch dir");
        // Expected paths are compared with resolved ones: resolve the root
        // in case the temp dir itself sits behind a symlink.
        let root = fs::canonicalize(&root).expect("resolve scratch dir");
        Scratch { root }
    }

    /// `rel` under the root, not created.
    fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// `rel` under the root, created as a directory.
    fn dir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let path = self.path(rel);
        fs::create_dir_all(&path).expect("create dir");
        path
    }

    /// `rel` under the root, created as a file.
    fn file(&self, rel: impl AsRef<Path>) -> PathBuf {
        let path = self.path(rel);
        fs::write(&path, b"file").expect("create file");
        path
    }

    /// The usual layout: two lowers, an upper, a work dir and a mount point.
    fn layers(&self) -> Layers {
        Layers {
            l1: self.dir("l1"),
            l2: self.dir("l2"),
            upper: self.dir("upper"),
            work: self.dir("work"),
            mnt: self.dir("mnt"),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

struct Layers {
    l1: PathBuf,
    l2: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

impl Layers {
    fn lower_list(&self) -> OsString {
        join(&[self.l1.bytes(), b":", self.l2.bytes()])
    }

    /// `lowerdir=L1:L2,upperdir=U,workdir=W`
    fn data(&self) -> OsString {
        join(&[
            b"lowerdir=".as_ref(),
            self.lower_list().bytes(),
            b",upperdir=",
            self.upper.bytes(),
            b",workdir=",
            self.work.bytes(),
        ])
    }
}

/// Concatenates byte strings (paths may not be UTF-8).
fn join<S: AsRef<[u8]> + ?Sized>(parts: &[&S]) -> OsString {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(part.as_ref());
    }
    OsString::from_vec(out)
}

trait Bytes {
    fn bytes(&self) -> &[u8];
}

impl<T: AsRef<OsStr> + ?Sized> Bytes for T {
    fn bytes(&self) -> &[u8] {
        self.as_ref().as_bytes()
    }
}

fn os(s: impl AsRef<OsStr>) -> OsString {
    s.as_ref().to_owned()
}

/// Prepends argv[0] and parses.
fn parse(args: &[OsString]) -> Result<Command, CliError> {
    let mut argv = vec![OsString::from("unionfs")];
    argv.extend(args.iter().cloned());
    parse_args(argv)
}

fn mount(args: &[OsString]) -> MountConfig {
    match parse(args) {
        Ok(Command::Mount(config)) => config,
        Ok(other) => panic!("expected a mount, got {other:?}"),
        Err(e) => panic!("expected a mount, got error: {}", e.message),
    }
}

/// Parses, expecting an error whose message contains every one of `needles`.
fn fails(args: &[OsString], needles: &[&str]) -> CliError {
    match parse(args) {
        Ok(other) => panic!("expected an error, got {other:?}"),
        Err(e) => {
            assert_ne!(e.exit_code, 0, "{}", e.message);
            assert!(e.message.starts_with("unionfs: "), "{}", e.message);
            assert!(!e.message.contains('\n'), "not one line: {:?}", e.message);
            for needle in needles {
                assert!(
                    e.message.contains(needle),
                    "message {:?} lacks {needle:?}",
                    e.message
                );
            }
            e
        }
    }
}

fn print(args: &[OsString]) -> String {
    match parse(args) {
        Ok(Command::Print(text)) => text,
        Ok(other) => panic!("expected text to print, got {other:?}"),
        Err(e) => panic!("expected text to print, got error: {}", e.message),
    }
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

// ---------------------------------------------------------------------------
// The three forms

#[test]
fn three_forms_give_the_same_config() {
    let s = Scratch::new("forms");
    let l = s.layers();

    let native = mount(&[
        os("mount"),
        os("-l"),
        l.lower_list(),
        os("-u"),
        os(&l.upper),
        os("-w"),
        os(&l.work),
        os(&l.mnt),
    ]);
    assert_eq!(native.lowers, vec![l.l1.clone(), l.l2.clone()]);
    assert_eq!(native.upper.as_deref(), Some(l.upper.as_path()));
    assert_eq!(native.work.as_deref(), Some(l.work.as_path()));
    assert!(!native.work_is_default);
    assert_eq!(native.mountpoint, l.mnt);
    assert!(!native.foreground);
    assert_eq!(native.format, WriteFormat::Auto);
    assert!(!native.read_only);
    assert_eq!(native.log_file, None);
    assert_eq!(native.fsname, "unionfs");
    assert_eq!(native.allow_other, None);
    assert!(native.kernel_options.is_empty());
    assert_eq!(native.threads, None);
    assert!(native.warnings.is_empty());

    let fuse_overlayfs = mount(&[os("-o"), l.data(), os(&l.mnt)]);
    assert_eq!(fuse_overlayfs, native);

    let mount_fuse = mount(&[os("unionfs"), os(&l.mnt), os("-o"), l.data()]);
    assert_eq!(mount_fuse, native);

    let options_first = mount(&[os("-o"), l.data(), os("unionfs"), os(&l.mnt)]);
    assert_eq!(options_first, native);

    // Several -o are concatenated, in either form.
    let split = mount(&[
        os("-o"),
        join(&[b"lowerdir=".as_ref(), l.lower_list().bytes()]),
        os(&l.mnt),
        join(&[
            b"-oupperdir=".as_ref(),
            l.upper.bytes(),
            b",workdir=",
            l.work.bytes(),
        ]),
    ]);
    assert_eq!(split, native);

    // Layers given through -o in the native form too.
    let native_o = mount(&[os("mount"), os(&l.mnt), os("-o"), l.data()]);
    assert_eq!(native_o, native);
}

#[test]
fn flags_are_the_same_in_every_form() {
    let s = Scratch::new("flags");
    let l = s.layers();
    let log = s.path("log/unionfs.log");
    let native = mount(&[
        os("mount"),
        os("-l"),
        l.lower_list(),
        os(&l.mnt),
        os("-f"),
        os("--format"),
        os("oci"),
        os("--log-file"),
        os(&log),
        os("--threads"),
        os("4"),
        os("-o"),
        os("ro,allow_root,nodev,nosuid"),
    ]);
    assert!(native.foreground);
    assert_eq!(native.format, WriteFormat::Oci);
    assert_eq!(native.log_file.as_deref(), Some(log.as_path()));
    assert_eq!(native.threads, Some(4));
    assert!(native.read_only);
    assert_eq!(native.allow_other, Some(true));
    assert_eq!(native.kernel_options, vec!["nodev", "nosuid"]);
    assert_eq!(native.upper, None);
    assert_eq!(native.work, None);

    let data = join(&[
        b"lowerdir=".as_ref(),
        l.lower_list().bytes(),
        b",format=oci,log_file=",
        log.bytes(),
        b",threads=4,ro,allow_other,nodev,nosuid",
    ]);
    assert_eq!(
        mount(&[os("-f"), os("-o"), data.clone(), os(&l.mnt)]),
        native
    );
    assert_eq!(
        mount(&[os("unionfs"), os(&l.mnt), os("-o"), data, os("-f")]),
        native
    );
    let long_flags = join(&[b"--log-file=".as_ref(), log.bytes()]);
    assert_eq!(
        mount(&[
            os("-o"),
            join(&[b"lowerdir=".as_ref(), l.lower_list().bytes()]),
            os("--format=oci"),
            long_flags,
            os("--threads"),
            os("4"),
            os("-oro,allow_root,nodev,nosuid"),
            os("-f"),
            os(&l.mnt),
        ]),
        native
    );
}

#[test]
fn source_becomes_fsname_unless_fsname_is_given() {
    let s = Scratch::new("fsname");
    let l = s.layers();
    let config = mount(&[os("my-union"), os(&l.mnt), os("-o"), l.data()]);
    assert_eq!(config.fsname, "my-union");

    let data = join(&[l.data().bytes(), b",fsname=explicit"]);
    let config = mount(&[os("my-union"), os(&l.mnt), os("-o"), data.clone()]);
    assert_eq!(config.fsname, "explicit");
    let config = mount(&[os("-o"), data, os(&l.mnt)]);
    assert_eq!(config.fsname, "explicit");

    fails(
        &[os("a,b"), os(&l.mnt), os("-o"), l.data()],
        &["source name", "a,b"],
    );
}

#[test]
fn mount_fuse_options_go_to_the_kernel() {
    // mount.fuse3 always appends dev and suid (or passes nodev/nosuid).
    let s = Scratch::new("mountfuse");
    let l = s.layers();
    let data = join(&[
        b"rw,nosuid,nodev,noexec,".as_ref(),
        l.data().bytes(),
        b",dev,suid,nodev",
    ]);
    let config = mount(&[os("unionfs"), os(&l.mnt), os("-o"), data]);
    assert_eq!(
        config.kernel_options,
        vec!["nosuid", "nodev", "noexec", "dev", "suid"]
    );
    assert!(!config.read_only);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn default_work_dir_is_a_hidden_sibling() {
    assert_eq!(
        default_work_dir(Path::new("/data/upper")),
        PathBuf::from("/data/.upper.unionfs-work")
    );
    assert_eq!(
        default_work_dir(Path::new("/")),
        PathBuf::from("/.unionfs-work")
    );

    let s = Scratch::new("defwork");
    let l = s.layers();
    let config = mount(&[
        os("mount"),
        os("-l"),
        l.lower_list(),
        os("-u"),
        os(&l.upper),
        os(&l.mnt),
    ]);
    assert_eq!(
        config.work.as_deref(),
        Some(s.path(".upper.unionfs-work").as_path())
    );
    assert!(config.work_is_default);
    assert!(
        !s.path(".upper.unionfs-work").exists(),
        "parsing created the work dir"
    );

    // The same through -o upperdir= without workdir=.
    let data = join(&[
        b"lowerdir=".as_ref(),
        l.lower_list().bytes(),
        b",upperdir=",
        l.upper.bytes(),
    ]);
    assert_eq!(mount(&[os("-o"), data, os(&l.mnt)]), config);
}

#[test]
fn missing_work_dir_is_resolved_through_its_parent() {
    let s = Scratch::new("newwork");
    let l = s.layers();
    s.dir("real");
    std::os::unix::fs::symlink("real", s.path("link")).expect("symlink");
    let config = mount(&[
        os("mount"),
        os("-l"),
        os(&l.l1),
        os("-u"),
        os(&l.upper),
        os("-w"),
        os(s.path("link/new/work")),
        os(&l.mnt),
    ]);
    assert_eq!(config.work, Some(s.path("real/new/work")));
    assert!(!s.path("real/new").exists(), "parsing created a directory");
}

// ---------------------------------------------------------------------------
// Lower lists

#[test]
fn split_layer_list_honours_escapes() {
    let split = |s: &[u8]| split_layer_list(OsStr::from_bytes(s));
    assert_eq!(split(b"a:b"), vec![os("a"), os("b")]);
    assert_eq!(split(br"a\:b:c"), vec![os("a:b"), os("c")]);
    assert_eq!(split(br"a\\:b"), vec![os(r"a\"), os("b")]);
    assert_eq!(split(br"a\xb"), vec![os(r"a\xb")]);
    assert_eq!(split(br"a\"), vec![os(r"a\")]);
    assert_eq!(split(b"a::b"), vec![os("a"), os(""), os("b")]);
    assert_eq!(split(b"a:"), vec![os("a"), os("")]);
    assert_eq!(
        split(b"\xff:\xfe\\:"),
        vec![
            OsString::from_vec(vec![0xff]),
            OsString::from_vec(b"\xfe:".to_vec())
        ]
    );
}

#[test]
fn escaped_colon_and_comma_in_paths() {
    let s = Scratch::new("escape");
    let l = s.layers();
    let colon = s.dir("with:colon");
    let comma = s.dir("up,per");
    let list = join(&[s.root.bytes(), br"/with\:colon:", l.l2.bytes()]);
    let native = mount(&[
        os("mount"),
        os("-l"),
        list.clone(),
        os("-u"),
        os(&comma),
        os(&l.mnt),
    ]);
    assert_eq!(native.lowers, vec![colon, l.l2.clone()]);
    assert_eq!(native.upper, Some(comma));

    let data = join(&[
        b"lowerdir=".as_ref(),
        list.bytes(),
        b",upperdir=",
        s.root.bytes(),
        br"/up\,per",
    ]);
    assert_eq!(mount(&[os("-o"), data, os(&l.mnt)]), native);
}

#[test]
fn symlinked_lower_is_resolved() {
    // containers/storage passes l/SHORT -> ../ID/diff.
    let s = Scratch::new("symlink");
    let l = s.layers();
    let diff = s.dir("abc/diff");
    s.dir("l");
    std::os::unix::fs::symlink("../abc/diff", s.path("l/SHORT")).expect("symlink");
    let list = join(&[s.path("l/SHORT").bytes(), b":", l.l2.bytes()]);
    let config = mount(&[os("mount"), os("-l"), list, os(&l.mnt)]);
    assert_eq!(config.lowers, vec![diff, l.l2.clone()]);
}

#[test]
fn non_utf8_paths_survive() {
    let s = Scratch::new("bytes");
    let l = s.layers();
    let odd = s.dir(OsStr::from_bytes(b"lower-\xff"));
    let config = mount(&[os("mount"), os("-l"), os(&odd), os(&l.mnt)]);
    assert_eq!(config.lowers, vec![odd]);
}

#[test]
fn lower_list_errors() {
    let s = Scratch::new("lowers");
    let l = s.layers();
    let m = os(&l.mnt);

    fails(&[os("mount"), m.clone()], &["no lower layers"]);
    fails(&[os("-o"), os("ro"), m.clone()], &["no lower layers"]);
    fails(
        &[os("mount"), os("-l"), os(""), m.clone()],
        &["empty lower layer list"],
    );
    fails(
        &[os("-o"), os("lowerdir="), m.clone()],
        &["lowerdir", "needs a value"],
    );

    // `::` starts the data-only lowers: it may not end the list or start it,
    // and a data-only lower comes after its own `::`.
    for bad in [
        join(&[l.l1.bytes(), b"::"]),
        join(&[b"::".as_ref(), l.l2.bytes()]),
        join(&[l.l1.bytes(), b":::", l.l2.bytes()]),
    ] {
        fails(&[os("mount"), os("-l"), bad, m.clone()], &["empty entry"]);
    }
    let list = join(&[l.l1.bytes(), b"::", l.l2.bytes(), b":", l.l1.bytes()]);
    fails(
        &[os("mount"), os("-l"), list, m.clone()],
        &["data-only", "'::'"],
    );

    let missing = s.path("missing");
    let list = join(&[l.l1.bytes(), b":", missing.bytes()]);
    let e = fails(
        &[os("mount"), os("-l"), list, m.clone()],
        &[&shown(&missing), "no such directory"],
    );
    assert_eq!(e.exit_code, 1);

    let file = s.file("file");
    fails(
        &[os("mount"), os("-l"), os(&file), m.clone()],
        &[&shown(&file), "not a directory"],
    );

    let dangling = s.path("dangling");
    std::os::unix::fs::symlink("nowhere", &dangling).expect("symlink");
    fails(
        &[os("mount"), os("-l"), os(&dangling), m.clone()],
        &[&shown(&dangling)],
    );

    let too_many = vec![l.l1.as_os_str(); MAX_LOWERS + 1].join(OsStr::new(":"));
    fails(
        &[os("mount"), os("-l"), too_many, m.clone()],
        &["501", "500"],
    );
    let most = vec![l.l1.as_os_str(); MAX_LOWERS].join(OsStr::new(":"));
    assert_eq!(
        mount(&[os("mount"), os("-l"), most, m.clone()])
            .lowers
            .len(),
        MAX_LOWERS
    );

    let data = join(&[b"lowerdir=".as_ref(), l.l1.bytes()]);
    fails(
        &[
            os("mount"),
            os("-l"),
            os(&l.l2),
            os("-o"),
            data.clone(),
            m.clone(),
        ],
        &["-l", "lowerdir"],
    );
    let twice = join(&[data.bytes(), b",", data.bytes()]);
    fails(&[os("-o"), twice, m], &["lowerdir", "twice"]);
}

// ---------------------------------------------------------------------------
// Layout

/// `mount -l LOWERS -u UPPER [-w WORK] MNT` expecting an error naming `needles`.
fn layout_fails(lowers: &Path, upper: &Path, work: Option<&Path>, mnt: &Path, needles: &[&str]) {
    let mut args = vec![os("mount"), os("-l"), os(lowers), os("-u"), os(upper)];
    if let Some(work) = work {
        args.extend([os("-w"), os(work)]);
    }
    args.push(os(mnt));
    let e = fails(&args, needles);
    assert_eq!(e.exit_code, 1, "{}", e.message);
}

#[test]
fn lower_and_upper_must_not_overlap() {
    let s = Scratch::new("overlap");
    let l = s.layers();
    let inner = s.dir("upper/inner");
    let (u, w, m) = (&l.upper, Some(l.work.as_path()), &l.mnt);

    layout_fails(u, u, w, m, &["lower layer", &shown(u), "same directory"]);
    layout_fails(&inner, u, w, m, &[&shown(&inner), "inside", &shown(u)]);
    layout_fails(
        &l.upper,
        &inner,
        w,
        m,
        &[&shown(u), "contains", &shown(&inner)],
    );
}

#[test]
fn work_must_not_overlap_upper_or_lowers() {
    let s = Scratch::new("workoverlap");
    let l = s.layers();
    let in_upper = s.dir("upper/w");
    let in_lower = s.dir("l1/w");
    let nested_upper = s.dir("work/upper");
    let (u, m) = (&l.upper, &l.mnt);

    layout_fails(
        &l.l1,
        u,
        Some(u),
        m,
        &["work dir", "same directory", "upper"],
    );
    layout_fails(
        &l.l1,
        u,
        Some(&in_upper),
        m,
        &[&shown(&in_upper), "inside", "upper"],
    );
    layout_fails(
        &l.l1,
        &nested_upper,
        Some(&l.work),
        m,
        &["contains", &shown(&nested_upper)],
    );
    layout_fails(
        &l.l1,
        u,
        Some(&l.l1),
        m,
        &["work dir", "same directory", "lower layer"],
    );
    layout_fails(
        &l.l1,
        u,
        Some(&in_lower),
        m,
        &[&shown(&in_lower), "inside", "lower layer"],
    );
    // A work dir that does not exist yet is checked where it will be.
    let later = s.path("upper/not/yet");
    layout_fails(
        &l.l1,
        u,
        Some(&later),
        m,
        &[&shown(&later), "inside", "upper"],
    );

    // A work dir needs an upper.
    let e = fails(
        &[
            os("mount"),
            os("-l"),
            os(&l.l1),
            os("-w"),
            os(&l.work),
            os(m),
        ],
        &["work dir", "upper"],
    );
    assert_eq!(e.exit_code, 2);
    let data = join(&[
        b"lowerdir=".as_ref(),
        l.l1.bytes(),
        b",workdir=",
        l.work.bytes(),
    ]);
    fails(&[os("-o"), data, os(m)], &["work dir", "upper"]);
}

/// A directory on another filesystem than `near`, if this machine has one.
fn other_filesystem(near: &Path) -> Option<PathBuf> {
    let dev = fs::metadata(near).ok()?.dev();
    ["/proc", "/sys", "/dev", "/dev/shm", "/run", "/boot"]
        .iter()
        .map(PathBuf::from)
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_dir() && m.dev() != dev))
}

#[test]
fn work_on_another_filesystem_is_refused() {
    let s = Scratch::new("xdev");
    let l = s.layers();
    let Some(other) = other_filesystem(&s.root) else {
        let msg = "SKIPPED work_on_another_filesystem_is_refused: no second filesystem found";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("{msg}");
        return;
    };
    layout_fails(
        &l.l1,
        &l.upper,
        Some(&other),
        &l.mnt,
        &[&shown(&other), "same filesystem", &shown(&l.upper)],
    );
    // Not existing yet: judged by the nearest existing ancestor.
    let later = other.join("unionfs-cli-test-does-not-exist/work");
    if !later.parent().is_some_and(Path::exists) {
        layout_fails(
            &l.l1,
            &l.upper,
            Some(&later),
            &l.mnt,
            &[&shown(&later), "same filesystem"],
        );
    }
}

#[test]
fn mount_point_errors() {
    let s = Scratch::new("mnt");
    let l = s.layers();
    let lower = os(&l.l1);

    let missing = s.path("missing");
    fails(
        &[os("mount"), os("-l"), lower.clone(), os(&missing)],
        &["mount point", &shown(&missing), "no such directory"],
    );
    let file = s.file("file");
    fails(
        &[os("mount"), os("-l"), lower.clone(), os(&file)],
        &["mount point", &shown(&file), "not a directory"],
    );
    let full = s.dir("full");
    s.file("full/x");
    fails(
        &[os("mount"), os("-l"), lower.clone(), os(&full)],
        &["mount point", &shown(&full), "not empty"],
    );
    fails(&[os("-o"), os("ro")], &["missing mount point"]);
    fails(
        &[os("a"), os("b"), os("c"), os("-o"), os("ro")],
        &["unexpected argument 'c'"],
    );

    // Equal to or inside the upper or the work dir.
    let in_upper = s.dir("upper/m");
    let in_work = s.dir("work/m");
    let empty_upper = s.dir("empty-upper");
    layout_fails(
        &l.l1,
        &empty_upper,
        Some(&l.work),
        &empty_upper,
        &["mount point", "same directory", "upper"],
    );
    layout_fails(
        &l.l1,
        &l.upper,
        Some(&l.work),
        &in_upper,
        &[&shown(&in_upper), "inside", "upper"],
    );
    layout_fails(
        &l.l1,
        &l.upper,
        Some(&l.work),
        &in_work,
        &[&shown(&in_work), "inside", "work"],
    );
    // A work dir still to be created inside the mount point.
    let work_in_mnt = l.mnt.join("work");
    layout_fails(
        &l.l1,
        &l.upper,
        Some(&work_in_mnt),
        &l.mnt,
        &["mount point", "contains", "work"],
    );

    // Inside a lower is fine (the lowers are opened before the mount).
    let in_lower = s.dir("l1/m");
    let config = mount(&[os("mount"), os("-l"), lower, os(&in_lower)]);
    assert_eq!(config.mountpoint, in_lower);
}

// ---------------------------------------------------------------------------
// Option policy

#[test]
fn meaningless_options_warn() {
    let s = Scratch::new("warn");
    let l = s.layers();
    let data = join(&[
        l.data().bytes(),
        b",noatime,relatime,context=\"system_u:object_r:container_file_t:s0:c1,c2\"",
        b",xino=off,index=off,redirect_dir=off,metacopy=off,volatile,fsync=0,userxattr",
        b",static_nlink,noacl,_netdev,nofail,x-systemd.automount,default_permissions,,",
    ]);
    let config = mount(&[os("-o"), data, os(&l.mnt)]);
    let warnings = config.warnings.join("\n");
    for name in [
        "noatime",
        "relatime",
        "context=\"system_u:object_r:container_file_t:s0:c1,c2\"",
        "xino=off",
        "index=off",
        "redirect_dir=off",
        "metacopy=off",
        "userxattr",
        "static_nlink",
        "noacl",
        "_netdev",
        "nofail",
        "x-systemd.automount",
    ] {
        assert!(
            warnings.contains(&format!("'{name}'")),
            "no warning for {name}: {warnings}"
        );
    }
    assert_eq!(config.warnings.len(), 13, "{warnings}");
    // volatile and fsync=0 now mean something.
    assert!(!warnings.contains("volatile") && !warnings.contains("fsync"));
    assert!(config.volatile);
    // The caller adds the "unionfs: warning: " prefix.
    assert!(config.warnings.iter().all(|w| w.starts_with("option '")));
    assert!(!warnings.contains("default_permissions"));

    // -d is fuse-overlayfs's debug switch: foreground, and a warning.
    let config = mount(&[os("-d"), os("-o"), l.data(), os(&l.mnt)]);
    assert!(config.foreground);
    assert_eq!(config.warnings.len(), 1);
}

#[test]
fn semantic_options_are_refused() {
    let s = Scratch::new("refuse");
    let l = s.layers();
    for (option, name) in [("plugins=/x.so", "plugins"), ("ino32_t", "ino32_t")] {
        let data = join(&[l.data().bytes(), b",", option.as_bytes()]);
        let e = fails(&[os("-o"), data, os(&l.mnt)], &[name, "not supported"]);
        assert_eq!(e.exit_code, 2);
    }
}

#[test]
fn io_uring_and_splice_write_are_off_unless_asked() {
    let s = Scratch::new("io-uring");
    let l = s.layers();
    let config = mount(&[os("mount"), os("-l"), l.lower_list(), os(&l.mnt)]);
    assert!(!config.io_uring);
    assert!(!config.splice_write);
    let fields = [
        ("io_uring", (|c| c.io_uring) as fn(&MountConfig) -> bool),
        ("splice_write", |c| c.splice_write),
    ];
    for (name, field) in fields {
        for (value, want) in [("off", false), ("on", true)] {
            let opt = format!("{name}={value}");
            let config = mount(&[
                os("mount"),
                os("-l"),
                l.lower_list(),
                os("-o"),
                os(&opt),
                os(&l.mnt),
            ]);
            assert_eq!(field(&config), want, "{opt}");
            assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        }
        for (bad, why) in [
            (name.to_owned(), "needs a value"),
            (format!("{name}=auto"), "on or off"),
        ] {
            let data = join(&[l.data().bytes(), b",", bad.as_bytes()]);
            let e = fails(&[os("-o"), data, os(&l.mnt)], &[name, why]);
            assert_eq!(e.exit_code, 2);
        }
    }
}

#[test]
fn metacopy_and_data_only_lowers() {
    let s = Scratch::new("metacopy");
    let l = s.layers();
    let d1 = s.dir("d1");
    let d2 = s.dir("d2");
    // Lowers after `::` are data-only, in both the -l and the -o forms.
    let list = join(&[
        l.l1.bytes(),
        b":",
        l.l2.bytes(),
        b"::",
        d1.bytes(),
        b"::",
        d2.bytes(),
    ]);
    let config = mount(&[os("mount"), os("-l"), list.clone(), os(&l.mnt)]);
    assert_eq!(config.lowers, vec![l.l1.clone(), l.l2.clone()]);
    assert_eq!(config.data_lowers, vec![d1.clone(), d2.clone()]);
    assert!(!config.metacopy);
    let data = join(&[b"lowerdir=".as_ref(), list.bytes(), b",metacopy=on"]);
    let config = mount(&[os("-o"), data, os(&l.mnt)]);
    assert_eq!(config.data_lowers, vec![d1, d2]);
    assert!(config.metacopy);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    // Plain lists have none.
    let config = mount(&[os("mount"), os("-l"), l.lower_list(), os(&l.mnt)]);
    assert!(config.data_lowers.is_empty());

    for (bad, why) in [("metacopy", "needs a value"), ("metacopy=yes", "on or off")] {
        let data = join(&[l.data().bytes(), b",", bad.as_bytes()]);
        let e = fails(&[os("-o"), data, os(&l.mnt)], &["metacopy", why]);
        assert_eq!(e.exit_code, 2);
    }
    // A data-only lower nested in the upper is refused like any lower.
    let inside = s.dir("upper/inside");
    let list = join(&[l.l1.bytes(), b"::", inside.bytes()]);
    fails(
        &[
            os("mount"),
            os("-l"),
            list,
            os("-u"),
            os(&l.upper),
            os(&l.mnt),
        ],
        &["is inside"],
    );
}

#[test]
fn malformed_options_are_refused() {
    let s = Scratch::new("malformed");
    let l = s.layers();
    let with = |extra: &str| {
        vec![
            os("-o"),
            join(&[l.data().bytes(), b",", extra.as_bytes()]),
            os(&l.mnt),
        ]
    };

    fails(&with("foo"), &["unknown option 'foo' in -o"]);
    fails(&with("foo=bar"), &["unknown option 'foo=bar'"]);
    fails(&with("=x"), &["malformed option '=x'"]);
    fails(&with("format=bogus"), &["bogus", "overlay, oci or auto"]);
    fails(&with("format="), &["format", "needs a value"]);
    fails(&with("ro=1"), &["'ro'", "no value"]);
    fails(&with("threads=0"), &["threads", "0"]);
    fails(&with("threads=lots"), &["threads", "lots"]);
    fails(&with("upperdir=/x"), &["upperdir", "twice"]);
    fails(&with("noatime=1"), &["unknown option 'noatime=1'"]);
    fails(&[os("--bogus"), os(&l.mnt)], &["unknown option '--bogus'"]);
    fails(&[os("-o")], &["'-o' needs a value"]);

    let e = fails(
        &[
            os("mount"),
            os("-l"),
            os(&l.l1),
            os("--format"),
            os("bogus"),
            os(&l.mnt),
        ],
        &["bogus", "overlay, oci or auto"],
    );
    assert_eq!(e.exit_code, 2);
    fails(
        &[
            os("mount"),
            os("-l"),
            os(&l.l1),
            os("--frobnicate"),
            os(&l.mnt),
        ],
        &["--frobnicate"],
    );
    fails(&[os("mount"), os("-l"), os(&l.l1)], &["MNT"]);
    fails(&[], &["missing arguments"]);
}

#[test]
fn format_and_read_only_settle_in_order() {
    let s = Scratch::new("order");
    let l = s.layers();
    let base = [os("mount"), os("-l"), os(&l.l1), os(&l.mnt)];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend(extra.iter().map(os));
        mount(&args)
    };
    assert_eq!(with(&["-o", "format=overlay"]).format, WriteFormat::Overlay);
    assert_eq!(
        with(&["-o", "format=overlay,format=oci"]).format,
        WriteFormat::Oci
    );
    // The dedicated flag beats -o.
    assert_eq!(
        with(&["-o", "format=oci", "--format", "overlay"]).format,
        WriteFormat::Overlay
    );
    assert!(with(&["-o", "rw,ro"]).read_only);
    assert!(!with(&["-o", "ro", "-o", "rw"]).read_only);
}

#[test]
fn log_file_is_made_absolute() {
    let s = Scratch::new("log");
    let l = s.layers();
    let config = mount(&[
        os("mount"),
        os("-l"),
        os(&l.l1),
        os("--log-file"),
        os("relative.log"),
        os(&l.mnt),
    ]);
    let cwd = std::env::current_dir().expect("cwd");
    assert_eq!(config.log_file, Some(cwd.join("relative.log")));
}

// ---------------------------------------------------------------------------
// Help, version, umount

#[test]
fn version_and_help_are_printed() {
    let version = format!("unionfs {}", env!("CARGO_PKG_VERSION"));
    assert_eq!(print(&[os("--version")]), version);
    assert_eq!(print(&[os("-V")]), version);
    assert_eq!(print(&[os("mount"), os("--version")]), version);
    assert_eq!(
        print(&[os("-o"), os("lowerdir=/x"), os("--version")]),
        version
    );

    for args in [vec![os("--help")], vec![os("-h")], vec![os("help")]] {
        let help = print(&args);
        for needle in [
            "unionfs mount",
            "unionfs umount",
            "lowerdir=",
            "mount -t fuse.unionfs",
        ] {
            assert!(help.contains(needle), "help lacks {needle:?}:\n{help}");
        }
        assert!(!help.ends_with('\n'));
    }
    assert!(print(&[os("-o"), os("x"), os("--help")]).contains("lowerdir="));

    for args in [
        vec![os("mount"), os("--help")],
        vec![os("help"), os("mount")],
    ] {
        let help = print(&args);
        for needle in [
            "--lower",
            "--upper",
            "--work",
            "--format",
            "--log-file",
            "allow_other",
            "\\:",
        ] {
            assert!(
                help.contains(needle),
                "mount help lacks {needle:?}:\n{help}"
            );
        }
    }
    assert!(print(&[os("umount"), os("--help")]).contains("MNT"));
}

#[test]
fn umount_resolves_the_mount_point() {
    let s = Scratch::new("umount");
    let mnt = s.dir("mnt");
    s.dir("real");
    std::os::unix::fs::symlink("real", s.path("link")).expect("symlink");
    match parse(&[os("umount"), os(&mnt)]) {
        Ok(Command::Umount(path)) => assert_eq!(path, mnt),
        other => panic!("expected umount, got {other:?}"),
    }
    match parse(&[os("umount"), os(s.path("link"))]) {
        Ok(Command::Umount(path)) => assert_eq!(path, s.path("real")),
        other => panic!("expected umount, got {other:?}"),
    }
    let missing = s.path("missing");
    fails(
        &[os("umount"), os(&missing)],
        &[&shown(&missing), "no such directory"],
    );
    fails(&[os("umount")], &["MNT"]);
}

// ---------------------------------------------------------------------------
// Owner mapping, squashing and volatile

fn ranges(text: &[(u32, u32, u32)]) -> Vec<unionfs::idmap::Range> {
    text.iter()
        .map(|&(disk, shown, len)| unionfs::idmap::Range { disk, shown, len })
        .collect()
}

#[test]
fn owner_mapping_options_as_containers_storage_writes_them() {
    let s = Scratch::new("idmap");
    let l = s.layers();
    // What containers/storage hands its mount_program for a rootless
    // container: several ranges, an SELinux context with a quoted comma,
    // and (older versions) a leading colon; plus an empty element.
    let data = join(&[
        l.data().bytes(),
        b",,uidmapping=0:1000:1:1:100000:65536,gidmapping=:0:1000:1:1:100000:65536",
        b",context=\"system_u:object_r:container_file_t:s0:c1,c2\",volatile,",
    ]);
    let config = mount(&[os("-o"), data, os(&l.mnt)]);
    let want = ranges(&[(0, 1000, 1), (1, 100000, 65536)]);
    assert_eq!(config.owners.uid.ranges, want);
    assert_eq!(config.owners.gid.ranges, want);
    assert_eq!(config.owners.uid.squash, None);
    assert_eq!(config.owners.uid.overflow, 65534);
    assert!(config.volatile);
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(config.warnings[0].contains("context="));

    // The mount subcommand and mount.fuse forms read the same options.
    let config = mount(&[
        os("mount"),
        os("-l"),
        os(&l.l1),
        os("-o"),
        os("uidmapping=0:100000:65536"),
        os(&l.mnt),
    ]);
    assert_eq!(config.owners.uid.ranges, ranges(&[(0, 100000, 65536)]));
    assert!(config.owners.gid.is_identity());
    assert!(!config.volatile);

    // Squashing: to a given id wins over to root, per kind.
    let data = join(&[l.data().bytes(), b",squash_to_root,squash_to_uid=7"]);
    let config = mount(&[os("-o"), data, os(&l.mnt)]);
    assert_eq!(config.owners.uid.squash, Some(7));
    assert_eq!(config.owners.gid.squash, Some(0));
    for (opt, n) in [
        ("xattr_permissions=0", 0),
        ("xattr_permissions=1", 1),
        ("xattr_permissions=2", 2),
    ] {
        let data = join(&[l.data().bytes(), b",", opt.as_bytes()]);
        assert_eq!(mount(&[os("-o"), data, os(&l.mnt)]).xattr_permissions, n);
    }
    let data = join(&[l.data().bytes(), b",fsync=1"]);
    assert!(!mount(&[os("-o"), data, os(&l.mnt)]).volatile);
    let data = join(&[l.data().bytes(), b",fsync=0"]);
    assert!(mount(&[os("-o"), data, os(&l.mnt)]).volatile);
}

#[test]
fn bad_owner_mappings_are_refused() {
    let s = Scratch::new("idmap-bad");
    let l = s.layers();
    let with = |extra: &str| {
        vec![
            os("-o"),
            join(&[l.data().bytes(), b",", extra.as_bytes()]),
            os(&l.mnt),
        ]
    };
    for (opt, needle) in [
        ("uidmapping=0:1000", "triples"),
        ("uidmapping=0:1000:1:1", "triples"),
        ("gidmapping=a:1:1", "not a number"),
        ("uidmapping=0:1000:0", "length 0"),
        ("uidmapping=0:100:10:5:200:1", "overlapping"),
        ("uidmapping=", "needs a value"),
        ("uidmapping=:", "no ranges"),
        ("squash_to_uid=x", "numeric"),
        ("squash_to_root=1", "no value"),
        ("volatile=1", "no value"),
        ("fsync=2", "0 or 1"),
        ("xattr_permissions=3", "0, 1 or 2"),
    ] {
        let e = fails(&with(opt), &[needle]);
        assert_eq!(e.exit_code, 2, "{opt}");
    }
    fails(
        &with("uidmapping=0:1:1,uidmapping=0:2:1"),
        &["uidmapping", "twice"],
    );
}

/// mount(8) hands `mount -o remount,ro MNT` of a fuse.unionfs mount to the
/// helper as `unionfs SOURCE MNT -o remount,ro,...`: a remount, no layers.
#[test]
fn remount_in_the_helper_form_needs_no_layers() {
    let s = Scratch::new("remount");
    let mnt = s.dir("mnt");
    for (opts, read_only) in [("remount,ro", true), ("rw,remount,nosuid", false)] {
        match parse(&[os("unionfs"), os(&mnt), os("-o"), os(opts)]) {
            Ok(Command::Remount(r)) => {
                assert_eq!(r.mountpoint, mnt);
                assert_eq!(r.read_only, read_only, "{opts}");
            }
            other => panic!("{opts}: expected a remount, got {other:?}"),
        }
    }
    fails(
        &[os("unionfs"), os(&mnt), os("-o"), os("remount=1")],
        &["remount"],
    );
}
