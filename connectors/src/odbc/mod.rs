//! The ODBC connector: any database with an ODBC driver as a fedsql catalog.
//!
//! ```text
//!  CREATE SOURCE wh TYPE odbc OPTIONS (
//!      connection_string 'Driver={MariaDB Unicode};Server=127.0.0.1;Port=3306;Database=tpch;Uid=fedsql;',
//!      dialect 'mysql', password_env 'WH_PASSWORD')
//!
//!  wh.<schema>.<table>  ──►  FederatedTableProviderAdaptor (datafusion-federation)
//!                                │  whole same-source subplans, unparsed in the source's dialect
//!                                ▼
//!                          OdbcExecutor ── pooled connection, on a blocking thread ──►
//!                                          arrow-odbc columnar bulk fetch ──► Arrow
//! ```
//!
//! Tables are discovered with the ODBC catalog functions (`SQLTables`,
//! `SQLColumns`) when the source is opened. ODBC calls block, so every one of
//! them runs on tokio's blocking pool, never on a runtime worker.

mod cancel;
mod catalog;
mod executor;
mod pool;
pub mod types;

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::catalog::CatalogProvider;

pub use executor::OdbcExecutor;
pub use pool::ConnectionPool;

use crate::error::ConnectorError;
use crate::pushdown::SourceDialect;
use crate::remote_catalog::RemoteCatalog;
use crate::remote_log::RemoteQueryObserver;

/// Rows fetched per round trip (and per Arrow batch) unless `batch_size` says otherwise.
const DEFAULT_BATCH_ROWS: usize = 8192;
/// Bytes reserved per text value unless `max_text_bytes` says otherwise.
/// Columns declared shorter use their declared size.
const DEFAULT_MAX_TEXT_BYTES: usize = 4096;

/// The options of `CREATE SOURCE … TYPE odbc`.
#[derive(Debug, Clone, PartialEq)]
pub struct OdbcOptions {
    /// `Driver={…};Server=…;…` — without a password (see `password_env`).
    pub connection_string: String,
    /// How SQL is written for the source and what may be pushed to it.
    pub dialect: SourceDialect,
    /// The environment variable holding the password, sent as `PWD`.
    pub password_env: Option<String>,
    /// Connections kept open to the source; also the most queries run at once.
    pub max_connections: usize,
    /// Rows per bulk fetch.
    pub batch_size: usize,
    /// Largest text (or binary) value accepted, in bytes; a longer value is
    /// an error naming the column, never truncated.
    pub max_text_bytes: usize,
    /// Parallel fetches one plain scan of a table with an integer primary
    /// key is read in (`None`: one per core above a million rows).
    pub partitions: Option<usize>,
}

const OPTIONS: &[&str] = &[
    "connection_string",
    "dialect",
    "password_env",
    "max_connections",
    "batch_size",
    "max_text_bytes",
    "partitions",
];

impl OdbcOptions {
    /// Parses and checks the options given to `CREATE SOURCE`.
    pub fn from_options(options: &[(String, String)]) -> Result<Self, ConnectorError> {
        let map: BTreeMap<String, &str> = options
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
            .collect();
        for key in map.keys() {
            if !OPTIONS.contains(&key.as_str()) {
                return Err(ConnectorError::InvalidOption {
                    option: key.clone(),
                    message: format!(
                        "unknown option for an odbc source (expected {})",
                        OPTIONS.join(", ")
                    ),
                });
            }
        }
        let connection_string = map
            .get("connection_string")
            .ok_or_else(|| ConnectorError::InvalidOption {
                option: "connection_string".into(),
                message: "is required, e.g. connection_string 'Driver={PostgreSQL Unicode};Server=127.0.0.1;Port=5432;Database=db;Uid=me;'".into(),
            })?
            .to_string();
        if let Some(key) = password_attribute(&connection_string) {
            return Err(ConnectorError::InvalidOption {
                option: "connection_string".into(),
                message: format!("must not contain a password ({key}=…): put it in an environment variable and name it with password_env"),
            });
        }
        let dialect = match map.get("dialect") {
            None => guess_dialect(&connection_string),
            Some(name) => {
                // `fedsql` names a site, never an ODBC warehouse.
                SourceDialect::from_name(name)
                    .filter(|d| *d != SourceDialect::Fedsql)
                    .ok_or_else(|| ConnectorError::InvalidOption {
                        option: "dialect".into(),
                        message: format!(
                        "unknown dialect '{name}' (expected postgres, mysql, sqlite or generic)"
                    ),
                    })?
            }
        };
        let positive = |key: &str, default: usize| -> Result<usize, ConnectorError> {
            match map.get(key) {
                None => Ok(default),
                Some(v) => v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    ConnectorError::InvalidOption {
                        option: key.into(),
                        message: format!("must be a positive integer, got {v}"),
                    }
                }),
            }
        };
        Ok(OdbcOptions {
            connection_string,
            dialect,
            password_env: map.get("password_env").map(|s| s.to_string()),
            max_connections: positive("max_connections", 4)?,
            batch_size: positive("batch_size", DEFAULT_BATCH_ROWS)?,
            max_text_bytes: positive("max_text_bytes", DEFAULT_MAX_TEXT_BYTES)?,
            partitions: match map.get("partitions") {
                None => None,
                Some(_) => Some(positive("partitions", 1)?),
            },
        })
    }

    /// The connection string with the password read from its variable.
    pub(crate) fn connection_string_with_password(&self) -> Result<String, ConnectorError> {
        let mut s = self.connection_string.trim_end().to_string();
        // psqlODBC describes an unbounded `numeric` as NUMERIC(28,6) and
        // truncates longer values; as long text it arrives with every digit.
        if self
            .driver()
            .is_some_and(|d| d.to_ascii_lowercase().contains("postgres"))
            && attribute(&s, "numericas").is_none()
        {
            if !s.is_empty() && !s.ends_with(';') {
                s.push(';');
            }
            s.push_str("NumericAs=-1;");
        }
        if let Some(var) = &self.password_env {
            let password = std::env::var(var)
                .map_err(|_| ConnectorError::MissingPassword { var: var.clone() })?;
            if !s.is_empty() && !s.ends_with(';') {
                s.push(';');
            }
            s.push_str("PWD=");
            s.push_str(&odbc_api::escape_attribute_value(&password));
            s.push(';');
        }
        Ok(s)
    }

    /// The connection string's `Driver` attribute, for messages.
    pub(crate) fn driver(&self) -> Option<String> {
        attribute(&self.connection_string, "driver").map(|d| d.trim_matches(['{', '}']).to_string())
    }

    /// `host:port` (or the database file) the string points at, for messages.
    pub(crate) fn address(&self) -> String {
        let s = &self.connection_string;
        match (
            attribute(s, "server").or_else(|| attribute(s, "host")),
            attribute(s, "port"),
        ) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h,
            (None, _) => attribute(s, "database")
                .or_else(|| attribute(s, "dsn"))
                .unwrap_or_else(|| "the ODBC data source".into()),
        }
    }
}

/// The value of `key` in an ODBC connection string (keys ignore case).
fn attribute(connection_string: &str, key: &str) -> Option<String> {
    connection_string.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(key)
            .then(|| v.trim().to_string())
    })
}

/// The password attribute, if the string carries a non-empty one.
fn password_attribute(connection_string: &str) -> Option<&'static str> {
    ["pwd", "password"]
        .into_iter()
        .find(|k| attribute(connection_string, k).is_some_and(|v| !v.is_empty()))
}

/// The dialect of the driver a connection string names, `generic` if unknown.
fn guess_dialect(connection_string: &str) -> SourceDialect {
    let driver = attribute(connection_string, "driver")
        .unwrap_or_default()
        .to_ascii_lowercase();
    if driver.contains("postgres") {
        SourceDialect::Postgres
    } else if driver.contains("mariadb") || driver.contains("mysql") {
        SourceDialect::MySql
    } else if driver.contains("sqlite") {
        SourceDialect::Sqlite
    } else {
        SourceDialect::Generic
    }
}

/// Opens an ODBC source: connects, discovers its tables and returns the
/// catalog to register under `name`.
pub async fn open_odbc_catalog(
    name: &str,
    options: &[(String, String)],
    observer: Option<Arc<dyn RemoteQueryObserver>>,
) -> Result<Arc<dyn CatalogProvider>, ConnectorError> {
    let options = OdbcOptions::from_options(options)?;
    let executor = Arc::new(OdbcExecutor::new(name, options, observer.clone()));
    let (tables, bare_schema) = executor.discover().await?;
    let provider = Arc::new(crate::pushdown::partitioned::federation_provider(
        Arc::clone(&executor) as _,
        Some(executor as _),
        observer,
    ));
    Ok(Arc::new(RemoteCatalog::new(
        "ODBC",
        tables,
        provider,
        bare_schema.as_deref(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_options as opts;

    #[test]
    fn options_are_checked() {
        let o = OdbcOptions::from_options(&opts(&[(
            "connection_string",
            "Driver={MariaDB Unicode};Server=127.0.0.1;Port=3306;Uid=root;Pwd=;",
        )]))
        .unwrap();
        assert_eq!(o.dialect, SourceDialect::MySql, "guessed from the driver");
        assert_eq!(o.address(), "127.0.0.1:3306");
        assert_eq!(o.driver().as_deref(), Some("MariaDB Unicode"));
        let err = OdbcOptions::from_options(&opts(&[(
            "connection_string",
            "Driver={X};Server=h;PWD=secret;",
        )]))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("password_env") && !err.contains("secret"),
            "{err}"
        );
        assert!(OdbcOptions::from_options(&opts(&[
            ("connection_string", "Driver={X}"),
            ("dialect", "oracle")
        ]))
        .is_err());
        assert!(OdbcOptions::from_options(&opts(&[
            ("connection_string", "Driver={X}"),
            ("batch_size", "0")
        ]))
        .is_err());
        assert!(OdbcOptions::from_options(&opts(&[("url", "x")])).is_err());
        let sqlite = OdbcOptions::from_options(&opts(&[(
            "connection_string",
            "Driver={SQLite3};Database=/tmp/x.db;",
        )]))
        .unwrap();
        assert_eq!(sqlite.dialect, SourceDialect::Sqlite);
        assert_eq!(sqlite.address(), "/tmp/x.db");
    }

    #[test]
    fn password_is_appended_escaped() {
        std::env::set_var("FEDSQL_ODBC_TEST_PW", "a;b}");
        let o = OdbcOptions::from_options(&opts(&[
            ("connection_string", "Driver={X};Uid=u"),
            ("password_env", "FEDSQL_ODBC_TEST_PW"),
        ]))
        .unwrap();
        assert_eq!(
            o.connection_string_with_password().unwrap(),
            "Driver={X};Uid=u;PWD={a;b}}};"
        );
    }
}
