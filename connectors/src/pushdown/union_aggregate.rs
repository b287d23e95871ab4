//! Partial aggregates below a `UNION ALL` whose inputs are each one source.
//!
//! `SELECT category, avg(amount) FROM sites.bank.transactions GROUP BY
//! category` reads a union of one table per site. No source can run the
//! aggregate over the union, so without this rule every row would come to
//! fedsql first — and a site whose policy lets only aggregates leave would
//! refuse. The aggregate is split in two: a partial aggregate per input,
//! which goes to that input's source with it, and a final one over the
//! partial rows:
//!
//! ```text
//!   Aggregate [g: avg(x)]            Projection (original names, types)
//!     Union                    →       Aggregate [g: sum(s) / sum(c)]
//!       a (site a)                       Union
//!       b (site b)                         Aggregate [g: sum(x) AS s, count(x) AS c]  ← site a
//!                                          Aggregate [g: sum(x) AS s, count(x) AS c]  ← site b
//! ```
//!
//! `sum` of partial sums, `sum` of partial counts, `min` of minima and `max`
//! of maxima give the original answers; `avg` is the sum of the sums over
//! the sum of the counts (for integer and float inputs, whose `avg` is a
//! float). Only those, without `DISTINCT`, `FILTER` or `ORDER BY`, are split;
//! grouping sets are not. A union one source can run whole is left to
//! it.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::Column;
use datafusion::error::Result;
use datafusion::functions_aggregate::expr_fn::{count, max, min, sum};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    cast, Aggregate, Expr, ExprSchemable, LogicalPlan, LogicalPlanBuilder, Projection,
};
use datafusion::optimizer::optimizer::{OptimizerConfig, OptimizerRule};

use super::rule::{pushdown_enabled, sole_source};

/// Prefix of the partial aggregates' (and their groups') names.
const PARTIAL: &str = "__fedsql_union_partial_";

/// Splits aggregates over unions of single-source inputs (see the module
/// documentation).
#[derive(Debug, Default)]
pub struct UnionAggregateRule;

impl OptimizerRule for UnionAggregateRule {
    fn name(&self) -> &str {
        "fedsql_union_partial_aggregate"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        if !pushdown_enabled(config) {
            return Ok(Transformed::no(plan));
        }
        plan.transform_up(|node| match split(&node)? {
            Some(rewritten) => Ok(Transformed::yes(rewritten)),
            None => Ok(Transformed::no(node)),
        })
    }
}

/// What one aggregate becomes across the partials.
#[derive(Clone, Copy)]
enum Kind {
    Sum,
    Count,
    Min,
    Max,
    /// A sum and a count.
    Avg,
}

fn kind(agg: &AggregateFunction, input: &datafusion::common::DFSchema) -> Option<Kind> {
    let p = &agg.params;
    if p.distinct || p.filter.is_some() || !p.order_by.is_empty() || p.args.len() != 1 {
        return None;
    }
    match agg.func.name() {
        "sum" => Some(Kind::Sum),
        "count" => Some(Kind::Count),
        "min" => Some(Kind::Min),
        "max" => Some(Kind::Max),
        "avg" | "mean" => {
            let t = p.args[0].get_type(input).ok()?;
            (t.is_integer() || t.is_floating()).then_some(Kind::Avg)
        }
        _ => None,
    }
}

/// The rewritten plan for `node`, if it is an aggregate this rule splits.
fn split(node: &LogicalPlan) -> Result<Option<LogicalPlan>> {
    let LogicalPlan::Aggregate(agg) = node else {
        return Ok(None);
    };
    // The union, under aliases of it (a view or a derived table).
    let mut below = agg.input.as_ref();
    while let LogicalPlan::SubqueryAlias(alias) = below {
        below = alias.input.as_ref();
    }
    let LogicalPlan::Union(union) = below else {
        return Ok(None);
    };
    if union.inputs.len() < 2
        || agg
            .group_expr
            .iter()
            .any(|e| matches!(e, Expr::GroupingSet(_)))
    {
        return Ok(None);
    }
    // Already split in an earlier pass, or not worth it: every input must
    // be one source's, so each partial runs there.
    if union
        .schema
        .fields()
        .iter()
        .any(|f| f.name().starts_with(PARTIAL))
    {
        return Ok(None);
    }
    // One source that runs the whole union runs the aggregate too.
    if sole_source(below)?.is_some() {
        return Ok(None);
    }
    for input in &union.inputs {
        if sole_source(input)?.is_none() {
            return Ok(None);
        }
    }
    let mut functions = Vec::new();
    for e in &agg.aggr_expr {
        let Expr::AggregateFunction(f) = e else {
            return Ok(None);
        };
        let Some(k) = kind(f, agg.input.schema()) else {
            return Ok(None);
        };
        functions.push((k, f.params.args[0].clone()));
    }

    // The aggregate's input columns, by position, in each union input.
    let top = agg.input.schema();
    // Per aggregate: the partial column(s) it is computed from.
    let mut slots: Vec<(usize, Option<usize>)> = Vec::new();
    let mut partials = Vec::with_capacity(union.inputs.len());
    for input in &union.inputs {
        let mut columns = HashMap::new();
        for i in 0..top.fields().len() {
            columns.insert(
                Column::from(top.qualified_field(i)),
                Expr::Column(Column::from(input.schema().qualified_field(i))),
            );
        }
        let remap = |e: &Expr| -> Result<Expr> {
            e.clone()
                .transform(|e| match &e {
                    Expr::Column(c) => match columns.get(c) {
                        Some(mapped) => Ok(Transformed::yes(mapped.clone())),
                        None => Ok(Transformed::no(e)),
                    },
                    _ => Ok(Transformed::no(e)),
                })
                .map(|t| t.data)
        };
        let group = agg
            .group_expr
            .iter()
            .enumerate()
            .map(|(j, g)| Ok(remap(g)?.alias(format!("{PARTIAL}g{j}"))))
            .collect::<Result<Vec<_>>>()?;
        // Equal partials are computed once: the site plans the SQL again,
        // and two aggregates of one name are an error there (`sum(x)` twice
        // when the query has both `sum(x)` and `avg(x)`).
        let mut exprs: Vec<Expr> = Vec::new();
        let mut slot = |e: Expr| match exprs.iter().position(|x| *x == e) {
            Some(i) => i,
            None => {
                exprs.push(e);
                exprs.len() - 1
            }
        };
        let mut slots_of_input = Vec::with_capacity(functions.len());
        for (k, arg) in &functions {
            let arg = remap(arg)?;
            let float = |arg: Expr, input: &LogicalPlan| -> Result<Expr> {
                Ok(if arg.get_type(input.schema())? == DataType::Float64 {
                    arg
                } else {
                    cast(arg, DataType::Float64)
                })
            };
            slots_of_input.push(match k {
                Kind::Sum => (slot(sum(arg)), None),
                Kind::Count => (slot(count(arg)), None),
                Kind::Min => (slot(min(arg)), None),
                Kind::Max => (slot(max(arg)), None),
                Kind::Avg => {
                    let total = slot(sum(float(arg.clone(), input)?));
                    (total, Some(slot(count(arg))))
                }
            });
        }
        let exprs: Vec<Expr> = exprs
            .into_iter()
            .enumerate()
            .map(|(i, e)| e.alias(format!("{PARTIAL}{i}")))
            .collect();
        // Every input has the same aggregates, so the same slots.
        slots = slots_of_input;
        partials.push(LogicalPlan::Aggregate(Aggregate::try_new(
            Arc::clone(input),
            group,
            exprs,
        )?));
    }
    let mut partials = partials.into_iter();
    let Some(first) = partials.next() else {
        return Ok(None);
    };
    let mut unioned = LogicalPlanBuilder::from(first);
    for partial in partials {
        unioned = unioned.union(partial)?;
    }
    let unioned = unioned.build()?;

    // The final aggregate over the partial rows, then the original names
    // and types.
    let column = |name: String| Expr::Column(Column::from_name(name));
    let group: Vec<Expr> = (0..agg.group_expr.len())
        .map(|j| column(format!("{PARTIAL}g{j}")))
        .collect();
    let partial_count = slots
        .iter()
        .flat_map(|(a, b)| std::iter::once(*a).chain(*b))
        .max()
        .map_or(0, |m| m + 1);
    let mut finals = Vec::new();
    for i in 0..partial_count {
        // Which function combines partial `i`: min and max their own,
        // sums and counts a sum.
        let combine = functions
            .iter()
            .zip(&slots)
            .find_map(|((k, _), (a, _))| (*a == i).then_some(*k));
        let p = column(format!("{PARTIAL}{i}"));
        let f = match combine {
            Some(Kind::Min) => min(p),
            Some(Kind::Max) => max(p),
            _ => sum(p),
        };
        finals.push(f.alias(format!("{PARTIAL}final_{i}")));
    }
    let final_agg = LogicalPlan::Aggregate(Aggregate::try_new(Arc::new(unioned), group, finals)?);
    let original = agg.schema.as_ref();
    let groups = agg.group_expr.len();
    let mut outputs = Vec::with_capacity(original.fields().len());
    for i in 0..original.fields().len() {
        let (qualifier, field) = original.qualified_field(i);
        let value = if i < groups {
            Expr::Column(Column::from(final_agg.schema().qualified_field(i)))
        } else {
            let final_of = |slot: usize| column(format!("{PARTIAL}final_{slot}"));
            match slots.get(i - groups) {
                Some((total, Some(n))) => {
                    cast(final_of(*total), DataType::Float64)
                        / cast(final_of(*n), DataType::Float64)
                }
                Some((slot, None)) => final_of(*slot),
                None => return Ok(None),
            }
        };
        let value = if value.get_type(final_agg.schema())? == *field.data_type() {
            value
        } else {
            cast(value, field.data_type().clone())
        };
        outputs.push(value.alias_qualified(qualifier.cloned(), field.name()));
    }
    Ok(Some(LogicalPlan::Projection(Projection::try_new(
        outputs,
        Arc::new(final_agg),
    )?)))
}
