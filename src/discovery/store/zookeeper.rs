//! ZooKeeper (`zk://h:p[,h:p]/prefix`), on the `zookeeper-client` crate.
//!
//! Two elections can be followed on the node `/<prefix>/<leader-key>`:
//!
//! - `--election key`: classic Swarm through docker/leadership + libkv. The winner of the
//!   lock (go-zookeeper's `zk.NewLock`: ephemeral sequential children
//!   `_c_<32 hex>-lock-<10 digits>`, the lowest sequence holds it) writes its address as the
//!   node's data, and nobody ever clears it: when the holder dies its child goes with its
//!   session, but the data stays. So the data is the leader only while the child that was
//!   lowest when it was written is still the lowest: from the moment the lowest child
//!   changes until the data is written again, the election is open. No children, or no
//!   node, is no leader.
//! - `--election contenders`: ephemeral sequential children whose data is each contender's
//!   address (kazoo's `<uuid>__lock__`, Curator's `_c_…-lock-`, `n_`); the lowest sequence
//!   suffix (the last 10 digits, whatever the prefix) leads.
//!
//! Why it is followed the way it is:
//! - One persistent recursive watch on the node (ZooKeeper 3.6+, `addWatch`) delivers every
//!   change in the order the store made them: the node's data writes and its children's
//!   creations and deletions, one event each. For `key` the order is the whole point (was
//!   the data written before or after the lowest child changed?), and one-shot watches,
//!   re-armed after each event, lose it: the data watch and the child watch fire into two
//!   separate channels and can be re-armed only after their read, which may already show
//!   later changes. Events carry no zxid before ZooKeeper 3.9, so the state is kept from
//!   the events themselves; reads only fetch the data.
//! - The watch is registered between two identical reads (requests of one session are
//!   served in order), so the state read is exactly the state the watch starts from and no
//!   event is counted twice. If anything changed in between, it is done again.
//! - At start-up there is no history, so the staleness rules of
//!   docs/failover.md#zookeeper-staleness decide from the zxids: the lowest child created
//!   after the data was written means the writer's child is gone (stale); no child added or
//!   removed since the write means fresh; otherwise the data is trusted (a child's `czxid`
//!   says when it queued, not when it won).
//! - One ZooKeeper session per endpoint and connection: when the connection drops the
//!   session is given up (the proxy holds no ephemeral node, so nothing is lost) and
//!   [`follow`] reads again on a new one, from the same endpoint first and then the others.
//!   That covers session expiry and reconnection alike, and lets `follow` report one
//!   `Degraded` when every endpoint is unreachable, as for the other stores. Each session
//!   starts with `sync`, so a server behind its leader is caught up before it is read.
//!
//! Why `zookeeper-client` (kezhuw, 0.11): a maintained async client on tokio that speaks
//! the 3.6+ protocol, persistent recursive watches included, and sends requests in call
//! order, which the consistent read relies on. The alternatives each miss something:
//! `zookeeper` (0.8) is blocking, with callback watchers on threads of its own;
//! `zookeeper-async` (5.0) and `tokio-zookeeper` (0.4) have no persistent watches.
//! Its network I/O runs on async-io's reactor thread, one more thread per process.
//!
//! Options: `kv.auth=USER:PASSWORD` adds ZooKeeper digest authentication to every session.
//! The TLS options of `swarm manage` (`kv.cacertfile`, `kv.certfile`, `kv.keyfile`) are
//! refused: classic Swarm never spoke TLS to ZooKeeper, and following the store in clear
//! text when TLS was asked for would do so unnoticed.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use tracing::debug;
use zookeeper_client as zk;

use super::{Link, Session, Stop};
use crate::discovery::REPLY_TIMEOUT;
use crate::discovery::{Election, SourceConfig, SourceError};

/// The session timeout asked for. The proxy gives a session up as soon as its connection
/// drops, so this only says how long the server keeps an abandoned one; ZooKeeper clamps it
/// to 2–20 ticks (4–40 s with the default `tickTime`).
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times a read is tried again when the election changed while it was read.
const READ_TRIES: usize = 10;

/// How many digits end a sequential node's name.
const SEQUENCE_DIGITS: usize = 10;

/// Follows an election in ZooKeeper.
pub struct ZkSource {
    hosts: Vec<String>,
    /// The election node, `/<prefix>/<leader-key>`.
    path: String,
    election: Election,
    /// `kv.auth`, as ZooKeeper's digest scheme takes it (`user:password`). Never logged.
    auth: Option<Vec<u8>>,
    connect_timeout: Duration,
    reply_timeout: Duration,
}

impl ZkSource {
    pub fn new(config: SourceConfig) -> Result<Self, SourceError> {
        let auth = auth_option(&config.options)?;
        let path = config.url.path(&config.leader_key);
        check_path(&path)?;
        Ok(Self {
            hosts: config.url.hosts().to_vec(),
            path,
            election: config.election,
            auth,
            connect_timeout: config.connect_timeout,
            reply_timeout: config.connect_timeout + REPLY_TIMEOUT,
        })
    }

    /// A new session on one endpoint. The connection timeout also says how long a silent
    /// connection (a frozen or cut-off server) is kept: the client pings well within it.
    async fn connect(&self, endpoint: usize) -> Result<zk::Client, Stop> {
        let host = &self.hosts[endpoint];
        let mut connector = zk::Client::connector()
            .with_session_timeout(SESSION_TIMEOUT)
            .with_connection_timeout(self.connect_timeout)
            // One host per session: `follow` tries the others in turn.
            .with_fail_eagerly();
        if let Some(auth) = &self.auth {
            connector = connector.with_auth("digest", auth);
        }
        match tokio::time::timeout(self.reply_timeout, connector.connect(host)).await {
            Err(_) => Err(Stop::Store(format!(
                "no session within {:?}",
                self.reply_timeout
            ))),
            Ok(Ok(client)) => {
                debug!(%host, session = %client.session_id(), timeout = ?client.session_timeout(),
                    "ZooKeeper session established");
                Ok(client)
            }
            // The client only says "no available hosts": a plain connection says why.
            Ok(Err(e @ (zk::Error::NoHosts | zk::Error::Timeout))) => {
                let dial = tokio::net::TcpStream::connect(host.as_str());
                Err(
                    match tokio::time::timeout(self.connect_timeout, dial).await {
                        Ok(Err(io)) => Stop::Store(format!("cannot connect: {io}")),
                        Err(_) => Stop::Store(format!(
                            "cannot connect: no answer within {:?}",
                            self.connect_timeout
                        )),
                        Ok(Ok(_)) => Stop::Store(format!(
                            "connected, but no ZooKeeper session within {:?} ({e})",
                            self.connect_timeout
                        )),
                    },
                )
            }
            Ok(Err(e)) => Err(self.failure("connect", &e)),
        }
    }

    async fn bounded<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, Stop>>,
    ) -> Result<T, Stop> {
        match tokio::time::timeout(self.reply_timeout, call).await {
            Err(_) => Err(Stop::Store(format!(
                "{what}: no answer within {:?}",
                self.reply_timeout
            ))),
            Ok(result) => result,
        }
    }

    /// A ZooKeeper error as a `Degraded` reason, saying what the user can do about it.
    fn failure(&self, what: &str, error: &zk::Error) -> Stop {
        Stop::Store(match error {
            zk::Error::NoAuth => format!(
                "{what} {}: not authorized (the node's ACL does not admit {}; see kv.auth)",
                self.path,
                if self.auth.is_some() {
                    "the kv.auth identity"
                } else {
                    "unauthenticated sessions"
                }
            ),
            zk::Error::Unimplemented => format!(
                "{what} {}: the server does not implement it (ZooKeeper 3.6 or later is needed \
                 for persistent watches)",
                self.path
            ),
            other => format!("{what} {}: {other}", self.path),
        })
    }

    /// Reads the election and registers the watch that follows it from exactly that state.
    async fn start(&self, client: &zk::Client) -> Result<(State, zk::PersistentWatcher), Stop> {
        for attempt in 1..=READ_TRIES {
            // Sent in this order, served in this order: if the two reads around `addWatch`
            // agree, the watch starts from the state they read.
            let sync = client.sync(&self.path);
            let before = client.get_children(&self.path);
            let watch = client.watch(&self.path, zk::AddWatchMode::PersistentRecursive);
            let after = client.get_children(&self.path);
            let data = client.get_data(&self.path);
            let (synced, before, watcher, after, data) = self
                .bounded("read", async {
                    Ok(futures::join!(sync, before, watch, after, data))
                })
                .await?;
            match synced {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(e) => return Err(self.failure("sync", &e)),
            }
            let watcher = watcher.map_err(|e| self.failure("watch", &e))?;
            let before = found(before).map_err(|e| self.failure("read", &e))?;
            let after = found(after).map_err(|e| self.failure("read", &e))?;
            let data = found(data).map_err(|e| self.failure("read", &e))?;
            let snapshot = match (before, after, data) {
                (None, None, None) => None,
                (Some((_, s1)), Some((children, s2)), Some((data, s3))) if s1 == s2 && s2 == s3 => {
                    Some((children, data, s2))
                }
                _ => {
                    debug!(
                        attempt,
                        "the election changed while it was read; reading again"
                    );
                    continue;
                }
            };
            let Some((children, data, stat)) = snapshot else {
                debug!(path = %self.path, "the election node does not exist");
                return Ok((State::new(self.election, &self.path), watcher));
            };
            let mut state = State::new(self.election, &self.path);
            state.exists = true;
            for name in children {
                state.add_child(&name);
            }
            match self.election {
                Election::Key => {
                    state.data = text(&data);
                    let Some(lowest) = state.lowest().map(str::to_string) else {
                        return Ok((state, watcher));
                    };
                    let child = format!("{}/{lowest}", self.path);
                    let child_stat = self
                        .bounded("read", async { Ok(client.check_stat(&child).await) })
                        .await?
                        .map_err(|e| self.failure("read", &e))?;
                    let Some(child_stat) = child_stat else {
                        debug!(attempt, %child, "the lowest child went while it was read");
                        continue;
                    };
                    state.writer = writer_at_start(&lowest, child_stat.czxid, &stat);
                }
                Election::Contenders => {
                    if !self.read_leader_data(client, &mut state).await? {
                        debug!(attempt, "the leading contender went while it was read");
                        continue;
                    }
                }
            }
            return Ok((state, watcher));
        }
        Err(Stop::Store(format!(
            "{}: the election changed during each of {READ_TRIES} reads",
            self.path
        )))
    }

    /// Contenders: reads the lowest child's data. False if that child is gone (its deletion
    /// is then already queued on the watch).
    async fn read_leader_data(&self, client: &zk::Client, state: &mut State) -> Result<bool, Stop> {
        let Some(lowest) = state.lowest().map(str::to_string) else {
            state.leader_data = None;
            return Ok(true);
        };
        let child = format!("{}/{lowest}", self.path);
        let read = self
            .bounded("read", async { Ok(client.get_data(&child).await) })
            .await?;
        match read {
            Ok((data, _)) => {
                state.leader_data = Some((lowest, text(&data)));
                Ok(true)
            }
            Err(zk::Error::NoNode) => Ok(false),
            Err(e) => Err(self.failure("read", &e)),
        }
    }

    /// Reads what the events said changed, until the state is complete. A node found gone
    /// has its deletion event already queued (ZooKeeper delivers an event before any reply
    /// that shows its effect), so those events are applied and the read tried again.
    async fn refresh(
        &self,
        client: &zk::Client,
        state: &mut State,
        watcher: &mut zk::PersistentWatcher,
    ) -> Result<(), Stop> {
        for _ in 0..READ_TRIES {
            if !state.data_due {
                return Ok(());
            }
            let complete = match self.election {
                Election::Key => {
                    let read = self
                        .bounded("read", async { Ok(client.get_data(&self.path).await) })
                        .await?;
                    match read {
                        Ok((data, _)) => {
                            state.data = text(&data);
                            true
                        }
                        Err(zk::Error::NoNode) => false,
                        Err(e) => return Err(self.failure("read", &e)),
                    }
                }
                Election::Contenders => self.read_leader_data(client, state).await?,
            };
            if complete {
                state.data_due = false;
                return Ok(());
            }
            while let Some(event) = watcher.changed().now_or_never() {
                state.apply(&event)?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Session for ZkSource {
    const STORE: &'static str = "zookeeper";

    fn hosts(&self) -> &[String] {
        &self.hosts
    }

    async fn session(&self, endpoint: usize, link: &mut Link<'_>) -> Stop {
        let result: Result<Infallible, Stop> = async {
            let client = self.connect(endpoint).await?;
            let (mut state, mut watcher) = self.start(&client).await?;
            debug!(path = %self.path, ?state, "election read");
            link.read(state.leader()).await?;
            loop {
                // No timeout here: the client pings, and a silent server ends the
                // connection with a session event within the connection timeout.
                let event = watcher.changed().await;
                state.apply(&event)?;
                // Everything already queued is applied before announcing: a burst of
                // changes is told once, as it ended.
                while let Some(event) = watcher.changed().now_or_never() {
                    state.apply(&event)?;
                }
                self.refresh(&client, &mut state, &mut watcher).await?;
                debug!(?state, "election changed");
                link.changed(state.leader()).await?;
            }
        }
        .await;
        match result {
            Ok(never) => match never {},
            Err(stop) => stop,
        }
    }
}

/// The election as the events left it.
#[derive(Debug)]
struct State {
    election: Election,
    path: String,
    exists: bool,
    /// The sequential children, ordered by their sequence suffix (then name).
    children: BTreeSet<(u64, String)>,
    /// `key`: the node's data.
    data: String,
    /// `key`: the lowest child when the data was last written; `None` when the data was
    /// written by nobody holding the lock or the writer is known to be gone.
    writer: Option<String>,
    /// `contenders`: the lowest child and its data, as last read.
    leader_data: Option<(String, String)>,
    /// The data must be read again before the state says who leads.
    data_due: bool,
}

impl State {
    fn new(election: Election, path: &str) -> Self {
        Self {
            election,
            path: path.to_string(),
            exists: false,
            children: BTreeSet::new(),
            data: String::new(),
            writer: None,
            leader_data: None,
            data_due: false,
        }
    }

    fn add_child(&mut self, name: &str) {
        match sequence(name) {
            Some(seq) => {
                self.children.insert((seq, name.to_string()));
            }
            None => debug!(child = %name, "ignoring a child without a sequence suffix"),
        }
    }

    fn lowest(&self) -> Option<&str> {
        self.children.first().map(|(_, name)| name.as_str())
    }

    /// Applies one watch event, in the order the store made the changes.
    fn apply(&mut self, event: &zk::WatchedEvent) -> Result<(), Stop> {
        use zk::EventType::*;
        if event.event_type == Session {
            return match event.session_state {
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => Ok(()),
                zk::SessionState::Disconnected => {
                    Err(Stop::Store("connection to ZooKeeper lost".into()))
                }
                zk::SessionState::Expired => Err(Stop::Store("ZooKeeper session expired".into())),
                zk::SessionState::AuthFailed => {
                    Err(Stop::Store("ZooKeeper authentication failed".into()))
                }
                zk::SessionState::Closed => Err(Stop::Store("ZooKeeper session closed".into())),
            };
        }
        let lowest_before = self.lowest().map(str::to_string);
        let child = event
            .path
            .strip_prefix(self.path.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|name| !name.is_empty() && !name.contains('/'));
        let own = event.path == self.path;
        match (event.event_type, own, child) {
            (NodeCreated, true, _) => {
                // Created with data but no children: nobody held the lock when it was written.
                self.exists = true;
                self.children.clear();
                self.writer = None;
                self.data_due = self.election == Election::Key;
            }
            (NodeDeleted, true, _) => {
                self.exists = false;
                self.children.clear();
                self.writer = None;
                self.data.clear();
                self.leader_data = None;
                self.data_due = false;
            }
            (NodeDataChanged, true, _) => {
                if self.election == Election::Key {
                    // libkv writes once it holds the lock: the writer is whoever is lowest now.
                    self.writer = self.lowest().map(str::to_string);
                    self.data_due = true;
                }
            }
            (NodeCreated, false, Some(name)) => self.add_child(name),
            (NodeDeleted, false, Some(name)) => {
                if let Some(seq) = sequence(name) {
                    self.children.remove(&(seq, name.to_string()));
                }
            }
            (NodeDataChanged, false, Some(name)) => {
                if self.election == Election::Contenders && self.lowest() == Some(name) {
                    self.data_due = true;
                }
            }
            // Grandchildren (a lock child is ephemeral and has none) and the child events
            // a recursive watch does not send.
            _ => debug!(?event, "ignoring a watch event"),
        }
        if self.election == Election::Contenders && self.lowest() != lowest_before.as_deref() {
            self.data_due = self.lowest().is_some();
            if self.lowest().is_none() {
                self.leader_data = None;
            }
        }
        Ok(())
    }

    /// Who leads, as far as the store says: `None` is no leader (or a stale value).
    fn leader(&self) -> Option<&str> {
        let lowest = self.lowest()?;
        match self.election {
            Election::Key => (self.exists && self.writer.as_deref() == Some(lowest))
                .then_some(self.data.as_str()),
            Election::Contenders => match &self.leader_data {
                Some((name, data)) if name == lowest => Some(data.as_str()),
                _ => None,
            },
        }
    }
}

/// `key` at start-up, without history: which child wrote the data, if it still holds the
/// lock (the start-up rules of docs/failover.md#zookeeper-staleness, in that order).
fn writer_at_start(lowest: &str, lowest_czxid: i64, node: &zk::Stat) -> Option<String> {
    if lowest_czxid > node.mzxid {
        // The lowest child queued after the write: the writer's child is gone.
        debug!(
            lowest,
            "the leader value is stale: written before the lowest child queued"
        );
        None
    } else if node.pzxid < node.mzxid {
        debug!(
            lowest,
            "the leader value is fresh: no child changed since it was written"
        );
        Some(lowest.to_string())
    } else {
        // Children changed since the write but the lowest was there before it: it may have
        // written it (waiters joined later) or queued behind the writer; trusted.
        debug!(
            lowest,
            "the leader value is trusted: its holder queued before the write"
        );
        Some(lowest.to_string())
    }
}

/// The sequence number ZooKeeper appended to a sequential node's name.
fn sequence(name: &str) -> Option<u64> {
    let start = name.len().checked_sub(SEQUENCE_DIGITS)?;
    let digits = name.get(start..)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `NoNode` is an answer, not a failure.
fn found<T>(result: Result<T, zk::Error>) -> Result<Option<T>, zk::Error> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(zk::Error::NoNode) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A value that is not UTF-8 is garbage all the same: the router rejects it.
fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// ZooKeeper refuses empty, `.` and `..` path components; said at start-up rather than on
/// every read.
fn check_path(path: &str) -> Result<(), SourceError> {
    let bad = path
        .split('/')
        .skip(1)
        .find(|c| c.is_empty() || *c == "." || *c == ".." || c.chars().any(char::is_control));
    match bad {
        Some(component) => Err(SourceError::Unsupported(format!(
            "the ZooKeeper path {path:?} has an invalid component {component:?}"
        ))),
        None => Ok(()),
    }
}

/// Checks the `--discovery-opt` values for `zk://` and returns the digest credentials.
fn auth_option(options: &BTreeMap<String, String>) -> Result<Option<Vec<u8>>, SourceError> {
    for option in options.keys() {
        match option.as_str() {
            "kv.auth" => {}
            "kv.cacertfile" | "kv.certfile" | "kv.keyfile" => {
                return Err(SourceError::Unsupported(format!(
                    "--discovery-opt {option}: zk:// has no TLS (classic Swarm never spoke TLS \
                     to ZooKeeper); remove the kv.cacertfile/kv.certfile/kv.keyfile options or \
                     use a store that takes them (etcd://, etcdv3://, consul://)"
                )))
            }
            _ => {
                return Err(SourceError::Option {
                    option: option.clone(),
                    reason: "not an option for zk:// (known: kv.auth)".into(),
                })
            }
        }
    }
    match options.get("kv.auth") {
        None => Ok(None),
        Some(auth) => match auth.split_once(':') {
            Some((user, _)) if !user.is_empty() => Ok(Some(auth.as_bytes().to_vec())),
            // The value is a secret: the message never repeats it.
            _ => Err(SourceError::Option {
                option: "kv.auth".into(),
                reason: "expected USER:PASSWORD (ZooKeeper digest authentication)".into(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(path: &str) -> zk::WatchedEvent {
        zk::WatchedEvent::new(zk::EventType::NodeCreated, path)
    }

    fn deleted(path: &str) -> zk::WatchedEvent {
        zk::WatchedEvent::new(zk::EventType::NodeDeleted, path)
    }

    fn written(path: &str) -> zk::WatchedEvent {
        zk::WatchedEvent::new(zk::EventType::NodeDataChanged, path)
    }

    const P: &str = "/swarm/docker/swarm/leader";
    const A: &str = "_c_0123456789abcdef0123456789abcdef-lock-0000000001";
    const B: &str = "_c_fedcba9876543210fedcba9876543210-lock-0000000002";

    fn child(name: &str) -> String {
        format!("{P}/{name}")
    }

    /// Applies `event`, then (as a read would) sets the data when it is due.
    fn step(state: &mut State, event: zk::WatchedEvent, data: &str) {
        assert!(state.apply(&event).is_ok());
        if state.data_due {
            state.data = data.to_string();
            state.data_due = false;
        }
    }

    #[test]
    fn sequence_is_the_last_ten_digits() {
        assert_eq!(sequence(A), Some(1));
        assert_eq!(sequence("n_0000000042"), Some(42));
        assert_eq!(sequence("9f2c__lock__0000000007"), Some(7));
        assert_eq!(sequence("lock-1"), None);
        assert_eq!(sequence("config"), None);
        assert_eq!(sequence("x-000000001a"), None);
    }

    #[test]
    fn key_election_is_open_from_the_lowest_change_to_the_next_write() {
        let mut s = State::new(Election::Key, P);
        // libkv's first election: parents created, the lock child, then the data.
        step(&mut s, created(P), "");
        assert_eq!(s.leader(), None);
        step(&mut s, created(&child(A)), "");
        assert_eq!(s.leader(), None, "a holder that has not written yet");
        step(&mut s, written(P), "10.0.0.1:2375");
        assert_eq!(s.leader(), Some("10.0.0.1:2375"));
        // A waiter queues: nothing changes.
        step(&mut s, created(&child(B)), "10.0.0.1:2375");
        assert_eq!(s.leader(), Some("10.0.0.1:2375"));
        // The holder dies: the data stays but is stale until B writes.
        step(&mut s, deleted(&child(A)), "10.0.0.1:2375");
        assert_eq!(s.leader(), None);
        step(&mut s, written(P), "10.0.0.2:2375");
        assert_eq!(s.leader(), Some("10.0.0.2:2375"));
        // Everyone gone: no leader, whatever the data says.
        step(&mut s, deleted(&child(B)), "10.0.0.2:2375");
        assert_eq!(s.leader(), None);
        step(&mut s, deleted(P), "");
        assert_eq!(s.leader(), None);
    }

    #[test]
    fn key_write_before_the_holder_change_stays_stale() {
        // Events in store order: A writes, A dies (B lowest), and B has not written yet.
        // Even if the read of A's write already shows later data, B must write first.
        let mut s = State::new(Election::Key, P);
        s.exists = true;
        s.add_child(A);
        s.add_child(B);
        step(&mut s, written(P), "10.0.0.2:2375");
        assert_eq!(s.leader(), Some("10.0.0.2:2375"));
        step(&mut s, deleted(&child(A)), "10.0.0.2:2375");
        assert_eq!(s.leader(), None);
        step(&mut s, written(P), "10.0.0.2:2375");
        assert_eq!(s.leader(), Some("10.0.0.2:2375"));
    }

    #[test]
    fn start_up_rules() {
        let stat = |mzxid, pzxid| zk::Stat {
            czxid: 1,
            mzxid,
            pzxid,
            ctime: 0,
            mtime: 0,
            version: 1,
            cversion: 1,
            aversion: 0,
            ephemeral_owner: 0,
            data_length: 0,
            num_children: 1,
        };
        // The lowest child queued after the write: stale.
        assert_eq!(writer_at_start(B, 12, &stat(10, 12)), None);
        // No child changed since the write: fresh.
        assert_eq!(writer_at_start(A, 5, &stat(10, 5)), Some(A.to_string()));
        // Children changed since, the lowest was there before: trusted.
        assert_eq!(writer_at_start(A, 5, &stat(10, 11)), Some(A.to_string()));
    }

    #[test]
    fn contenders_lowest_sequence_leads_whatever_the_prefix() {
        let mut s = State::new(Election::Contenders, P);
        s.exists = true;
        // "n_" sorts after "_c_" by name, but its sequence is lower.
        s.add_child("n_0000000003");
        s.add_child("_c_0123456789abcdef0123456789abcdef-lock-0000000004");
        s.add_child("9f2c4e__lock__0000000005");
        assert_eq!(s.lowest(), Some("n_0000000003"));
        s.leader_data = Some(("n_0000000003".into(), "10.0.0.3:2375".into()));
        assert_eq!(s.leader(), Some("10.0.0.3:2375"));
        assert!(s.apply(&deleted(&child("n_0000000003"))).is_ok());
        assert!(s.data_due, "the new leader's data must be read");
        assert_eq!(s.leader(), None);
        assert!(s
            .apply(&deleted(&child("9f2c4e__lock__0000000005")))
            .is_ok());
        assert!(s
            .apply(&deleted(&child(
                "_c_0123456789abcdef0123456789abcdef-lock-0000000004"
            )))
            .is_ok());
        assert!(!s.data_due);
        assert_eq!(s.leader(), None);
    }

    #[test]
    fn session_events_end_the_session() {
        let mut s = State::new(Election::Key, P);
        for state in [
            zk::SessionState::Disconnected,
            zk::SessionState::Expired,
            zk::SessionState::Closed,
            zk::SessionState::AuthFailed,
        ] {
            let event = zk::WatchedEvent::new_session(state);
            assert!(matches!(s.apply(&event), Err(Stop::Store(_))), "{state:?}");
        }
    }

    #[test]
    fn options_are_checked() {
        let options = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(auth_option(&options(&[])).ok(), Some(None));
        assert_eq!(
            auth_option(&options(&[("kv.auth", "swarm:s3cret")])).ok(),
            Some(Some(b"swarm:s3cret".to_vec()))
        );
        assert!(matches!(
            auth_option(&options(&[("kv.cacertfile", "/ca.pem")])),
            Err(SourceError::Unsupported(m)) if m.contains("zk:// has no TLS")
        ));
        assert!(matches!(
            auth_option(&options(&[("kv.username", "u")])),
            Err(SourceError::Option { option, .. }) if option == "kv.username"
        ));
        match auth_option(&options(&[("kv.auth", "nocolon-s3cret")])) {
            Err(SourceError::Option { option, reason }) => {
                assert_eq!(option, "kv.auth");
                assert!(!reason.contains("s3cret"), "{reason}");
            }
            _ => panic!("kv.auth without a colon accepted"),
        }
        assert!(check_path("/swarm/docker/swarm/leader").is_ok());
        assert!(check_path("/swarm//leader").is_err());
        assert!(check_path("/swarm/../leader").is_err());
    }
}
