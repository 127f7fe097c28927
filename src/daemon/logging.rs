//! Where log lines go: `--log-file` when given; else stderr until the
//! daemon detaches from the terminal, then syslog, so a daemonized mount
//! never loses its errors. `RUST_LOG` sets the level (default: warn; fuser
//! itself only errors, as it warns about our own unmount on signals).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use crate::sys;

const TO_STDERR: u8 = 0;
const TO_FILE: u8 = 1;
const TO_SYSLOG: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(TO_STDERR);
static LOG_FILE: OnceLock<File> = OnceLock::new();

/// Sets up logging. Fails only when the log file cannot be opened.
pub fn init(log_file: Option<&Path>) -> Result<(), String> {
    if let Some(path) = log_file {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
        let _ = LOG_FILE.set(f);
        MODE.store(TO_FILE, Ordering::Relaxed);
    }
    let _ = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,fuser=error"),
    )
    .target(env_logger::Target::Pipe(Box::new(Sink)))
    .format(|buf, record| {
        writeln!(
            buf,
            "unionfs[{}] {} {}: {}",
            std::process::id(),
            record.level(),
            record.target(),
            record.args()
        )
    })
    .try_init();
    Ok(())
}

/// The daemon has left the terminal: without a log file, use syslog.
pub fn detached(has_file: bool) {
    if !has_file {
        sys::open_syslog();
        MODE.store(TO_SYSLOG, Ordering::Relaxed);
    }
}

/// The log file, for the daemon's stdout/stderr after detaching.
pub fn file_fd() -> Option<BorrowedFd<'static>> {
    LOG_FILE.get().map(|f| f.as_fd())
}

struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match MODE.load(Ordering::Relaxed) {
            TO_FILE => match LOG_FILE.get() {
                Some(mut f) => f.write_all(buf)?,
                None => io::stderr().write_all(buf)?,
            },
            TO_SYSLOG => {
                let text = String::from_utf8_lossy(buf);
                let prio = if text.contains(" ERROR ") {
                    libc::LOG_ERR
                } else if text.contains(" WARN ") {
                    libc::LOG_WARNING
                } else if text.contains(" INFO ") {
                    libc::LOG_INFO
                } else {
                    libc::LOG_DEBUG
                };
                sys::syslog(prio, text.trim_end());
            }
            _ => io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
