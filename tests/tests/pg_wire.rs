//! The Postgres wire, driven by tokio-postgres against the real binary.

use std::time::Duration;

use fedsql_tests::{sqlstate as code, FedsqlServer};
use tokio_postgres::error::{ErrorPosition, SqlState};
use tokio_postgres::SimpleQueryMessage;

const REGION_JOIN: &str = "SELECT c.region, count(*), avg(t.amount) \
    FROM demo.bank.transactions t JOIN demo.bank.customers c USING (customer_id) GROUP BY 1";

fn position(e: &tokio_postgres::Error) -> Option<u32> {
    match e.as_db_error()?.position()? {
        ErrorPosition::Original(p) => Some(*p),
        ErrorPosition::Internal { .. } => None,
    }
}

#[tokio::test]
async fn join_and_aggregate_over_the_demo_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;

    let rows = client.query(REGION_JOIN, &[]).await.unwrap();
    let mut regions: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    regions.sort();
    assert_eq!(regions, ["apac", "eu", "us"]);

    // The per-region counts add up to the whole table, counted separately.
    let per_region: i64 = rows.iter().map(|r| r.get::<_, i64>(1)).sum();
    let total: i64 = client
        .query_one("SELECT count(*) FROM bank.transactions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(per_region, total);
    assert_eq!(total, 20_000);

    // Averages agree with sum/count computed by a different query.
    for row in &rows {
        let region: String = row.get(0);
        let avg: f64 = row.get(2);
        let check = client
            .query_one(
                "SELECT sum(t.amount) / count(*) FROM demo.bank.transactions t \
                 WHERE t.customer_id IN (SELECT customer_id FROM demo.bank.customers WHERE region = $1)",
                &[&region],
            )
            .await
            .unwrap();
        let expected: f64 = check.get(0);
        assert!(
            (avg - expected).abs() < 1e-6,
            "{region}: {avg} vs {expected}"
        );
    }
}

#[tokio::test]
async fn extended_protocol_binds_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;

    let statement = client
        .prepare("SELECT count(*) FROM bank.customers WHERE region = $1 AND age >= $2")
        .await
        .unwrap();
    let mut total = 0i64;
    for region in ["eu", "us", "apac"] {
        let bound: i64 = client
            .query_one(&statement, &[&region, &18i32])
            .await
            .unwrap()
            .get(0);
        let literal = client
            .simple_query(&format!(
                "SELECT count(*) FROM bank.customers WHERE region = '{region}' AND age >= 18"
            ))
            .await
            .unwrap();
        let literal: i64 = literal
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
                _ => None,
            })
            .unwrap();
        assert_eq!(bound, literal, "{region}");
        total += bound;
    }
    assert_eq!(total, 2_000);
}

/// An extended-protocol query streams its rows: those before a late error
/// reach the client before the error does (a server that collected the
/// result first would send only the error), and the session goes on.
#[tokio::test]
async fn extended_protocol_streams_rows_ahead_of_a_late_error() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;
    let statement = client
        .prepare("SELECT 100 / (value - 150000) AS v FROM generate_series(1, 200000)")
        .await
        .unwrap();
    let rows = client
        .query_raw(&statement, Vec::<String>::new())
        .await
        .unwrap();
    futures::pin_mut!(rows);
    let mut received = 0;
    let error = loop {
        match rows.next().await {
            Some(Ok(_)) => received += 1,
            Some(Err(e)) => break e,
            None => panic!("the division by zero at row 150000 was not reported"),
        }
    };
    assert_eq!(code(&error), "22012", "{error}");
    assert!(
        received > 100_000 && received < 150_000,
        "{received} rows arrived before the error"
    );
    let one = client.query_one("SELECT 1::INT", &[]).await.unwrap();
    assert_eq!(one.get::<_, i32>(0), 1);
}

#[tokio::test]
async fn syntax_error_has_position_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;

    let err = client
        .simple_query("SELECT region FORM bank.customers")
        .await
        .unwrap_err();
    // Like Postgres: `FORM` reads as an alias, so the error is at `bank`.
    assert_eq!(code(&err), "42601", "{err:?}");
    assert_eq!(position(&err), Some(20), "{err:?}");

    // The same error through the extended protocol.
    let err = client.query("SELEC 1", &[]).await.unwrap_err();
    assert_eq!(code(&err), "42601");
    assert_eq!(position(&err), Some(1));

    let ok: i64 = client
        .query_one("SELECT count(*) FROM bank.customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ok, 2_000);
}

#[tokio::test]
async fn unknown_table_and_column_have_their_sqlstates() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;

    let err = client
        .simple_query("SELECT * FROM bank.no_such_table")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "42P01");
    assert_eq!(position(&err), Some(20));

    let err = client
        .query("SELECT no_such_column FROM bank.customers", &[])
        .await
        .unwrap_err();
    assert_eq!(code(&err), "42703");
    assert_eq!(position(&err), Some(8));

    let err = client
        .simple_query("SELECT 1 + 'x'::int")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "22P02", "{err:?}");
}

#[tokio::test]
async fn unknown_database_is_refused_and_postgres_means_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let err = tokio_postgres::connect(&server.conn_str("nope"), tokio_postgres::NoTls)
        .await
        .err()
        .expect("unknown database must be refused");
    assert_eq!(code(&err), "3D000");

    let client = server.connect("postgres").await;
    let db: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(db, "demo");
}

#[tokio::test]
async fn cancel_stops_a_simple_query_whose_rows_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;
    let cancel = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cancel.cancel_query(tokio_postgres::NoTls).await
    });
    // 400 million rows whose first arrives at once: the rows are streaming
    // when the cancel request comes.
    let started = std::time::Instant::now();
    let err = client
        .simple_query(
            "SELECT a.tx_id FROM demo.bank.transactions a CROSS JOIN demo.bank.transactions b",
        )
        .await
        .unwrap_err();
    canceller.await.unwrap().unwrap();
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(60));
    let one: i64 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn cancel_stops_a_running_query_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;
    let cancel = client.cancel_token();

    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cancel.cancel_query(tokio_postgres::NoTls).await
    });
    // 20,000 × 20,000 rows: minutes of work in a debug build.
    let started = std::time::Instant::now();
    let err = client
        .simple_query(
            "SELECT count(*) FROM demo.bank.transactions a CROSS JOIN demo.bank.transactions b \
             WHERE a.amount + b.amount > 1e9",
        )
        .await
        .unwrap_err();
    canceller.await.unwrap().unwrap();
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(30));

    let one: i32 = client.query_one("SELECT 1::int", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn fedsql_statements_run_or_say_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;

    // Parsed by fedsql's front, not yet backed by a capability: 0A000.
    // Sites that were never created are unknown objects (42704).
    let err = client
        .simple_query(
            "TRAIN MODEL fraud USING logistic_regression PREDICT is_fraud \
             FROM (SELECT amount, is_fraud, c.region FROM demo.bank.transactions t JOIN demo.bank.customers c USING (customer_id)) \
             FEDERATED ON SITES ('eu', 'us')",
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), "42704", "{err:?}");
    for sql in ["CREATE SOURCE f TYPE flightsql OPTIONS (url 'http://127.0.0.1:1')"] {
        let err = client.simple_query(sql).await.unwrap_err();
        assert_eq!(code(&err), "0A000", "{sql}: {err:?}");
        let message = err.as_db_error().unwrap().message();
        assert!(
            message.contains("FEDERATED ON SITES") || message.contains("CREATE SOURCE"),
            "{message}"
        );
    }

    // A malformed fedsql statement is a syntax error with a position.
    let err = client
        .simple_query("TRAIN MODEL m USING mlp PREDICT y FROM t FEDERATED region")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "42601");
    assert_eq!(position(&err), Some(52));

    // Statements that work now, in both protocols.
    let rows = client.query("SHOW SOURCES", &[]).await.unwrap();
    assert!(rows.is_empty());
    let described = client.prepare("SHOW SOURCES").await.unwrap();
    let columns: Vec<&str> = described.columns().iter().map(|c| c.name()).collect();
    assert_eq!(columns, ["name", "type", "options", "created_at"]);
    let err = client.simple_query("DROP SOURCE nope").await.unwrap_err();
    assert_eq!(code(&err), "42704");
    client
        .simple_query("DROP SOURCE IF EXISTS nope")
        .await
        .unwrap();
    let err = client.execute("DROP SOURCE demo", &[]).await.unwrap_err();
    assert_eq!(code(&err), "0A000");
}

#[tokio::test]
async fn multi_statement_simple_query_stops_at_the_first_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;

    let err = client
        .simple_query(
            "CREATE VIEW v1 AS SELECT 1 AS x; SELECT * FROM nope; CREATE VIEW v2 AS SELECT 2 AS y",
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), "42P01");
    // Position counts from the start of the whole query string.
    assert_eq!(position(&err), Some(48));
    client.simple_query("SELECT * FROM v1").await.unwrap();
    let err = client.simple_query("SELECT * FROM v2").await.unwrap_err();
    assert_eq!(code(&err), "42P01");
}

#[tokio::test]
async fn system_queries_records_statements_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;
    client.simple_query("SELECT 41 + 1").await.unwrap();
    let _ = client.simple_query("SELECT * FROM bank.nope").await;
    let rows = client
        .query(
            "SELECT query, status, sqlstate FROM fedsql.system.queries \
             WHERE query IN ('SELECT 41 + 1', 'SELECT * FROM bank.nope') ORDER BY query_id",
            &[],
        )
        .await
        .unwrap();
    let seen: Vec<(String, String, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        seen,
        [
            ("SELECT 41 + 1".to_string(), "ok".to_string(), None),
            (
                "SELECT * FROM bank.nope".to_string(),
                "error".to_string(),
                Some("42P01".to_string())
            ),
        ]
    );
}

#[tokio::test]
async fn one_sessions_error_does_not_affect_another() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let a = server.connect("demo").await;
    let b = server.connect("fedsql").await;
    let _ = a.simple_query("SELEC broken").await.unwrap_err();
    a.simple_query("SET datafusion.execution.batch_size = 7")
        .await
        .unwrap();
    let n: i64 = b
        .query_one("SELECT count(*) FROM demo.bank.customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2_000);
    // Settings are per session: b still has the default batch size.
    let shown = b
        .simple_query("SHOW datafusion.execution.batch_size")
        .await
        .unwrap();
    let value = shown.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(r.len() - 1).map(str::to_string),
        _ => None,
    });
    let value = value.expect("SHOW returns the setting");
    assert_ne!(value, "7", "a's SET leaked into b's session");
}

#[tokio::test]
async fn views_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    {
        let client = server.connect("demo").await;
        client
            .simple_query(
                "CREATE VIEW big_spenders AS SELECT customer_id, sum(amount) AS total \
                 FROM bank.transactions GROUP BY customer_id HAVING sum(amount) > 5000",
            )
            .await
            .unwrap();
        client
            .simple_query("CREATE VIEW gone AS SELECT 1 AS x")
            .await
            .unwrap();
        client.simple_query("DROP VIEW gone").await.unwrap();
    }
    let before: i64 = {
        let client = server.connect("demo").await;
        client
            .query_one("SELECT count(*) FROM big_spenders", &[])
            .await
            .unwrap()
            .get(0)
    };
    let status = server.stop();
    assert!(status.success(), "fedsql exited with {status} on SIGTERM");

    let server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;
    let after: i64 = client
        .query_one("SELECT count(*) FROM demo.public.big_spenders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, after);
    assert!(after > 0);
    let err = client.simple_query("SELECT * FROM gone").await.unwrap_err();
    assert_eq!(code(&err), "42P01");
}
