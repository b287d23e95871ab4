//! Remote scans that DataFusion reads as several partitions.
//!
//! datafusion-federation plans every remote query as one
//! `VirtualExecutionPlan` with one partition. A source that can split a
//! plain table scan into key ranges (Postgres) says so through
//! [`ScanPartitioner`]; such a scan is then planned as a
//! [`PartitionedScanExec`] with N partitions — N Flight endpoints, N
//! streams DataFusion consumes in parallel — each reading one range.
//!
//! The remote query's SQL is written by the federation's unparser when the
//! scan executes, inside the executor's `execute(sql, …)`, which has no
//! partition argument; [`PartitionedScanExec::execute`] therefore names the
//! partition to the executor in a thread-local for the duration of that
//! synchronous call ([`current_task`]).

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::error::Result;
use datafusion::execution::context::SessionState;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion::optimizer::optimizer::{Optimizer, OptimizerConfig, OptimizerRule};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterPushdownPhase, FilterPushdownPropagation,
};
use datafusion::physical_plan::{
    displayable, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use datafusion_federation::schema_cast::SchemaCastScanExec;
use datafusion_federation::sql::{SQLExecutor, SQLFederationProvider, VirtualExecutionPlan};
use datafusion_federation::{FederatedPlanNode, FederationPlanner};

use super::fallback::{without_pushdown, FallbackExec};
use crate::remote_log::RemoteQueryObserver;

/// A source that can read some federated plans as several partitions.
pub trait ScanPartitioner: fmt::Debug + Send + Sync {
    /// How many partitions `plan` (a sub-plan about to be sent to the
    /// source) is read as; 1 when it cannot be split.
    fn partitions(&self, plan: &LogicalPlan) -> usize;
}

/// State the partitions of one scan share (the key bounds, read once so
/// every partition cuts the same ranges).
#[derive(Debug, Default)]
pub struct SharedSplit {
    /// `(min, max)` of the split key; `None` for an empty table.
    pub bounds: tokio::sync::OnceCell<Option<(i64, i64)>>,
}

/// Which partition of how many the executor is asked for.
#[derive(Debug, Clone)]
pub struct PartitionTask {
    pub partition: usize,
    pub partitions: usize,
    pub shared: Arc<SharedSplit>,
}

impl PartitionTask {
    /// This partition's key range given the scan's `(min, max)` key bounds
    /// (`None`: an empty table, which the first partition's open range
    /// answers); `None` when the partition has no range to read.
    pub fn key_range(&self, bounds: Option<(i64, i64)>) -> Option<(i64, Option<i64>)> {
        match bounds {
            None => (self.partition == 0).then_some((i64::MIN, None)),
            Some((min, max)) => super::split::ranges(min, max, self.partitions)
                .get(self.partition)
                .copied(),
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<PartitionTask>> = const { RefCell::new(None) };
}

/// The partition a [`PartitionedScanExec`] is executing on this thread, for
/// the executor's `execute` to read.
pub fn current_task() -> Option<PartitionTask> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Clears the thread-local when `execute` returns or unwinds.
struct TaskGuard;

impl Drop for TaskGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}

/// The federation provider of a SQL source, whose scans `partitioner` may
/// split (`None`: every remote query is one partition, as in
/// datafusion-federation's own provider).
///
/// A remote query of one partition falls back to less pushdown when the
/// source rejects it ([`FallbackExec`]), told to `observer`.
pub fn federation_provider(
    executor: Arc<dyn SQLExecutor>,
    partitioner: Option<Arc<dyn ScanPartitioner>>,
    observer: Option<Arc<dyn RemoteQueryObserver>>,
) -> SQLFederationProvider {
    let planner = Arc::new(RemotePlanner {
        executor: Arc::clone(&executor),
        partitioner,
        observer,
    });
    SQLFederationProvider {
        optimizer: Arc::new(Optimizer::with_rules(vec![Arc::new(FederateRule {
            planner,
        })])),
        executor,
    }
}

/// Wraps a sub-plan in a `Federated` node planned by [`RemotePlanner`]
/// (datafusion-federation's `SQLFederationOptimizerRule`, with our planner).
#[derive(Debug)]
struct FederateRule {
    planner: Arc<RemotePlanner>,
}

impl OptimizerRule for FederateRule {
    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        if let LogicalPlan::Extension(Extension { node }) = &plan {
            if node.name() == "Federated" {
                return Ok(Transformed::no(plan));
            }
        }
        let planner: Arc<dyn FederationPlanner> = Arc::clone(&self.planner) as _;
        let mut plan = LogicalPlan::Extension(Extension {
            node: Arc::new(FederatedPlanNode::new(plan, planner)),
        });
        if let Some(mut rewriter) = self.planner.executor.logical_optimizer() {
            plan = rewriter(plan)?;
        }
        Ok(Transformed::yes(plan))
    }

    fn name(&self) -> &str {
        "federate_sql"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }
}

/// Plans a federated sub-plan as datafusion-federation does, split into
/// partitions when the source can.
#[derive(Debug)]
struct RemotePlanner {
    executor: Arc<dyn SQLExecutor>,
    partitioner: Option<Arc<dyn ScanPartitioner>>,
    observer: Option<Arc<dyn RemoteQueryObserver>>,
}

#[async_trait]
impl FederationPlanner for RemotePlanner {
    async fn plan_federation(
        &self,
        node: &FederatedPlanNode,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = node.plan().clone();
        let schema = Arc::new(plan.schema().as_arrow().clone());
        let partitions = self
            .partitioner
            .as_ref()
            .map_or(1, |p| p.partitions(&plan).max(1));
        let statistics = self.executor.statistics(&plan).await?;
        let remote = Arc::new(VirtualExecutionPlan::new(
            plan.clone(),
            Arc::clone(&self.executor),
            statistics,
        ));
        let cast: Arc<dyn ExecutionPlan> =
            Arc::new(SchemaCastScanExec::new(Arc::clone(&remote) as _, schema));
        if partitions == 1 {
            // A scan split into partitions is a plain scan already: nothing
            // less could be pushed down.
            let fallback = session
                .as_any()
                .downcast_ref::<SessionState>()
                .and_then(without_pushdown);
            return Ok(match fallback {
                Some(state) => Arc::new(FallbackExec::new(
                    cast,
                    plan,
                    state,
                    self.executor.name(),
                    self.observer.clone(),
                )),
                None => cast,
            });
        }
        Ok(Arc::new(PartitionedScanExec::new(cast, remote, partitions)))
    }
}

/// A remote scan read as `partitions` partitions, each one key range.
///
/// A leaf to DataFusion: the single-partition plan inside is executed once
/// per partition, so no optimizer may rearrange it.
#[derive(Debug)]
pub struct PartitionedScanExec {
    input: Arc<dyn ExecutionPlan>,
    /// Shown by `EXPLAIN` (the SQL sent).
    remote: Arc<VirtualExecutionPlan>,
    partitions: usize,
    shared: Arc<SharedSplit>,
    properties: Arc<PlanProperties>,
}

impl PartitionedScanExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        remote: Arc<VirtualExecutionPlan>,
        partitions: usize,
    ) -> Self {
        let properties = Arc::new(
            input
                .properties()
                .as_ref()
                .clone()
                .with_partitioning(Partitioning::UnknownPartitioning(partitions)),
        );
        PartitionedScanExec {
            input,
            remote,
            partitions,
            shared: Arc::default(),
            properties,
        }
    }
}

impl DisplayAs for PartitionedScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PartitionedScanExec: partitions={}, {}",
            self.partitions,
            displayable(self.remote.as_ref()).one_line()
        )
    }
}

impl ExecutionPlan for PartitionedScanExec {
    fn name(&self) -> &'static str {
        "PartitionedScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        // The join filters the remote scan holds.
        self.remote.apply_expressions(f)
    }

    /// Hands the dynamic join filters to the remote scan inside, as
    /// datafusion-federation's own leaf takes them, so every partition's
    /// query can be narrowed to the joining keys (`join_filter`).
    fn handle_child_pushdown_result(
        &self,
        phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        let inner =
            self.remote
                .handle_child_pushdown_result(phase, child_pushdown_result, config)?;
        let remote = inner
            .updated_node
            .as_ref()
            .and_then(|n| n.downcast_ref::<VirtualExecutionPlan>())
            .cloned();
        let Some(remote) = remote else {
            return Ok(FilterPushdownPropagation {
                filters: inner.filters,
                updated_node: None,
            });
        };
        let remote = Arc::new(remote);
        let input: Arc<dyn ExecutionPlan> = Arc::new(SchemaCastScanExec::new(
            Arc::clone(&remote) as _,
            self.input.schema(),
        ));
        let node = PartitionedScanExec::new(input, remote, self.partitions);
        Ok(FilterPushdownPropagation {
            filters: inner.filters,
            updated_node: Some(Arc::new(node)),
        })
    }

    fn replace_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
        _: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        CURRENT.with(|c| {
            *c.borrow_mut() = Some(PartitionTask {
                partition,
                partitions: self.partitions,
                shared: Arc::clone(&self.shared),
            })
        });
        let _guard = TaskGuard;
        self.input.execute(0, context)
    }
}

/// The batches of `fetch` (which connects and sends the query when first
/// polled, not when the plan is built), as DataFusion's stream.
pub fn lazy_stream<S>(
    schema: datafusion::arrow::datatypes::SchemaRef,
    fetch: impl std::future::Future<Output = std::result::Result<S, crate::ConnectorError>>
        + Send
        + 'static,
) -> SendableRecordBatchStream
where
    S: futures::Stream<Item = Result<datafusion::arrow::array::RecordBatch>> + Send + 'static,
{
    use futures::TryStreamExt;
    let stream = futures::stream::once(async move {
        fetch
            .await
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
    })
    .try_flatten();
    Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, stream))
}
