//! Which persisted views read a relation, as Postgres's `pg_depend` would
//! say: a plain `DROP` of a relation that views read is refused (`2BP01`),
//! `DROP … CASCADE` drops those views too.
//!
//! fedsql resolves a view's inputs by name when it is planned, so the
//! dependencies are read from the views' definitions: every table name in
//! the `CREATE VIEW` statement, qualified in the database it ran in, except
//! the names of its own common table expressions.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{ObjectName, Query, Statement, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::catalog_store::ViewEntry;
use crate::engine::qualify;

/// The relations (`catalog.schema.name`) the definition `sql`, run in
/// `database`, reads.
pub fn relations_read(database: &str, sql: &str) -> BTreeSet<String> {
    struct Collect {
        relations: Vec<ObjectName>,
        ctes: BTreeSet<String>,
    }
    impl Visitor for Collect {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            if let Some(with) = &query.with {
                for cte in &with.cte_tables {
                    self.ctes.insert(cte.alias.name.value.to_lowercase());
                }
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
            self.relations.push(relation.clone());
            ControlFlow::Continue(())
        }
    }
    let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return BTreeSet::new();
    };
    let mut collect = Collect {
        relations: Vec::new(),
        ctes: BTreeSet::new(),
    };
    for statement in &statements {
        // The view's own name is a relation of the statement, not an input.
        let _ = match statement {
            Statement::CreateView(view) => view.query.visit(&mut collect),
            other => other.visit(&mut collect),
        };
    }
    collect
        .relations
        .iter()
        .filter(|name| {
            !(name.0.len() == 1 && collect.ctes.contains(&name.to_string().to_lowercase()))
        })
        .filter_map(|name| qualify(database, name))
        .collect()
}

/// The views among `views` that read one of `dropped`, directly or through
/// other such views, in the order they were made.
pub fn dependents(views: &[ViewEntry], dropped: &[String]) -> Vec<String> {
    let mut gone: BTreeSet<String> = dropped.iter().cloned().collect();
    let mut found = Vec::new();
    // Each definition is read once; then one pass per level of nesting
    // finds every dependent.
    let reads: Vec<(&ViewEntry, BTreeSet<String>)> = views
        .iter()
        .filter(|v| !v.name.starts_with("schema:"))
        .map(|v| (v, relations_read(&v.database, &v.sql)))
        .collect();
    loop {
        let before = found.len();
        for (view, read) in &reads {
            if gone.contains(&view.name) {
                continue;
            }
            if read.iter().any(|r| gone.contains(r)) {
                gone.insert(view.name.clone());
                found.push(view.name.clone());
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, sql: &str) -> ViewEntry {
        ViewEntry {
            name: name.into(),
            database: "demo".into(),
            sql: sql.into(),
        }
    }

    #[test]
    fn reads_tables_not_its_own_name_or_ctes() {
        let read = relations_read(
            "demo",
            "CREATE VIEW a.v AS WITH t AS (SELECT 1) \
             SELECT * FROM t, bank.customers c JOIN \"Odd\" o ON true \
             WHERE EXISTS (SELECT 1 FROM other.db.x)",
        );
        let read: Vec<&str> = read.iter().map(String::as_str).collect();
        assert_eq!(
            read,
            vec!["demo.bank.customers", "demo.public.Odd", "other.db.x"]
        );
    }

    #[test]
    fn dependents_are_found_through_views() {
        let views = vec![
            view(
                "demo.a.v1",
                "CREATE VIEW a.v1 AS SELECT * FROM bank.customers",
            ),
            view("demo.a.v2", "CREATE VIEW a.v2 AS SELECT * FROM a.v1"),
            view(
                "demo.a.v3",
                "CREATE VIEW a.v3 AS SELECT * FROM bank.transactions",
            ),
            view("schema:demo.a", "CREATE SCHEMA a"),
        ];
        assert_eq!(
            dependents(&views, &["demo.bank.customers".into()]),
            vec!["demo.a.v1".to_string(), "demo.a.v2".to_string()]
        );
        assert!(dependents(&views, &["demo.a.v2".into()]).is_empty());
    }
}
