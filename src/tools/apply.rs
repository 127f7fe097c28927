//! placeholder
use super::{ApplyFormat, ToolError};
pub fn run(_a: &std::ffi::OsStr, _d: &std::ffi::OsStr, _f: ApplyFormat) -> Result<(), ToolError> {
    Err(ToolError("todo".into()))
}
