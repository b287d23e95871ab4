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
    visit_expressions_mut, visit_relations, Expr, FunctionArguments, Statement, Value,
    ValueWithSpan,
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
    // Drivers (SQLAlchemy, JDBC) parse `version()` for "PostgreSQL X.Y";
    // DataFusion's own answer names only DataFusion.
    ctx.register_udf(ScalarUDF::from(ConstantFunction {
        name: "version",
        value: ScalarValue::Utf8(Some(version_string())),
        signature: Signature::nullary(Volatility::Stable),
    }));
}

/// What `version()` returns: the Postgres version fedsql's wire emulates,
/// then fedsql's own.
pub fn version_string() -> String {
    format!(
        "PostgreSQL 15.0 (fedsql {}, Apache DataFusion {}) on {}",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION,
        std::env::consts::ARCH
    )
}

/// Rewrites a query that reads only `pg_catalog` / `information_schema` so
/// DataFusion can run it, or returns `None` to run `sql` as written.
///
/// `ARRAY(subquery)` (psql's `\d+` lists storage options with it) has no
/// DataFusion equivalent. In catalog queries its subquery reads options,
/// policies or roles that fedsql does not have, so it is replaced by a NULL
/// text array,
/// as are references to `reloptions`, which fedsql's `pg_class` lacks.
/// `to_regtype(name)` becomes a lookup in `pg_type`.
/// User queries are never rewritten.
pub fn rewrite_catalog_query(sql: &str) -> Option<String> {
    // Cheap gate: only catalog queries and scalar subqueries are worth
    // parsing twice.
    let lower = sql.to_ascii_lowercase();
    let subquery = lower.contains("(select") || lower.contains("( select");
    if !lower.contains("pg_") && !subquery {
        return None;
    }
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    if statements.len() != 1 || !matches!(statements[0], Statement::Query(_)) {
        return None;
    }
    if !lower.contains("pg_") {
        return protect_scalar_subqueries(&mut statements[0]).then(|| statements[0].to_string());
    }
    let only_catalog = visit_relations(&statements[0], |name| {
        let first = name.0.first().map(|p| p.to_string().to_ascii_lowercase());
        match (name.0.len(), first.as_deref()) {
            (n, Some("pg_catalog" | "information_schema")) if n >= 2 => ControlFlow::Continue(()),
            // Drivers also name catalog tables unqualified (`FROM pg_type`).
            (1, Some(table)) if table.starts_with("pg_") => ControlFlow::Continue(()),
            _ => ControlFlow::Break(()),
        }
    });
    if only_catalog.is_break() {
        return protect_scalar_subqueries(&mut statements[0]).then(|| statements[0].to_string());
    }
    // A typed NULL: `NULL || NULL` has no type DataFusion can infer.
    let empty_options = parse_expr("CAST(NULL AS TEXT[])")?;
    let mut changed = false;
    let _ = visit_expressions_mut(&mut statements[0], |expr| {
        if let Some(lookup) = to_regtype_lookup(expr) {
            *expr = lookup;
            changed = true;
            return ControlFlow::<()>::Continue(());
        }
        if let Expr::Like {
            pattern,
            escape_char,
            ..
        } = expr
        {
            if let Some(rewritten) = backslash_escaped(pattern, escape_char.as_ref()) {
                **pattern = rewritten;
                *escape_char = None;
                changed = true;
            }
            return ControlFlow::<()>::Continue(());
        }
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

/// Keeps user queries' scalar subqueries in a select list intact.
///
/// datafusion-postgres's SQL front (`PostgresCompatibilityParser`, which
/// every statement passes through) replaces a *correlated* scalar subquery
/// in a select list with `NULL` and adds `LIMIT 1` to an uncorrelated one —
/// meant for catalog queries DataFusion cannot plan, but applied to every
/// query: `SELECT (SELECT max(t.amount) FROM t WHERE t.c = c.id) FROM c`
/// answered NULLs. Its rule matches only a bare `(subquery)` item; wrapped
/// in parentheses (`((subquery))`, the same expression) it is left alone and
/// DataFusion plans it as written.
fn protect_scalar_subqueries(statement: &mut Statement) -> bool {
    use datafusion::sql::sqlparser::ast::{Query, SelectItem, SetExpr, VisitMut, VisitorMut};
    struct Wrap(bool);
    impl VisitorMut for Wrap {
        type Break = ();
        fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
            if let SetExpr::Select(select) = query.body.as_mut() {
                for item in &mut select.projection {
                    let (SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. }) =
                        item
                    else {
                        continue;
                    };
                    if matches!(expr, Expr::Subquery(_)) {
                        let inner = std::mem::replace(expr, Expr::value(Value::Null));
                        *expr = Expr::Nested(Box::new(inner));
                        self.0 = true;
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut wrap = Wrap(false);
    let _ = statement.visit(&mut wrap);
    wrap.0
}

/// Parses one SQL expression written by this module.
fn parse_expr(sql: &str) -> Option<Expr> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .ok()
}

/// A LIKE pattern with a non-backslash escape character, rewritten to use
/// backslash (the only escape DataFusion's LIKE supports). SQLAlchemy lists
/// schemas with `NOT LIKE 'pg/_' || '%' ESCAPE '/'`.
fn backslash_escaped(pattern: &Expr, escape: Option<&ValueWithSpan>) -> Option<Expr> {
    let Value::SingleQuotedString(escape) = &escape?.value else {
        return None;
    };
    if escape == "\\" || escape.chars().count() != 1 || escape == "'" {
        return None;
    }
    // Double existing backslashes, turn a doubled escape into a U+0001
    // placeholder, then the escape into a backslash, then the placeholder
    // back into the (now unescaped) literal character.
    let sql = format!(
        "replace(replace(replace(replace({pattern}, '\\', '\\\\'), '{escape}{escape}', chr(1)), '{escape}', '\\'), chr(1), '{escape}')"
    );
    parse_expr(&sql)
}

/// `to_regtype(name)` (psycopg's type lookup) as a lookup in `pg_type`.
fn to_regtype_lookup(expr: &Expr) -> Option<Expr> {
    let Expr::Function(f) = expr else {
        return None;
    };
    let name = f.name.to_string().to_ascii_lowercase();
    if name != "to_regtype" && name != "pg_catalog.to_regtype" {
        return None;
    }
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    let [arg] = list.args.as_slice() else {
        return None;
    };
    // The argument is re-printed by sqlparser, so it is valid SQL.
    let sql = format!(
        "(SELECT fedsql_t.oid FROM pg_catalog.pg_type fedsql_t WHERE fedsql_t.typname = {arg} LIMIT 1)"
    );
    parse_expr(&sql)
}

/// The command tag for savepoint statements, which fedsql accepts as no-ops.
///
/// fedsql sessions are read-only over their sources, so a savepoint has
/// nothing to protect; drivers (psycopg, SQLAlchemy) still issue them inside
/// `BEGIN … COMMIT`, which datafusion-postgres already accepts the same way.
pub fn savepoint_tag(sql: &str) -> Option<&'static str> {
    let head = sql.trim_start().get(..9)?.to_ascii_lowercase();
    if !(head.starts_with("savepoint")
        || head.starts_with("release")
        || head.starts_with("rollback"))
    {
        return None;
    }
    match Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .ok()?
        .as_slice()
    {
        [Statement::Savepoint { .. }] => Some("SAVEPOINT"),
        [Statement::ReleaseSavepoint { .. }] => Some("RELEASE"),
        [Statement::Rollback {
            savepoint: Some(_), ..
        }] => Some("ROLLBACK"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn savepoints_are_recognized() {
        assert_eq!(savepoint_tag("SAVEPOINT \"_pg3_1\""), Some("SAVEPOINT"));
        assert_eq!(savepoint_tag("release savepoint a"), Some("RELEASE"));
        assert_eq!(savepoint_tag("ROLLBACK TO SAVEPOINT a"), Some("ROLLBACK"));
        assert_eq!(savepoint_tag("ROLLBACK"), None);
        assert_eq!(savepoint_tag("SELECT 1"), None);
    }

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
    fn to_regtype_becomes_a_pg_type_lookup() {
        let rewritten = rewrite_catalog_query(
            "SELECT typname FROM pg_type t WHERE t.oid = to_regtype('hstore')",
        )
        .unwrap();
        assert!(
            rewritten.contains("WHERE fedsql_t.typname = 'hstore' LIMIT 1"),
            "{rewritten}"
        );
    }

    #[test]
    fn like_escape_becomes_backslash() {
        let rewritten = rewrite_catalog_query(
            "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname NOT LIKE 'pg/_%' ESCAPE '/'",
        )
        .unwrap();
        assert!(!rewritten.contains("ESCAPE"), "{rewritten}");
        assert!(
            rewritten.contains("replace(replace(replace(replace('pg/_%'"),
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
