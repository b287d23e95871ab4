//! Who may connect on the Postgres wire: SCRAM-SHA-256 passwords and TLS.
//!
//! Without a password (`password_env` unset) the wire accepts any user and
//! only listens on loopback, as the Flight SQL endpoint does. With one, every
//! client authenticates as the configured user with SCRAM-SHA-256 (what
//! libpq, psycopg, JDBC and pgbench speak by default), and over TLS also
//! with channel binding (SCRAM-SHA-256-PLUS). `pg_tls_cert`/`pg_tls_key`
//! turn on TLS: clients that send `SSLRequest` (`sslmode=require`) get it.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion_postgres::pgwire;
use futures::{Sink, SinkExt};
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramAuth, SCRAM_ITERATIONS};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::{ClientInfo, ConnectionManager, METADATA_USER};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::tokio_rustls::rustls;
use pgwire::tokio::TlsAcceptor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::accounts::Accounts;
use crate::config::TlsPem;
use crate::engine::Engine;
use crate::error::{Result, ServerError};

/// The logins' SCRAM verifiers: each password is salted and hashed once at
/// start-up and never kept in clear.
#[derive(Debug)]
pub struct ScramVerifier {
    /// User → (salt, salted password).
    logins: HashMap<String, (Vec<u8>, Vec<u8>)>,
}

impl ScramVerifier {
    /// Verifiers for every login of `accounts`.
    pub fn new(accounts: &Accounts) -> ScramVerifier {
        let logins = accounts
            .iter()
            .map(|(user, password)| {
                let salt = rand::random::<[u8; 16]>().to_vec();
                let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
                (user.to_string(), (salt, salted))
            })
            .collect();
        ScramVerifier { logins }
    }
}

// The trait's own signature elides `LoginInfo`'s lifetime; naming it here
// would not match it.
#[allow(elided_lifetimes_in_paths)]
#[async_trait]
impl AuthSource for ScramVerifier {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        match self.logins.get(user) {
            Some((salt, salted)) => Ok(Password::new(Some(salt.clone()), salted.clone())),
            // The same answer as a wrong password.
            None => Err(PgWireError::InvalidPassword(user.to_string())),
        }
    }
}

/// What the Postgres listener needs to authenticate clients, built once.
pub struct PgAuth {
    verifier: Arc<ScramVerifier>,
    /// The TLS certificate (PEM), for SCRAM channel binding.
    certificate: Option<Vec<u8>>,
}

impl PgAuth {
    /// The wire's authentication for these logins (`None` when there are
    /// none: the wire is open); `certificate` is the TLS certificate (PEM),
    /// for channel binding.
    pub fn new(accounts: &Accounts, certificate: Option<Vec<u8>>) -> Option<PgAuth> {
        accounts.required().then(|| PgAuth {
            verifier: Arc::new(ScramVerifier::new(accounts)),
            certificate,
        })
    }

    /// A SCRAM startup handler for one connection (the SASL exchange keeps
    /// per-connection state, so each connection gets its own). Channel
    /// binding is offered on TLS connections only: libpq refuses a server
    /// that offers it in plain text.
    fn handler(
        &self,
        connections: Arc<ConnectionManager>,
        secure: bool,
    ) -> SASLAuthStartupHandler<DefaultServerParameterProvider> {
        let mut scram = ScramAuth::new(Arc::clone(&self.verifier) as Arc<dyn AuthSource>);
        scram.set_iterations(SCRAM_ITERATIONS);
        if let Some(pem) = self.certificate.as_ref().filter(|_| secure) {
            // Without channel binding SCRAM still works; the certificate was
            // already accepted by the TLS set-up, so a failure here is rare.
            if let Err(e) = scram.configure_certificate(pem) {
                tracing::warn!(error = %e, "SCRAM channel binding is off");
            }
        }
        SASLAuthStartupHandler::new(Arc::new(DefaultServerParameterProvider::default()))
            .with_scram(scram)
            .with_connection_manager(connections)
    }
}

/// The startup of one Postgres-wire connection: refuses plain connections
/// when TLS is required and unknown databases, then runs SCRAM when a
/// password is configured, or lets the client in.
pub struct PgStartup<Open> {
    engine: Arc<Engine>,
    open: Arc<Open>,
    auth: Option<Arc<PgAuth>>,
    connections: Arc<ConnectionManager>,
    /// This connection's SCRAM exchange, made at its first message (when
    /// whether it is TLS is known).
    scram: OnceLock<SASLAuthStartupHandler<DefaultServerParameterProvider>>,
}

impl<Open> PgStartup<Open> {
    /// The startup for a new connection: `open` serves it when `auth` is
    /// `None`.
    pub fn new(
        engine: Arc<Engine>,
        open: Arc<Open>,
        auth: Option<Arc<PgAuth>>,
        connections: Arc<ConnectionManager>,
    ) -> Self {
        PgStartup {
            engine,
            open,
            auth,
            connections,
            scram: OnceLock::new(),
        }
    }
}

#[async_trait]
impl<Open: StartupHandler> StartupHandler for PgStartup<Open> {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self.startup(client, message).await {
            // Postgres ends the connection after a FATAL error at login,
            // with no ReadyForQuery (pgwire would send one, which asyncpg
            // and libpq read as a protocol violation): send the error,
            // close, and let pgwire's own reply fail on the closed socket.
            Err(PgWireError::UserError(info)) if info.severity == "FATAL" => {
                let again = ErrorInfo::new("FATAL".into(), info.code.clone(), info.message.clone());
                let _ = client
                    .send(PgWireBackendMessage::ErrorResponse((*info).into()))
                    .await;
                let _ = client.close().await;
                Err(PgWireError::UserError(Box::new(again)))
            }
            other => other,
        }
    }
}

impl<Open: StartupHandler> PgStartup<Open> {
    async fn startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if matches!(message, PgWireFrontendMessage::Startup(_)) {
            // `SHOW server_version_num` and the like: datafusion-postgres
            // answers SHOW from the connection's metadata.
            for (name, value) in crate::pg_compat::SERVER_SETTINGS {
                client
                    .metadata_mut()
                    .entry((*name).to_string())
                    .or_insert_with(|| (*value).to_string());
            }
        }
        if let PgWireFrontendMessage::Startup(startup) = &message {
            // Postgres's own refusal; without it the connection would wait
            // for a password nobody can check.
            if startup.parameters.get("user").is_none_or(|u| u.is_empty()) {
                return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                    "FATAL".into(),
                    "28000".into(),
                    "no PostgreSQL user name specified in startup packet".into(),
                ))));
            }
        }
        if matches!(message, PgWireFrontendMessage::Startup(_))
            && self.engine.settings().pg_tls_required
            && !client.is_secure()
        {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28000".into(),
                "this server accepts TLS connections only: connect with sslmode=require".into(),
            ))));
        }
        let Some(auth) = &self.auth else {
            return self.open.on_startup(client, message).await;
        };
        if let PgWireFrontendMessage::Startup(startup) = &message {
            let database = startup.parameters.get("database").map(String::as_str);
            crate::wire::refuse_unknown_database(&self.engine, database)?;
        }
        let peer = client.socket_addr().ip();
        if matches!(message, PgWireFrontendMessage::Startup(_)) {
            self.engine.logins().wait(peer).await;
        }
        let secure = client.is_secure();
        let scram = self
            .scram
            .get_or_init(|| auth.handler(Arc::clone(&self.connections), secure));
        // Postgres's own wording (pgwire capitalises it and, for a wrong
        // proof, names no user): clients and scripts match on it.
        scram
            .on_startup(client, message)
            .await
            .map_err(|e| match e {
                PgWireError::InvalidPassword(_) => {
                    self.engine.logins().failed(peer);
                    let user = client.metadata().get(METADATA_USER).cloned();
                    PgWireError::UserError(Box::new(ErrorInfo::new(
                        "FATAL".into(),
                        "28P01".into(),
                        format!(
                            "password authentication failed for user \"{}\"",
                            user.unwrap_or_default()
                        ),
                    )))
                }
                e => e,
            })
    }
}

/// The TLS acceptor for the Postgres wire's certificate and key.
pub fn tls_acceptor(pem: &TlsPem) -> Result<TlsAcceptor> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        ServerError::Config(format!("pg_tls_{what}: not a usable PEM file: {e}"))
    };
    let certs = CertificateDer::pem_slice_iter(&pem.cert)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad("cert", &e))?;
    let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|e| bad("key", &e))?;
    // The provider is named: rustls refuses to guess when more than one is
    // compiled in.
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ServerError::Config(format!("TLS: {e}")))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| ServerError::Config(format!("invalid TLS certificate or key: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_are_kept_salted_and_hashed() {
        let accounts = Accounts::new([("ann", "secret"), ("bob", "secret")]);
        let v = ScramVerifier::new(&accounts);
        let (salt, salted) = &v.logins["ann"];
        assert_ne!(salted, b"secret", "never in clear");
        assert_eq!(
            *salted,
            gen_salted_password("secret", salt, SCRAM_ITERATIONS)
        );
        assert_ne!(v.logins["bob"].0, *salt, "a salt per login");
    }

    #[test]
    fn tls_needs_real_pem() {
        let garbage = TlsPem {
            cert: b"not pem".to_vec(),
            key: b"not pem".to_vec(),
        };
        let err = tls_acceptor(&garbage).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("pg_tls_")));
    }
}
