//! One training round with `secure_aggregation = true`: the clients run
//! SecAgg (`fedsql_udfs::secure_aggregation`) over the weight exchange's
//! bulletin board, and the coordinator learns only the example-weighted
//! mean of their updates.
//!
//! ```text
//!  client                                   coordinator
//!  post keys (X25519 public key, rows)  ─►  close "keys" (all chosen, or round_timeout)
//!  post sealed shares                   ─►  close "shares": these clients mask together
//!  fetch global, train, mask            ─►  masked update (DoPut, UInt32)
//!  read "survivors"                     ◄─  announce survivors and dropouts
//!  post reveal                          ─►  close "reveal", unmask, dequantize
//! ```
//!
//! Each client scales its update (trained − global weights) by its share of
//! the round's rows before masking, so the unmasked sum is the weighted
//! sum; row counts are public (they are in `training_rounds` anyway).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use fedsql_udfs::exchange::{ExchangeAccess, ExchangeClient, ExchangeServer};
use fedsql_udfs::model::Architecture;
use fedsql_udfs::options::TrainingOptions;
use fedsql_udfs::registry::RoundRecord;
use fedsql_udfs::secure_aggregation::{
    dequantize, threshold, unmask, Reveal, SecAggClient, MAX_CLIENTS,
};
use fedsql_udfs::strategy::ClientUpdate;
use fedsql_udfs::train::{Examples, LocalConfig};

use fedsql_udfs::client::train_off_runtime;
use fedsql_udfs::UdfError;

/// A client of the round, as the coordinator hands it out.
pub(crate) struct SecureClient {
    pub name: String,
    pub train: Arc<Examples>,
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

/// What a client keeps between its masked update and the unmask stage.
struct Masked {
    link: ExchangeClient,
    party: SecAggClient,
    fetched: u64,
}

fn training_error(e: impl std::fmt::Display) -> UdfError {
    UdfError::Training(e.to_string())
}

/// Clients that posted a key, in the round's order, with their rows.
fn peers_of(keys: &BTreeMap<String, Vec<u8>>) -> Result<Vec<(String, [u8; 32], u64)>, UdfError> {
    keys.iter()
        .map(|(name, payload)| {
            if payload.len() != 40 {
                return Err(training_error(format!("{name} posted a malformed key")));
            }
            let mut key = [0u8; 32];
            key.copy_from_slice(&payload[..32]);
            let mut rows = [0u8; 8];
            rows.copy_from_slice(&payload[32..]);
            Ok((name.clone(), key, u64::from_le_bytes(rows)))
        })
        .collect()
}

/// A client's part up to its masked update.
async fn mask_and_send(
    access: ExchangeAccess,
    round: u32,
    arch: Architecture,
    client: SecureClient,
) -> Result<Masked, UdfError> {
    let name = client.name.clone();
    let mut link = ExchangeClient::connect(&access).await?;
    let mut party = SecAggClient::new(&name);
    let rows = client.train.rows() as u64;
    let mut key = party.public_key().to_vec();
    key.extend_from_slice(&rows.to_le_bytes());
    link.post(round, "keys", &name, key).await?;

    let peers = peers_of(&link.read(round, "keys").await?)?;
    let keys: Vec<(String, [u8; 32])> = peers.iter().map(|(n, k, _)| (n.clone(), *k)).collect();
    let sealed = party.shares_for(&keys)?;
    link.post(
        round,
        "shares",
        &name,
        serde_json::to_vec(&sealed).map_err(training_error)?,
    )
    .await?;
    let shares = link.read(round, "shares").await?;
    for (from, payload) in &shares {
        if *from == name {
            continue;
        }
        let sent: Vec<(String, Vec<u8>)> =
            serde_json::from_slice(payload).map_err(training_error)?;
        let public = keys.iter().find(|(n, _)| n == from).map(|(_, k)| *k);
        if let (Some((_, mine)), Some(public)) = (sent.iter().find(|(to, _)| *to == name), public) {
            party.receive(from, &public, mine)?;
        }
    }
    // Masks are agreed among the clients that sent shares.
    let maskers: Vec<(String, [u8; 32])> = keys
        .into_iter()
        .filter(|(n, _)| shares.contains_key(n))
        .collect();
    let total: u64 = peers
        .iter()
        .filter(|(n, _, _)| shares.contains_key(n))
        .map(|(_, _, r)| r)
        .sum();

    let (global, fetched) = link.fetch(round).await?;
    let weights = Arc::new(global);
    let trained = train_off_runtime(
        arch,
        Arc::clone(&weights),
        client.train,
        client.config,
        client.fail,
    )
    .await?;
    let delta: Vec<f32> = trained
        .weights
        .iter()
        .zip(weights.iter())
        .map(|(t, g)| t - g)
        .collect();
    let masked = party.mask(&maskers, &delta, rows as f64 / total.max(1) as f64);
    link.send_masked(round, &name, &masked, rows, trained.loss)
        .await?;
    Ok(Masked {
        link,
        party,
        fetched,
    })
}

/// A surviving client's unmask stage.
async fn reveal(mut masked: Masked, round: u32, name: String) -> Result<(), UdfError> {
    let announced = masked.link.read(round, "survivors").await?;
    let (survivors, dropped): (Vec<String>, Vec<String>) = announced
        .get("coordinator")
        .map(|p| serde_json::from_slice(p))
        .transpose()
        .map_err(training_error)?
        .ok_or_else(|| training_error("no survivors were announced"))?;
    let reveals = masked.party.reveal(&survivors, &dropped)?;
    masked
        .link
        .post(
            round,
            "reveal",
            &name,
            serde_json::to_vec(&reveals).map_err(training_error)?,
        )
        .await
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
    let names: Vec<String> = clients.iter().map(|c| c.name.clone()).collect();
    // The key and share stages close while the clients work.
    let board = exchange.board();
    let stage_names = names.clone();
    let stages = tokio::spawn(async move {
        let keys = board
            .close_stage(round, "keys", &stage_names, timeout)
            .await;
        let posted: Vec<String> = keys.keys().cloned().collect();
        let shares = board.close_stage(round, "shares", &posted, timeout).await;
        (keys, shares)
    });
    let mut tasks = Vec::new();
    for client in clients {
        let name = client.name.clone();
        let (access, arch, board) = (exchange.admit(&name), arch.clone(), exchange.board());
        let task = tokio::spawn(async move {
            let name = client.name.clone();
            let result = mask_and_send(access, round, arch, client).await;
            // The stages stop waiting for a client that failed.
            if result.is_err() {
                board.withdraw(round, &name);
            }
            result
        });
        tasks.push((name, Instant::now(), tokio::time::timeout(timeout, task)));
    }
    let mut records = Vec::new();
    let mut failures = Vec::new();
    let mut survivors: Vec<(String, Masked, Vec<u32>, u64)> = Vec::new();
    for (name, started, task) in tasks {
        let outcome = match task.await {
            Ok(Ok(Ok(masked))) => match exchange.take_update(round, &name) {
                Some(mut update) => match update.masked.take() {
                    Some(values) => Ok((masked, values, update)),
                    None => Err("it sent unmasked weights".to_string()),
                },
                None => Err("its update did not arrive".to_string()),
            },
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
            bytes_sent: None,
            bytes_received: None,
            status: "ok".into(),
        };
        match outcome {
            Ok((masked, values, update)) => {
                record.num_examples = update.num_examples;
                record.loss = Some(update.loss);
                record.bytes_sent = Some(masked.fetched);
                record.bytes_received = Some(update.bytes);
                survivors.push((name, masked, values, update.num_examples));
            }
            Err(e) => {
                record.status = if e.contains("round_timeout") {
                    "timeout"
                } else {
                    "failed"
                }
                .into();
                failures.push(format!("{name}: {e}"));
            }
        }
        records.push(record);
    }
    let (keys, shares) = stages.await.map_err(training_error)?;
    let peers = peers_of(&keys)?;
    // The secrets were split among everyone that posted a key.
    let t = threshold(peers.len());
    let maskers: Vec<(String, [u8; 32], u64)> = peers
        .into_iter()
        .filter(|(n, _, _)| shares.contains_key(n))
        .collect();
    let masking: BTreeSet<&String> = maskers.iter().map(|(n, _, _)| n).collect();
    survivors.retain(|(n, ..)| masking.contains(n));
    let needed = t.max(options.min_train_nodes);
    if survivors.len() < needed {
        failures.push(format!(
            "secure aggregation needs {needed} surviving clients, {} remain",
            survivors.len()
        ));
        return Ok(SecureRound {
            records,
            update: None,
            failures,
        });
    }

    let alive: Vec<String> = survivors.iter().map(|(n, ..)| n.clone()).collect();
    let dropped: Vec<String> = maskers
        .iter()
        .map(|(n, _, _)| n.clone())
        .filter(|n| !alive.contains(n))
        .collect();
    exchange
        .announce(
            round,
            "survivors",
            serde_json::to_vec(&(&alive, &dropped)).map_err(training_error)?,
        )
        .await;
    let mut masked_inputs = Vec::new();
    let mut reveal_tasks = Vec::new();
    for (name, masked, values, _) in survivors {
        masked_inputs.push((name.clone(), values));
        reveal_tasks.push(tokio::spawn(reveal(masked, round, name)));
    }
    let posted = exchange
        .board()
        .close_stage(round, "reveal", &alive, timeout)
        .await;
    for task in reveal_tasks {
        if let Ok(Err(e)) = task.await {
            failures.push(format!("unmask: {e}"));
        }
    }
    let mut reveals: Vec<Reveal> = Vec::new();
    for payload in posted.values() {
        reveals.extend(serde_json::from_slice::<Vec<Reveal>>(payload).map_err(training_error)?);
    }
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
