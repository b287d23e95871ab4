//! Runs SQL that datafusion-federation unparsed on an ODBC source and
//! streams the rows back as Arrow through arrow-odbc's columnar bulk fetch.

use std::sync::{Arc, RwLock};

use arrow_odbc::OdbcReaderBuilder;
use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, TimestampMicrosecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{PhysicalExpr, SendableRecordBatchStream};
use datafusion::sql::sqlparser;
use datafusion::sql::sqlparser::dialect::Dialect as ParserDialect;
use datafusion::sql::unparser::dialect::{
    CharacterLengthStyle, CustomDialectBuilder, Dialect, DistinctFromStyle, MySqlDialect,
    PostgreSqlDialect,
};
use datafusion_federation::sql::SQLExecutor;
use odbc_api::handles::{AsStatementRef, Statement};
use tokio::sync::mpsc;

use super::cancel::StatementCanceller;
use super::pool::{ConnectionPool, PooledConnection};
use super::types::read_schema;
use super::OdbcOptions;
use crate::blocking::{blocking_stream, run_blocking, BatchSender};
use crate::error::ConnectorError;
use crate::pushdown::partitioned::{self, lazy_stream, PartitionTask, ScanPartitioner};
use crate::pushdown::split::{SplitKeys, SplittableScan};
use crate::pushdown::SourceDialect;
use crate::remote_catalog::RemoteTableInfo;
use crate::remote_log::{QueryReport, RemoteQueryObserver};

/// Executes federated SQL on one ODBC source.
#[derive(Debug, Clone)]
pub struct OdbcExecutor {
    source_name: String,
    options: Arc<OdbcOptions>,
    pool: Arc<ConnectionPool>,
    /// Distinguishes this source from every other in federation decisions.
    context: String,
    /// Told about every remote query (fedsql.system.queries).
    observer: Option<Arc<dyn RemoteQueryObserver>>,
    /// Which tables plain scans are split on, into parallel fetches.
    split_keys: Arc<SplitKeys>,
    /// The fedsql schema of tables the remote SQL names without one.
    bare_schema: Arc<RwLock<String>>,
}

impl OdbcExecutor {
    /// An executor for source `source_name`; connects lazily.
    pub fn new(
        source_name: &str,
        options: OdbcOptions,
        observer: Option<Arc<dyn RemoteQueryObserver>>,
    ) -> Self {
        let context = options
            .dialect
            .compute_context(&format!("odbc://{source_name}"));
        OdbcExecutor {
            source_name: source_name.to_string(),
            pool: Arc::new(ConnectionPool::new(source_name, options.clone())),
            split_keys: Arc::new(SplitKeys::new(options.partitions)),
            options: Arc::new(options),
            context,
            observer,
            bare_schema: Arc::default(),
        }
    }

    /// The source's tables and the schema it resolves bare names in.
    pub async fn discover(&self) -> Result<(Vec<RemoteTableInfo>, Option<String>), ConnectorError> {
        let connection = self.pool.checkout().await?;
        let dialect = self.options.dialect;
        let split_keys = Arc::clone(&self.split_keys);
        let (tables, bare) = run_blocking(&self.source_name, move || {
            super::catalog::discover(connection.connection(), dialect, &split_keys)
                .map_err(|e| connection.pool().classify(e, false))
        })
        .await?;
        if let Some(bare) = &bare {
            *self.bare_schema.write().unwrap_or_else(|p| p.into_inner()) = bare.clone();
        }
        Ok((tables, bare))
    }

    /// How SQL sent to the source is parsed back (to split scans).
    fn parser_dialect(&self) -> Box<dyn ParserDialect> {
        match self.options.dialect {
            SourceDialect::Postgres => Box::new(sqlparser::dialect::PostgreSqlDialect {}),
            SourceDialect::MySql => Box::new(sqlparser::dialect::MySqlDialect {}),
            SourceDialect::Sqlite => Box::new(sqlparser::dialect::SQLiteDialect {}),
            SourceDialect::Generic | SourceDialect::Fedsql => {
                Box::new(sqlparser::dialect::GenericDialect {})
            }
        }
    }

    /// `(min, max)` of `key` in `scan`'s table; `None` when it is empty.
    async fn key_bounds(
        &self,
        scan: &SplittableScan,
        key: &str,
    ) -> Result<Option<(i64, i64)>, ConnectorError> {
        let connection = self.pool.checkout().await?;
        let sql = format!(
            "SELECT min({k}), max({k}) FROM {t}",
            k = scan.quoted(key),
            t = scan.table
        );
        let rows = run_blocking(&self.source_name, move || {
            super::catalog::text_rows(connection.connection(), &sql)
                .map_err(|e| connection.pool().classify(e, false))
        })
        .await?;
        let bound =
            |i: usize| -> Option<i64> { rows.first()?.get(i)?.as_deref()?.trim().parse().ok() };
        Ok(bound(0).zip(bound(1)))
    }

    /// One partition of a scan planned as several: its key range, read
    /// once the shared bounds are known.
    fn stream_partition(
        &self,
        scan: SplittableScan,
        key: String,
        task: PartitionTask,
        schema: SchemaRef,
        join_filters: Vec<Arc<dyn PhysicalExpr>>,
    ) -> SendableRecordBatchStream {
        let executor = self.clone();
        let planned = Arc::clone(&schema);
        let fetch = async move {
            let scan = scan.narrowed_by(&join_filters, &planned).unwrap_or(scan);
            let bounds = task
                .shared
                .bounds
                .get_or_try_init(|| executor.key_bounds(&scan, &key))
                .await?;
            Ok::<_, ConnectorError>(match task.key_range(*bounds) {
                Some((lo, hi)) => executor.stream(&scan.with_range(&key, lo, hi), planned),
                None => empty_stream(planned),
            })
        };
        lazy_stream(schema, fetch)
    }

    /// Streams the rows of `query`, typed as `schema`.
    fn stream(&self, query: &str, schema: SchemaRef) -> SendableRecordBatchStream {
        let executor = self.clone();
        let query = query.to_string();
        let planned = Arc::clone(&schema);
        // The whole fetch, checkout included, blocks in the driver.
        blocking_stream(schema, move |tx| {
            let mut report =
                QueryReport::new(executor.observer.clone(), &executor.source_name, &query);
            tracing::debug!(source = %executor.source_name, sql = %query, "odbc query");
            let connection = match executor.pool.checkout_blocking() {
                Ok(c) => c,
                Err(e) => {
                    report.error = Some((e.sqlstate().to_string(), e.to_string()));
                    let _ = tx.blocking_send(Err(DataFusionError::External(Box::new(e))));
                    return;
                }
            };
            FetchJob {
                source_name: executor.source_name.clone(),
                options: Arc::clone(&executor.options),
                query,
                planned,
                report,
                tx,
            }
            .run(connection)
        })
    }
}

/// One remote query's fetch loop, run on a blocking thread.
struct FetchJob {
    source_name: String,
    options: Arc<OdbcOptions>,
    query: String,
    planned: SchemaRef,
    report: QueryReport,
    tx: BatchSender,
}

impl FetchJob {
    fn run(mut self, connection: PooledConnection) {
        if let Err(e) = self.fetch(&connection) {
            self.report.error = Some((e.sqlstate().to_string(), e.to_string()));
            let _ = self
                .tx
                .blocking_send(Err(DataFusionError::External(Box::new(e))));
        }
    }

    fn fetch(&mut self, connection: &PooledConnection) -> Result<(), ConnectorError> {
        let classify = |e: odbc_api::Error| connection.pool().classify(e, false);
        let mut statement = connection.connection().preallocate().map_err(classify)?;
        // Declared after `statement`, so dropped before it is freed.
        let canceller = StatementCanceller::watch(
            statement.as_stmt_ref().as_sys(),
            &self.tx,
            &self.source_name,
        );
        let executed = statement.execute(&self.query, ());
        if canceller.disarm() {
            // Nobody reads the rows. A cancelled cursor must not be closed
            // again (odbc-api's drop would panic): it is let go without
            // its drop (it owns no memory), and freeing the statement
            // cleans up at the driver.
            if let Ok(Some(cursor)) = executed {
                std::mem::forget(cursor);
            }
            return Ok(());
        }
        let cursor = executed
            .map_err(classify)?
            .ok_or_else(|| ConnectorError::Remote {
                source_name: self.source_name.clone(),
                sqlstate: "XX000".into(),
                message: format!("the remote query returned no result set: {}", self.query),
            })?;
        let read = read_schema(&self.planned);
        let reader = OdbcReaderBuilder::new()
            .with_schema(Arc::clone(&read))
            .with_max_num_rows_per_batch(self.options.batch_size)
            .with_max_text_size(self.options.max_text_bytes)
            .with_max_binary_size(self.options.max_text_bytes)
            .with_fallibale_allocations(true)
            .build(cursor)
            .map_err(|e| self.reader_error(e))?;
        for batch in reader {
            let batch = batch.map_err(|e| self.fetch_error(e, &read, connection))?;
            self.report.rows += batch.num_rows() as u64;
            self.report.bytes += batch.get_array_memory_size() as u64;
            let batch = self.to_planned(batch)?;
            let sent = match self.tx.try_send(Ok(batch)) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(batch)) => {
                    connection.stalled(|| self.tx.blocking_send(batch).map_err(|_| ()))
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
            };
            if sent.is_err() {
                // The consumer stopped reading (a LIMIT reached in fedsql);
                // dropping the cursor closes it at the source.
                break;
            }
        }
        Ok(())
    }

    /// Casts what arrow-odbc read to the planned types (zones put back,
    /// text parsed into the types it stands for).
    fn to_planned(&self, batch: RecordBatch) -> Result<RecordBatch, ConnectorError> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
        for (array, field) in batch.columns().iter().zip(self.planned.fields()) {
            let array = match (array.data_type(), field.data_type()) {
                (a, b) if a == b => Arc::clone(array),
                (
                    DataType::Timestamp(TimeUnit::Microsecond, None),
                    DataType::Timestamp(TimeUnit::Microsecond, Some(tz)),
                ) => {
                    // Sessions run in UTC, so these wall-clock values are UTC.
                    let values = array
                        .as_any()
                        .downcast_ref::<TimestampMicrosecondArray>()
                        .map(|a| a.clone().with_timezone(Arc::clone(tz)));
                    match values {
                        Some(v) => Arc::new(v) as ArrayRef,
                        None => cast(array, field.data_type())?,
                    }
                }
                _ => cast(array, field.data_type()).map_err(|e| ConnectorError::Remote {
                    source_name: self.source_name.clone(),
                    sqlstate: "22P02".into(),
                    message: format!("column {}: {e}", field.name()),
                })?,
            };
            columns.push(array);
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.planned), columns)?)
    }

    fn reader_error(&self, e: arrow_odbc::Error) -> ConnectorError {
        ConnectorError::Remote {
            source_name: self.source_name.clone(),
            sqlstate: "XX000".into(),
            message: e.to_string(),
        }
    }

    fn fetch_error(
        &self,
        e: ArrowError,
        read: &SchemaRef,
        connection: &PooledConnection,
    ) -> ConnectorError {
        if let ArrowError::ExternalError(inner) = e {
            match inner.downcast::<odbc_api::Error>() {
                Ok(odbc) => {
                    if let odbc_api::Error::TooLargeValueForBuffer {
                        indicator,
                        buffer_index,
                    } = *odbc
                    {
                        return ConnectorError::ValueTooLong {
                            source_name: self.source_name.clone(),
                            column: read
                                .fields()
                                .get(buffer_index)
                                .map_or_else(|| format!("#{buffer_index}"), |f| f.name().clone()),
                            limit: self.options.max_text_bytes,
                            actual: indicator.map_or_else(String::new, |n| format!(", it has {n}")),
                        };
                    }
                    return connection.pool().classify(*odbc, false);
                }
                Err(other) => {
                    return ConnectorError::Remote {
                        source_name: self.source_name.clone(),
                        sqlstate: "22000".into(),
                        message: other.to_string(),
                    }
                }
            }
        }
        ConnectorError::Arrow(e)
    }
}

/// DataFusion's SQLite dialect quotes identifiers with backticks, inside
/// which the SQLite ODBC driver still splits statements at `;`. SQLite takes
/// ANSI double quotes too, and the driver honours those.
struct SqliteOdbcDialect;

impl Dialect for SqliteOdbcDialect {
    fn identifier_quote_style(&self, _: &str) -> Option<char> {
        Some('"')
    }

    fn supports_qualify(&self) -> bool {
        false
    }

    fn character_length_style(&self) -> CharacterLengthStyle {
        CharacterLengthStyle::Length
    }

    fn distinct_from_style(&self) -> DistinctFromStyle {
        DistinctFromStyle::FullText
    }

    fn supports_column_alias_in_table_alias(&self) -> bool {
        false
    }
}

impl ScanPartitioner for OdbcExecutor {
    fn partitions(&self, plan: &LogicalPlan) -> usize {
        self.split_keys.plan_partitions(plan)
    }
}

/// A stream of no batches.
fn empty_stream(schema: SchemaRef) -> SendableRecordBatchStream {
    Box::pin(RecordBatchStreamAdapter::new(
        schema,
        futures::stream::empty(),
    ))
}

#[async_trait]
impl SQLExecutor for OdbcExecutor {
    fn name(&self) -> &str {
        &self.source_name
    }

    fn compute_context(&self) -> Option<String> {
        Some(self.context.clone())
    }

    fn dialect(&self) -> Arc<dyn Dialect> {
        match self.options.dialect {
            SourceDialect::Postgres => Arc::new(PostgreSqlDialect {}),
            SourceDialect::MySql => Arc::new(MySqlDialect {}),
            SourceDialect::Sqlite => Arc::new(SqliteOdbcDialect),
            // ANSI double-quoted identifiers, always quoted.
            SourceDialect::Generic | SourceDialect::Fedsql => Arc::new(
                CustomDialectBuilder::new()
                    .with_identifier_quote_style('"')
                    .build(),
            ),
        }
    }

    fn execute(
        &self,
        query: &str,
        schema: SchemaRef,
        filters: &[Arc<dyn PhysicalExpr>],
    ) -> DfResult<SendableRecordBatchStream> {
        let bare = self
            .bare_schema
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let join_filters = filters.to_vec();
        // One partition of a scan planned as several (see
        // `pushdown::partitioned`): this partition's key range only.
        if let Some(task) = partitioned::current_task() {
            let split = SplittableScan::parse(query, self.parser_dialect().as_ref(), &bare)
                .and_then(|scan| self.split_keys.split_key(&scan).map(|(key, _)| (scan, key)));
            match split {
                Some((scan, key)) => {
                    return Ok(self.stream_partition(scan, key, task, schema, join_filters))
                }
                // Planned as splittable but the SQL is not: the first
                // partition reads everything, the others nothing.
                None if task.partition > 0 => return Ok(empty_stream(schema)),
                None => {}
            }
        }
        // Join filters are complete only when the stream is first polled
        // (see `join_filter`): the query is chosen then.
        let scan = (!join_filters.is_empty())
            .then(|| SplittableScan::parse(query, self.parser_dialect().as_ref(), &bare))
            .flatten();
        let Some(scan) = scan else {
            return Ok(self.stream(query, schema));
        };
        let executor = self.clone();
        let (planned, query) = (Arc::clone(&schema), query.to_string());
        let fetch = async move {
            let sql = scan
                .narrowed_by(&join_filters, &planned)
                .map_or(query, |n| n.sql());
            Ok::<_, ConnectorError>(executor.stream(&sql, planned))
        };
        Ok(lazy_stream(schema, fetch))
    }

    async fn table_names(&self) -> DfResult<Vec<String>> {
        let (tables, _) = self
            .discover()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(crate::remote_catalog::qualified_names(tables))
    }

    async fn get_table_schema(&self, table_name: &str) -> DfResult<SchemaRef> {
        let (tables, _) = self
            .discover()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        crate::remote_catalog::schema_of(tables, table_name)
    }
}
