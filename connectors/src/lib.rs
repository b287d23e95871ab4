//! fedsql's data sources.
//!
//! One module per source kind. The embedded demo catalog is here now; the
//! Postgres, ODBC and Kafka connectors and the shared SQL-pushdown code join
//! as they land.
#![warn(rust_2018_idioms)]

mod blocking;
pub mod demo;
pub mod error;
pub mod fsutil;
pub mod kafka;
pub mod odbc;
pub mod postgres;
pub mod pushdown;
pub mod remote_catalog;
pub mod remote_log;
pub mod statistics;

pub use error::ConnectorError;
pub use remote_log::{ReadPurpose, RemoteQuery, RemoteQueryObserver};

/// `(key, value)` option pairs, as `CREATE SOURCE` hands them over.
#[cfg(test)]
pub(crate) fn test_options(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
