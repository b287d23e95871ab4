//! Flight SQL sessions: one DataFusion session per bearer token (or, without
//! authentication, per client address) and database, so `SET` sticks between
//! calls as it does on a Postgres connection. Idle sessions are dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::prelude::SessionContext;

use super::auth::Caller;
use crate::engine::Engine;
use crate::error::Result;

/// How long an unused session is kept.
const IDLE_TTL: Duration = Duration::from_secs(3600);

/// One client's session.
pub struct FlightSession {
    /// The database (catalog) unqualified names resolve in.
    pub database: String,
    /// Who the session belongs to.
    pub user: String,
    /// The DataFusion session, created by [`Engine::session_context`] like
    /// every Postgres-wire connection's.
    pub ctx: SessionContext,
    last_used: Mutex<Instant>,
}

/// All live sessions.
#[derive(Default)]
pub struct Sessions {
    by_key: Mutex<HashMap<(String, String), Arc<FlightSession>>>,
}

impl Sessions {
    /// The caller's session on `database` (`None`: the default database),
    /// created on first use.
    pub fn get(
        &self,
        engine: &Engine,
        caller: &Caller,
        database: Option<&str>,
    ) -> Result<Arc<FlightSession>> {
        let database = engine.resolve_database(database)?;
        let key = (caller.session_key.clone(), database.clone());
        let now = Instant::now();
        let mut sessions = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(session) = sessions.get(&key) {
            *session.last_used.lock().unwrap_or_else(|p| p.into_inner()) = now;
            return Ok(Arc::clone(session));
        }
        sessions.retain(|_, s| {
            now.duration_since(*s.last_used.lock().unwrap_or_else(|p| p.into_inner())) < IDLE_TTL
        });
        let session = Arc::new(FlightSession {
            ctx: engine.session_context(&database)?,
            database,
            user: caller.user.clone(),
            last_used: Mutex::new(now),
        });
        sessions.insert(key, Arc::clone(&session));
        Ok(session)
    }
}
