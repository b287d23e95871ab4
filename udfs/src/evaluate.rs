//! `EVALUATE MODEL`: metrics from sufficient statistics.
//!
//! Each client scores its own rows and keeps only counts and sums
//! ([`EvalStats`]): the confusion counts, the log-loss sum and a score
//! histogram per class for a classifier; error sums and target moments for a
//! regression. Statistics merge by addition, so the metrics over all clients
//! come from what the clients send, never from their rows. AUC comes from the
//! merged histograms (1,000 bins, exact up to ties within a bin).

use datafusion::arrow::array::{ArrayRef, RecordBatch};

use crate::error::{Result, UdfError};
use crate::features::{numeric_values, text_values};
use crate::registry::{LoadedModel, Task};
use crate::train::predict;

const BINS: usize = 1000;

/// What one client contributes to an evaluation.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct EvalStats {
    pub n: u64,
    // Classification.
    pub correct: u64,
    pub log_loss_sum: f64,
    /// Per class: (true positives, false positives, false negatives).
    pub per_class: Vec<(u64, u64, u64)>,
    /// Binary only: histograms of P(second class) for each true class.
    pub positive_scores: Vec<u64>,
    pub negative_scores: Vec<u64>,
    // Regression.
    pub sse: f64,
    pub sae: f64,
    pub sum_y: f64,
    pub sum_y2: f64,
}

impl EvalStats {
    /// Scores one client's rows: the model's features matched by name, and
    /// its target column.
    pub fn of_rows(model: &LoadedModel, batch: &RecordBatch) -> Result<EvalStats> {
        let columns: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        check_target(model, &columns)?;
        let features = model.meta.transform.columns_by_name(batch)?;
        let target = batch
            .column_by_name(&model.meta.target)
            .cloned()
            .ok_or_else(|| UdfError::Input(format!("missing target {}", model.meta.target)))?;
        EvalStats::of(model, &features, &target)
    }

    /// Scores `features` (columns in the model's order) against `target`.
    pub fn of(model: &LoadedModel, features: &[ArrayRef], target: &ArrayRef) -> Result<EvalStats> {
        let meta = &model.meta;
        let rows = target.len();
        let matrix = meta.transform.encode(features)?;
        let classifier = matches!(meta.task, Task::Classification { .. });
        let out = predict(
            &meta.architecture,
            &model.weights,
            &matrix,
            rows,
            classifier,
        )?;
        let mut s = EvalStats::default();
        match &meta.task {
            Task::Regression { mean, std } => {
                for (r, y) in numeric_values(target)?.into_iter().enumerate() {
                    if !y.is_finite() {
                        continue;
                    }
                    let e = f64::from(out[r]) * std + mean - y;
                    s.n += 1;
                    s.sse += e * e;
                    s.sae += e.abs();
                    s.sum_y += y;
                    s.sum_y2 += y * y;
                }
            }
            Task::Classification { labels, .. } => {
                let k = labels.len();
                s.per_class = vec![(0, 0, 0); k];
                if k == 2 {
                    s.positive_scores = vec![0; BINS];
                    s.negative_scores = vec![0; BINS];
                }
                for (r, label) in text_values(target)?.into_iter().enumerate() {
                    let Some(truth) = label.and_then(|l| labels.binary_search(&l).ok()) else {
                        continue;
                    };
                    let p = &out[r * k..(r + 1) * k];
                    let best = p
                        .iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map_or(0, |(i, _)| i);
                    s.n += 1;
                    s.log_loss_sum -= f64::from(p[truth]).clamp(1e-15, 1.0).ln();
                    if best == truth {
                        s.correct += 1;
                        s.per_class[truth].0 += 1;
                    } else {
                        s.per_class[best].1 += 1;
                        s.per_class[truth].2 += 1;
                    }
                    if k == 2 {
                        let bin = ((f64::from(p[1]) * BINS as f64) as usize).min(BINS - 1);
                        if truth == 1 {
                            s.positive_scores[bin] += 1;
                        } else {
                            s.negative_scores[bin] += 1;
                        }
                    }
                }
            }
        }
        Ok(s)
    }

    /// Adds another client's statistics.
    pub fn merge(&mut self, o: &EvalStats) {
        self.n += o.n;
        self.correct += o.correct;
        self.log_loss_sum += o.log_loss_sum;
        if self.per_class.len() < o.per_class.len() {
            self.per_class.resize(o.per_class.len(), (0, 0, 0));
        }
        for (a, b) in self.per_class.iter_mut().zip(&o.per_class) {
            a.0 += b.0;
            a.1 += b.1;
            a.2 += b.2;
        }
        for (mine, theirs) in [
            (&mut self.positive_scores, &o.positive_scores),
            (&mut self.negative_scores, &o.negative_scores),
        ] {
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), 0);
            }
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
        self.sse += o.sse;
        self.sae += o.sae;
        self.sum_y += o.sum_y;
        self.sum_y2 += o.sum_y2;
    }

    /// The metrics, in display order: accuracy, precision, recall, f1, auc,
    /// log_loss for a classifier (precision/recall/F1 of the second class for
    /// a binary model, macro-averaged otherwise); rmse, mae, r2 for a
    /// regression.
    pub fn metrics(&self, task: &Task) -> Vec<(&'static str, Option<f64>)> {
        let n = self.n as f64;
        if self.n == 0 {
            return vec![];
        }
        match task {
            Task::Regression { .. } => {
                let total = self.sum_y2 - self.sum_y * self.sum_y / n;
                vec![
                    ("rmse", Some((self.sse / n).sqrt())),
                    ("mae", Some(self.sae / n)),
                    ("r2", (total > 0.0).then(|| 1.0 - self.sse / total)),
                ]
            }
            Task::Classification { .. } => {
                let prf = |(tp, fp, fn_): (u64, u64, u64)| {
                    let p = if tp + fp > 0 {
                        tp as f64 / (tp + fp) as f64
                    } else {
                        0.0
                    };
                    let r = if tp + fn_ > 0 {
                        tp as f64 / (tp + fn_) as f64
                    } else {
                        0.0
                    };
                    let f = if p + r > 0.0 {
                        2.0 * p * r / (p + r)
                    } else {
                        0.0
                    };
                    (p, r, f)
                };
                let (precision, recall, f1) = if self.per_class.len() == 2 {
                    prf(self.per_class[1])
                } else {
                    let k = self.per_class.len().max(1) as f64;
                    self.per_class
                        .iter()
                        .map(|c| prf(*c))
                        .fold((0.0, 0.0, 0.0), |a, b| {
                            (a.0 + b.0 / k, a.1 + b.1 / k, a.2 + b.2 / k)
                        })
                };
                vec![
                    ("accuracy", Some(self.correct as f64 / n)),
                    ("precision", Some(precision)),
                    ("recall", Some(recall)),
                    ("f1", Some(f1)),
                    ("auc", self.auc()),
                    ("log_loss", Some(self.log_loss_sum / n)),
                ]
            }
        }
    }

    /// Probability that a random positive scores above a random negative
    /// (ties count half), from the histograms.
    fn auc(&self) -> Option<f64> {
        let pos: u64 = self.positive_scores.iter().sum();
        let neg: u64 = self.negative_scores.iter().sum();
        if pos == 0 || neg == 0 {
            return None;
        }
        let mut below = 0u64;
        let mut area = 0.0;
        for (p, q) in self.positive_scores.iter().zip(&self.negative_scores) {
            area += *p as f64 * (below as f64 + 0.5 * *q as f64);
            below += q;
        }
        Some(area / (pos as f64 * neg as f64))
    }
}

/// The names of every metric column an evaluation can report.
pub const METRIC_COLUMNS: [&str; 9] = [
    "accuracy",
    "precision",
    "recall",
    "f1",
    "auc",
    "log_loss",
    "rmse",
    "mae",
    "r2",
];

/// Checks that `target` is a column name the model was trained to predict.
pub fn check_target(model: &LoadedModel, columns: &[String]) -> Result<()> {
    if columns.iter().any(|c| c == &model.meta.target) {
        Ok(())
    } else {
        Err(UdfError::Input(format!(
            "the evaluation input needs the target column {} (columns: {})",
            model.meta.target,
            columns.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_from_histograms() {
        let mut s = EvalStats {
            positive_scores: vec![0; BINS],
            negative_scores: vec![0; BINS],
            ..Default::default()
        };
        // Perfect separation → 1; identical → 0.5.
        s.positive_scores[900] = 5;
        s.negative_scores[100] = 5;
        assert_eq!(s.auc(), Some(1.0));
        s.positive_scores[100] = 5;
        s.positive_scores[900] = 0;
        assert_eq!(s.auc(), Some(0.5));
    }

    #[test]
    fn merged_statistics_equal_pooled_ones() {
        let a = EvalStats {
            n: 2,
            sse: 2.0,
            sae: 2.0,
            sum_y: 4.0,
            sum_y2: 10.0,
            ..Default::default()
        };
        let mut b = a.clone();
        b.merge(&a);
        let m = b.metrics(&Task::Regression {
            mean: 0.0,
            std: 1.0,
        });
        assert_eq!(m[0], ("rmse", Some(1.0)));
        assert_eq!(m[1], ("mae", Some(1.0)));
        // Σy² − (Σy)²/n = 20 − 64/4 = 4 → r² = 1 − 4/4 = 0
        assert_eq!(m[2], ("r2", Some(0.0)));
    }
}
