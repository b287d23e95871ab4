//! Persisted catalog state: sources, views and external tables, in
//! `<data dir>/catalog.json`.
//!
//! Each change rewrites the whole file atomically (temp file, fsync, rename),
//! so a crash leaves the previous or the new state, never a torn one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, ServerError};

/// A view (`CREATE VIEW`) or an external table (`CREATE EXTERNAL TABLE`),
/// replayed at start-up by running its statement again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ViewEntry {
    /// `catalog.schema.view`, normalized the way DataFusion resolves it.
    pub name: String,
    /// The database (catalog) the statement ran in, which resolves its
    /// unqualified names.
    pub database: String,
    /// The `CREATE VIEW` / `CREATE EXTERNAL TABLE` statement as written.
    pub sql: String,
}

/// A source created with `CREATE SOURCE`. Secrets are never stored here: a
/// password is referenced by the name of the variable that holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceEntry {
    pub name: String,
    pub kind: String,
    pub options: Vec<(String, String)>,
    /// Microseconds since the Unix epoch.
    pub created_at_us: i64,
}

/// A site created with `CREATE SITE`: its token only as a salted hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SiteEntry {
    pub name: String,
    pub credential: crate::sites::SiteCredential,
    /// Microseconds since the Unix epoch.
    pub created_at_us: i64,
}

/// An encoder made by `CREATE ENCODER`: its name and model directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EncoderEntry {
    pub name: String,
    pub path: String,
    /// Microseconds since the Unix epoch.
    pub created_at_us: i64,
}

/// Everything in `catalog.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CatalogState {
    pub sources: Vec<SourceEntry>,
    pub views: Vec<ViewEntry>,
    /// Absent in files written before sites existed.
    #[serde(default)]
    pub sites: Vec<SiteEntry>,
    /// Encoders made by `CREATE ENCODER`.
    #[serde(default)]
    pub encoders: Vec<EncoderEntry>,
    /// fedsql-owned tables (`catalog.schema.table`), whose rows are
    /// snapshotted under `tables/` (see `owned_tables`).
    #[serde(default)]
    pub tables: Vec<String>,
}

/// Reads and writes [`CatalogState`] under the data dir.
#[derive(Debug)]
pub struct CatalogStore {
    path: PathBuf,
}

impl CatalogStore {
    /// The store for `data_dir` (the file need not exist yet).
    pub fn new(data_dir: &Path) -> Self {
        CatalogStore {
            path: data_dir.join("catalog.json"),
        }
    }

    /// Loads the state; a missing file is an empty state. Temporary files
    /// of a write that a crash interrupted are removed first (the state
    /// itself is the old or the new one, never torn).
    pub fn load(&self) -> Result<CatalogState> {
        match fedsql_connectors::fsutil::remove_stale_temp_files(&self.path) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                removed = n,
                "removed temporary catalog files of an interrupted write"
            ),
            Err(e) => return Err(ServerError::io(&self.path, e)),
        }
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ServerError::Config(format!(
                    "{} is not valid catalog state ({e}); restore it from a backup or remove it",
                    self.path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CatalogState::default()),
            Err(e) => Err(ServerError::io(&self.path, e)),
        }
    }

    /// Saves the state atomically.
    pub fn save(&self, state: &CatalogState) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| ServerError::Config(format!("cannot serialize catalog state: {e}")))?;
        fedsql_connectors::fsutil::write_atomic(&self.path, &bytes)
            .map_err(|e| ServerError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = CatalogStore::new(dir.path());
        assert_eq!(store.load().unwrap(), CatalogState::default());
        let state = CatalogState {
            sources: vec![],
            views: vec![ViewEntry {
                name: "demo.public.v".into(),
                database: "demo".into(),
                sql: "CREATE VIEW v AS SELECT 1".into(),
            }],
            sites: vec![SiteEntry {
                name: "eu".into(),
                credential: crate::sites::SiteCredential::new("token"),
                created_at_us: 1,
            }],
            encoders: vec![EncoderEntry {
                name: "minilm".into(),
                path: "/models/minilm".into(),
                created_at_us: 2,
            }],
            tables: vec!["demo.marts.t".into()],
        };
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        std::fs::write(dir.path().join("catalog.json"), b"{").unwrap();
        assert!(store
            .load()
            .unwrap_err()
            .to_string()
            .contains("catalog.json"));
    }
}
