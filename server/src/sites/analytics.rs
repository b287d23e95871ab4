//! A site's analytics policy, applied to a coordinator's query before it
//! runs at the site.
//!
//! Every table a site offers has an [`AnalyticsPolicy`]: `none`,
//! `aggregates` (groups of at least `min_group_size` rows may leave) or
//! `rows`. The site plans the SQL it is sent on its own catalog and walks the
//! plan bottom-up, tracking which `aggregates` tables' rows still flow
//! unaggregated out of each node (the node's *exposure*):
//!
//! - a scan of an `aggregates` table exposes it; a `rows` table exposes
//!   nothing; a `none` table, or one the site does not offer, is refused;
//! - an `Aggregate` over exposed rows ends their exposure. It may use only
//!   [`SAFE_AGGREGATES`], and it is rewritten to count each group's rows and
//!   drop the groups with fewer than the largest `min_group_size` of the
//!   tables it aggregates (counted in [`Guarded::suppressed`]);
//! - a join over exposed rows is refused — its groups would count joined
//!   rows, not the table's — except a semi or anti join whose filtering side
//!   exposes nothing (it keeps or drops rows, never multiplies them);
//! - a subquery inside an expression must expose nothing;
//! - every other node passes its inputs' exposure on;
//! - whatever the root still exposes would leave the site as rows: refused,
//!   naming the table and its policy.
//!
//! With `dp_epsilon` on a table, an aggregate over it is also differentially
//! private: only `count` and (with `dp_bounds`) `sum` of values clipped to
//! the bounds are allowed, and each of them — and the hidden row count the
//! suppression decides on — gets Laplace noise of scale `m / ε` (counts) or
//! `m · max(|low|, |high|) / ε` (sums), `m` being how many noisy values a
//! group has: the answer's `ε` is split evenly among them (sequential
//! composition; groups are disjoint). What an answer spends is charged to
//! the site's [`PrivacyBudget`] before it runs.
//!
//! The coordinator plans the same way and sends a site only what it can
//! answer, but the site never relies on that: this check is the boundary.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, Float64Array, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, ResolvedTableReference, ScalarValue};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::logical_expr::{
    cast, col, lit, when, Aggregate, ColumnarValue, Expr, ExprSchemable, Filter, JoinType,
    LogicalPlan, Projection, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::protocol::AnalyticsPolicy;

/// Aggregates that summarise a group without returning one of its rows'
/// values as a list or in order (`array_agg`, `string_agg`, `first_value`
/// would).
pub const SAFE_AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "mean",
    "min",
    "max",
    "stddev",
    "stddev_samp",
    "stddev_pop",
    "var",
    "var_samp",
    "var_pop",
    "variance",
];

/// The hidden per-group row count the suppression filters on.
const GROUP_ROWS: &str = "__fedsql_group_rows";

/// A coordinator's query, checked and rewritten to suppress small groups.
pub struct Guarded {
    pub plan: LogicalPlan,
    /// Groups dropped for being under `min_group_size`, once the plan ran.
    pub suppressed: Arc<AtomicU64>,
    /// The privacy loss of the answer, when it is differentially private.
    pub epsilon: Option<f64>,
}

/// How one `aggregates` table's rows must be aggregated.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rule {
    min_group_size: u64,
    /// `(epsilon, clipping bounds)` when answers are differentially private.
    dp: Option<(f64, Option<(f64, f64)>)>,
}

impl Rule {
    /// The stricter of two rules (for rows of both in one aggregate).
    fn and(self, other: Rule) -> Rule {
        let dp = match (self.dp, other.dp) {
            (None, dp) | (dp, None) => dp,
            (Some((e1, b1)), Some((e2, b2))) => Some((
                e1.min(e2),
                match (b1, b2) {
                    (Some((l1, h1)), Some((l2, h2))) => Some((l1.min(l2), h1.max(h2))),
                    _ => None,
                },
            )),
        };
        Rule {
            min_group_size: self.min_group_size.max(other.min_group_size),
            dp,
        }
    }
}

/// Which rows of which `aggregates` tables flow out of a node, with each
/// table's rule.
type Exposure = BTreeMap<String, Rule>;

/// The analytics policies of a site's tables.
#[derive(Debug, Clone, Default)]
pub struct TablePolicies {
    site: String,
    database: String,
    tables: HashMap<ResolvedTableReference, AnalyticsPolicy>,
    /// `dp_bounds` of the tables that have them.
    bounds: HashMap<ResolvedTableReference, (f64, f64)>,
}

impl TablePolicies {
    /// The policies of site `site`, whose unqualified names resolve in
    /// `database`.
    pub fn new(
        site: &str,
        database: &str,
        tables: HashMap<ResolvedTableReference, AnalyticsPolicy>,
    ) -> TablePolicies {
        TablePolicies {
            site: site.to_string(),
            database: database.to_string(),
            tables,
            bounds: HashMap::new(),
        }
    }

    /// With the clipping bounds of tables answered with differential
    /// privacy.
    pub fn with_bounds(mut self, bounds: HashMap<ResolvedTableReference, (f64, f64)>) -> Self {
        self.bounds = bounds;
        self
    }

    /// The policy of `table` (`none` when it has none).
    pub fn of(&self, table: &ResolvedTableReference) -> AnalyticsPolicy {
        self.tables.get(table).copied().unwrap_or_default()
    }

    /// Checks `plan` (planned, not yet optimized) against the policies and
    /// rewrites it to suppress small groups; the error says what the query
    /// would have taken and which policy refuses it.
    pub fn guard(&self, plan: LogicalPlan) -> Result<Guarded, String> {
        let suppressed = Arc::new(AtomicU64::new(0));
        let keep = ScalarUDF::from(MinGroupSize {
            signature: Signature::exact(
                vec![DataType::Int64, DataType::Int64],
                Volatility::Volatile,
            ),
            suppressed: Arc::clone(&suppressed),
        });
        let noise = ScalarUDF::from(LaplaceNoise {
            signature: Signature::any(3, Volatility::Volatile),
        });
        let mut epsilon = None;
        let udfs = Udfs {
            keep: &keep,
            noise: &noise,
        };
        let (plan, exposure) = self.walk(plan, &udfs, &mut epsilon).map_err(refusal_text)?;
        if let Some((table, _)) = exposure.into_iter().next() {
            return Err(format!(
                "site {}: table {table} has analytics policy {}: only aggregates over it may \
                 leave the site, and this query returns its rows (aggregate them with GROUP BY \
                 and count/sum/avg/min/max)",
                self.site,
                self.describe(&table)
            ));
        }
        Ok(Guarded {
            plan,
            suppressed,
            epsilon,
        })
    }

    fn describe(&self, table: &str) -> String {
        self.tables
            .iter()
            .find(|(t, _)| t.to_string() == table)
            .map_or_else(|| "none".to_string(), |(_, p)| p.to_string())
    }

    fn refuse(&self, message: String) -> DataFusionError {
        DataFusionError::External(Box::new(Refusal(format!("site {}: {message}", self.site))))
    }

    fn walk(
        &self,
        plan: LogicalPlan,
        udfs: &Udfs<'_>,
        epsilon: &mut Option<f64>,
    ) -> DfResult<(LogicalPlan, Exposure)> {
        // Subqueries in expressions: their rows decide a filter or a value
        // per outer row, so they must not expose anything themselves.
        let plan = plan
            .map_subqueries(|subquery| {
                let (subquery, exposure) = self.walk(subquery, udfs, epsilon)?;
                if let Some((table, _)) = exposure.into_iter().next() {
                    return Err(self.refuse(format!(
                        "table {table} has analytics policy {}: a subquery may read it only \
                         through an aggregate",
                        self.describe(&table)
                    )));
                }
                Ok(Transformed::yes(subquery))
            })?
            .data;
        let mut inputs = Vec::new();
        let plan = plan
            .map_children(|child| {
                let (child, exposure) = self.walk(child, udfs, epsilon)?;
                inputs.push(exposure);
                Ok(Transformed::yes(child))
            })?
            .data;
        let exposure = match &plan {
            LogicalPlan::TableScan(scan) => {
                let table = scan.table_name.clone().resolve(&self.database, "public");
                match self.of(&table) {
                    AnalyticsPolicy::Rows => Exposure::new(),
                    AnalyticsPolicy::Aggregates {
                        min_group_size,
                        dp_epsilon,
                    } => {
                        let bounds = self.bounds.get(&table).copied();
                        let rule = Rule {
                            min_group_size,
                            dp: dp_epsilon.map(|e| (e, bounds)),
                        };
                        Exposure::from([(table.to_string(), rule)])
                    }
                    AnalyticsPolicy::None => {
                        return Err(self.refuse(format!(
                            "table {table} has analytics policy none: nothing of it may leave \
                             the site for a query (it may only be trained on, if allowed)"
                        )))
                    }
                }
            }
            LogicalPlan::Aggregate(aggregate) => {
                let exposure = merged(inputs);
                let Some(rule) = exposure.values().copied().reduce(Rule::and) else {
                    return Ok((plan, exposure));
                };
                self.check_aggregates(aggregate, &exposure)?;
                let aggregate = match rule.dp {
                    None => aggregate.clone(),
                    Some((e, bounds)) => {
                        *epsilon = Some(epsilon.map_or(e, |spent| spent + e));
                        self.clipped(aggregate, bounds, &exposure)?
                    }
                };
                let suppressed = suppress(&aggregate, rule, udfs)?;
                return Ok((suppressed, Exposure::new()));
            }
            LogicalPlan::Join(join) => {
                let mut inputs = inputs.into_iter();
                let left = inputs.next().unwrap_or_default();
                let right = inputs.next().unwrap_or_default();
                match join.join_type {
                    _ if left.is_empty() && right.is_empty() => Exposure::new(),
                    JoinType::LeftSemi | JoinType::LeftAnti if right.is_empty() => left,
                    JoinType::RightSemi | JoinType::RightAnti if left.is_empty() => right,
                    _ => {
                        let exposure = merged(vec![left, right]);
                        let table = exposure.keys().next().cloned().unwrap_or_default();
                        return Err(self.refuse(format!(
                            "table {table} has analytics policy {}: its rows may not be joined \
                             before they are aggregated (group sizes would count joined rows); \
                             aggregate each table first, or filter with IN/EXISTS",
                            self.describe(&table)
                        )));
                    }
                }
            }
            _ => merged(inputs),
        };
        Ok((plan, exposure))
    }

    /// Under differential privacy: `aggregate` with its sums' inputs clipped
    /// to `bounds`; anything but `count` and `sum` (or a sum without
    /// bounds) is refused.
    fn clipped(
        &self,
        aggregate: &Aggregate,
        bounds: Option<(f64, f64)>,
        exposure: &Exposure,
    ) -> DfResult<Aggregate> {
        let table = exposure.keys().next().cloned().unwrap_or_default();
        let input = aggregate.input.schema();
        let mut aggr_expr = Vec::with_capacity(aggregate.aggr_expr.len());
        for expr in &aggregate.aggr_expr {
            let (inner, alias) = match expr {
                Expr::Alias(a) => (a.expr.as_ref(), Some(a.name.clone())),
                other => (other, None),
            };
            let refuse = |what: &str| {
                self.refuse(format!(
                    "table {table} has analytics policy {}: {what}",
                    self.describe(&table)
                ))
            };
            let Expr::AggregateFunction(f) = inner else {
                return Err(refuse("only count(…) and sum(…) are answered privately"));
            };
            let name = f.func.name().to_ascii_lowercase();
            if f.params.distinct || f.params.filter.is_some() {
                return Err(refuse(&format!(
                    "{name}(DISTINCT …) and FILTER are not answered privately"
                )));
            }
            let rewritten = match name.as_str() {
                "count" => inner.clone(),
                "sum" => {
                    let Some((low, high)) = bounds else {
                        return Err(refuse(
                            "sum() needs dp_bounds in the site's config to be answered privately",
                        ));
                    };
                    let mut function = f.clone();
                    let arg =
                        function.params.args.first().cloned().ok_or_else(|| {
                            DataFusionError::Plan("sum() takes one argument".into())
                        })?;
                    let t = arg.get_type(input)?;
                    if !(t.is_integer() || t.is_floating()) {
                        return Err(refuse("sum() is answered privately for numbers only"));
                    }
                    let (low, high) = (cast(lit(low), t.clone()), cast(lit(high), t));
                    let clip = when(arg.clone().lt(low.clone()), low)
                        .when(arg.clone().gt(high.clone()), high)
                        .otherwise(arg)?;
                    function.params.args = vec![clip];
                    Expr::AggregateFunction(function)
                }
                other => {
                    return Err(refuse(&format!(
                        "{other}() is not answered privately; ask for count and sum \
                         (averages over sites.… are split into them)"
                    )))
                }
            };
            aggr_expr.push(match alias {
                Some(alias) => rewritten.alias(alias),
                // Keep the original name: the plan above refers to it.
                None => rewritten.alias(expr.schema_name().to_string()),
            });
        }
        Aggregate::try_new(
            Arc::clone(&aggregate.input),
            aggregate.group_expr.clone(),
            aggr_expr,
        )
    }

    /// Every aggregate over exposed rows must be one of [`SAFE_AGGREGATES`].
    fn check_aggregates(&self, aggregate: &Aggregate, exposure: &Exposure) -> DfResult<()> {
        for expr in &aggregate.aggr_expr {
            let mut unsafe_name = None;
            let input = aggregate.input.schema();
            expr.apply(|e| {
                if let Expr::AggregateFunction(f) = e {
                    let name = f.func.name().to_ascii_lowercase();
                    // min/max of text is one row's text, verbatim.
                    let text_extreme = matches!(name.as_str(), "min" | "max")
                        && f.params.args.iter().any(|a| {
                            a.get_type(input).map_or(true, |t| {
                                !(t.is_numeric() || t.is_temporal() || t == DataType::Boolean)
                            })
                        });
                    if !SAFE_AGGREGATES.contains(&name.as_str()) || text_extreme {
                        unsafe_name = Some(name);
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
            if let Some(name) = unsafe_name {
                let table = exposure.keys().next().cloned().unwrap_or_default();
                return Err(self.refuse(format!(
                    "table {table} has analytics policy {}: {name}() here would return values \
                     of its rows; only {} (min and max of numbers and times) may aggregate it",
                    self.describe(&table),
                    SAFE_AGGREGATES.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// The union of the inputs' exposures (the stricter rule wins).
fn merged(inputs: Vec<Exposure>) -> Exposure {
    let mut out = Exposure::new();
    for exposure in inputs {
        for (table, rule) in exposure {
            let entry = out.entry(table).or_insert(rule);
            *entry = entry.and(rule);
        }
    }
    out
}

/// The scalar functions the rewritten plans call.
struct Udfs<'a> {
    keep: &'a ScalarUDF,
    noise: &'a ScalarUDF,
}

/// `aggregate` with a hidden row count per group, keeping only the groups
/// of at least `min_group_size` rows, projected back to its own columns;
/// under differential privacy, every count and sum (the hidden count too)
/// with Laplace noise first.
fn suppress(aggregate: &Aggregate, rule: Rule, udfs: &Udfs<'_>) -> DfResult<LogicalPlan> {
    let mut aggr_expr = aggregate.aggr_expr.clone();
    aggr_expr.push(count(lit(1i64)).alias(GROUP_ROWS));
    let counted = Aggregate::try_new(
        Arc::clone(&aggregate.input),
        aggregate.group_expr.clone(),
        aggr_expr,
    )?;
    let counted = match rule.dp {
        None => LogicalPlan::Aggregate(counted),
        Some((epsilon, bounds)) => noisy(counted, epsilon, bounds, udfs.noise)?,
    };
    let threshold = i64::try_from(rule.min_group_size).unwrap_or(i64::MAX);
    let predicate = udfs.keep.call(vec![col(GROUP_ROWS), lit(threshold)]);
    let filtered = LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(counted))?);
    let columns = aggregate
        .schema
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    Ok(LogicalPlan::Projection(Projection::try_new(
        columns,
        Arc::new(filtered),
    )?))
}

/// `counted` (an aggregate whose last column is the hidden row count) with
/// Laplace noise on each aggregate column, in its own type and name.
fn noisy(
    counted: Aggregate,
    epsilon: f64,
    bounds: Option<(f64, f64)>,
    noise: &ScalarUDF,
) -> DfResult<LogicalPlan> {
    let groups = counted.group_expr.len();
    let noisy_values = counted.aggr_expr.len().max(1) as f64;
    let sensitivity = bounds.map_or(0.0, |(low, high)| low.abs().max(high.abs()));
    let kinds: Vec<bool> = counted
        .aggr_expr
        .iter()
        .map(|e| {
            let mut is_count = false;
            let _ = e.apply(|e| {
                if let Expr::AggregateFunction(f) = e {
                    is_count = f.func.name().eq_ignore_ascii_case("count");
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            });
            is_count
        })
        .collect();
    let schema = Arc::clone(&counted.schema);
    let plan = Arc::new(LogicalPlan::Aggregate(counted));
    let mut exprs = Vec::with_capacity(schema.fields().len());
    for i in 0..schema.fields().len() {
        let (qualifier, field) = schema.qualified_field(i);
        let column = Expr::Column(Column::from((qualifier, field)));
        let value = if i < groups {
            column
        } else {
            let is_count = kinds.get(i - groups).copied().unwrap_or(true);
            let scale = if is_count {
                noisy_values / epsilon
            } else {
                noisy_values * sensitivity / epsilon
            };
            cast(
                noise.call(vec![column, lit(scale), lit(is_count)]),
                field.data_type().clone(),
            )
        };
        exprs.push(value.alias_qualified(qualifier.cloned(), field.name()));
    }
    Ok(LogicalPlan::Projection(Projection::try_new(exprs, plan)?))
}

/// `fedsql_site_laplace(value, scale, is_count)`: `value` plus Laplace noise
/// of `scale`, as a float (rounded and at least 0 for a count; integer
/// values rounded).
#[derive(Debug, PartialEq, Eq, Hash)]
struct LaplaceNoise {
    signature: Signature,
}

impl ScalarUDFImpl for LaplaceNoise {
    fn name(&self) -> &str {
        "fedsql_site_laplace"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let (Some(value), Some(ColumnarValue::Scalar(scale)), Some(ColumnarValue::Scalar(count))) =
            (args.args.first(), args.args.get(1), args.args.get(2))
        else {
            return Err(DataFusionError::Internal(
                "fedsql_site_laplace takes a value, a scale and a count flag".into(),
            ));
        };
        let (ScalarValue::Float64(Some(scale)), ScalarValue::Boolean(Some(is_count))) =
            (scale, count)
        else {
            return Err(DataFusionError::Internal(
                "fedsql_site_laplace: constant scale and flag".into(),
            ));
        };
        let values = value.to_array(args.number_rows)?;
        let integer = values.data_type().is_integer();
        let values = datafusion::arrow::compute::cast(&values, &DataType::Float64)?;
        let values = values
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| DataFusionError::Internal("not a float column".into()))?;
        let noisy: Float64Array = values
            .iter()
            .map(|v| {
                v.map(|v| {
                    let noisy = v + laplace(*scale);
                    match (*is_count, integer) {
                        (true, _) => noisy.round().max(0.0),
                        (false, true) => noisy.round(),
                        (false, false) => noisy,
                    }
                })
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(noisy)))
    }
}

/// One draw of Laplace(0, `scale`) noise (inverse CDF of a uniform draw from
/// the thread's CSPRNG).
fn laplace(scale: f64) -> f64 {
    let u: f64 = rand::random::<f64>() - 0.5;
    -scale * u.signum() * (1.0 - 2.0 * u.abs()).max(f64::MIN_POSITIVE).ln()
}

/// A refusal, carried through DataFusion's tree walks as an error.
#[derive(Debug)]
struct Refusal(String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

/// The message of a refusal (or of any other planning error).
fn refusal_text(error: DataFusionError) -> String {
    match error.find_root() {
        DataFusionError::External(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// `fedsql_site_min_group(rows, k)`: whether a group of `rows` rows may
/// leave; counts the groups it drops.
#[derive(Debug)]
struct MinGroupSize {
    signature: Signature,
    suppressed: Arc<AtomicU64>,
}

impl PartialEq for MinGroupSize {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.suppressed, &other.suppressed)
    }
}

impl Eq for MinGroupSize {}

impl Hash for MinGroupSize {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.suppressed), state);
    }
}

impl ScalarUDFImpl for MinGroupSize {
    fn name(&self) -> &str {
        "fedsql_site_min_group"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let threshold = match args.args.get(1) {
            Some(ColumnarValue::Scalar(ScalarValue::Int64(Some(k)))) => *k,
            _ => {
                return Err(DataFusionError::Internal(
                    "fedsql_site_min_group takes a constant threshold".into(),
                ))
            }
        };
        let rows = match args.args.first() {
            Some(value) => value.to_array(args.number_rows)?,
            None => {
                return Err(DataFusionError::Internal(
                    "fedsql_site_min_group takes a row count".into(),
                ))
            }
        };
        let rows = rows
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| DataFusionError::Internal("row counts are not Int64".into()))?;
        let keep: BooleanArray = rows
            .iter()
            .map(|n| Some(n.is_some_and(|n| n >= threshold)))
            .collect();
        let dropped = keep.len() - keep.true_count();
        self.suppressed.fetch_add(
            u64::try_from(dropped).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        Ok(ColumnarValue::Array(Arc::new(keep)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::common::TableReference;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    /// `public.tx` (aggregates, k = 3): 3 rows of `a`, 1 of `b`;
    /// `public.shops` (rows); `public.secret` (none).
    async fn site() -> (SessionContext, TablePolicies) {
        let ctx = SessionContext::new();
        let schema = Arc::new(Schema::new(vec![
            Field::new("shop", DataType::Utf8, false),
            Field::new("amount", DataType::Float64, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec!["a", "a", "a", "b"])),
                Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 40.0])),
            ],
        )
        .unwrap();
        for name in ["tx", "shops", "secret"] {
            let table = MemTable::try_new(Arc::clone(&schema), vec![vec![batch.clone()]]).unwrap();
            ctx.register_table(name, Arc::new(table)).unwrap();
        }
        let table = |t: &str| TableReference::bare(t).resolve("datafusion", "public");
        // `public.dp_tx` (aggregates, k = 3, epsilon 1, sums clipped to
        // [0, 10]): 200 rows of shop a at 5.0 and one at 1e9; 5 of b.
        let mut shops = vec!["a"; 201];
        let mut amounts = vec![5.0; 200];
        amounts.push(1e9);
        shops.extend(["b"; 5]);
        amounts.extend([1.0; 5]);
        let dp_batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(shops)),
                Arc::new(Float64Array::from(amounts)),
            ],
        )
        .unwrap();
        let dp_table = MemTable::try_new(Arc::clone(&schema), vec![vec![dp_batch]]).unwrap();
        ctx.register_table("dp_tx", Arc::new(dp_table)).unwrap();
        let policies = TablePolicies::new(
            "s1",
            "datafusion",
            HashMap::from([
                (
                    table("tx"),
                    AnalyticsPolicy::Aggregates {
                        min_group_size: 3,
                        dp_epsilon: None,
                    },
                ),
                (
                    table("dp_tx"),
                    AnalyticsPolicy::Aggregates {
                        min_group_size: 3,
                        dp_epsilon: Some(1.0),
                    },
                ),
                (table("shops"), AnalyticsPolicy::Rows),
                (table("secret"), AnalyticsPolicy::None),
            ]),
        )
        .with_bounds(HashMap::from([(table("dp_tx"), (0.0, 10.0))]));
        (ctx, policies)
    }

    async fn run(sql: &str) -> Result<(Vec<RecordBatch>, u64), String> {
        let (ctx, policies) = site().await;
        let plan = ctx.state().create_logical_plan(sql).await.unwrap();
        let guarded = policies.guard(plan)?;
        let batches = ctx
            .execute_logical_plan(guarded.plan)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        Ok((batches, guarded.suppressed.load(Ordering::Relaxed)))
    }

    fn rows(batches: &[RecordBatch]) -> usize {
        batches.iter().map(RecordBatch::num_rows).sum()
    }

    #[tokio::test]
    async fn groups_under_the_minimum_are_suppressed_and_counted() {
        let (batches, suppressed) = run("SELECT shop, sum(amount) AS s FROM tx GROUP BY shop")
            .await
            .unwrap();
        assert_eq!(rows(&batches), 1, "only shop a has 3 rows");
        assert_eq!(suppressed, 1);
        let column = batches[0]
            .column(1)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(column.value(0), 6.0);
        // A whole-table aggregate is one group of 4.
        let (batches, suppressed) = run("SELECT count(*) FROM tx").await.unwrap();
        assert_eq!((rows(&batches), suppressed), (1, 0));
    }

    #[tokio::test]
    async fn rows_of_an_aggregates_table_are_refused() {
        for sql in [
            "SELECT * FROM tx",
            "SELECT shop FROM tx WHERE amount > 1 LIMIT 2",
            "SELECT * FROM shops WHERE shop IN (SELECT shop FROM tx)",
            "SELECT shop, array_agg(amount) FROM tx GROUP BY shop",
            "SELECT max(shop) FROM tx",
            "SELECT s.shop, count(*) FROM tx t JOIN shops s ON s.shop = t.shop GROUP BY s.shop",
        ] {
            let refused = run(sql).await.unwrap_err();
            assert!(
                refused.contains("datafusion.public.tx")
                    && refused.contains("aggregates (min_group_size 3)"),
                "{sql}: {refused}"
            );
        }
        let refused = run("SELECT count(*) FROM secret").await.unwrap_err();
        assert!(refused.contains("analytics policy none"), "{refused}");
    }

    #[tokio::test]
    async fn private_answers_are_noisy_clipped_counts_and_sums() {
        let (ctx, policies) = site().await;
        let sql = "SELECT shop, count(*) AS n, sum(amount) AS total FROM dp_tx GROUP BY shop";
        let mut answers = Vec::new();
        for _ in 0..5 {
            let plan = ctx.state().create_logical_plan(sql).await.unwrap();
            let guarded = policies.guard(plan).unwrap();
            assert_eq!(guarded.epsilon, Some(1.0));
            let batches = ctx
                .execute_logical_plan(guarded.plan)
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let batch =
                datafusion::arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
            // Names and types as planned.
            assert_eq!(batch.schema().field(1).data_type(), &DataType::Int64);
            let shops = batch
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            let a = (0..batch.num_rows())
                .find(|&i| shops.value(i) == "a")
                .expect("201 rows are far above min_group_size");
            let n = batch
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(a);
            let total = batch
                .column(2)
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .value(a);
            // Laplace scales 3 and 30 (3 noisy values, epsilon 1, bound 10):
            // beyond 20 scales has probability e^-20.
            assert!((n - 201).abs() <= 60, "{n}");
            assert!(
                (total - 1010.0).abs() <= 600.0,
                "the 1e9 is clipped to 10: {total}"
            );
            answers.push((n, total));
        }
        assert!(
            answers.windows(2).any(|w| w[0] != w[1]),
            "noise is drawn per answer: {answers:?}"
        );
        for sql in [
            "SELECT avg(amount) FROM dp_tx",
            "SELECT shop, max(amount) FROM dp_tx GROUP BY shop",
            "SELECT count(DISTINCT amount) FROM dp_tx",
        ] {
            let refused = run(sql).await.unwrap_err();
            assert!(refused.contains("dp_epsilon 1"), "{sql}: {refused}");
        }
    }

    #[tokio::test]
    async fn rows_tables_and_filtering_by_them_are_allowed() {
        let (batches, _) = run("SELECT * FROM shops").await.unwrap();
        assert_eq!(rows(&batches), 4);
        let (batches, suppressed) = run(
            "SELECT shop, count(*) FROM tx WHERE shop IN (SELECT shop FROM shops WHERE amount < 10) \
             GROUP BY shop",
        )
        .await
        .unwrap();
        assert_eq!(
            (rows(&batches), suppressed),
            (1, 0),
            "b is filtered out first"
        );
        // An aggregate of an aggregate is no longer rows.
        let (batches, _) =
            run("SELECT max(n) FROM (SELECT shop, count(*) AS n FROM tx GROUP BY shop) AS g")
                .await
                .unwrap();
        assert_eq!(rows(&batches), 1);
    }
}
