//! Pushdown: which parts of a plan run at a source, as SQL in its dialect.
//!
//! datafusion-federation finds the largest sub-plans whose tables all belong
//! to one source and turns each into one remote query (unparsed with
//! DataFusion's unparser, so identifiers and literals are always quoted).
//! fedsql adds two things to its optimizer rule ([`PolicyFederationRule`]):
//!
//! 1. a per-dialect [`PushdownPolicy`]: a plan node whose expressions could
//!    give different answers at the source (collation-dependent string
//!    ordering, decimal division, DataFusion-only functions…) is never
//!    federated; only its inputs are;
//! 2. the session setting `fedsql.pushdown` (`on` by default): with `off`,
//!    sources only serve plain table scans and fedsql does all the work, which
//!    is how results with and without pushdown are compared.
//!
//! ```text
//!   Sort (by a text column: stays local)
//!     └─ Aggregate  ─┐
//!         └─ Join    ├─ one remote query: SELECT … JOIN … GROUP BY …
//!             ├─ Scan│
//!             └─ Scan┘
//! ```

pub mod fallback;
pub mod join_filter;
mod names;
mod needed;
mod partial_aggregate;
pub mod partitioned;
mod policy;
mod rule;
mod semi_join;
pub mod split;
mod union_aggregate;
mod unparser_fixes;

use datafusion::common::extensions_options;
use datafusion::config::ConfigExtension;

pub use policy::{DialectPolicy, PushdownPolicy, SourceDialect, POSTGRES_POLICY};
pub use rule::PolicyFederationRule;

extensions_options! {
    /// fedsql's session settings (`SET fedsql.<name> = …`).
    pub struct FedsqlOptions {
        /// `on` to push filters, joins, aggregates and limits to sources;
        /// `off` to read plain tables and compute everything in fedsql.
        pub pushdown: String, default = "on".to_string()
    }
}

impl ConfigExtension for FedsqlOptions {
    const PREFIX: &'static str = "fedsql";
}

impl FedsqlOptions {
    /// Whether pushdown is on (`off`, `false` and `0` turn it off).
    pub fn pushdown_enabled(&self) -> bool {
        !matches!(
            self.pushdown.trim().to_ascii_lowercase().as_str(),
            "off" | "false" | "0"
        )
    }
}
