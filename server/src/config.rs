//! Settings: one struct, filled from defaults, then `fedsql.toml`, then
//! `FEDSQL_*` environment variables, then command-line flags (later wins).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, ServerError};

/// Everything `fedsql serve` and `fedsql query` need to know.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where catalog state, models and the demo data live.
    pub data_dir: PathBuf,
    /// Postgres-wire listen address.
    pub pg_listen: SocketAddr,
    /// Arrow Flight SQL listen address.
    pub flight_listen: SocketAddr,
    /// Whether to load the embedded demo catalog `demo`.
    pub demo: bool,
    /// Size of the demo catalog: 1.0 is 20,000 customers and 200,000 transactions.
    pub demo_scale: f64,
    /// The user name clients authenticate as.
    pub user: String,
    /// Name of the environment variable holding the password. When set,
    /// Postgres-wire clients authenticate with SCRAM-SHA-256 and Flight SQL
    /// clients with basic auth; when not, both listeners only bind loopback.
    pub password_env: Option<String>,
    /// PEM certificate for the Postgres wire over TLS (with `pg_tls_key`).
    pub pg_tls_cert: Option<PathBuf>,
    /// PEM private key for the Postgres wire over TLS.
    pub pg_tls_key: Option<PathBuf>,
    /// Refuse Postgres-wire connections that do not use TLS.
    pub pg_tls_required: bool,
    /// Lifetime of a Flight SQL bearer token, in seconds.
    pub flight_token_ttl_secs: u64,
    /// PEM certificate for Flight SQL over TLS (with `flight_tls_key`).
    pub flight_tls_cert: Option<PathBuf>,
    /// PEM private key for Flight SQL over TLS.
    pub flight_tls_key: Option<PathBuf>,
    /// More logins (`[[users]]`), each with the variable holding its password.
    pub users: Vec<UserConfig>,
    /// Sources declared in the config file (the same options as `CREATE SOURCE`).
    pub sources: Vec<SourceConfig>,
    /// Coordinator: the sites that may connect (`[[sites]]`), as with
    /// `CREATE SITE`.
    pub sites: Vec<SiteConfig>,
    /// Pretrained sentence encoders (`[[encoders]]`), as with `CREATE ENCODER`.
    pub encoders: Vec<EncoderConfig>,
    /// Site process (`fedsql site`): its token and its policy (`[site]`).
    pub site: Option<SitePolicy>,
    /// The address the weight exchange listens on. Loopback serves
    /// `FEDERATED BY` and sites on this machine; sites elsewhere need an
    /// address they can reach.
    pub exchange_host: std::net::IpAddr,
    /// The weight exchange's port, one for every run of this process
    /// (`0`: a free one, chosen at the first training run).
    pub exchange_port: u16,
    /// The host name (or `name:port`, when a proxy or NAT forwards another
    /// port) sites connect to the weight exchange by, when it is not
    /// `exchange_host` (a container's service name, a public name).
    pub exchange_advertise: Option<String>,
    /// The longest statement text accepted, in bytes (longer: 54000).
    pub max_statement_bytes: usize,
}

/// A `[[sites]]` entry of a coordinator: a site's name and the variable
/// holding the token it authenticates with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub name: String,
    pub token_env: String,
}

/// An `[[encoders]]` entry: a name and a sentence-transformers model
/// directory (`config.json`, `tokenizer.json`, `model.safetensors`, …).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EncoderConfig {
    pub name: String,
    pub path: PathBuf,
}

/// A site's `[site]` section: how it authenticates to its coordinator and
/// what the coordinator may read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SitePolicy {
    /// The variable holding this site's token.
    pub token_env: Option<String>,
    /// Tables a coordinator's training and evaluation queries may read, as
    /// `schema.table` (in `database`) or `catalog.schema.table`. Anything
    /// else is refused at the site. Empty: nothing may be read.
    pub allow: Vec<String>,
    /// The catalog that resolves the coordinator's unqualified names
    /// [default: the site's default database].
    pub database: Option<String>,
    /// PEM certificate authority for a `https://` coordinator.
    pub coordinator_ca: Option<PathBuf>,
    /// What may leave for a coordinator's analytics queries, per table
    /// (`[[site.analytics]]`); a table not listed: nothing (`none`).
    pub analytics: Vec<AnalyticsRule>,
    /// The total privacy loss (epsilon) this site's differentially private
    /// answers may spend, over its lifetime (kept in its data dir).
    pub privacy_budget: Option<f64>,
}

/// One `[[site.analytics]]` entry: what a coordinator's queries may take
/// from `table` (which must also be in `allow`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsRule {
    /// `schema.table` or `catalog.schema.table`, as in `allow`.
    pub table: String,
    /// `none`, `aggregates` or `rows`.
    pub policy: AnalyticsKind,
    /// For `aggregates`: groups of fewer rows are suppressed at the site
    /// [default: 10].
    pub min_group_size: Option<u64>,
    /// For `aggregates`: answer with differential privacy, each answer
    /// costing this much of `[site] privacy_budget` (Laplace noise on counts
    /// and clipped sums; `min`/`max`/`avg`/`stddev` are refused).
    pub dp_epsilon: Option<f64>,
    /// With `dp_epsilon`: the range `[low, high]` summed values are clipped
    /// to (sums are refused without it).
    pub dp_bounds: Option<[f64; 2]>,
}

/// The `policy` of an `[[site.analytics]]` entry.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AnalyticsKind {
    None,
    Aggregates,
    Rows,
}

impl AnalyticsRule {
    /// The policy this entry sets.
    pub fn policy(&self) -> crate::sites::protocol::AnalyticsPolicy {
        use crate::sites::protocol::AnalyticsPolicy;
        match self.policy {
            AnalyticsKind::None => AnalyticsPolicy::None,
            AnalyticsKind::Aggregates => AnalyticsPolicy::Aggregates {
                min_group_size: self.min_group_size.unwrap_or(10).max(1),
                dp_epsilon: self.dp_epsilon,
            },
            AnalyticsKind::Rows => AnalyticsPolicy::Rows,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data_dir: PathBuf::from("./fedsql-data"),
            pg_listen: SocketAddr::from(([127, 0, 0, 1], 5433)),
            flight_listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            demo: true,
            demo_scale: 1.0,
            user: "fedsql".into(),
            password_env: None,
            pg_tls_cert: None,
            pg_tls_key: None,
            pg_tls_required: false,
            flight_token_ttl_secs: 3600,
            flight_tls_cert: None,
            flight_tls_key: None,
            users: Vec::new(),
            sources: Vec::new(),
            sites: Vec::new(),
            encoders: Vec::new(),
            site: None,
            exchange_host: std::net::Ipv4Addr::LOCALHOST.into(),
            exchange_port: 0,
            exchange_advertise: None,
            max_statement_bytes: 16 << 20,
        }
    }
}

/// A `[[users]]` entry: a login name and the environment variable that
/// holds its password.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub password_env: String,
}

/// A `[[sources]]` entry: `name`, `type` and the source's options.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(flatten)]
    pub options: BTreeMap<String, toml::Value>,
}

/// Values given on the command line or in `FEDSQL_*` variables; `None` means
/// "not given", so the file's value (or the default) stays.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SettingsArgs {
    /// Configuration file (TOML).
    #[arg(long, env = "FEDSQL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./fedsql-data].
    #[arg(long, env = "FEDSQL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Postgres-wire listen address [default: 127.0.0.1:5433].
    #[arg(long, env = "FEDSQL_PG_LISTEN")]
    pub pg_listen: Option<SocketAddr>,
    /// Arrow Flight SQL listen address [default: 127.0.0.1:50051].
    #[arg(long, env = "FEDSQL_FLIGHT_LISTEN")]
    pub flight_listen: Option<SocketAddr>,
    /// Do not load the embedded demo catalog.
    #[arg(long, env = "FEDSQL_NO_DEMO")]
    pub no_demo: bool,
    /// Demo catalog size (1.0 = 20k customers, 200k transactions).
    #[arg(long, env = "FEDSQL_DEMO_SCALE")]
    pub demo_scale: Option<f64>,
    /// User name clients authenticate as [default: fedsql].
    #[arg(long, env = "FEDSQL_USER")]
    pub user: Option<String>,
    /// Name of the environment variable that holds the password; setting it
    /// turns authentication on.
    #[arg(long, env = "FEDSQL_PASSWORD_ENV")]
    pub password_env: Option<String>,
    /// PEM certificate for the Postgres wire over TLS.
    #[arg(long, env = "FEDSQL_PG_TLS_CERT")]
    pub pg_tls_cert: Option<PathBuf>,
    /// PEM private key for the Postgres wire over TLS.
    #[arg(long, env = "FEDSQL_PG_TLS_KEY")]
    pub pg_tls_key: Option<PathBuf>,
    /// Refuse Postgres-wire connections that do not use TLS.
    #[arg(long, env = "FEDSQL_PG_TLS_REQUIRED")]
    pub pg_tls_required: bool,
    /// Flight SQL bearer-token lifetime in seconds [default: 3600].
    #[arg(long, env = "FEDSQL_FLIGHT_TOKEN_TTL_SECS")]
    pub flight_token_ttl_secs: Option<u64>,
    /// PEM certificate for Flight SQL over TLS.
    #[arg(long, env = "FEDSQL_FLIGHT_TLS_CERT")]
    pub flight_tls_cert: Option<PathBuf>,
    /// PEM private key for Flight SQL over TLS.
    #[arg(long, env = "FEDSQL_FLIGHT_TLS_KEY")]
    pub flight_tls_key: Option<PathBuf>,
    /// Address the weight exchange listens on [default: 127.0.0.1].
    #[arg(long, env = "FEDSQL_EXCHANGE_HOST")]
    pub exchange_host: Option<std::net::IpAddr>,
    /// Port the weight exchange listens on [default: 0, a free one].
    #[arg(long, env = "FEDSQL_EXCHANGE_PORT")]
    pub exchange_port: Option<u16>,
    /// Host name (or name:port) sites reach the weight exchange by.
    #[arg(long, env = "FEDSQL_EXCHANGE_ADVERTISE")]
    pub exchange_advertise: Option<String>,
    /// Longest statement accepted, in bytes [default: 16 MiB].
    #[arg(long, env = "FEDSQL_MAX_STATEMENT_BYTES")]
    pub max_statement_bytes: Option<usize>,
}

impl SettingsArgs {
    /// Resolves the settings: defaults, then the file, then these values.
    pub fn resolve(&self) -> Result<Settings> {
        let mut settings = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        if let Some(v) = &self.data_dir {
            settings.data_dir = v.clone();
        }
        if let Some(v) = self.pg_listen {
            settings.pg_listen = v;
        }
        if let Some(v) = self.flight_listen {
            settings.flight_listen = v;
        }
        if self.no_demo {
            settings.demo = false;
        }
        if let Some(v) = self.demo_scale {
            settings.demo_scale = v;
        }
        if let Some(v) = &self.user {
            settings.user = v.clone();
        }
        if let Some(v) = &self.password_env {
            settings.password_env = Some(v.clone());
        }
        if let Some(v) = &self.pg_tls_cert {
            settings.pg_tls_cert = Some(v.clone());
        }
        if let Some(v) = &self.pg_tls_key {
            settings.pg_tls_key = Some(v.clone());
        }
        if self.pg_tls_required {
            settings.pg_tls_required = true;
        }
        if let Some(v) = self.flight_token_ttl_secs {
            settings.flight_token_ttl_secs = v;
        }
        if let Some(v) = &self.flight_tls_cert {
            settings.flight_tls_cert = Some(v.clone());
        }
        if let Some(v) = &self.flight_tls_key {
            settings.flight_tls_key = Some(v.clone());
        }
        if let Some(v) = self.exchange_host {
            settings.exchange_host = v;
        }
        if let Some(v) = self.exchange_port {
            settings.exchange_port = v;
        }
        if let Some(v) = &self.exchange_advertise {
            settings.exchange_advertise = Some(v.clone());
        }
        if let Some(v) = self.max_statement_bytes {
            settings.max_statement_bytes = v;
        }
        settings.validate()?;
        Ok(settings)
    }
}

/// A certificate chain and its private key, as read from PEM files.
pub struct TlsPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// Reads `{name}_cert` and `{name}_key`: both or neither.
fn read_tls(cert: &Option<PathBuf>, key: &Option<PathBuf>, name: &str) -> Result<Option<TlsPem>> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsPem {
            cert: std::fs::read(cert).map_err(|e| ServerError::io(cert, e))?,
            key: std::fs::read(key).map_err(|e| ServerError::io(key, e))?,
        })),
        (None, None) => Ok(None),
        _ => Err(ServerError::Config(format!(
            "{name}_cert and {name}_key must be given together"
        ))),
    }
}

impl Settings {
    /// The Postgres wire's certificate and key, if TLS is configured.
    pub fn pg_tls(&self) -> Result<Option<TlsPem>> {
        let pem = read_tls(&self.pg_tls_cert, &self.pg_tls_key, "pg_tls")?;
        if pem.is_none() && self.pg_tls_required {
            return Err(ServerError::Config(
                "pg_tls_required needs pg_tls_cert and pg_tls_key".into(),
            ));
        }
        Ok(pem)
    }

    /// The Flight SQL endpoint's certificate and key, if TLS is configured.
    pub fn flight_tls(&self) -> Result<Option<TlsPem>> {
        read_tls(&self.flight_tls_cert, &self.flight_tls_key, "flight_tls")
    }

    /// Reads a TOML settings file.
    pub fn from_file(path: &Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path).map_err(|e| ServerError::io(path, e))?;
        toml::from_str(&text).map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))
    }

    fn validate(&self) -> Result<()> {
        if !(self.demo_scale > 0.0 && self.demo_scale <= 100.0) {
            return Err(ServerError::Config(format!(
                "demo_scale must be in (0, 100], got {}",
                self.demo_scale
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fedsql.toml");
        std::fs::write(
            &path,
            r#"
data_dir = "/var/lib/fedsql"
pg_listen = "127.0.0.1:6000"
demo_scale = 0.5

[[sources]]
name = "pg"
type = "postgres"
url = "postgres://u@127.0.0.1:5432/db"
password_env = "PGPASSWORD"
"#,
        )
        .unwrap();
        let args = SettingsArgs {
            config: Some(path),
            pg_listen: Some("127.0.0.1:7000".parse().unwrap()),
            ..Default::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/var/lib/fedsql"));
        assert_eq!(s.pg_listen.port(), 7000);
        assert_eq!(s.demo_scale, 0.5);
        assert!(s.demo);
        assert_eq!(s.sources[0].kind, "postgres");
        assert_eq!(
            s.sources[0].options["password_env"].as_str(),
            Some("PGPASSWORD")
        );
    }

    #[test]
    fn tls_files_come_in_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            pg_tls_cert: Some(dir.path().join("cert.pem")),
            ..Settings::default()
        };
        let err = settings.pg_tls().err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("pg_tls_cert and pg_tls_key")));
        assert!(Settings::default().flight_tls().unwrap().is_none());
        let missing = Settings {
            flight_tls_cert: Some(dir.path().join("nope.pem")),
            flight_tls_key: Some(dir.path().join("nope.pem")),
            ..Settings::default()
        };
        assert!(missing.flight_tls().is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fedsql.toml");
        std::fs::write(&path, "pg_lsten = \"x\"").unwrap();
        let err = Settings::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("pg_lsten"), "{err}");
        let args = SettingsArgs {
            demo_scale: Some(-1.0),
            ..Default::default()
        };
        assert!(args.resolve().is_err());
    }
}
