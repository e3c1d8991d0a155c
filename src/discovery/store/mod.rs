//! What every store backend shares: following an election through sessions.
//!
//! A backend implements [`Session`]: connect to one endpoint, read the election, announce it
//! through the [`Link`], watch it, and return a [`Stop`] when the store fails. [`follow`]
//! runs sessions forever: endpoints in turn, one `Degraded` per outage, backoff with jitter,
//! and the full state announced again after an outage (that is how the router learns the
//! store is back). The [`Announcer`] turns what the store holds into events, telling the
//! router only what changes what the proxy does.

pub(super) mod consul;
pub(super) mod etcd2;
pub(super) mod etcd3;
mod http;
mod tls;
pub(super) mod zookeeper;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::discovery::announce::{Announcer, Closed};
use crate::discovery::backoff::Backoff;
use crate::discovery::{LeaderEvent, LeaderSource};

/// A session that lasted this long proves the store healthy again, so the next failure
/// retries quickly instead of continuing a grown backoff.
const STABLE: Duration = Duration::from_secs(10);

/// Why a session ended.
pub(super) enum Stop {
    /// The receiver is gone: the source has nobody to talk to.
    Closed,
    /// The store failed (unreachable, broken stream, timeout, an error answer).
    Store(String),
}

impl Stop {
    /// The error with its causes: reqwest's top-level message alone ("error sending
    /// request") does not say whether the store refused, timed out or reset.
    pub(super) fn store(error: &dyn std::error::Error) -> Self {
        Self::store_with(error.to_string(), error.source())
    }

    /// `text`, then each cause that does not repeat what is already said.
    pub(super) fn store_with(
        mut text: String,
        mut source: Option<&(dyn std::error::Error + 'static)>,
    ) -> Self {
        while let Some(cause) = source {
            let message = cause.to_string();
            if !text.contains(&message) {
                text.push_str(": ");
                text.push_str(&message);
            }
            source = cause.source();
        }
        Stop::Store(text)
    }
}

impl From<Closed> for Stop {
    fn from(_: Closed) -> Self {
        Stop::Closed
    }
}

/// A session's line to the router: announces what it reads, and remembers whether the
/// store was unreachable so that the first read after an outage is announced in full.
pub(super) struct Link<'a> {
    events: &'a mpsc::Sender<LeaderEvent>,
    announcer: Announcer,
    degraded: bool,
    connected_at: Option<Instant>,
}

impl<'a> Link<'a> {
    fn new(events: &'a mpsc::Sender<LeaderEvent>) -> Self {
        Self {
            events,
            announcer: Announcer::default(),
            degraded: false,
            connected_at: None,
        }
    }

    /// A full read of the election succeeded.
    pub(super) async fn read(&mut self, value: Option<&str>) -> Result<(), Closed> {
        self.connected_at.get_or_insert_with(Instant::now);
        if self.degraded {
            self.degraded = false;
            self.announcer.forget();
            info!("the store is reachable again");
        }
        self.announcer.observe(value, self.events).await
    }

    /// The watch saw the election change.
    pub(super) async fn changed(&mut self, value: Option<&str>) -> Result<(), Closed> {
        self.announcer.observe(value, self.events).await
    }

    async fn outage(&mut self, reason: String) -> Result<(), Closed> {
        if self.degraded {
            debug!(%reason, "store still unreachable");
            return Ok(());
        }
        self.degraded = true;
        // The router logs the outage (once, whichever source reported it).
        self.events
            .send(LeaderEvent::Degraded(reason))
            .await
            .map_err(|_| Closed)
    }
}

/// A watched store: one connection to one endpoint reads the election, announces it
/// through the link, and watches it until the store fails (or the receiver is gone).
#[async_trait]
pub(super) trait Session: Send + Sync + 'static {
    /// The store's name in logs and outage reasons (`etcd`, `zookeeper`, `consul`).
    const STORE: &'static str;

    /// The endpoints, as the DISCOVERY URL lists them; `session` is given an index into it.
    fn hosts(&self) -> &[String];

    async fn session(&self, endpoint: usize, link: &mut Link<'_>) -> Stop;
}

/// Every watched store is a [`LeaderSource`] the same way: [`follow`] runs its sessions.
pub(super) struct Followed<S>(pub S);

#[async_trait]
impl<S: Session> LeaderSource for Followed<S> {
    async fn run(self: Box<Self>, events: mpsc::Sender<LeaderEvent>) {
        follow(&self.0, &events).await;
    }
}

/// Runs sessions until the receiver is dropped: endpoints are tried in turn, an outage
/// (every endpoint failed) is reported once, and retries back off with jitter.
async fn follow<S: Session>(source: &S, events: &mpsc::Sender<LeaderEvent>) {
    let store = S::STORE;
    let hosts = source.hosts();
    let following = async {
        let mut link = Link::new(events);
        let mut backoff = Backoff::for_store();
        let mut endpoint = 0;
        let mut failed_reads = 0;
        loop {
            link.connected_at = None;
            let error = match source.session(endpoint, &mut link).await {
                Stop::Closed => return,
                Stop::Store(error) => error,
            };
            let host = &hosts[endpoint];
            match link.connected_at {
                Some(since) => {
                    // The watch broke: read again, from the same endpoint first. If the
                    // store is gone that read fails and the outage is reported.
                    warn!(%host, %error, "lost the {store} watch; reading again");
                    failed_reads = 0;
                    if since.elapsed() >= STABLE {
                        backoff.reset();
                    }
                }
                None => {
                    debug!(%host, %error, "cannot read the election from {store}");
                    failed_reads += 1;
                    endpoint = (endpoint + 1) % hosts.len();
                    if failed_reads >= hosts.len() {
                        failed_reads = 0;
                        let reason = format!("{store} {host}: {error}");
                        if link.outage(reason).await.is_err() {
                            return;
                        }
                    }
                }
            }
            backoff.wait().await;
        }
    };
    // A watch may be silent for hours: notice a dropped receiver without waiting for it.
    tokio::select! {
        () = following => {}
        () = events.closed() => {}
    }
    debug!("{store} source stopped: nobody listens");
}
