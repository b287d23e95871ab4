//! Running sqllogictest files through the Postgres wire.

use async_trait::async_trait;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Runner};
use tokio_postgres::SimpleQueryMessage;

struct PgWire {
    client: tokio_postgres::Client,
    /// Each result starts with a row of its column names (the agreement
    /// files check naming too).
    names: bool,
}

/// A wire error shown as `SQLSTATE: message`, so `.slt` files can match on
/// either (tokio-postgres's own Display says only "db error").
#[derive(Debug)]
pub struct WireError(String);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

impl From<tokio_postgres::Error> for WireError {
    fn from(e: tokio_postgres::Error) -> Self {
        WireError(match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        })
    }
}

#[async_trait]
impl AsyncDB for PgWire {
    type Error = WireError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Self::ColumnType>, Self::Error> {
        let messages = self.client.simple_query(sql).await?;
        let mut rows = Vec::new();
        let mut columns = None;
        let mut affected = 0;
        for message in messages {
            match message {
                SimpleQueryMessage::RowDescription(desc) => {
                    columns = Some(desc.len());
                    if self.names {
                        rows.push(desc.iter().map(|c| c.name().to_string()).collect());
                    }
                }
                SimpleQueryMessage::Row(row) => {
                    columns = Some(row.len());
                    rows.push(
                        (0..row.len())
                            .map(|i| match row.get(i) {
                                None => "NULL".to_string(),
                                Some("") => "(empty)".to_string(),
                                Some(v) => v.to_string(),
                            })
                            .collect(),
                    );
                }
                SimpleQueryMessage::CommandComplete(n) => affected = n,
                _ => {}
            }
        }
        match columns {
            Some(n) => Ok(DBOutput::Rows {
                types: vec![DefaultColumnType::Any; n],
                rows,
            }),
            None => Ok(DBOutput::StatementComplete(affected)),
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "fedsql"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await
    }
}

/// Runs one `.slt` file on a fresh connection to `conn_str` (result column
/// names as each result's first row when `names`); the error names the file.
pub async fn run_file(file: &std::path::Path, conn_str: &str, names: bool) -> Result<(), String> {
    run_file_with(file, conn_str, names, sqllogictest::default_validator).await
}

/// [`run_file`] comparing values as the fuzzer does
/// ([`crate::fuzz::normalise`]: numbers to 4 decimals), for the fuzzer's
/// regression cases.
pub async fn run_file_tolerant(file: &std::path::Path, conn_str: &str) -> Result<(), String> {
    run_file_with(file, conn_str, false, tolerant_validator).await
}

fn tolerant_validator(
    _normalizer: sqllogictest::Normalizer,
    actual: &[Vec<String>],
    expected: &[String],
) -> bool {
    // Sorted again after normalising: the runner's `rowsort` sorts the
    // text as received (`1.5` and `1.50` are one value).
    let tokens = |line: &str| -> Vec<String> {
        line.split_ascii_whitespace()
            .map(|t| crate::fuzz::normalise(&Some(t.to_string())))
            .collect()
    };
    let mut actual: Vec<Vec<String>> = actual.iter().map(|r| tokens(&r.join(" "))).collect();
    let mut expected: Vec<Vec<String>> = expected.iter().map(|e| tokens(e)).collect();
    actual.sort();
    expected.sort();
    actual == expected
}

async fn run_file_with(
    file: &std::path::Path,
    conn_str: &str,
    names: bool,
    validator: sqllogictest::Validator,
) -> Result<(), String> {
    let conn_str = conn_str.to_string();
    let mut runner = Runner::new(move || {
        let conn_str = conn_str.clone();
        async move {
            let (client, connection) =
                tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            Ok(PgWire { client, names })
        }
    });
    // Types are not compared: the simple protocol returns text.
    runner.with_column_validator(|_, _| true);
    runner.with_validator(validator);
    runner
        .run_file_async(file)
        .await
        .map_err(|e| format!("{}: {}", file.display(), e.display(true)))
}
