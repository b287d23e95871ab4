//! The `fedsql.system.*` tables: live views of the server's own state.
//!
//! Each table takes a snapshot when it is scanned, so a query sees one
//! consistent state however long it runs.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::memory::MemorySourceConfig;
use datafusion::catalog::{Session, TableProvider};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;

use crate::catalog_store::SourceEntry;
use crate::query_log::QueryRecord;
use crate::sites::registry::SiteRow;

/// Produces the current rows of a system table.
pub type Snapshot = Arc<dyn Fn() -> DfResult<RecordBatch> + Send + Sync>;

/// A read-only table whose rows come from a [`Snapshot`] at scan time.
pub struct SystemTable {
    schema: SchemaRef,
    snapshot: Snapshot,
}

impl fmt::Debug for SystemTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SystemTable")
            .field("schema", &self.schema)
            .finish()
    }
}

impl SystemTable {
    /// A table with `schema` whose rows `snapshot` produces.
    pub fn new(schema: SchemaRef, snapshot: Snapshot) -> Self {
        SystemTable { schema, snapshot }
    }
}

#[async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let batch = (self.snapshot)()?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            Arc::clone(&self.schema),
            projection.cloned(),
        )?)
    }
}

/// The type of every timestamp column of the system tables.
pub(crate) fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

/// Schema of `fedsql.system.sources`.
pub fn sources_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("options", DataType::Utf8, false),
        Field::new("created_at", timestamp(), false),
    ]))
}

/// Rows of `fedsql.system.sources`; options are shown as `key=value` pairs
/// (secrets are only ever referenced by variable name, so none can leak).
pub fn sources_batch(sources: &[SourceEntry]) -> DfResult<RecordBatch> {
    let mut name = StringBuilder::new();
    let mut kind = StringBuilder::new();
    let mut options = StringBuilder::new();
    let mut created = TimestampMicrosecondBuilder::new();
    for s in sources {
        name.append_value(&s.name);
        kind.append_value(&s.kind);
        let shown: Vec<String> = s.options.iter().map(|(k, v)| format!("{k}={v}")).collect();
        options.append_value(shown.join(", "));
        created.append_value(s.created_at_us);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(name.finish()),
        Arc::new(kind.finish()),
        Arc::new(options.finish()),
        Arc::new(created.finish()),
    ];
    Ok(RecordBatch::try_new(sources_schema(), columns)?)
}

/// Schema of `fedsql.system.sites`.
pub fn sites_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("address", DataType::Utf8, true),
        Field::new("last_seen", timestamp(), true),
        Field::new("version", DataType::Utf8, true),
        Field::new("tables", DataType::Utf8, false),
    ]))
}

/// Rows of `fedsql.system.sites`: `tables` lists what each site offers, as
/// `name(column type, …) analytics <policy>`, separated by `; ` (names,
/// types and policies only: the coordinator never sees a site's rows).
pub fn sites_batch(sites: &[SiteRow]) -> DfResult<RecordBatch> {
    let mut name = StringBuilder::new();
    let mut status = StringBuilder::new();
    let mut address = StringBuilder::new();
    let mut last_seen = TimestampMicrosecondBuilder::new();
    let mut version = StringBuilder::new();
    let mut tables = StringBuilder::new();
    for s in sites {
        name.append_value(&s.name);
        status.append_value(if s.online { "online" } else { "offline" });
        address.append_option(s.address.as_deref());
        last_seen.append_option(s.last_seen.and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .ok()
                .and_then(|d| i64::try_from(d.as_micros()).ok())
        }));
        version.append_option(s.version.as_deref());
        let offered: Vec<String> = s
            .tables
            .iter()
            .map(|t| {
                let columns: Vec<String> = t
                    .columns
                    .iter()
                    .map(|(c, ty)| format!("{c} {ty}"))
                    .collect();
                format!(
                    "{}({}) analytics {}",
                    t.name,
                    columns.join(", "),
                    t.analytics
                )
            })
            .collect();
        tables.append_value(offered.join("; "));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(name.finish()),
        Arc::new(status.finish()),
        Arc::new(address.finish()),
        Arc::new(last_seen.finish()),
        Arc::new(version.finish()),
        Arc::new(tables.finish()),
    ];
    Ok(RecordBatch::try_new(sites_schema(), columns)?)
}

/// Schema of `fedsql.system.queries`.
pub fn queries_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("query_id", DataType::Int64, false),
        Field::new("started_at", timestamp(), false),
        Field::new("database", DataType::Utf8, false),
        Field::new("user_name", DataType::Utf8, false),
        Field::new("protocol", DataType::Utf8, false),
        Field::new("query", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("sqlstate", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
        Field::new("duration_ms", DataType::Float64, false),
        Field::new("rows", DataType::Int64, true),
        Field::new("bytes", DataType::Int64, true),
    ]))
}

/// Rows of `fedsql.system.queries`.
pub fn queries_batch(records: &[QueryRecord]) -> DfResult<RecordBatch> {
    let mut id = Int64Builder::new();
    let mut started = TimestampMicrosecondBuilder::new();
    let mut database = StringBuilder::new();
    let mut user = StringBuilder::new();
    let mut protocol = StringBuilder::new();
    let mut query = StringBuilder::new();
    let mut status = StringBuilder::new();
    let mut sqlstate = StringBuilder::new();
    let mut error = StringBuilder::new();
    let mut duration = Float64Builder::new();
    let mut rows = Int64Builder::new();
    let mut bytes = Int64Builder::new();
    for r in records {
        id.append_value(r.query_id);
        started.append_value(r.started_at_us);
        database.append_value(&r.database);
        user.append_value(&r.user);
        protocol.append_value(r.protocol);
        query.append_value(&r.query);
        status.append_value(r.status);
        sqlstate.append_option(r.sqlstate.as_deref());
        error.append_option(r.error.as_deref());
        duration.append_value(r.duration_ms);
        rows.append_option(r.rows.map(|n| n as i64));
        bytes.append_option(r.bytes.map(|n| n as i64));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(started.finish()),
        Arc::new(database.finish()),
        Arc::new(user.finish()),
        Arc::new(protocol.finish()),
        Arc::new(query.finish()),
        Arc::new(status.finish()),
        Arc::new(sqlstate.finish()),
        Arc::new(error.finish()),
        Arc::new(duration.finish()),
        Arc::new(rows.finish()),
        Arc::new(bytes.finish()),
    ];
    Ok(RecordBatch::try_new(queries_schema(), columns)?)
}

/// Schema of `fedsql.system.encoders`.
pub fn encoders_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("dims", DataType::Int64, false),
        Field::new("max_tokens", DataType::Int64, false),
        Field::new("pooling", DataType::Utf8, false),
    ]))
}

/// Rows of `fedsql.system.encoders`: every loaded sentence encoder of this
/// process.
pub fn encoders_batch() -> DfResult<RecordBatch> {
    let mut name = StringBuilder::new();
    let mut path = StringBuilder::new();
    let mut dims = Int64Builder::new();
    let mut max_tokens = Int64Builder::new();
    let mut pooling = StringBuilder::new();
    for (n, e) in fedsql_udfs::encoder::encoders().list() {
        name.append_value(n);
        path.append_value(e.dir().display().to_string());
        dims.append_value(e.dims() as i64);
        max_tokens.append_value(e.max_tokens() as i64);
        let (mode, normalize) = e.pooling();
        pooling.append_value(format!(
            "{}{}",
            format!("{mode:?}").to_lowercase(),
            if normalize { ", normalized" } else { "" }
        ));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(name.finish()),
        Arc::new(path.finish()),
        Arc::new(dims.finish()),
        Arc::new(max_tokens.finish()),
        Arc::new(pooling.finish()),
    ];
    Ok(RecordBatch::try_new(encoders_schema(), columns)?)
}
