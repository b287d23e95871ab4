//! The real `psql` 15 binary against fedsql: meta-commands, and a replay of
//! the catalog SQL psql sends (captured from a real PostgreSQL 15).

use fedsql_tests::{psql, FedsqlServer};

#[test]
fn meta_commands_list_the_demo_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());

    let (ok, out, err) = psql(&server, "demo", "\\dt bank.*");
    assert!(ok, "{err}");
    for table in ["customers", "transactions", "support_messages"] {
        assert!(out.contains(table), "\\dt bank.* misses {table}:\n{out}");
    }
    assert!(out.contains("(3 rows)"), "{out}");

    let (ok, out, err) = psql(&server, "demo", "\\dt");
    assert!(ok && out.contains("transactions"), "{out}{err}");

    let (ok, out, err) = psql(&server, "demo", "\\l");
    assert!(ok, "{err}");
    assert!(out.contains("demo") && out.contains("fedsql"), "{out}");

    // pg_catalog describes the current database only, as in Postgres.
    let (ok, out, err) = psql(&server, "demo", "\\dn");
    assert!(ok && out.contains("bank"), "{out}{err}");
    assert!(out.contains("(2 rows)") && !out.contains("system"), "{out}");
    let (ok, out, err) = psql(&server, "fedsql", "\\dv system.*");
    assert!(
        ok && out.contains("queries") && !out.contains("customers"),
        "{out}{err}"
    );

    let (ok, out, err) = psql(&server, "demo", "\\d bank.transactions");
    assert!(ok, "{err}");
    for (column, ty) in [
        ("tx_id", "bigint"),
        ("ts", "timestamp without time zone"),
        ("amount", "double precision"),
        ("channel", "text"),
        ("is_fraud", "boolean"),
    ] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(column))
            .unwrap_or_else(|| panic!("no column {column} in:\n{out}"));
        assert!(line.contains(ty), "{column} should be {ty}: {line}");
    }

    let (ok, out, err) = psql(&server, "demo", "\\d+ bank.customers");
    assert!(ok, "{err}");
    assert!(
        out.contains("credit_score") && out.contains("Storage"),
        "{out}"
    );
}

#[test]
fn errors_show_sqlstate_and_position_in_psql() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let (ok, _, err) = psql(&server, "demo", "SELEC 1");
    assert!(!ok);
    assert!(err.contains("42601"), "{err}");
    assert!(err.contains("LINE 1: SELEC 1"), "{err}");
    let (ok, out, err) = psql(
        &server,
        "demo",
        "SELECT c.region, count(*), avg(t.amount) FROM demo.bank.transactions t \
         JOIN demo.bank.customers c USING (customer_id) GROUP BY 1",
    );
    assert!(ok, "{err}");
    assert!(out.contains("(3 rows)"), "{out}");

    // DDL answers with its command tag, as in Postgres.
    let (ok, out, err) = psql(&server, "demo", "CREATE VIEW v AS SELECT 1 AS x");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "CREATE VIEW");
    let (ok, out, err) = psql(&server, "demo", "DROP VIEW v");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "DROP VIEW");
}

/// Statements from the fixture, split on psql's capture markers.
fn fixture_statements() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/psql_meta_queries.sql"
    );
    let text = std::fs::read_to_string(path).expect("fixture");
    let mut out = Vec::new();
    for section in text.split("\n-- ==== ").skip(1) {
        let title = section.lines().next().unwrap_or_default().to_string();
        for block in section.split("\n-- [pid").skip(1) {
            let body = block.split_once('\n').map(|(_, b)| b).unwrap_or_default();
            let sql = body.split("\n\n-- ").next().unwrap_or_default().trim();
            if !sql.is_empty() {
                out.push((title.clone(), sql.to_string()));
            }
        }
    }
    out
}

#[test]
fn psql_catalog_queries_replay() {
    let statements = fixture_statements();
    assert!(
        statements.len() > 40,
        "fixture parsed into {}",
        statements.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let mut failures = Vec::new();
    for (title, sql) in &statements {
        // psql asks for partition ancestors only for tables that have foreign
        // keys or triggers; fedsql tables have neither, so it never sends this.
        if sql.contains("pg_partition_ancestors") {
            continue;
        }
        let (ok, _, err) = psql(&server, "demo", sql);
        if !ok {
            failures.push(format!("{title}: {}\n{sql}", err.trim()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// psql against a server with a password and a certificate: `conninfo` keys
/// and environment as a user would set them.
fn psql_login(server: &FedsqlServer, conninfo: &str, password: Option<&str>) -> (bool, String) {
    let mut cmd = std::process::Command::new("psql");
    cmd.args(["-X", "-v", "VERBOSITY=verbose", "-w", "-c", "\\conninfo"])
        .arg(format!(
            "host=127.0.0.1 port={} user=fedsql dbname=demo {conninfo}",
            server.port
        ))
        .env_remove("PGPASSWORD");
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let out = cmd.output().expect("run psql (install postgresql-client)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A throw-away certificate and key for localhost, made with openssl.
fn self_signed_certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl makes the test certificate (scripts/test installs it)");
    assert!(made.status.success(), "{made:?}");
    (cert, key)
}

#[test]
fn plain_connections_are_refused_when_tls_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_certificate(dir.path());
    let server = FedsqlServer::start_with(
        &dir.path().join("data"),
        &[
            "--pg-tls-cert",
            cert.to_str().unwrap(),
            "--pg-tls-key",
            key.to_str().unwrap(),
            "--pg-tls-required",
        ],
    );
    let (ok, out) = psql_login(&server, "sslmode=disable", None);
    assert!(!ok);
    assert!(out.contains("TLS connections only"), "{out}");
    let (ok, out) = psql_login(&server, "sslmode=require", None);
    assert!(ok, "{out}");
    assert!(out.contains("SSL connection"), "{out}");

    // Asking for it without a certificate is a start-up error.
    let out = std::process::Command::new(fedsql_tests::fedsql_bin())
        .args(["serve", "--no-demo", "--pg-tls-required", "--data-dir"])
        .arg(dir.path().join("other"))
        .args([
            "--pg-listen",
            "127.0.0.1:0",
            "--flight-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pg_tls_required needs"), "{err}");
}

#[test]
fn psql_logs_in_with_scram_over_tls_as_each_configured_user() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_certificate(dir.path());
    let password = "correct horse";
    // A second login from the config file's [[users]].
    let config = dir.path().join("fedsql.toml");
    std::fs::write(
        &config,
        "[[users]]\nname = \"analyst\"\npassword_env = \"FEDSQL_TEST_ANALYST_PASSWORD\"\n",
    )
    .unwrap();
    let server = FedsqlServer::start_with_env(
        &dir.path().join("data"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--password-env",
            "FEDSQL_TEST_PG_PASSWORD",
            "--pg-tls-cert",
            cert.to_str().unwrap(),
            "--pg-tls-key",
            key.to_str().unwrap(),
        ],
        &[
            ("FEDSQL_TEST_PG_PASSWORD", password),
            ("FEDSQL_TEST_ANALYST_PASSWORD", "analyst pw"),
        ],
    );

    // TLS, SCRAM with channel binding: what psql does by default here.
    let (ok, out) = psql_login(
        &server,
        "sslmode=require channel_binding=require",
        Some(password),
    );
    assert!(ok, "{out}");
    assert!(out.contains("SSL connection"), "{out}");
    // Plain TCP still authenticates with SCRAM.
    let (ok, out) = psql_login(&server, "sslmode=disable", Some(password));
    assert!(ok, "{out}");
    assert!(!out.contains("SSL connection"), "{out}");

    // `fedsql query --server` reads PGPASSWORD as libpq does.
    let out = std::process::Command::new(fedsql_tests::fedsql_bin())
        .args(["query", "--server"])
        .arg(format!("postgres://fedsql@127.0.0.1:{}/demo", server.port))
        .arg("SELECT 41 + 1 AS answer")
        .env("PGPASSWORD", password)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("42"),
        "{out:?}"
    );

    // Each login with its own password.
    let (ok, out) = psql_login(&server, "user=analyst", Some("analyst pw"));
    assert!(ok, "{out}");
    let (ok, out) = psql_login(&server, "user=analyst", Some(password));
    assert!(!ok, "{out}");

    // A wrong password, another user, no password: refused.
    let (ok, out) = psql_login(&server, "sslmode=require", Some("wrong"));
    assert!(!ok);
    assert!(
        out.contains("password authentication failed for user \"fedsql\""),
        "{out}"
    );
    let (ok, out) = psql_login(&server, "user=mallory", Some(password));
    assert!(!ok);
    assert!(out.contains("failed for user \"mallory\""), "{out}");
    let (ok, out) = psql_login(&server, "", None);
    assert!(!ok);
    assert!(out.contains("no password supplied"), "{out}");
    // The SQLSTATE a driver acts on: 28P01.
    let code = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let conninfo = format!("{} password=wrong", server.conn_str("demo"));
        match tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
            Ok(_) => None,
            Err(e) => e.code().map(|c| c.code().to_string()),
        }
    });
    assert_eq!(code.as_deref(), Some("28P01"));
    // An unknown database is named, and the server keeps serving.
    let (ok, out) = psql_login(&server, "dbname=nope", Some(password));
    assert!(!ok);
    assert!(out.contains("database \"nope\" does not exist"), "{out}");
    let (ok, out) = psql_login(&server, "", Some(password));
    assert!(ok, "{out}");

    // Failed logins slow the next attempts from the same address: after
    // six more failures an attempt waits at least 100 ms · 2^5 (by then the
    // failures above count too) before it is even checked.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let conninfo = format!("{} password=wrong", server.conn_str("demo"));
        for _ in 0..6 {
            assert!(tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                .await
                .is_err());
        }
        let started = std::time::Instant::now();
        let refused = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await;
        assert!(refused.is_err());
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(3200),
            "not throttled: {:?}",
            started.elapsed()
        );
    });
    // The right password still gets in (after its wait).
    let (ok, out) = psql_login(&server, "", Some(password));
    assert!(ok, "{out}");
}

#[test]
fn a_non_loopback_wire_needs_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(fedsql_tests::fedsql_bin())
        .args(["serve", "--no-demo", "--data-dir"])
        .arg(dir.path())
        .args(["--pg-listen", "0.0.0.0:0", "--flight-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without authentication") && err.contains("password_env"),
        "{err}"
    );
}

#[test]
fn backslash_copy_exports_a_query_and_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let csv = dir.path().join("out.csv");
    let command = format!(
        "\\copy (SELECT customer_id, region FROM bank.customers WHERE customer_id <= 3 ORDER BY 1) TO '{}' WITH (FORMAT csv, HEADER)",
        csv.display()
    );
    let (ok, out, err) = psql(&server, "demo", &command);
    assert!(ok, "{err}");
    assert!(out.contains("COPY 3"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&csv).unwrap(),
        "customer_id,region\n1,eu\n2,us\n3,apac\n"
    );
    let text = dir.path().join("customers.txt");
    let (ok, out, err) = psql(
        &server,
        "demo",
        &format!("\\copy bank.customers TO '{}'", text.display()),
    );
    assert!(ok, "{err}");
    assert!(out.contains("COPY 2000"), "{out}");
    let lines: Vec<String> = std::fs::read_to_string(&text)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 2000);
    assert!(
        lines.iter().all(|l| l.split('\t').count() == 7),
        "{:?}",
        &lines[..2]
    );
}
