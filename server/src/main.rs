//! The `fedsql` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use fedsql_server::engine::StatementResult;
use fedsql_server::output::{render, OutputFormat};
use fedsql_server::{Engine, ServerError, SettingsArgs};

// mimalloc, as DataFusion's CLI: it reuses freed pages where glibc maps and
// unmaps every large buffer (weights, Arrow batches) and pays page faults
// for each — most of the weight exchange's time before.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "fedsql",
    version,
    about = "SQL-first federated analytics and federated learning"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (Postgres wire on 127.0.0.1:5433, demo catalog loaded).
    Serve {
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Run SQL once, embedded (or against a running server with --server).
    Query {
        #[command(flatten)]
        settings: SettingsArgs,
        /// A running fedsql (or any Postgres) to send the SQL to, e.g.
        /// postgres://fedsql@127.0.0.1:5433/demo.
        #[arg(long)]
        server: Option<String>,
        /// Read the SQL from this file.
        #[arg(short = 'f', long = "file", conflicts_with = "sql")]
        file: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        /// Database (catalog) for unqualified names [default: demo].
        #[arg(short = 'd', long)]
        database: Option<String>,
        /// The SQL to run.
        sql: Option<String>,
    },
    /// Run a dbt-style project folder (fedsql_project.toml, models/,
    /// seeds/) on the embedded engine and its data dir; exits non-zero if a
    /// model fails or a test finds failing rows.
    Run {
        #[command(flatten)]
        options: fedsql_server::run::RunOptions,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Run a federated site next to its own data: it dials out to the
    /// coordinator, runs training queries on its own catalog under its
    /// `[site]` policy, and sends back only weights and metrics. With
    /// --pg-listen it also serves its own catalog there (for its admin:
    /// CREATE SOURCE, queries).
    Site {
        /// The site's name, as the coordinator's CREATE SITE / [[sites]] has it.
        #[arg(long)]
        name: String,
        /// The coordinator's Flight endpoint, e.g. http://10.0.0.1:50051.
        #[arg(long)]
        coordinator: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(
                    // Driver and broker clients log what fedsql reports as
                    // errors itself (with a SQLSTATE).
                    "warn,fedsql=info,odbc_api=error,librdkafka=off,rdkafka=off",
                )
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Planning and running a statement recurse over its plan and
        // expression trees. DataFusion grows the stack on the heap at its
        // own recursion points (`recursive_protection`), but naming,
        // displaying and dropping expressions do not; with tokio's 2 MiB a
        // chain of 250 `+` terms overflowed a dev-build worker and aborted
        // the process. Statements deeper than the front's limit
        // (`fedsql_sql::complexity::MAX_EXPRESSION_DEPTH`) are refused with
        // 54001; this stack runs everything under it. Untouched stack pages
        // cost no memory.
        .thread_stack_size(fedsql_server::WORKER_STACK_BYTES)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ERROR {}: {e}", e.sqlstate());
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), ServerError> {
    match cli.command {
        Command::Serve { settings } => fedsql_server::serve::serve(settings.resolve()?).await,
        Command::Query {
            settings,
            server,
            file,
            format,
            database,
            sql,
        } => {
            let sql = match (file, sql) {
                (Some(path), _) => {
                    std::fs::read_to_string(&path).map_err(|e| ServerError::io(&path, e))?
                }
                (None, Some(sql)) => sql,
                (None, None) => {
                    return Err(ServerError::Config(
                        "give the SQL as an argument or with -f FILE".into(),
                    ))
                }
            };
            match server {
                Some(url) => query_remote(&url, &sql, format).await,
                None => query_embedded(settings, database, &sql, format).await,
            }
        }
        Command::Run { options, settings } => {
            let engine = Engine::open(settings.resolve()?).await?;
            let summary = fedsql_server::run::run(engine, options).await?;
            if summary.ok() {
                Ok(())
            } else {
                Err(ServerError::Project(
                    "a model failed or a test found failing rows (target/run_results.json)".into(),
                ))
            }
        }
        Command::Site {
            name,
            coordinator,
            settings,
        } => {
            // The site listens on the Postgres wire only when asked to.
            let pg_listen = settings.pg_listen;
            fedsql_server::sites::agent::run_site(settings.resolve()?, name, coordinator, pg_listen)
                .await
        }
    }
}

async fn query_embedded(
    settings: SettingsArgs,
    database: Option<String>,
    sql: &str,
    format: OutputFormat,
) -> Result<(), ServerError> {
    let engine: Arc<Engine> = Engine::open(settings.resolve()?).await?;
    let database = engine.resolve_database(database.as_deref())?;
    for result in engine.run(&database, sql).await? {
        match result {
            StatementResult::Rows { schema, batches } => {
                println!("{}", render(format, &schema, &batches)?)
            }
            StatementResult::Command(tag) => println!("{tag}"),
        }
    }
    Ok(())
}

/// Sends `sql` over the Postgres wire (simple protocol) and prints the text
/// rows the server returns.
async fn query_remote(url: &str, sql: &str, format: OutputFormat) -> Result<(), ServerError> {
    let unreachable = |e: tokio_postgres::Error| ServerError::Query {
        sqlstate: "08001".into(),
        message: format!("cannot connect to {url}: {e}"),
        position: None,
    };
    let mut config: tokio_postgres::Config = url.parse().map_err(unreachable)?;
    // As libpq: a password not in the URL comes from PGPASSWORD.
    if config.get_password().is_none() {
        if let Ok(password) = std::env::var("PGPASSWORD") {
            config.password(password);
        }
    }
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(unreachable)?;
    tokio::spawn(connection);
    let messages = client.simple_query(sql).await.map_err(|e| {
        let (sqlstate, position) = e
            .as_db_error()
            .map(|db| {
                let pos = match db.position() {
                    Some(tokio_postgres::error::ErrorPosition::Original(p)) => Some(*p as usize),
                    _ => None,
                };
                (db.code().code().to_string(), pos)
            })
            .unwrap_or(("08006".into(), None));
        ServerError::Query {
            sqlstate,
            message: e
                .as_db_error()
                .map(|db| db.message().to_string())
                .unwrap_or_else(|| e.to_string()),
            position,
        }
    })?;
    let mut columns: Option<Vec<String>> = None;
    let mut rows: Vec<Vec<Option<String>>> = Vec::new();
    let flush = |columns: &mut Option<Vec<String>>, rows: &mut Vec<Vec<Option<String>>>| {
        if let Some(names) = columns.take() {
            let schema = Arc::new(Schema::new(
                names
                    .iter()
                    .map(|n| Field::new(n, DataType::Utf8, true))
                    .collect::<Vec<_>>(),
            ));
            let arrays: Vec<ArrayRef> = (0..names.len())
                .map(|i| {
                    Arc::new(StringArray::from(
                        rows.iter().map(|r| r[i].clone()).collect::<Vec<_>>(),
                    )) as ArrayRef
                })
                .collect();
            rows.clear();
            let batch = RecordBatch::try_new(Arc::clone(&schema), arrays).map_err(|e| {
                ServerError::Query {
                    sqlstate: "XX000".into(),
                    message: e.to_string(),
                    position: None,
                }
            })?;
            println!("{}", render(format, &schema, &[batch])?);
        }
        Ok::<(), ServerError>(())
    };
    for message in messages {
        match message {
            tokio_postgres::SimpleQueryMessage::RowDescription(desc) => {
                columns = Some(desc.iter().map(|c| c.name().to_string()).collect());
            }
            tokio_postgres::SimpleQueryMessage::Row(row) => {
                if columns.is_none() {
                    columns = Some(row.columns().iter().map(|c| c.name().to_string()).collect());
                }
                rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_string))
                        .collect(),
                );
            }
            tokio_postgres::SimpleQueryMessage::CommandComplete(n) => {
                if columns.is_some() {
                    flush(&mut columns, &mut rows)?;
                } else {
                    println!("OK {n}");
                }
            }
            _ => {}
        }
    }
    flush(&mut columns, &mut rows)
}
