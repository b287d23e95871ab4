//! `COPY … TO STDOUT` on the Postgres wire: a query's rows streamed to the
//! client as `CopyData` in text, CSV or PGCOPY binary, one batch at a time
//! (a 10-million-row export never sits whole in memory).
//!
//! Values are encoded by the same arrow-pg encoders as query results, so
//! `COPY` text equals what `SELECT` sends and binary equals binary results.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use datafusion::arrow::array::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion_postgres::arrow_pg::encoder::{encode_value, Encoder};
use fedsql_sql::connection::{CopyFormat, CopyTo, ForceQuote};
use futures::{stream, StreamExt};
use pgwire::api::portal::Format;
use pgwire::api::results::{CopyEncoder, CopyResponse, FieldInfo};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::copy::CopyData;
use pgwire::messages::data::DataRow;

use crate::error::{Result, ServerError};
use crate::pg_text::TextFixes;

/// The signature, flags and header-extension length that start PGCOPY
/// binary data.
const PGCOPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// The `CopyOut` response for `copy` over `rows`; refuses option
/// combinations Postgres refuses (22023 / 0A000) before any row is read.
pub fn copy_out(copy: &CopyTo, rows: SendableRecordBatchStream) -> Result<CopyResponse> {
    let schema = rows.schema();
    let invalid = |message: &str| ServerError::Query {
        sqlstate: "22023".into(),
        message: message.into(),
        position: None,
    };
    let binary = copy.format == CopyFormat::Binary;
    if binary
        && (copy.header || copy.delimiter.is_some() || copy.null.is_some() || copy.quote.is_some())
    {
        return Err(invalid(
            "cannot specify HEADER, DELIMITER, NULL or QUOTE in BINARY mode",
        ));
    }
    if copy.format != CopyFormat::Csv
        && (copy.quote.is_some() || copy.escape.is_some() || copy.force_quote != ForceQuote::None)
    {
        return Err(invalid(
            "COPY QUOTE, ESCAPE and FORCE_QUOTE are available only in CSV mode",
        ));
    }
    let quote = copy.quote.unwrap_or('"');
    if copy.escape.is_some_and(|e| e != quote) {
        return Err(ServerError::NotSupported {
            statement: "COPY … ESCAPE".into(),
            reason: "fedsql escapes CSV quotes by doubling them (ESCAPE equal to QUOTE)".into(),
        });
    }
    let delimiter = copy.delimiter.unwrap_or(if copy.format == CopyFormat::Csv {
        ','
    } else {
        '\t'
    });
    if matches!(delimiter, '\n' | '\r' | '\\')
        || (copy.format == CopyFormat::Csv && delimiter == quote)
    {
        return Err(invalid(
            "COPY delimiter must not be a newline, a carriage return, a backslash or the quote",
        ));
    }
    let format = if binary {
        Format::UnifiedBinary
    } else {
        Format::UnifiedText
    };
    let fields = Arc::new(arrow_schema_to_pg_fields(&schema, &format, None).map_err(internal)?);
    let force_quote = match &copy.force_quote {
        ForceQuote::None => Vec::new(),
        ForceQuote::All => (0..fields.len()).collect(),
        ForceQuote::Columns(names) => names
            .iter()
            .map(|name| {
                schema.index_of(name).map_err(|_| ServerError::Query {
                    sqlstate: "42703".into(),
                    message: format!("column \"{name}\" does not exist"),
                    position: None,
                })
            })
            .collect::<Result<_>>()?,
    };
    let null = copy.null.clone().unwrap_or_else(|| {
        if copy.format == CopyFormat::Csv {
            String::new()
        } else {
            "\\N".into()
        }
    });
    let layout = match copy.format {
        CopyFormat::Binary => Layout::Binary(CopyEncoder::new_binary(Arc::clone(&fields))),
        format => Layout::Delimited(Delimited {
            csv: format == CopyFormat::Csv,
            delimiter,
            quote,
            null,
            force_quote: (0..fields.len())
                .map(|i| force_quote.contains(&i))
                .collect(),
            fixes: TextFixes::for_fields(&fields),
        }),
    };
    // What precedes the first row: the PGCOPY header (which the encoder
    // writes with its first row, so only needed for an empty result) or the
    // header line. It is sent in the first row's message, because pgwire
    // counts messages as rows for the `COPY n` tag.
    let prefix = match (&layout, copy.header) {
        (Layout::Delimited(d), true) => {
            let mut line = String::new();
            for (i, field) in fields.iter().enumerate() {
                d.push_value(&mut line, i, Some(field.name()));
            }
            line.push('\n');
            Some(Bytes::from(line))
        }
        _ => None,
    };
    let copier = Copier {
        layout,
        fields: Arc::clone(&fields),
        prefix,
        wrote_row: false,
    };
    let body = stream::unfold(Some((rows, copier)), |state| async move {
        let (mut rows, mut copier) = state?;
        match rows.next().await {
            Some(Ok(batch)) => {
                let messages = copier.batch(&batch);
                Some((messages, Some((rows, copier))))
            }
            Some(Err(e)) => Some((vec![Err(PgWireError::ApiError(Box::new(e)))], None)),
            None => Some((copier.finish(), None)),
        }
    })
    .flat_map(stream::iter);
    // `CopyResponse::new` would append the binary trailer as a message of
    // its own; the copier ends binary data itself (see `Copier::finish`).
    let mut response = CopyResponse::new(if binary { 1 } else { 0 }, fields.len(), stream::empty());
    response.data_stream = Box::pin(body);
    Ok(response)
}

/// How rows become bytes.
enum Layout {
    /// PGCOPY, by pgwire's encoder (the same field encoding as binary rows).
    Binary(CopyEncoder),
    /// Text or CSV: each row's text values, as `SELECT` sends them, escaped
    /// and joined.
    Delimited(Delimited),
}

/// Text and CSV layout options.
struct Delimited {
    csv: bool,
    delimiter: char,
    quote: char,
    null: String,
    force_quote: Vec<bool>,
    fixes: Option<TextFixes>,
}

impl Delimited {
    /// Appends one value (`None` is NULL), preceded by the delimiter unless
    /// it is the first.
    fn push_value(&self, line: &mut String, column: usize, value: Option<&str>) {
        if column > 0 {
            line.push(self.delimiter);
        }
        let Some(value) = value else {
            line.push_str(&self.null);
            return;
        };
        if self.csv {
            let quoted = self.force_quote.get(column).copied().unwrap_or(false)
                || value == self.null
                || value.contains([self.delimiter, self.quote, '\n', '\r'])
                || value == "\\.";
            if !quoted {
                line.push_str(value);
                return;
            }
            line.push(self.quote);
            for c in value.chars() {
                if c == self.quote {
                    line.push(self.quote);
                }
                line.push(c);
            }
            line.push(self.quote);
            return;
        }
        for c in value.chars() {
            match c {
                '\\' => line.push_str("\\\\"),
                '\n' => line.push_str("\\n"),
                '\r' => line.push_str("\\r"),
                '\t' => line.push_str("\\t"),
                c if c == self.delimiter => {
                    line.push('\\');
                    line.push(c);
                }
                c => line.push(c),
            }
        }
    }

    /// One text-format `DataRow` as a line.
    fn line(&self, row: DataRow) -> Bytes {
        let row = match &self.fixes {
            Some(fixes) => fixes.apply(row),
            None => row,
        };
        let mut line = String::new();
        for (column, value) in crate::pg_text::row_fields(&row).into_iter().enumerate() {
            let text = value.map(String::from_utf8_lossy);
            self.push_value(&mut line, column, text.as_deref());
        }
        line.push('\n');
        Bytes::from(line)
    }
}

/// Encodes batches into per-row `CopyData` messages.
struct Copier {
    layout: Layout,
    fields: Arc<Vec<FieldInfo>>,
    prefix: Option<Bytes>,
    wrote_row: bool,
}

impl Copier {
    fn batch(&mut self, batch: &RecordBatch) -> Vec<PgWireResult<CopyData>> {
        let mut messages: Vec<PgWireResult<Bytes>> = Vec::with_capacity(batch.num_rows());
        match &mut self.layout {
            Layout::Binary(encoder) => {
                let schema = batch.schema();
                'rows: for row in 0..batch.num_rows() {
                    for (column, array) in batch.columns().iter().enumerate() {
                        let encoded = encode_value(
                            encoder,
                            array,
                            row,
                            schema.field(column),
                            &self.fields[column],
                        );
                        if let Err(e) = encoded {
                            messages.push(Err(e));
                            break 'rows;
                        }
                    }
                    messages.push(Ok(encoder.take_row().data));
                }
            }
            Layout::Delimited(delimited) => {
                for row in encode_recordbatch(Arc::clone(&self.fields), batch.clone()) {
                    match row {
                        Ok(row) => messages.push(Ok(delimited.line(row))),
                        Err(e) => {
                            messages.push(Err(e));
                            break;
                        }
                    }
                }
            }
        }
        let prefix = self.prefix.take();
        let mut data: Vec<PgWireResult<CopyData>> = Vec::with_capacity(messages.len());
        for (i, message) in messages.into_iter().enumerate() {
            data.push(message.map(|bytes| match (&prefix, i) {
                (Some(prefix), 0) => {
                    let mut joined = BytesMut::with_capacity(prefix.len() + bytes.len());
                    joined.put_slice(prefix);
                    joined.put_slice(&bytes);
                    CopyData::new(joined.freeze())
                }
                _ => CopyData::new(bytes),
            }));
        }
        if data.is_empty() {
            self.prefix = prefix;
        } else {
            self.wrote_row = true;
        }
        data
    }

    /// What ends the data: for binary, the trailer, after the PGCOPY
    /// header if no row carried it (in one message, as Postgres sends it
    /// and psycopg expects); for text, the header line of an empty result.
    fn finish(&mut self) -> Vec<PgWireResult<CopyData>> {
        let end = if matches!(self.layout, Layout::Binary(_)) {
            let mut end = BytesMut::new();
            if !self.wrote_row {
                end.put_slice(PGCOPY_HEADER);
            }
            end.put_i16(-1);
            Some(end.freeze())
        } else if !self.wrote_row {
            self.prefix.take()
        } else {
            None
        };
        end.map(|b| Ok(CopyData::new(b))).into_iter().collect()
    }
}

fn internal(e: PgWireError) -> ServerError {
    ServerError::Internal(e.to_string())
}
