//! Runs every command block of `docs/tutorial.md` in order, in a scratch
//! directory, and checks the output shown under each one, so the tutorial
//! cannot rot.
//!
//! A block is a fenced `sh` block; the fenced `output` block right after it
//! (if any) lists lines that must appear in its output (stdout and stderr
//! together), in that order, other lines may come between. Spaces are
//! compared collapsed, and `[...]` inside a line matches anything. The
//! `output core-narration` block (the narrated mount's log) is checked
//! loosely: a copy-up line naming the file.

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
    let mut at = 0;
    for want in block
        .expected
        .iter()
        .map(|l| collapse(l))
        .filter(|l| !l.is_empty())
    {
        match actual[at..].iter().position(|l| line_matches(&want, l)) {
            Some(i) => at += i + 1,
            None => {
                return Err(format!(
                    "expected line not found (in order): {want:?}\nactual output:\n{}",
                    actual.join("\n")
                ))
            }
        }
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
    assert!(all.len() >= 10, "only {} command blocks found", all.len());
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
        if block.output_kind == "output core-narration" {
            // The narration's wording, copy method and timing vary with the
            // filesystem and the core's log format: only the event itself
            // is checked.
            assert!(
                out.stdout
                    .lines()
                    .any(|l| l.contains("copy-up") && l.contains("/etc/motd")),
                "tutorial line {}: the narrated mount logged no copy-up of /etc/motd:\n{}",
                block.line,
                out.stdout
            );
            continue;
        }
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
