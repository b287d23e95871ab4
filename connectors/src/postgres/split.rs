//! Splitting a plain table scan into key ranges read by parallel `COPY`s.
//!
//! Only a query that reads rows of one table — no joins, grouping,
//! aggregates, ordering, `DISTINCT` or `LIMIT` — can be split: each range
//! query returns a disjoint subset of its rows, so their union is the answer.

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, GroupByExpr, Ident, ObjectName, Query, SelectItem, SetExpr, Statement,
    TableFactor, Value,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// A scan fedsql may split on an integer key.
#[derive(Debug, Clone)]
pub(crate) struct SplittableScan {
    query: Box<Query>,
    /// The table as written in the query (already quoted by the unparser).
    pub table: ObjectName,
    /// `schema.table`, for looking up the key.
    pub qualified: String,
}

impl SplittableScan {
    /// Recognizes a plain scan of one table.
    pub fn parse(sql: &str) -> Option<SplittableScan> {
        let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
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
            [table] => format!("public.{table}"),
            [schema, table] => format!("{schema}.{table}"),
            _ => return None,
        };
        Some(SplittableScan {
            table: name.clone(),
            qualified,
            query,
        })
    }

    /// The scan restricted to `lo <= key < hi` (`hi = None`: no upper bound).
    pub fn with_range(&self, key: &str, lo: i64, hi: Option<i64>) -> String {
        let mut query = self.query.clone();
        let column = Expr::Identifier(Ident::with_quote('"', key));
        let bound = |op, v: i64| Expr::BinaryOp {
            left: Box::new(column.clone()),
            op,
            right: Box::new(Expr::value(Value::Number(v.to_string(), false))),
        };
        let mut range = bound(BinaryOperator::GtEq, lo);
        if let Some(hi) = hi {
            range = Expr::BinaryOp {
                left: Box::new(range),
                op: BinaryOperator::And,
                right: Box::new(bound(BinaryOperator::Lt, hi)),
            };
        }
        if let SetExpr::Select(select) = query.body.as_mut() {
            select.selection = Some(match select.selection.take() {
                Some(existing) => Expr::BinaryOp {
                    left: Box::new(Expr::Nested(Box::new(existing))),
                    op: BinaryOperator::And,
                    right: Box::new(range),
                },
                None => range,
            });
        }
        query.to_string()
    }
}

/// `n` half-open ranges covering `[min, max]` — the first unbounded below
/// (it starts at `i64::MIN`, taking rows below the minimum seen should any
/// arrive after the bounds were read), the last unbounded above.
pub(crate) fn ranges(min: i64, max: i64, n: usize) -> Vec<(i64, Option<i64>)> {
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

    #[test]
    fn plain_scans_split_and_others_do_not() {
        let scan = SplittableScan::parse(r#"SELECT "t"."a", "t"."b" FROM "t" WHERE ("t"."a" > 5)"#)
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
            assert!(SplittableScan::parse(not).is_none(), "{not}");
        }
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
