//! The federated client: what one participant of a training run does with
//! its own rows, behind one trait the coordinator drives.
//!
//! A [`TrainingClient`] trains from the global weights the coordinator
//! published on the weight exchange and sends its update back there, and
//! evaluates merged weights on its held-out rows. Two implementations serve
//! the two modes of `TRAIN MODEL`:
//! - [`LocalClient`]: one `FEDERATED BY` partition, in the coordinator's
//!   process;
//! - the server's remote site client, which forwards each call to a
//!   `fedsql site` process — where a [`LocalClient`] built from the site's own
//!   rows does the work, over the same exchange.
//!
//! [`profile`] and [`LocalClient::from_rows`] are the steps before training
//! that a client runs on its rows (federated statistics, then encoding), so
//! partitions and sites prepare their data with the same code.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Schema};
use serde::{Deserialize, Serialize};

use crate::error::{Result, UdfError};
use crate::exchange::{ExchangeAccess, ExchangeClient};
use crate::features::FeatureTransform;
use crate::features::{column_kind, numeric_values, text_values, ColumnKind, ColumnSummary};
use crate::model::Architecture;
use crate::registry::Task;
use crate::train::{evaluate, train_local, Examples, LocalConfig, LocalResult, Metrics, Targets};

/// Count, sum and sum of squares of a client's standardized validation
/// targets (regression), for a federated R² without sending targets.
pub type TargetMoments = (f64, f64, f64);

/// One participant of a federated training run.
///
/// Contract: `train` fetches the weights the coordinator published for
/// `round` at the exchange `access` names, trains on this client's training rows only, and
/// sends the update for (`round`, [`TrainingClient::name`]) back to the same
/// exchange before returning the bytes it fetched; `evaluate` scores the
/// merged weights on the client's held-out rows. Rows never leave the
/// client: only weights, example counts and metrics do.
#[async_trait]
pub trait TrainingClient: Send + Sync {
    /// The client's name in the training history (a partition value or a
    /// site name).
    fn name(&self) -> &str;

    /// One round of local training; `fail` is the fault-injection hook.
    async fn train(
        &self,
        round: u32,
        access: &ExchangeAccess,
        arch: &Architecture,
        config: LocalConfig,
        fail: bool,
    ) -> Result<u64>;

    /// Metrics of `weights` on the held-out rows, which the coordinator also
    /// published as round `key` at the exchange (where a remote client
    /// reads them).
    async fn evaluate(
        &self,
        key: u32,
        access: &ExchangeAccess,
        arch: &Architecture,
        weights: &Arc<Vec<f32>>,
    ) -> Result<(Metrics, TargetMoments)>;

    /// One round of local training under `secure_aggregation = true`: the
    /// client's part of SecAgg ([`crate::secure_client::take_part`]) — its
    /// update leaves it only masked. `fail` fails the client after it
    /// shared its keys. Returns the bytes of global weights it fetched.
    async fn train_secure(
        &self,
        round: u32,
        access: &ExchangeAccess,
        arch: &Architecture,
        config: LocalConfig,
        fail: bool,
    ) -> Result<u64>;
}

/// Which column is predicted and what kind of model predicts it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TargetSpec {
    /// The target column's name.
    pub target: String,
    /// `linear_regression`, `logistic_regression`, `mlp` or `text_classifier`.
    pub algorithm: String,
    /// A column that is neither feature nor target (`FEDERATED BY`'s).
    pub excluded: Option<String>,
    /// The sentence encoder free text goes through (`text_classifier`).
    #[serde(default)]
    pub encoder: Option<String>,
}

/// The columns of a training input: the target, and the features with
/// their kinds, in input order.
#[derive(Debug, Clone)]
pub struct InputColumns {
    pub target: usize,
    /// Whether the model classifies (else it regresses).
    pub classify: bool,
    pub features: Vec<(usize, String, DataType, ColumnKind)>,
}

impl InputColumns {
    /// Resolves `spec` against the input's schema, with the same errors for
    /// every client.
    pub fn resolve(schema: &Schema, spec: &TargetSpec) -> Result<InputColumns> {
        let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let find = |name: &str, role: &str| {
            schema.index_of(name).map_err(|_| {
                UdfError::Input(format!(
                    "{role} column \"{name}\" is not in the training input (columns: {})",
                    columns.join(", ")
                ))
            })
        };
        let target = find(&spec.target, "target")?;
        let excluded = match &spec.excluded {
            Some(name) => Some(find(name, "FEDERATED BY")?),
            None => None,
        };
        let mut features = Vec::new();
        for (i, field) in schema.fields().iter().enumerate() {
            if i == target || Some(i) == excluded {
                continue;
            }
            let kind = column_kind(field.data_type()).ok_or_else(|| {
                UdfError::Input(format!(
                    "column {} of type {} cannot be a feature; leave it out of the input",
                    field.name(),
                    field.data_type()
                ))
            })?;
            features.push((i, field.name().clone(), field.data_type().clone(), kind));
        }
        if features.is_empty() {
            return Err(UdfError::Input(
                "the training input has no feature columns besides the target and the FEDERATED BY column".into(),
            ));
        }
        let target_type = schema.field(target).data_type();
        let classify = match (spec.algorithm.as_str(), column_kind(target_type)) {
            ("linear_regression", Some(ColumnKind::Numeric))
                if *target_type != DataType::Boolean =>
            {
                false
            }
            ("linear_regression", _) => {
                return Err(UdfError::Input(format!(
                    "linear_regression needs a numeric target; {} is {target_type}",
                    spec.target
                )))
            }
            (
                "logistic_regression" | "text_classifier",
                Some(ColumnKind::Numeric | ColumnKind::Text),
            ) => true,
            ("mlp", Some(ColumnKind::Numeric)) => *target_type == DataType::Boolean,
            ("mlp", Some(ColumnKind::Text)) => true,
            _ => {
                return Err(UdfError::Input(format!(
                    "the target {} of type {target_type} cannot be predicted",
                    spec.target
                )))
            }
        };
        Ok(InputColumns {
            target,
            classify,
            features,
        })
    }
}

/// What one client tells the coordinator about its rows before training:
/// counts and sums per feature column, its distinct labels, and its target's
/// moments — never a row.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Profile {
    /// Rows with a target.
    pub rows: u64,
    /// One summary per feature column, in [`InputColumns::features`] order.
    pub features: Vec<ColumnSummary>,
    /// Distinct target values (classifiers only).
    pub labels: BTreeSet<String>,
    /// The target's summary (regressions only).
    pub target: ColumnSummary,
}

/// The rows of `batch` that have a target.
pub fn rows_with_target(batch: &RecordBatch, columns: &InputColumns) -> Result<RecordBatch> {
    let keep: Vec<bool> = text_values(batch.column(columns.target))?
        .into_iter()
        .map(|t| t.is_some())
        .collect();
    let mask = datafusion::arrow::array::BooleanArray::from(keep);
    datafusion::arrow::compute::filter_record_batch(batch, &mask)
        .map_err(|e| UdfError::Input(format!("selecting rows with a target: {e}")))
}

/// Summarises one client's rows (already limited to rows with a target).
pub fn profile(batch: &RecordBatch, columns: &InputColumns) -> Result<Profile> {
    let mut out = Profile {
        rows: batch.num_rows() as u64,
        ..Profile::default()
    };
    for (i, _, _, kind) in &columns.features {
        out.features
            .push(ColumnSummary::of(*kind, batch.column(*i))?);
    }
    if columns.classify {
        out.labels.extend(
            text_values(batch.column(columns.target))?
                .into_iter()
                .flatten(),
        );
    } else {
        out.target = ColumnSummary::of(ColumnKind::Numeric, batch.column(columns.target))?;
    }
    Ok(out)
}

/// How every client encodes its rows, decided by the coordinator from the
/// merged profiles.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Encoding {
    pub transform: FeatureTransform,
    pub task: Task,
    pub validation_split: f64,
}

/// One client's local training, on the blocking pool (it is CPU-bound:
/// off the async workers); `fail` is the fault-injection hook.
pub async fn train_off_runtime(
    arch: Architecture,
    global: Arc<Vec<f32>>,
    examples: Arc<Examples>,
    config: LocalConfig,
    fail: bool,
) -> Result<LocalResult> {
    tokio::task::spawn_blocking(move || {
        if fail {
            return Err(UdfError::Training(
                "fault injected (FEDSQL_FAULT_INJECT)".into(),
            ));
        }
        train_local(&arch, &global, &examples, &config)
    })
    .await
    .map_err(|e| UdfError::Training(format!("client task: {e}")))?
}

/// A client whose rows are in this process.
pub struct LocalClient {
    name: String,
    train: Arc<Examples>,
    validation: Arc<Examples>,
    target_moments: TargetMoments,
    /// What its update (trained − global weights) is multiplied by before
    /// it is sent: 1, except for an attacker in tests (see
    /// [`LocalClient::scaling_updates`]).
    update_scale: f32,
}

impl LocalClient {
    /// This client, sending `scale ×` its real update: a poisoning
    /// attacker (scaled or sign-flipped updates), which robust strategies
    /// are tested against. Only a test hook turns it on
    /// (`FEDSQL_DEBUG_ATTACK_SCALE` at a site).
    pub fn scaling_updates(mut self, scale: f32) -> LocalClient {
        self.update_scale = scale;
        self
    }

    /// Encodes `batch` (rows with a target) with `encoding` and holds out
    /// its validation rows with `split_seed`.
    pub fn from_rows(
        name: String,
        batch: &RecordBatch,
        columns: &InputColumns,
        encoding: &Encoding,
        split_seed: u64,
    ) -> Result<LocalClient> {
        let features: Vec<ArrayRef> = columns
            .features
            .iter()
            .map(|(i, ..)| Arc::clone(batch.column(*i)))
            .collect();
        let encoded = encoding.transform.encode(&features)?;
        let target = batch.column(columns.target);
        let targets = match &encoding.task {
            Task::Classification { labels, .. } => Targets::Classes {
                labels: text_values(target)?
                    .into_iter()
                    .map(|t| t.and_then(|t| labels.binary_search(&t).ok()).unwrap_or(0) as u32)
                    .collect(),
                classes: labels.len(),
            },
            Task::Regression { mean, std } => Targets::Regression(
                numeric_values(target)?
                    .into_iter()
                    .map(|v| ((v - mean) / std) as f32)
                    .collect(),
            ),
        };
        let examples = Examples {
            features: encoded,
            width: encoding.transform.width(),
            targets,
        };
        let (train, validation) = examples.split(encoding.validation_split, split_seed);
        let target_moments = match &validation.targets {
            Targets::Regression(v) => v.iter().fold((0.0, 0.0, 0.0), |(c, s, q), y| {
                let y = f64::from(*y);
                (c + 1.0, s + y, q + y * y)
            }),
            Targets::Classes { .. } => (0.0, 0.0, 0.0),
        };
        Ok(LocalClient {
            name,
            train: Arc::new(train),
            validation: Arc::new(validation),
            target_moments,
            update_scale: 1.0,
        })
    }
}

#[async_trait]
impl TrainingClient for LocalClient {
    fn name(&self) -> &str {
        &self.name
    }

    async fn train(
        &self,
        round: u32,
        access: &ExchangeAccess,
        arch: &Architecture,
        config: LocalConfig,
        fail: bool,
    ) -> Result<u64> {
        let mut link = ExchangeClient::connect(access).await?;
        let (weights, fetched) = link.fetch(round).await?;
        let global = Arc::new(weights);
        let mut trained = train_off_runtime(
            arch.clone(),
            Arc::clone(&global),
            Arc::clone(&self.train),
            config,
            fail,
        )
        .await?;
        if self.update_scale != 1.0 {
            for (w, g) in trained.weights.iter_mut().zip(global.iter()) {
                *w = g + self.update_scale * (*w - g);
            }
        }
        link.send(
            round,
            &self.name,
            &trained.weights,
            trained.num_examples,
            trained.loss,
        )
        .await?;
        Ok(fetched)
    }

    async fn evaluate(
        &self,
        _key: u32,
        _access: &ExchangeAccess,
        arch: &Architecture,
        weights: &Arc<Vec<f32>>,
    ) -> Result<(Metrics, TargetMoments)> {
        let rows = if self.validation.rows() > 0 {
            Arc::clone(&self.validation)
        } else {
            Arc::clone(&self.train)
        };
        let (arch, weights) = (arch.clone(), Arc::clone(weights));
        let metrics = tokio::task::spawn_blocking(move || evaluate(&arch, &weights, &rows))
            .await
            .map_err(|e| UdfError::Training(format!("client task: {e}")))??;
        Ok((metrics, self.target_moments))
    }

    async fn train_secure(
        &self,
        round: u32,
        access: &ExchangeAccess,
        arch: &Architecture,
        config: LocalConfig,
        fail: bool,
    ) -> Result<u64> {
        let train = Arc::clone(&self.train);
        crate::secure_client::take_part(access, round, arch, train, config, fail).await
    }
}

impl LocalClient {
    /// Evaluates weights fetched from the exchange (a site answering the
    /// coordinator reads them there).
    pub async fn evaluate_published(
        &self,
        key: u32,
        access: &ExchangeAccess,
        arch: &Architecture,
    ) -> Result<(Metrics, TargetMoments)> {
        let mut link = ExchangeClient::connect(access).await?;
        let (weights, _) = link.fetch(key).await?;
        self.evaluate(key, access, arch, &Arc::new(weights)).await
    }
}
