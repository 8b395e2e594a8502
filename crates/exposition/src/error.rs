//! Parse errors that say where and what.

use std::fmt;

/// A document could not be parsed. `line` and `column` are 1-based; the
/// column counts characters, not bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// 1-based character column within the line.
    pub column: usize,
    /// What was wrong, usually "expected X, found Y".
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

/// Describes the character at the head of `rest` for an error message.
pub(crate) fn found(rest: &[u8]) -> String {
    match rest.first() {
        None => "end of line".to_owned(),
        Some(b' ') => "a space".to_owned(),
        Some(b'\t') => "a tab".to_owned(),
        Some(_) => {
            let s = String::from_utf8_lossy(&rest[..rest.len().min(16)]);
            let c = s.chars().next().unwrap_or('?');
            format!("{c:?}")
        }
    }
}
