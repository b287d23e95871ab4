//! The model registry: every `TRAIN MODEL` adds a version under
//! `<data dir>/models/<name>/<version>/` (`model.json` with the features,
//! transform, classes, options and metrics, and `model.bpk`, the network as
//! a Burn record in the burnpack format), and `<name>/active.json` names
//! the active version. Every file is written to a temporary name, synced and
//! renamed, so a crash leaves the previous state.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{CheckpointSummary, Checkpoints};
use crate::error::{Result, UdfError};
use crate::features::FeatureTransform;
use crate::model::{Architecture, Network};
use burn::tensor::Device;

/// What a model predicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum Task {
    /// Targets were standardized with the federated `mean` and `std`;
    /// predictions are scaled back.
    Regression { mean: f64, std: f64 },
    /// Class labels as text, in output order; `boolean` when the target was
    /// a boolean column (labels `false`, `true`).
    Classification { labels: Vec<String>, boolean: bool },
}

/// Everything about one model version except its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    pub model: String,
    pub version: u64,
    /// `linear_regression`, `logistic_regression` or `mlp`.
    pub kind: String,
    pub target: String,
    pub task: Task,
    pub architecture: Architecture,
    pub transform: FeatureTransform,
    pub strategy: String,
    pub rounds: u32,
    pub clients: Vec<String>,
    /// The options as written.
    pub options: Vec<(String, String)>,
    /// Final metrics on the clients' validation rows, by name.
    pub metrics: Vec<(String, f64)>,
    pub created_at_us: i64,
    /// One entry per round × client × phase.
    pub history: Vec<RoundRecord>,
    /// What the training input read from sources that record it (a Kafka
    /// scan's topic, partition and offsets), so a version can be traced to
    /// its exact input.
    #[serde(default)]
    pub input_reads: Vec<String>,
}

/// One client's part in one round: a row of `fedsql.system.training_rounds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: u32,
    pub client: String,
    /// `train` or `evaluate`.
    pub phase: String,
    pub num_examples: u64,
    pub loss: Option<f64>,
    pub accuracy: Option<f64>,
    pub rmse: Option<f64>,
    pub duration_ms: u64,
    /// Bytes of Flight data carrying the global weights to the client and
    /// its update back; `None` when the client failed.
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
    /// `ok`, `failed` or `timeout`.
    pub status: String,
}

/// A run being trained or interrupted: a row of
/// `fedsql.system.training_runs`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingRun {
    pub model: String,
    pub version: u64,
    /// `running`, `interrupted` (cut off: the server stopped) or `failed`
    /// (it stopped with an error); the last two can be resumed.
    pub status: &'static str,
    /// Its last checkpoint; `None` until its first round completes.
    pub checkpoint: Option<CheckpointSummary>,
}

/// A loaded version: metadata and weights.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedModel {
    pub meta: ModelVersion,
    pub weights: Vec<f32>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Active {
    version: u64,
}

/// The registry under a data dir, with loaded models cached.
#[derive(Debug)]
pub struct ModelRegistry {
    root: PathBuf,
    cache: Mutex<HashMap<(String, u64), Arc<LoadedModel>>>,
    /// Serializes writers so version numbers are never handed out twice.
    write: Mutex<()>,
    /// The rounds so far of versions being trained now, by (model, version).
    live: Arc<Mutex<LiveRounds>>,
    /// Runs checkpointed after their last completed round.
    checkpoints: Checkpoints,
}

/// The rounds so far of versions being trained, by (model, version).
type LiveRounds = BTreeMap<(String, u64), Vec<RoundRecord>>;

/// A version being trained: its finished rounds are visible (see
/// [`ModelRegistry::live_rounds`]) until it is dropped, when the saved
/// version (or nothing, if training failed) takes its place.
#[derive(Debug)]
pub struct LiveTraining {
    key: (String, u64),
    live: Arc<Mutex<LiveRounds>>,
}

impl LiveTraining {
    /// Adds finished round records.
    pub fn record(&self, records: &[RoundRecord]) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(history) = live.get_mut(&self.key) {
            history.extend_from_slice(records);
        }
    }
}

impl Drop for LiveTraining {
    fn drop(&mut self) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

pub(crate) fn io(path: &Path, e: std::io::Error) -> UdfError {
    UdfError::Training(format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync dir.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| UdfError::Training("bad registry path".into()))?;
    fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io(&tmp, e))?;
    f.sync_all().map_err(|e| io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl ModelRegistry {
    /// The registry in `<data_dir>/models`.
    pub fn open(data_dir: &Path) -> ModelRegistry {
        ModelRegistry {
            root: data_dir.join("models"),
            cache: Mutex::new(HashMap::new()),
            write: Mutex::new(()),
            live: Arc::default(),
            checkpoints: Checkpoints::open(data_dir),
        }
    }

    /// The checkpoints of runs in progress or interrupted.
    pub fn checkpoints(&self) -> &Checkpoints {
        &self.checkpoints
    }

    /// Starts showing the rounds of `model`'s `version`, which is being
    /// trained, until the returned guard is dropped.
    pub fn begin_training(&self, model: &str, version: u64) -> LiveTraining {
        let key = (model.to_string(), version);
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), Vec::new());
        LiveTraining {
            key,
            live: Arc::clone(&self.live),
        }
    }

    /// The finished rounds of every version being trained now: `(model,
    /// version, records)`. A client that cannot see the training statement
    /// (a Flight SQL client, another session) follows it here.
    pub fn live_rounds(&self) -> Vec<(String, u64, Vec<RoundRecord>)> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((model, version), records)| (model.clone(), *version, records.clone()))
            .collect()
    }

    /// Every run being trained now or left interrupted, by model and
    /// version.
    pub fn training_runs(&self) -> Vec<TrainingRun> {
        let running: Vec<(String, u64)> = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let mut runs: BTreeMap<(String, u64), TrainingRun> = BTreeMap::new();
        for summary in self.checkpoints.list() {
            let key = (summary.model.clone(), summary.version);
            let status = if running.contains(&key) {
                "running"
            } else if summary.error.is_some() {
                "failed"
            } else {
                "interrupted"
            };
            runs.insert(
                key,
                TrainingRun {
                    model: summary.model.clone(),
                    version: summary.version,
                    status,
                    checkpoint: Some(summary),
                },
            );
        }
        for (model, version) in running {
            runs.entry((model.clone(), version)).or_insert(TrainingRun {
                model,
                version,
                status: "running",
                checkpoint: None,
            });
        }
        runs.into_values().collect()
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), Arc<LoadedModel>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Model names, sorted.
    pub fn models(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("active.json").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    /// A model's versions, ascending.
    pub fn versions(&self, model: &str) -> Vec<u64> {
        let mut v: Vec<u64> = fs::read_dir(self.root.join(model))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("model.json").exists())
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
            .collect();
        v.sort();
        v
    }

    /// The active version of a model, if it exists.
    pub fn active(&self, model: &str) -> Option<u64> {
        let text = fs::read_to_string(self.root.join(model).join("active.json")).ok()?;
        serde_json::from_str::<Active>(&text)
            .ok()
            .map(|a| a.version)
    }

    /// Every version's metadata with whether it is active, by model then
    /// version (unreadable versions are skipped and logged).
    pub fn list(&self) -> Vec<(ModelVersion, bool)> {
        let mut out = Vec::new();
        for model in self.models() {
            let active = self.active(&model);
            for version in self.versions(&model) {
                let path = self
                    .root
                    .join(&model)
                    .join(version.to_string())
                    .join("model.json");
                match fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|t| {
                        serde_json::from_str::<ModelVersion>(&t).map_err(|e| e.to_string())
                    }) {
                    Ok(meta) => out.push((meta, active == Some(version))),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "unreadable model version")
                    }
                }
            }
        }
        out
    }

    /// The next version number of `model`: after its saved versions, the
    /// versions being trained and the interrupted ones.
    pub fn next_version(&self, model: &str) -> u64 {
        let training = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .filter(|(m, _)| m == model)
            .map(|(_, v)| *v)
            .max();
        self.versions(model)
            .into_iter()
            .chain(self.checkpoints.versions(model))
            .chain(training)
            .max()
            .map_or(1, |v| v + 1)
    }

    /// Stores a new version and makes it active.
    pub fn save(&self, meta: &ModelVersion, weights: &[f32]) -> Result<()> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let dir = self.root.join(&meta.model).join(meta.version.to_string());
        if dir.join("model.json").exists() {
            return Err(UdfError::Training(format!(
                "model {} version {} already exists",
                meta.model, meta.version
            )));
        }
        let network = Network::from_weights(&meta.architecture, weights, &Device::flex())?;
        // Weights first: a version is visible only once model.json exists.
        write_atomic(&dir.join(RECORD_FILE), &network.to_record_bytes()?)?;
        let json = serde_json::to_vec_pretty(meta)
            .map_err(|e| UdfError::Training(format!("encoding model metadata: {e}")))?;
        write_atomic(&dir.join("model.json"), &json)?;
        self.set_active(&meta.model, meta.version)
    }

    /// Makes `version` the active one.
    pub fn set_active(&self, model: &str, version: u64) -> Result<()> {
        if !self.versions(model).contains(&version) {
            return Err(UdfError::NotFound(format!(
                "model {model} has no version {version}"
            )));
        }
        let json = serde_json::to_vec(&Active { version })
            .map_err(|e| UdfError::Training(e.to_string()))?;
        write_atomic(&self.root.join(model).join("active.json"), &json)
    }

    /// Loads `name` (the active version) or `name@version`.
    pub fn load(&self, reference: &str) -> Result<Arc<LoadedModel>> {
        let (model, version) = match reference.split_once('@') {
            Some((m, v)) => (
                m,
                Some(v.parse::<u64>().map_err(|_| {
                    UdfError::Input(format!(
                        "'{reference}': the version after @ must be a number"
                    ))
                })?),
            ),
            None => (reference, None),
        };
        let version = match version.or_else(|| self.active(model)) {
            Some(v) => v,
            None => {
                return Err(UdfError::NotFound(format!(
                    "model \"{model}\" does not exist"
                )));
            }
        };
        let key = (model.to_string(), version);
        if let Some(m) = self.lock_cache().get(&key) {
            return Ok(Arc::clone(m));
        }
        let dir = self.root.join(model).join(version.to_string());
        let meta_path = dir.join("model.json");
        let text = fs::read_to_string(&meta_path).map_err(|_| {
            UdfError::NotFound(format!("model \"{model}\" has no version {version}"))
        })?;
        let meta: ModelVersion = serde_json::from_str(&text)
            .map_err(|e| UdfError::Training(format!("{}: {e}", meta_path.display())))?;
        let (weights_path, weights) = read_weights(&dir, &meta.architecture)?;
        if weights.len() != meta.architecture.parameter_count() {
            return Err(UdfError::Training(format!(
                "{}: {} weights for a model of {}",
                weights_path.display(),
                weights.len(),
                meta.architecture.parameter_count()
            )));
        }
        let loaded = Arc::new(LoadedModel { meta, weights });
        self.lock_cache().insert(key, Arc::clone(&loaded));
        Ok(loaded)
    }

    /// Drops a model, or one version of it (another becomes active if the
    /// dropped one was). Returns whether anything was dropped.
    pub fn drop_model(&self, model: &str, version: Option<u64>) -> Result<bool> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let dir = self.root.join(model);
        // An interrupted run goes with its model.
        let interrupted = version.is_none() && !self.checkpoints.versions(model).is_empty();
        if version.is_none() {
            self.checkpoints.remove_model(model)?;
        }
        if !dir.join("active.json").exists() {
            return Ok(interrupted);
        }
        self.lock_cache().retain(|(m, _), _| m != model);
        match version {
            None => {
                // Unpublish first (active.json), then remove the rest.
                fs::remove_file(dir.join("active.json")).map_err(|e| io(&dir, e))?;
                fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
                Ok(true)
            }
            Some(v) => {
                let vdir = dir.join(v.to_string());
                if !vdir.join("model.json").exists() {
                    return Ok(false);
                }
                fs::remove_file(vdir.join("model.json")).map_err(|e| io(&vdir, e))?;
                fs::remove_dir_all(&vdir).map_err(|e| io(&vdir, e))?;
                match self.versions(model).last() {
                    Some(&latest) if self.active(model) == Some(v) => {
                        self.set_active(model, latest)?;
                    }
                    None => {
                        fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
                    }
                    _ => {}
                }
                Ok(true)
            }
        }
    }
}

/// The Burn record (burnpack) of a version's weights, next to `model.json`.
const RECORD_FILE: &str = "model.bpk";

/// The flat weight file of versions saved before weights became a Burn record.
const LEGACY_WEIGHTS_FILE: &str = "weights.f32";

/// A version's weights, flat, from its Burn record (or from the flat `f32`
/// file older versions have), with the file they came from.
fn read_weights(dir: &Path, arch: &Architecture) -> Result<(PathBuf, Vec<f32>)> {
    let record = dir.join(RECORD_FILE);
    match fs::read(&record) {
        Ok(bytes) => {
            let network = Network::from_record_bytes(arch, bytes)
                .map_err(|e| UdfError::Training(format!("{}: {e}", record.display())))?;
            Ok((record, network.weights()?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let legacy = dir.join(LEGACY_WEIGHTS_FILE);
            let bytes = fs::read(&legacy).map_err(|e| io(&legacy, e))?;
            let weights = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok((legacy, weights))
        }
        Err(e) => Err(io(&record, e)),
    }
}
