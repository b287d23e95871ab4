//! The federation optimizer rule with fedsql's pushdown policy.
//!
//! The plan walk is datafusion-federation's `FederationOptimizerRule`
//! (Apache-2.0), unchanged except for the two places marked "fedsql:" that
//! consult the source's [`PushdownPolicy`](super::PushdownPolicy) and the
//! `fedsql.pushdown` setting. datafusion-federation has no hook for either,
//! so this rule takes the place of its rule in the optimizer.

use std::sync::Arc;

use datafusion::common::not_impl_err;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{Expr, Extension, Filter, LogicalPlan, TableScan};
use datafusion::optimizer::optimizer::{Optimizer, OptimizerConfig, OptimizerRule};
use datafusion_federation::{get_table_source, FederationProvider, FederationProviderRef};

use super::needed::{needed_from_inputs, project_needed, Needed};
use super::policy::{DialectPolicy, PushdownPolicy, SourceDialect};
use super::FedsqlOptions;

/// Finds the largest sub-plans that one source may run, and federates them.
#[derive(Debug, Default)]
pub struct PolicyFederationRule;

impl PolicyFederationRule {
    /// DataFusion's default optimizer rules with this rule right after
    /// `push_down_filter`: by then comma joins have become keyed joins and
    /// every filter sits on the input it restricts, so the remote side of a
    /// cross-source join gets its filters and a same-source join inside a
    /// larger query is sent whole. Semi/anti joins are reshaped for the
    /// DataFusion 55 unparser (see `semi_join`); nodes with subquery
    /// expressions stay local (see `allowed`).
    ///
    /// `optimize_projections` does not run ahead of this rule (it made the
    /// unparser write derived tables that join conditions cannot name, and
    /// gave a wrong TPC-H q15 once worked around); instead the walk tracks
    /// which columns the local plan uses and each remote query selects only
    /// those (see `needed`).
    pub fn optimizer_rules() -> Vec<Arc<dyn OptimizerRule + Send + Sync>> {
        let mut rules = Optimizer::new().rules;
        let position = rules
            .iter()
            .position(|r| r.name() == "push_down_filter")
            .map_or(rules.len(), |p| p + 1);
        rules.insert(position, Arc::new(PolicyFederationRule));
        rules.insert(
            position,
            Arc::new(super::partial_aggregate::PartialAggregateRule),
        );
        rules.insert(
            position,
            Arc::new(super::union_aggregate::UnionAggregateRule),
        );
        rules
    }
}

impl OptimizerRule for PolicyFederationRule {
    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let pass = Pass {
            pushdown: pushdown_enabled(config),
        };
        match pass.optimize_plan_recursively(&plan, true, &None, config)? {
            (Some(optimized_plan), _) => Ok(Transformed::yes(optimized_plan)),
            (None, _) => Ok(Transformed::no(plan)),
        }
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn name(&self) -> &str {
        "fedsql_federation"
    }
}

/// Whether `plan` may be part of a query sent to `provider`'s source.
fn allowed(provider: &FederationProviderRef, plan: &LogicalPlan, pushdown: bool) -> bool {
    if provider.name() == NopFederationProvider::NAME {
        // A local table: DataFusion runs it, there is nothing to push.
        return true;
    }
    if !pushdown {
        return matches!(plan, LogicalPlan::TableScan(_));
    }
    // A node with a subquery in its expressions runs in fedsql; the subquery
    // is federated on its own. Sent whole, the subquery's generated names
    // are not renamed consistently (a `42703` at planning).
    let has_subquery = plan.expressions().iter().any(|e| {
        e.exists(|e| {
            Ok(matches!(
                e,
                Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_)
            ))
        })
        .unwrap_or(true)
    });
    if has_subquery {
        return false;
    }
    match provider.compute_context() {
        Some(context) => match SourceDialect::from_compute_context(&context) {
            Some(dialect) => DialectPolicy(dialect).allows(plan),
            // Unknown dialects get plain scans only.
            None => matches!(plan, LogicalPlan::TableScan(_)),
        },
        None => matches!(plan, LogicalPlan::TableScan(_)),
    }
}

/// The one source that may run all of `plan` (policy included), if any; a
/// plan over local tables or several sources has none.
pub(super) fn sole_source(plan: &LogicalPlan) -> Result<Option<FederationProviderRef>> {
    let pass = Pass { pushdown: true };
    Ok(pass
        .scan_plan_recursively(plan)?
        .provider()
        .filter(|p| p.name() != NopFederationProvider::NAME))
}

/// Whether fedsql's `fedsql.pushdown` setting is on in `config`.
pub(super) fn pushdown_enabled(config: &dyn OptimizerConfig) -> bool {
    config
        .options()
        .extensions
        .get::<FedsqlOptions>()
        .is_none_or(FedsqlOptions::pushdown_enabled)
}

/// One optimization of one plan, with the session's setting.
struct Pass {
    pushdown: bool,
}

impl Pass {
    /// Scans a plan to see if it belongs to a single [`FederationProvider`].
    fn scan_plan_recursively(&self, plan: &LogicalPlan) -> Result<ScanResult> {
        let mut sole_provider: ScanResult = ScanResult::None;

        plan.apply(&mut |p: &LogicalPlan| -> Result<TreeNodeRecursion> {
            let exprs_provider = self.scan_plan_exprs(p)?;
            sole_provider.merge(exprs_provider);

            if sole_provider.is_ambiguous() {
                return Ok(TreeNodeRecursion::Stop);
            }

            let sub_provider = get_leaf_provider(p)?;
            sole_provider.add(sub_provider);

            Ok(sole_provider.check_recursion())
        })?;

        // fedsql: a sub-plan goes to its source only if every node is allowed there.
        if let ScanResult::Distinct(provider) = &sole_provider {
            if plan.exists(|p| Ok(!allowed(provider, p, self.pushdown)))? {
                return Ok(ScanResult::Ambiguous);
            }
        }
        Ok(sole_provider)
    }

    /// Scans a plan's expressions to see if it belongs to a single [`FederationProvider`].
    fn scan_plan_exprs(&self, plan: &LogicalPlan) -> Result<ScanResult> {
        let mut sole_provider: ScanResult = ScanResult::None;

        let exprs = plan.expressions();
        for expr in &exprs {
            let expr_result = self.scan_expr_recursively(expr)?;
            sole_provider.merge(expr_result);

            if sole_provider.is_ambiguous() {
                return Ok(sole_provider);
            }
        }

        Ok(sole_provider)
    }

    /// scans an expression to see if it belongs to a single [`FederationProvider`]
    fn scan_expr_recursively(&self, expr: &Expr) -> Result<ScanResult> {
        let mut sole_provider: ScanResult = ScanResult::None;

        expr.apply(&mut |e: &Expr| -> Result<TreeNodeRecursion> {
            // TODO: Support other types of sub-queries
            match e {
                Expr::ScalarSubquery(ref subquery) => {
                    let plan_result = self.scan_plan_recursively(&subquery.subquery)?;

                    sole_provider.merge(plan_result);
                    Ok(sole_provider.check_recursion())
                }
                Expr::InSubquery(_) => not_impl_err!("InSubquery"),
                Expr::OuterReferenceColumn(..) => {
                    // Subqueries that reference outer columns are not supported
                    // for now. We handle this here as ambiguity to force
                    // federation lower in the plan tree.
                    sole_provider = ScanResult::Ambiguous;
                    Ok(TreeNodeRecursion::Stop)
                }
                _ => Ok(TreeNodeRecursion::Continue),
            }
        })?;

        Ok(sole_provider)
    }

    /// Recursively finds the largest sub-plans that can be federated
    /// to a single FederationProvider.
    ///
    /// Returns a plan if a sub-tree was federated, otherwise None.
    ///
    /// Returns a ScanResult of all FederationProviders in the subtree.
    ///
    /// fedsql: `needed` is what the nodes above use of `plan`'s output; an
    /// input cut off as a remote query selects only what is needed of it.
    fn optimize_plan_recursively(
        &self,
        plan: &LogicalPlan,
        is_root: bool,
        needed: &Needed,
        _config: &dyn OptimizerConfig,
    ) -> Result<(Option<LogicalPlan>, ScanResult)> {
        let mut sole_provider: ScanResult = ScanResult::None;

        if let LogicalPlan::Extension(Extension { ref node }) = plan {
            if node.name() == "Federated" {
                // Avoid attempting double federation
                return Ok((None, ScanResult::Ambiguous));
            }
        }

        // Check if this plan node is a leaf that determines the FederationProvider
        let leaf_provider = get_leaf_provider(plan)?;

        // Check if the expressions contain, a potentially different, FederationProvider
        let exprs_result = self.scan_plan_exprs(plan)?;
        let optimize_expressions = exprs_result.is_some();

        // Return early if this is a leaf and there is no ambiguity with the expressions.
        if leaf_provider.is_some() && (exprs_result.is_none() || exprs_result == leaf_provider) {
            return Ok((None, leaf_provider.into()));
        }
        // Aggregate leaf & expression providers
        sole_provider.add(leaf_provider);
        sole_provider.merge(exprs_result);

        let inputs = plan.inputs();
        // Return early if there are no sources.
        if inputs.is_empty() && sole_provider.is_none() {
            return Ok((None, ScanResult::None));
        }

        // Recursively optimize inputs
        let input_needs = needed_from_inputs(plan, needed);
        let input_results = inputs
            .iter()
            .zip(&input_needs)
            .map(|(i, need)| self.optimize_plan_recursively(i, false, need, _config))
            .collect::<Result<Vec<_>>>()?;

        // Aggregate the input providers
        input_results.iter().for_each(|(_, scan_result)| {
            sole_provider.merge(scan_result.clone());
        });

        if sole_provider.is_none() {
            // No providers found
            // TODO: Is/should this be reachable?
            return Ok((None, ScanResult::None));
        }

        // fedsql: a node its source's policy refuses stays local, which makes
        // it (and every node above it) ambiguous, so its inputs are federated
        // on their own below.
        if let ScanResult::Distinct(provider) = &sole_provider {
            // An input without any source (a `VALUES` list) would be sent
            // along: each of its nodes must be allowed too.
            let sourceless_refused = || {
                inputs
                    .iter()
                    .zip(&input_results)
                    .filter(|(_, (_, result))| result.is_none())
                    .any(|(input, _)| {
                        input
                            .exists(|p| Ok(!allowed(provider, p, self.pushdown)))
                            .unwrap_or(true)
                    })
            };
            if !allowed(provider, plan, self.pushdown) || sourceless_refused() {
                sole_provider = ScanResult::Ambiguous;
            }
        }

        // If all sources are federated to the same provider
        if let ScanResult::Distinct(provider) = sole_provider {
            if !is_root {
                // The largest sub-plan is higher up.
                return Ok((None, ScanResult::Distinct(provider)));
            }

            // Analyze plans (EXPLAIN ANALYZE) cannot be converted to SQL by
            // the Unparser, so they must not be federated as a whole. Only the
            // inner query should be federated; DataFusion's AnalyzeExec will
            // handle executing it and collecting metrics.
            if matches!(plan, LogicalPlan::Analyze(_)) {
                // Fall through to federate children instead.
            } else {
                let Some(optimizer) = provider.optimizer() else {
                    // No optimizer provided
                    return Ok((None, ScanResult::None));
                };

                // If this is the root plan node; federate the entire plan
                let optimized = federate(&optimizer, plan.clone(), _config)?;
                return Ok((Some(optimized), ScanResult::None));
            }
        }

        // The plan is ambiguous; any input that is not yet optimized and has a
        // sole provider represents a largest sub-plan and should be federated.
        //
        // We loop over the input optimization results, federate where needed and
        // return a complete list of new inputs for the optimized plan.
        let new_inputs = input_results
            .into_iter()
            .enumerate()
            .map(|(i, (input_plan, input_result))| {
                if let Some(federated_plan) = input_plan {
                    // Already federated deeper in the plan tree
                    return Ok(federated_plan);
                }

                let Some(original_input) = inputs.get(i).map(|p| (*p).clone()) else {
                    return not_impl_err!("federation lost track of an input (this is a bug)");
                };
                if input_result.is_ambiguous() {
                    // Can happen if the input is already federated, so use
                    // the original input.
                    return Ok(original_input);
                }

                let Some(provider) = input_result.provider() else {
                    // No provider for this input; use the original input.
                    return Ok(original_input);
                };

                let Some(optimizer) = provider.optimizer() else {
                    // No optimizer for this input; use the original input.
                    return Ok(original_input);
                };

                // Replace the input with the federated counterpart (fedsql:
                // selecting only the columns needed above, and with what
                // the source can run of a filter it may not run exactly).
                let original_input =
                    with_prefilter(plan, &provider, original_input, self.pushdown)?;
                let wrapped = project_needed(original_input, &input_needs[i])?;
                let optimized = federate(&optimizer, wrapped, _config)?;

                Ok(optimized)
            })
            .collect::<Result<Vec<_>>>()?;

        // Optimize expressions if needed
        let new_expressions = if optimize_expressions {
            self.optimize_plan_exprs(plan, _config)?
        } else {
            plan.expressions()
        };

        // Construct the optimized plan
        let new_plan = plan.with_new_exprs(new_expressions, new_inputs)?;

        // Return the federated plan
        Ok((Some(new_plan), ScanResult::Ambiguous))
    }

    /// Optimizes all exprs of a plan
    fn optimize_plan_exprs(
        &self,
        plan: &LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Vec<Expr>> {
        plan.expressions()
            .iter()
            .map(|expr| {
                let transformed = expr
                    .clone()
                    .transform(&|e| self.optimize_expr_recursively(e, _config))?;
                Ok(transformed.data)
            })
            .collect::<Result<Vec<_>>>()
    }

    /// recursively optimize expressions
    /// Current logic: individually federate every sub-query.
    fn optimize_expr_recursively(
        &self,
        expr: Expr,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<Expr>> {
        match expr {
            Expr::ScalarSubquery(ref subquery) => {
                // Optimize as root to force federating the sub-query
                let (new_subquery, _) =
                    self.optimize_plan_recursively(&subquery.subquery, true, &None, _config)?;
                let Some(new_subquery) = new_subquery else {
                    return Ok(Transformed::no(expr));
                };
                Ok(Transformed::yes(Expr::ScalarSubquery(
                    subquery.with_plan(new_subquery.into()),
                )))
            }
            Expr::InSubquery(_) => not_impl_err!("InSubquery"),
            _ => Ok(Transformed::no(expr)),
        }
    }
}

/// fedsql: under a filter its source may not run exactly, the filter's
/// conjuncts the source runs exactly or loosely (a superset of the rows:
/// see [`DialectPolicy::loose_filter_ok`]) go to the source with `input`;
/// the whole filter still runs in fedsql above, so only fewer rows move.
fn with_prefilter(
    plan: &LogicalPlan,
    provider: &FederationProviderRef,
    input: LogicalPlan,
    pushdown: bool,
) -> Result<LogicalPlan> {
    let LogicalPlan::Filter(filter) = plan else {
        return Ok(input);
    };
    let dialect = provider
        .compute_context()
        .and_then(|c| SourceDialect::from_compute_context(&c));
    let (true, Some(dialect)) = (pushdown, dialect) else {
        return Ok(input);
    };
    let policy = DialectPolicy(dialect);
    let schema = Arc::clone(input.schema());
    let input = Arc::new(input);
    let mut kept = Vec::new();
    for conjunct in split_conjunction(&filter.predicate) {
        let exact = Filter::try_new(conjunct.clone(), Arc::clone(&input))
            .map(LogicalPlan::Filter)
            .is_ok_and(|f| allowed(provider, &f, pushdown));
        if exact || policy.loose_filter_ok(conjunct, &schema) {
            kept.push(conjunct.clone());
        }
    }
    Ok(match conjunction(kept) {
        Some(predicate) => LogicalPlan::Filter(Filter::try_new(predicate, input)?),
        None => Arc::unwrap_or_clone(input),
    })
}

/// Stands for tables DataFusion scans itself (not federated).
struct NopFederationProvider;

impl NopFederationProvider {
    const NAME: &'static str = "nop";
}

impl FederationProvider for NopFederationProvider {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn compute_context(&self) -> Option<String> {
        None
    }

    fn optimizer(&self) -> Option<Arc<Optimizer>> {
        None
    }
}

fn get_leaf_provider(plan: &LogicalPlan) -> Result<Option<FederationProviderRef>> {
    match plan {
        LogicalPlan::TableScan(TableScan { ref source, .. }) => {
            let Some(federated_source) = get_table_source(source)? else {
                return Ok(Some(Arc::new(NopFederationProvider)));
            };
            Ok(Some(federated_source.federation_provider()))
        }
        _ => Ok(None),
    }
}

/// Federates `plan` with generated names in the source's terms (fedsql:
/// see [`super::names`]), its output renamed back for the outer plan, and
/// its joins and limits in shapes the unparser writes correctly (see
/// [`super::semi_join`] and [`super::unparser_fixes`]).
fn federate(
    optimizer: &Optimizer,
    plan: LogicalPlan,
    config: &dyn OptimizerConfig,
) -> Result<LogicalPlan> {
    // Names first: it moves filters above table aliases, where the
    // reshaping of joins below finds them.
    let (plan, restore) = super::names::with_remote_names(plan)?;
    let plan = super::semi_join::reshape(plan)?;
    let plan = super::unparser_fixes::rewrite(plan)?;
    let federated = optimizer.optimize(plan, config, |_, _| {})?;
    match restore {
        Some(restore) => restore.apply(federated),
        None => Ok(federated),
    }
}

/// Whether the sources of a (sub-)plan are none, one, or several.
enum ScanResult {
    None,
    Distinct(FederationProviderRef),
    Ambiguous,
}

impl ScanResult {
    fn merge(&mut self, other: Self) {
        match (&self, &other) {
            (_, ScanResult::None) => {}
            (ScanResult::None, _) => *self = other,
            (ScanResult::Ambiguous, _) | (_, ScanResult::Ambiguous) => {
                *self = ScanResult::Ambiguous
            }
            (ScanResult::Distinct(provider), ScanResult::Distinct(other_provider)) => {
                if provider != other_provider {
                    *self = ScanResult::Ambiguous
                }
            }
        }
    }

    fn add(&mut self, provider: Option<FederationProviderRef>) {
        self.merge(ScanResult::from(provider))
    }

    fn is_ambiguous(&self) -> bool {
        matches!(self, ScanResult::Ambiguous)
    }

    fn is_none(&self) -> bool {
        matches!(self, ScanResult::None)
    }

    fn is_some(&self) -> bool {
        !self.is_none()
    }

    fn provider(self) -> Option<FederationProviderRef> {
        match self {
            ScanResult::Distinct(provider) => Some(provider),
            ScanResult::None | ScanResult::Ambiguous => None,
        }
    }

    fn check_recursion(&self) -> TreeNodeRecursion {
        if self.is_ambiguous() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        }
    }
}

impl Clone for ScanResult {
    fn clone(&self) -> Self {
        match self {
            ScanResult::None => ScanResult::None,
            ScanResult::Distinct(p) => ScanResult::Distinct(Arc::clone(p)),
            ScanResult::Ambiguous => ScanResult::Ambiguous,
        }
    }
}

impl From<Option<FederationProviderRef>> for ScanResult {
    fn from(provider: Option<FederationProviderRef>) -> Self {
        match provider {
            Some(provider) => ScanResult::Distinct(provider),
            None => ScanResult::None,
        }
    }
}

impl PartialEq<Option<FederationProviderRef>> for ScanResult {
    fn eq(&self, other: &Option<FederationProviderRef>) -> bool {
        match (self, other) {
            (ScanResult::None, None) => true,
            (ScanResult::Distinct(provider), Some(other_provider)) => provider == other_provider,
            _ => false,
        }
    }
}
