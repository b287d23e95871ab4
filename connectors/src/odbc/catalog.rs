//! Table discovery through the ODBC catalog functions.

use odbc_api::buffers::TextRowSet;
use odbc_api::{Connection, Cursor};

use super::types::{arrow_type, OdbcColumnType};
use datafusion::arrow::datatypes::DataType;

use crate::pushdown::split::SplitKeys;
use crate::pushdown::SourceDialect;
use crate::remote_catalog::{RemoteColumn, RemoteTableInfo};
use crate::statistics::{self, StatisticsRow};

/// Schemas that hold the source's own catalog, never user tables.
const SYSTEM_SCHEMAS: &[&str] = &[
    "pg_catalog",
    "information_schema",
    "mysql",
    "performance_schema",
    "sys",
];

/// The tables of the connection's current database, and the fedsql schema
/// whose tables the source resolves without a qualifier; `split_keys` gets
/// the integer primary keys of the tables worth splitting.
///
/// Sources without schemas (MariaDB, SQLite) put their tables under the
/// database name, or `main` when there is none.
pub(crate) fn discover(
    connection: &Connection<'_>,
    dialect: SourceDialect,
    split_keys: &SplitKeys,
) -> Result<(Vec<RemoteTableInfo>, Option<String>), odbc_api::Error> {
    let current = connection.current_catalog().unwrap_or_default();
    let mut tables: Vec<RemoteTableInfo> = Vec::new();
    let mut wanted = std::collections::HashSet::new();
    // fedsql schema → the source's own schema name, for SQLPrimaryKeys.
    let mut remote_schemas = std::collections::HashMap::new();
    for row in connection.tables(&current, "%", "%", "TABLE,VIEW")? {
        let row = row?;
        let schema = text(&row.schema);
        let table = text(&row.table);
        if SYSTEM_SCHEMAS.contains(&schema.as_str()) || table.is_empty() {
            continue;
        }
        wanted.insert((schema, table));
    }
    for row in connection.columns(&current, "%", "%", "%")? {
        let row = row?;
        let schema = text(&row.schema);
        let table = text(&row.table);
        if !wanted.contains(&(schema.clone(), table.clone())) {
            continue;
        }
        let column_type = OdbcColumnType {
            data_type: row.data_type,
            type_name: text(&row.type_name),
            column_size: row.column_size.into_opt(),
            decimal_digits: row.decimal_digits.into_opt(),
        };
        tracing::debug!(table = %table, column = %text(&row.column_name), ?column_type, "odbc column");
        let column = RemoteColumn {
            name: text(&row.column_name),
            data_type: arrow_type(dialect, &column_type),
            type_name: column_type.type_name.clone(),
            // SQL_NO_NULLS is 0; unknown (2) counts as nullable.
            nullable: row.nullable != 0,
        };
        let fedsql_schema = schema_name(&schema, &current);
        remote_schemas.insert(fedsql_schema.clone(), schema.clone());
        match tables.last_mut() {
            Some(t) if t.schema == fedsql_schema && t.name == table => t.columns.push(column),
            _ => tables.push(RemoteTableInfo {
                schema: fedsql_schema,
                name: table,
                columns: vec![column],
                statistics: Default::default(),
            }),
        }
    }
    statistics::apply(&mut tables, read_statistics(connection, dialect));
    let mut keys = std::collections::HashMap::new();
    for table in tables
        .iter()
        .filter(|t| split_keys.wanted(t.statistics.rows))
    {
        let remote_schema = remote_schemas.get(&table.schema).map(String::as_str);
        match integer_primary_key(connection, &current, remote_schema, table) {
            Ok(Some(key)) => {
                let rows = table.statistics.rows.unwrap_or(0.0);
                keys.insert(format!("{}.{}", table.schema, table.name), (key, rows));
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(table = %table.name, error = %e, "no primary key read"),
        }
    }
    split_keys.set(keys);
    let bare = match dialect {
        SourceDialect::Postgres => "public".to_string(),
        _ => schema_name("", &current),
    };
    Ok((tables, Some(bare)))
}

/// The first column of `table`'s primary key, when it is an integer
/// (scans split into ranges of it, which the key's index serves).
fn integer_primary_key(
    connection: &Connection<'_>,
    catalog: &str,
    schema: Option<&str>,
    table: &RemoteTableInfo,
) -> Result<Option<String>, odbc_api::Error> {
    let catalog = (!catalog.is_empty()).then_some(catalog);
    let schema = schema.filter(|s| !s.is_empty());
    let mut first = None;
    for row in connection.primary_keys(catalog, schema, &table.name)? {
        let row = row?;
        if row.key_seq == 1 {
            first = Some(text(&row.column));
        }
    }
    Ok(first.filter(|key| {
        table.columns.iter().any(|c| {
            c.name == *key
                && matches!(
                    c.data_type,
                    Some(DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64)
                )
        })
    }))
}

/// The source's row and distinct-value estimates, where its dialect has a
/// catalog fedsql knows how to read (see `statistics`). Statistics only
/// guide plans, so a query the user may not run leaves them unknown.
fn read_statistics(connection: &Connection<'_>, dialect: SourceDialect) -> Vec<StatisticsRow> {
    let queries: &[(&str, bool)] = match dialect {
        SourceDialect::Postgres => &[(statistics::POSTGRES_STATISTICS_SQL, true)],
        SourceDialect::MySql => &[
            (statistics::MYSQL_STATISTICS_SQL, false),
            (statistics::MARIADB_COLUMN_STATISTICS_SQL, false),
        ],
        SourceDialect::Sqlite | SourceDialect::Generic | SourceDialect::Fedsql => &[],
    };
    let mut rows = Vec::new();
    for (sql, with_schema) in queries {
        match text_rows(connection, sql) {
            Ok(found) => rows.extend(found.into_iter().map(|r| {
                let number = |i: usize| r.get(i).cloned().flatten().and_then(|v| v.parse().ok());
                let (schema, rest) = if *with_schema {
                    (r.first().cloned().flatten(), 1)
                } else {
                    (None, 0)
                };
                StatisticsRow {
                    schema,
                    table: r.get(rest).cloned().flatten().unwrap_or_default(),
                    rows: number(rest + 1),
                    column: r.get(rest + 2).cloned().flatten(),
                    n_distinct: number(rest + 3),
                }
            })),
            Err(e) => tracing::debug!(error = %e, "source statistics not readable"),
        }
    }
    rows
}

/// Every row of `sql` as text.
pub(crate) fn text_rows(
    connection: &Connection<'_>,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, odbc_api::Error> {
    let Some(mut cursor) = connection.execute(sql, (), None)? else {
        return Ok(Vec::new());
    };
    let mut buffer = TextRowSet::for_cursor(1024, &mut cursor, Some(256))?;
    let mut block = cursor.bind_buffer(&mut buffer)?;
    let mut rows = Vec::new();
    while let Some(batch) = block.fetch()? {
        for row in 0..batch.num_rows() {
            rows.push(
                (0..batch.num_cols())
                    .map(|col| batch.at_as_str(col, row).ok().flatten().map(str::to_string))
                    .collect(),
            );
        }
    }
    Ok(rows)
}

/// fedsql's schema name for a remote (schema, catalog).
fn schema_name(schema: &str, catalog: &str) -> String {
    if !schema.is_empty() {
        schema.to_string()
    } else if !catalog.is_empty() {
        catalog.to_string()
    } else {
        "main".to_string()
    }
}

fn text<const N: usize>(value: &odbc_api::parameter::VarCharArray<N>) -> String {
    value
        .as_bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}
