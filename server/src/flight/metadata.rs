//! Flight SQL's catalog calls, answered from the session's catalogs: the
//! same databases, schemas and tables the Postgres wire's `pg_catalog`
//! shows, plus the server's capabilities (`GetSqlInfo`) and types
//! (`GetXdbcTypeInfo`).

use std::sync::{Arc, OnceLock};

use arrow_flight::sql::metadata::{
    GetDbSchemasBuilder, GetTablesBuilder, SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo,
    XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    Nullable, Searchable, SqlInfo, SqlNullOrdering, SqlSupportedTransaction, XdbcDataType,
    XdbcDatetimeSubcode,
};
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::TableType;
use datafusion::prelude::SessionContext;

use super::results::wire_schema;

/// The table types fedsql has, in `GetTableTypes` order.
pub const TABLE_TYPES: [&str; 3] = ["TABLE", "VIEW", "LOCAL TEMPORARY"];

fn table_type_name(t: TableType) -> &'static str {
    match t {
        TableType::Base => TABLE_TYPES[0],
        TableType::View => TABLE_TYPES[1],
        TableType::Temporary => TABLE_TYPES[2],
    }
}

/// Every catalog the session can see, sorted.
pub fn catalogs(ctx: &SessionContext) -> Vec<String> {
    let mut names = ctx.catalog_names();
    names.sort();
    names
}

/// Appends every (catalog, schema) pair; the builder applies the filters.
pub fn db_schemas(ctx: &SessionContext, builder: &mut GetDbSchemasBuilder) {
    for catalog in catalogs(ctx) {
        let Some(provider) = ctx.catalog(&catalog) else {
            continue;
        };
        let mut schemas = provider.schema_names();
        schemas.sort();
        for schema in schemas {
            builder.append(&catalog, schema);
        }
    }
}

/// Appends every table (with its Arrow schema when asked); the builder
/// applies the filters. `catalog` narrows the walk when the client gave one.
pub async fn tables(
    ctx: &SessionContext,
    catalog: Option<&str>,
    builder: &mut GetTablesBuilder,
) -> Result<(), String> {
    for catalog_name in catalogs(ctx) {
        if catalog.is_some_and(|c| c != catalog_name) {
            continue;
        }
        let Some(catalog_provider) = ctx.catalog(&catalog_name) else {
            continue;
        };
        let mut schemas = catalog_provider.schema_names();
        schemas.sort();
        for schema_name in schemas {
            let Some(schema) = catalog_provider.schema(&schema_name) else {
                continue;
            };
            let mut names = schema.table_names();
            names.sort();
            for table_name in names {
                let table = schema
                    .table(&table_name)
                    .await
                    .map_err(|e| format!("{catalog_name}.{schema_name}.{table_name}: {e}"))?;
                let Some(table) = table else {
                    continue;
                };
                builder
                    .append(
                        &catalog_name,
                        &schema_name,
                        &table_name,
                        table_type_name(table.table_type()),
                        &wire_schema(&table.schema()),
                    )
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

/// `GetPrimaryKeys`: fedsql knows no keys it could promise, so the answer
/// is the documented schema with no rows.
pub fn primary_keys() -> RecordBatch {
    RecordBatch::new_empty(primary_keys_schema())
}

/// The schema of a `GetPrimaryKeys` answer, as the Flight SQL spec gives it.
pub fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

/// `GetTableTypes`' rows.
pub fn table_types_batch() -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "table_type",
            DataType::Utf8,
            false,
        )])),
        vec![Arc::new(StringArray::from(TABLE_TYPES.to_vec()))],
    )
}

/// The server's `GetSqlInfo` answers.
pub fn sql_info() -> Result<&'static SqlInfoData, String> {
    static INFO: OnceLock<Result<SqlInfoData, String>> = OnceLock::new();
    let info = INFO.get_or_init(|| {
        let mut b = SqlInfoDataBuilder::new();
        b.append(SqlInfo::FlightSqlServerName, "fedsql");
        b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        b.append(SqlInfo::FlightSqlServerArrowVersion, "1.5");
        b.append(SqlInfo::FlightSqlServerReadOnly, false);
        b.append(SqlInfo::FlightSqlServerSql, true);
        b.append(SqlInfo::FlightSqlServerSubstrait, false);
        b.append(
            SqlInfo::FlightSqlServerTransaction,
            SqlSupportedTransaction::None as i32,
        );
        b.append(SqlInfo::FlightSqlServerCancel, false);
        b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
        b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
        b.append(SqlInfo::SqlDdlCatalog, false);
        b.append(SqlInfo::SqlDdlSchema, true);
        b.append(SqlInfo::SqlDdlTable, true);
        b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        b.append(SqlInfo::SqlQuotedIdentifierCase, 3i32); // case sensitive
        b.append(SqlInfo::SqlIdentifierCase, 2i32); // folded to lower case
        b.append(
            SqlInfo::SqlNullOrdering,
            SqlNullOrdering::SqlNullsSortedHigh as i32,
        );
        b.append(SqlInfo::SqlSearchStringEscape, "\\");
        b.append(SqlInfo::SqlCatalogTerm, "database");
        b.append(SqlInfo::SqlSchemaTerm, "schema");
        b.append(SqlInfo::SqlTransactionsSupported, false);
        b.build().map_err(|e| format!("cannot build SqlInfo: {e}"))
    });
    info.as_ref().map_err(Clone::clone)
}

/// The server's `GetXdbcTypeInfo` answers: the SQL types a client can use
/// in casts and DDL.
pub fn xdbc_info() -> Result<&'static XdbcTypeInfoData, String> {
    static INFO: OnceLock<Result<XdbcTypeInfoData, String>> = OnceLock::new();
    let info = INFO.get_or_init(|| {
        let mut b = XdbcTypeInfoDataBuilder::new();
        // (name, type, column size, is text, create parameters)
        type Row = (
            &'static str,
            XdbcDataType,
            Option<i32>,
            bool,
            Option<&'static str>,
        );
        let types: [Row; 13] = [
            ("BOOLEAN", XdbcDataType::XdbcBit, Some(1), false, None),
            (
                "SMALLINT",
                XdbcDataType::XdbcSmallint,
                Some(16),
                false,
                None,
            ),
            ("INTEGER", XdbcDataType::XdbcInteger, Some(32), false, None),
            ("BIGINT", XdbcDataType::XdbcBigint, Some(64), false, None),
            ("REAL", XdbcDataType::XdbcReal, Some(24), false, None),
            (
                "DOUBLE PRECISION",
                XdbcDataType::XdbcDouble,
                Some(53),
                false,
                None,
            ),
            (
                "NUMERIC",
                XdbcDataType::XdbcDecimal,
                Some(38),
                false,
                Some("precision,scale"),
            ),
            (
                "VARCHAR",
                XdbcDataType::XdbcVarchar,
                None,
                true,
                Some("length"),
            ),
            ("TEXT", XdbcDataType::XdbcVarchar, None, true, None),
            ("BYTEA", XdbcDataType::XdbcVarbinary, None, false, None),
            ("DATE", XdbcDataType::XdbcDatetime, Some(10), false, None),
            ("TIME", XdbcDataType::XdbcDatetime, Some(15), false, None),
            (
                "TIMESTAMP",
                XdbcDataType::XdbcDatetime,
                Some(26),
                false,
                None,
            ),
        ];
        for (name, data_type, size, text, params) in types {
            let subcode = match name {
                // The spec's XDBC_SUBCODE_DATE is an alias of YEAR (both 1);
                // prost keeps only the first name.
                "DATE" => Some(XdbcDatetimeSubcode::XdbcSubcodeYear),
                "TIME" => Some(XdbcDatetimeSubcode::XdbcSubcodeTime),
                "TIMESTAMP" => Some(XdbcDatetimeSubcode::XdbcSubcodeTimestamp),
                _ => None,
            };
            let numeric = size.is_some() && !text && subcode.is_none();
            b.append(XdbcTypeInfo {
                type_name: name.into(),
                data_type,
                column_size: size,
                literal_prefix: (text || subcode.is_some()).then(|| "'".into()),
                literal_suffix: (text || subcode.is_some()).then(|| "'".into()),
                create_params: params.map(|p| p.split(',').map(String::from).collect()),
                nullable: Nullable::NullabilityNullable,
                case_sensitive: text,
                searchable: Searchable::Full,
                unsigned_attribute: numeric.then_some(false),
                fixed_prec_scale: name == "NUMERIC",
                auto_increment: numeric.then_some(false),
                local_type_name: Some(name.into()),
                minimum_scale: (name == "NUMERIC").then_some(0),
                maximum_scale: (name == "NUMERIC").then_some(38),
                sql_data_type: data_type,
                datetime_subcode: subcode,
                num_prec_radix: numeric.then_some(if name == "NUMERIC" { 10 } else { 2 }),
                interval_precision: None,
            });
        }
        b.build()
            .map_err(|e| format!("cannot build type info: {e}"))
    });
    info.as_ref().map_err(Clone::clone)
}
