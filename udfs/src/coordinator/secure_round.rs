//! One training round with `secure_aggregation = true`, the coordinator's
//! side: the clients (in-process partitions or `fedsql site` processes, the
//! same [`TrainingClient::train_secure`]) run SecAgg over the weight
//! exchange's bulletin board ([`crate::secure_client`] is their side),
//! and the coordinator closes the stages, announces who survived, and
//! learns only the example-weighted mean of the survivors' updates.
//!
//! A client that shared its keys and then vanished (a site killed
//! mid-round) is a dropout: the survivors reveal its secret key's shares so
//! its pairwise masks can be removed from the sum.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use crate::client::TrainingClient;
use crate::exchange::{ExchangeAccess, ExchangeServer};
use crate::model::Architecture;
use crate::options::TrainingOptions;
use crate::registry::RoundRecord;
use crate::secure_aggregation::{dequantize, threshold, unmask, Reveal, MAX_CLIENTS};
use crate::secure_client::{peers_of, Survivors, KEYS, REVEAL, SHARES, SURVIVORS};
use crate::strategy::ClientUpdate;
use crate::train::LocalConfig;
use crate::UdfError;

/// A client of the round, as the coordinator hands it out.
pub(crate) struct SecureClient {
    pub client: Arc<dyn TrainingClient>,
    pub access: ExchangeAccess,
    pub config: LocalConfig,
    /// Fail this client after it shared its keys (fault injection).
    pub fail: bool,
}

/// What a round produced: the `train` rows of `training_rounds`, the
/// merged update (`None` when too few clients survived) and why clients
/// failed.
pub(crate) struct SecureRound {
    pub records: Vec<RoundRecord>,
    pub update: Option<ClientUpdate>,
    pub failures: Vec<String>,
}

fn training_error(e: impl std::fmt::Display) -> UdfError {
    UdfError::Training(e.to_string())
}

/// Runs one securely aggregated round of `clients` against `global`.
pub(crate) async fn secure_round(
    round: u32,
    clients: Vec<SecureClient>,
    arch: &Architecture,
    global: &[f32],
    options: &TrainingOptions,
    exchange: &ExchangeServer,
) -> Result<SecureRound, UdfError> {
    if clients.len() > MAX_CLIENTS {
        return Err(UdfError::Option(format!(
            "secure_aggregation sums at most {MAX_CLIENTS} clients per round"
        )));
    }
    let timeout = options.round_timeout;
    let started = Instant::now();
    // round_timeout bounds the round up to the masked updates, as it bounds
    // a plain round's training; the reveal stage gets its own.
    let remaining = move || timeout.saturating_sub(started.elapsed());
    let names: Vec<String> = clients
        .iter()
        .map(|c| c.client.name().to_string())
        .collect();
    let board = exchange.board();
    let mut tasks = Vec::new();
    for SecureClient {
        client,
        access,
        config,
        fail,
    } in clients
    {
        let (arch, board) = (arch.clone(), exchange.board());
        tasks.push(tokio::spawn(async move {
            let result = client
                .train_secure(round, &access, &arch, config, fail)
                .await;
            // The stages stop waiting for a client that failed.
            if result.is_err() {
                board.withdraw(round, client.name());
            }
            result
        }));
    }

    let keys = board.close_stage(round, KEYS, &names, remaining()).await;
    let posted: Vec<String> = keys.keys().cloned().collect();
    let shares = board.close_stage(round, SHARES, &posted, remaining()).await;
    let peers = peers_of(&keys)?;
    // The secrets were split among everyone that posted a key; masks are
    // agreed among those that also sent shares.
    let t = threshold(peers.len());
    let maskers: Vec<(String, [u8; 32], u64)> = peers
        .into_iter()
        .filter(|(n, _, _)| shares.contains_key(n))
        .collect();
    let masker_names: Vec<String> = maskers.iter().map(|(n, _, _)| n.clone()).collect();
    board
        .wait_for_updates(round, &masker_names, remaining())
        .await;
    let masking: BTreeSet<&String> = masker_names.iter().collect();
    let mut arrived = Vec::new();
    let mut failures = Vec::new();
    for name in &names {
        match exchange.take_update(round, name) {
            Some(_) if !masking.contains(name) => {
                failures.push(format!(
                    "{name}: its update came after the shares stage closed"
                ));
            }
            Some(mut update) => match update.masked.take() {
                Some(values) => arrived.push((name.clone(), values, update)),
                None => failures.push(format!("{name}: it sent unmasked weights")),
            },
            None => {}
        }
    }
    let needed = t.max(options.min_train_nodes);
    let alive: Vec<String> = if arrived.len() >= needed {
        arrived.iter().map(|(n, ..)| n.clone()).collect()
    } else {
        Vec::new()
    };
    let dropped: Vec<String> = masker_names
        .iter()
        .filter(|n| !alive.contains(n))
        .cloned()
        .collect();
    // Announced even when the round is abandoned, so no client waits on.
    let survivors = Survivors {
        alive: alive.clone(),
        dropped,
    };
    exchange
        .announce(
            round,
            SURVIVORS,
            serde_json::to_vec(&survivors).map_err(training_error)?,
        )
        .await;
    let posted = if alive.is_empty() {
        Default::default()
    } else {
        board.close_stage(round, REVEAL, &alive, timeout).await
    };

    // Every client's row: its update's numbers if it arrived, else why not.
    let mut records = Vec::new();
    for (name, task) in names.iter().zip(tasks) {
        let outcome = tokio::time::timeout(remaining().max(timeout / 4), task).await;
        let fetched = match outcome {
            Ok(Ok(Ok(fetched))) => Ok(fetched),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no result within round_timeout".to_string()),
        };
        let mut record = RoundRecord {
            round,
            client: name.clone(),
            phase: "train".into(),
            num_examples: 0,
            loss: None,
            accuracy: None,
            rmse: None,
            duration_ms: started.elapsed().as_millis() as u64,
            bytes_sent: fetched.as_ref().ok().copied(),
            bytes_received: None,
            status: "ok".into(),
        };
        match arrived.iter().find(|(n, ..)| n == name) {
            Some((_, _, update)) if alive.contains(name) => {
                record.num_examples = update.num_examples;
                record.loss = Some(update.loss);
                record.bytes_received = Some(update.bytes);
            }
            _ => {
                let why = fetched
                    .err()
                    .unwrap_or_else(|| "its masked update did not arrive".into());
                record.status = if why.contains("round_timeout") {
                    "timeout"
                } else {
                    "failed"
                }
                .into();
                failures.push(format!("{name}: {why}"));
            }
        }
        records.push(record);
    }
    if alive.is_empty() {
        failures.push(format!(
            "secure aggregation needs {needed} surviving clients, {} remain",
            arrived.len()
        ));
        return Ok(SecureRound {
            records,
            update: None,
            failures,
        });
    }

    let mut reveals: Vec<Reveal> = Vec::new();
    for payload in posted.values() {
        reveals.extend(serde_json::from_slice::<Vec<Reveal>>(payload).map_err(training_error)?);
    }
    let masked_inputs: Vec<(String, Vec<u32>)> = arrived
        .into_iter()
        .map(|(name, values, _)| (name, values))
        .collect();
    let keys: Vec<(String, [u8; 32])> = maskers.iter().map(|(n, k, _)| (n.clone(), *k)).collect();
    let sum = unmask(&keys, &masked_inputs, &reveals, t)?;
    let total: u64 = maskers.iter().map(|(_, _, r)| r).sum();
    let rows_of = |n: &String| {
        maskers
            .iter()
            .find(|(m, _, _)| m == n)
            .map_or(0, |(_, _, r)| *r)
    };
    let alive_rows: u64 = alive.iter().map(rows_of).sum();
    // The sum is Σ (rows_i / total) · delta_i over the survivors.
    let weight = alive_rows as f64 / total.max(1) as f64;
    let weights: Vec<f32> = dequantize(&sum, alive.len())
        .iter()
        .zip(global)
        .map(|(d, g)| g + (f64::from(*d) / weight) as f32)
        .collect();
    Ok(SecureRound {
        records,
        update: Some(ClientUpdate {
            weights,
            num_examples: alive_rows,
        }),
        failures,
    })
}
