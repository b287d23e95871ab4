//! The statements that build a node, per materialization, and the queries
//! of `schema.yml` tests. Pure text: [`super::RunContext::build`] runs them.
//!
//! A table is built beside the old one and swapped in by renames (the old
//! one is renamed to a backup first and dropped last), so a crash leaves
//! the old table or the new one under the model's name.

use std::path::PathBuf;

use super::project::ColumnTest;
use super::render::{quoted, Relation};

/// How a node is built.
#[derive(Debug, Clone, PartialEq)]
pub enum Materialized {
    View,
    Table,
    /// Appended to (or merged on `unique_key`) once it exists.
    Incremental,
    /// Not built: inlined where it is referenced.
    Ephemeral,
    /// The file is a `TRAIN MODEL` statement; the node is the model.
    Model,
    /// A `seeds/*.csv` file, loaded as a table.
    Seed(PathBuf),
}

impl Materialized {
    pub fn parse(name: &str) -> Result<Materialized, String> {
        Ok(match name {
            "view" => Materialized::View,
            "table" => Materialized::Table,
            "incremental" => Materialized::Incremental,
            "ephemeral" => Materialized::Ephemeral,
            "model" => Materialized::Model,
            other => {
                return Err(format!(
                    "unknown materialization {other} (view, table, incremental, ephemeral, model)"
                ))
            }
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Materialized::View => "view",
            Materialized::Table => "table",
            Materialized::Incremental => "incremental",
            Materialized::Ephemeral => "ephemeral",
            Materialized::Model => "model",
            Materialized::Seed(_) => "seed",
        }
    }
}

/// The statements of one build, and a line saying what they do.
#[derive(Debug)]
pub struct Steps {
    pub statements: Vec<String>,
    pub describe: String,
}

/// What is under a node's name before it builds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Existing<'a> {
    /// `BASE TABLE` or `VIEW`, if the relation exists.
    pub kind: Option<&'a str>,
    /// Whether an interrupted build left `__fedsql_tmp` / `__fedsql_backup`
    /// / `__fedsql_seed` relations beside it (dropped first).
    pub leftovers: bool,
}

/// A sibling of `relation` named `<identifier>__<suffix>`.
fn sibling(relation: &Relation, suffix: &str) -> (String, String) {
    let name = format!("{}__{suffix}", relation.identifier);
    (quoted(&[&relation.database, &relation.schema, &name]), name)
}

/// `CREATE TABLE tmp AS query`, then the swap of `tmp` into `relation`
/// (whatever `existing` is).
fn swap_in(relation: &Relation, query: &str, existing: Existing<'_>) -> Vec<String> {
    let (tmp, _) = sibling(relation, "fedsql_tmp");
    let (backup, backup_name) = sibling(relation, "fedsql_backup");
    let target = quoted(&[&relation.identifier]);
    let mut out = Vec::new();
    if existing.leftovers {
        out.push(format!("DROP TABLE IF EXISTS {tmp}"));
        out.push(format!("DROP TABLE IF EXISTS {backup}"));
    }
    out.push(format!("CREATE TABLE {tmp} AS {query}"));
    let existing = existing.kind;
    match existing {
        // As dbt does: views over the old relation go with it (Postgres
        // would refuse a plain DROP with 2BP01) and are built again when
        // their own models run.
        Some("VIEW") => out.push(format!("DROP VIEW {relation} CASCADE")),
        Some(_) => out.push(format!(
            "ALTER TABLE {relation} RENAME TO {}",
            quoted(&[&backup_name])
        )),
        None => {}
    }
    out.push(format!("ALTER TABLE {tmp} RENAME TO {target}"));
    if matches!(existing, Some(kind) if kind != "VIEW") {
        out.push(format!("DROP TABLE {backup}"));
    }
    out
}

/// The statements that build `relation` from `sql` (its rendered query).
pub fn steps(
    materialized: &Materialized,
    relation: &Relation,
    sql: &str,
    existing: Existing<'_>,
    incremental: bool,
    unique_key: Option<&str>,
) -> Result<Steps, String> {
    let steps = |statements: Vec<String>, describe: String| {
        Ok(Steps {
            statements,
            describe,
        })
    };
    match materialized {
        Materialized::View => {
            let mut out = Vec::new();
            if matches!(existing.kind, Some(kind) if kind != "VIEW") {
                out.push(format!("DROP TABLE {relation} CASCADE"));
            }
            out.push(format!("CREATE OR REPLACE VIEW {relation} AS {sql}"));
            steps(out, format!("view {relation}"))
        }
        Materialized::Table => steps(
            swap_in(relation, sql, existing),
            format!("table {relation}"),
        ),
        Materialized::Incremental if !incremental => steps(
            swap_in(relation, sql, existing),
            format!("table {relation} (full build)"),
        ),
        Materialized::Incremental => match unique_key {
            None => steps(
                vec![format!(
                    "INSERT INTO {relation} SELECT * FROM ({sql}) AS fedsql_new"
                )],
                format!("appended to {relation}"),
            ),
            Some(key) => {
                let key = quoted(&[key]);
                // The old rows whose key the new rows do not have, then the
                // new rows: a merge without UPDATE/DELETE.
                let merged = format!(
                    "SELECT * FROM {relation} AS fedsql_old WHERE NOT EXISTS \
                     (SELECT 1 FROM ({sql}) AS fedsql_new WHERE fedsql_new.{key} = fedsql_old.{key}) \
                     UNION ALL SELECT * FROM ({sql}) AS fedsql_new"
                );
                steps(
                    swap_in(relation, &merged, existing),
                    format!("merged into {relation} on {key}"),
                )
            }
        },
        Materialized::Ephemeral => steps(Vec::new(), "ephemeral: inlined where referenced".into()),
        Materialized::Model => {
            let head = sql.trim_start().to_ascii_uppercase();
            if !(head.starts_with("TRAIN MODEL")
                || head.starts_with("CREATE MODEL")
                || head.starts_with("CREATE OR REPLACE MODEL"))
            {
                return Err("a model materialization's file is a TRAIN MODEL statement".into());
            }
            steps(
                vec![sql.to_string()],
                format!("trained model {}", relation.identifier),
            )
        }
        Materialized::Seed(path) => {
            let (external, _) = sibling(relation, "fedsql_seed");
            let location = path.display().to_string().replace('\'', "''");
            let mut out = Vec::new();
            if existing.leftovers {
                out.push(format!("DROP TABLE IF EXISTS {external}"));
            }
            out.push(format!(
                "CREATE EXTERNAL TABLE {external} STORED AS CSV LOCATION '{location}' \
                 OPTIONS ('format.has_header' 'true')"
            ));
            out.extend(swap_in(
                relation,
                &format!("SELECT * FROM {external}"),
                existing,
            ));
            out.push(format!("DROP TABLE {external}"));
            steps(out, format!("seed {relation}"))
        }
    }
}

/// A query answering the number of rows that fail `test` on `column` of
/// `relation`; `to` is a relationships test's parent relation, rendered.
pub fn test_query(
    relation: &Relation,
    column: &str,
    test: &ColumnTest,
    to: Option<&str>,
) -> String {
    let col = quoted(&[column]);
    match test {
        ColumnTest::NotNull => format!("SELECT count(*) FROM {relation} WHERE {col} IS NULL"),
        ColumnTest::Unique => format!(
            "SELECT count(*) FROM (SELECT {col} FROM {relation} WHERE {col} IS NOT NULL \
             GROUP BY {col} HAVING count(*) > 1) AS fedsql_dupes"
        ),
        ColumnTest::AcceptedValues(values) => {
            let list = values
                .iter()
                .map(|v| format!("'{}'", v.replace('\'', "''")))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "SELECT count(*) FROM {relation} WHERE {col} IS NOT NULL \
                 AND CAST({col} AS VARCHAR) NOT IN ({list})"
            )
        }
        ColumnTest::Relationships { field, .. } => format!(
            "SELECT count(*) FROM {relation} AS fedsql_child WHERE fedsql_child.{col} IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM {} AS fedsql_parent \
             WHERE fedsql_parent.{} = fedsql_child.{col})",
            to.unwrap_or("NULL"),
            quoted(&[field])
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_swapped_in_beside_the_old_one() {
        let r = Relation::table("demo", "marts", "t");
        let table = Existing {
            kind: Some("BASE TABLE"),
            leftovers: false,
        };
        let s = steps(
            &Materialized::Table,
            &r,
            "SELECT 1 AS x",
            table,
            false,
            None,
        )
        .unwrap();
        assert_eq!(
            s.statements,
            [
                "CREATE TABLE \"demo\".\"marts\".\"t__fedsql_tmp\" AS SELECT 1 AS x",
                "ALTER TABLE \"demo\".\"marts\".\"t\" RENAME TO \"t__fedsql_backup\"",
                "ALTER TABLE \"demo\".\"marts\".\"t__fedsql_tmp\" RENAME TO \"t\"",
                "DROP TABLE \"demo\".\"marts\".\"t__fedsql_backup\"",
            ]
        );
        // What an interrupted build left is dropped first.
        let leftovers = Existing {
            kind: None,
            leftovers: true,
        };
        let fresh = steps(&Materialized::Table, &r, "SELECT 1", leftovers, false, None).unwrap();
        assert_eq!(
            fresh.statements[..2],
            [
                "DROP TABLE IF EXISTS \"demo\".\"marts\".\"t__fedsql_tmp\"",
                "DROP TABLE IF EXISTS \"demo\".\"marts\".\"t__fedsql_backup\"",
            ]
        );
        assert_eq!(fresh.statements.len(), 4);
        let append = steps(
            &Materialized::Incremental,
            &r,
            "SELECT 2",
            table,
            true,
            None,
        )
        .unwrap();
        assert_eq!(
            append.statements,
            ["INSERT INTO \"demo\".\"marts\".\"t\" SELECT * FROM (SELECT 2) AS fedsql_new"]
        );
        let refused = steps(
            &Materialized::Model,
            &r,
            "SELECT 1",
            Existing::default(),
            false,
            None,
        )
        .unwrap_err();
        assert!(refused.contains("TRAIN MODEL"), "{refused}");
    }
}
