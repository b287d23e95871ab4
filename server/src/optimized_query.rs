//! Simple-protocol queries described by their optimized plan.
//!
//! datafusion-postgres answers a simple-protocol query from
//! `SessionContext::sql`, whose frame reports the plan's schema *before*
//! DataFusion's analyzer has coerced types; the rows come from the analyzed
//! plan. Where the two differ the wire encoder fails on every row: a
//! `UNION` of a float and a decimal column is described as `float8` but
//! computes decimals ("cannot convert between the Rust type Decimal and the
//! Postgres type float8", found by the fuzzer). The extended protocol
//! already describes the optimized plan; [`OptimizedQueryHook`] makes the
//! simple protocol do the same for queries.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire::api::portal::Format;
use datafusion_postgres::pgwire::api::results::Response;
use datafusion_postgres::pgwire::api::ClientInfo;
use datafusion_postgres::pgwire::error::{PgWireError, PgWireResult};
use datafusion_postgres::pgwire::types::format::FormatOptions;
use datafusion_postgres::{DfSessionService, QueryHook};

/// datafusion-postgres's own hooks, then [`OptimizedQueryHook`].
pub fn session_service(ctx: SessionContext) -> DfSessionService {
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        Arc::new(CursorStatementHook),
        Arc::new(SetShowHook),
        Arc::new(TransactionStatementHook),
        Arc::new(OptimizedQueryHook),
    ];
    DfSessionService::new_with_hooks(Arc::new(ctx), hooks)
}

/// Plans, optimizes and runs a simple-protocol `SELECT`, describing the
/// optimized plan's schema; every other statement goes on as before.
pub struct OptimizedQueryHook;

#[async_trait]
impl QueryHook for OptimizedQueryHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let Statement::Query(_) = statement else {
            return None;
        };
        let api = |e: datafusion::error::DataFusionError| PgWireError::ApiError(Box::new(e));
        let run = async {
            let state = ctx.state();
            let plan = state
                .statement_to_plan(DfStatement::Statement(Box::new(statement.clone())))
                .await
                .map_err(api)?;
            let optimized = state.optimize(&plan).map_err(api)?;
            let frame = ctx.execute_logical_plan(optimized).await.map_err(api)?;
            let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
            let response = encode_dataframe(frame, &Format::UnifiedText, Some(options)).await?;
            Ok(Response::Query(response))
        };
        // datafusion-postgres's `SET statement_timeout` (milliseconds in the
        // connection metadata) bounds planning and starting, as it does there.
        let timeout = client
            .metadata()
            .get("statement_timeout_ms")
            .and_then(|ms| ms.parse::<u64>().ok())
            .map(std::time::Duration::from_millis);
        Some(match timeout {
            Some(limit) => match tokio::time::timeout(limit, run).await {
                Ok(result) => result,
                Err(_) => Err(PgWireError::UserError(Box::new(
                    datafusion_postgres::pgwire::error::ErrorInfo::new(
                        "ERROR".into(),
                        "57014".into(),
                        "canceling statement due to statement timeout".into(),
                    ),
                ))),
            },
            None => run.await,
        })
    }

    async fn handle_extended_parse_query(
        &self,
        _statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        None
    }

    async fn handle_extended_query(
        &self,
        _statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        None
    }
}
