//! etcd's v3 API (`etcdv3://`), on etcd-client.
//!
//! Two elections can be followed:
//! - `--election key`: one key whose value is the leader's address; no key, no leader.
//! - `--election contenders`: etcd's own election recipe (`concurrency.Election`, which
//!   `etcdctl elect NAME PROPOSAL` runs): every contender puts `NAME/<lease id in hex>` =
//!   its proposal under its lease, and the key created first (lowest create revision) leads.
//!   The prefix is `NAME/` with the slash, so that the contenders of `name2` never count
//!   for `name`.
//!
//! Both are followed the same way: read the keys with the revision they were read at, then
//! watch from the next revision, keeping a copy of the keys so that every watch response can
//! say who leads now. A compaction can cancel a watch that is behind; then the keys are read
//! again, which loses nothing because only the current state matters.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use tracing::debug;

use super::etcd2::security;
use super::tls::hint_client_certificate;
use super::{Link, Session, Stop};
use crate::discovery::REPLY_TIMEOUT;
use crate::discovery::{Election, SourceConfig, SourceError};

/// Follows an election through etcd's v3 API.
pub struct Etcd3Source {
    /// One gRPC endpoint per etcd host (`http://host:port`, `https://` with TLS).
    endpoints: Vec<String>,
    hosts: Vec<String>,
    /// The leader key, or the contenders' prefix (with its trailing slash).
    key: String,
    election: Election,
    options: ConnectOptions,
    reply_timeout: Duration,
    /// TLS without a client certificate: an etcd that requires one closes the connection
    /// right after the handshake, which gRPC often reports only as a closed connection
    /// ([`hint_client_certificate`]).
    tls_without_client_cert: bool,
}

impl Etcd3Source {
    pub fn new(config: SourceConfig) -> Result<Self, SourceError> {
        let (credentials, tls) = security(&config.options, "etcdv3://")?;
        let key = config.url.key(&config.leader_key);
        let key = match config.election {
            Election::Key => key,
            Election::Contenders => format!("{key}/"),
        };
        // HTTP/2 pings notice a store that vanished without closing the connection while the
        // watch is silent; etcd refuses pings more often than every 5 s (`too_many_pings`),
        // and only wants them while a stream (the watch) is open.
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(false)
            .with_tcp_keepalive(crate::keepalive::IDLE)
            // A member cut off from its cluster's leader cancels the watch instead of
            // serving a stale election.
            .with_require_leader(true);
        if let Some((user, password)) = credentials {
            options = options
                .with_user(user, password)
                .with_auto_token_refresh(true);
        }
        let tls_without_client_cert = tls.as_ref().is_some_and(|t| !t.has_client_certificate());
        let scheme = match &tls {
            Some(tls) => {
                options = options.with_tls(tls.etcd_tls_options());
                "https"
            }
            None => "http",
        };
        Ok(Self {
            endpoints: config
                .url
                .hosts()
                .iter()
                .map(|h| format!("{scheme}://{h}"))
                .collect(),
            hosts: config.url.hosts().to_vec(),
            key,
            election: config.election,
            options,
            reply_timeout: config.connect_timeout + REPLY_TIMEOUT,
            tls_without_client_cert,
        })
    }

    /// etcd-client queues requests until a connection is ready, without a deadline of its
    /// own when the store refuses connections: every call is bounded here.
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, Stop> {
        match tokio::time::timeout(self.reply_timeout, call).await {
            Err(_) => Err(Stop::Store(format!(
                "{what}: no answer within {:?}",
                self.reply_timeout
            ))),
            Ok(Err(e)) => Err(describe(&e)),
            Ok(Ok(value)) => Ok(value),
        }
    }

    /// Reads the election: the keys, and the revision to watch from.
    async fn read(&self, client: &mut Client) -> Result<(Keys, i64), Stop> {
        let options = match self.election {
            Election::Key => None,
            Election::Contenders => Some(GetOptions::new().with_prefix()),
        };
        let response = self
            .bounded("read", client.get(self.key.as_str(), options))
            .await?;
        let revision = response
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| Stop::Store("etcd answered a read without a header".into()))?;
        let mut keys = Keys::default();
        for kv in response.kvs() {
            keys.put(kv.key(), kv.create_revision(), kv.value());
        }
        debug!(key = %self.key, revision, contenders = keys.0.len(), "election read");
        Ok((keys, revision))
    }
}

#[async_trait]
impl Session for Etcd3Source {
    const STORE: &'static str = "etcd";

    fn hosts(&self) -> &[String] {
        &self.hosts
    }

    async fn session(&self, endpoint: usize, link: &mut Link<'_>) -> Stop {
        let mut read_once = false;
        let result: Result<Infallible, Stop> = async {
            let connect = Client::connect(
                [self.endpoints[endpoint].as_str()],
                Some(self.options.clone()),
            );
            let mut client = self.bounded("connect", connect).await?;
            'read: loop {
                let (mut keys, revision) = self.read(&mut client).await?;
                read_once = true;
                link.read(keys.leader()).await?;
                let mut options = WatchOptions::new().with_start_revision(revision + 1);
                if self.election == Election::Contenders {
                    options = options.with_prefix();
                }
                // The stream is kept whole: dropping its request half would end the watch.
                let mut watch = self
                    .bounded("watch", client.watch(self.key.as_str(), Some(options)))
                    .await?;
                loop {
                    let response = match watch.message().await {
                        Ok(Some(response)) => response,
                        Ok(None) => return Err(Stop::Store("etcd ended the watch stream".into())),
                        Err(e) => return Err(describe(&e)),
                    };
                    if response.compact_revision() > 0 {
                        debug!(
                            from = revision + 1,
                            compacted = response.compact_revision(),
                            "watch cancelled by a compaction; reading again"
                        );
                        continue 'read;
                    }
                    if response.canceled() {
                        return Err(Stop::Store(format!(
                            "etcd cancelled the watch: {}",
                            response.cancel_reason()
                        )));
                    }
                    if response.events().is_empty() {
                        continue;
                    }
                    // One response is one revision (a transaction may touch several
                    // contenders at once): the election is judged after all of it.
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        match event.event_type() {
                            EventType::Put => keys.put(kv.key(), kv.create_revision(), kv.value()),
                            EventType::Delete => keys.delete(kv.key()),
                        }
                        debug!(
                            kind = ?event.event_type(),
                            key = %String::from_utf8_lossy(kv.key()),
                            revision = kv.mod_revision(),
                            "election changed"
                        );
                    }
                    link.changed(keys.leader()).await?;
                }
            }
        }
        .await;
        match result {
            Ok(never) => match never {},
            Err(Stop::Store(reason)) if !read_once && self.tls_without_client_cert => {
                Stop::Store(hint_client_certificate(reason))
            }
            Err(stop) => stop,
        }
    }
}

/// A gRPC status reads best as its code and message; its causes then say what the transport
/// saw ("Connection refused"), which etcd-client's own text buries in debug output.
fn describe(error: &etcd_client::Error) -> Stop {
    match error {
        etcd_client::Error::GRpcStatus(status) => Stop::store_with(
            format!("{:?}: {}", status.code(), status.message()),
            std::error::Error::source(status),
        ),
        other => Stop::store(other),
    }
}

/// The watched keys: key → (create revision, value). With `--election key` there is at
/// most one.
#[derive(Debug, Default)]
struct Keys(HashMap<Vec<u8>, (i64, String)>);

impl Keys {
    fn put(&mut self, key: &[u8], create_revision: i64, value: &[u8]) {
        // A value that is not UTF-8 is garbage all the same: the router rejects it.
        let value = String::from_utf8_lossy(value).into_owned();
        self.0.insert(key.to_vec(), (create_revision, value));
    }

    fn delete(&mut self, key: &[u8]) {
        self.0.remove(key);
    }

    /// The first contender leads: it queued before everybody else, and those after it wait
    /// for its key to go.
    fn leader(&self) -> Option<&str> {
        self.0
            .values()
            .min_by_key(|(create_revision, _)| *create_revision)
            .map(|(_, value)| value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_contender_leads() {
        let mut keys = Keys::default();
        assert_eq!(keys.leader(), None);
        keys.put(b"e/2", 7, b"10.0.0.2:2375");
        keys.put(b"e/1", 5, b"10.0.0.1:2375");
        assert_eq!(keys.leader(), Some("10.0.0.1:2375"));
        // A proclamation changes the value, not the order.
        keys.put(b"e/1", 5, b"10.0.0.9:2375");
        assert_eq!(keys.leader(), Some("10.0.0.9:2375"));
        keys.delete(b"e/1");
        assert_eq!(keys.leader(), Some("10.0.0.2:2375"));
        keys.delete(b"e/2");
        assert_eq!(keys.leader(), None);
    }
}
