//! The server's errors and their one mapping to SQLSTATE codes.
//!
//! Every error a client can see passes through [`ServerError::sqlstate`] once,
//! at the wire. Messages say what was wrong; hints say what to do.

use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use fedsql_connectors::ConnectorError;
use fedsql_udfs::UdfError;

/// The SQLSTATE of a model or encoder error: bad options and inputs are
/// the user's to fix (22023 / 42804), unknown names 42704, missing or
/// malformed model files 58P01, the rest the run's (XX000).
pub fn udf_sqlstate(e: &UdfError) -> &'static str {
    match e {
        UdfError::Option(_) => "22023",
        UdfError::Input(_) => "42804",
        UdfError::NotFound(_) => "42704",
        UdfError::Files(_) => "58P01",
        UdfError::Training(_) => "XX000",
    }
}

/// A `Result` whose error is a [`ServerError`].
pub type Result<T, E = ServerError> = std::result::Result<T, E>;

/// Errors of the fedsql server, each with a SQLSTATE.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The SQL does not parse (42601).
    #[error("syntax error: {message}")]
    Syntax {
        message: String,
        /// 1-based character position in the query string.
        position: Option<usize>,
    },
    /// A statement nested deeper than fedsql plans safely (54001, as
    /// Postgres's "statement too complex").
    #[error("{message}")]
    TooComplex {
        message: String,
        /// 1-based character position where the limit was passed.
        position: Option<usize>,
    },
    /// fedsql itself failed (a panic caught while running one statement):
    /// the statement ends, the session and the server go on (XX000).
    #[error("internal error (this is a bug in fedsql, please report it): {0}")]
    Internal(String),
    /// A statement whose capability has not landed yet (0A000).
    #[error("{statement} is not supported yet: {reason}")]
    NotSupported { statement: String, reason: String },
    /// The client asked for a database (catalog) that does not exist (3D000).
    #[error("database \"{name}\" does not exist (available: {available})")]
    UnknownDatabase { name: String, available: String },
    /// A named object (source, view) does not exist (42704).
    #[error("{kind} \"{name}\" does not exist")]
    UndefinedObject { kind: &'static str, name: String },
    /// A named object already exists (42710).
    #[error("{kind} \"{name}\" already exists")]
    DuplicateObject { kind: &'static str, name: String },
    /// `FETCH`, `MOVE` or `CLOSE` named a cursor the connection does not
    /// have (34000).
    #[error("cursor \"{0}\" does not exist")]
    UndefinedCursor(String),
    /// `DECLARE` named a cursor that is already open (42P03).
    #[error("cursor \"{0}\" already exists")]
    DuplicateCursor(String),
    /// A cursor was asked to move backward (55000): fedsql's cursors read
    /// their query's stream once, forward.
    #[error("cursor \"{0}\" can only scan forward")]
    CursorForwardOnly(String),
    /// Settings or options are invalid (22023 / F0000 at startup).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A `fedsql run` project cannot run: a file that does not parse, a
    /// missing ref, a cycle (F0000, as a configuration file error).
    #[error("{0}")]
    Project(String),
    /// Reading or writing the data dir failed (58030).
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A connector failed.
    #[error(transparent)]
    Connector(#[from] fedsql_connectors::ConnectorError),
    /// Planning or executing a query failed; the code was classified from
    /// DataFusion's error.
    #[error("{message}")]
    Query {
        sqlstate: String,
        message: String,
        position: Option<usize>,
    },
}

impl ServerError {
    /// The SQLSTATE sent to Postgres-wire clients.
    pub fn sqlstate(&self) -> &str {
        match self {
            ServerError::Syntax { .. } => "42601",
            ServerError::TooComplex { .. } => "54001",
            ServerError::Internal(_) => "XX000",
            ServerError::NotSupported { .. } => "0A000",
            ServerError::UnknownDatabase { .. } => "3D000",
            ServerError::UndefinedObject { .. } => "42704",
            ServerError::DuplicateObject { .. } => "42710",
            ServerError::UndefinedCursor(_) => "34000",
            ServerError::DuplicateCursor(_) => "42P03",
            ServerError::CursorForwardOnly(_) => "55000",
            ServerError::Config(_) => "22023",
            ServerError::Project(_) => "F0000",
            ServerError::Io { .. } => "58030",
            ServerError::Connector(e) => e.sqlstate(),
            ServerError::Query { sqlstate, .. } => sqlstate,
        }
    }

    /// 1-based character position of the error in the query, if known.
    pub fn position(&self) -> Option<usize> {
        match self {
            ServerError::Syntax { position, .. }
            | ServerError::TooComplex { position, .. }
            | ServerError::Query { position, .. } => *position,
            _ => None,
        }
    }

    /// Shifts the position of an error found in one statement of a longer
    /// query string by that statement's offset (in characters).
    pub fn offset_by(mut self, offset: usize) -> Self {
        if let ServerError::Syntax { position, .. }
        | ServerError::TooComplex { position, .. }
        | ServerError::Query { position, .. } = &mut self
        {
            *position = position.map(|p| p + offset);
        }
        self
    }

    /// A wrapper for I/O errors that names the file.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        ServerError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    /// Classifies a DataFusion error raised while running `sql`.
    ///
    /// Positions are relative to `sql`. DataFusion reports syntax errors
    /// without a usable location when the text went through the
    /// Postgres-compatibility rewriter, so the statement is parsed once more
    /// with sqlparser to find where it breaks.
    pub fn from_datafusion(err: &DataFusionError, sql: &str) -> Self {
        let root = err.find_root();
        let message = root.message().to_string();
        match root {
            DataFusionError::SQL(parser_error, _)
                if matches!(
                    parser_error.as_ref(),
                    datafusion::sql::sqlparser::parser::ParserError::RecursionLimitExceeded
                ) =>
            {
                ServerError::TooComplex {
                    message: "statement too complex: nested too deeply".into(),
                    position: None,
                }
            }
            DataFusionError::SQL(parser_error, _) => syntax_error(&parser_error.to_string(), sql),
            DataFusionError::SchemaError(schema_error, _) => {
                let sqlstate = match schema_error.as_ref() {
                    datafusion::common::SchemaError::FieldNotFound { .. } => "42703",
                    datafusion::common::SchemaError::AmbiguousReference { .. } => "42702",
                    _ => "42P16",
                };
                ServerError::Query {
                    sqlstate: sqlstate.into(),
                    position: field_position(schema_error.as_ref(), sql),
                    message,
                }
            }
            DataFusionError::Plan(msg) => {
                let sqlstate = if msg.contains("not found") && msg.starts_with("table ") {
                    "42P01"
                } else if msg.contains("Invalid function") || msg.contains("No function matches") {
                    "42883"
                } else if msg.starts_with("unrecognized configuration parameter") {
                    "42704"
                } else if msg.contains("coerce") || msg.contains("Cannot infer") {
                    "42804"
                } else {
                    "42000"
                };
                let position = if sqlstate == "42P01" {
                    table_position(msg, sql)
                } else {
                    None
                };
                ServerError::Query {
                    sqlstate: sqlstate.into(),
                    message,
                    position,
                }
            }
            DataFusionError::External(inner) => match inner.downcast_ref::<ConnectorError>() {
                Some(e) => ServerError::Query {
                    sqlstate: e.sqlstate().to_string(),
                    message: e.to_string(),
                    position: None,
                },
                None if inner.is::<UdfError>() => ServerError::Query {
                    sqlstate: inner
                        .downcast_ref::<UdfError>()
                        .map_or("XX000", udf_sqlstate)
                        .into(),
                    message: inner.to_string(),
                    position: None,
                },
                None => ServerError::Query {
                    sqlstate: "XX000".into(),
                    message,
                    position: None,
                },
            },
            DataFusionError::NotImplemented(_) => ServerError::Query {
                sqlstate: "0A000".into(),
                message,
                position: None,
            },
            DataFusionError::ResourcesExhausted(_) => ServerError::Query {
                sqlstate: "53200".into(),
                message,
                position: None,
            },
            DataFusionError::ArrowError(arrow, _)
                if matches!(
                    arrow.as_ref(),
                    datafusion::arrow::error::ArrowError::CastError(_)
                        | datafusion::arrow::error::ArrowError::ParseError(_)
                ) =>
            {
                ServerError::Query {
                    sqlstate: "22P02".into(),
                    message,
                    position: None,
                }
            }
            DataFusionError::ArrowError(arrow, _)
                if matches!(
                    arrow.as_ref(),
                    datafusion::arrow::error::ArrowError::DivideByZero
                ) =>
            {
                ServerError::Query {
                    sqlstate: "22012".into(),
                    message,
                    position: None,
                }
            }
            DataFusionError::Execution(msg) if msg.contains("Cannot cast") => ServerError::Query {
                sqlstate: "22P02".into(),
                message,
                position: None,
            },
            DataFusionError::Internal(_) => ServerError::Query {
                sqlstate: "XX000".into(),
                message: format!(
                    "internal error (this is a bug in fedsql or DataFusion): {message}"
                ),
                position: None,
            },
            _ => ServerError::Query {
                sqlstate: "XX000".into(),
                message,
                position: None,
            },
        }
    }
}

/// A syntax error located by re-parsing `sql` with sqlparser.
pub fn syntax_error(message: &str, sql: &str) -> ServerError {
    let located = Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .err()
        .map(|e| fedsql_sql::ParseError::from_parser_error(&e, sql));
    let (clean, position) = fedsql_sql::locate(message, sql);
    match located {
        Some(parsed) if parsed.position.is_some() => ServerError::Syntax {
            message: parsed.message,
            position: parsed.position,
        },
        _ => ServerError::Syntax {
            message: clean.trim_start_matches("sql parser error: ").to_string(),
            position,
        },
    }
}

impl From<fedsql_sql::ParseError> for ServerError {
    fn from(e: fedsql_sql::ParseError) -> Self {
        match e.kind {
            fedsql_sql::ParseErrorKind::Syntax => ServerError::Syntax {
                message: e.message,
                position: e.position,
            },
            fedsql_sql::ParseErrorKind::TooComplex => ServerError::TooComplex {
                message: e.message,
                position: e.position,
            },
        }
    }
}

/// The message of a caught panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Runs `work` (one statement's planning or execution) so that a panic
/// inside it ends that statement with [`ServerError::Internal`] instead of
/// the session: the server keeps serving every other statement.
pub async fn catch_panic<T>(work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => Err(ServerError::Internal(panic_message(payload.as_ref()))),
    }
}

/// 1-based character position of the first case-insensitive match of `word`
/// in `sql` that is not part of a longer identifier.
fn word_position(sql: &str, word: &str) -> Option<usize> {
    // Compared char by char, each lower-cased to one char: lower-casing a
    // whole string can change its length ('İ' becomes two chars), which
    // would move every position after it.
    let fold = |c: char| c.to_lowercase().next().unwrap_or(c);
    let text: Vec<char> = sql.chars().map(fold).collect();
    let needle: Vec<char> = word.chars().map(fold).collect();
    if needle.is_empty() || needle.len() > text.len() {
        return None;
    }
    let is_ident = |c: &char| c.is_alphanumeric() || *c == '_';
    (0..=text.len() - needle.len())
        .find(|&start| {
            let end = start + needle.len();
            text[start..end] == needle[..]
                && !start
                    .checked_sub(1)
                    .and_then(|b| text.get(b))
                    .is_some_and(is_ident)
                && !text.get(end).is_some_and(is_ident)
        })
        // A quoted identifier's position is its opening quote, as Postgres's.
        .map(
            |start| match start.checked_sub(1).and_then(|b| text.get(b)) {
                Some('"') => start,
                _ => start + 1,
            },
        )
}

/// Where the missing table of "table 'a.b.c' not found" is named in `sql`.
fn table_position(message: &str, sql: &str) -> Option<usize> {
    let name = message.split('\'').nth(1)?;
    word_position(sql, name.rsplit('.').next()?)
}

fn field_position(err: &datafusion::common::SchemaError, sql: &str) -> Option<usize> {
    match err {
        datafusion::common::SchemaError::FieldNotFound { field, .. } => {
            word_position(sql, &field.name)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_are_located_by_reparsing() {
        let e = syntax_error("sql parser error: whatever", "SELECT 1 FORM t");
        assert_eq!(e.sqlstate(), "42601");
        assert_eq!(e.position(), Some(15));
    }

    #[test]
    fn unknown_table_is_42p01_with_position() {
        let sql = "select * from demo.bank.nope";
        let err = DataFusionError::Plan("table 'demo.bank.nope' not found".into());
        let e = ServerError::from_datafusion(&err, sql);
        assert_eq!(e.sqlstate(), "42P01");
        assert_eq!(e.position(), Some(25));
    }

    #[test]
    fn word_position_skips_longer_identifiers() {
        assert_eq!(word_position("select nopes, nope from t", "nope"), Some(15));
        assert_eq!(word_position("select x", "nope"), None);
    }

    #[test]
    fn positions_count_characters_after_multibyte_text() {
        // 'İ' is two bytes and lower-cases to two chars.
        let sql = "SELECT 'İİİİ', \"éa\" FROM t";
        assert_eq!(word_position(sql, "éa"), Some(16));
        assert_eq!(word_position("SELECT 'İ', x", "x"), Some(13));
    }

    #[test]
    fn offsets_shift_positions() {
        let e = ServerError::Syntax {
            message: "x".into(),
            position: Some(3),
        }
        .offset_by(10);
        assert_eq!(e.position(), Some(13));
    }
}
