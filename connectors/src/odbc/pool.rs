//! A small pool of ODBC connections to one source.
//!
//! Opening an ODBC connection costs a login round trip (and for some drivers
//! much more), so connections are kept and reused. The pool also bounds how
//! many queries run against the source at once (`max_connections`): the
//! warehouse is touched as little as possible. Every ODBC call blocks, so
//! connecting happens on tokio's blocking pool.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use odbc_api::{Connection, ConnectionOptions};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::OdbcOptions;
use crate::blocking::run_blocking;
use crate::error::ConnectorError;
use crate::pushdown::SourceDialect;

/// How long a checkout waits before it looks whether every connection in
/// use is stalled.
const STALL_CHECK: std::time::Duration = std::time::Duration::from_millis(200);

/// Open connections to one ODBC source, at most `max_connections` in use
/// — unless every one in use is stalled by fedsql itself.
///
/// A fetch holds its connection until its rows are read, and fedsql may
/// read them late: a join reads one input whole before the other, so with
/// more remote scans in one plan than connections, scans that wait for a
/// reader could hold every connection while the scan they wait for waits
/// for one (a deadlock). A fetch blocked on its reader counts as *stalled*
/// ([`PooledConnection::stalled`]); a checkout that finds every connection
/// in use stalled opens one more instead of waiting for ever.
pub struct ConnectionPool {
    source_name: String,
    options: OdbcOptions,
    idle: Mutex<Vec<Connection<'static>>>,
    permits: Arc<Semaphore>,
    /// Connections (within the limit or beyond it) whose fetch waits for a
    /// reader, and connections open beyond the limit.
    stalled: AtomicUsize,
    beyond_limit: AtomicUsize,
}

impl std::fmt::Debug for ConnectionPool {
    // The connection string may carry a user name worth keeping out of logs;
    // the password never is in it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionPool")
            .field("source_name", &self.source_name)
            .field("address", &self.options.address())
            .finish()
    }
}

impl ConnectionPool {
    /// A pool for `options`; no connection is opened until one is needed.
    pub fn new(source_name: &str, options: OdbcOptions) -> Self {
        ConnectionPool {
            source_name: source_name.to_string(),
            permits: Arc::new(Semaphore::new(options.max_connections)),
            options,
            idle: Mutex::new(Vec::new()),
            stalled: AtomicUsize::new(0),
            beyond_limit: AtomicUsize::new(0),
        }
    }

    /// A connection for one query; waits while `max_connections` are in use.
    pub async fn checkout(self: &Arc<Self>) -> Result<PooledConnection, ConnectorError> {
        let permit = loop {
            let waited =
                tokio::time::timeout(STALL_CHECK, Arc::clone(&self.permits).acquire_owned()).await;
            match waited {
                Ok(Ok(permit)) => break Some(permit),
                Ok(Err(_)) => {
                    return Err(ConnectorError::ConnectionLost {
                        source_name: self.source_name.clone(),
                        message: "the connection pool was closed".into(),
                    })
                }
                Err(_) if self.all_stalled() => {
                    tracing::info!(
                        source = %self.source_name,
                        max_connections = self.options.max_connections,
                        "every connection waits for fedsql to read its rows: opening one more"
                    );
                    self.beyond_limit.fetch_add(1, Ordering::SeqCst);
                    break None;
                }
                Err(_) => {}
            }
        };
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let connection = match idle {
            Some(c) => c,
            None => {
                let pool = Arc::clone(self);
                run_blocking(&self.source_name, move || pool.connect()).await?
            }
        };
        Ok(PooledConnection {
            connection: Some(connection),
            pool: Arc::clone(self),
            permit,
        })
    }

    /// Whether every connection in use waits for its reader.
    fn all_stalled(&self) -> bool {
        // No permit is free, so `max_connections` are in use within the
        // limit, and `beyond_limit` more.
        let in_use = self
            .options
            .max_connections
            .saturating_add(self.beyond_limit.load(Ordering::SeqCst));
        self.permits.available_permits() == 0 && self.stalled.load(Ordering::SeqCst) >= in_use
    }

    /// [`checkout`](Self::checkout) from a thread of tokio's blocking pool
    /// (where a fetch loop runs), waiting there for a free connection.
    pub fn checkout_blocking(self: &Arc<Self>) -> Result<PooledConnection, ConnectorError> {
        tokio::runtime::Handle::current().block_on(self.checkout())
    }

    /// Opens a new connection and prepares its session (blocking).
    fn connect(&self) -> Result<Connection<'static>, ConnectorError> {
        let environment = odbc_api::environment().map_err(|e| self.classify(e, true))?;
        let connection_string = self.options.connection_string_with_password()?;
        let connection = environment
            .connect_with_connection_string(&connection_string, ConnectionOptions::default())
            .map_err(|e| self.classify(e, true))?;
        // Timestamps with a time zone come back as UTC wall-clock times, which
        // fedsql labels UTC: the instant is kept whatever the server's zone.
        let setup: &[&str] = match self.options.dialect {
            SourceDialect::Postgres => &["SET TIME ZONE 'UTC'"],
            SourceDialect::MySql => &["SET time_zone = '+00:00'"],
            SourceDialect::Sqlite | SourceDialect::Generic | SourceDialect::Fedsql => &[],
        };
        for statement in setup {
            connection
                .execute(statement, (), None)
                .map_err(|e| self.classify(e, false))?;
        }
        Ok(connection)
    }

    /// Maps an ODBC error to what the client should see. `connecting` tells
    /// a failure to reach the source from one during a query.
    pub fn classify(&self, error: odbc_api::Error, connecting: bool) -> ConnectorError {
        classify(&self.source_name, &self.options, error, connecting)
    }

    fn give_back(&self, connection: Connection<'static>) {
        // A connection the driver reports dead (or cannot tell) is dropped,
        // so the next query opens a fresh one.
        if matches!(connection.is_dead(), Ok(false)) {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(connection);
        }
    }
}

/// A connection checked out of a [`ConnectionPool`]; returned when dropped.
pub struct PooledConnection {
    connection: Option<Connection<'static>>,
    pool: Arc<ConnectionPool>,
    /// `None` for a connection opened beyond the limit.
    permit: Option<OwnedSemaphorePermit>,
}

impl PooledConnection {
    /// The connection.
    pub fn connection(&self) -> &Connection<'static> {
        // Only `drop` takes it out.
        self.connection
            .as_ref()
            .unwrap_or_else(|| unreachable!("a pooled connection is present until dropped"))
    }

    /// The pool it came from (for error classification).
    pub fn pool(&self) -> &ConnectionPool {
        &self.pool
    }
}

impl PooledConnection {
    /// Runs `wait` (a fetch blocked until fedsql reads its rows) counted as
    /// stalled, so other checkouts do not wait for this connection.
    pub fn stalled<T>(&self, wait: impl FnOnce() -> T) -> T {
        self.pool.stalled.fetch_add(1, Ordering::SeqCst);
        let out = wait();
        self.pool.stalled.fetch_sub(1, Ordering::SeqCst);
        out
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        if self.permit.is_none() {
            // Beyond the limit: closed, not kept idle.
            self.pool.beyond_limit.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        if let Some(connection) = self.connection.take() {
            self.pool.give_back(connection);
        }
    }
}

/// The SQLSTATE classes that mean "the source is not there".
fn is_connection_state(state: &str) -> bool {
    state.starts_with("08") || state == "HYT00" || state == "HYT01"
}

/// Maps an ODBC error to a [`ConnectorError`] with an actionable message.
pub(crate) fn classify(
    source_name: &str,
    options: &OdbcOptions,
    error: odbc_api::Error,
    connecting: bool,
) -> ConnectorError {
    let source_name = source_name.to_string();
    let odbc_api::Error::Diagnostics { record, .. } = &error else {
        return ConnectorError::Remote {
            source_name,
            sqlstate: "58000".into(),
            message: error.to_string(),
        };
    };
    let state = record.state.as_str().to_string();
    let message = diagnostic_message(record);
    let addr = options.address();
    if state == "IM002" || state == "01000" && message.contains("file not found") {
        let driver = options.driver().unwrap_or_else(|| "(none named)".into());
        return ConnectorError::DriverMissing {
            source_name,
            driver: driver.clone(),
            hint: install_hint(&driver),
        };
    }
    let lower = message.to_ascii_lowercase();
    if state.starts_with("28")
        || lower.contains("password authentication failed")
        || lower.contains("access denied")
    {
        return ConnectorError::AuthFailed {
            source_name,
            addr,
            message,
        };
    }
    if is_connection_state(&state) || (connecting && state.starts_with("HY")) {
        return if connecting {
            ConnectorError::Unreachable {
                source_name,
                addr,
                message,
            }
        } else {
            ConnectorError::ConnectionLost {
                source_name,
                message,
            }
        };
    }
    ConnectorError::Remote {
        source_name,
        sqlstate: state,
        message,
    }
}

/// The driver's message without unixODBC's `[vendor][driver]` prefixes.
fn diagnostic_message(record: &odbc_api::handles::Record) -> String {
    let text = record.to_string();
    // Display is "State: XXXXX, Native error: N, Message: …".
    let message = text
        .split_once("Message: ")
        .map_or(text.as_str(), |(_, m)| m)
        .trim();
    let mut rest = message;
    while let Some(stripped) = rest.strip_prefix('[') {
        match stripped.split_once(']') {
            Some((_, after)) => rest = after,
            None => break,
        }
    }
    let rest = rest.trim();
    if rest.is_empty() { message } else { rest }.to_string()
}

/// How to install the driver a connection string names (Debian package names).
fn install_hint(driver: &str) -> String {
    let lower = driver.to_ascii_lowercase();
    let package = if lower.contains("postgres") {
        Some("odbc-postgresql")
    } else if lower.contains("mariadb") || lower.contains("mysql") {
        Some("odbc-mariadb")
    } else if lower.contains("sqlite") {
        Some("libsqliteodbc")
    } else {
        None
    };
    match package {
        Some(p) => format!(
            "install it (Debian: apt-get install {p}) and check that /etc/odbcinst.ini lists [{driver}] (odbcinst -q -d)"
        ),
        None => format!(
            "install the vendor's ODBC driver and register it as [{driver}] in /etc/odbcinst.ini (odbcinst -q -d lists the registered drivers)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_options as opts;

    /// A pool of one connection to an SQLite file through the SQLite3 ODBC
    /// driver (`libsqliteodbc`, which scripts/test installs).
    fn one_connection_pool(dir: &std::path::Path) -> Arc<ConnectionPool> {
        let file = dir.join("pool.db");
        let options = OdbcOptions::from_options(&opts(&[
            (
                "connection_string",
                &format!("Driver={{SQLite3}};Database={};", file.display()),
            ),
            ("max_connections", "1"),
        ]))
        .unwrap();
        Arc::new(ConnectionPool::new("lite", options))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkout_waits_for_a_busy_connection_but_not_for_a_stalled_one() {
        let dir = tempfile::tempdir().unwrap();
        let pool = one_connection_pool(dir.path());
        let wait = std::time::Duration::from_secs(2);

        // Busy (not stalled): the second checkout waits.
        let first = pool.checkout().await.unwrap();
        assert!(tokio::time::timeout(wait, pool.checkout()).await.is_err());

        // Stalled (waiting for fedsql to read its rows): one more opens.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let stalled = tokio::task::spawn_blocking(move || {
            first.stalled(|| released.recv().ok());
            first
        });
        let second = tokio::time::timeout(wait, pool.checkout())
            .await
            .expect("a checkout waited for a connection whose reader is stalled")
            .unwrap();
        assert!(second.permit.is_none(), "opened beyond the limit");
        drop(second);
        assert_eq!(pool.beyond_limit.load(Ordering::SeqCst), 0);
        release.send(()).unwrap();
        drop(stalled.await.unwrap());
        // Back within the limit: the kept connection is reused.
        let again = pool.checkout().await.unwrap();
        assert!(again.permit.is_some());
    }
}
