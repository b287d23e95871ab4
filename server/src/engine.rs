//! The engine: the catalogs every session shares, the persisted catalog state,
//! the query log, and the execution of fedsql's own statements.
//!
//! A Postgres database is a fedsql catalog: a session opened on database
//! `demo` resolves unqualified names in catalog `demo`, schema `public`, and
//! reaches every other catalog by three-part names.

use fedsql_udfs::checkpoint::now_us;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider, SchemaProvider,
};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{ObjectName, ObjectNamePart, ObjectType, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use fedsql_connectors::demo::{open_demo_catalog, DemoManifest, DEMO_CATALOG};
use fedsql_connectors::kafka::{open_kafka_catalog, KafkaTableFactory};
use fedsql_connectors::odbc::open_odbc_catalog;
use fedsql_connectors::postgres::open_postgres_catalog;
use fedsql_connectors::pushdown::{FedsqlOptions, PolicyFederationRule};
use fedsql_connectors::RemoteQueryObserver;
use fedsql_sql::{FedsqlStatement, SourceKind};

use crate::catalog_store::{
    CatalogState, CatalogStore, EncoderEntry, SiteEntry, SourceEntry, ViewEntry,
};
use crate::config::Settings;
use crate::error::{Result, ServerError};
use crate::front::Planned;
use crate::model_tables;
use crate::query_log::QueryLog;
use crate::sites::{SiteCredential, SiteRegistry};
use crate::system_tables::{self, SystemTable};
use datafusion::logical_expr::ScalarUDF;
use fedsql_udfs::embed::{CosineUdf, EmbedUdf, TokenizeUdf};
use fedsql_udfs::predict::{Output, PredictTable, PredictUdf};
use fedsql_udfs::registry::ModelRegistry;

/// The built-in catalog holding `fedsql.system.*`.
pub const SYSTEM_CATALOG: &str = "fedsql";

/// What running a fedsql statement produced.
#[derive(Debug, Clone, PartialEq)]
pub enum FedsqlOutcome {
    /// The statement is answered by this SQL over the system tables, so both
    /// wires describe and stream it like any query.
    Query(String),
    /// The statement changed state; the text is the command tag.
    Command(String),
}

/// The result of one statement run by [`Engine::run`].
#[derive(Debug)]
pub enum StatementResult {
    /// Rows, fully collected.
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    },
    /// A command tag such as `CREATE VIEW`.
    Command(String),
}

/// Sessions by database, made once for a batch of statements (replaying
/// or re-planning views): making one costs more than planning a view.
#[derive(Default)]
struct Sessions(std::collections::HashMap<String, SessionContext>);

impl Sessions {
    fn of(&mut self, engine: &Engine, database: &str) -> Result<SessionContext> {
        if let Some(ctx) = self.0.get(database) {
            return Ok(ctx.clone());
        }
        let ctx = engine.session_context(database)?;
        self.0.insert(database.to_string(), ctx.clone());
        Ok(ctx)
    }
}

/// Loads a sentence encoder into the process's table, off the async
/// workers (reading and converting ~100 MB of weights).
async fn load_encoder(name: &str, dir: PathBuf) -> fedsql_udfs::Result<()> {
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        fedsql_udfs::encoder::encoders()
            .register(&name, &dir)
            .map(|_| ())
    })
    .await
    .map_err(|e| fedsql_udfs::UdfError::Training(format!("loading the encoder: {e}")))?
}

/// Shared state of a running fedsql.
pub struct Engine {
    settings: Settings,
    catalogs: Arc<MemoryCatalogProviderList>,
    runtime: Arc<RuntimeEnv>,
    store: CatalogStore,
    /// Guards the persisted state; held across the save so writes never
    /// interleave.
    state: Arc<Mutex<CatalogState>>,
    queries: Arc<QueryLog>,
    demo: Option<DemoManifest>,
    models: Arc<ModelRegistry>,
    sites: Arc<SiteRegistry>,
    logins: crate::accounts::LoginThrottle,
    /// The weight exchange every training run of this process opens a run
    /// on; started with the first run.
    exchange: tokio::sync::OnceCell<fedsql_udfs::exchange::ExchangeListener>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("data_dir", &self.settings.data_dir)
            .finish()
    }
}

impl Engine {
    /// Opens the data dir, loads the demo catalog (generating it on first
    /// start) and replays persisted views.
    pub async fn open(settings: Settings) -> Result<Arc<Engine>> {
        std::fs::create_dir_all(&settings.data_dir)
            .map_err(|e| ServerError::io(&settings.data_dir, e))?;
        let catalogs = Arc::new(MemoryCatalogProviderList::new());

        let demo = if settings.demo {
            let data_dir = settings.data_dir.clone();
            let scale = settings.demo_scale;
            // Generation is CPU-bound: keep it off the async workers.
            let (catalog, manifest) =
                tokio::task::spawn_blocking(move || open_demo_catalog(&data_dir, scale))
                    .await
                    .map_err(|e| ServerError::Config(format!("demo generation failed: {e}")))??;
            catalogs.register_catalog(DEMO_CATALOG.to_string(), catalog);
            Some(manifest)
        } else {
            None
        };

        let store = CatalogStore::new(&settings.data_dir);
        let state = Arc::new(Mutex::new(store.load()?));
        let queries = Arc::new(QueryLog::default());
        let models = Arc::new(ModelRegistry::open(&settings.data_dir));
        let sites = Arc::new(SiteRegistry::default());
        for site in &state.lock().unwrap_or_else(|p| p.into_inner()).sites {
            sites.define(&site.name, site.credential.clone());
        }
        for site in &settings.sites {
            let token = std::env::var(&site.token_env).map_err(|_| {
                ServerError::Config(format!(
                    "site {}: environment variable {} (token_env) is not set",
                    site.name, site.token_env
                ))
            })?;
            sites.define(&site.name, SiteCredential::new(&token));
        }
        catalogs.register_catalog(
            SYSTEM_CATALOG.to_string(),
            system_catalog(
                Arc::clone(&state),
                Arc::clone(&queries),
                Arc::clone(&models),
                Arc::clone(&sites),
            )?,
        );

        let engine = Arc::new(Engine {
            settings,
            catalogs,
            runtime: Arc::new(RuntimeEnv::default()),
            store,
            state,
            queries,
            demo,
            models,
            sites,
            logins: crate::accounts::LoginThrottle::default(),
            exchange: tokio::sync::OnceCell::new(),
        });
        for site in engine.sites.names() {
            engine.register_site_catalog(&site);
        }
        engine.catalogs.register_catalog(
            crate::sites::catalog::SITES_CATALOG.to_string(),
            Arc::new(crate::sites::catalog::SitesCatalog::new(
                Arc::clone(&engine.sites),
                Some(engine.observer()),
            )),
        );
        engine.open_encoders().await?;
        engine.open_sources().await?;
        engine.replay_views().await?;
        Ok(engine)
    }

    /// The resolved settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The demo catalog's manifest, when the demo is loaded.
    pub fn demo_manifest(&self) -> Option<&DemoManifest> {
        self.demo.as_ref()
    }

    /// The model registry.
    pub fn models(&self) -> &ModelRegistry {
        &self.models
    }

    /// The back-off on failed logins, for both wires.
    pub fn logins(&self) -> &crate::accounts::LoginThrottle {
        &self.logins
    }

    /// The sites that may connect to this coordinator.
    pub fn sites(&self) -> &Arc<SiteRegistry> {
        &self.sites
    }

    /// The weight exchange's listener, started on first use.
    pub(crate) fn exchange(
        &self,
    ) -> &tokio::sync::OnceCell<fedsql_udfs::exchange::ExchangeListener> {
        &self.exchange
    }

    /// The recent-query log behind `fedsql.system.queries`.
    pub fn queries(&self) -> &QueryLog {
        &self.queries
    }

    /// The database a client lands in when it names none it knows:
    /// `demo` when loaded, else `fedsql`.
    pub fn default_database(&self) -> &'static str {
        if self.demo.is_some() {
            DEMO_CATALOG
        } else {
            SYSTEM_CATALOG
        }
    }

    /// All databases (catalogs), sorted.
    pub fn databases(&self) -> Vec<String> {
        let mut names = self.catalogs.catalog_names();
        names.sort();
        names
    }

    /// Maps the database a client asked for to a catalog. `postgres` (what
    /// many tools assume exists) means the default database.
    pub fn resolve_database(&self, requested: Option<&str>) -> Result<String> {
        match requested {
            None | Some("") | Some("postgres") => Ok(self.default_database().to_string()),
            Some(name) if self.catalogs.catalog(name).is_some() => Ok(name.to_string()),
            Some(name) => Err(ServerError::UnknownDatabase {
                name: name.to_string(),
                available: self.databases().join(", "),
            }),
        }
    }

    /// A new session whose default catalog is `database`.
    ///
    /// Sessions share catalogs and the runtime (memory pool, object stores)
    /// but not settings, so one client's `SET` does not leak into another's.
    pub fn session_context(&self, database: &str) -> Result<SessionContext> {
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(database, "public")
            .with_option_extension(FedsqlOptions::default());
        // A hash join hands its build side's keys to the probe-side scan as a
        // list (which fedsql sends to the source as `IN (…)`, see
        // `join_filter.rs`) only up to this many distinct values; DataFusion's
        // 150 suits local files, but a remote row not sent is worth far more:
        // at 10,000 (join_filter's own cap) the TPC-H split's sources send
        // 18% fewer rows than without filters at SF1 (8% at 150) and the 22
        // queries take 60.6 s instead of 69.1 s, release build
        // (`bench/tpch.sh 1 --rows-moved --inlist-max 10000`).
        config
            .options_mut()
            .optimizer
            .hash_join_inlist_pushdown_max_distinct_values = 10_000;
        // DataFusion 55 refuses to aggregate an input whose physical schema
        // says a column is nullable where the logical one says not (a
        // `COALESCE((SELECT …), 35)` decorrelated into an outer join, in a
        // UNION: "Physical input schema should be the same as the one
        // converted from logical input schema", found by the fuzzer). The
        // check compares nullability only for this; the values are right.
        config
            .options_mut()
            .execution
            .skip_physical_aggregate_schema_check = true;
        let catalogs: Arc<dyn CatalogProviderList> = Arc::clone(&self.catalogs) as _;
        // Federation: whole subplans over one source become one remote query.
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(Arc::clone(&self.runtime))
            .with_catalog_list(catalogs)
            .with_optimizer_rules(PolicyFederationRule::optimizer_rules())
            .with_query_planner(Arc::new(datafusion_federation::FederatedQueryPlanner::new()))
            .with_default_features()
            .with_table_factory(
                "KAFKA".to_string(),
                Arc::new(KafkaTableFactory::new(Some(self.observer()))),
            )
            .build();
        let ctx = SessionContext::new_with_state(state);
        setup_pg_catalog(&ctx, database, EmptyContextProvider)
            .map_err(|e| ServerError::from_datafusion(&e, ""))?;
        crate::pg_catalog_scope::scope_pg_catalog(&ctx, database)
            .map_err(|e| ServerError::from_datafusion(&e, ""))?;
        crate::pg_compat::register_functions(&ctx);
        crate::debug_panic::register(&ctx);
        ctx.register_udtf(
            "predict_table",
            Arc::new(PredictTable::new(Arc::clone(&self.models))),
        );
        ctx.register_udf(ScalarUDF::new_from_impl(EmbedUdf::default()));
        ctx.register_udf(ScalarUDF::new_from_impl(TokenizeUdf::default()));
        for distance in [false, true] {
            ctx.register_udf(ScalarUDF::new_from_impl(CosineUdf::new(distance)));
        }
        for output in [Output::Value, Output::Probability] {
            ctx.register_udf(ScalarUDF::new_from_impl(PredictUdf::new(
                Arc::clone(&self.models),
                output,
            )));
        }
        Ok(ctx)
    }

    /// Runs one fedsql statement in the session `ctx` (statements that read
    /// data, such as `TRAIN MODEL`, plan their input there).
    pub async fn execute_fedsql(
        &self,
        ctx: &SessionContext,
        statement: &FedsqlStatement,
    ) -> Result<FedsqlOutcome> {
        match statement {
            FedsqlStatement::ShowSources => Ok(FedsqlOutcome::Query(
                "SELECT name, type, options, created_at FROM fedsql.system.sources ORDER BY name"
                    .to_string(),
            )),
            FedsqlStatement::CreateSource(create) => {
                let exists = self
                    .lock_state()
                    .sources
                    .iter()
                    .any(|s| s.name == create.name)
                    || self.catalogs.catalog(&create.name).is_some();
                if exists {
                    if create.if_not_exists {
                        return Ok(FedsqlOutcome::Command("CREATE SOURCE".into()));
                    }
                    return Err(ServerError::DuplicateObject {
                        kind: "source or catalog",
                        name: create.name.clone(),
                    });
                }
                let entry = SourceEntry {
                    name: create.name.clone(),
                    kind: create.kind.as_str().to_string(),
                    options: create
                        .options
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_text()))
                        .collect(),
                    created_at_us: now_us(),
                };
                let catalog = open_source(&entry, self.observer()).await?;
                let mut state = self.lock_state();
                let mut next = state.clone();
                next.sources.push(entry);
                self.store.save(&next)?;
                *state = next;
                self.catalogs.register_catalog(create.name.clone(), catalog);
                Ok(FedsqlOutcome::Command("CREATE SOURCE".into()))
            }
            FedsqlStatement::RefreshSource { name } => {
                // Declared by CREATE SOURCE or in the config file.
                let entry = self
                    .lock_state()
                    .sources
                    .iter()
                    .find(|s| &s.name == name)
                    .cloned()
                    .or_else(|| self.config_source(name));
                let Some(entry) = entry else {
                    return Err(ServerError::UndefinedObject {
                        kind: "source",
                        name: name.clone(),
                    });
                };
                // Discovered anew, then swapped in whole: queries planned
                // meanwhile see the old tables or the new, never a mix.
                let catalog = open_source(&entry, self.observer()).await?;
                self.catalogs.register_catalog(name.clone(), catalog);
                Ok(FedsqlOutcome::Command("REFRESH SOURCE".into()))
            }
            FedsqlStatement::DropSource { name, if_exists } => {
                if [DEMO_CATALOG, SYSTEM_CATALOG].contains(&name.as_str()) {
                    return Err(ServerError::NotSupported {
                        statement: "DROP SOURCE".into(),
                        reason: format!("\"{name}\" is a built-in catalog, not a source"),
                    });
                }
                let mut state = self.lock_state();
                let Some(pos) = state.sources.iter().position(|s| &s.name == name) else {
                    if *if_exists {
                        return Ok(FedsqlOutcome::Command("DROP SOURCE".into()));
                    }
                    return Err(ServerError::UndefinedObject {
                        kind: "source",
                        name: name.clone(),
                    });
                };
                let mut next = state.clone();
                next.sources.remove(pos);
                self.store.save(&next)?;
                *state = next;
                self.catalogs.catalogs.remove(name);
                Ok(FedsqlOutcome::Command("DROP SOURCE".into()))
            }
            FedsqlStatement::CreateSite {
                name,
                if_not_exists,
                options,
            } => self.create_site(name, *if_not_exists, options),
            FedsqlStatement::DropSite { name, if_exists } => self.drop_site(name, *if_exists),
            FedsqlStatement::CreateEncoder {
                name,
                path,
                if_not_exists,
                or_replace,
            } => {
                self.create_encoder(name, path, *if_not_exists, *or_replace)
                    .await
            }
            FedsqlStatement::DropEncoder { name, if_exists } => {
                self.drop_encoder(name, *if_exists)
            }
            FedsqlStatement::TrainModel(tm) => self.train_model(ctx, tm).await,
            FedsqlStatement::ResumeTraining { name } => self.resume_training(ctx, name).await,
            FedsqlStatement::ShowModels => Ok(FedsqlOutcome::Query(
                "SELECT model, version, kind, target, strategy, rounds, clients, created_at, metrics \
                 FROM fedsql.system.models WHERE active ORDER BY model"
                    .into(),
            )),
            FedsqlStatement::ShowVersions { model } => {
                self.require_model(model)?;
                Ok(FedsqlOutcome::Query(format!(
                    "SELECT version, active, kind, strategy, rounds, clients, created_at, metrics \
                     FROM fedsql.system.models WHERE model = {} ORDER BY version",
                    quote_literal(model)
                )))
            }
            FedsqlStatement::DescribeModel { name } => {
                self.require_model(name)?;
                Ok(FedsqlOutcome::Query(format!(
                    "SELECT position, feature, type, encoding FROM fedsql.system.model_features \
                     WHERE model = {} AND active ORDER BY position",
                    quote_literal(name)
                )))
            }
            FedsqlStatement::AlterModelSetActiveVersion { name, version } => {
                self.require_model(name)?;
                self.models
                    .set_active(name, *version)
                    .map_err(crate::training::udf_error)?;
                Ok(FedsqlOutcome::Command("ALTER MODEL".into()))
            }
            FedsqlStatement::DropModel {
                name,
                if_exists,
                version,
            } => {
                let dropped = self
                    .models
                    .drop_model(name, *version)
                    .map_err(crate::training::udf_error)?;
                if !dropped && !if_exists {
                    return Err(ServerError::UndefinedObject {
                        kind: "model",
                        name: match version {
                            Some(v) => format!("{name}@{v}"),
                            None => name.clone(),
                        },
                    });
                }
                Ok(FedsqlOutcome::Command("DROP MODEL".into()))
            }
            FedsqlStatement::EvaluateModel(em) => self.evaluate_model(ctx, em).await,
            FedsqlStatement::Truncate { names } => {
                for name in names {
                    self.truncate(ctx, name).await?;
                }
                Ok(FedsqlOutcome::Command("TRUNCATE TABLE".into()))
            }
            FedsqlStatement::RenameRelation {
                kind,
                if_exists,
                name,
                new_name,
            } => {
                self.rename_relation(ctx, *kind, *if_exists, name, new_name)
                    .await?;
                Ok(FedsqlOutcome::Command(statement.kind().into()))
            }
        }
    }

    /// `TRUNCATE name`: a fedsql-owned table becomes empty (and its
    /// snapshot too); a source's table is refused (0A000).
    async fn truncate(&self, ctx: &SessionContext, name: &[String]) -> Result<()> {
        let (catalog, schema, table) = resolve_name(ctx, name)?;
        let qualified = format!("{catalog}.{schema}.{table}");
        let provider = ctx
            .catalog(&catalog)
            .and_then(|c| c.schema(&schema))
            .ok_or_else(|| undefined_relation(&qualified))?;
        let current = provider
            .table(&table)
            .await
            .map_err(|e| ServerError::from_datafusion(&e, &qualified))?
            .ok_or_else(|| undefined_relation(&qualified))?;
        if current
            .as_ref()
            .downcast_ref::<datafusion::catalog::MemTable>()
            .is_none()
        {
            return Err(ServerError::NotSupported {
                statement: "TRUNCATE".into(),
                reason: format!("{qualified} is not a table fedsql owns"),
            });
        }
        // In place: views planned over the table keep reading it.
        if let Some(memory) = current
            .as_ref()
            .downcast_ref::<datafusion::catalog::MemTable>()
        {
            for partition in &memory.batches {
                partition.write().await.clear();
            }
        }
        if self.lock_state().tables.contains(&qualified) {
            let path = crate::owned_tables::snapshot_path(&self.settings.data_dir, &qualified);
            let schema_ref = current.schema();
            tokio::task::spawn_blocking(move || {
                crate::owned_tables::write_snapshot(&path, schema_ref, &[])
            })
            .await
            .map_err(|e| ServerError::Internal(e.to_string()))??;
        }
        Ok(())
    }

    /// `ALTER TABLE|VIEW name RENAME TO new_name`, within the relation's
    /// schema, as Postgres does. A persisted view is re-created under its
    /// new name (and persisted so); a table keeps its provider under the
    /// new name.
    async fn rename_relation(
        &self,
        ctx: &SessionContext,
        kind: fedsql_sql::RelationKind,
        if_exists: bool,
        name: &[String],
        new_name: &str,
    ) -> Result<()> {
        let (catalog, schema, table) = resolve_name(ctx, name)?;
        let qualified = format!("{catalog}.{schema}.{table}");
        self.rename_in_catalog(ctx, kind, if_exists, &catalog, &schema, &table, new_name)
            .await?;
        self.replan_views_reading(std::slice::from_ref(&qualified))
            .await;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn rename_in_catalog(
        &self,
        ctx: &SessionContext,
        kind: fedsql_sql::RelationKind,
        if_exists: bool,
        catalog: &str,
        schema: &str,
        table: &str,
        new_name: &str,
    ) -> Result<()> {
        let (catalog, schema, table) = (catalog.to_string(), schema.to_string(), table.to_string());
        let qualified = format!("{catalog}.{schema}.{table}");
        let missing = || undefined_relation(&qualified);
        let Some(provider) = ctx.catalog(&catalog).and_then(|c| c.schema(&schema)) else {
            return if if_exists { Ok(()) } else { Err(missing()) };
        };
        if !provider.table_exist(&table) {
            return if if_exists { Ok(()) } else { Err(missing()) };
        }
        if provider.table_exist(new_name) {
            return Err(ServerError::Query {
                sqlstate: "42P07".into(),
                message: format!("relation \"{new_name}\" already exists"),
                position: None,
            });
        }
        let renamed = format!("{catalog}.{schema}.{new_name}");
        let view = self
            .lock_state()
            .views
            .iter()
            .find(|v| v.name == qualified)
            .cloned();
        match view {
            Some(view) => {
                let sql = rename_created_view(&view.sql, &[&catalog, &schema, new_name])
                    .ok_or_else(|| {
                        ServerError::Internal(format!(
                            "the stored definition of {qualified} is not a CREATE VIEW"
                        ))
                    })?;
                self.define(&mut Sessions::default(), &view.database, &sql)
                    .await?;
                provider
                    .deregister_table(&table)
                    .map_err(|e| ServerError::from_datafusion(&e, &qualified))?;
                let mut state = self.lock_state();
                let mut next = state.clone();
                next.views.retain(|v| v.name != qualified);
                next.views.push(ViewEntry {
                    name: renamed,
                    database: view.database,
                    sql,
                });
                self.store.save(&next)?;
                *state = next;
            }
            None => {
                if kind == fedsql_sql::RelationKind::View {
                    tracing::debug!(relation = %qualified, "ALTER VIEW renames a table");
                }
                let Some(table_provider) = provider
                    .deregister_table(&table)
                    .map_err(|e| ServerError::from_datafusion(&e, &qualified))?
                else {
                    return Err(missing());
                };
                provider
                    .register_table(new_name.to_string(), table_provider)
                    .map_err(|e| ServerError::from_datafusion(&e, &renamed))?;
                let mut state = self.lock_state();
                if state.tables.contains(&qualified) {
                    let data_dir = &self.settings.data_dir;
                    let (from, to) = (
                        crate::owned_tables::snapshot_path(data_dir, &qualified),
                        crate::owned_tables::snapshot_path(data_dir, &renamed),
                    );
                    std::fs::rename(&from, &to).map_err(|e| ServerError::io(&from, e))?;
                    let mut next = state.clone();
                    next.tables.retain(|t| *t != qualified);
                    next.tables.push(renamed.clone());
                    self.store.save(&next)?;
                    *state = next;
                }
            }
        }
        Ok(())
    }

    fn require_model(&self, name: &str) -> Result<()> {
        match self.models.active(name) {
            Some(_) => Ok(()),
            None => Err(ServerError::UndefinedObject {
                kind: "model",
                name: name.to_string(),
            }),
        }
    }

    /// Checks a standard statement before it runs in `database`: a plain
    /// `DROP TABLE|VIEW` of a relation persisted views read is refused
    /// with 2BP01, as Postgres refuses it (`CASCADE` drops them, see
    /// [`Engine::after_statement`]).
    pub fn before_statement(&self, database: &str, sql: &str) -> Result<()> {
        let Some(Statement::Drop {
            object_type: object_type @ (ObjectType::Table | ObjectType::View),
            names,
            cascade: false,
            ..
        }) = parse_ddl(sql)
        else {
            return Ok(());
        };
        let dropped: Vec<String> = names.iter().filter_map(|n| qualify(database, n)).collect();
        let views = self.lock_state().views.clone();
        for name in &dropped {
            let dependents =
                crate::view_dependencies::dependents(&views, std::slice::from_ref(name));
            let Some(first) = dependents.iter().find(|d| !dropped.contains(d)) else {
                continue;
            };
            let kind = if object_type == ObjectType::View {
                "view"
            } else {
                "table"
            };
            return Err(ServerError::Query {
                sqlstate: "2BP01".into(),
                message: format!(
                    "cannot drop {kind} {name} because other objects depend on it: view {first} \
                     depends on {kind} {name} (use DROP ... CASCADE to drop the dependent \
                     objects too)"
                ),
                position: None,
            });
        }
        Ok(())
    }

    /// Takes the view `catalog.schema.name` out of the catalog (its
    /// persisted entry stays); false if the name is not three parts.
    fn deregister_view(&self, name: &str) -> bool {
        let mut parts = name.splitn(3, '.');
        let (Some(catalog), Some(schema), Some(table)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        if let Some(schema) = self
            .catalogs
            .catalog(catalog)
            .and_then(|c| c.schema(schema))
        {
            let _ = schema.deregister_table(table);
        }
        true
    }

    /// After `DROP … CASCADE` of `dropped`: the persisted views that read
    /// them (directly or through each other) are dropped too.
    fn drop_dependent_views(&self, dropped: &[String]) -> Result<()> {
        let mut state = self.lock_state();
        let dependents = crate::view_dependencies::dependents(&state.views, dropped);
        if dependents.is_empty() {
            return Ok(());
        }
        let mut next = state.clone();
        next.views.retain(|v| !dependents.contains(&v.name));
        self.store.save(&next)?;
        *state = next;
        drop(state);
        for view in &dependents {
            self.deregister_view(view);
            tracing::info!(%view, "drop cascades to view");
        }
        Ok(())
    }

    /// Persists the effect of a standard statement that succeeded in
    /// `database`: `CREATE VIEW` and `DROP VIEW` survive restarts.
    pub async fn after_statement(&self, database: &str, sql: &str) -> Result<()> {
        if let Some(Statement::Drop {
            object_type: ObjectType::Table | ObjectType::View,
            names,
            cascade: true,
            ..
        }) = parse_ddl(sql)
        {
            let dropped: Vec<String> = names.iter().filter_map(|n| qualify(database, n)).collect();
            self.drop_dependent_views(&dropped)?;
        }
        self.persist_owned_tables(database, sql).await?;
        let Some(change) = view_change(database, sql) else {
            return Ok(());
        };
        let dropped: Vec<String> = match &change {
            ViewChange::Dropped(names) => names.clone(),
            ViewChange::Created(_) => Vec::new(),
        };
        self.record_view_change(database, sql, change)?;
        if !dropped.is_empty() {
            self.replan_views_reading(&dropped).await;
        }
        Ok(())
    }

    fn record_view_change(&self, database: &str, sql: &str, change: ViewChange) -> Result<()> {
        let mut state = self.lock_state();
        let mut next = state.clone();
        match change {
            // A schema made again (`CREATE SCHEMA IF NOT EXISTS`, which dbt
            // sends every run) keeps its place before the views in it.
            ViewChange::Created(name)
                if name.starts_with("schema:") && next.views.iter().any(|v| v.name == name) => {}
            ViewChange::Created(name) => {
                next.views.retain(|v| v.name != name);
                next.views.push(ViewEntry {
                    name,
                    database: database.to_string(),
                    sql: sql.to_string(),
                });
            }
            ViewChange::Dropped(names) => next.views.retain(|v| !names.contains(&v.name)),
        }
        if next != *state {
            self.store.save(&next)?;
            *state = next;
        }
        Ok(())
    }

    /// Runs a persisted definition (`CREATE VIEW`, `CREATE SCHEMA`, …) in
    /// `database`, planned and run without `execute_plan`: it is already
    /// persisted, so the catalog is not written again.
    async fn define(&self, sessions: &mut Sessions, database: &str, sql: &str) -> Result<()> {
        let ctx = sessions.of(self, database)?;
        let plan = self.plan_sql(&ctx, sql).await?;
        ctx.execute_logical_plan(plan)
            .await
            .map_err(|e| ServerError::from_datafusion(&e, sql))?;
        Ok(())
    }

    /// Plans again the persisted views whose definition names one of
    /// `relations` (`catalog.schema.name`), after those were dropped or
    /// renamed. DataFusion's views hold the plan they were made with, so a
    /// view over a table that dbt rebuilt and swapped in would go on
    /// reading the old table's rows; planned again it reads the new one,
    /// and a view whose input is gone stops answering (42P01) instead of
    /// answering from dropped data — Postgres's `DROP … CASCADE`, except
    /// that the definition stays persisted and comes back with its input.
    async fn replan_views_reading(&self, relations: &[String]) {
        let names: Vec<String> = relations
            .iter()
            .filter_map(|r| r.rsplit('.').next())
            .map(str::to_ascii_lowercase)
            .collect();
        let views = self.lock_state().views.clone();
        let mut sessions = Sessions::default();
        for view in views.iter().filter(|v| !v.name.starts_with("schema:")) {
            let definition = view.sql.to_ascii_lowercase();
            if !names.iter().any(|n| definition.contains(n.as_str())) {
                continue;
            }
            if !self.deregister_view(&view.name) {
                continue;
            }
            if let Err(e) = self.define(&mut sessions, &view.database, &view.sql).await {
                tracing::info!(view = %view.name, error = %e, "view unavailable until its input exists again");
            }
        }
    }

    /// Snapshots the fedsql-owned tables `sql` created or wrote, forgets
    /// those it dropped (see [`crate::owned_tables`]).
    async fn persist_owned_tables(&self, database: &str, sql: &str) -> Result<()> {
        let head = sql.trim_start().get(..6).unwrap_or("").to_ascii_lowercase();
        if head != "create" && head != "insert" && !head.starts_with("drop") {
            return Ok(());
        }
        let Some(statement) = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .ok()
            .and_then(|s| s.into_iter().next())
        else {
            return Ok(());
        };
        let Some(change) = crate::owned_tables::table_change(database, &statement) else {
            return Ok(());
        };
        let catalogs: Arc<dyn CatalogProviderList> = Arc::clone(&self.catalogs) as _;
        let data_dir = self.settings.data_dir.clone();
        let (written, dropped) = match change {
            crate::owned_tables::TableChange::Written(names) => (names, Vec::new()),
            crate::owned_tables::TableChange::Dropped(names) => (Vec::new(), names),
        };
        let mut snapshots = Vec::new();
        for name in written {
            if let Some((schema, batches)) = crate::owned_tables::owned_rows(&catalogs, &name).await
            {
                let path = crate::owned_tables::snapshot_path(&data_dir, &name);
                tokio::task::spawn_blocking(move || {
                    crate::owned_tables::write_snapshot(&path, schema, &batches)
                })
                .await
                .map_err(|e| ServerError::Internal(e.to_string()))??;
                snapshots.push(name);
            }
        }
        {
            let mut state = self.lock_state();
            let mut next = state.clone();
            for name in snapshots {
                if !next.tables.contains(&name) {
                    next.tables.push(name);
                }
            }
            for name in &dropped {
                if next.tables.contains(name) {
                    next.tables.retain(|t| t != name);
                    let path = crate::owned_tables::snapshot_path(&data_dir, name);
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(table = %name, error = %e, "could not remove a dropped table's snapshot");
                    }
                }
            }
            if next != *state {
                self.store.save(&next)?;
                *state = next;
            }
        }
        if !dropped.is_empty() {
            self.replan_views_reading(&dropped).await;
        }
        Ok(())
    }

    /// Registers the fedsql-owned tables from their snapshots (start-up).
    fn restore_owned_tables(&self) {
        let tables = self.lock_state().tables.clone();
        for name in tables {
            let restored = (|| {
                let mut parts = name.splitn(3, '.');
                let (catalog, schema, table) = match (parts.next(), parts.next(), parts.next()) {
                    (Some(c), Some(s), Some(t)) => (c, s, t),
                    _ => return Err(ServerError::Internal(format!("bad table name {name}"))),
                };
                let path = crate::owned_tables::snapshot_path(&self.settings.data_dir, &name);
                // A write a crash interrupted left its temporary file; the
                // snapshot itself is the last committed one.
                fedsql_connectors::fsutil::remove_stale_temp_files(&path)
                    .map_err(|e| ServerError::io(&path, e))?;
                let memory = crate::owned_tables::load_snapshot(&path)?;
                let schema_provider = self
                    .catalogs
                    .catalog(catalog)
                    .and_then(|c| c.schema(schema))
                    .ok_or_else(|| {
                        ServerError::Internal(format!("no schema {catalog}.{schema}"))
                    })?;
                schema_provider
                    .register_table(table.to_string(), Arc::new(memory))
                    .map_err(|e| ServerError::from_datafusion(&e, &name))?;
                Ok::<(), ServerError>(())
            })();
            if let Err(e) = restored {
                tracing::warn!(table = %name, error = %e, "could not restore table");
            }
        }
    }

    /// Runs `sql` through the fedsql front and collects every result; used
    /// by `fedsql query` and by start-up replay.
    pub async fn run(&self, database: &str, sql: &str) -> Result<Vec<StatementResult>> {
        let ctx = self.session_context(database)?;
        self.run_in(&ctx, database, sql).await
    }

    /// [`Engine::run`] in a session of `database` the caller keeps (making
    /// one costs more than running a small statement).
    pub async fn run_in(
        &self,
        ctx: &SessionContext,
        database: &str,
        sql: &str,
    ) -> Result<Vec<StatementResult>> {
        let ctx = ctx.clone();
        let mut results = Vec::new();
        for statement in self.parse(sql)? {
            let offset = statement.offset();
            let result = match self.run_statement(&ctx, database, &statement).await {
                Ok(Planned::Command(tag)) => Ok(StatementResult::Command(tag)),
                Ok(Planned::Rows(frame)) => collect(frame, statement.text()).await,
                Err(e) => Err(e),
            };
            results.push(result.map_err(|e| e.offset_by(offset))?);
        }
        Ok(results)
    }

    /// Opens the sources persisted by `CREATE SOURCE` and those declared in
    /// the config file. A source that cannot be reached now is logged and
    /// skipped (it stays declared), so one unreachable database does not keep
    /// the server from starting.
    /// The source `name` declared in the config file, if any.
    fn config_source(&self, name: &str) -> Option<SourceEntry> {
        self.settings
            .sources
            .iter()
            .find(|s| s.name == name)
            .map(config_entry)
    }

    async fn open_sources(&self) -> Result<()> {
        let mut entries = self.lock_state().sources.clone();
        for source in &self.settings.sources {
            if SourceKind::from_word(&source.kind).is_none() {
                return Err(ServerError::Config(format!(
                    "source {}: unknown type '{}' (expected postgres, odbc, kafka or flightsql)",
                    source.name, source.kind
                )));
            }
            entries.push(config_entry(source));
        }
        for entry in entries {
            match open_source(&entry, self.observer()).await {
                Ok(catalog) => {
                    self.catalogs.register_catalog(entry.name.clone(), catalog);
                }
                Err(e) => {
                    tracing::warn!(source = %entry.name, error = %e, "source not available");
                }
            }
        }
        Ok(())
    }

    async fn replay_views(&self) -> Result<()> {
        let (schemas, views): (Vec<ViewEntry>, Vec<ViewEntry>) = self
            .lock_state()
            .views
            .iter()
            .cloned()
            .partition(|v| v.name.starts_with("schema:"));
        let mut tables_restored = false;
        let mut sessions = Sessions::default();
        for view in schemas.into_iter().chain(views) {
            // Schemas first, then the owned tables in them, then views
            // (which may read both).
            if !tables_restored && !view.name.starts_with("schema:") {
                self.restore_owned_tables();
                tables_restored = true;
            }
            // A view whose inputs are gone stays persisted (its source may
            // come back), but the server still starts.
            if let Err(e) = self.define(&mut sessions, &view.database, &view.sql).await {
                tracing::warn!(view = %view.name, error = %e, "could not restore view");
            }
        }
        if !tables_restored {
            self.restore_owned_tables();
        }
        Ok(())
    }

    /// Registers `site_<name>`: the tables site `name` offers (see
    /// [`crate::sites::catalog`]).
    fn register_site_catalog(&self, name: &str) {
        let catalog = crate::sites::catalog::SiteCatalog::new(
            name,
            Arc::clone(&self.sites),
            Some(self.observer()),
        );
        self.catalogs.register_catalog(
            crate::sites::catalog::site_catalog_name(name),
            Arc::new(catalog),
        );
    }

    /// Where sources report the queries they run.
    fn observer(&self) -> Arc<dyn RemoteQueryObserver> {
        Arc::clone(&self.queries) as Arc<dyn RemoteQueryObserver>
    }

    /// Loads the encoders of `[[encoders]]` (a bad one stops start-up, as a
    /// bad source would) and those `CREATE ENCODER` persisted (a directory
    /// gone since is logged and skipped: `embed` then names what is known).
    async fn open_encoders(&self) -> Result<()> {
        for e in &self.settings.encoders {
            load_encoder(&e.name, e.path.clone())
                .await
                .map_err(|err| ServerError::Config(format!("encoder {}: {err}", e.name)))?;
        }
        let persisted = self.lock_state().encoders.clone();
        for e in persisted {
            if let Err(err) = load_encoder(&e.name, PathBuf::from(&e.path)).await {
                tracing::warn!(encoder = %e.name, "encoder not loaded: {err}");
            }
        }
        Ok(())
    }

    /// `CREATE [OR REPLACE] ENCODER name FROM 'path'`: loads the model now
    /// (a bad directory is refused, naming the file) and persists it.
    async fn create_encoder(
        &self,
        name: &str,
        path: &str,
        if_not_exists: bool,
        or_replace: bool,
    ) -> Result<FedsqlOutcome> {
        let tag = || Ok(FedsqlOutcome::Command("CREATE ENCODER".into()));
        if self.encoder_in_config(name) {
            if if_not_exists {
                return tag();
            }
            return Err(defined_in_config(
                "CREATE ENCODER",
                "encoder",
                name,
                "encoders",
            ));
        }
        let exists = self
            .lock_state()
            .encoders
            .iter()
            .any(|e| e.name.eq_ignore_ascii_case(name));
        if exists && if_not_exists {
            return tag();
        }
        if exists && !or_replace {
            return Err(ServerError::DuplicateObject {
                kind: "encoder",
                name: name.to_string(),
            });
        }
        let dir = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
        load_encoder(name, dir.clone())
            .await
            .map_err(crate::training::udf_error)?;
        let mut state = self.lock_state();
        let mut next = state.clone();
        next.encoders.retain(|e| e.name != name);
        next.encoders.push(EncoderEntry {
            name: name.to_string(),
            path: dir.display().to_string(),
            created_at_us: now_us(),
        });
        self.store.save(&next)?;
        *state = next;
        tag()
    }

    /// Whether the config file's `[[encoders]]` define `name` (encoder
    /// names are case-insensitive, as the encoder table keeps them).
    fn encoder_in_config(&self, name: &str) -> bool {
        self.settings
            .encoders
            .iter()
            .any(|e| e.name.eq_ignore_ascii_case(name))
    }

    /// `DROP ENCODER`: models trained on it can no longer predict until an
    /// encoder of that name is created again.
    fn drop_encoder(&self, name: &str, if_exists: bool) -> Result<FedsqlOutcome> {
        let tag = || Ok(FedsqlOutcome::Command("DROP ENCODER".into()));
        let mut state = self.lock_state();
        let Some(pos) = state
            .encoders
            .iter()
            .position(|e| e.name.eq_ignore_ascii_case(name))
        else {
            if self.encoder_in_config(name) {
                return Err(defined_in_config(
                    "DROP ENCODER",
                    "encoder",
                    name,
                    "encoders",
                ));
            }
            if if_exists {
                return tag();
            }
            return Err(ServerError::UndefinedObject {
                kind: "encoder",
                name: name.to_string(),
            });
        };
        let mut next = state.clone();
        next.encoders.remove(pos);
        self.store.save(&next)?;
        *state = next;
        fedsql_udfs::encoder::encoders().unregister(name);
        tag()
    }

    /// `CREATE SITE`: reads the token from the variable `token_env` names
    /// and persists only its salted hash.
    fn create_site(
        &self,
        name: &str,
        if_not_exists: bool,
        options: &[(String, fedsql_sql::OptionValue)],
    ) -> Result<FedsqlOutcome> {
        let tag = || Ok(FedsqlOutcome::Command("CREATE SITE".into()));
        let mut token_env = None;
        for (key, value) in options {
            match key.as_str() {
                "token_env" => token_env = Some(value.as_text()),
                other => {
                    return Err(ServerError::Config(format!(
                        "unknown site option {other} (known: token_env)"
                    )))
                }
            }
        }
        let token_env = token_env.ok_or_else(|| {
            ServerError::Config(
                "CREATE SITE needs OPTIONS (token_env 'VAR'): the variable holding the site's token"
                    .into(),
            )
        })?;
        let token = std::env::var(&token_env).map_err(|_| {
            ServerError::Config(format!(
                "environment variable {token_env} (token_env) is not set in the coordinator's environment"
            ))
        })?;
        if token.is_empty() {
            return Err(ServerError::Config(format!("{token_env} is empty")));
        }
        let mut state = self.lock_state();
        if self.sites.contains(name) {
            if if_not_exists {
                return tag();
            }
            return Err(ServerError::DuplicateObject {
                kind: "site",
                name: name.to_string(),
            });
        }
        let catalog = crate::sites::catalog::site_catalog_name(name);
        if self.catalogs.catalog(&catalog).is_some() {
            return Err(ServerError::DuplicateObject {
                kind: "source or catalog (a site's tables are the catalog site_<name>)",
                name: catalog,
            });
        }
        let credential = SiteCredential::new(&token);
        let mut next = state.clone();
        next.sites.push(SiteEntry {
            name: name.to_string(),
            credential: credential.clone(),
            created_at_us: now_us(),
        });
        self.store.save(&next)?;
        *state = next;
        self.sites.define(name, credential);
        self.register_site_catalog(name);
        tag()
    }

    /// `DROP SITE`: sites from `[[sites]]` stay until the config changes.
    fn drop_site(&self, name: &str, if_exists: bool) -> Result<FedsqlOutcome> {
        let mut state = self.lock_state();
        let Some(pos) = state.sites.iter().position(|s| s.name == name) else {
            if self.settings.sites.iter().any(|s| s.name == name) {
                return Err(defined_in_config("DROP SITE", "site", name, "sites"));
            }
            if if_exists {
                return Ok(FedsqlOutcome::Command("DROP SITE".into()));
            }
            return Err(ServerError::UndefinedObject {
                kind: "site",
                name: name.to_string(),
            });
        };
        let mut next = state.clone();
        next.sites.remove(pos);
        self.store.save(&next)?;
        *state = next;
        self.sites.remove(name);
        self.catalogs
            .catalogs
            .remove(&crate::sites::catalog::site_catalog_name(name));
        Ok(FedsqlOutcome::Command("DROP SITE".into()))
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, CatalogState> {
        // State is replaced only after a successful save, so it is consistent
        // even if a holder panicked.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads every row of a frame.
async fn collect(frame: DataFrame, sql: &str) -> Result<StatementResult> {
    let schema: SchemaRef = Arc::clone(frame.schema().inner());
    let batches = frame
        .collect()
        .await
        .map_err(|e| ServerError::from_datafusion(&e, sql))?;
    Ok(StatementResult::Rows { schema, batches })
}

fn system_catalog(
    state: Arc<Mutex<CatalogState>>,
    queries: Arc<QueryLog>,
    models: Arc<ModelRegistry>,
    sites: Arc<SiteRegistry>,
) -> Result<Arc<dyn CatalogProvider>> {
    let system = Arc::new(MemorySchemaProvider::new());
    let site_rows = SystemTable::new(
        system_tables::sites_schema(),
        Arc::new(move || system_tables::sites_batch(&sites.rows())),
    );
    let sources = SystemTable::new(
        system_tables::sources_schema(),
        Arc::new(move || {
            let state = state.lock().unwrap_or_else(|p| p.into_inner());
            system_tables::sources_batch(&state.sources)
        }),
    );
    let log = SystemTable::new(
        system_tables::queries_schema(),
        Arc::new(move || system_tables::queries_batch(&queries.snapshot())),
    );
    let to_err = |e| ServerError::from_datafusion(&e, "");
    system
        .register_table("sources".into(), Arc::new(sources))
        .map_err(to_err)?;
    system
        .register_table("queries".into(), Arc::new(log))
        .map_err(to_err)?;
    system
        .register_table("sites".into(), Arc::new(site_rows))
        .map_err(to_err)?;
    let encoders = SystemTable::new(
        system_tables::encoders_schema(),
        Arc::new(system_tables::encoders_batch),
    );
    system
        .register_table("encoders".into(), Arc::new(encoders))
        .map_err(to_err)?;
    type Batch = fn(&ModelRegistry) -> datafusion::error::Result<RecordBatch>;
    let model_tables: [(&str, SchemaRef, Batch); 4] = [
        ("models", model_tables::models_schema(), |r| {
            model_tables::models_batch(&r.list())
        }),
        (
            "training_rounds",
            model_tables::training_rounds_schema(),
            |r| model_tables::training_rounds_batch(&r.list(), &r.live_rounds()),
        ),
        ("training_runs", model_tables::training_runs_schema(), |r| {
            model_tables::training_runs_batch(&r.training_runs())
        }),
        (
            "model_features",
            model_tables::model_features_schema(),
            |r| model_tables::model_features_batch(&r.list()),
        ),
    ];
    for (name, schema, batch) in model_tables {
        let models = Arc::clone(&models);
        let table = SystemTable::new(schema, Arc::new(move || batch(&models)));
        system
            .register_table(name.into(), Arc::new(table))
            .map_err(to_err)?;
    }
    let catalog = Arc::new(MemoryCatalogProvider::new());
    catalog.register_schema("system", system).map_err(to_err)?;
    catalog
        .register_schema("public", Arc::new(MemorySchemaProvider::new()))
        .map_err(to_err)?;
    Ok(catalog)
}

/// Connects to a source and returns its catalog.
async fn open_source(
    entry: &SourceEntry,
    observer: Arc<dyn RemoteQueryObserver>,
) -> Result<Arc<dyn CatalogProvider>> {
    match SourceKind::from_word(&entry.kind) {
        Some(SourceKind::Postgres) => {
            Ok(open_postgres_catalog(&entry.name, &entry.options, Some(observer)).await?)
        }
        Some(SourceKind::Odbc) => {
            Ok(open_odbc_catalog(&entry.name, &entry.options, Some(observer)).await?)
        }
        Some(SourceKind::Kafka) => {
            Ok(open_kafka_catalog(&entry.name, &entry.options, Some(observer)).await?)
        }
        Some(kind) => Err(source_not_supported(kind)),
        None => Err(ServerError::Config(format!(
            "source {}: unknown type '{}'",
            entry.name, entry.kind
        ))),
    }
}

/// A `[[sources]]` entry of the config file as a catalog entry.
fn config_entry(source: &crate::config::SourceConfig) -> SourceEntry {
    SourceEntry {
        name: source.name.clone(),
        kind: source.kind.clone(),
        options: source
            .options
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect(),
        created_at_us: now_us(),
    }
}

fn source_not_supported(kind: SourceKind) -> ServerError {
    ServerError::NotSupported {
        statement: format!("CREATE SOURCE … TYPE {kind}"),
        reason: format!("the {kind} connector has not landed yet"),
    }
}

enum ViewChange {
    Created(String),
    Dropped(Vec<String>),
}

/// `sql` parsed, if it can be DDL (`CREATE …` / `DROP …`).
///
/// Most statements are queries: the cheap check on the first word spares them
/// a second parse.
fn parse_ddl(sql: &str) -> Option<Statement> {
    let head = sql.trim_start().get(..6)?.to_ascii_lowercase();
    if head != "create" && !head.starts_with("drop") {
        return None;
    }
    Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .ok()?
        .into_iter()
        .next()
}

/// The Postgres command tag of a DDL statement (DataFusion answers DDL with
/// an empty result set, which psql would print as "(0 rows)").
pub fn ddl_tag(sql: &str) -> Option<&'static str> {
    if crate::front::is_create_external_table(sql) {
        return Some("CREATE EXTERNAL TABLE");
    }
    Some(match parse_ddl(sql)? {
        Statement::CreateView(_) => "CREATE VIEW",
        Statement::CreateTable(_) => "CREATE TABLE",
        Statement::CreateSchema { .. } => "CREATE SCHEMA",
        Statement::Drop { object_type, .. } => match object_type {
            ObjectType::View => "DROP VIEW",
            ObjectType::Table => "DROP TABLE",
            ObjectType::Schema => "DROP SCHEMA",
            _ => return None,
        },
        _ => return None,
    })
}

/// The refusal to change over SQL what the config file defines (0A000):
/// it would come back at the next start.
fn defined_in_config(statement: &str, kind: &str, name: &str, section: &str) -> ServerError {
    ServerError::NotSupported {
        statement: statement.into(),
        reason: format!("{kind} \"{name}\" is defined in the config file ([[{section}]])"),
    }
}

/// Whether `sql` creates or drops a definition that is replayed at start-up
/// (a view or an external table), with the fully-qualified names.
fn view_change(database: &str, sql: &str) -> Option<ViewChange> {
    if crate::front::is_create_external_table(sql) {
        // DataFusion's own parser: it takes any `STORED AS` name (`KAFKA`).
        let parsed =
            datafusion::sql::parser::DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {})
                .ok()?;
        let Some(datafusion::sql::parser::Statement::CreateExternalTable(create)) = parsed.front()
        else {
            return None;
        };
        return Some(ViewChange::Created(qualify(database, &create.name)?));
    }
    match parse_ddl(sql)? {
        Statement::CreateView(view) if !view.materialized => {
            Some(ViewChange::Created(qualify(database, &view.name)?))
        }
        // Schemas are replayed like views, before the views made in them
        // (entries replay in the order they were made).
        Statement::CreateSchema {
            schema_name: datafusion::sql::sqlparser::ast::SchemaName::Simple(name),
            ..
        } => Some(ViewChange::Created(qualify_schema(database, &name)?)),
        Statement::Drop {
            object_type: ObjectType::Schema,
            names,
            ..
        } => Some(ViewChange::Dropped(
            names
                .iter()
                .filter_map(|n| qualify_schema(database, n))
                .collect(),
        )),
        // Dropping a table forgets an external table of that name (other
        // tables were never persisted).
        Statement::Drop {
            object_type: ObjectType::View | ObjectType::Table,
            names,
            ..
        } => Some(ViewChange::Dropped(
            names.iter().filter_map(|n| qualify(database, n)).collect(),
        )),
        _ => None,
    }
}

/// `schema:catalog.schema` for a schema name written in `database` (the
/// prefix keeps a schema's entry apart from a view's).
fn qualify_schema(database: &str, name: &ObjectName) -> Option<String> {
    match name_parts(name)?.as_slice() {
        [s] => Some(format!("schema:{database}.{s}")),
        [c, s] => Some(format!("schema:{c}.{s}")),
        _ => None,
    }
}

/// `catalog.schema.name` for an object name written in `database`, folding
/// unquoted identifiers to lower case as DataFusion does.
pub(crate) fn qualify(database: &str, name: &ObjectName) -> Option<String> {
    match name_parts(name)?.as_slice() {
        [t] => Some(format!("{database}.public.{t}")),
        [s, t] => Some(format!("{database}.{s}.{t}")),
        [c, s, t] => Some(format!("{c}.{s}.{t}")),
        _ => None,
    }
}

/// An object name's parts, unquoted identifiers folded to lower case.
fn name_parts(name: &ObjectName) -> Option<Vec<String>> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) if ident.quote_style.is_some() => {
                Some(ident.value.clone())
            }
            ObjectNamePart::Identifier(ident) => Some(ident.value.to_lowercase()),
            ObjectNamePart::Function(_) => None,
        })
        .collect()
}

/// (catalog, schema, table) of a relation name as written, with the
/// session's defaults for the parts left out.
fn resolve_name(ctx: &SessionContext, name: &[String]) -> Result<(String, String, String)> {
    let options = ctx.state().config().options().clone();
    match name {
        [t] => Ok((
            options.catalog.default_catalog.clone(),
            options.catalog.default_schema.clone(),
            t.clone(),
        )),
        [s, t] => Ok((
            options.catalog.default_catalog.clone(),
            s.clone(),
            t.clone(),
        )),
        [c, s, t] => Ok((c.clone(), s.clone(), t.clone())),
        _ => Err(ServerError::Syntax {
            message: format!("improper relation name: {}", name.join(".")),
            position: None,
        }),
    }
}

/// Postgres's 42P01 for a relation that does not exist.
fn undefined_relation(qualified: &str) -> ServerError {
    ServerError::Query {
        sqlstate: "42P01".into(),
        message: format!("relation \"{qualified}\" does not exist"),
        position: None,
    }
}

/// `sql` (a stored `CREATE VIEW`) creating the view under `name` instead.
fn rename_created_view(sql: &str, name: &[&str]) -> Option<String> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let Some(Statement::CreateView(create)) = statements.first_mut() else {
        return None;
    };
    create.name = ObjectName(
        name.iter()
            .map(|part| {
                ObjectNamePart::Identifier(datafusion::sql::sqlparser::ast::Ident::with_quote(
                    '"', *part,
                ))
            })
            .collect(),
    );
    Some(statements[0].to_string())
}

/// A SQL string literal.
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_changes_are_qualified() {
        let Some(ViewChange::Created(n)) = view_change("demo", "CREATE VIEW Big AS SELECT 1")
        else {
            panic!()
        };
        assert_eq!(n, "demo.public.big");
        let Some(ViewChange::Dropped(n)) =
            view_change("demo", "DROP VIEW IF EXISTS bank.\"V\", fedsql.public.w")
        else {
            panic!()
        };
        assert_eq!(n, ["demo.bank.V", "fedsql.public.w"]);
        assert!(view_change("demo", "SELECT 1").is_none());
        let Some(ViewChange::Created(n)) = view_change(
            "demo",
            "CREATE EXTERNAL TABLE k.Pay (id BIGINT) STORED AS KAFKA LOCATION 'kafka://h:1/t'",
        ) else {
            panic!()
        };
        assert_eq!(n, "demo.k.pay");
        let Some(ViewChange::Dropped(n)) = view_change("fedsql", "DROP TABLE IF EXISTS pay") else {
            panic!()
        };
        assert_eq!(n, ["fedsql.public.pay"]);
    }

    #[test]
    fn ddl_tags() {
        assert_eq!(ddl_tag("create view v as select 1"), Some("CREATE VIEW"));
        assert_eq!(ddl_tag("  DROP TABLE IF EXISTS t"), Some("DROP TABLE"));
        assert_eq!(ddl_tag("SELECT 1"), None);
        assert_eq!(ddl_tag("DROP"), None);
    }
}
