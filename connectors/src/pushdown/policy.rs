//! What each source dialect may run with exactly DataFusion's semantics.

use std::fmt::Debug;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::DFSchema;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, JoinType, LogicalPlan, Operator};

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

/// The SQL dialect a source speaks: decides how plans are unparsed and what
/// may be pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceDialect {
    /// PostgreSQL (the native connector, or psqlODBC).
    Postgres,
    /// MySQL and MariaDB.
    MySql,
    /// SQLite.
    Sqlite,
    /// Any other ODBC source: only what ANSI SQL guarantees.
    Generic,
    /// Another fedsql (a site): the same engine, so every expression means
    /// there what it means here; only what the unparser cannot write stays.
    Fedsql,
}

impl SourceDialect {
    /// The compute context (datafusion-federation's name for "which engine
    /// runs this") of a source: the dialect first, so the optimizer rule can
    /// find the policy, then what tells sources apart.
    pub fn compute_context(self, identity: &str) -> String {
        format!("{}+{identity}", self.name())
    }

    /// The dialect a [`compute_context`](Self::compute_context) names.
    pub fn from_compute_context(context: &str) -> Option<Self> {
        Self::from_name(context.split_once('+')?.0)
    }

    /// The dialect named by an ODBC source's `dialect` option.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Some(SourceDialect::Postgres),
            "mysql" | "mariadb" => Some(SourceDialect::MySql),
            "sqlite" => Some(SourceDialect::Sqlite),
            "generic" | "ansi" => Some(SourceDialect::Generic),
            "fedsql" => Some(SourceDialect::Fedsql),
            _ => None,
        }
    }

    /// The option value naming this dialect.
    pub fn name(self) -> &'static str {
        match self {
            SourceDialect::Postgres => "postgres",
            SourceDialect::MySql => "mysql",
            SourceDialect::Sqlite => "sqlite",
            SourceDialect::Generic => "generic",
            SourceDialect::Fedsql => "fedsql",
        }
    }

    /// Whether `=` on text gives DataFusion's (byte-wise) answer. MySQL's
    /// default collations ignore case, accents and trailing spaces.
    fn exact_text_equality(self) -> bool {
        matches!(
            self,
            SourceDialect::Postgres | SourceDialect::Sqlite | SourceDialect::Fedsql
        )
    }

    /// Whether `<`, `ORDER BY` and `min`/`max` on text order bytes like
    /// DataFusion: SQLite's default BINARY collation does, Postgres and
    /// MySQL order by the database's collation.
    fn byte_text_ordering(self) -> bool {
        matches!(self, SourceDialect::Sqlite | SourceDialect::Fedsql)
    }

    /// Whether `LIKE` is case-sensitive as in DataFusion (SQLite's and
    /// MySQL's are not, for ASCII letters).
    fn exact_like(self) -> bool {
        matches!(self, SourceDialect::Postgres | SourceDialect::Fedsql)
    }

    /// Whether integer `/` and `%` truncate as in DataFusion (MySQL's `/`
    /// returns a decimal).
    fn integer_division(self) -> bool {
        matches!(
            self,
            SourceDialect::Postgres | SourceDialect::Sqlite | SourceDialect::Fedsql
        )
    }

    /// Whether dates and timestamps are real types there: SQLite stores them
    /// as text or numbers, and the unparsed `CAST('…' AS DATE)` means
    /// something else to it.
    fn temporal_comparisons(self) -> bool {
        matches!(
            self,
            SourceDialect::Postgres | SourceDialect::MySql | SourceDialect::Fedsql
        )
    }

    /// Whether `ORDER BY` (and so TopK) may run there. Only Postgres agrees
    /// with DataFusion on NULL placement and text order for the sorts fedsql
    /// sends.
    fn sorts(self) -> bool {
        matches!(self, SourceDialect::Postgres | SourceDialect::Fedsql)
    }

    /// Whether `FULL [OUTER] JOIN` exists: MySQL and MariaDB have none
    /// (sending one only earns a syntax error and a fallback).
    fn full_joins(self) -> bool {
        !matches!(self, SourceDialect::MySql)
    }

    /// Whether `LIMIT` exists (ANSI has `FETCH FIRST`).
    fn limits(self) -> bool {
        !matches!(self, SourceDialect::Generic)
    }

    /// Scalar functions whose results are identical to DataFusion's.
    fn functions(self) -> &'static [&'static str] {
        match self {
            SourceDialect::Postgres => POSTGRES_FUNCTIONS,
            SourceDialect::MySql | SourceDialect::Sqlite => &["abs", "coalesce", "nullif"],
            SourceDialect::Generic => &["coalesce", "nullif"],
            // Not consulted: every function is the same there.
            SourceDialect::Fedsql => &[],
        }
    }

    /// Aggregates whose results are identical to DataFusion's (up to float
    /// summation order). MySQL's `avg` of integers rounds to four decimals.
    fn aggregates(self) -> &'static [&'static str] {
        match self {
            SourceDialect::Postgres | SourceDialect::Sqlite | SourceDialect::Fedsql => {
                &["count", "sum", "avg", "min", "max"]
            }
            SourceDialect::MySql | SourceDialect::Generic => &["count", "sum", "min", "max"],
        }
    }
}

/// What a source may run with exactly DataFusion's semantics, per dialect.
///
/// PostgreSQL: arithmetic, comparisons, boolean logic, `CASE`, `IN`, `LIKE`,
/// joins, `GROUP BY` with `count`/`sum`/`avg`/`min`/`max`, sorts and limits —
/// except where Postgres differs from DataFusion:
///
/// - string ordering (`<`, `ORDER BY`, `min`/`max` on text) follows the
///   database's collation, so it stays local;
/// - division of anything but integers (decimal scale and float division by
///   zero differ) stays local;
/// - casts from fractional to integer types (Postgres rounds, Arrow truncates)
///   and casts to text (different formats) stay local;
/// - functions are pushed only from a short list with identical semantics.
///
/// The other dialects push less; see the capability methods of
/// [`SourceDialect`] for each difference and why.
#[derive(Debug, Clone, Copy)]
pub struct DialectPolicy(pub SourceDialect);

/// The policy of the native Postgres connector.
pub const POSTGRES_POLICY: DialectPolicy = DialectPolicy(SourceDialect::Postgres);

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

impl PushdownPolicy for DialectPolicy {
    fn allows(&self, plan: &LogicalPlan) -> bool {
        let dialect = self.0;
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
        let exprs_ok = || {
            plan.expressions()
                .iter()
                .all(|e| expr_ok(dialect, e, &schema))
        };
        // Grouping, DISTINCT and set operations compare values for equality.
        let output_text_ok = || {
            dialect.exact_text_equality()
                || !plan
                    .schema()
                    .fields()
                    .iter()
                    .any(|f| is_text_type(f.data_type()))
        };
        match plan {
            LogicalPlan::TableScan(scan) => {
                scan.filters.iter().all(|e| expr_ok(dialect, e, &schema))
            }
            // A join without any condition is a cross product: sending it alone
            // would make the source stream |A|×|B| rows. It goes only as part
            // of a larger pushed plan (with the filter that makes it a join).
            LogicalPlan::Join(join) if join.on.is_empty() && join.filter.is_none() => false,
            // DataFusion 55's unparser loses filters under some semi/anti
            // joins; the ones it cannot be helped with run in fedsql.
            LogicalPlan::Join(join) if !super::semi_join::unparses_correctly(join) => false,
            LogicalPlan::Join(join)
                if join.join_type == JoinType::Full && !dialect.full_joins() =>
            {
                false
            }
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
            LogicalPlan::Aggregate(agg) => {
                exprs_ok()
                    && (dialect.exact_text_equality()
                        || !agg.group_expr.iter().any(|e| is_text(e, &schema)))
            }
            LogicalPlan::Limit(_) => dialect.limits() && exprs_ok(),
            LogicalPlan::Distinct(_) | LogicalPlan::Union(_) => output_text_ok() && exprs_ok(),
            // A join's keys are listed as separate expressions; as a pair
            // they are equalities, with the same text and time rules.
            LogicalPlan::Join(join) => {
                exprs_ok()
                    && join
                        .on
                        .iter()
                        .all(|(l, r)| expr_ok(dialect, &l.clone().eq(r.clone()), &schema))
            }
            LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) => {
                exprs_ok()
            }
            LogicalPlan::Sort(sort) => {
                dialect.sorts()
                    && sort.expr.iter().all(|s| {
                        expr_ok(dialect, &s.expr, &schema)
                            && (dialect.byte_text_ordering() || !is_text(&s.expr, &schema))
                    })
            }
            _ => false,
        }
    }
}

/// Decimal digits the largest value of an integer type has.
fn integer_digits(t: &DataType) -> i32 {
    match t {
        DataType::Int8 | DataType::UInt8 => 3,
        DataType::Int16 | DataType::UInt16 => 5,
        DataType::Int32 | DataType::UInt32 => 10,
        DataType::Int64 => 19,
        _ => 20,
    }
}

fn is_text_type(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// Text, or a type that cannot be determined (treated as text: unsafe).
fn is_text(expr: &Expr, schema: &DFSchema) -> bool {
    expr.get_type(schema).map_or(true, |t| is_text_type(&t))
}

fn is_integer(expr: &Expr, schema: &DFSchema) -> bool {
    expr.get_type(schema).is_ok_and(|t| t.is_integer())
}

fn is_numeric(expr: &Expr, schema: &DFSchema) -> bool {
    expr.get_type(schema).is_ok_and(|t| t.is_numeric())
}

fn is_temporal(expr: &Expr, schema: &DFSchema) -> bool {
    expr.get_type(schema).map_or(true, |t| {
        t.is_temporal() || matches!(t, DataType::Interval(_) | DataType::Duration(_))
    })
}

impl DialectPolicy {
    /// Whether `predicate` — one conjunct of a filter this source may not
    /// run exactly — selects at the source a superset of the rows DataFusion
    /// keeps, so sending it cuts what comes back without losing a row (the
    /// exact filter still runs in fedsql). Under MySQL's case- and
    /// pad-insensitive collations `text = 'x'`, `text IN ('x', …)` and
    /// `text LIKE 'p'` match every row that matches byte by byte, and maybe
    /// more. Negations would lose rows and are never loose.
    pub fn loose_filter_ok(&self, predicate: &Expr, schema: &DFSchema) -> bool {
        if self.0 != SourceDialect::MySql {
            return false;
        }
        let text_column = |e: &Expr| matches!(e, Expr::Column(_)) && is_text(e, schema);
        let is_text_literal = |e: &Expr| text_literal(e).is_some();
        match predicate {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) => {
                (text_column(left) && is_text_literal(right))
                    || (is_text_literal(left) && text_column(right))
            }
            Expr::InList(list) => {
                !list.negated && text_column(&list.expr) && list.list.iter().all(is_text_literal)
            }
            // A backslash escapes in MySQL's LIKE, not in DataFusion's.
            Expr::Like(like) => {
                !like.negated
                    && !like.case_insensitive
                    && like.escape_char.is_none()
                    && text_column(&like.expr)
                    && text_literal(&like.pattern).is_some_and(|p| !p.contains('\\'))
            }
            _ => false,
        }
    }
}

/// The value of a text literal.
fn text_literal(e: &Expr) -> Option<&str> {
    match e {
        Expr::Literal(
            datafusion::common::ScalarValue::Utf8(Some(v))
            | datafusion::common::ScalarValue::Utf8View(Some(v))
            | datafusion::common::ScalarValue::LargeUtf8(Some(v)),
            _,
        ) => Some(v),
        _ => None,
    }
}

/// Whether every node of `expr` is safe to run at a source of `dialect`.
fn expr_ok(dialect: SourceDialect, expr: &Expr, schema: &DFSchema) -> bool {
    if dialect == SourceDialect::Fedsql {
        // The same engine runs it; subqueries were excluded before.
        return true;
    }
    let text_equality_ok = |e: &Expr| dialect.exact_text_equality() || !is_text(e, schema);
    let ordering_ok = |e: &Expr| {
        (dialect.byte_text_ordering() || !is_text(e, schema))
            && (dialect.temporal_comparisons() || !is_temporal(e, schema))
    };
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
            | Expr::Negative(_) => true,
            Expr::Case(case) => case.expr.as_deref().is_none_or(|b| {
                text_equality_ok(b) && (dialect.temporal_comparisons() || !is_temporal(b, schema))
            }),
            Expr::InList(list) => {
                text_equality_ok(&list.expr)
                    && (dialect.temporal_comparisons() || !is_temporal(&list.expr, schema))
            }
            Expr::Between(b) => ordering_ok(&b.expr),
            Expr::Like(like) => {
                dialect.exact_like() && !like.case_insensitive && like.escape_char.is_none()
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
                Operator::And | Operator::Or => true,
                Operator::Eq
                | Operator::NotEq
                | Operator::IsDistinctFrom
                | Operator::IsNotDistinctFrom => {
                    text_equality_ok(left)
                        && text_equality_ok(right)
                        && (dialect.temporal_comparisons()
                            || !(is_temporal(left, schema) || is_temporal(right, schema)))
                }
                Operator::Plus | Operator::Minus | Operator::Multiply => {
                    dialect == SourceDialect::Postgres
                        || (is_numeric(left, schema) && is_numeric(right, schema))
                }
                Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => {
                    ordering_ok(left) && ordering_ok(right)
                }
                Operator::Divide | Operator::Modulo => {
                    dialect.integer_division()
                        && is_integer(left, schema)
                        && is_integer(right, schema)
                }
                _ => false,
            },
            Expr::Cast(cast) => {
                let from = cast.expr.get_type(schema);
                let to = cast.field.data_type();
                match from {
                    Ok(from) if from == *to => true,
                    // An integer into a decimal with room for all its
                    // digits is exact in MySQL too.
                    // So is widening one to Int64 (`CAST(x AS SIGNED)`, as
                    // DataFusion's `sum` over ints asks for).
                    Ok(from) if dialect == SourceDialect::MySql && from.is_integer() => {
                        match to {
                            DataType::Decimal128(p, s) => {
                                i32::from(*p) - i32::from(*s) >= integer_digits(&from)
                            }
                            DataType::Int64 => from != DataType::UInt64,
                            _ => false,
                        }
                    }
                    // Other dialects spell and round casts their own way.
                    _ if dialect != SourceDialect::Postgres => false,
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
            Expr::ScalarFunction(f) => dialect.functions().contains(&f.name()),
            Expr::AggregateFunction(agg) => {
                let name = agg.func.name().to_ascii_lowercase();
                let params = &agg.params;
                let args_ok = params.args.iter().all(|a| match name.as_str() {
                    "min" | "max" => ordering_ok(a),
                    // SQLite keeps decimals as floats: its sums are inexact.
                    "sum" | "avg" => {
                        dialect != SourceDialect::Sqlite
                            || !matches!(a.get_type(schema), Ok(DataType::Decimal128(..)))
                    }
                    _ => !params.distinct || text_equality_ok(a),
                });
                dialect.aggregates().contains(&name.as_str())
                    && params.filter.is_none()
                    && params.order_by.is_empty()
                    && args_ok
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
        let expr_ok = |e: &Expr, s: &DFSchema| super::expr_ok(SourceDialect::Postgres, e, s);
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

#[cfg(test)]
mod dialect_tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::logical_expr::{col, lit};

    fn schema() -> DFSchema {
        DFSchema::try_from(Schema::new(vec![
            Field::new("i", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("d", DataType::Date32, true),
            Field::new("m", DataType::Decimal128(15, 2), true),
        ]))
        .unwrap()
    }

    #[test]
    fn mysql_has_no_full_join() {
        use datafusion::logical_expr::{table_scan, LogicalPlanBuilder};
        let fields = Schema::new(vec![Field::new("i", DataType::Int64, true)]);
        let scan = |name| {
            table_scan(Some(name), &fields, None)
                .unwrap()
                .build()
                .unwrap()
        };
        let join = |kind| {
            LogicalPlanBuilder::from(scan("a"))
                .join(scan("b"), kind, (vec!["a.i"], vec!["b.i"]), None)
                .unwrap()
                .build()
                .unwrap()
        };
        let my = DialectPolicy(SourceDialect::MySql);
        assert!(my.allows(&join(JoinType::Left)));
        // Keys of text compare by collation in MySQL: the join stays local.
        let names = Schema::new(vec![Field::new("s", DataType::Utf8, true)]);
        let text_join = LogicalPlanBuilder::from(
            table_scan(Some("a"), &names, None)
                .unwrap()
                .build()
                .unwrap(),
        )
        .join(
            table_scan(Some("b"), &names, None)
                .unwrap()
                .build()
                .unwrap(),
            JoinType::Inner,
            (vec!["a.s"], vec!["b.s"]),
            None,
        )
        .unwrap()
        .build()
        .unwrap();
        assert!(!my.allows(&text_join));
        assert!(POSTGRES_POLICY.allows(&text_join));
        assert!(!my.allows(&join(JoinType::Full)));
        assert!(POSTGRES_POLICY.allows(&join(JoinType::Full)));
    }

    #[test]
    fn mysql_keeps_collation_dependent_text_local() {
        let s = schema();
        let my = SourceDialect::MySql;
        assert!(expr_ok(my, &col("i").gt(lit(3)), &s));
        assert!(!expr_ok(my, &col("s").eq(lit("x")), &s), "ci collations");
        assert!(!expr_ok(my, &col("s").in_list(vec![lit("x")], false), &s));
        assert!(!expr_ok(my, &col("s").like(lit("x%")), &s));
        assert!(!expr_ok(my, &(col("i") / lit(2)), &s), "MySQL / is decimal");
        assert!(expr_ok(my, &col("d").gt(col("d")), &s), "dates are dates");
    }

    #[test]
    fn sqlite_text_is_binary_but_dates_are_not_types() {
        let s = schema();
        let lite = SourceDialect::Sqlite;
        assert!(expr_ok(lite, &col("s").eq(lit("x")), &s));
        assert!(
            expr_ok(lite, &col("s").lt(lit("x")), &s),
            "BINARY collation"
        );
        assert!(
            !expr_ok(lite, &col("s").like(lit("x%")), &s),
            "LIKE ignores case"
        );
        assert!(!expr_ok(lite, &col("d").eq(col("d")), &s));
        assert!(expr_ok(lite, &(col("i") / lit(2)), &s));
    }

    #[test]
    fn generic_pushes_only_plain_comparisons() {
        let s = schema();
        let g = SourceDialect::Generic;
        assert!(expr_ok(
            g,
            &col("i").eq(lit(3)).and(col("m").gt(lit(1))),
            &s
        ));
        assert!(!expr_ok(g, &col("s").eq(lit("x")), &s));
        assert!(!expr_ok(g, &col("d").lt(col("d")), &s));
        assert_eq!(
            SourceDialect::from_name("MariaDB"),
            Some(SourceDialect::MySql)
        );
        assert_eq!(SourceDialect::from_name("oracle"), None);
    }
}
