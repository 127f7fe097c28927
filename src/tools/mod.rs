//! Tools that read layers without a mount: `which`, `ls`,
//! `layers`, `diff`, `commit`, `apply`, `squash`, and `check`, the fsck
//! of an unmounted union. They share the offline
//! union reader in [`offline`], which resolves names by the mount's own rules
//! ([`crate::union`]), and they only ever read the layers they
//! are given (`apply` and `squash` write a new directory, `commit` an
//! archive).

pub mod apply;
pub mod check;
pub mod commit;
pub mod diff;
pub mod layers;
pub mod live;
pub mod ls;
pub mod offline;
pub mod output;
pub mod squash;
pub mod stage;
pub mod which;

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use offline::Union;

/// A tool's failure: one line for stderr (without the "unionfs: " prefix).
#[derive(Debug)]
pub struct ToolError(pub String);

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<crate::Error> for ToolError {
    fn from(e: crate::Error) -> ToolError {
        ToolError(e.to_string())
    }
}

impl From<io::Error> for ToolError {
    fn from(e: io::Error) -> ToolError {
        if e.kind() == io::ErrorKind::BrokenPipe {
            // The reader went away (`| head`): nothing to say about it.
            return ToolError(String::new());
        }
        ToolError(io_text(&e))
    }
}

/// An I/O error's text without the "(os error N)" Rust appends: the errno
/// text alone reads better.
pub fn io_text(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

impl From<String> for ToolError {
    fn from(s: String) -> ToolError {
        ToolError(s)
    }
}

/// Layers given on the command line, as `mount` takes them: lowers top
/// first, each an existing directory (symlinks resolved), and an optional
/// upper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerArgs {
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    /// The upper's work dir, whose hard-link index serves lower names of
    /// objects copied up through another name.
    pub work: Option<PathBuf>,
}

impl LayerArgs {
    fn open(&self) -> Result<Union, ToolError> {
        Ok(Union::open(
            &self.lowers,
            self.upper.as_deref(),
            self.work.as_deref(),
        )?)
    }

    fn open_lowers_only(&self) -> Result<Union, ToolError> {
        Ok(Union::open(&self.lowers, None, None)?)
    }
}

/// Where a whole-union tool (`layers`, `diff`, `commit`) finds its layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerSource {
    /// Named on the command line.
    Given(LayerArgs),
    /// Those of the live unionfs mount this path is in.
    Mount(OsString),
}

impl LayerSource {
    /// The layers; `need_upper` refuses a mount without an upper.
    fn layers(self, need_upper: bool) -> Result<LayerArgs, ToolError> {
        let path = match self {
            LayerSource::Given(l) => return Ok(l),
            LayerSource::Mount(p) => p,
        };
        let found = live::find(Path::new(&path))?;
        if need_upper && found.layers.upper.is_none() {
            return Err(ToolError(format!(
                "{}: a read-only mount (no upper): it has no changes",
                Path::new(&path).display()
            )));
        }
        Ok(found.layers)
    }
}

/// The whiteout format `apply` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyFormat {
    /// Char device 0/0 and `overlay.opaque=y`: mounts under kernel overlayfs.
    Overlay,
    /// `.wh.NAME` and `.wh..wh..opq`, as in the archive.
    Oci,
    /// Overlay when we may make device nodes (root), else OCI.
    Auto,
}

/// A tool invocation, parsed and checked by the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolCommand {
    /// `layers: None`: the paths are in live unionfs mounts.
    Which {
        layers: Option<LayerArgs>,
        paths: Vec<OsString>,
    },
    Ls {
        layers: Option<LayerArgs>,
        recursive: bool,
        dir: Option<OsString>,
    },
    Layers(LayerSource),
    Diff(LayerSource),
    Commit {
        layers: LayerSource,
        output: OsString,
        reproducible: bool,
    },
    Apply {
        archive: OsString,
        dir: OsString,
        format: ApplyFormat,
    },
    Squash {
        layers: LayerArgs,
        output: OsString,
    },
    /// Exit status 0 (no problem), 1 (problems left), 2 (could not check).
    Check {
        layers: LayerArgs,
        repair: bool,
    },
}

/// Runs a tool; `Ok(code)` is the exit status (1 when `which` did not find
/// a path). Messages for stderr are printed here, one line each.
pub fn run(cmd: ToolCommand) -> Result<u8, ToolError> {
    match run_tool(cmd) {
        // Output cut short by a closed pipe: fail quietly.
        Err(e) if e.0.is_empty() => Ok(1),
        other => other,
    }
}

fn run_tool(cmd: ToolCommand) -> Result<u8, ToolError> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let code = match cmd {
        ToolCommand::Which { layers, paths } => {
            let mut missing = Vec::new();
            match layers {
                Some(l) => missing = which::run(&l.open()?, &paths, &mut out)?,
                None => {
                    for p in &paths {
                        let found = live::find(std::path::Path::new(p))?;
                        let union = found.layers.open()?;
                        missing.extend(which::run(&union, &[found.rel], &mut out)?);
                    }
                }
            }
            out.flush()?;
            for m in &missing {
                eprintln!("unionfs: which: {m}");
            }
            u8::from(!missing.is_empty())
        }
        ToolCommand::Ls {
            layers,
            recursive,
            dir,
        } => {
            let (union, rel) = match layers {
                Some(l) => (l.open()?, dir.unwrap_or_default()),
                None => {
                    let target = dir.unwrap_or_else(|| ".".into());
                    let found = live::find(std::path::Path::new(&target))?;
                    (found.layers.open()?, found.rel)
                }
            };
            let colour = io::IsTerminal::is_terminal(&io::stdout());
            ls::run(&union, &rel, recursive, colour, &mut out)?;
            0
        }
        ToolCommand::Layers(l) => {
            layers::run(&l.layers(false)?.open()?, &mut out)?;
            0
        }
        ToolCommand::Diff(l) => {
            let l = l.layers(true)?;
            for c in diff::changes(&l.open()?, &l.open_lowers_only()?)? {
                writeln!(out, "{} {}", c.change.letter(), offline::show_path(&c.path))?;
            }
            0
        }
        ToolCommand::Commit {
            layers,
            output,
            reproducible,
        } => {
            let layers = layers.layers(true)?;
            layers.refuse_output_inside(&output)?;
            commit::run(
                &layers.open()?,
                &layers.open_lowers_only()?,
                &output,
                reproducible,
            )?;
            0
        }
        ToolCommand::Apply {
            archive,
            dir,
            format,
        } => {
            apply::run(&archive, &dir, format)?;
            0
        }
        ToolCommand::Squash { layers, output } => {
            layers.refuse_output_inside(&output)?;
            squash::run(&layers.open()?, &output)?;
            0
        }
        ToolCommand::Check { layers, repair } => match check::run(&layers, repair, &mut out) {
            Ok(code) => code,
            // Could not check: a status of its own, so that a script tells
            // "problems" from "no answer".
            Err(e) if !e.0.is_empty() => {
                out.flush()?;
                eprintln!("unionfs: check: {e}");
                2
            }
            Err(e) => return Err(e),
        },
    };
    out.flush()?;
    Ok(code)
}
