//! Table discovery through the ODBC catalog functions.

use odbc_api::Connection;

use super::types::{arrow_type, OdbcColumnType};
use crate::pushdown::SourceDialect;
use crate::remote_catalog::{RemoteColumn, RemoteTableInfo};

/// Schemas that hold the source's own catalog, never user tables.
const SYSTEM_SCHEMAS: &[&str] = &[
    "pg_catalog",
    "information_schema",
    "mysql",
    "performance_schema",
    "sys",
];

/// The tables of the connection's current database, and the fedsql schema
/// whose tables the source resolves without a qualifier.
///
/// Sources without schemas (MariaDB, SQLite) put their tables under the
/// database name, or `main` when there is none.
pub(crate) fn discover(
    connection: &Connection<'_>,
    dialect: SourceDialect,
) -> Result<(Vec<RemoteTableInfo>, Option<String>), odbc_api::Error> {
    let current = connection.current_catalog().unwrap_or_default();
    let mut tables: Vec<RemoteTableInfo> = Vec::new();
    let mut wanted = std::collections::HashSet::new();
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
        match tables.last_mut() {
            Some(t) if t.schema == fedsql_schema && t.name == table => t.columns.push(column),
            _ => tables.push(RemoteTableInfo {
                schema: fedsql_schema,
                name: table,
                columns: vec![column],
            }),
        }
    }
    let bare = match dialect {
        SourceDialect::Postgres => "public".to_string(),
        _ => schema_name("", &current),
    };
    Ok((tables, Some(bare)))
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
