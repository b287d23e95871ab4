//! Postgres ↔ Arrow types, and decoding of binary `COPY` rows into Arrow.
//!
//! | Postgres | Arrow | transport |
//! |---|---|---|
//! | `bool` | `Boolean` | binary |
//! | `int2` / `int4` / `int8` | `Int16` / `Int32` / `Int64` | binary |
//! | `float4` / `float8` | `Float32` / `Float64` | binary |
//! | `numeric(p, s)`, p ≤ 38 | `Decimal128(p, s)` | text, parsed exactly |
//! | `numeric` (unbounded or p > 38) | `Utf8` (exact digits, lossless) | text |
//! | `text`, `varchar`, `name` | `Utf8` | binary (UTF-8) |
//! | `char(n)` (`bpchar`), enums | `Utf8`, padding removed as by `::text` | text |
//! | `date` | `Date32` | binary |
//! | `time` | `Time64(µs)` | binary |
//! | `timestamp` | `Timestamp(µs)` | binary |
//! | `timestamptz` | `Timestamp(µs, "UTC")` | binary |
//! | `interval` | `Utf8` (Postgres's text form) | text |
//! | `bytea` | `Binary` | binary |
//! | `uuid`, `json`, `jsonb`, `inet`, `money`… | `Utf8` | text |
//! | one-dimensional arrays of the types above | `List<…>` | text, parsed by [`array_text_to_list`] |
//!
//! Types read as text are cast to `text` in the SQL fedsql sends
//! ([`TextCast`]), so every value arrives in a form fedsql decodes exactly.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use tokio_postgres::types::{FromSql, Kind, Type};

/// Microseconds from the Unix epoch to Postgres's epoch (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;
/// Days from the Unix epoch to Postgres's epoch.
const PG_EPOCH_DAYS: i32 = 10_957;

/// How a column's values travel from Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextCast {
    /// Sent in Postgres's binary format and decoded directly.
    Binary,
    /// Cast to `text` in the remote query and parsed by fedsql.
    Text,
}

/// The Arrow type of a Postgres column, or `None` if fedsql cannot map it.
///
/// `typmod` is the column's type modifier (`atttypmod`), which carries a
/// numeric's precision and scale.
pub fn arrow_type(ty: &Type, typmod: i32) -> Option<(DataType, TextCast)> {
    use TextCast::*;
    Some(match *ty {
        Type::BOOL => (DataType::Boolean, Binary),
        Type::INT2 => (DataType::Int16, Binary),
        Type::INT4 => (DataType::Int32, Binary),
        Type::INT8 => (DataType::Int64, Binary),
        Type::OID => (DataType::Int64, Text),
        Type::FLOAT4 => (DataType::Float32, Binary),
        Type::FLOAT8 => (DataType::Float64, Binary),
        Type::NUMERIC => (numeric_type(typmod), Text),
        Type::TEXT | Type::VARCHAR | Type::NAME => (DataType::Utf8, Binary),
        // Through `::text`, which drops char(n)'s padding as Postgres does when
        // comparing: 'EUROPE   '::char(9) = 'EUROPE' is true there.
        Type::BPCHAR => (DataType::Utf8, Text),
        Type::DATE => (DataType::Date32, Binary),
        Type::TIME => (DataType::Time64(TimeUnit::Microsecond), Binary),
        Type::TIMESTAMP => (DataType::Timestamp(TimeUnit::Microsecond, None), Binary),
        Type::TIMESTAMPTZ => (
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Binary,
        ),
        Type::BYTEA => (DataType::Binary, Binary),
        Type::UUID
        | Type::JSON
        | Type::JSONB
        | Type::INTERVAL
        | Type::INET
        | Type::CIDR
        | Type::MONEY
        | Type::XML
        | Type::TIMETZ
        | Type::MACADDR
        | Type::CHAR => (DataType::Utf8, Text),
        _ => match ty.kind() {
            Kind::Enum(_) => (DataType::Utf8, Text),
            Kind::Domain(inner) => return arrow_type(inner, typmod),
            // Read as Postgres's array text (`{a,"b c",NULL}`), parsed into a list.
            Kind::Array(element) => {
                let (inner, _) = arrow_type(element, -1)?;
                (
                    DataType::List(Arc::new(datafusion::arrow::datatypes::Field::new(
                        "item", inner, true,
                    ))),
                    Text,
                )
            }
            _ => return None,
        },
    })
}

/// `numeric(p, s)` as Decimal128 when it fits; otherwise exact text.
///
/// Unbounded `numeric` has no fixed scale, so any Decimal128 would round some
/// values; text keeps every digit and casts explicitly when the user wants.
fn numeric_type(typmod: i32) -> DataType {
    if typmod < 4 {
        return DataType::Utf8;
    }
    let modifier = typmod - 4;
    let precision = (modifier >> 16) & 0xffff;
    let scale = modifier & 0xffff;
    if (1..=38).contains(&precision) && scale <= precision {
        DataType::Decimal128(precision as u8, scale as i8)
    } else {
        DataType::Utf8
    }
}

/// Parses one-dimensional Postgres array literals (`{1,2,NULL}`,
/// `{"a b","c\\"d"}`) into a list array of `element` values.
///
/// Multi-dimensional arrays are an error naming the column: Arrow lists of
/// lists would need the dimensions declared, which Postgres does not.
pub fn array_text_to_list(
    texts: &datafusion::arrow::array::StringArray,
    element: &DataType,
    column: &str,
) -> Result<ArrayRef, String> {
    use datafusion::arrow::array::{Array, ListBuilder};
    let mut builder = ListBuilder::new(StringBuilder::new());
    for i in 0..texts.len() {
        if texts.is_null(i) {
            builder.append_null();
            continue;
        }
        for item in
            parse_array_literal(texts.value(i)).map_err(|e| format!("column {column}: {e}"))?
        {
            builder.values().append_option(item);
        }
        builder.append(true);
    }
    let strings: ArrayRef = Arc::new(builder.finish());
    let target = DataType::List(Arc::new(datafusion::arrow::datatypes::Field::new(
        "item",
        element.clone(),
        true,
    )));
    datafusion::arrow::compute::cast(&strings, &target).map_err(|e| format!("column {column}: {e}"))
}

/// The elements of a one-dimensional array literal; `None` is NULL.
fn parse_array_literal(text: &str) -> Result<Vec<Option<String>>, String> {
    // "[0:2]={…}" carries explicit bounds; the elements are what matter here.
    let body = match text.find('=') {
        Some(eq) if text.starts_with('[') => &text[eq + 1..],
        _ => text,
    };
    let inner = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or_else(|| format!("not an array literal: {text}"))?;
    let mut items = Vec::new();
    if inner.is_empty() {
        return Ok(items);
    }
    let mut chars = inner.chars().peekable();
    loop {
        match chars.peek() {
            Some('{') => return Err("multi-dimensional arrays are not supported".into()),
            Some('"') => {
                chars.next();
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some('\\') => value.extend(chars.next()),
                        Some('"') => break,
                        Some(c) => value.push(c),
                        None => return Err(format!("unterminated quote in {text}")),
                    }
                }
                items.push(Some(value));
            }
            _ => {
                let mut value = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
                let value = value.trim();
                items.push(if value.eq_ignore_ascii_case("NULL") {
                    None
                } else {
                    Some(value.to_string())
                });
            }
        }
        match chars.next() {
            Some(',') => continue,
            None => return Ok(items),
            Some(c) => return Err(format!("unexpected '{c}' in {text}")),
        }
    }
}

/// A binary-format value, undecoded: lets one `FromSql` read every type.
pub struct RawValue<'a>(pub &'a [u8]);

impl<'a> FromSql<'a> for RawValue<'a> {
    fn from_sql(
        _ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(raw))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

/// Accumulates one column of binary-`COPY` values into an Arrow array.
pub enum ColumnBuilder {
    Bool(BooleanBuilder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    /// UTF-8 text (text types and everything sent as text).
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder),
}

/// Bytes that do not match the wire format of their type: a bug or a
/// protocol mismatch, reported with the column.
#[derive(Debug, thiserror::Error)]
#[error("column {column}: malformed {type_name} value of {len} bytes from Postgres")]
pub struct DecodeError {
    pub column: String,
    pub type_name: String,
    pub len: usize,
}

impl ColumnBuilder {
    /// A builder for values of wire type `ty` (after any text cast).
    pub fn for_wire_type(ty: &Type, capacity: usize) -> ColumnBuilder {
        match *ty {
            Type::BOOL => ColumnBuilder::Bool(BooleanBuilder::with_capacity(capacity)),
            Type::INT2 => ColumnBuilder::Int16(Int16Builder::with_capacity(capacity)),
            Type::INT4 => ColumnBuilder::Int32(Int32Builder::with_capacity(capacity)),
            Type::INT8 => ColumnBuilder::Int64(Int64Builder::with_capacity(capacity)),
            Type::FLOAT4 => ColumnBuilder::Float32(Float32Builder::with_capacity(capacity)),
            Type::FLOAT8 => ColumnBuilder::Float64(Float64Builder::with_capacity(capacity)),
            Type::BYTEA => ColumnBuilder::Binary(BinaryBuilder::with_capacity(capacity, 0)),
            Type::DATE => ColumnBuilder::Date(Date32Builder::with_capacity(capacity)),
            Type::TIME => ColumnBuilder::Time(Time64MicrosecondBuilder::with_capacity(capacity)),
            Type::TIMESTAMP | Type::TIMESTAMPTZ => {
                ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity))
            }
            _ => ColumnBuilder::Utf8(StringBuilder::with_capacity(capacity, capacity * 8)),
        }
    }

    /// Appends one value (`None` is SQL NULL).
    pub fn append(
        &mut self,
        value: Option<&[u8]>,
        column: &str,
        ty: &Type,
    ) -> Result<(), DecodeError> {
        let bad = |len| DecodeError {
            column: column.to_string(),
            type_name: ty.name().to_string(),
            len,
        };
        fn fixed<const N: usize>(v: &[u8]) -> Option<[u8; N]> {
            v.try_into().ok()
        }
        match (self, value) {
            (ColumnBuilder::Bool(b), None) => b.append_null(),
            (ColumnBuilder::Bool(b), Some(v)) => {
                b.append_value(fixed::<1>(v).ok_or_else(|| bad(v.len()))?[0] != 0)
            }
            (ColumnBuilder::Int16(b), v) => b.append_option(
                v.map(|v| fixed(v).map(i16::from_be_bytes).ok_or_else(|| bad(v.len())))
                    .transpose()?,
            ),
            (ColumnBuilder::Int32(b), v) => b.append_option(
                v.map(|v| fixed(v).map(i32::from_be_bytes).ok_or_else(|| bad(v.len())))
                    .transpose()?,
            ),
            (ColumnBuilder::Int64(b), v) => b.append_option(
                v.map(|v| fixed(v).map(i64::from_be_bytes).ok_or_else(|| bad(v.len())))
                    .transpose()?,
            ),
            (ColumnBuilder::Float32(b), v) => b.append_option(
                v.map(|v| fixed(v).map(f32::from_be_bytes).ok_or_else(|| bad(v.len())))
                    .transpose()?,
            ),
            (ColumnBuilder::Float64(b), v) => b.append_option(
                v.map(|v| fixed(v).map(f64::from_be_bytes).ok_or_else(|| bad(v.len())))
                    .transpose()?,
            ),
            (ColumnBuilder::Date(b), v) => b.append_option(
                v.map(|v| {
                    fixed(v)
                        .map(|d| i32::from_be_bytes(d) + PG_EPOCH_DAYS)
                        .ok_or_else(|| bad(v.len()))
                })
                .transpose()?,
            ),
            (ColumnBuilder::Time(b), v) => b.append_option(
                v.map(|v| fixed(v).map(i64::from_be_bytes).ok_or_else(|| bad(v.len())))
                    .transpose()?,
            ),
            (ColumnBuilder::Timestamp(b), v) => b.append_option(
                v.map(|v| {
                    fixed(v)
                        .map(|t| i64::from_be_bytes(t) + PG_EPOCH_US)
                        .ok_or_else(|| bad(v.len()))
                })
                .transpose()?,
            ),
            (ColumnBuilder::Binary(b), v) => b.append_option(v),
            (ColumnBuilder::Utf8(b), None) => b.append_null(),
            (ColumnBuilder::Utf8(b), Some(v)) => {
                b.append_value(std::str::from_utf8(v).map_err(|_| bad(v.len()))?)
            }
        }
        Ok(())
    }

    /// The finished array.
    pub fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
            ColumnBuilder::Int16(b) => Arc::new(b.finish()),
            ColumnBuilder::Int32(b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(b) => Arc::new(b.finish()),
            ColumnBuilder::Float32(b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(b) => Arc::new(b.finish()),
            ColumnBuilder::Utf8(b) => Arc::new(b.finish()),
            ColumnBuilder::Binary(b) => Arc::new(b.finish()),
            ColumnBuilder::Date(b) => Arc::new(b.finish()),
            ColumnBuilder::Time(b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(b) => Arc::new(b.finish()),
        }
    }

    /// Rows appended since the last `finish`.
    pub fn len(&self) -> usize {
        match self {
            ColumnBuilder::Bool(b) => b.len(),
            ColumnBuilder::Int16(b) => b.len(),
            ColumnBuilder::Int32(b) => b.len(),
            ColumnBuilder::Int64(b) => b.len(),
            ColumnBuilder::Float32(b) => b.len(),
            ColumnBuilder::Float64(b) => b.len(),
            ColumnBuilder::Utf8(b) => b.len(),
            ColumnBuilder::Binary(b) => b.len(),
            ColumnBuilder::Date(b) => b.len(),
            ColumnBuilder::Time(b) => b.len(),
            ColumnBuilder::Timestamp(b) => b.len(),
        }
    }

    /// Whether no rows are pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Array;

    #[test]
    fn numeric_typmods() {
        // numeric(12, 2): typmod = ((12 << 16) | 2) + 4
        assert_eq!(
            numeric_type(((12 << 16) | 2) + 4),
            DataType::Decimal128(12, 2)
        );
        assert_eq!(numeric_type(-1), DataType::Utf8);
        assert_eq!(numeric_type(((60 << 16) | 2) + 4), DataType::Utf8);
    }

    #[test]
    fn array_literals_parse() {
        assert_eq!(
            parse_array_literal(r#"{1,NULL,"a b","q\"x",null}"#).unwrap(),
            vec![
                Some("1".into()),
                None,
                Some("a b".into()),
                Some("q\"x".into()),
                None
            ]
        );
        assert!(parse_array_literal("{}").unwrap().is_empty());
        assert_eq!(parse_array_literal("[0:1]={7,8}").unwrap().len(), 2);
        assert!(parse_array_literal("{{1},{2}}").is_err());
        let texts =
            datafusion::arrow::array::StringArray::from(vec![Some("{1,2,3}"), None, Some("{}")]);
        let list = array_text_to_list(&texts, &DataType::Int32, "c").unwrap();
        assert_eq!(list.len(), 3);
        assert!(list.is_null(1));
    }

    #[test]
    fn binary_values_decode() {
        let mut b = ColumnBuilder::for_wire_type(&Type::TIMESTAMP, 2);
        b.append(Some(&0i64.to_be_bytes()), "ts", &Type::TIMESTAMP)
            .unwrap();
        b.append(None, "ts", &Type::TIMESTAMP).unwrap();
        let a = b.finish();
        let a = a
            .as_any()
            .downcast_ref::<datafusion::arrow::array::TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(a.value(0), PG_EPOCH_US);
        assert!(a.is_null(1));

        let mut d = ColumnBuilder::for_wire_type(&Type::DATE, 1);
        d.append(Some(&1i32.to_be_bytes()), "d", &Type::DATE)
            .unwrap();
        let err = d.append(Some(&[1, 2]), "d", &Type::DATE).unwrap_err();
        assert!(err.to_string().contains("column d"), "{err}");
    }
}
