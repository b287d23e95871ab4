//! TPC-H through fedsql: all 22 queries with pushdown on and off give
//! Postgres's own answers, with every table in a Postgres source, and split
//! between Postgres (`lineitem`, `orders`) and a MariaDB warehouse read over
//! ODBC (the other six).
//!
//! Needs `tpchgen-cli` (PyPI; scripts/test installs it and sets
//! `FEDSQL_TPCHGEN`) and the test PostgreSQL (`FEDSQL_TEST_PG`). The scale
//! is `FEDSQL_TPCH_SCALE`: scripts/test (and so CI) runs SF0.1, the scale
//! the issue asks for (about 4 minutes for both tests on 2 cores in a debug
//! build, which computes every query itself with pushdown off); a plain
//! `cargo test` defaults to SF0.01.

use fedsql_tests::tpch::{copy_tables, load_mariadb, load_postgres, tpch_dir, TABLES};
use fedsql_tests::{fresh_postgres_database, try_text_rows, FedsqlServer};

/// `FEDSQL_TPCH_SCALE`, SF0.01 by default.
fn scale() -> String {
    std::env::var("FEDSQL_TPCH_SCALE").unwrap_or_else(|_| "0.01".to_string())
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

/// Runs the 22 queries on `reference` and on fedsql with pushdown on and
/// off; `rewrite` turns a query into what fedsql is sent.
async fn run_22(
    reference: &tokio_postgres::Client,
    on: &tokio_postgres::Client,
    off: &tokio_postgres::Client,
    rewrite: impl Fn(&str) -> String,
) -> Vec<String> {
    let mut failures = Vec::new();
    for n in 1..=22 {
        let name = format!("q{n}");
        let sql = std::fs::read_to_string(tpch_dir().join(format!("{name}.sql"))).unwrap();
        let want = try_text_rows(reference, &sql)
            .await
            .unwrap_or_else(|e| panic!("Postgres {name}: {e}"));
        assert!(!want.is_empty(), "{name} returns no rows in Postgres");
        let fedsql_sql = rewrite(&sql);
        for (mode, client) in [("pushdown on", on), ("pushdown off", off)] {
            let limit = std::time::Duration::from_secs(300);
            match tokio::time::timeout(limit, try_text_rows(client, &fedsql_sql)).await {
                Ok(Ok(got)) => failures.extend(compare(&name, mode, &want, &got)),
                Ok(Err(e)) => failures.push(format!("{name} ({mode}): {e}")),
                Err(_) => failures.push(format!("{name} ({mode}): no answer within {limit:?}")),
            }
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_22_queries_match_postgres_with_pushdown_on_and_off() {
    let (pg, url, _data) = load_postgres("fedsql_tpch", &TABLES, &scale()).await;
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

    let failures = run_22(&pg, &on, &off, str::to_string).await;
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // q4's EXISTS went to Postgres whole, its date filter with it (the
    // unparser once dropped that filter: see pushdown/semi_join.rs).
    let sent = rows_of(
        &admin,
        "SELECT query FROM fedsql.system.queries WHERE protocol = 'source' \
         AND query LIKE '%EXISTS%' AND query LIKE '%o_orderdate%' AND query LIKE '%GROUP BY%'",
    )
    .await;
    assert!(!sent.is_empty(), "q4 was not sent whole");

    // q9's six-table join goes whole, selecting only the six columns fedsql
    // computes with (not every column of every table).
    let sent = rows_of(
        &admin,
        "SELECT query FROM fedsql.system.queries WHERE protocol = 'source' \
         AND query LIKE '%green%' AND query LIKE '%JOIN%'",
    )
    .await;
    assert!(!sent.is_empty(), "q9's join was not sent whole");
    assert!(
        sent.iter()
            .all(|q| !q.contains("l_comment") && !q.contains("p_comment")),
        "{sent:?}"
    );
}

/// Tables that stay in Postgres in the split; the rest live in MariaDB.
const IN_POSTGRES: [&str; 2] = ["orders", "lineitem"];

/// Qualifies the TPC-H table names of `sql` with the source that holds
/// them: whole words outside string literals that follow `from`, `join` or
/// a comma (the TPC-H queries name tables only there; `nation` is also a
/// column alias in q8 and q9).
fn qualify_split(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 256);
    let mut word = String::new();
    let mut previous = String::new();
    let mut in_string = false;
    let flush = |word: &mut String, previous: &mut String, out: &mut String| {
        if word.is_empty() {
            return;
        }
        let lower = word.to_ascii_lowercase();
        let table_position = matches!(previous.as_str(), "from" | "join" | ",");
        if table_position && TABLES.contains(&lower.as_str()) {
            let source = if IN_POSTGRES.contains(&lower.as_str()) {
                "pg.public"
            } else {
                "wh.fedsql_tpch_wh"
            };
            out.push_str(&format!("{source}.{lower}"));
        } else {
            out.push_str(word);
        }
        *previous = lower;
        word.clear();
    };
    for c in sql.chars() {
        if in_string {
            out.push(c);
            in_string = c != '\'';
        } else if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut previous, &mut out);
            if !c.is_whitespace() {
                previous = c.to_string();
            }
            out.push(c);
            in_string = c == '\'';
        }
    }
    flush(&mut word, &mut previous, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_split_between_postgres_and_mariadb_over_odbc() {
    // The reference holds all eight tables; the split source only two.
    let (reference, _, data) = load_postgres("fedsql_tpch_ref", &TABLES, &scale()).await;
    let (pg, url) = fresh_postgres_database("fedsql_tpch_split").await;
    let schema = std::fs::read_to_string(tpch_dir().join("schema.sql")).unwrap();
    pg.batch_execute(&schema).await.unwrap();
    copy_tables(&pg, data.path(), &IN_POSTGRES).await;

    // The warehouse: the other six tables.
    let wh_tables: Vec<&str> = TABLES
        .iter()
        .copied()
        .filter(|t| !IN_POSTGRES.contains(t))
        .collect();
    let wh = load_mariadb("fedsql_tpch_wh", &wh_tables, data.path());

    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let admin = server.connect("demo").await;
    for create in [
        format!("CREATE SOURCE pg TYPE postgres OPTIONS (url '{url}')"),
        format!("CREATE SOURCE wh TYPE odbc OPTIONS (connection_string '{wh}', dialect 'mysql')"),
    ] {
        admin
            .simple_query(&create)
            .await
            .unwrap_or_else(|e| panic!("{create}: {e}"));
    }
    let on = server.connect("demo").await;
    let off = server.connect("demo").await;
    off.simple_query("SET fedsql.pushdown = off").await.unwrap();

    let failures = run_22(&reference, &on, &off, qualify_split).await;
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // MariaDB was sent MySQL-dialect SQL only.
    let sent = rows_of(
        &admin,
        "SELECT query FROM fedsql.system.queries WHERE protocol = 'source' AND database = 'wh'",
    )
    .await;
    assert!(!sent.is_empty());
    assert!(
        sent.iter().all(|q| q.contains('`') && !q.contains('"')),
        "{sent:?}"
    );
    // Text filters reach MariaDB loosely (its collation ignores case), e.g.
    // q5's region; fedsql re-applies them exactly.
    assert!(sent.iter().any(|q| q.contains("= 'ASIA'")), "{sent:?}");
    // q11 groups MariaDB's rows by part and nation, about one group per
    // row: no partial aggregate is worth it there (and none is sent).
    assert!(
        !sent.iter().any(|q| q.contains("__fedsql_partial_")),
        "{sent:?}"
    );

    // A join only fedsql can run, summing MariaDB's column: MariaDB's
    // statistics (its primary key's cardinality) show ~4 offers per part,
    // so the sum per part is computed there (pushdown/partial_aggregate.rs)
    // and fedsql joins 1 row per part instead of 4.
    let stock = "SELECT l_shipmode, sum(ps_availqty) AS stock, count(ps_suppkey) AS offers \
                 FROM lineitem JOIN partsupp ON l_partkey = ps_partkey \
                 WHERE l_shipdate = DATE '1995-03-15' GROUP BY l_shipmode ORDER BY l_shipmode";
    let want = try_text_rows(&reference, stock).await.unwrap();
    assert!(!want.is_empty());
    let split = qualify_split(stock);
    for (mode, client) in [("pushdown on", &on), ("pushdown off", &off)] {
        let got = try_text_rows(client, &split).await.unwrap();
        assert_eq!(compare("stock", mode, &want, &got), None);
    }
    let plan: Vec<String> = try_text_rows(&on, &format!("EXPLAIN {split}"))
        .await
        .unwrap()
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("sum(CAST(`partsupp`.`ps_availqty` AS SIGNED)) AS `__fedsql_partial_0`")
            && plan.contains("GROUP BY `partsupp`.`ps_partkey`"),
        "{plan}"
    );
}

async fn rows_of(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    try_text_rows(client, sql)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|mut r| r.remove(0))
        .collect()
}

#[test]
fn split_names_are_qualified_outside_strings() {
    assert_eq!(
        qualify_split(
            "select n_name as nation from nation, orders o join part on x where o.orders = 'from nation' group by nation"
        ),
        "select n_name as nation from wh.fedsql_tpch_wh.nation, pg.public.orders o join wh.fedsql_tpch_wh.part on x \
         where o.orders = 'from nation' group by nation"
    );
}
