//! The fedsql server: configuration, the engine and its catalogs, the
//! Postgres wire, and the `fedsql` command line.
#![warn(rust_2018_idioms)]

pub mod accounts;
pub mod catalog_store;
pub mod config;
pub mod copy_out;
pub mod cursors;
mod debug_panic;
pub mod engine;
pub mod error;
pub mod flight;
pub mod front;
pub mod model_tables;
pub mod optimized_query;
pub mod output;
pub mod owned_tables;
pub mod pg_auth;
pub mod pg_catalog_scope;
pub mod pg_compat;
pub mod pg_stream;
pub mod pg_text;
pub mod query_log;
mod resume;
pub mod run;
pub mod serve;
pub mod sites;
pub mod system_tables;
pub mod training;
pub mod view_dependencies;
pub mod wire;

pub use config::{Settings, SettingsArgs};
pub use engine::Engine;
pub use error::{Result, ServerError};

/// Stack size of the runtime's worker and blocking threads (64 MiB): see
/// `fedsql_sql::complexity` for the statements it has to run.
pub const WORKER_STACK_BYTES: usize = 64 << 20;
