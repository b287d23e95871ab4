//! Which columns of a federated sub-plan fedsql actually uses, so a source
//! is asked for those and not for whole rows.
//!
//! The federation rule runs before DataFusion's `optimize_projections` (run
//! after it, the unparser wrote derived tables the join conditions could not
//! name), so the plan it sees still carries every column of every table. As
//! the rule walks down, each node tells its inputs which of their columns it
//! and the nodes above it need; where an input is cut off to become a remote
//! query, the query selects only those. The pruning happens only at that
//! cut, in the one `SELECT` list the rule already puts there, so the remote
//! SQL keeps its shape.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::common::Column;
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan, Projection};

/// Columns of a plan's output that the plan's consumers use; `None`: all
/// of them (or unknown).
pub(super) type Needed = Option<HashSet<Column>>;

/// What each input of `plan` must provide, given what `plan`'s consumers
/// need from it. Unknown node kinds need everything from their inputs.
pub(super) fn needed_from_inputs(plan: &LogicalPlan, needed: &Needed) -> Vec<Needed> {
    let refs = |exprs: &mut dyn Iterator<Item = &Expr>| -> HashSet<Column> {
        exprs
            .flat_map(|e| e.column_refs().into_iter().cloned())
            .collect()
    };
    let with = |extra: HashSet<Column>| -> Needed {
        needed
            .as_ref()
            .map(|n| n.iter().cloned().chain(extra).collect())
    };
    match plan {
        LogicalPlan::Projection(p) => vec![Some(refs(&mut p.expr.iter()))],
        LogicalPlan::Aggregate(a) => vec![Some(refs(
            &mut a.group_expr.iter().chain(a.aggr_expr.iter()),
        ))],
        LogicalPlan::Filter(f) => vec![with(refs(&mut std::iter::once(&f.predicate)))],
        LogicalPlan::Sort(s) => vec![with(refs(&mut s.expr.iter().map(|e| &e.expr)))],
        LogicalPlan::Limit(_) => vec![needed.clone()],
        LogicalPlan::Join(join) => {
            let conditions = refs(
                &mut join
                    .on
                    .iter()
                    .flat_map(|(l, r)| [l, r])
                    .chain(join.filter.iter()),
            );
            let split = |side: &LogicalPlan, all: &HashSet<Column>| -> Needed {
                Some(
                    all.iter()
                        .filter(|c| side.schema().has_column(c))
                        .cloned()
                        .collect(),
                )
            };
            // The right side of a semi/anti join only answers "is there a
            // match": the join's condition is all it needs.
            let right_only_matches = matches!(
                join.join_type,
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark
            );
            match with(conditions.clone()) {
                Some(all) if resolves(&all, &join.left, &join.right) => {
                    vec![split(&join.left, &all), split(&join.right, &all)]
                }
                _ if right_only_matches && resolves(&conditions, &join.left, &join.right) => {
                    vec![None, split(&join.right, &conditions)]
                }
                _ => vec![None, None],
            }
        }
        other => other.inputs().iter().map(|_| None).collect(),
    }
}

/// Whether every column in `columns` belongs to one of the two inputs (a
/// column fedsql cannot place means "keep everything").
fn resolves(columns: &HashSet<Column>, left: &LogicalPlan, right: &LogicalPlan) -> bool {
    columns
        .iter()
        .all(|c| left.schema().has_column(c) || right.schema().has_column(c))
}

/// `plan` under a projection of the columns in `needed` (every column when
/// `None`), ready to be federated. A projection already at the top is
/// narrowed instead of wrapped, so the remote SQL stays one `SELECT`.
pub(super) fn project_needed(plan: LogicalPlan, needed: &Needed) -> Result<LogicalPlan> {
    let schema = Arc::clone(plan.schema());
    // A column the consumers name but this plan does not output (another
    // qualifier): be safe and send every column.
    let needed = needed
        .as_ref()
        .filter(|n| n.iter().all(|c| schema.has_column(c)));
    let keep = |column: &Column| needed.is_none_or(|n| n.contains(column));
    match plan {
        LogicalPlan::Projection(p) => {
            let mut exprs: Vec<Expr> = p
                .expr
                .iter()
                .zip(schema.columns())
                .filter(|(_, column)| keep(column))
                .map(|(e, _)| e.clone())
                .collect();
            if exprs.is_empty() {
                // `count(*)` above needs no column, but a query needs one.
                exprs.extend(p.expr.first().cloned());
            }
            if exprs.len() == p.expr.len() {
                return Ok(LogicalPlan::Projection(p));
            }
            Ok(LogicalPlan::Projection(Projection::try_new(
                exprs,
                Arc::clone(&p.input),
            )?))
        }
        other => {
            let mut exprs: Vec<Expr> = schema
                .columns()
                .into_iter()
                .filter(keep)
                .map(Expr::Column)
                .collect();
            if exprs.is_empty() {
                exprs.extend(schema.columns().into_iter().next().map(Expr::Column));
            }
            Ok(LogicalPlan::Projection(Projection::try_new(
                exprs,
                Arc::new(other),
            )?))
        }
    }
}
