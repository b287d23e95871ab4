//! One Kafka cluster as seen by fedsql: metadata, watermarks, timestamp
//! look-ups and partition readers. Every call here blocks (librdkafka):
//! callers run it on tokio's blocking pool.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaOptions;
use crate::error::ConnectorError;
use crate::remote_log::RemoteQueryObserver;

/// How long a metadata or offset request may take before the broker counts
/// as unreachable.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A Kafka cluster and how to talk to it.
pub struct KafkaClient {
    pub(crate) source_name: String,
    pub(crate) options: KafkaOptions,
    pub(crate) observer: Option<Arc<dyn RemoteQueryObserver>>,
}

impl std::fmt::Debug for KafkaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaClient")
            .field("source_name", &self.source_name)
            .field("brokers", &self.options.brokers)
            .finish()
    }
}

impl KafkaClient {
    /// A client for `options`; nothing connects until a call needs it.
    pub fn new(
        source_name: &str,
        options: KafkaOptions,
        observer: Option<Arc<dyn RemoteQueryObserver>>,
    ) -> Result<Self, ConnectorError> {
        let client = KafkaClient {
            source_name: source_name.to_string(),
            options,
            observer,
        };
        // Checks the settings (and the password variable) now.
        client.config()?;
        Ok(client)
    }

    fn config(&self) -> Result<ClientConfig, ConnectorError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.options.brokers)
            // Partitions are always assigned explicitly; the group id is
            // required by librdkafka but never joins a group or commits.
            .set("group.id", "fedsql-bounded-scan")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("socket.timeout.ms", "5000")
            .set("log_level", "3");
        for (key, value) in &self.options.client_settings {
            config.set(key, value);
        }
        if let Some(var) = &self.options.sasl_password_env {
            let password = std::env::var(var)
                .map_err(|_| ConnectorError::MissingPassword { var: var.clone() })?;
            config.set("sasl.password", password);
        }
        Ok(config)
    }

    /// A consumer that is assigned partitions explicitly.
    pub(crate) fn consumer(&self) -> Result<BaseConsumer, ConnectorError> {
        self.config()?
            .create::<BaseConsumer>()
            .map_err(|e| self.classify(e, true))
    }

    /// The cluster's topics (internal ones, `__…`, left out).
    pub fn topics(&self) -> Result<Vec<String>, ConnectorError> {
        let consumer = self.consumer()?;
        let metadata = consumer
            .fetch_metadata(None, REQUEST_TIMEOUT)
            .map_err(|e| self.classify(e, true))?;
        let mut topics: Vec<String> = metadata
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|t| !t.starts_with("__"))
            .collect();
        topics.sort();
        Ok(topics)
    }

    /// The partitions of `topic`, or `None` if the cluster does not have it.
    pub fn partitions(
        &self,
        consumer: &BaseConsumer,
        topic: &str,
    ) -> Result<Option<Vec<i32>>, ConnectorError> {
        let metadata = consumer
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .map_err(|e| self.classify(e, true))?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        if let Some(error) = found.error() {
            let code: RDKafkaErrorCode = error.into();
            if code == RDKafkaErrorCode::UnknownTopicOrPartition {
                return Ok(None);
            }
        }
        let mut partitions: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
        partitions.sort_unstable();
        Ok((!partitions.is_empty()).then_some(partitions))
    }

    /// (low, high) watermarks of one partition.
    pub fn watermarks(
        &self,
        consumer: &BaseConsumer,
        topic: &str,
        partition: i32,
    ) -> Result<(i64, i64), ConnectorError> {
        consumer
            .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
            .map_err(|e| self.classify(e, true))
    }

    /// For each partition, the first offset whose timestamp is at or after
    /// `timestamp_ms` (`None`: no such message).
    pub fn offsets_for_time(
        &self,
        consumer: &BaseConsumer,
        topic: &str,
        partitions: &[i32],
        timestamp_ms: i64,
    ) -> Result<Vec<(i32, Option<i64>)>, ConnectorError> {
        let mut request = TopicPartitionList::new();
        for p in partitions {
            request
                .add_partition_offset(topic, *p, Offset::Offset(timestamp_ms))
                .map_err(|e| self.classify(e, true))?;
        }
        let answer = consumer
            .offsets_for_times(request, REQUEST_TIMEOUT)
            .map_err(|e| self.classify(e, true))?;
        Ok(partitions
            .iter()
            .map(|p| {
                let offset = answer
                    .find_partition(topic, *p)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) if o >= 0 => Some(o),
                        _ => None,
                    });
                (*p, offset)
            })
            .collect())
    }

    /// Maps a librdkafka error to what the client should see.
    pub(crate) fn classify(&self, error: KafkaError, connecting: bool) -> ConnectorError {
        let source_name = self.source_name.clone();
        // librdkafka connects lazily: creating a client fails only on its
        // configuration (e.g. `fetch.max.bytes` below `message.max.bytes`).
        if let KafkaError::ClientCreation(message) = &error {
            return ConnectorError::InvalidOption {
                option: "options".into(),
                message: message.clone(),
            };
        }
        let message = error.to_string();
        let transport = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::BrokerTransportFailure
                    | RDKafkaErrorCode::AllBrokersDown
                    | RDKafkaErrorCode::OperationTimedOut
                    | RDKafkaErrorCode::RequestTimedOut
                    | RDKafkaErrorCode::NetworkException
                    | RDKafkaErrorCode::Resolve
            )
        ) || matches!(error, KafkaError::MetadataFetch(_));
        if transport && connecting {
            ConnectorError::Unreachable {
                source_name,
                addr: self.options.brokers.clone(),
                message,
            }
        } else if transport {
            ConnectorError::ConnectionLost {
                source_name,
                message,
            }
        } else if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::SaslAuthenticationFailed | RDKafkaErrorCode::Authentication)
        ) {
            ConnectorError::AuthFailed {
                source_name,
                addr: self.options.brokers.clone(),
                message,
            }
        } else {
            ConnectorError::Remote {
                source_name,
                sqlstate: "58000".into(),
                message,
            }
        }
    }
}
