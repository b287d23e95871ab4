//! `RESUME TRAINING name`: a `TRAIN MODEL` that a coordinator restart (or
//! an error such as too few sites) cut off goes on from its last completed
//! round, as its checkpoint (`fedsql_udfs::checkpoint`) left it.
//!
//! Resuming is explicit rather than automatic at start-up: the input is
//! read again (sites prepare again), which the user may want to do only
//! once the sites are back; `fedsql.system.training_runs` lists what can be
//! resumed.

use datafusion::prelude::SessionContext;
use fedsql_sql::{FedsqlStatement, Statement};
use fedsql_udfs::checkpoint::CheckpointSummary;

use crate::engine::{Engine, FedsqlOutcome};
use crate::error::{Result, ServerError};
use crate::training::{current_database, udf_error};

impl Engine {
    /// The runs of `model` that stopped before they were saved (not the
    /// ones running now), newest first.
    pub(crate) fn interrupted_runs(&self, model: &str) -> Vec<CheckpointSummary> {
        let mut runs: Vec<CheckpointSummary> = self
            .models()
            .training_runs()
            .into_iter()
            .filter(|r| r.model == model && r.status != "running")
            .filter_map(|r| r.checkpoint)
            .collect();
        runs.reverse();
        runs
    }

    /// Runs `RESUME TRAINING name` in the session `ctx`.
    pub(crate) async fn resume_training(
        &self,
        ctx: &SessionContext,
        name: &str,
    ) -> Result<FedsqlOutcome> {
        let registry = self.models();
        if registry
            .training_runs()
            .iter()
            .any(|r| r.model == name && r.status == "running")
        {
            return Err(ServerError::Query {
                sqlstate: "55006".into(),
                message: format!("model {name} is being trained now"),
                position: None,
            });
        }
        let Some(checkpoint) = registry.checkpoints().latest(name).map_err(udf_error)? else {
            return Err(ServerError::UndefinedObject {
                kind: "interrupted training run of model",
                name: name.to_string(),
            });
        };
        let summary = &checkpoint.summary;
        let database = current_database(ctx);
        if summary.database != database {
            return Err(ServerError::Query {
                sqlstate: "55000".into(),
                message: format!(
                    "model {name}'s run was started in database {}; resume it there (connected to {database})",
                    summary.database
                ),
                position: None,
            });
        }
        let statement = match fedsql_sql::parse(&summary.statement) {
            Ok(mut statements) if statements.len() == 1 => statements.pop(),
            _ => None,
        };
        let Some(Statement::Fedsql {
            statement: FedsqlStatement::TrainModel(tm),
            ..
        }) = statement
        else {
            return Err(ServerError::Internal(format!(
                "the checkpoint of model {name} holds a statement that does not parse: {}",
                summary.statement
            )));
        };
        self.train(ctx, &tm, Some(checkpoint)).await
    }
}
