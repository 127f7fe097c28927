//! The `unionfs` command: parse the command line, run it, exit once.

use std::process::ExitCode;

use unionfs::cli::{self, Command};

fn run() -> Result<(), (String, u8)> {
    let command = cli::parse_args(std::env::args_os())
        .map_err(|e| (e.message, e.exit_code.clamp(1, 255) as u8))?;
    match command {
        Command::Print(text) => {
            println!("{text}");
            Ok(())
        }
        Command::Umount(mnt) => {
            unionfs::daemon::unmount(&mnt).map_err(|m| (format!("unionfs: {m}"), 1))
        }
        Command::Remount(r) => {
            unionfs::daemon::remount(&r).map_err(|m| (format!("unionfs: {m}"), 1))
        }
        Command::Tool(tool) => match unionfs::tools::run(tool) {
            Ok(0) => Ok(()),
            Ok(code) => Err((String::new(), code)),
            Err(e) => Err((format!("unionfs: {e}"), 1)),
        },
        Command::Mount(config) => {
            if config.verbose && std::env::var_os("RUST_LOG").is_none() {
                // Before the logger starts and before any thread: the
                // narrated mount is the info level of our own events.
                std::env::set_var("RUST_LOG", "warn,fuser=error,unionfs=info");
            }
            unionfs::daemon::logging::init(config.log_file.as_deref())
                .map_err(|m| (format!("unionfs: {m}"), 1))?;
            for w in &config.warnings {
                eprintln!("unionfs: warning: {w}");
            }
            unionfs::daemon::mount(&config).map_err(|m| (format!("unionfs: {m}"), 1))
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err((message, code)) => {
            if !message.is_empty() {
                eprintln!("{message}");
            }
            ExitCode::from(code)
        }
    }
}
