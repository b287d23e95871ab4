//! A site as a training client: each call becomes a task for the site's
//! process, which does the work with its own [`LocalClient`] over the same
//! weight exchange.
//!
//! A site that restarted has lost the rows it prepared; before its next
//! call the client prepares it again (the same query and encoding), so a
//! site that comes back rejoins the next round.
//!
//! [`LocalClient`]: fedsql_udfs::client::LocalClient

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fedsql_udfs::client::{TargetMoments, TrainingClient};
use fedsql_udfs::exchange::ExchangeAccess;
use fedsql_udfs::model::Architecture;
use fedsql_udfs::train::{LocalConfig, Metrics};
use fedsql_udfs::UdfError;

use super::protocol::{Reply, Task};
use super::registry::SiteRegistry;

/// One site of a training run.
pub struct RemoteSite {
    name: String,
    registry: Arc<SiteRegistry>,
    run: String,
    /// The `Prepare` and `Setup` tasks, sent again to a restarted site.
    prepare: Task,
    setup: Task,
    /// The site process (session) that holds this run's rows.
    prepared_session: Mutex<Option<String>>,
    timeout: Duration,
}

impl RemoteSite {
    /// A client for site `name` that was prepared (in `session`) with
    /// `prepare` and will be set up with `setup`.
    pub fn new(
        name: String,
        registry: Arc<SiteRegistry>,
        run: String,
        (prepare, setup): (Task, Task),
        session: Option<String>,
        timeout: Duration,
    ) -> RemoteSite {
        RemoteSite {
            name,
            registry,
            run,
            prepare,
            setup,
            prepared_session: Mutex::new(session),
            timeout,
        }
    }

    /// Sends `task` and returns the reply, a site's failure as an error.
    pub async fn ask(&self, task: Task) -> Result<Reply, UdfError> {
        self.ask_within(task, self.timeout).await
    }

    /// [`RemoteSite::ask`], waiting up to `timeout` for the reply.
    async fn ask_within(&self, task: Task, timeout: Duration) -> Result<Reply, UdfError> {
        match self.registry.call(&self.name, task, timeout).await {
            Ok(Reply::Failed { message }) => {
                Err(UdfError::Training(format!("site {}: {message}", self.name)))
            }
            Ok(reply) => Ok(reply),
            Err(e) => Err(UdfError::Training(e.to_string())),
        }
    }

    /// Sets the site up for this run, preparing it again first if its
    /// process changed since it was prepared.
    pub async fn ensure_ready(&self, force_setup: bool) -> Result<(), UdfError> {
        let current = self.registry.session(&self.name);
        let prepared = self
            .prepared_session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if current == prepared && !force_setup {
            return Ok(());
        }
        if current != prepared {
            tracing::info!(site = %self.name, "site restarted; preparing it again");
            self.ask(self.prepare.clone()).await?;
        }
        self.ask(self.setup.clone()).await?;
        *self
            .prepared_session
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = current;
        Ok(())
    }

    /// One round at the site, plain or securely aggregated.
    async fn train_round(
        &self,
        round: u32,
        access: &ExchangeAccess,
        arch: &Architecture,
        config: LocalConfig,
        fail: bool,
        secure: bool,
    ) -> Result<u64, UdfError> {
        if fail {
            return Err(UdfError::Training(
                "fault injected (FEDSQL_FAULT_INJECT)".into(),
            ));
        }
        self.ensure_ready(false).await?;
        let task = Task::Train {
            run: self.run.clone(),
            round,
            exchange: access.clone(),
            arch: arch.clone(),
            config,
            secure,
        };
        // A secure round's site answers after the whole round: its
        // training (bounded by round_timeout), then the unmask stage
        // (bounded by another).
        let timeout = if secure {
            self.timeout * 2
        } else {
            self.timeout
        };
        match self.ask_within(task, timeout).await? {
            Reply::Trained { fetched } => Ok(fetched),
            other => Err(unexpected(&self.name, &other)),
        }
    }

    /// Tells the site to forget the run (best effort).
    pub async fn finish(&self) {
        let _ = self
            .registry
            .call(
                &self.name,
                Task::Finish {
                    run: self.run.clone(),
                },
                Duration::from_secs(10),
            )
            .await;
    }
}

fn unexpected(site: &str, reply: &Reply) -> UdfError {
    UdfError::Training(format!("site {site} answered {reply:?} out of turn"))
}

#[async_trait]
impl TrainingClient for RemoteSite {
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
    ) -> Result<u64, UdfError> {
        self.train_round(round, access, arch, config, fail, false)
            .await
    }

    async fn train_secure(
        &self,
        round: u32,
        access: &ExchangeAccess,
        arch: &Architecture,
        config: LocalConfig,
        fail: bool,
    ) -> Result<u64, UdfError> {
        self.train_round(round, access, arch, config, fail, true)
            .await
    }

    async fn evaluate(
        &self,
        key: u32,
        access: &ExchangeAccess,
        arch: &Architecture,
        _weights: &Arc<Vec<f32>>,
    ) -> Result<(Metrics, TargetMoments), UdfError> {
        self.ensure_ready(false).await?;
        let task = Task::Evaluate {
            run: self.run.clone(),
            key,
            exchange: access.clone(),
            arch: arch.clone(),
        };
        match self.ask(task).await? {
            Reply::Evaluated { metrics, moments } => Ok((metrics, moments)),
            other => Err(unexpected(&self.name, &other)),
        }
    }
}
