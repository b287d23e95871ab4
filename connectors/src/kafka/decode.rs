//! JSON messages to Arrow, in batches (arrow-json's decoder), with the
//! malformed ones reported or skipped.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::json::ReaderBuilder;

use super::OnError;
use crate::error::ConnectorError;

/// One message as read from a partition.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<String>,
    /// `None` for a tombstone (read as a row of NULLs).
    pub payload: Option<Vec<u8>>,
}

/// Decodes `messages` into rows of `schema` (the table's columns, JSON
/// fields and metadata columns in any order). Malformed messages fail with
/// their coordinates, or are skipped and counted.
pub fn decode(
    source: &str,
    topic: &str,
    schema: &SchemaRef,
    json_schema: &SchemaRef,
    messages: &[RawMessage],
    on_error: OnError,
) -> Result<(RecordBatch, u64), ConnectorError> {
    // Fast path: the whole batch through one decoder.
    let (json, kept, skipped) = match decode_all(json_schema, messages) {
        Ok(batch) => (batch, messages.iter().collect::<Vec<_>>(), 0),
        Err(_) => {
            // Slow path, only for a batch with a bad message: one at a time,
            // to name (or skip) exactly the bad ones.
            let mut parts = Vec::new();
            let mut kept = Vec::new();
            let mut skipped = 0;
            for message in messages {
                match decode_all(json_schema, std::slice::from_ref(message)) {
                    Ok(batch) => {
                        parts.push(batch);
                        kept.push(message);
                    }
                    Err(e) if on_error == OnError::Skip => {
                        tracing::debug!(topic, partition = message.partition, offset = message.offset, error = %e, "skipped a malformed message");
                        skipped += 1;
                    }
                    Err(e) => {
                        return Err(ConnectorError::Remote {
                            source_name: source.to_string(),
                            sqlstate: "22P02".into(),
                            message: format!(
                                "topic {topic} partition {} offset {}: malformed message: {e} \
                                 (create the table with on_error 'skip' to skip such messages)",
                                message.partition, message.offset
                            ),
                        })
                    }
                }
            }
            let batch = concat_batches(json_schema, &parts)?;
            (batch, kept, skipped)
        }
    };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column: ArrayRef = match field.name().as_str() {
            super::schema::PARTITION => Arc::new(Int32Array::from_iter_values(
                kept.iter().map(|m| m.partition),
            )),
            super::schema::OFFSET => {
                Arc::new(Int64Array::from_iter_values(kept.iter().map(|m| m.offset)))
            }
            super::schema::TIMESTAMP => Arc::new(TimestampMillisecondArray::from_iter(
                kept.iter().map(|m| m.timestamp),
            )),
            super::schema::KEY => Arc::new(StringArray::from_iter(
                kept.iter().map(|m| m.key.as_deref()),
            )),
            name => {
                let index = json_schema.index_of(name)?;
                Arc::clone(json.column(index))
            }
        };
        let column = if column.data_type() == field.data_type() {
            column
        } else {
            datafusion::arrow::compute::cast(&column, field.data_type())?
        };
        columns.push(column);
    }
    let batch = RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(kept.len())),
    )?;
    Ok((batch, skipped))
}

fn decode_all(
    json_schema: &SchemaRef,
    messages: &[RawMessage],
) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    // Inference widens a field seen as a number and as text to text;
    // coercion reads the numbers into it.
    let mut decoder = ReaderBuilder::new(Arc::clone(json_schema))
        .with_batch_size(messages.len().max(1))
        .with_coerce_primitive(true)
        .build_decoder()?;
    for (i, message) in messages.iter().enumerate() {
        let payload: &[u8] = message.payload.as_deref().unwrap_or(b"{}");
        let mut rest = payload;
        while !rest.is_empty() {
            let read = decoder.decode(rest)?;
            if read == 0 {
                break;
            }
            rest = &rest[read..];
        }
        // A message holds exactly one JSON object: a separator keeps a
        // truncated one from running into the next.
        decoder.decode(b"\n")?;
        if decoder.len() != i + 1 {
            return Err(datafusion::arrow::error::ArrowError::JsonError(
                "the message is not one JSON object".into(),
            ));
        }
    }
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(json_schema))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn message(offset: i64, payload: &str) -> RawMessage {
        RawMessage {
            partition: 1,
            offset,
            timestamp: Some(1_700_000_000_000 + offset),
            key: Some(format!("k{offset}")),
            payload: Some(payload.as_bytes().to_vec()),
        }
    }

    fn schemas() -> (SchemaRef, SchemaRef) {
        let json: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("amount", DataType::Float64, true),
        ]));
        let mut fields: Vec<Field> = json.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(super::super::schema::metadata_fields());
        (Arc::new(Schema::new(fields)), json)
    }

    #[test]
    fn decodes_and_adds_coordinates() {
        let (schema, json) = schemas();
        let messages = vec![
            message(0, r#"{"id": 1, "amount": 2.5}"#),
            message(1, r#"{"id": 2}"#),
        ];
        let (batch, skipped) = decode("k", "t", &schema, &json, &messages, OnError::Fail).unwrap();
        assert_eq!(skipped, 0);
        assert_eq!(batch.num_rows(), 2);
        let offsets = batch
            .column(3)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(offsets.values(), &[0, 1]);
        assert!(batch.column(1).is_null(1), "a missing field is NULL");
    }

    #[test]
    fn malformed_messages_fail_with_coordinates_or_are_skipped() {
        let (schema, json) = schemas();
        let messages = vec![
            message(0, r#"{"id": 1}"#),
            message(1, r#"{"id": "#),
            message(2, r#"{"id": "not a number"}"#),
            message(3, r#"{"id": 4}"#),
        ];
        let err = decode("k", "pay", &schema, &json, &messages, OnError::Fail)
            .unwrap_err()
            .to_string();
        assert!(err.contains("topic pay partition 1 offset 1"), "{err}");
        let (batch, skipped) =
            decode("k", "pay", &schema, &json, &messages, OnError::Skip).unwrap();
        assert_eq!(skipped, 2);
        assert_eq!(batch.num_rows(), 2);
    }
}
