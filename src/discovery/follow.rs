//! What every store backend shares: following an election through sessions.
//!
//! A backend implements [`Session`]: connect to one endpoint, read the election, announce it
//! through the [`Link`], watch it, and return a [`Stop`] when the store fails. [`follow`]
//! runs sessions forever: endpoints in turn, one `Degraded` per outage, backoff with jitter,
//! and the full state announced again after an outage (that is how the router learns the
//! store is back). The [`Announcer`] turns what the store holds into events, telling the
//! router only what changes what the proxy does.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::{LeaderAddr, LeaderEvent};

/// How long a store may take to answer once connected. A quorum read on a healthy cluster
/// takes milliseconds; one that loses its quorum never answers, and must count as an outage.
pub(super) const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

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

/// The events receiver was dropped.
pub(super) struct Closed;

/// What was last told about the leader, so that the same state read again (a TTL refresh,
/// a re-read after a cleared index or a compaction) tells the router nothing new.
#[derive(Debug, Default)]
pub(super) struct Announcer {
    /// `None`: nothing told yet (or forgotten after an outage); `Some(None)`: no leader.
    announced: Option<Option<LeaderAddr>>,
    /// The garbage value last rejected, so a garbage value refreshed is rejected only once.
    rejected: Option<String>,
}

impl Announcer {
    /// After an outage the router must hear the current state even if it did not change:
    /// that is how it learns the store is back.
    pub(super) fn forget(&mut self) {
        *self = Self::default();
    }

    /// Tells the router what the store now holds (`None`: no leader), if that changes what
    /// the proxy does.
    pub(super) async fn observe(
        &mut self,
        value: Option<&str>,
        events: &mpsc::Sender<LeaderEvent>,
    ) -> Result<(), Closed> {
        let event = match value {
            None => {
                self.rejected = None;
                if self.announced == Some(None) {
                    return Ok(());
                }
                self.announced = Some(None);
                LeaderEvent::NoLeader
            }
            Some(raw) => match LeaderAddr::parse(raw) {
                Ok(addr) => {
                    self.rejected = None;
                    if self.announced.as_ref() == Some(&Some(addr.clone())) {
                        return Ok(());
                    }
                    self.announced = Some(Some(addr.clone()));
                    LeaderEvent::Leader(addr)
                }
                Err(reason) => {
                    if self.rejected.as_deref() == Some(raw) {
                        return Ok(());
                    }
                    warn!(value = ?raw.chars().take(200).collect::<String>(), %reason,
                        "the store holds an invalid leader value");
                    self.rejected = Some(raw.to_string());
                    LeaderEvent::Rejected {
                        value: raw.to_string(),
                        reason,
                    }
                }
            },
        };
        debug!(?event, "announcing");
        events.send(event).await.map_err(|_| Closed)
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
        warn!(%reason, "store unreachable; keeping the last leader");
        self.events
            .send(LeaderEvent::Degraded(reason))
            .await
            .map_err(|_| Closed)
    }
}

/// One connection to one endpoint: read the election, announce it through the link, watch
/// it, until the store fails (or the receiver is gone).
#[async_trait]
pub(super) trait Session: Sync {
    async fn session(&self, endpoint: usize, link: &mut Link<'_>) -> Stop;
}

/// Runs sessions until the receiver is dropped: endpoints are tried in turn, an outage
/// (every endpoint failed) is reported once, and retries back off with jitter.
pub(super) async fn follow<S: Session>(
    source: &S,
    store: &str,
    hosts: &[String],
    events: &mpsc::Sender<LeaderEvent>,
) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn announces_only_what_changes_the_proxy() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut announcer = Announcer::default();
        for value in [
            Some("10.0.0.1:2375"),
            Some("10.0.0.1:2375"), // TTL refresh
            Some("garbage"),
            Some("garbage"), // refreshed garbage
            Some("junk"),
            Some("10.0.0.1:2375"), // the kept leader, written again
            None,
            None,
            Some("10.0.0.2:2375"),
        ] {
            assert!(announcer.observe(value, &tx).await.is_ok());
        }
        announcer.forget();
        assert!(announcer.observe(Some("10.0.0.2:2375"), &tx).await.is_ok());
        drop(tx);
        let mut seen = Vec::new();
        while let Some(event) = rx.recv().await {
            seen.push(match event {
                LeaderEvent::Leader(a) => a.to_string(),
                LeaderEvent::NoLeader => "none".into(),
                LeaderEvent::Rejected { value, .. } => format!("rejected {value}"),
                LeaderEvent::Degraded(_) => "degraded".into(),
            });
        }
        assert_eq!(
            seen,
            [
                "10.0.0.1:2375",
                "rejected garbage",
                "rejected junk",
                "none",
                "10.0.0.2:2375",
                "10.0.0.2:2375"
            ]
        );
    }
}
