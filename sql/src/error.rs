//! Parse errors with a Postgres-style cursor position.

use datafusion::sql::sqlparser::parser::ParserError;
use datafusion::sql::sqlparser::tokenizer::Location;

/// Why a statement was refused before planning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// The text is not valid SQL (SQLSTATE 42601).
    Syntax,
    /// The statement is valid but nested deeper than fedsql plans safely
    /// (SQLSTATE 54001, Postgres's "statement too complex").
    TooComplex,
}

/// A statement refused by [`crate::parse`]: a syntax error (SQLSTATE 42601
/// on the wire) or a statement too complex to plan (54001).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// What was wrong, without sqlparser's "at Line: …" suffix.
    pub message: String,
    /// 1-based character position in the whole query string, as Postgres's
    /// `P` error field expects.
    pub position: Option<usize>,
    /// Which of the two refusals this is.
    pub kind: ParseErrorKind,
}

impl ParseError {
    /// A parse error at `position` (1-based characters), if known.
    pub fn new(message: impl Into<String>, position: Option<usize>) -> Self {
        ParseError {
            message: message.into(),
            position,
            kind: ParseErrorKind::Syntax,
        }
    }

    /// Converts a sqlparser error on `sql` into one with a character position.
    pub fn from_parser_error(err: &ParserError, sql: &str) -> Self {
        let (raw, kind) = match err {
            ParserError::TokenizerError(m) | ParserError::ParserError(m) => {
                (m.clone(), ParseErrorKind::Syntax)
            }
            ParserError::RecursionLimitExceeded => (
                "statement too complex: nested too deeply".to_string(),
                ParseErrorKind::TooComplex,
            ),
        };
        let (message, position) = locate(&raw, sql);
        ParseError {
            message,
            position,
            kind,
        }
    }
}

/// Splits sqlparser's `… at Line: L, Column: C` suffix off `message` and turns
/// it into a 1-based character position in `sql`.
///
/// sqlparser reports locations only inside its message text, so this is the
/// one place that reads them back.
pub fn locate(message: &str, sql: &str) -> (String, Option<usize>) {
    let Some(at) = message.rfind(" at Line: ") else {
        return (message.to_string(), None);
    };
    let suffix = &message[at + " at Line: ".len()..];
    let mut parts = suffix.splitn(2, ", Column: ");
    let line = parts.next().and_then(|l| l.trim().parse::<u64>().ok());
    let column = parts.next().and_then(|c| {
        c.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u64>()
            .ok()
    });
    match (line, column) {
        (Some(line), Some(column)) => {
            let position =
                crate::parser::char_position(sql, Location::new(line, column)).map(|p| p + 1);
            (message[..at].to_string(), position)
        }
        _ => (message.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_reads_line_and_column() {
        let (m, p) = locate(
            "Expected: an expression, found: FORM at Line: 2, Column: 3",
            "SELECT\n  FORM x",
        );
        assert_eq!(m, "Expected: an expression, found: FORM");
        assert_eq!(p, Some(10));
    }

    #[test]
    fn locate_without_location_keeps_message() {
        assert_eq!(locate("boom", "x"), ("boom".to_string(), None));
    }
}
