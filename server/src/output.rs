//! Printing results for `fedsql query`: an aligned table, CSV or JSON.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::pretty::pretty_format_batches;

use crate::error::{Result, ServerError};

/// How `fedsql query` prints rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned table, like psql.
    Table,
    /// CSV with a header row.
    Csv,
    /// A JSON array of objects, one per row.
    Json,
}

/// Renders rows in `format`.
pub fn render(format: OutputFormat, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<String> {
    let err = |e: datafusion::arrow::error::ArrowError| ServerError::Query {
        sqlstate: "XX000".into(),
        message: format!("cannot format results: {e}"),
        position: None,
    };
    match format {
        OutputFormat::Table => {
            if batches.is_empty() {
                let empty = RecordBatch::new_empty(schema.clone());
                return Ok(pretty_format_batches(&[empty]).map_err(err)?.to_string());
            }
            Ok(pretty_format_batches(batches).map_err(err)?.to_string())
        }
        OutputFormat::Csv => {
            let mut out = Vec::new();
            {
                let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
                if batches.is_empty() {
                    writer
                        .write(&RecordBatch::new_empty(schema.clone()))
                        .map_err(err)?;
                }
                for batch in batches {
                    writer.write(batch).map_err(err)?;
                }
            }
            Ok(String::from_utf8_lossy(&out).trim_end().to_string())
        }
        OutputFormat::Json => {
            let mut out = Vec::new();
            {
                let mut writer = datafusion::arrow::json::ArrayWriter::new(&mut out);
                for batch in batches {
                    writer.write(batch).map_err(err)?;
                }
                writer.finish().map_err(err)?;
            }
            let text = String::from_utf8_lossy(&out).to_string();
            Ok(if text.is_empty() { "[]".into() } else { text })
        }
    }
}
