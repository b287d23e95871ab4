//! The Flight SQL service: arrow-flight's [`FlightSqlService`] in front of
//! the engine's SQL front ([`crate::front`]), the same one `fedsql query`
//! uses and the Postgres wire is built around, so fedsql statements (`SHOW
//! SOURCES`, `CREATE SOURCE`, …) behave identically on both wires.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandGetXdbcTypeInfo, CommandPreparedStatementQuery, CommandPreparedStatementUpdate,
    CommandStatementQuery, CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt,
    SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use datafusion::arrow::array::{Array, RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::LogicalPlan;
use futures::{stream, Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{Authenticator, Caller};
use super::metadata;
use super::results::{command_schema, wire_schema, Answer, BatchStream, PendingResults, Tracker};
use super::sessions::{FlightSession, Sessions};
use super::status::to_status;
use crate::engine::{ddl_tag, Engine, FedsqlOutcome};
use crate::error::ServerError;
use crate::front::Planned;
use crate::pg_compat::savepoint_tag;

type DoGetStream = <FlightSqlEndpoint as FlightService>::DoGetStream;

/// A prepared statement: planned once, run with each bound parameter row.
struct PreparedQuery {
    owner: String,
    /// What the client sent, for the query log.
    text: String,
    /// The SQL that was planned (for fedsql read-only statements, the query
    /// over the system tables that answers them).
    sql: String,
    kind: PreparedKind,
    params: Vec<ScalarValue>,
}

enum PreparedKind {
    /// Planned with its placeholders open.
    Plan(LogicalPlan),
    /// A statement with side effects that only runs when executed.
    Deferred(fedsql_sql::Statement),
}

/// The Flight SQL endpoint.
pub struct FlightSqlEndpoint {
    engine: Arc<Engine>,
    auth: Arc<Authenticator>,
    sessions: Sessions,
    pending: PendingResults,
    prepared: Mutex<HashMap<String, PreparedQuery>>,
}

impl FlightSqlEndpoint {
    /// An endpoint over `engine`, checking calls with `auth`.
    pub fn new(engine: Arc<Engine>, auth: Arc<Authenticator>) -> Self {
        FlightSqlEndpoint {
            engine,
            auth,
            sessions: Sessions::default(),
            pending: PendingResults::default(),
            prepared: Mutex::new(HashMap::new()),
        }
    }

    /// The caller and its session; the `database` request header picks the
    /// database like a Postgres connection's `dbname`.
    fn session<T>(&self, request: &Request<T>) -> Result<(Caller, Arc<FlightSession>), Status> {
        let caller = self.auth.check(request)?;
        let database = request
            .metadata()
            .get("database")
            .and_then(|v| v.to_str().ok());
        let session = self
            .sessions
            .get(&self.engine, &caller, database)
            .map_err(|e| to_status(&e))?;
        Ok((caller, session))
    }

    /// Runs every statement of `sql`; earlier statements run to completion
    /// and the last one's answer is returned.
    async fn run_sql(&self, session: &FlightSession, sql: &str) -> Result<Planned, ServerError> {
        let statements = self.engine.parse(sql)?;
        let count = statements.len();
        let mut last = None;
        for (i, statement) in statements.iter().enumerate() {
            let planned = self
                .engine
                .run_statement(&session.ctx, &session.database, statement)
                .await
                .map_err(|e| e.offset_by(statement.offset()))?;
            if i + 1 < count {
                if let Planned::Rows(frame) = planned {
                    frame
                        .collect()
                        .await
                        .map_err(|e| ServerError::from_datafusion(&e, statement.text()))?;
                }
            } else {
                last = Some(planned);
            }
        }
        last.ok_or_else(|| ServerError::Syntax {
            message: "empty query".into(),
            position: None,
        })
    }

    /// Parks an answer and describes it: its schema and one endpoint per
    /// independently readable partition.
    async fn flight_info(
        &self,
        caller: &Caller,
        session: &FlightSession,
        sql: &str,
        started: (SystemTime, Instant),
        planned: Result<Planned, ServerError>,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let tracker = Arc::new(Tracker::new(
            Arc::clone(&self.engine),
            &session.database,
            &caller.user,
            sql,
            started,
        ));
        let answer = match planned {
            Ok(Planned::Command(tag)) => Ok(Answer::Command(tag)),
            Ok(Planned::Rows(frame)) => Answer::from_frame(frame, sql).await,
            Err(e) => Err(e),
        };
        let answer = answer.map_err(|e| {
            tracker.finish(Some(&e));
            to_status(&e)
        })?;
        let schema = answer.schema();
        let tickets = self.pending.insert(&caller.session_key, answer, tracker);
        let ordered = tickets.len() == 1;
        let mut info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(format!("cannot encode the result schema: {e}")))?
            .with_descriptor(descriptor)
            .with_ordered(ordered);
        for ticket in tickets {
            let ticket = TicketStatementQuery {
                statement_handle: ticket.into_bytes().into(),
            };
            info = info.with_endpoint(
                FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec())),
            );
        }
        Ok(Response::new(info))
    }

    /// Describes a catalog call whose ticket is the command itself.
    fn metadata_info(
        &self,
        command: impl ProstMessageExt,
        schema: &Schema,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.auth.check(&request)?;
        let ticket = Ticket::new(command.as_any().encode_to_vec());
        let info = FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(format!("cannot encode the schema: {e}")))?
            .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
            .with_descriptor(request.into_inner());
        Ok(Response::new(info))
    }

    /// Runs a prepared statement with its bound parameters.
    async fn run_prepared(
        &self,
        caller: &Caller,
        session: &FlightSession,
        handle: &[u8],
    ) -> Result<(String, Result<Planned, ServerError>), Status> {
        let handle = String::from_utf8_lossy(handle).to_string();
        let (text, sql, kind, params) = {
            let prepared = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
            let Some(p) = prepared
                .get(&handle)
                .filter(|p| p.owner == caller.session_key)
            else {
                return Err(Status::not_found(format!(
                    "prepared statement \"{handle}\" does not exist"
                )));
            };
            let kind = match &p.kind {
                PreparedKind::Plan(plan) => PreparedKind::Plan(plan.clone()),
                PreparedKind::Deferred(s) => PreparedKind::Deferred(s.clone()),
            };
            (p.text.clone(), p.sql.clone(), kind, p.params.clone())
        };
        let planned = match kind {
            PreparedKind::Deferred(statement) => {
                self.engine
                    .run_statement(&session.ctx, &session.database, &statement)
                    .await
            }
            PreparedKind::Plan(plan) => match bind(plan, params, &sql) {
                Ok(plan) => {
                    self.engine
                        .execute_plan(&session.ctx, &session.database, &sql, plan)
                        .await
                }
                Err(e) => Err(e),
            },
        };
        Ok((text, planned))
    }
}

/// Fills a plan's placeholders, casting each value to the type the plan
/// expects there (a client binds a Python float where the column is a
/// decimal).
fn bind(
    plan: LogicalPlan,
    params: Vec<ScalarValue>,
    sql: &str,
) -> Result<LogicalPlan, ServerError> {
    let expected = plan
        .get_parameter_types()
        .map_err(|e| ServerError::from_datafusion(&e, sql))?;
    if expected.is_empty() && params.is_empty() {
        return Ok(plan);
    }
    if params.len() != expected.len() {
        return Err(ServerError::Query {
            sqlstate: "08P01".into(),
            message: format!(
                "the statement has {} parameter(s) but {} value(s) were bound",
                expected.len(),
                params.len()
            ),
            position: None,
        });
    }
    let values = params
        .into_iter()
        .enumerate()
        .map(|(i, value)| match expected.get(&format!("${}", i + 1)) {
            Some(Some(data_type)) if value.data_type() != *data_type => {
                value.cast_to(data_type).map_err(|e| ServerError::Query {
                    sqlstate: "22P02".into(),
                    message: format!("parameter ${}: {e}", i + 1),
                    position: None,
                })
            }
            _ => Ok(value),
        })
        .collect::<Result<Vec<_>, _>>()?;
    plan.with_param_values(values)
        .map_err(|e| ServerError::from_datafusion(&e, sql))
}

/// The parameter schema of a plan: `$1`, `$2`, … in order, with the type the
/// plan expects (Null where any type will do).
fn parameter_schema(plan: &LogicalPlan, sql: &str) -> Result<Schema, ServerError> {
    let types = plan
        .get_parameter_types()
        .map_err(|e| ServerError::from_datafusion(&e, sql))?;
    let mut names: Vec<_> = types.keys().cloned().collect();
    names.sort_by_key(|n| {
        n.trim_start_matches('$')
            .parse::<usize>()
            .unwrap_or(usize::MAX)
    });
    Ok(Schema::new(
        names
            .into_iter()
            .map(|name| {
                let data_type = types
                    .get(&name)
                    .cloned()
                    .flatten()
                    .unwrap_or(DataType::Null);
                Field::new(name, data_type, true)
            })
            .collect::<Vec<_>>(),
    ))
}

fn ipc_schema(schema: &Schema) -> Result<Vec<u8>, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: datafusion::arrow::error::ArrowError| {
            Status::internal(format!("cannot encode a schema: {e}"))
        })?;
    Ok(bytes.to_vec())
}

/// Rows changed by a statement run for `DoPut`: DML answers with one
/// `count` row; DDL changes none.
async fn affected_rows(planned: Planned, sql: &str) -> Result<i64, ServerError> {
    let Planned::Rows(frame) = planned else {
        return Ok(0);
    };
    let batches = frame
        .collect()
        .await
        .map_err(|e| ServerError::from_datafusion(&e, sql))?;
    let mut total: i64 = 0;
    for batch in &batches {
        let counts = (batch.num_columns() == 1 && batch.schema().field(0).name() == "count")
            .then(|| batch.column(0).as_any().downcast_ref::<UInt64Array>())
            .flatten();
        total += match counts {
            Some(c) => c.iter().flatten().map(|v| v as i64).sum::<i64>(),
            None => batch.num_rows() as i64,
        };
    }
    Ok(total)
}

/// Encodes batches as Flight data; the schema goes first even when there
/// are no rows.
fn encode(schema: SchemaRef, batches: BatchStream) -> DoGetStream {
    let batches = batches.map_err(|e| FlightError::Tonic(Box::new(to_status(&e))));
    FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches)
        .map_err(Status::from)
        .boxed()
}

fn encode_batch<E: std::fmt::Display>(batch: Result<RecordBatch, E>) -> DoGetStream {
    match batch {
        Ok(batch) => encode(batch.schema(), stream::once(async { Ok(batch) }).boxed()),
        Err(e) => {
            let status = Status::internal(e.to_string());
            stream::once(async move { Err(status) }).boxed()
        }
    }
}

fn now() -> (SystemTime, Instant) {
    (SystemTime::now(), Instant::now())
}

#[tonic::async_trait]
impl FlightSqlService for FlightSqlEndpoint {
    type FlightService = FlightSqlEndpoint;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        // Failed logins from one address slow its next ones (both wires).
        let peer = request.remote_addr().map(|a| a.ip());
        if let Some(ip) = peer {
            self.engine.logins().wait(ip).await;
        }
        let (token, user) = self.auth.login(&request).inspect_err(|status| {
            if let (Some(ip), tonic::Code::Unauthenticated) = (peer, status.code()) {
                self.engine.logins().failed(ip);
            }
        })?;
        tracing::debug!(%user, "flight sql handshake");
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into_bytes().into(),
        };
        let mut response: Response<Pin<Box<dyn Stream<Item = _> + Send>>> =
            Response::new(Box::pin(stream::iter([Ok(reply)])));
        let header = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| Status::internal("token is not a valid header"))?;
        response.metadata_mut().insert("authorization", header);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let started = now();
        let (caller, session) = self.session(&request)?;
        let planned = self.run_sql(&session, &query.query).await;
        self.flight_info(
            &caller,
            &session,
            &query.query,
            started,
            planned,
            request.into_inner(),
        )
        .await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let started = now();
        let (caller, session) = self.session(&request)?;
        let (sql, planned) = self
            .run_prepared(&caller, &session, &query.prepared_statement_handle)
            .await?;
        self.flight_info(
            &caller,
            &session,
            &sql,
            started,
            planned,
            request.into_inner(),
        )
        .await
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let caller = self.auth.check(&request)?;
        let ticket = String::from_utf8_lossy(&ticket.statement_handle).to_string();
        let (schema, batches) = self
            .pending
            .take(&caller.session_key, &ticket)
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(encode(schema, batches)))
    }

    async fn do_put_statement_update(
        &self,
        command: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let started = now();
        let (caller, session) = self.session(&request)?;
        let result = match self.run_sql(&session, &command.query).await {
            Ok(planned) => affected_rows(planned, &command.query).await,
            Err(e) => Err(e),
        };
        let tracker = Tracker::new(
            Arc::clone(&self.engine),
            &session.database,
            &caller.user,
            &command.query,
            started,
        );
        tracker.finish(result.as_ref().err());
        result.map_err(|e| to_status(&e))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let (caller, session) = self.session(&request)?;
        // JDBC and ADBC users write `?` markers; DataFusion plans `$n`.
        let sql = fedsql_sql::parser::number_question_marks(&query.query).unwrap_or(query.query);
        let prepared = async {
            let mut statements = self.engine.parse(&sql)?;
            if statements.len() > 1 {
                return Err(ServerError::Syntax {
                    message: "cannot insert multiple commands into a prepared statement".into(),
                    position: Some(statements[1].offset() + 1),
                });
            }
            let statement = statements.pop().ok_or_else(|| ServerError::Syntax {
                message: "empty query".into(),
                position: None,
            })?;
            match &statement {
                fedsql_sql::Statement::Fedsql { statement: f, .. } if f.is_read_only() => {
                    match self.engine.execute_fedsql(&session.ctx, f).await? {
                        FedsqlOutcome::Query(q) => {
                            let plan = self.engine.plan_sql(&session.ctx, &q).await?;
                            Ok((q, PreparedKind::Plan(plan)))
                        }
                        FedsqlOutcome::Command(_) => {
                            Ok((sql.clone(), PreparedKind::Deferred(statement)))
                        }
                    }
                }
                fedsql_sql::Statement::Sql { text, .. } if savepoint_tag(text).is_none() => {
                    let plan = self.engine.plan_sql(&session.ctx, text).await?;
                    Ok((text.clone(), PreparedKind::Plan(plan)))
                }
                _ => Ok((sql.clone(), PreparedKind::Deferred(statement))),
            }
        }
        .await;
        let (planned_sql, kind) = prepared.map_err(|e| {
            Tracker::new(
                Arc::clone(&self.engine),
                &session.database,
                &caller.user,
                &sql,
                now(),
            )
            .finish(Some(&e));
            to_status(&e)
        })?;
        let (dataset_schema, parameter_schema) = match &kind {
            PreparedKind::Plan(plan) if ddl_tag(&planned_sql).is_none() => (
                wire_schema(plan.schema().as_arrow()),
                parameter_schema(plan, &planned_sql).map_err(|e| to_status(&e))?,
            ),
            _ => (command_schema(), Schema::empty()),
        };
        let handle = super::random_hex(16);
        let parameter_schema = if parameter_schema.fields().is_empty() {
            Vec::new()
        } else {
            ipc_schema(&parameter_schema)?
        };
        let result = ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.clone().into_bytes().into(),
            dataset_schema: ipc_schema(&dataset_schema)?.into(),
            parameter_schema: parameter_schema.into(),
        };
        self.prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                handle,
                PreparedQuery {
                    owner: caller.session_key,
                    text: sql,
                    sql: planned_sql,
                    kind,
                    params: Vec::new(),
                },
            );
        Ok(result)
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let caller = self.auth.check(&request)?;
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).to_string();
        let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(
            request.into_inner().map_err(FlightError::from),
        )
        .try_collect()
        .await
        .map_err(Status::from)?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows > 1 {
            return Err(Status::unimplemented(format!(
                "{rows} parameter rows were bound; bind one row per execution"
            )));
        }
        let params = match batches.iter().find(|b| b.num_rows() == 1) {
            Some(batch) => batch
                .columns()
                .iter()
                .map(|c| ScalarValue::try_from_array(c, 0))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Status::invalid_argument(format!("cannot read parameters: {e}")))?,
            None => Vec::new(),
        };
        let mut prepared = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        match prepared
            .get_mut(&handle)
            .filter(|p| p.owner == caller.session_key)
        {
            Some(p) => p.params = params,
            None => {
                return Err(Status::not_found(format!(
                    "prepared statement \"{handle}\" does not exist"
                )))
            }
        }
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.into_bytes().into()),
        })
    }

    async fn do_put_prepared_statement_update(
        &self,
        query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let started = now();
        let (caller, session) = self.session(&request)?;
        let (sql, planned) = self
            .run_prepared(&caller, &session, &query.prepared_statement_handle)
            .await?;
        let result = match planned {
            Ok(planned) => affected_rows(planned, &sql).await,
            Err(e) => Err(e),
        };
        Tracker::new(
            Arc::clone(&self.engine),
            &session.database,
            &caller.user,
            &sql,
            started,
        )
        .finish(result.as_ref().err());
        result.map_err(|e| to_status(&e))
    }

    /// fedsql's own actions: the site protocol (`fedsql.site.poll`,
    /// `fedsql.site.reply`, see `crate::sites::protocol`). Sites
    /// authenticate with their site token, not a user login.
    async fn do_action_fallback(
        &self,
        request: Request<arrow_flight::Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        use crate::sites::protocol::{Hello, ReplyMessage, POLL_ACTION, REPLY_ACTION};
        let peer = request.remote_addr().map(|a| a.to_string());
        let action = request.into_inner();
        let refused = |e: crate::sites::registry::SiteError| {
            tracing::warn!(peer = ?peer, error = %e, "site refused");
            Status::unauthenticated(e.to_string())
        };
        let body = match action.r#type.as_str() {
            POLL_ACTION => {
                let hello: Hello = serde_json::from_slice(&action.body)
                    .map_err(|e| Status::invalid_argument(format!("bad site poll: {e}")))?;
                let task = self
                    .engine
                    .sites()
                    .poll(hello, peer.clone())
                    .await
                    .map_err(refused)?;
                serde_json::to_vec(&task).map_err(|e| Status::internal(e.to_string()))?
            }
            REPLY_ACTION => {
                let reply: ReplyMessage = serde_json::from_slice(&action.body)
                    .map_err(|e| Status::invalid_argument(format!("bad site reply: {e}")))?;
                self.engine.sites().reply(reply).map_err(refused)?;
                Vec::new()
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown action {other:?}"
                )))
            }
        };
        let result = arrow_flight::Result { body: body.into() };
        Ok(Response::new(Box::pin(stream::iter([Ok(result)]))))
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        let caller = self.auth.check(&request)?;
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).to_string();
        let mut prepared = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        if prepared
            .get(&handle)
            .is_some_and(|p| p.owner == caller.session_key)
        {
            prepared.remove(&handle);
        }
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_info(query, &schema, request)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (_, session) = self.session(&request)?;
        let mut builder = query.into_builder();
        for catalog in metadata::catalogs(&session.ctx) {
            builder.append(catalog);
        }
        Ok(Response::new(encode_batch(builder.build())))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(query, &schema, request)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (_, session) = self.session(&request)?;
        let mut builder = query.into_builder();
        metadata::db_schemas(&session.ctx, &mut builder);
        Ok(Response::new(encode_batch(builder.build())))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(query, &schema, request)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (_, session) = self.session(&request)?;
        let catalog = query.catalog.clone();
        let mut builder = query.into_builder();
        metadata::tables(&session.ctx, catalog.as_deref(), &mut builder)
            .await
            .map_err(Status::unavailable)?;
        Ok(Response::new(encode_batch(builder.build())))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = metadata::table_types_batch()
            .map_err(|e| Status::internal(e.to_string()))?
            .schema();
        self.metadata_info(query, &schema, request)
    }

    async fn do_get_table_types(
        &self,
        _query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.auth.check(&request)?;
        Ok(Response::new(encode_batch(metadata::table_types_batch())))
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(query, &metadata::primary_keys_schema(), request)
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.auth.check(&request)?;
        Ok(Response::new(encode_batch::<String>(Ok(
            metadata::primary_keys(),
        ))))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = metadata::sql_info().map_err(Status::internal)?;
        let schema = query.clone().into_builder(info).schema();
        self.metadata_info(query, &schema, request)
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.auth.check(&request)?;
        let info = metadata::sql_info().map_err(Status::internal)?;
        Ok(Response::new(encode_batch(
            query.into_builder(info).build(),
        )))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = metadata::xdbc_info().map_err(Status::internal)?;
        let schema = query.into_builder(info).schema();
        self.metadata_info(query, &schema, request)
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.auth.check(&request)?;
        let info = metadata::xdbc_info().map_err(Status::internal)?;
        Ok(Response::new(encode_batch(
            query.into_builder(info).build(),
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
