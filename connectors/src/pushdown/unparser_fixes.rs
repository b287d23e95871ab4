//! Plan shapes DataFusion 55's unparser writes as SQL with another meaning,
//! rewritten before a sub-plan is unparsed into equivalent shapes it writes
//! right. Each was found by the differential fuzzer (tests/tests/fuzz.rs)
//! as a wrong answer, and has a regression case in `tests/fuzz/`.
//!
//! 1. **A filter below a join is hoisted into the `WHERE` of the whole
//!    `SELECT`**, above every join of it. That is only right below inner
//!    joins: `A JOIN B ON … AND a > 1 RIGHT JOIN C …` filtered after the
//!    right join drops the rows of `C` that have no partner. So a filter
//!    that is a join's input moves into that join's `ON` where that means
//!    the same (any side of an inner join; the null-supplying side of a
//!    left or right join), and otherwise (the preserved side of an outer
//!    join, either side of a full join) becomes a derived table
//!    `(SELECT … WHERE …) AS t` under the same name.
//! 2. **`LIMIT n OFFSET s` over a `Sort` with a fetch** (`ORDER BY … LIMIT
//!    s+n` after the optimizer's limit pushdown) is written with the sort's
//!    `LIMIT s+n` in place of the limit's `n`: s rows too many. The sort's
//!    fetch is folded into the limit.
//! 3. **A projection over a `LIMIT` of a plain scan** (what limit pushdown
//!    makes of `SELECT a FROM t LIMIT 5`) is written as `SELECT "t"."a" FROM
//!    (SELECT * FROM t LIMIT 5) AS derived_limit`, naming a table the outer
//!    `SELECT` cannot see (found by the site analytics tests). A projection
//!    of deterministic expressions keeps every row, so the limit moves above
//!    it.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::logical_expr::logical_plan::{FetchType, SkipType};
use datafusion::logical_expr::{
    Expr, Join, JoinType, Limit, LogicalPlan, Projection, Sort, SubqueryAlias,
};
use datafusion::prelude::lit;

use super::semi_join::{add_to_condition, rebuilt};

/// `plan` with every shape above rewritten.
pub(super) fn rewrite(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up(|node| match node {
        LogicalPlan::Join(join) => join_inputs(join),
        LogicalPlan::Limit(limit) => limit_over_sort(limit),
        LogicalPlan::Projection(projection) => projection_over_limit(projection),
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

/// Which side of a join an input is.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Left,
    Right,
}

/// Rule 1 for one join's two inputs.
fn join_inputs(join: Join) -> Result<Transformed<LogicalPlan>> {
    let join_type = join.join_type;
    let inner_like = |side: Side| match join_type {
        JoinType::Inner => true,
        JoinType::Left => side == Side::Right,
        JoinType::Right => side == Side::Left,
        _ => false,
    };
    let outer = matches!(
        join.join_type,
        JoinType::Left | JoinType::Right | JoinType::Full
    );
    if !matches!(join.join_type, JoinType::Inner) && !outer {
        // Semi, anti and mark joins: see `semi_join`.
        return Ok(Transformed::no(LogicalPlan::Join(join)));
    }
    let mut join = join;
    let mut changed = false;
    for side in [Side::Left, Side::Right] {
        let input = match side {
            Side::Left => &join.left,
            Side::Right => &join.right,
        };
        let LogicalPlan::Filter(filter) = input.as_ref() else {
            continue;
        };
        let replacement = if inner_like(side) {
            let (predicate, input) = (filter.predicate.clone(), Arc::clone(&filter.input));
            add_to_condition(&mut join, predicate);
            input
        } else {
            match derived_table(input) {
                Some(derived) => Arc::new(derived),
                None => continue,
            }
        };
        match side {
            Side::Left => join.left = replacement,
            Side::Right => join.right = replacement,
        }
        changed = true;
    }
    if !changed {
        return Ok(Transformed::no(LogicalPlan::Join(join)));
    }
    Ok(Transformed::yes(rebuilt(join)?))
}

/// `filtered` (a filter) as a derived table under the one name its columns
/// have, so the unparser keeps its `WHERE` inside; `None` when its columns
/// have no single name that can be an alias.
fn derived_table(filtered: &Arc<LogicalPlan>) -> Option<LogicalPlan> {
    let LogicalPlan::Filter(filter) = filtered.as_ref() else {
        return None;
    };
    let alias = match filter.input.as_ref() {
        LogicalPlan::SubqueryAlias(alias) => alias.alias.clone(),
        LogicalPlan::TableScan(scan) if scan.table_name.schema().is_none() => {
            scan.table_name.clone()
        }
        _ => return None,
    };
    // Under a projection of every column: an alias right over a filter is
    // written as a filtered table, its filter moved into the join's `ON`.
    let columns = filtered
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    let projection = Projection::try_new(columns, Arc::clone(filtered)).ok()?;
    SubqueryAlias::try_new(Arc::new(LogicalPlan::Projection(projection)), alias)
        .ok()
        .map(LogicalPlan::SubqueryAlias)
}

/// Rule 2: `Limit(skip s, fetch n)` over `Sort(fetch f)` is
/// `Limit(skip s, fetch min(n, f - s))` over `Sort`.
fn limit_over_sort(limit: Limit) -> Result<Transformed<LogicalPlan>> {
    let LogicalPlan::Sort(sort) = limit.input.as_ref() else {
        return Ok(Transformed::no(LogicalPlan::Limit(limit)));
    };
    let (Some(sort_fetch), Ok(SkipType::Literal(skip)), Ok(FetchType::Literal(fetch))) =
        (sort.fetch, limit.get_skip_type(), limit.get_fetch_type())
    else {
        return Ok(Transformed::no(LogicalPlan::Limit(limit)));
    };
    let available = sort_fetch.saturating_sub(skip);
    let fetch = fetch.map_or(available, |n| n.min(available));
    let sort = Sort {
        expr: sort.expr.clone(),
        input: Arc::clone(&sort.input),
        fetch: None,
    };
    Ok(Transformed::yes(LogicalPlan::Limit(Limit {
        skip: (skip > 0).then(|| Box::new(lit(i64::try_from(skip).unwrap_or(i64::MAX)))),
        fetch: Some(Box::new(lit(i64::try_from(fetch).unwrap_or(i64::MAX)))),
        input: Arc::new(LogicalPlan::Sort(sort)),
    })))
}

/// Rule 3: `Projection(Limit(scan))` becomes `Limit(Projection(scan))`.
fn projection_over_limit(projection: Projection) -> Result<Transformed<LogicalPlan>> {
    let LogicalPlan::Limit(limit) = projection.input.as_ref() else {
        return Ok(Transformed::no(LogicalPlan::Projection(projection)));
    };
    let plain_input = match limit.input.as_ref() {
        LogicalPlan::TableScan(_) => true,
        LogicalPlan::Filter(filter) => matches!(filter.input.as_ref(), LogicalPlan::TableScan(_)),
        _ => false,
    };
    if !plain_input || projection.expr.iter().any(Expr::is_volatile) {
        return Ok(Transformed::no(LogicalPlan::Projection(projection)));
    }
    // The scan's own fetch (limit pushdown's copy of the limit) would be
    // written as the same derived table; the limit above keeps the count.
    let without_fetch = |scan: &datafusion::logical_expr::TableScan| {
        let mut scan = scan.clone();
        scan.fetch = None;
        LogicalPlan::TableScan(scan)
    };
    let input = match limit.input.as_ref() {
        LogicalPlan::TableScan(scan) => without_fetch(scan),
        LogicalPlan::Filter(filter) => match filter.input.as_ref() {
            LogicalPlan::TableScan(scan) => {
                LogicalPlan::Filter(datafusion::logical_expr::Filter::try_new(
                    filter.predicate.clone(),
                    Arc::new(without_fetch(scan)),
                )?)
            }
            other => LogicalPlan::Filter(filter.clone())
                .with_new_exprs(vec![filter.predicate.clone()], vec![other.clone()])?,
        },
        other => other.clone(),
    };
    let moved = Projection::try_new(projection.expr.clone(), Arc::new(input))?;
    Ok(Transformed::yes(LogicalPlan::Limit(Limit {
        skip: limit.skip.clone(),
        fetch: limit.fetch.clone(),
        input: Arc::new(LogicalPlan::Projection(moved)),
    })))
}
