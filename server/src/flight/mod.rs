//! The Arrow Flight SQL endpoint (SPEC section 8): ADBC, JDBC and
//! `pyarrow.flight` clients on the same engine and SQL front as the
//! Postgres wire.
//!
//! - [`service`]: the `FlightSqlService` calls;
//! - [`results`]: planned results between `GetFlightInfo` and `DoGet`;
//! - [`sessions`]: one DataFusion session per token (or client address);
//! - [`auth`]: basic-auth handshake, expiring bearer tokens;
//! - [`metadata`]: catalogs, schemas, tables, SQL info, type info;
//! - [`status`]: fedsql errors as gRPC status codes.

pub mod auth;
pub mod metadata;
pub mod results;
pub mod service;
pub mod sessions;
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::accounts::Accounts;
use crate::engine::Engine;
use crate::error::{Result, ServerError};

pub use auth::Authenticator;
pub use service::FlightSqlEndpoint;

/// An unguessable handle: `bytes` random bytes as hex (tokens, result and
/// prepared-statement handles).
pub(crate) fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A bound Flight SQL endpoint, ready to serve.
pub struct FlightServer {
    listener: TcpListener,
    endpoint: FlightSqlEndpoint,
    tls: Option<ServerTlsConfig>,
    /// Whether calls need a token.
    pub authenticated: bool,
}

impl FlightServer {
    /// Binds the endpoint for these logins and loads TLS material; errors
    /// name what is wrong.
    pub async fn bind(engine: Arc<Engine>, accounts: Accounts) -> Result<FlightServer> {
        let settings = engine.settings().clone();
        accounts.check_listen_address("Flight SQL", settings.flight_listen)?;
        let tls = settings
            .flight_tls()?
            .map(|pem| ServerTlsConfig::new().identity(Identity::from_pem(pem.cert, pem.key)));
        let authenticated = accounts.required();
        let auth = Arc::new(Authenticator::new(
            accounts,
            Duration::from_secs(settings.flight_token_ttl_secs),
        ));
        let listener = TcpListener::bind(settings.flight_listen)
            .await
            .map_err(|e| {
                ServerError::Config(format!(
                    "cannot listen on {} for Flight SQL: {e}",
                    settings.flight_listen
                ))
            })?;
        Ok(FlightServer {
            listener,
            endpoint: FlightSqlEndpoint::new(engine, auth),
            tls,
            authenticated,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| ServerError::Config(format!("cannot read listen address: {e}")))
    }

    /// Whether the endpoint speaks TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let mut builder = Server::builder();
        if let Some(tls) = self.tls {
            builder = builder
                .tls_config(tls)
                .map_err(|e| ServerError::Config(format!("invalid TLS certificate or key: {e}")))?;
        }
        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        builder
            .add_service(FlightServiceServer::new(self.endpoint))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(|e| ServerError::Config(format!("Flight SQL server failed: {e}")))
    }
}
