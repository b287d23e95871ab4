//! Pretrained sentence encoders: a sentence-transformers model directory
//! (`config.json`, `tokenizer.json`, `model.safetensors`,
//! `1_Pooling/config.json`, `modules.json`) loaded into a Burn [`bert::Bert`]
//! and run on the CPU, so text becomes a vector that means something.
//!
//! - [`SentenceEncoder`]: WordPiece tokenization (the `tokenizers` crate,
//!   from the model's own `tokenizer.json`), the encoder, pooling and
//!   normalisation as the model's pooling config and module list say;
//! - [`Encoders`]: the process's encoders by name (`[[encoders]]` in the
//!   config, `CREATE ENCODER`), loaded once and shared by `embed()`,
//!   training and `predict`.

pub mod bert;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn_store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{Result, UdfError};
use bert::{Bert, BertConfig};

/// Sentences encoded per forward pass. Sentences are sorted by length
/// first, so a batch pads to about its own length.
const BATCH: usize = 32;

/// How token vectors become one sentence vector (`1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean of the real (unpadded) tokens' vectors.
    Mean,
    /// The first token's (`[CLS]`) vector.
    Cls,
    /// The element-wise maximum over the real tokens.
    Max,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
}

/// A loaded sentence encoder.
pub struct SentenceEncoder {
    dir: PathBuf,
    tokenizer: Tokenizer,
    model: Bert,
    config: BertConfig,
    pooling: Pooling,
    normalize: bool,
    max_tokens: usize,
}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEncoder")
            .field("dir", &self.dir)
            .field("dims", &self.dims())
            .field("layers", &self.config.num_hidden_layers)
            .field("pooling", &self.pooling)
            .field("normalize", &self.normalize)
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

fn files_error(file: &Path, what: impl std::fmt::Display) -> UdfError {
    UdfError::Files(format!("{}: {what}", file.display()))
}

fn read_json<T: serde::de::DeserializeOwned>(file: &Path) -> Result<T> {
    let text = std::fs::read_to_string(file).map_err(|e| files_error(file, e))?;
    serde_json::from_str(&text).map_err(|e| files_error(file, format!("malformed: {e}")))
}

impl SentenceEncoder {
    /// Loads the model in `dir`. A missing or malformed file is an error
    /// naming it.
    pub fn load(dir: &Path) -> Result<SentenceEncoder> {
        if !dir.is_dir() {
            return Err(files_error(dir, "not a directory"));
        }
        let config: BertConfig = read_json(&dir.join("config.json"))?;
        if config.hidden_act != "gelu" {
            return Err(files_error(
                &dir.join("config.json"),
                format!(
                    "hidden_act '{}' (only gelu is supported)",
                    config.hidden_act
                ),
            ));
        }
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(files_error(
                &dir.join("config.json"),
                "hidden_size is not a multiple of num_attention_heads",
            ));
        }
        let pooling_file = dir.join("1_Pooling").join("config.json");
        let pooling = if pooling_file.exists() {
            let p: PoolingConfig = read_json(&pooling_file)?;
            match (
                p.pooling_mode_mean_tokens,
                p.pooling_mode_cls_token,
                p.pooling_mode_max_tokens,
            ) {
                (true, false, false) => Pooling::Mean,
                (false, true, false) => Pooling::Cls,
                (false, false, true) => Pooling::Max,
                _ => {
                    return Err(files_error(
                        &pooling_file,
                        "exactly one of pooling_mode_mean_tokens, pooling_mode_cls_token, \
                         pooling_mode_max_tokens must be true",
                    ))
                }
            }
        } else {
            Pooling::Mean
        };
        let modules_file = dir.join("modules.json");
        let normalize = modules_file.exists()
            && read_json::<Vec<ModuleEntry>>(&modules_file)?
                .iter()
                .any(|m| m.kind.ends_with("Normalize"));
        let sbert_file = dir.join("sentence_bert_config.json");
        let max_tokens = if sbert_file.exists() {
            read_json::<SentenceBertConfig>(&sbert_file)?.max_seq_length
        } else {
            None
        }
        .unwrap_or(config.max_position_embeddings)
        .min(config.max_position_embeddings);

        let tokenizer_file = dir.join("tokenizer.json");
        if !tokenizer_file.exists() {
            return Err(files_error(&tokenizer_file, "missing"));
        }
        let mut tokenizer = Tokenizer::from_file(&tokenizer_file)
            .map_err(|e| files_error(&tokenizer_file, format!("malformed: {e}")))?;
        // Padding is per batch (below); truncation at the model's length,
        // as sentence-transformers does (it overrides tokenizer.json's).
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..TruncationParams::default()
            }))
            .map_err(|e| files_error(&tokenizer_file, e))?;

        let weights_file = dir.join("model.safetensors");
        if !weights_file.exists() {
            return Err(files_error(&weights_file, "missing"));
        }
        let mut model = config.init(&Device::flex());
        let mut store = SafetensorsStore::from_file(&weights_file)
            .with_from_adapter(PyTorchToBurnAdapter)
            // Some exports prefix every name with the architecture.
            .with_key_remapping(r"^bert\.", "");
        for (from, to) in bert::checkpoint_renames() {
            store = store.with_key_remapping(from, to);
        }
        let applied = model
            .load_from(&mut store)
            .map_err(|e| files_error(&weights_file, e))?;
        if !applied.errors.is_empty() || !applied.missing.is_empty() {
            let mut problems: Vec<String> =
                applied.errors.iter().map(|e| format!("{e:?}")).collect();
            problems.extend(applied.missing.iter().map(|(p, _)| format!("missing {p}")));
            problems.truncate(5);
            return Err(files_error(
                &weights_file,
                format!("does not fit config.json: {}", problems.join("; ")),
            ));
        }
        Ok(SentenceEncoder {
            dir: dir.to_path_buf(),
            tokenizer,
            model,
            config,
            pooling,
            normalize,
            max_tokens,
        })
    }

    /// The length of the vectors it makes.
    pub fn dims(&self) -> usize {
        self.config.hidden_size
    }

    /// The directory it was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Tokens per sentence; longer input is truncated.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// How it pools token vectors, and whether it L2-normalises.
    pub fn pooling(&self) -> (Pooling, bool) {
        (self.pooling, self.normalize)
    }

    /// The token ids the encoder sees for `text` (with `[CLS]`/`[SEP]`,
    /// truncated).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| UdfError::Input(format!("tokenizing: {e}")))
    }

    /// Encodes `texts` into a row-major `texts.len() × dims()` matrix.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<f32>> {
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.token_ids(t))
            .collect::<Result<_>>()?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let dims = self.dims();
        let mut out = vec![0f32; texts.len() * dims];
        for chunk in order.chunks(BATCH) {
            let vectors = self.encode_batch(chunk.iter().map(|&i| ids[i].as_slice()))?;
            for (k, &i) in chunk.iter().enumerate() {
                out[i * dims..(i + 1) * dims].copy_from_slice(&vectors[k * dims..(k + 1) * dims]);
            }
        }
        Ok(out)
    }

    /// One forward pass over sentences of token ids, padded to the longest.
    fn encode_batch<'a>(&self, sentences: impl Iterator<Item = &'a [u32]>) -> Result<Vec<f32>> {
        let sentences: Vec<&[u32]> = sentences.collect();
        let batch = sentences.len();
        let tokens = sentences.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0i64; batch * tokens];
        let mut padding = vec![true; batch * tokens];
        for (b, s) in sentences.iter().enumerate() {
            for (t, &id) in s.iter().enumerate() {
                ids[b * tokens + t] = i64::from(id);
                padding[b * tokens + t] = false;
            }
        }
        let device = Device::flex();
        let hidden = self.model.forward(
            Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, tokens]), &device),
            Tensor::<2, Bool>::from_data(
                TensorData::new(padding.clone(), [batch, tokens]),
                &device,
            ),
        );
        let hidden = hidden
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| UdfError::Training(format!("reading the encoder's output: {e:?}")))?;
        let dims = self.dims();
        let mut out = vec![0f32; batch * dims];
        for (b, s) in sentences.iter().enumerate() {
            let row = &mut out[b * dims..(b + 1) * dims];
            let real = s.len().max(1);
            let token = |t: usize| &hidden[(b * tokens + t) * dims..(b * tokens + t + 1) * dims];
            match self.pooling {
                Pooling::Cls => row.copy_from_slice(token(0)),
                Pooling::Mean => {
                    for t in 0..real {
                        for (r, v) in row.iter_mut().zip(token(t)) {
                            *r += v;
                        }
                    }
                    let n = real as f32;
                    row.iter_mut().for_each(|r| *r /= n);
                }
                Pooling::Max => {
                    row.copy_from_slice(token(0));
                    for t in 1..real {
                        for (r, v) in row.iter_mut().zip(token(t)) {
                            *r = r.max(*v);
                        }
                    }
                }
            }
            if self.normalize {
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                row.iter_mut().for_each(|r| *r /= norm);
            }
        }
        Ok(out)
    }
}

/// The process's sentence encoders by name. Model weights are large and the
/// same for every session, database and training run, so each is loaded
/// once per process and shared.
#[derive(Default)]
pub struct Encoders {
    loaded: RwLock<BTreeMap<String, Arc<SentenceEncoder>>>,
}

/// The process's encoder table.
pub fn encoders() -> &'static Encoders {
    static ENCODERS: OnceLock<Encoders> = OnceLock::new();
    ENCODERS.get_or_init(Encoders::default)
}

impl Encoders {
    /// Loads the model in `dir` as `name` (replacing an encoder of that
    /// name). Loading first means a bad directory is refused at once.
    pub fn register(&self, name: &str, dir: &Path) -> Result<Arc<SentenceEncoder>> {
        let encoder = Arc::new(SentenceEncoder::load(dir)?);
        self.loaded
            .write()
            .map_err(|_| UdfError::Training("encoder table poisoned".into()))?
            .insert(name.to_lowercase(), Arc::clone(&encoder));
        Ok(encoder)
    }

    /// Forgets `name`; whether it was there.
    pub fn unregister(&self, name: &str) -> bool {
        self.loaded
            .write()
            .map(|mut m| m.remove(&name.to_lowercase()).is_some())
            .unwrap_or(false)
    }

    /// The encoder called `name`.
    pub fn get(&self, name: &str) -> Result<Arc<SentenceEncoder>> {
        let loaded = self
            .loaded
            .read()
            .map_err(|_| UdfError::Training("encoder table poisoned".into()))?;
        loaded.get(&name.to_lowercase()).cloned().ok_or_else(|| {
            let known: Vec<&str> = loaded.keys().map(String::as_str).collect();
            UdfError::NotFound(format!(
                "encoder '{name}' does not exist (known: {}); add it with CREATE ENCODER \
                 {name} FROM '/path/to/model' or [[encoders]] in the config",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
    }

    /// Every encoder, by name.
    pub fn list(&self) -> Vec<(String, Arc<SentenceEncoder>)> {
        self.loaded
            .read()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_model_directory_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = SentenceEncoder::load(&dir.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("nope: not a directory"), "{err}");
        let err = SentenceEncoder::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
        std::fs::write(dir.path().join("config.json"), "{\"vocab_size\": 3").unwrap();
        let err = SentenceEncoder::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("config.json: malformed"), "{err}");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
                "num_attention_heads": 2, "intermediate_size": 16,
                "max_position_embeddings": 16}"#,
        )
        .unwrap();
        let err = SentenceEncoder::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("tokenizer.json: missing"), "{err}");
        let err = encoders().get("absent").unwrap_err();
        assert!(err.to_string().contains("CREATE ENCODER absent"), "{err}");
    }
}
