//! `TRAIN MODEL`: the coordinator side of federated training.
//!
//! The training input is any fedsql query. Its rows are split by the
//! `FEDERATED BY` column into clients; each client summarises its own
//! columns for the shared feature transform, then trains the global model on
//! its own rows only, round after round, and hands back weights and metrics,
//! which the strategy merges. Clients of a round run in parallel on the
//! blocking pool. The result is a new version in the model registry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::prelude::SessionContext;
use fedsql_sql::{EvaluateModel, ExistingModel, Federation, TrainModel};
use fedsql_udfs::evaluate::{check_target, EvalStats, METRIC_COLUMNS};
use fedsql_udfs::exchange::{ExchangeClient, ExchangeServer};
use fedsql_udfs::features::{
    column_kind, text_values, ColumnKind, ColumnSummary, FeatureTransform,
};
use fedsql_udfs::model::{Activation, Architecture};
use fedsql_udfs::options::TrainingOptions;
use fedsql_udfs::registry::{LiveTraining, ModelVersion, RoundRecord, Task};
use fedsql_udfs::strategy::ClientUpdate;
use fedsql_udfs::train::{
    evaluate, train_local, Examples, LocalConfig, LocalResult, Metrics, Targets,
};
use fedsql_udfs::UdfError;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::engine::{quote_literal, Engine, FedsqlOutcome};
use crate::error::{Result, ServerError};
use crate::secure_round::{secure_round, SecureClient};
use fedsql_connectors::ReadPurpose;

tokio::task_local! {
    /// Where progress lines of the statement running on this task go (the
    /// Postgres wire turns them into NOTICE messages); unset elsewhere.
    pub static PROGRESS: tokio::sync::mpsc::UnboundedSender<String>;
}

/// Sends a progress line to the client, if one is listening.
fn progress(line: String) {
    let _ = PROGRESS.try_with(|tx| tx.send(line));
}

/// A training failure as a server error: bad options and inputs are the
/// user's to fix (22023 / 42804), the rest is the run's (XX000).
pub fn udf_error(e: UdfError) -> ServerError {
    let sqlstate = match &e {
        UdfError::Option(_) => "22023",
        UdfError::Input(_) => "42804",
        UdfError::NotFound(_) => "42704",
        UdfError::Training(_) => "XX000",
    };
    ServerError::Query {
        sqlstate: sqlstate.into(),
        message: e.to_string(),
        position: None,
    }
}

fn input_error(message: String) -> ServerError {
    udf_error(UdfError::Input(message))
}

/// One federated client: its name and its rows split for training and
/// validation.
struct Client {
    name: String,
    train: Arc<Examples>,
    validation: Arc<Examples>,
    /// count, sum and sum of squares of its validation targets (regression),
    /// for a federated R².
    target_moments: (f64, f64, f64),
}

/// `mlp(hidden_units = '64,32', activation = 'relu')` → layers and activation.
fn architecture_params(tm: &TrainModel) -> Result<(Vec<usize>, Activation)> {
    let mut hidden = vec![];
    let mut activation = Activation::Relu;
    match tm.algorithm.as_str() {
        "linear_regression" | "logistic_regression" => {
            if let Some((k, _)) = tm.algorithm_params.first() {
                return Err(udf_error(UdfError::Option(format!(
                    "{} takes no parameters, got {k}",
                    tm.algorithm
                ))));
            }
        }
        "mlp" => {
            hidden = vec![32];
            for (k, v) in &tm.algorithm_params {
                match k.as_str() {
                    "hidden_units" => {
                        hidden = v
                            .as_text()
                            .split(',')
                            .map(|n| n.trim().parse::<usize>().ok().filter(|n| *n > 0))
                            .collect::<Option<Vec<_>>>()
                            .ok_or_else(|| {
                                udf_error(UdfError::Option(format!(
                                    "hidden_units expects sizes like '64,32', got '{}'",
                                    v.as_text()
                                )))
                            })?;
                    }
                    "activation" => {
                        activation = Activation::parse(&v.as_text()).map_err(udf_error)?
                    }
                    other => {
                        return Err(udf_error(UdfError::Option(format!(
                            "unknown mlp parameter {other} (known: hidden_units, activation)"
                        ))))
                    }
                }
            }
        }
        other => {
            return Err(udf_error(UdfError::Option(format!(
                "unknown model kind {other} (known: linear_regression, logistic_regression, mlp)"
            ))))
        }
    }
    Ok((hidden, activation))
}

/// The error for a column the input lacks (42703), listing what it has.
fn missing_column(role: &str, name: &str, input: &str, schema: &SchemaRef) -> ServerError {
    let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    ServerError::Query {
        sqlstate: "42703".into(),
        message: format!(
            "{role} column \"{name}\" is not in the {input} input (columns: {})",
            columns.join(", ")
        ),
        position: None,
    }
}

/// Splits `all` into one batch per distinct text value of column `by`
/// (sorted by value), keeping only rows `keep` accepts; rows whose value is
/// NULL belong to no client.
fn split_by(
    all: &RecordBatch,
    by: usize,
    keep: impl Fn(usize) -> bool,
    sql: &str,
) -> Result<Vec<(String, RecordBatch)>> {
    let mut rows: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (row, name) in text_values(all.column(by))
        .map_err(udf_error)?
        .into_iter()
        .enumerate()
    {
        if let Some(name) = name.filter(|_| keep(row)) {
            rows.entry(name).or_default().push(row as u32);
        }
    }
    rows.into_iter()
        .map(|(name, rows)| {
            let indices = UInt32Array::from(rows);
            let columns = all
                .columns()
                .iter()
                .map(|c| take(c, &indices, None))
                .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
            Ok((name, RecordBatch::try_new(all.schema(), columns)?))
        })
        .collect::<std::result::Result<_, datafusion::arrow::error::ArrowError>>()
        .map_err(|e| ServerError::from_datafusion(&e.into(), sql))
}

impl Engine {
    /// Runs `sql` in `ctx` and returns all its rows as one batch.
    async fn query_rows(&self, ctx: &SessionContext, sql: &str) -> Result<RecordBatch> {
        let plan = self.plan_sql(ctx, sql).await?;
        let frame = ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| ServerError::from_datafusion(&e, sql))?;
        let schema = Arc::clone(frame.schema().inner());
        let batches = frame
            .collect()
            .await
            .map_err(|e| ServerError::from_datafusion(&e, sql))?;
        concat_batches(&schema, &batches).map_err(|e| ServerError::from_datafusion(&e.into(), sql))
    }

    /// Runs `EVALUATE MODEL`: each client (each `FEDERATED BY` value, or all
    /// rows as one) scores its rows and reports sufficient statistics; the
    /// answer has a row per client and one for `all`, merged from them.
    pub(crate) async fn evaluate_model(
        &self,
        ctx: &SessionContext,
        em: &EvaluateModel,
    ) -> Result<FedsqlOutcome> {
        let reference = match em.version {
            Some(v) => format!("{}@{v}", em.name),
            None => em.name.clone(),
        };
        let model = self.models().load(&reference).map_err(udf_error)?;
        let all = self.query_rows(ctx, &em.query).await?;
        let schema = all.schema();
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        check_target(&model, &columns).map_err(udf_error)?;

        // Each client's statistics are computed on its rows alone.
        let clients = match &em.federated_by {
            Some(by) => {
                let index = schema
                    .index_of(by)
                    .map_err(|_| missing_column("FEDERATED BY", by, "evaluation", &schema))?;
                split_by(&all, index, |_| true, &em.query)?
            }
            None => vec![("all".to_string(), all)],
        };
        let mut rows = Vec::new();
        let mut total = EvalStats::default();
        for (name, batch) in clients {
            let features = model
                .meta
                .transform
                .columns_by_name(&batch)
                .map_err(udf_error)?;
            let target = batch
                .column_by_name(&model.meta.target)
                .cloned()
                .ok_or_else(|| input_error(format!("missing target {}", model.meta.target)))?;
            let stats = EvalStats::of(&model, &features, &target).map_err(udf_error)?;
            total.merge(&stats);
            if em.federated_by.is_some() {
                rows.push((name, stats));
            }
        }
        if total.n == 0 {
            return Err(input_error(
                "the evaluation input has no rows with a target".into(),
            ));
        }
        rows.insert(0, ("all".into(), total));

        // The answer is a VALUES query, so both wires describe and stream it
        // like any other result.
        let number = |v: Option<f64>| match v {
            Some(x) if x.is_finite() => format!("CAST({x:?} AS DOUBLE)"),
            _ => "CAST(NULL AS DOUBLE)".into(),
        };
        let values: Vec<String> = rows
            .iter()
            .map(|(client, stats)| {
                let metrics = stats.metrics(&model.meta.task);
                let cells: Vec<String> = METRIC_COLUMNS
                    .iter()
                    .map(|c| number(metrics.iter().find(|(m, _)| m == c).and_then(|(_, v)| *v)))
                    .collect();
                format!(
                    "({}, {}, {}, CAST({} AS BIGINT), {})",
                    quote_literal(&model.meta.model),
                    model.meta.version,
                    quote_literal(client),
                    stats.n,
                    cells.join(", ")
                )
            })
            .collect();
        Ok(FedsqlOutcome::Query(format!(
            "SELECT * FROM (VALUES {}) AS evaluation(model, version, client, num_examples, {})",
            values.join(", "),
            METRIC_COLUMNS.join(", ")
        )))
    }

    /// Runs `TRAIN MODEL` in the session `ctx` (database `database`).
    pub(crate) async fn train_model(
        &self,
        ctx: &SessionContext,
        tm: &TrainModel,
    ) -> Result<FedsqlOutcome> {
        let registry = self.models();
        let exists = registry.active(&tm.name).is_some();
        match tm.existing {
            ExistingModel::IfNotExists if exists => {
                return Ok(FedsqlOutcome::Command("TRAIN MODEL".into()))
            }
            ExistingModel::Replace if exists => {
                registry.drop_model(&tm.name, None).map_err(udf_error)?;
            }
            _ => {}
        }
        let options = TrainingOptions::parse(
            &tm.options
                .iter()
                .map(|(k, v)| (k.clone(), v.as_text()))
                .collect::<Vec<_>>(),
        )
        .map_err(udf_error)?;
        let (hidden, activation) = architecture_params(tm)?;
        let by = match &tm.federation {
            Federation::ByColumn(c) => c.clone(),
            Federation::OnSites(_) => {
                return Err(ServerError::NotSupported {
                    statement: "TRAIN MODEL … FEDERATED ON SITES".into(),
                    reason: "sites (`fedsql site`) have not landed; use FEDERATED BY a column"
                        .into(),
                })
            }
        };

        // The input: any fedsql query, planned in the caller's session. Its
        // source reads are labelled with the version being made, so what a
        // version was trained on (e.g. the Kafka offsets) can be traced.
        let sql = tm.input.to_sql();
        let version = registry.next_version(&tm.name);
        let purpose = Arc::new(ReadPurpose::new(format!(
            "model {} version {version}",
            tm.name
        )));
        let all = self
            .query_rows(&with_purpose(ctx, Arc::clone(&purpose)), &sql)
            .await?;
        let schema = all.schema();
        let find = |name: &str, role: &str| {
            schema
                .index_of(name)
                .map_err(|_| missing_column(role, name, "training", &schema))
        };
        let target_index = find(&tm.target, "target")?;
        let by_index = find(&by, "FEDERATED BY")?;
        let mut feature_columns = Vec::new();
        for (i, field) in schema.fields().iter().enumerate() {
            if i == target_index || i == by_index {
                continue;
            }
            let kind = column_kind(field.data_type()).ok_or_else(|| {
                input_error(format!(
                    "column {} of type {} cannot be a feature; leave it out of the input",
                    field.name(),
                    field.data_type()
                ))
            })?;
            feature_columns.push((i, field.name().clone(), field.data_type().clone(), kind));
        }
        if feature_columns.is_empty() {
            return Err(input_error(
                "the training input has no feature columns besides the target and the FEDERATED BY column".into(),
            ));
        }
        if all.num_rows() == 0 {
            return Err(input_error("the training input has no rows".into()));
        }

        // The task, from the model kind and the target's type.
        let target_type = schema.field(target_index).data_type().clone();
        let target_kind = column_kind(&target_type);
        let classify = match (tm.algorithm.as_str(), target_kind) {
            ("linear_regression", Some(ColumnKind::Numeric))
                if target_type != DataType::Boolean =>
            {
                false
            }
            ("linear_regression", _) => {
                return Err(input_error(format!(
                    "linear_regression needs a numeric target; {} is {target_type}",
                    tm.target
                )))
            }
            ("logistic_regression", Some(_)) => true,
            ("mlp", Some(ColumnKind::Numeric)) => target_type == DataType::Boolean,
            ("mlp", Some(ColumnKind::Text)) => true,
            _ => {
                return Err(input_error(format!(
                    "the target {} of type {target_type} cannot be predicted",
                    tm.target
                )))
            }
        };

        // Split rows into clients by the FEDERATED BY value; rows without a
        // target cannot train anything.
        let targets_text = text_values(all.column(target_index)).map_err(udf_error)?;
        let client_batches = split_by(&all, by_index, |row| targets_text[row].is_some(), &sql)?;
        let available = client_batches.len();
        if available < options.min_available_nodes || available < options.min_train_nodes {
            return Err(input_error(format!(
                "FEDERATED BY {by} gives {available} client(s), fewer than \
                 min_available_nodes = {} / min_train_nodes = {}",
                options.min_available_nodes, options.min_train_nodes
            )));
        }

        // Federated statistics: each client summarises, the coordinator merges.
        let mut merged: Vec<ColumnSummary> = vec![ColumnSummary::default(); feature_columns.len()];
        let mut labels = std::collections::BTreeSet::new();
        for (_, batch) in &client_batches {
            for (slot, (i, _, _, kind)) in merged.iter_mut().zip(&feature_columns) {
                slot.merge(&ColumnSummary::of(*kind, batch.column(*i)).map_err(udf_error)?);
            }
            if classify {
                labels.extend(
                    text_values(batch.column(target_index))
                        .map_err(udf_error)?
                        .into_iter()
                        .flatten(),
                );
            }
        }
        let transform = FeatureTransform::from_summaries(
            &feature_columns
                .iter()
                .zip(merged)
                .map(|((_, name, t, kind), s)| (name.clone(), t.clone(), *kind, s))
                .collect::<Vec<_>>(),
        );
        let labels: Vec<String> = labels.into_iter().collect();
        // Regression targets are standardized with federated moments, so one
        // learning rate works whatever the target's units.
        let (target_mean, target_std) = if classify {
            (0.0, 1.0)
        } else {
            let mut s = ColumnSummary::default();
            for (_, batch) in &client_batches {
                s.merge(
                    &ColumnSummary::of(ColumnKind::Numeric, batch.column(target_index))
                        .map_err(udf_error)?,
                );
            }
            let n = s.count.max(1) as f64;
            let mean = s.sum / n;
            let std = (s.sum_squares / n - mean * mean).max(0.0).sqrt();
            (mean, if std > 1e-12 { std } else { 1.0 })
        };
        if classify && labels.len() < 2 {
            return Err(input_error(format!(
                "the target {} has {} distinct value(s); a classifier needs at least 2",
                tm.target,
                labels.len()
            )));
        }
        let task = if classify {
            Task::Classification {
                labels: labels.clone(),
                boolean: target_type == DataType::Boolean,
            }
        } else {
            Task::Regression {
                mean: target_mean,
                std: target_std,
            }
        };

        // Each client's examples, split for validation with its own seed.
        let mut clients = Vec::new();
        for (n, (name, batch)) in client_batches.iter().enumerate() {
            let columns: Vec<ArrayRef> = feature_columns
                .iter()
                .map(|(i, ..)| Arc::clone(batch.column(*i)))
                .collect();
            let features = transform.encode(&columns).map_err(udf_error)?;
            let targets = if classify {
                let text = text_values(batch.column(target_index)).map_err(udf_error)?;
                Targets::Classes {
                    labels: text
                        .into_iter()
                        .map(|t| t.and_then(|t| labels.binary_search(&t).ok()).unwrap_or(0) as u32)
                        .collect(),
                    classes: labels.len(),
                }
            } else {
                let values = fedsql_udfs::features::numeric_values(batch.column(target_index))
                    .map_err(udf_error)?;
                Targets::Regression(
                    values
                        .into_iter()
                        .map(|v| ((v - target_mean) / target_std) as f32)
                        .collect(),
                )
            };
            let examples = Examples {
                features,
                width: transform.width(),
                targets,
            };
            let (train, validation) =
                examples.split(options.validation_split, options.seed + n as u64);
            let target_moments = match &validation.targets {
                Targets::Regression(v) => v.iter().fold((0.0, 0.0, 0.0), |(c, s, q), y| {
                    let y = f64::from(*y);
                    (c + 1.0, s + y, q + y * y)
                }),
                Targets::Classes { .. } => (0.0, 0.0, 0.0),
            };
            clients.push(Client {
                name: name.clone(),
                train: Arc::new(train),
                validation: Arc::new(validation),
                target_moments,
            });
        }

        let arch = Architecture {
            inputs: transform.width(),
            hidden,
            outputs: if classify { labels.len() } else { 1 },
            activation,
        };
        // Rounds show in fedsql.system.training_rounds as they finish.
        let live = registry.begin_training(&tm.name, version);
        let (weights, history, mut metrics) = self
            .run_rounds(&tm.name, &arch, &clients, &options, (&live, target_std))
            .await?;
        // RMSE in the target's own units (the history's already is).
        for (name, value) in metrics.iter_mut() {
            if name == "rmse" {
                *value *= target_std;
            }
        }

        let meta = ModelVersion {
            model: tm.name.clone(),
            version,
            kind: tm.algorithm.clone(),
            target: tm.target.clone(),
            task,
            architecture: arch,
            transform,
            strategy: options.strategy.clone(),
            rounds: options.rounds,
            clients: clients.iter().map(|c| c.name.clone()).collect(),
            options: tm
                .options
                .iter()
                .map(|(k, v)| (k.clone(), v.as_text()))
                .collect(),
            metrics,
            created_at_us: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or(0),
            history,
            input_reads: purpose.reads(),
        };
        // The saved version replaces the live rows (never both at once).
        drop(live);
        registry.save(&meta, &weights).map_err(udf_error)?;
        Ok(FedsqlOutcome::Query(format!(
            "SELECT model, version, kind, target, strategy, rounds, clients, metrics \
             FROM fedsql.system.models WHERE model = {} AND version = {version}",
            quote_literal(&tm.name)
        )))
    }

    /// The rounds: train on the chosen clients in parallel, merge, evaluate
    /// everywhere. Returns the final weights, the history and the final
    /// validation metrics.
    async fn run_rounds(
        &self,
        model: &str,
        arch: &Architecture,
        clients: &[Client],
        options: &TrainingOptions,
        (live, target_std): (&LiveTraining, f64),
    ) -> Result<(Vec<f32>, Vec<RoundRecord>, Vec<(String, f64)>)> {
        let mut strategy = options.strategy().map_err(udf_error)?;
        let mut global = arch.initial_weights(options.seed);
        let mut history = Vec::new();
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        let fault = std::env::var("FEDSQL_FAULT_INJECT").ok();
        let mut last_eval = Vec::new();
        // Weights travel over Arrow Flight even though these clients run in
        // this process: one path for local partitions and remote sites.
        let exchange = ExchangeServer::start().await.map_err(udf_error)?;
        let endpoint = exchange.endpoint();
        for round in 1..=options.rounds {
            let round_start = history.len();
            exchange.publish(round, global.clone());
            let wanted = ((clients.len() as f64 * options.fraction_train).ceil() as usize)
                .clamp(options.min_train_nodes.min(clients.len()), clients.len());
            let mut chosen: Vec<usize> = (0..clients.len()).collect();
            chosen.shuffle(&mut rng);
            chosen.truncate(wanted);
            chosen.sort();

            let mut updates = Vec::new();
            let mut failures = Vec::new();
            if options.secure_aggregation {
                let secure: Vec<SecureClient> = chosen
                    .iter()
                    .map(|&c| SecureClient {
                        name: clients[c].name.clone(),
                        train: Arc::clone(&clients[c].train),
                        config: local_config(options, round, c),
                        fail: fault.as_deref() == Some(&format!("{}:{round}", clients[c].name)),
                    })
                    .collect();
                let outcome = secure_round(round, secure, arch, &global, options, &exchange)
                    .await
                    .map_err(udf_error)?;
                history.extend(outcome.records);
                failures = outcome.failures;
                updates.extend(outcome.update);
            }
            let mut tasks = Vec::new();
            for &c in chosen.iter().filter(|_| !options.secure_aggregation) {
                let client = &clients[c];
                let config = local_config(options, round, c);
                let injected = fault.as_deref() == Some(&format!("{}:{round}", client.name));
                let (arch, examples) = (arch.clone(), Arc::clone(&client.train));
                let (endpoint, name) = (endpoint.clone(), client.name.clone());
                let started = Instant::now();
                let handle = tokio::spawn(async move {
                    let mut link = ExchangeClient::connect(&endpoint).await?;
                    let (weights, fetched) = link.fetch(round).await?;
                    let trained =
                        train_off_runtime(arch, Arc::new(weights), examples, config, injected)
                            .await?;
                    link.send(
                        round,
                        &name,
                        &trained.weights,
                        trained.num_examples,
                        trained.loss,
                    )
                    .await?;
                    Ok::<u64, UdfError>(fetched)
                });
                tasks.push((
                    c,
                    started,
                    tokio::time::timeout(options.round_timeout, handle),
                ));
            }
            for (c, started, task) in tasks {
                let name = clients[c].name.clone();
                let (status, result) = match task.await {
                    // What aggregation uses is what arrived over Flight.
                    Ok(Ok(Ok(fetched))) => match exchange.take_update(round, &name) {
                        Some(update) => ("ok", Some((fetched, update))),
                        None => {
                            failures.push(format!("{name}: its update did not arrive"));
                            ("failed", None)
                        }
                    },
                    Ok(Ok(Err(e))) => {
                        failures.push(format!("{name}: {e}"));
                        ("failed", None)
                    }
                    Ok(Err(e)) => {
                        failures.push(format!("{name}: {e}"));
                        ("failed", None)
                    }
                    Err(_) => {
                        failures.push(format!("{name}: no result within round_timeout"));
                        ("timeout", None)
                    }
                };
                history.push(RoundRecord {
                    round,
                    client: name,
                    phase: "train".into(),
                    num_examples: result.as_ref().map_or(0, |(_, u)| u.num_examples),
                    loss: result.as_ref().map(|(_, u)| u.loss),
                    accuracy: None,
                    rmse: None,
                    duration_ms: started.elapsed().as_millis() as u64,
                    bytes_sent: result.as_ref().map(|(fetched, _)| *fetched),
                    bytes_received: result.as_ref().map(|(_, u)| u.bytes),
                    status: status.into(),
                });
                if let Some((_, u)) = result {
                    updates.push(ClientUpdate {
                        weights: u.weights,
                        num_examples: u.num_examples,
                    });
                }
            }
            if !failures.is_empty() && !options.accept_failures {
                return Err(udf_error(UdfError::Training(format!(
                    "round {round}: {} (accept_failures = false)",
                    failures.join("; ")
                ))));
            }
            // (Under secure aggregation the one update is the survivors' mean.)
            let trained = history[round_start..]
                .iter()
                .filter(|r| r.phase == "train" && r.status == "ok")
                .count();
            if trained < options.min_train_nodes || updates.is_empty() {
                return Err(udf_error(UdfError::Training(format!(
                    "round {round}: {trained} client(s) succeeded, fewer than min_train_nodes = {} ({})",
                    options.min_train_nodes,
                    failures.join("; ")
                ))));
            }
            global = strategy.aggregate(&global, &updates).map_err(udf_error)?;

            // Every client evaluates the merged model on its held-out rows.
            last_eval.clear();
            for client in clients {
                let started = Instant::now();
                let rows = if client.validation.rows() > 0 {
                    &client.validation
                } else {
                    &client.train
                };
                let m = evaluate(arch, &global, rows).map_err(udf_error)?;
                history.push(RoundRecord {
                    round,
                    client: client.name.clone(),
                    phase: "evaluate".into(),
                    num_examples: m.num_examples,
                    loss: Some(m.loss),
                    accuracy: m.accuracy,
                    // In the target's own units.
                    rmse: m.rmse.map(|e| e * target_std),
                    duration_ms: started.elapsed().as_millis() as u64,
                    bytes_sent: None,
                    bytes_received: None,
                    status: "ok".into(),
                });
                last_eval.push((m, client.target_moments));
            }
            live.record(&history[round_start..]);
            let summary = summarize(&last_eval);
            progress(format!(
                "round {round}/{}: {} client(s) trained{}; {}",
                options.rounds,
                trained,
                if failures.is_empty() {
                    String::new()
                } else {
                    format!(", {} failed", failures.len())
                },
                summary
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.4}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            tracing::info!(
                model,
                round,
                rounds = options.rounds,
                clients = chosen.len(),
                failed = failures.len(),
                metrics = ?summary,
                "training round done"
            );
        }
        exchange.stop().await;
        Ok((global, history, summarize(&last_eval)))
    }
}

/// One client's local training, on the blocking pool (it is CPU-bound:
/// off the async workers); `fail` is the fault-injection hook.
pub(crate) async fn train_off_runtime(
    arch: Architecture,
    global: Arc<Vec<f32>>,
    examples: Arc<Examples>,
    config: LocalConfig,
    fail: bool,
) -> std::result::Result<LocalResult, UdfError> {
    tokio::task::spawn_blocking(move || {
        if fail {
            return Err(UdfError::Training(
                "fault injected (FEDSQL_FAULT_INJECT)".into(),
            ));
        }
        train_local(&arch, &global, &examples, &config)
    })
    .await
    .map_err(|e| UdfError::Training(format!("client task: {e}")))?
}

/// How client `c` trains in `round`.
fn local_config(options: &TrainingOptions, round: u32, c: usize) -> LocalConfig {
    LocalConfig {
        epochs: options.local_epochs,
        batch_size: options.batch_size,
        learning_rate: options.learning_rate,
        optimizer: options.optimizer,
        proximal_mu: options.proximal_mu,
        seed: options.seed ^ (u64::from(round) << 32) ^ c as u64,
    }
}

/// A session like `ctx` (same catalogs and settings) whose scans label what
/// they read with `purpose`.
fn with_purpose(ctx: &SessionContext, purpose: Arc<ReadPurpose>) -> SessionContext {
    let state = ctx.state();
    let config = state.config().clone().with_extension(purpose);
    SessionContext::new_with_state(
        datafusion::execution::SessionStateBuilder::new_from_existing(state)
            .with_config(config)
            .build(),
    )
}

/// Example-weighted validation metrics over all clients; R² from the
/// clients' target moments, so no client sends its targets.
fn summarize(evals: &[(Metrics, (f64, f64, f64))]) -> Vec<(String, f64)> {
    let n: f64 = evals.iter().map(|(m, _)| m.num_examples as f64).sum();
    if n == 0.0 {
        return vec![];
    }
    let mean = |f: &dyn Fn(&Metrics) -> Option<f64>| -> Option<f64> {
        evals
            .iter()
            .map(|(m, _)| f(m).map(|v| v * m.num_examples as f64))
            .sum::<Option<f64>>()
            .map(|s| s / n)
    };
    let mut out = vec![(
        "loss".to_string(),
        mean(&|m| Some(m.loss)).unwrap_or(f64::NAN),
    )];
    if let Some(acc) = mean(&|m| m.accuracy) {
        out.push(("accuracy".into(), acc));
    }
    if let Some(mse) = mean(&|m| m.rmse.map(|r| r * r)) {
        out.push(("rmse".into(), mse.sqrt()));
        let (c, s, q) = evals
            .iter()
            .fold((0.0, 0.0, 0.0), |(c, s, q), (_, (c2, s2, q2))| {
                (c + c2, s + s2, q + q2)
            });
        let total = q - s * s / c.max(1.0);
        if total > 0.0 {
            out.push(("r2".into(), 1.0 - mse * c / total));
        }
    }
    out
}
