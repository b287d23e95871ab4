//! Real federation: a coordinator (`fedsql serve`) and three `fedsql site`
//! processes, each site with its own PostgreSQL database holding one
//! region's rows. Training runs `FEDERATED ON SITES`; the rows stay in each
//! site's database (a byte-counting proxy between each site and the
//! coordinator sees no row content), a site's policy refuses tables it does
//! not allow, a wrong token is refused, and a site killed mid-training is a
//! failed round for it, then rejoins once restarted.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fedsql_tests::{
    error_message, fedsql_bin, fresh_postgres_database, text_rows, try_text_rows, FedsqlServer,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const REGIONS: [&str; 3] = ["apac", "eu", "us"];

/// Deterministic rows for `region`: fraud is likely for large online
/// amounts, with a region-specific mix (non-IID). Each row carries a unique
/// secret marker in `memo`, which the training query reads as free text.
fn region_rows(region: &str, n: usize) -> Vec<String> {
    let offset = match region {
        "apac" => 0.0,
        "eu" => 150.0,
        _ => 300.0,
    };
    (0..n)
        .map(|i| {
            let x = (i as f64 * 37.0 + offset) % 1000.0;
            let channel = ["online", "pos", "atm"][(i * 7 + region.len()) % 3];
            let fraud = (x > 600.0 && channel == "online") || (i % 23 == 0);
            format!(
                "({x}, '{channel}', 'memo SECRET{region}{i:05} paid', {fraud}, 'ROWSECRET-{region}-{i}')"
            )
        })
        .collect()
}

/// Creates database `fedsql_site_<name>_<n>` with `bank.transactions`
/// (this region's rows) and `bank.customers` (which no policy allows). `n`
/// differs per call: the tests run in parallel, each with its own sites.
async fn site_database(region: &str, rows: usize) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (client, url) = fresh_postgres_database(&format!("fedsql_site_{region}_{n}")).await;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA bank;
             CREATE TABLE bank.transactions (amount float8, channel text, memo text, \
                 is_fraud boolean, secret text);
             INSERT INTO bank.transactions VALUES {};
             CREATE TABLE bank.customers (id int, name text);
             INSERT INTO bank.customers VALUES (1, 'NOT-ALLOWED');",
            region_rows(region, rows).join(", ")
        ))
        .await
        .unwrap();
    url
}

/// A TCP proxy that records every byte its clients send.
struct CountingProxy {
    port: u16,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl CountingProxy {
    async fn start(target: u16) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&sent);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match ri.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            record.lock().unwrap().extend_from_slice(&buf[..n]);
                            if wo.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = wo.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut ro, &mut wi).await;
                        let _ = wi.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        CountingProxy { port, sent }
    }

    fn bytes(&self) -> Vec<u8> {
        self.sent.lock().unwrap().clone()
    }
}

/// A running `fedsql site`, killed when dropped.
struct SiteProcess {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl SiteProcess {
    fn start(
        name: &str,
        coordinator_port: u16,
        config: &Path,
        data_dir: &Path,
        token: &str,
    ) -> SiteProcess {
        Self::start_with(name, coordinator_port, config, data_dir, token, &[])
    }

    /// [`SiteProcess::start`] with extra command-line arguments.
    fn start_with(
        name: &str,
        coordinator_port: u16,
        config: &Path,
        data_dir: &Path,
        token: &str,
        extra: &[&str],
    ) -> SiteProcess {
        Self::start_with_env(name, coordinator_port, config, data_dir, token, extra, &[])
    }

    /// [`SiteProcess::start_with`] with extra environment variables.
    fn start_with_env(
        name: &str,
        coordinator_port: u16,
        config: &Path,
        data_dir: &Path,
        token: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> SiteProcess {
        let url = format!("http://127.0.0.1:{coordinator_port}");
        Self::start_at(name, &url, config, data_dir, token, extra, env)
    }

    /// A site dialling the coordinator at `url`.
    fn start_at(
        name: &str,
        url: &str,
        config: &Path,
        data_dir: &Path,
        token: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> SiteProcess {
        let mut child = Command::new(fedsql_bin())
            .envs(env.iter().copied())
            .args(["site", "--name", name, "--coordinator", url])
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--no-demo")
            .args(extra)
            .env("SITE_TOKEN", token)
            .env("RUST_LOG", "warn,fedsql=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fedsql site");
        let stderr = Arc::new(Mutex::new(String::new()));
        let log = Arc::clone(&stderr);
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("[site] {line}");
                log.lock().unwrap().push_str(&line);
                log.lock().unwrap().push('\n');
            }
        });
        SiteProcess { child, stderr }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until this process has reached the coordinator (a restarted
    /// site's old entry can look online for a while: starting a run
    /// before the new process connected would prepare the dead one).
    async fn wait_connected(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.log().contains("connected to the coordinator") {
            assert!(
                Instant::now() < deadline,
                "the site did not connect within 60 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for SiteProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A site's config: its Postgres source `bank`, the tables it allows and,
/// when it allows `bank.transactions`, that table's analytics policy:
/// aggregates over groups of at least 10 rows.
fn site_config(dir: &Path, region: &str, url: &str, allow: &[&str]) -> PathBuf {
    let path = dir.join(format!("{region}.toml"));
    let analytics = if allow.contains(&"bank.transactions") {
        "\n[[site.analytics]]\ntable = \"bank.transactions\"\npolicy = \"aggregates\"\n\
         min_group_size = 10\n"
    } else {
        ""
    };
    let allow: Vec<String> = allow.iter().map(|t| format!("\"{t}\"")).collect();
    std::fs::write(
        &path,
        format!(
            "[[sources]]\nname = \"bank\"\ntype = \"postgres\"\nurl = \"{url}\"\n\n\
             [site]\ntoken_env = \"SITE_TOKEN\"\nallow = [{}]\ndatabase = \"bank\"\n{analytics}",
            allow.join(", ")
        ),
    )
    .unwrap();
    path
}

fn token(region: &str) -> String {
    format!("token-for-{region}-0123456789")
}

/// The coordinator's environment: `<REGION>_TOKEN` for every region, as
/// its `CREATE SITE … OPTIONS (token_env …)` name them.
fn token_env() -> Vec<(String, String)> {
    REGIONS
        .iter()
        .map(|r| (format!("{}_TOKEN", r.to_uppercase()), token(r)))
        .collect()
}

async fn wait_online(client: &tokio_postgres::Client, names: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = text_rows(
            client,
            "SELECT name FROM fedsql.system.sites WHERE status = 'online' ORDER BY name",
        )
        .await;
        let online: Vec<String> = rows.into_iter().filter_map(|r| r[0].clone()).collect();
        if names.iter().all(|n| online.iter().any(|o| o == n)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sites {names:?} not online within 60 s (online: {online:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A coordinator with CREATE SITE for the three regions, each site started
/// through its own counting proxy.
async fn coordinator_and_sites(
    dir: &Path,
    rows: usize,
    allow: &[&str],
) -> (
    FedsqlServer,
    tokio_postgres::Client,
    Vec<(SiteProcess, CountingProxy, PathBuf)>,
) {
    coordinator_and_sites_with(dir, rows, allow, &[]).await
}

/// [`coordinator_and_sites`] with extra arguments for the coordinator.
async fn coordinator_and_sites_with(
    dir: &Path,
    rows: usize,
    allow: &[&str],
    coordinator_args: &[&str],
) -> (
    FedsqlServer,
    tokio_postgres::Client,
    Vec<(SiteProcess, CountingProxy, PathBuf)>,
) {
    let env = token_env();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server =
        FedsqlServer::start_with_env(&dir.join("coordinator"), coordinator_args, &env_refs);
    let client = server.connect("demo").await;
    let mut sites = Vec::new();
    for region in REGIONS {
        client
            .simple_query(&format!(
                "CREATE SITE {region} OPTIONS (token_env '{}_TOKEN')",
                region.to_uppercase()
            ))
            .await
            .unwrap();
        let url = site_database(region, rows).await;
        let config = site_config(dir, region, &url, allow);
        let proxy = CountingProxy::start(server.flight_port).await;
        let data_dir = dir.join(format!("site-{region}"));
        let site = SiteProcess::start(region, proxy.port, &config, &data_dir, &token(region));
        sites.push((site, proxy, config));
    }
    wait_online(&client, &REGIONS).await;
    (server, client, sites)
}

/// Restarts `region`'s site process (same proxy, config and data dir) with
/// `env`, and waits until the new process is online at the coordinator.
async fn restart_site(
    client: &tokio_postgres::Client,
    dir: &Path,
    site: &mut (SiteProcess, CountingProxy, PathBuf),
    region: &str,
    env: &[(&str, &str)],
) {
    site.0.kill();
    site.0 = SiteProcess::start_with_env(
        region,
        site.1.port,
        &site.2,
        &dir.join(format!("site-{region}")),
        &token(region),
        &[],
        env,
    );
    site.0.wait_connected().await;
    wait_online(client, &REGIONS).await;
}

/// The validation accuracy of `model`'s active version.
async fn accuracy_of(client: &tokio_postgres::Client, model: &str) -> f64 {
    let rows = text_rows(
        client,
        &format!("SELECT metrics FROM fedsql.system.models WHERE model = '{model}' AND active"),
    )
    .await;
    let metrics = rows[0][0].clone().unwrap();
    let at = metrics.find("\"accuracy\":").expect("an accuracy metric") + "\"accuracy\":".len();
    let number: String = metrics[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '-')
        .collect();
    number
        .parse()
        .unwrap_or_else(|_| panic!("accuracy in {metrics}"))
}

const TRAINING_QUERY: &str = "SELECT amount, channel, memo, is_fraud FROM bank.transactions";

#[tokio::test]
async fn training_over_three_sites_keeps_rows_at_the_sites() {
    let dir = tempfile::tempdir().unwrap();
    // The weight exchange too is reached through a capturing proxy: the
    // coordinator listens on a fixed exchange port and tells the sites the
    // proxy's address.
    let exchange_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let exchange_proxy = CountingProxy::start(exchange_port).await;
    let (port, advertise) = (
        exchange_port.to_string(),
        format!("127.0.0.1:{}", exchange_proxy.port),
    );
    let (_server, client, sites) = coordinator_and_sites_with(
        dir.path(),
        400,
        &["bank.transactions"],
        &["--exchange-port", &port, "--exchange-advertise", &advertise],
    )
    .await;

    // The coordinator sees each site's offered tables: names and types only.
    let rows = text_rows(
        &client,
        "SELECT name, status, version, tables FROM fedsql.system.sites ORDER BY name",
    )
    .await;
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert_eq!(row[1].as_deref(), Some("online"));
        assert_eq!(row[2].as_deref(), Some(env!("CARGO_PKG_VERSION")));
        let tables = row[3].clone().unwrap();
        assert!(
            tables.starts_with("bank.bank.transactions(amount Float64"),
            "{tables}"
        );
        assert!(!tables.contains("customers"), "{tables}");
        assert!(
            tables.ends_with("analytics aggregates (min_group_size 10)"),
            "{tables}"
        );
    }

    let train = format!(
        "TRAIN MODEL fraud_sites USING logistic_regression PREDICT is_fraud \
         FROM ({TRAINING_QUERY}) FEDERATED ON SITES ('apac', 'eu', 'us') \
         WITH (rounds = 4, learning_rate = 0.1, optimizer = 'adam', seed = 7, round_timeout = '60s')"
    );
    let trained = text_rows(&client, &train).await;
    assert_eq!(trained[0][0].as_deref(), Some("fraud_sites"));
    assert_eq!(trained[0][6].as_deref(), Some("3"));

    // Every site trained every round; the bytes it sent per round are its
    // update (the model's parameters as Float32) plus framing.
    let history = text_rows(
        &client,
        "SELECT round, client, status, num_examples, bytes_received, accuracy FROM fedsql.system.training_rounds \
         WHERE model = 'fraud_sites' AND phase = 'train' ORDER BY round, client",
    )
    .await;
    assert_eq!(history.len(), 12, "{history:?}");
    let parameters: u64 = text_rows(
        &client,
        "SELECT parameters FROM fedsql.system.models WHERE model = 'fraud_sites'",
    )
    .await[0][0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    let parameter_bytes = 4 * parameters;
    let mut counted = 0;
    for row in &history {
        assert_eq!(row[2].as_deref(), Some("ok"), "{row:?}");
        let examples: u64 = row[3].as_deref().unwrap().parse().unwrap();
        assert!(examples > 250 && examples <= 400, "{row:?}");
        // Flight data of one update: the weights, and a schema message
        // and IPC framing (under 512 bytes).
        let received: u64 = row[4].as_deref().unwrap().parse().unwrap();
        assert!(
            received >= parameter_bytes && received <= parameter_bytes + 512,
            "{row:?}: {parameters} parameters"
        );
        counted += received;
    }
    // On the wire to the exchange (captured): the updates the coordinator
    // counted, plus per round and site the fetch and evaluate calls and
    // HTTP/2 + gRPC framing — bounded at 1.1 × the parameters + 4 KiB.
    let wire = exchange_proxy.bytes().len() as u64;
    let per_site_round = wire as f64 / 12.0;
    eprintln!(
        "exchange: {per_site_round:.0} bytes per site and round on the wire, \
         {} of update data, {parameter_bytes} parameter bytes",
        counted / 12
    );
    assert!(
        wire >= counted && per_site_round <= 1.1 * parameter_bytes as f64 + 4096.0,
        "{wire} bytes to the exchange for {counted} bytes of updates \
         ({per_site_round:.0} per site and round, {parameter_bytes} parameter bytes)"
    );
    let accuracy = accuracy_of(&client, "fraud_sites").await;
    assert!(accuracy > 0.75, "accuracy over sites {accuracy}");

    // The same rows as FEDERATED BY partitions give the same model quality
    // (same seed, same client order).
    let (all, url) = fresh_postgres_database("fedsql_sites_all").await;
    let mut values = Vec::new();
    for region in REGIONS {
        for row in region_rows(region, 400) {
            values.push(format!("('{region}', {}", &row[1..]));
        }
    }
    all.batch_execute(&format!(
        "CREATE SCHEMA bank; CREATE TABLE bank.transactions (region text, amount float8, \
         channel text, memo text, is_fraud boolean, secret text); \
         INSERT INTO bank.transactions VALUES {};",
        values.join(", ")
    ))
    .await
    .unwrap();
    client
        .simple_query(&format!(
            "CREATE SOURCE central TYPE postgres OPTIONS (url '{url}')"
        ))
        .await
        .unwrap();
    text_rows(
        &client,
        "TRAIN MODEL fraud_central USING logistic_regression PREDICT is_fraud \
         FROM (SELECT region, amount, channel, memo, is_fraud FROM central.bank.transactions) \
         FEDERATED BY region \
         WITH (rounds = 4, learning_rate = 0.1, optimizer = 'adam', seed = 7)",
    )
    .await;
    let central = accuracy_of(&client, "fraud_central").await;
    assert!(
        (central - accuracy).abs() <= 0.005,
        "sites {accuracy} vs partitions {central}"
    );

    // EVALUATE over the sites answers per-site and merged metrics from
    // sufficient statistics; they equal scoring the same rows here.
    let on_sites = text_rows(
        &client,
        &format!(
            "EVALUATE MODEL fraud_sites ON ({TRAINING_QUERY}) FEDERATED ON SITES ('apac', 'eu', 'us')"
        ),
    )
    .await;
    assert_eq!(on_sites.len(), 4, "{on_sites:?}");
    assert_eq!(on_sites[0][2].as_deref(), Some("all"));
    assert_eq!(on_sites[0][3].as_deref(), Some("1200"));
    let here = text_rows(
        &client,
        "EVALUATE MODEL fraud_sites ON (SELECT region, amount, channel, memo, is_fraud          FROM central.bank.transactions) FEDERATED BY region",
    )
    .await;
    // Equal up to float summation order (rows reach the sums in a
    // different order over the two paths).
    assert_eq!(on_sites.len(), here.len());
    for (a, b) in on_sites.iter().zip(&here) {
        for (x, y) in a.iter().zip(b) {
            match (
                x.as_deref().map(str::parse::<f64>),
                y.as_deref().map(str::parse::<f64>),
            ) {
                (Some(Ok(x)), Some(Ok(y))) => {
                    assert!((x - y).abs() <= 1e-9 * x.abs().max(1.0), "{a:?} vs {b:?}")
                }
                _ => assert_eq!(x, y, "{a:?} vs {b:?}"),
            }
        }
    }

    // The model scores rows at the coordinator.
    let scored = text_rows(
        &client,
        "SELECT predict('fraud_sites', CAST(900.0 AS DOUBLE), 'online', 'memo paid')",
    )
    .await;
    assert!(scored[0][0].is_some());

    // A query touching a table the sites do not allow is refused at the
    // site, and the error names the site and the table.
    let refused = try_text_rows(
        &client,
        "TRAIN MODEL leak USING logistic_regression PREDICT is_fraud \
         FROM (SELECT t.amount, c.name, t.is_fraud FROM bank.transactions t \
               JOIN bank.customers c ON c.id = 1) \
         FEDERATED ON SITES ('apac', 'eu', 'us') WITH (rounds = 1)",
    )
    .await
    .unwrap_err();
    assert!(
        refused.contains("refuses to read bank.bank.customers"),
        "{refused}"
    );
    assert!(refused.contains("site "), "{refused}");

    // Nothing a site sent to the coordinator — on its link or to the weight
    // exchange — contains row content: neither the per-row secrets nor the
    // free-text memos.
    let exchange_bytes = exchange_proxy.bytes();
    for (site, sent) in sites
        .iter()
        .map(|(site, proxy, _)| (site, proxy.bytes()))
        .chain(sites.first().map(|(site, _, _)| (site, exchange_bytes)))
    {
        assert!(!sent.is_empty(), "no bytes went through the proxy");
        for marker in [&b"ROWSECRET"[..], &b"SECRET"[..], &b"NOT-ALLOWED"[..]] {
            assert!(
                !sent.windows(marker.len()).any(|w| w == marker),
                "a site sent {:?} to the coordinator; site log:\n{}",
                String::from_utf8_lossy(marker),
                site.log()
            );
        }
    }
}

#[tokio::test]
async fn a_killed_site_fails_its_rounds_then_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client, mut sites) =
        coordinator_and_sites(dir.path(), 3000, &["bank.transactions"]).await;
    let coordinator = server.conn_str("demo");
    let train = tokio::spawn(async move {
        let (c, connection) = tokio_postgres::connect(&coordinator, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        try_text_rows(
            &c,
            &format!(
                "TRAIN MODEL churn USING logistic_regression PREDICT is_fraud \
                 FROM ({TRAINING_QUERY}) FEDERATED ON SITES ('apac', 'eu', 'us') \
                 WITH (rounds = 40, local_epochs = 3, round_timeout = '6s', \
                       min_train_nodes = 2, accept_failures = true, seed = 3)"
            ),
        )
        .await
    });
    let live_round = |phase_client: &'static str, status: &'static str| {
        let sql = format!(
            "SELECT max(round) FROM fedsql.system.training_rounds \
             WHERE model = 'churn' AND phase = 'train' AND client = '{phase_client}' AND status = '{status}'"
        );
        let client = &client;
        async move {
            text_rows(client, &sql).await[0][0]
                .as_deref()
                .and_then(|r| r.parse::<u32>().ok())
        }
    };
    // Kill eu once it has trained two rounds.
    let deadline = Instant::now() + Duration::from_secs(120);
    while live_round("eu", "ok").await.unwrap_or(0) < 2 {
        assert!(Instant::now() < deadline, "eu did not train two rounds");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sites[1].0.kill();
    // Its next round is a timeout (or failed) row, and the run goes on.
    while live_round("eu", "timeout").await.is_none() && live_round("eu", "failed").await.is_none()
    {
        assert!(
            Instant::now() < deadline,
            "no failed round for the killed site"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed_at = live_round("eu", "timeout")
        .await
        .or(live_round("eu", "failed").await)
        .unwrap();
    // Restarted, it rejoins a later round.
    let (config, data_dir) = (sites[1].2.clone(), dir.path().join("site-eu"));
    sites[1].0 = SiteProcess::start("eu", sites[1].1.port, &config, &data_dir, &token("eu"));
    let result = train.await.unwrap();
    let trained = result.unwrap_or_else(|e| panic!("training failed: {e}"));
    assert_eq!(trained[0][0].as_deref(), Some("churn"));
    let rejoined = text_rows(
        &client,
        &format!(
            "SELECT count(*) FROM fedsql.system.training_rounds WHERE model = 'churn' \
             AND client = 'eu' AND phase = 'train' AND status = 'ok' AND round > {failed_at}"
        ),
    )
    .await;
    let rejoined: u32 = rejoined[0][0].as_deref().unwrap().parse().unwrap();
    assert!(rejoined > 0, "eu never rejoined after round {failed_at}");
    // The other sites trained every round.
    let apac = text_rows(
        &client,
        "SELECT count(*) FROM fedsql.system.training_rounds WHERE model = 'churn' \
         AND client = 'apac' AND phase = 'train' AND status = 'ok'",
    )
    .await;
    assert_eq!(apac[0][0].as_deref(), Some("40"));

    // A site that is down when training starts is left out (the default
    // accept_failures), and the version names the clients that trained.
    sites[0].0.kill();
    let without = text_rows(
        &client,
        &format!(
            "TRAIN MODEL churn USING logistic_regression PREDICT is_fraud \
             FROM ({TRAINING_QUERY}) FEDERATED ON SITES ('apac', 'eu', 'us') \
             WITH (rounds = 1, round_timeout = '3s')"
        ),
    )
    .await;
    assert_eq!(without[0][6].as_deref(), Some("2"), "{without:?}");
    let clients = text_rows(
        &client,
        "SELECT DISTINCT client FROM fedsql.system.training_rounds \
         WHERE model = 'churn' AND version = 2 ORDER BY client",
    )
    .await;
    assert_eq!(
        clients,
        [[Some("eu".to_string())], [Some("us".to_string())]]
    );
}

#[tokio::test]
async fn a_wrong_token_is_refused_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start_with_env(dir.path(), &[], &[("EU_TOKEN", "the-right-token")]);
    let client = server.connect("demo").await;
    client
        .simple_query("CREATE SITE eu OPTIONS (token_env 'EU_TOKEN')")
        .await
        .unwrap();
    // CREATE SITE with an unset variable is a clear error.
    let e = client
        .simple_query("CREATE SITE us OPTIONS (token_env 'NOT_SET_ANYWHERE')")
        .await
        .unwrap_err();
    assert!(
        error_message(&e).contains("NOT_SET_ANYWHERE"),
        "{}",
        error_message(&e)
    );
    let (_db, url) = fresh_postgres_database("fedsql_site_wrong_token").await;
    let config = site_config(dir.path(), "eu", &url, &["bank.transactions"]);
    let site = SiteProcess::start(
        "eu",
        server.flight_port,
        &config,
        &dir.path().join("s"),
        "wrong",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !site.log().contains("refused this site") {
        assert!(
            Instant::now() < deadline,
            "no refusal in the site's log:\n{}",
            site.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        site.log().contains("wrong token for site \"eu\""),
        "{}",
        site.log()
    );
    assert!(!site.log().contains("the-right-token"));
    let rows = text_rows(
        &client,
        "SELECT status FROM fedsql.system.sites WHERE name = 'eu'",
    )
    .await;
    assert_eq!(rows[0][0].as_deref(), Some("offline"));
    // The stored catalog keeps only a salted hash of the token.
    let catalog = std::fs::read_to_string(dir.path().join("catalog.json")).unwrap();
    assert!(catalog.contains("\"eu\"") && !catalog.contains("the-right-token"));
}

/// A CA and a certificate for localhost / 127.0.0.1 signed by it, made with
/// openssl (scripts/test installs it).
fn ca_and_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (ca_key, ca) = (dir.join("ca.key"), dir.join("ca.pem"));
    let (key, csr, cert) = (
        dir.join("key.pem"),
        dir.join("req.csr"),
        dir.join("cert.pem"),
    );
    let ext = dir.join("ext.cnf");
    std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "{out:?}");
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    run(&[
        &os("req"),
        &os("-x509"),
        &os("-newkey"),
        &os("rsa:2048"),
        &os("-nodes"),
        &os("-days"),
        &os("1"),
        &os("-subj"),
        &os("/CN=fedsql test CA"),
        &os("-keyout"),
        ca_key.as_os_str(),
        &os("-out"),
        ca.as_os_str(),
    ]);
    run(&[
        &os("req"),
        &os("-newkey"),
        &os("rsa:2048"),
        &os("-nodes"),
        &os("-subj"),
        &os("/CN=localhost"),
        &os("-keyout"),
        key.as_os_str(),
        &os("-out"),
        csr.as_os_str(),
    ]);
    run(&[
        &os("x509"),
        &os("-req"),
        &os("-in"),
        csr.as_os_str(),
        &os("-CA"),
        ca.as_os_str(),
        &os("-CAkey"),
        ca_key.as_os_str(),
        &os("-CAcreateserial"),
        &os("-days"),
        &os("1"),
        &os("-extfile"),
        ext.as_os_str(),
        &os("-out"),
        cert.as_os_str(),
    ]);
    (ca, cert, key)
}

#[tokio::test]
async fn a_site_trains_over_tls_to_its_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_certificate(dir.path());
    let server = FedsqlServer::start_with_env(
        &dir.path().join("coordinator"),
        &[
            "--flight-tls-cert",
            cert.to_str().unwrap(),
            "--flight-tls-key",
            key.to_str().unwrap(),
        ],
        &[("EU_TOKEN", "tls-site-token")],
    );
    let client = server.connect("demo").await;
    client
        .simple_query("CREATE SITE eu OPTIONS (token_env 'EU_TOKEN')")
        .await
        .unwrap();
    let url = site_database("tls", 200).await;
    let config = site_config(dir.path(), "eu", &url, &["bank.transactions"]);
    let text = std::fs::read_to_string(&config).unwrap();
    // A key of [site]: right after its header (tables of it follow).
    let text = text.replacen(
        "[site]\n",
        &format!("[site]\ncoordinator_ca = \"{}\"\n", ca.display()),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let site = SiteProcess::start_at(
        "eu",
        &format!("https://localhost:{}", server.flight_port),
        &config,
        &dir.path().join("site"),
        "tls-site-token",
        &[],
        &[],
    );
    wait_online(&client, &["eu"]).await;
    let trained = text_rows(
        &client,
        &format!(
            "TRAIN MODEL over_tls USING logistic_regression PREDICT is_fraud \
             FROM ({TRAINING_QUERY}) FEDERATED ON SITES ('eu') \
             WITH (rounds = 2, min_train_nodes = 1, min_available_nodes = 1)"
        ),
    )
    .await;
    assert_eq!(trained[0][0].as_deref(), Some("over_tls"));
    // The weights travelled over TLS too: the exchange the site was sent
    // to is the coordinator's certificate's https:// endpoint.
    let log = site.log();
    let rounds: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("training a round"))
        .collect();
    assert_eq!(rounds.len(), 2, "{log}");
    assert!(
        rounds.iter().all(|l| l.contains("https://localhost:")),
        "the site did not use a TLS weight exchange:\n{log}"
    );
}

/// `(status, rounds_completed)` of the run of model `resumed`, if listed.
async fn completed(client: &tokio_postgres::Client) -> Vec<Vec<Option<String>>> {
    text_rows(
        client,
        "SELECT status, rounds_completed FROM fedsql.system.training_runs WHERE model = 'resumed'",
    )
    .await
}

#[tokio::test]
async fn a_coordinator_killed_mid_training_resumes_over_the_sites() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, client, _sites) =
        coordinator_and_sites(dir.path(), 3000, &["bank.transactions"]).await;
    // Server momentum and differential privacy both carry state (momentum,
    // the noise generator) from round to round: a resume must restore them.
    let train = |model: &str| {
        format!(
            "TRAIN MODEL {model} USING logistic_regression PREDICT is_fraud \
             FROM ({TRAINING_QUERY}) FEDERATED ON SITES ('apac', 'eu', 'us') \
             WITH (rounds = 12, local_epochs = 3, seed = 5, strategy = 'fedavgm', \
                   server_momentum = 0.5, dp = 'server_fixed', clipping_norm = 10, \
                   noise_multiplier = 0.01, round_timeout = '60s')"
        )
    };
    client.batch_execute(&train("straight")).await.unwrap();

    let coordinator = server.conn_str("demo");
    let statement = train("resumed");
    let cut_off = tokio::spawn(async move {
        let (c, connection) = tokio_postgres::connect(&coordinator, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        c.batch_execute(&statement).await
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rows = completed(&client).await;
        let done = rows.first().and_then(|r| r[1].as_deref()).unwrap_or("0");
        if done.parse::<u32>().unwrap() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no second round within 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let env = token_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    server.crash_and_restart(&[], &env);
    assert!(
        cut_off.await.unwrap().is_err(),
        "the cut-off TRAIN reported success"
    );

    // The sites reconnect on their own; the run waits for RESUME.
    let client = server.connect("demo").await;
    wait_online(&client, &REGIONS).await;
    let rows = completed(&client).await;
    assert_eq!(rows[0][0].as_deref(), Some("interrupted"), "{rows:?}");
    let done: u32 = rows[0][1].as_deref().unwrap().parse().unwrap();
    assert!((2..12).contains(&done), "{done} rounds completed");
    client
        .batch_execute("RESUME TRAINING resumed")
        .await
        .unwrap();
    assert!(completed(&client).await.is_empty());

    // The resumed model is the uninterrupted one, to the last bit of every
    // prediction.
    let rows = text_rows(
        &client,
        "SELECT count(*) FILTER (WHERE predict_proba('straight', a, c, m) = predict_proba('resumed', a, c, m)), \
                count(DISTINCT predict_proba('straight', a, c, m)) \
         FROM (VALUES (120.0, 'online', 'memo paid'), (900.0, 'online', 'memo'), (650.0, 'pos', 'x'), \
                      (10.0, 'atm', 'paid'), (999.0, 'online', 'memo SECRET paid'), (300.0, 'pos', '')) AS t(a, c, m)",
    )
    .await;
    assert_eq!(rows[0][0].as_deref(), Some("6"), "resumed weights differ");
    assert_ne!(
        rows[0][1].as_deref(),
        Some("1"),
        "the model predicts a constant"
    );
    assert_eq!(
        accuracy_of(&client, "straight").await,
        accuracy_of(&client, "resumed").await
    );
}

/// Connects to a site's own Postgres-wire port, waiting for it to listen.
async fn site_admin(port: u16) -> tokio_postgres::Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let url = format!("host=127.0.0.1 port={port} user=fedsql dbname=fedsql");
        match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                return client;
            }
            Err(e) => assert!(Instant::now() < deadline, "site pg port {port}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_site_admin_adds_the_sites_source_over_its_own_pg_port() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start_with_env(
        &dir.path().join("coordinator"),
        &[],
        &[("EU_TOKEN", &token("eu"))],
    );
    let client = server.connect("demo").await;
    client
        .batch_execute("CREATE SITE eu OPTIONS (token_env 'EU_TOKEN')")
        .await
        .unwrap();
    let url = site_database("eu", 300).await;
    // No [[sources]]: the site's admin adds the source over the site's port.
    let config = dir.path().join("eu.toml");
    std::fs::write(
        &config,
        "[site]\ntoken_env = \"SITE_TOKEN\"\nallow = [\"bank.transactions\"]\ndatabase = \"bank\"\n",
    )
    .unwrap();
    let pg_port = fedsql_tests::free_port().to_string();
    let data_dir = dir.path().join("site-eu");
    let args = ["--pg-listen", &format!("127.0.0.1:{pg_port}")];
    let mut site = SiteProcess::start_with(
        "eu",
        server.flight_port,
        &config,
        &data_dir,
        &token("eu"),
        &args,
    );
    let admin = site_admin(pg_port.parse().unwrap()).await;
    admin
        .batch_execute(&format!(
            "CREATE SOURCE bank TYPE postgres OPTIONS (url '{url}')"
        ))
        .await
        .unwrap();
    wait_online(&client, &["eu"]).await;
    let trained = text_rows(
        &client,
        &format!(
            "TRAIN MODEL local_source USING logistic_regression PREDICT is_fraud \
             FROM ({TRAINING_QUERY}) FEDERATED ON SITES ('eu') \
             WITH (rounds = 2, min_train_nodes = 1, min_available_nodes = 1)"
        ),
    )
    .await;
    assert_eq!(trained[0][0].as_deref(), Some("local_source"));
    let examples = text_rows(
        &client,
        "SELECT sum(num_examples) FROM fedsql.system.training_rounds \
         WHERE model = 'local_source' AND phase = 'train' AND round = 1",
    )
    .await;
    let examples: u32 = examples[0][0].as_deref().unwrap().parse().unwrap();
    assert!((200..300).contains(&examples), "{examples} training rows");

    // The source is the site's own, persisted in its data dir.
    site.kill();
    let site = SiteProcess::start_with(
        "eu",
        server.flight_port,
        &config,
        &data_dir,
        &token("eu"),
        &args,
    );
    let admin = site_admin(pg_port.parse().unwrap()).await;
    let rows = text_rows(&admin, "SELECT count(*) FROM bank.bank.transactions").await;
    assert_eq!(rows[0][0].as_deref(), Some("300"));
    drop(site);
}

#[tokio::test]
async fn fedmedian_outvotes_an_attacker_site_that_poisons_fedavg() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client, mut sites) =
        coordinator_and_sites(dir.path(), 1500, &["bank.transactions"]).await;
    let train = |model: &str, strategy: &str| {
        format!(
            "TRAIN MODEL {model} USING logistic_regression PREDICT is_fraud \
             FROM ({TRAINING_QUERY}) FEDERATED ON SITES ('apac', 'eu', 'us') \
             WITH (rounds = 12, local_epochs = 2, learning_rate = 0.1, optimizer = 'adam', \
                   seed = 9, strategy = '{strategy}')"
        )
    };
    for (model, strategy) in [("honest", "fedavg"), ("honest_median", "fedmedian")] {
        client.batch_execute(&train(model, strategy)).await.unwrap();
    }
    let honest = accuracy_of(&client, "honest").await;
    let honest_median = accuracy_of(&client, "honest_median").await;

    // us becomes an attacker: it sends its update flipped and scaled ×20.
    restart_site(
        &client,
        dir.path(),
        &mut sites[2],
        "us",
        &[("FEDSQL_DEBUG_ATTACK_SCALE", "-20")],
    )
    .await;
    client
        .batch_execute(&train("poisoned", "fedavg"))
        .await
        .unwrap();
    client
        .batch_execute(&train("robust", "fedmedian"))
        .await
        .unwrap();
    let (poisoned, robust) = (
        accuracy_of(&client, "poisoned").await,
        accuracy_of(&client, "robust").await,
    );
    assert!(
        sites[2].0.log().contains("sends scaled updates"),
        "the attacker did not attack"
    );
    assert!(
        poisoned < honest - 0.2,
        "fedavg was not poisoned: {poisoned} vs {honest}"
    );
    // With one attacker among three, each coordinate's median is one of the
    // honest sites' values: fedmedian learns close to its attack-free run.
    assert!(
        robust > honest_median - 0.05 && robust > poisoned + 0.3,
        "fedmedian under attack {robust}, without {honest_median}; fedavg {honest} / poisoned {poisoned}"
    );
    drop(server);
}

/// `secure_aggregation = true` over sites: each site masks its update
/// (SecAgg over the exchange's bulletin board, run at the site), the
/// coordinator unmasks only the weighted mean — FedAvg's, so the model
/// learns as well as without it — and a site that dies after sharing its
/// keys is unmasked away while the others' round goes on.
#[tokio::test]
async fn secure_aggregation_over_sites_survives_a_site_that_dies_mid_round() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client, mut sites) =
        coordinator_and_sites(dir.path(), 1500, &["bank.transactions"]).await;
    let train = |model: &str, extra: &str| {
        format!(
            "TRAIN MODEL {model} USING logistic_regression PREDICT is_fraud \
             FROM ({TRAINING_QUERY}) FEDERATED ON SITES ('apac', 'eu', 'us') \
             WITH (rounds = 5, local_epochs = 2, learning_rate = 0.1, optimizer = 'adam', \
                   seed = 4, round_timeout = 8{extra})"
        )
    };
    client.batch_execute(&train("plain", "")).await.unwrap();
    client
        .batch_execute(&train("secure", ", secure_aggregation = true"))
        .await
        .unwrap_or_else(|e| panic!("{}", error_message(&e)));
    let (plain, secure) = (
        accuracy_of(&client, "plain").await,
        accuracy_of(&client, "secure").await,
    );
    assert!(plain > 0.8, "fedavg over sites: {plain}");
    assert!(
        (secure - plain).abs() < 0.01,
        "secure {secure} vs plain {plain}: the same mean up to quantization"
    );

    // apac will die in round 2 of the next run, after sharing its keys.
    restart_site(
        &client,
        dir.path(),
        &mut sites[0],
        "apac",
        &[("FEDSQL_DEBUG_EXIT_AFTER_SHARES", "2")],
    )
    .await;
    client
        .batch_execute(&train("dropout", ", secure_aggregation = true"))
        .await
        .unwrap_or_else(|e| panic!("{}", error_message(&e)));
    assert!(
        sites[0].0.log().contains("exits after sharing its keys"),
        "apac did not drop out:\n{}",
        sites[0].0.log()
    );
    let rounds = text_rows(
        &client,
        "SELECT round, client, status FROM fedsql.system.training_rounds \
         WHERE model = 'dropout' AND phase = 'train' AND round <= 2 ORDER BY round, client",
    )
    .await;
    let rounds: Vec<Vec<String>> = rounds
        .into_iter()
        .map(|r| r.into_iter().map(Option::unwrap_or_default).collect())
        .collect();
    assert_eq!(rounds.len(), 6, "{rounds:?}");
    for row in &rounds {
        let died = row[0] == "2" && row[1] == "apac";
        assert_eq!(row[2] != "ok", died, "{rounds:?}");
    }
    // Round 2 merged eu's and us's unmasked mean; the run learned on.
    let dropout = accuracy_of(&client, "dropout").await;
    assert!(
        dropout > plain - 0.05,
        "secure run with a dropout {dropout}, plain {plain}"
    );
    drop(server);
}

/// `(channel, count, sum(amount), min(amount), max(amount))` per channel of
/// the rows in the site databases at `urls`, computed by PostgreSQL itself
/// (each database's partials, added up here).
async fn channel_totals(urls: &[String]) -> Vec<(String, i64, f64, f64, f64)> {
    let mut totals: std::collections::BTreeMap<String, (i64, f64, f64, f64)> = Default::default();
    for url in urls {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        for row in client
            .query(
                "SELECT channel, count(*), sum(amount), min(amount), max(amount) \
                 FROM bank.transactions GROUP BY channel",
                &[],
            )
            .await
            .unwrap()
        {
            let entry =
                totals
                    .entry(row.get(0))
                    .or_insert((0, 0.0, f64::INFINITY, f64::NEG_INFINITY));
            entry.0 += row.get::<_, i64>(1);
            entry.1 += row.get::<_, f64>(2);
            entry.2 = entry.2.min(row.get(3));
            entry.3 = entry.3.max(row.get(4));
        }
    }
    totals
        .into_iter()
        .map(|(channel, (n, sum, min, max))| (channel, n, sum, min, max))
        .collect()
}

fn number(cell: &Option<String>) -> f64 {
    cell.as_deref().unwrap_or("NaN").parse().unwrap()
}

#[tokio::test]
async fn analytics_over_sites_moves_only_partials_and_refuses_rows() {
    let dir = tempfile::tempdir().unwrap();
    let env = token_env();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = FedsqlServer::start_with_env(&dir.path().join("coordinator"), &[], &env_refs);
    let client = server.connect("demo").await;
    let mut sites = Vec::new();
    let mut urls = Vec::new();
    // eu's admin can see what the coordinator asked, on eu's own port.
    let eu_pg_port = fedsql_tests::free_port();
    for region in REGIONS {
        client
            .simple_query(&format!(
                "CREATE SITE {region} OPTIONS (token_env '{}_TOKEN')",
                region.to_uppercase()
            ))
            .await
            .unwrap();
        let url = site_database(region, 500).await;
        let config = site_config(dir.path(), region, &url, &["bank.transactions"]);
        let proxy = CountingProxy::start(server.flight_port).await;
        let data_dir = dir.path().join(format!("site-{region}"));
        let listen = format!("127.0.0.1:{eu_pg_port}");
        let extra: &[&str] = if region == "eu" {
            &["--pg-listen", &listen]
        } else {
            &[]
        };
        let site = SiteProcess::start_with(
            region,
            proxy.port,
            &config,
            &data_dir,
            &token(region),
            extra,
        );
        sites.push((site, proxy));
        urls.push(url);
    }
    // eu has 3 rows of a channel no other site has: a group under its
    // min_group_size of 10.
    {
        let (eu, connection) = tokio_postgres::connect(&urls[1], tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        eu.batch_execute(
            "INSERT INTO bank.transactions VALUES \
             (1, 'branch', 'memo SECRETx', false, 'ROWSECRET-x1'), \
             (2, 'branch', 'memo SECRETy', false, 'ROWSECRET-x2'), \
             (3, 'branch', 'memo SECRETz', true, 'ROWSECRET-x3')",
        )
        .await
        .unwrap();
    }
    wait_online(&client, &REGIONS).await;
    let expected = channel_totals(&urls).await;
    assert!(expected.iter().any(|(c, n, ..)| c == "branch" && *n == 3));

    // Across all sites: per-site partials merged at the coordinator equal
    // PostgreSQL's answer over the union of the rows; the small group is
    // suppressed.
    let sql = "SELECT channel, count(*), sum(amount), avg(amount), min(amount), max(amount) \
               FROM sites.bank.transactions GROUP BY channel ORDER BY channel";
    let rows = text_rows(&client, sql).await;
    let kept: Vec<_> = expected.iter().filter(|(c, ..)| c != "branch").collect();
    assert_eq!(rows.len(), kept.len(), "{rows:?} vs {expected:?}");
    for (row, (channel, n, sum, min, max)) in rows.iter().zip(&kept) {
        assert_eq!(row[0].as_deref(), Some(channel.as_str()));
        assert_eq!(number(&row[1]) as i64, *n, "{row:?}");
        assert!(
            (number(&row[2]) - sum).abs() < 1e-6 * sum.abs().max(1.0),
            "{row:?}"
        );
        assert!(
            (number(&row[3]) - sum / *n as f64).abs() < 1e-9 * sum.abs().max(1.0),
            "{row:?}"
        );
        assert_eq!(number(&row[4]), *min, "{row:?}");
        assert_eq!(number(&row[5]), *max, "{row:?}");
    }
    // The suppression is reported where the remote queries are.
    let reported = text_rows(
        &client,
        "SELECT database, query FROM fedsql.system.queries \
         WHERE protocol = 'source' AND query LIKE '%suppressed%'",
    )
    .await;
    assert!(
        reported.iter().any(|r| r[0].as_deref() == Some("site_eu")),
        "{reported:?}"
    );

    // EXPLAIN shows what each site runs: a GROUP BY, never a plain scan.
    let plan = fedsql_tests::explain(&client, sql).await;
    for region in REGIONS {
        assert!(plan.contains(&format!("site_{region}")), "{plan}");
    }
    assert!(plan.contains("GROUP BY"), "{plan}");

    // The catalogs are listed like any other.
    let listed = text_rows(
        &client,
        "SELECT table_catalog, table_schema, table_name FROM information_schema.tables \
         WHERE table_catalog LIKE 'site%' AND table_schema <> 'information_schema' ORDER BY 1",
    )
    .await;
    let catalogs: Vec<_> = listed.iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(
        catalogs,
        ["site_apac", "site_eu", "site_us", "sites"],
        "{listed:?}"
    );
    assert!(listed
        .iter()
        .all(|r| r[1].as_deref() == Some("bank") && r[2].as_deref() == Some("transactions")));

    // Grouped by site, and one site's own catalog.
    let by_site = text_rows(
        &client,
        "SELECT _site, count(*) FROM sites.bank.transactions GROUP BY _site ORDER BY _site",
    )
    .await;
    assert_eq!(
        by_site,
        vec![
            vec![Some("apac".into()), Some("500".into())],
            vec![Some("eu".into()), Some("503".into())],
            vec![Some("us".into()), Some("500".into())],
        ]
    );
    let eu = text_rows(
        &client,
        "SELECT count(*) AS n FROM site_eu.bank.transactions WHERE channel <> 'branch'",
    )
    .await;
    assert_eq!(eu, vec![vec![Some("500".into())]]);

    // Row-level reads are refused with the table, its policy and why.
    for refused_sql in [
        "SELECT amount, memo FROM site_eu.bank.transactions LIMIT 5",
        "SELECT * FROM sites.bank.transactions WHERE amount > 990",
        "SELECT channel, array_agg(secret) FROM site_us.bank.transactions GROUP BY channel",
        "SELECT min(secret) FROM site_us.bank.transactions",
    ] {
        let error = client.simple_query(refused_sql).await.unwrap_err();
        let db = error
            .as_db_error()
            .unwrap_or_else(|| panic!("{refused_sql}: {error}"));
        assert_eq!(db.code().code(), "42501", "{refused_sql}: {}", db.message());
        assert!(
            db.message().contains("bank.bank.transactions")
                && db.message().contains("aggregates (min_group_size 10)"),
            "{refused_sql}: {}",
            db.message()
        );
    }
    // The coordinator keeps serving.
    assert_eq!(
        text_rows(&client, "SELECT 1").await,
        vec![vec![Some("1".into())]]
    );

    // No row content left any site: not the per-row secrets, not the memos.
    for (site, proxy) in &sites {
        let sent = proxy.bytes();
        assert!(!sent.is_empty());
        for marker in [&b"ROWSECRET"[..], &b"SECRET"[..]] {
            assert!(
                !sent.windows(marker.len()).any(|w| w == marker),
                "a site sent {:?}; site log:\n{}",
                String::from_utf8_lossy(marker),
                site.log()
            );
        }
    }
}

#[tokio::test]
async fn a_private_site_answers_with_noise_until_its_budget_is_spent() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start_with_env(
        &dir.path().join("coordinator"),
        &[],
        &[("EU_TOKEN", &token("eu"))],
    );
    let client = server.connect("demo").await;
    client
        .batch_execute("CREATE SITE eu OPTIONS (token_env 'EU_TOKEN')")
        .await
        .unwrap();
    let url = site_database("eu", 600).await;
    // Each answer costs epsilon 0.5 of a budget of 1.0; sums clipped to
    // [0, 1000].
    let config = dir.path().join("eu.toml");
    std::fs::write(
        &config,
        format!(
            "[[sources]]\nname = \"bank\"\ntype = \"postgres\"\nurl = \"{url}\"\n\n\
             [site]\ntoken_env = \"SITE_TOKEN\"\nallow = [\"bank.transactions\"]\n\
             database = \"bank\"\nprivacy_budget = 1.0\n\n\
             [[site.analytics]]\ntable = \"bank.transactions\"\npolicy = \"aggregates\"\n\
             dp_epsilon = 0.5\ndp_bounds = [0.0, 1000.0]\n"
        ),
    )
    .unwrap();
    let data_dir = dir.path().join("site-eu");
    let mut site = SiteProcess::start("eu", server.flight_port, &config, &data_dir, &token("eu"));
    wait_online(&client, &["eu"]).await;
    let sql = "SELECT channel, count(*), sum(amount) FROM site_eu.bank.transactions \
               GROUP BY channel ORDER BY channel";
    for _ in 0..2 {
        let rows = text_rows(&client, sql).await;
        assert_eq!(rows.len(), 3, "200 rows per channel: {rows:?}");
        for row in &rows {
            // Laplace scale 3 / 0.5 = 6 on counts: 20 scales is e^-20.
            let n = number(&row[1]);
            assert!((n - 200.0).abs() <= 120.0 && n.fract() == 0.0, "{row:?}");
        }
    }
    let spent = text_rows(
        &client,
        "SELECT query FROM fedsql.system.queries WHERE protocol = 'source' \
         AND query LIKE '%differentially private%'",
    )
    .await;
    assert_eq!(spent.len(), 2, "{spent:?}");
    assert!(
        spent
            .iter()
            .any(|r| r[0].as_deref().is_some_and(|q| q.contains("0.000 left"))),
        "{spent:?}"
    );
    let exhausted = |e: tokio_postgres::Error| {
        let db = e.as_db_error().cloned().unwrap();
        assert_eq!(db.code().code(), "42501", "{}", db.message());
        assert!(
            db.message().contains("privacy budget is exhausted"),
            "{}",
            db.message()
        );
    };
    exhausted(client.simple_query(sql).await.unwrap_err());
    // avg and max are not answered privately.
    let refused = client
        .simple_query("SELECT max(amount) FROM site_eu.bank.transactions")
        .await
        .unwrap_err();
    assert!(
        error_message(&refused).contains("not answered privately"),
        "{refused:?}"
    );

    // What was spent survives a restart of the site.
    site.kill();
    let _site = SiteProcess::start("eu", server.flight_port, &config, &data_dir, &token("eu"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_online(&client, &["eu"]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.simple_query(sql).await {
            Err(e) if e.as_db_error().is_some_and(|d| d.code().code() == "42501") => {
                exhausted(e);
                break;
            }
            // The old process may still look online for a moment.
            other => assert!(Instant::now() < deadline, "{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
