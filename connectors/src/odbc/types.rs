//! ODBC column types to Arrow, and the Arrow types arrow-odbc reads into.
//!
//! | ODBC SQL type (SQLColumns `DATA_TYPE`)        | Arrow                                   |
//! |-----------------------------------------------|-----------------------------------------|
//! | `SQL_BIT`, `bool`/`boolean` type names        | `Boolean`                               |
//! | `SQL_TINYINT` / `SMALLINT` / `INTEGER` / `BIGINT` | `Int8` / `Int16` / `Int32` / `Int64` (unsigned: the next wider type; `BIGINT UNSIGNED`: `Decimal128(20,0)`); SQLite `INTEGER`: `Int64` |
//! | `SQL_REAL`                                    | `Float32`                               |
//! | `SQL_DOUBLE`, `SQL_FLOAT`                     | `Float64`                               |
//! | `SQL_DECIMAL`/`SQL_NUMERIC(p≤38, s)`          | `Decimal128(p, s)`                      |
//! | `SQL_DECIMAL`/`SQL_NUMERIC` wider or unbounded| `Utf8` (exact digits as text; psqlODBC connections get `NumericAs=-1` so unbounded `numeric` arrives as text) |
//! | `SQL_(W)CHAR`/`(W)VARCHAR`/`(W)LONGVARCHAR`, `SQL_GUID` | `Utf8`                        |
//! | `SQL_(VAR/LONGVAR)BINARY`                     | `Binary`                                |
//! | `SQL_TYPE_DATE`                               | `Date32`                                |
//! | `SQL_TYPE_TIME`                               | `Time64(µs)`                            |
//! | `SQL_TYPE_TIMESTAMP`                          | `Timestamp(µs)`; Postgres `timestamptz` and MySQL/MariaDB `TIMESTAMP`: `Timestamp(µs, UTC)` |
//!
//! Anything else is reported by name when a query touches it.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::pushdown::SourceDialect;

/// The UTC zone label given to time-zone-aware timestamps (sessions are set
/// to UTC when they open, so the wall-clock values read are UTC).
pub const UTC: &str = "UTC";

/// One column as `SQLColumns` describes it.
#[derive(Debug, Clone)]
pub struct OdbcColumnType {
    /// `DATA_TYPE`: the ODBC SQL type code.
    pub data_type: i16,
    /// `TYPE_NAME`: the source's own name for the type.
    pub type_name: String,
    /// `COLUMN_SIZE`: precision for numbers, length for text.
    pub column_size: Option<i32>,
    /// `DECIMAL_DIGITS`: scale.
    pub decimal_digits: Option<i16>,
}

/// The Arrow type of a column, or `None` when fedsql has no mapping.
pub fn arrow_type(dialect: SourceDialect, column: &OdbcColumnType) -> Option<DataType> {
    let name = column.type_name.to_ascii_lowercase();
    let unsigned = name.contains("unsigned");
    if matches!(name.as_str(), "bool" | "boolean") {
        return Some(DataType::Boolean);
    }
    // SQLite's driver reports declared `DECIMAL(p,s)` columns as text.
    if let Some(decimal) = declared_decimal(&name) {
        return Some(decimal);
    }
    Some(match column.data_type {
        -7 => {
            // MySQL's BIT(n>1) is a bit string, not a flag.
            if column.column_size.is_some_and(|n| n > 1) {
                DataType::Binary
            } else {
                DataType::Boolean
            }
        }
        16 => DataType::Boolean,
        -6 if unsigned => DataType::Int16,
        -6 => DataType::Int8,
        5 if unsigned => DataType::Int32,
        5 => DataType::Int16,
        // SQLite's INTEGER holds 64 bits whatever the driver says.
        4 if unsigned || dialect == SourceDialect::Sqlite => DataType::Int64,
        4 => DataType::Int32,
        -5 if unsigned => DataType::Decimal128(20, 0),
        -5 => DataType::Int64,
        7 => DataType::Float32,
        // SQL_FLOAT is a double for every driver fedsql knows; psqlODBC
        // reports float8 as SQL_FLOAT with 17 (decimal digits) as its size.
        6 | 8 => DataType::Float64,
        2 | 3 => match (column.column_size, column.decimal_digits) {
            (Some(p @ 1..=38), s) => {
                let s = s.unwrap_or(0).clamp(0, p as i16);
                DataType::Decimal128(p as u8, s as i8)
            }
            _ => DataType::Utf8,
        },
        1 | 12 | -1 | -8 | -9 | -10 | -11 => DataType::Utf8,
        -4..=-2 => DataType::Binary,
        9 | 91 => DataType::Date32,
        10 | 92 => DataType::Time64(TimeUnit::Microsecond),
        11 | 93 => {
            let zoned = match dialect {
                SourceDialect::Postgres => {
                    name.contains("timestamptz") || name.contains("with time zone")
                }
                SourceDialect::MySql => name == "timestamp",
                _ => false,
            };
            DataType::Timestamp(TimeUnit::Microsecond, zoned.then(|| Arc::from(UTC)))
        }
        _ => return None,
    })
}

/// `decimal(p,s)` / `numeric(p,s)` / `decimal(p)` as a type name.
fn declared_decimal(name: &str) -> Option<DataType> {
    let args = name
        .strip_prefix("decimal(")
        .or_else(|| name.strip_prefix("numeric("))?
        .strip_suffix(')')?;
    let mut parts = args.split(',').map(|p| p.trim().parse::<u8>());
    let precision = parts.next()?.ok()?;
    let scale = match parts.next() {
        Some(s) => s.ok()?,
        None => 0,
    };
    (1..=38).contains(&precision).then_some(())?;
    (scale <= precision).then_some(DataType::Decimal128(precision, scale as i8))
}

/// The schema arrow-odbc is asked to fill for a planned `schema`: types it
/// binds directly stay, time zones are dropped (added back after the read)
/// and anything else is read as text and cast.
pub fn read_schema(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let read = match f.data_type() {
                DataType::Boolean
                | DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::UInt8
                | DataType::Float32
                | DataType::Float64
                | DataType::Date32
                | DataType::Time64(TimeUnit::Microsecond)
                | DataType::Decimal128(..)
                | DataType::Utf8
                | DataType::Binary => f.data_type().clone(),
                DataType::Timestamp(unit, _) => DataType::Timestamp(*unit, None),
                DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
                _ => DataType::Utf8,
            };
            // Drivers often report NOT NULL columns of a pushed join as
            // nullable and vice versa: reading everything nullable never fails.
            Field::new(f.name(), read, true)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(data_type: i16, name: &str, size: Option<i32>, digits: Option<i16>) -> OdbcColumnType {
        OdbcColumnType {
            data_type,
            type_name: name.into(),
            column_size: size,
            decimal_digits: digits,
        }
    }

    #[test]
    fn maps_by_sql_type_and_dialect() {
        let pg = SourceDialect::Postgres;
        let my = SourceDialect::MySql;
        assert_eq!(
            arrow_type(pg, &col(8, "float8", Some(17), None)),
            Some(DataType::Float64)
        );
        assert_eq!(
            arrow_type(pg, &col(3, "numeric", Some(15), Some(2))),
            Some(DataType::Decimal128(15, 2))
        );
        assert_eq!(
            arrow_type(my, &col(3, "DECIMAL", Some(65), Some(2))),
            Some(DataType::Utf8),
            "wider than Decimal128"
        );
        assert_eq!(
            arrow_type(pg, &col(93, "timestamptz", Some(26), Some(6))),
            Some(DataType::Timestamp(
                TimeUnit::Microsecond,
                Some(Arc::from(UTC))
            ))
        );
        assert_eq!(
            arrow_type(my, &col(93, "DATETIME", None, None)),
            Some(DataType::Timestamp(TimeUnit::Microsecond, None))
        );
        assert_eq!(
            arrow_type(my, &col(4, "INT UNSIGNED", None, None)),
            Some(DataType::Int64)
        );
        assert_eq!(
            arrow_type(SourceDialect::Sqlite, &col(4, "INTEGER", None, None)),
            Some(DataType::Int64)
        );
        assert_eq!(
            arrow_type(pg, &col(-7, "bool", None, None)),
            Some(DataType::Boolean)
        );
        assert_eq!(
            arrow_type(pg, &col(12, "bool", None, None)),
            Some(DataType::Boolean),
            "BoolsAsChar"
        );
        assert_eq!(arrow_type(pg, &col(-150, "hstore", None, None)), None);
        assert_eq!(
            arrow_type(SourceDialect::Sqlite, &col(12, "DECIMAL(10,2)", None, None)),
            Some(DataType::Decimal128(10, 2))
        );
        assert_eq!(
            arrow_type(SourceDialect::Sqlite, &col(12, "NUMERIC(50,2)", None, None)),
            Some(DataType::Utf8)
        );
    }

    #[test]
    fn read_schema_drops_zones_and_reads_the_rest_as_text() {
        let planned: SchemaRef = Arc::new(Schema::new(vec![
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from(UTC))),
                false,
            ),
            Field::new("v", DataType::Utf8View, true),
            Field::new("f", DataType::Float64, false),
        ]));
        let read = read_schema(&planned);
        assert_eq!(
            read.field(0).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, None)
        );
        assert_eq!(read.field(1).data_type(), &DataType::Utf8);
        assert_eq!(read.field(2).data_type(), &DataType::Float64);
    }
}
