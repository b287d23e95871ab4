//! The differential fuzzer's budget: random valid TPC-H queries
//! (`fedsql_tests::fuzz`) over a Postgres source and over a MariaDB source
//! read through ODBC (`FEDSQL_FUZZ_TARGET=postgres|mariadb` for one), each
//! answered by fedsql with pushdown on and off and compared with
//! PostgreSQL's answer on the same data. Zero differences, zero errors
//! where PostgreSQL answers, zero crashes.
//!
//! First the saved regression cases (`tests/fuzz/<target>/*.slt`, each a
//! minimised failure the fuzzer once found; their answers are SF0.01's, so
//! they run at that scale only), then
//! `FEDSQL_FUZZ_QUERIES` new queries (default 300) from seed
//! `FEDSQL_FUZZ_SEED` (default 1) at scale `FEDSQL_FUZZ_SCALE` (default
//! 0.01). A failure is minimised and written as a new regression case into
//! `FEDSQL_FUZZ_SAVE` (default: a `fedsql-fuzz-failures` folder in the
//! temp dir) for the developer to fix and commit. `bench/fuzz.sh N SEED`
//! runs thousands.

use std::path::{Path, PathBuf};

use fedsql_tests::fuzz::generate::{Generator, Limits};
use fedsql_tests::fuzz::{regression_slt, FailureKind, Fuzzer, Outcome, TABLE_MARKER};
use fedsql_tests::tpch::{load_mariadb, load_postgres, TABLES};
use fedsql_tests::{try_text_rows, FedsqlServer};
use rand::SeedableRng;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// What one run found.
#[derive(Debug, Default)]
struct Report {
    queries: usize,
    invalid: usize,
    same: usize,
    rows: usize,
    fallbacks: i64,
    failures: Vec<String>,
    crashed: bool,
}

/// Runs the saved regression cases of `target`, then the fuzzer's budget.
async fn fuzz(
    target: &str,
    reference: &tokio_postgres::Client,
    server: &FedsqlServer,
    database: &str,
    fedsql_tables: &str,
) -> Report {
    let mut report = Report::default();
    let cases = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz")).join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&cases)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "slt"));
    files.sort();
    // The cases' answers are those of SF0.01.
    if env_or("FEDSQL_FUZZ_SCALE", "0.01") != "0.01" {
        files.clear();
    }
    for file in &files {
        if let Err(e) = fedsql_tests::slt::run_file_tolerant(file, &server.conn_str(database)).await
        {
            report.failures.push(format!("regression case {e}"));
        }
    }

    let on = server.connect(database).await;
    let off = server.connect(database).await;
    off.simple_query("SET fedsql.pushdown = off").await.unwrap();
    let admin = server.connect("demo").await;
    let fuzzer = Fuzzer {
        reference,
        pushdown_on: &on,
        pushdown_off: &off,
        fedsql_tables,
    };
    let queries: usize = env_or("FEDSQL_FUZZ_QUERIES", "300").parse().unwrap();
    let seed: u64 = env_or("FEDSQL_FUZZ_SEED", "1").parse().unwrap();
    let save = std::env::var("FEDSQL_FUZZ_SAVE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("fedsql-fuzz-failures"));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let qualify = |table: &str| format!("{TABLE_MARKER}{table}");
    let mut generator = Generator::new(&mut rng, Limits::default(), &qualify);
    let mut last_logged = 0i64;
    for n in 0..queries {
        let query = generator.query();
        let sql = query.render(&Default::default());
        report.queries += 1;
        match fuzzer.check(&sql).await {
            Outcome::Invalid(_) => report.invalid += 1,
            Outcome::Same { rows } => {
                report.same += 1;
                report.rows += rows;
            }
            Outcome::Failure(failure) => {
                let crashed = failure.kind == FailureKind::Crash;
                // Each try of a hang takes the whole time limit.
                let minimal = if crashed || failure.kind == FailureKind::Hang {
                    sql.clone()
                } else {
                    fuzzer.minimise(&query, &failure, 120).await
                };
                let comment = format!(
                    "fuzzer, target {target}, seed {seed}, query {n}: {:?} with {}\n{}",
                    failure.kind, failure.mode, failure.detail
                );
                let saved = save_case(
                    &save,
                    target,
                    seed,
                    n,
                    &comment,
                    &fuzzer.for_fedsql(&minimal),
                    &try_text_rows(reference, &fuzzer.for_reference(&minimal))
                        .await
                        .unwrap_or_default(),
                );
                report.failures.push(format!(
                    "query {n} ({:?}, {}): {}\n  minimal: {}\n  saved as {}",
                    failure.kind,
                    failure.mode,
                    failure.detail,
                    fuzzer.for_fedsql(&minimal),
                    saved.display()
                ));
                if crashed {
                    report.crashed = true;
                    break;
                }
            }
        }
        // Fallbacks taken (the query log keeps the last 1,000 entries, so
        // count as we go).
        let counted = try_text_rows(
            &admin,
            &format!(
                "SELECT count(*) FILTER (WHERE protocol = 'fallback'), max(query_id) \
                 FROM fedsql.system.queries WHERE query_id > {last_logged}"
            ),
        )
        .await
        .unwrap();
        report.fallbacks += counted[0][0]
            .as_deref()
            .unwrap_or("0")
            .parse::<i64>()
            .unwrap();
        if let Some(max) = counted[0][1].as_deref() {
            last_logged = max.parse().unwrap();
        }
    }
    println!(
        "fuzz {target}: {} queries (seed {seed}), {} valid ({} rows compared), {} rejected by PostgreSQL, \
         {} fallbacks, {} failures, crash: {}",
        report.queries,
        report.same + report.failures.len(),
        report.rows,
        report.invalid,
        report.fallbacks,
        report.failures.len(),
        report.crashed
    );
    report
}

fn save_case(
    dir: &Path,
    target: &str,
    seed: u64,
    n: usize,
    comment: &str,
    sql: &str,
    want: &fedsql_tests::fuzz::Rows,
) -> PathBuf {
    let dir = dir.join(target);
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("seed{seed}_q{n}.slt"));
    let _ = std::fs::write(&path, regression_slt(comment, sql, want));
    path
}

fn check(report: &Report) {
    assert!(
        report.failures.is_empty(),
        "{} failures:\n{}",
        report.failures.len(),
        report.failures.join("\n\n")
    );
    // A generator whose queries PostgreSQL rejects tests nothing.
    assert!(
        report.invalid * 5 <= report.queries,
        "{} of {} generated queries are invalid in PostgreSQL",
        report.invalid,
        report.queries
    );
}

/// The targets `FEDSQL_FUZZ_TARGET` names: `postgres`, `mariadb`, or (the
/// default, what CI runs) both, one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_queries_match_postgres() {
    let targets = match env_or("FEDSQL_FUZZ_TARGET", "both").as_str() {
        "both" => vec!["postgres", "mariadb"],
        "postgres" => vec!["postgres"],
        "mariadb" => vec!["mariadb"],
        other => panic!("FEDSQL_FUZZ_TARGET is postgres, mariadb or both, not {other}"),
    };
    for target in targets {
        fuzz_target(target).await;
    }
}

/// Loads the data, starts fedsql with `target` as its source and fuzzes.
async fn fuzz_target(target: &str) {
    let scale = env_or("FEDSQL_FUZZ_SCALE", "0.01");
    let reference_db = if target == "postgres" {
        "fedsql_fuzz"
    } else {
        "fedsql_fuzz_ref"
    };
    let (reference, url, data) = load_postgres(reference_db, &TABLES, &scale).await;
    reference
        .batch_execute("SET statement_timeout = '30s'")
        .await
        .unwrap();
    // The source, the database fedsql's queries run in, and how they name
    // the tables (in database `tpch`, unqualified names resolve in
    // tpch.public).
    let (source, database, tables) = if target == "postgres" {
        let source = format!("CREATE SOURCE tpch TYPE postgres OPTIONS (url '{url}')");
        (source, "tpch", "")
    } else {
        let wh = load_mariadb("fedsql_fuzz_wh", &TABLES, data.path());
        let source = format!(
            "CREATE SOURCE wh TYPE odbc OPTIONS (connection_string '{wh}', dialect 'mysql')"
        );
        (source, "demo", "wh.fedsql_fuzz_wh.")
    };
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let admin = server.connect("demo").await;
    admin.simple_query(&source).await.unwrap();
    let report = fuzz(target, &reference, &server, database, tables).await;
    check(&report);
}
