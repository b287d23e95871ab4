//! Runs SQL that datafusion-federation unparsed on a Postgres source and
//! streams the rows back as Arrow, through binary `COPY`.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{PhysicalExpr, SendableRecordBatchStream};
use datafusion::sql::unparser::dialect::{Dialect, PostgreSqlDialect};
use datafusion_federation::sql::SQLExecutor;
use futures::StreamExt;
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::{Kind, Type};

use super::types::{array_text_to_list, arrow_type, ColumnBuilder, RawValue, TextCast};
use super::PostgresOptions;
use crate::error::ConnectorError;
use crate::pushdown::partitioned::{self, lazy_stream, PartitionTask, ScanPartitioner};
use crate::pushdown::split::{self, SplitKeys, SplittableScan};
use crate::pushdown::SourceDialect;
use crate::remote_log::{QueryReport, RemoteQueryObserver};
use std::collections::HashMap;

/// How the SQL the executor is sent is parsed back (to split scans).
const PG_PARSER: datafusion::sql::sqlparser::dialect::PostgreSqlDialect =
    datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};

/// Rows per Arrow batch.
const BATCH_ROWS: usize = 8192;

/// Executes federated SQL on one Postgres source.
#[derive(Debug, Clone)]
pub struct PostgresExecutor {
    source_name: String,
    config: tokio_postgres::Config,
    /// `host:port` for messages.
    address: String,
    /// Distinguishes this source from every other in federation decisions.
    context: String,
    /// Told about every remote query (fedsql.system.queries).
    observer: Option<Arc<dyn RemoteQueryObserver>>,
    /// Which tables scans are split on (and into how many parallel `COPY`s).
    split_keys: Arc<SplitKeys>,
}

impl PostgresExecutor {
    /// An executor for source `source_name`.
    pub fn new(
        source_name: &str,
        options: &PostgresOptions,
        observer: Option<Arc<dyn RemoteQueryObserver>>,
    ) -> Result<Self, ConnectorError> {
        let config = options.connection_config()?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_string(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let address = format!("{host}:{port}");
        Ok(PostgresExecutor {
            source_name: source_name.to_string(),
            context: SourceDialect::Postgres.compute_context(&format!(
                "postgres://{address}/{}",
                config.get_dbname().unwrap_or("")
            )),
            config,
            address,
            observer,
            split_keys: Arc::new(SplitKeys::new(options.partitions)),
        })
    }

    /// Records the keys discovery found for splitting scans.
    pub(crate) fn set_split_keys(&self, keys: HashMap<String, (String, f64)>) {
        self.split_keys.set(keys);
    }

    /// `(min, max)` of `key` in `scan`'s table; `None` when it is empty.
    async fn key_bounds(
        &self,
        scan: &SplittableScan,
        key: &str,
    ) -> Result<Option<(i64, i64)>, ConnectorError> {
        let client = self.connect().await?;
        let bounds = format!(
            "SELECT min({k})::int8, max({k})::int8 FROM {t}",
            k = scan.quoted(key),
            t = scan.table
        );
        let row = client
            .query_one(bounds.as_str(), &[])
            .await
            .map_err(|e| self.classify(e))?;
        Ok(
            match (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1)) {
                (Some(min), Some(max)) => Some((min, max)),
                _ => None,
            },
        )
    }

    /// Reads `scan` as `partitions` key ranges in parallel, each its own
    /// `COPY`, merged into one stream as batches arrive.
    async fn fetch_split(
        self: Arc<Self>,
        scan: SplittableScan,
        key: String,
        partitions: usize,
        schema: SchemaRef,
    ) -> Result<futures::stream::BoxStream<'static, DfResult<RecordBatch>>, ConnectorError> {
        let Some((min, max)) = self.key_bounds(&scan, &key).await? else {
            // An empty table: one plain scan answers it.
            let sql = scan.with_range(&key, i64::MIN, None);
            let report = QueryReport::new(self.observer.clone(), &self.source_name, &sql);
            return Ok(Box::pin(self.fetch(sql, schema, report).await?));
        };
        let (tx, rx) = futures::channel::mpsc::channel::<DfResult<RecordBatch>>(2);
        for (lo, hi) in split::ranges(min, max, partitions) {
            let sql = scan.with_range(&key, lo, hi);
            let executor = Arc::clone(&self);
            let schema = Arc::clone(&schema);
            let mut tx = tx.clone();
            tokio::spawn(async move {
                use futures::SinkExt;
                let report =
                    QueryReport::new(executor.observer.clone(), &executor.source_name, &sql);
                match executor.fetch(sql, schema, report).await {
                    Ok(stream) => {
                        futures::pin_mut!(stream);
                        while let Some(batch) = stream.next().await {
                            if tx.send(batch).await.is_err() {
                                return; // the consumer stopped reading
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(DataFusionError::External(Box::new(e)))).await;
                    }
                }
            });
        }
        Ok(Box::pin(rx))
    }

    /// Reads partition `task.partition` of `task.partitions` key ranges of
    /// `scan`; the key's bounds are read once for all partitions.
    async fn fetch_partition(
        self: Arc<Self>,
        scan: SplittableScan,
        key: String,
        task: PartitionTask,
        schema: SchemaRef,
    ) -> Result<futures::stream::BoxStream<'static, DfResult<RecordBatch>>, ConnectorError> {
        let bounds = task
            .shared
            .bounds
            .get_or_try_init(|| self.key_bounds(&scan, &key))
            .await?;
        let Some((lo, hi)) = task.key_range(*bounds) else {
            return Ok(Box::pin(futures::stream::empty()));
        };
        let sql = scan.with_range(&key, lo, hi);
        let report = QueryReport::new(self.observer.clone(), &self.source_name, &sql);
        Ok(Box::pin(self.fetch(sql, schema, report).await?))
    }

    /// Who is told about this source's queries.
    pub fn observer(&self) -> Option<Arc<dyn RemoteQueryObserver>> {
        self.observer.clone()
    }

    /// The source this executor serves.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// Opens a connection, driving it on the runtime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, ConnectorError> {
        let (client, connection) = self
            .config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| self.classify(e))?;
        let source = self.source_name.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(source = %source, error = %e, "postgres connection ended");
            }
        });
        Ok(client)
    }

    /// Maps a tokio-postgres error to what the client should see.
    pub fn classify(&self, e: tokio_postgres::Error) -> ConnectorError {
        let source_name = self.source_name.clone();
        if let Some(db) = e.as_db_error() {
            let sqlstate = db.code().code().to_string();
            // The server shutting the session down is the source going away.
            if matches!(sqlstate.as_str(), "57P01" | "57P02" | "57P03") {
                return ConnectorError::ConnectionLost {
                    source_name,
                    message: db.message().to_string(),
                };
            }
            if sqlstate == "28P01" || sqlstate == "28000" {
                return ConnectorError::AuthFailed {
                    source_name,
                    addr: self.address.clone(),
                    message: db.message().to_string(),
                };
            }
            return ConnectorError::Remote {
                source_name,
                sqlstate,
                message: db.message().to_string(),
            };
        }
        if e.is_closed() {
            return ConnectorError::ConnectionLost {
                source_name,
                message: e.to_string(),
            };
        }
        let message = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_else(|| e.to_string());
        ConnectorError::Unreachable {
            source_name,
            addr: self.address.clone(),
            message,
        }
    }

    /// Runs `query` and streams its rows, cast to `schema`.
    async fn fetch(
        self: Arc<Self>,
        query: String,
        schema: SchemaRef,
        mut report: QueryReport,
    ) -> Result<impl futures::Stream<Item = DfResult<RecordBatch>>, ConnectorError> {
        let client = match self.connect().await {
            Ok(c) => c,
            Err(e) => {
                report.error = Some((e.sqlstate().to_string(), e.to_string()));
                return Err(e);
            }
        };
        let statement = match client.prepare(&query).await {
            Ok(s) => s,
            Err(e) => {
                let e = self.classify(e);
                report.error = Some((e.sqlstate().to_string(), e.to_string()));
                return Err(e);
            }
        };
        let columns = statement.columns();
        if columns.len() != schema.fields().len() {
            return Err(ConnectorError::UnexpectedShape {
                source_name: self.source_name.clone(),
                message: format!(
                    "the remote query returns {} columns where {} were planned (this is a bug): {query}",
                    columns.len(),
                    schema.fields().len()
                ),
            });
        }
        // Values that have no exact binary decoder travel as text; the
        // positional alias list keeps duplicate output names apart.
        let mut select = Vec::with_capacity(columns.len());
        let mut wire_types = Vec::with_capacity(columns.len());
        for (i, column) in columns.iter().enumerate() {
            let base = base_type(column.type_());
            let Some((_, transport)) = arrow_type(&base, -1) else {
                let e = ConnectorError::UnsupportedType {
                    source_name: self.source_name.clone(),
                    column: column.name().to_string(),
                    type_name: column.type_().name().to_string(),
                };
                report.error = Some((e.sqlstate().to_string(), e.to_string()));
                return Err(e);
            };
            match transport {
                TextCast::Binary => {
                    select.push(format!("q.c{i}"));
                    wire_types.push(base);
                }
                TextCast::Text => {
                    select.push(format!("q.c{i}::text"));
                    wire_types.push(Type::TEXT);
                }
            }
        }
        let aliases: Vec<String> = (0..columns.len()).map(|i| format!("c{i}")).collect();
        let names: Vec<String> = columns.iter().map(|c| c.name().to_string()).collect();
        let copy = format!(
            "COPY (SELECT {} FROM ({query}) AS q({})) TO STDOUT (FORMAT binary)",
            select.join(", "),
            aliases.join(", ")
        );
        tracing::debug!(source = %self.source_name, sql = %query, "postgres query");
        // Some rejections (a function the login may not execute) come only
        // now, when the query runs.
        let stream = match client.copy_out(copy.as_str()).await {
            Ok(stream) => stream,
            Err(e) => {
                let e = self.classify(e);
                report.error = Some((e.sqlstate().to_string(), e.to_string()));
                return Err(e);
            }
        };
        let rows = BinaryCopyOutStream::new(stream, &wire_types);
        let builders: Vec<ColumnBuilder> = wire_types
            .iter()
            .map(|t| ColumnBuilder::for_wire_type(t, BATCH_ROWS))
            .collect();
        let state = BatchState {
            rows: Box::pin(rows),
            builders,
            wire_types,
            names,
            schema,
            executor: Arc::clone(&self),
            done: false,
            report,
            _client: client,
        };
        Ok(futures::stream::unfold(state, |mut state| async move {
            if state.done {
                return None;
            }
            let batch = state.next_batch().await;
            if batch.is_err() {
                state.done = true;
            }
            match batch {
                Ok(Some(batch)) => Some((Ok(batch), state)),
                Ok(None) => None,
                Err(e) => Some((Err(DataFusionError::External(Box::new(e))), state)),
            }
        }))
    }
}

/// The base type of domains, so `CREATE DOMAIN d AS int` reads as int.
fn base_type(ty: &Type) -> Type {
    match ty.kind() {
        Kind::Domain(inner) => base_type(inner),
        _ => ty.clone(),
    }
}

struct BatchState {
    rows: std::pin::Pin<Box<BinaryCopyOutStream>>,
    builders: Vec<ColumnBuilder>,
    wire_types: Vec<Type>,
    names: Vec<String>,
    schema: SchemaRef,
    executor: Arc<PostgresExecutor>,
    done: bool,
    /// Sent to the observer when the scan ends, however it ends.
    report: QueryReport,
    /// Keeps the connection open until the copy is drained.
    _client: tokio_postgres::Client,
}

impl BatchState {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>, ConnectorError> {
        while self.builders.first().map_or(0, ColumnBuilder::len) < BATCH_ROWS {
            match self.rows.next().await {
                Some(Ok(row)) => {
                    self.report.rows += 1;
                    for (i, builder) in self.builders.iter_mut().enumerate() {
                        let value: Option<RawValue<'_>> =
                            row.try_get(i).map_err(|e| self.executor.classify(e))?;
                        self.report.bytes += value.as_ref().map_or(0, |v| v.0.len() as u64);
                        builder
                            .append(value.map(|v| v.0), &self.names[i], &self.wire_types[i])
                            .map_err(|e| ConnectorError::Remote {
                                source_name: self.executor.source_name.clone(),
                                sqlstate: "XX000".into(),
                                message: e.to_string(),
                            })?;
                    }
                }
                Some(Err(e)) => {
                    let e = self.executor.classify(e);
                    self.report.error = Some((e.sqlstate().to_string(), e.to_string()));
                    return Err(e);
                }
                None => {
                    self.done = true;
                    break;
                }
            }
        }
        if self.builders.iter().all(ColumnBuilder::is_empty) {
            return Ok(None);
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.builders.len());
        for (builder, field) in self.builders.iter_mut().zip(self.schema.fields()) {
            let array = builder.finish();
            let array = if array.data_type() == field.data_type() {
                array
            } else if let (DataType::List(element), Some(texts)) = (
                field.data_type(),
                array.as_any().downcast_ref::<StringArray>(),
            ) {
                array_text_to_list(texts, element.data_type(), field.name()).map_err(|message| {
                    ConnectorError::Remote {
                        source_name: self.executor.source_name.clone(),
                        sqlstate: "22P02".into(),
                        message,
                    }
                })?
            } else {
                cast(&array, field.data_type()).map_err(|e| ConnectorError::Remote {
                    source_name: self.executor.source_name.clone(),
                    sqlstate: "22P02".into(),
                    message: format!("column {}: {e}", field.name()),
                })?
            };
            columns.push(array);
        }
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        Ok(Some(batch))
    }
}

impl ScanPartitioner for PostgresExecutor {
    fn partitions(&self, plan: &LogicalPlan) -> usize {
        self.split_keys.plan_partitions(plan)
    }
}

#[async_trait]
impl SQLExecutor for PostgresExecutor {
    fn name(&self) -> &str {
        &self.source_name
    }

    fn compute_context(&self) -> Option<String> {
        Some(self.context.clone())
    }

    fn dialect(&self) -> Arc<dyn Dialect> {
        Arc::new(PostgreSqlDialect {})
    }

    fn execute(
        &self,
        query: &str,
        schema: SchemaRef,
        filters: &[Arc<dyn PhysicalExpr>],
    ) -> DfResult<SendableRecordBatchStream> {
        let executor = Arc::new(self.clone());
        // Join filters are complete only when the stream is first polled:
        // each fetch below narrows its scan then (see `join_filter`).
        let join_filters = filters.to_vec();
        // One partition of a scan planned as several (see
        // `pushdown::partitioned`): this partition's key range only.
        if let Some(task) = partitioned::current_task() {
            let split = SplittableScan::parse(query, &PG_PARSER, "public")
                .and_then(|scan| self.split_keys.split_key(&scan).map(|(key, _)| (scan, key)));
            match split {
                Some((scan, key)) => {
                    let planned = Arc::clone(&schema);
                    let fetch = async move {
                        let scan = scan.narrowed_by(&join_filters, &planned).unwrap_or(scan);
                        executor.fetch_partition(scan, key, task, planned).await
                    };
                    return Ok(lazy_stream(schema, fetch));
                }
                // Planned as splittable but the SQL is not: the first
                // partition reads everything, the others nothing.
                None if task.partition > 0 => {
                    return Ok(Box::pin(RecordBatchStreamAdapter::new(
                        schema,
                        futures::stream::empty(),
                    )));
                }
                None => {}
            }
        }
        // Parsing the query is only worth it when some table can be split
        // or a join filter can narrow it.
        let scan = (self.split_keys.may_split() || !join_filters.is_empty())
            .then(|| SplittableScan::parse(query, &PG_PARSER, "public"))
            .flatten();
        let planned = Arc::clone(&schema);
        let query = query.to_string();
        let fetch = async move {
            let Some(scan) = scan else {
                let report =
                    QueryReport::new(executor.observer.clone(), &executor.source_name, &query);
                return executor
                    .fetch(query, planned, report)
                    .await
                    .map(futures::StreamExt::boxed);
            };
            let split = executor.split_keys.split_key(&scan);
            let narrowed = scan.narrowed_by(&join_filters, &planned);
            match split {
                Some((key, partitions)) => {
                    let scan = narrowed.unwrap_or(scan);
                    executor.fetch_split(scan, key, partitions, planned).await
                }
                None => {
                    // Unchanged SQL goes as the unparser wrote it.
                    let sql = narrowed.map_or(query, |n| n.sql());
                    let report =
                        QueryReport::new(executor.observer.clone(), &executor.source_name, &sql);
                    executor
                        .fetch(sql, planned, report)
                        .await
                        .map(futures::StreamExt::boxed)
                }
            }
        };
        Ok(lazy_stream(schema, fetch))
    }

    async fn table_names(&self) -> DfResult<Vec<String>> {
        let tables = super::catalog::discover_tables(self)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(crate::remote_catalog::qualified_names(tables))
    }

    async fn get_table_schema(&self, table_name: &str) -> DfResult<SchemaRef> {
        let tables = super::catalog::discover_tables(self)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        crate::remote_catalog::schema_of(tables, table_name)
    }
}
