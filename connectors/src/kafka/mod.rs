//! The Kafka connector: topics as tables, read in bounded, reproducible scans.
//!
//! ```text
//!  CREATE SOURCE k TYPE kafka OPTIONS (brokers '127.0.0.1:9092', format 'json', sample 1000)
//!
//!  k.public.<topic>  ──►  KafkaTable (schema sampled from the topic + _partition, _offset,
//!                          │          _timestamp, _key)
//!                          │  _partition / _offset / _timestamp filters become seeks;
//!                          │  the high watermarks are captured when the query is planned
//!                          ▼
//!                     KafkaScanExec — one DataFusion partition per Kafka partition,
//!                          explicitly assigned (never a consumer group), read from the
//!                          start offset up to the captured watermark, JSON decoded in
//!                          batches by arrow-json
//! ```
//!
//! Because a scan stops at the watermarks it captured, the same query over
//! the same topic returns the same rows while producers keep writing: a
//! training run reads a fixed, recorded range of offsets (each scan's
//! ranges are in `fedsql.system.queries`).

mod client;
mod decode;
mod exec;
mod schema;
mod table;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{
    CatalogProvider, SchemaProvider, Session, TableProvider, TableProviderFactory,
};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::CreateExternalTable;

pub use client::KafkaClient;
pub use table::KafkaTable;

use crate::blocking::run_blocking;
use crate::error::ConnectorError;
use crate::remote_log::RemoteQueryObserver;

/// Messages sampled per partition to infer a topic's columns, by default.
const DEFAULT_SAMPLE: usize = 1000;

/// What to do with a message that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Fail the query, naming topic, partition and offset.
    Fail,
    /// Skip it and count it (in `fedsql.system.queries`).
    Skip,
}

/// The options of `CREATE SOURCE … TYPE kafka` (and of Kafka external tables).
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaOptions {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// Only `json` for now.
    pub format: String,
    /// Messages read per partition to infer a topic's columns.
    pub sample: usize,
    /// Malformed messages: fail the query or skip them.
    pub on_error: OnError,
    /// librdkafka settings passed through as given (`security.protocol`,
    /// `sasl.mechanisms`, `sasl.username`, …); a secret is named by
    /// `sasl_password_env`, never stored.
    pub client_settings: Vec<(String, String)>,
    /// The environment variable holding `sasl.password`.
    pub sasl_password_env: Option<String>,
    /// How long a scan waits for the next message below its captured end
    /// (librdkafka retries meanwhile) before failing with 08006.
    pub stall_timeout: std::time::Duration,
}

/// The default of [`KafkaOptions::stall_timeout`].
const DEFAULT_STALL_TIMEOUT_SECS: u64 = 30;

const CLIENT_SETTINGS: &[&str] = &[
    "security.protocol",
    "sasl.mechanisms",
    "sasl.username",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "client.id",
    // Tuning: how much a scan prefetches and how it waits for a broker.
    "queued.max.messages.kbytes",
    "fetch.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.wait.max.ms",
    "socket.timeout.ms",
    "reconnect.backoff.max.ms",
];

impl KafkaOptions {
    /// Parses and checks source (or external table) options.
    pub fn from_options(options: &[(String, String)]) -> Result<Self, ConnectorError> {
        let map: BTreeMap<String, &str> = options
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
            .collect();
        let invalid = |option: &str, message: String| ConnectorError::InvalidOption {
            option: option.to_string(),
            message,
        };
        let mut client_settings = Vec::new();
        for (key, value) in &map {
            match key.as_str() {
                "brokers" | "format" | "sample" | "on_error" | "sasl_password_env"
                | "stall_timeout" => {}
                k if CLIENT_SETTINGS.contains(&k) => {
                    client_settings.push((k.to_string(), value.to_string()))
                }
                "sasl.password" => {
                    return Err(invalid(
                        key,
                        "must not be given in clear: put it in an environment variable and name it with sasl_password_env".into(),
                    ))
                }
                _ => {
                    return Err(invalid(
                        key,
                        format!(
                            "unknown option for a kafka source (expected brokers, format, sample, on_error, stall_timeout, sasl_password_env, {})",
                            CLIENT_SETTINGS.join(", ")
                        ),
                    ))
                }
            }
        }
        let brokers = map
            .get("brokers")
            .ok_or_else(|| {
                invalid(
                    "brokers",
                    "is required, e.g. brokers '127.0.0.1:9092'".into(),
                )
            })?
            .to_string();
        let format = map
            .get("format")
            .copied()
            .unwrap_or("json")
            .to_ascii_lowercase();
        if format != "json" {
            return Err(invalid(
                "format",
                format!("'{format}' is not supported (only 'json')"),
            ));
        }
        let sample =
            match map.get("sample") {
                None => DEFAULT_SAMPLE,
                Some(v) => v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    invalid("sample", format!("must be a positive integer, got {v}"))
                })?,
            };
        let on_error = match map.get("on_error").map(|v| v.to_ascii_lowercase()) {
            None => OnError::Fail,
            Some(v) if v == "fail" => OnError::Fail,
            Some(v) if v == "skip" => OnError::Skip,
            Some(v) => {
                return Err(invalid(
                    "on_error",
                    format!("must be 'fail' or 'skip', got '{v}'"),
                ))
            }
        };
        let stall_timeout = match map.get("stall_timeout") {
            None => DEFAULT_STALL_TIMEOUT_SECS,
            Some(v) => v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                invalid(
                    "stall_timeout",
                    format!("must be a positive number of seconds, got {v}"),
                )
            })?,
        };
        Ok(KafkaOptions {
            stall_timeout: std::time::Duration::from_secs(stall_timeout),
            brokers,
            format,
            sample,
            on_error,
            client_settings,
            sasl_password_env: map.get("sasl_password_env").map(|s| s.to_string()),
        })
    }
}

/// Opens a Kafka source: lists its topics and returns the catalog to
/// register under `name` (one schema, `public`, one table per topic).
pub async fn open_kafka_catalog(
    name: &str,
    options: &[(String, String)],
    observer: Option<Arc<dyn RemoteQueryObserver>>,
) -> Result<Arc<dyn CatalogProvider>, ConnectorError> {
    let options = KafkaOptions::from_options(options)?;
    let client = Arc::new(KafkaClient::new(name, options, observer)?);
    let topics = {
        let client = Arc::clone(&client);
        run_blocking(name, move || client.topics()).await?
    };
    let schema = Arc::new(KafkaSchema {
        client,
        topics: std::sync::Mutex::new(topics),
        tables: Default::default(),
    });
    let catalog = datafusion::catalog::MemoryCatalogProvider::new();
    catalog.register_schema("public", schema as Arc<dyn SchemaProvider>)?;
    Ok(Arc::new(catalog))
}

/// A Kafka cluster's topics as tables; each topic's columns are sampled the
/// first time a query names it.
#[derive(Debug)]
struct KafkaSchema {
    client: Arc<KafkaClient>,
    /// Listed at `CREATE SOURCE` (and start-up); a topic created later joins
    /// when a query first names it.
    topics: std::sync::Mutex<Vec<String>>,
    tables: tokio::sync::Mutex<BTreeMap<String, Arc<KafkaTable>>>,
}

#[async_trait]
impl SchemaProvider for KafkaSchema {
    fn table_names(&self) -> Vec<String> {
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if !self.table_exist(name) && !self.topic_appeared(name).await? {
            return Ok(None);
        }
        let mut tables = self.tables.lock().await;
        if let Some(table) = tables.get(name) {
            return Ok(Some(Arc::clone(table) as Arc<dyn TableProvider>));
        }
        let client = Arc::clone(&self.client);
        let topic = name.to_string();
        let source = client.source_name.clone();
        let table = run_blocking(&source, move || KafkaTable::sampled(client, &topic))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let table = Arc::new(table);
        tables.insert(name.to_string(), Arc::clone(&table));
        Ok(Some(table as Arc<dyn TableProvider>))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|t| t == name)
    }
}

impl KafkaSchema {
    /// Whether `topic`, unknown when the topics were listed, exists now (a
    /// topic created after `CREATE SOURCE`); if so it joins the list.
    async fn topic_appeared(&self, topic: &str) -> DfResult<bool> {
        let client = Arc::clone(&self.client);
        let name = topic.to_string();
        let source = client.source_name.clone();
        let exists = run_blocking(&source, move || {
            let consumer = client.consumer()?;
            Ok(client.partitions(&consumer, &name)?.is_some())
        })
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
        if exists {
            let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            if !topics.iter().any(|t| t == topic) {
                topics.push(topic.to_string());
                topics.sort();
            }
        }
        Ok(exists)
    }
}

/// `CREATE EXTERNAL TABLE t (…) STORED AS KAFKA LOCATION 'kafka://host:port/topic'
/// OPTIONS ('format' 'json', 'on_error' 'skip')`: a topic with a declared
/// schema (no sampling).
#[derive(Debug)]
pub struct KafkaTableFactory {
    observer: Option<Arc<dyn RemoteQueryObserver>>,
}

impl KafkaTableFactory {
    /// A factory whose tables report their scans to `observer`.
    pub fn new(observer: Option<Arc<dyn RemoteQueryObserver>>) -> Self {
        KafkaTableFactory { observer }
    }
}

#[async_trait]
impl TableProviderFactory for KafkaTableFactory {
    async fn create(
        &self,
        _state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> DfResult<Arc<dyn TableProvider>> {
        let to_df = |e: ConnectorError| DataFusionError::External(Box::new(e));
        let location = match cmd.locations.as_slice() {
            [one] => one.as_str(),
            _ => "",
        };
        let rest = location.strip_prefix("kafka://").ok_or_else(|| {
            to_df(ConnectorError::InvalidOption {
                option: "LOCATION".into(),
                message: format!("expected 'kafka://host:port/topic', got '{location}'"),
            })
        })?;
        let (brokers, topic) = rest
            .split_once('/')
            .filter(|(b, t)| !b.is_empty() && !t.is_empty())
            .ok_or_else(|| {
                to_df(ConnectorError::InvalidOption {
                    option: "LOCATION".into(),
                    message: format!("expected 'kafka://host:port/topic', got '{location}'"),
                })
            })?;
        let mut options: Vec<(String, String)> = cmd
            .options
            .iter()
            // DataFusion prefixes options of unknown formats with `format.`.
            .map(|(k, v)| {
                (
                    k.strip_prefix("format.").unwrap_or(k).to_string(),
                    v.clone(),
                )
            })
            .collect();
        options.push(("brokers".into(), brokers.to_string()));
        let options = KafkaOptions::from_options(&options).map_err(to_df)?;
        let name = cmd.name.to_string();
        let client =
            Arc::new(KafkaClient::new(&name, options, self.observer.clone()).map_err(to_df)?);
        let declared = Arc::new(cmd.schema.as_arrow().clone());
        let topic = topic.to_string();
        let table = run_blocking(&name, move || {
            KafkaTable::declared(client, &topic, declared)
        })
        .await
        .map_err(to_df)?;
        Ok(Arc::new(table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_options as opts;

    #[test]
    fn options_are_checked() {
        let o = KafkaOptions::from_options(&opts(&[
            ("brokers", "h:1"),
            ("sample", "5"),
            ("on_error", "skip"),
        ]))
        .unwrap();
        assert_eq!(o.sample, 5);
        assert_eq!(o.on_error, OnError::Skip);
        assert!(
            KafkaOptions::from_options(&opts(&[("brokers", "h:1"), ("format", "avro")])).is_err()
        );
        assert!(KafkaOptions::from_options(&opts(&[("sample", "5")])).is_err());
        assert!(
            KafkaOptions::from_options(&opts(&[("brokers", "h:1"), ("sasl.password", "x")]))
                .is_err()
        );
        assert!(
            KafkaOptions::from_options(&opts(&[("brokers", "h:1"), ("on_error", "ignore")]))
                .is_err()
        );
    }
}
