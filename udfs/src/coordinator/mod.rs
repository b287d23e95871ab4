//! The coordinator's round loop, the same for `FEDERATED BY` partitions in
//! this process and `fedsql site` processes: it drives
//! [`TrainingClient`]s over the weight exchange — choose clients, train in
//! parallel (or run a secure round, [`secure_round`]), merge with the
//! strategy, evaluate everywhere, checkpoint — and never sees a row.

mod secure_round;

use std::sync::Arc;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::checkpoint::{now_us, Checkpoint, Checkpoints};
use crate::client::{TargetMoments, TrainingClient};
use crate::error::{Result, UdfError};
use crate::exchange::{ExchangeAccess, ExchangeServer};
use crate::model::Architecture;
use crate::options::TrainingOptions;
use crate::registry::{LiveTraining, RoundRecord};
use crate::strategy::ClientUpdate;
use crate::train::{LocalConfig, Metrics};
use secure_round::{secure_round, SecureClient};

/// What a training run's rounds work with.
pub struct Rounds<'a> {
    pub arch: &'a Architecture,
    pub clients: &'a [Arc<dyn TrainingClient>],
    pub options: &'a TrainingOptions,
    /// This run on the weight exchange; stopped when the rounds end.
    pub exchange: ExchangeServer,
    pub checkpoints: &'a Checkpoints,
    /// Where finished rounds show while the run goes on.
    pub live: &'a LiveTraining,
    /// The checkpoint every round's checkpoint starts from (the run's
    /// statement, encoding and start time).
    pub base: Checkpoint,
    /// The checkpoint to continue from (`RESUME TRAINING`).
    pub resume: Option<Checkpoint>,
}

/// What the rounds produced.
pub struct Trained {
    pub weights: Vec<f32>,
    pub history: Vec<RoundRecord>,
    /// The last round's validation metrics, merged over the clients.
    pub metrics: Vec<(String, f64)>,
}

/// The rounds: train on the chosen clients in parallel, merge, evaluate
/// everywhere, checkpoint after each. Starts after `resume`'s last
/// completed round when given; `progress` gets a line per round (the
/// Postgres wire's NOTICEs).
pub async fn run_rounds(plan: Rounds<'_>, progress: &(dyn Fn(String) + Sync)) -> Result<Trained> {
    let Rounds {
        arch,
        clients,
        options,
        exchange,
        checkpoints,
        live,
        base,
        resume,
    } = plan;
    let model = base.summary.model.as_str();
    let target_std = base.target_std;
    let mut strategy = options.strategy()?;
    let mut global = arch.initial_weights(options.seed);
    let mut history = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut summary = Vec::new();
    let mut first_round = 1;
    if let Some(c) = resume {
        if c.global.len() != global.len() {
            return Err(UdfError::Training(format!(
                "the checkpoint holds {} weights, the model has {}",
                c.global.len(),
                global.len()
            )));
        }
        strategy.restore(c.strategy)?;
        rng.set_word_pos(c.selection_position);
        (global, history, summary) = (c.global, c.history, c.metrics);
        first_round = c.summary.completed + 1;
        live.record(&history);
        progress(format!(
            "resuming after round {} of {}",
            c.summary.completed, options.rounds
        ));
    }
    let fault = std::env::var("FEDSQL_FAULT_INJECT").ok();
    let mut last_eval = Vec::new();
    // Weights travel over Arrow Flight for every client, in this process
    // or at a site: one path for local partitions and remote sites.
    // Each client proves who it is to the exchange with its own key.
    let access: Vec<ExchangeAccess> = clients.iter().map(|c| exchange.admit(c.name())).collect();
    for round in first_round..=options.rounds {
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
            let secure = chosen
                .iter()
                .map(|&c| SecureClient {
                    client: Arc::clone(&clients[c]),
                    access: access[c].clone(),
                    config: local_config(options, round, c),
                    fail: fault.as_deref() == Some(&format!("{}:{round}", clients[c].name())),
                })
                .collect();
            let outcome = secure_round(round, secure, arch, &global, options, &exchange).await?;
            history.extend(outcome.records);
            failures = outcome.failures;
            updates.extend(outcome.update);
        }
        let mut tasks = Vec::new();
        for &c in chosen.iter().filter(|_| !options.secure_aggregation) {
            let client = Arc::clone(&clients[c]);
            let config = local_config(options, round, c);
            let injected = fault.as_deref() == Some(&format!("{}:{round}", client.name()));
            let (arch, access) = (arch.clone(), access[c].clone());
            let started = Instant::now();
            let handle =
                tokio::spawn(
                    async move { client.train(round, &access, &arch, config, injected).await },
                );
            tasks.push((
                c,
                started,
                tokio::time::timeout(options.round_timeout, handle),
            ));
        }
        for (c, started, task) in tasks {
            let name = clients[c].name().to_string();
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
            return Err(UdfError::Training(format!(
                "round {round}: {} (accept_failures = false)",
                failures.join("; ")
            )));
        }
        // (Under secure aggregation the one update is the survivors' mean.)
        let trained = history[round_start..]
            .iter()
            .filter(|r| r.phase == "train" && r.status == "ok")
            .count();
        if trained < options.min_train_nodes || updates.is_empty() {
            return Err(UdfError::Training(format!(
                "round {round}: {trained} client(s) succeeded, fewer than min_train_nodes = {} ({})",
                options.min_train_nodes,
                failures.join("; ")
            )));
        }
        global = strategy.aggregate(&global, &updates)?;

        // Every client evaluates the merged model on its held-out rows;
        // the merged weights are also the next round's, published now so
        // remote clients read them from the exchange.
        exchange.publish(round + 1, global.clone());
        let merged = Arc::new(global.clone());
        let evaluations = clients.iter().zip(&access).map(|(client, access)| {
            let (client, arch, access, merged) = (
                Arc::clone(client),
                arch.clone(),
                access.clone(),
                Arc::clone(&merged),
            );
            async move {
                let started = Instant::now();
                let result = tokio::time::timeout(
                    options.round_timeout,
                    client.evaluate(round + 1, &access, &arch, &merged),
                )
                .await;
                (client, started, result)
            }
        });
        last_eval.clear();
        for (client, started, result) in futures::future::join_all(evaluations).await {
            let (status, metrics) = match result {
                Ok(Ok((m, moments))) => ("ok", Some((m, moments))),
                Ok(Err(e)) => {
                    tracing::warn!(model, round, client = client.name(), error = %e, "evaluation failed");
                    ("failed", None)
                }
                Err(_) => ("timeout", None),
            };
            let m = metrics.map(|(m, _)| m);
            history.push(RoundRecord {
                round,
                client: client.name().to_string(),
                phase: "evaluate".into(),
                num_examples: m.map_or(0, |m| m.num_examples),
                loss: m.map(|m| m.loss),
                accuracy: m.and_then(|m| m.accuracy),
                // In the target's own units.
                rmse: m.and_then(|m| m.rmse).map(|e| e * target_std),
                duration_ms: started.elapsed().as_millis() as u64,
                bytes_sent: None,
                bytes_received: None,
                status: status.into(),
            });
            if let Some(pair) = metrics {
                last_eval.push(pair);
            }
        }
        summary = summarize(&last_eval);
        // Calls without a valid key (someone else on the network, or a
        // client sending as another) were refused; say so.
        for refusal in exchange.take_refusals() {
            progress(format!(
                "round {round}: the weight exchange refused {refusal}"
            ));
        }
        // The round is complete once its checkpoint is written; it shows
        // in training_rounds after that, so what a client sees there
        // survives a restart.
        let mut checkpoint = base.clone();
        checkpoint.summary.completed = round;
        checkpoint.summary.updated_at_us = now_us();
        checkpoint.global.clone_from(&global);
        checkpoint.strategy = strategy.state();
        checkpoint.selection_position = rng.get_word_pos();
        checkpoint.history.clone_from(&history);
        checkpoint.metrics.clone_from(&summary);
        if let Err(e) = checkpoints.save(&checkpoint) {
            progress(format!("round {round} could not be checkpointed: {e}"));
            tracing::warn!(model, round, error = %e, "checkpoint not written");
        }
        live.record(&history[round_start..]);
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
    Ok(Trained {
        weights: global,
        history,
        metrics: summary,
    })
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

/// Example-weighted validation metrics over all clients; R² from the
/// clients' target moments, so no client sends its targets.
fn summarize(evals: &[(Metrics, TargetMoments)]) -> Vec<(String, f64)> {
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
