//! Waiting for a reachable leader.
//!
//! A request (or hijacked request, or L4 connection) asks [`Hold::next_upstream`] where to
//! go. While no leader is known, or the last dial to the current one failed, it waits: for
//! the router to name a new leader (taken at once), or for a short backoff after which the
//! same leader is dialled again (a manager restarted on the same address emits no event).
//! It gives up at `--hold-timeout`, and at most `--max-held` requests wait at once.
//!
//! Redials are shared ([`Redial`]): after a dial to the leader fails, nobody dials it again
//! before the backoff is over, and then only one request (the probe) does while the others
//! wait for its outcome. Ten thousand held requests make one dial per backoff step, not ten
//! thousand; a probe that connects releases them all at once.
//!
//! A request that has waited is dropped, never sent, once its client is gone
//! ([`ClientWatch`]; docs/failover.md#hold).

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::debug;

use super::client_watch::ClientWatch;
use crate::metrics::Metrics;
use crate::router::{Router, Upstream};

/// The delay before the first redial of a leader whose dial failed; it doubles with each
/// failed redial up to [`REDIAL_MAX`].
pub const REDIAL_FIRST: Duration = Duration::from_millis(25);
pub const REDIAL_MAX: Duration = Duration::from_millis(500);

/// The most dials to a failing leader the redial schedule allows within `elapsed` of the
/// first failure, however many requests wait: that first dial, and one per backoff step
/// ([`REDIAL_FIRST`], doubling up to [`REDIAL_MAX`]) that ended. What the hold promises,
/// and what its tests check.
pub fn max_dials_within(elapsed: Duration) -> u64 {
    let (mut at, mut delay, mut dials) = (Duration::ZERO, REDIAL_FIRST, 1);
    while at + delay <= elapsed {
        at += delay;
        delay = next_delay(delay);
        dials += 1;
    }
    dials
}

fn next_delay(delay: Duration) -> Duration {
    (delay * 2).min(REDIAL_MAX)
}

/// Why a request will not be sent anywhere.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HoldError {
    #[error("no Swarm primary elected after waiting {} (leader-proxy)", humantime::format_duration(*.0))]
    NoLeader(Duration),
    #[error("the Swarm primary {addr} did not accept a connection within {} (leader-proxy)", humantime::format_duration(*.waited))]
    Unreachable { addr: SocketAddr, waited: Duration },
    #[error("too many requests waiting for a Swarm primary (leader-proxy --max-held {0})")]
    TooManyHeld(usize),
    #[error("the client left while its request was held (leader-proxy)")]
    ClientGone,
}

/// The client socket of a request, for [`Hold::next_upstream`] to watch while it waits.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    /// The socket's descriptor; open while the request lives.
    pub fd: RawFd,
    /// The request carries `Upgrade`: only a socket error means its client is gone.
    pub upgrade: bool,
}

/// Shared by every request: the router, the limits and the leader's redial schedule.
///
/// The limits (`--hold-timeout`, `--max-held`) change on SIGHUP ([`Hold::set_limits`]);
/// the request path reads them with one atomic load each, never a lock.
pub struct Hold {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    /// `--hold-timeout` in nanoseconds (at most a year, docs/cli.md#flags: fits in 64 bits).
    timeout_nanos: AtomicU64,
    max_held: AtomicUsize,
    held: AtomicUsize,
    redial: Arc<Redial>,
}

/// One request's progress through the hold: where it last went and whether that failed.
pub struct HoldState {
    started: Instant,
    deadline: Instant,
    /// The generation and address of the last upstream handed out.
    last: Option<(u64, SocketAddr)>,
    /// The request waited or a dial of it failed: its client is checked before it goes on.
    held: bool,
    /// This request is the one dialling a failing leader; dropped without an outcome, it
    /// lets another request dial.
    probe: Option<Probe>,
    permit: Option<HeldPermit>,
    /// The client socket, watched from the request's first wait.
    client: Option<ClientWatch>,
    redial: Arc<Redial>,
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
            timeout_nanos: AtomicU64::new(nanos(timeout)),
            max_held: AtomicUsize::new(max_held),
            held: AtomicUsize::new(0),
            redial: Arc::new(Redial::default()),
        }
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// `--hold-timeout` now.
    pub fn timeout(&self) -> Duration {
        Duration::from_nanos(self.timeout_nanos.load(Ordering::Relaxed))
    }

    /// New limits (SIGHUP). Requests arriving from now on get them; one already waiting
    /// keeps the deadline it started with, and the requests already held beyond a lower
    /// `max_held` go on waiting (only new ones are refused).
    pub fn set_limits(&self, timeout: Duration, max_held: usize) {
        self.timeout_nanos.store(nanos(timeout), Ordering::Relaxed);
        self.max_held.store(max_held, Ordering::Relaxed);
    }

    /// A fresh state for a request arriving now.
    pub fn start(&self) -> HoldState {
        let started = Instant::now();
        HoldState {
            started,
            deadline: started + self.timeout(),
            last: None,
            held: false,
            probe: None,
            permit: None,
            client: None,
            redial: Arc::clone(&self.redial),
        }
    }

    /// Where to send the request now, waiting if no leader is reachable: the whole
    /// upstream (its address, and the name its TLS certificate must carry). `client` is the
    /// request's client socket: once the request has waited, it is dropped
    /// ([`HoldError::ClientGone`], counted) when its client is gone.
    pub async fn next_upstream(
        self: &Arc<Self>,
        state: &mut HoldState,
        client: Option<Client>,
    ) -> Result<Arc<Upstream>, HoldError> {
        // A probe handed out before whose dial never happened has no outcome: let another
        // request dial.
        state.probe = None;
        loop {
            // Taken before the redial gate is read, so an outcome in between is not missed.
            let outcome = self.redial.outcome.notified();
            tokio::pin!(outcome);
            outcome.as_mut().enable();
            let (generation, leader) = {
                let snapshot = self.router.current();
                (snapshot.generation, snapshot.leader.clone())
            };
            if state.held && state.watch(client).is_some_and(ClientWatch::is_gone) {
                self.metrics.abandoned.inc();
                return Err(HoldError::ClientGone);
            }
            let now = Instant::now();
            let redial_at = match &leader {
                Some(upstream) => match self.redial.gate(generation, now) {
                    Gate::Go => return Ok(state.hand_out(generation, upstream, None)),
                    Gate::Probe(probe) => {
                        return Ok(state.hand_out(generation, upstream, Some(probe)))
                    }
                    Gate::Wait(at) => at,
                },
                None => None,
            };
            if state.permit.is_none() {
                state.permit = Some(self.try_hold()?);
            }
            if now >= state.deadline {
                return Err(match &leader {
                    Some(upstream) => HoldError::Unreachable {
                        addr: upstream.socket,
                        waited: round_to_millis(now - state.started),
                    },
                    None => HoldError::NoLeader(state.deadline - state.started),
                });
            }
            state.held = true;
            let until = redial_at.map_or(state.deadline, |at| at.min(state.deadline));
            let watch = state.watch(client);
            // Whatever wakes it, the loop looks again: a new leader, a dial's outcome, the
            // backoff or the hold over, or the client gone.
            tokio::select! {
                _ = self.router.wait_for_change(generation, until) => {}
                _ = &mut outcome => {}
                _ = async {
                    match watch {
                        Some(watch) => watch.gone().await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }

    /// True (and counted) when a request that waited has lost its client since
    /// [`Self::next_upstream`] handed out its upstream: it must not be sent. The last check,
    /// once the leader is connected: the watch (a descriptor) is let go, not kept for as
    /// long as an attach runs.
    pub fn client_left(&self, state: &mut HoldState) -> bool {
        let watch = state.client.take();
        let gone = state.held && watch.as_ref().is_some_and(ClientWatch::is_gone);
        if gone {
            self.metrics.abandoned.inc();
        }
        gone
    }

    fn try_hold(self: &Arc<Self>) -> Result<HeldPermit, HoldError> {
        let previous = self.held.fetch_add(1, Ordering::AcqRel);
        let max_held = self.max_held.load(Ordering::Relaxed);
        if previous >= max_held {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return Err(HoldError::TooManyHeld(max_held));
        }
        self.metrics.held.inc();
        Ok(HeldPermit {
            hold: Arc::clone(self),
            since: Instant::now(),
        })
    }
}

/// `d` in nanoseconds, saturated (the settings allow at most a year).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn round_to_millis(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

impl HoldState {
    /// The request goes to `upstream` (as the probe of a failing leader with `probe`).
    fn hand_out(
        &mut self,
        generation: u64,
        upstream: &Arc<Upstream>,
        probe: Option<Probe>,
    ) -> Arc<Upstream> {
        self.last = Some((generation, upstream.socket));
        self.permit = None;
        self.probe = probe;
        Arc::clone(upstream)
    }

    /// The watch on the client socket, set up the first time the request waits.
    fn watch(&mut self, client: Option<Client>) -> Option<&ClientWatch> {
        if self.client.is_none() {
            let client = client?;
            match ClientWatch::new(client.fd, client.upgrade) {
                Ok(watch) => self.client = Some(watch),
                // Out of descriptors, say: the request is held as before, unwatched.
                Err(e) => debug!(error = %e, "cannot watch a held request's client"),
            }
        }
        self.client.as_ref()
    }

    /// The request failed at the last upstream handed out before the leader answered it:
    /// the dial failed (refused, reset, timed out), or the leader dropped or refused (swarm
    /// mode's 503) the request. That leader is redialled after a backoff, by one request at
    /// a time.
    pub fn mark_failed(&mut self) {
        let Some((generation, _)) = self.last else {
            return;
        };
        self.held = true;
        let probe = self.probe.take();
        self.redial.failed(generation, probe.as_ref().map(|p| p.id));
    }

    /// The request reached the last upstream handed out: requests waiting for it go.
    pub fn mark_connected(&mut self) {
        if let Some((generation, _)) = self.last {
            // The probe goes after the outcome: given up first, it would let another dial.
            let probe = self.probe.take();
            self.redial.connected(generation);
            drop(probe);
        }
    }

    /// The upstream last handed out, if any.
    pub fn upstream(&self) -> Option<SocketAddr> {
        self.last.map(|(_, addr)| addr)
    }
}

/// The redial schedule of the current leader, shared by every request (module docs).
#[derive(Default)]
struct Redial {
    /// The last dial to the current leader failed. Read without the lock: requests to a
    /// leader that answers take none.
    failing: AtomicBool,
    state: Mutex<RedialState>,
    /// Woken when a dial to a failing leader has an outcome, or a probe is given up.
    outcome: Notify,
}

#[derive(Default)]
struct RedialState {
    /// The leader this is about (the router's generation).
    generation: u64,
    failing: bool,
    /// The probe dialling now, by id.
    probing: Option<u64>,
    probes: u64,
    /// Nobody dials before this.
    retry_at: Option<Instant>,
    /// The backoff after the next failed probe.
    next_delay: Duration,
}

/// What a request may do about a leader.
enum Gate {
    /// It answers: go.
    Go,
    /// It failed and the backoff is over: go, as the one request that dials it.
    Probe(Probe),
    /// Wait: for the backoff to end (the time), or for the probe's outcome (`None`).
    Wait(Option<Instant>),
}

impl Redial {
    fn lock(&self) -> std::sync::MutexGuard<'_, RedialState> {
        // The state is consistent after every statement: a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gate(self: &Arc<Self>, generation: u64, now: Instant) -> Gate {
        if !self.failing.load(Ordering::Acquire) {
            return Gate::Go;
        }
        let mut state = self.lock();
        if generation > state.generation {
            // A new leader: nothing is known against it.
            *state = RedialState {
                generation,
                ..RedialState::default()
            };
            self.failing.store(false, Ordering::Release);
        }
        // An older generation is a snapshot read just before the change: as if it had come
        // first.
        if generation < state.generation || !state.failing {
            return Gate::Go;
        }
        if state.probing.is_some() {
            return Gate::Wait(None);
        }
        if let Some(at) = state.retry_at.filter(|at| now < *at) {
            return Gate::Wait(Some(at));
        }
        state.probes += 1;
        state.probing = Some(state.probes);
        Gate::Probe(Probe {
            redial: Arc::clone(self),
            generation,
            id: state.probes,
        })
    }

    /// A request to the leader of `generation` failed (as the probe `probe`, or one that
    /// was on its way before the leader was known to fail).
    fn failed(&self, generation: u64, probe: Option<u64>) {
        let mut state = self.lock();
        if generation < state.generation {
            return;
        }
        if generation > state.generation {
            *state = RedialState {
                generation,
                ..RedialState::default()
            };
        }
        let now = Instant::now();
        if !state.failing {
            state.failing = true;
            state.retry_at = Some(now + REDIAL_FIRST);
            state.next_delay = next_delay(REDIAL_FIRST);
        } else if probe.is_some() && state.probing == probe {
            state.probing = None;
            state.retry_at = Some(now + state.next_delay);
            state.next_delay = next_delay(state.next_delay);
        } else {
            // Already known, and the schedule is the probe's to move.
            return;
        }
        self.failing.store(true, Ordering::Release);
        drop(state);
        self.outcome.notify_waiters();
    }

    /// A request reached the leader of `generation`: everyone may go.
    fn connected(&self, generation: u64) {
        if !self.failing.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        if generation != state.generation {
            return;
        }
        *state = RedialState {
            generation,
            ..RedialState::default()
        };
        self.failing.store(false, Ordering::Release);
        drop(state);
        self.outcome.notify_waiters();
    }
}

/// The right to dial a failing leader; given up (another request may dial) when dropped
/// before an outcome.
struct Probe {
    redial: Arc<Redial>,
    generation: u64,
    id: u64,
}

impl Drop for Probe {
    fn drop(&mut self) {
        let mut state = self.redial.lock();
        if state.generation == self.generation && state.probing == Some(self.id) {
            state.probing = None;
            drop(state);
            self.redial.outcome.notify_waiters();
        }
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
            tokio::spawn(async move { hold.next_upstream(&mut first, None).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut second = hold.start();
        assert_eq!(
            hold.next_upstream(&mut second, None).await,
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
        let first = hold.next_upstream(&mut state, None).await.unwrap();
        assert_eq!(first.socket.port(), 1001);
        state.mark_failed();
        let next = {
            let hold = hold.clone();
            tokio::spawn(async move { hold.next_upstream(&mut state, None).await })
        };
        router
            .apply(LeaderEvent::Leader(
                LeaderAddr::parse("127.0.0.1:1002").unwrap(),
            ))
            .await;
        assert_eq!(next.await.unwrap().unwrap().socket.port(), 1002);
    }

    #[tokio::test(start_paused = true)]
    async fn one_dial_per_backoff_step_and_a_connection_releases_everyone() {
        let hold = hold(60_000, 1_000);
        hold.router()
            .apply(LeaderEvent::Leader(
                LeaderAddr::parse("127.0.0.1:1001").unwrap(),
            ))
            .await;
        let dials = Arc::new(AtomicUsize::new(0));
        let up = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let requests: Vec<_> = (0..200)
            .map(|_| {
                let (hold, dials, up) = (hold.clone(), dials.clone(), up.clone());
                tokio::spawn(async move {
                    let mut state = hold.start();
                    loop {
                        hold.next_upstream(&mut state, None).await.unwrap();
                        dials.fetch_add(1, Ordering::SeqCst);
                        if up.load(Ordering::SeqCst) {
                            state.mark_connected();
                            return Instant::now();
                        }
                        // A refused dial takes a moment.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        state.mark_failed();
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(3)).await;
        // The requests that went before the first failure was known each dialled once.
        let dialled = dials.load(Ordering::SeqCst) as u64;
        let allowed = 200 + max_dials_within(started.elapsed());
        assert!(dialled <= allowed, "{dialled} dials, at most {allowed}");
        assert!(dialled > 200, "the leader was redialled");
        assert!(hold.held.load(Ordering::SeqCst) >= 199);

        up.store(true, Ordering::SeqCst);
        let mut served = Vec::new();
        for request in requests {
            served.push(request.await.unwrap());
        }
        // Released together by the one probe that connected (time is paused: the same
        // instant), not each by its own timer.
        assert!(served.iter().all(|at| *at == served[0]), "{served:?}");
    }
}
