//! From what the election holds to the events the router hears: shared by the store sessions
//! ([`super::store`]) and the manager pollers ([`super::manager`]), so both tell the router
//! only what changes what the proxy does, and reject a garbage value once.

use tokio::sync::mpsc;
use tracing::debug;

use super::{LeaderAddr, LeaderEvent};

/// The events receiver was dropped.
pub(crate) struct Closed;

/// What was last told about the leader, so that the same state read again (a TTL refresh,
/// a re-read after a cleared index or a compaction) tells the router nothing new.
#[derive(Debug, Default)]
pub(crate) struct Announcer {
    /// `None`: nothing told yet (or forgotten after an outage); `Some(None)`: no leader.
    announced: Option<Option<LeaderAddr>>,
    /// The garbage value last rejected, so a garbage value refreshed is rejected only once.
    rejected: Option<String>,
}

impl Announcer {
    /// After an outage the router must hear the current state even if it did not change:
    /// that is how it learns the store is back.
    pub(crate) fn forget(&mut self) {
        *self = Self::default();
    }

    /// Tells the router what the store now holds (`None`: no leader), if that changes what
    /// the proxy does. A value that is not an address is rejected, once while it stays.
    pub(crate) async fn observe(
        &mut self,
        value: Option<&str>,
        events: &mpsc::Sender<LeaderEvent>,
    ) -> Result<(), Closed> {
        let Some(raw) = value else {
            return self.announce(None, events).await;
        };
        match LeaderAddr::parse(raw) {
            Ok(addr) => self.announce(Some(addr), events).await,
            Err(reason) => {
                if self.rejected.as_deref() == Some(raw) {
                    return Ok(());
                }
                // The router logs it (escaped, bounded), as for every source.
                self.rejected = Some(raw.to_string());
                let event = LeaderEvent::Rejected {
                    value: raw.to_string(),
                    reason,
                };
                debug!(?event, "announcing");
                events.send(event).await.map_err(|_| Closed)
            }
        }
    }

    /// Tells the router who leads (`None`: nobody), if that changed. For sources whose
    /// answer is already an address (the managers' own), so nothing is parsed twice.
    pub(crate) async fn announce(
        &mut self,
        leader: Option<LeaderAddr>,
        events: &mpsc::Sender<LeaderEvent>,
    ) -> Result<(), Closed> {
        self.rejected = None;
        if self.announced.as_ref() == Some(&leader) {
            return Ok(());
        }
        self.announced = Some(leader.clone());
        let event = match leader {
            Some(addr) => LeaderEvent::Leader(addr),
            None => LeaderEvent::NoLeader,
        };
        debug!(?event, "announcing");
        events.send(event).await.map_err(|_| Closed)
    }
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
                LeaderEvent::Disagreement(_) => "disagreement".into(),
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
