//! A client's part of a securely aggregated round (`secure_aggregation =
//! true`), over the weight exchange's bulletin board — the same code in a
//! `FEDERATED BY` partition and in a `fedsql site` process.
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
//! sum; row counts are public (they are in `training_rounds` anyway). The
//! protocol itself is in [`crate::secure_aggregation`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::client::train_off_runtime;
use crate::error::{Result, UdfError};
use crate::exchange::{ExchangeAccess, ExchangeClient};
use crate::model::Architecture;
use crate::secure_aggregation::SecAggClient;
use crate::train::{Examples, LocalConfig};

/// The bulletin-board stages of a secure round, in order.
pub const KEYS: &str = "keys";
pub const SHARES: &str = "shares";
pub const SURVIVORS: &str = "survivors";
pub const REVEAL: &str = "reveal";

/// The coordinator's post in [`SURVIVORS`]: whose masked updates arrived,
/// and who shared keys but sent none. An empty `alive` abandons the round.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Survivors {
    pub alive: Vec<String>,
    pub dropped: Vec<String>,
}

fn training_error(e: impl std::fmt::Display) -> UdfError {
    UdfError::Training(format!("secure aggregation: {e}"))
}

/// A client's post in [`KEYS`]: its public key and its training rows.
pub fn key_post(public: [u8; 32], rows: u64) -> Vec<u8> {
    let mut payload = public.to_vec();
    payload.extend_from_slice(&rows.to_le_bytes());
    payload
}

/// The clients that posted a key, in the round's order, with their rows.
pub fn peers_of(keys: &BTreeMap<String, Vec<u8>>) -> Result<Vec<(String, [u8; 32], u64)>> {
    keys.iter()
        .map(|(name, payload)| {
            let (Ok(key), Ok(rows)) = (
                <[u8; 32]>::try_from(payload.get(..32).unwrap_or_default()),
                <[u8; 8]>::try_from(payload.get(32..).unwrap_or_default()),
            ) else {
                return Err(training_error(format!("{name} posted a malformed key")));
            };
            Ok((name.clone(), key, u64::from_le_bytes(rows)))
        })
        .collect()
}

/// Takes part in round `round` as the client `access` admits, training on
/// `train`; `fail` makes the client fail after it shared its keys (the
/// fault-injection hook: the dropout SecAgg must survive). Returns the
/// bytes of global weights fetched, once the client revealed what the
/// coordinator needs to unmask the survivors' sum (or learned it was left
/// out).
pub async fn take_part(
    access: &ExchangeAccess,
    round: u32,
    arch: &Architecture,
    train: Arc<Examples>,
    config: LocalConfig,
    fail: bool,
) -> Result<u64> {
    let name = access.client.as_str();
    let mut link = ExchangeClient::connect(access).await?;
    let mut party = SecAggClient::new(name);
    let rows = train.rows() as u64;
    link.post(round, KEYS, name, key_post(party.public_key(), rows))
        .await?;

    let peers = peers_of(&link.read(round, KEYS).await?)?;
    let keys: Vec<(String, [u8; 32])> = peers.iter().map(|(n, k, _)| (n.clone(), *k)).collect();
    let sealed = party.shares_for(&keys)?;
    link.post(
        round,
        SHARES,
        name,
        serde_json::to_vec(&sealed).map_err(training_error)?,
    )
    .await?;
    let shares = link.read(round, SHARES).await?;
    for (from, payload) in &shares {
        if from == name {
            continue;
        }
        let sent: Vec<(String, Vec<u8>)> =
            serde_json::from_slice(payload).map_err(training_error)?;
        let public = keys.iter().find(|(n, _)| n == from).map(|(_, k)| *k);
        if let (Some((_, mine)), Some(public)) = (sent.iter().find(|(to, _)| to == name), public) {
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
    let global = Arc::new(global);
    let trained = train_off_runtime(arch.clone(), Arc::clone(&global), train, config, fail).await?;
    let delta: Vec<f32> = trained
        .weights
        .iter()
        .zip(global.iter())
        .map(|(t, g)| t - g)
        .collect();
    let masked = party.mask(&maskers, &delta, rows as f64 / total.max(1) as f64);
    link.send_masked(round, name, &masked, rows, trained.loss)
        .await?;

    let announced = link.read(round, SURVIVORS).await?;
    let survivors: Survivors = announced
        .get("coordinator")
        .map(|p| serde_json::from_slice(p))
        .transpose()
        .map_err(training_error)?
        .ok_or_else(|| training_error("no survivors were announced"))?;
    if survivors.alive.is_empty() {
        return Err(training_error(
            "the coordinator abandoned the round: too few clients survived",
        ));
    }
    if !survivors.alive.iter().any(|n| n == name) {
        // Left out (its update came too late): nothing to reveal.
        return Ok(fetched);
    }
    let reveals = party.reveal(&survivors.alive, &survivors.dropped)?;
    link.post(
        round,
        REVEAL,
        name,
        serde_json::to_vec(&reveals).map_err(training_error)?,
    )
    .await?;
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_post_reads_back_and_a_short_one_is_refused() {
        let mut posts = BTreeMap::new();
        posts.insert("eu".to_string(), key_post([7; 32], 1234));
        assert_eq!(
            peers_of(&posts).unwrap(),
            vec![("eu".to_string(), [7; 32], 1234)]
        );
        posts.insert("us".to_string(), vec![1, 2, 3]);
        let err = peers_of(&posts).unwrap_err().to_string();
        assert!(err.contains("us posted a malformed key"), "{err}");
    }
}
