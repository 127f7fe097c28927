//! A renamed directory's absolute redirect followed through the lowers:
//! when the path to it in one lower crosses an opaque directory, the lowers
//! below that one hide it, as kernel overlayfs's lookup stops there
//! (`d->stop` in ovl_lookup_single). Found by the differential test (seed
//! 0x322409b2602bc676, with metacopy): a lower's `e/c/a` under an opaque
//! `e` showed through a directory renamed from `e/c`. Checked against
//! kernel overlayfs through real mounts, before and after a remount.

mod common;

use common::*;
use std::fs;
use std::path::Path;

/// l0: e/b/; l1: e/ (opaque) with e/c/; l2: e/c/a/ (hidden by l1's
/// opaque e). Then `e/b` and `e/c` are exchanged, so each is a directory
/// renamed across the other's name: `e/b` is now l1's empty `e/c`.
fn layers(root: &Path) -> Vec<std::path::PathBuf> {
    let l: Vec<_> = (0..3).map(|i| root.join(format!("l{i}"))).collect();
    fs::create_dir_all(l[0].join("e/b")).unwrap();
    fs::create_dir_all(l[1].join("e/c")).unwrap();
    sys::lsetxattr(&l[1].join("e"), b"trusted.overlay.opaque", b"y").unwrap();
    fs::create_dir_all(l[2].join("e/c/a")).unwrap();
    l
}

/// The merged view of `e` as "name: entries" lines.
fn view(mnt: &Path) -> Vec<String> {
    ["e", "e/b", "e/c"]
        .iter()
        .map(|d| format!("{d}: {:?}", list_str(&mnt.join(d))))
        .collect()
}

#[test]
fn a_redirect_through_an_opaque_lower_dir_stops_there_as_the_kernel_does() {
    if !require_mount_env() || !require_kernel_overlay() {
        return;
    }
    let t = TestDir::new("redirect-opaque");
    let mut views = Vec::new();
    for (side, extra) in [
        ("kernel", None),
        ("unionfs", Some(&[][..])),
        ("unionfs-meta", Some(&["-o", "metacopy=on"][..])),
    ] {
        let root = t.mkdir(side);
        let l = layers(&root);
        let lowers: Vec<&Path> = l.iter().map(|p| p.as_path()).collect();
        let upper = t.mkdir(format!("{side}.upper"));
        let work = t.mkdir(format!("{side}.work"));
        let mnt = t.mkdir(format!("{side}.mnt"));
        let sum = checksum_layers(&lowers);
        let m = match extra {
            None => mount_kernel_overlay(
                &lowers,
                Some(&upper),
                Some(&work),
                &mnt,
                &["redirect_dir=on"],
            ),
            Some(args) => mount_unionfs(&lowers, Some(&upper), Some(&work), &mnt, args),
        };
        sys::renameat2(&mnt.join("e/b"), &mnt.join("e/c"), libc::RENAME_EXCHANGE).unwrap();
        let seen = view(&mnt);
        m.umount();
        if let Some(args) = extra {
            // The exchange wrote two empty redirected dirs to the upper;
            // their entries come from the lowers.
            for d in ["e/b", "e/c"] {
                assert!(upper.join(d).is_dir(), "{side}: upper/{d}");
                assert!(
                    list_str(&upper.join(d)).is_empty(),
                    "{side}: upper/{d} holds entries"
                );
            }
            let again = mount_unionfs(&lowers, Some(&upper), Some(&work), &mnt, args);
            assert_eq!(view(&mnt), seen, "{side}: the view after a remount");
            again.umount();
        }
        sum.assert_unchanged();
        views.push((side, seen));
    }
    let (_, kernel) = &views[0];
    assert_eq!(
        kernel,
        &["e: [\"b\", \"c\"]", "e/b: []", "e/c: []"],
        "kernel overlayfs's view"
    );
    for (side, seen) in &views[1..] {
        assert_eq!(seen, kernel, "{side} vs kernel overlayfs");
    }
}
