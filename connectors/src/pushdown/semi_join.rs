//! Semi and anti joins reshaped so DataFusion 55's unparser writes them
//! correctly.
//!
//! The unparser writes `A ⋉ B` as `SELECT … FROM A WHERE [NOT] EXISTS
//! (SELECT … FROM B WHERE …)` and, when `A` is a `Filter`, loses the filter —
//! wrong rows (TPC-H q4 counted every order, not the late ones). Both
//! shapes below are rewritten into equivalent ones it handles, before a
//! sub-plan is unparsed:
//!
//! - a filter on the left input moves above the join: a semi or anti join
//!   keeps or drops each left row on its own, so filtering before or after
//!   gives the same rows;
//! - a filter on the right input joins the join condition: "a right row that
//!   matches and passes the filter exists" is the same test either way.
//!
//! A null-aware anti join (`NOT IN`) keeps its right filter where it is: its
//! "any NULL on the right" rule must only see rows that pass the filter.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::logical_expr::{Filter, Join, JoinType, LogicalPlan};
use datafusion::prelude::Expr;

/// Whether `join` is a semi or anti join the unparser writes as `EXISTS`.
fn is_exists_join(join: &Join) -> bool {
    matches!(join.join_type, JoinType::LeftSemi | JoinType::LeftAnti)
}

/// Whether the unparser gets `join` right once [`reshape`] has run: every
/// join but a null-aware anti join over a filter (which [`reshape`] leaves
/// alone) and right/mark semi joins with a filter beneath (not reshaped,
/// and rare enough to run in fedsql). Filters under a projection or alias
/// are written correctly (checked on all of TPC-H by tests/tests/tpch.rs).
pub(super) fn unparses_correctly(join: &Join) -> bool {
    match join.join_type {
        JoinType::RightSemi | JoinType::RightAnti | JoinType::LeftMark | JoinType::RightMark => {
            !hides_filter(&join.left) && !hides_filter(&join.right)
        }
        JoinType::LeftAnti if join.null_aware => {
            !matches!(join.right.as_ref(), LogicalPlan::Filter(_))
        }
        _ => true,
    }
}

/// Whether `plan` is a filter, or a projection or alias over one.
fn hides_filter(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Filter(_) => true,
        LogicalPlan::Projection(p) => hides_filter(&p.input),
        LogicalPlan::SubqueryAlias(a) => hides_filter(&a.input),
        _ => false,
    }
}

/// Moves the filters of every semi/anti join in `plan` out of its inputs
/// (see the module documentation).
pub(super) fn reshape(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up(|node| {
        let LogicalPlan::Join(join) = &node else {
            return Ok(Transformed::no(node));
        };
        if !is_exists_join(join) {
            return Ok(Transformed::no(node));
        }
        let mut join = join.clone();
        let mut left_filter = None;
        if let LogicalPlan::Filter(f) = join.left.as_ref() {
            left_filter = Some(f.predicate.clone());
            join.left = Arc::clone(&f.input);
        }
        if let (LogicalPlan::Filter(f), false) = (join.right.as_ref(), join.null_aware) {
            let (predicate, input) = (f.predicate.clone(), Arc::clone(&f.input));
            add_to_condition(&mut join, predicate);
            join.right = input;
        }
        let rebuilt = rebuilt(join)?;
        Ok(Transformed::yes(match left_filter {
            Some(predicate) => filter(predicate, rebuilt)?,
            None => rebuilt,
        }))
    })
    .map(|t| t.data)
}

/// ANDs `predicate` into `join`'s condition (its `ON` beyond the keys).
pub(super) fn add_to_condition(join: &mut Join, predicate: Expr) {
    join.filter = Some(match join.filter.take() {
        Some(existing) => existing.and(predicate),
        None => predicate,
    });
}

/// `join` built again from its parts, its schema computed for its new
/// inputs.
pub(super) fn rebuilt(join: Join) -> Result<LogicalPlan> {
    Ok(LogicalPlan::Join(Join::try_new(
        join.left,
        join.right,
        join.on,
        join.filter,
        join.join_type,
        join.join_constraint,
        join.null_equality,
        join.null_aware,
    )?))
}

fn filter(predicate: Expr, input: LogicalPlan) -> Result<LogicalPlan> {
    Ok(LogicalPlan::Filter(Filter::try_new(
        predicate,
        Arc::new(input),
    )?))
}
