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

/// The read-only server settings fedsql reports, as Postgres 16 does (the
/// version pgwire announces at startup): `SHOW` and `current_setting` answer
/// them. Drivers branch on `server_version_num` and `max_identifier_length`.
pub const SERVER_SETTINGS: &[(&str, &str)] = &[
    ("server_version", "16.6"),
    ("server_version_num", "160006"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("standard_conforming_strings", "on"),
    ("integer_datetimes", "on"),
    ("max_identifier_length", "63"),
    ("datestyle", "ISO, MDY"),
    ("intervalstyle", "postgres"),
    ("is_superuser", "on"),
    ("default_transaction_read_only", "off"),
    ("transaction_read_only", "off"),
    ("default_transaction_isolation", "read committed"),
    ("transaction_isolation", "read committed"),
    ("in_hot_standby", "off"),
    ("lc_collate", "C"),
    ("lc_ctype", "C"),
    ("block_size", "8192"),
    ("max_index_keys", "32"),
    ("search_path", "public"),
];

/// A server setting by name (any case).
pub fn server_setting(name: &str) -> Option<&'static str> {
    SERVER_SETTINGS
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| *value)
}

/// `current_setting(name [, missing_ok])`: the session's time zone and
/// DataFusion/fedsql options (`datafusion.execution.batch_size`), then the
/// server settings; an unknown name is 42704 unless `missing_ok`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CurrentSetting {
    signature: Signature,
}

impl ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let scalar = |i: usize| match args.args.get(i) {
            Some(ColumnarValue::Scalar(v)) => Ok(Some(v.clone())),
            Some(ColumnarValue::Array(_)) => Err(datafusion::error::DataFusionError::Plan(
                "current_setting() takes a constant setting name".into(),
            )),
            None => Ok(None),
        };
        let name = match scalar(0)? {
            Some(ScalarValue::Utf8(Some(n)) | ScalarValue::Utf8View(Some(n))) => n,
            Some(ScalarValue::LargeUtf8(Some(n))) => n,
            Some(v) if v.is_null() => return Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None))),
            _ => {
                return Err(datafusion::error::DataFusionError::Plan(
                    "current_setting(name text [, missing_ok boolean])".into(),
                ))
            }
        };
        let missing_ok = matches!(scalar(1)?, Some(ScalarValue::Boolean(Some(true))));
        let lower = name.to_ascii_lowercase();
        let value = if lower == "timezone" {
            Some(
                args.config_options
                    .execution
                    .time_zone
                    .clone()
                    .unwrap_or_else(|| "UTC".into()),
            )
        } else if let Some(entry) = args
            .config_options
            .entries()
            .into_iter()
            .find(|e| e.key.eq_ignore_ascii_case(&name))
        {
            Some(entry.value.unwrap_or_default())
        } else {
            server_setting(&name).map(str::to_string)
        };
        match value {
            Some(v) => Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(v)))),
            None if missing_ok => Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None))),
            // SQLSTATE 42704, like Postgres (see `ServerError::from_datafusion`).
            None => Err(datafusion::error::DataFusionError::Plan(format!(
                "unrecognized configuration parameter \"{name}\""
            ))),
        }
    }
}

/// `json_build_object(key, value, …)`: a JSON object as text (SQLAlchemy's
/// reflection builds identity and collation details with it).
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: Signature,
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        use datafusion::arrow::array::{Array, StringBuilder};
        if !args.args.len().is_multiple_of(2) {
            return Err(datafusion::error::DataFusionError::Plan(
                "argument list must have even number of elements".into(),
            ));
        }
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let mut out = StringBuilder::new();
        for row in 0..args.number_rows {
            let mut object = serde_json::Map::new();
            for pair in arrays.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?;
                if key.is_null() {
                    return Err(datafusion::error::DataFusionError::Plan(
                        "null value not allowed for object key".into(),
                    ));
                }
                let value = if pair[1].is_null(row) {
                    serde_json::Value::Null
                } else {
                    match ScalarValue::try_from_array(&pair[1], row)? {
                        ScalarValue::Boolean(Some(b)) => serde_json::Value::Bool(b),
                        v if v.data_type().is_numeric() => {
                            serde_json::from_str(&v.to_string()).unwrap_or(serde_json::Value::Null)
                        }
                        v => serde_json::Value::String(v.to_string()),
                    }
                };
                object.insert(key.to_string(), value);
            }
            out.append_value(serde_json::Value::Object(object).to_string());
        }
        Ok(ColumnarValue::Array(std::sync::Arc::new(out.finish())))
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
        ("pg_collation_is_visible", ScalarValue::Boolean(Some(true))),
        // No temporary schemas (dbt docs generate).
        ("pg_is_other_temp_schema", ScalarValue::Boolean(Some(false))),
        // fedsql tables have no serial columns (SQLAlchemy's reflection).
        ("pg_get_serial_sequence", ScalarValue::Utf8(None)),
        // No temporary schema (ADBC's `get_objects`).
        ("pg_my_temp_schema", ScalarValue::Int32(Some(0))),
    ] {
        // pg_catalog's own version wins where it exists.
        if ctx.udf(name).is_ok() {
            continue;
        }
        let signature = if name == "pg_my_temp_schema" {
            Signature::nullary(Volatility::Stable)
        } else {
            Signature::variadic_any(Volatility::Stable)
        };
        ctx.register_udf(ScalarUDF::from(ConstantFunction {
            name,
            value,
            signature,
        }));
    }
    if ctx.udf("json_build_object").is_err() {
        ctx.register_udf(ScalarUDF::from(JsonBuildObject {
            signature: Signature::variadic_any(Volatility::Immutable),
        }));
    }
    ctx.register_udf(ScalarUDF::from(CurrentSetting {
        signature: Signature::variadic_any(Volatility::Stable),
    }));
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
        "PostgreSQL {} (fedsql {}, Apache DataFusion {}) on {}",
        SERVER_SETTINGS[0].1,
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
/// `to_regtype(name)` becomes a lookup in `pg_type`; see the helpers below
/// for what drivers' catalog queries need (ADBC's, SQLAlchemy's).
/// A user query (one reading any non-catalog table) only gets Postgres's
/// result column names ([`postgres_column_names`]) and its select-list
/// scalar subqueries protected ([`protect_scalar_subqueries`]).
pub fn rewrite_catalog_query(sql: &str) -> Option<String> {
    let lower = sql.to_ascii_lowercase();
    // Cheap gate: only a query whose select list may hold more than plain
    // columns is worth parsing twice.
    if !lower.contains('(') && !lower.contains("::") && !lower.contains("pg_") {
        return None;
    }
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    if statements.len() != 1 || !matches!(statements[0], Statement::Query(_)) {
        return None;
    }
    if !lower.contains("pg_") {
        let named = postgres_column_names(&mut statements[0]);
        let protected = protect_scalar_subqueries(&mut statements[0]);
        return (named || protected).then(|| statements[0].to_string());
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
        let named = postgres_column_names(&mut statements[0]);
        let protected = protect_scalar_subqueries(&mut statements[0]);
        return (named || protected).then(|| statements[0].to_string());
    }
    // A typed NULL: `NULL || NULL` has no type DataFusion can infer.
    let empty_options = parse_expr("CAST(NULL AS TEXT[])")?;
    // Catalog queries keep their names and, unless rewritten below, their
    // text: datafusion-pg-catalog recognises some of psql's by their text.
    let mut changed = tables_and_views_from_pg_class(&mut statements[0]);
    let _ = visit_expressions_mut(&mut statements[0], |expr| {
        if let Some(lookup) = to_regtype_lookup(expr) {
            *expr = lookup;
            changed = true;
            return ControlFlow::<()>::Continue(());
        }
        if let Some(rewritten) = catalog_scalar_subquery(expr) {
            *expr = rewritten;
            changed = true;
            return ControlFlow::<()>::Continue(());
        }
        if let Some(rewritten) = int2vector_as_array(expr) {
            *expr = rewritten;
            changed = true;
            return ControlFlow::<()>::Continue(());
        }
        if regproc_compared_to_zero(expr) {
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

/// A text-format array parameter with its simple elements unquoted:
/// `{"r","v"}` is `{r,v}` (the same array in Postgres's input syntax),
/// which arrow-pg's array parsing reads correctly (it keeps quotes as part
/// of the values; ADBC PostgreSQL quotes every element). `None` unless
/// `text` is such an array with at least one quoted, simple element.
pub fn unquote_array_parameter(text: &str) -> Option<String> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    if inner.is_empty() {
        return None;
    }
    let simple = |e: &str| {
        !e.is_empty()
            && e.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'+'))
            && !e.eq_ignore_ascii_case("null")
    };
    let mut quoted_any = false;
    let mut elements = Vec::new();
    // Postgres ignores white space around elements (ADBC sends `{"p", "r"}`).
    for element in inner.split(',').map(str::trim) {
        match element.strip_prefix('"').and_then(|e| e.strip_suffix('"')) {
            Some(unquoted) if simple(unquoted) => {
                quoted_any = true;
                elements.push(unquoted);
            }
            None if simple(element) => elements.push(element),
            _ => return None,
        }
    }
    quoted_any.then(|| format!("{{{}}}", elements.join(",")))
}

/// `pg_tables` and `pg_views` as Postgres defines them, over `pg_class`:
/// datafusion-pg-catalog lists views in `pg_tables` and leaves `pg_views`
/// empty, so dbt took its views for tables (and dropped them with `DROP
/// TABLE`). Returns whether any reference was replaced.
fn tables_and_views_from_pg_class(statement: &mut Statement) -> bool {
    use datafusion::sql::sqlparser::ast::{
        Ident, TableAlias, TableAliasColumnDef, TableFactor, VisitMut, VisitorMut,
    };
    struct Replace {
        changed: bool,
    }
    impl VisitorMut for Replace {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
            let TableFactor::Table { name, alias, .. } = factor else {
                return ControlFlow::Continue(());
            };
            let parts: Vec<String> = name
                .0
                .iter()
                .map(|p| p.to_string().to_ascii_lowercase())
                .collect();
            let table = match parts.as_slice() {
                [t] | [_, t] if t == "pg_tables" || t == "pg_views" => t.clone(),
                [schema, t] if schema == "pg_catalog" => t.clone(),
                _ => return ControlFlow::Continue(()),
            };
            let (sql, alias_name) = match table.as_str() {
                "pg_tables" => (
                    "SELECT n.nspname AS schemaname, c.relname AS tablename, \
                     CAST(NULL AS TEXT) AS tableowner, CAST(NULL AS TEXT) AS tablespace, \
                     false AS hasindexes, false AS hasrules, false AS hastriggers, \
                     false AS rowsecurity \
                     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n \
                     ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p')",
                    "pg_tables",
                ),
                "pg_views" => (
                    "SELECT n.nspname AS schemaname, c.relname AS viewname, \
                     CAST(NULL AS TEXT) AS viewowner, CAST(NULL AS TEXT) AS definition \
                     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n \
                     ON n.oid = c.relnamespace WHERE c.relkind = 'v'",
                    "pg_views",
                ),
                _ => return ControlFlow::Continue(()),
            };
            let Ok(Some(Statement::Query(subquery))) =
                Parser::parse_sql(&PostgreSqlDialect {}, sql).map(|mut s| s.pop())
            else {
                return ControlFlow::Continue(());
            };
            let alias = alias.clone().unwrap_or(TableAlias {
                explicit: true,
                name: Ident::new(alias_name),
                columns: Vec::<TableAliasColumnDef>::new(),
                at: None,
            });
            *factor = TableFactor::Derived {
                lateral: false,
                subquery,
                alias: Some(alias),
                sample: None,
            };
            self.changed = true;
            ControlFlow::Continue(())
        }
    }
    let mut replace = Replace { changed: false };
    let _ = statement.visit(&mut replace);
    replace.changed
}

/// A scalar subquery in a catalog query, made plannable: DataFusion plans a
/// correlated scalar subquery only when it aggregates, and SQLAlchemy's
/// column reflection looks up defaults, identity sequences and collations
/// with plain ones (inside `CASE`). One over `pg_attrdef` or
/// `pg_sequence`, which are always empty in fedsql (no column defaults, no
/// sequences), is NULL; any other single-column one takes `first_value` of
/// its at most one row (Postgres would fail on more).
fn catalog_scalar_subquery(expr: &Expr) -> Option<Expr> {
    use datafusion::sql::sqlparser::ast::{SelectItem, SetExpr};
    let Expr::Subquery(query) = expr else {
        return None;
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    if reads_only(select, &["pg_attrdef", "pg_sequence"]) {
        return Some(empty_subquery(expr));
    }
    let ([item], true) = (
        select.projection.as_slice(),
        matches!(&select.group_by, datafusion::sql::sqlparser::ast::GroupByExpr::Expressions(e, _) if e.is_empty()),
    ) else {
        return None;
    };
    let (inner, alias) = match item {
        SelectItem::UnnamedExpr(e) => (e, None),
        SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias)),
        _ => return None,
    };
    let aggregated = matches!(inner, Expr::Function(f) if matches!(
        f.name.to_string().to_ascii_lowercase().as_str(),
        "count" | "max" | "min" | "sum" | "avg" | "array_agg" | "string_agg" | "bool_and"
            | "bool_or" | "first_value" | "every"
    ));
    if aggregated || query.limit_clause.is_some() {
        return None;
    }
    let wrapped = parse_expr(&format!("first_value({inner})"))?;
    let mut query = query.clone();
    let mut outer_conditions = Vec::new();
    if let SetExpr::Select(select) = query.body.as_mut() {
        select.projection = vec![match alias {
            Some(alias) => SelectItem::ExprWithAlias {
                expr: wrapped,
                alias: alias.clone(),
            },
            None => SelectItem::UnnamedExpr(wrapped),
        }];
        // A condition on the outer row alone (`WHERE outer.flag AND …`),
        // which DataFusion cannot decorrelate, moves out:
        // `(SELECT … WHERE c AND rest)` is `CASE WHEN c THEN (SELECT … WHERE
        // rest) END`.
        let local = local_names(select);
        if let Some(selection) = select.selection.take() {
            let mut kept = Vec::new();
            for conjunct in conjuncts(selection) {
                if reads_only_outer(&conjunct, &local) {
                    outer_conditions.push(conjunct)
                } else {
                    kept.push(conjunct)
                }
            }
            select.selection = kept.into_iter().reduce(|a, b| Expr::BinaryOp {
                left: Box::new(a),
                op: datafusion::sql::sqlparser::ast::BinaryOperator::And,
                right: Box::new(b),
            });
        }
    }
    let subquery = Expr::Subquery(query);
    if outer_conditions.is_empty() {
        return Some(subquery);
    }
    let conditions: Vec<String> = outer_conditions.iter().map(ToString::to_string).collect();
    parse_expr(&format!(
        "CASE WHEN {} THEN {subquery} ELSE NULL END",
        conditions.join(" AND ")
    ))
}

/// Whether every FROM item of `select` is one of `tables`.
fn reads_only(select: &datafusion::sql::sqlparser::ast::Select, tables: &[&str]) -> bool {
    use datafusion::sql::sqlparser::ast::TableFactor;
    !select.from.is_empty()
        && select.from.iter().all(|from| {
            std::iter::once(&from.relation)
                .chain(from.joins.iter().map(|j| &j.relation))
                .all(|factor| match factor {
                    TableFactor::Table { name, .. } => name.0.last().is_some_and(|p| {
                        let table = p.to_string().trim_matches('"').to_ascii_lowercase();
                        tables.contains(&table.as_str())
                    }),
                    _ => false,
                })
        })
}

/// A NULL standing for a subquery known to return no row. Its parameters
/// stay in the statement (in a branch never taken), so a client's `$n`
/// keep their numbers and types.
fn empty_subquery(subquery: &Expr) -> Expr {
    use datafusion::sql::sqlparser::ast::visit_expressions;
    let mut parameters = Vec::new();
    let _ = visit_expressions(subquery, |e| {
        match e {
            Expr::Cast { expr, .. } if matches!(expr.as_ref(), Expr::Value(v) if matches!(v.value, Value::Placeholder(_))) => {
                parameters.push(e.to_string())
            }
            Expr::Value(v) if matches!(v.value, Value::Placeholder(_)) => {
                let text = e.to_string();
                if !parameters
                    .iter()
                    .any(|p| p.starts_with(&format!("CAST({text} ")))
                {
                    parameters.push(text)
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    let null = "CAST(NULL AS TEXT)";
    if parameters.is_empty() {
        return parse_expr(null).unwrap_or(Expr::Value(Value::Null.into()));
    }
    let kept: Vec<String> = parameters.iter().map(|p| format!("{p} IS NULL")).collect();
    parse_expr(&format!(
        "CASE WHEN FALSE AND ({}) THEN {null} ELSE {null} END",
        kept.join(" OR ")
    ))
    .unwrap_or(Expr::Value(Value::Null.into()))
}

/// Whether `expr` names columns, all qualified by tables not in `local`
/// (so of an outer query), and holds no subquery.
fn reads_only_outer(expr: &Expr, local: &[String]) -> bool {
    use datafusion::sql::sqlparser::ast::visit_expressions;
    let mut columns = 0;
    let only_outer = visit_expressions(expr, |e| match e {
        Expr::CompoundIdentifier(parts)
            if parts.len() >= 2
                && !local.contains(&parts[parts.len() - 2].value.to_ascii_lowercase()) =>
        {
            columns += 1;
            ControlFlow::Continue(())
        }
        Expr::Identifier(_)
        | Expr::CompoundIdentifier(_)
        | Expr::Subquery(_)
        | Expr::Exists { .. }
        | Expr::InSubquery { .. } => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    only_outer.is_continue() && columns > 0
}

/// The names a select's FROM items go by (tables and aliases), lower-cased.
fn local_names(select: &datafusion::sql::sqlparser::ast::Select) -> Vec<String> {
    use datafusion::sql::sqlparser::ast::TableFactor;
    let mut names = Vec::new();
    for from in &select.from {
        for factor in std::iter::once(&from.relation).chain(from.joins.iter().map(|j| &j.relation))
        {
            if let TableFactor::Table { name, alias, .. } = factor {
                if let Some(last) = name.0.last() {
                    names.push(last.to_string().trim_matches('"').to_ascii_lowercase());
                }
                if let Some(alias) = alias {
                    names.push(alias.name.value.to_ascii_lowercase());
                }
            }
        }
    }
    names
}

/// `a AND b AND c` as `[a, b, c]`.
fn conjuncts(expr: Expr) -> Vec<Expr> {
    match expr {
        Expr::BinaryOp {
            left,
            op: datafusion::sql::sqlparser::ast::BinaryOperator::And,
            right,
        } => {
            let mut all = conjuncts(*left);
            all.extend(conjuncts(*right));
            all
        }
        Expr::Nested(inner)
            if matches!(
                *inner,
                Expr::BinaryOp {
                    op: datafusion::sql::sqlparser::ast::BinaryOperator::And,
                    ..
                }
            ) =>
        {
            conjuncts(*inner)
        }
        other => vec![other],
    }
}

/// `unnest(pg_index.indkey)` and `generate_subscripts(pg_index.indkey, 1)`
/// (SQLAlchemy's primary-key and index reflection): `int2vector` columns
/// are space-separated text in fedsql's `pg_index`, as Postgres prints
/// them, so they are split into an array first.
fn int2vector_as_array(expr: &Expr) -> Option<Expr> {
    let Expr::Function(f) = expr else {
        return None;
    };
    let name = f.name.to_string().to_ascii_lowercase();
    let name = name.trim_start_matches("pg_catalog.");
    if name != "unnest" && name != "generate_subscripts" {
        return None;
    }
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    let column = match list.args.first()? {
        datafusion::sql::sqlparser::ast::FunctionArg::Unnamed(
            datafusion::sql::sqlparser::ast::FunctionArgExpr::Expr(e),
        ) => e,
        _ => return None,
    };
    let vector_column = |name: &str| {
        ["indkey", "indclass", "indoption", "indcollation"]
            .iter()
            .any(|c| name.eq_ignore_ascii_case(c))
    };
    let is_int2vector = match column {
        Expr::Identifier(i) => vector_column(&i.value),
        Expr::CompoundIdentifier(parts) => parts.last().is_some_and(|p| vector_column(&p.value)),
        _ => false,
    };
    if !is_int2vector {
        return None;
    }
    let array = format!("CAST(string_to_array({column}, ' ') AS BIGINT[])");
    if name == "unnest" {
        return parse_expr(&format!("unnest({array})"));
    }
    // The dimension argument (1 for a vector) is kept: it may be a
    // client's parameter, whose number must not change.
    let dimension = match list.args.get(1)? {
        datafusion::sql::sqlparser::ast::FunctionArg::Unnamed(
            datafusion::sql::sqlparser::ast::FunctionArgExpr::Expr(e),
        ) => e,
        _ => return None,
    };
    parse_expr(&format!(
        "unnest(range(CAST({dimension} AS BIGINT), CAST(cardinality({array}) AS BIGINT) + CAST({dimension} AS BIGINT)))"
    ))
}

/// `pg_type.typreceive != 0` (ADBC's PostgreSQL driver asks so at connect):
/// `regproc` columns are text in fedsql's `pg_type`, naming the function or
/// `-` for none, as Postgres prints them; comparing them with the oid 0
/// becomes comparing with `-`. Returns whether `expr` was rewritten.
fn regproc_compared_to_zero(expr: &mut Expr) -> bool {
    const REGPROC_COLUMNS: [&str; 7] = [
        "typinput",
        "typoutput",
        "typreceive",
        "typsend",
        "typmodin",
        "typmodout",
        "typanalyze",
    ];
    let Expr::BinaryOp { left, right, .. } = expr else {
        return false;
    };
    let is_regproc = |e: &Expr| {
        let name = match e {
            Expr::Identifier(i) => Some(&i.value),
            Expr::CompoundIdentifier(parts) => parts.last().map(|p| &p.value),
            _ => None,
        };
        name.is_some_and(|n| REGPROC_COLUMNS.iter().any(|c| n.eq_ignore_ascii_case(c)))
    };
    let is_zero = |e: &Expr| matches!(e, Expr::Value(ValueWithSpan { value: Value::Number(n, _), .. }) if n == "0");
    let zero = if is_regproc(left) && is_zero(right) {
        right
    } else if is_regproc(right) && is_zero(left) {
        left
    } else {
        return false;
    };
    **zero = Expr::Value(Value::SingleQuotedString("-".into()).into());
    true
}

/// Names the result columns of a query as Postgres does where DataFusion
/// would name them after the expression: `count(*)` is `count`,
/// `avg(t.amount)` is `avg`, `x::int` is `x`, `CASE …` is `case`, other
/// expressions `?column?` (Postgres's `FigureColname`). Clients and tools
/// key rows by these names. A name that would repeat another output name
/// is left as DataFusion's (DataFusion refuses duplicate names, Postgres
/// allows them). Returns whether any item got an alias.
fn postgres_column_names(statement: &mut Statement) -> bool {
    use datafusion::sql::sqlparser::ast::{Ident, SelectItem, SetExpr};
    let Statement::Query(query) = statement else {
        return false;
    };
    let mut body = query.body.as_mut();
    while let SetExpr::SetOperation { left, .. } = body {
        body = left.as_mut();
    }
    let SetExpr::Select(select) = body else {
        return false;
    };
    let mut names: Vec<Option<String>> = Vec::with_capacity(select.projection.len());
    let mut proposed: Vec<Option<String>> = Vec::with_capacity(select.projection.len());
    for item in &select.projection {
        match item {
            SelectItem::UnnamedExpr(e) => match e {
                Expr::Identifier(i) => names.push(Some(i.value.clone())),
                Expr::CompoundIdentifier(parts) => {
                    names.push(parts.last().map(|p| p.value.clone()))
                }
                e => {
                    let name = figure_column_name(e).unwrap_or_else(|| "?column?".into());
                    names.push(Some(name.clone()));
                    proposed.push(Some(name));
                    continue;
                }
            },
            SelectItem::ExprWithAlias { alias, .. } => names.push(Some(alias.value.clone())),
            // A wildcard's names are not known here; keep clear of them.
            _ => return false,
        }
        proposed.push(None);
    }
    let mut changed = false;
    for (i, name) in proposed.iter().enumerate() {
        let Some(name) = name else { continue };
        let unique = names
            .iter()
            .enumerate()
            .all(|(j, other)| j == i || other.as_deref() != Some(name.as_str()));
        if !unique {
            continue;
        }
        if let SelectItem::UnnamedExpr(e) = &select.projection[i] {
            select.projection[i] = SelectItem::ExprWithAlias {
                expr: e.clone(),
                alias: Ident::with_quote('"', name.clone()),
            };
            changed = true;
        }
    }
    changed
}

/// Postgres's name for an unaliased select item, if it has one of its own.
fn figure_column_name(expr: &Expr) -> Option<String> {
    use datafusion::sql::sqlparser::ast::{DataType as SqlType, SelectItem, SetExpr};
    let unquoted = |i: &datafusion::sql::sqlparser::ast::Ident| match i.quote_style {
        Some(_) => i.value.clone(),
        None => i.value.to_ascii_lowercase(),
    };
    match expr {
        Expr::Identifier(i) => Some(unquoted(i)),
        Expr::CompoundIdentifier(parts) => parts.last().map(unquoted),
        Expr::Function(f) => f.name.0.last().and_then(|p| p.as_ident()).map(unquoted),
        Expr::Nested(e) => figure_column_name(e),
        Expr::Cast {
            expr, data_type, ..
        } => figure_column_name(expr).or_else(|| {
            Some(match data_type {
                SqlType::Int(_) | SqlType::Integer(_) | SqlType::Int4(_) => "int4".into(),
                SqlType::BigInt(_) | SqlType::Int8(_) => "int8".into(),
                SqlType::SmallInt(_) | SqlType::Int2(_) => "int2".into(),
                SqlType::Double(_) | SqlType::DoublePrecision | SqlType::Float8 => "float8".into(),
                SqlType::Real | SqlType::Float4 => "float4".into(),
                SqlType::Boolean | SqlType::Bool => "bool".into(),
                SqlType::Varchar(_) | SqlType::CharacterVarying(_) => "varchar".into(),
                SqlType::Numeric(_) | SqlType::Decimal(_) => "numeric".into(),
                other => other.to_string().to_ascii_lowercase(),
            })
        }),
        Expr::Case { .. } => Some("case".into()),
        Expr::Exists { .. } => Some("exists".into()),
        Expr::Array(_) => Some("array".into()),
        Expr::Extract { .. } => Some("extract".into()),
        Expr::Substring { .. } => Some("substring".into()),
        Expr::Position { .. } => Some("position".into()),
        Expr::Ceil { .. } => Some("ceil".into()),
        Expr::Floor { .. } => Some("floor".into()),
        Expr::Trim { .. } => Some("btrim".into()),
        Expr::Subquery(q) => match q.body.as_ref() {
            SetExpr::Select(s) => match s.projection.first() {
                Some(SelectItem::ExprWithAlias { alias, .. }) => Some(alias.value.clone()),
                Some(SelectItem::UnnamedExpr(e)) => figure_column_name(e),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
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
    fn quoted_array_parameters_are_unquoted_when_simple() {
        assert_eq!(
            unquote_array_parameter(r#"{"r","v","m"}"#).as_deref(),
            Some("{r,v,m}")
        );
        assert_eq!(
            unquote_array_parameter(r#"{"p", "f", "r"}"#).as_deref(),
            Some("{p,f,r}")
        );
        assert_eq!(unquote_array_parameter("{r,v}"), None);
        assert_eq!(unquote_array_parameter(r#"{"a,b","c"}"#), None);
        assert_eq!(unquote_array_parameter(r#"{"a":1}"#), None);
        assert_eq!(unquote_array_parameter(r#"{"NULL"}"#), None);
        assert_eq!(unquote_array_parameter("plain"), None);
    }

    #[test]
    fn regproc_zero_is_a_dash() {
        let rewritten = rewrite_catalog_query(
            "SELECT oid FROM pg_catalog.pg_type WHERE (typreceive != 0 OR 0 <> typsend)",
        )
        .unwrap();
        assert!(
            rewritten.contains("typreceive <> '-' OR '-' <> typsend"),
            "{rewritten}"
        );
    }

    #[test]
    fn int2vectors_become_arrays_keeping_parameters() {
        let rewritten = rewrite_catalog_query(
            "SELECT unnest(i.indkey), generate_subscripts(i.indkey, $1::INTEGER) FROM pg_catalog.pg_index i",
        )
        .unwrap();
        assert!(
            rewritten.contains("unnest(CAST(string_to_array(i.indkey, ' ') AS BIGINT[]))"),
            "{rewritten}"
        );
        assert!(
            rewritten.contains("CAST($1::INTEGER AS BIGINT)"),
            "{rewritten}"
        );
    }

    #[test]
    fn catalog_scalar_subqueries_aggregate_or_vanish_keeping_parameters() {
        let rewritten = rewrite_catalog_query(
            "SELECT CASE WHEN a.atthasdef THEN (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attrdef d \
             WHERE d.adrelid = a.attrelid AND d.adnum = $1) END, \
             (SELECT t.typname FROM pg_catalog.pg_type t WHERE a.attnotnull AND t.oid = a.atttypid) \
             FROM pg_catalog.pg_attribute a",
        )
        .unwrap();
        // pg_attrdef is always empty: NULL, with $1 still in the statement.
        assert!(!rewritten.contains("pg_attrdef"), "{rewritten}");
        assert!(rewritten.contains("$1 IS NULL"), "{rewritten}");
        // The outer-only condition moves out; the lookup aggregates.
        assert!(
            rewritten.contains("CASE WHEN a.attnotnull THEN (SELECT first_value(t.typname) FROM pg_catalog.pg_type t WHERE t.oid = a.atttypid)"),
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
    fn user_queries_keep_their_expressions() {
        // Only named (Postgres calls the column `array`), never emptied.
        assert_eq!(
            rewrite_catalog_query("SELECT array(SELECT 1) FROM demo.bank.customers").as_deref(),
            Some("SELECT array(SELECT 1) AS \"array\" FROM demo.bank.customers")
        );
        assert_eq!(rewrite_catalog_query("SELECT 1"), None);
        assert_eq!(rewrite_catalog_query("SELECT a, t.b FROM t"), None);
    }

    #[test]
    fn result_columns_get_postgres_names() {
        let rewritten = rewrite_catalog_query(
            "SELECT count(*), avg(t.x), t.x::int8, 'a'::text, 1 + 1, CASE WHEN t.x > 0 THEN 1 END, \
             sum(t.x) AS total FROM t",
        )
        .unwrap();
        assert_eq!(
            rewritten,
            "SELECT count(*) AS \"count\", avg(t.x) AS \"avg\", t.x::INT8 AS \"x\", \
             'a'::TEXT AS \"text\", 1 + 1 AS \"?column?\", \
             CASE WHEN t.x > 0 THEN 1 END AS \"case\", sum(t.x) AS total FROM t"
        );
        // Two items Postgres would both call `count`: DataFusion's names stay.
        assert_eq!(
            rewrite_catalog_query("SELECT count(*), count(x) FROM t"),
            None
        );
    }
}
