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

use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::prelude::SessionContext;
use fedsql_sql::{EvaluateModel, ExistingModel, Federation, TrainModel};
use fedsql_udfs::checkpoint::{now_us, Checkpoint, CheckpointSummary};
use fedsql_udfs::client::{
    profile, Encoding, InputColumns, LocalClient, Profile, TargetSpec, TrainingClient,
};
use fedsql_udfs::evaluate::{check_target, EvalStats, METRIC_COLUMNS};
use fedsql_udfs::exchange::{ExchangeListener, ExchangeServer, ExchangeTls};
use fedsql_udfs::features::{text_values, ColumnSummary, FeatureTransform};
use fedsql_udfs::model::{Activation, Architecture};
use fedsql_udfs::options::TrainingOptions;
use fedsql_udfs::registry::{ModelVersion, Task as ModelTask};
use fedsql_udfs::UdfError;

use crate::engine::{quote_literal, Engine, FedsqlOutcome};
use crate::error::{Result, ServerError};
use crate::sites::protocol::{Reply as SiteReply, Task};
use crate::sites::remote::RemoteSite;
use fedsql_connectors::ReadPurpose;
use fedsql_udfs::coordinator::{run_rounds, Rounds, Trained};

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
    ServerError::Query {
        sqlstate: crate::error::udf_sqlstate(&e).into(),
        message: e.to_string(),
        position: None,
    }
}

fn input_error(message: String) -> ServerError {
    udf_error(UdfError::Input(message))
}

/// A training input resolved against its clients' profiles.
struct TrainingInput {
    /// `FEDERATED BY x` / `FEDERATED ON SITES (…)`, for messages.
    describe: String,
    schema: SchemaRef,
    columns: InputColumns,
    /// Each client's name and profile, in client order.
    profiles: Vec<(String, Profile)>,
    clients: ClientRows,
}

/// Where each client's rows are.
enum ClientRows {
    /// In this process, one batch per partition.
    Partitions(Vec<(String, RecordBatch)>),
    /// At the sites: the task that prepared them (sent again to a site that
    /// restarts), and each site's name and the session that prepared it.
    Sites {
        prepare: Box<Task>,
        sites: Vec<(String, Option<String>)>,
    },
}

/// The input's columns for `spec`, with 42703 for a missing target.
fn resolve_columns(schema: &SchemaRef, spec: &TargetSpec) -> Result<InputColumns> {
    if schema.index_of(&spec.target).is_err() {
        return Err(missing_column("target", &spec.target, "training", schema));
    }
    if let Some(by) = &spec.excluded {
        if schema.index_of(by).is_err() {
            return Err(missing_column("FEDERATED BY", by, "training", schema));
        }
    }
    InputColumns::resolve(schema, spec).map_err(udf_error)
}

/// `mlp(hidden_units = '64,32', activation = 'relu')` → layers and
/// activation; `text_classifier(encoder = 'minilm', tune = 'head')` → a
/// classification head over the encoder's embeddings, and the encoder.
fn architecture_params(tm: &TrainModel) -> Result<(Vec<usize>, Activation, Option<String>)> {
    let mut hidden = vec![];
    let mut activation = Activation::Relu;
    let mut encoder = None;
    match tm.algorithm.as_str() {
        "text_classifier" => {
            for (k, v) in &tm.algorithm_params {
                match (k.as_str(), v.as_text().to_lowercase().as_str()) {
                    ("encoder", name) => encoder = Some(name.to_string()),
                    ("tune", "head") => {}
                    ("tune", "last_layers" | "lora") | ("lora_rank", _) => {
                        return Err(ServerError::NotSupported {
                            statement: "TRAIN MODEL".into(),
                            reason: format!(
                                "text_classifier {k} = '{}': only tune = 'head' is implemented \
                                 (the encoder stays frozen and only the head trains and travels)",
                                v.as_text()
                            ),
                        })
                    }
                    ("tune", other) => {
                        return Err(udf_error(UdfError::Option(format!(
                            "unknown tune '{other}' (known: head, last_layers, lora)"
                        ))))
                    }
                    (other, _) => {
                        return Err(udf_error(UdfError::Option(format!(
                            "unknown text_classifier parameter {other} (known: encoder, tune)"
                        ))))
                    }
                }
            }
            let name = encoder.as_deref().ok_or_else(|| {
                udf_error(UdfError::Option(
                    "text_classifier needs an encoder: USING text_classifier (encoder = 'minilm')"
                        .into(),
                ))
            })?;
            fedsql_udfs::encoder::encoders()
                .get(name)
                .map_err(udf_error)?;
        }
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
                "unknown model kind {other} (known: linear_regression, logistic_regression, mlp, \
                 text_classifier)"
            ))))
        }
    }
    Ok((hidden, activation, encoder))
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
        // Each client's statistics are computed on its rows alone.
        let per_client: Vec<(String, EvalStats)> = match &em.federation {
            Some(Federation::OnSites(names)) => {
                self.score_on_sites(names, &em.query, &model).await?
            }
            by => {
                let all = self.query_rows(ctx, &em.query).await?;
                let schema = all.schema();
                let columns: Vec<String> =
                    schema.fields().iter().map(|f| f.name().clone()).collect();
                check_target(&model, &columns).map_err(udf_error)?;
                let clients = match by {
                    Some(Federation::ByColumn(by)) => {
                        let index = schema.index_of(by).map_err(|_| {
                            missing_column("FEDERATED BY", by, "evaluation", &schema)
                        })?;
                        split_by(&all, index, |_| true, &em.query)?
                    }
                    _ => vec![("all".to_string(), all)],
                };
                clients
                    .iter()
                    .map(|(name, batch)| {
                        Ok((
                            name.clone(),
                            EvalStats::of_rows(&model, batch).map_err(udf_error)?,
                        ))
                    })
                    .collect::<Result<_>>()?
            }
        };
        let mut rows = Vec::new();
        let mut total = EvalStats::default();
        for (name, stats) in per_client {
            total.merge(&stats);
            if em.federation.is_some() {
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
            ExistingModel::Replace => {
                // Replacing discards an interrupted run too.
                registry.drop_model(&tm.name, None).map_err(udf_error)?;
            }
            _ => {}
        }
        if let Some(run) = self.interrupted_runs(&tm.name).first() {
            return Err(ServerError::Query {
                sqlstate: "55000".into(),
                message: format!(
                    "model {} has an interrupted training run (version {}, round {} of {} \
                     completed); RESUME TRAINING {} continues it, TRAIN MODEL OR REPLACE or \
                     DROP MODEL discards it",
                    tm.name, run.version, run.completed, run.rounds, tm.name
                ),
                position: None,
            });
        }
        self.train(ctx, tm, None).await
    }

    /// Trains `tm`: a new version, or (`resume`) the rest of an interrupted
    /// one from its checkpoint.
    pub(crate) async fn train(
        &self,
        ctx: &SessionContext,
        tm: &TrainModel,
        resume: Option<Checkpoint>,
    ) -> Result<FedsqlOutcome> {
        let registry = self.models();
        let options = TrainingOptions::parse(
            &tm.options
                .iter()
                .map(|(k, v)| (k.clone(), v.as_text()))
                .collect::<Vec<_>>(),
        )
        .map_err(udf_error)?;
        let (hidden, activation, encoder) = architecture_params(tm)?;

        // The input: any fedsql query. Partitions: planned in the caller's
        // session, its source reads labelled with the version being made
        // (so what a version was trained on, e.g. Kafka offsets, can be
        // traced). Sites: sent to each site, which runs it on its own
        // catalog and answers only its profile.
        let sql = tm.input.to_sql();
        let version = match &resume {
            Some(c) => c.summary.version,
            None => registry.next_version(&tm.name),
        };
        // Rounds show in fedsql.system.training_rounds as they finish; the
        // run shows as running in fedsql.system.training_runs from now.
        let live = registry.begin_training(&tm.name, version);
        let purpose = Arc::new(ReadPurpose::new(format!(
            "model {} version {version}",
            tm.name
        )));
        let spec = TargetSpec {
            target: tm.target.clone(),
            algorithm: tm.algorithm.clone(),
            excluded: match &tm.federation {
                Federation::ByColumn(by) => Some(by.clone()),
                Federation::OnSites(_) => None,
            },
            encoder: encoder.clone(),
        };
        let run = format!("{}-{version}-{}", tm.name, crate::flight::random_hex(6));
        let input = match &tm.federation {
            Federation::ByColumn(by) => {
                let ctx = with_purpose(ctx, Arc::clone(&purpose));
                self.partition_input(&ctx, &sql, by, &spec).await?
            }
            Federation::OnSites(names) => {
                self.site_input(names, &sql, &spec, &run, &options).await?
            }
        };
        let available = input.profiles.len();
        if available < options.min_available_nodes || available < options.min_train_nodes {
            return Err(input_error(format!(
                "{} gives {available} client(s), fewer than \
                 min_available_nodes = {} / min_train_nodes = {}",
                input.describe, options.min_available_nodes, options.min_train_nodes
            )));
        }
        let columns = &input.columns;
        // The encoding every client uses: from federated statistics, or the
        // interrupted run's (its weights are laid out by it).
        let (transform, task, target_std) = match &resume {
            Some(c) => (c.transform.clone(), c.task.clone(), c.target_std),
            None => federated_encoding(&input, tm, encoder.as_deref())?,
        };
        let encoding = Encoding {
            transform: transform.clone(),
            task: task.clone(),
            validation_split: options.validation_split,
        };
        // Each client encodes its rows and holds out validation rows with
        // its own seed.
        let (clients, sites) = self
            .clients(input.clients, columns, &encoding, &options, &run)
            .await?;

        let arch = match &resume {
            Some(c) if c.architecture.inputs != transform.width() => {
                return Err(udf_error(UdfError::Training(format!(
                    "the checkpoint's network takes {} inputs, its encoding makes {}",
                    c.architecture.inputs,
                    transform.width()
                ))))
            }
            Some(c) => c.architecture.clone(),
            None => Architecture {
                inputs: transform.width(),
                hidden,
                outputs: match &task {
                    ModelTask::Classification { labels, .. } => labels.len(),
                    ModelTask::Regression { .. } => 1,
                },
                activation,
            },
        };
        let client_names: Vec<String> = clients.iter().map(|c| c.name().to_string()).collect();
        if let Some(c) = &resume {
            if c.summary.clients != client_names {
                progress(format!(
                    "the clients are now {client_names:?}, the interrupted run had {:?}: \
                     the result will differ from an uninterrupted run's",
                    c.summary.clients
                ));
            }
        }
        // What every checkpoint of this run repeats.
        let base = Checkpoint {
            summary: CheckpointSummary {
                model: tm.name.clone(),
                version,
                statement: TrainModel {
                    existing: ExistingModel::NewVersion,
                    ..tm.clone()
                }
                .to_string(),
                database: current_database(ctx),
                clients: client_names,
                completed: 0,
                rounds: options.rounds,
                started_at_us: resume
                    .as_ref()
                    .map_or_else(now_us, |c| c.summary.started_at_us),
                updated_at_us: 0,
                error: None,
            },
            architecture: arch.clone(),
            transform: transform.clone(),
            task: task.clone(),
            target_std,
            global: Vec::new(),
            strategy: Default::default(),
            selection_position: 0,
            history: Vec::new(),
            metrics: Vec::new(),
        };
        let rounds = Rounds {
            arch: &arch,
            clients: &clients,
            options: &options,
            exchange: self.start_exchange().await?,
            checkpoints: registry.checkpoints(),
            live: &live,
            base,
            resume,
        };
        let trained = run_rounds(rounds, &progress).await.map_err(udf_error);
        for site in &sites {
            site.finish().await;
        }
        let checkpoints = registry.checkpoints();
        if let Err(e) = &trained {
            // The run can be resumed from its last completed round; say why
            // it stopped.
            if let Ok(Some(mut c)) = checkpoints.latest(&tm.name) {
                if c.summary.version == version {
                    c.summary.error = Some(e.to_string());
                    let _ = checkpoints.save(&c);
                }
            }
        }
        let Trained {
            weights,
            history,
            mut metrics,
        } = trained?;
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
            clients: clients.iter().map(|c| c.name().to_string()).collect(),
            options: tm
                .options
                .iter()
                .map(|(k, v)| (k.clone(), v.as_text()))
                .collect(),
            metrics,
            created_at_us: now_us(),
            history,
            input_reads: purpose.reads(),
        };
        // The saved version replaces the live rows (never both at once), and
        // its checkpoint goes once the version is safely written.
        drop(live);
        registry.save(&meta, &weights).map_err(udf_error)?;
        checkpoints.remove(&tm.name, version).map_err(udf_error)?;
        Ok(FedsqlOutcome::Query(format!(
            "SELECT model, version, kind, target, strategy, rounds, clients, metrics \
             FROM fedsql.system.models WHERE model = {} AND version = {version}",
            quote_literal(&tm.name)
        )))
    }

    /// A weight exchange run for one training run, on the process's one
    /// listener (`exchange_host`:`exchange_port`, advertised as
    /// `exchange_advertise`); with the coordinator's Flight TLS
    /// certificate, sites reach it over TLS too.
    async fn start_exchange(&self) -> Result<ExchangeServer> {
        let settings = self.settings();
        let listener = self
            .exchange()
            .get_or_try_init(|| async {
                let tls = settings.flight_tls()?.map(|pem| ExchangeTls {
                    cert: pem.cert,
                    key: pem.key,
                });
                ExchangeListener::start_on(
                    settings.exchange_host,
                    settings.exchange_port,
                    settings.exchange_advertise.clone(),
                    tls,
                )
                .await
                .map_err(udf_error)
            })
            .await?;
        Ok(listener.open_run())
    }

    /// `EVALUATE … FEDERATED ON SITES`: each site scores its own rows and
    /// answers only sufficient statistics; the weights reach it over the
    /// weight exchange.
    async fn score_on_sites(
        &self,
        names: &[String],
        query: &str,
        model: &fedsql_udfs::registry::LoadedModel,
    ) -> Result<Vec<(String, EvalStats)>> {
        self.online_sites(names, true)?;
        let exchange = self.start_exchange().await?;
        exchange.publish(1, model.weights.clone());
        let timeout = std::time::Duration::from_secs(600);
        let calls = names.iter().map(|name| {
            let task = Task::Score {
                query: query.to_string(),
                model: Box::new(model.meta.clone()),
                exchange: exchange.admit(name),
                key: 1,
            };
            let registry = Arc::clone(self.sites());
            async move { (name.clone(), registry.call(name, task, timeout).await) }
        });
        let replies = futures::future::join_all(calls).await;
        exchange.stop().await;
        replies
            .into_iter()
            .map(|(name, reply)| match reply {
                Ok(SiteReply::Scored { stats }) => Ok((name, stats)),
                Ok(SiteReply::Failed { message }) => Err(ServerError::Query {
                    sqlstate: "42501".into(),
                    message: format!("site {name}: {message}"),
                    position: None,
                }),
                Ok(other) => Err(input_error(format!(
                    "site {name} answered {other:?} to an evaluation"
                ))),
                Err(e) => Err(ServerError::Query {
                    sqlstate: "08006".into(),
                    message: e.to_string(),
                    position: None,
                }),
            })
            .collect()
    }

    /// The named sites that are online, once each is known to be defined
    /// (42704). An offline site is an error (08006) if `require_online`,
    /// else it is left out with a progress line.
    fn online_sites(&self, names: &[String], require_online: bool) -> Result<Vec<String>> {
        let registry = self.sites();
        if let Some(name) = names.iter().find(|n| !registry.contains(n)) {
            return Err(ServerError::UndefinedObject {
                kind: "site",
                name: name.clone(),
            });
        }
        let mut online = Vec::with_capacity(names.len());
        for name in names {
            if registry.is_online(name) {
                online.push(name.clone());
            } else if require_online {
                return Err(ServerError::Query {
                    sqlstate: "08006".into(),
                    message: format!(
                        "site {name} is offline (see fedsql.system.sites); start `fedsql site --name {name}` or leave it out"
                    ),
                    position: None,
                });
            } else {
                progress(format!("site {name} is offline; training without it"));
                tracing::warn!(site = %name, "site offline; training without it");
            }
        }
        Ok(online)
    }

    /// A `FEDERATED BY` input: the query runs here and its rows are split
    /// into one client per value of column `by`.
    async fn partition_input(
        &self,
        ctx: &SessionContext,
        sql: &str,
        by: &str,
        spec: &TargetSpec,
    ) -> Result<TrainingInput> {
        let all = self.query_rows(ctx, sql).await?;
        let schema = all.schema();
        let columns = resolve_columns(&schema, spec)?;
        if all.num_rows() == 0 {
            return Err(input_error("the training input has no rows".into()));
        }
        let by_index = schema
            .index_of(by)
            .map_err(|_| missing_column("FEDERATED BY", by, "training", &schema))?;
        // Rows without a target cannot train anything.
        let targets = text_values(all.column(columns.target)).map_err(udf_error)?;
        let batches = split_by(&all, by_index, |row| targets[row].is_some(), sql)?;
        let profiles = batches
            .iter()
            .map(|(name, batch)| Ok((name.clone(), profile(batch, &columns).map_err(udf_error)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(TrainingInput {
            describe: format!("FEDERATED BY {by}"),
            schema,
            columns,
            profiles,
            clients: ClientRows::Partitions(batches),
        })
    }

    /// A `FEDERATED ON SITES` input: every site runs the query on its own
    /// catalog and answers its schema and profile; rows stay at the sites.
    async fn site_input(
        &self,
        names: &[String],
        sql: &str,
        spec: &TargetSpec,
        run: &str,
        options: &TrainingOptions,
    ) -> Result<TrainingInput> {
        // With accept_failures (the default), a site that is offline or does
        // not answer is left out of the run, as Flower samples only the
        // nodes that are available; a site that answers with a refusal
        // (its policy) always stops it.
        let names = self.online_sites(names, !options.accept_failures)?;
        let names = names.as_slice();
        let registry = self.sites();
        let prepare_task = Task::Prepare {
            run: run.to_string(),
            query: sql.to_string(),
            spec: spec.clone(),
        };
        let prepare = |name: &String| {
            let task = prepare_task.clone();
            let registry = Arc::clone(registry);
            let (name, timeout) = (name.clone(), options.round_timeout);
            async move {
                let session = registry.session(&name);
                let reply = registry.call(&name, task, timeout).await;
                (name, session, reply)
            }
        };
        let replies = futures::future::join_all(names.iter().map(prepare)).await;
        let mut schema: Option<(String, SchemaRef)> = None;
        let mut profiles = Vec::new();
        let mut sites = Vec::new();
        for (name, session, reply) in replies {
            let (site_schema, site_profile) = match reply {
                Ok(SiteReply::Prepared { schema, profile }) => (
                    crate::sites::agent::decode_schema(&schema).map_err(|e| {
                        input_error(format!("site {name} sent an unreadable schema: {e}"))
                    })?,
                    profile,
                ),
                Ok(SiteReply::Failed { message }) => {
                    return Err(ServerError::Query {
                        sqlstate: "42501".into(),
                        message: format!("site {name}: {message}"),
                        position: None,
                    })
                }
                Ok(other) => {
                    return Err(input_error(format!(
                        "site {name} answered {other:?} to a prepare"
                    )))
                }
                Err(e) if options.accept_failures => {
                    progress(format!("{e}; training without it"));
                    tracing::warn!(site = %name, error = %e, "site left out of the run");
                    continue;
                }
                Err(e) => {
                    return Err(ServerError::Query {
                        sqlstate: "08006".into(),
                        message: e.to_string(),
                        position: None,
                    })
                }
            };
            match &schema {
                None => schema = Some((name.clone(), site_schema)),
                Some((first, expected)) => {
                    let shape = |s: &SchemaRef| -> Vec<(String, DataType)> {
                        s.fields()
                            .iter()
                            .map(|f| (f.name().clone(), f.data_type().clone()))
                            .collect()
                    };
                    if shape(expected) != shape(&site_schema) {
                        return Err(input_error(format!(
                            "sites {first} and {name} give the training query different columns: {:?} vs {:?}",
                            shape(expected),
                            shape(&site_schema)
                        )));
                    }
                }
            }
            profiles.push((name.clone(), site_profile));
            sites.push((name, session));
        }
        let Some((_, schema)) = schema else {
            return Err(ServerError::Query {
                sqlstate: "08006".into(),
                message: "no site of FEDERATED ON SITES (…) is online and answering".into(),
                position: None,
            });
        };
        let columns = resolve_columns(&schema, spec)?;
        Ok(TrainingInput {
            describe: format!("FEDERATED ON SITES ({})", names.join(", ")),
            schema,
            columns,
            profiles,
            clients: ClientRows::Sites {
                prepare: Box::new(prepare_task),
                sites,
            },
        })
    }

    /// The run's training clients: partitions encode their rows here, sites
    /// are told the encoding and encode theirs.
    #[allow(clippy::type_complexity)]
    async fn clients(
        &self,
        rows: ClientRows,
        columns: &InputColumns,
        encoding: &Encoding,
        options: &TrainingOptions,
        run: &str,
    ) -> Result<(Vec<Arc<dyn TrainingClient>>, Vec<Arc<RemoteSite>>)> {
        match rows {
            ClientRows::Partitions(batches) => {
                // Encoding is CPU-bound (a sentence encoder takes seconds per
                // thousand rows): off the async workers, and reported.
                let encoders: Vec<&str> = encoding
                    .transform
                    .features
                    .iter()
                    .filter_map(|f| match &f.encoding {
                        fedsql_udfs::features::Encoding::Sentence { encoder, .. } => {
                            Some(encoder.as_str())
                        }
                        _ => None,
                    })
                    .collect();
                let mut clients = Vec::with_capacity(batches.len());
                for (n, (name, batch)) in batches.into_iter().enumerate() {
                    let started = std::time::Instant::now();
                    let rows = batch.num_rows();
                    let (task_name, task_columns, task_encoding) =
                        (name.clone(), columns.clone(), encoding.clone());
                    let seed = options.seed.wrapping_add(n as u64);
                    let client = tokio::task::spawn_blocking(move || {
                        LocalClient::from_rows(
                            task_name,
                            &batch,
                            &task_columns,
                            &task_encoding,
                            seed,
                        )
                    })
                    .await
                    .map_err(|e| {
                        udf_error(UdfError::Training(format!("encoding client {name}: {e}")))
                    })?
                    .map_err(udf_error)?;
                    if !encoders.is_empty() {
                        progress(format!(
                            "client {name}: encoded {rows} rows with encoder {} in {:.1} s",
                            encoders.join(", "),
                            started.elapsed().as_secs_f64()
                        ));
                    }
                    clients.push(Arc::new(client) as Arc<dyn TrainingClient>);
                }
                Ok((clients, Vec::new()))
            }
            ClientRows::Sites { prepare, sites } => {
                let remote: Vec<Arc<RemoteSite>> = sites
                    .into_iter()
                    .enumerate()
                    .map(|(n, (name, session))| {
                        let setup = Task::Setup {
                            run: run.to_string(),
                            encoding: encoding.clone(),
                            split_seed: options.seed + n as u64,
                        };
                        Arc::new(RemoteSite::new(
                            name,
                            Arc::clone(self.sites()),
                            run.to_string(),
                            (Task::clone(&prepare), setup),
                            session,
                            options.round_timeout,
                        ))
                    })
                    .collect();
                let ready =
                    futures::future::join_all(remote.iter().map(|s| s.ensure_ready(true))).await;
                for result in ready {
                    result.map_err(udf_error)?;
                }
                let clients = remote
                    .iter()
                    .map(|s| Arc::clone(s) as Arc<dyn TrainingClient>)
                    .collect();
                Ok((clients, remote))
            }
        }
    }
}

/// The feature transform, task and target scale from the clients'
/// profiles: each client summarised its columns, the coordinator merges.
fn federated_encoding(
    input: &TrainingInput,
    tm: &TrainModel,
    encoder: Option<&str>,
) -> Result<(FeatureTransform, ModelTask, f64)> {
    let sentence = match encoder {
        Some(name) => Some((
            name,
            fedsql_udfs::encoder::encoders()
                .get(name)
                .map_err(udf_error)?
                .dims(),
        )),
        None => None,
    };
    let columns = &input.columns;
    let classify = columns.classify;
    let target_type = input.schema.field(columns.target).data_type().clone();
    let mut merged: Vec<ColumnSummary> = vec![ColumnSummary::default(); columns.features.len()];
    let mut labels = std::collections::BTreeSet::new();
    let mut target_summary = ColumnSummary::default();
    for (_, p) in &input.profiles {
        for (slot, summary) in merged.iter_mut().zip(&p.features) {
            slot.merge(summary);
        }
        labels.extend(p.labels.iter().cloned());
        target_summary.merge(&p.target);
    }
    if input.profiles.iter().all(|(_, p)| p.rows == 0) {
        return Err(input_error("the training input has no rows".into()));
    }
    let transform = FeatureTransform::from_summaries(
        &columns
            .features
            .iter()
            .zip(merged)
            .map(|((_, name, t, kind), s)| (name.clone(), t.clone(), *kind, s))
            .collect::<Vec<_>>(),
        sentence,
    );
    let labels: Vec<String> = labels.into_iter().collect();
    // Regression targets are standardized with federated moments, so one
    // learning rate works whatever the target's units.
    let n = target_summary.count.max(1) as f64;
    let mean = target_summary.sum / n;
    let std = (target_summary.sum_squares / n - mean * mean)
        .max(0.0)
        .sqrt();
    let target_std = if classify || std <= 1e-12 { 1.0 } else { std };
    if classify && labels.len() < 2 {
        return Err(input_error(format!(
            "the target {} has {} distinct value(s); a classifier needs at least 2",
            tm.target,
            labels.len()
        )));
    }
    let task = if classify {
        ModelTask::Classification {
            labels,
            boolean: target_type == DataType::Boolean,
        }
    } else {
        ModelTask::Regression {
            mean,
            std: target_std,
        }
    };
    Ok((transform, task, target_std))
}

/// The database `ctx` resolves unqualified names in.
pub(crate) fn current_database(ctx: &SessionContext) -> String {
    ctx.state()
        .config()
        .options()
        .catalog
        .default_catalog
        .clone()
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
