//! The Postgres wire: pgwire handlers that put fedsql's SQL front in front of
//! datafusion-postgres.
//!
//! datafusion-postgres parses every query with its Postgres-compatibility
//! parser before its hooks run, so text it cannot parse (`TRAIN MODEL …`)
//! would never reach a hook. These handlers see the raw SQL first: fedsql
//! statements run on the [`Engine`], every other statement goes, as written,
//! to a per-connection [`DfSessionService`] (which brings `pg_catalog`,
//! `SET`/`SHOW`, transactions and cursors).
//!
//! ```text
//!  client ──► FedsqlService ──► fedsql_sql::parse ──┬─ fedsql statement ──► Engine
//!                                                   └─ standard SQL ──────► DfSessionService
//! ```

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser;
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, Parser as DfParser};
use futures::future::Either;
use futures::{stream, FutureExt, Sink, SinkExt, StreamExt};
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::StartupHandler;
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::portal::{Format, Portal, PortalExecutionState};
use pgwire::api::query::{send_describe_response, ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DescribePortalResponse, DescribeResponse, FieldInfo, QueryResponse, Response, Tag,
};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::Entry;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionHandle, ConnectionManager, ErrorHandler,
    PgWireConnectionState, PgWireServerHandlers, Type, DEFAULT_NAME, METADATA_DATABASE,
    METADATA_USER,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::extendedquery::{
    Bind, BindComplete, Describe, Execute, TARGET_TYPE_BYTE_PORTAL,
};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::cursors::{Cursor, Cursors};
use crate::engine::{Engine, FedsqlOutcome};
use crate::error::ServerError;
use crate::pg_auth::{PgAuth, PgStartup};
use crate::pg_compat::{rewrite_catalog_query, savepoint_tag};
use crate::query_log::Finished;
use fedsql_sql::ConnectionStatement;

/// The statement type datafusion-postgres stores in a client's portal store.
/// fedsql uses the same type, with no plan, for its own statements, because
/// datafusion-postgres's cursor hook expects exactly this type in the store.
type PreparedStatement = (String, Option<(sqlparser::ast::Statement, LogicalPlan)>);

/// The pgwire handler set for `fedsql serve`.
pub struct FedsqlHandlers {
    service: Arc<FedsqlService>,
    startup: Arc<FedsqlStartup>,
    /// SCRAM, when a password is configured.
    auth: Option<Arc<PgAuth>>,
    connections: Arc<ConnectionManager>,
    cancel: Arc<DefaultCancelHandler>,
}

impl FedsqlHandlers {
    /// Handlers serving `engine`; clients authenticate with `auth` (open
    /// when `None`).
    pub fn new(engine: Arc<Engine>, auth: Option<PgAuth>) -> Result<Self, ServerError> {
        let connections = Arc::new(ConnectionManager::new());
        let template = Arc::new(crate::optimized_query::session_service(
            engine.session_context(engine.default_database())?,
        ));
        Ok(FedsqlHandlers {
            service: Arc::new(FedsqlService {
                parser: Arc::new(FedsqlParser {
                    engine: Arc::clone(&engine),
                    template,
                }),
                engine: Arc::clone(&engine),
            }),
            startup: Arc::new(FedsqlStartup {
                engine,
                connections: Arc::clone(&connections),
            }),
            auth: auth.map(Arc::new),
            connections: Arc::clone(&connections),
            cancel: Arc::new(DefaultCancelHandler::new(connections)),
        })
    }
}

impl PgWireServerHandlers for FedsqlHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.service)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.service)
    }

    /// Called once per connection: a SCRAM exchange keeps state.
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(PgStartup::new(
            Arc::clone(&self.startup.engine),
            Arc::clone(&self.startup),
            self.auth.clone(),
            Arc::clone(&self.connections),
        ))
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(LogErrors)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::clone(&self.cancel)
    }
}

/// Accepts every user (without a password; see `pg_auth`) but refuses
/// unknown databases.
struct FedsqlStartup {
    engine: Arc<Engine>,
    connections: Arc<ConnectionManager>,
}

#[async_trait]
impl NoopStartupHandler for FedsqlStartup {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(Arc::clone(&self.connections))
    }

    async fn post_startup<C>(
        &self,
        client: &mut C,
        _message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let requested = client.metadata().get(METADATA_DATABASE).cloned();
        refuse_unknown_database(&self.engine, requested.as_deref())
    }
}

/// A connection to a database that does not exist ends at startup, with
/// Postgres's FATAL `3D000`.
pub(crate) fn refuse_unknown_database(
    engine: &Engine,
    requested: Option<&str>,
) -> PgWireResult<()> {
    engine.resolve_database(requested).map(|_| ()).map_err(|e| {
        let mut info = error_info(&e);
        info.severity = "FATAL".into();
        PgWireError::UserError(Box::new(info))
    })
}

struct LogErrors;

impl ErrorHandler for LogErrors {
    fn on_error<C>(&self, _client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        tracing::debug!(%error, "sending error to client");
    }
}

/// One connection's DataFusion session, created on its first statement.
struct ConnectionSession {
    database: String,
    user: String,
    /// The session's context, shared with `service` (fedsql statements such
    /// as `TRAIN MODEL` plan their input in it).
    ctx: datafusion::prelude::SessionContext,
    service: DfSessionService,
}

/// Runs queries from both the simple and the extended protocol.
pub struct FedsqlService {
    engine: Arc<Engine>,
    parser: Arc<FedsqlParser>,
}

/// The connection's session, created on first use.
fn connection_session<C>(engine: &Engine, client: &C) -> Result<Arc<ConnectionSession>, ServerError>
where
    C: ClientInfo + ?Sized,
{
    if let Some(session) = client.session_extensions().get::<ConnectionSession>() {
        return Ok(session);
    }
    let database =
        engine.resolve_database(client.metadata().get(METADATA_DATABASE).map(String::as_str))?;
    let ctx = engine.session_context(&database)?;
    let session = ConnectionSession {
        user: client
            .metadata()
            .get(METADATA_USER)
            .cloned()
            .unwrap_or_default(),
        database,
        service: crate::optimized_query::session_service(ctx.clone()),
        ctx,
    };
    Ok(client.session_extensions().get_or_insert_with(|| session))
}

/// The Postgres `ErrorResponse` fields for a server error.
fn error_info(e: &ServerError) -> ErrorInfo {
    let mut info = ErrorInfo::new("ERROR".into(), e.sqlstate().into(), e.to_string());
    info.position = e.position().map(|p| p.to_string());
    if matches!(e, ServerError::NotSupported { .. }) {
        info.hint = Some("see the README's SQL reference for what is available now".into());
    }
    info
}

/// Turns whatever datafusion-postgres returned into a fedsql error with the
/// right SQLSTATE and position; errors that already carry a code pass through.
fn classify(err: PgWireError, sql: &str) -> Result<PgWireError, ServerError> {
    match err {
        PgWireError::ApiError(inner) => {
            if let Some(df) = inner.downcast_ref::<DataFusionError>() {
                Err(ServerError::from_datafusion(df, sql))
            } else if let Some(pe) = inner.downcast_ref::<sqlparser::parser::ParserError>() {
                Err(match pe {
                    sqlparser::parser::ParserError::RecursionLimitExceeded => {
                        ServerError::TooComplex {
                            message: "statement too complex: nested too deeply".into(),
                            position: None,
                        }
                    }
                    _ => crate::error::syntax_error(&pe.to_string(), sql),
                })
            } else {
                Err(ServerError::Query {
                    sqlstate: "XX000".into(),
                    message: inner.to_string(),
                    position: None,
                })
            }
        }
        other => Ok(other),
    }
}

/// A `PgWireError` for the client, and the (SQLSTATE, message) for the log.
fn to_wire(
    err: Result<PgWireError, ServerError>,
    offset: usize,
) -> (PgWireError, (String, String)) {
    match err {
        Ok(wire) => {
            let logged = match &wire {
                PgWireError::UserError(info) => (info.code.clone(), info.message.clone()),
                PgWireError::QueryCanceled => ("57014".into(), "canceled".into()),
                other => ("XX000".into(), other.to_string()),
            };
            (wire, logged)
        }
        Err(e) => {
            let e = e.offset_by(offset);
            let logged = (e.sqlstate().to_string(), e.to_string());
            (PgWireError::UserError(Box::new(error_info(&e))), logged)
        }
    }
}

/// Answers DDL with its command tag (`CREATE VIEW`) instead of the empty
/// result set DataFusion returns; the statement already ran when planned.
fn with_ddl_tag(responses: Vec<Response>, sql: &str) -> Vec<Response> {
    let Some(tag) = crate::engine::ddl_tag(sql) else {
        return responses;
    };
    responses
        .into_iter()
        .map(|r| match r {
            Response::Query(_) => Response::Execution(Tag::new(tag)),
            other => other,
        })
        .collect()
}

/// Runs `work` while forwarding its progress lines (see
/// [`crate::training::PROGRESS`]) to the client as NOTICE messages, so psql
/// shows training rounds as they finish.
async fn with_progress<C, T>(client: &mut C, work: impl std::future::Future<Output = T>) -> T
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let work = crate::training::PROGRESS.scope(tx, work);
    tokio::pin!(work);
    let notice = |line: String| {
        PgWireBackendMessage::NoticeResponse(
            ErrorInfo::new("NOTICE".into(), "00000".into(), line).into(),
        )
    };
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            Some(line) = rx.recv() => {
                // A client that stopped reading does not stop the work.
                let _ = client.send(notice(line)).await;
            }
        }
    };
    while let Ok(line) = rx.try_recv() {
        let _ = client.send(notice(line)).await;
    }
    result
}

/// `rows`, ended by a cancel request: the next row after it is an error
/// (57014) and nothing follows. If the cancel registration is replaced
/// (the sender dropped), the rows simply continue.
fn until_canceled<S, T>(
    rows: S,
    cancel: futures::future::Shared<futures::channel::oneshot::Receiver<()>>,
) -> impl futures::Stream<Item = PgWireResult<T>> + Send
where
    S: futures::Stream<Item = PgWireResult<T>> + Send + Unpin,
    T: Send,
{
    stream::unfold(Some((rows, cancel)), |state| async move {
        let (mut rows, mut cancel) = state?;
        let canceled = futures::poll!(&mut cancel);
        if matches!(canceled, std::task::Poll::Ready(Ok(()))) {
            return Some((Err(PgWireError::QueryCanceled), None));
        }
        let live = matches!(canceled, std::task::Poll::Pending);
        let next = if live {
            match futures::future::select(rows.next(), &mut cancel).await {
                Either::Left((row, _)) => row,
                Either::Right((Ok(()), _)) => return Some((Err(PgWireError::QueryCanceled), None)),
                Either::Right((Err(_), _)) => rows.next().await,
            }
        } else {
            rows.next().await
        };
        next.map(|row| (row, Some((rows, cancel))))
    })
}

/// Text-format array parameters with quoted simple elements, unquoted
/// (see [`crate::pg_compat::unquote_array_parameter`]); parameters the
/// client typed as anything but an array are left alone.
fn unquote_array_parameters(message: &mut Bind, types: &[Option<Type>]) {
    for (i, value) in message.parameters.iter_mut().enumerate() {
        let format = match message.parameter_format_codes.as_slice() {
            [] => 0,
            [one] => *one,
            all => all.get(i).copied().unwrap_or(0),
        };
        let array_or_unknown = match types.get(i).cloned().flatten() {
            None => true,
            Some(t) => {
                t == Type::UNKNOWN || matches!(t.kind(), tokio_postgres::types::Kind::Array(_))
            }
        };
        if format != 0 || !array_or_unknown {
            continue;
        }
        let Some(bytes) = value.as_ref() else {
            continue;
        };
        let Some(fixed) = std::str::from_utf8(bytes)
            .ok()
            .and_then(crate::pg_compat::unquote_array_parameter)
        else {
            continue;
        };
        *value = Some(fixed.into_bytes().into());
    }
}

/// The client's error for a panic caught while serving one statement.
fn panic_error(payload: &(dyn std::any::Any + Send)) -> PgWireError {
    let e = ServerError::Internal(crate::error::panic_message(payload));
    tracing::error!("{e}");
    to_wire(Err(e), 0).0
}

/// Runs one protocol message's work so that a panic in it (planning,
/// execution, a UDF) answers that message with XX000 and leaves the
/// connection, and every other session, serving.
async fn guarded<T>(work: impl std::future::Future<Output = PgWireResult<T>>) -> PgWireResult<T> {
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => Err(panic_error(payload.as_ref())),
    }
}

/// Waits for a query's first row inside `do_query`, which pgwire races
/// against cancel requests; without this, blocking work (aggregates, sorts)
/// would run later while rows stream out, where a cancel cannot reach it.
/// An error after the first row (a source lost mid-scan) gets its SQLSTATE
/// like one before it.
async fn start_rows(response: Response, sql: &str) -> PgWireResult<Response> {
    let Response::Query(mut query) = response else {
        return Ok(response);
    };
    let first = query.data_rows().next().await;
    if let Some(Err(e)) = first {
        return Err(e);
    }
    let sql = sql.to_string();
    // Postgres's float text (see `pg_text`), for results that have floats.
    let fixes = crate::pg_text::TextFixes::for_fields(&query.row_schema());
    let fix = move |row: PgWireResult<DataRow>| match &fixes {
        Some(fixes) => row.map(|r| fixes.apply(r)),
        None => row,
    };
    let first = first.map(&fix);
    // pgwire polls the rest of the rows outside any handler: a panic while
    // computing them ends this result with XX000, not the connection.
    let rest = std::panic::AssertUnwindSafe(std::mem::replace(
        query.data_rows(),
        Box::pin(stream::empty()),
    ))
    .catch_unwind()
    .map(move |row| match row {
        Ok(row) => fix(row.map_err(|e| to_wire(classify(e, &sql), 0).0)),
        Err(payload) => Err(panic_error(payload.as_ref())),
    });
    let tag = query.command_tag().to_string();
    let mut started = QueryResponse::new(query.row_schema(), stream::iter(first).chain(rest));
    started.set_command_tag(&tag);
    Ok(Response::Query(started))
}

impl FedsqlService {
    fn record(
        &self,
        session: &ConnectionSession,
        started: (SystemTime, Instant),
        query: &str,
        error: Option<(&str, String)>,
    ) {
        self.engine.queries().record(Finished {
            started: started.0,
            elapsed: started.1.elapsed(),
            database: &session.database,
            user: &session.user,
            protocol: "pg",
            query,
            error,
            received: None,
        });
    }
}

#[async_trait]
impl SimpleQueryHandler for FedsqlService {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        guarded(self.simple_query(client, query)).await
    }
}

impl FedsqlService {
    /// The simple-query protocol's work, under [`guarded`].
    async fn simple_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = connection_session(&self.engine, client).map_err(|e| to_wire(Err(e), 0).0)?;
        let statements = self.engine.parse(query).map_err(|e| to_wire(Err(e), 0).0)?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        for statement in statements {
            let started = (SystemTime::now(), Instant::now());
            let text = statement.text().to_string();
            let result = match &statement {
                fedsql_sql::Statement::Fedsql { statement, .. } => {
                    match with_progress(client, self.engine.execute_fedsql(&session.ctx, statement))
                        .await
                    {
                        Ok(FedsqlOutcome::Command(tag)) => {
                            Ok(vec![Response::Execution(Tag::new(&tag))])
                        }
                        Ok(FedsqlOutcome::Query(sql)) => {
                            match SimpleQueryHandler::do_query(&session.service, client, &sql).await
                            {
                                Ok(r) => Ok(r),
                                Err(e) => Err(classify(e, &sql)),
                            }
                        }
                        Err(e) => Err(Err(e)),
                    }
                }
                fedsql_sql::Statement::Connection {
                    statement, offset, ..
                } => self
                    .run_connection_statement(client, &session, statement, *offset, None)
                    .await
                    .map(|r| vec![r])
                    .map_err(Err),
                fedsql_sql::Statement::Sql { text, .. } if savepoint_tag(text).is_some() => {
                    Ok(vec![Response::Execution(Tag::new(
                        savepoint_tag(text).unwrap_or("SAVEPOINT"),
                    ))])
                }
                // datafusion-postgres's parser knows only Hive's file formats
                // for `STORED AS`; fedsql's front parses these with
                // DataFusion's own (`STORED AS KAFKA`).
                fedsql_sql::Statement::Sql { text, .. }
                    if crate::front::is_create_external_table(text) =>
                {
                    let created = async {
                        let plan = self.engine.plan_sql(&session.ctx, text).await?;
                        self.engine
                            .execute_plan(&session.ctx, &session.database, text, plan)
                            .await
                    };
                    match created.await {
                        Ok(_) => Ok(vec![Response::Execution(Tag::new("CREATE EXTERNAL TABLE"))]),
                        Err(e) => Err(Err(e)),
                    }
                }
                fedsql_sql::Statement::Sql { text, .. } => {
                    if let Err(e) = self.engine.before_statement(&session.database, text) {
                        Err(Err(e))
                    } else {
                        let rewritten = rewrite_catalog_query(text);
                        let sql = rewritten.as_deref().unwrap_or(text);
                        match SimpleQueryHandler::do_query(&session.service, client, sql).await {
                            Ok(r) => {
                                match self.engine.after_statement(&session.database, text).await {
                                    Ok(()) => {
                                        close_cursors_at_transaction_end(client, &r);
                                        Ok(with_ddl_tag(r, text))
                                    }
                                    Err(e) => Err(Err(e)),
                                }
                            }
                            Err(e) => Err(classify(e, text)),
                        }
                    }
                }
            };
            let result = match result {
                Ok(rs) => {
                    let mut started_rows = Vec::with_capacity(rs.len());
                    let mut failure = None;
                    for r in rs {
                        match start_rows(r, &text).await {
                            Ok(r) => started_rows.push(r),
                            Err(e) => {
                                failure = Some(classify(e, &text));
                                break;
                            }
                        }
                    }
                    match failure {
                        None => Ok(started_rows),
                        Some(f) => Err(f),
                    }
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(rs) => {
                    self.record(&session, started, &text, None);
                    responses.extend(rs);
                }
                Err(e) => {
                    let (wire, logged) = to_wire(e, statement.offset());
                    self.record(&session, started, &text, Some((&logged.0, logged.1)));
                    // Postgres stops at the first failing statement of a
                    // simple query; earlier results are still delivered.
                    if responses.is_empty() {
                        return Err(wire);
                    }
                    match wire {
                        PgWireError::UserError(info) => responses.push(Response::Error(info)),
                        other => return Err(other),
                    }
                    break;
                }
            }
        }
        // pgwire races a cancel request against this handler only; the rows
        // it then streams would not stop. Register for cancel again and let
        // each result's rows end with 57014 when one arrives.
        if let Some(handle) = client.session_extensions().get::<Arc<ConnectionHandle>>() {
            let cancel = handle.start_query().await.shared();
            responses = responses
                .into_iter()
                .map(|response| match response {
                    Response::Query(mut query) => {
                        let tag = query.command_tag().to_string();
                        let rows = std::mem::replace(query.data_rows(), Box::pin(stream::empty()));
                        let mut cancellable = QueryResponse::new(
                            query.row_schema(),
                            until_canceled(rows, cancel.clone()),
                        );
                        cancellable.set_command_tag(&tag);
                        Response::Query(cancellable)
                    }
                    Response::CopyOut(mut copy) => {
                        let data =
                            std::mem::replace(&mut copy.data_stream, Box::pin(stream::empty()));
                        copy.data_stream = Box::pin(until_canceled(data, cancel.clone()));
                        Response::CopyOut(copy)
                    }
                    other => other,
                })
                .collect();
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for FedsqlService {
    type Statement = PreparedStatement;
    type QueryParser = FedsqlParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        Arc::clone(&self.parser)
    }

    /// pgwire's Describe, plus Postgres's cursor portals: a cursor declared
    /// with `DECLARE` is also a portal of the same name, and drivers
    /// (psycopg's named cursors) describe it to learn the rows `FETCH`
    /// returns.
    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        if message.target_type == TARGET_TYPE_BYTE_PORTAL
            && client.portal_store().get_portal(name).is_none()
        {
            if let Some(cursor) = client
                .session_extensions()
                .get::<Cursors>()
                .and_then(|c| c.get(name))
            {
                let fields = cursor.fields(None)?;
                return send_describe_response(client, &DescribePortalResponse::new(fields)).await;
            }
        }
        self._on_describe(client, message).await
    }

    /// pgwire's portal Describe, except that a `FETCH` describes the rows
    /// of its cursor (in the portal's result formats), as in Postgres.
    async fn do_describe_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let (sql, None) = &portal.statement.statement {
            if let Ok(mut statements) = fedsql_sql::parse(sql) {
                if let Some(fedsql_sql::Statement::Connection {
                    statement: ConnectionStatement::Fetch(fetch),
                    ..
                }) = statements.pop()
                {
                    let cursors = client.session_extensions().get::<Cursors>();
                    return match cursors.and_then(|c| c.get(&fetch.name)) {
                        Some(cursor) if !fetch.discard => Ok(DescribePortalResponse::new(
                            cursor.fields(Some(&portal.result_column_format))?,
                        )),
                        Some(_) => Ok(DescribePortalResponse::no_data()),
                        None => Err(to_wire(Err(ServerError::UndefinedCursor(fetch.name)), 0).0),
                    };
                }
            }
        }
        let fields = self.parser.get_result_schema(
            &portal.statement.statement,
            Some(&portal.result_column_format),
        )?;
        Ok(DescribePortalResponse::new(fields))
    }

    /// pgwire's Bind, plus Postgres's arity check: a Bind with more values
    /// than the statement has parameters is refused (08P01), not run with
    /// the extra values ignored.
    async fn on_bind<C>(&self, client: &mut C, message: Bind) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statement_name = message
            .statement_name
            .clone()
            .unwrap_or_else(|| DEFAULT_NAME.to_string());
        let statement_name = statement_name.as_str();
        let portal_name = message
            .portal_name
            .clone()
            .unwrap_or_else(|| DEFAULT_NAME.to_string());
        let portal_name = portal_name.as_str();
        let arity = |supplied: usize, required: usize| {
            PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "08P01".into(),
                format!(
                    "bind message supplies {supplied} parameters, but prepared statement \"{statement_name}\" requires {required}"
                ),
            )))
        };
        let mut message = message;
        match client.portal_store().get_statement(statement_name) {
            Some(Entry::Value(statement)) => {
                unquote_array_parameters(&mut message, &statement.parameter_types);
                let required = self
                    .parser
                    .get_parameter_types(&statement.statement)
                    .map(|t| t.len())
                    .unwrap_or(0)
                    .max(statement.parameter_types.len());
                if message.parameters.len() > required {
                    return Err(arity(message.parameters.len(), required));
                }
                let portal = Portal::try_new(&message, statement)?;
                client.portal_store().put_portal(Arc::new(portal));
            }
            Some(Entry::Empty) => {
                if !message.parameters.is_empty() {
                    return Err(arity(message.parameters.len(), 0));
                }
                client.portal_store().put_empty_portal(portal_name);
            }
            None => return Err(PgWireError::StatementNotFound(statement_name.to_owned())),
        }
        client
            .send(PgWireBackendMessage::BindComplete(BindComplete::new()))
            .await?;
        Ok(())
    }

    /// pgwire's Execute, except that a query executed without a row limit
    /// streams its rows. pgwire (0.41, 0.42) hands such a portal's rows to
    /// the client only after collecting all of them in memory
    /// (`Portal::fetch`): a large result over psycopg, JDBC or any other
    /// extended-protocol client would sit in the server's memory whole, its
    /// first row sent only after its last was computed, and an error
    /// mid-result would swallow the rows before it.
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        guarded(self.execute_portal(client, message)).await
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        guarded(self.query_portal(client, portal, max_rows)).await
    }
}

impl FedsqlService {
    /// Execute's work, under [`guarded`] (see `on_execute`).
    async fn execute_portal<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PreparedStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        let portal = match client.portal_store().get_portal(name) {
            Some(Entry::Value(portal))
                if message.max_rows == 0
                    && matches!(
                        portal.statement.statement.1,
                        Some((sqlparser::ast::Statement::Query(_), _))
                    )
                    && matches!(*portal.state().lock().await, PortalExecutionState::Initial)
                    && matches!(client.state(), PgWireConnectionState::ReadyForQuery) =>
            {
                portal
            }
            // Row limits (cursors), fedsql statements, DML, and errors in
            // the protocol's state: pgwire's own path.
            _ => return self._on_execute(client, message).await,
        };
        let transaction_status = client.transaction_status();
        client.set_state(PgWireConnectionState::QueryInProgress);
        // A cancel request stops the query until its first row (`do_query`
        // waits for it, see `start_rows`) and, unlike pgwire's path, while
        // its rows stream.
        let cancel = match client.session_extensions().get::<Arc<ConnectionHandle>>() {
            Some(handle) => Some(handle.start_query().await),
            None => None,
        };
        let (response, mut cancel) = match cancel {
            Some(cancel) => {
                let query =
                    std::pin::pin!(ExtendedQueryHandler::do_query(self, client, &portal, 0));
                match futures::future::select(query, cancel).await {
                    Either::Left((result, cancel)) => (result, Some(cancel)),
                    Either::Right(_) => (Err(PgWireError::QueryCanceled), None),
                }
            }
            None => (
                ExtendedQueryHandler::do_query(self, client, &portal, 0).await,
                None,
            ),
        };
        *portal.state().lock().await = PortalExecutionState::Finished;
        match response? {
            Response::Query(mut results) => {
                let tag = results.command_tag().to_string();
                let mut rows = 0;
                loop {
                    let next = match cancel.as_mut() {
                        Some(watch) => {
                            match futures::future::select(results.data_rows().next(), watch).await {
                                Either::Left((row, _)) => row,
                                Either::Right((Ok(()), _)) => {
                                    return Err(PgWireError::QueryCanceled)
                                }
                                // The handle dropped its sender: nothing can
                                // cancel any more.
                                Either::Right((Err(_), row)) => {
                                    let row = row.await;
                                    cancel = None;
                                    row
                                }
                            }
                        }
                        None => results.data_rows().next().await,
                    };
                    let Some(row) = next else { break };
                    client.feed(PgWireBackendMessage::DataRow(row?)).await?;
                    rows += 1;
                }
                let done = Tag::new(&tag).with_rows(rows);
                client
                    .send(PgWireBackendMessage::CommandComplete(done.into()))
                    .await?;
            }
            Response::Execution(tag) => {
                client
                    .send(PgWireBackendMessage::CommandComplete(tag.into()))
                    .await?;
            }
            // A query answers rows or an error, never a transaction or COPY.
            _ => {
                return Err(PgWireError::ApiError(
                    "a query answered something other than rows".into(),
                ))
            }
        }
        client.set_state(PgWireConnectionState::ReadyForQuery);
        client.set_transaction_status(transaction_status);
        Ok(())
    }

    /// A portal's query, under [`guarded`].
    async fn query_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<PreparedStatement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PreparedStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = connection_session(&self.engine, client).map_err(|e| to_wire(Err(e), 0).0)?;
        let started = (SystemTime::now(), Instant::now());
        let text = portal.statement.statement.0.clone();
        let result = match &portal.statement.statement {
            (sql, None) if !sql.trim().is_empty() => match savepoint_tag(sql) {
                Some(tag) => Ok(Response::Execution(Tag::new(tag))),
                None => self.execute_unplanned(client, &session, sql, portal).await,
            },
            _ => match self.engine.before_statement(&session.database, &text) {
                Err(e) => Err(Err(e)),
                Ok(()) => {
                    self.run_planned(client, &session, portal, max_rows, &text)
                        .await
                }
            },
        };
        match result {
            Ok(r) => {
                self.record(&session, started, &text, None);
                Ok(r)
            }
            Err(e) => {
                let (wire, logged) = to_wire(e, 0);
                self.record(&session, started, &text, Some((&logged.0, logged.1)));
                Err(wire)
            }
        }
    }
}

impl FedsqlService {
    /// Runs a portal whose statement was planned at Parse (a query or
    /// standard DDL) through datafusion-postgres, then persists its effect.
    async fn run_planned<C>(
        &self,
        client: &mut C,
        session: &ConnectionSession,
        portal: &Portal<PreparedStatement>,
        max_rows: usize,
        text: &str,
    ) -> Result<Response, Result<PgWireError, ServerError>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PreparedStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match ExtendedQueryHandler::do_query(&session.service, client, portal, max_rows).await {
            Ok(r) => match self.engine.after_statement(&session.database, text).await {
                Ok(()) => {
                    close_cursors_at_transaction_end(client, std::slice::from_ref(&r));
                    start_rows(with_ddl_tag(vec![r], text).remove(0), text)
                        .await
                        .map_err(|e| classify(e, text))
                }
                Err(e) => Err(Err(e)),
            },
            Err(e) => Err(classify(e, text)),
        }
    }

    /// Runs a statement [`FedsqlParser`] stored without a plan: a fedsql
    /// statement (the query-shaped ones already became plans), a cursor
    /// statement or `COPY … TO STDOUT`.
    async fn execute_unplanned<C>(
        &self,
        client: &C,
        session: &ConnectionSession,
        sql: &str,
        portal: &Portal<PreparedStatement>,
    ) -> Result<Response, Result<PgWireError, ServerError>>
    where
        C: ClientInfo + ?Sized,
    {
        let statement = match fedsql_sql::parse(sql)
            .map_err(|e| Err(e.into()))?
            .into_iter()
            .next()
        {
            Some(fedsql_sql::Statement::Fedsql { statement, .. }) => statement,
            Some(fedsql_sql::Statement::Connection {
                statement, offset, ..
            }) => {
                return self
                    .run_connection_statement(client, session, &statement, offset, Some(portal))
                    .await
                    .map_err(Err)
            }
            _ => return Ok(Response::EmptyQuery),
        };
        match self
            .engine
            .execute_fedsql(&session.ctx, &statement)
            .await
            .map_err(Err)?
        {
            FedsqlOutcome::Command(tag) => Ok(Response::Execution(Tag::new(&tag))),
            // Describe already told the client this statement returns no
            // rows (its plan cannot exist before it runs): answer with its
            // tag; the simple protocol (psql) also shows the result row.
            FedsqlOutcome::Query(_) => Ok(Response::Execution(Tag::new(statement.kind()))),
        }
    }
}

impl FedsqlService {
    /// Runs a cursor statement or `COPY … TO STDOUT` on this connection.
    /// `offset` is the statement's in the query string (errors in a cursor's
    /// query point into it); `portal` is the extended protocol's, whose
    /// parameters the query takes and whose result formats `FETCH` answers in.
    async fn run_connection_statement<C>(
        &self,
        client: &C,
        session: &ConnectionSession,
        statement: &ConnectionStatement,
        offset: usize,
        portal: Option<&Portal<PreparedStatement>>,
    ) -> Result<Response, ServerError>
    where
        C: ClientInfo + ?Sized,
    {
        let cursors = client
            .session_extensions()
            .get_or_insert_with(Cursors::default);
        match statement {
            ConnectionStatement::Declare(declare) => {
                if cursors.get(&declare.name).is_some() {
                    return Err(ServerError::DuplicateCursor(declare.name.clone()));
                }
                let rows = self
                    .query_stream(session, &declare.query, portal)
                    .await
                    .map_err(|e| e.offset_by(declare.query_offset.saturating_sub(offset)))?;
                let cursor = Cursor::new(&declare.name, rows, declare.binary, declare.hold);
                cursors.declare(&declare.name, cursor)?;
                Ok(Response::Execution(Tag::new("DECLARE CURSOR")))
            }
            ConnectionStatement::Fetch(fetch) if fetch.discard => {
                let moved = cursors.expect(&fetch.name)?.skip(fetch.direction).await?;
                Ok(Response::Execution(Tag::new("MOVE").with_rows(moved)))
            }
            ConnectionStatement::Fetch(fetch) => {
                let format = portal.map(|p| &p.result_column_format);
                let rows = cursors
                    .expect(&fetch.name)?
                    .fetch(fetch.direction, format)
                    .await?;
                Ok(Response::Query(rows))
            }
            ConnectionStatement::Close(name) => {
                cursors.close(name.as_deref())?;
                Ok(Response::Execution(Tag::new("CLOSE CURSOR")))
            }
            ConnectionStatement::CopyTo(copy) => {
                let rows = self
                    .query_stream(session, &copy.query, portal)
                    .await
                    .map_err(|e| e.offset_by(copy.query_offset.saturating_sub(offset)))?;
                Ok(Response::CopyOut(crate::copy_out::copy_out(copy, rows)?))
            }
        }
    }

    /// Plans `sql` (a query), binds the portal's parameters, and starts it.
    async fn query_stream(
        &self,
        session: &ConnectionSession,
        sql: &str,
        portal: Option<&Portal<PreparedStatement>>,
    ) -> Result<datafusion::execution::SendableRecordBatchStream, ServerError> {
        let mut plan = self.engine.plan_sql(&session.ctx, sql).await?;
        if let Some(portal) = portal.filter(|p| p.parameter_len() > 0) {
            let planning = |e: DataFusionError| ServerError::from_datafusion(&e, sql);
            let mut types: Vec<(usize, Option<datafusion::arrow::datatypes::DataType>)> = plan
                .get_parameter_types()
                .map_err(planning)?
                .into_iter()
                .filter_map(|(name, t)| Some((name.trim_start_matches('$').parse().ok()?, t)))
                .collect();
            types.sort_by_key(|(index, _)| *index);
            let types: Vec<_> = types.iter().map(|(_, t)| t.as_ref()).collect();
            let values = datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters(
                portal, &types,
            )
            .map_err(|e| ServerError::Query {
                sqlstate: "22P02".into(),
                message: e.to_string(),
                position: None,
            })?;
            plan = plan.replace_params_with_values(&values).map_err(planning)?;
        }
        match self
            .engine
            .execute_plan(&session.ctx, &session.database, sql, plan)
            .await?
        {
            crate::front::Planned::Rows(frame) => frame
                .execute_stream()
                .await
                .map_err(|e| ServerError::from_datafusion(&e, sql)),
            crate::front::Planned::Command(tag) => Err(ServerError::Syntax {
                message: format!("a cursor or COPY needs a query, not {tag}"),
                position: None,
            }),
        }
    }
}

/// A transaction that ended (`COMMIT`, `ROLLBACK`) closes the connection's
/// cursors declared without `WITH HOLD`, as in Postgres.
fn close_cursors_at_transaction_end<C: ClientInfo + ?Sized>(client: &C, responses: &[Response]) {
    if responses
        .iter()
        .any(|r| matches!(r, Response::TransactionEnd(_)))
    {
        if let Some(cursors) = client.session_extensions().get::<Cursors>() {
            cursors.end_transaction();
        }
    }
}

/// The extended-protocol parser: fedsql's front first, then DataFusion's.
pub struct FedsqlParser {
    engine: Arc<Engine>,
    /// Describes statements; any session's parser can, since it only reads
    /// the plan.
    template: Arc<DfSessionService>,
}

#[async_trait]
impl QueryParser for FedsqlParser {
    type Statement = PreparedStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        guarded(self.parse_statement(client, sql, types)).await
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        DfParser::get_parameter_types(&self.template.query_parser(), stmt)
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        DfParser::get_result_schema(&self.template.query_parser(), stmt, column_format)
    }
}

impl FedsqlParser {
    /// Parse's work, under [`guarded`].
    async fn parse_statement<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<PreparedStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let session = connection_session(&self.engine, client).map_err(|e| to_wire(Err(e), 0).0)?;
        let mut statements = self.engine.parse(sql).map_err(|e| to_wire(Err(e), 0).0)?;
        if statements.len() > 1 {
            let e = ServerError::Syntax {
                message: "cannot insert multiple commands into a prepared statement".into(),
                position: Some(statements[1].offset() + 1),
            };
            return Err(to_wire(Err(e), 0).0);
        }
        let Some(statement) = statements.pop() else {
            return Ok(None);
        };
        let inner = session.service.query_parser();
        match statement {
            fedsql_sql::Statement::Fedsql {
                statement, text, ..
            } => {
                // Query-shaped statements (SHOW SOURCES) become plans now so
                // Describe can report their columns; the rest run at Execute.
                match statement {
                    statement if statement.is_read_only() => {
                        match self.engine.execute_fedsql(&session.ctx, &statement).await {
                            Ok(FedsqlOutcome::Query(q)) => inner
                                .parse_sql(client, &q, types)
                                .await
                                .map_err(|e| to_wire(classify(e, &q), 0).0),
                            Ok(FedsqlOutcome::Command(_)) => Ok(Some((text, None))),
                            Err(e) => Err(to_wire(Err(e), 0).0),
                        }
                    }
                    _ => Ok(Some((text, None))),
                }
            }
            // Cursors and COPY run at Execute, with the portal's parameters
            // and result formats.
            fedsql_sql::Statement::Connection { text, .. } => Ok(Some((text, None))),
            fedsql_sql::Statement::Sql { text, .. } if savepoint_tag(&text).is_some() => {
                Ok(Some((text, None)))
            }
            fedsql_sql::Statement::Sql { text, offset } => inner
                .parse_sql(
                    client,
                    rewrite_catalog_query(&text).as_deref().unwrap_or(&text),
                    types,
                )
                .await
                .map_err(|e| to_wire(classify(e, &text), offset).0),
        }
    }
}
