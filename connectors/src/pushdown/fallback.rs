//! Falling back to less pushdown when a source rejects the SQL it is sent.
//!
//! The unparser can write SQL a source will not run: a shape the unparser
//! gets wrong, a function the source lacks or the login may not call. Such
//! a rejection comes back before any row, as a syntax, undefined-object or
//! permission error (SQLSTATE class `42`, `0A000`, ODBC 2's `37000`, or
//! MySQL's `23000` for an ambiguous column),
//! or as columns of another shape than planned (an unparser bug). The
//! query is still valid, so [`FallbackExec`] plans the rejected sub-plan again with
//! `fedsql.pushdown = off` (the source then serves plain scans) and fedsql
//! computes the rest: the client gets its answer, and the fallback and its
//! reason are logged (`fedsql.system.queries`, protocol `fallback`) and
//! shown by `EXPLAIN ANALYZE`.
//!
//! Only a rejection before the first row falls back: once rows have been
//! delivered, switching plans could repeat or lose rows, so later errors
//! stay errors.

use std::fmt;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::SessionState;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::filter_pushdown::{FilterDescription, FilterPushdownPhase};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    execute_stream, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};

use super::FedsqlOptions;
use crate::error::ConnectorError;
use crate::remote_log::RemoteQueryObserver;

/// When `error` is a source refusing the query it was sent (so the same
/// result can be had with less pushed down), not a failure of the source:
/// the source's SQLSTATE and message.
pub fn rejection(error: &DataFusionError) -> Option<String> {
    let mut current: &(dyn std::error::Error + 'static) = error;
    loop {
        if let Some(e) = current.downcast_ref::<ConnectorError>() {
            return match e {
                // MySQL and MariaDB report an ambiguous column (error 1052)
                // as 23000, the integrity-constraint class: for the SELECTs
                // fedsql sends, that can only be the SQL it wrote.
                ConnectorError::Remote { sqlstate, .. }
                    if sqlstate.starts_with("42")
                        || sqlstate == "0A000"
                        || sqlstate == "37000"
                        || sqlstate == "23000" =>
                {
                    Some(format!("{sqlstate} {e}"))
                }
                ConnectorError::UnexpectedShape { .. } => Some(e.to_string()),
                _ => None,
            };
        }
        // DataFusion wraps errors in Context/Shared/External layers.
        let next = match current.downcast_ref::<DataFusionError>() {
            Some(DataFusionError::External(inner)) => Some(inner.as_ref() as _),
            Some(DataFusionError::Shared(inner)) => Some(inner.as_ref() as _),
            Some(DataFusionError::Context(_, inner)) => Some(inner.as_ref() as _),
            _ => current.source(),
        };
        match next {
            Some(next) => current = next,
            None => return None,
        }
    }
}

/// A session like `state` with `fedsql.pushdown = off`; `None` when pushdown
/// is already off there (then there is nothing to fall back to).
pub fn without_pushdown(state: &SessionState) -> Option<SessionState> {
    let options = state.config().options().extensions.get::<FedsqlOptions>();
    if options.is_some_and(|o| !o.pushdown_enabled()) {
        return None;
    }
    let mut state = state.clone();
    let mut off = options.cloned().unwrap_or_default();
    off.pushdown = "off".to_string();
    state.config_mut().options_mut().extensions.insert(off);
    Some(state)
}

/// A remote query that is planned again without pushdown if its source
/// rejects it (see the module docs). One partition, like the remote scan it
/// wraps; filters pushed from above reach that scan.
pub struct FallbackExec {
    remote: Arc<dyn ExecutionPlan>,
    /// The sub-plan the remote query was unparsed from.
    plan: LogicalPlan,
    /// The session to plan it in again, pushdown off.
    state: Arc<SessionState>,
    source: String,
    observer: Option<Arc<dyn RemoteQueryObserver>>,
    /// Why it fell back, once it has (shown by `EXPLAIN ANALYZE`).
    taken: Arc<Mutex<Option<String>>>,
}

impl FallbackExec {
    /// Wraps `remote`, the one-partition scan of `plan` at `source`.
    pub fn new(
        remote: Arc<dyn ExecutionPlan>,
        plan: LogicalPlan,
        state: SessionState,
        source: &str,
        observer: Option<Arc<dyn RemoteQueryObserver>>,
    ) -> Self {
        FallbackExec {
            remote,
            plan,
            state: Arc::new(state),
            source: source.to_string(),
            observer,
            taken: Arc::default(),
        }
    }
}

impl fmt::Debug for FallbackExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackExec")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl DisplayAs for FallbackExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        match taken.as_deref() {
            None => write!(f, "FallbackExec: source={}", self.source),
            Some(reason) => write!(
                f,
                "FallbackExec: source={}, fell back to plain scans: {reason}",
                self.source
            ),
        }
    }
}

impl ExecutionPlan for FallbackExec {
    fn name(&self) -> &'static str {
        "FallbackExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.remote.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.remote]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (Some(remote), true) = (children.pop(), children.is_empty()) else {
            return Err(DataFusionError::Internal(
                "FallbackExec has exactly one child".into(),
            ));
        };
        Ok(Arc::new(FallbackExec {
            remote,
            plan: self.plan.clone(),
            state: Arc::clone(&self.state),
            source: self.source.clone(),
            observer: self.observer.clone(),
            taken: Arc::clone(&self.taken),
        }))
    }

    fn gather_filters_for_pushdown(
        &self,
        _phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        FilterDescription::from_children(parent_filters, &self.children())
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let mut remote = self.remote.execute(partition, Arc::clone(&context))?;
        let schema = remote.schema();
        let plan = self.plan.clone();
        let state = Arc::clone(&self.state);
        let source = self.source.clone();
        let observer = self.observer.clone();
        let taken = Arc::clone(&self.taken);
        let stream = futures::stream::once(async move {
            type Batches = futures::stream::BoxStream<'static, Result<RecordBatch>>;
            let first = remote.next().await;
            let rejection = match first
                .as_ref()
                .and_then(|r| r.as_ref().err())
                .and_then(rejection)
            {
                Some(rejection) => rejection,
                None => {
                    return Ok::<Batches, DataFusionError>(
                        futures::stream::iter(first).chain(remote).boxed(),
                    )
                }
            };
            drop(remote);
            tracing::info!(source = %source, reason = %rejection, "pushdown fell back");
            if let Some(observer) = &observer {
                observer.fell_back(&source, &rejection);
            }
            *taken.lock().unwrap_or_else(|p| p.into_inner()) = Some(rejection);
            let local = state.create_physical_plan(&plan).await?;
            Ok(execute_stream(local, context)?.boxed())
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
