//! `CREATE SOURCE … TYPE postgres` against a real PostgreSQL 15.

use fedsql_tests::{
    error_message as message, explain, fresh_postgres_database, server_with_postgres_source,
    server_with_postgres_source_options, sqlstate as code, test_postgres, text_rows as rows,
    FedsqlServer,
};

#[tokio::test]
async fn types_round_trip_and_the_source_is_a_catalog() {
    let (_pg, _server, _dir, f) = server_with_postgres_source(
        "fedsql_types",
        "CREATE TABLE t (id int8 PRIMARY KEY, small int2, i int4, r float4, d float8, \
           n numeric(12, 2), big numeric, s text, v varchar(10), c char(3), b bool, day date, \
           at timestamp, atz timestamptz, bin bytea, u uuid, j jsonb, arr int4[]); \
         INSERT INTO t VALUES \
           (1, -2, 3, 1.5, 'NaN', 1234567890.12, 123456789012345678901234567890.123456789, \
            'żółw 🐢', 'x', 'ab', true, '2024-02-29', '2024-02-29 12:34:56.789', \
            '2024-02-29 12:34:56+02', '\\x00ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', \
            '{\"k\": [1, 2]}', '{1,2,3}'), \
           (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
    )
    .await;

    let got = rows(
        &f,
        "SELECT id, small, i, r, d, n, big, s, v, c, b, day, at, atz, u, j, arr, \
                arrow_typeof(n), arrow_typeof(big), arrow_typeof(atz), arrow_typeof(bin) \
         FROM pg.public.t ORDER BY id",
    )
    .await;
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        got[0],
        vec![
            s("1"),
            s("-2"),
            s("3"),
            s("1.5"),
            s("NaN"),
            s("1234567890.12"),
            s("123456789012345678901234567890.123456789"),
            s("żółw 🐢"),
            s("x"),
            s("ab"),
            s("t"),
            s("2024-02-29"),
            s("2024-02-29 12:34:56.789"),
            s("2024-02-29 10:34:56+00"),
            s("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            s("{\"k\": [1, 2]}"),
            s("{1,2,3}"),
            s("Decimal128(12, 2)"),
            s("Utf8"),
            s("Timestamp(µs, \"UTC\")"),
            s("Binary"),
        ]
    );
    assert!(got[1][1..17].iter().all(Option::is_none), "{:?}", got[1]);

    // Arrays arrive as lists: indexing and unnesting work in fedsql.
    let list = rows(
        &f,
        "SELECT arr[2], array_length(arr, 1), arrow_typeof(arr) FROM pg.public.t WHERE id = 1",
    )
    .await;
    assert_eq!(list[0][0], s("2"));
    assert_eq!(list[0][1], s("3"));
    assert!(
        list[0][2].as_deref().unwrap().starts_with("List("),
        "{list:?}"
    );

    // The source's tables are visible like any other catalog's.
    let listed = rows(
        &f,
        "SELECT table_catalog, table_schema, table_name FROM information_schema.tables WHERE table_catalog = 'pg' AND table_schema = 'public'",
    )
    .await;
    assert_eq!(listed, vec![vec![s("pg"), s("public"), s("t")]]);
    let shown = rows(&f, "SHOW SOURCES").await;
    assert_eq!(shown[0][0], s("pg"));
    assert_eq!(shown[0][1], s("postgres"));
}

#[tokio::test]
async fn filters_limits_joins_and_aggregates_are_pushed_down() {
    let (pg, _server, _dir, f) = server_with_postgres_source(
        "fedsql_pushdown",
        "CREATE TABLE accounts (customer_id int8, branch text, balance float8); \
         INSERT INTO accounts SELECT g, CASE WHEN g % 2 = 0 THEN 'north' ELSE 'south' END, g * 10.0 \
           FROM generate_series(1, 500) g; \
         CREATE TABLE branches (name text, city text); \
         INSERT INTO branches VALUES ('north', 'Oslo'), ('south', 'Rome');",
    )
    .await;

    // A same-source aggregate over a join is one remote query.
    let sql = "SELECT b.city, count(*), sum(a.balance) FROM pg.public.accounts a \
               JOIN pg.public.branches b ON a.branch = b.name WHERE a.balance > 100 GROUP BY b.city";
    let plan = explain(&f, sql).await;
    let remote = plan
        .lines()
        .find(|l| l.contains("VirtualExecutionPlan"))
        .unwrap_or_else(|| panic!("no remote query in:\n{plan}"));
    for part in ["JOIN", "GROUP BY", "count(", "sum(", "> 100"] {
        assert!(remote.contains(part), "remote SQL lacks {part}: {remote}");
    }
    let numeric = |rows: Vec<Vec<Option<String>>>| {
        let mut out: Vec<(String, i64, f64)> = rows
            .into_iter()
            .map(|r| {
                (
                    r[0].clone().unwrap(),
                    r[1].as_deref().unwrap().parse().unwrap(),
                    r[2].as_deref().unwrap().parse().unwrap(),
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    };
    let got = numeric(rows(&f, sql).await);
    let want = numeric(
        pg.query(
            "SELECT b.city, count(*)::text, sum(a.balance)::text FROM accounts a \
             JOIN branches b ON a.branch = b.name WHERE a.balance > 100 GROUP BY b.city",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (0..3).map(|i| r.get::<_, Option<String>>(i)).collect())
        .collect(),
    );
    assert_eq!(got, want);
    // The query sent is recorded, with what came back.
    let logged = rows(
        &f,
        "SELECT query, rows, bytes FROM fedsql.system.queries \
         WHERE protocol = 'source' AND database = 'pg' AND query LIKE '%GROUP BY%' ORDER BY query_id DESC LIMIT 1",
    )
    .await;
    let logged = logged
        .first()
        .expect("the remote aggregate is in fedsql.system.queries");
    assert!(logged[0].as_deref().unwrap().contains("JOIN"), "{logged:?}");
    assert_eq!(
        logged[1].as_deref(),
        Some("2"),
        "two groups came back: {logged:?}"
    );
    assert!(logged[2].as_deref().unwrap().parse::<i64>().unwrap() > 0);

    // The same answer with pushdown off, where fedsql reads plain tables.
    f.simple_query("SET fedsql.pushdown = off").await.unwrap();
    let plan = explain(&f, sql).await;
    assert!(
        !plan.contains("GROUP BY") && !plan.contains("WHERE"),
        "{plan}"
    );
    assert_eq!(numeric(rows(&f, sql).await), want);
    f.simple_query("SET fedsql.pushdown = on").await.unwrap();

    // What Postgres might answer differently stays local: ordering text
    // (collations) and DataFusion-only functions.
    let plan = explain(
        &f,
        "SELECT branch, arrow_typeof(balance) FROM pg.public.accounts WHERE customer_id < 5 ORDER BY branch",
    )
    .await;
    let remote = plan
        .lines()
        .find(|l| l.contains("VirtualExecutionPlan"))
        .unwrap();
    assert!(
        !remote.contains("ORDER BY") && !remote.contains("arrow_typeof"),
        "{remote}"
    );
    assert!(plan.contains("SortExec"), "{plan}");

    // Filters and LIMIT reach the source.
    let plan = explain(
        &f,
        "SELECT customer_id FROM pg.public.accounts WHERE branch = 'north' LIMIT 3",
    )
    .await;
    assert!(
        plan.contains("LIMIT 3") && plan.contains("'north'"),
        "{plan}"
    );

    // Joining with a local table sends only the remote table's scan; the
    // join and aggregate run in fedsql. (The filter on the remote side is not
    // pushed yet: see PolicyFederationRule::optimizer_rules.)
    let sql = "SELECT c.region, count(*) FROM pg.public.accounts a \
               JOIN demo.bank.customers c USING (customer_id) WHERE a.balance < 1000 GROUP BY 1";
    let plan = explain(&f, sql).await;
    let remote = plan
        .lines()
        .find(|l| l.contains("VirtualExecutionPlan"))
        .unwrap();
    assert!(remote.contains("\"accounts\""), "{remote}");
    assert!(
        !remote.contains("GROUP BY") && !remote.contains("customers"),
        "{remote}"
    );
    let got: i64 = rows(&f, &format!("SELECT sum(n) FROM ({sql}) AS x(region, n)")).await[0][0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        got, 99,
        "accounts 1..=99 have balance < 1000 and all are demo customers"
    );
}

#[tokio::test]
async fn awkward_names_and_literals_round_trip() {
    let (pg, _server, _dir, f) = server_with_postgres_source(
        "fedsql_names",
        r#"CREATE SCHEMA "Odd Schema";
           CREATE TABLE "Odd Schema"."select; DROP TABLE x" ("from" int, "it's" text, "ünï cödé" text, "a""b" text);
           INSERT INTO "Odd Schema"."select; DROP TABLE x" VALUES
             (1, 'O''Reilly', 'back\slash', 'q"uote'), (2, 'plain', 'ß', NULL);"#,
    )
    .await;
    let got = rows(
        &f,
        r#"SELECT "from", "it's", "ünï cödé", "a""b" FROM pg."Odd Schema"."select; DROP TABLE x"
           WHERE "it's" = 'O''Reilly' AND "ünï cödé" = 'back\slash'"#,
    )
    .await;
    assert_eq!(
        got,
        vec![vec![
            Some("1".to_string()),
            Some("O'Reilly".to_string()),
            Some("back\\slash".to_string()),
            Some("q\"uote".to_string())
        ]]
    );
    // The table is still there: nothing was injected.
    let n: i64 = pg
        .query_one(
            r#"SELECT count(*) FROM "Odd Schema"."select; DROP TABLE x""#,
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

#[tokio::test]
async fn source_errors_have_their_sqlstates_and_the_server_goes_on() {
    let (pg, url) = fresh_postgres_database("fedsql_errors").await;
    pg.batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (0);")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // scripts/test makes role fedsql_pw with password 'right-password'.
    let server = FedsqlServer::start_with_env(
        dir.path(),
        &[],
        &[("FEDSQL_TEST_WRONG_PW", "wrong-password")],
    );
    let f = server.connect("demo").await;

    // Nothing listens on port 1.
    let err = f
        .simple_query(
            "CREATE SOURCE down TYPE postgres OPTIONS (url 'postgres://postgres@127.0.0.1:1/x')",
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), "08001", "{err:?}");
    assert!(message(&err).contains("127.0.0.1:1"), "{}", message(&err));

    // A wrong password.
    let addr = test_postgres();
    let err = f
        .simple_query(&format!(
            "CREATE SOURCE bad TYPE postgres OPTIONS (url 'postgres://fedsql_pw@{addr}/postgres', password_env 'FEDSQL_TEST_WRONG_PW')"
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&err), "28P01", "{err:?}");
    assert!(message(&err).contains("source bad"), "{}", message(&err));

    // A password variable that is not set.
    let err = f
        .simple_query(&format!(
            "CREATE SOURCE bad TYPE postgres OPTIONS (url 'postgres://fedsql_pw@{addr}/postgres', password_env 'FEDSQL_TEST_NO_SUCH_VAR')"
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&err), "28P01", "{err:?}");
    assert!(
        message(&err).contains("FEDSQL_TEST_NO_SUCH_VAR"),
        "{}",
        message(&err)
    );

    // A password in the URL is refused so it never reaches the catalog file.
    let err = f
        .simple_query(&format!(
            "CREATE SOURCE bad TYPE postgres OPTIONS (url 'postgres://fedsql_pw:right-password@{addr}/postgres')"
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&err), "22023", "{err:?}");

    // A remote error keeps its SQLSTATE and names the source.
    f.simple_query(&format!(
        "CREATE SOURCE pg TYPE postgres OPTIONS (url '{url}')"
    ))
    .await
    .unwrap();
    let err = f
        .simple_query("SELECT 10 / x FROM pg.public.t")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "22012", "{err:?}");
    assert!(message(&err).starts_with("source pg:"), "{}", message(&err));

    // The session and the server keep serving.
    assert_eq!(
        rows(&f, "SELECT count(*) FROM pg.public.t").await[0][0].as_deref(),
        Some("2")
    );
    let other = server.connect("demo").await;
    assert_eq!(rows(&other, "SELECT 1").await[0][0].as_deref(), Some("1"));
    let stored = std::fs::read_to_string(dir.path().join("catalog.json")).unwrap();
    assert!(!stored.contains("right-password"));
}

/// A source that rejects the SQL it is sent (here: a login that may not
/// call `strpos`, the way a source can lack a function) still answers: the
/// sub-plan is planned again with plain scans and fedsql computes the rest.
#[tokio::test]
async fn a_query_the_source_rejects_falls_back_to_plain_scans() {
    let (pg, url) = fresh_postgres_database("fedsql_fallback").await;
    pg.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, name text); \
         INSERT INTO t SELECT g, 'name' || g FROM generate_series(1, 100) g; \
         DO $$ BEGIN CREATE ROLE fedsql_limited LOGIN; \
           EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
         GRANT SELECT ON t TO fedsql_limited; \
         REVOKE EXECUTE ON FUNCTION strpos(text, text) FROM PUBLIC;",
    )
    .await
    .unwrap();
    let limited = url.replacen("postgres://postgres@", "postgres://fedsql_limited@", 1);
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let f = server.connect("demo").await;
    f.simple_query(&format!(
        "CREATE SOURCE lim TYPE postgres OPTIONS (url '{limited}')"
    ))
    .await
    .unwrap();

    let query = "SELECT count(*), sum(strpos(name, '1')) FROM lim.public.t \
                 WHERE strpos(name, '1') > 0";
    let want = rows(
        &pg,
        "SELECT count(*)::text, sum(strpos(name, '1'))::text FROM t WHERE strpos(name, '1') > 0",
    )
    .await;
    assert_eq!(rows(&f, query).await, want);
    // Over the extended protocol too.
    let got = f.query(query, &[]).await.unwrap();
    assert_eq!(
        got[0].get::<_, i64>(0).to_string(),
        want[0][0].clone().unwrap()
    );

    // The source saw the whole query first, refused it, then plain scans.
    let log = rows(
        &f,
        "SELECT protocol, query, sqlstate FROM fedsql.system.queries \
         WHERE database = 'lim' ORDER BY query_id",
    )
    .await;
    let rejected = log
        .iter()
        .find(|r| r[0].as_deref() == Some("source") && r[2].as_deref() == Some("42501"));
    assert!(rejected.is_some(), "{log:?}");
    let fallback = log.iter().find(|r| r[0].as_deref() == Some("fallback"));
    let reason = fallback.and_then(|r| r[1].clone()).unwrap_or_default();
    assert!(
        reason.contains("42501") && reason.contains("strpos"),
        "{log:?}"
    );
    assert!(
        log.iter().any(|r| r[0].as_deref() == Some("source")
            && r[2].is_none()
            && !r[1].as_deref().unwrap_or("").contains("strpos")),
        "{log:?}"
    );

    // EXPLAIN ANALYZE says so.
    let plan = rows(&f, &format!("EXPLAIN ANALYZE {query}")).await;
    let plan = format!("{plan:?}");
    assert!(plan.contains("fell back to plain scans"), "{plan}");

    // Errors of the data are not rejections: they stay errors.
    let err = f
        .simple_query("SELECT 10 / (id - 1) FROM lim.public.t")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "22012", "{err:?}");
}

#[tokio::test]
async fn sources_survive_a_restart_and_drop_source_forgets_them() {
    let (pg, url) = fresh_postgres_database("fedsql_restart").await;
    pg.batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (7);")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    {
        let f = server.connect("demo").await;
        f.simple_query(&format!(
            "CREATE SOURCE pg TYPE postgres OPTIONS (url '{url}')"
        ))
        .await
        .unwrap();
        let err = f
            .simple_query(&format!(
                "CREATE SOURCE pg TYPE postgres OPTIONS (url '{url}')"
            ))
            .await
            .unwrap_err();
        assert_eq!(code(&err), "42710");
        f.simple_query(&format!(
            "CREATE SOURCE IF NOT EXISTS pg TYPE postgres OPTIONS (url '{url}')"
        ))
        .await
        .unwrap();
    }
    assert!(server.stop().success());
    let server = FedsqlServer::start(dir.path());
    let f = server.connect("demo").await;
    assert_eq!(
        rows(&f, "SELECT x FROM pg.public.t").await[0][0].as_deref(),
        Some("7")
    );
    // psql-style catalog listing sees the source's tables through pg_catalog
    // when connected to the source's database.
    let in_pg = server.connect("pg").await;
    let dt = rows(
        &in_pg,
        "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = 't'",
    )
    .await;
    assert!(!dt.is_empty());
    f.simple_query("DROP SOURCE pg").await.unwrap();
    let err = f
        .simple_query("SELECT x FROM pg.public.t")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "42P01");
    assert!(server.stop().success());
    let server = FedsqlServer::start(dir.path());
    let f = server.connect("demo").await;
    assert!(rows(&f, "SHOW SOURCES").await.is_empty());
}

#[tokio::test]
async fn sources_from_the_config_file() {
    let (pg, url) = fresh_postgres_database("fedsql_config").await;
    pg.batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (41), (1);")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fedsql.toml");
    std::fs::write(
        &config,
        format!("[[sources]]\nname = \"cfg\"\ntype = \"postgres\"\nurl = \"{url}\"\n"),
    )
    .unwrap();
    let server = FedsqlServer::start_with(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let f = server.connect("demo").await;
    assert_eq!(
        rows(&f, "SELECT sum(x) FROM cfg.public.t").await[0][0].as_deref(),
        Some("42")
    );
}

#[tokio::test]
async fn a_source_that_dies_mid_query_is_08006_and_the_server_goes_on() {
    let (pg, _server, _dir, f) = server_with_postgres_source(
        "fedsql_dies",
        "CREATE TABLE big AS SELECT g AS x, repeat('x', 100) AS pad FROM generate_series(1, 2000000) g;",
    )
    .await;
    // Read every row into fedsql (pushdown off), then cut the connection.
    f.simple_query("SET fedsql.pushdown = off").await.unwrap();
    let killer = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let killed = pg
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = 'fedsql' AND query LIKE 'COPY%' AND state = 'active'",
                    &[],
                )
                .await
                .unwrap();
            if !killed.is_empty() {
                return true;
            }
        }
        false
    });
    let err = f
        .simple_query("SELECT count(*), max(length(pad)) FROM pg.public.big")
        .await
        .unwrap_err();
    assert!(killer.await.unwrap(), "the scan was never seen running");
    assert_eq!(code(&err), "08006", "{}", message(&err));
    assert!(message(&err).contains("source pg"), "{}", message(&err));
    assert_eq!(rows(&f, "SELECT 1").await[0][0].as_deref(), Some("1"));
}

#[tokio::test]
async fn partitioned_scans_read_key_ranges_in_parallel() {
    let (_pg, _server, _dir, f) = server_with_postgres_source_options(
        "fedsql_partitions",
        "CREATE TABLE events (id int8 PRIMARY KEY, amount float8); \
         INSERT INTO events SELECT g, g * 0.5 FROM generate_series(1, 10000) g;",
        ", partitions 4",
    )
    .await;
    // With pushdown off the source serves a plain scan, which is split.
    f.simple_query("SET fedsql.pushdown = off").await.unwrap();
    let got = rows(
        &f,
        "SELECT count(*), sum(amount), count(DISTINCT id) FROM pg.public.events",
    )
    .await;
    assert_eq!(
        got[0],
        vec![
            Some("10000".into()),
            Some("25002500".into()),
            Some("10000".into())
        ]
    );
    let sent = rows(
        &f,
        "SELECT query, rows FROM fedsql.system.queries WHERE protocol = 'source' AND query LIKE '%\"id\" >=%'",
    )
    .await;
    assert_eq!(sent.len(), 4, "{sent:?}");
    let total: i64 = sent
        .iter()
        .map(|r| r[1].as_deref().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(total, 10_000, "the ranges are disjoint and cover the table");

    // DataFusion reads the scan as 4 partitions (4 Flight endpoints), one
    // range each; with pushdown on a plain filtered scan splits too.
    f.simple_query("SET fedsql.pushdown = on").await.unwrap();
    let sql = "SELECT id, amount FROM pg.public.events WHERE amount > 100";
    let plan = fedsql_tests::explain(&f, sql).await;
    assert!(plan.contains("PartitionedScanExec: partitions=4"), "{plan}");
    let got = rows(&f, &format!("SELECT count(*), min(id) FROM ({sql}) t")).await;
    assert_eq!(got[0], vec![Some("9800".into()), Some("201".into())]);
}

#[tokio::test]
async fn large_tables_are_split_without_being_asked() {
    let (_pg, _server, _dir, f) = server_with_postgres_source(
        "fedsql_auto_split",
        "CREATE TABLE big (id int4 PRIMARY KEY, v int4); \
         INSERT INTO big SELECT g, g % 7 FROM generate_series(1, 1100000) g; ANALYZE big;",
    )
    .await;
    f.simple_query("SET fedsql.pushdown = off").await.unwrap();
    let got = rows(&f, "SELECT count(*), sum(v) FROM pg.public.big").await;
    assert_eq!(got[0][0].as_deref(), Some("1100000"));
    let sent = rows(
        &f,
        "SELECT count(*), sum(rows) FROM fedsql.system.queries \
         WHERE protocol = 'source' AND query LIKE '%\"id\" >=%'",
    )
    .await;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores > 1 {
        assert_eq!(
            sent[0][0].as_deref(),
            Some(cores.to_string().as_str()),
            "{sent:?}"
        );
        assert_eq!(sent[0][1].as_deref(), Some("1100000"));
    } else {
        assert_eq!(sent[0][0].as_deref(), Some("0"), "one core: no split");
    }
}

#[tokio::test]
async fn refresh_source_discovers_new_tables() {
    let (pg, _server, _dir, f) = server_with_postgres_source(
        "fedsql_refresh",
        "CREATE TABLE first (id int8 PRIMARY KEY);",
    )
    .await;
    pg.batch_execute(
        "CREATE TABLE later (id int8, note text); INSERT INTO later VALUES (1, 'new')",
    )
    .await
    .unwrap();
    // Discovered at CREATE SOURCE: the new table is not there yet.
    let e = f
        .simple_query("SELECT note FROM pg.public.later")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42P01", "{}", message(&e));

    let done = f.simple_query("REFRESH SOURCE pg").await.unwrap();
    assert!(matches!(
        done.last(),
        Some(tokio_postgres::SimpleQueryMessage::CommandComplete(_))
    ));
    assert_eq!(
        rows(&f, "SELECT note FROM pg.public.later").await,
        vec![vec![Some("new".into())]]
    );
    let listed = rows(
        &f,
        "SELECT count(*) FROM information_schema.tables WHERE table_catalog = 'pg' \
         AND table_name IN ('first', 'later')",
    )
    .await;
    assert_eq!(listed, vec![vec![Some("2".into())]]);

    let e = f.simple_query("REFRESH SOURCE nope").await.unwrap_err();
    assert_eq!(code(&e), "42704", "{}", message(&e));
}

/// A join's build side narrows the other source's query: DataFusion's
/// dynamic join filter (the build side's keys) becomes `IN (…)` on the
/// remote scan when its stream starts, so only joining rows move — for a
/// plain scan and for each partition of a split one.
#[tokio::test]
async fn join_keys_narrow_the_remote_scan() {
    let (_pg, _server, _dir, f) = server_with_postgres_source_options(
        "fedsql_join_filter",
        "CREATE TABLE events (id int8 PRIMARY KEY, amount float8); \
         INSERT INTO events SELECT g, g * 0.5 FROM generate_series(1, 20000) g;",
        ", partitions 2",
    )
    .await;
    let sql = "SELECT e.id, e.amount FROM pg.public.events e \
               JOIN (VALUES (5), (17), (4242), (19999), (30000)) AS k(id) ON e.id = k.id \
               ORDER BY e.id";
    let got = rows(&f, sql).await;
    let ids: Vec<_> = got.iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(ids, ["5", "17", "4242", "19999"]);
    let sent = rows(
        &f,
        "SELECT query, rows FROM fedsql.system.queries WHERE protocol = 'source' \
         AND query LIKE '%IN (5, 17, 4242, 19999, 30000)%'",
    )
    .await;
    // Two partitions, each its key range of the narrowed scan.
    assert_eq!(sent.len(), 2, "{sent:?}");
    let moved: i64 = sent
        .iter()
        .map(|r| r[1].as_deref().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(moved, 4, "only the joining rows came over: {sent:?}");
}
