//! `TRAIN MODEL … FEDERATED BY` on the demo catalog through the Postgres
//! wire: federated training, the registry, `predict`, and errors.

use fedsql_tests::{error_message, sqlstate, FedsqlServer};

/// The fraud features: the hidden rule uses ln(amount), the channel, the
/// merchant category, night hours and the customer's credit score.
const FRAUD_INPUT: &str = "SELECT ln(t.amount) AS log_amount, t.channel, t.merchant_category, \
     CAST(date_part('hour', t.ts) < 5 AS INT) AS night, c.credit_score, c.region, t.is_fraud \
     FROM bank.transactions t JOIN bank.customers c USING (customer_id)";

const FRAUD_OPTIONS: &str =
    "rounds = 5, strategy = 'fedavg', learning_rate = 0.1, batch_size = 64, seed = 7";

/// Accuracy of `model` over every demo transaction, computed in SQL with
/// `predict`.
async fn accuracy_in_sql(client: &tokio_postgres::Client, model: &str) -> f64 {
    let sql = format!(
        "SELECT avg(CASE WHEN predict('{model}', log_amount, channel, merchant_category, night, \
         credit_score) = is_fraud THEN 1.0 ELSE 0.0 END) FROM ({FRAUD_INPUT}) AS f"
    );
    client
        .query_one(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get::<_, f64>(0)
}

fn metric(metrics_json: &str, name: &str) -> Option<f64> {
    let key = format!("\"{name}\":");
    let at = metrics_json.find(&key)? + key.len();
    metrics_json[at..]
        .split([',', '}'])
        .next()?
        .trim()
        .parse()
        .ok()
}

#[tokio::test]
async fn federated_logistic_regression_learns_the_fraud_rule() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;

    // The simple protocol (what psql uses) answers TRAIN with the new
    // version's row.
    let messages = client
        .simple_query(&format!(
            "TRAIN MODEL fraud USING logistic_regression PREDICT is_fraud \
             FROM ({FRAUD_INPUT}) FEDERATED BY region WITH ({FRAUD_OPTIONS})"
        ))
        .await
        .unwrap();
    let rows: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get("model"), Some("fraud"));
    assert_eq!(rows[0].get("version"), Some("1"));
    let metrics = rows[0].get("metrics").unwrap().to_string();
    let validation_accuracy = metric(&metrics, "accuracy").expect("accuracy reported");

    // Better than always answering "not fraud", and predict() agrees with
    // the reported validation accuracy.
    let manifest: String = std::fs::read_to_string(
        std::fs::read_dir(dir.path().join("demo"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
            .join("manifest.json"),
    )
    .unwrap();
    let majority = metric(&manifest, "majority_accuracy").unwrap();
    let bayes = metric(&manifest, "bayes_accuracy").unwrap();
    let in_sql = accuracy_in_sql(&client, "fraud").await;
    assert!(
        in_sql > majority + 0.01,
        "accuracy {in_sql:.4} does not beat the majority class {majority:.4}"
    );
    // Within 2 points of the best any model can do on these labels.
    assert!(
        in_sql >= bayes - 0.02,
        "accuracy {in_sql:.4} more than 2 points below Bayes {bayes:.4}"
    );
    assert!(
        in_sql <= bayes + 0.02,
        "accuracy {in_sql:.4} above Bayes {bayes:.4}?"
    );
    assert!(
        (in_sql - validation_accuracy).abs() < 0.03,
        "{in_sql} vs {metrics}"
    );

    // One row per round × client × phase, every client in every round.
    let regions: i64 = client
        .query_one("SELECT count(DISTINCT region) FROM bank.customers", &[])
        .await
        .unwrap()
        .get(0);
    let history = client
        .query(
            "SELECT round, phase, count(*), sum(num_examples), min(status) \
             FROM fedsql.system.training_rounds WHERE model = 'fraud' AND version = 1 \
             GROUP BY round, phase ORDER BY round, phase",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(history.len(), 10);
    for row in &history {
        assert_eq!(row.get::<_, i64>(2), regions);
        assert_eq!(row.get::<_, String>(4), "ok");
    }

    // Weights went over the Flight exchange both ways: at least the model's
    // own bytes (more than 5 features × 2 classes of f32) each time.
    let bytes = client
        .query_one(
            "SELECT min(bytes_sent), min(bytes_received), count(*) FROM fedsql.system.training_rounds \
             WHERE model = 'fraud' AND phase = 'train'",
            &[],
        )
        .await
        .unwrap();
    assert!(
        bytes.get::<_, i64>(0) > 40,
        "bytes_sent {}",
        bytes.get::<_, i64>(0)
    );
    assert!(
        bytes.get::<_, i64>(1) > 40,
        "bytes_received {}",
        bytes.get::<_, i64>(1)
    );

    // The registry: SHOW MODELS, DESCRIBE MODEL, versions, activation.
    let shown = client.query("SHOW MODELS", &[]).await.unwrap();
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].get::<_, String>("kind"), "logistic_regression");
    let features: Vec<String> = client
        .query("DESCRIBE MODEL fraud", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>("feature"))
        .collect();
    assert_eq!(
        features,
        [
            "log_amount",
            "channel",
            "merchant_category",
            "night",
            "credit_score",
            "is_fraud"
        ]
    );
    client
        .batch_execute(&format!(
            "TRAIN MODEL fraud USING logistic_regression PREDICT is_fraud \
             FROM ({FRAUD_INPUT}) FEDERATED BY region WITH (rounds = 1, seed = 8)"
        ))
        .await
        .unwrap();
    let versions = client
        .query("SHOW VERSIONS IN MODEL fraud", &[])
        .await
        .unwrap();
    let active: Vec<(i64, bool)> = versions.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(active, [(1, false), (2, true)]);
    client
        .batch_execute("ALTER MODEL fraud SET ACTIVE VERSION 1")
        .await
        .unwrap();
    let again = accuracy_in_sql(&client, "fraud").await;
    assert_eq!(again, in_sql, "version 1 is active again");
    let pinned = accuracy_in_sql(&client, "fraud@1").await;
    assert_eq!(pinned, in_sql);

    // predict_proba is a probability; wrong arity is a clear error.
    let p: f64 = client
        .query_one(
            &format!(
                "SELECT max(predict_proba('fraud', log_amount, channel, merchant_category, night, \
                 credit_score)) FROM ({FRAUD_INPUT}) AS f"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(p > 0.5 && p <= 1.0, "{p}");
    let err = client
        .query("SELECT predict('fraud', 1.0) FROM bank.customers", &[])
        .await
        .unwrap_err();
    assert!(
        error_message(&err).contains("log_amount, channel, merchant_category, night, credit_score"),
        "{}",
        error_message(&err)
    );

    // Models survive a restart.
    drop(client);
    let status = server.stop();
    assert!(status.success());
    let server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;
    assert_eq!(accuracy_in_sql(&client, "fraud").await, in_sql);
    client
        .batch_execute("DROP MODEL fraud VERSION 2")
        .await
        .unwrap();
    client.batch_execute("DROP MODEL fraud").await.unwrap();
    let err = client.batch_execute("DROP MODEL fraud").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42704");
    client
        .batch_execute("DROP MODEL IF EXISTS fraud")
        .await
        .unwrap();
    assert!(client.query("SHOW MODELS", &[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn federated_matches_central_training_and_other_strategies_converge() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;
    let train = |name: &str, from: String, by: &str, extra: &str| {
        format!(
            "TRAIN MODEL {name} USING logistic_regression PREDICT is_fraud FROM ({from}) \
             FEDERATED BY {by} WITH ({FRAUD_OPTIONS}{extra})"
        )
    };
    client
        .batch_execute(&train("federated", FRAUD_INPUT.into(), "region", ""))
        .await
        .unwrap();
    // Central: every row in one client, same model, same epochs budget.
    client
        .batch_execute(&train(
            "central",
            format!(
                "SELECT log_amount, channel, merchant_category, night, credit_score, is_fraud, \
                 'all' AS everyone FROM ({FRAUD_INPUT}) AS f"
            ),
            "everyone",
            ", min_train_nodes = 1, min_available_nodes = 1",
        ))
        .await
        .unwrap();
    let federated = accuracy_in_sql(&client, "federated").await;
    let central = accuracy_in_sql(&client, "central").await;
    assert!(
        (federated - central).abs() <= 0.01,
        "federated {federated:.4} vs central {central:.4}"
    );
    for (name, extra) in [
        ("prox", ", strategy = 'fedprox', proximal_mu = 0.1"),
        ("adam", ", strategy = 'fedadam'"),
        ("median", ", strategy = 'fedmedian'"),
    ] {
        let sql =
            train(name, FRAUD_INPUT.into(), "region", extra).replace("strategy = 'fedavg', ", "");
        client
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let acc = accuracy_in_sql(&client, name).await;
        assert!(acc > 0.8, "{name}: accuracy {acc:.4}");
    }
}

#[tokio::test]
async fn regression_reports_rmse_and_r2() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;
    // income is drawn from age, tenure and segment (see the demo's docs).
    client
        .batch_execute(
            "TRAIN MODEL income USING linear_regression PREDICT income \
             FROM (SELECT age, tenure_months, segment, credit_score, region, income FROM bank.customers) \
             FEDERATED BY region WITH (rounds = 5, learning_rate = 0.05, seed = 3)",
        )
        .await
        .unwrap();
    let metrics: String = client
        .query_one(
            "SELECT metrics FROM fedsql.system.models WHERE model = 'income' AND active",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let rmse = metric(&metrics, "rmse").expect("rmse");
    let r2 = metric(&metrics, "r2").expect("r2");
    assert!(rmse > 0.0, "{metrics}");
    assert!(r2 > 0.0 && r2 <= 1.0, "{metrics}");
    let predicted: f64 = client
        .query_one(
            "SELECT avg(predict('income', age, tenure_months, segment, credit_score)) FROM bank.customers",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let actual: f64 = client
        .query_one("SELECT avg(income) FROM bank.customers", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        (predicted - actual).abs() < 0.1 * actual,
        "{predicted} vs {actual}"
    );
}

#[tokio::test]
async fn bad_training_statements_fail_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;
    let base = "TRAIN MODEL m USING logistic_regression PREDICT is_fraud \
                FROM (SELECT amount, channel, region, is_fraud FROM bank.transactions t \
                JOIN bank.customers c USING (customer_id)) FEDERATED BY region";
    let cases = [
        (
            format!("{base} WITH (roundz = 3)"),
            "22023",
            "unknown option roundz",
        ),
        (
            format!("{base} WITH (rounds = 'many')"),
            "22023",
            "rounds expects",
        ),
        (
            format!("{base} WITH (strategy = 'fedbest')"),
            "22023",
            "unknown strategy 'fedbest'",
        ),
        (
            format!("{base} WITH (min_train_nodes = 99)"),
            "42804",
            "fewer than",
        ),
        (
            base.replace("PREDICT is_fraud", "PREDICT nope"),
            "42703",
            "target column \"nope\"",
        ),
        (
            base.replace("logistic_regression", "linear_regression")
                .replace("PREDICT is_fraud", "PREDICT channel"),
            "42804",
            "numeric target",
        ),
        (
            base.replace("logistic_regression", "random_forest"),
            "22023",
            "unknown model kind random_forest",
        ),
        (
            base.replace("FEDERATED BY region", "FEDERATED ON SITES ('eu', 'us')"),
            "42704",
            "site \"eu\" does not exist",
        ),
        (
            base.replace("USING (customer_id))", "USING (customer_id) WHERE false)"),
            "42804",
            "no rows",
        ),
        (
            base.replace("logistic_regression", "mlp(hidden_units = 'wide')"),
            "22023",
            "hidden_units",
        ),
    ];
    for (sql, code, needle) in cases {
        let err = client.batch_execute(&sql).await.unwrap_err();
        assert_eq!(sqlstate(&err), code, "{sql}: {}", error_message(&err));
        assert!(
            error_message(&err).contains(needle),
            "{sql}: {}",
            error_message(&err)
        );
    }
    // Nothing was registered, and the session still works.
    assert!(client.query("SHOW MODELS", &[]).await.unwrap().is_empty());
    assert_eq!(
        client
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        1
    );
}

#[tokio::test]
async fn a_failing_client_is_recorded_and_accept_failures_decides() {
    let dir = tempfile::tempdir().unwrap();
    // The test hook: client "eu" fails in round 2.
    let server = FedsqlServer::start_with_env(dir.path(), &[], &[("FEDSQL_FAULT_INJECT", "eu:2")]);
    let client = server.connect("demo").await;
    let sql = |name: &str, accept: bool| {
        format!(
            "TRAIN MODEL {name} USING logistic_regression PREDICT is_fraud FROM ({FRAUD_INPUT}) \
             FEDERATED BY region WITH (rounds = 3, min_train_nodes = 2, accept_failures = {accept})"
        )
    };
    client.batch_execute(&sql("tolerant", true)).await.unwrap();
    let failed = client
        .query(
            "SELECT round, client, status, bytes_received FROM fedsql.system.training_rounds \
             WHERE model = 'tolerant' AND status <> 'ok'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].get::<_, i64>(0), 2);
    assert_eq!(failed[0].get::<_, String>(1), "eu");
    assert_eq!(failed[0].get::<_, String>(2), "failed");
    assert_eq!(
        failed[0].get::<_, Option<i64>>(3),
        None,
        "no update arrived"
    );

    let err = client
        .batch_execute(&sql("strict", false))
        .await
        .unwrap_err();
    assert!(
        error_message(&err).contains("round 2: eu"),
        "{}",
        error_message(&err)
    );
    assert!(client
        .query("SHOW VERSIONS IN MODEL strict", &[])
        .await
        .is_err());
}

#[tokio::test]
async fn intent_classifier_on_free_text() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;
    // Free text becomes a hashed bag of words; five intents, three regions.
    client
        .batch_execute(
            "TRAIN MODEL intent USING logistic_regression PREDICT intent \
             FROM (SELECT text, region, intent FROM bank.support_messages) \
             FEDERATED BY region WITH (rounds = 10, learning_rate = 0.5, seed = 1)",
        )
        .await
        .unwrap();
    let metrics: String = client
        .query_one(
            "SELECT metrics FROM fedsql.system.models WHERE model = 'intent'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // Accuracy on the 20% of each region's messages held out of training.
    let held_out = metric(&metrics, "accuracy").unwrap();
    assert!(held_out >= 0.95, "{metrics}");
    let predicted: String = client
        .query_one(
            "SELECT predict('intent', 'please block my lost debit card')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(predicted, "card_lost");
}

#[tokio::test]
async fn evaluate_model_merges_per_client_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;
    client
        .batch_execute(&format!(
            "TRAIN MODEL fraud USING logistic_regression PREDICT is_fraud \
             FROM ({FRAUD_INPUT}) FEDERATED BY region WITH ({FRAUD_OPTIONS})"
        ))
        .await
        .unwrap();
    let rows = client
        .query(
            &format!("EVALUATE MODEL fraud ON ({FRAUD_INPUT}) FEDERATED BY region"),
            &[],
        )
        .await
        .unwrap();
    let get = |i: usize, c: &str| rows[i].get::<_, Option<f64>>(c);
    assert_eq!(rows[0].get::<_, String>("client"), "all");
    let total: i64 = rows[0].get("num_examples");
    let per_client: i64 = rows[1..]
        .iter()
        .map(|r| r.get::<_, i64>("num_examples"))
        .sum();
    assert_eq!(total, per_client);
    // The merged accuracy is what predict() gives over the same rows.
    let accuracy = get(0, "accuracy").unwrap();
    assert!((accuracy - accuracy_in_sql(&client, "fraud").await).abs() < 1e-9);
    let auc = get(0, "auc").unwrap();
    assert!(auc > 0.6 && auc <= 1.0, "auc {auc}");
    assert!(
        get(0, "rmse").is_none(),
        "no regression metrics for a classifier"
    );
    for m in ["precision", "recall", "f1", "log_loss"] {
        assert!(get(0, m).is_some_and(|v| v >= 0.0), "{m}");
    }
    let err = client
        .batch_execute(&format!(
            "EVALUATE MODEL fraud VERSION 9 ON ({FRAUD_INPUT})"
        ))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42704");
    let err = client
        .batch_execute("EVALUATE MODEL fraud ON (SELECT 1 AS x)")
        .await
        .unwrap_err();
    assert!(
        error_message(&err).contains("target column is_fraud"),
        "{}",
        error_message(&err)
    );
}

#[tokio::test]
async fn psql_shows_training_rounds_as_notices() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let (ok, stdout, stderr) = fedsql_tests::psql(
        &server,
        "demo",
        &format!(
            "TRAIN MODEL fraud USING logistic_regression PREDICT is_fraud \
             FROM ({FRAUD_INPUT}) FEDERATED BY region WITH (rounds = 3)"
        ),
    );
    assert!(ok, "{stderr}");
    for round in 1..=3 {
        // (The helper runs psql with VERBOSITY=verbose, hence the code.)
        assert!(
            stderr.contains(&format!(
                "NOTICE:  00000: round {round}/3: 3 client(s) trained; loss "
            )),
            "{stderr}"
        );
    }
    // Then the new version's row.
    assert!(
        stdout.contains("fraud") && stdout.contains("accuracy"),
        "{stdout}"
    );
}

/// `secure_aggregation = true`: the clients mask their updates (SecAgg over
/// the Flight exchange), the coordinator unmasks only their weighted mean —
/// which is FedAvg's, so the model learns as well as without it — and a
/// client that drops out after sharing its keys is unmasked away.
#[tokio::test]
async fn secure_aggregation_learns_like_fedavg_and_survives_a_dropout() {
    let dir = tempfile::tempdir().unwrap();
    // Client "eu" fails in round 2, after the key and share stages.
    let server = FedsqlServer::start_with_env(dir.path(), &[], &[("FEDSQL_FAULT_INJECT", "eu:2")]);
    let client = server.connect("demo").await;
    let train = |name: &str, extra: &str| {
        format!(
            "TRAIN MODEL {name} USING logistic_regression PREDICT is_fraud FROM ({FRAUD_INPUT}) \
             FEDERATED BY region WITH ({FRAUD_OPTIONS}{extra})"
        )
    };
    client
        .batch_execute(&train("secure", ", secure_aggregation = true"))
        .await
        .unwrap_or_else(|e| panic!("{}", error_message(&e)));
    client
        .batch_execute(&train("plain", ""))
        .await
        .unwrap_or_else(|e| panic!("{}", error_message(&e)));
    let (secure, plain) = (
        accuracy_in_sql(&client, "secure").await,
        accuracy_in_sql(&client, "plain").await,
    );
    assert!(secure > 0.8, "secure aggregation accuracy {secure}");
    assert!(
        (secure - plain).abs() < 0.01,
        "secure {secure} vs plain {plain}: the same mean up to quantization"
    );
    // The dropout is a failed row; the other two clients' round went on.
    let failed = client
        .query(
            "SELECT round, client FROM fedsql.system.training_rounds \
             WHERE model = 'secure' AND status <> 'ok'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].get::<_, i64>(0), failed[0].get::<_, String>(1)),
        (2, "eu".to_string())
    );

    // Strategies that need each update, and server-side DP, cannot run on
    // a masked sum: refused before training.
    for extra in [
        ", secure_aggregation = true, strategy = 'krum'",
        ", secure_aggregation = true, dp = 'server_fixed', clipping_norm = 1.0",
    ] {
        let err = client
            .batch_execute(&train("refused", extra))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err), "22023", "{}", error_message(&err));
    }
}

/// The input of the restart test, in a fixed order so every run reads the
/// same rows in the same order.
const ORDERED_INPUT: &str = "SELECT ln(t.amount) AS log_amount, t.channel, t.merchant_category, \
     c.credit_score, c.region, t.is_fraud \
     FROM bank.transactions t JOIN bank.customers c USING (customer_id) ORDER BY t.tx_id";

fn ordered_training(model: &str) -> String {
    // fedadam keeps moments between rounds: a resume must restore them.
    format!(
        "TRAIN MODEL {model} USING mlp PREDICT is_fraud FROM ({ORDERED_INPUT}) FEDERATED BY region \
         WITH (rounds = 8, strategy = 'fedadam', seed = 11, local_epochs = 2)"
    )
}

/// The run's `(status, rounds_completed)` in `fedsql.system.training_runs`.
async fn run_state(client: &tokio_postgres::Client, model: &str) -> Option<(String, i64)> {
    client
        .query_opt(
            "SELECT status, rounds_completed FROM fedsql.system.training_runs WHERE model = $1",
            &[&model],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

#[tokio::test]
async fn a_coordinator_killed_mid_training_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;
    client
        .batch_execute(&ordered_training("straight"))
        .await
        .unwrap();

    // The same run again, killed (SIGKILL) once three rounds are complete.
    let trainer = server.connect("demo").await;
    let statement = ordered_training("resumed");
    let cut_off = tokio::spawn(async move { trainer.batch_execute(&statement).await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if let Some((status, done)) = run_state(&client, "resumed").await {
            assert_eq!(status, "running");
            if done >= 3 {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no third round within 120 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.crash_and_restart(&[], &[]);
    assert!(
        cut_off.await.unwrap().is_err(),
        "the cut-off TRAIN reported success"
    );

    let client = server.connect("demo").await;
    let (status, done) = run_state(&client, "resumed")
        .await
        .expect("an interrupted run");
    assert_eq!(status, "interrupted");
    assert!((3..8).contains(&done), "{done} rounds completed");
    // A new TRAIN of that model is refused while the run can be resumed.
    let refused = client
        .batch_execute("TRAIN MODEL resumed USING mlp PREDICT is_fraud FROM bank.transactions FEDERATED BY channel")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&refused), "55000", "{}", error_message(&refused));
    assert!(error_message(&refused).contains("RESUME TRAINING resumed"));
    let none = client
        .batch_execute("RESUME TRAINING nothing")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&none), "42704");

    client
        .batch_execute("RESUME TRAINING resumed")
        .await
        .unwrap();
    assert_eq!(run_state(&client, "resumed").await, None);
    // Every round is in the history once, and the weights are the
    // uninterrupted run's: the same probability for every row.
    let rounds: Vec<i64> = client
        .query(
            "SELECT DISTINCT round FROM fedsql.system.training_rounds \
             WHERE model = 'resumed' AND phase = 'train' ORDER BY round",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rounds, (1..=8).collect::<Vec<i64>>());
    let features = "ln(t.amount), t.channel, t.merchant_category, c.credit_score";
    let row = client
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE predict_proba('straight', {features}) \
                 = predict_proba('resumed', {features})), count(*) \
                 FROM bank.transactions t JOIN bank.customers c USING (customer_id)"
            ),
            &[],
        )
        .await
        .unwrap();
    let (equal, all): (i64, i64) = (row.get(0), row.get(1));
    assert!(all > 1000);
    assert_eq!(
        equal, all,
        "resumed weights differ from the uninterrupted run's"
    );
    let metrics: Vec<String> = client
        .query(
            "SELECT metrics FROM fedsql.system.models ORDER BY model",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(metrics[0], metrics[1]);
}
