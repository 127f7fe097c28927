//! Default ACLs are inherited by what is made below them, as on kernel
//! overlayfs over the same layers (xfstests generic/099): a new object is
//! built in the work dir, so unionfs applies the upper directory's default
//! ACL itself. Files, directories (which also inherit the default ACL) and
//! fifos, with and without named entries, in a directory made through the
//! mount and in a lower directory that is copied up; and the umask, which
//! applies only where no default ACL takes its place.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The script both mounts run, in the mount point: with umask 0 so the
/// create modes reach the filesystem as given, then with a umask.
const SCRIPT: &str = "umask 0
mkdir made && setfacl -d -m u::r,g::r,o::- made
touch made/file && mkdir made/dir && mkfifo made/fifo
setfacl -d -m u:1000:rwx,m::rwx lowdir
touch lowdir/file && mkdir -m 750 lowdir/dir
touch plain/file
umask 027
touch plain/masked made/unmasked && mkdir plain/maskeddir";

/// `getfacl` and the mode of every object the script made, one block each.
fn acls(mnt: &Path) -> String {
    let mut out = String::new();
    for p in [
        "made",
        "made/file",
        "made/dir",
        "made/fifo",
        "lowdir",
        "lowdir/file",
        "lowdir/dir",
        "plain/file",
        "plain/masked",
        "plain/maskeddir",
        "made/unmasked",
    ] {
        let o = run(
            Command::new("getfacl")
                .args(["-p", "-n"])
                .arg(p)
                .current_dir(mnt),
            Duration::from_secs(10),
        );
        assert!(o.success(), "getfacl {p}: {o}");
        let mode = fs::symlink_metadata(mnt.join(p)).unwrap();
        out.push_str(&format!(
            "{p} mode {:o}\n{}\n",
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()),
            o.stdout
        ));
    }
    out
}

fn run_script(mnt: &Path) {
    let o = run(
        Command::new("sh").args(["-ec", SCRIPT]).current_dir(mnt),
        Duration::from_secs(20),
    );
    assert!(o.success(), "script in {}: {o}", mnt.display());
}

#[test]
fn new_objects_inherit_default_acls_as_on_kernel_overlayfs() {
    if !require_kernel_overlay() {
        return;
    }
    let t = TestDir::new("acl-inherit");
    let layer = || {
        Layer::new("lower")
            .dir("lowdir")
            .dir("plain")
            .tagged("plain/x")
    };
    let ours = render_stack(&[layer()], &t.join("ours"), Format::Kernel).remove(0);
    let theirs = render_stack(&[layer()], &t.join("theirs"), Format::Kernel).remove(0);
    let sums = checksum_layers(&[&ours]);

    let (up, work, mnt) = (t.mkdir("up"), t.mkdir("work"), t.mkdir("mnt"));
    let m = mount_unionfs(&[&ours], Some(&up), Some(&work), &mnt, &[]);
    run_script(m.path());
    let got = acls(m.path());
    m.umount();

    let (kup, kwork, kmnt) = (t.mkdir("kup"), t.mkdir("kwork"), t.mkdir("kmnt"));
    let k = mount_kernel_overlay(&[&theirs], Some(&kup), Some(&kwork), &kmnt, &[]);
    run_script(k.path());
    let want = acls(k.path());
    k.umount();

    assert_eq!(
        got, want,
        "unionfs (left) and kernel overlayfs (right) differ"
    );
    // The ACLs are in the upper, the lower is untouched.
    let o = run(
        Command::new("getfacl")
            .args(["-p", "-n"])
            .arg(up.join("made/file")),
        Duration::from_secs(10),
    );
    assert!(o.stdout.contains("user::r--"), "{o}");
    sums.assert_unchanged();
}

/// As xfstests generic/375: an access ACL set by the owner keeps the
/// setgid bit only when the owner is in the file's group; by a caller
/// outside it, the bit goes (kernel overlayfs's upper filesystem drops it;
/// unionfs sets the ACL with the daemon's rights, so drops it itself).
/// For a file and a directory made through the mount, and a lower file
/// copied up by the ACL change.
#[test]
fn an_acl_set_from_outside_the_group_drops_setgid_as_on_kernel_overlayfs() {
    if !require_kernel_overlay() || !require_commands(&["setpriv", "setfacl"]) {
        return;
    }
    const SGID_SCRIPT: &str = "for f in file dir lowfile; do
  [ -e $f ] || { [ $f = dir ] && mkdir $f || touch $f; }
  chown 100:100 $f
  for g in 100 101; do
    chmod 2755 $f
    setpriv --reuid=100 --regid=$g --clear-groups -- setfacl -m u::rwx,g::rwx,o::rwx $f
    echo \"$f by gid $g: $(stat -c %A $f)\"
  done
done";
    let t = TestDir::new("acl-sgid");
    let layer = || Layer::new("lower").tagged("lowfile");
    let ours = render_stack(&[layer()], &t.join("ours"), Format::Kernel).remove(0);
    let theirs = render_stack(&[layer()], &t.join("theirs"), Format::Kernel).remove(0);
    let sums = checksum_layers(&[&ours]);
    let script = |mnt: &Path| {
        let o = run(
            Command::new("sh")
                .args(["-ec", SGID_SCRIPT])
                .current_dir(mnt),
            Duration::from_secs(20),
        );
        assert!(o.success(), "script in {}: {o}", mnt.display());
        o.stdout
    };
    let (up, work, mnt) = (t.mkdir("up"), t.mkdir("work"), t.mkdir("mnt"));
    let m = mount_unionfs(&[&ours], Some(&up), Some(&work), &mnt, &[]);
    let got = script(m.path());
    m.umount();
    let (kup, kwork, kmnt) = (t.mkdir("kup"), t.mkdir("kwork"), t.mkdir("kmnt"));
    let k = mount_kernel_overlay(&[&theirs], Some(&kup), Some(&kwork), &kmnt, &[]);
    let want = script(k.path());
    k.umount();
    assert_eq!(
        got, want,
        "unionfs (left) and kernel overlayfs (right) differ"
    );
    assert!(want.contains("file by gid 101: -rwxrwxrwx"), "{want}");
    assert!(want.contains("file by gid 100: -rwxrwsrwx"), "{want}");
    sums.assert_unchanged();
}
