//! The logins fedsql accepts, on the Postgres wire and on Flight SQL alike.
//!
//! `user` with `password_env` is one login; each `[[users]]` entry of the
//! config file adds one. Passwords come only from environment variables
//! (named, never written in the file). No login configured means no
//! authentication, and both endpoints then listen on loopback only.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::config::Settings;
use crate::error::{Result, ServerError};

/// User names and their passwords.
#[derive(Clone, Default)]
pub struct Accounts(BTreeMap<String, String>);

impl std::fmt::Debug for Accounts {
    // Names only: a log line must never carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Accounts {
    /// The logins the settings declare; an unset variable or a name given
    /// twice is an error naming it.
    pub fn from_settings(settings: &Settings) -> Result<Accounts> {
        let mut declared: Vec<(&str, &str)> = Vec::new();
        if let Some(var) = &settings.password_env {
            declared.push((&settings.user, var));
        }
        declared.extend(
            settings
                .users
                .iter()
                .map(|u| (u.name.as_str(), u.password_env.as_str())),
        );
        let mut accounts = BTreeMap::new();
        for (name, var) in declared {
            let password = match std::env::var(var) {
                Ok(p) if !p.is_empty() => p,
                _ => {
                    return Err(ServerError::Config(format!(
                        "the password of user {name}: password_env names {var}, but that \
                         environment variable is not set or empty"
                    )))
                }
            };
            if accounts.insert(name.to_string(), password).is_some() {
                return Err(ServerError::Config(format!(
                    "user {name} is declared twice (user/password_env and [[users]])"
                )));
            }
        }
        Ok(Accounts(accounts))
    }

    /// Logins from pairs of (user, password), for tests and embedding.
    pub fn new<'a>(logins: impl IntoIterator<Item = (&'a str, &'a str)>) -> Accounts {
        Accounts(
            logins
                .into_iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
        )
    }

    /// Whether clients must authenticate.
    pub fn required(&self) -> bool {
        !self.0.is_empty()
    }

    /// The password of `user`, if it is a login.
    pub fn password(&self, user: &str) -> Option<&str> {
        self.0.get(user).map(String::as_str)
    }

    /// Every login, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// Refuses to serve `endpoint` on a non-loopback `addr` without logins:
    /// an unauthenticated endpoint is for the local machine only.
    pub fn check_listen_address(&self, endpoint: &str, addr: SocketAddr) -> Result<()> {
        if !self.required() && !addr.ip().is_loopback() {
            return Err(ServerError::Config(format!(
                "refusing to serve {endpoint} on {addr} without authentication: set \
                 `password_env` (the name of an environment variable holding the password) \
                 or listen on 127.0.0.1"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UserConfig;

    #[test]
    fn logins_come_from_user_and_users() {
        std::env::set_var("FEDSQL_TEST_ACCOUNTS_A", "pa");
        std::env::set_var("FEDSQL_TEST_ACCOUNTS_B", "pb");
        let mut settings = Settings {
            password_env: Some("FEDSQL_TEST_ACCOUNTS_A".into()),
            users: vec![UserConfig {
                name: "bob".into(),
                password_env: "FEDSQL_TEST_ACCOUNTS_B".into(),
            }],
            ..Settings::default()
        };
        let accounts = Accounts::from_settings(&settings).unwrap();
        assert_eq!(accounts.password("fedsql"), Some("pa"));
        assert_eq!(accounts.password("bob"), Some("pb"));
        assert_eq!(accounts.password("eve"), None);
        assert_eq!(format!("{accounts:?}"), r#"{"bob", "fedsql"}"#);

        settings.users[0].name = "fedsql".into();
        let err = Accounts::from_settings(&settings).unwrap_err().to_string();
        assert!(err.contains("declared twice"), "{err}");
        settings.users[0].password_env = "FEDSQL_TEST_ACCOUNTS_UNSET".into();
        settings.users[0].name = "carol".into();
        let err = Accounts::from_settings(&settings).unwrap_err().to_string();
        assert!(
            err.contains("carol") && err.contains("FEDSQL_TEST_ACCOUNTS_UNSET"),
            "{err}"
        );

        assert!(!Accounts::from_settings(&Settings::default())
            .unwrap()
            .required());
    }
}

/// Per-address back-off after failed logins, shared by the Postgres wire and
/// Flight SQL: after the n-th failure from an address within
/// [`LoginThrottle::WINDOW`], its next login attempts wait
/// `min(100 ms · 2^(n-1), 5 s)` before they are checked, so guessing
/// passwords from one address goes at a few attempts a second at most.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    failures:
        std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (u32, std::time::Instant)>>,
}

impl LoginThrottle {
    /// Failures older than this are forgotten.
    pub const WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
    /// The longest wait.
    pub const MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(5);

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<std::net::IpAddr, (u32, std::time::Instant)>,
    > {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long a login attempt from `ip` waits before it is checked.
    pub fn delay(&self, ip: std::net::IpAddr) -> std::time::Duration {
        match self.lock().get(&ip) {
            Some((n, last)) if last.elapsed() < Self::WINDOW && *n > 0 => {
                let exponent = (n - 1).min(16);
                std::time::Duration::from_millis(100u64 << exponent).min(Self::MAX_DELAY)
            }
            _ => std::time::Duration::ZERO,
        }
    }

    /// Waits [`LoginThrottle::delay`] for `ip`.
    pub async fn wait(&self, ip: std::net::IpAddr) {
        let delay = self.delay(ip);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// Records a failed login from `ip`.
    pub fn failed(&self, ip: std::net::IpAddr) {
        let mut failures = self.lock();
        // Bounded: forget addresses whose failures are old.
        if failures.len() > 10_000 {
            failures.retain(|_, (_, last)| last.elapsed() < Self::WINDOW);
        }
        let entry = failures.entry(ip).or_insert((0, std::time::Instant::now()));
        if entry.1.elapsed() >= Self::WINDOW {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = std::time::Instant::now();
    }
}

#[cfg(test)]
mod throttle_tests {
    use super::*;

    #[test]
    fn delays_grow_per_address_and_are_capped() {
        let t = LoginThrottle::default();
        let a: std::net::IpAddr = [10, 0, 0, 1].into();
        let b: std::net::IpAddr = [10, 0, 0, 2].into();
        assert!(t.delay(a).is_zero());
        t.failed(a);
        assert_eq!(t.delay(a), std::time::Duration::from_millis(100));
        t.failed(a);
        t.failed(a);
        assert_eq!(t.delay(a), std::time::Duration::from_millis(400));
        for _ in 0..20 {
            t.failed(a);
        }
        assert_eq!(t.delay(a), LoginThrottle::MAX_DELAY);
        assert!(t.delay(b).is_zero(), "other addresses are not slowed");
    }
}
