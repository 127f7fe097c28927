//! One error type for the whole daemon: an errno plus what we were doing.
//!
//! Every request path returns [`Result`]; `fuse.rs` turns the errno into the
//! reply. Nothing on a request path panics.

use std::fmt;
use std::io;

/// An errno with a short context, e.g. `ENOENT: lookup "etc"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    errno: i32,
    context: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error with the given errno and no context.
    pub fn errno(errno: i32) -> Error {
        Error {
            errno,
            context: String::new(),
        }
    }

    /// An error from the calling thread's `errno`.
    pub fn last() -> Error {
        Error::errno(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }

    /// Adds what we were doing, for logs and CLI messages.
    pub fn context(mut self, what: impl fmt::Display) -> Error {
        if self.context.is_empty() {
            self.context = what.to_string();
        } else {
            self.context = format!("{what}: {}", self.context);
        }
        self
    }

    /// The errno to hand to the kernel.
    pub fn raw(&self) -> i32 {
        self.errno
    }

    /// True when this is the given errno.
    pub fn is(&self, errno: i32) -> bool {
        self.errno == errno
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = io::Error::from_raw_os_error(self.errno);
        if self.context.is_empty() {
            write!(f, "{text}")
        } else {
            write!(f, "{}: {text}", self.context)
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        match e.raw_os_error() {
            Some(errno) => Error::errno(errno),
            None => Error::errno(libc::EIO).context(e),
        }
    }
}

/// Shorthand for `Err(Error::errno(e))`.
pub fn fail<T>(errno: i32) -> Result<T> {
    Err(Error::errno(errno))
}
