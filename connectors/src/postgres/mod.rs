//! The Postgres connector: a Postgres database as a fedsql catalog.
//!
//! ```text
//!  CREATE SOURCE pg TYPE postgres OPTIONS (url 'postgres://u@host:5432/db', password_env 'PGPW')
//!
//!  pg.<schema>.<table>  ──►  FederatedTableProviderAdaptor (datafusion-federation)
//!                                │  whole same-source subplans, unparsed in the Postgres dialect
//!                                ▼
//!                        PostgresExecutor ── COPY (SELECT …) TO STDOUT (FORMAT binary) ──► Arrow
//! ```
//!
//! Tables are discovered from the remote catalog when the source is opened.

mod catalog;
mod executor;
pub mod types;

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::catalog::CatalogProvider;

pub use executor::PostgresExecutor;

use crate::error::ConnectorError;
use crate::remote_log::RemoteQueryObserver;

/// The options of `CREATE SOURCE … TYPE postgres`.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresOptions {
    /// `postgres://user@host:port/db` (a password in the URL is refused: use
    /// `password_env` so it never reaches the catalog file).
    pub url: String,
    /// The environment variable holding the password.
    pub password_env: Option<String>,
    /// Parallel range scans per plain table scan; `None` lets fedsql choose
    /// (one per core for tables the source estimates above a million rows).
    pub partitions: Option<usize>,
}

impl PostgresOptions {
    /// Parses and checks the options given to `CREATE SOURCE`.
    pub fn from_options(options: &[(String, String)]) -> Result<Self, ConnectorError> {
        let map: BTreeMap<&str, &str> = options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for key in map.keys() {
            if !["url", "password_env", "partitions"].contains(key) {
                return Err(ConnectorError::InvalidOption {
                    option: (*key).to_string(),
                    message: "unknown option for a postgres source (expected url, password_env, partitions)".into(),
                });
            }
        }
        let url = map
            .get("url")
            .ok_or_else(|| ConnectorError::InvalidOption {
                option: "url".into(),
                message: "is required, e.g. url 'postgres://user@host:5432/db'".into(),
            })?
            .to_string();
        let config: tokio_postgres::Config =
            url.parse().map_err(|e| ConnectorError::InvalidOption {
                option: "url".into(),
                message: format!("{e}"),
            })?;
        if config.get_password().is_some() {
            return Err(ConnectorError::InvalidOption {
                option: "url".into(),
                message: "must not contain a password: put it in an environment variable and name it with password_env".into(),
            });
        }
        let partitions = match map.get("partitions") {
            None => None,
            Some(p) => Some(p.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                ConnectorError::InvalidOption {
                    option: "partitions".into(),
                    message: format!("must be a positive integer, got {p}"),
                }
            })?),
        };
        Ok(PostgresOptions {
            url,
            password_env: map.get("password_env").map(|s| s.to_string()),
            partitions,
        })
    }

    /// The connection config, with the password read from its variable.
    pub fn connection_config(&self) -> Result<tokio_postgres::Config, ConnectorError> {
        let mut config: tokio_postgres::Config =
            self.url
                .parse()
                .map_err(|e| ConnectorError::InvalidOption {
                    option: "url".into(),
                    message: format!("{e}"),
                })?;
        if let Some(var) = &self.password_env {
            let password = std::env::var(var)
                .map_err(|_| ConnectorError::MissingPassword { var: var.clone() })?;
            config.password(password);
        }
        config.application_name("fedsql");
        Ok(config)
    }
}

/// Opens a Postgres source: connects, discovers its tables and returns the
/// catalog to register under `name`.
pub async fn open_postgres_catalog(
    name: &str,
    options: &[(String, String)],
    observer: Option<Arc<dyn RemoteQueryObserver>>,
) -> Result<Arc<dyn CatalogProvider>, ConnectorError> {
    let options = PostgresOptions::from_options(options)?;
    let executor = Arc::new(PostgresExecutor::new(name, &options, observer)?);
    let catalog = catalog::discover_catalog(executor).await?;
    Ok(Arc::new(catalog))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_options as opts;

    #[test]
    fn options_are_checked() {
        let o = PostgresOptions::from_options(&opts(&[
            ("url", "postgres://u@127.0.0.1:5432/db"),
            ("password_env", "PW"),
            ("partitions", "4"),
        ]))
        .unwrap();
        assert_eq!(o.partitions, Some(4));
        let err = PostgresOptions::from_options(&opts(&[("url", "postgres://u:secret@h/db")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("password_env"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        assert!(PostgresOptions::from_options(&opts(&[("host", "x")])).is_err());
        assert!(PostgresOptions::from_options(&opts(&[])).is_err());
    }
}
