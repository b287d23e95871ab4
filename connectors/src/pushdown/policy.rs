//! What each source dialect may run with exactly DataFusion's semantics.

use std::fmt::Debug;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::DFSchema;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator};

/// Decides whether a plan node may run at a source.
///
/// An implementor must answer `false` for anything whose result at the
/// source could differ from DataFusion's — a wrong row is worse than a slow
/// query. Table scans, projections of plain columns and limits are always
/// safe; everything else is opt-in.
pub trait PushdownPolicy: Debug + Send + Sync {
    /// Whether `plan` (one node; its inputs are checked separately) may be
    /// part of a remote query.
    fn allows(&self, plan: &LogicalPlan) -> bool;
}

/// PostgreSQL: arithmetic, comparisons, boolean logic, `CASE`, `IN`,
/// `LIKE`, joins, `GROUP BY` with `count`/`sum`/`avg`/`min`/`max`, sorts and
/// limits — except where Postgres differs from DataFusion:
///
/// - string ordering (`<`, `ORDER BY`, `min`/`max` on text) follows the
///   database's collation, so it stays local;
/// - division of anything but integers (decimal scale and float division by
///   zero differ) stays local;
/// - casts from fractional to integer types (Postgres rounds, Arrow truncates)
///   and casts to text (different formats) stay local;
/// - functions are pushed only from a short list with identical semantics.
#[derive(Debug, Default, Clone, Copy)]
pub struct PostgresPolicy;

/// Functions whose Postgres and DataFusion results are identical.
const POSTGRES_FUNCTIONS: &[&str] = &[
    "abs",
    "coalesce",
    "nullif",
    "character_length",
    "char_length",
    "length",
    "octet_length",
    "concat",
    "substr",
    "substring",
    "btrim",
    "ltrim",
    "rtrim",
    "strpos",
    "starts_with",
    "replace",
    "sign",
    "floor",
    "ceil",
];

const POSTGRES_AGGREGATES: &[&str] = &["count", "sum", "avg", "min", "max"];

impl PushdownPolicy for PostgresPolicy {
    fn allows(&self, plan: &LogicalPlan) -> bool {
        let inputs = plan.inputs();
        // Expressions are typed against the node's input (a join: both sides).
        let schema = match inputs.as_slice() {
            [] => plan.schema().as_ref().clone(),
            [one] => one.schema().as_ref().clone(),
            many => {
                let mut merged = many[0].schema().as_ref().clone();
                for other in &many[1..] {
                    merged.merge(other.schema());
                }
                merged
            }
        };
        match plan {
            LogicalPlan::TableScan(scan) => scan.filters.iter().all(|e| expr_ok(e, &schema)),
            // A join without any condition is a cross product: sending it alone
            // would make the source stream |A|×|B| rows. It goes only as part
            // of a larger pushed plan (with the filter that makes it a join).
            LogicalPlan::Join(join) if join.on.is_empty() && join.filter.is_none() => false,
            // The unparser writes a constant grouping key as a literal, which
            // Postgres reads as "GROUP BY <column position>" or rejects.
            LogicalPlan::Aggregate(agg)
                if agg
                    .group_expr
                    .iter()
                    .any(|e| matches!(e.clone().unalias(), Expr::Literal(..))) =>
            {
                false
            }
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::Join(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Distinct(_)
            | LogicalPlan::Union(_)
            | LogicalPlan::Aggregate(_) => plan.expressions().iter().all(|e| expr_ok(e, &schema)),
            LogicalPlan::Sort(sort) => sort
                .expr
                .iter()
                .all(|s| expr_ok(&s.expr, &schema) && !is_text(&s.expr, &schema)),
            _ => false,
        }
    }
}

fn is_text(expr: &Expr, schema: &DFSchema) -> bool {
    matches!(
        expr.get_type(schema),
        Ok(DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) | Err(_)
    )
}

fn is_integer(expr: &Expr, schema: &DFSchema) -> bool {
    expr.get_type(schema).is_ok_and(|t| t.is_integer())
}

/// Whether every node of `expr` is safe to run in Postgres.
fn expr_ok(expr: &Expr, schema: &DFSchema) -> bool {
    let mut ok = true;
    let _ = expr.apply(|e| {
        let node_ok = match e {
            Expr::Column(_) | Expr::Literal(..) | Expr::Alias(_) => true,
            Expr::Not(_)
            | Expr::IsNull(_)
            | Expr::IsNotNull(_)
            | Expr::IsTrue(_)
            | Expr::IsFalse(_)
            | Expr::IsNotTrue(_)
            | Expr::IsNotFalse(_)
            | Expr::Negative(_)
            | Expr::Case(_)
            | Expr::InList(_) => true,
            Expr::Between(b) => !is_text(&b.expr, schema),
            Expr::Like(like) => !like.case_insensitive && like.escape_char.is_none(),
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
                Operator::Eq
                | Operator::NotEq
                | Operator::And
                | Operator::Or
                | Operator::Plus
                | Operator::Minus
                | Operator::Multiply
                | Operator::IsDistinctFrom
                | Operator::IsNotDistinctFrom => true,
                Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => {
                    !is_text(left, schema) && !is_text(right, schema)
                }
                Operator::Divide | Operator::Modulo => {
                    is_integer(left, schema) && is_integer(right, schema)
                }
                _ => false,
            },
            Expr::Cast(cast) => {
                let from = cast.expr.get_type(schema);
                let to = cast.field.data_type();
                match from {
                    Ok(from) if from == *to => true,
                    Ok(from) if from.is_integer() => to.is_numeric(),
                    // Widening a decimal is exact in both systems.
                    Ok(DataType::Decimal128(p, s)) => {
                        matches!(to, DataType::Decimal128(tp, ts) if *ts >= s && tp - *ts as u8 >= p - s as u8)
                    }
                    Ok(from) if from.is_floating() => to.is_floating(),
                    Ok(DataType::Date32) => matches!(to, DataType::Timestamp(_, None)),
                    _ => false,
                }
            }
            Expr::ScalarFunction(f) => POSTGRES_FUNCTIONS.contains(&f.name()),
            Expr::AggregateFunction(agg) => {
                let name = agg.func.name().to_ascii_lowercase();
                let params = &agg.params;
                POSTGRES_AGGREGATES.contains(&name.as_str())
                    && params.filter.is_none()
                    && params.order_by.is_empty()
                    && !(matches!(name.as_str(), "min" | "max")
                        && params.args.iter().any(|a| is_text(a, schema)))
            }
            // Subqueries are planned (and checked) on their own.
            Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) => true,
            _ => false,
        };
        if node_ok {
            Ok(TreeNodeRecursion::Continue)
        } else {
            ok = false;
            Ok(TreeNodeRecursion::Stop)
        }
    });
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::logical_expr::{cast, col, lit};

    fn schema() -> DFSchema {
        DFSchema::try_from(Schema::new(vec![
            Field::new("i", DataType::Int64, true),
            Field::new("f", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("d", DataType::Decimal128(15, 2), true),
        ]))
        .unwrap()
    }

    #[test]
    fn safe_and_unsafe_expressions() {
        let s = schema();
        assert!(expr_ok(&col("i").gt(lit(3)), &s));
        assert!(expr_ok(&col("s").eq(lit("x")), &s));
        assert!(
            !expr_ok(&col("s").gt(lit("x")), &s),
            "string order depends on collation"
        );
        assert!(expr_ok(&(col("i") / lit(2)), &s));
        assert!(!expr_ok(&(col("f") / lit(2.0)), &s));
        assert!(
            !expr_ok(&cast(col("f"), DataType::Int64), &s),
            "PG rounds, Arrow truncates"
        );
        assert!(expr_ok(&cast(col("i"), DataType::Float64), &s));
        assert!(!expr_ok(&cast(col("i"), DataType::Utf8), &s));
        assert!(expr_ok(&cast(col("d"), DataType::Decimal128(22, 2)), &s));
        assert!(!expr_ok(&cast(col("d"), DataType::Decimal128(10, 2)), &s));
        assert!(!expr_ok(&cast(col("d"), DataType::Decimal128(15, 1)), &s));
    }
}
