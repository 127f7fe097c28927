//! Runs every command block of `docs/tutorial.md` in order, in a scratch
//! directory, and checks the output shown under each one, so the tutorial
//! cannot rot.
//!
//! A block is a fenced `sh` block; the fenced `output` block right after it
//! (if any) is its whole output (stdout and stderr together), line for
//! line: no line more, none fewer. Spaces are compared collapsed, the
//! tutorial's scratch path stands for the test's own, and `[...]` inside a
//! line matches any text (what differs between machines). A command block
//! without an output block must print nothing.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// The tutorial's scratch directory, replaced by a per-test one.
const SCRATCH: &str = "/tmp/unionfs-tutorial";

struct Block {
    line: usize,
    script: String,
    /// The info string of the output block (`output`, `output core-narration`).
    output_kind: String,
    expected: Vec<String>,
}

fn blocks(doc: &str) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::new();
    let mut lines = doc.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let info = info.trim().to_string();
        let mut body = Vec::new();
        for (_, l) in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            body.push(l.to_string());
        }
        if info == "sh" {
            out.push(Block {
                line: n + 1,
                script: body.join("\n"),
                output_kind: String::new(),
                expected: Vec::new(),
            });
        } else if info.starts_with("output") {
            let last = out.last_mut().unwrap_or_else(|| {
                panic!("tutorial line {}: output block before any command", n + 1)
            });
            assert!(
                last.output_kind.is_empty(),
                "tutorial line {}: two output blocks",
                n + 1
            );
            last.output_kind = info;
            last.expected = body;
        }
    }
    out
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whole-line match where `[...]` matches any text.
fn line_matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split("[...]").collect();
    let mut rest = line;
    for (i, part) in parts.iter().enumerate() {
        let part = part.trim();
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 && !part.is_empty() {
            return rest.trim_end().ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    parts.len() > 1 || rest.trim().is_empty()
}

fn check_output(block: &Block, actual: &str) -> Result<(), String> {
    let actual: Vec<String> = actual.lines().map(collapse).collect();
    let expected: Vec<String> = block.expected.iter().map(|l| collapse(l)).collect();
    let shown = || format!("actual output:\n{}", actual.join("\n"));
    for (i, want) in expected.iter().enumerate() {
        match actual.get(i) {
            Some(got) if line_matches(want, got) => {}
            Some(got) => {
                return Err(format!(
                    "output line {}: expected {want:?}, got {got:?}\n{}",
                    i + 1,
                    shown()
                ))
            }
            None => {
                return Err(format!(
                    "output line {}: expected {want:?}, output ended\n{}",
                    i + 1,
                    shown()
                ))
            }
        }
    }
    if actual.len() > expected.len() {
        return Err(format!(
            "output line {}: {:?} is not in the tutorial\n{}",
            expected.len() + 1,
            actual[expected.len()],
            shown()
        ));
    }
    Ok(())
}

#[test]
fn tutorial_runs_as_written() {
    if !require_mount_env() {
        return;
    }
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/tutorial.md");
    let doc = std::fs::read_to_string(&doc_path).expect("read docs/tutorial.md");
    let t = TestDir::new("tutorial");
    let scratch = t.path().join("unionfs-tutorial");
    let scratch_s = scratch.to_str().expect("utf-8 test dir").to_string();
    let bin_dir = Path::new(unionfs_bin())
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let all = blocks(&doc);
    assert!(all.len() >= 15, "only {} command blocks found", all.len());
    // The tutorial's outputs are what root sees: owners, chroot, trusted.*.
    if !which("getfattr") {
        panic!("getfattr is missing (Debian package attr; scripts/deps.sh installs it)");
    }
    for block in &all {
        let script = block.script.replace(SCRATCH, &scratch_s);
        let full = format!(
            "exec 2>&1\nset -euo pipefail\nmkdir -p {scratch_s}\ncd {scratch_s}\n{script}\n"
        );
        let out = run(
            Command::new("bash")
                .arg("-c")
                .arg(&full)
                .env("PATH", &path)
                .env_remove("RUST_LOG"),
            Duration::from_secs(60),
        );
        assert!(
            out.success(),
            "tutorial block at line {} failed:\n{}\n{out}",
            block.line,
            block.script
        );
        let expected: Vec<String> = block
            .expected
            .iter()
            .map(|l| l.replace(SCRATCH, &scratch_s))
            .collect();
        let b = Block {
            line: block.line,
            script: String::new(),
            output_kind: block.output_kind.clone(),
            expected,
        };
        if let Err(e) = check_output(&b, &out.stdout) {
            panic!(
                "tutorial block at line {}:\n{}\n{e}",
                block.line, block.script
            );
        }
    }
    let left = mounts_under(t.path());
    assert!(
        left.is_empty(),
        "the tutorial leaves mounts behind: {:?}",
        left.iter()
            .map(|m| m.mount_point.clone())
            .collect::<Vec<_>>()
    );
}

/// True when `cmd` is on PATH.
fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

#[test]
fn outputs_are_compared_line_for_line() {
    let block = |lines: &[&str]| Block {
        line: 1,
        script: String::new(),
        output_kind: "output".into(),
        expected: lines.iter().map(|l| l.to_string()).collect(),
    };
    assert!(check_output(&block(&["a", "b [...]"]), "a\nb 12\n").is_ok());
    assert!(
        check_output(&block(&["a"]), "a\nextra\n").is_err(),
        "a line more"
    );
    assert!(
        check_output(&block(&["a", "b"]), "a\n").is_err(),
        "a line fewer"
    );
    assert!(
        check_output(&block(&["b", "a"]), "a\nb\n").is_err(),
        "order"
    );
    assert!(
        check_output(&block(&["a", "", "b"]), "a\n\nb\n").is_ok(),
        "blank lines"
    );
    assert!(check_output(&block(&[]), "").is_ok());
    assert!(
        check_output(&block(&[]), "noise\n").is_err(),
        "silent blocks"
    );
}

#[test]
fn output_patterns_match_as_documented() {
    assert!(line_matches("a [...] c", "a b b c"));
    assert!(line_matches(
        "[...]copy-up[...]/x[...]",
        "log copy-up of /x done"
    ));
    assert!(!line_matches("abc", "abcd"));
    assert!(line_matches("efficiency: [...]", "efficiency: 99%"));
    assert!(!line_matches("a [...] c", "a b d"));
}
