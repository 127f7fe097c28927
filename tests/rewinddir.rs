//! rewinddir(3) through a real mount: names made after opendir(3) and
//! before the rewind are listed after it (POSIX; xfstests generic/471),
//! in a directory only the upper holds, in a merged one and in a lower one.

mod common;

use common::sys::DirStream;
use common::*;
use std::fs;

/// The names (no `.`/`..`) a stream lists from where it stands to its end.
fn names(ds: &mut DirStream) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(e) = ds.read().expect("readdir") {
        if e.name != b"." && e.name != b".." {
            out.push(show(&e.name));
        }
    }
    out.sort();
    out
}

#[test]
fn names_made_before_a_rewind_are_listed_after_it() {
    if !require_mount_env() {
        return;
    }
    let t = TestDir::new("rewinddir");
    let lower = t.mkdir("lower");
    fs::create_dir_all(lower.join("merged")).unwrap();
    fs::write(lower.join("merged/old"), b"x").unwrap();
    fs::create_dir_all(lower.join("lowonly")).unwrap();
    let (upper, mnt) = (t.mkdir("upper"), t.mkdir("mnt"));
    let sum = checksum_layers(&[&lower]);
    let m = mount_unionfs(&[&lower], Some(&upper), None, &mnt, &[]);
    fs::create_dir(mnt.join("new")).unwrap();
    fs::write(mnt.join("merged/up"), b"x").unwrap(); // merged: upper + lower
    for (dir, before) in [
        ("new", vec![]),
        ("merged", vec!["old", "up"]),
        ("lowonly", vec![]),
    ] {
        let mut ds = DirStream::open(&mnt.join(dir)).unwrap();
        for n in ["a1", "a2", "a3"] {
            fs::write(mnt.join(dir).join(n), b"x").unwrap();
        }
        ds.rewind();
        let mut want: Vec<String> = before.iter().map(|s| s.to_string()).collect();
        want.extend(["a1", "a2", "a3"].map(String::from));
        want.sort();
        assert_eq!(names(&mut ds), want, "{dir}: after rewinddir");
        // And once read, a rewind shows a removal as well.
        fs::remove_file(mnt.join(dir).join("a2")).unwrap();
        ds.rewind();
        want.retain(|n| n != "a2");
        assert_eq!(names(&mut ds), want, "{dir}: after a removal and rewinddir");
    }
    drop(m);
    // What was made is the upper's, the removal left nothing there.
    for dir in ["new", "merged", "lowonly"] {
        for (name, there) in [("a1", true), ("a2", false), ("a3", true)] {
            assert_eq!(
                upper.join(dir).join(name).exists(),
                there,
                "{dir}/{name} in the upper"
            );
        }
    }
    sum.assert_unchanged();
}
