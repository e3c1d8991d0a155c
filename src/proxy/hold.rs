//! Waiting for a reachable leader.
//!
//! A request (or hijacked connection) asks [`Hold::next_upstream`] where to go. While no
//! leader is known, or the last dial to the current one failed, it waits: for the router to
//! name a new leader (taken at once), or for a short backoff after which the same leader is
//! dialled again (a manager restarted on the same address emits no event). It gives up at
//! `--hold-timeout`, and at most `--max-held` requests wait at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::router::{Router, Upstream};

/// First re-dial delay after a failed dial to an unchanged leader; doubles up to the max.
const REDIAL_FIRST: Duration = Duration::from_millis(25);
const REDIAL_MAX: Duration = Duration::from_millis(500);

/// Why a request will not be sent anywhere.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HoldError {
    #[error("no Swarm primary elected after waiting {} (leader-proxy)", humantime::format_duration(*.0))]
    NoLeader(Duration),
    #[error("the Swarm primary {addr} did not accept a connection within {} (leader-proxy)", humantime::format_duration(*.waited))]
    Unreachable { addr: SocketAddr, waited: Duration },
    #[error("too many requests waiting for a Swarm primary (leader-proxy --max-held {0})")]
    TooManyHeld(usize),
}

/// Shared by every request: the router and the limits.
pub struct Hold {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    max_held: usize,
    held: AtomicUsize,
}

/// One request's progress through the hold: where it last went and whether that failed.
pub struct HoldState {
    started: Instant,
    deadline: Instant,
    /// The generation and address of the last upstream handed out.
    last: Option<(u64, SocketAddr)>,
    /// Set when the dial to `last` failed: that leader is not tried again before a backoff.
    last_failed: bool,
    redial_delay: Duration,
    permit: Option<HeldPermit>,
}

impl Hold {
    pub fn new(
        router: Arc<Router>,
        metrics: Arc<Metrics>,
        timeout: Duration,
        max_held: usize,
    ) -> Self {
        Self {
            router,
            metrics,
            timeout,
            max_held,
            held: AtomicUsize::new(0),
        }
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// A fresh state for a request arriving now.
    pub fn start(&self) -> HoldState {
        let started = Instant::now();
        HoldState {
            started,
            deadline: started + self.timeout,
            last: None,
            last_failed: false,
            redial_delay: REDIAL_FIRST,
            permit: None,
        }
    }

    /// Where to send the request now, waiting if no leader is reachable: the whole
    /// upstream (its address, and the name its TLS certificate must carry).
    pub async fn next_upstream(
        self: &Arc<Self>,
        state: &mut HoldState,
    ) -> Result<Arc<Upstream>, HoldError> {
        loop {
            let (generation, leader) = {
                let snapshot = self.router.current();
                (snapshot.generation, snapshot.leader.clone())
            };
            let retry_same = state.last_failed && state.last.map(|(g, _)| g) == Some(generation);
            if let (Some(upstream), false) = (&leader, retry_same) {
                state.last = Some((generation, upstream.socket));
                state.last_failed = false;
                state.permit = None;
                return Ok(upstream.clone());
            }
            if state.permit.is_none() {
                state.permit = Some(self.try_hold()?);
            }
            let now = Instant::now();
            if now >= state.deadline {
                return Err(match state.last {
                    Some((_, addr)) if leader.is_some() => HoldError::Unreachable {
                        addr,
                        waited: round_to_millis(now - state.started),
                    },
                    _ => HoldError::NoLeader(self.timeout),
                });
            }
            let until = if leader.is_some() {
                (now + state.redial_delay).min(state.deadline)
            } else {
                state.deadline
            };
            if !self.router.wait_for_change(generation, until).await && leader.is_some() {
                // Same leader after the backoff: dial it again.
                state.last_failed = false;
                state.redial_delay = (state.redial_delay * 2).min(REDIAL_MAX);
            }
        }
    }

    fn try_hold(self: &Arc<Self>) -> Result<HeldPermit, HoldError> {
        let previous = self.held.fetch_add(1, Ordering::AcqRel);
        if previous >= self.max_held {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return Err(HoldError::TooManyHeld(self.max_held));
        }
        self.metrics.held.inc();
        Ok(HeldPermit {
            hold: Arc::clone(self),
            since: Instant::now(),
        })
    }
}

fn round_to_millis(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

impl HoldState {
    /// The dial to the last upstream handed out failed (refused, reset, timed out).
    pub fn mark_failed(&mut self) {
        self.last_failed = true;
    }

    /// The upstream last handed out, if any.
    pub fn upstream(&self) -> Option<SocketAddr> {
        self.last.map(|(_, addr)| addr)
    }
}

/// A place among the held requests; released (and timed) when dropped.
struct HeldPermit {
    hold: Arc<Hold>,
    since: Instant,
}

impl Drop for HeldPermit {
    fn drop(&mut self) {
        self.hold.held.fetch_sub(1, Ordering::AcqRel);
        self.hold.metrics.held.dec();
        self.hold
            .metrics
            .hold_seconds
            .observe(self.since.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{LeaderAddr, LeaderEvent};

    fn hold(timeout_ms: u64, max_held: usize) -> Arc<Hold> {
        let metrics = Arc::new(Metrics::new());
        let router = Arc::new(Router::new(crate::discovery::Scheme::Etcd, metrics.clone()));
        Arc::new(Hold::new(
            router,
            metrics,
            Duration::from_millis(timeout_ms),
            max_held,
        ))
    }

    #[tokio::test]
    async fn times_out_without_a_leader_and_limits_waiters() {
        let hold = hold(50, 1);
        let mut first = hold.start();
        let waiting = {
            let hold = hold.clone();
            tokio::spawn(async move { hold.next_upstream(&mut first).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut second = hold.start();
        assert_eq!(
            hold.next_upstream(&mut second).await,
            Err(HoldError::TooManyHeld(1))
        );
        assert!(matches!(
            waiting.await.unwrap(),
            Err(HoldError::NoLeader(_))
        ));
        assert_eq!(hold.held.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn takes_a_new_leader_at_once_after_a_failed_dial() {
        let hold = hold(5_000, 10);
        let router = hold.router().clone();
        router
            .apply(LeaderEvent::Leader(
                LeaderAddr::parse("127.0.0.1:1001").unwrap(),
            ))
            .await;
        let mut state = hold.start();
        let first = hold.next_upstream(&mut state).await.unwrap();
        assert_eq!(first.socket.port(), 1001);
        state.mark_failed();
        let next = {
            let hold = hold.clone();
            tokio::spawn(async move { hold.next_upstream(&mut state).await })
        };
        router
            .apply(LeaderEvent::Leader(
                LeaderAddr::parse("127.0.0.1:1002").unwrap(),
            ))
            .await;
        assert_eq!(next.await.unwrap().unwrap().socket.port(), 1002);
    }
}
