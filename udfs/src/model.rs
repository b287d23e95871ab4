//! The models fedsql trains: a stack of Burn `Linear` layers.
//!
//! `linear_regression` and `logistic_regression` are one layer; `mlp` adds
//! hidden layers with an activation. Classifiers output one logit per class
//! (softmax; a binary target is two classes). Between rounds a model is a
//! flat `f32` vector — every layer's weight (row-major `[inputs, outputs]`)
//! then its bias — which is what strategies merge and what travels.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation;
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, UdfError};

/// The non-linearity between an MLP's layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Relu,
    Tanh,
    Sigmoid,
}

impl Activation {
    /// Parses `activation = '…'`.
    pub fn parse(text: &str) -> Result<Activation> {
        match text.to_lowercase().as_str() {
            "relu" => Ok(Activation::Relu),
            "tanh" => Ok(Activation::Tanh),
            "sigmoid" => Ok(Activation::Sigmoid),
            other => Err(UdfError::Option(format!(
                "unknown activation '{other}' (known: relu, tanh, sigmoid)"
            ))),
        }
    }

    fn apply(self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Activation::Relu => activation::relu(x),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => activation::sigmoid(x),
        }
    }
}

/// The shape of a network: what `DESCRIBE MODEL` shows and what weights
/// are laid out by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    pub inputs: usize,
    pub hidden: Vec<usize>,
    pub outputs: usize,
    pub activation: Activation,
}

impl Architecture {
    /// `(inputs, outputs)` of each layer.
    pub fn layers(&self) -> Vec<(usize, usize)> {
        let mut sizes = vec![self.inputs];
        sizes.extend(&self.hidden);
        sizes.push(self.outputs);
        sizes.windows(2).map(|w| (w[0], w[1])).collect()
    }

    /// The number of weights.
    pub fn parameter_count(&self) -> usize {
        self.layers().iter().map(|(i, o)| i * o + o).sum()
    }

    /// Seeded Glorot-uniform weights and zero biases, so a training run is
    /// reproducible from its seed.
    pub fn initial_weights(&self, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut flat = Vec::with_capacity(self.parameter_count());
        for (i, o) in self.layers() {
            let limit = (6.0 / (i + o) as f64).sqrt() as f32;
            flat.extend((0..i * o).map(|_| rng.random_range(-limit..limit)));
            flat.extend(std::iter::repeat_n(0.0, o));
        }
        flat
    }
}

/// A network of `Linear` layers.
#[derive(Module, Debug)]
pub struct Network {
    layers: Vec<Linear>,
}

impl Network {
    /// Builds the network holding `weights` on `device` (an autodiff device
    /// for training, a plain one for inference).
    pub fn from_weights(arch: &Architecture, weights: &[f32], device: &Device) -> Result<Network> {
        if weights.len() != arch.parameter_count() {
            return Err(UdfError::Training(format!(
                "{} weights for a model of {}",
                weights.len(),
                arch.parameter_count()
            )));
        }
        let mut at = 0;
        let mut layers = Vec::new();
        for (i, o) in arch.layers() {
            let mut layer = LinearConfig::new(i, o).init(device);
            let w = &weights[at..at + i * o];
            at += i * o;
            let b = &weights[at..at + o];
            at += o;
            layer.weight = Param::from_tensor(Tensor::from_data(
                TensorData::new(w.to_vec(), [i, o]),
                device,
            ));
            layer.bias = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(b.to_vec(), [o]),
                device,
            )));
            layers.push(layer);
        }
        Ok(Network { layers })
    }

    /// The weights as one flat vector, in [`Network::from_weights`]' order.
    pub fn weights(&self) -> Result<Vec<f32>> {
        let mut flat = Vec::new();
        for layer in &self.layers {
            flat.extend(to_vec(layer.weight.val().into_data())?);
            if let Some(bias) = &layer.bias {
                flat.extend(to_vec(bias.val().into_data())?);
            }
        }
        Ok(flat)
    }

    /// The network as a Burn record (the burnpack format), for storage.
    pub fn to_record_bytes(self) -> Result<Vec<u8>> {
        let bytes = self
            .into_record()
            .into_bytes()
            .map_err(|e| UdfError::Training(format!("encoding the Burn record: {e}")))?;
        Ok(bytes.to_vec())
    }

    /// The network stored by [`Network::to_record_bytes`], checked against
    /// `arch` (each layer's shape must match).
    pub fn from_record_bytes(arch: &Architecture, bytes: Vec<u8>) -> Result<Network> {
        let record =
            burn::store::ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
                .map_err(|e| UdfError::Training(format!("decoding the Burn record: {e}")))?;
        let empty = vec![0.0; arch.parameter_count()];
        let net = Network::from_weights(arch, &empty, &Device::flex())?;
        net.try_load_record(record)
            .map_err(|e| UdfError::Training(format!("the Burn record does not fit the model: {e}")))
    }

    /// The raw outputs (logits, or the regression value) for a batch.
    pub fn forward(&self, mut x: Tensor<2>, activation: Activation) -> Tensor<2> {
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = activation.apply(x);
            }
        }
        x
    }

    /// `Σ ‖w − w_global‖²` over every weight: FedProx's proximal term.
    pub fn squared_distance(&self, global: &Network) -> Tensor<1> {
        let mut total: Option<Tensor<1>> = None;
        for (mine, theirs) in self.layers.iter().zip(&global.layers) {
            let mut add = |d: Tensor<1>| {
                total = Some(match total.take() {
                    Some(t) => t + d,
                    None => d,
                })
            };
            add((mine.weight.val() - theirs.weight.val().detach())
                .powi_scalar(2)
                .sum());
            if let (Some(a), Some(b)) = (&mine.bias, &theirs.bias) {
                add((a.val() - b.val().detach()).powi_scalar(2).sum());
            }
        }
        total.unwrap_or_else(|| Tensor::zeros([1], &Device::flex()))
    }
}

/// A tensor's values as `f32`.
pub fn to_vec(data: TensorData) -> Result<Vec<f32>> {
    data.convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| UdfError::Training(format!("reading weights: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_round_trip_through_a_network() {
        let arch = Architecture {
            inputs: 3,
            hidden: vec![4],
            outputs: 2,
            activation: Activation::Relu,
        };
        assert_eq!(arch.parameter_count(), 3 * 4 + 4 + 4 * 2 + 2);
        let w = arch.initial_weights(7);
        assert_eq!(w, arch.initial_weights(7), "seeded");
        assert_ne!(w, arch.initial_weights(8));
        let net = Network::from_weights(&arch, &w, &Device::flex()).unwrap();
        assert_eq!(net.weights().unwrap(), w);
        let out = net.forward(Tensor::zeros([5, 3], &Device::flex()), Activation::Relu);
        assert_eq!(out.dims(), [5, 2]);
        assert!(Network::from_weights(&arch, &w[1..], &Device::flex()).is_err());

        // A Burn record holds the same weights, and refuses another shape.
        let bytes = net.to_record_bytes().unwrap();
        let back = Network::from_record_bytes(&arch, bytes.clone()).unwrap();
        assert_eq!(back.weights().unwrap(), w);
        let other = Architecture {
            inputs: 4,
            ..arch.clone()
        };
        assert!(Network::from_record_bytes(&other, bytes).is_err());
    }
}
