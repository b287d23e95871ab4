//! Reporting each query a connector sends to its source.

use std::fmt::Debug;
use std::time::{Duration, SystemTime};

/// One finished remote query: what was sent and what came back.
#[derive(Debug, Clone)]
pub struct RemoteQuery {
    pub source: String,
    /// The SQL as sent (for Postgres: the query inside `COPY (…) TO STDOUT`).
    pub sql: String,
    pub started: SystemTime,
    pub elapsed: Duration,
    pub rows: u64,
    /// Bytes of row data received (values as sent on the wire).
    pub bytes: u64,
    /// `None` when it succeeded, else (SQLSTATE, message).
    pub error: Option<(String, String)>,
}

/// Receives a [`RemoteQuery`] for every query a source runs, including ones
/// the consumer stopped early (a `LIMIT` reached locally).
pub trait RemoteQueryObserver: Debug + Send + Sync {
    fn finished(&self, query: RemoteQuery);
}
