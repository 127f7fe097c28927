//! The mount table of this process (`/proc/self/mountinfo`), read by the
//! tools (which mount holds a path) and the daemon (its own mount's device).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `MAJOR:MINOR` of the mounted filesystem (its bdi in /sys/class/bdi).
    pub dev: String,
    pub point: PathBuf,
    /// A FUSE mount (`fuse` or `fuse.NAME`).
    pub fuse: bool,
}

/// Every mount, in mount order.
pub fn mounts() -> io::Result<Vec<Mount>> {
    Ok(parse(&fs::read("/proc/self/mountinfo")?))
}

fn parse(text: &[u8]) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.split(|b| *b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == b"-") else {
            continue;
        };
        let fstype = fields.get(sep + 1).copied().unwrap_or_default();
        if let (Some(dev), Some(point)) = (fields.get(2), fields.get(4)) {
            out.push(Mount {
                dev: String::from_utf8_lossy(dev).into_owned(),
                point: PathBuf::from(unescape(point)),
                fuse: fstype == b"fuse" || fstype.starts_with(b"fuse."),
            });
        }
    }
    out
}

/// Decodes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &[u8]) -> OsString {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 4 <= field.len() {
            let oct = &field[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_device_point_and_type() {
        let text = b"36 25 0:32 / /mnt/a\\040b rw,nosuid - fuse.unionfs unionfs rw\n\
                     37 25 8:1 / /data rw - ext4 /dev/sda1 rw\n";
        let m = parse(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].dev, "0:32");
        assert_eq!(m[0].point, PathBuf::from("/mnt/a b"));
        assert!(m[0].fuse);
        assert!(!m[1].fuse);
    }

    #[test]
    fn octal_escapes_decode_and_others_stay() {
        assert_eq!(unescape(br"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(br"/x\134y"), "/x\\y");
        assert_eq!(unescape(br"/x\9y"), "/x\\9y");
    }
}
