//! The physical scan of a topic: one DataFusion partition per Kafka
//! partition, each read from its start offset up to the watermark captured
//! at planning.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{
    Boundedness, ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, Timestamp};
use rdkafka::{Offset, TopicPartitionList};

use super::client::KafkaClient;
use super::decode::{decode, RawMessage};
use crate::blocking::{blocking_stream, BatchSender};
use crate::error::ConnectorError;
use crate::remote_log::{QueryReport, ReadPurpose};

/// Messages decoded per Arrow batch, at most.
const BATCH_MESSAGES: usize = 8192;

/// Payload bytes per Arrow batch, at most: large messages make smaller
/// batches, so what a scan holds in memory stays bounded.
const BATCH_BYTES: usize = 2 << 20;

/// The offsets one partition is read over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRange {
    pub partition: i32,
    /// First offset read.
    pub start: i64,
    /// Offset read up to (exclusive); at most the high watermark.
    pub end: i64,
    /// The high watermark captured when the query was planned.
    pub high_watermark: i64,
}

/// Reads a bounded range of each of a topic's partitions.
#[derive(Debug)]
pub struct KafkaScanExec {
    client: Arc<KafkaClient>,
    topic: String,
    /// The table's columns.
    table_schema: SchemaRef,
    json_schema: SchemaRef,
    /// The columns produced (the projection of `table_schema`).
    schema: SchemaRef,
    ranges: Vec<PartitionRange>,
    /// At most this many rows per partition.
    limit: Option<usize>,
    properties: Arc<PlanProperties>,
}

impl KafkaScanExec {
    pub(crate) fn new(
        client: Arc<KafkaClient>,
        topic: String,
        table_schema: SchemaRef,
        json_schema: SchemaRef,
        projection: Option<Vec<usize>>,
        ranges: Vec<PartitionRange>,
        limit: Option<usize>,
    ) -> DfResult<Self> {
        let schema = match &projection {
            Some(p) => Arc::new(table_schema.project(p)?),
            None => Arc::clone(&table_schema),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(ranges.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(KafkaScanExec {
            client,
            topic,
            table_schema,
            json_schema,
            schema,
            ranges,
            limit,
            properties: Arc::new(properties),
        })
    }
}

impl DisplayAs for KafkaScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KafkaScanExec: topic={} seeks=[", self.topic)?;
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "p{}: {}..{}", r.partition, r.start, r.end)?;
        }
        write!(f, "]")?;
        if let Some(limit) = self.limit {
            write!(f, " limit={limit} per partition")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for KafkaScanExec {
    fn name(&self) -> &'static str {
        "KafkaScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
        _: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let schema = Arc::clone(&self.schema);
        let Some(range) = self.ranges.get(partition).cloned() else {
            // A topic without partitions to read: one empty partition.
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::empty(),
            )));
        };
        let reader = PartitionReader {
            client: Arc::clone(&self.client),
            topic: self.topic.clone(),
            table_schema: Arc::clone(&self.table_schema),
            json_schema: Arc::clone(&self.json_schema),
            schema: Arc::clone(&schema),
            range,
            limit: self.limit,
            purpose: context.session_config().get_extension::<ReadPurpose>(),
        };
        Ok(blocking_stream(schema, move |tx| reader.run(tx)))
    }
}

/// Reads one partition's range on a blocking thread.
struct PartitionReader {
    client: Arc<KafkaClient>,
    topic: String,
    table_schema: SchemaRef,
    json_schema: SchemaRef,
    schema: SchemaRef,
    range: PartitionRange,
    limit: Option<usize>,
    purpose: Option<Arc<ReadPurpose>>,
}

impl PartitionReader {
    /// What the query log shows for this partition: the offsets read.
    fn describe(&self, read_until: i64) -> String {
        let r = &self.range;
        format!(
            "kafka topic {} partition {} offsets {}..{} (planned {}..{}, high watermark {})",
            self.topic, r.partition, r.start, read_until, r.start, r.end, r.high_watermark
        )
    }

    fn run(self, tx: BatchSender) {
        let mut report = QueryReport::new(
            self.client.observer.clone(),
            &self.client.source_name,
            &self.describe(self.range.start),
        )
        .with_purpose(self.purpose.clone());
        let mut next = self.range.start;
        let outcome = self.read(&tx, &mut report, &mut next);
        report.set_sql(self.describe(next));
        let skipped = outcome.as_ref().map_or(0, |s| *s);
        if skipped > 0 {
            report.error = Some((
                "01000".into(),
                format!("{skipped} malformed messages skipped (on_error 'skip')"),
            ));
        }
        if let Err(e) = outcome {
            report.error = Some((e.sqlstate().to_string(), e.to_string()));
            let _ = tx.blocking_send(Err(DataFusionError::External(Box::new(e))));
        }
    }

    /// Sends the range's rows; returns how many messages were skipped.
    /// `next` is kept at one past the last offset read, also on failure.
    fn read(
        &self,
        tx: &BatchSender,
        report: &mut QueryReport,
        next: &mut i64,
    ) -> Result<u64, ConnectorError> {
        let r = &self.range;
        // With a limit, `limit` offsets hold enough rows — unless malformed
        // messages are skipped, in which case reading stops on the count of
        // rows instead.
        let end = match (self.limit, self.client.options.on_error) {
            (Some(limit), super::OnError::Fail) => r.end.min(r.start.saturating_add(limit as i64)),
            _ => r.end,
        };
        if r.start >= end {
            return Ok(0);
        }
        let consumer: BaseConsumer = self.client.consumer()?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&self.topic, r.partition, Offset::Offset(r.start))
            .map_err(|e| self.client.classify(e, true))?;
        consumer
            .assign(&assignment)
            .map_err(|e| self.client.classify(e, true))?;
        let mut buffer: Vec<RawMessage> = Vec::with_capacity(BATCH_MESSAGES);
        let mut buffered_bytes = 0;
        let mut skipped = 0;
        let mut last_progress = Instant::now();
        let stall_timeout = self.client.options.stall_timeout;
        while *next < end {
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    // Below the captured end yet at the log's end: the
                    // messages between were deleted (retention) — nothing
                    // more to read.
                    break;
                }
                Some(Err(e)) => {
                    tracing::debug!(topic = %self.topic, partition = r.partition, error = %e, "kafka poll error");
                }
                Some(Ok(message)) => {
                    last_progress = Instant::now();
                    let offset = message.offset();
                    if offset >= end {
                        break;
                    }
                    if offset < *next {
                        continue;
                    }
                    *next = offset + 1;
                    report.bytes += message.payload_len() as u64;
                    buffered_bytes += message.payload_len();
                    buffer.push(RawMessage {
                        partition: r.partition,
                        offset,
                        timestamp: match message.timestamp() {
                            Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => Some(t),
                            Timestamp::NotAvailable => None,
                        },
                        key: message
                            .key()
                            .map(|k| String::from_utf8_lossy(k).into_owned()),
                        payload: message.payload().map(<[u8]>::to_vec),
                    });
                    let limit_reached = self
                        .limit
                        .is_some_and(|l| report.rows + buffer.len() as u64 >= l as u64);
                    if buffer.len() >= BATCH_MESSAGES
                        || buffered_bytes >= BATCH_BYTES
                        || limit_reached
                    {
                        skipped += self.flush(&mut buffer, tx, report)?;
                        buffered_bytes = 0;
                        if tx.is_closed() || self.limit.is_some_and(|l| report.rows >= l as u64) {
                            return Ok(skipped);
                        }
                    }
                }
            }
            if last_progress.elapsed() > stall_timeout {
                return Err(ConnectorError::ConnectionLost {
                    source_name: self.client.source_name.clone(),
                    message: format!(
                        "topic {} partition {}: no message for {}s at offset {next} (reading up to {end}): the broker at {} stopped answering",
                        self.topic,
                        r.partition,
                        stall_timeout.as_secs(),
                        self.client.options.brokers
                    ),
                });
            }
        }
        skipped += self.flush(&mut buffer, tx, report)?;
        Ok(skipped)
    }

    fn flush(
        &self,
        buffer: &mut Vec<RawMessage>,
        tx: &BatchSender,
        report: &mut QueryReport,
    ) -> Result<u64, ConnectorError> {
        if buffer.is_empty() {
            return Ok(0);
        }
        let (batch, skipped) = decode(
            &self.client.source_name,
            &self.topic,
            &self.table_schema,
            &self.json_schema,
            buffer,
            self.client.options.on_error,
        )?;
        buffer.clear();
        report.rows += batch.num_rows() as u64;
        let indices: Vec<usize> = self
            .schema
            .fields()
            .iter()
            .map(|f| self.table_schema.index_of(f.name()))
            .collect::<Result<_, _>>()?;
        let batch = batch.project(&indices)?;
        // A closed channel means the consumer stopped reading (a LIMIT).
        let _ = tx.blocking_send(Ok(batch));
        Ok(skipped)
    }
}
