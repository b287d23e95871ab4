//! Random valid queries over the TPC-H schema.
//!
//! Joins follow the schema's keys (so no query multiplies rows beyond a
//! small factor of `lineitem`), every `LIMIT` comes with an `ORDER BY` over
//! every output column (so the answer is one multiset), and window functions
//! are the ones whose answer does not depend on the order of ties. What is
//! generated: joins of up to six tables (inner, left, right, full; semi and
//! anti through `EXISTS`/`IN`), aggregates with `GROUP BY`/`HAVING`/`ROLLUP`,
//! CTEs (often used twice), derived tables of set operations, `UNION [ALL]`,
//! `INTERSECT`, `EXCEPT`, window functions, `IN`/`EXISTS`/scalar subqueries
//! (correlated or not), `CASE`, `COALESCE`/`NULLIF`, NULL-heavy predicates,
//! `LIMIT`/`OFFSET` and `ORDER BY` on expressions.

use rand::seq::IndexedRandom;
use rand::{Rng, RngCore};

use super::sql::Sql;

/// A value's type, as far as generation cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Int,
    Dec,
    Text,
    Date,
}

/// Which key a column holds: columns of the same key join.
type Key = Option<&'static str>;

struct TableDef {
    name: &'static str,
    columns: &'static [(&'static str, Ty, Key)],
}

const TABLES: &[TableDef] = &[
    TableDef {
        name: "region",
        columns: &[
            ("r_regionkey", Ty::Int, Some("region")),
            ("r_name", Ty::Text, None),
        ],
    },
    TableDef {
        name: "nation",
        columns: &[
            ("n_nationkey", Ty::Int, Some("nation")),
            ("n_name", Ty::Text, None),
            ("n_regionkey", Ty::Int, Some("region")),
        ],
    },
    TableDef {
        name: "part",
        columns: &[
            ("p_partkey", Ty::Int, Some("part")),
            ("p_name", Ty::Text, None),
            ("p_mfgr", Ty::Text, None),
            ("p_brand", Ty::Text, None),
            ("p_type", Ty::Text, None),
            ("p_size", Ty::Int, None),
            ("p_container", Ty::Text, None),
            ("p_retailprice", Ty::Dec, None),
        ],
    },
    TableDef {
        name: "supplier",
        columns: &[
            ("s_suppkey", Ty::Int, Some("supp")),
            ("s_name", Ty::Text, None),
            ("s_nationkey", Ty::Int, Some("nation")),
            ("s_acctbal", Ty::Dec, None),
        ],
    },
    TableDef {
        name: "partsupp",
        columns: &[
            ("ps_partkey", Ty::Int, Some("part")),
            ("ps_suppkey", Ty::Int, Some("supp")),
            ("ps_availqty", Ty::Int, None),
            ("ps_supplycost", Ty::Dec, None),
        ],
    },
    TableDef {
        name: "customer",
        columns: &[
            ("c_custkey", Ty::Int, Some("cust")),
            ("c_name", Ty::Text, None),
            ("c_nationkey", Ty::Int, Some("nation")),
            ("c_acctbal", Ty::Dec, None),
            ("c_mktsegment", Ty::Text, None),
        ],
    },
    TableDef {
        name: "orders",
        columns: &[
            ("o_orderkey", Ty::Int, Some("order")),
            ("o_custkey", Ty::Int, Some("cust")),
            ("o_orderstatus", Ty::Text, None),
            ("o_totalprice", Ty::Dec, None),
            ("o_orderdate", Ty::Date, None),
            ("o_orderpriority", Ty::Text, None),
            ("o_shippriority", Ty::Int, None),
        ],
    },
    TableDef {
        name: "lineitem",
        columns: &[
            ("l_orderkey", Ty::Int, Some("order")),
            ("l_partkey", Ty::Int, Some("part")),
            ("l_suppkey", Ty::Int, Some("supp")),
            ("l_linenumber", Ty::Int, None),
            ("l_quantity", Ty::Dec, None),
            ("l_extendedprice", Ty::Dec, None),
            ("l_discount", Ty::Dec, None),
            ("l_returnflag", Ty::Text, None),
            ("l_linestatus", Ty::Text, None),
            ("l_shipdate", Ty::Date, None),
            ("l_commitdate", Ty::Date, None),
            ("l_shipmode", Ty::Text, None),
        ],
    },
];

/// Text values that occur in the data, so equality predicates select rows.
const TEXTS: &[&str] = &[
    "A",
    "N",
    "R",
    "F",
    "O",
    "P",
    "AIR",
    "MAIL",
    "RAIL",
    "SHIP",
    "TRUCK",
    "REG AIR",
    "FOB",
    "BUILDING",
    "AUTOMOBILE",
    "MACHINERY",
    "HOUSEHOLD",
    "FURNITURE",
    "1-URGENT",
    "2-HIGH",
    "3-MEDIUM",
    "5-LOW",
    "GERMANY",
    "FRANCE",
    "CHINA",
    "BRAZIL",
    "ASIA",
    "EUROPE",
    "AMERICA",
    "Brand#12",
    "Brand#23",
    "Manufacturer#1",
    "SM BOX",
    "LG CASE",
    "",
];

const LIKE_PATTERNS: &[&str] = &[
    "A%", "%AIR%", "B%", "%ING", "Brand#1%", "%green%", "M%", "%#3", "_R%",
];

/// A column in scope: how to name it, its type, its key, and whether it can
/// be NULL (the inner side of an outer join).
#[derive(Debug, Clone)]
struct Column {
    name: String,
    ty: Ty,
    key: Key,
    /// No two rows share a value (a primary key, a grouped key): a join on
    /// it multiplies no rows of the other side.
    unique: bool,
}

/// The tables' single-column primary keys.
const PRIMARY_KEYS: &[&str] = &[
    "r_regionkey",
    "n_nationkey",
    "p_partkey",
    "s_suppkey",
    "c_custkey",
    "o_orderkey",
];

/// What a `FROM` clause makes visible.
#[derive(Debug, Clone, Default)]
struct Scope {
    columns: Vec<Column>,
}

impl Scope {
    fn of_type(&self, ty: Ty) -> Vec<&Column> {
        self.columns.iter().filter(|c| c.ty == ty).collect()
    }
}

/// A CTE defined at the top of the query: its name and columns.
#[derive(Debug, Clone)]
struct Cte {
    name: String,
    columns: Vec<(String, Ty, Key)>,
    /// Whether its key column `k` is unique.
    unique_key: bool,
}

/// Limits of one generator.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most relations joined in one `FROM`.
    pub max_joins: usize,
    /// How deep subqueries nest.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_joins: 6,
            max_depth: 2,
        }
    }
}

/// Generates queries; `qualify(table)` names a TPC-H table as the engine
/// under test knows it.
pub struct Generator<'a, R: RngCore> {
    rng: &'a mut R,
    limits: Limits,
    qualify: &'a dyn Fn(&str) -> String,
    next_alias: usize,
    ctes: Vec<Cte>,
    /// Above zero while generating where DataFusion plans no subquery
    /// (aggregate arguments, `CASE` conditions: "Physical plan does not
    /// support logical expression ScalarSubquery/Exists/InSubquery").
    no_subqueries: usize,
}

impl<'a, R: RngCore> Generator<'a, R> {
    pub fn new(rng: &'a mut R, limits: Limits, qualify: &'a dyn Fn(&str) -> String) -> Self {
        Generator {
            rng,
            limits,
            qualify,
            next_alias: 0,
            ctes: Vec::new(),
            no_subqueries: 0,
        }
    }

    /// One query.
    pub fn query(&mut self) -> Sql {
        self.next_alias = 0;
        self.ctes.clear();
        let mut parts = Vec::new();
        if self.rng.random_bool(0.3) {
            parts.push(self.with_clause());
        }
        let (body, types) = if self.rng.random_bool(0.25) {
            self.set_operation(0)
        } else {
            self.select(0, None)
        };
        parts.push(body);
        // ORDER BY every output column (positions; sometimes DESC), so a
        // LIMIT picks one well-defined set of rows.
        let order: Vec<String> = (1..=types.len())
            .map(|i| {
                if self.rng.random_bool(0.3) {
                    format!("{i} DESC")
                } else {
                    i.to_string()
                }
            })
            .collect();
        let mut tail = vec![Sql::from(format!(" ORDER BY {}", order.join(", ")))];
        if self.rng.random_bool(0.5) {
            tail.push(format!(" LIMIT {}", self.rng.random_range(1..50)).into());
            if self.rng.random_bool(0.3) {
                tail.push(Sql::opt(format!(
                    " OFFSET {}",
                    self.rng.random_range(1..20)
                )));
            }
        }
        parts.push(Sql::opt(Sql::seq(tail)));
        Sql::seq(parts)
    }

    fn alias(&mut self, prefix: &str) -> String {
        self.next_alias += 1;
        format!("{prefix}{}", self.next_alias)
    }

    /// `WITH` one or two CTEs, each a keyed aggregate (or a set operation of
    /// keys) that the `FROM` clauses below may join, often twice.
    fn with_clause(&mut self) -> Sql {
        let count = self.rng.random_range(1..=2);
        let mut parts: Vec<Sql> = vec!["WITH ".into()];
        for i in 0..count {
            let name = self.alias("cte");
            let (body, columns, unique_key) = self.keyed_relation(1);
            if i > 0 {
                parts.push(", ".into());
            }
            parts.push(Sql::seq(vec![
                format!("{name} AS (").into(),
                body,
                ") ".into(),
            ]));
            self.ctes.push(Cte {
                name,
                columns,
                unique_key,
            });
        }
        Sql::seq(parts)
    }

    /// A relation with a key column `k` (and maybe aggregates `v…`):
    /// `SELECT key AS k, agg AS v1 … GROUP BY key`, or keys combined with a
    /// set operation.
    fn keyed_relation(&mut self, depth: usize) -> (Sql, Vec<(String, Ty, Key)>, bool) {
        let (from, scope) = self.join_clause(depth, 2);
        let keys: Vec<Column> = scope
            .columns
            .iter()
            .filter(|c| c.key.is_some())
            .cloned()
            .collect();
        let Some(key) = keys.choose(self.rng).cloned() else {
            unreachable!("every table has a key column");
        };
        let filter = self.where_clause(&scope, depth);
        if self.rng.random_bool(0.3) {
            // Keys of one relation set-combined with keys of another that
            // holds the same key.
            let op = *[" INTERSECT ", " EXCEPT ", " UNION ", " UNION ALL "]
                .choose(self.rng)
                .unwrap_or(&" UNION ");
            let (other_from, other_scope) = self.table_with_key(key.key);
            let other_key = other_scope
                .columns
                .iter()
                .find(|c| c.key == key.key)
                .map(|c| c.name.clone())
                .unwrap_or_else(|| key.name.clone());
            let other_filter = self.where_clause(&other_scope, depth);
            let sql = Sql::seq(vec![
                format!("SELECT {} AS k", key.name).into(),
                from,
                filter,
                op.into(),
                format!("SELECT {other_key}").into(),
                other_from,
                other_filter,
            ]);
            let unique = op != " UNION ALL ";
            return (sql, vec![("k".to_string(), Ty::Int, key.key)], unique);
        }
        let mut columns = vec![("k".to_string(), Ty::Int, key.key)];
        let mut items = vec![Sql::from(format!("SELECT {} AS k", key.name))];
        for i in 1..=self.rng.random_range(1..=2) {
            let (agg, ty) = self.aggregate(&scope, depth);
            items.push(Sql::seq(vec![", ".into(), agg, format!(" AS v{i}").into()]));
            columns.push((format!("v{i}"), ty, None));
        }
        let mut parts = items;
        parts.push(from);
        parts.push(filter);
        parts.push(format!(" GROUP BY {}", key.name).into());
        if self.rng.random_bool(0.3) {
            parts.push(Sql::opt(" HAVING count(*) > 1"));
        }
        (Sql::seq(parts), columns, true)
    }

    /// `FROM` one relation that has a column of `key`, then maybe more.
    fn table_with_key(&mut self, key: Key) -> (Sql, Scope) {
        let candidates: Vec<&TableDef> = TABLES
            .iter()
            .filter(|t| t.columns.iter().any(|c| c.2 == key))
            .collect();
        let table = candidates.choose(self.rng).copied().unwrap_or(&TABLES[0]);
        let alias = self.alias("t");
        let scope = table_scope(table, &alias);
        let sql = format!(" FROM {} AS {alias}", (self.qualify)(table.name));
        (sql.into(), scope)
    }

    /// A `SELECT` (aggregating or not) producing `want` types if given.
    fn select(&mut self, depth: usize, want: Option<&[Ty]>) -> (Sql, Vec<Ty>) {
        let (from, scope) = self.join_clause(depth, self.limits.max_joins);
        let filter = self.where_clause(&scope, depth);
        if want.is_none() && self.rng.random_bool(0.5) {
            return self.aggregating_select(depth, from, filter, &scope);
        }
        let types: Vec<Ty> = match want {
            Some(types) => types.to_vec(),
            None => (0..self.rng.random_range(1..=4))
                .map(|_| self.any_type())
                .collect(),
        };
        let mut items = Vec::new();
        for (i, ty) in types.iter().enumerate() {
            let item = if want.is_none() && self.rng.random_bool(0.15) {
                self.window(&scope, *ty)
            } else {
                self.expr(&scope, *ty, depth, 2)
            };
            let sep = if i == 0 { "" } else { ", " };
            items.push(Sql::seq(vec![sep.into(), item, format!(" AS c{i}").into()]));
        }
        let distinct = if self.rng.random_bool(0.2) {
            Sql::opt("DISTINCT ")
        } else {
            Sql::from("")
        };
        let sql = Sql::seq(vec![
            "SELECT ".into(),
            distinct,
            Sql::seq(items),
            from,
            filter,
        ]);
        (sql, types)
    }

    fn aggregating_select(
        &mut self,
        depth: usize,
        from: Sql,
        filter: Sql,
        scope: &Scope,
    ) -> (Sql, Vec<Ty>) {
        let mut types = Vec::new();
        let mut items = Vec::new();
        let mut keys = Vec::new();
        for _ in 0..self.rng.random_range(0..=3) {
            let ty = self.any_type();
            let key = match scope.of_type(ty).choose(self.rng) {
                Some(c) if self.rng.random_bool(0.8) => c.name.clone(),
                _ => {
                    // DataFusion: "Correlated scalar subquery in the GROUP
                    // BY clause must also be in the aggregate expressions".
                    self.no_subqueries += 1;
                    let key = self.expr(scope, ty, depth, 1).render(&Default::default());
                    self.no_subqueries -= 1;
                    key
                }
            };
            if keys.contains(&key) {
                continue;
            }
            items.push(format!("{key} AS c{}", items.len()).into());
            keys.push(key);
            types.push(ty);
        }
        for _ in 0..self.rng.random_range(1..=3) {
            let (agg, ty) = self.aggregate(scope, depth);
            items.push(Sql::seq(vec![agg, format!(" AS c{}", items.len()).into()]));
            types.push(ty);
        }
        let mut list: Vec<Sql> = vec!["SELECT ".into()];
        for (i, item) in items.into_iter().enumerate() {
            list.push(if i == 0 {
                item
            } else {
                Sql::seq(vec![", ".into(), item])
            });
        }
        list.push(from);
        list.push(filter);
        if !keys.is_empty() {
            let plain = format!(" GROUP BY {}", keys.join(", "));
            if self.rng.random_bool(0.2) {
                list.push(Sql::alt(
                    format!(" GROUP BY ROLLUP ({})", keys.join(", ")),
                    plain,
                ));
            } else {
                list.push(plain.into());
            }
        }
        if self.rng.random_bool(0.3) {
            let (agg, ty) = self.aggregate(scope, depth);
            let bound = self.literal(ty);
            let op = self.comparison();
            list.push(Sql::opt(Sql::seq(vec![
                " HAVING ".into(),
                agg,
                format!(" {op} {bound}").into(),
            ])));
        }
        (Sql::seq(list), types)
    }

    /// `left OP right`, both producing the same types.
    fn set_operation(&mut self, depth: usize) -> (Sql, Vec<Ty>) {
        let (left, types) = self.select(depth, None);
        let op = *[
            " UNION ",
            " UNION ALL ",
            " INTERSECT ",
            " EXCEPT ",
            " INTERSECT ALL ",
            " EXCEPT ALL ",
        ]
        .choose(self.rng)
        .unwrap_or(&" UNION ");
        let (right, _) = self.select(depth, Some(&types));
        let sql = Sql::seq(vec![
            "(".into(),
            left,
            ")".into(),
            Sql::opt(Sql::seq(vec![op.into(), "(".into(), right, ")".into()])),
        ]);
        (sql, types)
    }

    /// `FROM` a join of up to `max` relations along the schema's keys.
    fn join_clause(&mut self, depth: usize, max: usize) -> (Sql, Scope) {
        let count = self.rng.random_range(1..=max.max(1));
        let mut used: Vec<&'static str> = Vec::new();
        let (first, mut scope) = self.relation(depth, None, false, &mut used);
        let mut parts = vec![Sql::from(" FROM "), first];
        for joined in 1..count {
            let keyed: Vec<Column> = scope
                .columns
                .iter()
                .filter(|c| c.key.is_some())
                .cloned()
                .collect();
            let Some(left) = keyed.choose(self.rng).cloned() else {
                break;
            };
            // Every join but the first is many-to-one (the new relation is
            // unique on the key); the first may be one-to-many from a unique
            // key. So no result outgrows the largest table's fan-out.
            let need_unique = !(left.unique && joined == 1);
            let (right_sql, right) = self.relation(depth, left.key, need_unique, &mut used);
            let Some(right_key) = right
                .columns
                .iter()
                .find(|c| c.key == left.key && (c.unique || !need_unique))
                .cloned()
            else {
                break;
            };
            let join = *[
                " JOIN ",
                " JOIN ",
                " JOIN ",
                " LEFT JOIN ",
                " LEFT JOIN ",
                " RIGHT JOIN ",
                " FULL JOIN ",
            ]
            .choose(self.rng)
            .unwrap_or(&" JOIN ");
            let mut on = vec![Sql::from(format!(" ON {} = {}", left.name, right_key.name))];
            if self.rng.random_bool(0.2) {
                let mut both = scope.clone();
                both.columns.extend(right.columns.iter().cloned());
                let extra = self.simple_predicate(&both);
                on.push(Sql::opt(Sql::seq(vec![" AND ".into(), extra])));
            }
            parts.push(Sql::opt(Sql::seq(vec![
                join.into(),
                right_sql,
                Sql::seq(on),
            ])));
            scope.columns.extend(right.columns);
        }
        (Sql::seq(parts), scope)
    }

    /// One relation: a table, a CTE or a derived table; with a column of
    /// `key` when given. Tables other than `nation` and `region` appear at
    /// most once in a `FROM` (so joins stay small).
    fn relation(
        &mut self,
        depth: usize,
        key: Key,
        unique: bool,
        used: &mut Vec<&'static str>,
    ) -> (Sql, Scope) {
        let ctes: Vec<Cte> = self
            .ctes
            .iter()
            .filter(|c| key.is_none() || c.columns.iter().any(|col| col.2 == key))
            .filter(|c| !unique || c.unique_key)
            .cloned()
            .collect();
        if !ctes.is_empty() && self.rng.random_bool(0.5) {
            if let Some(cte) = ctes.choose(self.rng) {
                let alias = self.alias("r");
                let scope = Scope {
                    columns: cte
                        .columns
                        .iter()
                        .map(|(name, ty, key)| Column {
                            name: format!("{alias}.{name}"),
                            ty: *ty,
                            key: *key,
                            unique: cte.unique_key && name == "k",
                        })
                        .collect(),
                };
                return (format!("{} AS {alias}", cte.name).into(), scope);
            }
        }
        if depth < self.limits.max_depth && self.rng.random_bool(0.1) {
            let (body, columns, unique_key) = self.keyed_relation(depth + 1);
            if (key.is_none() || columns.iter().any(|c| c.2 == key)) && (unique_key || !unique) {
                let alias = self.alias("d");
                let scope = Scope {
                    columns: columns
                        .iter()
                        .map(|(name, ty, key)| Column {
                            name: format!("{alias}.{name}"),
                            ty: *ty,
                            key: *key,
                            unique: unique_key && name == "k",
                        })
                        .collect(),
                };
                let sql = Sql::seq(vec!["(".into(), body, format!(") AS {alias}").into()]);
                return (sql, scope);
            }
        }
        let candidates: Vec<&TableDef> = TABLES
            .iter()
            .filter(|t| {
                key.is_none()
                    || t.columns
                        .iter()
                        .any(|c| c.2 == key && (!unique || PRIMARY_KEYS.contains(&c.0)))
            })
            .filter(|t| matches!(t.name, "nation" | "region") || !used.contains(&t.name))
            .collect();
        let table = candidates.choose(self.rng).copied().unwrap_or(&TABLES[1]);
        used.push(table.name);
        let alias = self.alias("t");
        let sql = format!("{} AS {alias}", (self.qualify)(table.name));
        (sql.into(), table_scope(table, &alias))
    }

    /// ` WHERE TRUE AND p1 AND p2 …` (each conjunct droppable), or nothing.
    fn where_clause(&mut self, scope: &Scope, depth: usize) -> Sql {
        let count = self.rng.random_range(0..=3);
        if count == 0 {
            return Sql::from("");
        }
        let mut parts = vec![Sql::from(" WHERE TRUE")];
        for _ in 0..count {
            let p = self.predicate(scope, depth, 2);
            parts.push(Sql::opt(Sql::seq(vec![" AND ".into(), p])));
        }
        Sql::seq(parts)
    }

    fn any_type(&mut self) -> Ty {
        *[
            Ty::Int,
            Ty::Int,
            Ty::Dec,
            Ty::Dec,
            Ty::Text,
            Ty::Text,
            Ty::Date,
        ]
        .choose(self.rng)
        .unwrap_or(&Ty::Int)
    }

    fn comparison(&mut self) -> &'static str {
        ["=", "<>", "<", "<=", ">", ">="]
            .choose(self.rng)
            .copied()
            .unwrap_or("=")
    }

    fn literal(&mut self, ty: Ty) -> String {
        match ty {
            Ty::Int => self.rng.random_range(0..60).to_string(),
            Ty::Dec => format!(
                "{}.{:02}",
                self.rng.random_range(0..5000),
                self.rng.random_range(0..100)
            ),
            Ty::Text => format!("'{}'", TEXTS.choose(self.rng).copied().unwrap_or("A")),
            Ty::Date => format!(
                "DATE '{}-{:02}-{:02}'",
                self.rng.random_range(1992..=1998),
                self.rng.random_range(1..=12),
                self.rng.random_range(1..=28)
            ),
        }
    }

    /// A column of `ty` in scope, else a literal.
    fn column_or_literal(&mut self, scope: &Scope, ty: Ty) -> String {
        match scope.of_type(ty).choose(self.rng) {
            Some(c) => c.name.clone(),
            None => self.literal(ty),
        }
    }

    /// An expression of type `ty`, at most `budget` operators deep.
    fn expr(&mut self, scope: &Scope, ty: Ty, depth: usize, budget: usize) -> Sql {
        if budget == 0 || self.rng.random_bool(0.45) {
            return if self.rng.random_bool(0.85) {
                self.column_or_literal(scope, ty).into()
            } else {
                self.literal(ty).into()
            };
        }
        let b = budget - 1;
        let simple = self.column_or_literal(scope, ty);
        let full: Sql = match (ty, self.rng.random_range(0..8)) {
            (_, 0) => {
                self.no_subqueries += 1;
                let p = self.predicate(scope, depth, 1);
                self.no_subqueries -= 1;
                let a = self.expr(scope, ty, depth, b);
                let c = self.expr(scope, ty, depth, b);
                Sql::seq(vec![
                    "CASE WHEN ".into(),
                    p,
                    " THEN ".into(),
                    a,
                    Sql::opt(Sql::seq(vec![" ELSE ".into(), c])),
                    " END".into(),
                ])
            }
            (_, 1) => {
                let a = self.expr(scope, ty, depth, b);
                Sql::seq(vec![
                    "COALESCE(".into(),
                    a,
                    format!(", {})", self.literal(ty)).into(),
                ])
            }
            (_, 2) => {
                let a = self.expr(scope, ty, depth, b);
                Sql::seq(vec![
                    "NULLIF(".into(),
                    a,
                    format!(", {})", self.literal(ty)).into(),
                ])
            }
            (Ty::Int | Ty::Dec, 3) if depth < self.limits.max_depth && self.no_subqueries == 0 => {
                self.scalar_subquery(scope, ty, depth)
            }
            (Ty::Int, 4) => {
                let t = self.expr(scope, Ty::Text, depth, b);
                Sql::seq(vec!["length(".into(), t, ")".into()])
            }
            (Ty::Int, 5) => {
                let d = self.column_or_literal(scope, Ty::Date);
                format!("CAST(EXTRACT(YEAR FROM {d}) AS INT)").into()
            }
            (Ty::Int | Ty::Dec, 6) => {
                let a = self.expr(scope, ty, depth, b);
                Sql::seq(vec!["abs(".into(), a, ")".into()])
            }
            (Ty::Int | Ty::Dec, _) => {
                let a = self.expr(scope, ty, depth, b);
                let c = self.expr(scope, ty, depth, b);
                let op = *[" + ", " - ", " * "].choose(self.rng).unwrap_or(&" + ");
                Sql::seq(vec!["(".into(), a, op.into(), c, ")".into()])
            }
            (Ty::Text, n) => {
                let a = self.expr(scope, Ty::Text, depth, b);
                match n {
                    3 => Sql::seq(vec!["upper(".into(), a, ")".into()]),
                    4 => Sql::seq(vec!["lower(".into(), a, ")".into()]),
                    5 => Sql::seq(vec!["substr(".into(), a, ", 1, 3)".into()]),
                    6 => Sql::seq(vec!["trim(".into(), a, ")".into()]),
                    _ => {
                        let c = self.expr(scope, Ty::Text, depth, b);
                        Sql::seq(vec!["(".into(), a, " || '-' || ".into(), c, ")".into()])
                    }
                }
            }
            (Ty::Date, _) => {
                let p = self.simple_predicate(scope);
                let a = self.column_or_literal(scope, Ty::Date);
                let c = self.literal(Ty::Date);
                Sql::seq(vec![
                    "CASE WHEN ".into(),
                    p,
                    format!(" THEN {a} ELSE {c} END").into(),
                ])
            }
        };
        Sql::alt(full, simple)
    }

    /// An aggregate over `scope` and its type.
    fn aggregate(&mut self, scope: &Scope, depth: usize) -> (Sql, Ty) {
        self.no_subqueries += 1;
        let aggregate = self.aggregate_call(scope, depth);
        self.no_subqueries -= 1;
        aggregate
    }

    fn aggregate_call(&mut self, scope: &Scope, depth: usize) -> (Sql, Ty) {
        match self.rng.random_range(0..7) {
            0 => ("count(*)".into(), Ty::Int),
            1 => {
                let ty = self.any_type();
                let e = self.expr(scope, ty, depth, 1);
                (Sql::seq(vec!["count(".into(), e, ")".into()]), Ty::Int)
            }
            2 => {
                let ty = self.any_type();
                let c = self.column_or_literal(scope, ty);
                (format!("count(DISTINCT {c})").into(), Ty::Int)
            }
            3 | 4 => {
                let ty = if self.rng.random_bool(0.5) {
                    Ty::Int
                } else {
                    Ty::Dec
                };
                let e = self.expr(scope, ty, depth, 1);
                let f = if self.rng.random_bool(0.5) {
                    "sum"
                } else {
                    "avg"
                };
                let out = if f == "avg" { Ty::Dec } else { ty };
                (Sql::seq(vec![format!("{f}(").into(), e, ")".into()]), out)
            }
            _ => {
                let ty = self.any_type();
                let e = self.expr(scope, ty, depth, 1);
                let f = if self.rng.random_bool(0.5) {
                    "min"
                } else {
                    "max"
                };
                (Sql::seq(vec![format!("{f}(").into(), e, ")".into()]), ty)
            }
        }
    }

    /// A window function of type `ty` whose answer does not depend on how
    /// ties are ordered.
    fn window(&mut self, scope: &Scope, ty: Ty) -> Sql {
        let partition = match scope.columns.choose(self.rng) {
            Some(c) => format!("PARTITION BY {}", c.name),
            None => String::new(),
        };
        match ty {
            Ty::Int => {
                let order = self.column_or_literal(scope, Ty::Dec);
                let f = *["rank()", "dense_rank()", "count(*)"]
                    .choose(self.rng)
                    .unwrap_or(&"rank()");
                format!("{f} OVER ({partition} ORDER BY {order})").into()
            }
            Ty::Dec => {
                let v = self.column_or_literal(scope, Ty::Dec);
                let f = *["sum", "min", "max"].choose(self.rng).unwrap_or(&"sum");
                format!("{f}({v}) OVER ({partition})").into()
            }
            _ => {
                let v = self.column_or_literal(scope, ty);
                format!("max({v}) OVER ({partition})").into()
            }
        }
    }

    /// `(SELECT agg FROM t WHERE t.key = outer.key …)`, correlated when the
    /// outer scope has a key, or over a whole table.
    fn scalar_subquery(&mut self, scope: &Scope, ty: Ty, depth: usize) -> Sql {
        let keyed: Vec<Column> = scope
            .columns
            .iter()
            .filter(|c| c.key.is_some())
            .cloned()
            .collect();
        let outer = keyed.choose(self.rng).cloned();
        let correlated = outer.is_some() && self.rng.random_bool(0.6);
        let (from, inner) = match (&outer, correlated) {
            (Some(o), true) => self.table_with_key(o.key),
            _ => self.join_clause(depth + 1, 2),
        };
        let value = match (ty, self.rng.random_bool(0.5)) {
            (Ty::Int, _) => "count(*)".to_string(),
            (_, true) => format!("max({})", self.column_or_literal(&inner, Ty::Dec)),
            (_, false) => format!("sum({})", self.column_or_literal(&inner, Ty::Dec)),
        };
        let mut parts = vec![Sql::from(format!("(SELECT {value}")), from];
        if let (Some(o), true) = (&outer, correlated) {
            if let Some(k) = inner.columns.iter().find(|c| c.key == o.key) {
                parts.push(format!(" WHERE {} = {}", k.name, o.name).into());
            }
        }
        parts.push(")".into());
        Sql::seq(parts)
    }

    /// A comparison, range, list, NULL or pattern test over `scope`.
    fn simple_predicate(&mut self, scope: &Scope) -> Sql {
        let ty = self.any_type();
        let a = self.column_or_literal(scope, ty);
        match self.rng.random_range(0..8) {
            0 => format!("{a} IS NULL").into(),
            1 => format!("{a} IS NOT NULL").into(),
            2 => {
                let (lo, hi) = (self.literal(ty), self.literal(ty));
                format!("{a} BETWEEN {lo} AND {hi}").into()
            }
            3 => {
                let list: Vec<String> = (0..self.rng.random_range(1..4))
                    .map(|_| self.literal(ty))
                    .collect();
                let not = if self.rng.random_bool(0.3) {
                    "NOT "
                } else {
                    ""
                };
                format!("{a} {not}IN ({})", list.join(", ")).into()
            }
            4 if ty == Ty::Text => {
                let pattern = LIKE_PATTERNS.choose(self.rng).copied().unwrap_or("A%");
                format!("{a} LIKE '{pattern}'").into()
            }
            _ => {
                let op = self.comparison();
                let b = if self.rng.random_bool(0.5) {
                    self.literal(ty)
                } else {
                    self.column_or_literal(scope, ty)
                };
                format!("{a} {op} {b}").into()
            }
        }
    }

    /// A predicate, at most `budget` connectives deep.
    fn predicate(&mut self, scope: &Scope, depth: usize, budget: usize) -> Sql {
        let roll = self.rng.random_range(0..10);
        if budget == 0 || roll < 4 {
            return self.simple_predicate(scope);
        }
        let b = budget - 1;
        match roll {
            4 => {
                let ty = self.any_type();
                let a = self.expr(scope, ty, depth, 1);
                let c = self.expr(scope, ty, depth, 1);
                let op = self.comparison();
                Sql::seq(vec![a, format!(" {op} ").into(), c])
            }
            5 => {
                let p = self.predicate(scope, depth, b);
                Sql::alt(Sql::seq(vec!["NOT (".into(), p, ")".into()]), "TRUE")
            }
            6 | 7 => {
                let p = self.predicate(scope, depth, b);
                let q = self.predicate(scope, depth, b);
                let op = if roll == 6 { " AND " } else { " OR " };
                Sql::seq(vec![
                    "(".into(),
                    p,
                    Sql::opt(Sql::seq(vec![op.into(), q])),
                    ")".into(),
                ])
            }
            _ if depth < self.limits.max_depth && self.no_subqueries == 0 => {
                self.subquery_predicate(scope, depth)
            }
            _ => self.simple_predicate(scope),
        }
    }

    /// `[NOT] EXISTS (…)`, `key [NOT] IN (SELECT …)` or a comparison with a
    /// scalar subquery.
    fn subquery_predicate(&mut self, scope: &Scope, depth: usize) -> Sql {
        let keyed: Vec<Column> = scope
            .columns
            .iter()
            .filter(|c| c.key.is_some())
            .cloned()
            .collect();
        let Some(outer) = keyed.choose(self.rng).cloned() else {
            return self.simple_predicate(scope);
        };
        let (from, inner) = self.table_with_key(outer.key);
        let Some(inner_key) = inner.columns.iter().find(|c| c.key == outer.key).cloned() else {
            return self.simple_predicate(scope);
        };
        let filter = self.where_clause(&inner, depth + 1);
        let not = if self.rng.random_bool(0.35) {
            "NOT "
        } else {
            ""
        };
        match self.rng.random_range(0..3) {
            0 => {
                let correlation = format!(" AND {} = {}", inner_key.name, outer.name);
                let filter = match filter {
                    Sql::Text(t) if t.is_empty() => Sql::from(" WHERE TRUE"),
                    f => f,
                };
                Sql::seq(vec![
                    format!("{not}EXISTS (SELECT 1").into(),
                    from,
                    filter,
                    correlation.into(),
                    ")".into(),
                ])
            }
            1 => Sql::seq(vec![
                format!("{} {not}IN (SELECT {}", outer.name, inner_key.name).into(),
                from,
                filter,
                ")".into(),
            ]),
            _ => {
                let ty = if self.rng.random_bool(0.5) {
                    Ty::Int
                } else {
                    Ty::Dec
                };
                let a = self.column_or_literal(scope, ty);
                let op = self.comparison();
                let sub = self.scalar_subquery(scope, ty, depth);
                Sql::seq(vec![format!("{a} {op} ").into(), sub])
            }
        }
    }
}

fn table_scope(table: &TableDef, alias: &str) -> Scope {
    Scope {
        columns: table
            .columns
            .iter()
            .map(|(name, ty, key)| Column {
                name: format!("{alias}.{name}"),
                ty: *ty,
                key: *key,
                unique: PRIMARY_KEYS.contains(name),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn generation_is_deterministic_per_seed() {
        let qualify = |t: &str| t.to_string();
        let make = |seed| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut g = Generator::new(&mut rng, Limits::default(), &qualify);
            (0..20)
                .map(|_| g.query().render(&Default::default()))
                .collect::<Vec<_>>()
        };
        assert_eq!(make(7), make(7));
        assert_ne!(make(7), make(8));
    }
}
