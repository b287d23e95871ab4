//! `fedsql run` on a dbt-style project (`tests/dbt/bank`, the project real
//! dbt runs in `tests/python/test_dbt.py`): seeds, view, table, ephemeral,
//! incremental (merged on `unique_key`) and `model` nodes in dependency
//! order, a downstream table scoring with the trained model, schema tests,
//! dbt-shaped artifacts, selection and vars, and the errors a project can
//! have (a failing test, a cycle, a missing ref).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fedsql_tests::fedsql_bin;

/// A copy of the bank project in a temporary directory.
fn project() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("dbt/bank");
    let target = dir.path().join("bank");
    copy_dir(&source, &target);
    // Whatever an earlier real-dbt run left there is not the project.
    let _ = std::fs::remove_dir_all(target.join("target"));
    (dir, target)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}

fn fedsql(args: &[&str], data_dir: &Path) -> Output {
    Command::new(fedsql_bin())
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run fedsql")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The CSV rows `sql` answers over the data dir (header dropped).
fn query(data_dir: &Path, sql: &str) -> Vec<Vec<String>> {
    let out = fedsql(&["query", "--format", "csv", sql], data_dir);
    assert!(out.status.success(), "{sql}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

fn statuses(project: &Path) -> Vec<(String, String)> {
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(project.join("target/run_results.json")).unwrap())
            .unwrap();
    results["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["unique_id"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_project_runs_in_dependency_order_with_a_federated_model_node() {
    let (dir, project) = project();
    let data = dir.path().join("data");
    let dir_arg = project.to_str().unwrap();
    let out = fedsql(&["run", dir_arg, "--test"], &data);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("8 ok, 0 error, 0 skipped, tests 9 pass, 0 fail"),
        "{log}"
    );

    // Every node ran after what it refers to.
    let results = statuses(&project);
    let at = |id: &str| {
        results
            .iter()
            .position(|(u, _)| u == id)
            .unwrap_or_else(|| panic!("{id} not in {results:?}"))
    };
    assert!(at("model.bank.fraud") < at("model.bank.flagged_by_region"));
    assert!(at("model.bank.large_transactions") < at("model.bank.large_by_region"));
    assert!(at("seed.bank.segments") < at("model.bank.segment_customers"));
    assert!(
        results.iter().all(|(_, s)| s == "success" || s == "pass"),
        "{results:?}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(project.join("target/manifest.json")).unwrap())
            .unwrap();
    let flagged = &manifest["nodes"]["model.bank.flagged_by_region"];
    assert_eq!(
        flagged["depends_on"]["nodes"],
        serde_json::json!(["model.bank.fraud"])
    );
    assert_eq!(flagged["config"]["materialized"], "table");
    assert!(flagged["compiled_code"]
        .as_str()
        .unwrap()
        .contains("predict('fraud'"));

    // The federated model is a model of the registry; the table downstream
    // scored every transaction with it; the ephemeral model is no relation.
    let models = query(&data, "SELECT model, clients FROM fedsql.system.models");
    assert_eq!(models, [["fraud", "3"]]);
    let flagged = query(
        &data,
        "SELECT region, flagged, transactions FROM demo.marts.flagged_by_region ORDER BY region",
    );
    assert_eq!(flagged.len(), 3);
    let total: u64 = flagged.iter().map(|r| r[2].parse::<u64>().unwrap()).sum();
    assert_eq!(total, 200_000);
    for row in &flagged {
        let (f, n): (u64, u64) = (row[1].parse().unwrap(), row[2].parse().unwrap());
        assert!(f < n, "{row:?}");
    }
    let relations = query(
        &data,
        "SELECT table_name, table_type FROM information_schema.tables \
         WHERE table_schema = 'marts' ORDER BY table_name",
    );
    assert_eq!(
        relations,
        [
            ["busy_regions", "BASE TABLE"],
            ["flagged_by_region", "BASE TABLE"],
            ["large_by_region", "BASE TABLE"],
            ["region_activity", "VIEW"],
            ["segment_customers", "BASE TABLE"],
            ["segments", "BASE TABLE"],
        ]
    );

    // A re-run of the incremental model and what it needs, with a lower
    // threshold: merged on region (one row each), counts from the new rows.
    let before = query(
        &data,
        "SELECT region, large_transactions FROM demo.marts.large_by_region ORDER BY region",
    );
    let out = fedsql(
        &[
            "run",
            dir_arg,
            "--select",
            "+large_by_region",
            "--vars",
            "{\"large_amount\": 500}",
        ],
        &data,
    );
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("merged into \"demo\".\"marts\".\"large_by_region\""),
        "{log}"
    );
    assert_eq!(
        statuses(&project),
        [
            (
                "model.bank.large_transactions".to_string(),
                "success".to_string()
            ),
            (
                "model.bank.large_by_region".to_string(),
                "success".to_string()
            ),
        ]
    );
    let after = query(
        &data,
        "SELECT region, large_transactions FROM demo.marts.large_by_region ORDER BY region",
    );
    assert_eq!(after.len(), 3);
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a[0], b[0]);
        assert!(
            a[1].parse::<u64>().unwrap() > b[1].parse::<u64>().unwrap(),
            "{before:?} {after:?}"
        );
    }
}

#[test]
fn a_failing_test_a_cycle_and_a_missing_ref_fail_the_run() {
    let (dir, project) = project();
    let data = dir.path().join("data");
    let dir_arg = project.to_str().unwrap();
    // apac's busy region fails an accepted_values test without it.
    let schema = project.join("models/schema.yml");
    let mut yml = std::fs::read_to_string(&schema).unwrap();
    yml = yml.replace("values: ['eu', 'us', 'apac']", "values: ['eu', 'us']");
    std::fs::write(&schema, yml).unwrap();
    let out = fedsql(
        &["run", dir_arg, "--select", "+busy_regions", "--test"],
        &data,
    );
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("FAIL 1 accepted_values busy_regions.region"),
        "{log}"
    );
    assert!(statuses(&project).contains(&(
        "test.bank.accepted_values_busy_regions_region".to_string(),
        "fail".to_string()
    )));

    std::fs::write(project.join("models/a.sql"), "SELECT * FROM {{ ref('b') }}").unwrap();
    std::fs::write(project.join("models/b.sql"), "SELECT * FROM {{ ref('a') }}").unwrap();
    let out = fedsql(&["run", dir_arg], &data);
    let log = text(&out);
    assert!(!out.status.success());
    assert!(log.contains("cycle: models/a.sql -> models/b.sql"), "{log}");

    std::fs::remove_file(project.join("models/b.sql")).unwrap();
    let out = fedsql(&["run", dir_arg], &data);
    let log = text(&out);
    assert!(!out.status.success());
    assert!(
        log.contains("models/a.sql: ref('b') names no model or seed"),
        "{log}"
    );
}

#[test]
fn a_run_killed_while_it_builds_a_table_leaves_the_old_table() {
    let (dir, project) = project();
    let data = dir.path().join("data");
    let dir_arg = project.to_str().unwrap();
    let out = fedsql(&["run", dir_arg, "--select", "+busy_regions"], &data);
    assert!(out.status.success(), "{}", text(&out));
    let before = query(
        &data,
        "SELECT * FROM demo.marts.busy_regions ORDER BY region",
    );
    assert_eq!(before.len(), 3);

    // The model becomes a query that runs for minutes; the run is killed
    // while it builds.
    let model = project.join("models/busy_regions.sql");
    let fast = std::fs::read_to_string(&model).unwrap();
    std::fs::write(
        &model,
        "{{ config(materialized='table') }}\n\
         SELECT r.region, r.transactions + z.n AS transactions FROM {{ ref('region_activity') }} r \
         CROSS JOIN (SELECT count(*) AS n FROM bank.transactions a, bank.transactions b \
                     WHERE a.amount + b.amount > 0) z",
    )
    .unwrap();
    let mut child = Command::new(fedsql_bin())
        .args(["run", dir_arg, "--select", "busy_regions", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the slow build ended early"
    );
    child.kill().unwrap();
    let _ = child.wait();

    // After the crash: the old table, whole, under the model's name.
    assert_eq!(
        query(
            &data,
            "SELECT * FROM demo.marts.busy_regions ORDER BY region"
        ),
        before
    );
    // And the next run builds it again.
    std::fs::write(&model, fast).unwrap();
    let out = fedsql(&["run", dir_arg, "--select", "busy_regions"], &data);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        query(
            &data,
            "SELECT * FROM demo.marts.busy_regions ORDER BY region"
        ),
        before
    );
}
