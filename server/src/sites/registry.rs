//! The coordinator's sites: who may connect (names and token hashes), who
//! is connected, and the task queues through which the coordinator's
//! training calls reach them.
//!
//! A call ([`SiteRegistry::call`]) queues a task for one site and waits for
//! its reply; the site picks the task up with its next long poll
//! ([`SiteRegistry::poll`]) and answers with [`SiteRegistry::reply`]. A site
//! that stops polling goes offline after [`ONLINE_WINDOW`]; calls to it
//! fail at once, and a call it took but never answered ends at its timeout.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};

use super::protocol::{Envelope, Hello, OfferedTable, Reply, ReplyMessage, Task};

/// How long a poll waits for a task before answering "nothing" (the site
/// polls again at once, so this is also its heartbeat period).
pub const POLL_WAIT: Duration = Duration::from_secs(5);
/// A site that has not polled for this long is offline.
pub const ONLINE_WINDOW: Duration = Duration::from_secs(15);

/// A site's stored credential: a random salt and the BLAKE3 hash of salt
/// and token. The token itself is never stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SiteCredential {
    pub salt: String,
    pub hash: String,
}

impl SiteCredential {
    /// A new credential for `token`, with a fresh salt.
    pub fn new(token: &str) -> SiteCredential {
        let salt = crate::flight::random_hex(16);
        let hash = Self::digest(&salt, token).to_hex().to_string();
        SiteCredential { salt, hash }
    }

    fn digest(salt: &str, token: &str) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new();
        hasher.update(salt.as_bytes());
        hasher.update(&[0]);
        hasher.update(token.as_bytes());
        hasher.finalize()
    }

    /// Whether `token` is this credential's (compared in constant time:
    /// `blake3::Hash`'s equality is).
    pub fn accepts(&self, token: &str) -> bool {
        match blake3::Hash::from_hex(&self.hash) {
            Ok(expected) => Self::digest(&self.salt, token) == expected,
            Err(_) => false,
        }
    }
}

/// Why a site's call to the coordinator was refused.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("unknown site \"{0}\" (the coordinator defines sites with CREATE SITE or [[sites]])")]
    Unknown(String),
    #[error("wrong token for site \"{0}\"")]
    WrongToken(String),
}

/// Why a coordinator's call to a site failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("site {0} is not defined")]
    Unknown(String),
    #[error("site {0} is offline")]
    Offline(String),
    #[error("site {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    #[error("site {0} went away before answering")]
    Dropped(String),
}

/// One row of `fedsql.system.sites`.
#[derive(Debug, Clone)]
pub struct SiteRow {
    pub name: String,
    pub online: bool,
    pub address: Option<String>,
    pub last_seen: Option<SystemTime>,
    pub version: Option<String>,
    pub tables: Vec<OfferedTable>,
}

struct SiteState {
    credential: SiteCredential,
    session: Option<String>,
    version: Option<String>,
    address: Option<String>,
    last_seen: Option<(SystemTime, Instant)>,
    tables: Vec<OfferedTable>,
    queue: VecDeque<Envelope>,
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    wake: Arc<Notify>,
}

impl SiteState {
    fn new(credential: SiteCredential) -> SiteState {
        SiteState {
            credential,
            session: None,
            version: None,
            address: None,
            last_seen: None,
            tables: Vec::new(),
            queue: VecDeque::new(),
            pending: HashMap::new(),
            wake: Arc::new(Notify::new()),
        }
    }

    fn online(&self) -> bool {
        self.last_seen
            .is_some_and(|(_, at)| at.elapsed() < ONLINE_WINDOW)
    }
}

/// The coordinator's sites.
#[derive(Default)]
pub struct SiteRegistry {
    sites: Mutex<BTreeMap<String, SiteState>>,
    next_id: AtomicU64,
}

impl SiteRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SiteState>> {
        self.sites.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Defines (or redefines) site `name` with `credential`.
    pub fn define(&self, name: &str, credential: SiteCredential) {
        let mut sites = self.lock();
        match sites.get_mut(name) {
            Some(site) => site.credential = credential,
            None => {
                sites.insert(name.to_string(), SiteState::new(credential));
            }
        }
    }

    /// Removes site `name`; its pending calls fail.
    pub fn remove(&self, name: &str) -> bool {
        self.lock().remove(name).is_some()
    }

    /// Whether site `name` is defined.
    /// The defined sites' names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// The tables site `name` offered in its last poll (none before it
    /// first polls this coordinator).
    pub fn offered_tables(&self, name: &str) -> Vec<OfferedTable> {
        self.lock()
            .get(name)
            .map(|s| s.tables.clone())
            .unwrap_or_default()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    /// Whether site `name` polled within [`ONLINE_WINDOW`].
    pub fn is_online(&self, name: &str) -> bool {
        self.lock().get(name).is_some_and(SiteState::online)
    }

    /// The session id of site `name`'s current process, once it polled.
    pub fn session(&self, name: &str) -> Option<String> {
        self.lock().get(name).and_then(|s| s.session.clone())
    }

    fn check(&self, name: &str, token: &str) -> Result<(), SiteError> {
        let sites = self.lock();
        let site = sites
            .get(name)
            .ok_or_else(|| SiteError::Unknown(name.to_string()))?;
        if site.credential.accepts(token) {
            Ok(())
        } else {
            Err(SiteError::WrongToken(name.to_string()))
        }
    }

    /// A site's long poll: records its heartbeat, then waits up to
    /// [`POLL_WAIT`] for a task.
    pub async fn poll(
        &self,
        hello: Hello,
        peer: Option<String>,
    ) -> Result<Option<Envelope>, SiteError> {
        self.check(&hello.site, &hello.token)?;
        let deadline = tokio::time::Instant::now() + POLL_WAIT;
        loop {
            let wake = {
                let mut sites = self.lock();
                let site = sites
                    .get_mut(&hello.site)
                    .ok_or_else(|| SiteError::Unknown(hello.site.clone()))?;
                if site.session.as_deref() != Some(hello.session.as_str()) {
                    if site.session.is_some() {
                        tracing::info!(site = %hello.site, "site reconnected as a new process");
                    } else {
                        tracing::info!(site = %hello.site, "site connected");
                    }
                    // What the old process took with it will not be answered.
                    site.pending.clear();
                    site.session = Some(hello.session.clone());
                }
                site.last_seen = Some((SystemTime::now(), Instant::now()));
                site.version = Some(hello.version.clone());
                site.address = peer.clone();
                site.tables = hello.tables.clone();
                if let Some(task) = site.queue.pop_front() {
                    return Ok(Some(task));
                }
                Arc::clone(&site.wake)
            };
            if tokio::time::timeout_at(deadline, wake.notified())
                .await
                .is_err()
            {
                return Ok(None);
            }
        }
    }

    /// A site's answer to a task.
    pub fn reply(&self, message: ReplyMessage) -> Result<(), SiteError> {
        self.check(&message.site, &message.token)?;
        let sender = self
            .lock()
            .get_mut(&message.site)
            .and_then(|s| s.pending.remove(&message.id));
        match sender {
            Some(sender) => {
                let _ = sender.send(message.reply);
            }
            None => tracing::debug!(site = %message.site, id = message.id, "late reply dropped"),
        }
        Ok(())
    }

    /// Sends `task` to site `name` and waits up to `timeout` for its reply.
    pub async fn call(
        &self,
        name: &str,
        task: Task,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let receiver = {
            let mut sites = self.lock();
            let site = sites
                .get_mut(name)
                .ok_or_else(|| CallError::Unknown(name.to_string()))?;
            if !site.online() {
                return Err(CallError::Offline(name.to_string()));
            }
            let (sender, receiver) = oneshot::channel();
            site.pending.insert(id, sender);
            site.queue.push_back(Envelope { id, task });
            site.wake.notify_one();
            receiver
        };
        match tokio::time::timeout(timeout, receiver).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(CallError::Dropped(name.to_string())),
            Err(_) => {
                if let Some(site) = self.lock().get_mut(name) {
                    site.pending.remove(&id);
                    site.queue.retain(|e| e.id != id);
                }
                Err(CallError::Timeout(name.to_string(), timeout))
            }
        }
    }

    /// Every site, for `fedsql.system.sites`.
    pub fn rows(&self) -> Vec<SiteRow> {
        self.lock()
            .iter()
            .map(|(name, s)| SiteRow {
                name: name.clone(),
                online: s.online(),
                address: s.address.clone(),
                last_seen: s.last_seen.map(|(t, _)| t),
                version: s.version.clone(),
                tables: s.tables.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_accept_only_their_token() {
        let c = SiteCredential::new("s3cret");
        assert!(c.accepts("s3cret"));
        assert!(!c.accepts("s3cret "));
        assert!(!c.accepts(""));
        // Salted: the same token hashes differently each time.
        assert_ne!(SiteCredential::new("s3cret").hash, c.hash);
        assert!(!c.hash.contains("s3cret"));
    }

    fn hello(site: &str, token: &str) -> Hello {
        Hello {
            site: site.into(),
            token: token.into(),
            session: "one".into(),
            version: "test".into(),
            tables: vec![],
        }
    }

    #[tokio::test]
    async fn a_call_reaches_a_polling_site_and_its_reply_comes_back() {
        let registry = Arc::new(SiteRegistry::default());
        registry.define("eu", SiteCredential::new("t"));
        assert!(matches!(
            registry.poll(hello("eu", "wrong"), None).await,
            Err(SiteError::WrongToken(_))
        ));
        assert!(matches!(
            registry.poll(hello("us", "t"), None).await,
            Err(SiteError::Unknown(_))
        ));
        // Offline until it polls.
        let offline = registry
            .call(
                "eu",
                Task::Finish { run: "r".into() },
                Duration::from_secs(1),
            )
            .await;
        assert!(matches!(offline, Err(CallError::Offline(_))));
        // A first poll brings it online (and answers nothing after POLL_WAIT).
        let site = Arc::clone(&registry);
        let poller = tokio::spawn(async move { site.poll(hello("eu", "t"), None).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let caller = Arc::clone(&registry);
        let call = tokio::spawn(async move {
            caller
                .call(
                    "eu",
                    Task::Finish { run: "r".into() },
                    Duration::from_secs(10),
                )
                .await
        });
        let envelope = poller.await.unwrap().unwrap().expect("the task");
        registry
            .reply(ReplyMessage {
                site: "eu".into(),
                token: "t".into(),
                id: envelope.id,
                reply: Reply::Done,
            })
            .unwrap();
        assert!(matches!(call.await.unwrap(), Ok(Reply::Done)));
        assert!(registry.is_online("eu"));
    }
}
