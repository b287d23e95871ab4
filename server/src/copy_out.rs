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
use datafusion_postgres::arrow_pg::datatypes::arrow_schema_to_pg_fields;
use datafusion_postgres::arrow_pg::encoder::{encode_value, Encoder};
use fedsql_sql::connection::{CopyFormat, CopyTo, ForceQuote};
use futures::{stream, StreamExt};
use pgwire::api::portal::Format;
use pgwire::api::results::{CopyCsvOptions, CopyEncoder, CopyResponse, CopyTextOptions, FieldInfo};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::copy::CopyData;

use crate::error::{Result, ServerError};

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
    let encoder = match copy.format {
        CopyFormat::Binary => CopyEncoder::new_binary(Arc::clone(&fields)),
        CopyFormat::Text => CopyEncoder::new_text(
            Arc::clone(&fields),
            CopyTextOptions {
                delimiter: delimiter.to_string().into(),
                null_string: null.into(),
            },
        ),
        CopyFormat::Csv => CopyEncoder::new_csv(
            Arc::clone(&fields),
            CopyCsvOptions {
                delimiter: delimiter.to_string().into(),
                quote: quote.to_string().into(),
                escape: quote.to_string().into(),
                null_string: null.into(),
                force_quote,
            },
        ),
    };
    // What precedes the first row: the PGCOPY header (which the encoder
    // writes with its first row, so only needed for an empty result) or the
    // header line. It is sent in the first row's message, because pgwire
    // counts messages as rows for the `COPY n` tag.
    let prefix = if copy.header {
        let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
        Some(header_line(&names, copy.format, delimiter, quote))
    } else {
        None
    };
    let copier = Copier {
        encoder,
        fields: Arc::clone(&fields),
        prefix,
        binary,
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

/// Encodes batches into per-row `CopyData` messages.
struct Copier {
    encoder: CopyEncoder,
    fields: Arc<Vec<FieldInfo>>,
    prefix: Option<Bytes>,
    binary: bool,
    wrote_row: bool,
}

impl Copier {
    fn batch(&mut self, batch: &RecordBatch) -> Vec<PgWireResult<CopyData>> {
        let schema = batch.schema();
        let mut messages = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            for (column, array) in batch.columns().iter().enumerate() {
                let encoded = encode_value(
                    &mut self.encoder,
                    array,
                    row,
                    schema.field(column),
                    &self.fields[column],
                );
                if let Err(e) = encoded {
                    messages.push(Err(e));
                    return messages;
                }
            }
            let data = self.encoder.take_row();
            self.wrote_row = true;
            messages.push(Ok(match self.prefix.take() {
                Some(prefix) => {
                    let mut joined = BytesMut::with_capacity(prefix.len() + data.data.len());
                    joined.put_slice(&prefix);
                    joined.put_slice(&data.data);
                    CopyData::new(joined.freeze())
                }
                None => data,
            }));
        }
        messages
    }

    /// What ends the data: for binary, the trailer, after the PGCOPY
    /// header if no row carried it (in one message, as Postgres sends it
    /// and psycopg expects); for text, the header line of an empty result.
    fn finish(&mut self) -> Vec<PgWireResult<CopyData>> {
        let end = if self.binary {
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

/// CSV's or text's header line: the column names, quoted or escaped as
/// values are.
fn header_line(names: &[&str], format: CopyFormat, delimiter: char, quote: char) -> Bytes {
    let mut line = String::new();
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            line.push(delimiter);
        }
        match format {
            CopyFormat::Csv => {
                let needs_quotes = name.contains(delimiter)
                    || name.contains(quote)
                    || name.contains('\n')
                    || name.contains('\r');
                if needs_quotes {
                    line.push(quote);
                    for c in name.chars() {
                        if c == quote {
                            line.push(quote);
                        }
                        line.push(c);
                    }
                    line.push(quote);
                } else {
                    line.push_str(name);
                }
            }
            _ => {
                for c in name.chars() {
                    match c {
                        '\\' => line.push_str("\\\\"),
                        '\n' => line.push_str("\\n"),
                        '\r' => line.push_str("\\r"),
                        '\t' => line.push_str("\\t"),
                        c if c == delimiter => {
                            line.push('\\');
                            line.push(c);
                        }
                        c => line.push(c),
                    }
                }
            }
        }
    }
    line.push('\n');
    Bytes::from(line)
}

fn internal(e: PgWireError) -> ServerError {
    ServerError::Internal(e.to_string())
}
