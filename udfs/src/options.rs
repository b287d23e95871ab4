//! `TRAIN MODEL … WITH (…)` options: Flower's names and defaults, checked
//! before any training starts.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{Result, UdfError};
use crate::strategy::{
    DpFixedClipping, FedAvg, FedAvgM, FedMedian, FedOpt, FedOptKind, FedTrimmedAvg, Krum, Strategy,
};

/// Every option `WITH (…)` accepts.
pub const KNOWN: &[&str] = &[
    "rounds",
    "strategy",
    "local_epochs",
    "batch_size",
    "optimizer",
    "learning_rate",
    "fraction_train",
    "min_train_nodes",
    "min_available_nodes",
    "proximal_mu",
    "server_learning_rate",
    "server_momentum",
    "eta",
    "eta_l",
    "beta_1",
    "beta_2",
    "tau",
    "trim_beta",
    "num_malicious_nodes",
    "num_nodes_to_keep",
    "validation_split",
    "round_timeout",
    "accept_failures",
    "seed",
    "dp",
    "noise_multiplier",
    "clipping_norm",
    "secure_aggregation",
];

/// The strategies `strategy = '…'` names.
pub const STRATEGIES: &[&str] = &[
    "fedavg",
    "fedprox",
    "fedavgm",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
];

/// The client-side optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Optimizer {
    Sgd,
    Adam,
}

/// Differential privacy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpMode {
    None,
    ClientFixed,
    ServerFixed,
}

/// Resolved training options.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingOptions {
    pub rounds: u32,
    pub strategy: String,
    pub local_epochs: u32,
    pub batch_size: usize,
    pub optimizer: Optimizer,
    /// The clients' learning rate (`eta_l` for the FedOpt strategies when given).
    pub learning_rate: f64,
    pub fraction_train: f64,
    pub min_train_nodes: usize,
    pub min_available_nodes: usize,
    pub proximal_mu: f64,
    pub validation_split: f64,
    pub round_timeout: Duration,
    pub accept_failures: bool,
    pub seed: u64,
    pub dp: DpMode,
    /// Clients mask their updates (SecAgg); the coordinator sees only their
    /// weighted mean.
    pub secure_aggregation: bool,
    /// Every option as written, for strategy parameters and the registry.
    pub raw: BTreeMap<String, String>,
}

fn parse<T: std::str::FromStr>(
    raw: &BTreeMap<String, String>,
    key: &str,
    kind: &str,
) -> Result<Option<T>> {
    raw.get(key)
        .map(|v| {
            v.parse::<T>()
                .map_err(|_| UdfError::Option(format!("option {key} expects {kind}, got '{v}'")))
        })
        .transpose()
}

fn fraction(
    raw: &BTreeMap<String, String>,
    key: &str,
    default: f64,
    allow_zero: bool,
) -> Result<f64> {
    let v = parse::<f64>(raw, key, "a number")?.unwrap_or(default);
    let ok = if allow_zero {
        (0.0..1.0).contains(&v)
    } else {
        v > 0.0 && v <= 1.0
    };
    if !ok {
        return Err(UdfError::Option(format!(
            "option {key} must be a fraction, got {v}"
        )));
    }
    Ok(v)
}

/// Parses `"600s"`, `"10m"`, `"1h"`, `"250ms"` or plain seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let (number, unit) = t
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((t, "s"), |i| (&t[..i], &t[i..]));
    let n: f64 = number.trim().parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs > 0.0 && secs.is_finite()).then(|| Duration::from_secs_f64(secs))
}

impl TrainingOptions {
    /// Checks and resolves `WITH (…)` (keys lower-case, values as text).
    pub fn parse(options: &[(String, String)]) -> Result<TrainingOptions> {
        let mut raw = BTreeMap::new();
        for (k, v) in options {
            if !KNOWN.contains(&k.as_str()) {
                return Err(UdfError::Option(format!(
                    "unknown option {k} (known: {})",
                    KNOWN.join(", ")
                )));
            }
            if raw.insert(k.clone(), v.clone()).is_some() {
                return Err(UdfError::Option(format!("option {k} is given twice")));
            }
        }
        let strategy = raw
            .get("strategy")
            .map_or("fedavg", String::as_str)
            .to_lowercase();
        if !STRATEGIES.contains(&strategy.as_str()) {
            return Err(UdfError::Option(format!(
                "unknown strategy '{strategy}' (known: {})",
                STRATEGIES.join(", ")
            )));
        }
        let optimizer = match raw.get("optimizer").map(|s| s.to_lowercase()).as_deref() {
            None | Some("sgd") => Optimizer::Sgd,
            Some("adam") => Optimizer::Adam,
            Some(other) => {
                return Err(UdfError::Option(format!(
                    "unknown optimizer '{other}' (known: sgd, adam)"
                )))
            }
        };
        let dp = match raw.get("dp").map(|s| s.to_lowercase()).as_deref() {
            None | Some("none") => DpMode::None,
            Some("client_fixed") => DpMode::ClientFixed,
            Some("server_fixed") => DpMode::ServerFixed,
            Some(other) => {
                return Err(UdfError::Option(format!(
                    "unknown dp mode '{other}' (known: none, client_fixed, server_fixed)"
                )))
            }
        };
        if dp != DpMode::None && !raw.contains_key("clipping_norm") {
            return Err(UdfError::Option(format!(
                "dp = {} needs clipping_norm (and noise_multiplier)",
                raw["dp"]
            )));
        }
        let secure_aggregation =
            parse::<bool>(&raw, "secure_aggregation", "true or false")?.unwrap_or(false);
        if secure_aggregation {
            // The coordinator sees only the weighted mean of the updates:
            // strategies that look at each update cannot run on it.
            if ["fedmedian", "fedtrimmedavg", "krum"].contains(&strategy.as_str()) {
                return Err(UdfError::Option(format!(
                    "secure_aggregation = true hides each client's update, and strategy \
                     {strategy} needs them; use fedavg, fedprox, fedavgm, fedadam, fedyogi \
                     or fedadagrad"
                )));
            }
            if dp != DpMode::None {
                return Err(UdfError::Option(
                    "secure_aggregation = true with dp is not supported: fedsql clips and \
                     noises updates on the coordinator, which cannot see them"
                        .into(),
                ));
            }
        }
        let positive = |key: &str, default: u64| -> Result<u64> {
            let v = parse::<u64>(&raw, key, "a positive integer")?.unwrap_or(default);
            if v == 0 {
                return Err(UdfError::Option(format!("option {key} must be at least 1")));
            }
            Ok(v)
        };
        let rounds = positive("rounds", 10)? as u32;
        let local_epochs = positive("local_epochs", 1)? as u32;
        let batch_size = positive("batch_size", 32)? as usize;
        let min_train_nodes = positive("min_train_nodes", 2)? as usize;
        let min_available_nodes = positive("min_available_nodes", 2)? as usize;
        let fed_opt_eta_l = match strategy.as_str() {
            "fedadam" => Some(FedOpt::defaults(FedOptKind::Adam).1),
            "fedyogi" => Some(FedOpt::defaults(FedOptKind::Yogi).1),
            "fedadagrad" => Some(FedOpt::defaults(FedOptKind::Adagrad).1),
            _ => None,
        };
        let learning_rate = match parse::<f64>(&raw, "learning_rate", "a number")? {
            Some(lr) => lr,
            None => match (parse::<f64>(&raw, "eta_l", "a number")?, fed_opt_eta_l) {
                (Some(eta_l), _) => eta_l,
                (None, Some(eta_l)) => eta_l,
                (None, None) => 0.01,
            },
        };
        if learning_rate.is_nan() || learning_rate <= 0.0 {
            return Err(UdfError::Option(format!(
                "learning_rate must be positive, got {learning_rate}"
            )));
        }
        let proximal_mu = parse::<f64>(&raw, "proximal_mu", "a number")?.unwrap_or(0.0);
        if strategy == "fedprox" && (proximal_mu.is_nan() || proximal_mu <= 0.0) {
            return Err(UdfError::Option(
                "strategy fedprox needs proximal_mu > 0 (e.g. proximal_mu = 0.1)".into(),
            ));
        }
        let round_timeout = match raw.get("round_timeout") {
            Some(t) => parse_duration(t).ok_or_else(|| {
                UdfError::Option(format!(
                    "round_timeout expects a duration like '600s', got '{t}'"
                ))
            })?,
            None => Duration::from_secs(600),
        };
        let options = TrainingOptions {
            rounds,
            local_epochs,
            batch_size,
            optimizer,
            learning_rate,
            fraction_train: fraction(&raw, "fraction_train", 1.0, false)?,
            min_train_nodes,
            min_available_nodes,
            proximal_mu,
            validation_split: fraction(&raw, "validation_split", 0.2, true)?,
            round_timeout,
            accept_failures: parse::<bool>(&raw, "accept_failures", "true or false")?
                .unwrap_or(true),
            seed: parse::<u64>(&raw, "seed", "a non-negative integer")?.unwrap_or(42),
            dp,
            secure_aggregation,
            strategy,
            raw,
        };
        // Build once so bad strategy parameters fail before training.
        options.strategy()?;
        Ok(options)
    }

    fn number(&self, key: &str, default: f64) -> Result<f64> {
        Ok(parse::<f64>(&self.raw, key, "a number")?.unwrap_or(default))
    }

    /// A fresh strategy object (with its server state) for one training run.
    pub fn strategy(&self) -> Result<Box<dyn Strategy>> {
        let fed_opt = |kind| -> Result<Box<dyn Strategy>> {
            let (eta, _, b1, b2, tau) = FedOpt::defaults(kind);
            Ok(Box::new(FedOpt::new(
                kind,
                self.number("eta", eta)?,
                self.number("beta_1", b1)?,
                self.number("beta_2", b2)?,
                self.number("tau", tau)?,
            )))
        };
        let inner: Box<dyn Strategy> = match self.strategy.as_str() {
            "fedavg" | "fedprox" => Box::new(FedAvg),
            "fedavgm" => Box::new(FedAvgM::new(
                self.number("server_learning_rate", 1.0)?,
                self.number("server_momentum", 0.0)?,
            )),
            "fedadam" => fed_opt(FedOptKind::Adam)?,
            "fedyogi" => fed_opt(FedOptKind::Yogi)?,
            "fedadagrad" => fed_opt(FedOptKind::Adagrad)?,
            "fedmedian" => Box::new(FedMedian),
            "fedtrimmedavg" => Box::new(FedTrimmedAvg {
                trim_beta: fraction(&self.raw, "trim_beta", 0.2, true)?,
            }),
            "krum" => Box::new(Krum {
                num_malicious_nodes: parse::<usize>(
                    &self.raw,
                    "num_malicious_nodes",
                    "an integer",
                )?
                .unwrap_or(0),
                num_nodes_to_keep: parse::<usize>(&self.raw, "num_nodes_to_keep", "an integer")?
                    .unwrap_or(0),
            }),
            other => return Err(UdfError::Option(format!("unknown strategy '{other}'"))),
        };
        Ok(match self.dp {
            DpMode::None => inner,
            DpMode::ClientFixed | DpMode::ServerFixed => Box::new(DpFixedClipping::new(
                inner,
                self.number("clipping_norm", 0.0)?,
                self.number("noise_multiplier", 1.0)?,
                self.seed,
            )?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Result<TrainingOptions> {
        TrainingOptions::parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn defaults_are_flowers() {
        let o = opts(&[]).unwrap();
        assert_eq!(o.rounds, 10);
        assert_eq!(o.strategy, "fedavg");
        assert_eq!(o.batch_size, 32);
        assert_eq!(o.min_train_nodes, 2);
        assert_eq!(o.learning_rate, 0.01);
        assert_eq!(o.round_timeout, Duration::from_secs(600));
        assert!(o.accept_failures);
        // FedAdam's client learning rate defaults to Flower's eta_l.
        assert_eq!(opts(&[("strategy", "fedadam")]).unwrap().learning_rate, 0.1);
    }

    #[test]
    fn bad_options_fail_before_training() {
        let err = |pairs: &[(&str, &str)]| opts(pairs).unwrap_err().to_string();
        assert!(err(&[("roundz", "3")]).contains("unknown option roundz"));
        assert!(err(&[("rounds", "three")]).contains("rounds expects a positive integer"));
        assert!(err(&[("rounds", "0")]).contains("at least 1"));
        assert!(err(&[("strategy", "fedbest")]).contains("unknown strategy 'fedbest'"));
        assert!(err(&[("strategy", "fedprox")]).contains("proximal_mu"));
        assert!(err(&[("dp", "client_fixed")]).contains("clipping_norm"));
        assert!(err(&[("fraction_train", "1.5")]).contains("fraction"));
        assert!(err(&[("round_timeout", "soon")]).contains("duration"));
        assert!(err(&[("optimizer", "lbfgs")]).contains("unknown optimizer"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("600s"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("-1s"), None);
    }
}
