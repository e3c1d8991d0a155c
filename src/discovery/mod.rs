//! Following an election: one [`LeaderSource`] per store, all speaking [`LeaderEvent`].
//!
//! This module is the only seam between stores and the rest of the proxy: a backend turns
//! its store's election into a stream of events and never touches the proxy; the proxy
//! never knows which store is in use.

mod allow;
mod announce;
pub mod backoff;
/// The DISCOVERY URL and leader-value parsers, in the `leader-proxy-parsers` crate
/// (crates/parsers) so that their fuzz targets build without pingora.
pub use leader_proxy_parsers::{url, value};
mod manager;
mod store;
pub mod verify;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::tls::UpstreamTls;

pub use self::allow::{AllowError, AllowList};
use self::store::Followed;
pub use self::url::{DiscoveryUrl, Scheme};
pub use self::value::{LeaderAddr, ValueError};

/// How long a store or a manager may take to answer once connected. A quorum read on a
/// healthy cluster takes milliseconds; one that loses its quorum never answers, and must
/// count as an outage.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// What a backend saw happen to the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaderEvent {
    /// This address is the primary. Also sent again after an outage (same address), which
    /// tells the router the store is back.
    Leader(LeaderAddr),
    /// The election is open: nobody holds it, or what the store holds is stale.
    NoLeader,
    /// The store cannot be reached; the last leader is kept. The text says why (no secrets).
    Degraded(String),
    /// The store holds a value that is not an address. The last good leader is kept.
    Rejected { value: String, reason: ValueError },
    /// `--verify-leader` ([`verify`]): the managers contradict the store (`Some`: how), or
    /// agree with it again (`None`). Sent once per episode.
    Disagreement(Option<String>),
}

/// How the leader is read from the store (`--election`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Election {
    /// The key's value is the leader (classic Swarm, libkv).
    #[default]
    Key,
    /// The key is the parent of contender entries and the first one leads.
    Contenders,
}

/// Everything a backend needs to know, independent of the store.
#[derive(Clone)]
pub struct SourceConfig {
    pub url: DiscoveryUrl,
    pub leader_key: String,
    pub election: Election,
    /// `--discovery-opt` values (`kv.cacertfile`, `kv.username`, …).
    pub options: BTreeMap<String, String>,
    /// How long to wait when dialling the store.
    pub connect_timeout: Duration,
    /// How often `swarm://` and `static://` ask the managers (`--probe-interval`); the stores
    /// are watched, not polled, and ignore it.
    pub probe_interval: Duration,
    /// `--upstream-cert-path`: TLS for the `swarm://` and `static://` probes. The same
    /// instance the proxy uses for the managers, so one SIGHUP reloads it for both; `None`
    /// is plain HTTP. The stores ignore it (their TLS is `kv.cacertfile`, …).
    pub upstream_tls: Option<Arc<UpstreamTls>>,
}

/// Shows the option names, never their values: `kv.password`, `kv.token` and `kv.auth` are
/// among them, and a Debug print must not leak a credential into a log.
impl fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceConfig")
            .field("url", &self.url)
            .field("leader_key", &self.leader_key)
            .field("election", &self.election)
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .field("connect_timeout", &self.connect_timeout)
            .field("probe_interval", &self.probe_interval)
            .field("upstream_tls", &self.upstream_tls.is_some())
            .finish()
    }
}

/// A store's election, followed.
///
/// `run` sends events until the receiver is dropped. It never returns on a store error:
/// it reports [`LeaderEvent::Degraded`], reconnects with [`backoff::Backoff`] and goes on,
/// because a store outage must never drop the last known leader.
#[async_trait]
pub trait LeaderSource: Send + 'static {
    async fn run(self: Box<Self>, events: mpsc::Sender<LeaderEvent>);
}

/// A configuration the backends cannot follow.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Unsupported(String),
    #[error("--discovery-opt {option}: {reason}")]
    Option { option: String, reason: String },
}

/// Builds the backend for `config.url`'s scheme.
pub fn source_for(config: SourceConfig) -> Result<Box<dyn LeaderSource>, SourceError> {
    match config.url.scheme() {
        Scheme::Etcd => Ok(Box::new(Followed(store::etcd2::Etcd2Source::new(config)?))),
        Scheme::EtcdV3 => Ok(Box::new(Followed(store::etcd3::Etcd3Source::new(config)?))),
        Scheme::Consul => Ok(Box::new(Followed(store::consul::ConsulSource::new(
            config,
        )?))),
        Scheme::Zk => Ok(Box::new(Followed(store::zookeeper::ZkSource::new(config)?))),
        Scheme::Swarm => Ok(Box::new(manager::swarm::SwarmSource::new(config)?)),
        Scheme::Static => Ok(Box::new(manager::static_probe::StaticSource::new(config)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_an_option_value() {
        let config = SourceConfig {
            url: DiscoveryUrl::parse("etcd://127.0.0.1:2379/swarm").expect("a URL"),
            leader_key: "docker/swarm/leader".into(),
            election: Election::Key,
            options: BTreeMap::from([("kv.password".to_string(), "hunter2".to_string())]),
            connect_timeout: Duration::from_secs(1),
            probe_interval: Duration::from_secs(1),
            upstream_tls: None,
        };
        let shown = format!("{config:?}");
        assert!(
            shown.contains("kv.password") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
