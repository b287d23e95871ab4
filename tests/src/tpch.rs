//! TPC-H data for the tests: generated with tpchgen-cli, loaded into
//! PostgreSQL.

use std::path::{Path, PathBuf};

use futures::SinkExt;

use crate::{fresh_mariadb_database, fresh_postgres_database, test_mariadb};

/// The eight TPC-H tables, smallest first.
pub const TABLES: [&str; 8] = [
    "region", "nation", "part", "supplier", "partsupp", "customer", "orders", "lineitem",
];

/// `tests/tpch`: the schema and the 22 queries.
pub fn tpch_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tpch"))
}

/// Writes TPC-H at `scale` as CSV files into `out`.
pub fn generate(scale: &str, out: &Path) {
    let tool = std::env::var("FEDSQL_TPCHGEN").unwrap_or_else(|_| "tpchgen-cli".to_string());
    let status = std::process::Command::new(&tool)
        .args(["csv", "-s", scale, "--output-dir"])
        .arg(out)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {tool} ({e}): install it with `pip install tpchgen-cli` \
                 (scripts/test does) or set FEDSQL_TPCHGEN"
            )
        });
    assert!(status.success(), "tpchgen-cli failed");
}

/// Generates TPC-H at `scale` and loads `tables` into a fresh Postgres
/// database; returns the client, its URL and the CSV folder.
pub async fn load_postgres(
    database: &str,
    tables: &[&str],
    scale: &str,
) -> (tokio_postgres::Client, String, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    generate(scale, data.path());
    let (pg, url) = fresh_postgres_database(database).await;
    pg.batch_execute(&std::fs::read_to_string(tpch_dir().join("schema.sql")).unwrap())
        .await
        .unwrap();
    copy_tables(&pg, data.path(), tables).await;
    (pg, url, data)
}

/// Loads `tables` from tpchgen-cli's CSV files in `dir` with `COPY`, then
/// `ANALYZE`s.
pub async fn copy_tables(pg: &tokio_postgres::Client, dir: &Path, tables: &[&str]) {
    for table in tables {
        let bytes = std::fs::read(dir.join(format!("{table}.csv"))).unwrap();
        let sink = pg
            .copy_in(&format!(
                "COPY {table} FROM STDIN (FORMAT csv, HEADER true)"
            ))
            .await
            .unwrap();
        futures::pin_mut!(sink);
        sink.send(bytes::Bytes::from(bytes)).await.unwrap();
        sink.as_mut().finish().await.unwrap();
    }
    pg.batch_execute("ANALYZE").await.unwrap();
}

/// Loads `tables` from tpchgen-cli's CSV files in `data` into a fresh
/// MariaDB database `database` (the same DDL: MariaDB reads it as is), with
/// the MariaDB client's `LOAD DATA`; returns its ODBC connection string.
pub fn load_mariadb(database: &str, tables: &[&str], data: &Path) -> String {
    let schema = std::fs::read_to_string(tpch_dir().join("schema.sql")).unwrap();
    let wh = fresh_mariadb_database(database);
    let maria = test_mariadb();
    let (host, port) = maria.rsplit_once(':').unwrap();
    let mut script = String::new();
    for statement in schema.split(';') {
        let statement = statement
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        let table = TABLES
            .iter()
            .find(|t| statement.contains(&format!("CREATE TABLE {t} ")));
        if let Some(table) = table.filter(|t| tables.contains(t)) {
            script.push_str(&statement);
            script.push_str(";\n");
            script.push_str(&format!(
                "LOAD DATA LOCAL INFILE '{}' INTO TABLE {table} CHARACTER SET utf8mb4 \
                 FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' IGNORE 1 LINES;\n",
                data.join(format!("{table}.csv")).display()
            ));
            // What a warehouse's DBA runs: exact per-column statistics
            // (InnoDB's own sample of a primary key's first column is
            // often off by 2x), which fedsql reads at CREATE SOURCE.
            script.push_str(&format!("ANALYZE TABLE {table} PERSISTENT FOR ALL;\n"));
        }
    }
    let status = std::process::Command::new("mariadb")
        .args([
            "--local-infile=1",
            "-h",
            host,
            "-P",
            port,
            "-uroot",
            database,
            "-e",
        ])
        .arg(&script)
        // (ANALYZE TABLE prints a status table per table.)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("the mariadb client (Debian: mariadb-client; scripts/test installs it)");
    assert!(status.success(), "loading the warehouse failed");

    wh
}
