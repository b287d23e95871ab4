//! Test harness: starts the real `fedsql` binary on a free loopback port and
//! connects real clients to it.
//!
//! The binary is found next to the test executable's `deps/` folder (what
//! `cargo build` produces), or at `$FEDSQL_BIN`.

pub mod fuzz;
pub mod slt;
pub mod tpch;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Demo size used by the tests: 2,000 customers, 20,000 transactions.
pub const TEST_DEMO_SCALE: &str = "0.1";

/// Path of the `fedsql` binary under test.
pub fn fedsql_bin() -> PathBuf {
    if let Ok(path) = std::env::var("FEDSQL_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/fedsql
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("fedsql");
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build --bin fedsql` (scripts/test does), \
         or set FEDSQL_BIN",
        bin.display()
    );
    bin
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A running `fedsql serve`, stopped (SIGTERM, then kill) when dropped.
pub struct FedsqlServer {
    child: Child,
    /// The Postgres-wire port.
    pub port: u16,
    /// The Flight SQL port.
    pub flight_port: u16,
    pub data_dir: PathBuf,
}

impl FedsqlServer {
    /// Starts a server on `data_dir` with the small test demo catalog.
    pub fn start(data_dir: &Path) -> FedsqlServer {
        Self::start_with(data_dir, &[])
    }

    /// Starts a server with extra command-line arguments.
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> FedsqlServer {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// Starts a server with extra arguments and environment variables.
    ///
    /// Tests run in parallel and a port from [`free_port`] is only free
    /// until someone binds it, so a server that exits during start-up is
    /// started again on other ports (twice at most).
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> FedsqlServer {
        let mut attempt = 1;
        loop {
            match Self::try_start(data_dir, extra, env) {
                Ok(server) => return server,
                Err(status) if attempt < 3 => {
                    eprintln!(
                        "fedsql serve exited during start-up ({status}); retrying on other ports"
                    );
                    attempt += 1;
                }
                Err(status) => panic!("fedsql serve exited during start-up: {status}"),
            }
        }
    }

    fn try_start(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<FedsqlServer, std::process::ExitStatus> {
        Self::try_start_on(data_dir, extra, env, (free_port(), free_port()))
    }

    /// Kills the server at once (SIGKILL), as a crash or a power cut would,
    /// and starts it again on the same data dir and ports with `extra` and
    /// `env`, so clients that knew its address (sites) find it again.
    pub fn crash_and_restart(&mut self, extra: &[&str], env: &[(&str, &str)]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Self::try_start_on(&self.data_dir, extra, env, (self.port, self.flight_port)) {
                Ok(server) => {
                    *self = server;
                    return;
                }
                // The kernel may hold the ports a moment after the kill.
                Err(status) if Instant::now() < deadline => {
                    eprintln!("fedsql serve exited during restart ({status}); retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(status) => panic!("fedsql serve did not restart: {status}"),
            }
        }
    }

    fn try_start_on(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        (port, flight_port): (u16, u16),
    ) -> Result<FedsqlServer, std::process::ExitStatus> {
        let mut child = Command::new(fedsql_bin())
            .envs(env.iter().copied())
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--pg-listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--flight-listen")
            .arg(format!("127.0.0.1:{flight_port}"))
            .arg("--demo-scale")
            .arg(TEST_DEMO_SCALE)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fedsql serve");
        // The banner's psql line is printed once the listener is bound.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut ready_sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !ready_sent && line.trim_start().starts_with("psql ") {
                    let _ = tx.send(());
                    ready_sent = true;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(status);
            }
            assert!(
                Instant::now() < deadline,
                "fedsql serve did not start within 60 s"
            );
        }
        Ok(FedsqlServer {
            child,
            port,
            flight_port,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// A libpq connection string for `database`.
    pub fn conn_str(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=fedsql dbname={database}",
            self.port
        )
    }

    /// Connects with tokio-postgres, driving the connection in the background.
    pub async fn connect(&self, database: &str) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.conn_str(database), tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect to fedsql on port {}: {e}", self.port));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Whether the server process is still running (it has not exited,
    /// crashed or aborted).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the server with SIGTERM and waits for it to exit cleanly.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().expect("wait for fedsql");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for FedsqlServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// Runs the real `psql` against `server`, returning (success, stdout, stderr).
pub fn psql(server: &FedsqlServer, database: &str, command: &str) -> (bool, String, String) {
    let out = Command::new("psql")
        .args(["-X", "-v", "VERBOSITY=verbose", "-h", "127.0.0.1", "-p"])
        .arg(server.port.to_string())
        .args(["-U", "fedsql", "-d", database, "-c", command])
        .output()
        .expect(
            "psql not found: install postgresql-client (scripts/test installs it: \
             apt-get install -y postgresql-client)",
        );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The PostgreSQL the source tests federate, from `$FEDSQL_TEST_PG`
/// (`host:port`, trust auth for user `postgres`), which `scripts/test` starts.
pub fn test_postgres() -> String {
    std::env::var("FEDSQL_TEST_PG").unwrap_or_else(|_| {
        panic!(
            "FEDSQL_TEST_PG is not set: these tests need a PostgreSQL 15. Run scripts/test \
             (it starts one on loopback), or start one yourself and set FEDSQL_TEST_PG=127.0.0.1:PORT \
             (user postgres, trust auth; see shared SERVICES.md)"
        )
    })
}

/// Creates (or re-creates) database `name` in the test PostgreSQL and returns
/// a client connected to it plus its `postgres://` URL.
pub async fn fresh_postgres_database(name: &str) -> (tokio_postgres::Client, String) {
    let addr = test_postgres();
    let (host, port) = addr.rsplit_once(':').expect("FEDSQL_TEST_PG is host:port");
    let admin_url = format!("postgres://postgres@{host}:{port}/postgres");
    let (admin, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {addr}: {e}"));
    tokio::spawn(connection);
    admin
        .simple_query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .unwrap();
    admin
        .simple_query(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap();
    let url = format!("postgres://postgres@{host}:{port}/{name}");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    (client, url)
}

/// The SQLSTATE of a client error (or a description of why it has none).
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// The server's message of a client error.
pub fn error_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default()
}

/// The text rows of a simple query, or `SQLSTATE: message`.
pub async fn try_text_rows(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, String> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|e| format!("{}: {}", sqlstate(&e), error_message(&e)))?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect())
}

/// The text rows of a simple query that must succeed.
pub async fn text_rows(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    try_text_rows(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The rows of `EXPLAIN sql`, one line per row.
pub async fn explain(client: &tokio_postgres::Client, sql: &str) -> String {
    text_rows(client, &format!("EXPLAIN {sql}"))
        .await
        .into_iter()
        .map(|r| r.into_iter().flatten().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A server with a Postgres source `pg` over a fresh database `database`
/// prepared by `setup` (SQL run in that database first).
pub async fn server_with_postgres_source(
    database: &str,
    setup: &str,
) -> (
    tokio_postgres::Client,
    FedsqlServer,
    tempfile::TempDir,
    tokio_postgres::Client,
) {
    server_with_postgres_source_options(database, setup, "").await
}

/// Like [`server_with_postgres_source`], with more source options
/// (`", partitions 4"`).
pub async fn server_with_postgres_source_options(
    database: &str,
    setup: &str,
    more_options: &str,
) -> (
    tokio_postgres::Client,
    FedsqlServer,
    tempfile::TempDir,
    tokio_postgres::Client,
) {
    let (pg, url) = fresh_postgres_database(database).await;
    pg.batch_execute(setup).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let client = server.connect("demo").await;
    client
        .simple_query(&format!(
            "CREATE SOURCE pg TYPE postgres OPTIONS (url '{url}'{more_options})"
        ))
        .await
        .unwrap();
    (pg, server, dir, client)
}

/// The MariaDB the ODBC tests use as a warehouse, from `$FEDSQL_TEST_MARIADB`
/// (`host:port`, user `root` without a password), which `scripts/test` starts.
pub fn test_mariadb() -> String {
    std::env::var("FEDSQL_TEST_MARIADB").unwrap_or_else(|_| {
        panic!(
            "FEDSQL_TEST_MARIADB is not set: these tests need a MariaDB. Run scripts/test \
             (it starts one on loopback), or start one yourself (see shared SERVICES.md) and set \
             FEDSQL_TEST_MARIADB=127.0.0.1:PORT (user root, no password)"
        )
    })
}

/// Runs `statements` through ODBC with `connection_string` (test setup goes
/// through the same driver manager and drivers fedsql uses).
pub fn odbc_execute(connection_string: &str, statements: &[&str]) {
    let env = odbc_api::environment().expect("ODBC environment (is unixODBC installed?)");
    let conn = env
        .connect_with_connection_string(connection_string, odbc_api::ConnectionOptions::default())
        .unwrap_or_else(|e| panic!("cannot connect with {connection_string}: {e}"));
    for sql in statements {
        conn.execute(sql, (), None)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// The first column of the first row `sql` returns through ODBC, as text
/// (`None` for no row or NULL).
pub fn odbc_scalar(connection_string: &str, sql: &str) -> Option<String> {
    use odbc_api::Cursor;
    let env = odbc_api::environment().expect("ODBC environment (is unixODBC installed?)");
    let conn = env
        .connect_with_connection_string(connection_string, odbc_api::ConnectionOptions::default())
        .unwrap_or_else(|e| panic!("cannot connect with {connection_string}: {e}"));
    let mut cursor = conn
        .execute(sql, (), None)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap_or_else(|| panic!("{sql} returned no result set"));
    let mut row = cursor.next_row().unwrap_or_else(|e| panic!("{sql}: {e}"))?;
    let mut text = Vec::new();
    let present = row
        .get_text(1, &mut text)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    present.then(|| String::from_utf8_lossy(&text).into_owned())
}

/// Re-creates database `name` in the test MariaDB; returns an ODBC
/// connection string (MariaDB Unicode driver) for it.
pub fn fresh_mariadb_database(name: &str) -> String {
    let addr = test_mariadb();
    let (host, port) = addr
        .rsplit_once(':')
        .expect("FEDSQL_TEST_MARIADB is host:port");
    let server = format!("Driver={{MariaDB Unicode}};Server={host};Port={port};Uid=root;Pwd=;");
    odbc_execute(
        &server,
        &[
            &format!("DROP DATABASE IF EXISTS `{name}`"),
            &format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"),
        ],
    );
    format!("{server}Database={name};")
}

/// An ODBC connection string for the test PostgreSQL database `database`
/// through psqlODBC.
pub fn postgres_odbc_string(database: &str) -> String {
    let addr = test_postgres();
    let (host, port) = addr.rsplit_once(':').expect("FEDSQL_TEST_PG is host:port");
    format!("Driver={{PostgreSQL Unicode}};Server={host};Port={port};Database={database};Uid=postgres;Pwd=;")
}

/// The Kafka-protocol broker the Kafka tests use, from `$FEDSQL_TEST_KAFKA`
/// (`host:port`), which `scripts/test` starts (tansu with SQLite storage).
pub fn test_kafka() -> String {
    std::env::var("FEDSQL_TEST_KAFKA").unwrap_or_else(|_| {
        panic!(
            "FEDSQL_TEST_KAFKA is not set: these tests need a Kafka-protocol broker. Run \
             scripts/test (it builds and starts tansu on loopback), or start one yourself and set \
             FEDSQL_TEST_KAFKA=127.0.0.1:PORT and FEDSQL_TANSU=/path/to/tansu (see shared SERVICES.md)"
        )
    })
}

/// Creates `topic` with `partitions` partitions on the test broker (with
/// tansu's own CLI: `$FEDSQL_TANSU topic create`).
pub fn create_topic(topic: &str, partitions: u32) {
    create_topic_at(&test_kafka(), topic, partitions)
}

/// Creates `topic` on the broker at `brokers` (`host:port`).
pub fn create_topic_at(brokers: &str, topic: &str, partitions: u32) {
    let tansu = tansu_bin();
    let broker = format!("tcp://{brokers}");
    let out = Command::new(&tansu)
        .args([
            "topic",
            "create",
            topic,
            "--broker",
            &broker,
            "--partitions",
        ])
        .arg(partitions.to_string())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {tansu} ({e}): set FEDSQL_TANSU (scripts/test does)")
        });
    assert!(
        out.status.success(),
        "tansu topic create {topic}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One message to produce: (partition, timestamp ms, key, payload).
pub type TestMessage = (i32, i64, Option<String>, String);

/// Produces `messages` to `topic` on the test broker and waits until all
/// are acknowledged.
pub fn produce(topic: &str, messages: &[TestMessage]) {
    produce_at(&test_kafka(), topic, messages)
}

/// Produces `messages` to `topic` on the broker at `brokers`.
pub fn produce_at(brokers: &str, topic: &str, messages: &[TestMessage]) {
    use rdkafka::producer::{BaseRecord, Producer};
    let producer: rdkafka::producer::BaseProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .expect("a Kafka producer");
    for (partition, timestamp, key, payload) in messages {
        let mut record = BaseRecord::<String, String>::to(topic)
            .partition(*partition)
            .timestamp(*timestamp)
            .payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        let mut record = Some(record);
        while let Some(r) = record.take() {
            if let Err((e, r)) = producer.send(r) {
                // A full queue drains as the broker acknowledges.
                producer.poll(std::time::Duration::from_millis(50));
                if !matches!(
                    e,
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull
                    )
                ) {
                    panic!("producing to {topic}: {e}");
                }
                record = Some(r);
            }
        }
        producer.poll(std::time::Duration::ZERO);
    }
    producer
        .flush(std::time::Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("flushing to {topic}: {e}"));
}

/// The tansu binary (`$FEDSQL_TANSU`, which scripts/test sets).
fn tansu_bin() -> String {
    std::env::var("FEDSQL_TANSU").unwrap_or_else(|_| "tansu".to_string())
}

/// A tansu broker of the test's own (SQLite storage in a temporary folder,
/// on a free loopback port), for tests that stop a broker; killed when
/// dropped.
pub struct PrivateBroker {
    child: Child,
    /// `127.0.0.1:port`.
    pub address: String,
    _dir: tempfile::TempDir,
}

impl PrivateBroker {
    /// Starts the broker and waits until it is ready.
    pub fn start() -> PrivateBroker {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let address = format!("127.0.0.1:{}", free_port());
        let url = format!("tcp://{address}");
        let log = std::fs::File::create(dir.path().join("log")).expect("a log file");
        // tansu reads a .env from its working directory: an empty one.
        let child = Command::new(tansu_bin())
            .current_dir(dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): set FEDSQL_TANSU (scripts/test does)",
                    tansu_bin()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
            if log.contains("ready in") {
                break;
            }
            assert!(Instant::now() < deadline, "tansu did not start: {log}");
            std::thread::sleep(Duration::from_millis(50));
        }
        PrivateBroker {
            child,
            address,
            _dir: dir,
        }
    }

    /// Kills the broker at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
    }
}
