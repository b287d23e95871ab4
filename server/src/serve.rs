//! `fedsql serve`: the long-running service.

use std::sync::Arc;

use datafusion_postgres::pgwire::tokio::process_socket;
use tokio::net::TcpListener;

use crate::accounts::Accounts;
use crate::config::Settings;
use crate::engine::Engine;
use crate::error::{Result, ServerError};
use crate::flight::FlightServer;
use crate::pg_auth::{self, PgAuth};
use crate::wire::FedsqlHandlers;

/// Runs the service until Ctrl-C or SIGTERM.
pub async fn serve(settings: Settings) -> Result<()> {
    let pg_listen = settings.pg_listen;
    let accounts = Accounts::from_settings(&settings)?;
    accounts.check_listen_address("the Postgres wire", pg_listen)?;
    let pem = settings.pg_tls()?;
    let tls = pem.as_ref().map(pg_auth::tls_acceptor).transpose()?;
    let auth = PgAuth::new(&accounts, pem.map(|p| p.cert));
    let pg_note = access_note(auth.is_some().then_some("SCRAM-SHA-256"), tls.is_some());
    let engine = Engine::open(settings).await?;
    let handlers = Arc::new(FedsqlHandlers::new(Arc::clone(&engine), auth)?);
    let listener = TcpListener::bind(pg_listen)
        .await
        .map_err(|e| ServerError::Config(format!("cannot listen on {pg_listen}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| ServerError::Config(format!("cannot read listen address: {e}")))?;
    let flight = FlightServer::bind(Arc::clone(&engine), accounts).await?;
    let flight_bound = flight.local_addr()?;
    let flight_note = access_note(flight.authenticated.then_some("basic auth"), flight.tls());
    print_banner(&engine, (bound, &pg_note), (flight_bound, &flight_note));

    let (stop_flight, flight_stopped) = tokio::sync::oneshot::channel::<()>();
    let flight_task = tokio::spawn(flight.serve(async {
        let _ = flight_stopped.await;
    }));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let (handlers, tls) = (Arc::clone(&handlers), tls.clone());
                    tokio::spawn(async move {
                        if let Err(e) = process_socket(socket, tls, handlers).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
            _ = &mut shutdown => {
                println!("fedsql: shutting down");
                break Ok(());
            }
        }
    };
    let _ = stop_flight.send(());
    match flight_task.await {
        Ok(Ok(())) => result,
        Ok(Err(e)) => Err(e),
        Err(e) => Err(ServerError::Config(format!("Flight SQL task failed: {e}"))),
    }
}

/// How a listener admits clients, for the banner: `method` is its
/// authentication, `None` when it has none.
fn access_note(method: Option<&str>, tls: bool) -> String {
    match (method, tls) {
        (Some(m), true) => format!("{m}, TLS"),
        (Some(m), false) => format!("{m}, no TLS"),
        (None, true) => "no authentication (loopback only), TLS".into(),
        (None, false) => "no authentication (loopback only)".into(),
    }
}

fn print_banner(
    engine: &Engine,
    (bound, pg_note): (std::net::SocketAddr, &str),
    (flight, flight_note): (std::net::SocketAddr, &str),
) {
    let settings = engine.settings();
    println!("fedsql {} is running", env!("CARGO_PKG_VERSION"));
    println!("  data dir       {}", settings.data_dir.display());
    if let Some(m) = engine.demo_manifest() {
        println!(
            "  demo catalog   demo.bank: {} customers, {} transactions, {} support messages",
            m.customers, m.transactions, m.support_messages
        );
        println!(
            "                 is_fraud: {:.1}% positive; best possible accuracy {:.1}% (majority class {:.1}%)",
            m.fraud_rate * 100.0,
            m.bayes_accuracy * 100.0,
            m.majority_accuracy * 100.0
        );
    }
    println!("  postgres wire  {bound} ({pg_note})");
    println!("  flight sql     {flight} ({flight_note})");
    println!("connect with:");
    println!(
        "  psql -h {} -p {} -U fedsql -d {}",
        bound.ip(),
        bound.port(),
        engine.default_database()
    );
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
