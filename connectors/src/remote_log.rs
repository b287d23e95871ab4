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

/// What one remote query did so far; reported to the observer when dropped,
/// so a scan the consumer abandons (a `LIMIT` reached locally) or that fails
/// is recorded too.
pub struct QueryReport {
    observer: Option<std::sync::Arc<dyn RemoteQueryObserver>>,
    source: String,
    sql: String,
    started: SystemTime,
    clock: std::time::Instant,
    /// Rows received.
    pub rows: u64,
    /// Bytes of row data received.
    pub bytes: u64,
    /// (SQLSTATE, message) once the query failed.
    pub error: Option<(String, String)>,
}

impl QueryReport {
    /// Starts the report of `sql` sent to `source`.
    pub fn new(
        observer: Option<std::sync::Arc<dyn RemoteQueryObserver>>,
        source: &str,
        sql: &str,
    ) -> Self {
        QueryReport {
            observer,
            source: source.to_string(),
            sql: sql.to_string(),
            started: SystemTime::now(),
            clock: std::time::Instant::now(),
            rows: 0,
            bytes: 0,
            error: None,
        }
    }
}

impl Drop for QueryReport {
    fn drop(&mut self) {
        if let Some(observer) = &self.observer {
            observer.finished(RemoteQuery {
                source: std::mem::take(&mut self.source),
                sql: std::mem::take(&mut self.sql),
                started: self.started,
                elapsed: self.clock.elapsed(),
                rows: self.rows,
                bytes: self.bytes,
                error: self.error.take(),
            });
        }
    }
}
