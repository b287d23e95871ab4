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
    /// A remote query ended (successfully or not).
    fn finished(&self, query: RemoteQuery);

    /// `source` rejected a pushed-down query for `reason`, and the query was
    /// planned again with less pushed down (see `pushdown::fallback`).
    fn fell_back(&self, source: &str, reason: &str) {
        let _ = (source, reason);
    }
}

/// Why a statement reads its sources, attached to its session's config
/// (`SessionConfig::with_extension`) by statements whose reads must be
/// traceable: `TRAIN MODEL` labels them with the model version it makes.
/// Scans that see it append the label to their [`RemoteQuery`] and keep a
/// copy of what they read here.
#[derive(Debug, Default)]
pub struct ReadPurpose {
    label: String,
    reads: std::sync::Mutex<Vec<String>>,
}

impl ReadPurpose {
    /// A purpose described by `label` (e.g. `model fraud version 3`).
    pub fn new(label: impl Into<String>) -> Self {
        ReadPurpose {
            label: label.into(),
            reads: Default::default(),
        }
    }

    /// The label appended to each read.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// What the scans read so far, each as logged (without the label),
    /// sorted (scans of several partitions finish in any order).
    pub fn reads(&self) -> Vec<String> {
        let mut reads = self.reads.lock().unwrap_or_else(|p| p.into_inner()).clone();
        reads.sort();
        reads
    }
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
    purpose: Option<std::sync::Arc<ReadPurpose>>,
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
            purpose: None,
            rows: 0,
            bytes: 0,
            error: None,
        }
    }

    /// Labels the report with why it was read (see [`ReadPurpose`]).
    pub fn with_purpose(mut self, purpose: Option<std::sync::Arc<ReadPurpose>>) -> Self {
        self.purpose = purpose;
        self
    }

    /// Replaces what is reported as sent, for connectors that learn what
    /// they actually read only at the end (Kafka's last offset).
    pub fn set_sql(&mut self, sql: String) {
        self.sql = sql;
    }
}

impl Drop for QueryReport {
    fn drop(&mut self) {
        if let Some(purpose) = &self.purpose {
            purpose
                .reads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(self.sql.clone());
            self.sql = format!("{} for {}", self.sql, purpose.label);
        }
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
