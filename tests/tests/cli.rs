//! `fedsql query`: embedded one-shot runs, output formats, files, errors.

use std::process::Command;

use fedsql_tests::{fedsql_bin, FedsqlServer, TEST_DEMO_SCALE};

fn query(data_dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(fedsql_bin())
        .args(["query", "--data-dir"])
        .arg(data_dir)
        .args(["--demo-scale", TEST_DEMO_SCALE])
        .args(args)
        .output()
        .expect("run fedsql query");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn csv_json_and_table_output() {
    let dir = tempfile::tempdir().unwrap();
    let sql = "SELECT region, count(*) AS n FROM bank.customers GROUP BY region ORDER BY region";
    let (ok, csv, err) = query(dir.path(), &["--format", "csv", sql]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "region,n");
    assert_eq!(lines.len(), 4, "{csv}");
    let total: i64 = lines[1..]
        .iter()
        .map(|l| l.split(',').nth(1).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(total, 2_000);

    let (ok, json, err) = query(dir.path(), &["--format", "json", sql]);
    assert!(ok, "{err}");
    assert!(json.trim_start().starts_with('['), "{json}");
    assert!(json.contains("\"region\":\"apac\""), "{json}");

    let (ok, table, err) = query(dir.path(), &[sql]);
    assert!(ok, "{err}");
    assert!(table.contains("| region |"), "{table}");
}

#[test]
fn file_with_several_statements_and_persisted_view() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("script.sql");
    std::fs::write(
        &file,
        "-- a view, then a query over it\n\
         CREATE VIEW rich AS SELECT * FROM bank.customers WHERE income > 100000;\n\
         SELECT count(*) > 0 AS any_rich FROM rich;\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let (ok, out, err) = query(&data, &["--format", "csv", "-f", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("any_rich\ntrue"), "{out}");
    // The view was persisted by the embedded run; a server on the same data dir has it.
    let server = FedsqlServer::start(&data);
    let (ok, out, err) =
        fedsql_tests::psql(&server, "demo", "SELECT count(*) FROM demo.public.rich");
    assert!(ok, "{err}");
    assert!(out.contains("(1 row)"), "{out}");
}

#[test]
fn errors_exit_non_zero_with_sqlstate() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = query(dir.path(), &["SELECT * FROM bank.nope"]);
    assert!(!ok);
    assert!(err.contains("ERROR 42P01"), "{err}");
    let (ok, _, err) = query(
        dir.path(),
        &["CREATE SOURCE f TYPE flightsql OPTIONS (url 'http://127.0.0.1:1')"],
    );
    assert!(!ok);
    assert!(
        err.contains("ERROR 0A000") && err.contains("CREATE SOURCE"),
        "{err}"
    );
    // An unreachable Kafka broker: one clear error, not librdkafka's log.
    let (ok, _, err) = query(
        dir.path(),
        &["CREATE SOURCE k TYPE kafka OPTIONS (brokers '127.0.0.1:1')"],
    );
    assert!(!ok);
    assert!(
        err.contains("ERROR 08001") && err.contains("127.0.0.1:1"),
        "{err}"
    );
    assert!(!err.contains("librdkafka"), "{err}");
}

#[test]
fn query_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let url = format!("postgres://fedsql@127.0.0.1:{}/demo", server.port);
    let out = Command::new(fedsql_bin())
        .args(["query", "--server", &url, "--format", "csv"])
        .arg("SELECT count(*) AS n FROM bank.transactions")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "n\n20000");
    let out = Command::new(fedsql_bin())
        .args(["query", "--server", &url, "SELEC 1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ERROR 42601"));
}
