//! Runs every `tests/slt/*.slt` sqllogictest file through the Postgres wire,
//! each file on a fresh connection to one server started for the suite.

use std::path::PathBuf;

use async_trait::async_trait;
use fedsql_tests::FedsqlServer;
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
struct WireError(String);

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

#[tokio::test]
async fn sqllogictest_files() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let slt_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/slt"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&slt_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", slt_dir.display());
    let mut failures = Vec::new();
    for file in &files {
        if let Err(e) = run_file(file, &server.conn_str("demo"), false).await {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `tests/pg_agreement/*.slt` run twice, against fedsql and against the real
/// PostgreSQL (`FEDSQL_TEST_PG`), with the same expected output: text
/// formats and result column names as PostgreSQL produces them.
#[tokio::test]
async fn postgres_and_fedsql_agree() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let postgres = format!(
        "postgres://postgres@{}/postgres",
        fedsql_tests::test_postgres()
    );
    let agreement = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/pg_agreement"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&agreement)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no .slt files in {}",
        agreement.display()
    );
    let mut failures = Vec::new();
    for (engine, conn_str) in [("fedsql", server.conn_str("demo")), ("postgres", postgres)] {
        for file in &files {
            if let Err(e) = run_file(file, &conn_str, true).await {
                failures.push(format!("{engine}, {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Runs one `.slt` file on a fresh connection to `conn_str` (result column
/// names as each result's first row when `names`); the error names the file.
async fn run_file(file: &std::path::Path, conn_str: &str, names: bool) -> Result<(), String> {
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
    runner
        .run_file_async(file)
        .await
        .map_err(|e| format!("{}: {}", file.display(), e.display(true)))
}
