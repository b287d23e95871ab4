//! TPC-H in a real PostgreSQL, queried through a Postgres source: all 22
//! queries with pushdown on and off give Postgres's own answers.
//!
//! Needs `tpchgen-cli` (PyPI; scripts/test installs it and sets
//! `FEDSQL_TPCHGEN`) and the test PostgreSQL (`FEDSQL_TEST_PG`). The scale
//! is `FEDSQL_TPCH_SCALE` (default 0.01: with pushdown off, a debug build
//! computes every query locally, and SF0.1 takes many minutes on 2 cores).

use std::path::{Path, PathBuf};

use fedsql_tests::{fresh_postgres_database, try_text_rows, FedsqlServer};
use futures::SinkExt;

const TABLES: [&str; 8] = [
    "region", "nation", "part", "supplier", "partsupp", "customer", "orders", "lineitem",
];

fn tpch_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tpch"))
}

fn generate(scale: &str, out: &Path) {
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

/// Equal as text, or as numbers within a tolerance that absorbs the
/// difference between Postgres's unbounded numeric and Decimal128/f64 averages.
/// Trailing blanks are ignored: fedsql reads `char(n)` without its padding,
/// as Postgres's own `::text` does.
fn same_value(a: &Option<String>, b: &Option<String>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) if a.trim_end() == b.trim_end() => true,
        (Some(a), Some(b)) => match (a.parse::<f64>(), b.parse::<f64>()) {
            (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()) + 1e-4,
            _ => false,
        },
        _ => false,
    }
}

fn compare(
    query: &str,
    mode: &str,
    want: &[Vec<Option<String>>],
    got: &[Vec<Option<String>>],
) -> Option<String> {
    if want.len() != got.len() {
        return Some(format!(
            "{query} ({mode}): {} rows, Postgres has {}",
            got.len(),
            want.len()
        ));
    }
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        if w.len() != g.len() || !w.iter().zip(g).all(|(a, b)| same_value(a, b)) {
            return Some(format!(
                "{query} ({mode}) row {i}: got {g:?}, Postgres has {w:?}"
            ));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_22_queries_match_postgres_with_pushdown_on_and_off() {
    let data = tempfile::tempdir().unwrap();
    let scale = std::env::var("FEDSQL_TPCH_SCALE").unwrap_or_else(|_| "0.01".to_string());
    generate(&scale, data.path());
    let (pg, url) = fresh_postgres_database("fedsql_tpch").await;
    pg.batch_execute(&std::fs::read_to_string(tpch_dir().join("schema.sql")).unwrap())
        .await
        .unwrap();
    for table in TABLES {
        let bytes = std::fs::read(data.path().join(format!("{table}.csv"))).unwrap();
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

    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let admin = server.connect("demo").await;
    admin
        .simple_query(&format!(
            "CREATE SOURCE tpch TYPE postgres OPTIONS (url '{url}')"
        ))
        .await
        .unwrap();
    // In database `tpch`, unqualified names resolve in tpch.public.
    let on = server.connect("tpch").await;
    let off = server.connect("tpch").await;
    off.simple_query("SET fedsql.pushdown = off").await.unwrap();

    let mut failures = Vec::new();
    for n in 1..=22 {
        let name = format!("q{n}");
        let sql = std::fs::read_to_string(tpch_dir().join(format!("{name}.sql"))).unwrap();
        let want = try_text_rows(&pg, &sql)
            .await
            .unwrap_or_else(|e| panic!("Postgres {name}: {e}"));
        assert!(
            !want.is_empty() || n == 0,
            "{name} returns no rows in Postgres"
        );
        for (mode, client) in [("pushdown on", &on), ("pushdown off", &off)] {
            let limit = std::time::Duration::from_secs(300);
            match tokio::time::timeout(limit, try_text_rows(client, &sql)).await {
                Ok(Ok(got)) => failures.extend(compare(&name, mode, &want, &got)),
                Ok(Err(e)) => failures.push(format!("{name} ({mode}): {e}")),
                Err(_) => failures.push(format!("{name} ({mode}): no answer within {limit:?}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
