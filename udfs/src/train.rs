//! Local training: one federated client fits the global model to its own
//! rows with Burn's autodiff on the CPU (the `flex` backend), and evaluation
//! of a model on rows.

use burn::optim::{AdamConfig, GradientsParams, SgdConfig};
use burn::tensor::activation;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Result, UdfError};
use crate::model::{to_vec, Architecture, Network};
use crate::options::Optimizer;

/// What a model predicts.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// A number per row.
    Regression(Vec<f32>),
    /// A class index per row, out of `classes`.
    Classes { labels: Vec<u32>, classes: usize },
}

impl Targets {
    fn len(&self) -> usize {
        match self {
            Targets::Regression(v) => v.len(),
            Targets::Classes { labels, .. } => labels.len(),
        }
    }

    fn select(&self, rows: &[usize]) -> Targets {
        match self {
            Targets::Regression(v) => Targets::Regression(rows.iter().map(|&r| v[r]).collect()),
            Targets::Classes { labels, classes } => Targets::Classes {
                labels: rows.iter().map(|&r| labels[r]).collect(),
                classes: *classes,
            },
        }
    }
}

/// Rows as a dense, already-transformed feature matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Examples {
    /// Row-major `rows × width` features.
    pub features: Vec<f32>,
    pub width: usize,
    pub targets: Targets,
}

impl Examples {
    /// The number of rows.
    pub fn rows(&self) -> usize {
        self.targets.len()
    }

    /// The given rows, in that order.
    pub fn select(&self, rows: &[usize]) -> Examples {
        let mut features = Vec::with_capacity(rows.len() * self.width);
        for &r in rows {
            features.extend_from_slice(&self.features[r * self.width..(r + 1) * self.width]);
        }
        Examples {
            features,
            width: self.width,
            targets: self.targets.select(rows),
        }
    }

    /// A seeded split into (train, validation) with `fraction` of the rows
    /// held out.
    pub fn split(&self, fraction: f64, seed: u64) -> (Examples, Examples) {
        let mut order: Vec<usize> = (0..self.rows()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let held = ((self.rows() as f64) * fraction).round() as usize;
        let held = held.min(self.rows().saturating_sub(1));
        let (validation, train) = order.split_at(held);
        (self.select(train), self.select(validation))
    }
}

/// How a client trains.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LocalConfig {
    pub epochs: u32,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub optimizer: Optimizer,
    /// FedProx's `μ`; 0 trains plain local SGD/Adam.
    pub proximal_mu: f64,
    pub seed: u64,
}

/// A client's result of a round.
#[derive(Debug, Clone)]
pub struct LocalResult {
    pub weights: Vec<f32>,
    pub num_examples: u64,
    /// Mean training loss of the last epoch.
    pub loss: f64,
}

/// Quality of a model on some rows.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    pub num_examples: u64,
    pub loss: f64,
    /// Classifiers: share of rows predicted right.
    pub accuracy: Option<f64>,
    /// Regressions: root mean squared error.
    pub rmse: Option<f64>,
}

fn batch_tensors(examples: &Examples, device: &Device) -> Tensor<2> {
    Tensor::from_data(
        TensorData::new(examples.features.clone(), [examples.rows(), examples.width]),
        device,
    )
}

/// The loss of `outputs` against `targets`: mean squared error, or mean
/// cross-entropy of the softmax.
fn loss(outputs: Tensor<2>, targets: &Targets, device: &Device) -> Tensor<1> {
    match targets {
        Targets::Regression(values) => {
            let y: Tensor<2> =
                Tensor::<1>::from_data(TensorData::new(values.clone(), [values.len()]), device)
                    .reshape([values.len(), 1]);
            (outputs - y).powi_scalar(2).mean()
        }
        Targets::Classes { labels, .. } => {
            let log_p = activation::log_softmax(outputs, 1);
            let index: Tensor<2, Int> = Tensor::<1, Int>::from_data(
                TensorData::new(
                    labels.iter().map(|&l| l as i64).collect::<Vec<_>>(),
                    [labels.len()],
                ),
                device,
            )
            .reshape([labels.len(), 1]);
            log_p.gather(1, index).mean().neg()
        }
    }
}

fn scalar(t: Tensor<1>) -> Result<f64> {
    Ok(to_vec(t.into_data())?
        .first()
        .copied()
        .unwrap_or(f32::NAN)
        .into())
}

/// Trains `global` on `examples` for `config.epochs` and returns the new
/// weights; only weights and the loss leave this function.
pub fn train_local(
    arch: &Architecture,
    global: &[f32],
    examples: &Examples,
    config: &LocalConfig,
) -> Result<LocalResult> {
    if examples.rows() == 0 {
        return Err(UdfError::Input("a client has no training rows".into()));
    }
    let device = Device::flex().autodiff();
    let mut model = Network::from_weights(arch, global, &device)?;
    let anchor = (config.proximal_mu > 0.0)
        .then(|| Network::from_weights(arch, global, &device))
        .transpose()?;
    let mut optimizer = match config.optimizer {
        Optimizer::Sgd => SgdConfig::new().init(),
        Optimizer::Adam => AdamConfig::new().init(),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..examples.rows()).collect();
    let mut last_loss = f64::NAN;
    for _ in 0..config.epochs {
        order.shuffle(&mut rng);
        let (mut sum, mut batches) = (0.0, 0usize);
        for chunk in order.chunks(config.batch_size.max(1)) {
            let batch = examples.select(chunk);
            let outputs = model.forward(batch_tensors(&batch, &device), arch.activation);
            let mut objective = loss(outputs, &batch.targets, &device);
            sum += scalar(objective.clone())?;
            batches += 1;
            if let Some(anchor) = &anchor {
                objective = objective
                    + model
                        .squared_distance(anchor)
                        .mul_scalar(config.proximal_mu / 2.0);
            }
            let grads = GradientsParams::from_grads(objective.backward(), &model);
            model = optimizer.step(config.learning_rate, model, grads);
        }
        last_loss = sum / batches.max(1) as f64;
    }
    if !last_loss.is_finite() {
        return Err(UdfError::Training(
            "the loss diverged (try a smaller learning_rate)".into(),
        ));
    }
    Ok(LocalResult {
        weights: model.weights()?,
        num_examples: examples.rows() as u64,
        loss: last_loss,
    })
}

/// The model's outputs for every row: regression values, or class
/// probabilities (`rows × classes`, row-major).
pub fn predict(
    arch: &Architecture,
    weights: &[f32],
    features: &[f32],
    rows: usize,
    classifier: bool,
) -> Result<Vec<f32>> {
    let device = Device::flex();
    let model = Network::from_weights(arch, weights, &device)?;
    let x = Tensor::from_data(
        TensorData::new(features.to_vec(), [rows, arch.inputs]),
        &device,
    );
    let out = model.forward(x, arch.activation);
    let out = if classifier {
        activation::softmax(out, 1)
    } else {
        out
    };
    to_vec(out.into_data())
}

/// Loss and accuracy (or RMSE) of `weights` on `examples`.
pub fn evaluate(arch: &Architecture, weights: &[f32], examples: &Examples) -> Result<Metrics> {
    let rows = examples.rows();
    if rows == 0 {
        return Ok(Metrics::default());
    }
    let device = Device::flex();
    let model = Network::from_weights(arch, weights, &device)?;
    let outputs = model.forward(batch_tensors(examples, &device), arch.activation);
    let l = scalar(loss(outputs.clone(), &examples.targets, &device))?;
    let values = to_vec(outputs.into_data())?;
    let mut metrics = Metrics {
        num_examples: rows as u64,
        loss: l,
        ..Metrics::default()
    };
    match &examples.targets {
        Targets::Regression(_) => metrics.rmse = Some(l.sqrt()),
        Targets::Classes { labels, classes } => {
            let right = labels
                .iter()
                .enumerate()
                .filter(|(r, &label)| {
                    let row = &values[r * classes..(r + 1) * classes];
                    let best = row
                        .iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map_or(0, |(i, _)| i);
                    best == label as usize
                })
                .count();
            metrics.accuracy = Some(right as f64 / rows as f64);
        }
    }
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Activation;

    fn separable(n: usize) -> Examples {
        // Class 1 iff x0 + x1 > 0.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..n {
            let a: f32 = rand::Rng::random_range(&mut rng, -1.0..1.0);
            let b: f32 = rand::Rng::random_range(&mut rng, -1.0..1.0);
            features.extend([a, b]);
            labels.push(u32::from(a + b > 0.0));
        }
        Examples {
            features,
            width: 2,
            targets: Targets::Classes { labels, classes: 2 },
        }
    }

    #[test]
    fn logistic_regression_learns_a_separable_rule() {
        let arch = Architecture {
            inputs: 2,
            hidden: vec![],
            outputs: 2,
            activation: Activation::Relu,
        };
        let data = separable(400);
        let w0 = arch.initial_weights(3);
        let config = LocalConfig {
            epochs: 20,
            batch_size: 32,
            learning_rate: 0.5,
            optimizer: Optimizer::Sgd,
            proximal_mu: 0.0,
            seed: 5,
        };
        let before = evaluate(&arch, &w0, &data).unwrap();
        let result = train_local(&arch, &w0, &data, &config).unwrap();
        let after = evaluate(&arch, &result.weights, &data).unwrap();
        assert!(after.loss < before.loss, "{before:?} -> {after:?}");
        assert!(after.accuracy.unwrap() > 0.95, "{after:?}");
        // Same seed, same weights.
        let again = train_local(&arch, &w0, &data, &config).unwrap();
        assert_eq!(again.weights, result.weights);
    }

    #[test]
    fn proximal_term_keeps_weights_near_the_global_model() {
        let arch = Architecture {
            inputs: 2,
            hidden: vec![],
            outputs: 2,
            activation: Activation::Relu,
        };
        let data = separable(200);
        let w0 = arch.initial_weights(3);
        let run = |mu| {
            let config = LocalConfig {
                epochs: 5,
                batch_size: 16,
                learning_rate: 0.5,
                optimizer: Optimizer::Sgd,
                proximal_mu: mu,
                seed: 5,
            };
            let w = train_local(&arch, &w0, &data, &config).unwrap().weights;
            w.iter().zip(&w0).map(|(a, b)| (a - b).powi(2)).sum::<f32>()
        };
        // lr · μ < 2 keeps the proximal pull stable.
        assert!(run(1.0) < run(0.0));
    }
}
