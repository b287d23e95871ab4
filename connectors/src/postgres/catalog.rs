//! A Postgres database's schemas and tables as a DataFusion catalog.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use tokio_postgres::types::Type;

use super::executor::PostgresExecutor;
use super::types::arrow_type;
use crate::error::ConnectorError;
use crate::remote_catalog::{RemoteCatalog, RemoteColumn, RemoteTableInfo};
use crate::statistics::{self, StatisticsRow};

/// Reads every user table's columns in one catalog query.
pub(crate) async fn discover_tables(
    executor: &PostgresExecutor,
) -> Result<Vec<RemoteTableInfo>, ConnectorError> {
    tables_of(executor, &executor.connect().await?).await
}

async fn tables_of(
    executor: &PostgresExecutor,
    client: &tokio_postgres::Client,
) -> Result<Vec<RemoteTableInfo>, ConnectorError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, a.attname::text, a.atttypid, a.atttypmod, \
                    a.attnotnull, t.typtype::text, t.typbasetype, format_type(a.atttypid, a.atttypmod) \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f') AND a.attnum > 0 AND NOT a.attisdropped \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
               AND has_schema_privilege(n.oid, 'USAGE') \
             ORDER BY 1, 2, a.attnum",
            &[],
        )
        .await
        .map_err(|e| executor.classify(e))?;
    let mut tables: Vec<RemoteTableInfo> = Vec::new();
    for row in rows {
        let schema: String = row.get(0);
        let table: String = row.get(1);
        let typmod: i32 = row.get(4);
        let typtype: String = row.get(6);
        let base: u32 = row.get(7);
        let oid: u32 = row.get(3);
        let data_type = match typtype.as_str() {
            "e" => Some(DataType::Utf8),
            "d" => Type::from_oid(base)
                .and_then(|t| arrow_type(&t, typmod))
                .map(|t| t.0),
            _ => Type::from_oid(oid)
                .and_then(|t| arrow_type(&t, typmod))
                .map(|t| t.0),
        };
        let column = RemoteColumn {
            name: row.get(2),
            data_type,
            type_name: row.get(8),
            nullable: !row.get::<_, bool>(5),
        };
        match tables.last_mut() {
            Some(t) if t.schema == schema && t.name == table => t.columns.push(column),
            _ => tables.push(RemoteTableInfo {
                schema,
                name: table,
                columns: vec![column],
                statistics: Default::default(),
            }),
        }
    }
    Ok(tables)
}

/// For each table with an integer primary key, its first key column (scans
/// split on it into ranges the index serves) and the source's row estimate.
async fn discover_split_keys(
    executor: &PostgresExecutor,
    client: &tokio_postgres::Client,
) -> Result<std::collections::HashMap<String, (String, f64)>, ConnectorError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, a.attname::text, c.reltuples::float8 \
             FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_class c ON c.oid = i.indrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0] \
             WHERE i.indisprimary AND a.atttypid IN (20, 21, 23)",
            &[],
        )
        .await
        .map_err(|e| executor.classify(e))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                format!("{}.{}", r.get::<_, String>(0), r.get::<_, String>(1)),
                (r.get::<_, String>(2), r.get::<_, f64>(3)),
            )
        })
        .collect())
}

/// Row and distinct-value estimates of every table (see `statistics`).
async fn discover_statistics(
    executor: &PostgresExecutor,
    client: &tokio_postgres::Client,
) -> Result<Vec<StatisticsRow>, ConnectorError> {
    let rows = client
        .query(statistics::POSTGRES_STATISTICS_SQL, &[])
        .await
        .map_err(|e| executor.classify(e))?;
    Ok(rows
        .iter()
        .map(|r| StatisticsRow {
            schema: Some(r.get(0)),
            table: r.get(1),
            rows: r.get(2),
            column: r.get(3),
            n_distinct: r.get(4),
        })
        .collect())
}

/// Discovers a Postgres database's tables now; queries then plan without a
/// round trip.
pub async fn discover_catalog(
    executor: Arc<PostgresExecutor>,
) -> Result<RemoteCatalog, ConnectorError> {
    // One connection for the three catalog queries.
    let client = executor.connect().await?;
    let mut tables = tables_of(&executor, &client).await?;
    statistics::apply(&mut tables, discover_statistics(&executor, &client).await?);
    executor.set_split_keys(discover_split_keys(&executor, &client).await?);
    drop(client);
    let observer = executor.observer();
    let provider = Arc::new(crate::pushdown::partitioned::federation_provider(
        Arc::clone(&executor) as _,
        Some(executor as _),
        observer,
    ));
    Ok(RemoteCatalog::new(
        "Postgres",
        tables,
        provider,
        Some("public"),
    ))
}
