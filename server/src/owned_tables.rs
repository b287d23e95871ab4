//! Tables fedsql itself holds (`CREATE TABLE [AS]`, `INSERT INTO`, `DROP
//! TABLE`, `ALTER TABLE … RENAME`), as opposed to a source's.
//!
//! They live in memory (DataFusion's `MemTable`, which plans and inserts as
//! designed) and every change is snapshotted whole as Parquet to
//! `<data dir>/tables/<hash of the name>.parquet`: written to a temporary
//! file, synced, then renamed over the old one, so a crash mid-write leaves
//! the previous contents and a restart loads the last committed ones. This
//! suits the tables dbt materializes and the seeds it loads; a table written
//! row by row at high rates is better kept in a source.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::catalog::{CatalogProviderList, MemTable};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::sql::sqlparser::ast::{ObjectType, Statement};

use crate::error::{Result, ServerError};

/// What a statement did to fedsql-owned tables (qualified names).
#[derive(Debug, PartialEq)]
pub enum TableChange {
    /// Created or written: snapshot these.
    Written(Vec<String>),
    /// Dropped: forget these.
    Dropped(Vec<String>),
}

/// The table change `statement` (run in `database`) makes, if any.
pub fn table_change(database: &str, statement: &Statement) -> Option<TableChange> {
    match statement {
        Statement::CreateTable(create) if !create.external => {
            Some(TableChange::Written(vec![crate::engine::qualify(
                database,
                &create.name,
            )?]))
        }
        Statement::Insert(insert) => match &insert.table {
            datafusion::sql::sqlparser::ast::TableObject::TableName(name) => Some(
                TableChange::Written(vec![crate::engine::qualify(database, name)?]),
            ),
            _ => None,
        },
        Statement::Drop {
            object_type: ObjectType::Table,
            names,
            ..
        } => Some(TableChange::Dropped(
            names
                .iter()
                .filter_map(|n| crate::engine::qualify(database, n))
                .collect(),
        )),
        _ => None,
    }
}

/// The snapshot file of table `qualified` under `data_dir`.
pub fn snapshot_path(data_dir: &Path, qualified: &str) -> PathBuf {
    let hash = blake3::hash(qualified.as_bytes()).to_hex();
    data_dir
        .join("tables")
        .join(format!("{}.parquet", &hash[..32]))
}

/// The in-memory table `qualified` (`catalog.schema.table`) if fedsql owns
/// it (it is a `MemTable`), with its rows.
pub async fn owned_rows(
    catalogs: &Arc<dyn CatalogProviderList>,
    qualified: &str,
) -> Option<(datafusion::arrow::datatypes::SchemaRef, Vec<RecordBatch>)> {
    let mut parts = qualified.splitn(3, '.');
    let (catalog, schema, table) = (parts.next()?, parts.next()?, parts.next()?);
    let provider = catalogs
        .catalog(catalog)?
        .schema(schema)?
        .table(table)
        .await
        .ok()??;
    let memory = provider.as_ref().downcast_ref::<MemTable>()?;
    let mut batches = Vec::new();
    for partition in &memory.batches {
        batches.extend(partition.read().await.iter().cloned());
    }
    Some((provider.schema(), batches))
}

/// Writes `batches` as the snapshot at `path`, atomically.
pub fn write_snapshot(
    path: &Path,
    schema: datafusion::arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| ServerError::io(dir, e))?;
    let temp = path.with_extension(format!("parquet.tmp.{}", std::process::id()));
    let io = |e: std::io::Error| ServerError::io(&temp, e);
    let parquet = |e: datafusion::parquet::errors::ParquetError| {
        ServerError::Internal(format!("writing {}: {e}", temp.display()))
    };
    let file = std::fs::File::create(&temp).map_err(io)?;
    let mut writer = ArrowWriter::try_new(file, schema, None).map_err(parquet)?;
    for batch in batches {
        writer.write(batch).map_err(parquet)?;
    }
    let file = writer.into_inner().map_err(parquet)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temp, path).map_err(|e| ServerError::io(path, e))?;
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Loads a snapshot as a `MemTable`.
pub fn load_snapshot(path: &Path) -> Result<MemTable> {
    let file = std::fs::File::open(path).map_err(|e| ServerError::io(path, e))?;
    let parquet = |e: datafusion::parquet::errors::ParquetError| {
        ServerError::Internal(format!("reading {}: {e}", path.display()))
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet)?;
    let schema = Arc::clone(builder.schema());
    let batches = builder
        .build()
        .map_err(parquet)?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ServerError::Internal(format!("reading {}: {e}", path.display())))?;
    MemTable::try_new(schema, vec![batches]).map_err(|e| ServerError::from_datafusion(&e, ""))
}
