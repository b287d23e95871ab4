//! Real federation: `fedsql site` processes that own their data, and the
//! coordinator's side of them.
//!
//! - [`protocol`]: the tasks and replies between them (over the
//!   coordinator's Flight endpoint);
//! - [`registry`]: the coordinator's sites, their credentials and queues;
//! - [`remote`]: a site as a [`fedsql_udfs::client::TrainingClient`];
//! - [`analytics`]: a site's analytics policy applied to a coordinator's
//!   query;
//! - [`budget`]: a site's differential-privacy budget;
//! - [`catalog`]: the coordinator's `site_<name>` catalogs and the
//!   `sites` union of them;
//! - [`agent`]: the `fedsql site` process: polls, checks its policy, runs
//!   the coordinator's query on its own catalog and trains locally.

pub mod agent;
pub mod analytics;
pub mod budget;
pub mod catalog;
pub mod protocol;
pub mod registry;
pub mod remote;

pub use registry::{SiteCredential, SiteRegistry};
