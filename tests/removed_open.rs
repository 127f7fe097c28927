//! `fstat` of an open directory whose name is gone, through a real mount:
//! removed by rmdir or replaced by a rename over it (xfstests generic/035,
//! `t_rename_overwrite`). The kernel sends that GETATTR without a file
//! handle (it passes one for regular files only), so the daemon must answer
//! for a dead node with no open file: as kernel overlayfs and every local
//! filesystem do, a directory with no links, not ENOENT.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;

#[test]
fn fstat_of_an_open_directory_after_its_name_is_gone() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("removed-open-dir");
    let l1 = Layer::new("lower1")
        .dir("la")
        .tagged("la/x")
        .dir("lb")
        .dir("lgone");
    let lower = render_stack(&[l1], t.path(), Format::Kernel).remove(0);
    let upper = t.mkdir("upper");
    let work = t.mkdir("work");
    let mnt = t.mkdir("mnt");
    let sums = checksum_layers(&[&lower]);
    let m = mount_unionfs(&[&lower], Some(&upper), Some(&work), &mnt, &[]);
    fs::create_dir(mnt.join("ua")).unwrap();
    fs::write(mnt.join("ua/y"), b"y").unwrap();
    fs::create_dir(mnt.join("ub")).unwrap();
    fs::create_dir(mnt.join("ugone")).unwrap();

    let mut fails = Vec::new();
    let mut check = |what: &str, dir: &fs::File| match dir.metadata() {
        Ok(md) if md.is_dir() && md.nlink() == 0 => {}
        Ok(md) => fails.push(format!(
            "{what}: fstat says dir={} nlink={}, want a dir with nlink 0",
            md.is_dir(),
            md.nlink()
        )),
        Err(e) => fails.push(format!("{what}: fstat failed: {e}")),
    };
    // a rename over an open directory: upper-only, and lower-only (which
    // leaves the lower's dir in place under a whiteout-covered name)
    for (from, to) in [("ua", "ub"), ("la", "lb")] {
        let held = fs::File::open(mnt.join(to)).unwrap();
        fs::rename(mnt.join(from), mnt.join(to)).unwrap();
        check(&format!("rename {from} over open {to}"), &held);
    }
    // rmdir of an open directory
    for name in ["ugone", "lgone"] {
        let held = fs::File::open(mnt.join(name)).unwrap();
        fs::remove_dir(mnt.join(name)).unwrap();
        check(&format!("rmdir of open {name}"), &held);
    }
    // the new objects at those names are what the renames put there
    assert_eq!(fs::read(mnt.join("ub/y")).unwrap(), b"y");
    assert_eq!(fs::read(mnt.join("lb/x")).unwrap(), tag("lower1", "la/x"));
    m.umount();
    assert_no_failures("fstat of removed open dirs", &fails);
    sums.assert_unchanged();
    // where the bytes landed: the renamed dirs live in the upper
    assert!(upper.join("ub/y").exists() && upper.join("lb").is_dir());
}
