//! `fedsql run DIR`: a dbt-style project run natively, without Python.
//!
//! The project ([`project`]) is read, every model rendered once to find its
//! refs and config ([`render`]), the graph checked and selected
//! ([`graph`]), then nodes run in dependency order — up to `threads` at
//! once — through the same engine the wires use, each materialized as its
//! config says ([`materialize`]): `view`, `table`, `incremental` (append, or
//! merge on `unique_key`), `ephemeral` (inlined where it is referenced) and
//! `model` (the file is a `TRAIN MODEL` statement, and `ref()` of it gives
//! the model's name for `predict`). `--test` runs `schema.yml` tests after.
//! `target/manifest.json` and `target/run_results.json` are written in
//! dbt's shape.

mod artifacts;
mod graph;
mod materialize;
mod project;
mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::engine::{Engine, StatementResult};
use crate::error::ServerError;
use graph::{Graph, Node};
use materialize::Materialized;
use project::Project;
use render::{Pass, Relation, Templates};

/// Why a project cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("cannot read {path}: {1}", path = .0.display())]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{path}: {1}", path = .0.display())]
    Invalid(PathBuf, String),
    #[error("{}: ref('{name}') names no model or seed", .path.display())]
    MissingRef { path: PathBuf, name: String },
    #[error("the models refer to each other in a cycle: {0}")]
    Cycle(String),
    #[error("--select {0} matches no model or seed")]
    Select(String),
    #[error("{}: {message}", .path.display())]
    Template { path: PathBuf, message: String },
}

/// `fedsql run`'s options (its command-line arguments).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunOptions {
    /// The project folder (fedsql_project.toml, models/, seeds/).
    pub dir: PathBuf,
    /// Nodes to run: name, +name (with what it needs), name+ (with what
    /// needs it), tag:x, path:models/dir; several allowed.
    #[arg(long, num_args = 1..)]
    pub select: Vec<String>,
    /// Rebuild incremental models from scratch.
    #[arg(long)]
    pub full_refresh: bool,
    /// Also run the schema.yml tests of the selected models.
    #[arg(long)]
    pub test: bool,
    /// Variables for var(), a JSON or YAML object ('{"k": 1}'), overriding
    /// the project's [vars].
    #[arg(long)]
    pub vars: Option<String>,
    /// Models built at once [default: the project's threads, 4].
    #[arg(long)]
    pub threads: Option<usize>,
}

/// How one node or test ended.
#[derive(Debug, Clone)]
pub struct NodeResult {
    pub unique_id: String,
    /// `success`, `error`, `skipped` (models, seeds); `pass`, `fail`,
    /// `error` (tests).
    pub status: &'static str,
    pub message: String,
    pub seconds: f64,
    /// Failing rows of a test.
    pub failures: Option<u64>,
    pub compiled: Option<String>,
}

/// What a run did.
#[derive(Debug)]
pub struct RunSummary {
    pub results: Vec<NodeResult>,
}

impl RunSummary {
    /// No node failed (so none was skipped) and no test found failing rows.
    pub fn ok(&self) -> bool {
        self.results
            .iter()
            .all(|r| matches!(r.status, "success" | "pass"))
    }
}

/// A model ready to run: its rendered config and its relation.
#[derive(Debug, Clone)]
struct Planned {
    node: Node,
    raw: String,
    materialized: Materialized,
    unique_key: Option<String>,
    relation: Relation,
}

fn template_error(path: &std::path::Path, e: minijinja::Error) -> ProjectError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    ProjectError::Template {
        path: path.to_path_buf(),
        message,
    }
}

/// Runs the project in `options.dir` against `engine`.
pub async fn run(engine: Arc<Engine>, options: RunOptions) -> Result<RunSummary, ServerError> {
    let started = Instant::now();
    let project = Project::load(&options.dir)?;
    let database = engine.resolve_database(project.file.database.as_deref())?;
    let schema = project.file.schema.clone();
    let mut vars: BTreeMap<String, serde_json::Value> = project
        .file
        .vars
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_default()))
        .collect();
    if let Some(text) = &options.vars {
        let extra: BTreeMap<String, serde_json::Value> = serde_yaml_ng::from_str(text)
            .map_err(|e| ServerError::Config(format!("--vars {text}: {e}")))?;
        vars.extend(extra);
    }
    let templates = Templates {
        vars: &vars,
        sources: &project.sources,
    };

    // Parse pass: refs and config of every model.
    let mut planned: BTreeMap<String, Planned> = BTreeMap::new();
    let mut nodes = Vec::new();
    for model in &project.models {
        let relation = Relation::table(&database, &schema, &model.name);
        let (_, captured) = templates
            .render(&model.raw, &relation, Pass::Parse)
            .map_err(|e| template_error(&model.path, e))?;
        let text = |key: &str| {
            captured
                .config
                .get(key)
                .and_then(|v| v.as_str().map(str::to_string))
        };
        let materialized =
            text("materialized").unwrap_or_else(|| project.file.materialized.clone());
        let materialized = Materialized::parse(&materialized)
            .map_err(|m| ProjectError::Invalid(model.path.clone(), m))?;
        let tags: Vec<String> = match captured.config.get("tags") {
            Some(v) if v.as_str().is_some() => v.as_str().map(str::to_string).into_iter().collect(),
            Some(v) => v
                .try_iter()
                .map(|it| it.filter_map(|t| t.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let enabled = captured.config.get("enabled").is_none_or(|v| v.is_true());
        if !enabled {
            continue;
        }
        let mut refs: Vec<String> = Vec::new();
        for r in captured.refs {
            if !refs.contains(&r) {
                refs.push(r);
            }
        }
        let node = Node {
            name: model.name.clone(),
            path: model.path.clone(),
            seed: false,
            tags,
            refs,
        };
        nodes.push(node.clone());
        planned.insert(
            model.name.clone(),
            Planned {
                node,
                raw: model.raw.clone(),
                materialized,
                unique_key: text("unique_key"),
                relation,
            },
        );
    }
    for seed in &project.seeds {
        if planned.contains_key(&seed.name) {
            return Err(ProjectError::Invalid(
                seed.path.clone(),
                format!("a seed and a model are both named {}", seed.name),
            )
            .into());
        }
        let node = Node {
            name: seed.name.clone(),
            path: seed
                .path
                .strip_prefix(&project.dir)
                .unwrap_or(&seed.path)
                .to_path_buf(),
            seed: true,
            tags: Vec::new(),
            refs: Vec::new(),
        };
        nodes.push(node.clone());
        planned.insert(
            seed.name.clone(),
            Planned {
                node,
                raw: String::new(),
                materialized: Materialized::Seed(seed.path.clone()),
                unique_key: None,
                relation: Relation::table(&database, &schema, &seed.name),
            },
        );
    }
    let graph = Graph::new(nodes)?;
    let selected = graph.select(&options.select)?;
    let order: Vec<String> = graph
        .order()?
        .into_iter()
        .filter(|n| selected.contains(n))
        .collect();

    // Run pass, in dependency order, independent nodes in parallel.
    let threads = options.threads.unwrap_or(project.file.threads).max(1);
    let run_ctx = Arc::new(RunContext {
        session: engine.session_context(&database)?,
        engine: Arc::clone(&engine),
        database: database.clone(),
        schema: schema.clone(),
        project_name: project.file.name.clone(),
        vars: vars.clone(),
        sources: project.sources.clone(),
        planned: planned.clone(),
        full_refresh: options.full_refresh,
        relations: Default::default(),
    });
    // The schema exists before any node builds in it.
    run_ctx
        .execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            render::quoted(&[&database, &schema])
        ))
        .await?;
    *run_ctx.relations() = run_ctx.list_relations().await?;
    let total = order.len();
    println!(
        "Running {total} node(s) of project {} in {database}.{schema} ({threads} at once)",
        project.file.name
    );
    let mut results: BTreeMap<String, NodeResult> = BTreeMap::new();
    let mut compiled: BTreeMap<String, String> = BTreeMap::new();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let mut pending: Vec<String> = order.clone();
    let mut running = tokio::task::JoinSet::new();
    let mut done = 0usize;
    while !pending.is_empty() || !running.is_empty() {
        // Start every node whose selected refs are done, up to `threads`.
        let mut i = 0;
        while i < pending.len() && running.len() < threads {
            let name = pending[i].clone();
            let refs = &planned[&name].node.refs;
            let waiting = refs
                .iter()
                .any(|r| selected.contains(r) && !results.contains_key(r));
            if waiting {
                i += 1;
                continue;
            }
            pending.remove(i);
            if let Some(bad) = refs.iter().find(|r| failed.contains(*r)) {
                failed.insert(name.clone());
                done += 1;
                println!("{done} of {total} SKIP {name}: {bad} failed");
                results.insert(
                    name.clone(),
                    NodeResult {
                        unique_id: run_ctx.unique_id(&name),
                        status: "skipped",
                        message: format!("skipped: {bad} failed"),
                        seconds: 0.0,
                        failures: None,
                        compiled: None,
                    },
                );
                continue;
            }
            let ctx = Arc::clone(&run_ctx);
            running.spawn(async move {
                let started = Instant::now();
                let outcome = ctx.build(&name).await;
                (name, outcome, started.elapsed().as_secs_f64())
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (name, outcome, seconds) =
            joined.map_err(|e| ServerError::Internal(format!("a model's task failed: {e}")))?;
        done += 1;
        let kind = planned[&name].materialized.name();
        let result = match outcome {
            Ok((sql, message)) => {
                println!("{done} of {total} OK {kind} {name} ({message}) in {seconds:.2}s");
                compiled.insert(name.clone(), sql.clone());
                NodeResult {
                    unique_id: run_ctx.unique_id(&name),
                    status: "success",
                    message,
                    seconds,
                    failures: None,
                    compiled: Some(sql),
                }
            }
            Err(e) => {
                println!("{done} of {total} ERROR {kind} {name} in {seconds:.2}s: {e}");
                failed.insert(name.clone());
                NodeResult {
                    unique_id: run_ctx.unique_id(&name),
                    status: "error",
                    message: e.to_string(),
                    seconds,
                    failures: None,
                    compiled: None,
                }
            }
        };
        results.insert(name, result);
    }
    let mut results: Vec<NodeResult> = order.iter().filter_map(|n| results.remove(n)).collect();

    if options.test {
        for test in project.tests.iter().filter(|t| selected.contains(&t.model)) {
            let started = Instant::now();
            let unique_id = format!(
                "test.{}.{}_{}_{}",
                project.file.name,
                test.test.kind(),
                test.model,
                test.column
            );
            let outcome = match run_ctx.test_sql(test) {
                Ok(sql) => run_ctx.count(&sql).await.map(|n| (n, sql)),
                Err(e) => Err(e),
            };
            let seconds = started.elapsed().as_secs_f64();
            let label = format!("{} {}.{}", test.test.kind(), test.model, test.column);
            let result = match outcome {
                Ok((0, sql)) => {
                    println!("PASS {label} in {seconds:.2}s");
                    NodeResult {
                        unique_id,
                        status: "pass",
                        message: "0 failing rows".into(),
                        seconds,
                        failures: Some(0),
                        compiled: Some(sql),
                    }
                }
                Ok((n, sql)) => {
                    println!(
                        "FAIL {n} {label} in {seconds:.2}s ({})",
                        test.path.display()
                    );
                    NodeResult {
                        unique_id,
                        status: "fail",
                        message: format!("Got {n} result(s), configured to fail if != 0"),
                        seconds,
                        failures: Some(n),
                        compiled: Some(sql),
                    }
                }
                Err(e) => {
                    println!("ERROR {label}: {e}");
                    NodeResult {
                        unique_id,
                        status: "error",
                        message: e.to_string(),
                        seconds,
                        failures: None,
                        compiled: None,
                    }
                }
            };
            results.push(result);
        }
    }

    let summary = RunSummary { results };
    artifacts::write(
        &project,
        &run_ctx,
        &graph,
        &compiled,
        &summary,
        started.elapsed().as_secs_f64(),
    )?;
    let count = |s: &str| summary.results.iter().filter(|r| r.status == s).count();
    println!(
        "Done in {:.2}s: {} ok, {} error, {} skipped{}",
        started.elapsed().as_secs_f64(),
        count("success"),
        count("error"),
        count("skipped"),
        if options.test {
            format!(", tests {} pass, {} fail", count("pass"), count("fail"))
        } else {
            String::new()
        }
    );
    Ok(summary)
}

/// What building one node needs.
struct RunContext {
    engine: Arc<Engine>,
    /// One session for every statement of the run.
    session: datafusion::prelude::SessionContext,
    database: String,
    schema: String,
    project_name: String,
    vars: BTreeMap<String, serde_json::Value>,
    sources: BTreeMap<String, BTreeMap<String, project::SourceTable>>,
    planned: BTreeMap<String, Planned>,
    full_refresh: bool,
    /// The schema's relations by name and kind (see
    /// [`RunContext::list_relations`]).
    relations: std::sync::Mutex<BTreeMap<String, String>>,
}

impl RunContext {
    fn unique_id(&self, name: &str) -> String {
        let kind = if self.planned.get(name).is_some_and(|p| p.node.seed) {
            "seed"
        } else {
            "model"
        };
        format!("{kind}.{}.{name}", self.project_name)
    }

    /// Runs `sql` in the project's database.
    async fn execute(&self, sql: &str) -> Result<Vec<StatementResult>, ServerError> {
        let started = Instant::now();
        let result = self.engine.run_in(&self.session, &self.database, sql).await;
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            sql,
            "ran a statement"
        );
        result
    }

    /// The first column of the first row `sql` answers, as text.
    async fn first_value(&self, sql: &str) -> Result<Option<String>, ServerError> {
        for result in self.execute(sql).await? {
            if let StatementResult::Rows { batches, .. } = result {
                if let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) {
                    let text =
                        datafusion::arrow::util::display::array_value_to_string(batch.column(0), 0)
                            .map_err(|e| ServerError::Internal(e.to_string()))?;
                    return Ok(Some(text));
                }
            }
        }
        Ok(None)
    }

    /// The count `sql` answers.
    async fn count(&self, sql: &str) -> Result<u64, ServerError> {
        Ok(self
            .first_value(sql)
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// `ref(name)` during the run pass.
    fn resolve(&self, name: &str) -> Option<Relation> {
        let target = self.planned.get(name)?;
        let mut relation = target.relation.clone();
        match &target.materialized {
            Materialized::Model => relation.rendered = name.to_string(),
            Materialized::Ephemeral => {
                let sql = self.render(target, false).ok()?;
                relation.rendered = format!("({sql})");
            }
            _ => {}
        }
        Some(relation)
    }

    fn render(&self, planned: &Planned, incremental: bool) -> Result<String, ProjectError> {
        let templates = Templates {
            vars: &self.vars,
            sources: &self.sources,
        };
        let resolve = |name: &str| self.resolve(name);
        templates
            .render(
                &planned.raw,
                &planned.relation,
                Pass::Run {
                    resolve: &resolve,
                    incremental,
                },
            )
            .map(|(sql, _)| sql)
            .map_err(|e| template_error(&planned.node.path, e))
    }

    /// The relations of the project's schema and their kinds (`BASE
    /// TABLE`, `VIEW`), read once before the run; builds keep it current.
    async fn list_relations(&self) -> Result<BTreeMap<String, String>, ServerError> {
        let sql = format!(
            "SELECT table_name, table_type FROM information_schema.tables \
             WHERE table_catalog = {} AND table_schema = {}",
            literal(&self.database),
            literal(&self.schema)
        );
        let mut out = BTreeMap::new();
        for result in self.execute(&sql).await? {
            if let StatementResult::Rows { batches, .. } = result {
                for batch in &batches {
                    for row in 0..batch.num_rows() {
                        let text = |c: usize| {
                            datafusion::arrow::util::display::array_value_to_string(
                                batch.column(c),
                                row,
                            )
                            .map_err(|e| ServerError::Internal(e.to_string()))
                        };
                        out.insert(text(0)?, text(1)?);
                    }
                }
            }
        }
        Ok(out)
    }

    fn relations(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.relations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Builds node `name`; answers its compiled SQL and what was done.
    async fn build(&self, name: &str) -> Result<(String, String), ServerError> {
        let planned = &self.planned[name];
        let id = &planned.relation.identifier;
        let (existing, leftovers) = {
            let relations = self.relations();
            let leftover = |suffix: &str| relations.contains_key(&format!("{id}__{suffix}"));
            (
                relations.get(id).cloned(),
                leftover("fedsql_tmp") || leftover("fedsql_backup") || leftover("fedsql_seed"),
            )
        };
        let incremental = matches!(planned.materialized, Materialized::Incremental)
            && existing.as_deref() == Some("BASE TABLE")
            && !self.full_refresh;
        let sql = match &planned.materialized {
            Materialized::Seed(_) => String::new(),
            _ => self.render(planned, incremental)?,
        };
        let steps = materialize::steps(
            &planned.materialized,
            &planned.relation,
            &sql,
            materialize::Existing {
                kind: existing.as_deref(),
                leftovers,
            },
            incremental,
            planned.unique_key.as_deref(),
        )
        .map_err(|m| ProjectError::Invalid(planned.node.path.clone(), m))?;
        for step in &steps.statements {
            self.execute(step).await?;
        }
        let kind = match planned.materialized {
            Materialized::View => Some("VIEW"),
            Materialized::Ephemeral | Materialized::Model => None,
            _ => Some("BASE TABLE"),
        };
        if let Some(kind) = kind {
            let mut relations = self.relations();
            relations.retain(|r, _| !r.starts_with(&format!("{id}__fedsql_")));
            relations.insert(id.clone(), kind.to_string());
        }
        Ok((sql, steps.describe))
    }

    /// The query counting a schema test's failing rows.
    fn test_sql(&self, test: &project::SchemaTest) -> Result<String, ServerError> {
        let planned = self.planned.get(&test.model).ok_or_else(|| {
            ProjectError::Invalid(
                test.path.clone(),
                format!("a test of {}, which is no model or seed", test.model),
            )
        })?;
        let to = match &test.test {
            project::ColumnTest::Relationships { to, .. } => {
                let templates = Templates {
                    vars: &self.vars,
                    sources: &self.sources,
                };
                let resolve = |name: &str| self.resolve(name);
                let (rendered, _) = templates
                    .render(
                        &format!("{{{{ {to} }}}}"),
                        &planned.relation,
                        Pass::Run {
                            resolve: &resolve,
                            incremental: false,
                        },
                    )
                    .map_err(|e| template_error(&test.path, e))?;
                Some(rendered)
            }
            _ => None,
        };
        Ok(materialize::test_query(
            &planned.relation,
            &test.column,
            &test.test,
            to.as_deref(),
        ))
    }
}

/// `s` as a SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl From<ProjectError> for ServerError {
    fn from(e: ProjectError) -> ServerError {
        ServerError::Project(e.to_string())
    }
}
