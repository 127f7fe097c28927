//! placeholder
use super::{tree::Union, ToolError};
pub fn run(_m: &Union, _l: &Union, _o: &std::ffi::OsStr, _r: bool) -> Result<(), ToolError> {
    Err(ToolError("todo".into()))
}
