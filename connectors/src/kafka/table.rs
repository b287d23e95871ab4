//! A topic as a DataFusion table: filters on the coordinates become seeks.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::ScalarValue;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use super::client::KafkaClient;
use super::exec::{KafkaScanExec, PartitionRange};
use super::schema::{self, OFFSET, PARTITION, TIMESTAMP};
use crate::blocking::run_blocking;
use crate::error::ConnectorError;

/// One topic of a Kafka source (or a Kafka external table).
#[derive(Debug)]
pub struct KafkaTable {
    client: Arc<KafkaClient>,
    topic: String,
    /// JSON columns then metadata columns.
    schema: SchemaRef,
    /// Just the JSON columns, as the decoder fills them.
    json_schema: SchemaRef,
}

impl KafkaTable {
    /// `topic` with its columns sampled from its messages (blocking).
    pub fn sampled(client: Arc<KafkaClient>, topic: &str) -> Result<Self, ConnectorError> {
        let consumer = client.consumer()?;
        let partitions = client
            .partitions(&consumer, topic)?
            .ok_or_else(|| unknown_topic(&client, topic))?;
        let fields = schema::infer(&client, &consumer, topic, &partitions)?;
        Ok(Self::new(client, topic, fields))
    }

    /// `topic` with declared columns (metadata columns added when not
    /// declared); checks that the topic exists (blocking).
    pub fn declared(
        client: Arc<KafkaClient>,
        topic: &str,
        declared: Arc<Schema>,
    ) -> Result<Self, ConnectorError> {
        let consumer = client.consumer()?;
        client
            .partitions(&consumer, topic)?
            .ok_or_else(|| unknown_topic(&client, topic))?;
        let fields = declared
            .fields()
            .iter()
            .filter(|f| !schema::is_metadata(f.name()))
            .map(|f| f.as_ref().clone())
            .collect();
        Ok(Self::new(client, topic, fields))
    }

    fn new(
        client: Arc<KafkaClient>,
        topic: &str,
        json_fields: Vec<datafusion::arrow::datatypes::Field>,
    ) -> Self {
        let json_schema = Arc::new(Schema::new(json_fields.clone()));
        KafkaTable {
            client,
            topic: topic.to_string(),
            schema: schema::with_metadata(json_fields),
            json_schema,
        }
    }
}

fn unknown_topic(client: &KafkaClient, topic: &str) -> ConnectorError {
    ConnectorError::Remote {
        source_name: client.source_name.clone(),
        sqlstate: "42P01".into(),
        message: format!("topic {topic} does not exist at {}", client.options.brokers),
    }
}

/// What the filters say about where to read.
#[derive(Debug, Default, Clone)]
pub(crate) struct Seeks {
    /// Only these partitions (`None`: all).
    pub partitions: Option<Vec<i32>>,
    /// First offset to read (inclusive).
    pub offset_from: Option<i64>,
    /// Offset to stop before (exclusive).
    pub offset_to: Option<i64>,
    /// Earliest timestamp wanted (ms, inclusive).
    pub timestamp_from: Option<i64>,
}

impl Seeks {
    /// Narrows the seeks by one filter; returns whether it was understood
    /// exactly (so DataFusion need not re-check it).
    fn add(&mut self, filter: &Expr) -> Option<bool> {
        // `_partition IN (…)` arrives as equalities joined by OR.
        if let Some(partitions) = partitions_of(filter) {
            self.restrict_partitions(&partitions);
            return Some(true);
        }
        match filter {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (column, op, value) = match (left.as_ref(), right.as_ref()) {
                    (Expr::Column(c), v) => (c.name.as_str(), *op, literal_i64(v)?),
                    (v, Expr::Column(c)) => (c.name.as_str(), op.swap()?, literal_i64(v)?),
                    _ => return None,
                };
                match (column, op) {
                    (PARTITION, Operator::Eq) => {
                        self.restrict_partitions(&[value as i32]);
                        Some(true)
                    }
                    (OFFSET, Operator::Eq) => {
                        self.from(value);
                        self.to(value + 1);
                        Some(true)
                    }
                    (OFFSET, Operator::Gt) => {
                        self.from(value + 1);
                        Some(true)
                    }
                    (OFFSET, Operator::GtEq) => {
                        self.from(value);
                        Some(true)
                    }
                    (OFFSET, Operator::Lt) => {
                        self.to(value);
                        Some(true)
                    }
                    (OFFSET, Operator::LtEq) => {
                        self.to(value + 1);
                        Some(true)
                    }
                    // A seek to the first message at or after the time;
                    // DataFusion still checks every row (timestamps need not
                    // grow with offsets).
                    (TIMESTAMP, Operator::Gt) => {
                        self.since(value + 1);
                        Some(false)
                    }
                    (TIMESTAMP, Operator::GtEq) => {
                        self.since(value);
                        Some(false)
                    }
                    _ => None,
                }
            }
            Expr::Between(between) if !between.negated => {
                let Expr::Column(c) = between.expr.as_ref() else {
                    return None;
                };
                let low = literal_i64(&between.low)?;
                let high = literal_i64(&between.high)?;
                match c.name.as_str() {
                    OFFSET => {
                        self.from(low);
                        self.to(high + 1);
                        Some(true)
                    }
                    TIMESTAMP => {
                        self.since(low);
                        Some(false)
                    }
                    _ => None,
                }
            }
            Expr::InList(list) if !list.negated => {
                let Expr::Column(c) = list.expr.as_ref() else {
                    return None;
                };
                if c.name != PARTITION {
                    return None;
                }
                let values = list
                    .list
                    .iter()
                    .map(|v| literal_i64(v).map(|v| v as i32))
                    .collect::<Option<Vec<_>>>()?;
                self.restrict_partitions(&values);
                Some(true)
            }
            _ => None,
        }
    }

    fn restrict_partitions(&mut self, wanted: &[i32]) {
        self.partitions = Some(match &self.partitions {
            None => wanted.to_vec(),
            Some(current) => current
                .iter()
                .copied()
                .filter(|p| wanted.contains(p))
                .collect(),
        });
    }

    fn from(&mut self, offset: i64) {
        self.offset_from = Some(self.offset_from.map_or(offset, |o| o.max(offset)));
    }

    fn to(&mut self, offset: i64) {
        self.offset_to = Some(self.offset_to.map_or(offset, |o| o.min(offset)));
    }

    fn since(&mut self, timestamp: i64) {
        self.timestamp_from = Some(self.timestamp_from.map_or(timestamp, |t| t.max(timestamp)));
    }
}

/// The partitions a filter made only of `_partition = n`, `_partition IN
/// (…)` and `OR` selects.
fn partitions_of(filter: &Expr) -> Option<Vec<i32>> {
    match filter {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => {
            let mut all = partitions_of(left)?;
            all.extend(partitions_of(right)?);
            Some(all)
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), v) | (v, Expr::Column(c)) if c.name == PARTITION => {
                Some(vec![literal_i64(v)? as i32])
            }
            _ => None,
        },
        Expr::InList(list) if !list.negated => {
            let Expr::Column(c) = list.expr.as_ref() else {
                return None;
            };
            if c.name != PARTITION {
                return None;
            }
            list.list
                .iter()
                .map(|v| literal_i64(v).map(|v| v as i32))
                .collect()
        }
        _ => None,
    }
}

/// An integer (or millisecond timestamp) literal, through casts DataFusion
/// adds for comparisons.
fn literal_i64(expr: &Expr) -> Option<i64> {
    match expr {
        Expr::Literal(value, _) => match value {
            ScalarValue::Int8(Some(v)) => Some(*v as i64),
            ScalarValue::Int16(Some(v)) => Some(*v as i64),
            ScalarValue::Int32(Some(v)) => Some(*v as i64),
            ScalarValue::Int64(Some(v)) => Some(*v),
            ScalarValue::UInt8(Some(v)) => Some(*v as i64),
            ScalarValue::UInt16(Some(v)) => Some(*v as i64),
            ScalarValue::UInt32(Some(v)) => Some(*v as i64),
            ScalarValue::UInt64(Some(v)) => i64::try_from(*v).ok(),
            ScalarValue::TimestampMillisecond(Some(v), _) => Some(*v),
            ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1000),
            // Finer units round down to the millisecond at or before.
            ScalarValue::TimestampMicrosecond(Some(v), _) => Some(v.div_euclid(1000)),
            ScalarValue::TimestampNanosecond(Some(v), _) => Some(v.div_euclid(1_000_000)),
            _ => None,
        },
        Expr::Cast(cast) => literal_i64(&cast.expr),
        Expr::TryCast(cast) => literal_i64(&cast.expr),
        _ => None,
    }
}

#[async_trait]
impl TableProvider for KafkaTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| match Seeks::default().add(f) {
                Some(true) => TableProviderFilterPushDown::Exact,
                Some(false) => TableProviderFilterPushDown::Inexact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mut seeks = Seeks::default();
        for filter in filters {
            seeks.add(filter);
        }
        // The ranges (and so the watermarks) are fixed now, when the query
        // is planned: every partition of the scan reads up to them.
        let client = Arc::clone(&self.client);
        let topic = self.topic.clone();
        let source = client.source_name.clone();
        let ranges = run_blocking(&source, move || plan_ranges(&client, &topic, &seeks))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(Arc::new(KafkaScanExec::new(
            Arc::clone(&self.client),
            self.topic.clone(),
            Arc::clone(&self.schema),
            Arc::clone(&self.json_schema),
            projection.cloned(),
            ranges,
            limit,
        )?))
    }
}

/// The offsets each partition is read over: from the seeks, up to the high
/// watermark captured now (blocking).
fn plan_ranges(
    client: &KafkaClient,
    topic: &str,
    seeks: &Seeks,
) -> Result<Vec<PartitionRange>, ConnectorError> {
    let consumer = client.consumer()?;
    let all = client
        .partitions(&consumer, topic)?
        .ok_or_else(|| unknown_topic(client, topic))?;
    let partitions: Vec<i32> = match &seeks.partitions {
        None => all,
        Some(wanted) => all.into_iter().filter(|p| wanted.contains(p)).collect(),
    };
    let by_time = match seeks.timestamp_from {
        Some(ts) => client.offsets_for_time(&consumer, topic, &partitions, ts)?,
        None => Vec::new(),
    };
    let mut ranges = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let (low, high) = client.watermarks(&consumer, topic, partition)?;
        let mut start = low.max(seeks.offset_from.unwrap_or(low));
        if seeks.timestamp_from.is_some() {
            match by_time
                .iter()
                .find(|(p, _)| *p == partition)
                .and_then(|(_, o)| *o)
            {
                Some(offset) => start = start.max(offset),
                // No message at or after that time.
                None => start = high,
            }
        }
        let end = high.min(seeks.offset_to.unwrap_or(high));
        ranges.push(PartitionRange {
            partition,
            start,
            end: end.max(start),
            high_watermark: high,
        });
    }
    Ok(ranges)
}
