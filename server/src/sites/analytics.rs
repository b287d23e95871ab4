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
//! The coordinator plans the same way and sends a site only what it can
//! answer, but the site never relies on that: this check is the boundary.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{ResolvedTableReference, ScalarValue};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::logical_expr::{
    col, lit, Aggregate, ColumnarValue, Expr, ExprSchemable, Filter, JoinType, LogicalPlan,
    Projection, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
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
}

/// Which rows of which `aggregates` tables flow out of a node, with each
/// table's `min_group_size`.
type Exposure = BTreeMap<String, u64>;

/// The analytics policies of a site's tables.
#[derive(Debug, Clone, Default)]
pub struct TablePolicies {
    site: String,
    database: String,
    tables: HashMap<ResolvedTableReference, AnalyticsPolicy>,
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
        }
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
        let (plan, exposure) = self.walk(plan, &keep).map_err(refusal_text)?;
        if let Some((table, _)) = exposure.into_iter().next() {
            return Err(format!(
                "site {}: table {table} has analytics policy {}: only aggregates over it may \
                 leave the site, and this query returns its rows (aggregate them with GROUP BY \
                 and count/sum/avg/min/max)",
                self.site,
                self.describe(&table)
            ));
        }
        Ok(Guarded { plan, suppressed })
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

    fn walk(&self, plan: LogicalPlan, keep: &ScalarUDF) -> DfResult<(LogicalPlan, Exposure)> {
        // Subqueries in expressions: their rows decide a filter or a value
        // per outer row, so they must not expose anything themselves.
        let plan = plan
            .map_subqueries(|subquery| {
                let (subquery, exposure) = self.walk(subquery, keep)?;
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
                let (child, exposure) = self.walk(child, keep)?;
                inputs.push(exposure);
                Ok(Transformed::yes(child))
            })?
            .data;
        let exposure = match &plan {
            LogicalPlan::TableScan(scan) => {
                let table = scan.table_name.clone().resolve(&self.database, "public");
                match self.of(&table) {
                    AnalyticsPolicy::Rows => Exposure::new(),
                    AnalyticsPolicy::Aggregates { min_group_size } => {
                        Exposure::from([(table.to_string(), min_group_size)])
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
                let Some(min_group_size) = exposure.values().copied().max() else {
                    return Ok((plan, exposure));
                };
                self.check_aggregates(aggregate, &exposure)?;
                let suppressed = suppress(aggregate, min_group_size, keep)?;
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

/// The union of the inputs' exposures (the larger `min_group_size` wins).
fn merged(inputs: Vec<Exposure>) -> Exposure {
    let mut out = Exposure::new();
    for exposure in inputs {
        for (table, k) in exposure {
            let entry = out.entry(table).or_insert(k);
            *entry = (*entry).max(k);
        }
    }
    out
}

/// `aggregate` with a hidden row count per group, keeping only the groups
/// of at least `min_group_size` rows, projected back to its own columns.
fn suppress(aggregate: &Aggregate, min_group_size: u64, keep: &ScalarUDF) -> DfResult<LogicalPlan> {
    let mut aggr_expr = aggregate.aggr_expr.clone();
    aggr_expr.push(count(lit(1i64)).alias(GROUP_ROWS));
    let counted = LogicalPlan::Aggregate(Aggregate::try_new(
        Arc::clone(&aggregate.input),
        aggregate.group_expr.clone(),
        aggr_expr,
    )?);
    let threshold = i64::try_from(min_group_size).unwrap_or(i64::MAX);
    let predicate = keep.call(vec![col(GROUP_ROWS), lit(threshold)]);
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
        let policies = TablePolicies::new(
            "s1",
            "datafusion",
            HashMap::from([
                (
                    table("tx"),
                    AnalyticsPolicy::Aggregates { min_group_size: 3 },
                ),
                (table("shops"), AnalyticsPolicy::Rows),
                (table("secret"), AnalyticsPolicy::None),
            ]),
        );
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
