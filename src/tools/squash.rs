//! placeholder
use super::{tree::Union, ToolError};
pub fn run(_m: &Union, _o: &std::ffi::OsStr) -> Result<(), ToolError> {
    Err(ToolError("todo".into()))
}
