//! Training checkpoints: after every completed round of a `TRAIN MODEL`,
//! everything the run needs to go on — the global weights, the strategy's
//! state, the client-selection generator's position, the encoding every
//! client uses, the history so far and the statement itself — is written to
//! `<data dir>/training/<model>/<version>.ckpt` (CBOR, temp file + fsync +
//! rename, so a crash leaves the previous round's file whole).
//!
//! A coordinator that restarts finds them and lists them as interrupted
//! runs (`fedsql.system.training_runs`); `RESUME TRAINING name` continues
//! from the round after the last completed one. With a fixed `seed` and the
//! same input rows the resumed run ends with the weights an uninterrupted
//! run would have. A checkpoint is removed once its version is saved, or
//! when its model is dropped or replaced.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Result, UdfError};
use crate::features::FeatureTransform;
use crate::model::Architecture;
use crate::registry::{io, write_atomic, RoundRecord, Task};
use crate::strategy::StrategyState;

/// Microseconds since the Unix epoch: the timestamps of a run's summary.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// A run after its last completed round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// What [`CheckpointSummary`] shows.
    pub summary: CheckpointSummary,
    pub architecture: Architecture,
    pub transform: FeatureTransform,
    pub task: Task,
    /// Regression targets' federated standard deviation (1 for classifiers).
    pub target_std: f64,
    /// The global weights after round `summary.completed`.
    pub global: Vec<f32>,
    pub strategy: StrategyState,
    /// Where the client-selection generator is in its stream.
    pub selection_position: u128,
    /// Every client's part in the rounds so far.
    pub history: Vec<RoundRecord>,
    /// The last round's validation metrics over all clients.
    pub metrics: Vec<(String, f64)>,
}

/// A checkpoint without its weights and history: one row of
/// `fedsql.system.training_runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointSummary {
    pub model: String,
    pub version: u64,
    /// The `TRAIN MODEL` statement as SQL that parses back to it.
    pub statement: String,
    /// The database the statement ran in (where a resume plans it again).
    pub database: String,
    /// The clients, in the order their seeds are derived from.
    pub clients: Vec<String>,
    /// The last completed round and how many the run has.
    pub completed: u32,
    pub rounds: u32,
    pub started_at_us: i64,
    pub updated_at_us: i64,
    /// Why the run stopped, when it failed rather than being cut off.
    pub error: Option<String>,
}

/// The checkpoints under a data dir, with their summaries kept in memory.
#[derive(Debug)]
pub struct Checkpoints {
    root: PathBuf,
    summaries: Mutex<BTreeMap<(String, u64), CheckpointSummary>>,
}

const EXTENSION: &str = "ckpt";

impl Checkpoints {
    /// The checkpoints in `<data_dir>/training`. Files that do not decode
    /// (torn temp files, another version's format) are skipped with a
    /// warning; leftover temp files are removed.
    pub fn open(data_dir: &Path) -> Checkpoints {
        let root = data_dir.join("training");
        let mut summaries = BTreeMap::new();
        for model_dir in fs::read_dir(&root).into_iter().flatten().flatten() {
            for file in fs::read_dir(model_dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let path = file.path();
                match path.extension().and_then(|e| e.to_str()) {
                    Some(EXTENSION) => match read(&path) {
                        Ok(c) => {
                            let key = (c.summary.model.clone(), c.summary.version);
                            summaries.insert(key, c.summary);
                        }
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "unreadable training checkpoint skipped")
                        }
                    },
                    Some("tmp") => {
                        let _ = fs::remove_file(&path);
                    }
                    _ => {}
                }
            }
        }
        Checkpoints {
            root,
            summaries: Mutex::new(summaries),
        }
    }

    fn path(&self, model: &str, version: u64) -> PathBuf {
        self.root.join(model).join(format!("{version}.{EXTENSION}"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, u64), CheckpointSummary>> {
        self.summaries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `checkpoint` atomically, replacing its run's previous one.
    pub fn save(&self, checkpoint: &Checkpoint) -> Result<()> {
        let s = &checkpoint.summary;
        let mut bytes = Vec::new();
        ciborium::into_writer(checkpoint, &mut bytes)
            .map_err(|e| UdfError::Training(format!("encoding a checkpoint: {e}")))?;
        write_atomic(&self.path(&s.model, s.version), &bytes)?;
        self.lock().insert((s.model.clone(), s.version), s.clone());
        Ok(())
    }

    /// Every checkpoint's summary, by model and version.
    pub fn list(&self) -> Vec<CheckpointSummary> {
        self.lock().values().cloned().collect()
    }

    /// The versions with a checkpoint.
    pub fn versions(&self, model: &str) -> Vec<u64> {
        self.lock()
            .keys()
            .filter(|(m, _)| m == model)
            .map(|(_, v)| *v)
            .collect()
    }

    /// The newest checkpoint of `model`, read in full.
    pub fn latest(&self, model: &str) -> Result<Option<Checkpoint>> {
        match self.versions(model).last() {
            Some(&version) => read(&self.path(model, version)).map(Some),
            None => Ok(None),
        }
    }

    /// Removes the checkpoint of `model` `version` (nothing if none).
    pub fn remove(&self, model: &str, version: u64) -> Result<()> {
        let path = self.path(model, version);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path, e)),
        }
        self.lock().remove(&(model.to_string(), version));
        let _ = fs::remove_dir(self.root.join(model));
        Ok(())
    }

    /// Removes every checkpoint of `model`.
    pub fn remove_model(&self, model: &str) -> Result<()> {
        for version in self.versions(model) {
            self.remove(model, version)?;
        }
        Ok(())
    }
}

fn read(path: &Path) -> Result<Checkpoint> {
    let bytes = fs::read(path).map_err(|e| io(path, e))?;
    ciborium::from_reader(bytes.as_slice()).map_err(|e| {
        UdfError::Training(format!(
            "{}: not a training checkpoint: {e}",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Activation;

    fn checkpoint(model: &str, version: u64, completed: u32) -> Checkpoint {
        Checkpoint {
            summary: CheckpointSummary {
                model: model.into(),
                version,
                statement:
                    "TRAIN MODEL \"m\" USING \"mlp\" PREDICT \"y\" FROM t FEDERATED BY \"c\"".into(),
                database: "demo".into(),
                clients: vec!["a".into(), "b".into()],
                completed,
                rounds: 5,
                started_at_us: 1,
                updated_at_us: 2,
                error: None,
            },
            architecture: Architecture {
                inputs: 2,
                hidden: vec![],
                outputs: 1,
                activation: Activation::Relu,
            },
            transform: FeatureTransform {
                features: vec![crate::features::Feature {
                    name: "x".into(),
                    data_type: "Float64".into(),
                    encoding: crate::features::Encoding::OneHot {
                        categories: vec!["a".into(), "b".into()],
                    },
                }],
            },
            task: Task::Regression {
                mean: 1.5,
                std: 2.0,
            },
            target_std: 2.0,
            global: vec![0.25, -1.0, f32::MIN_POSITIVE],
            strategy: StrategyState {
                rounds: completed,
                vectors: vec![vec![0.1, 0.2, 0.3]],
                noise_position: Some(u128::from(u64::MAX) * 7),
                inner: Some(Box::default()),
            },
            selection_position: 12345,
            history: vec![],
            metrics: vec![("rmse".into(), 0.5)],
        }
    }

    #[test]
    fn checkpoints_survive_a_restart_and_go_when_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Checkpoints::open(dir.path());
        store.save(&checkpoint("m", 3, 1)).unwrap();
        store.save(&checkpoint("m", 3, 2)).unwrap();
        store.save(&checkpoint("other", 1, 4)).unwrap();
        // A torn write from a crash is not a checkpoint.
        fs::write(dir.path().join("training/m/4.ckpt"), b"torn").unwrap();
        fs::write(dir.path().join("training/m/3.tmp"), b"half").unwrap();

        let store = Checkpoints::open(dir.path());
        assert_eq!(store.versions("m"), vec![3]);
        assert!(!dir.path().join("training/m/3.tmp").exists());
        let latest = store.latest("m").unwrap().unwrap();
        assert_eq!(latest, checkpoint("m", 3, 2));
        assert_eq!(store.list().len(), 2);

        store.remove_model("m").unwrap();
        assert!(store.latest("m").unwrap().is_none());
        assert_eq!(Checkpoints::open(dir.path()).versions("other"), vec![1]);
    }
}
