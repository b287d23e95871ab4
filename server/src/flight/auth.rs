//! Flight SQL authentication: HTTP basic credentials in the handshake buy a
//! bearer token that expires; every later call presents the token.
//!
//! Without a configured password anyone may connect (the endpoint then only
//! listens on loopback, see [`Accounts::check_listen_address`]); a handshake
//! still hands out a token so clients that always authenticate keep working,
//! and the token (or, without one, the client's address) keys the session.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::prelude::{Engine as _, BASE64_STANDARD, BASE64_STANDARD_NO_PAD};
use tonic::{Request, Status};

use crate::accounts::Accounts;

/// Who made a call, as far as sessions are concerned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller {
    /// Identifies the caller's session: the bearer token, or the peer address.
    pub session_key: String,
    /// The user name given at the handshake (`anonymous` without one).
    pub user: String,
}

struct IssuedToken {
    user: String,
    expires: Instant,
}

/// Checks credentials and issues bearer tokens.
pub struct Authenticator {
    accounts: Accounts,
    ttl: Duration,
    tokens: Mutex<HashMap<String, IssuedToken>>,
}

impl Authenticator {
    /// An authenticator for these logins; none lets everyone in.
    pub fn new(accounts: Accounts, ttl: Duration) -> Self {
        Authenticator {
            accounts,
            ttl,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Whether calls must carry a valid token.
    pub fn required(&self) -> bool {
        self.accounts.required()
    }

    /// Checks the handshake's `authorization: Basic …` header and issues a
    /// token for the user it names.
    pub fn login<T>(&self, request: &Request<T>) -> Result<(String, String), Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let credentials = match header.and_then(|h| h.strip_prefix("Basic ")) {
            Some(encoded) => Some(decode_basic(encoded)?),
            None => None,
        };
        let user = match (self.required(), credentials) {
            (false, Some((user, _))) => user,
            (false, None) => "anonymous".to_string(),
            (true, None) => {
                return Err(Status::unauthenticated(
                    "authentication required: send basic credentials in the handshake",
                ))
            }
            (true, Some((user, password))) => {
                // An unknown user is compared against a password no one
                // has, so timing does not tell which logins exist.
                let (known, expected) = match self.accounts.password(&user) {
                    Some(p) => (true, p),
                    None => (false, "\u{0}no such login"),
                };
                if !(constant_time_eq(password.as_bytes(), expected.as_bytes()) && known) {
                    return Err(Status::unauthenticated(format!(
                        "password authentication failed for user \"{user}\""
                    )));
                }
                user
            }
        };
        let token = super::random_hex(24);
        let mut tokens = self.lock();
        let now = Instant::now();
        tokens.retain(|_, t| t.expires > now);
        tokens.insert(
            token.clone(),
            IssuedToken {
                user: user.clone(),
                expires: now + self.ttl,
            },
        );
        Ok((token, user))
    }

    /// Identifies the caller of any other call; with a password configured
    /// the call must carry a live token.
    pub fn check<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim);
        if let Some(token) = bearer {
            let tokens = self.lock();
            match tokens.get(token) {
                Some(issued) if issued.expires > Instant::now() => {
                    return Ok(Caller {
                        session_key: format!("token:{token}"),
                        user: issued.user.clone(),
                    })
                }
                Some(_) if self.required() => {
                    return Err(Status::unauthenticated(
                        "the bearer token has expired: authenticate again",
                    ))
                }
                None if self.required() => {
                    return Err(Status::unauthenticated("unknown bearer token"))
                }
                _ => {}
            }
        } else if self.required() {
            return Err(Status::unauthenticated(
                "authentication required: call Handshake with basic credentials, \
                 then send the bearer token it returns",
            ));
        }
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".into());
        Ok(Caller {
            session_key: match bearer {
                Some(token) => format!("token:{token}"),
                None => format!("peer:{peer}"),
            },
            user: "anonymous".into(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, IssuedToken>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn decode_basic(encoded: &str) -> Result<(String, String), Status> {
    // Some clients (the Go ADBC driver) leave out the padding.
    let encoded = encoded.trim();
    let bytes = BASE64_STANDARD
        .decode(encoded)
        .or_else(|_| BASE64_STANDARD_NO_PAD.decode(encoded))
        .map_err(|_| Status::invalid_argument("basic credentials are not valid base64"))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Status::invalid_argument("basic credentials are not UTF-8"))?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| Status::invalid_argument("basic credentials must be user:password"))?;
    Ok((user.to_string(), password.to_string()))
}

/// Equality whose time does not depend on where the inputs differ (the
/// length may show, as in every common implementation).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(value: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut()
            .insert("authorization", value.parse().unwrap());
        r
    }

    fn basic(user: &str, password: &str) -> Request<()> {
        with_header(&format!(
            "Basic {}",
            BASE64_STANDARD.encode(format!("{user}:{password}"))
        ))
    }

    #[test]
    fn password_gives_a_token_that_opens_calls() {
        let accounts = Accounts::new([("ann", "pw"), ("bob", "pw2")]);
        let auth = Authenticator::new(accounts, Duration::from_secs(60));
        assert!(auth.login(&basic("ann", "nope")).is_err());
        assert!(auth.login(&basic("eve", "pw")).is_err());
        assert!(auth.login(&basic("ann", "pw2")).is_err(), "bob's password");
        assert_eq!(auth.login(&basic("bob", "pw2")).unwrap().1, "bob");
        assert!(auth.check(&Request::new(())).is_err());
        let (token, user) = auth.login(&basic("ann", "pw")).unwrap();
        assert_eq!(user, "ann");
        let caller = auth
            .check(&with_header(&format!("Bearer {token}")))
            .unwrap();
        assert_eq!(caller.user, "ann");
        assert!(auth.check(&with_header("Bearer forged")).is_err());
    }

    #[test]
    fn tokens_expire() {
        let auth = Authenticator::new(Accounts::new([("ann", "pw")]), Duration::ZERO);
        let (token, _) = auth.login(&basic("ann", "pw")).unwrap();
        let err = auth
            .check(&with_header(&format!("Bearer {token}")))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn without_password_everyone_gets_a_session() {
        let auth = Authenticator::new(Accounts::default(), Duration::from_secs(60));
        assert!(!auth.required());
        assert!(auth.check(&Request::new(())).is_ok());
        assert!(auth.login(&Request::new(())).is_ok());
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
