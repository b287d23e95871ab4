//! Recent queries, served as `fedsql.system.queries`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How many queries the log keeps.
const CAPACITY: usize = 1000;

/// One finished statement.
#[derive(Debug, Clone)]
pub struct QueryRecord {
    pub query_id: i64,
    /// Microseconds since the Unix epoch.
    pub started_at_us: i64,
    pub database: String,
    pub user: String,
    /// `pg`, `embedded`, …
    pub protocol: &'static str,
    pub query: String,
    /// `ok` or `error`.
    pub status: &'static str,
    pub sqlstate: Option<String>,
    pub error: Option<String>,
    /// Time to plan and start the statement (streaming rows is not counted);
    /// for a source's query, the whole scan.
    pub duration_ms: f64,
    /// Rows received from a source (source queries only).
    pub rows: Option<u64>,
    /// Bytes of row data received from a source (source queries only).
    pub bytes: Option<u64>,
}

/// A bounded, thread-safe log of recent statements.
#[derive(Debug, Default)]
pub struct QueryLog {
    next_id: AtomicI64,
    records: Mutex<VecDeque<QueryRecord>>,
}

/// What [`QueryLog::record`] needs to know about a statement.
#[derive(Debug)]
pub struct Finished<'a> {
    pub started: SystemTime,
    pub elapsed: Duration,
    pub database: &'a str,
    pub user: &'a str,
    pub protocol: &'static str,
    pub query: &'a str,
    /// `None` when it succeeded, else (SQLSTATE, message).
    pub error: Option<(&'a str, String)>,
    /// (rows, bytes) received, for queries fedsql sent to a source.
    pub received: Option<(u64, u64)>,
}

impl QueryLog {
    /// Appends a finished statement, dropping the oldest beyond capacity.
    /// Records one finished statement; its text is kept up to
    /// [`MAX_LOGGED_QUERY_BYTES`].
    pub fn record(&self, f: Finished<'_>) {
        let started_at_us = f
            .started
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let record = QueryRecord {
            query_id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            started_at_us,
            database: f.database.to_string(),
            user: f.user.to_string(),
            protocol: f.protocol,
            query: truncated(f.query),
            status: if f.error.is_some() { "error" } else { "ok" },
            sqlstate: f.error.as_ref().map(|(s, _)| s.to_string()),
            error: f.error.map(|(_, m)| m),
            duration_ms: f.elapsed.as_secs_f64() * 1000.0,
            rows: f.received.map(|r| r.0),
            bytes: f.received.map(|r| r.1),
        };
        // A poisoned lock only means another thread panicked mid-push; the
        // deque is still valid, so keep logging.
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if records.len() == CAPACITY {
            records.pop_front();
        }
        records.push_back(record);
    }

    /// A copy of the current records, oldest first.
    pub fn snapshot(&self) -> Vec<QueryRecord> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.iter().cloned().collect()
    }
}

/// Queries that connectors send to sources are logged next to the client
/// statements, as protocol `source` with the source as the database.
impl fedsql_connectors::RemoteQueryObserver for QueryLog {
    fn finished(&self, q: fedsql_connectors::RemoteQuery) {
        self.record(Finished {
            started: q.started,
            elapsed: q.elapsed,
            database: &q.source,
            user: "fedsql",
            protocol: "source",
            query: &q.sql,
            error: q.error.as_ref().map(|(s, m)| (s.as_str(), m.clone())),
            received: Some((q.rows, q.bytes)),
        });
    }

    /// A fallback is logged as protocol `fallback`, the reason as its query
    /// text (the rejected query itself is the `source` entry before it).
    fn fell_back(&self, source: &str, reason: &str) {
        let query = format!("planned again with plain scans: {reason}");
        self.record(Finished {
            started: SystemTime::now(),
            elapsed: Duration::ZERO,
            database: source,
            user: "fedsql",
            protocol: "fallback",
            query: &query,
            error: None,
            received: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_records() {
        let log = QueryLog::default();
        for i in 0..CAPACITY + 5 {
            log.record(Finished {
                started: SystemTime::now(),
                elapsed: Duration::from_millis(1),
                database: "demo",
                user: "u",
                protocol: "pg",
                query: &format!("SELECT {i}"),
                error: None,
                received: None,
            });
        }
        let snap = log.snapshot();
        assert_eq!(snap.len(), CAPACITY);
        assert_eq!(snap[0].query, "SELECT 5");
        assert_eq!(snap.last().unwrap().query_id, (CAPACITY + 5) as i64);
    }
}

/// The longest statement text `fedsql.system.queries` keeps; longer ones
/// end with `…` and their length.
pub const MAX_LOGGED_QUERY_BYTES: usize = 16 * 1024;

fn truncated(query: &str) -> String {
    if query.len() <= MAX_LOGGED_QUERY_BYTES {
        return query.to_string();
    }
    let mut end = MAX_LOGGED_QUERY_BYTES;
    while !query.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &query[..end], query.len())
}

#[cfg(test)]
mod truncation_tests {
    use super::*;

    #[test]
    fn long_statements_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_LOGGED_QUERY_BYTES);
        let kept = truncated(&long);
        assert!(kept.len() < MAX_LOGGED_QUERY_BYTES + 32);
        assert!(kept.ends_with(&format!("({} bytes)", long.len())));
        assert_eq!(truncated("SELECT 1"), "SELECT 1");
    }
}
