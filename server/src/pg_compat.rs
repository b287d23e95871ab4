//! What real Postgres clients need beyond datafusion-postgres's `pg_catalog`:
//! a few catalog functions, and one rewrite of catalog queries.
//!
//! The fixtures in `shared/clients/psql_meta_queries.sql` are what psql sends;
//! the integration tests replay them.

use std::ops::ControlFlow;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::error::Result as DfResult;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    visit_expressions_mut, visit_relations, Expr, FunctionArguments, Statement,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// A catalog function whose answer is constant in fedsql: there are no
/// indexes, triggers or comments, and every function is visible.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ConstantFunction {
    name: &'static str,
    value: ScalarValue,
    signature: Signature,
}

impl ScalarUDFImpl for ConstantFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(self.value.data_type())
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value.clone()))
    }
}

/// Registers the catalog functions psql's `\d+`, `\df` and friends call.
pub fn register_functions(ctx: &SessionContext) {
    let text_null = ScalarValue::Utf8(None);
    for (name, value) in [
        ("pg_get_indexdef", text_null.clone()),
        ("pg_get_triggerdef", text_null.clone()),
        ("col_description", text_null.clone()),
        ("pg_get_constraintdef", text_null.clone()),
        ("pg_get_function_result", text_null.clone()),
        ("pg_get_function_arguments", text_null),
        ("pg_function_is_visible", ScalarValue::Boolean(Some(true))),
    ] {
        // pg_catalog's own version wins where it exists.
        if ctx.udf(name).is_ok() {
            continue;
        }
        ctx.register_udf(ScalarUDF::from(ConstantFunction {
            name,
            value,
            signature: Signature::variadic_any(Volatility::Stable),
        }));
    }
}

/// Rewrites a query that reads only `pg_catalog` / `information_schema` so
/// DataFusion can run it, or returns `None` to run `sql` as written.
///
/// `ARRAY(subquery)` (psql's `\d+` lists storage options with it) has no
/// DataFusion equivalent. In catalog queries its subquery reads options,
/// policies or roles that fedsql does not have, so it is replaced by a NULL
/// text array,
/// as are references to `reloptions`, which fedsql's `pg_class` lacks.
/// User queries are never rewritten.
pub fn rewrite_catalog_query(sql: &str) -> Option<String> {
    if !sql.to_ascii_lowercase().contains("array") {
        return None;
    }
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    if statements.len() != 1 || !matches!(statements[0], Statement::Query(_)) {
        return None;
    }
    let only_catalog = visit_relations(&statements[0], |name| {
        let first = name.0.first().map(|p| p.to_string().to_ascii_lowercase());
        match (name.0.len(), first.as_deref()) {
            (n, Some("pg_catalog" | "information_schema")) if n >= 2 => ControlFlow::Continue(()),
            _ => ControlFlow::Break(()),
        }
    });
    if only_catalog.is_break() {
        return None;
    }
    // A typed NULL: `NULL || NULL` has no type DataFusion can infer.
    let empty_options = Parser::new(&PostgreSqlDialect {})
        .try_with_sql("CAST(NULL AS TEXT[])")
        .and_then(|mut p| p.parse_expr())
        .ok()?;
    let mut changed = false;
    let _ = visit_expressions_mut(&mut statements[0], |expr| {
        let replace = match expr {
            Expr::Function(f) => {
                f.name.to_string().eq_ignore_ascii_case("array")
                    && matches!(f.args, FunctionArguments::Subquery(_))
            }
            // Storage options: fedsql's pg_class has no such column.
            Expr::CompoundIdentifier(parts) => parts
                .last()
                .is_some_and(|p| p.value.eq_ignore_ascii_case("reloptions")),
            _ => false,
        };
        if replace {
            *expr = empty_options.clone();
            changed = true;
        }
        ControlFlow::<()>::Continue(())
    });
    changed.then(|| statements[0].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_subqueries_in_catalog_queries_become_null() {
        let sql = "SELECT pg_catalog.array_to_string(c.reloptions || array(select 'toast.' || x from pg_catalog.unnest(tc.reloptions) x), ', ') FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_class tc ON (c.reltoastrelid = tc.oid)";
        let rewritten = rewrite_catalog_query(sql).unwrap();
        assert!(
            rewritten.contains("array_to_string(CAST(NULL AS TEXT[]) || CAST(NULL AS TEXT[])"),
            "{rewritten}"
        );
    }

    #[test]
    fn user_queries_are_left_alone() {
        assert_eq!(
            rewrite_catalog_query("SELECT array(SELECT 1) FROM demo.bank.customers"),
            None
        );
        assert_eq!(rewrite_catalog_query("SELECT 1"), None);
    }
}
