//! fedsql's models: local training with Burn, aggregation strategies with
//! Flower's names and update rules, and the options `TRAIN MODEL` takes.
//!
//! - [`strategy`]: FedAvg, FedAvgM, FedAdam/FedYogi/FedAdagrad, FedMedian,
//!   FedTrimmedAvg, Krum, and fixed-clipping differential privacy;
//! - [`encoder`]: pretrained sentence encoders (BERT in Burn) by name;
//! - [`embed`]: `embed`, `tokenize`, `cosine_similarity`/`cosine_distance`;
//! - [`features`]: federated preprocessing (standardize, one-hot, hashed words);
//! - [`options`]: `WITH (…)` options, checked before training starts;
//! - [`model`]: the networks (linear, logistic, MLP) as Burn modules and their
//!   flat weight vectors;
//! - [`train`]: one client's local training and evaluation;
//! - [`client`]: the [`client::TrainingClient`] trait the coordinator drives,
//!   and the in-process client a partition or a site trains with;
//! - [`coordinator`]: the round loop over those clients, and secure rounds;
//! - [`exchange`]: global weights and client updates over Arrow Flight;
//! - [`secure_aggregation`]: SecAgg masking, so the coordinator sees only
//!   the sum of the clients' updates;
//! - [`secure_client`]: a client's part of a secure round, over the
//!   exchange's bulletin board;
//! - [`registry`]: versioned models under the data dir;
//! - [`checkpoint`]: a run's state after each round, for `RESUME TRAINING`;
//! - [`evaluate`]: `EVALUATE MODEL` metrics from per-client sufficient statistics;
//! - [`predict`]: the `predict` and `predict_proba` SQL functions.

pub mod checkpoint;
pub mod client;
pub mod coordinator;
pub mod embed;
pub mod encoder;
pub mod error;
pub mod evaluate;
pub mod exchange;
pub mod features;
pub mod model;
pub mod options;
pub mod predict;
pub mod registry;
pub mod secure_aggregation;
pub mod secure_client;
pub mod strategy;
pub mod train;

pub use error::{Result, UdfError};
