//! The messages between a coordinator and its `fedsql site` processes.
//!
//! A site dials out to the coordinator's Flight endpoint (sites sit behind
//! firewalls, as Flower's SuperNodes do) and long-polls it with the Flight
//! action [`POLL_ACTION`]; each poll is also the site's heartbeat, and its
//! answer is the next [`Envelope`] for the site, or none. The site answers a
//! task with [`REPLY_ACTION`]. Both bodies are JSON; weights never travel
//! here, only on the weight exchange.
//!
//! What a site can be asked is closed: the [`Task`]s below. A site never
//! runs DDL or arbitrary statements for a coordinator; a training query is
//! checked against the site's own policy before it runs.

use serde::{Deserialize, Serialize};

use fedsql_udfs::client::{Encoding, Profile, TargetMoments, TargetSpec};
use fedsql_udfs::evaluate::EvalStats;
use fedsql_udfs::exchange::ExchangeAccess;
use fedsql_udfs::model::Architecture;
use fedsql_udfs::registry::ModelVersion;
use fedsql_udfs::train::{LocalConfig, Metrics};

/// The Flight action a site polls with.
pub const POLL_ACTION: &str = "fedsql.site.poll";
/// The Flight action a site answers a task with.
pub const REPLY_ACTION: &str = "fedsql.site.reply";

/// Who is polling: a site's name, its token, and what it offers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub site: String,
    pub token: String,
    /// A random id per site process: a site that restarted has lost what
    /// it prepared, and the coordinator prepares it again.
    pub session: String,
    /// The site's fedsql version.
    pub version: String,
    /// The tables the site's policy lets a coordinator train on: names and
    /// column types only.
    pub tables: Vec<OfferedTable>,
}

/// One table a site offers for training (and, as its policy says, for
/// analytics).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OfferedTable {
    /// `catalog.schema.table` at the site.
    pub name: String,
    /// `(column, type)` pairs.
    pub columns: Vec<(String, String)>,
    /// The Arrow schema as an IPC stream without batches, base64 (absent
    /// from sites older than analytics).
    #[serde(default)]
    pub schema: Option<String>,
    /// What a coordinator's analytics queries may take from it.
    #[serde(default)]
    pub analytics: AnalyticsPolicy,
}

/// What may leave a site for analytics from one table (`[[site.analytics]]`
/// in the site's config).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "snake_case", tag = "policy")]
pub enum AnalyticsPolicy {
    /// Nothing: the table is for training and evaluation only.
    #[default]
    None,
    /// Aggregates over groups of at least `min_group_size` rows; smaller
    /// groups are suppressed at the site. With `dp_epsilon`, each answer is
    /// differentially private at that epsilon.
    Aggregates {
        min_group_size: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dp_epsilon: Option<f64>,
    },
    /// Rows, as any query selects them.
    Rows,
}

impl std::fmt::Display for AnalyticsPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnalyticsPolicy::None => f.write_str("none"),
            AnalyticsPolicy::Aggregates {
                min_group_size,
                dp_epsilon: None,
            } => write!(f, "aggregates (min_group_size {min_group_size})"),
            AnalyticsPolicy::Aggregates {
                min_group_size,
                dp_epsilon: Some(epsilon),
            } => write!(
                f,
                "aggregates (min_group_size {min_group_size}, dp_epsilon {epsilon})"
            ),
            AnalyticsPolicy::Rows => f.write_str("rows"),
        }
    }
}

/// A task for one site, with the id its reply names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub id: u64,
    pub task: Task,
}

/// What a coordinator can ask a site.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum Task {
    /// Run `query` on the site's own catalog (if its policy allows), keep
    /// the rows for run `run`, and answer their schema and [`Profile`].
    Prepare {
        run: String,
        query: String,
        spec: TargetSpec,
    },
    /// Encode the kept rows of `run` and hold out validation rows.
    Setup {
        run: String,
        encoding: Encoding,
        split_seed: u64,
    },
    /// One round of local training over the weight exchange, as the
    /// client `exchange` admits; with `secure`, a securely aggregated one
    /// (SecAgg over the exchange's bulletin board: the update leaves the
    /// site only masked).
    Train {
        run: String,
        round: u32,
        exchange: ExchangeAccess,
        arch: Architecture,
        config: LocalConfig,
        #[serde(default)]
        secure: bool,
    },
    /// Score the weights published as round `key` on the held-out rows.
    Evaluate {
        run: String,
        key: u32,
        exchange: ExchangeAccess,
        arch: Architecture,
    },
    /// Forget run `run`.
    Finish { run: String },
    /// `EVALUATE MODEL … FEDERATED ON SITES`: score `model` (its weights
    /// published as round `key` at the exchange) on the rows of `query`.
    Score {
        query: String,
        model: Box<ModelVersion>,
        exchange: ExchangeAccess,
        key: u32,
    },
    /// An analytics query over the site's tables (`site_<name>.…` at the
    /// coordinator): the site checks `sql` against each table's analytics
    /// policy, suppresses groups under `min_group_size`, and answers
    /// [`Reply::Rows`].
    Query { sql: String },
}

/// A site's answer to a task.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Prepared {
        /// The input's schema as an Arrow IPC stream with no batches, base64.
        schema: String,
        profile: Profile,
    },
    Ready,
    Trained {
        fetched: u64,
    },
    Evaluated {
        metrics: Metrics,
        moments: TargetMoments,
    },
    Done,
    Scored {
        stats: EvalStats,
    },
    /// The answer to [`Task::Query`].
    Rows {
        /// The result as one Arrow IPC stream, base64.
        batches: String,
        /// Groups left out for having fewer than `min_group_size` rows.
        suppressed: u64,
        /// The epsilon this answer spent, when it is differentially private.
        #[serde(default)]
        epsilon: Option<f64>,
        /// The site's privacy budget left after it.
        #[serde(default)]
        budget_left: Option<f64>,
    },
    /// The site's analytics policy refused a [`Task::Query`]; the message
    /// names the table, its policy and what the query would have taken.
    Refused {
        message: String,
    },
    /// The task failed at the site (its policy refused the query, the query
    /// failed, training failed); the message says why.
    Failed {
        message: String,
    },
}

/// The body of [`REPLY_ACTION`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplyMessage {
    pub site: String,
    pub token: String,
    pub id: u64,
    pub reply: Reply,
}
