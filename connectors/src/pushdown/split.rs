//! Splitting a plain table scan into key ranges read in parallel (Postgres
//! `COPY`s, ODBC fetches).
//!
//! Only a query that reads rows of one table — no joins, grouping,
//! aggregates, ordering, `DISTINCT` or `LIMIT` — can be split: each range
//! query returns a disjoint subset of its rows, so their union is the answer.
//! The split key is the first column of the table's primary key when it is
//! an integer, found when the source's tables are discovered.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::physical_expr::PhysicalExpr;

use super::join_filter::{key_constraints, KeyConstraint};

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::LogicalPlan;

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, GroupByExpr, Ident, ObjectName, Query, SelectItem, SetExpr, Statement,
    TableFactor, Value,
};
use datafusion::sql::sqlparser::dialect::Dialect;
use datafusion::sql::sqlparser::parser::Parser;

/// A scan fedsql may split on an integer key.
#[derive(Debug, Clone)]
pub struct SplittableScan {
    query: Box<Query>,
    /// The table as written in the query (already quoted by the unparser).
    pub table: ObjectName,
    /// `schema.table`, for looking up the key.
    pub qualified: String,
}

impl SplittableScan {
    /// Recognizes a plain scan of one table in `sql` (written for
    /// `dialect`); an unqualified table is in `default_schema`.
    pub fn parse(sql: &str, dialect: &dyn Dialect, default_schema: &str) -> Option<SplittableScan> {
        let mut statements = Parser::parse_sql(dialect, sql).ok()?;
        let Some(Statement::Query(query)) = statements.pop() else {
            return None;
        };
        if query.with.is_some()
            || query.order_by.is_some()
            || query.limit_clause.is_some()
            || query.fetch.is_some()
        {
            return None;
        }
        let SetExpr::Select(select) = query.body.as_ref() else {
            return None;
        };
        let ungrouped = matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
        if !ungrouped
            || select.having.is_some()
            || select.distinct.is_some()
            || select.from.len() != 1
            || !select.from[0].joins.is_empty()
        {
            return None;
        }
        // Plain columns only: a function could be an aggregate over all rows.
        let plain = select.projection.iter().all(|item| match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_))
            }
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => true,
            _ => false,
        });
        if !plain {
            return None;
        }
        let TableFactor::Table {
            name, args: None, ..
        } = &select.from[0].relation
        else {
            return None;
        };
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(|p| p.as_ident().map(|i| i.value.clone()))
            .collect();
        let qualified = match parts.as_slice() {
            [table] => format!("{default_schema}.{table}"),
            [schema, table] => format!("{schema}.{table}"),
            _ => return None,
        };
        Some(SplittableScan {
            table: name.clone(),
            qualified,
            query,
        })
    }

    /// `key`, quoted as the query quotes its table.
    pub fn quoted(&self, key: &str) -> Ident {
        let quote = self
            .table
            .0
            .last()
            .and_then(|p| p.as_ident())
            .and_then(|i| i.quote_style)
            .unwrap_or('"');
        Ident::with_quote(quote, key)
    }

    /// The scan restricted to `lo <= key < hi` (`hi = None`: no upper bound).
    pub fn with_range(&self, key: &str, lo: i64, hi: Option<i64>) -> String {
        let column = Expr::Identifier(self.quoted(key));
        let mut range = compare(&column, BinaryOperator::GtEq, lo);
        if let Some(hi) = hi {
            range = and(range, compare(&column, BinaryOperator::Lt, hi));
        }
        self.with_predicate(range).query.to_string()
    }

    /// The scan with `predicate` added to its `WHERE`.
    fn with_predicate(&self, predicate: Expr) -> SplittableScan {
        let mut scan = self.clone();
        if let SetExpr::Select(select) = scan.query.body.as_mut() {
            select.selection = Some(match select.selection.take() {
                Some(existing) => and(Expr::Nested(Box::new(existing)), predicate),
                None => predicate,
            });
        }
        scan
    }

    /// The scan narrowed to the join keys `constraints` allow (by output
    /// column; see `join_filter`); `None` allows no row. Columns the query
    /// does not select plainly are left alone.
    pub fn narrowed(&self, constraints: Option<&BTreeMap<usize, KeyConstraint>>) -> SplittableScan {
        let Some(constraints) = constraints else {
            return self.with_predicate(never());
        };
        let mut scan = self.clone();
        for (index, constraint) in constraints {
            let Some(column) = self.output_column(*index) else {
                continue;
            };
            let predicate = match constraint {
                KeyConstraint::Values(values) if values.is_empty() => never(),
                KeyConstraint::Values(values) => Expr::InList {
                    expr: Box::new(column),
                    list: values.iter().map(|v| number(*v)).collect(),
                    negated: false,
                },
                KeyConstraint::Range(lo, hi) => Expr::Between {
                    expr: Box::new(column),
                    negated: false,
                    low: Box::new(number(*lo)),
                    high: Box::new(number(*hi)),
                },
            };
            scan = scan.with_predicate(predicate);
        }
        scan
    }

    /// The scan narrowed by the join filters DataFusion handed the executor
    /// (read now: call it when the stream is first polled); `None` when
    /// they put no constraint on its columns.
    pub fn narrowed_by(
        &self,
        filters: &[Arc<dyn PhysicalExpr>],
        schema: &Schema,
    ) -> Option<SplittableScan> {
        if filters.is_empty() {
            return None;
        }
        let constraints = key_constraints(filters, schema);
        let usable = constraints
            .as_ref()
            .is_none_or(|c| c.keys().any(|index| self.output_column(*index).is_some()));
        usable.then(|| self.narrowed(constraints.as_ref()))
    }

    /// The column the query selects as its `index`th output, when it is a
    /// plain (possibly qualified) column.
    fn output_column(&self, index: usize) -> Option<Expr> {
        let SetExpr::Select(select) = self.query.body.as_ref() else {
            return None;
        };
        match select.projection.get(index)? {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }
                if matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) =>
            {
                Some(e.clone())
            }
            _ => None,
        }
    }

    /// The query as SQL.
    pub fn sql(&self) -> String {
        self.query.to_string()
    }
}

/// `1 = 0`: no row (every dialect reads it so).
fn never() -> Expr {
    compare(&number(1), BinaryOperator::Eq, 0)
}

fn number(v: i64) -> Expr {
    Expr::value(Value::Number(v.to_string(), false))
}

fn compare(column: &Expr, op: BinaryOperator, v: i64) -> Expr {
    Expr::BinaryOp {
        left: Box::new(column.clone()),
        op,
        right: Box::new(number(v)),
    }
}

fn and(left: Expr, right: Expr) -> Expr {
    Expr::BinaryOp {
        left: Box::new(left),
        op: BinaryOperator::And,
        right: Box::new(right),
    }
}

/// Tables the source estimates above this many rows are split without a
/// `partitions` option.
pub const AUTO_SPLIT_ROWS: f64 = 1_000_000.0;

/// The split keys a source's discovery found, and how many ranges a scan is
/// read in.
#[derive(Debug, Default)]
pub struct SplitKeys {
    /// The source's `partitions` option (`None`: chosen by table size).
    partitions: Option<usize>,
    /// `schema.table` → its integer key column and the row estimate.
    keys: RwLock<HashMap<String, (String, f64)>>,
}

impl SplitKeys {
    /// No keys yet; `partitions` is the source's option.
    pub fn new(partitions: Option<usize>) -> Self {
        SplitKeys {
            partitions,
            keys: RwLock::default(),
        }
    }

    /// Replaces the keys (at discovery).
    pub fn set(&self, keys: HashMap<String, (String, f64)>) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    /// Whether any scan could be split at all.
    pub fn may_split(&self) -> bool {
        self.partitions != Some(1)
            && !self
                .keys
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
    }

    /// Whether a table of about `estimated_rows` is worth a key lookup at
    /// discovery (there are sources where finding a key costs a round trip
    /// per table).
    pub fn wanted(&self, estimated_rows: Option<f64>) -> bool {
        match self.partitions {
            Some(n) => n > 1,
            None => estimated_rows.is_some_and(|r| r > AUTO_SPLIT_ROWS),
        }
    }

    /// The key to split `scan` on and into how many ranges, if it is worth it.
    pub fn split_key(&self, scan: &SplittableScan) -> Option<(String, usize)> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let (key, estimated_rows) = keys.get(&scan.qualified)?;
        let n = self.partition_count(*estimated_rows);
        (n > 1).then(|| (key.clone(), n))
    }

    /// Key ranges a scan of a table of about `estimated_rows` rows is read
    /// in: the `partitions` option, or for large tables one per core, so
    /// decoding keeps them busy.
    fn partition_count(&self, estimated_rows: f64) -> usize {
        match self.partitions {
            Some(n) => n,
            None if estimated_rows > AUTO_SPLIT_ROWS => {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            }
            None => 1,
        }
    }

    /// How many partitions a federated sub-plan is read as: a plain read of
    /// one table with a split key — column projections, filters and aliases
    /// over one scan without a limit, what [`SplittableScan::parse`]
    /// accepts of its SQL — gets its table's count; anything else 1.
    pub fn plan_partitions(&self, plan: &LogicalPlan) -> usize {
        if !self.may_split() {
            return 1;
        }
        let mut scans = Vec::new();
        let mut plain = true;
        let _ = plan.apply(|node| {
            match node {
                LogicalPlan::TableScan(scan) if scan.fetch.is_none() => {
                    scans.push(scan.table_name.clone())
                }
                LogicalPlan::Projection(p) => {
                    plain &= p.expr.iter().all(|e| {
                        matches!(e.clone().unalias(), datafusion::prelude::Expr::Column(_))
                    })
                }
                LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) => {}
                _ => plain = false,
            }
            Ok(TreeNodeRecursion::Continue)
        });
        let [table] = scans.as_slice() else {
            return 1;
        };
        if !plain {
            return 1;
        }
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let found = match table.schema() {
            Some(schema) => keys.get(&format!("{schema}.{}", table.table())),
            // Unqualified: the one discovered table of that name, if unique.
            None => {
                let suffix = format!(".{}", table.table());
                let mut matching = keys.iter().filter(|(k, _)| k.ends_with(&suffix));
                match (matching.next(), matching.next()) {
                    (Some((_, v)), None) => Some(v),
                    _ => None,
                }
            }
        };
        match found {
            Some((_, estimated_rows)) => self.partition_count(*estimated_rows),
            None => 1,
        }
    }
}

/// `n` half-open ranges covering `[min, max]` — the first unbounded below
/// (it starts at `i64::MIN`, taking rows below the minimum seen should any
/// arrive after the bounds were read), the last unbounded above.
pub fn ranges(min: i64, max: i64, n: usize) -> Vec<(i64, Option<i64>)> {
    let n = n.max(1) as i128;
    let span = (max as i128 - min as i128 + 1).max(1);
    let step = ((span + n - 1) / n).max(1);
    let mut out = Vec::new();
    let mut lo = min as i128;
    while lo <= max as i128 {
        let hi = lo + step;
        if hi > max as i128 {
            out.push((lo as i64, None));
            break;
        }
        out.push((lo as i64, Some(hi as i64)));
        lo = hi;
    }
    if let Some(first) = out.first_mut() {
        first.0 = i64::MIN;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::{MySqlDialect, PostgreSqlDialect};

    #[test]
    fn plain_scans_split_and_others_do_not() {
        let pg = PostgreSqlDialect {};
        let scan = SplittableScan::parse(
            r#"SELECT "t"."a", "t"."b" FROM "t" WHERE ("t"."a" > 5)"#,
            &pg,
            "public",
        )
        .unwrap();
        assert_eq!(scan.qualified, "public.t");
        let sql = scan.with_range("id", 10, Some(20));
        assert!(
            sql.contains(r#"WHERE (("t"."a" > 5)) AND "id" >= 10 AND "id" < 20"#),
            "{sql}"
        );
        for not in [
            r#"SELECT count(*) FROM "t""#,
            r#"SELECT "a" FROM "t" LIMIT 3"#,
            r#"SELECT "a" FROM "t" ORDER BY "a""#,
            r#"SELECT "t"."a" FROM "t" JOIN "u" ON "t"."a" = "u"."a""#,
            r#"SELECT DISTINCT "a" FROM "t""#,
        ] {
            assert!(SplittableScan::parse(not, &pg, "public").is_none(), "{not}");
        }
    }

    #[test]
    fn join_keys_narrow_the_scan() {
        let scan = SplittableScan::parse(
            r#"SELECT "t"."a", "t"."b" FROM "t" WHERE ("t"."c" > 5)"#,
            &PostgreSqlDialect {},
            "public",
        )
        .unwrap();
        let constraints = BTreeMap::from([
            (0, KeyConstraint::Values([3, 1].into())),
            (1, KeyConstraint::Range(10, 20)),
        ]);
        let sql = scan.narrowed(Some(&constraints)).sql();
        assert!(
            sql.ends_with(
                r#"WHERE ((("t"."c" > 5)) AND "t"."a" IN (1, 3)) AND "t"."b" BETWEEN 10 AND 20"#
            ),
            "{sql}"
        );
        assert!(scan.narrowed(None).sql().ends_with("AND 1 = 0"));
    }

    #[test]
    fn mysql_scans_split_with_backquoted_keys() {
        let scan = SplittableScan::parse(
            "SELECT `t`.`a` FROM `t` WHERE (`t`.`a` > 5)",
            &MySqlDialect {},
            "wh",
        )
        .unwrap();
        assert_eq!(scan.qualified, "wh.t");
        let sql = scan.with_range("id", 10, None);
        assert!(sql.ends_with("AND `id` >= 10"), "{sql}");
    }

    #[test]
    fn ranges_cover_the_keys_once() {
        assert_eq!(
            ranges(1, 10, 3),
            vec![(i64::MIN, Some(5)), (5, Some(9)), (9, None)]
        );
        assert_eq!(ranges(7, 7, 4), vec![(i64::MIN, None)]);
        assert_eq!(ranges(i64::MIN, i64::MAX, 2).len(), 2);
    }
}
