//! A topic's columns: JSON fields sampled from its messages, plus the
//! message's coordinates.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::client::KafkaClient;
use crate::error::ConnectorError;

/// The columns every Kafka table ends with.
pub const PARTITION: &str = "_partition";
pub const OFFSET: &str = "_offset";
pub const TIMESTAMP: &str = "_timestamp";
pub const KEY: &str = "_key";

/// `_partition INT, _offset BIGINT, _timestamp TIMESTAMP, _key TEXT`.
pub fn metadata_fields() -> Vec<Field> {
    vec![
        Field::new(PARTITION, DataType::Int32, false),
        Field::new(OFFSET, DataType::Int64, false),
        Field::new(
            TIMESTAMP,
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
        Field::new(KEY, DataType::Utf8, true),
    ]
}

/// Whether `name` is one of the metadata columns.
pub fn is_metadata(name: &str) -> bool {
    matches!(name, PARTITION | OFFSET | TIMESTAMP | KEY)
}

/// `fields` (the JSON columns) followed by the metadata columns; a declared
/// metadata column is kept where it is declared.
pub fn with_metadata(fields: Vec<Field>) -> SchemaRef {
    let mut all: Vec<Field> = fields;
    for meta in metadata_fields() {
        if !all.iter().any(|f| f.name() == meta.name()) {
            all.push(meta);
        }
    }
    Arc::new(Schema::new(all))
}

/// Infers the JSON columns of `topic` from up to `sample` messages of each
/// partition (from the start). Types are widened across messages
/// (arrow-json's inference: integers and floats become floats, mixed types
/// text); nested objects become structs, arrays lists. An empty topic has
/// no JSON columns.
pub fn infer(
    client: &KafkaClient,
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
) -> Result<Vec<Field>, ConnectorError> {
    let mut values: Vec<serde_json::Value> = Vec::new();
    for &partition in partitions {
        let (low, high) = client.watermarks(consumer, topic, partition)?;
        if high <= low {
            continue;
        }
        let wanted = (high - low).min(client.options.sample as i64);
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(low))
            .map_err(|e| client.classify(e, true))?;
        consumer
            .assign(&assignment)
            .map_err(|e| client.classify(e, true))?;
        let mut read = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while read < wanted && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => return Err(client.classify(e, false)),
                Some(Ok(message)) => {
                    read += 1;
                    // Messages that are not JSON objects do not shape the
                    // schema; the scan reports them (or skips them).
                    if let Some(Ok(serde_json::Value::Object(object))) = message
                        .payload()
                        .map(serde_json::from_slice::<serde_json::Value>)
                    {
                        values.push(serde_json::Value::Object(object));
                    }
                }
            }
        }
    }
    let schema = datafusion::arrow::json::reader::infer_json_schema_from_iterator(
        values.into_iter().map(Ok),
    )
    .map_err(|e| ConnectorError::Remote {
        source_name: client.source_name.clone(),
        sqlstate: "22P02".into(),
        message: format!("topic {topic}: cannot infer columns from its messages: {e}"),
    })?;
    Ok(schema
        .fields()
        .iter()
        .filter(|f| !is_metadata(f.name()))
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect())
}
