//! Runs every `tests/slt/*.slt` sqllogictest file through the Postgres wire,
//! each file on a fresh connection to one server started for the suite.

use std::path::PathBuf;

use fedsql_tests::slt::run_file;
use fedsql_tests::FedsqlServer;

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
