//! Errors of the connectors crate.

use datafusion::error::DataFusionError;

/// Something a source could not do; the server maps each variant to a SQLSTATE.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// An option of a source (or of the demo catalog) has a bad value.
    #[error("invalid option {option}: {message}")]
    InvalidOption { option: String, message: String },
    /// Reading or writing files in the data dir failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Writing Parquet failed.
    #[error("Parquet error: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    /// Arrow rejected a batch (a bug in the generator or a connector).
    #[error("Arrow error: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// DataFusion rejected a table or catalog registration.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// The source's server cannot be reached (08001).
    #[error("source {source_name}: cannot connect to {addr}: {message}")]
    Unreachable {
        source_name: String,
        addr: String,
        message: String,
    },
    /// The source refused the credentials (28P01).
    #[error("source {source_name}: authentication failed at {addr}: {message}")]
    AuthFailed {
        source_name: String,
        addr: String,
        message: String,
    },
    /// `password_env` names a variable that is not set (28P01).
    #[error("environment variable {var} (named by password_env) is not set in the fedsql server's environment")]
    MissingPassword { var: String },
    /// The connection dropped mid-query (08006).
    #[error("source {source_name}: connection lost during the query: {message}")]
    ConnectionLost {
        source_name: String,
        message: String,
    },
    /// The source rejected the SQL fedsql sent; its own SQLSTATE is kept.
    #[error("source {source_name}: {message}")]
    Remote {
        source_name: String,
        sqlstate: String,
        message: String,
    },
    /// The source's own policy refused the query (a site's analytics
    /// policy): 42501. Never a reason to fall back to less pushdown, which
    /// would only ask for more. The message names the source itself.
    #[error("{message}")]
    Refused {
        source_name: String,
        message: String,
    },
    /// The source answered the SQL fedsql generated with another shape than
    /// the plan it was generated from (a bug of the unparser; the query is
    /// planned again with less pushed down, see `pushdown::fallback`).
    #[error("source {source_name}: {message}")]
    UnexpectedShape {
        source_name: String,
        message: String,
    },
    /// The ODBC driver a source names is not installed (IM002 from the driver manager).
    #[error("source {source_name}: ODBC driver [{driver}] is not installed: {hint}")]
    DriverMissing {
        source_name: String,
        driver: String,
        hint: String,
    },
    /// A value longer than the source's `max_text_bytes` (22001, never truncated).
    #[error("source {source_name}: a value of column {column} is longer than max_text_bytes ({limit} bytes{actual}); raise the source's max_text_bytes option")]
    ValueTooLong {
        source_name: String,
        column: String,
        limit: usize,
        /// ", it has N" when the driver told.
        actual: String,
    },
    /// A column whose type fedsql cannot map (0A000).
    #[error(
        "{source_name}: column {column} has type {type_name}, which fedsql cannot map to Arrow"
    )]
    UnsupportedType {
        source_name: String,
        column: String,
        type_name: String,
    },
}

impl ConnectorError {
    /// The SQLSTATE a client sees for this error.
    pub fn sqlstate(&self) -> &str {
        match self {
            ConnectorError::InvalidOption { .. } => "22023",
            ConnectorError::Unreachable { .. } => "08001",
            ConnectorError::AuthFailed { .. } | ConnectorError::MissingPassword { .. } => "28P01",
            ConnectorError::ConnectionLost { .. } => "08006",
            ConnectorError::Remote { sqlstate, .. } => sqlstate,
            ConnectorError::UnsupportedType { .. } => "0A000",
            ConnectorError::UnexpectedShape { .. } => "XX000",
            ConnectorError::Refused { .. } => "42501",
            ConnectorError::DriverMissing { .. } => "IM002",
            ConnectorError::ValueTooLong { .. } => "22001",
            ConnectorError::Io(_) => "58030",
            ConnectorError::Parquet(_)
            | ConnectorError::Arrow(_)
            | ConnectorError::DataFusion(_) => "XX000",
        }
    }
}
