//! Join filters known only at run time, sent to the source.
//!
//! When DataFusion hash-joins a source's rows with another input, it builds
//! the other side first and publishes a dynamic filter on this side's join
//! keys: `key >= min AND key <= max AND key IN (…)` (one such branch per
//! hash partition, inside a `CASE`). datafusion-federation hands those
//! filters to the executor, and by the time the source's stream is first
//! polled the build side is complete. So a plain scan can be narrowed to the
//! keys that can join: the TPC-H split joins `lineitem` (Postgres) with a
//! few filtered MariaDB rows and reads only `lineitem`'s matching rows.
//!
//! Only integer keys are used (their SQL literals mean the same everywhere);
//! a filter part fedsql does not understand is left out, which only makes
//! the remote predicate looser — DataFusion still applies the exact join.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{
    BinaryExpr, CaseExpr, CastExpr, Column, InListExpr, Literal,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr_common::physical_expr::snapshot_physical_expr;

/// More distinct keys than this are sent as their range instead.
pub const MAX_KEYS: usize = 10_000;

/// What the filter allows of one integer column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyConstraint {
    /// Exactly these values.
    Values(BTreeSet<i64>),
    /// `lo <= key <= hi`.
    Range(i64, i64),
}

impl KeyConstraint {
    fn hull(&self) -> (i64, i64) {
        match self {
            KeyConstraint::Values(v) => (
                v.first().copied().unwrap_or(i64::MAX),
                v.last().copied().unwrap_or(i64::MIN),
            ),
            KeyConstraint::Range(lo, hi) => (*lo, *hi),
        }
    }

    fn values(values: BTreeSet<i64>) -> KeyConstraint {
        if values.len() > MAX_KEYS {
            let (lo, hi) = (values.first().copied(), values.last().copied());
            KeyConstraint::Range(lo.unwrap_or(i64::MAX), hi.unwrap_or(i64::MIN))
        } else {
            KeyConstraint::Values(values)
        }
    }

    /// Rows allowed by both.
    fn and(&self, other: &KeyConstraint) -> KeyConstraint {
        match (self, other) {
            (KeyConstraint::Values(a), KeyConstraint::Values(b)) => {
                KeyConstraint::Values(a.intersection(b).copied().collect())
            }
            (KeyConstraint::Values(v), r @ KeyConstraint::Range(..))
            | (r @ KeyConstraint::Range(..), KeyConstraint::Values(v)) => {
                let (lo, hi) = r.hull();
                KeyConstraint::Values(
                    v.iter()
                        .copied()
                        .filter(|x| (lo..=hi).contains(x))
                        .collect(),
                )
            }
            (KeyConstraint::Range(a, b), KeyConstraint::Range(c, d)) => {
                KeyConstraint::Range(*a.max(c), *b.min(d))
            }
        }
    }

    /// Rows allowed by either.
    fn or(&self, other: &KeyConstraint) -> KeyConstraint {
        match (self, other) {
            (KeyConstraint::Values(a), KeyConstraint::Values(b)) => {
                KeyConstraint::values(a.union(b).copied().collect())
            }
            _ => {
                let ((a, b), (c, d)) = (self.hull(), other.hull());
                KeyConstraint::Range(a.min(c), b.max(d))
            }
        }
    }
}

/// What a filter allows: no row at all, or rows whose columns (by index in
/// the scan's output) meet each constraint (none: every row).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    Nothing,
    Rows(BTreeMap<usize, KeyConstraint>),
}

impl Allowed {
    fn all() -> Allowed {
        Allowed::Rows(BTreeMap::new())
    }

    fn and(self, other: Allowed) -> Allowed {
        match (self, other) {
            (Allowed::Rows(mut a), Allowed::Rows(b)) => {
                for (column, c) in b {
                    let merged = match a.get(&column) {
                        Some(existing) => existing.and(&c),
                        None => c,
                    };
                    a.insert(column, merged);
                }
                Allowed::Rows(a)
            }
            _ => Allowed::Nothing,
        }
    }

    fn or(self, other: Allowed) -> Allowed {
        match (self, other) {
            (Allowed::Nothing, x) | (x, Allowed::Nothing) => x,
            (Allowed::Rows(a), Allowed::Rows(b)) => Allowed::Rows(
                a.iter()
                    .filter_map(|(column, c)| b.get(column).map(|d| (*column, c.or(d))))
                    .collect(),
            ),
        }
    }
}

fn integer(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::Int8(Some(v)) => Some(i64::from(*v)),
        ScalarValue::Int16(Some(v)) => Some(i64::from(*v)),
        ScalarValue::Int32(Some(v)) => Some(i64::from(*v)),
        ScalarValue::Int64(Some(v)) => Some(*v),
        ScalarValue::UInt8(Some(v)) => Some(i64::from(*v)),
        ScalarValue::UInt16(Some(v)) => Some(i64::from(*v)),
        ScalarValue::UInt32(Some(v)) => Some(i64::from(*v)),
        _ => None,
    }
}

/// The integer column `expr` reads, seen through integer-to-integer casts
/// (a join on `int4 = int8` compares `CAST(key AS Int64)`): those keep
/// every value, so a constraint on the cast is one on the column.
fn key_column(expr: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Option<usize> {
    if let Some(column) = expr.downcast_ref::<Column>() {
        let integer = schema
            .fields()
            .get(column.index())?
            .data_type()
            .is_integer();
        return integer.then_some(column.index());
    }
    let cast = expr.downcast_ref::<CastExpr>()?;
    if !cast.cast_type().is_integer() {
        return None;
    }
    key_column(cast.expr(), schema)
}

fn column_literal(
    left: &Arc<dyn PhysicalExpr>,
    right: &Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Option<(usize, i64)> {
    let column = key_column(left, schema)?;
    let literal = right.downcast_ref::<Literal>()?;
    Some((column, integer(literal.value())?))
}

fn analyze(expr: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Allowed {
    if let Some(literal) = expr.downcast_ref::<Literal>() {
        return match literal.value() {
            ScalarValue::Boolean(Some(false)) | ScalarValue::Boolean(None) => Allowed::Nothing,
            _ => Allowed::all(),
        };
    }
    if let Some(binary) = expr.downcast_ref::<BinaryExpr>() {
        let one = |column: usize, c: KeyConstraint| Allowed::Rows(BTreeMap::from([(column, c)]));
        return match binary.op() {
            Operator::And => analyze(binary.left(), schema).and(analyze(binary.right(), schema)),
            op => match column_literal(binary.left(), binary.right(), schema) {
                Some((column, v)) => match op {
                    Operator::Eq => one(column, KeyConstraint::Values(BTreeSet::from([v]))),
                    Operator::GtEq => one(column, KeyConstraint::Range(v, i64::MAX)),
                    Operator::Gt => {
                        one(column, KeyConstraint::Range(v.saturating_add(1), i64::MAX))
                    }
                    Operator::LtEq => one(column, KeyConstraint::Range(i64::MIN, v)),
                    Operator::Lt => {
                        one(column, KeyConstraint::Range(i64::MIN, v.saturating_sub(1)))
                    }
                    _ => Allowed::all(),
                },
                None => Allowed::all(),
            },
        };
    }
    if let Some(list) = expr.downcast_ref::<InListExpr>() {
        let Some(column) = key_column(list.expr(), schema) else {
            return Allowed::all();
        };
        if list.negated() {
            return Allowed::all();
        }
        let values: Option<BTreeSet<i64>> = list
            .list()
            .iter()
            .map(|e| e.downcast_ref::<Literal>().and_then(|l| integer(l.value())))
            .collect();
        return match values {
            Some(values) => {
                Allowed::Rows(BTreeMap::from([(column, KeyConstraint::values(values))]))
            }
            None => Allowed::all(),
        };
    }
    if let Some(case) = expr.downcast_ref::<CaseExpr>() {
        // Some branch holds for each row: the union of the branches.
        let mut allowed = case
            .else_expr()
            .map_or(Allowed::Nothing, |e| analyze(e, schema));
        for (_, then) in case.when_then_expr() {
            allowed = allowed.or(analyze(then, schema));
        }
        return allowed;
    }
    Allowed::all()
}

/// The key constraints `filters` (the dynamic filters handed to an
/// executor) put on the integer columns of the scan's output (`schema`),
/// by column index; `None` when they allow no row at all.
pub fn key_constraints(
    filters: &[Arc<dyn PhysicalExpr>],
    schema: &Schema,
) -> Option<BTreeMap<usize, KeyConstraint>> {
    let mut allowed = Allowed::all();
    for filter in filters {
        // A dynamic filter's expression as of now.
        let Ok(current) = snapshot_physical_expr(Arc::clone(filter)) else {
            continue;
        };
        allowed = allowed.and(analyze(&current, schema));
    }
    match allowed {
        Allowed::Nothing => None,
        Allowed::Rows(constraints) => Some(constraints),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::physical_expr::expressions::lit;

    fn col(i: usize) -> Arc<dyn PhysicalExpr> {
        Arc::new(Column::new("k", i))
    }

    fn bin(
        l: Arc<dyn PhysicalExpr>,
        op: Operator,
        r: Arc<dyn PhysicalExpr>,
    ) -> Arc<dyn PhysicalExpr> {
        Arc::new(BinaryExpr::new(l, op, r))
    }

    /// Three Int64 keys, a text column and an Int32 one.
    fn schema() -> Schema {
        let mut fields: Vec<Field> = (0..3)
            .map(|c| Field::new(format!("k{c}"), DataType::Int64, true))
            .collect();
        fields.push(Field::new("name", DataType::Utf8, true));
        fields.push(Field::new("small", DataType::Int32, true));
        Schema::new(fields)
    }

    fn in_list(i: usize, values: &[i64]) -> Arc<dyn PhysicalExpr> {
        let schema = schema();
        Arc::new(
            InListExpr::try_new(
                col(i),
                values.iter().map(|v| lit(*v)).collect(),
                false,
                &schema,
            )
            .unwrap(),
        )
    }

    fn bounds(i: usize, lo: i64, hi: i64) -> Arc<dyn PhysicalExpr> {
        bin(
            bin(col(i), Operator::GtEq, lit(lo)),
            Operator::And,
            bin(col(i), Operator::LtEq, lit(hi)),
        )
    }

    #[test]
    fn bounds_and_key_lists_become_constraints() {
        let filter = bin(bounds(1, 3, 9), Operator::And, in_list(1, &[3, 5, 9, 12]));
        let got = key_constraints(&[filter], &schema()).unwrap();
        assert_eq!(got[&1], KeyConstraint::Values(BTreeSet::from([3, 5, 9])));
    }

    #[test]
    fn hash_partition_branches_are_united() {
        let case = Arc::new(
            CaseExpr::try_new(
                Some(col(0)),
                vec![
                    (
                        lit(0u64),
                        bin(bounds(2, 1, 4), Operator::And, in_list(2, &[1, 4])),
                    ),
                    (lit(1u64), lit(false)),
                    (
                        lit(2u64),
                        bin(bounds(2, 7, 7), Operator::And, in_list(2, &[7])),
                    ),
                ],
                Some(lit(false)),
            )
            .unwrap(),
        ) as Arc<dyn PhysicalExpr>;
        let got = key_constraints(&[case], &schema()).unwrap();
        assert_eq!(got[&2], KeyConstraint::Values(BTreeSet::from([1, 4, 7])));
        // A branch that allows everything (ELSE true) leaves the column free.
        let open = Arc::new(
            CaseExpr::try_new(
                Some(col(0)),
                vec![(lit(0u64), in_list(2, &[1]))],
                Some(lit(true)),
            )
            .unwrap(),
        ) as Arc<dyn PhysicalExpr>;
        assert!(key_constraints(&[open], &schema()).unwrap().is_empty());
    }

    #[test]
    fn what_is_not_understood_loosens_never_tightens() {
        // `k IS NULL OR …` style: an OR is not analyzed, so no constraint.
        let or = bin(
            in_list(0, &[1]),
            Operator::Or,
            bin(col(0), Operator::Eq, lit(5i64)),
        );
        assert!(key_constraints(&[or], &schema()).unwrap().is_empty());
        // Text keys are not used.
        let text = bin(col(0), Operator::Eq, lit("x"));
        assert!(key_constraints(&[text], &schema()).unwrap().is_empty());
        // Too many keys: their range.
        let many: Vec<i64> = (0..(MAX_KEYS as i64 + 5)).collect();
        let got = key_constraints(&[in_list(0, &many)], &schema()).unwrap();
        assert_eq!(got[&0], KeyConstraint::Range(0, MAX_KEYS as i64 + 4));
        // A text column cast to an integer is not a key.
        let name: Arc<dyn PhysicalExpr> = Arc::new(Column::new("name", 3));
        let cast: Arc<dyn PhysicalExpr> = Arc::new(CastExpr::new(name, DataType::Int64, None));
        let text = bin(cast, Operator::Eq, lit(5i64));
        assert!(key_constraints(&[text], &schema()).unwrap().is_empty());
        // A widened integer key (int4 joined with int8) is its column.
        let small: Arc<dyn PhysicalExpr> = Arc::new(Column::new("small", 4));
        let widened: Arc<dyn PhysicalExpr> = Arc::new(CastExpr::new(small, DataType::Int64, None));
        let got = key_constraints(&[bin(widened, Operator::GtEq, lit(7i64))], &schema()).unwrap();
        assert_eq!(got[&4], KeyConstraint::Range(7, i64::MAX));
        // An empty build side: no row can join.
        assert_eq!(key_constraints(&[lit(false)], &schema()), None);
    }
}
