//! `--verify-leader`: a store's word is checked with the manager it names before any
//! request goes there, and again every `--probe-interval` while it leads. A stale key after
//! a partition, or a primary and a replica that disagree on who is primary (classic Swarm
//! issue 1413), must not send clients to a manager that is not primary (docs/failover.md,
//! "Verifying the leader").
//!
//! The manager is asked `GET /info` (over `--upstream-cert-path` TLS when configured) and its
//! `SystemStatus` `Role`/`Primary` read:
//! - `primary` (naming no other manager as `Primary`): routed to;
//! - `replica` naming a manager that itself says `primary`: routed to that one instead, and
//!   the disagreement reported once per episode (`/leader`, a metric, a log line);
//! - `replica` naming no such primary, or a primary naming another manager that also says
//!   `primary` and names a third (two primaries, each naming another): held (`NoLeader`,
//!   requests wait as in an election) and asked again, at most every [`HOLD_RECHECK`]
//!   (sooner at first), until they agree;
//! - no `SystemStatus` (a plain or swarm-mode dockerd, any other server) or no answer to
//!   the question (refused, 401/403, TLS required, garbage): trusted as the store says, and
//!   logged once per leader. A manager that cannot be reached is the request path's
//!   business (retries, the hold), as without verification.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use super::manager::static_probe::{read_info, Status};
use super::manager::{Manager, Prober};
use super::{LeaderAddr, LeaderEvent, LeaderSource, SourceConfig, SourceError};

/// How often a held disagreement is asked again, at the most: an election among managers
/// settles in well under a second, and the held requests are waiting for it.
pub const HOLD_RECHECK: Duration = Duration::from_millis(100);

/// The first re-check of a hold, doubled up to [`HOLD_RECHECK`]: a manager the store has
/// just named may answer `replica` for the moment between winning the lock and taking the
/// role, and the requests held meanwhile should not wait a whole [`HOLD_RECHECK`] for it.
const FIRST_RECHECK: Duration = Duration::from_millis(5);

/// A store's source whose every leader is checked with the manager it names.
pub struct Verified {
    inner: Box<dyn LeaderSource>,
    prober: Prober,
    tls: bool,
    interval: Duration,
}

impl Verified {
    pub fn new(inner: Box<dyn LeaderSource>, config: &SourceConfig) -> Result<Self, SourceError> {
        Ok(Self {
            inner,
            prober: Prober::new(config.connect_timeout, config.upstream_tls.clone())?,
            tls: config.upstream_tls.is_some(),
            interval: config.probe_interval,
        })
    }
}

/// What the managers say about the store's leader.
#[derive(Debug, PartialEq, Eq)]
enum Check {
    /// Route to this manager; `disagreement` says how the managers contradicted the store.
    Route {
        to: LeaderAddr,
        disagreement: Option<String>,
    },
    /// No manager confirms a primary: hold and ask again.
    Hold(String),
    /// The manager cannot answer the question: the store's word stands.
    Trusted(String),
}

/// What was last sent to the router, so that a check confirming it sends nothing.
#[derive(Default)]
struct Told {
    leader: Option<Option<LeaderAddr>>,
    disagreement: Option<String>,
    trusted: Option<LeaderAddr>,
}

#[async_trait]
impl LeaderSource for Verified {
    async fn run(self: Box<Self>, events: mpsc::Sender<LeaderEvent>) {
        let Verified {
            inner,
            prober,
            tls,
            interval,
        } = *self;
        let (inner_tx, mut inner_rx) = mpsc::channel(64);
        tokio::spawn(inner.run(inner_tx));
        let verifier = Verifier { prober, tls };
        let mut claimed: Option<LeaderAddr> = None;
        let mut told = Told::default();
        let mut next_check = Instant::now();
        let mut recheck = FIRST_RECHECK;
        // An event that arrived while a manager was being asked.
        let mut pending: Option<LeaderEvent> = None;
        loop {
            let event = match pending.take() {
                Some(event) => Some(event),
                None => tokio::select! {
                    event = inner_rx.recv() => match event {
                        Some(event) => Some(event),
                        None => return,
                    },
                    _ = tokio::time::sleep_until(next_check), if claimed.is_some() => None,
                },
            };
            match event {
                Some(LeaderEvent::Leader(addr)) => {
                    // Also the store coming back after an outage: the router must hear it.
                    told.leader = None;
                    claimed = Some(addr);
                }
                Some(other) => {
                    if other == LeaderEvent::NoLeader {
                        claimed = None;
                        told.leader = Some(None);
                        if told.disagreement.take().is_some()
                            && events.send(LeaderEvent::Disagreement(None)).await.is_err()
                        {
                            return;
                        }
                    }
                    if events.send(other).await.is_err() {
                        return;
                    }
                    continue;
                }
                None => {}
            }
            let Some(store) = claimed.clone() else {
                continue;
            };
            // A manager that hangs (frozen, behind a dead link) must not hold up what the
            // store says next: a new event drops the question, which is asked again after.
            let check = tokio::select! {
                check = verifier.check(&store) => check,
                event = inner_rx.recv() => match event {
                    Some(event) => {
                        pending = Some(event);
                        next_check = Instant::now();
                        continue;
                    }
                    None => return,
                },
            };
            next_check = Instant::now()
                + match check {
                    Check::Hold(_) => {
                        let wait = recheck;
                        recheck = (recheck * 2).min(HOLD_RECHECK);
                        wait
                    }
                    _ => {
                        recheck = FIRST_RECHECK;
                        interval
                    }
                };
            if tell(&mut told, &store, check, &events).await.is_err() {
                return;
            }
        }
    }
}

/// Sends the router what changed since the last check.
async fn tell(
    told: &mut Told,
    store: &LeaderAddr,
    check: Check,
    events: &mpsc::Sender<LeaderEvent>,
) -> Result<(), mpsc::error::SendError<LeaderEvent>> {
    let (leader, disagreement) = match check {
        Check::Route { to, disagreement } => (Some(to), disagreement),
        Check::Hold(why) => (None, Some(why)),
        Check::Trusted(why) => {
            if told.trusted.as_ref() != Some(store) {
                info!(
                    leader = %store,
                    "--verify-leader: cannot ask the leader who is primary ({why}); \
                     trusting the store"
                );
                told.trusted = Some(store.clone());
            }
            (Some(store.clone()), None)
        }
    };
    if told.disagreement != disagreement {
        if let Some(text) = &disagreement {
            warn!("--verify-leader: the store and the managers disagree: {text}");
        }
        told.disagreement = disagreement.clone();
        events.send(LeaderEvent::Disagreement(disagreement)).await?;
    }
    if told.leader.as_ref() != Some(&leader) {
        told.leader = Some(leader.clone());
        let event = match leader {
            Some(addr) => LeaderEvent::Leader(addr),
            None => LeaderEvent::NoLeader,
        };
        events.send(event).await?;
    }
    Ok(())
}

struct Verifier {
    prober: Prober,
    tls: bool,
}

impl Verifier {
    /// Asks the store's leader, and the primary it names if it names another.
    async fn check(&self, store: &LeaderAddr) -> Check {
        let status = match self.ask(store).await {
            Ok(status) => status,
            Err(why) => return Check::Trusted(why),
        };
        let other = status.names.filter(|named| !same(named, store));
        match (status.primary, other) {
            (true, None) => Check::Route {
                to: store.clone(),
                disagreement: None,
            },
            // A primary naming another as Primary: either the same manager under another
            // name (a proxy in front of it, a DNS name and an IP), whose own answer names
            // itself, or a second primary that names someone else (split brain).
            (true, Some(other)) => match self.ask(&other).await {
                Ok(Status {
                    primary: true,
                    names: Some(named),
                }) if !same(&named, &other) => Check::Hold(format!(
                    "the store names {store}, which says primary and names {other}, which \
                     says primary too and names {named}"
                )),
                _ => Check::Route {
                    to: store.clone(),
                    disagreement: None,
                },
            },
            (false, None) => Check::Hold(format!(
                "the store names {store}, which says it is a replica and names no other primary"
            )),
            (false, Some(other)) => match self.ask(&other).await {
                Ok(Status { primary: true, .. }) => Check::Route {
                    disagreement: Some(format!(
                        "the store names {store}, which says it is a replica of {other}; \
                         {other} says primary and is used"
                    )),
                    to: other,
                },
                Ok(_) => Check::Hold(format!(
                    "the store names {store}, a replica of {other}, which is not primary either"
                )),
                Err(why) => Check::Hold(format!(
                    "the store names {store}, a replica of {other}, which cannot be asked: {why}"
                )),
            },
        }
    }

    /// `GET /info` on `addr`, read as classic Swarm's `SystemStatus`.
    async fn ask(&self, addr: &LeaderAddr) -> Result<Status, String> {
        let manager = Manager::new(addr.clone(), self.tls);
        let answer = self.prober.get(&manager, "/info").await?;
        if answer.status != 200 {
            return Err(format!("GET /info answered HTTP {}", answer.status));
        }
        read_info(&answer.body).map_err(|garbage| garbage.reason.to_string())
    }
}

/// The same manager, whatever the case of its name.
fn same(a: &LeaderAddr, b: &LeaderAddr) -> bool {
    a.port() == b.port() && a.host().eq_ignore_ascii_case(b.host())
}
