//! `CREATE SOURCE … TYPE kafka` and Kafka external tables against a real
//! Kafka-protocol broker (tansu with SQLite storage, started by scripts/test).

use fedsql_tests::{
    create_topic, error_message as message, explain, fresh_postgres_database, produce,
    sqlstate as code, test_kafka, text_rows as rows, FedsqlServer, TestMessage,
};

/// 2024-01-01T00:00:00Z in milliseconds.
const BASE_MS: i64 = 1_704_067_200_000;

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

/// A topic name unique to this run (the broker outlives single tests).
fn topic(name: &str) -> String {
    format!("{name}_{}", std::process::id())
}

/// `n` payments over 3 partitions: message `i` goes to partition `i % 3`
/// with timestamp BASE + i seconds.
fn payments(n: i64, from: i64) -> Vec<TestMessage> {
    (from..from + n)
        .map(|i| {
            (
                (i % 3) as i32,
                BASE_MS + i * 1000,
                Some(format!("c{}", i % 5)),
                format!(
                    r#"{{"id": {i}, "customer_id": {}, "amount": {}, "merchant": "m{}", "detail": {{"channel": "web", "n": {i}}}}}"#,
                    i % 5 + 1,
                    i as f64 * 1.5,
                    i % 4
                ),
            )
        })
        .collect()
}

async fn server_with_kafka_source() -> (FedsqlServer, tempfile::TempDir, tokio_postgres::Client) {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;
    client
        .simple_query(&format!(
            "CREATE SOURCE k TYPE kafka OPTIONS (brokers '{}', sample 100)",
            test_kafka()
        ))
        .await
        .unwrap_or_else(|e| panic!("CREATE SOURCE: {}", message(&e)));
    (server, dir, client)
}

async fn one(client: &tokio_postgres::Client, sql: &str) -> Vec<Option<String>> {
    let mut all = rows(client, sql).await;
    assert_eq!(all.len(), 1, "{sql}: {all:?}");
    all.remove(0)
}

#[tokio::test]
async fn topics_are_tables_with_seeks_for_partition_offset_and_time() {
    let t = topic("payments");
    create_topic(&t, 3);
    produce(&t, &payments(30, 0));
    let (_server, _dir, f) = server_with_kafka_source().await;

    // Every topic is a table in k.public, listed like any other.
    let listed = rows(
        &f,
        &format!(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'k' \
             AND table_schema = 'public' AND table_name = '{t}'"
        ),
    )
    .await;
    assert_eq!(listed, vec![vec![s(&t)]]);
    let columns = rows(
        &f,
        &format!(
            "SELECT column_name, data_type FROM information_schema.columns \
             WHERE table_catalog = 'k' AND table_name = '{t}' ORDER BY ordinal_position"
        ),
    )
    .await;
    let names: Vec<_> = columns.iter().map(|c| c[0].clone().unwrap()).collect();
    assert_eq!(
        names,
        [
            "amount",
            "customer_id",
            "detail",
            "id",
            "merchant",
            "_partition",
            "_offset",
            "_timestamp",
            "_key"
        ]
        .map(String::from)
        .to_vec()
        .into_iter()
        .filter(|n| names.contains(n))
        .collect::<Vec<_>>(),
    );
    for meta in ["_partition", "_offset", "_timestamp", "_key", "detail"] {
        assert!(names.iter().any(|n| n == meta), "{meta} in {names:?}");
    }

    let table = format!("k.public.{t}");
    // A full scan: every message once.
    assert_eq!(
        one(
            &f,
            &format!("SELECT count(*), sum(id), sum(amount) FROM {table}")
        )
        .await,
        vec![s("30"), s("435"), s("652.5")]
    );
    // Exact rows and coordinates.
    let first = rows(
        &f,
        &format!(
            "SELECT id, _partition, _offset, _key, merchant, detail['n'], CAST(_timestamp AS VARCHAR) \
             FROM {table} WHERE id IN (0, 4, 29) ORDER BY id"
        ),
    )
    .await;
    assert_eq!(
        first,
        vec![
            vec![
                s("0"),
                s("0"),
                s("0"),
                s("c0"),
                s("m0"),
                s("0"),
                s("2024-01-01T00:00:00")
            ],
            vec![
                s("4"),
                s("1"),
                s("1"),
                s("c4"),
                s("m0"),
                s("4"),
                s("2024-01-01T00:00:04")
            ],
            vec![
                s("29"),
                s("2"),
                s("9"),
                s("c4"),
                s("m1"),
                s("29"),
                s("2024-01-01T00:00:29")
            ],
        ]
    );

    // _partition = / IN: only those partitions are read.
    let sql = format!(
        "SELECT count(*), min(_partition), max(_partition) FROM {table} WHERE _partition = 1"
    );
    assert_eq!(one(&f, &sql).await, vec![s("10"), s("1"), s("1")]);
    let plan = explain(&f, &sql).await;
    assert!(plan.contains("seeks=[p1: 0..10]"), "{plan}");
    let sql = format!("SELECT count(*) FROM {table} WHERE _partition IN (0, 2)");
    assert_eq!(one(&f, &sql).await, vec![s("20")]);
    assert!(explain(&f, &sql)
        .await
        .contains("seeks=[p0: 0..10, p2: 0..10]"));

    // _offset ranges are exact seeks in every partition.
    let sql = format!(
        "SELECT count(*), min(_offset), max(_offset) FROM {table} WHERE _offset BETWEEN 2 AND 4"
    );
    assert_eq!(one(&f, &sql).await, vec![s("9"), s("2"), s("4")]);
    assert!(explain(&f, &sql).await.contains("p0: 2..5"));
    let sql = format!("SELECT count(*) FROM {table} WHERE _offset >= 8 AND _partition = 2");
    assert_eq!(one(&f, &sql).await, vec![s("2")]);

    // _timestamp: a seek to the first message at or after the time.
    let since = |secs: i64| {
        format!(
            "SELECT count(*), min(id) FROM {table} WHERE _timestamp >= TIMESTAMP '2024-01-01 00:00:00' + INTERVAL '{secs} seconds'"
        )
    };
    assert_eq!(one(&f, &since(21)).await, vec![s("9"), s("21")]);
    let plan = explain(&f, &since(21)).await;
    assert!(
        plan.contains("p0: 7..10") && plan.contains("p1: 7..10") && plan.contains("p2: 7..10"),
        "{plan}"
    );
    // Before the first message: everything; after the last: nothing.
    assert_eq!(one(&f, &since(-3600)).await, vec![s("30"), s("0")]);
    assert_eq!(one(&f, &since(3600)).await, vec![s("0"), None]);
    let between = format!(
        "SELECT count(*) FROM {table} WHERE _timestamp BETWEEN TIMESTAMP '2024-01-01 00:00:05' AND TIMESTAMP '2024-01-01 00:00:09'"
    );
    assert_eq!(one(&f, &between).await, vec![s("5")]);

    // LIMIT: each partition stops early.
    assert_eq!(
        rows(&f, &format!("SELECT id FROM {table} LIMIT 4"))
            .await
            .len(),
        4
    );
    let plan = explain(
        &f,
        &format!("SELECT * FROM {table} WHERE _partition = 0 LIMIT 3"),
    )
    .await;
    assert!(plan.contains("limit=3 per partition"), "{plan}");

    // The offsets read are recorded.
    let logged = rows(
        &f,
        &format!(
            "SELECT query, rows FROM fedsql.system.queries WHERE protocol = 'source' AND database = 'k' \
             AND query LIKE 'kafka topic {t} partition 1 offsets 0..10%' AND rows = 10"
        ),
    )
    .await;
    assert!(!logged.is_empty(), "{logged:?}");
    assert!(
        logged[0][0]
            .as_deref()
            .unwrap()
            .contains("high watermark 10"),
        "{logged:?}"
    );
}

#[tokio::test]
async fn a_scan_reads_up_to_the_watermarks_captured_when_it_starts() {
    let t = topic("stream");
    create_topic(&t, 3);
    produce(&t, &payments(3000, 0));
    let (_server, _dir, f) = server_with_kafka_source().await;
    let table = format!("k.public.{t}");

    // Stream a full scan; once its first rows arrive (the query is planned,
    // the watermarks captured), produce more; the scan must not see them.
    use futures::StreamExt;
    let statement = f.prepare(&format!("SELECT id FROM {table}")).await.unwrap();
    let stream = f.query_raw(&statement, Vec::<String>::new()).await.unwrap();
    futures::pin_mut!(stream);
    let mut seen = 0;
    let mut produced = false;
    while let Some(row) = stream.next().await {
        row.unwrap();
        seen += 1;
        if !produced {
            let more = payments(600, 3000);
            tokio::task::spawn_blocking(move || {
                produce(&format!("stream_{}", std::process::id()), &more)
            })
            .await
            .unwrap();
            produced = true;
        }
    }
    assert_eq!(seen, 3000, "the scan read past its watermarks");
    // The next query sees the new messages.
    assert_eq!(
        one(&f, &format!("SELECT count(*) FROM {table}")).await,
        vec![s("3600")]
    );
}

#[tokio::test]
async fn a_topic_joins_postgres_and_the_demo_catalog() {
    let t = topic("joinpay");
    create_topic(&t, 3);
    produce(&t, &payments(30, 0));
    let (pg, url) = fresh_postgres_database("fedsql_kafka_join").await;
    pg.batch_execute(
        "CREATE TABLE customers (customer_id int8 PRIMARY KEY, name text); \
         INSERT INTO customers VALUES (1, 'Ada'), (2, 'Bo'), (3, 'Cy'), (4, 'Di'), (5, 'Ed');",
    )
    .await
    .unwrap();
    let (_server, _dir, f) = server_with_kafka_source().await;
    f.simple_query(&format!(
        "CREATE SOURCE pg TYPE postgres OPTIONS (url '{url}')"
    ))
    .await
    .unwrap();
    let got = rows(
        &f,
        &format!(
            "SELECT c.name, count(*), sum(p.amount), max(d.region IS NOT NULL) \
             FROM k.public.{t} p \
             JOIN pg.public.customers c ON c.customer_id = p.customer_id \
             JOIN demo.bank.customers d ON d.customer_id = p.customer_id \
             GROUP BY c.name ORDER BY c.name"
        ),
    )
    .await;
    assert_eq!(
        got,
        vec![
            vec![s("Ada"), s("6"), s("112.5"), s("t")],
            vec![s("Bo"), s("6"), s("121.5"), s("t")],
            vec![s("Cy"), s("6"), s("130.5"), s("t")],
            vec![s("Di"), s("6"), s("139.5"), s("t")],
            vec![s("Ed"), s("6"), s("148.5"), s("t")],
        ]
    );
}

#[tokio::test]
async fn malformed_messages_empty_and_missing_topics_and_an_unreachable_broker() {
    let bad = topic("bad");
    create_topic(&bad, 1);
    produce(
        &bad,
        &[
            (0, BASE_MS, None, r#"{"id": 1, "amount": 1.5}"#.into()),
            (0, BASE_MS + 1, None, r#"{"id": "#.into()),
            (
                0,
                BASE_MS + 2,
                None,
                r#"{"id": "two", "amount": 2.5}"#.into(),
            ),
            (0, BASE_MS + 3, None, r#"{"amount": 3.5}"#.into()),
            (0, BASE_MS + 4, None, r#"{"id": 5, "amount": 5.5}"#.into()),
        ],
    );
    let empty = topic("empty");
    create_topic(&empty, 2);
    let (server, dir, f) = server_with_kafka_source().await;

    // Fail (the default): the error names topic, partition and offset.
    let e = f
        .simple_query(&format!("SELECT * FROM k.public.{bad}"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22P02", "{}", message(&e));
    assert!(
        message(&e).contains(&format!("topic {bad} partition 0 offset 1")),
        "{}",
        message(&e)
    );

    // An explicit schema, skipping what does not fit it: bad JSON, a wrong
    // type and a missing NOT NULL field are skipped and counted.
    f.simple_query(&format!(
        "CREATE EXTERNAL TABLE payments_clean (id BIGINT NOT NULL, amount DOUBLE) STORED AS KAFKA \
         LOCATION 'kafka://{}/{bad}' OPTIONS ('format' 'json', 'on_error' 'skip')",
        test_kafka()
    ))
    .await
    .unwrap_or_else(|e| panic!("CREATE EXTERNAL TABLE: {}", message(&e)));
    let got = rows(
        &f,
        "SELECT id, amount, _offset FROM payments_clean ORDER BY id",
    )
    .await;
    assert_eq!(
        got,
        vec![
            vec![s("1"), s("1.5"), s("0")],
            vec![s("5"), s("5.5"), s("4")]
        ]
    );
    // A limit counts rows, not offsets, when messages are skipped.
    assert_eq!(
        rows(&f, "SELECT id FROM payments_clean LIMIT 2")
            .await
            .len(),
        2
    );
    let skipped = rows(
        &f,
        &format!(
            "SELECT error FROM fedsql.system.queries WHERE protocol = 'source' \
             AND query LIKE 'kafka topic {bad} partition 0%' AND error LIKE '%skipped%' LIMIT 1"
        ),
    )
    .await;
    assert_eq!(
        skipped,
        vec![vec![s("3 malformed messages skipped (on_error 'skip')")]]
    );

    // An empty topic: no rows, its coordinates still there.
    assert_eq!(
        one(&f, &format!("SELECT count(*) FROM k.public.{empty}")).await,
        vec![s("0")]
    );

    // A topic that does not exist.
    let e = f
        .simple_query("SELECT * FROM k.public.no_such_topic_here")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42P01", "{}", message(&e));

    // A broker that is not there.
    let port = fedsql_tests::free_port();
    let e = f
        .simple_query(&format!(
            "CREATE SOURCE gone TYPE kafka OPTIONS (brokers '127.0.0.1:{port}')"
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "08001", "{}", message(&e));
    assert!(
        message(&e).contains(&format!("127.0.0.1:{port}")),
        "{}",
        message(&e)
    );

    // The server keeps serving.
    assert_eq!(one(&f, "SELECT 1").await, vec![s("1")]);

    // The external table survives a restart; DROP TABLE forgets it.
    drop(f);
    server.stop();
    let server = FedsqlServer::start(dir.path());
    let f = server.connect("demo").await;
    assert_eq!(
        one(&f, "SELECT count(*) FROM payments_clean").await,
        vec![s("2")]
    );
    f.simple_query("DROP TABLE payments_clean").await.unwrap();
    drop(f);
    server.stop();
    let server = FedsqlServer::start(dir.path());
    let f = server.connect("demo").await;
    let e = f
        .simple_query("SELECT * FROM payments_clean")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42P01", "{}", message(&e));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_trained_on_a_topic_records_the_offsets_it_read() {
    let (_server, _dir, f) = server_with_kafka_source().await;
    // Created after the source: a topic joins when a query first names it.
    let t = topic("labelled");
    create_topic(&t, 3);
    let messages: Vec<TestMessage> = (0..600)
        .map(|i: i64| {
            let amount = (i * 37 % 100) as f64;
            (
                (i % 3) as i32,
                BASE_MS + i,
                None,
                format!(
                    r#"{{"amount": {amount}, "region": "{}", "label": {}}}"#,
                    if i % 2 == 0 { "north" } else { "south" },
                    amount > 50.0
                ),
            )
        })
        .collect();
    produce(&t, &messages);

    let trained = rows(
        &f,
        &format!(
            "TRAIN MODEL kmodel USING logistic_regression PREDICT label \
             FROM (SELECT amount, region, label FROM k.public.{t}) FEDERATED BY region \
             WITH (rounds = 2, learning_rate = 0.5)"
        ),
    )
    .await;
    assert_eq!(trained[0][1], s("1"), "{trained:?}");

    // Each partition's read is in the query log with the model version.
    let logged = rows(
        &f,
        &format!(
            "SELECT query FROM fedsql.system.queries WHERE protocol = 'source' \
             AND query LIKE 'kafka topic {t} %' ORDER BY query"
        ),
    )
    .await;
    let logged: Vec<String> = logged.into_iter().filter_map(|mut r| r.remove(0)).collect();
    let expected: Vec<String> = (0..3)
        .map(|p| {
            format!(
                "kafka topic {t} partition {p} offsets 0..200 (planned 0..200, high watermark 200) \
                 for model kmodel version 1"
            )
        })
        .collect();
    assert_eq!(logged, expected);

    // And stored with the version, so they outlive the log.
    let reads = one(
        &f,
        "SELECT array_to_string(input_reads, ' | ') FROM fedsql.system.models \
         WHERE model = 'kmodel' AND version = 1",
    )
    .await;
    let want: Vec<String> = expected
        .iter()
        .map(|q| {
            q.trim_end_matches(" for model kmodel version 1")
                .to_string()
        })
        .collect();
    assert_eq!(reads, vec![Some(want.join(" | "))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_goes_away_mid_scan_fails_the_query_with_08006() {
    use futures::StreamExt;
    let mut broker = fedsql_tests::PrivateBroker::start();
    let t = "big";
    fedsql_tests::create_topic_at(&broker.address, t, 1);
    // ~30 MB: more than the pipeline and the sockets buffer, so the scan is
    // still reading from the broker when it goes away.
    let filler = "x".repeat(1000);
    let messages: Vec<TestMessage> = (0..30_000)
        .map(|i| {
            (
                0,
                BASE_MS + i,
                None,
                format!(r#"{{"id": {i}, "filler": "{filler}"}}"#),
            )
        })
        .collect();
    fedsql_tests::produce_at(&broker.address, t, &messages);

    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let f = server.connect("demo").await;
    f.simple_query(&format!(
        "CREATE SOURCE doomed TYPE kafka OPTIONS (brokers '{}', sample 10, stall_timeout 3, \
         'queued.max.messages.kbytes' '256', 'max.partition.fetch.bytes' '65536', \
         'fetch.max.bytes' '1048576')",
        broker.address
    ))
    .await
    .unwrap_or_else(|e| panic!("CREATE SOURCE: {}", message(&e)));

    // The simple protocol streams rows as fedsql sends them.
    let stream = f
        .simple_query_raw(&format!("SELECT id, filler FROM doomed.public.{t}"))
        .await
        .unwrap();
    futures::pin_mut!(stream);
    loop {
        match stream.next().await.expect("a first row") {
            Ok(tokio_postgres::SimpleQueryMessage::Row(_)) => break,
            Ok(_) => {}
            Err(e) => panic!("first row: {}", message(&e)),
        }
    }
    broker.kill();

    let mut rows_read = 1;
    let error = loop {
        match stream.next().await {
            Some(Ok(tokio_postgres::SimpleQueryMessage::Row(_))) => rows_read += 1,
            Some(Ok(_)) => {}
            Some(Err(e)) => break e,
            None => panic!("the scan ended without an error after {rows_read} rows"),
        }
    };
    assert!(rows_read < 30_000);
    assert_eq!(code(&error), "08006", "{}", message(&error));
    assert!(
        message(&error).contains(&format!("topic {t} partition 0")),
        "{}",
        message(&error)
    );

    // The failed read is logged with how far it got; the server goes on.
    let other = server.connect("demo").await;
    let logged = one(
        &other,
        "SELECT query, sqlstate FROM fedsql.system.queries WHERE protocol = 'source' \
         AND database = 'doomed' AND query LIKE 'kafka topic big %'",
    )
    .await;
    assert_eq!(logged[1], s("08006"));
    assert!(
        !logged[0].as_deref().unwrap().contains("offsets 0..0 "),
        "{logged:?}"
    );
    assert_eq!(one(&other, "SELECT 1").await, vec![s("1")]);
}
