//! `--on-leader-change drain|close` and `--drain-timeout` for the long-lived connections of
//! the L7 path: hijacked connections (attach, exec, BuildKit sessions) and requests in
//! flight on pingora (streaming responses: `logs -f`, `events`, `stats`, a `pull`).
//!
//! A connection is tied to the upstream it was opened to. It must end when the router names
//! another leader: at once with `close`; with `drain`, `--drain-timeout` after that change
//! (the clock stops if the old upstream is named leader again before then). An open election
//! (no leader) is not a change: the requests it holds may well go back to the same primary.
//! While the old leader lives its connections run on (a classic Swarm replica forwards to
//! the primary); when it dies, its sockets break and the relay or pingora ends the client
//! side at once, whatever the policy.
//!
//! How a connection is ended: every long-lived connection runs under a `select!` with
//! [`Drain::must_end`]; when that completes, the connection's future is dropped, which
//! closes both sockets (pingora's session and its upstream connection are owned by the
//! future, so nothing is returned to a pool). The client sees its stream cut: the docker CLI
//! reports the error and exits instead of hanging. No registry of connections is kept: each
//! one waits on the router's generation watch ([`Router::wait_for_change`]), which wakes only
//! on election events, and needs no bookkeeping when it ends on its own.
//!
//! The L7 path picks its upstream inside pingora ([`super::http::DockerApi::upstream_peer`],
//! possibly several times with retries). It reports each pick with [`record_upstream`] to
//! the [`RequestUpstream`] the front scoped around the request (a tokio task-local: pingora
//! runs the whole request in the front's task).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::router::Router;

/// `--on-leader-change`: what happens to connections to the old leader. It lives here, with
/// the code that carries it out, so that the proxy does not depend on the configuration
/// layer above it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnLeaderChange {
    /// Connections to the old leader run on while it lives, up to `--drain-timeout`.
    #[default]
    Drain,
    /// Connections to the old leader end at the change.
    Close,
}

/// Why a connection was ended by the leader-change policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// `--on-leader-change close`: another leader was named.
    Closed,
    /// `--on-leader-change drain`: `--drain-timeout` passed since another leader was named.
    Drained,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Closed => "--on-leader-change close: a new leader was elected",
            EndReason::Drained => "--drain-timeout elapsed after a leader change",
        }
    }
}

/// The policy, shared by the front and the hijack relay. SIGHUP may change it
/// ([`Drain::set`]); each connection reads it with atomic loads, never a lock.
pub struct Drain {
    router: Arc<Router>,
    /// `--on-leader-change close` (false: `drain`).
    close: AtomicBool,
    /// `--drain-timeout` in nanoseconds (at most a year: fits in 64 bits).
    timeout_nanos: AtomicU64,
}

impl Drain {
    pub fn new(router: Arc<Router>, policy: OnLeaderChange, timeout: Duration) -> Self {
        let drain = Self {
            router,
            close: AtomicBool::new(false),
            timeout_nanos: AtomicU64::new(0),
        };
        drain.set(policy, timeout);
        drain
    }

    /// A new policy (SIGHUP). It applies to the next leader change: a connection whose
    /// drain clock already runs keeps its deadline.
    pub fn set(&self, policy: OnLeaderChange, timeout: Duration) {
        self.close
            .store(policy == OnLeaderChange::Close, Ordering::Relaxed);
        let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        self.timeout_nanos.store(nanos, Ordering::Relaxed);
    }

    fn policy(&self) -> OnLeaderChange {
        if self.close.load(Ordering::Relaxed) {
            OnLeaderChange::Close
        } else {
            OnLeaderChange::Drain
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_nanos(self.timeout_nanos.load(Ordering::Relaxed))
    }

    /// Completes when a connection to `upstream` must end; pending for as long as it may run.
    pub async fn must_end(&self, upstream: SocketAddr) -> EndReason {
        // When --drain-timeout runs out for this connection; set at the first change away
        // from `upstream`, cleared if `upstream` is named leader again.
        let mut deadline: Option<Instant> = None;
        loop {
            let (generation, leader) = {
                let now = self.router.current();
                (now.generation, now.leader.as_ref().map(|u| u.socket))
            };
            match leader {
                Some(leader) if leader == upstream => deadline = None,
                Some(_) => match self.policy() {
                    OnLeaderChange::Close => return EndReason::Closed,
                    OnLeaderChange::Drain => {
                        deadline.get_or_insert_with(|| Instant::now() + self.timeout());
                    }
                },
                // The election is open: whatever clock runs keeps running.
                None => {}
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return EndReason::Drained;
            }
            // No deadline: wait for the next election event only (a year is "never").
            let until =
                deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(31_536_000));
            self.router.wait_for_change(generation, until).await;
        }
    }

    /// Like [`Self::must_end`] for an L7 request whose upstream is reported in `request`
    /// (pending while none is chosen yet; follows retries to another upstream).
    pub async fn must_end_request(&self, request: &RequestUpstream) -> EndReason {
        let mut picked = request.0.subscribe();
        loop {
            let upstream = *picked.borrow_and_update();
            match upstream {
                None => {
                    if picked.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                }
                Some(upstream) => {
                    tokio::select! {
                        reason = self.must_end(upstream) => return reason,
                        changed = picked.changed() => if changed.is_err() {
                            return std::future::pending().await;
                        },
                    }
                }
            }
        }
    }
}

/// The upstream an L7 request was sent to, as pingora picks it. One per client connection,
/// [`RequestUpstream::reset`] before each request.
#[derive(Clone)]
pub struct RequestUpstream(Arc<watch::Sender<Option<SocketAddr>>>);

impl Default for RequestUpstream {
    fn default() -> Self {
        Self(Arc::new(watch::channel(None).0))
    }
}

impl RequestUpstream {
    pub fn reset(&self) {
        self.0.send_replace(None);
    }

    /// Runs `request` (pingora's processing of one request) with this as its task-local
    /// [`record_upstream`] target.
    pub async fn scope<F: std::future::Future>(&self, request: F) -> F::Output {
        REQUEST_UPSTREAM.scope(self.clone(), request).await
    }
}

tokio::task_local! {
    static REQUEST_UPSTREAM: RequestUpstream;
}

/// Called by the L7 path when it picks the upstream of the current request.
pub fn record_upstream(addr: SocketAddr) {
    // Outside a front's scope (a unit test driving the proxy directly) there is nothing to
    // tell.
    let _ = REQUEST_UPSTREAM.try_with(|request| request.0.send_replace(Some(addr)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{LeaderAddr, LeaderEvent};
    use crate::metrics::Metrics;

    fn leader(s: &str) -> LeaderEvent {
        LeaderEvent::Leader(LeaderAddr::parse(s).unwrap())
    }

    async fn router_on(addr: &str) -> Arc<Router> {
        let router = Arc::new(Router::new(
            crate::discovery::Scheme::Etcd,
            Arc::new(Metrics::new()),
        ));
        router.apply(leader(addr)).await;
        router
    }

    #[tokio::test(start_paused = true)]
    async fn close_ends_at_the_change_drain_after_the_timeout() {
        let a: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let router = router_on("127.0.0.1:1001").await;
        let close = Drain::new(router.clone(), OnLeaderChange::Close, Duration::ZERO);
        let drain = Drain::new(
            router.clone(),
            OnLeaderChange::Drain,
            Duration::from_secs(60),
        );
        let closed = tokio::spawn(async move { close.must_end(a).await });
        let drained = tokio::spawn(async move { (drain.must_end(a).await, Instant::now()) });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!closed.is_finished() && !drained.is_finished());

        // An open election is not a change.
        router.apply(LeaderEvent::NoLeader).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!closed.is_finished() && !drained.is_finished());

        router.apply(leader("127.0.0.1:1002")).await;
        let changed = Instant::now();
        assert_eq!(closed.await.unwrap(), EndReason::Closed);
        let (reason, at) = drained.await.unwrap();
        assert_eq!(reason, EndReason::Drained);
        assert_eq!(at - changed, Duration::from_secs(60));
    }

    /// SIGHUP's change reaches connections already open: `close` set on a drain policy
    /// ends them at the next change; a new `--drain-timeout` starts the clocks after it.
    #[tokio::test(start_paused = true)]
    async fn a_policy_set_later_applies_to_open_connections_at_the_next_change() {
        let a: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let router = router_on("127.0.0.1:1001").await;
        let drain = Arc::new(Drain::new(
            router.clone(),
            OnLeaderChange::Drain,
            Duration::from_secs(300),
        ));
        let open = tokio::spawn({
            let drain = drain.clone();
            async move { drain.must_end(a).await }
        });
        drain.set(OnLeaderChange::Close, Duration::from_secs(300));
        router.apply(leader("127.0.0.1:1002")).await;
        assert_eq!(open.await.unwrap(), EndReason::Closed);

        let b: SocketAddr = "127.0.0.1:1002".parse().unwrap();
        drain.set(OnLeaderChange::Drain, Duration::from_secs(7));
        let open = tokio::spawn({
            let drain = drain.clone();
            async move { (drain.must_end(b).await, Instant::now()) }
        });
        router.apply(leader("127.0.0.1:1003")).await;
        let changed = Instant::now();
        let (reason, at) = open.await.unwrap();
        assert_eq!(reason, EndReason::Drained);
        assert_eq!(at - changed, Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_clock_stops_when_the_old_leader_is_back() {
        let a: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let router = router_on("127.0.0.1:1001").await;
        let drain = Drain::new(
            router.clone(),
            OnLeaderChange::Drain,
            Duration::from_secs(60),
        );
        let task = tokio::spawn(async move { drain.must_end(a).await });
        router.apply(leader("127.0.0.1:1002")).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        router.apply(leader("127.0.0.1:1001")).await;
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!task.is_finished());
        router.apply(leader("127.0.0.1:1003")).await;
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(task.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn requests_follow_the_upstream_pingora_picked() {
        let router = router_on("127.0.0.1:1001").await;
        let drain = Arc::new(Drain::new(
            router.clone(),
            OnLeaderChange::Close,
            Duration::ZERO,
        ));
        let request = RequestUpstream::default();
        let watcher = {
            let (drain, request) = (drain.clone(), request.clone());
            tokio::spawn(async move { drain.must_end_request(&request).await })
        };
        // Nothing picked yet: a change does not end the request (it is held, then sent to
        // the new leader).
        router.apply(leader("127.0.0.1:1002")).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!watcher.is_finished());
        request
            .scope(async { record_upstream("127.0.0.1:1002".parse().unwrap()) })
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!watcher.is_finished());
        router.apply(leader("127.0.0.1:1003")).await;
        assert_eq!(watcher.await.unwrap(), EndReason::Closed);
    }
}
