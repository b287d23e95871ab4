//! Keeping generated names consistent when a sub-plan is federated.
//!
//! A query names a remote table the way fedsql sees it (`pg.public.li`);
//! the SQL sent names it the way the source does (`li`). datafusion-
//! federation rewrites one into the other just before unparsing, including
//! inside generated column names (`sum(pg.public.li.a)` → `sum(li.a)`), but
//! not inside alias names. DataFusion's simplifier aliases a rewritten
//! expression back to its original name (`sum(a * (1 - b))` gets a decimal
//! literal and an alias `sum(pg.public.li.a * Int64(1) - pg.public.li.b)`),
//! so the parent that references the alias by its rewritten name fails to
//! plan ("No field named …").
//!
//! [`with_remote_names`] does the whole renaming first and consistently —
//! scans, qualified columns, generated column names and alias names — so
//! datafusion-federation finds nothing left to rename, and restores the
//! original names above the federated plan, so the outer query sees what it
//! planned.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, TableReference};
use datafusion::error::Result;
use datafusion::logical_expr::expr::Alias;
use datafusion::logical_expr::{Expr, Filter, LogicalPlan, Projection, SubqueryAlias};
use datafusion_federation::get_table_source;
use datafusion_federation::sql::SQLTableSource;

/// `plan` with generated names using the sources' own table names, and the
/// projection that gives its output back its original names (`None` when no
/// name changes).
pub fn with_remote_names(plan: LogicalPlan) -> Result<(LogicalPlan, Option<RestoreNames>)> {
    let plan = filters_above_aliases(plan)?;
    let renames = remote_names(&plan)?;
    if renames.is_empty() {
        return Ok((plan, None));
    }
    let original = Arc::clone(plan.schema());
    let renamed = plan
        .transform_up(|node| {
            let node = node.map_expressions(|e| e.transform(|e| Ok(rename_expr(e, &renames))))?;
            if node.transformed {
                node.map_data(|p| p.recompute_schema())
            } else {
                Ok(node)
            }
        })?
        .data;
    let same = original
        .iter()
        .zip(renamed.schema().iter())
        .all(|((old_q, old_f), (new_q, new_f))| old_q == new_q && old_f.name() == new_f.name());
    if same {
        return Ok((renamed, None));
    }
    let restore = RestoreNames {
        columns: renamed
            .schema()
            .iter()
            .zip(original.iter())
            .map(|((new_q, new_f), (old_q, old_f))| {
                let column = Expr::Column(Column::new(new_q.cloned(), new_f.name()));
                Expr::Alias(Alias::new(column, old_q.cloned(), old_f.name()))
            })
            .collect(),
    };
    Ok((renamed, Some(restore)))
}

/// Moves each filter that sits between a table alias and its scan above the
/// alias, with its columns requalified by the alias.
///
/// Both mean the same rows, but DataFusion 55's unparser writes a filter
/// under an alias with the table's own name (`FROM accounts AS a WHERE
/// accounts.balance > 0`), which databases reject. Such filters exist once
/// `push_down_filter` has run — which is what sends the remote side of a
/// cross-source join its filters.
fn filters_above_aliases(plan: LogicalPlan) -> Result<LogicalPlan> {
    Ok(plan
        .transform_up(|node| {
            let LogicalPlan::SubqueryAlias(alias) = node else {
                return Ok(Transformed::no(node));
            };
            let LogicalPlan::Filter(filter) = alias.input.as_ref() else {
                return Ok(Transformed::no(LogicalPlan::SubqueryAlias(alias)));
            };
            let LogicalPlan::TableScan(scan) = filter.input.as_ref() else {
                return Ok(Transformed::no(LogicalPlan::SubqueryAlias(alias)));
            };
            let table = scan.table_name.clone();
            let alias_name = alias.alias.clone();
            let predicate = filter
                .predicate
                .clone()
                .transform(|e| match e {
                    Expr::Column(c) if c.relation.as_ref() == Some(&table) => Ok(Transformed::yes(
                        Expr::Column(Column::new(Some(alias_name.clone()), c.name)),
                    )),
                    other => Ok(Transformed::no(other)),
                })?
                .data;
            let aliased = SubqueryAlias::try_new(Arc::clone(&filter.input), alias_name)?;
            let filter = Filter::try_new(predicate, Arc::new(LogicalPlan::SubqueryAlias(aliased)))?;
            Ok(Transformed::yes(LogicalPlan::Filter(filter)))
        })?
        .data)
}

/// The projection that restores a federated plan's original output names.
pub struct RestoreNames {
    columns: Vec<Expr>,
}

impl RestoreNames {
    /// `federated` under a projection with the original names.
    pub fn apply(self, federated: LogicalPlan) -> Result<LogicalPlan> {
        Ok(LogicalPlan::Projection(Projection::try_new(
            self.columns,
            Arc::new(federated),
        )?))
    }
}

/// One table whose local and remote names differ.
struct Rename {
    local: TableReference,
    remote: TableReference,
    /// Their texts, as they appear inside generated names.
    local_text: String,
    remote_text: String,
}

/// Local table name → the source's name, for scans where they differ.
fn remote_names(plan: &LogicalPlan) -> Result<Vec<Rename>> {
    let mut renames: HashMap<TableReference, TableReference> = HashMap::new();
    plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            if let Some(source) = get_table_source(&scan.source)? {
                if let Some(sql) =
                    (source.as_ref() as &dyn std::any::Any).downcast_ref::<SQLTableSource>()
                {
                    let remote: TableReference = sql.table_reference();
                    if remote != scan.table_name {
                        renames.insert(scan.table_name.clone(), remote);
                    }
                }
            }
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    })?;
    Ok(renames
        .into_iter()
        .map(|(local, remote)| Rename {
            local_text: local.to_string(),
            remote_text: remote.to_string(),
            local,
            remote,
        })
        .collect())
}

fn rename_expr(expr: Expr, renames: &[Rename]) -> Transformed<Expr> {
    let requalify = |relation: &Option<TableReference>| {
        relation
            .as_ref()
            .and_then(|q| renames.iter().find(|r| r.local == *q))
            .map(|r| r.remote.clone())
    };
    match expr {
        Expr::Alias(mut alias) => {
            let name = rename(&alias.name, renames);
            let relation = requalify(&alias.relation);
            if name.is_none() && relation.is_none() {
                return Transformed::no(Expr::Alias(alias));
            }
            if let Some(name) = name {
                alias.name = name;
            }
            if relation.is_some() {
                alias.relation = relation;
            }
            Transformed::yes(Expr::Alias(alias))
        }
        Expr::Column(column) => {
            if let Some(remote) = requalify(&column.relation) {
                return Transformed::yes(Expr::Column(Column::new(Some(remote), column.name)));
            }
            // Generated names (no qualifier) embed table names.
            match column.relation {
                None => match rename(&column.name, renames) {
                    Some(name) => Transformed::yes(Expr::Column(Column::new_unqualified(name))),
                    None => Transformed::no(Expr::Column(column)),
                },
                Some(_) => Transformed::no(Expr::Column(column)),
            }
        }
        other => Transformed::no(other),
    }
}

/// `name` with every whole occurrence of a local table name replaced.
fn rename(name: &str, renames: &[Rename]) -> Option<String> {
    let mut out = name.to_string();
    let mut changed = false;
    for Rename {
        local_text: from,
        remote_text: to,
        ..
    } in renames
    {
        let mut start = 0;
        while let Some(found) = out[start..].find(from.as_str()) {
            let at = start + found;
            let end = at + from.len();
            let before = out[..at].chars().next_back();
            let after = out[end..].chars().next();
            let part_of_other_name = before
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
                || after.is_some_and(|c| c.is_alphanumeric() || c == '_');
            if part_of_other_name {
                start = end;
                continue;
            }
            out.replace_range(at..end, to);
            start = at + to.len();
            changed = true;
        }
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_whole_table_names_only() {
        let r = vec![Rename {
            local: TableReference::full("pg", "public", "li"),
            remote: TableReference::bare("li"),
            local_text: "pg.public.li".into(),
            remote_text: "li".into(),
        }];
        assert_eq!(
            rename("sum(pg.public.li.a * Int64(1) - pg.public.li.b)", &r).as_deref(),
            Some("sum(li.a * Int64(1) - li.b)")
        );
        assert_eq!(rename("sum(pg.public.lines.a)", &r), None);
        assert_eq!(rename("x.pg.public.li.a", &r), None);
    }
}
