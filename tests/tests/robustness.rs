//! No statement takes the server down: deep and complex statements, and a
//! panic inside one statement's execution, end that statement with an error
//! while the same server keeps answering every session. Run against the
//! dev-profile binary the tests build (the profile whose stack use is
//! highest).

use arrow_flight::sql::client::FlightSqlServiceClient;
use fedsql_tests::{error_message, sqlstate, FedsqlServer};
use futures::TryStreamExt;
use tonic::transport::Channel;

/// Checks that `server` is alive and serving a fresh session.
async fn still_serving(server: &mut FedsqlServer) {
    assert!(server.is_running(), "the server process exited");
    let other = server.connect("demo").await;
    let n: i64 = other
        .query_one("SELECT count(*) FROM bank.customers", &[])
        .await
        .expect("a new session is served")
        .get(0);
    assert!(n > 0);
}

fn chain(term: &str, op: &str, n: usize) -> String {
    vec![term; n].join(op)
}

#[tokio::test]
async fn deep_expressions_are_refused_with_54001_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;

    // Under the limit: a few hundred terms (what aborted a dev build before)
    // and a 1,500-term OR chain run and answer correctly.
    let sum: i64 = client
        .query_one(&format!("SELECT {}", chain("1", "+", 300)), &[])
        .await
        .expect("300-term sum")
        .get(0);
    assert_eq!(sum, 300);
    let ids = chain("customer_id = 7", " OR ", 1_500);
    let n: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM bank.customers WHERE {ids}"),
            &[],
        )
        .await
        .expect("1,500-term OR chain")
        .get(0);
    assert_eq!(n, 1);

    // Over it: depth 10,000 in several shapes, over the simple and the
    // extended protocol.
    let deep = [
        format!("SELECT {}", chain("1", "+", 10_000)),
        format!(
            "SELECT 1 FROM bank.customers WHERE {}",
            chain("age > 1", " AND ", 10_000)
        ),
        format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000)),
        format!("SELECT {}", chain("'a'", " || ", 10_000)),
    ];
    for sql in &deep {
        let e = client.simple_query(sql).await.expect_err("too deep");
        assert_eq!(
            sqlstate(&e),
            "54001",
            "{}: {}",
            &sql[..40],
            error_message(&e)
        );
        assert!(
            error_message(&e).contains("too complex"),
            "{}",
            error_message(&e)
        );
        let e = client.prepare(sql).await.expect_err("too deep to prepare");
        assert_eq!(sqlstate(&e), "54001", "{}", error_message(&e));
    }
    // Extended protocol with 65,535 parameters in one chain.
    let params: Vec<String> = (1..=65_535).map(|i| format!("${i}")).collect();
    let e = client
        .prepare(&format!("SELECT {}", params.join("+")))
        .await
        .expect_err("too deep to prepare");
    assert_eq!(sqlstate(&e), "54001", "{}", error_message(&e));

    // The same session goes on.
    let one: i64 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    still_serving(&mut server).await;

    // Over Flight SQL too.
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", server.flight_port))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut flight = FlightSqlServiceClient::new(channel);
    let e = flight
        .execute(deep[0].clone(), None)
        .await
        .expect_err("too deep over Flight SQL");
    assert!(e.to_string().contains("too complex"), "{e}");
    let info = flight.execute("SELECT 2".into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let batches: Vec<_> = flight
        .do_get(ticket)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    still_serving(&mut server).await;
}

#[tokio::test]
async fn a_union_of_200_aggregating_subqueries_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;
    let branches: Vec<String> = (0..200)
        .map(|i| {
            format!(
                "SELECT {i} AS branch, count(*) AS n, sum(t.amount) AS total \
                 FROM bank.transactions t \
                 WHERE t.customer_id IN (SELECT customer_id FROM bank.customers \
                                         WHERE age > {} AND region <> 'none') \
                 GROUP BY t.channel",
                18 + i % 50
            )
        })
        .collect();
    let sql = format!(
        "WITH per_branch AS ({}) SELECT count(DISTINCT branch), \
         CAST(sum(CASE WHEN branch = 0 THEN n END) AS BIGINT) FROM per_branch",
        branches.join(" UNION ALL ")
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .expect("200-branch report");
    let distinct: i64 = row.get(0);
    assert_eq!(distinct, 200);
    // Cross-check one branch's count against a query of its own.
    let first_total: i64 = row.get(1);
    let alone: i64 = client
        .query_one(
            "SELECT count(*) FROM bank.transactions t WHERE t.customer_id IN \
             (SELECT customer_id FROM bank.customers WHERE age > 18 AND region <> 'none')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(first_total > 0);
    assert_eq!(first_total, alone);
    still_serving(&mut server).await;
}

#[tokio::test]
async fn a_panic_in_one_statement_is_xx000_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut server =
        FedsqlServer::start_with_env(dir.path(), &[], &[("FEDSQL_DEBUG_PANIC_UDF", "1")]);
    let client = server.connect("demo").await;
    let queries = [
        // Constant-folded while planning.
        "SELECT fedsql_debug_panic('x')",
        // Evaluated per batch while rows stream.
        "SELECT fedsql_debug_panic(segment) FROM bank.customers",
        // Inside an aggregate's input, on DataFusion's spawned tasks.
        "SELECT count(fedsql_debug_panic(segment)) FROM bank.customers GROUP BY region",
    ];
    for sql in queries {
        let e = client.simple_query(sql).await.expect_err("panics");
        assert_eq!(sqlstate(&e), "XX000", "{sql}: {}", error_message(&e));
        assert!(error_message(&e).contains("bug"), "{}", error_message(&e));
        let e = client.query(sql, &[]).await.expect_err("panics");
        assert_eq!(sqlstate(&e), "XX000", "{sql}: {}", error_message(&e));
        // The session that saw the panic keeps working.
        let one: i64 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    }
    still_serving(&mut server).await;
}

#[tokio::test]
async fn oversized_statements_are_refused_and_crash_leftovers_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    // What kill -9 mid-write leaves behind.
    std::fs::create_dir_all(dir.path()).unwrap();
    std::fs::write(dir.path().join("catalog.json.tmp.4242"), b"{\"torn").unwrap();
    let mut server = FedsqlServer::start_with(dir.path(), &["--max-statement-bytes", "4096"]);
    assert!(!dir.path().join("catalog.json.tmp.4242").exists());
    let client = server.connect("demo").await;
    let big = format!("SELECT '{}'", "x".repeat(5000));
    let e = client.simple_query(&big).await.expect_err("too large");
    assert_eq!(sqlstate(&e), "54000", "{}", error_message(&e));
    assert!(error_message(&e).contains("max_statement_bytes"));
    let e = client
        .prepare(&big)
        .await
        .expect_err("too large to prepare");
    assert_eq!(sqlstate(&e), "54000", "{}", error_message(&e));
    // Under the limit it runs; the session and the server go on.
    let small = format!("SELECT '{}'", "x".repeat(3000));
    client.simple_query(&small).await.unwrap();
    still_serving(&mut server).await;
}
