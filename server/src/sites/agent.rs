//! `fedsql site`: a process next to one site's data.
//!
//! It opens its own engine (its own sources and data dir), dials out to the
//! coordinator's Flight endpoint and long-polls it for tasks. For a training
//! run it checks the coordinator's query against its policy (`[site] allow`),
//! plans and runs it on its own catalog, and from then on only counts, sums,
//! weights and metrics leave it: the rows stay in this process. It never
//! runs DDL or any statement other than one query.
//!
//! A lost coordinator or link is retried with exponential backoff (1 s to
//! 30 s); a refused token is logged with the coordinator's reason and
//! retried the same way, so fixing the coordinator's side is enough.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::Action;
use base64::Engine as _;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{ResolvedTableReference, TableReference};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use fedsql_udfs::client::{profile, rows_with_target, InputColumns, LocalClient, TrainingClient};
use fedsql_udfs::evaluate::EvalStats;
use fedsql_udfs::exchange::ExchangeClient;
use fedsql_udfs::registry::LoadedModel;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use super::analytics::TablePolicies;
use super::protocol::{
    Envelope, Hello, OfferedTable, Reply, ReplyMessage, Task, POLL_ACTION, REPLY_ACTION,
};
use crate::config::{Settings, SitePolicy};
use crate::engine::Engine;
use crate::error::{Result, ServerError};

/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Encodes `schema` as an Arrow IPC stream without batches, in base64.
pub fn encode_schema(schema: &Schema) -> std::result::Result<String, String> {
    let mut writer = StreamWriter::try_new(Vec::new(), schema).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    let bytes = writer.into_inner().map_err(|e| e.to_string())?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Encodes `batch` as an Arrow IPC stream, in base64.
pub fn encode_batch(
    batch: &datafusion::arrow::array::RecordBatch,
) -> std::result::Result<String, String> {
    let mut writer =
        StreamWriter::try_new(Vec::new(), &batch.schema()).map_err(|e| e.to_string())?;
    writer.write(batch).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    let bytes = writer.into_inner().map_err(|e| e.to_string())?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Decodes what [`encode_batch`] made.
pub fn decode_batches(
    text: &str,
) -> std::result::Result<(SchemaRef, Vec<datafusion::arrow::array::RecordBatch>), String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| e.to_string())?;
    let reader = StreamReader::try_new(Cursor::new(bytes), None).map_err(|e| e.to_string())?;
    let schema = reader.schema();
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok((schema, batches))
}

/// Runs `plan` and returns its rows as one batch.
async fn collect(
    ctx: &SessionContext,
    plan: LogicalPlan,
) -> std::result::Result<datafusion::arrow::array::RecordBatch, String> {
    let frame = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(|e| e.to_string())?;
    let schema = Arc::clone(frame.schema().inner());
    let batches = frame.collect().await.map_err(|e| e.to_string())?;
    concat_batches(&schema, &batches).map_err(|e| e.to_string())
}

/// The most an analytics reply may carry (base64 text), under the 4 MiB a
/// Flight request may have.
const MAX_ROWS_REPLY: usize = 3 << 20;

/// Decodes what [`encode_schema`] made.
pub fn decode_schema(text: &str) -> std::result::Result<SchemaRef, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| e.to_string())?;
    let reader = StreamReader::try_new(Cursor::new(bytes), None).map_err(|e| e.to_string())?;
    Ok(reader.schema())
}

/// What a site holds for one training run.
struct Run {
    batch: datafusion::arrow::array::RecordBatch,
    columns: InputColumns,
    client: Option<Arc<LocalClient>>,
}

/// A running site.
struct Site {
    name: String,
    token: String,
    session: String,
    engine: Arc<Engine>,
    database: String,
    /// `[site] allow`, resolved against `database`.
    allowed: Vec<ResolvedTableReference>,
    /// `[[site.analytics]]`: what analytics queries may take, per table.
    policies: TablePolicies,
    /// `[site] privacy_budget`, for tables answered with `dp_epsilon`.
    budget: Option<super::budget::PrivacyBudget>,
    runs: Mutex<HashMap<String, Run>>,
    /// `[site] coordinator_ca`'s PEM: what the weight exchange's TLS is
    /// verified with, as the coordinator link's is.
    coordinator_ca: Option<Arc<Vec<u8>>>,
}

/// A test hook: a site with this variable set to a number sends that
/// multiple of its real updates, as a poisoning attacker would (robust
/// strategies are tested against it).
const ATTACK_VAR: &str = "FEDSQL_DEBUG_ATTACK_SCALE";

/// A test hook: a site with this variable set to a round number exits in
/// that securely aggregated round after it shared its keys — the dropout
/// that SecAgg must unmask away.
const EXIT_AFTER_SHARES_VAR: &str = "FEDSQL_DEBUG_EXIT_AFTER_SHARES";

/// Runs `fedsql site` until Ctrl-C or SIGTERM.
/// Runs `fedsql site` until Ctrl-C or SIGTERM. With `pg_listen`, the site
/// also serves its own catalog over the Postgres wire there, so its admin
/// can `CREATE SOURCE` (persisted in the site's data dir) and query what
/// the site holds; the coordinator never reaches that port.
pub async fn run_site(
    settings: Settings,
    name: String,
    coordinator: String,
    pg_listen: Option<std::net::SocketAddr>,
) -> Result<()> {
    let policy = settings.site.clone().ok_or_else(|| {
        ServerError::Config(
            "fedsql site needs a [site] section in its config: token_env and allow".into(),
        )
    })?;
    let token_env = policy.token_env.clone().ok_or_else(|| {
        ServerError::Config("[site] token_env: the variable holding this site's token".into())
    })?;
    let token = std::env::var(&token_env).map_err(|_| {
        ServerError::Config(format!(
            "environment variable {token_env} (token_env) is not set"
        ))
    })?;
    let channel = channel(&coordinator, &policy)?;
    let pg = match pg_listen {
        Some(listen) => {
            let accounts = crate::accounts::Accounts::from_settings(&settings)?;
            Some(crate::serve::PgListener::prepare(
                &settings, &accounts, listen,
            )?)
        }
        None => None,
    };
    let budget = match policy.privacy_budget {
        Some(total) if total >= 0.0 && total.is_finite() => Some(
            super::budget::PrivacyBudget::open(&settings.data_dir, total)
                .map_err(ServerError::Config)?,
        ),
        Some(_) => {
            return Err(ServerError::Config(
                "[site] privacy_budget must be a non-negative number".into(),
            ))
        }
        None => None,
    };
    let engine = Engine::open(settings).await?;
    let pg = match pg {
        Some(pg) => Some(pg.bind(&engine).await?),
        None => None,
    };
    let database = policy
        .database
        .clone()
        .unwrap_or_else(|| engine.default_database().to_string());
    let allowed: Vec<ResolvedTableReference> = policy
        .allow
        .iter()
        .map(|t| TableReference::from(t.as_str()).resolve(&database, "public"))
        .collect();
    let mut analytics = HashMap::new();
    let mut bounds = HashMap::new();
    for rule in &policy.analytics {
        let table = TableReference::from(rule.table.as_str()).resolve(&database, "public");
        if !allowed.contains(&table) {
            return Err(ServerError::Config(format!(
                "[[site.analytics]] table {table} is not in [site] allow: a coordinator can \
                 only see tables the site allows"
            )));
        }
        if let Some(epsilon) = rule.dp_epsilon {
            if !(epsilon > 0.0 && epsilon.is_finite())
                || rule.policy != crate::config::AnalyticsKind::Aggregates
            {
                return Err(ServerError::Config(format!(
                    "[[site.analytics]] {table}: dp_epsilon must be a positive number, on an \
                     aggregates table"
                )));
            }
            if policy.privacy_budget.is_none() {
                return Err(ServerError::Config(format!(
                    "[[site.analytics]] {table} sets dp_epsilon: set [site] privacy_budget, the \
                     total epsilon this site may spend"
                )));
            }
        }
        if let Some([low, high]) = rule.dp_bounds {
            if !(low <= high && low.is_finite() && high.is_finite()) {
                return Err(ServerError::Config(format!(
                    "[[site.analytics]] {table}: dp_bounds must be [low, high] with low <= high"
                )));
            }
            bounds.insert(table.clone(), (low, high));
        }
        analytics.insert(table, rule.policy());
    }
    let coordinator_ca = match &policy.coordinator_ca {
        Some(path) => Some(Arc::new(
            std::fs::read(path).map_err(|e| ServerError::io(path, e))?,
        )),
        None => None,
    };
    let policies = TablePolicies::new(&name, &database, analytics).with_bounds(bounds);
    let site = Arc::new(Site {
        name,
        token,
        session: crate::flight::random_hex(12),
        engine,
        database,
        policies,
        budget,
        allowed,
        runs: Mutex::new(HashMap::new()),
        coordinator_ca,
    });
    println!(
        "fedsql site {} ({}) polling coordinator {coordinator}",
        site.name,
        env!("CARGO_PKG_VERSION")
    );
    let local = async {
        match pg {
            Some(pg) => {
                println!("  postgres wire  {} ({})", pg.bound, pg.note);
                pg.serve().await
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = poll_forever(Arc::clone(&site), channel) => Ok(()),
        () = local => Ok(()),
        () = crate::serve::shutdown_signal() => {
            println!("fedsql site: shutting down");
            Ok(())
        }
    }
}

/// A lazily connecting channel to the coordinator (`http://` or, with TLS,
/// `https://`; `grpc://` and `grpc+tls://` are read the same way).
fn channel(coordinator: &str, policy: &SitePolicy) -> Result<Channel> {
    let url = coordinator
        .replacen("grpc+tls://", "https://", 1)
        .replacen("grpc://", "http://", 1);
    let mut endpoint = Channel::from_shared(url.clone())
        .map_err(|e| ServerError::Config(format!("coordinator URL {coordinator}: {e}")))?
        .connect_timeout(Duration::from_secs(10));
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = &policy.coordinator_ca {
            let pem = std::fs::read(ca).map_err(|e| ServerError::io(ca, e))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| ServerError::Config(format!("coordinator TLS: {e}")))?;
    }
    Ok(endpoint.connect_lazy())
}

async fn poll_forever(site: Arc<Site>, channel: Channel) {
    let mut client = FlightServiceClient::new(channel);
    let mut backoff = Duration::from_secs(1);
    let mut connected = false;
    loop {
        let hello = Hello {
            site: site.name.clone(),
            token: site.token.clone(),
            session: site.session.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            tables: site.offered_tables().await,
        };
        match action(&mut client, POLL_ACTION, &hello).await {
            Ok(body) => {
                if !connected {
                    tracing::info!(site = %site.name, "connected to the coordinator");
                    connected = true;
                }
                backoff = Duration::from_secs(1);
                match serde_json::from_slice::<Option<Envelope>>(&body) {
                    Ok(Some(envelope)) => {
                        let (site, reply_client) = (Arc::clone(&site), client.clone());
                        tokio::spawn(async move { site.answer(envelope, reply_client).await });
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "unreadable task from the coordinator"),
                }
            }
            Err(status) => {
                connected = false;
                if status.code() == tonic::Code::Unauthenticated {
                    tracing::error!(
                        site = %site.name,
                        "the coordinator refused this site: {}",
                        status.message()
                    );
                } else {
                    tracing::warn!(
                        site = %site.name,
                        "coordinator unreachable ({}); retrying in {backoff:?}",
                        status.message()
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One action call; returns the first result's body.
async fn action(
    client: &mut FlightServiceClient<Channel>,
    kind: &str,
    body: &impl serde::Serialize,
) -> std::result::Result<Vec<u8>, tonic::Status> {
    let body = serde_json::to_vec(body).map_err(|e| tonic::Status::internal(e.to_string()))?;
    let request = tonic::Request::new(Action {
        r#type: kind.to_string(),
        body: body.into(),
    });
    let mut results = client.do_action(request).await?.into_inner();
    match results.message().await? {
        Some(result) => Ok(result.body.to_vec()),
        None => Ok(Vec::new()),
    }
}

impl Site {
    /// Names and column types of the tables the policy allows.
    async fn offered_tables(&self) -> Vec<OfferedTable> {
        let Ok(ctx) = self.engine.session_context(&self.database) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for table in &self.allowed {
            let reference = TableReference::full(
                table.catalog.as_ref(),
                table.schema.as_ref(),
                table.table.as_ref(),
            );
            if let Ok(provider) = ctx.table_provider(reference).await {
                let schema = provider.schema();
                out.push(OfferedTable {
                    name: table.to_string(),
                    columns: schema
                        .fields()
                        .iter()
                        .map(|f| (f.name().clone(), f.data_type().to_string()))
                        .collect(),
                    schema: encode_schema(&schema).ok(),
                    analytics: self.policies.of(table),
                });
            }
        }
        out
    }

    async fn answer(&self, envelope: Envelope, mut client: FlightServiceClient<Channel>) {
        let reply = match self.handle(envelope.task).await {
            Ok(reply) => reply,
            Err(message) => {
                tracing::warn!(site = %self.name, "task failed: {message}");
                Reply::Failed { message }
            }
        };
        let message = ReplyMessage {
            site: self.name.clone(),
            token: self.token.clone(),
            id: envelope.id,
            reply,
        };
        if let Err(e) = action(&mut client, REPLY_ACTION, &message).await {
            tracing::warn!(site = %self.name, "could not answer the coordinator: {}", e.message());
        }
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Run>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn client(&self, run: &str) -> std::result::Result<Arc<LocalClient>, String> {
        self.runs()
            .get(run)
            .and_then(|r| r.client.clone())
            .ok_or_else(|| format!("run {run} is not set up at this site"))
    }

    async fn handle(&self, mut task: Task) -> std::result::Result<Reply, String> {
        // The exchange is verified with the site's own trust, never with
        // anything the coordinator sends.
        if let Task::Train { exchange, .. }
        | Task::Evaluate { exchange, .. }
        | Task::Score { exchange, .. } = &mut task
        {
            exchange.local_endpoint = None;
            exchange.trusted_ca = self.coordinator_ca.clone();
        }
        match task {
            Task::Prepare { run, query, spec } => {
                let batch = self.read(&query).await?;
                let columns =
                    InputColumns::resolve(&batch.schema(), &spec).map_err(|e| e.to_string())?;
                let batch = rows_with_target(&batch, &columns).map_err(|e| e.to_string())?;
                let profile = profile(&batch, &columns).map_err(|e| e.to_string())?;
                let schema = encode_schema(&batch.schema())?;
                tracing::info!(site = %self.name, %run, rows = batch.num_rows(), "prepared a training run");
                self.runs().insert(
                    run,
                    Run {
                        batch,
                        columns,
                        client: None,
                    },
                );
                Ok(Reply::Prepared { schema, profile })
            }
            Task::Setup {
                run,
                encoding,
                split_seed,
            } => {
                let mut runs = self.runs();
                let state = runs
                    .get_mut(&run)
                    .ok_or_else(|| format!("run {run} was not prepared at this site"))?;
                let client = LocalClient::from_rows(
                    self.name.clone(),
                    &state.batch,
                    &state.columns,
                    &encoding,
                    split_seed,
                )
                .map_err(|e| e.to_string())?;
                // The poisoning test's attacker (never set in production).
                let client = match std::env::var(ATTACK_VAR).ok().and_then(|v| v.parse().ok()) {
                    Some(scale) => {
                        tracing::warn!(site = %self.name, scale, "{ATTACK_VAR} set: this site sends scaled updates");
                        client.scaling_updates(scale)
                    }
                    None => client,
                };
                state.client = Some(Arc::new(client));
                Ok(Reply::Ready)
            }
            Task::Train {
                run,
                round,
                exchange,
                arch,
                config,
                secure,
            } => {
                let client = self.client(&run)?;
                tracing::info!(site = %self.name, %run, round, secure, exchange = %exchange.endpoint, "training a round");
                if !secure {
                    let fetched = client
                        .train(round, &exchange, &arch, config, false)
                        .await
                        .map_err(|e| e.to_string())?;
                    return Ok(Reply::Trained { fetched });
                }
                // The dropout test's site dies after sharing its keys.
                let dies = std::env::var(EXIT_AFTER_SHARES_VAR).ok() == Some(round.to_string());
                let trained = client
                    .train_secure(round, &exchange, &arch, config, dies)
                    .await;
                if dies {
                    tracing::warn!(site = %self.name, round, "{EXIT_AFTER_SHARES_VAR} set: this site exits after sharing its keys");
                    std::process::exit(3);
                }
                let fetched = trained.map_err(|e| e.to_string())?;
                Ok(Reply::Trained { fetched })
            }
            Task::Evaluate {
                run,
                key,
                exchange,
                arch,
            } => {
                let client = self.client(&run)?;
                let (metrics, moments) = client
                    .evaluate_published(key, &exchange, &arch)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Reply::Evaluated { metrics, moments })
            }
            Task::Finish { run } => {
                self.runs().remove(&run);
                Ok(Reply::Done)
            }
            Task::Query { sql } => Ok(self.query(&sql).await),
            Task::Score {
                query,
                model,
                exchange,
                key,
            } => {
                let batch = self.read(&query).await?;
                let mut link = ExchangeClient::connect(&exchange)
                    .await
                    .map_err(|e| e.to_string())?;
                let (weights, _) = link.fetch(key).await.map_err(|e| e.to_string())?;
                let model = LoadedModel {
                    meta: *model,
                    weights,
                };
                let stats = EvalStats::of_rows(&model, &batch).map_err(|e| e.to_string())?;
                Ok(Reply::Scored { stats })
            }
        }
    }

    /// Plans the coordinator's `query` (exactly one query, no DDL or other
    /// statement) on this site's catalog.
    async fn plan(
        &self,
        query: &str,
    ) -> std::result::Result<(SessionContext, LogicalPlan), String> {
        let statements = self.engine.parse(query).map_err(|e| e.to_string())?;
        let text = match statements.as_slice() {
            [fedsql_sql::Statement::Sql { text, .. }] => text.clone(),
            _ => {
                return Err(format!(
                    "site {} runs exactly one query for a coordinator, not: {query}",
                    self.name
                ))
            }
        };
        let ctx: SessionContext = self
            .engine
            .session_context(&self.database)
            .map_err(|e| e.to_string())?;
        let plan = self
            .engine
            .plan_sql(&ctx, &text)
            .await
            .map_err(|e| e.to_string())?;
        if matches!(
            plan,
            LogicalPlan::Ddl(_)
                | LogicalPlan::Dml(_)
                | LogicalPlan::Copy(_)
                | LogicalPlan::Statement(_)
                | LogicalPlan::DescribeTable(_)
                | LogicalPlan::Explain(_)
                | LogicalPlan::Analyze(_)
        ) {
            return Err(format!(
                "site {} runs only queries for a coordinator, not: {text}",
                self.name
            ));
        }
        Ok((ctx, plan))
    }

    /// `sql` with the coordinator's names for this site's tables
    /// (`site_<name>.<schema>.<table>`) in this site's (`<database>.…`).
    fn own_names(&self, sql: &str) -> std::result::Result<String, String> {
        use datafusion::sql::sqlparser::ast::{visit_relations_mut, Ident, ObjectNamePart};
        use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
        use datafusion::sql::sqlparser::parser::Parser;
        let coordinator_name = super::catalog::site_catalog_name(&self.name);
        let mut statements =
            Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| e.to_string())?;
        let _ = visit_relations_mut(&mut statements, |name| {
            if let [ObjectNamePart::Identifier(catalog), _, _] = name.0.as_mut_slice() {
                if catalog.value == coordinator_name {
                    *catalog = Ident::with_quote('"', self.database.as_str());
                }
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
        Ok(statements
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("; "))
    }

    /// Runs the coordinator's training or evaluation query on this site's
    /// catalog, if the policy allows every table it reads.
    async fn read(
        &self,
        query: &str,
    ) -> std::result::Result<datafusion::arrow::array::RecordBatch, String> {
        let (ctx, plan) = self.plan(query).await?;
        self.check_policy(&plan)?;
        collect(&ctx, plan).await
    }

    /// Answers an analytics query inside each table's analytics policy
    /// (see [`super::analytics`]), and records it in the site's
    /// `fedsql.system.queries` (protocol `coordinator`).
    async fn query(&self, sql: &str) -> Reply {
        let started = std::time::SystemTime::now();
        let clock = std::time::Instant::now();
        let reply = self.answer_query(sql).await;
        // The site's own audit trail (`fedsql.system.queries` on its
        // `--pg-listen` port): what its coordinator asked, and the answer.
        let (query, error) = match &reply {
            Reply::Rows {
                suppressed,
                epsilon,
                ..
            } if *suppressed > 0 || epsilon.is_some() => {
                let mut notes = Vec::new();
                if *suppressed > 0 {
                    notes.push(format!(
                        "{suppressed} group(s) suppressed by min_group_size"
                    ));
                }
                if let Some(epsilon) = epsilon {
                    notes.push(format!("differentially private, epsilon {epsilon} spent"));
                }
                (format!("{sql} -- {}", notes.join("; ")), None)
            }
            Reply::Refused { message } => (sql.to_string(), Some(("42501", message.clone()))),
            Reply::Failed { message } => (sql.to_string(), Some(("42000", message.clone()))),
            _ => (sql.to_string(), None),
        };
        self.engine.queries().record(crate::query_log::Finished {
            started,
            elapsed: clock.elapsed(),
            database: &self.database,
            user: "coordinator",
            protocol: "coordinator",
            query: &query,
            error,
            received: None,
        });
        reply
    }

    async fn answer_query(&self, sql: &str) -> Reply {
        let failed = |message: String| {
            tracing::warn!(site = %self.name, "analytics query failed: {message}");
            Reply::Failed { message }
        };
        let sql = match self.own_names(sql) {
            Ok(sql) => sql,
            Err(message) => return failed(message),
        };
        let (ctx, plan) = match self.plan(&sql).await {
            Ok(planned) => planned,
            Err(message) => return failed(message),
        };
        let guarded = match self.policies.guard(plan) {
            Ok(guarded) => guarded,
            Err(message) => {
                tracing::warn!(site = %self.name, "refused an analytics query: {message}");
                return Reply::Refused { message };
            }
        };
        // A private answer is paid for before it runs: one that fails
        // after its noise was drawn must not be retried for free.
        let mut privacy = None;
        if let Some(epsilon) = guarded.epsilon {
            let Some(budget) = &self.budget else {
                return Reply::Refused {
                    message: format!(
                        "site {}: dp_epsilon is set but [site] privacy_budget is not",
                        self.name
                    ),
                };
            };
            match budget.spend(epsilon) {
                Ok(left) => privacy = Some((epsilon, left)),
                Err(message) => {
                    return Reply::Refused {
                        message: format!("site {}: {message}", self.name),
                    }
                }
            }
        }
        let batch = match collect(&ctx, guarded.plan).await {
            Ok(batch) => batch,
            Err(message) => return failed(message),
        };
        let suppressed = guarded
            .suppressed
            .load(std::sync::atomic::Ordering::Relaxed);
        let batches = match encode_batch(&batch) {
            Ok(batches) => batches,
            Err(message) => return failed(message),
        };
        if batches.len() > MAX_ROWS_REPLY {
            return failed(format!(
                "site {}: the result ({} rows, {} bytes encoded) is larger than the {} bytes a \
                 reply may carry; aggregate or filter it further",
                self.name,
                batch.num_rows(),
                batches.len(),
                MAX_ROWS_REPLY
            ));
        }
        tracing::info!(site = %self.name, rows = batch.num_rows(), suppressed, "answered an analytics query");
        Reply::Rows {
            batches,
            suppressed,
            epsilon: privacy.map(|(e, _)| e),
            budget_left: privacy.map(|(_, left)| left),
        }
    }

    /// Every table the plan reads, subqueries included, must be allowed.
    fn check_policy(&self, plan: &LogicalPlan) -> std::result::Result<(), String> {
        let mut refused = None;
        let walked = plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                let table = scan.table_name.clone().resolve(&self.database, "public");
                if !self.allowed.contains(&table) {
                    refused = Some(table);
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
            Ok(TreeNodeRecursion::Continue)
        });
        walked.map_err(|e| e.to_string())?;
        match refused {
            None => Ok(()),
            Some(table) => {
                let allowed: Vec<String> = self.allowed.iter().map(|t| t.to_string()).collect();
                Err(format!(
                    "site {} refuses to read {table}: its policy allows only [{}]",
                    self.name,
                    allowed.join(", ")
                ))
            }
        }
    }
}
