//! Rootless mounts, as the users unionfs exists for run it: an unprivileged
//! user mounting through the setuid `fusermount3`, and the root of an
//! unprivileged user namespace (`unshare --user --map-root-user --mount`,
//! as rootless podman does). Each runs a script of copy-up, delete, dir
//! rename and unmount as that user; the test then checks the transcript,
//! what landed in the upper (only `user.` xattrs: `trusted.` ones cannot be
//! written without privilege) and that the lowers are unchanged.
//!
//! Everything runs inside the test's own private mount namespace, so the
//! mounts are invisible outside. /dev/fuse may be root-only (mode 0600):
//! inside that namespace a 0666 node of the same device is bind-mounted over
//! it, as a distribution's default /dev/fuse is.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The unprivileged user the scripts run as.
const USER: u32 = 1000;
const L1: &str = "lower1";

struct Setup {
    t: TestDir,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    fuse: PathBuf,
}

fn setup(name: &str) -> Setup {
    let t = TestDir::new(name);
    let l1 = Layer::new(L1)
        .tagged("d/f")
        .tagged("gone")
        .tagged("dir/sub/x")
        .tagged("dir/y");
    let lower = render_stack(&[l1], t.path(), Format::Kernel).remove(0);
    let upper = t.mkdir("upper");
    let work = t.mkdir("work");
    let mnt = t.mkdir("mnt");
    for dir in [&lower, &upper, &work, &mnt] {
        chown_tree(dir, USER);
    }
    let fuse = fuse_node(t.path());
    Setup {
        t,
        lower,
        upper,
        work,
        mnt,
        fuse,
    }
}

/// The operations, as the user: mount, read, copy-up by append, delete a
/// lower file, rename a lower dir, list, unmount, check it is gone.
fn script(s: &Setup, extra: &str) -> String {
    let m = s.mnt.display();
    format!(
        "set -e; B={bin}; M={m}; \
         \"$B\" mount -l {l} -u {u} -w {w} {extra} \"$M\"; \
         echo \"READ $(cat \"$M/d/f\")\"; \
         echo more >> \"$M/d/f\"; \
         rm \"$M/gone\"; \
         mv \"$M/dir\" \"$M/dir2\"; \
         echo \"LIST $(ls \"$M\" | tr '\\n' ' ')\"; \
         echo \"SUB $(cat \"$M/dir2/sub/x\")\"; \
         echo \"AFTER $(cat \"$M/d/f\" | tr '\\n' ' ')\"; \
         \"$B\" umount \"$M\"; \
         if grep -q \" $M \" /proc/self/mounts; then echo STILL-MOUNTED; else echo UNMOUNTED; fi",
        bin = unionfs_bin(),
        l = s.lower.display(),
        u = s.upper.display(),
        w = s.work.display(),
    )
}

fn require_tools() -> bool {
    for tool in ["unshare", "setpriv", "fusermount3"] {
        if Command::new(tool).arg("--help").output().is_err() {
            return skip_or_fail(&format!("{tool} is not installed"));
        }
    }
    true
}

/// Checks the transcript and the upper after a run; `oci` says which
/// format the upper must be in (`None`: whichever `auto` chose).
fn check(s: &Setup, out: &CmdOutput, oci: Option<bool>) {
    assert!(out.success(), "{out}");
    let tag = |p: &str| String::from_utf8(tag(L1, p)).unwrap();
    assert!(
        out.stdout
            .contains(&format!("READ {}", tag("d/f").trim_end())),
        "{out}"
    );
    assert!(
        out.stdout.contains("LIST d dir2 \n") || out.stdout.contains("LIST d dir2 "),
        "{out}"
    );
    assert!(
        out.stdout
            .contains(&format!("SUB {}", tag("dir/sub/x").trim_end())),
        "{out}"
    );
    assert!(out.stdout.contains("UNMOUNTED"), "{out}");

    let u = &s.upper;
    let mut want = tag("d/f").into_bytes();
    want.extend_from_slice(b"more\n");
    assert_eq!(read(&u.join("d/f")), want, "copy-up in the upper");
    assert!(
        sys::lgetxattr(&u.join("d/f"), b"user.unionfs.origin").is_ok(),
        "the copy records its origin in a user. xattr"
    );
    let overlay_wh = |p: &Path| {
        fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
    };
    let oci_wh = |name: &str| u.join(format!(".wh.{name}")).exists();
    let is_overlay = overlay_wh(&u.join("gone"));
    if let Some(oci) = oci {
        assert_eq!(is_overlay, !oci, "format of the upper");
    }
    if is_overlay {
        // Overlay format (a 0/0 device can be made without privilege since
        // Linux 5.8): the renamed dir records its origin in user.overlay.
        assert!(overlay_wh(&u.join("dir")), "whiteout at the old dir name");
        let r = sys::lgetxattr(&u.join("dir2"), b"user.overlay.redirect");
        assert_eq!(r.ok().as_deref(), Some(&b"/dir"[..]), "redirect");
    } else {
        assert!(oci_wh("gone") && oci_wh("dir"), "oci whiteouts");
        assert!(
            u.join("dir2/.wh..wh..opq").exists(),
            "renamed dir is opaque"
        );
        assert_eq!(read(&u.join("dir2/sub/x")), tag("dir/sub/x").into_bytes());
    }
    assert_no_trusted_xattrs(u);
}

fn assert_no_trusted_xattrs(p: &Path) {
    for name in sys::llistxattr(p).unwrap_or_default() {
        assert!(
            !name.starts_with(b"trusted."),
            "{}: {}",
            p.display(),
            String::from_utf8_lossy(&name)
        );
    }
    if fs::symlink_metadata(p).unwrap().is_dir() {
        for e in fs::read_dir(p).unwrap() {
            assert_no_trusted_xattrs(&e.unwrap().path());
        }
    }
}

/// [`as_user_through_fusermount`] as uid USER, with this test's fuse node.
fn as_user(s: &Setup, user_script: &str) -> CmdOutput {
    as_user_through_fusermount(&s.fuse, &s.mnt, USER, user_script)
}

/// As uid USER, mounting through the setuid fusermount3, inside a private
/// mount namespace of this test (made by root, who also lends /dev/fuse).
fn fusermount_run(extra: &str) {
    if !require_mount_env() || !require_tools() {
        return;
    }
    let s = setup(&format!("rootless-fusermount{}", extra.replace(' ', "")));
    let sum = checksum_layers(&[&s.lower]);
    let user_script = script(&s, extra);
    let out = as_user(&s, &user_script);
    check(&s, &out, (!extra.is_empty()).then_some(true));
    // The daemon ran as the user: its copy belongs to the user.
    assert_eq!(
        fs::symlink_metadata(s.upper.join("d/f")).unwrap().uid(),
        USER
    );
    sum.assert_unchanged();
    drop(s.t);
}

#[test]
fn unprivileged_user_through_fusermount3() {
    fusermount_run("");
}

#[test]
fn unprivileged_user_through_fusermount3_oci_format() {
    fusermount_run("--format oci");
}

#[test]
fn root_of_an_unprivileged_user_namespace() {
    if !require_mount_env() || !require_tools() {
        return;
    }
    let s = setup("rootless-userns");
    let sum = checksum_layers(&[&s.lower]);
    let inner = format!(
        "mount --bind {fuse} /dev/fuse || exit 97; \
         trap 'rc=$?; umount -l {m} 2>/dev/null || :; exit $rc' EXIT; \
         [ \"$(id -u)\" = 0 ] || exit 98; {script}",
        fuse = s.fuse.display(),
        m = s.mnt.display(),
        script = script(&s, ""),
    );
    let out = run(
        Command::new("setpriv")
            .arg(format!("--reuid={USER}"))
            .arg(format!("--regid={USER}"))
            .args(["--clear-groups", "--"])
            .args(["unshare", "--user", "--map-root-user", "--mount", "--"])
            .args(["sh", "-c"])
            .arg(inner),
        Duration::from_secs(60),
    );
    if out.code() == Some(97) || out.stderr.contains("unshare failed") {
        skip_or_fail(&format!(
            "unprivileged user namespaces are not available: {out}"
        ));
        return;
    }
    check(&s, &out, None);
    // Root inside is USER outside: that is who owns the copy on disk.
    assert_eq!(
        fs::symlink_metadata(s.upper.join("d/f")).unwrap().uid(),
        USER
    );
    sum.assert_unchanged();
}

/// Forced permissions where they are needed: the root of a user namespace
/// that maps one id cannot store other owners or setuid bits for real, so
/// `xattr_permissions=2` keeps them in `user.containers.override_stat`.
#[test]
fn forced_permissions_in_a_user_namespace() {
    if !require_mount_env() || !require_tools() {
        return;
    }
    let s = setup("rootless-forced");
    let sum = checksum_layers(&[&s.lower]);
    let m = s.mnt.display();
    let inner = format!(
        "mount --bind {fuse} /dev/fuse || exit 97; \
         trap 'rc=$?; umount -l {m} 2>/dev/null || :; exit $rc' EXIT; set -e; \
         {bin} mount -l {l} -u {u} -w {w} -o xattr_permissions=2 {m}; \
         echo x > {m}/new; chmod 4711 {m}/new; \
         echo \"NEW $(stat -c '%a %u:%g' {m}/new)\"; \
         chmod 600 {m}/d/f; echo \"COPIED $(stat -c '%a' {m}/d/f)\"; \
         {bin} umount {m}; echo UNMOUNTED",
        fuse = s.fuse.display(),
        bin = unionfs_bin(),
        l = s.lower.display(),
        u = s.upper.display(),
        w = s.work.display(),
    );
    let out = run(
        Command::new("setpriv")
            .arg(format!("--reuid={USER}"))
            .arg(format!("--regid={USER}"))
            .args(["--clear-groups", "--"])
            .args(["unshare", "--user", "--map-root-user", "--mount", "--"])
            .args(["sh", "-c"])
            .arg(inner),
        Duration::from_secs(60),
    );
    if out.code() == Some(97) {
        skip_or_fail(&format!("cannot lend /dev/fuse in a user namespace: {out}"));
        return;
    }
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("NEW 4711 0:0"), "{out}");
    assert!(out.stdout.contains("COPIED 600"), "{out}");
    assert!(out.stdout.contains("UNMOUNTED"), "{out}");
    let xattr = |p: &str| {
        String::from_utf8(
            sys::lgetxattr(&s.upper.join(p), b"user.containers.override_stat").unwrap(),
        )
        .unwrap()
    };
    // The inode holds what the daemon could set; the override the rest.
    let new = fs::symlink_metadata(s.upper.join("new")).unwrap();
    // (created 0644 by `echo` under umask 022; chmod changed only the override)
    assert_eq!((new.uid(), new.mode() & 0o7777), (USER, 0o644));
    assert_eq!(xattr("new"), "0:0:4711:file");
    let copied = fs::symlink_metadata(s.upper.join("d/f")).unwrap();
    assert_eq!(
        copied.mode() & 0o7777,
        0o644,
        "real mode untouched by chmod"
    );
    assert_eq!(xattr("d/f"), "0:0:0600:file");
    sum.assert_unchanged();
}

/// A symlink made through the mount with a second name (`ln -P`), one name
/// then removed, as the user through fusermount3: the daemon indexes the
/// object as its first name goes, and a symlink cannot carry the `user.`
/// xattr that would count its lower names (it has none). Was EPERM
/// (xfstests generic/013 and generic/070 rootless: fsstress links symlinks).
#[test]
fn unprivileged_user_removes_a_name_of_a_hard_linked_symlink() {
    if !require_mount_env() || !require_tools() {
        return;
    }
    let s = setup("rootless-linked-symlink");
    let sum = checksum_layers(&[&s.lower]);
    let m = s.mnt.display();
    let user_script = format!(
        "set -e; B={bin}; \"$B\" mount -l {l} -u {u} -w {w} {m}; \
         ln -s d/f {m}/s; ln -P {m}/s {m}/s2; ls -li {m} >/dev/null; \
         if rm {m}/s; then echo RM-OK; else echo RM-FAILED; fi; \
         echo \"LEFT $(ls {m} | tr '\\n' ' ')\"; \
         echo \"S2 $(stat -c '%F %h' {m}/s2) -> $(readlink {m}/s2)\"; \
         \"$B\" umount {m}",
        bin = unionfs_bin(),
        l = s.lower.display(),
        u = s.upper.display(),
        w = s.work.display(),
    );
    let out = as_user(&s, &user_script);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("RM-OK"), "{out}");
    assert!(out.stdout.contains("LEFT d dir gone s2 "), "{out}");
    assert!(out.stdout.contains("S2 symbolic link 1 -> d/f"), "{out}");
    // where it landed: the upper holds the one name left, indexed
    let s2 = fs::symlink_metadata(s.upper.join("s2")).unwrap();
    assert!(s2.file_type().is_symlink() && !s.upper.join("s").exists());
    assert_eq!(s2.nlink(), 2, "s2 and its entry in WORK/index");
    sum.assert_unchanged();
}

/// O_DIRECT reads and writes as the user (no passthrough: the daemon does
/// the I/O), aligned and not: FUSE takes any, and the daemon's buffers are
/// not aligned for the upper's O_DIRECT, which refused every one with
/// EINVAL (xfstests generic/366 rootless: fio `direct=1`). A lower file is
/// copied up by the first direct write.
#[test]
fn unprivileged_user_reads_and_writes_with_o_direct() {
    if !require_mount_env() || !require_tools() {
        return;
    }
    let s = setup("rootless-odirect");
    let sum = checksum_layers(&[&s.lower]);
    let m = s.mnt.display();
    let user_script = format!(
        "set -e; B={bin}; \"$B\" mount -l {l} -u {u} -w {w} {m}; \
         dd if=/dev/zero of={m}/new bs=8k count=4 oflag=direct status=none; \
         printf xyz | dd of={m}/d/f bs=3 seek=1 oflag=direct conv=notrunc status=none; \
         echo \"READ $(dd if={m}/new bs=8k iflag=direct status=none | wc -c)\"; \
         \"$B\" umount {m}",
        bin = unionfs_bin(),
        l = s.lower.display(),
        u = s.upper.display(),
        w = s.work.display(),
    );
    let out = as_user(&s, &user_script);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("READ 32768"), "{out}");
    assert_eq!(read(&s.upper.join("new")), vec![0u8; 32768]);
    let mut want = tag(L1, "d/f");
    want[3..6].copy_from_slice(b"xyz");
    assert_eq!(read(&s.upper.join("d/f")), want, "copied up, then written");
    sum.assert_unchanged();
}

/// With forced permissions (`xattr_permissions=2`, as rootless
/// containers/storage mounts), an access ACL that is only a mode is a
/// chmod of the mode the override keeps (xfstests generic/053, 375
/// rootless): set on the real file it changed the real mode, which the
/// daemon needs, while `stat` showed the old one. Setgid stays for the
/// owner, who is in the group.
#[test]
fn unprivileged_user_sets_an_acl_that_is_only_a_mode() {
    if !require_mount_env() || !require_tools() || !require_commands(&["setfacl", "getfacl"]) {
        return;
    }
    let s = setup("rootless-acl-mode");
    let sum = checksum_layers(&[&s.lower]);
    let m = s.mnt.display();
    let user_script = format!(
        "set -e; B={bin}; \"$B\" mount -l {l} -u {u} -w {w} -o xattr_permissions=2 {m}; \
         chmod 2755 {m}/d/f; setfacl -m u::rwx,g::rwx,o::r-- {m}/d/f; \
         echo \"MODE1 $(stat -c %A {m}/d/f)\"; \
         setfacl --set u::r--,g::rwx,o::rw- {m}/d/f; \
         echo \"MODE2 $(stat -c %A {m}/d/f)\"; \
         echo \"ACL $(getfacl -cp {m}/d/f | tr '\\n' ' ')\"; \
         echo more >> {m}/d/f 2>/dev/null && echo WROTE || echo NOWRITE; \
         \"$B\" umount {m}",
        bin = unionfs_bin(),
        l = s.lower.display(),
        u = s.upper.display(),
        w = s.work.display(),
    );
    let out = as_user(&s, &user_script);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("MODE1 -rwxrwsr--"), "{out}");
    assert!(out.stdout.contains("MODE2 -r--rwsrw-"), "{out}");
    assert!(
        out.stdout.contains("ACL user::r-- group::rwx other::rw-"),
        "{out}"
    );
    // The shown owner may not write; the daemon's real mode was kept.
    assert!(out.stdout.contains("NOWRITE"), "{out}");
    let real = fs::symlink_metadata(s.upper.join("d/f")).unwrap();
    assert!(
        real.permissions().mode() & 0o600 == 0o600,
        "{:o}",
        real.permissions().mode()
    );
    sum.assert_unchanged();
}

/// Runs `root_script` as root (in `sh`, the mount point in `$M`) over a
/// mount whose daemon runs as uid USER through fusermount3 with forced
/// permissions and `allow_other`, as xfstests' rootless target mounts: root
/// and other users act through the mount, the daemon has only USER's
/// rights. The private namespace lends a 0666 /dev/fuse and an
/// /etc/fuse.conf with `user_allow_other`; the mount goes at the end.
fn as_root_over_user_daemon(s: &Setup, root_script: &str) -> CmdOutput {
    let conf = s.t.join("fuse.conf");
    let outer = format!(
        "mount --bind {fuse} /dev/fuse || exit 97; \
         {{ cat /etc/fuse.conf 2>/dev/null; echo user_allow_other; }} >{conf}; \
         mount --bind {conf} /etc/fuse.conf || exit 97; \
         B={bin}; M={m}; \
         setpriv --reuid={USER} --regid={USER} --clear-groups -- \"$B\" mount -l {l} -u {u} -w {w} \
           -o xattr_permissions=2,allow_other \"$M\" || exit 98; \
         ( {root_script} ); rc=$?; \
         setpriv --reuid={USER} --regid={USER} --clear-groups -- \"$B\" umount \"$M\" || umount -l \"$M\"; \
         exit $rc",
        fuse = s.fuse.display(),
        conf = conf.display(),
        bin = unionfs_bin(),
        m = s.mnt.display(),
        l = s.lower.display(),
        u = s.upper.display(),
        w = s.work.display(),
    );
    run(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(outer),
        Duration::from_secs(60),
    )
}

/// Shell that prints `TAG-READ` or `TAG-DENIED` for a read of `path` as
/// uid (and gid) `id`.
fn read_as(id: u32, path: &str) -> String {
    format!(
        "if setpriv --reuid={id} --regid={id} --clear-groups cat {path} >/dev/null 2>&1; \
         then echo U{id}-READ; else echo U{id}-DENIED; fi; "
    )
}

/// The names of the xattrs `p` holds in the layer.
fn xattr_names(p: &Path) -> Vec<String> {
    sys::llistxattr(p)
        .unwrap_or_default()
        .into_iter()
        .map(|n| String::from_utf8_lossy(&n).into_owned())
        .collect()
}

/// The upper object `p` keeps its access ACL in the private xattr beside
/// its override (`present`), never on the inode, where its owner entry and
/// mask would rewrite the daemon's real mode.
fn assert_acl_kept_privately(p: &Path, present: bool) {
    let names = xattr_names(p);
    assert!(
        !names.iter().any(|n| n == "system.posix_acl_access"),
        "{}: a real access ACL: {names:?}",
        p.display()
    );
    assert_eq!(
        names.iter().any(|n| n == "user.unionfs.posix_acl_access"),
        present,
        "{}: {names:?}",
        p.display()
    );
}

fn require_acl_tools() -> bool {
    require_mount_env() && require_tools() && require_commands(&["setfacl", "getfacl", "setfattr"])
}

/// With forced permissions (the daemon as uid USER, `xattr_permissions=2`),
/// an access ACL with named users or groups is kept in a private xattr and
/// the shown mode follows it, as on a local filesystem: setfacl sets the
/// group bits from the mask, chmod changes the mask, and the kernel's
/// check (which reads the ACL through the daemon) grants a named user
/// what the mask lets through and no more. A default ACL's named entries
/// reach new files. It was stored on the real file, whose mask followed
/// the daemon's real mode: the shown mode stayed 0600 and the check
/// disagreed with it (xfstests generic/099 rootless).
#[test]
fn rootless_acl_with_named_users_follows_the_shown_mode() {
    if !require_acl_tools() {
        return;
    }
    let s = setup("rootless-acl-named");
    let sum = checksum_layers(&[&s.lower]);
    let acl = "getfacl -cnE";
    let script = format!(
        "chown 0:0 $M/d/f; chmod 0600 $M/d/f; setfacl -m u:1234:r $M/d/f; \
         echo \"MODE1 $(stat -c '%a %u' $M/d/f)\"; \
         echo \"ACL1 $({acl} $M/d/f | tr '\\n' ' ')\"; \
         {r1} {r2} \
         chmod 0614 $M/d/f; \
         echo \"MODE2 $(stat -c %a $M/d/f)\"; \
         echo \"ACL2 $({acl} $M/d/f | tr '\\n' ' ')\"; \
         {r1} {r2} \
         touch $M/g; setfacl -m g:1234:rw $M/g; echo \"MODEG $(stat -c %a $M/g)\"; \
         setfacl -b $M/g; echo \"MODEB $(stat -c %a $M/g)\"; echo \"ACLG $({acl} $M/g | tr '\\n' ' ')\"; \
         touch $M/h; setfacl -m u:1234:rw $M/h; setfattr -x system.posix_acl_access $M/h; \
         echo \"MODEH $(stat -c %a $M/h)\"; echo \"ACLH $({acl} $M/h | tr '\\n' ' ')\"; \
         mkdir $M/dd; setfacl -d -m u:1234:rwx $M/dd; touch $M/dd/new; \
         echo \"MODEN $(stat -c %a $M/dd/new)\"; \
         echo \"ACLN $({acl} $M/dd/new | tr '\\n' ' ')\"",
        r1 = read_as(1234, "$M/d/f"),
        r2 = read_as(1235, "$M/d/f"),
    );
    let out = as_root_over_user_daemon(&s, &script);
    assert!(out.success(), "{out}");
    let o = &out.stdout;
    // setfacl: the mask is the group bits of the mode
    assert!(o.contains("MODE1 640 0"), "{out}");
    assert!(
        o.contains("ACL1 user::rw- user:1234:r-- group::--- mask::r-- other::--- "),
        "{out}"
    );
    let first = &o[..o.find("MODE2").unwrap_or(o.len())];
    assert!(first.contains("U1234-READ"), "named user: {out}");
    assert!(first.contains("U1235-DENIED"), "other: {out}");
    // chmod: the mask follows the group bits, other the other bits (with
    // no group bits at all the kernel would not look at the ACL)
    assert!(o.contains("MODE2 614"), "{out}");
    assert!(
        o.contains("ACL2 user::rw- user:1234:r-- group::--- mask::--x other::r-- "),
        "{out}"
    );
    let second = &o[o.find("MODE2").unwrap_or(0)..];
    assert!(second.contains("U1234-DENIED"), "masked: {out}");
    assert!(second.contains("U1235-READ"), "other: {out}");
    // setfacl -b: the base entries left are the mode again
    assert!(o.contains("MODEG 664"), "{out}");
    assert!(o.contains("MODEB 644"), "{out}");
    assert!(o.contains("ACLG user::rw- group::r-- other::r-- "), "{out}");
    // removexattr: the mode stays
    assert!(o.contains("MODEH 664"), "{out}");
    assert!(o.contains("ACLH user::rw- group::rw- other::r-- "), "{out}");
    // inherited: the named entry reaches the new file, masked by its mode
    assert!(o.contains("MODEN 664"), "{out}");
    assert!(
        o.contains("ACLN user::rw- user:1234:rwx group::r-x mask::rw- other::r-- "),
        "{out}"
    );

    assert_acl_kept_privately(&s.upper.join("d/f"), true);
    assert_acl_kept_privately(&s.upper.join("g"), false);
    assert_acl_kept_privately(&s.upper.join("h"), false);
    assert_acl_kept_privately(&s.upper.join("dd/new"), true);
    let names = xattr_names(&s.upper.join("dd"));
    assert!(
        names.iter().any(|n| n == "system.posix_acl_default"),
        "the default ACL stays on the directory: {names:?}"
    );
    // Mounted again: a lookup that lists the file's xattrs sees the ACL
    // among the private ones.
    let again =
        as_root_over_user_daemon(&s, "echo \"AGAIN $(getfacl -cnE $M/d/f | tr '\\n' ' ')\"");
    assert!(
        again
            .stdout
            .contains("AGAIN user::rw- user:1234:r-- group::--- mask::--x other::r-- "),
        "{again}"
    );
    // the daemon still reads and writes its copy
    let real = fs::symlink_metadata(s.upper.join("d/f")).unwrap();
    assert_eq!(real.uid(), USER);
    assert_eq!(real.permissions().mode() & 0o600, 0o600);
    sum.assert_unchanged();
}

/// A 0600 directory given `u:ID:r` by root: root still lists and creates
/// in it, and so does the daemon that does the creating, whose real mode
/// on the directory is kept. With the ACL on the real directory its owner
/// entry (`rw-`) took the daemon's search right away (xfstests generic/105
/// rootless: "subdir/file2: Permission denied").
#[test]
fn rootless_acl_on_a_0600_dir_leaves_the_daemon_its_rights() {
    if !require_acl_tools() {
        return;
    }
    let s = setup("rootless-acl-dir");
    let sum = checksum_layers(&[&s.lower]);
    let script = "mkdir -m 600 $M/sub; chown 1234 $M/sub; echo data > $M/sub/file; \
         setfacl -m u:1234:r $M/sub; \
         ls -l $M/sub/file >/dev/null && echo LS-OK || echo LS-DENIED; \
         echo data2 > $M/sub/file2 && echo CREATE-OK || echo CREATE-DENIED; \
         echo \"MODE $(stat -c '%a %u' $M/sub)\"; \
         echo \"ACL $(getfacl -cnE $M/sub | tr '\\n' ' ')\"";
    let out = as_root_over_user_daemon(&s, script);
    assert!(out.success(), "{out}");
    let o = &out.stdout;
    assert!(o.contains("LS-OK"), "{out}");
    assert!(o.contains("CREATE-OK"), "{out}");
    assert!(o.contains("MODE 640 1234"), "{out}");
    assert!(
        o.contains("ACL user::rw- user:1234:r-- group::--- mask::r-- other::--- "),
        "{out}"
    );
    let sub = s.upper.join("sub");
    assert_acl_kept_privately(&sub, true);
    let real = fs::symlink_metadata(&sub).unwrap();
    assert_eq!(
        real.permissions().mode() & 0o700,
        0o700,
        "the daemon's rights"
    );
    assert_eq!(read(&sub.join("file2")), b"data2\n");
    sum.assert_unchanged();
}

/// A lower written by another tool with a real access ACL: it shows as it
/// is, and a copy-up moves it into the private xattr, where a chmod then
/// changes its mask and other entries as the shown mode changes (it stayed
/// on the real copy, and the chmod of the shown mode left it as it was).
#[test]
fn rootless_lower_acl_is_carried_up_privately() {
    if !require_acl_tools() {
        return;
    }
    let s = setup("rootless-acl-lower");
    let y = s.lower.join("dir/y");
    let set = Command::new("setfacl")
        .args(["-m", "u:1234:r"])
        .arg(&y)
        .output()
        .unwrap();
    assert!(set.status.success(), "{set:?}");
    let sum = checksum_layers(&[&s.lower]);
    let acl = "getfacl -cnE";
    let script = format!(
        "echo \"ACL1 $({acl} $M/dir/y | tr '\\n' ' ')\"; \
         chmod 0600 $M/dir/y; \
         echo \"ACL2 $({acl} $M/dir/y | tr '\\n' ' ')\"; {r}",
        r = read_as(1234, "$M/dir/y"),
    );
    let out = as_root_over_user_daemon(&s, &script);
    assert!(out.success(), "{out}");
    let o = &out.stdout;
    assert!(
        o.contains("ACL1 user::rw- user:1234:r-- group::r-- mask::r-- other::r-- "),
        "{out}"
    );
    assert!(
        o.contains("ACL2 user::rw- user:1234:r-- group::r-- mask::--- other::--- "),
        "{out}"
    );
    assert!(o.contains("U1234-DENIED"), "{out}");
    assert_acl_kept_privately(&s.upper.join("dir/y"), true);
    sum.assert_unchanged();
}
