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
}
