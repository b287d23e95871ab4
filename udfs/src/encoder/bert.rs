//! A BERT encoder as Burn modules: token, position and segment embeddings,
//! then a stack of post-norm transformer layers (self-attention and a GELU
//! feed-forward block, each added back and layer-normalised).
//!
//! Field names follow Hugging Face's `BertModel` so a checkpoint loads with
//! a handful of renames ([`checkpoint_renames`]); Burn's `Linear` holds its
//! weight as `[inputs, outputs]`, PyTorch's as `[outputs, inputs]`, which
//! burn-store's `PyTorchToBurnAdapter` transposes while loading.

use burn::module::Module;
use burn::nn::attention::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Bool, Device, Int, Tensor};
use serde::Deserialize;

/// The fields of a Hugging Face `config.json` a BERT encoder is built from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
}

fn default_type_vocab_size() -> usize {
    2
}

fn default_layer_norm_eps() -> f64 {
    1e-12
}

fn default_hidden_act() -> String {
    "gelu".into()
}

/// Token, position and segment embeddings, summed and normalised.
#[derive(Module, Debug)]
pub struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
}

/// One transformer layer: `h = norm(x + attention(x))`,
/// `out = norm(h + output(gelu(intermediate(h))))`.
#[derive(Module, Debug)]
pub struct Layer {
    attention: MultiHeadAttention,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// The layers, under the name the checkpoint uses (`encoder.layer.N`).
#[derive(Module, Debug)]
pub struct Layers {
    layer: Vec<Layer>,
}

/// A BERT encoder without its pooler: token ids in, one vector per token out.
#[derive(Module, Debug)]
pub struct Bert {
    embeddings: Embeddings,
    encoder: Layers,
}

/// Hugging Face checkpoint names → this module's names (regex, replacement),
/// applied in order.
pub fn checkpoint_renames() -> [(&'static str, &'static str); 7] {
    [
        (r"^embeddings\.LayerNorm\.", "embeddings.layer_norm."),
        (
            r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.",
            "encoder.layer.$1.attention.$2.",
        ),
        (
            r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.",
            "encoder.layer.$1.attention.output.",
        ),
        (
            r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.",
            "encoder.layer.$1.attention_norm.",
        ),
        (
            r"^encoder\.layer\.(\d+)\.intermediate\.dense\.",
            "encoder.layer.$1.intermediate.",
        ),
        (
            r"^encoder\.layer\.(\d+)\.output\.dense\.",
            "encoder.layer.$1.output.",
        ),
        (
            r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.",
            "encoder.layer.$1.output_norm.",
        ),
    ]
}

impl BertConfig {
    /// An encoder with this shape and freshly initialised weights (a
    /// checkpoint is loaded into it afterwards).
    pub fn init(&self, device: &Device) -> Bert {
        let norm = || {
            LayerNormConfig::new(self.hidden_size)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let embedding = |n| EmbeddingConfig::new(n, self.hidden_size).init(device);
        Bert {
            embeddings: Embeddings {
                word_embeddings: embedding(self.vocab_size),
                position_embeddings: embedding(self.max_position_embeddings),
                token_type_embeddings: embedding(self.type_vocab_size),
                layer_norm: norm(),
            },
            encoder: Layers {
                layer: (0..self.num_hidden_layers)
                    .map(|_| Layer {
                        attention: MultiHeadAttentionConfig::new(
                            self.hidden_size,
                            self.num_attention_heads,
                        )
                        .with_dropout(0.0)
                        // Padding is masked out before the softmax; Hugging
                        // Face adds the dtype's minimum, this is as good in
                        // f32 (e^-1e9 is 0).
                        .with_min_float(-1.0e9)
                        .init(device),
                        attention_norm: norm(),
                        intermediate: LinearConfig::new(self.hidden_size, self.intermediate_size)
                            .init(device),
                        output: LinearConfig::new(self.intermediate_size, self.hidden_size)
                            .init(device),
                        output_norm: norm(),
                    })
                    .collect(),
            },
        }
    }
}

impl Bert {
    /// Encodes `ids` (`[batch, tokens]`, padded on the right) into
    /// `[batch, tokens, hidden]`; `padding` is true at padded positions,
    /// which no token attends to.
    pub fn forward(&self, ids: Tensor<2, Int>, padding: Tensor<2, Bool>) -> Tensor<3> {
        let [batch, tokens] = ids.dims();
        let device = ids.device();
        let positions = Tensor::<1, Int>::arange(0..tokens as i64, &device)
            .reshape([1, tokens])
            .repeat_dim(0, batch);
        let segments = Tensor::<2, Int>::zeros([batch, tokens], &device);
        let e = &self.embeddings;
        let mut x = e.word_embeddings.forward(ids)
            + e.position_embeddings.forward(positions)
            + e.token_type_embeddings.forward(segments);
        x = e.layer_norm.forward(x);
        for layer in &self.encoder.layer {
            let attended = layer
                .attention
                .forward(MhaInput::self_attn(x.clone()).mask_pad(padding.clone()))
                .context;
            let h = layer.attention_norm.forward(x + attended);
            let ff = layer
                .output
                .forward(gelu(layer.intermediate.forward(h.clone())));
            x = layer.output_norm.forward(h + ff);
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn tiny() -> BertConfig {
        BertConfig {
            vocab_size: 50,
            hidden_size: 16,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 32,
            max_position_embeddings: 20,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".into(),
        }
    }

    #[test]
    fn padding_does_not_change_the_real_tokens() {
        let device = Device::flex();
        let bert = tiny().init(&device);
        let ids = |v: Vec<i64>, n| Tensor::<2, Int>::from_data(TensorData::new(v, [1, n]), &device);
        let mask =
            |v: Vec<bool>, n| Tensor::<2, Bool>::from_data(TensorData::new(v, [1, n]), &device);
        let short = bert.forward(ids(vec![1, 7, 9, 2], 4), mask(vec![false; 4], 4));
        let padded = bert.forward(
            ids(vec![1, 7, 9, 2, 0, 0, 0], 7),
            mask(vec![false, false, false, false, true, true, true], 7),
        );
        let a = short.into_data().try_to_vec::<f32>().unwrap();
        let b = padded.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(a.len(), 4 * 16);
        for (x, y) in a.iter().zip(&b[..4 * 16]) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }
}
