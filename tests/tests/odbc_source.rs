//! `CREATE SOURCE … TYPE odbc` against real drivers: SQLite3 (a file made
//! here), psqlODBC against the test PostgreSQL and MariaDB Connector/ODBC
//! against the test MariaDB (both started by scripts/test).

use fedsql_tests::{
    error_message as message, explain, fresh_mariadb_database, fresh_postgres_database,
    odbc_execute, odbc_scalar, postgres_odbc_string, sqlstate as code, test_mariadb,
    text_rows as rows, try_text_rows, FedsqlServer,
};

type Rows = Vec<Vec<Option<String>>>;

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

/// The SQL a source was sent, oldest first.
async fn remote_queries(client: &tokio_postgres::Client, source: &str) -> Vec<String> {
    rows(
        client,
        &format!(
            "SELECT query FROM fedsql.system.queries WHERE protocol = 'source' \
             AND database = '{source}' ORDER BY query_id"
        ),
    )
    .await
    .into_iter()
    .filter_map(|mut r| r.remove(0))
    .collect()
}

async fn last_remote_query(client: &tokio_postgres::Client, source: &str) -> String {
    remote_queries(client, source)
        .await
        .pop()
        .unwrap_or_else(|| panic!("no query was sent to {source}"))
}

async fn server_with_odbc_source(
    name: &str,
    connection_string: &str,
) -> (FedsqlServer, tempfile::TempDir, tokio_postgres::Client) {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;
    client
        .simple_query(&format!(
            "CREATE SOURCE {name} TYPE odbc OPTIONS (connection_string '{}')",
            connection_string.replace('\'', "''")
        ))
        .await
        .unwrap_or_else(|e| panic!("CREATE SOURCE {name}: {}", message(&e)));
    (server, dir, client)
}

#[tokio::test]
async fn sqlite_types_quoting_and_pushdown() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shop.sqlite");
    let conn = format!("Driver={{SQLite3}};Database={};", file.display());
    odbc_execute(
        &conn,
        &[
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price DECIMAL(10,2), \
               score DOUBLE, qty BIGINT, day DATE, at TIMESTAMP, flag BOOLEAN)",
            "INSERT INTO items VALUES (1, 'café ☕', 12.50, 1.5, 9000000000, '2024-02-29', \
               '2024-02-29 12:34:56.789', 1)",
            "INSERT INTO items VALUES (2, 'it''s \\ \"here\"', NULL, NULL, -3, NULL, NULL, 0)",
            "INSERT INTO items VALUES (3, 'bob', 0.01, -1e300, 0, '1999-12-31', '1999-12-31 23:59:59', NULL)",
            "INSERT INTO items VALUES (4, 'Bob', 7, 2.25, 4, '2000-01-01', '2000-01-01 00:00:00', 1)",
            "CREATE TABLE \"odd \"\"name\"\"; DROP TABLE items; --\" \
               (\"select\" INTEGER, \"Mixed Case\" TEXT, \"ünïcode\" TEXT)",
            "INSERT INTO \"odd \"\"name\"\"; DROP TABLE items; --\" VALUES (1, 'a', 'ü'), (2, 'b', NULL)",
        ],
    );
    let (_server, _dir, f) = server_with_odbc_source("lite", &conn).await;

    // The source is a catalog: tables listed like any other.
    let tables = rows(
        &f,
        "SELECT table_schema, table_name FROM information_schema.tables \
         WHERE table_catalog = 'lite' AND table_schema <> 'information_schema' ORDER BY table_name",
    )
    .await;
    assert_eq!(
        tables,
        vec![
            vec![s("main"), s("items")],
            vec![s("main"), s("odd \"name\"; DROP TABLE items; --")],
        ]
    );

    let got = rows(
        &f,
        "SELECT id, name, price, score, qty, day, at, flag, \
                arrow_typeof(id), arrow_typeof(price), arrow_typeof(day), arrow_typeof(at) \
         FROM lite.main.items ORDER BY id",
    )
    .await;
    assert_eq!(
        got[0],
        vec![
            s("1"),
            s("café ☕"),
            s("12.50"),
            s("1.5"),
            s("9000000000"),
            s("2024-02-29"),
            s("2024-02-29 12:34:56.789"),
            s("t"),
            s("Int64"),
            s("Decimal128(10, 2)"),
            s("Date32"),
            s("Timestamp(µs)"),
        ]
    );
    assert_eq!(got[1][1], s("it's \\ \"here\""));
    assert!(
        [2, 3, 5, 6].iter().all(|&i| got[1][i].is_none()),
        "{:?}",
        got[1]
    );
    assert_eq!(got[2][3], s("-1e+300"));

    // Quotes, backslashes and semicolons in identifiers and literals round-trip.
    let odd = rows(
        &f,
        "SELECT \"select\", \"Mixed Case\", \"ünïcode\" \
         FROM lite.main.\"odd \"\"name\"\"; DROP TABLE items; --\" WHERE \"select\" = 1",
    )
    .await;
    assert_eq!(odd, vec![vec![s("1"), s("a"), s("ü")]]);
    let quoted = rows(
        &f,
        "SELECT id FROM lite.main.items WHERE name = 'it''s \\ \"here\"'",
    )
    .await;
    assert_eq!(quoted, vec![vec![s("2")]]);
    let sent = last_remote_query(&f, "lite").await;
    assert!(
        sent.contains("WHERE"),
        "text equality is pushed to SQLite: {sent}"
    );

    // SQLite's LIKE ignores case; DataFusion's does not. It stays local.
    let like = rows(
        &f,
        "SELECT id FROM lite.main.items WHERE name LIKE 'B%' ORDER BY id",
    )
    .await;
    assert_eq!(like, vec![vec![s("4")]]);
    let sent = last_remote_query(&f, "lite").await;
    assert!(!sent.to_ascii_uppercase().contains("LIKE"), "{sent}");

    // A whole aggregate is one remote query, in SQLite's quoting.
    let agg = rows(
        &f,
        "SELECT count(*), sum(qty) FROM lite.main.items WHERE qty >= 0",
    )
    .await;
    assert_eq!(agg, vec![vec![s("3"), s("9000000004")]]);
    let sent = last_remote_query(&f, "lite").await;
    assert!(
        sent.contains("count(") && sent.contains("sum(\"items\".\"qty\")"),
        "{sent}"
    );

    // Generated names over the source's own table names: an aggregate of an
    // expression, and a scalar subquery over the same table, plan and run.
    let having = rows(
        &f,
        "SELECT flag, sum(qty * (1 - id)) AS s FROM lite.main.items GROUP BY flag \
         HAVING sum(qty * (1 - id)) < (SELECT max(qty * (1 - id)) FROM lite.main.items) ORDER BY flag",
    )
    .await;
    assert_eq!(having, vec![vec![s("t"), s("-12")], vec![None, s("0")]]);

    // Pushdown off: the same answers from plain scans.
    f.simple_query("SET fedsql.pushdown = off").await.unwrap();
    let agg_off = rows(
        &f,
        "SELECT count(*), sum(qty) FROM lite.main.items WHERE qty >= 0",
    )
    .await;
    assert_eq!(agg_off, agg);
    let sent = last_remote_query(&f, "lite").await;
    assert!(!sent.contains("sum("), "{sent}");
}

#[tokio::test]
async fn psqlodbc_types_round_trip() {
    let (pg, _url) = fresh_postgres_database("fedsql_odbc_types").await;
    pg.batch_execute(
        "CREATE TABLE t (id int8 PRIMARY KEY, small int2, i int4, r float4, d float8, \
           n numeric(12, 2), big numeric, s text, v varchar(10), c char(3), b bool, day date, \
           at timestamp, atz timestamptz, tm time, bin bytea, j jsonb); \
         INSERT INTO t VALUES \
           (1, -32768, 2147483647, 1.5, 'NaN', 1234567890.12, 123456789012345678901234567890.123456789, \
            'żółw 🐢', 'x', 'ab', true, '2024-02-29', '2024-02-29 12:34:56.789', \
            '2024-02-29 12:34:56+02', '23:59:59.5', '\\x00ff', '{\"k\": [1, 2]}'), \
           (2, NULL, NULL, '-Infinity', 'Infinity', NULL, NULL, NULL, NULL, NULL, false, NULL, NULL, NULL, NULL, NULL, NULL), \
           (3, NULL, NULL, NULL, 1.7976931348623157e308, -0.01, -5, '', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
    )
    .await
    .unwrap();
    let (_server, _dir, f) =
        server_with_odbc_source("pgo", &postgres_odbc_string("fedsql_odbc_types")).await;
    let got = rows(
        &f,
        "SELECT id, small, i, r, d, n, big, s, v, c, b, day, at, atz, tm, bin, j, \
                arrow_typeof(d), arrow_typeof(n), arrow_typeof(big), arrow_typeof(atz) \
         FROM pgo.public.t ORDER BY id",
    )
    .await;
    assert_eq!(
        got[0],
        vec![
            s("1"),
            s("-32768"),
            s("2147483647"),
            s("1.5"),
            s("NaN"),
            s("1234567890.12"),
            s("123456789012345678901234567890.123456789"),
            s("żółw 🐢"),
            s("x"),
            s("ab "),
            s("t"),
            s("2024-02-29"),
            s("2024-02-29 12:34:56.789"),
            s("2024-02-29 10:34:56+00"),
            s("23:59:59.5"),
            s("\\x00ff"),
            s("{\"k\": [1, 2]}"),
            // float8 stays f64 (bound by its described SQL type), the zone is kept.
            s("Float64"),
            s("Decimal128(12, 2)"),
            s("Utf8"),
            s("Timestamp(µs, \"UTC\")"),
        ]
    );
    // (Infinities are written `Infinity`, as Postgres does.)
    let float = |v: &Option<String>| v.as_deref().unwrap().parse::<f64>().unwrap();
    assert_eq!(float(&got[1][3]), f64::NEG_INFINITY);
    assert_eq!(float(&got[1][4]), f64::INFINITY);
    assert_eq!(got[1][10], s("f"));
    assert_eq!(got[2][4], s("1.7976931348623157e+308"));
    assert_eq!(got[2][5], s("-0.01"));
    assert_eq!(got[2][7], s(""), "empty text is not NULL");
    assert!(got[1][5..10].iter().all(Option::is_none), "{:?}", got[1]);

    // Postgres dialect: text equality and aggregates are pushed, quoted.
    let agg = rows(
        &f,
        "SELECT b, count(*), sum(i) FROM pgo.public.t WHERE s = 'żółw 🐢' OR s IS NULL GROUP BY b ORDER BY b",
    )
    .await;
    assert_eq!(
        agg,
        vec![
            vec![s("f"), s("1"), None],
            vec![s("t"), s("1"), s("2147483647")]
        ]
    );
    let sent = last_remote_query(&f, "pgo").await;
    assert!(
        sent.contains("GROUP BY") && sent.contains("\"t\".\"s\" = 'żółw 🐢'"),
        "{sent}"
    );
}

#[tokio::test]
async fn mariadb_types_and_mysql_dialect() {
    let conn = fresh_mariadb_database("fedsql_odbc_types");
    odbc_execute(
        &conn,
        &[
            "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50), price DECIMAL(10,2), \
               score DOUBLE, f FLOAT, qty BIGINT, u INT UNSIGNED, day DATE, at DATETIME(6), \
               ts TIMESTAMP(6) NULL, t TIME, big DECIMAL(65,10), bin VARBINARY(20))",
            "INSERT INTO items VALUES (1, 'café ☕', 12.50, 1.5, 2.5, 9000000000, 4000000000, \
               '2024-02-29', '2024-02-29 12:34:56.789', '2024-02-29 12:34:56', '12:34:56', \
               12345678901234567890.0123456789, X'00FF')",
            "INSERT INTO items VALUES (2, 'Bob', NULL, NULL, NULL, -3, 0, NULL, NULL, NULL, NULL, NULL, NULL)",
            "INSERT INTO items VALUES (3, 'bob ', 0.01, -1e300, 0, 0, 1, '1999-12-31', \
               '1999-12-31 23:59:59.123456', '1999-12-31 23:59:59.123456', '00:00:00', 0, X'')",
            "INSERT INTO items VALUES (4, 'bob', 7, 2.25, -1, 4, 2, '2000-01-01', \
               '2000-01-01 00:00:00', '2000-01-01 00:00:00', '23:59:59', -1, NULL)",
        ],
    );
    let (_server, _dir, f) = server_with_odbc_source("wh", &conn).await;
    let got = rows(
        &f,
        "SELECT id, name, price, score, f, qty, u, day, at, ts, t, big, bin, \
                arrow_typeof(u), arrow_typeof(ts), arrow_typeof(big) \
         FROM wh.fedsql_odbc_types.items ORDER BY id",
    )
    .await;
    assert_eq!(
        got[0],
        vec![
            s("1"),
            s("café ☕"),
            s("12.50"),
            s("1.5"),
            s("2.5"),
            s("9000000000"),
            s("4000000000"),
            s("2024-02-29"),
            s("2024-02-29 12:34:56.789"),
            s("2024-02-29 12:34:56+00"),
            s("12:34:56"),
            s("12345678901234567890.0123456789"),
            s("\\x00ff"),
            s("Int64"),
            s("Timestamp(µs, \"UTC\")"),
            s("Utf8"),
        ]
    );
    assert!(got[1][2..5].iter().all(Option::is_none), "{:?}", got[1]);
    assert_eq!(got[2][3], s("-1e+300"));

    // MariaDB compares text case- and trailing-space-insensitively: it is
    // sent `name = 'bob'` as a loose filter (its 'Bob' and 'bob ' match
    // too) and fedsql applies the exact one, finding only 'bob'.
    let exact = rows(
        &f,
        "SELECT id FROM wh.fedsql_odbc_types.items WHERE name = 'bob' ORDER BY id",
    )
    .await;
    assert_eq!(exact, vec![vec![s("4")]]);
    let sent = last_remote_query(&f, "wh").await;
    assert!(
        sent.contains("= 'bob'"),
        "the loose filter reaches MariaDB: {sent}"
    );
    let received = rows(
        &f,
        "SELECT rows FROM fedsql.system.queries WHERE protocol = 'source' \
         AND database = 'wh' AND query LIKE '%= ''bob''%' ORDER BY query_id DESC LIMIT 1",
    )
    .await;
    assert_eq!(
        received,
        vec![vec![s("3")]],
        "MariaDB matched 'Bob', 'bob ' and 'bob'"
    );
    // A negation is never loosened: MariaDB would drop 'Bob' and 'bob '.
    let others = rows(
        &f,
        "SELECT count(*) FROM wh.fedsql_odbc_types.items WHERE name <> 'bob'",
    )
    .await;
    let sent = last_remote_query(&f, "wh").await;
    assert!(!sent.contains("'bob'"), "{sent}");
    assert_eq!(others[0][0].as_deref().map(|n| n != "0"), Some(true));

    // Numeric filters and aggregates go, in MySQL quoting.
    let sql = "SELECT count(*), sum(qty), max(price) FROM wh.fedsql_odbc_types.items WHERE qty >= 0 AND day > DATE '1999-01-01'";
    let agg = rows(&f, sql).await;
    assert_eq!(agg, vec![vec![s("3"), s("9000000004"), s("12.50")]]);
    let sent = last_remote_query(&f, "wh").await;
    assert!(
        sent.contains("sum(`items`.`qty`)") && sent.contains("WHERE"),
        "{sent}"
    );
    let plan = explain(&f, sql).await;
    assert!(plan.contains("compute_context=mysql+odbc://wh"), "{plan}");
    assert!(
        plan.contains("`items`"),
        "EXPLAIN shows the MySQL SQL: {plan}"
    );

    // Grouping by text would merge 'bob' and 'Bob': it runs in fedsql.
    let groups = rows(
        &f,
        "SELECT name, count(*) FROM wh.fedsql_odbc_types.items GROUP BY name ORDER BY name",
    )
    .await;
    assert_eq!(groups.len(), 4, "{groups:?}");
}

#[tokio::test]
async fn federated_join_mariadb_and_postgres_equals_one_database() {
    // Customers in the warehouse (MariaDB over ODBC), transactions in Postgres.
    let customers: Vec<(i64, &str, &str)> = (1..=40)
        .map(|i| {
            (
                i,
                ["eu", "us", "apac"][(i % 3) as usize],
                ["gold", "basic"][(i % 2) as usize],
            )
        })
        .collect();
    let tx: Vec<(i64, i64, String)> = (1..=500)
        .map(|i| {
            (
                i,
                (i * 7) % 45 + 1,
                format!("{}.{:02}", (i * 37) % 1000, i % 100),
            )
        })
        .collect();
    let customer_values = customers
        .iter()
        .map(|(id, region, segment)| format!("({id}, '{region}', '{segment}')"))
        .collect::<Vec<_>>()
        .join(", ");
    let tx_values = tx
        .iter()
        .map(|(id, customer, amount)| format!("({id}, {customer}, {amount})"))
        .collect::<Vec<_>>()
        .join(", ");

    let wh = fresh_mariadb_database("fedsql_join_wh");
    odbc_execute(
        &wh,
        &[
            "CREATE TABLE customers (customer_id BIGINT PRIMARY KEY, region VARCHAR(10), segment VARCHAR(10))",
            &format!("INSERT INTO customers VALUES {customer_values}"),
        ],
    );
    let (pg, url) = fresh_postgres_database("fedsql_join_tx").await;
    pg.batch_execute(&format!(
        "CREATE TABLE transactions (tx_id int8 PRIMARY KEY, customer_id int8, amount numeric(10,2)); \
         INSERT INTO transactions VALUES {tx_values};"
    ))
    .await
    .unwrap();
    // The reference: one database holding both.
    let (both, _) = fresh_postgres_database("fedsql_join_both").await;
    both.batch_execute(&format!(
        "CREATE TABLE customers (customer_id int8 PRIMARY KEY, region text, segment text); \
         INSERT INTO customers VALUES {customer_values}; \
         CREATE TABLE transactions (tx_id int8 PRIMARY KEY, customer_id int8, amount numeric(10,2)); \
         INSERT INTO transactions VALUES {tx_values};"
    ))
    .await
    .unwrap();

    let (_server, _dir, f) = server_with_odbc_source("wh", &wh).await;
    f.simple_query(&format!(
        "CREATE SOURCE pg TYPE postgres OPTIONS (url '{url}')"
    ))
    .await
    .unwrap();
    let query = |customers: &str, transactions: &str| {
        format!(
            "SELECT c.region, count(*) AS n, sum(t.amount) AS total \
             FROM {customers} c JOIN {transactions} t ON c.customer_id = t.customer_id \
             WHERE t.amount > 100 AND c.segment = 'gold' \
             GROUP BY c.region ORDER BY c.region"
        )
    };
    let got = rows(
        &f,
        &query("wh.fedsql_join_wh.customers", "pg.public.transactions"),
    )
    .await;
    let want = rows(&both, &query("customers", "transactions")).await;
    assert_eq!(got, want);
    assert_eq!(got.len(), 3, "{got:?}");

    // Each source was sent SQL for its own table only, in its own dialect,
    // Postgres with the filter on its side of the join (MariaDB's is on text,
    // which its collation compares differently: it stays in fedsql).
    let pg_sql = last_remote_query(&f, "pg").await;
    assert!(
        pg_sql.contains("\"transactions\"") && !pg_sql.contains("customers"),
        "{pg_sql}"
    );
    assert!(pg_sql.contains("> 100"), "{pg_sql}");
    let wh_sql = last_remote_query(&f, "wh").await;
    assert!(
        wh_sql.contains("`customers`") && !wh_sql.contains("transactions"),
        "{wh_sql}"
    );
}

#[tokio::test]
async fn errors_are_actionable_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let f = server.connect("demo").await;
    let create = |name: &str, conn: &str| {
        format!("CREATE SOURCE {name} TYPE odbc OPTIONS (connection_string '{conn}')")
    };

    // A driver that is not installed: named, with how to install it.
    let e = f
        .simple_query(&create(
            "nodriver",
            "Driver={MariaDB Unicode Nope};Server=127.0.0.1;",
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "IM002", "{}", message(&e));
    assert!(
        message(&e).contains("MariaDB Unicode Nope")
            && message(&e).contains("apt-get install odbc-mariadb"),
        "{}",
        message(&e)
    );

    // Nothing listening.
    let port = fedsql_tests::free_port();
    let e = f
        .simple_query(&create(
            "down",
            &format!("Driver={{MariaDB Unicode}};Server=127.0.0.1;Port={port};Uid=root;"),
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "08001", "{}", message(&e));
    assert!(
        message(&e).contains(&format!("127.0.0.1:{port}")),
        "{}",
        message(&e)
    );

    // A wrong password (the variable's value is what is sent, never stored).
    let maria = test_mariadb();
    let (host, port) = maria.rsplit_once(':').unwrap();
    let e = f
        .simple_query(&format!(
            "CREATE SOURCE badpw TYPE odbc OPTIONS (connection_string \
             'Driver={{MariaDB Unicode}};Server={host};Port={port};Uid=fedsql_pw;', password_env 'FEDSQL_TEST_WRONG_PW')"
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "28P01", "{}", message(&e));

    // A password in the connection string is refused before connecting.
    let e = f
        .simple_query(&create(
            "inline",
            "Driver={MariaDB Unicode};Server=h;Pwd=secret;",
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22023", "{}", message(&e));
    assert!(!message(&e).contains("secret"));

    // Over-long text is an error naming the column, never truncated.
    let conn = fresh_mariadb_database("fedsql_odbc_errors");
    odbc_execute(
        &conn,
        &[
            "CREATE TABLE notes (id INT, body TEXT)",
            "INSERT INTO notes VALUES (1, REPEAT('x', 100))",
        ],
    );
    f.simple_query(&format!(
        "CREATE SOURCE small TYPE odbc OPTIONS (connection_string '{conn}', max_text_bytes '50')"
    ))
    .await
    .unwrap();
    let e = f
        .simple_query("SELECT body FROM small.fedsql_odbc_errors.notes")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22001", "{}", message(&e));
    assert!(
        message(&e).contains("body") && message(&e).contains("max_text_bytes"),
        "{}",
        message(&e)
    );

    // A table dropped behind fedsql's back: the source's own error, prefixed.
    odbc_execute(&conn, &["DROP TABLE notes"]);
    let e = f
        .simple_query("SELECT id FROM small.fedsql_odbc_errors.notes")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42S02", "{}", message(&e));
    assert!(message(&e).starts_with("source small:"), "{}", message(&e));

    // The server still answers.
    let ok: Rows = try_text_rows(&f, "SELECT 1").await.unwrap();
    assert_eq!(ok, vec![vec![s("1")]]);
}

#[tokio::test]
async fn config_file_declares_an_odbc_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.sqlite");
    let conn = format!("Driver={{SQLite3}};Database={};", file.display());
    odbc_execute(
        &conn,
        &[
            "CREATE TABLE branches (id INTEGER, city TEXT)",
            "INSERT INTO branches VALUES (1, 'Lyon'), (2, 'Porto')",
        ],
    );
    let config = dir.path().join("fedsql.toml");
    std::fs::write(
        &config,
        format!(
            "[[sources]]\nname = \"branches_db\"\ntype = \"odbc\"\nconnection_string = \"{conn}\"\n\
             dialect = \"sqlite\"\nmax_connections = 1\nbatch_size = 1\n"
        ),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let config_arg = config.display().to_string();
    let server = FedsqlServer::start_with(data.path(), &["--config", &config_arg]);
    let f = server.connect("demo").await;
    // batch_size 1: every row is its own fetch, and all arrive.
    let got = rows(
        &f,
        "SELECT id, city FROM branches_db.main.branches ORDER BY id",
    )
    .await;
    assert_eq!(got, vec![vec![s("1"), s("Lyon")], vec![s("2"), s("Porto")]]);
}

/// A plain scan of a table with an integer primary key is read as N key
/// ranges by N parallel fetches (`partitions` option), through each
/// dialect's quoting; the ranges are disjoint and cover the table.
#[tokio::test]
async fn scans_split_into_key_ranges_on_mariadb_and_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let lite = format!(
        "Driver={{SQLite3}};Database={};",
        dir.path().join("split.sqlite").display()
    );
    let maria = fresh_mariadb_database("fedsql_odbc_split");
    let fill = [
        "CREATE TABLE events (id INTEGER PRIMARY KEY, amount INTEGER, note VARCHAR(20))",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) \
         INSERT INTO events SELECT i, i % 100, 'n' FROM n",
    ];
    odbc_execute(&lite, &fill);
    odbc_execute(
        &maria,
        &[
            fill[0],
            "INSERT INTO events SELECT seq, seq % 100, 'n' FROM seq_1_to_5000",
        ],
    );
    let server_dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(server_dir.path());
    let f = server.connect("demo").await;
    for (name, conn, table, range) in [
        ("lite", &lite, "lite.main.events", r#""id" >="#),
        ("wh", &maria, "wh.fedsql_odbc_split.events", "`id` >="),
    ] {
        f.simple_query(&format!(
            "CREATE SOURCE {name} TYPE odbc OPTIONS (connection_string '{conn}', partitions '3')"
        ))
        .await
        .unwrap_or_else(|e| panic!("CREATE SOURCE {name}: {}", message(&e)));
        let sql = format!("SELECT id, note FROM {table} WHERE amount > 9");
        let plan = explain(&f, &sql).await;
        assert!(plan.contains("PartitionedScanExec: partitions=3"), "{plan}");
        let ids: Vec<i64> = rows(&f, &sql)
            .await
            .iter()
            .map(|r| r[0].as_deref().unwrap().parse().unwrap())
            .collect();
        assert_eq!(ids.len(), 4500, "{name}");
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), 4500, "{name}: a row came twice");
        assert_eq!(ids.iter().min(), Some(&10));
        assert_eq!(ids.iter().max(), Some(&4999));
        let sent: Vec<(String, i64)> = rows(
            &f,
            &format!(
                "SELECT query, rows FROM fedsql.system.queries WHERE protocol = 'source' \
                 AND database = '{name}' AND query LIKE '%{range}%'"
            ),
        )
        .await
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap(),
                r[1].as_deref().unwrap().parse().unwrap(),
            )
        })
        .collect();
        assert_eq!(sent.len(), 3, "{name}: {sent:?}");
        assert_eq!(
            sent.iter().map(|(_, n)| n).sum::<i64>(),
            4500,
            "{name}: {sent:?}"
        );
        // An aggregate is not a plain scan: it goes whole, unsplit.
        let plan = explain(&f, &format!("SELECT count(*) FROM {table}")).await;
        assert!(!plan.contains("PartitionedScanExec"), "{plan}");

        // A join's keys narrow each range's query (pushdown/join_filter.rs).
        let joined = rows(
            &f,
            &format!(
                "SELECT e.id FROM {table} e JOIN (VALUES (10), (2500), (4999)) AS k(id) \
                 ON e.id = k.id ORDER BY e.id"
            ),
        )
        .await;
        assert_eq!(
            joined,
            vec![vec![s("10")], vec![s("2500")], vec![s("4999")]]
        );
        let narrowed = remote_queries(&f, name)
            .await
            .into_iter()
            .filter(|q| q.contains("IN (10, 2500, 4999)"))
            .count();
        assert_eq!(narrowed, 3, "{name}: {:?}", remote_queries(&f, name).await);
    }
}

#[tokio::test]
async fn a_cancelled_query_stops_running_at_the_mariadb_source() {
    let conn = fresh_mariadb_database("fedsql_odbc_cancel");
    // A warehouse view that takes minutes before its one row: a count of
    // 8·10⁹ joined rows.
    odbc_execute(
        &conn,
        &[
            "CREATE TABLE n (i INT PRIMARY KEY)",
            "SET SESSION max_recursive_iterations = 100000",
            "INSERT INTO n WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r \
             WHERE i < 2000) SELECT i FROM r",
            "CREATE VIEW slow AS SELECT count(*) AS c FROM n a, n b, n c \
             WHERE a.i + b.i + c.i > 3",
        ],
    );
    let (_server, _dir, f) = server_with_odbc_source("wh", &conn).await;
    let sql = "SELECT c FROM wh.fedsql_odbc_cancel.slow";
    // MariaDB Connector/ODBC runs statements as prepared ones ("Execute").
    let running = "SELECT count(*) FROM information_schema.processlist \
                   WHERE info LIKE '%FROM `slow`%' AND id <> connection_id()";
    let cancel = f.cancel_token();
    let watcher = conn.clone();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
        let before = odbc_scalar(&watcher, running).unwrap_or_default();
        (before, cancel.cancel_query(tokio_postgres::NoTls).await)
    });
    let err = f.simple_query(sql).await.unwrap_err();
    let (before, cancelled) = canceller.await.unwrap();
    cancelled.unwrap();
    assert_eq!(code(&err), "57014", "{}", message(&err));
    assert_eq!(
        before, "1",
        "the query was running at MariaDB before the cancel"
    );

    // The statement stops at MariaDB too, not only in fedsql.
    let mut still = String::new();
    for _ in 0..50 {
        still = odbc_scalar(&conn, running).unwrap_or_default();
        if still == "0" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        still, "0",
        "the query still runs at MariaDB after the cancel"
    );
    // And the source goes on serving.
    let got = rows(&f, "SELECT count(*) FROM wh.fedsql_odbc_cancel.n").await;
    assert_eq!(got, vec![vec![s("2000")]]);
}

#[tokio::test]
async fn a_join_on_text_keys_stays_in_fedsql_over_mariadb() {
    // MariaDB compares text by a case-insensitive collation: 'N1' = 'n1'.
    // Join keys of text are equalities like any other, so the join runs in
    // fedsql with Postgres's (byte) equality.
    let conn = fresh_mariadb_database("fedsql_odbc_text_join");
    odbc_execute(
        &conn,
        &[
            "CREATE TABLE a (id INT PRIMARY KEY, name VARCHAR(20))",
            "CREATE TABLE b (id INT PRIMARY KEY, name VARCHAR(20))",
            "SET SESSION max_recursive_iterations = 100000",
            "INSERT INTO a WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r \
             WHERE i < 500) SELECT i, concat('n', i) FROM r",
            "INSERT INTO b SELECT id, name FROM a",
            "INSERT INTO b VALUES (501, 'N1')",
        ],
    );
    let (_server, _dir, f) = server_with_odbc_source("wh", &conn).await;
    let sql = "SELECT count(*) FROM wh.fedsql_odbc_text_join.a a \
               JOIN wh.fedsql_odbc_text_join.b b ON a.name = b.name";
    assert!(
        explain(&f, sql).await.contains("HashJoinExec"),
        "a join on text keys is pushed to MariaDB"
    );
    assert_eq!(rows(&f, sql).await, vec![vec![s("500")]]);
    // Integer keys still go whole.
    let by_id = "SELECT count(*) FROM wh.fedsql_odbc_text_join.a a \
                 JOIN wh.fedsql_odbc_text_join.b b ON a.id = b.id";
    assert!(!explain(&f, by_id).await.contains("HashJoinExec"));
    assert_eq!(rows(&f, by_id).await, vec![vec![s("500")]]);
}
