//! `fedsql serve`: the long-running service.

use std::net::SocketAddr;
use std::sync::Arc;

use datafusion_postgres::pgwire::tokio::TlsAcceptor;
use futures::StreamExt;
use pgwire::api::{ClientInfo, PgWireConnectionState, PgWireServerHandlers};
use pgwire::messages::PgWireFrontendMessage;
use pgwire::tokio::server::{negotiate_tls, process_error, process_message};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, FramedParts};

use crate::accounts::Accounts;
use crate::config::Settings;
use crate::engine::Engine;
use crate::error::{Result, ServerError};
use crate::flight::FlightServer;
use crate::pg_auth::{self, PgAuth};
use crate::pg_stream::CheckedStream;
use crate::wire::FedsqlHandlers;

/// Runs the service until Ctrl-C or SIGTERM.
pub async fn serve(settings: Settings) -> Result<()> {
    let accounts = Accounts::from_settings(&settings)?;
    let pg = PgListener::prepare(&settings, &accounts, settings.pg_listen)?;
    let engine = Engine::open(settings).await?;
    let pg = pg.bind(&engine).await?;
    let flight = FlightServer::bind(Arc::clone(&engine), accounts).await?;
    let flight_bound = flight.local_addr()?;
    let flight_note = access_note(flight.authenticated.then_some("basic auth"), flight.tls());
    print_banner(&engine, (pg.bound, &pg.note), (flight_bound, &flight_note));

    let (stop_flight, flight_stopped) = tokio::sync::oneshot::channel::<()>();
    let flight_task = tokio::spawn(flight.serve(async {
        let _ = flight_stopped.await;
    }));
    tokio::select! {
        () = pg.serve() => {}
        () = shutdown_signal() => println!("fedsql: shutting down"),
    }
    let _ = stop_flight.send(());
    match flight_task.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(ServerError::Config(format!("Flight SQL task failed: {e}"))),
    }
}

/// The Postgres-wire listener's settings, checked before the engine opens
/// (so a bad address or TLS file fails fast).
pub(crate) struct PgListener {
    listen: SocketAddr,
    tls: Option<TlsAcceptor>,
    auth: Option<PgAuth>,
    note: String,
}

/// A bound Postgres-wire listener, ready to accept clients.
pub(crate) struct BoundPgListener {
    listener: TcpListener,
    handlers: Arc<FedsqlHandlers>,
    tls: Option<TlsAcceptor>,
    /// The address it is bound to and how it admits clients (for banners).
    pub bound: SocketAddr,
    pub note: String,
}

impl PgListener {
    /// The listener on `listen` with `accounts` and the TLS settings;
    /// refuses a non-loopback address without a password.
    pub(crate) fn prepare(
        settings: &Settings,
        accounts: &Accounts,
        listen: SocketAddr,
    ) -> Result<PgListener> {
        accounts.check_listen_address("the Postgres wire", listen)?;
        let pem = settings.pg_tls()?;
        let tls = pem.as_ref().map(pg_auth::tls_acceptor).transpose()?;
        let auth = PgAuth::new(accounts, pem.map(|p| p.cert));
        let note = access_note(auth.is_some().then_some("SCRAM-SHA-256"), tls.is_some());
        Ok(PgListener {
            listen,
            tls,
            auth,
            note,
        })
    }

    /// Binds the address, serving `engine`.
    pub(crate) async fn bind(self, engine: &Arc<Engine>) -> Result<BoundPgListener> {
        let handlers = Arc::new(FedsqlHandlers::new(Arc::clone(engine), self.auth)?);
        let listen = self.listen;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| ServerError::Config(format!("cannot listen on {listen}: {e}")))?;
        let bound = listener
            .local_addr()
            .map_err(|e| ServerError::Config(format!("cannot read listen address: {e}")))?;
        Ok(BoundPgListener {
            listener,
            handlers,
            tls: self.tls,
            bound,
            note: self.note,
        })
    }
}

impl BoundPgListener {
    /// Accepts clients until the future is dropped; each connection runs
    /// on its own task.
    pub(crate) async fn serve(self) {
        loop {
            match self.listener.accept().await {
                Ok((socket, peer)) => {
                    let (handlers, tls) = (Arc::clone(&self.handlers), self.tls.clone());
                    tokio::spawn(async move {
                        if let Err(e) = serve_connection(socket, tls, handlers).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            }
        }
    }
}

/// How long a client may take to start up and log in.
const STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// One client connection: pgwire's own message loop (as its
/// `process_socket`), over a [`CheckedStream`] so a statement that is not
/// UTF-8 is answered with 22021 instead of running with U+FFFD in it.
async fn serve_connection(
    socket: TcpStream,
    tls: Option<TlsAcceptor>,
    handlers: Arc<FedsqlHandlers>,
) -> std::io::Result<()> {
    let startup_timeout = tokio::time::sleep(STARTUP_TIMEOUT);
    tokio::pin!(startup_timeout);
    let negotiated = tokio::select! {
        _ = &mut startup_timeout => return Ok(()),
        socket = negotiate_tls(socket, tls) => socket?,
    };
    // A direct TLS connection without TLS configured.
    let Some(negotiated) = negotiated else {
        return Ok(());
    };
    let old = negotiated.into_parts();
    let mut parts = FramedParts::new(CheckedStream::new(old.io, &old.read_buf), old.codec);
    parts.read_buf = old.read_buf;
    parts.write_buf = old.write_buf;
    let mut socket = Framed::from_parts(parts);

    let startup = handlers.startup_handler();
    let simple = handlers.simple_query_handler();
    let extended = handlers.extended_query_handler();
    let copy = handlers.copy_handler();
    let cancel = handlers.cancel_handler();
    let errors = handlers.error_handler();
    loop {
        let starting = matches!(
            socket.state(),
            PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        );
        let message = if starting {
            tokio::select! {
                _ = &mut startup_timeout => None,
                message = socket.next() => message,
            }
        } else {
            socket.next().await
        };
        let Some(Ok(message)) = message else {
            return Ok(());
        };
        // The client is leaving; some (asyncpg) wait for the socket to close.
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            return Ok(());
        }
        let extended_query = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => message.is_extended_query(),
        };
        let result = process_message(
            message,
            &mut socket,
            Arc::clone(&startup),
            Arc::clone(&simple),
            Arc::clone(&extended),
            Arc::clone(&copy),
            Arc::clone(&cancel),
        )
        .await;
        if let Err(mut e) = result {
            pgwire::api::ErrorHandler::on_error(errors.as_ref(), &socket, &mut e);
            process_error(&mut socket, e, extended_query).await?;
        }
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
