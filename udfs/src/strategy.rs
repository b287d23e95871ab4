//! Aggregation strategies: how the coordinator merges the clients' weights
//! into the next global model, with Flower's names, parameters and defaults.
//!
//! Every strategy sees the model as one flat `f32` vector (the order is the
//! model's, see `model.rs`) and keeps whatever server state its update rule
//! needs (momentum, moments) between rounds. Sums run in `f64`.
//!
//! | strategy | rule |
//! |---|---|
//! | [`FedAvg`] | mean weighted by `num_examples` |
//! | `fedprox` | [`FedAvg`] on the server; `proximal_mu` acts in the clients' loss |
//! | [`FedAvgM`] | server momentum on the pseudo-gradient |
//! | [`FedOpt`] (`fedadam`, `fedyogi`, `fedadagrad`) | adaptive server optimizers (Reddi et al. 2021) |
//! | [`FedMedian`] | coordinate-wise median |
//! | [`FedTrimmedAvg`] | coordinate-wise mean after cutting `trim_beta` from each end |
//! | [`Krum`] | the update closest to its neighbours (Blanchard et al. 2017) |
//!
//! [`DpFixedClipping`] wraps any of them with fixed-norm clipping and
//! Gaussian noise, client- or server-side as in Flower.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::error::{Result, UdfError};

/// One client's result of a round.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientUpdate {
    /// The client's weights after local training.
    pub weights: Vec<f32>,
    /// How many examples it trained on.
    pub num_examples: u64,
}

/// Merges client updates into the next global weights.
pub trait Strategy: Send {
    /// The name users write in `WITH (strategy = '…')`.
    fn name(&self) -> &'static str;

    /// The next global weights from the current ones and this round's
    /// updates (never empty; every update has the global's length).
    fn aggregate(&mut self, global: &[f32], updates: &[ClientUpdate]) -> Result<Vec<f32>>;

    /// What the strategy carries into the next round (momentum, moments,
    /// a noise generator's position): with [`Strategy::restore`], a run
    /// checkpointed after a round continues exactly as if uninterrupted.
    /// Stateless strategies keep the default.
    fn state(&self) -> StrategyState {
        StrategyState::default()
    }

    /// Takes up a state [`Strategy::state`] returned, by a strategy made
    /// with the same options.
    fn restore(&mut self, state: StrategyState) -> Result<()> {
        let _ = state;
        Ok(())
    }
}

/// A strategy's state between rounds (see [`Strategy::state`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StrategyState {
    /// Rounds aggregated so far (FedAdam's bias correction counts them).
    pub rounds: u32,
    /// Per-coordinate vectors, in the strategy's own order (FedAvgM's
    /// momentum; FedOpt's first and second moments).
    pub vectors: Vec<Vec<f64>>,
    /// Where the noise generator is in its stream (differential privacy).
    pub noise_position: Option<u128>,
    /// The wrapped strategy's state (differential privacy wraps one).
    pub inner: Option<Box<StrategyState>>,
}

fn check(global: &[f32], updates: &[ClientUpdate]) -> Result<()> {
    if updates.is_empty() {
        return Err(UdfError::Training("no client update to aggregate".into()));
    }
    if let Some(bad) = updates.iter().find(|u| u.weights.len() != global.len()) {
        return Err(UdfError::Training(format!(
            "a client sent {} weights, the model has {}",
            bad.weights.len(),
            global.len()
        )));
    }
    Ok(())
}

/// The example-weighted mean of the updates (FedAvg's rule).
pub fn weighted_mean(updates: &[ClientUpdate]) -> Vec<f32> {
    let total: f64 = updates.iter().map(|u| u.num_examples as f64).sum();
    let len = updates.first().map_or(0, |u| u.weights.len());
    let mut acc = vec![0f64; len];
    for u in updates {
        // Clients with no examples carry no weight; if all have none, plain mean.
        let w = if total > 0.0 {
            u.num_examples as f64 / total
        } else {
            1.0 / updates.len() as f64
        };
        for (a, x) in acc.iter_mut().zip(&u.weights) {
            *a += w * f64::from(*x);
        }
    }
    acc.into_iter().map(|x| x as f32).collect()
}

/// Federated averaging (McMahan et al. 2017).
#[derive(Debug, Default)]
pub struct FedAvg;

impl Strategy for FedAvg {
    fn name(&self) -> &'static str {
        "fedavg"
    }

    fn aggregate(&mut self, global: &[f32], updates: &[ClientUpdate]) -> Result<Vec<f32>> {
        check(global, updates)?;
        Ok(weighted_mean(updates))
    }
}

/// FedAvg with server momentum (Hsu et al. 2019), as Flower's `FedAvgM`:
/// `Δ = global − fedavg`, `v = β·v + Δ` (from the second round), and
/// `global − η·v`.
#[derive(Debug)]
pub struct FedAvgM {
    /// `server_learning_rate` (default 1.0).
    pub server_learning_rate: f64,
    /// `server_momentum` (default 0.0).
    pub server_momentum: f64,
    momentum: Option<Vec<f64>>,
}

impl FedAvgM {
    /// A FedAvgM with Flower's parameters.
    pub fn new(server_learning_rate: f64, server_momentum: f64) -> Self {
        FedAvgM {
            server_learning_rate,
            server_momentum,
            momentum: None,
        }
    }
}

impl Strategy for FedAvgM {
    fn name(&self) -> &'static str {
        "fedavgm"
    }

    fn aggregate(&mut self, global: &[f32], updates: &[ClientUpdate]) -> Result<Vec<f32>> {
        check(global, updates)?;
        let avg = weighted_mean(updates);
        let mut delta: Vec<f64> = global
            .iter()
            .zip(&avg)
            .map(|(g, a)| f64::from(*g) - f64::from(*a))
            .collect();
        if self.server_momentum > 0.0 {
            let v = match self.momentum.take() {
                Some(v) => v
                    .iter()
                    .zip(&delta)
                    .map(|(m, d)| self.server_momentum * m + d)
                    .collect(),
                None => delta.clone(),
            };
            delta.clone_from(&v);
            self.momentum = Some(v);
        }
        Ok(global
            .iter()
            .zip(&delta)
            .map(|(g, d)| (f64::from(*g) - self.server_learning_rate * d) as f32)
            .collect())
    }

    fn state(&self) -> StrategyState {
        StrategyState {
            vectors: self.momentum.iter().cloned().collect(),
            ..StrategyState::default()
        }
    }

    fn restore(&mut self, state: StrategyState) -> Result<()> {
        self.momentum = state.vectors.into_iter().next();
        Ok(())
    }
}

/// Which adaptive server optimizer a [`FedOpt`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FedOptKind {
    Adam,
    Yogi,
    Adagrad,
}

/// Adaptive federated optimization (Reddi et al. 2021) as Flower implements
/// it: the pseudo-gradient `Δ = fedavg − global` drives first and second
/// moments on the server.
#[derive(Debug)]
pub struct FedOpt {
    kind: FedOptKind,
    /// Server learning rate `eta`.
    pub eta: f64,
    /// `beta_1`, `beta_2` and `tau` as in Flower.
    pub beta_1: f64,
    pub beta_2: f64,
    pub tau: f64,
    m: Vec<f64>,
    v: Vec<f64>,
    round: u32,
}

impl FedOpt {
    /// A FedOpt of `kind` with the given parameters.
    pub fn new(kind: FedOptKind, eta: f64, beta_1: f64, beta_2: f64, tau: f64) -> Self {
        FedOpt {
            kind,
            eta,
            beta_1,
            beta_2,
            tau,
            m: Vec::new(),
            v: Vec::new(),
            round: 0,
        }
    }

    /// Flower's defaults `(eta, eta_l, beta_1, beta_2, tau)` for each kind.
    pub fn defaults(kind: FedOptKind) -> (f64, f64, f64, f64, f64) {
        match kind {
            FedOptKind::Adam => (1e-1, 1e-1, 0.9, 0.99, 1e-9),
            FedOptKind::Yogi => (1e-2, 0.0316, 0.9, 0.99, 1e-3),
            FedOptKind::Adagrad => (1e-1, 1e-1, 0.0, 0.0, 1e-9),
        }
    }
}

impl Strategy for FedOpt {
    fn name(&self) -> &'static str {
        match self.kind {
            FedOptKind::Adam => "fedadam",
            FedOptKind::Yogi => "fedyogi",
            FedOptKind::Adagrad => "fedadagrad",
        }
    }

    fn aggregate(&mut self, global: &[f32], updates: &[ClientUpdate]) -> Result<Vec<f32>> {
        check(global, updates)?;
        self.round += 1;
        let avg = weighted_mean(updates);
        if self.m.len() != global.len() {
            self.m = vec![0.0; global.len()];
            self.v = vec![0.0; global.len()];
        }
        // Flower numbers rounds from 1 and corrects FedAdam's step with
        // `server_round + 1`.
        let eta = match self.kind {
            FedOptKind::Adam => {
                let t = f64::from(self.round) + 1.0;
                self.eta * (1.0 - self.beta_2.powf(t)).sqrt() / (1.0 - self.beta_1.powf(t))
            }
            _ => self.eta,
        };
        let mut next = Vec::with_capacity(global.len());
        for i in 0..global.len() {
            let delta = f64::from(avg[i]) - f64::from(global[i]);
            self.m[i] = self.beta_1 * self.m[i] + (1.0 - self.beta_1) * delta;
            let d2 = delta * delta;
            self.v[i] = match self.kind {
                FedOptKind::Adam => self.beta_2 * self.v[i] + (1.0 - self.beta_2) * d2,
                FedOptKind::Yogi => {
                    self.v[i] - (1.0 - self.beta_2) * d2 * (self.v[i] - d2).signum()
                }
                FedOptKind::Adagrad => self.v[i] + d2,
            };
            next.push(
                (f64::from(global[i]) + eta * self.m[i] / (self.v[i].sqrt() + self.tau)) as f32,
            );
        }
        Ok(next)
    }

    fn state(&self) -> StrategyState {
        StrategyState {
            rounds: self.round,
            vectors: vec![self.m.clone(), self.v.clone()],
            ..StrategyState::default()
        }
    }

    fn restore(&mut self, state: StrategyState) -> Result<()> {
        let [m, v]: [Vec<f64>; 2] = state.vectors.try_into().map_err(|_| {
            UdfError::Training("a FedOpt checkpoint needs two moment vectors".into())
        })?;
        (self.round, self.m, self.v) = (state.rounds, m, v);
        Ok(())
    }
}

/// Coordinate-wise median of the updates (unweighted, like Flower's).
#[derive(Debug, Default)]
pub struct FedMedian;

impl Strategy for FedMedian {
    fn name(&self) -> &'static str {
        "fedmedian"
    }

    fn aggregate(&mut self, global: &[f32], updates: &[ClientUpdate]) -> Result<Vec<f32>> {
        check(global, updates)?;
        let mut column = Vec::with_capacity(updates.len());
        Ok((0..global.len())
            .map(|i| {
                column.clear();
                column.extend(updates.iter().map(|u| f64::from(u.weights[i])));
                column.sort_by(f64::total_cmp);
                let n = column.len();
                let median = if n % 2 == 1 {
                    column[n / 2]
                } else {
                    (column[n / 2 - 1] + column[n / 2]) / 2.0
                };
                median as f32
            })
            .collect())
    }
}

/// Coordinate-wise trimmed mean: `floor(trim_beta · n)` values are cut from
/// each end before averaging (Flower's `FedTrimmedAvg`, `beta` = 0.2).
#[derive(Debug)]
pub struct FedTrimmedAvg {
    /// Fraction cut from each end.
    pub trim_beta: f64,
}

impl Strategy for FedTrimmedAvg {
    fn name(&self) -> &'static str {
        "fedtrimmedavg"
    }

    fn aggregate(&mut self, global: &[f32], updates: &[ClientUpdate]) -> Result<Vec<f32>> {
        check(global, updates)?;
        let n = updates.len();
        let cut = (self.trim_beta * n as f64).floor() as usize;
        if 2 * cut >= n {
            return Err(UdfError::Training(format!(
                "trim_beta = {} cuts every one of {n} updates",
                self.trim_beta
            )));
        }
        let mut column = Vec::with_capacity(n);
        Ok((0..global.len())
            .map(|i| {
                column.clear();
                column.extend(updates.iter().map(|u| f64::from(u.weights[i])));
                column.sort_by(f64::total_cmp);
                let kept = &column[cut..n - cut];
                (kept.iter().sum::<f64>() / kept.len() as f64) as f32
            })
            .collect())
    }
}

/// Krum: the update whose summed squared distance to its `n − f − 2`
/// nearest neighbours is smallest, `f` = `num_malicious_nodes`; with
/// `num_nodes_to_keep` > 0, the example-weighted mean of that many best
/// (Multi-Krum).
#[derive(Debug)]
pub struct Krum {
    pub num_malicious_nodes: usize,
    pub num_nodes_to_keep: usize,
}

impl Strategy for Krum {
    fn name(&self) -> &'static str {
        "krum"
    }

    fn aggregate(&mut self, global: &[f32], updates: &[ClientUpdate]) -> Result<Vec<f32>> {
        check(global, updates)?;
        let n = updates.len();
        let closest = n
            .saturating_sub(self.num_malicious_nodes)
            .saturating_sub(2)
            .max(1);
        let distance = |a: &[f32], b: &[f32]| -> f64 {
            a.iter()
                .zip(b)
                .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
                .sum()
        };
        let mut scores: Vec<(f64, usize)> = (0..n)
            .map(|i| {
                let mut d: Vec<f64> = (0..n)
                    .filter(|j| *j != i)
                    .map(|j| distance(&updates[i].weights, &updates[j].weights))
                    .collect();
                d.sort_by(f64::total_cmp);
                (d.iter().take(closest).sum(), i)
            })
            .collect();
        scores.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        if self.num_nodes_to_keep > 0 {
            let best: Vec<ClientUpdate> = scores
                .iter()
                .take(self.num_nodes_to_keep)
                .map(|(_, i)| updates[*i].clone())
                .collect();
            return Ok(weighted_mean(&best));
        }
        Ok(updates[scores[0].1].weights.clone())
    }
}

/// Differential privacy with fixed clipping, as Flower's
/// `DifferentialPrivacy{Client,Server}SideFixedClipping`: each update
/// `w_k − global` is scaled to an L2 norm of at most `clipping_norm` (by the
/// client or by the server), the inner strategy aggregates, and Gaussian
/// noise with standard deviation `noise_multiplier · clipping_norm / n` is
/// added to every coordinate.
pub struct DpFixedClipping {
    inner: Box<dyn Strategy>,
    pub clipping_norm: f64,
    pub noise_multiplier: f64,
    rng: ChaCha8Rng,
}

impl DpFixedClipping {
    /// Wraps `inner`; `seed` makes the noise reproducible.
    pub fn new(
        inner: Box<dyn Strategy>,
        clipping_norm: f64,
        noise_multiplier: f64,
        seed: u64,
    ) -> Result<Self> {
        if clipping_norm.is_nan()
            || clipping_norm <= 0.0
            || noise_multiplier.is_nan()
            || noise_multiplier < 0.0
        {
            return Err(UdfError::Option(
                "dp needs clipping_norm > 0 and noise_multiplier >= 0".into(),
            ));
        }
        Ok(DpFixedClipping {
            inner,
            clipping_norm,
            noise_multiplier,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    /// `global + clip(w − global)`: the update with its norm capped.
    pub fn clip(&self, global: &[f32], weights: &[f32]) -> Vec<f32> {
        let norm = global
            .iter()
            .zip(weights)
            .map(|(g, w)| (f64::from(*w) - f64::from(*g)).powi(2))
            .sum::<f64>()
            .sqrt();
        let scale = (self.clipping_norm / norm).min(1.0);
        global
            .iter()
            .zip(weights)
            .map(|(g, w)| (f64::from(*g) + scale * (f64::from(*w) - f64::from(*g))) as f32)
            .collect()
    }
}

impl Strategy for DpFixedClipping {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn aggregate(&mut self, global: &[f32], updates: &[ClientUpdate]) -> Result<Vec<f32>> {
        check(global, updates)?;
        // Clipping twice is harmless: a clipped update is within the norm.
        let clipped: Vec<ClientUpdate> = updates
            .iter()
            .map(|u| ClientUpdate {
                weights: self.clip(global, &u.weights),
                num_examples: u.num_examples,
            })
            .collect();
        let mut next = self.inner.aggregate(global, &clipped)?;
        let std = self.noise_multiplier * self.clipping_norm / updates.len() as f64;
        if std > 0.0 {
            let normal =
                Normal::new(0.0, std).map_err(|e| UdfError::Option(format!("noise: {e}")))?;
            for w in &mut next {
                *w += normal.sample(&mut self.rng) as f32;
            }
        }
        Ok(next)
    }

    fn state(&self) -> StrategyState {
        StrategyState {
            noise_position: Some(self.rng.get_word_pos()),
            inner: Some(Box::new(self.inner.state())),
            ..StrategyState::default()
        }
    }

    fn restore(&mut self, state: StrategyState) -> Result<()> {
        if let Some(position) = state.noise_position {
            self.rng.set_word_pos(position);
        }
        self.inner
            .restore(state.inner.map(|s| *s).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(weights: &[f32], n: u64) -> ClientUpdate {
        ClientUpdate {
            weights: weights.to_vec(),
            num_examples: n,
        }
    }

    fn close(a: &[f32], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((f64::from(*x) - y).abs() < 1e-5, "{a:?} != {b:?}");
        }
    }

    #[test]
    fn fedavg_weights_by_examples() {
        // (1·10 + 4·30) / 40 = 3.25 ; (2·10 + 0·30) / 40 = 0.5
        let next = FedAvg
            .aggregate(&[0.0, 0.0], &[u(&[1.0, 2.0], 10), u(&[4.0, 0.0], 30)])
            .unwrap();
        close(&next, &[3.25, 0.5]);
    }

    #[test]
    fn fedavgm_uses_momentum_from_the_second_round() {
        let mut s = FedAvgM::new(1.0, 0.5);
        // Round 1: Δ = 1 − 0.5 = 0.5 ; v = Δ ; next = 1 − 0.5 = 0.5
        let g1 = s.aggregate(&[1.0], &[u(&[0.5], 1)]).unwrap();
        close(&g1, &[0.5]);
        // Round 2: Δ = 0.5 − 0.25 = 0.25 ; v = 0.5·0.5 + 0.25 = 0.5 ; next = 0
        let g2 = s.aggregate(&g1, &[u(&[0.25], 1)]).unwrap();
        close(&g2, &[0.0]);
    }

    #[test]
    fn fedadam_matches_flowers_rule() {
        let (eta, _, b1, b2, tau) = FedOpt::defaults(FedOptKind::Adam);
        let mut s = FedOpt::new(FedOptKind::Adam, eta, b1, b2, tau);
        // Δ = 1 ; m = 0.1 ; v = 0.01 ; η_norm = 0.1·√(1−0.99²)/(1−0.9²)
        let next = s.aggregate(&[0.0], &[u(&[1.0], 5)]).unwrap();
        let eta_norm = 0.1 * (1.0f64 - 0.99f64.powi(2)).sqrt() / (1.0 - 0.9f64.powi(2));
        close(&next, &[eta_norm * 0.1 / (0.01f64.sqrt() + 1e-9)]);
    }

    #[test]
    fn fedyogi_and_fedadagrad_second_moments() {
        let (eta, _, b1, b2, tau) = FedOpt::defaults(FedOptKind::Yogi);
        let mut yogi = FedOpt::new(FedOptKind::Yogi, eta, b1, b2, tau);
        // Δ = 2 ; m = 0.2 ; v = 0 − 0.01·4·sign(0 − 4) = 0.04 ; x = 0.01·0.2/(0.2+0.001)
        let next = yogi.aggregate(&[0.0], &[u(&[2.0], 1)]).unwrap();
        close(&next, &[0.01 * 0.2 / (0.2 + 1e-3)]);

        let (eta, _, b1, b2, tau) = FedOpt::defaults(FedOptKind::Adagrad);
        let mut adagrad = FedOpt::new(FedOptKind::Adagrad, eta, b1, b2, tau);
        // Δ = 2 ; m = 2 ; v = 4 ; x = 0.1·2/2 = 0.1 ; then Δ' = 2.1 − 0.1 = 2 → v = 8
        let g1 = adagrad.aggregate(&[0.0], &[u(&[2.0], 1)]).unwrap();
        close(&g1, &[0.1]);
        let g2 = adagrad.aggregate(&g1, &[u(&[2.1], 1)]).unwrap();
        close(&g2, &[0.1 + 0.1 * 2.0 / (8.0f64.sqrt() + 1e-9)]);
    }

    #[test]
    fn median_and_trimmed_mean_resist_an_outlier() {
        let updates = [
            u(&[1.0], 1),
            u(&[2.0], 1),
            u(&[3.0], 1),
            u(&[4.0], 1),
            u(&[1000.0], 1),
        ];
        close(&FedMedian.aggregate(&[0.0], &updates).unwrap(), &[3.0]);
        // 5 · 0.2 = 1 cut from each end: mean(2, 3, 4) = 3
        let mut trimmed = FedTrimmedAvg { trim_beta: 0.2 };
        close(&trimmed.aggregate(&[0.0], &updates).unwrap(), &[3.0]);
        // 4 · 0.5 = 2 cut from each end leaves nothing.
        let mut too_much = FedTrimmedAvg { trim_beta: 0.5 };
        assert!(too_much.aggregate(&[0.0], &updates[..4]).is_err());
    }

    #[test]
    fn krum_picks_the_update_closest_to_its_neighbours() {
        let updates = [
            u(&[0.0, 0.0], 1),
            u(&[0.1, 0.0], 1),
            u(&[0.0, 0.2], 1),
            u(&[50.0, 50.0], 1),
        ];
        // n=4, f=1 → 1 closest neighbour. Scores: 0.01, 0.01, 0.04, 4990.01;
        // ties go to the first.
        let mut krum = Krum {
            num_malicious_nodes: 1,
            num_nodes_to_keep: 0,
        };
        close(&krum.aggregate(&[0.0, 0.0], &updates).unwrap(), &[0.0, 0.0]);
        let mut multi = Krum {
            num_malicious_nodes: 1,
            num_nodes_to_keep: 2,
        };
        close(
            &multi.aggregate(&[0.0, 0.0], &updates).unwrap(),
            &[0.05, 0.0],
        );
    }

    #[test]
    fn dp_clips_updates_to_the_norm() {
        let dp = DpFixedClipping::new(Box::new(FedAvg), 1.0, 0.0, 7).unwrap();
        // Update (3, 4) has norm 5 → scaled to (0.6, 0.8).
        close(&dp.clip(&[0.0, 0.0], &[3.0, 4.0]), &[0.6, 0.8]);
        close(&dp.clip(&[0.0, 0.0], &[0.3, 0.4]), &[0.3, 0.4]);
        let mut dp = dp;
        close(
            &dp.aggregate(&[0.0, 0.0], &[u(&[3.0, 4.0], 1), u(&[0.0, 0.0], 1)])
                .unwrap(),
            &[0.3, 0.4],
        );
        // With noise the result moves, reproducibly for a seed.
        let noisy = |seed| {
            DpFixedClipping::new(Box::new(FedAvg), 1.0, 1.0, seed)
                .unwrap()
                .aggregate(&[0.0; 3], &[u(&[0.0; 3], 1)])
                .unwrap()
        };
        assert_eq!(noisy(1), noisy(1));
        assert_ne!(noisy(1), vec![0.0; 3]);
    }

    #[test]
    fn a_restored_state_continues_exactly() {
        let makers: Vec<fn() -> Box<dyn Strategy>> = vec![
            || Box::new(FedAvgM::new(1.0, 0.9)),
            || Box::new(FedOpt::new(FedOptKind::Adam, 0.1, 0.9, 0.99, 1e-9)),
            || {
                let inner = Box::new(FedOpt::new(FedOptKind::Yogi, 0.01, 0.9, 0.99, 1e-3));
                Box::new(DpFixedClipping::new(inner, 1.0, 0.5, 3).unwrap())
            },
        ];
        let round = |r: u32| vec![u(&[r as f32, -1.0, 0.5], 2), u(&[0.0, 2.0, r as f32], 5)];
        for make in makers {
            let mut straight = make();
            let mut global = vec![0.0f32; 3];
            for r in 1..=4 {
                global = straight.aggregate(&global, &round(r)).unwrap();
            }
            let mut first = make();
            let mut resumed_global = vec![0.0f32; 3];
            for r in 1..=2 {
                resumed_global = first.aggregate(&resumed_global, &round(r)).unwrap();
            }
            let mut second = make();
            second.restore(first.state()).unwrap();
            for r in 3..=4 {
                resumed_global = second.aggregate(&resumed_global, &round(r)).unwrap();
            }
            assert_eq!(resumed_global, global, "{}", straight.name());
            // Without the state the run would differ: the test can fail.
            let (mut before, mut after) = (make(), make());
            let mut other = vec![0.0f32; 3];
            for r in 1..=2 {
                other = before.aggregate(&other, &round(r)).unwrap();
            }
            for r in 3..=4 {
                other = after.aggregate(&other, &round(r)).unwrap();
            }
            assert_ne!(other, global, "{}", straight.name());
        }
    }

    #[test]
    fn mismatched_updates_are_errors() {
        assert!(FedAvg.aggregate(&[0.0], &[]).is_err());
        assert!(FedAvg.aggregate(&[0.0], &[u(&[1.0, 2.0], 1)]).is_err());
    }
}
