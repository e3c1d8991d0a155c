//! The current leader, shared by every listener and the admin API.
//!
//! Reading the leader on the request path is one atomic load ([`Router::current`]): no lock,
//! no allocation. Writes happen only when a [`LeaderEvent`] arrives, in [`Router::follow`].
//! A request that finds no reachable leader waits with [`Router::wait_for_change`].

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::discovery::{AllowList, LeaderAddr, LeaderEvent, Scheme};
use crate::history::{Change, History, Reason};
use crate::metrics::Metrics;

/// What the proxy believes about the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// A leader is known and the store is reachable.
    Leader,
    /// The election is open (or not seen yet): requests are held.
    NoLeader,
    /// The store is unreachable; the last leader (if any) is kept.
    Degraded,
}

impl State {
    const NAMES: [&'static str; 3] = ["leader", "no_leader", "degraded"];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Leader => "leader",
            State::NoLeader => "no_leader",
            State::Degraded => "degraded",
        }
    }
}

/// The primary to send traffic to: the address as the election named it, resolved once
/// when it was adopted so the request path never resolves names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub name: LeaderAddr,
    pub socket: SocketAddr,
}

impl Upstream {
    /// The name the manager's TLS certificate must carry: the host as the election wrote it
    /// (an IP literal or a DNS name), else the IP that was dialled.
    pub fn tls_name(&self) -> String {
        match self.name.host() {
            "" => self.socket.ip().to_string(),
            host => host.to_string(),
        }
    }
}

/// One immutable view of the election; replaced whole on every change.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Shared, so a request takes the whole upstream with one reference count.
    pub leader: Option<Arc<Upstream>>,
    pub state: State,
    /// When `state` began (wall clock, for `/leader`).
    pub since: SystemTime,
    /// Since when no leader has been known (monotonic, for `/readyz`); `None` while one is.
    pub leaderless_since: Option<Instant>,
    /// Number of leader changes since start (the first leader counts as one).
    pub changes: u64,
    /// Bumped whenever `leader` changes; held requests wait for it to move.
    pub generation: u64,
    /// `--verify-leader`: how the managers contradict the store right now, if they do.
    pub disagreement: Option<Arc<str>>,
}

pub struct Router {
    current: ArcSwap<Snapshot>,
    generation: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    source: Scheme,
    /// `--allow-leader` (or the `static://` entries): a leader outside it is refused.
    allow: AllowList,
    /// The proxy's own client listeners, once bound: a leader that is one of them would send
    /// every request back into the proxy (docs/failover.md#loops).
    own: Mutex<Vec<SocketAddr>>,
    /// The last changes, with their reasons (`GET /leader/history`).
    history: History,
}

/// How long the lookup of a new leader's name may take. It runs off the router's event path
/// ([`Router::follow`]), so this bounds only how long an unanswered name stays pending.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

impl Router {
    /// A router with no leader yet; `source` is the discovery scheme (shown by `/leader`;
    /// swarm mode's managers answer 503 while Raft elects, which the request path holds).
    pub fn new(source: Scheme, metrics: Arc<Metrics>) -> Self {
        let now = Instant::now();
        let snapshot = Snapshot {
            leader: None,
            state: State::NoLeader,
            since: SystemTime::now(),
            leaderless_since: Some(now),
            changes: 0,
            generation: 0,
            disagreement: None,
        };
        metrics.set_state(State::NoLeader.as_str(), &State::NAMES);
        Self {
            current: ArcSwap::from_pointee(snapshot),
            generation: watch::channel(0).0,
            metrics,
            source,
            allow: AllowList::default(),
            own: Mutex::new(Vec::new()),
            history: History::default(),
        }
    }

    /// Refuses, from now on, every leader value `allow` does not allow (empty: none).
    pub fn allowing(mut self, allow: AllowList) -> Self {
        self.allow = allow;
        self
    }

    /// Tells the router where the proxy itself listens, so that a leader naming one of these
    /// is refused. Called once the listeners are bound, before any event is applied.
    pub fn set_own_listeners(&self, listeners: Vec<SocketAddr>) {
        *self.own.lock().unwrap_or_else(|e| e.into_inner()) = listeners;
    }

    /// The current view: one atomic load.
    #[inline]
    pub fn current(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn source(&self) -> Scheme {
        self.source
    }

    /// The last changes, oldest first (at most [`crate::history::CAPACITY`]).
    pub fn history(&self) -> Vec<Change> {
        self.history.changes()
    }

    /// True while requests should be sent here: a leader is known (even if the store is
    /// degraded), or the election has been open for less than `hold_timeout` (requests are
    /// held, not refused, so a load balancer must not drop every proxy at once).
    pub fn is_ready(&self, hold_timeout: Duration) -> bool {
        match self.current().leaderless_since {
            None => true,
            Some(since) => since.elapsed() < hold_timeout,
        }
    }

    /// Waits until the leader changes from generation `seen`, or until `deadline`.
    /// Returns true if it changed.
    pub async fn wait_for_change(&self, seen: u64, deadline: tokio::time::Instant) -> bool {
        let mut rx = self.generation.subscribe();
        if *rx.borrow_and_update() != seen {
            return true;
        }
        matches!(
            tokio::time::timeout_at(deadline, rx.changed()).await,
            Ok(Ok(()))
        )
    }

    /// Applies the events of a [`crate::discovery::LeaderSource`] until it stops.
    ///
    /// A leader named by a host name is looked up in a task of its own, so a slow resolver
    /// holds up no event behind it: the next event is applied at once and supersedes the
    /// lookup, whose answer, when it comes, is logged and dropped
    /// (docs/architecture.md, "The path of a leader value").
    pub async fn follow(&self, mut events: mpsc::Receiver<LeaderEvent>) {
        let (answers_tx, mut answers) = mpsc::unbounded_channel::<Lookup>();
        // Events applied so far; a lookup answers for the event it was started for.
        let mut applied: u64 = 0;
        loop {
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { return };
                    if !matches!(event, LeaderEvent::Disagreement(_)) {
                        applied += 1;
                    }
                    match event {
                        LeaderEvent::Leader(name) if !is_ip_literal(&name) => {
                            info!("looking up the leader's name {name}");
                            let answers = answers_tx.clone();
                            let event = applied;
                            tokio::spawn(async move {
                                let addresses = resolve(&name).await;
                                let _ = answers.send(Lookup { event, name, addresses });
                            });
                        }
                        event => self.apply(event).await,
                    }
                }
                Some(lookup) = answers.recv() => {
                    if lookup.event == applied {
                        self.settle(lookup.name, lookup.addresses);
                    } else {
                        let outcome = match &lookup.addresses {
                            Ok(addresses) => format!("{addresses:?}"),
                            Err(reason) => reason.clone(),
                        };
                        info!(
                            name = %lookup.name,
                            %outcome,
                            "a newer event superseded this lookup of the leader's name; its \
                             answer is ignored"
                        );
                    }
                }
            }
        }
    }

    /// Applies one event, resolving a leader's name in line. Public so tests and benchmarks
    /// can drive the router directly; [`Router::follow`] resolves names off its event path.
    pub async fn apply(&self, event: LeaderEvent) {
        match event {
            LeaderEvent::Leader(name) => {
                let addresses = resolve(&name).await;
                self.settle(name, addresses);
            }
            LeaderEvent::NoLeader => self.adopt(None, State::NoLeader),
            LeaderEvent::Degraded(reason) => {
                self.metrics.store_errors.inc();
                warn!(%reason, "store unreachable; keeping the last leader");
                let old = self.current();
                if old.state != State::Degraded {
                    let leader = name(&old.leader);
                    self.record(leader.clone(), leader, Reason::Degraded, Some(reason));
                    self.store(Snapshot {
                        state: State::Degraded,
                        since: SystemTime::now(),
                        ..Snapshot::clone(&old)
                    });
                }
            }
            LeaderEvent::Disagreement(text) => {
                if text.is_some() {
                    self.metrics.leader_disagreements.inc();
                }
                let old = self.current();
                let leader = name(&old.leader);
                match (&text, &old.disagreement) {
                    (Some(how), _) => {
                        let how = how.clone();
                        self.record(leader.clone(), leader, Reason::Disagreement, Some(how));
                    }
                    (None, Some(_)) => self.record(leader.clone(), leader, Reason::Agreement, None),
                    (None, None) => {}
                }
                self.store(Snapshot {
                    disagreement: text.map(Arc::from),
                    ..Snapshot::clone(&old)
                });
            }
            LeaderEvent::Rejected { value, reason } => {
                self.reject(value, &reason.to_string());
                self.end_outage();
            }
        }
    }

    /// Adopts the leader `name` once its lookup answered `addresses`, if it may lead;
    /// otherwise refuses it like garbage and keeps the last leader.
    fn settle(&self, name: LeaderAddr, addresses: Result<Vec<SocketAddr>, String>) {
        match addresses.and_then(|addresses| self.check(&name, &addresses)) {
            Ok(socket) => self.adopt(Some(Arc::new(Upstream { name, socket })), State::Leader),
            Err(reason) => {
                self.reject(name.to_string(), &reason);
                self.end_outage();
            }
        }
    }

    /// The store answered, so it is reachable again, even if what it holds is unusable:
    /// the last leader stays, the outage is over.
    fn end_outage(&self) {
        let old = self.current();
        if old.state == State::Degraded {
            let state = if old.leader.is_some() {
                State::Leader
            } else {
                State::NoLeader
            };
            self.adopt(old.leader.clone(), state);
        }
    }

    /// Checks a new leader, which resolved to `addresses`, may lead: inside the allow-list and
    /// not one of the proxy's own listeners. Returns the address to dial, or why it is refused.
    fn check(&self, name: &LeaderAddr, addresses: &[SocketAddr]) -> Result<SocketAddr, String> {
        self.allow.admit(name, addresses)?;
        let own = self.own.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(listener) = addresses
            .iter()
            .find_map(|a| own.iter().find(|l| is_same_socket(a, l)))
        {
            return Err(format!(
                "{name} is this proxy's own listener {listener}: every request would come back \
                 into the proxy"
            ));
        }
        addresses
            .first()
            .copied()
            .ok_or_else(|| format!("{name} resolves to no address"))
    }

    fn reject(&self, value: String, reason: &str) {
        self.metrics.rejected_values.inc();
        // The value comes from the store: log it escaped and bounded.
        let shown: String = value.chars().take(200).collect();
        warn!(value = ?shown, %reason, "ignoring invalid leader value; keeping the last leader");
        let leader = name(&self.current().leader);
        let detail = format!("{shown:?}: {reason}");
        self.record(leader.clone(), leader, Reason::Refused, Some(detail));
    }

    fn adopt(&self, leader: Option<Arc<Upstream>>, state: State) {
        let old = self.current();
        if old.leader == leader && old.state == state {
            return;
        }
        let leader_changed = old.leader != leader;
        let changes = old.changes + u64::from(leader_changed && leader.is_some());
        let generation = old.generation + u64::from(leader_changed);
        let leaderless_since = match (&leader, old.leaderless_since) {
            (Some(_), _) => None,
            (None, Some(since)) => Some(since),
            (None, None) => Some(Instant::now()),
        };
        let reason = match (&leader, leader_changed) {
            (Some(_), true) => Some(Reason::Elected),
            (None, true) => Some(Reason::Expired),
            _ if old.state == State::Degraded => Some(Reason::Recovered),
            _ => None,
        };
        if let Some(reason) = reason {
            self.record(name(&old.leader), name(&leader), reason, None);
        }
        if leader_changed {
            if leader.is_some() {
                self.metrics.leader_changes.inc();
            }
            match &leader {
                Some(up) => info!("New leader elected: {}", up.name),
                None => info!("No leader: the election is open; holding requests"),
            }
            self.metrics.set_leader(
                old.leader.as_ref().map(|u| u.name.to_string()).as_deref(),
                leader.as_ref().map(|u| u.name.to_string()).as_deref(),
            );
        }
        self.store(Snapshot {
            leader,
            state,
            since: SystemTime::now(),
            leaderless_since,
            changes,
            generation,
            disagreement: old.disagreement.clone(),
        });
    }

    fn record(
        &self,
        from: Option<String>,
        to: Option<String>,
        reason: Reason,
        detail: Option<String>,
    ) {
        self.history.record(Change {
            time: SystemTime::now(),
            from,
            to,
            reason,
            detail,
        });
    }

    fn store(&self, snapshot: Snapshot) {
        let (generation, state) = (snapshot.generation, snapshot.state);
        self.current.store(Arc::new(snapshot));
        self.metrics.set_state(state.as_str(), &State::NAMES);
        self.generation.send_replace(generation);
    }
}

/// Resolves a leader's host once, when it is adopted, within [`RESOLVE_TIMEOUT`]. A name
/// that does not resolve cannot be dialled, so it is treated like any other unusable value:
/// the last leader stays.
pub async fn resolve(name: &LeaderAddr) -> Result<Vec<SocketAddr>, String> {
    let lookup = tokio::net::lookup_host((name.host(), name.port()));
    let addrs: Vec<SocketAddr> = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
        .await
        .map_err(|_| format!("cannot resolve {name}: no answer in {RESOLVE_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot resolve {name}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{name} resolves to no address"));
    }
    Ok(addrs)
}

/// A lookup of a leader's name, answered: `event` counts the events the router had applied
/// when it started, so an answer that a newer event superseded is told apart.
struct Lookup {
    event: u64,
    name: LeaderAddr,
    addresses: Result<Vec<SocketAddr>, String>,
}

/// The leader's name as the election wrote it, for the history.
fn name(leader: &Option<Arc<Upstream>>) -> Option<String> {
    leader.as_ref().map(|up| up.name.to_string())
}

/// A leader named by an IP address: resolving it only parses it, so it is done in line.
fn is_ip_literal(name: &LeaderAddr) -> bool {
    name.host().parse::<IpAddr>().is_ok()
}

/// Whether a connection to `leader` would reach `listener`: the same port and the same
/// address, or any address of this host when the listener is bound to all of them.
fn is_same_socket(leader: &SocketAddr, listener: &SocketAddr) -> bool {
    if leader.port() != listener.port() {
        return false;
    }
    let ip = leader.ip().to_canonical();
    let bound = listener.ip().to_canonical();
    // Dialling 0.0.0.0 reaches this host, as a listener on 0.0.0.0 takes any of its addresses.
    ip == bound || ip.is_unspecified() || (bound.is_unspecified() && is_local(ip))
}

/// An address of this host: a loopback address, or one a socket can be bound to.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(s: &str) -> LeaderEvent {
        LeaderEvent::Leader(LeaderAddr::parse(s).unwrap())
    }

    #[tokio::test]
    async fn keeps_the_last_leader_through_outages_and_garbage() {
        let router = Router::new(Scheme::Etcd, Arc::new(Metrics::new()));
        assert!(router.current().leader.is_none());
        router.apply(leader("127.0.0.1:1001")).await;
        let first = router.current().generation;
        router
            .apply(LeaderEvent::Rejected {
                value: "garbage".into(),
                reason: crate::discovery::ValueError::MissingPort,
            })
            .await;
        router.apply(LeaderEvent::Degraded("down".into())).await;
        let now = router.current();
        assert_eq!(now.state, State::Degraded);
        assert_eq!(
            now.leader.as_ref().unwrap().name.to_string(),
            "127.0.0.1:1001"
        );
        assert_eq!(now.generation, first);
        router.apply(leader("127.0.0.1:1001")).await;
        assert_eq!(router.current().state, State::Leader);
        assert_eq!(router.current().changes, 1);
    }

    #[tokio::test]
    async fn garbage_read_after_an_outage_ends_the_outage() {
        let router = Router::new(Scheme::Etcd, Arc::new(Metrics::new()));
        router.apply(leader("127.0.0.1:1001")).await;
        router.apply(LeaderEvent::Degraded("down".into())).await;
        router
            .apply(LeaderEvent::Rejected {
                value: "garbage".into(),
                reason: crate::discovery::ValueError::MissingPort,
            })
            .await;
        let now = router.current();
        assert_eq!(now.state, State::Leader);
        assert_eq!(
            now.leader.as_ref().unwrap().name.to_string(),
            "127.0.0.1:1001"
        );
        assert_eq!(now.changes, 1);
    }

    #[tokio::test]
    async fn refuses_leaders_outside_the_allow_list_and_itself() {
        let router = Router::new(Scheme::Etcd, Arc::new(Metrics::new()));
        let router = router.allowing(AllowList::parse(&["127.0.0.1:1001,127.0.0.1:1003"]).unwrap());
        router.set_own_listeners(vec!["0.0.0.0:1003".parse().unwrap()]);
        router.apply(leader("127.0.0.1:1001")).await;
        router.apply(leader("127.0.0.1:1002")).await;
        router.apply(leader("127.0.0.1:1003")).await;
        let now = router.current();
        assert_eq!(
            now.leader.as_ref().unwrap().name.to_string(),
            "127.0.0.1:1001"
        );
        assert_eq!(router.metrics.rejected_values.get(), 2);
    }

    #[tokio::test]
    async fn records_each_change_with_its_reason() {
        let router = Router::new(Scheme::Etcd, Arc::new(Metrics::new()));
        router.apply(leader("127.0.0.1:1001")).await;
        router.apply(LeaderEvent::Degraded("down".into())).await;
        router
            .apply(LeaderEvent::Degraded("still down".into()))
            .await;
        router.apply(leader("127.0.0.1:1001")).await;
        router
            .apply(LeaderEvent::Rejected {
                value: "garbage".into(),
                reason: crate::discovery::ValueError::MissingPort,
            })
            .await;
        router.apply(LeaderEvent::NoLeader).await;
        router.apply(leader("127.0.0.1:1002")).await;
        router
            .apply(LeaderEvent::Disagreement(Some("m2 says replica".into())))
            .await;
        router.apply(LeaderEvent::Disagreement(None)).await;
        // An agreement that ends no disagreement is no change.
        router.apply(LeaderEvent::Disagreement(None)).await;
        let history = router.history();
        let reasons: Vec<&str> = history.iter().map(|c| c.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "elected",
                "degraded",
                "recovered",
                "refused",
                "expired",
                "elected",
                "disagreement",
                "agreement"
            ]
        );
        assert_eq!(history[6].detail.as_deref(), Some("m2 says replica"));
        assert_eq!(history[4].from.as_deref(), Some("127.0.0.1:1001"));
        assert_eq!(history[4].to, None);
        assert_eq!(history[5].to.as_deref(), Some("127.0.0.1:1002"));
    }

    #[tokio::test]
    async fn wakes_held_requests_on_change() {
        let router = Arc::new(Router::new(Scheme::Etcd, Arc::new(Metrics::new())));
        let waiter = {
            let router = router.clone();
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                router.wait_for_change(0, deadline).await
            })
        };
        tokio::task::yield_now().await;
        router.apply(leader("127.0.0.1:1002")).await;
        assert!(waiter.await.unwrap());
        assert!(router.is_ready(Duration::from_secs(1)));
    }
}
