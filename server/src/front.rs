//! The SQL front every entry point shares: `fedsql query`, the Flight SQL
//! endpoint and start-up replay plan and run statements here, and the
//! Postgres wire uses the same pieces around datafusion-postgres.
//!
//! A statement goes through three steps, each callable alone so prepared
//! statements can stop after the first:
//! 1. [`Engine::plan_sql`]: Postgres-compatibility rewrite, parse, plan
//!    (nothing runs yet; placeholders stay open);
//! 2. [`Engine::execute_plan`]: DDL runs here and answers with its command
//!    tag (views are persisted); a query becomes a [`DataFrame`] to stream;
//! 3. the caller streams or collects the frame.
//!
//! fedsql's own statements skip step 1: [`Engine::run_statement`] hands them
//! to [`Engine::execute_fedsql`], and the read-only ones come back as SQL
//! over the system tables that then takes the same path.

use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;

use crate::engine::{ddl_tag, Engine, FedsqlOutcome};
use crate::error::{Result, ServerError};
use crate::pg_compat::{rewrite_catalog_query, savepoint_tag};

/// What a statement became once it ran far enough to answer.
#[derive(Debug)]
pub enum Planned {
    /// Rows to stream; nothing has been read yet.
    Rows(DataFrame),
    /// The statement already took effect; the text is its command tag
    /// (`CREATE VIEW`, `CREATE SOURCE`, `SET`).
    Command(String),
}

impl Engine {
    /// Splits `sql` into statements, the one way every wire does: refuses
    /// text over `max_statement_bytes` (54000) before anything reads it,
    /// then [`fedsql_sql::parse`] (with its depth limit, 54001).
    pub fn parse(&self, sql: &str) -> Result<Vec<fedsql_sql::Statement>> {
        if let Some(bytes) = crate::pg_stream::invalid_utf8(sql) {
            return Err(ServerError::Query {
                sqlstate: "22021".into(),
                message: format!("invalid byte sequence for encoding \"UTF8\": {bytes}"),
                position: None,
            });
        }
        let limit = self.settings().max_statement_bytes;
        if sql.len() > limit {
            return Err(ServerError::Query {
                sqlstate: "54000".into(),
                message: format!(
                    "statement too large: {} bytes, at most {limit} (max_statement_bytes)",
                    sql.len()
                ),
                position: None,
            });
        }
        Ok(fedsql_sql::parse(sql)?)
    }

    /// Plans one standard SQL statement without running it.
    ///
    /// Errors carry positions relative to `sql`.
    pub async fn plan_sql(&self, ctx: &SessionContext, sql: &str) -> Result<LogicalPlan> {
        crate::error::catch_panic(self.plan_sql_unguarded(ctx, sql)).await
    }

    async fn plan_sql_unguarded(&self, ctx: &SessionContext, sql: &str) -> Result<LogicalPlan> {
        if is_create_external_table(sql) {
            // DataFusion's own parser takes any `STORED AS` name (`KAFKA`);
            // the Postgres-dialect parser knows only Hive's file formats.
            let statement = ctx
                .state()
                .sql_to_statement(sql, &datafusion::config::Dialect::PostgreSQL)
                .map_err(|e| ServerError::from_datafusion(&e, sql))?;
            return ctx
                .state()
                .statement_to_plan(statement)
                .await
                .map_err(|e| ServerError::from_datafusion(&e, sql));
        }
        let rewritten = rewrite_catalog_query(sql);
        let statements = PostgresCompatibilityParser::new()
            .parse(rewritten.as_deref().unwrap_or(sql))
            .map_err(|e| crate::error::syntax_error(&e.to_string(), sql))?;
        let mut statements = statements.into_iter();
        let (Some(statement), None) = (statements.next(), statements.next()) else {
            return Err(ServerError::Syntax {
                message: "expected exactly one statement".into(),
                position: None,
            });
        };
        ctx.state()
            .statement_to_plan(DfStatement::Statement(Box::new(statement)))
            .await
            .map_err(|e| ServerError::from_datafusion(&e, sql))
    }

    /// Runs a planned statement as far as answering needs: DDL and `SET`
    /// take effect now (and views are persisted), queries come back as a
    /// frame to stream.
    pub async fn execute_plan(
        &self,
        ctx: &SessionContext,
        database: &str,
        sql: &str,
        plan: LogicalPlan,
    ) -> Result<Planned> {
        self.before_statement(database, sql)?;
        let frame = ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| ServerError::from_datafusion(&e, sql))?;
        match ddl_tag(sql) {
            Some(tag) => {
                self.after_statement(database, sql).await?;
                Ok(Planned::Command(tag.to_string()))
            }
            None => Ok(Planned::Rows(frame)),
        }
    }

    /// Runs one statement of either kind in `ctx` (whose default catalog is
    /// `database`).
    ///
    /// Errors carry positions relative to the statement's own text. A panic
    /// while planning or running it ends it with [`ServerError::Internal`].
    pub async fn run_statement(
        &self,
        ctx: &SessionContext,
        database: &str,
        statement: &fedsql_sql::Statement,
    ) -> Result<Planned> {
        crate::error::catch_panic(self.run_statement_unguarded(ctx, database, statement)).await
    }

    async fn run_statement_unguarded(
        &self,
        ctx: &SessionContext,
        database: &str,
        statement: &fedsql_sql::Statement,
    ) -> Result<Planned> {
        match statement {
            fedsql_sql::Statement::Fedsql { statement, .. } => {
                match self.execute_fedsql(ctx, statement).await? {
                    FedsqlOutcome::Command(tag) => Ok(Planned::Command(tag)),
                    FedsqlOutcome::Query(sql) => {
                        let plan = self.plan_sql(ctx, &sql).await?;
                        self.execute_plan(ctx, database, &sql, plan).await
                    }
                }
            }
            fedsql_sql::Statement::Connection { statement, .. } => Err(ServerError::NotSupported {
                statement: statement.kind().to_string(),
                reason: "cursors and COPY … TO STDOUT are Postgres-wire statements; \
                             here, run the query itself (its rows stream in batches)"
                    .into(),
            }),
            fedsql_sql::Statement::Sql { text, .. } => {
                // Transactions are not supported; savepoints are accepted as
                // no-ops so drivers that wrap every statement keep working.
                if let Some(tag) = savepoint_tag(text) {
                    return Ok(Planned::Command(tag.to_string()));
                }
                let plan = self.plan_sql(ctx, text).await?;
                self.execute_plan(ctx, database, text, plan).await
            }
        }
    }
}

/// Whether `sql` is `CREATE [OR REPLACE] [UNBOUNDED] EXTERNAL TABLE …`.
pub(crate) fn is_create_external_table(sql: &str) -> bool {
    let words: Vec<String> = sql
        .split_whitespace()
        .take(6)
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    matches!(
        words.as_slice(),
        ["create", "external", "table", ..]
            | ["create", "unbounded", "external", "table", ..]
            | ["create", "or", "replace", "external", "table", ..]
            | ["create", "or", "replace", "unbounded", "external", ..]
    )
}
