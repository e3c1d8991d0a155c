//! etcd's v2 API (`etcd://`), the store classic Swarm elects its primary in.
//!
//! docker/leadership (through libkv) holds the lock by creating `<prefix>/docker/swarm/leader`
//! with `prevExist=false` and a TTL, and refreshes it every TTL/3 while it leads. So the key's
//! value is the leader while the key exists; an `expire` or a delete ends the reign. The v2
//! API is plain HTTP/JSON, spoken here on reqwest: no maintained crate speaks it any more.
//!
//! Also home of the etcd options both etcd backends check ([`credentials`], [`security`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tracing::{debug, warn};

use super::http::HttpStore;
use super::tls::{hint_client_certificate, StoreTls};
use super::{Link, Session, Stop};
use crate::discovery::REPLY_TIMEOUT;
use crate::discovery::{Election, SourceConfig, SourceError};

/// A v2 watch can stay silent for hours, and a store that vanished without closing the
/// connection (power loss, partition) would leave it silent forever; a member cut off from
/// its peers keeps answering watches with what it last knew. After each window the key is
/// read again with a quorum read, which such a member cannot answer: this bounds how long
/// either goes unnoticed.
const WATCH_WINDOW: Duration = Duration::from_secs(10);

/// etcd v2 error codes that are not failures of the store.
const KEY_NOT_FOUND: u64 = 100;
const INDEX_CLEARED: u64 = 401;
/// No credentials, wrong ones, or a user without read permission on the key (v2 auth).
const UNAUTHORIZED: u64 = 110;

/// Follows the leader key through etcd's v2 API.
pub struct Etcd2Source {
    /// One URL per etcd endpoint, each already pointing at the leader key.
    keys: Vec<reqwest::Url>,
    /// The endpoints as the user wrote them, for logs and `Degraded` reasons.
    hosts: Vec<String>,
    credentials: Option<(String, String)>,
    client: reqwest::Client,
    reply_timeout: Duration,
    /// TLS without a client certificate (see [`hint_client_certificate`]).
    tls_without_client_cert: bool,
}

impl Etcd2Source {
    pub fn new(config: SourceConfig) -> Result<Self, SourceError> {
        if config.election == Election::Contenders {
            return Err(SourceError::Unsupported(
                "--election contenders is not available for etcd:// (etcd's v2 API has no \
                 election recipe); use etcdv3://"
                    .into(),
            ));
        }
        let (credentials, tls) = security(&config.options, "etcd://")?;
        let path = config.url.path(&config.leader_key);
        let store = HttpStore::new(
            config.url.hosts(),
            "v2/keys",
            &path,
            tls.as_ref(),
            config.connect_timeout,
            "etcd endpoint",
        )?;
        Ok(Self {
            keys: store.urls,
            hosts: config.url.hosts().to_vec(),
            credentials,
            client: store.client,
            reply_timeout: config.connect_timeout + REPLY_TIMEOUT,
            tls_without_client_cert: tls.is_some_and(|t| !t.has_client_certificate()),
        })
    }

    fn get(&self, url: &reqwest::Url) -> reqwest::RequestBuilder {
        let request = self.client.get(url.clone());
        match &self.credentials {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        }
    }

    /// Reads the key; returns its value and the index to watch from.
    async fn read(&self, url: &reqwest::Url) -> Result<(Option<String>, u64), Stop> {
        let response = self
            .get(url)
            // A quorum read, so that a member cut off from its cluster is not believed.
            .query(&[("quorum", "true")])
            .timeout(self.reply_timeout)
            .send()
            .await
            .map_err(|e| Stop::store(&e))?;
        super::http::refuse_redirect(&response, "etcd")?;
        let index = etcd_index(&response);
        let status = response.status();
        let body = super::http::body(response, "etcd").await?;
        let reply = Reply::parse(status, &body)?;
        match reply.error_code {
            Some(KEY_NOT_FOUND) => {
                let index = index.or(reply.index).unwrap_or(0);
                debug!(key = %url.path(), index, "leader key absent");
                Ok((None, index + 1))
            }
            Some(_) => Err(reply.failure()),
            None => {
                let node = reply
                    .node
                    .ok_or_else(|| Stop::Store("etcd answered a read without a node".into()))?;
                let next = index.unwrap_or(node.modified_index) + 1;
                debug!(key = %url.path(), value = ?node.value, next, "leader key read");
                Ok((Some(node.leader_value()), next))
            }
        }
    }

    /// Waits for the next change of the key at or after `wait_index`, for one watch window.
    async fn watch(&self, url: &reqwest::Url, wait_index: u64) -> Result<Watched, Stop> {
        let request = self
            .get(url)
            .query(&[("wait", "true"), ("waitIndex", &wait_index.to_string())])
            .send();
        // etcd flushes the headers as soon as the watch is registered; only the body waits.
        let response = match tokio::time::timeout(self.reply_timeout, request).await {
            Err(_) => return Err(Stop::Store("etcd did not accept the watch in time".into())),
            Ok(response) => response.map_err(|e| Stop::store(&e))?,
        };
        super::http::refuse_redirect(&response, "etcd")?;
        let status = response.status();
        let body =
            match tokio::time::timeout(WATCH_WINDOW, super::http::body(response, "etcd")).await {
                Err(_) => return Ok(Watched::Idle),
                Ok(body) => body?,
            };
        let reply = Reply::parse(status, &body)?;
        match reply.error_code {
            Some(INDEX_CLEARED) => Ok(Watched::Cleared),
            Some(_) => Err(reply.failure()),
            None => {
                let node = reply
                    .node
                    .ok_or_else(|| Stop::Store("etcd answered a watch without a node".into()))?;
                let action = reply.action.unwrap_or_default();
                let value = match action.as_str() {
                    "set" | "update" | "create" | "compareAndSwap" => {
                        Some(Some(node.leader_value()))
                    }
                    "delete" | "compareAndDelete" | "expire" => Some(None),
                    _ => None,
                };
                Ok(Watched::Event {
                    action,
                    value,
                    next: node.modified_index + 1,
                })
            }
        }
    }
}

#[async_trait]
impl Session for Etcd2Source {
    const STORE: &'static str = "etcd";

    fn hosts(&self) -> &[String] {
        &self.hosts
    }

    async fn session(&self, endpoint: usize, link: &mut Link<'_>) -> Stop {
        let url = &self.keys[endpoint];
        let mut read_once = false;
        let result: Result<Infallible, Stop> = async {
            'read: loop {
                let (value, mut wait_index) = self.read(url).await?;
                read_once = true;
                link.read(value.as_deref()).await?;
                loop {
                    match self.watch(url, wait_index).await? {
                        Watched::Event {
                            action,
                            value: Some(value),
                            next,
                        } => {
                            debug!(%action, ?value, index = next - 1, "leader key changed");
                            wait_index = next;
                            link.changed(value.as_deref()).await?;
                        }
                        Watched::Event { action, .. } => {
                            debug!(%action, "unexpected action on the leader key; reading it again");
                            continue 'read;
                        }
                        Watched::Idle => {
                            debug!(wait_index, "watch window over; a quorum read, then watching again");
                            continue 'read;
                        }
                        Watched::Cleared => {
                            // More than 1000 writes to the store since `wait_index`: what
                            // happened to the key in between is gone, but its state is not.
                            debug!(wait_index, "etcd cleared the watched index; reading again");
                            continue 'read;
                        }
                    }
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

/// What one watch request brought.
enum Watched {
    /// The key changed. `value` is `None` for an action this backend does not know, which
    /// is answered by reading the key again rather than guessing.
    Event {
        action: String,
        value: Option<Option<String>>,
        next: u64,
    },
    /// Nothing happened during the watch window.
    Idle,
    /// `waitIndex` fell out of etcd's event history (error 401).
    Cleared,
}

/// A v2 reply: an event, a read, or an error, all in one shape.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reply {
    action: Option<String>,
    node: Option<Node>,
    error_code: Option<u64>,
    message: Option<String>,
    cause: Option<String>,
    index: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Node {
    value: Option<String>,
    #[serde(default)]
    dir: bool,
    #[serde(default)]
    modified_index: u64,
}

impl Node {
    /// A directory where the leader key should be has no value: it is reported as an empty
    /// (rejected) value, not as an open election, since somebody did write there.
    fn leader_value(&self) -> String {
        if self.dir {
            warn!("the leader key is a directory in etcd");
        }
        self.value.clone().unwrap_or_default()
    }
}

impl Reply {
    fn parse(status: reqwest::StatusCode, body: &[u8]) -> Result<Self, Stop> {
        let reply: Self = serde_json::from_slice(body).map_err(|_| {
            let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
            if status == reqwest::StatusCode::NOT_FOUND {
                // What etcd 3.4+ answers on /v2/keys when it runs without `--enable-v2`.
                Stop::Store(format!(
                    "etcd's v2 API answered 404 {:?}: is etcd started with --enable-v2?",
                    text.trim()
                ))
            } else {
                Stop::Store(format!(
                    "unexpected etcd reply (HTTP {status}): {:?}",
                    text.trim()
                ))
            }
        })?;
        // Errors outside the keys API (authentication) carry a message but no errorCode.
        if reply.error_code.is_none() && !status.is_success() {
            return Err(Stop::Store(format!(
                "etcd answered HTTP {status}: {}",
                reply.message.as_deref().unwrap_or("")
            )));
        }
        Ok(reply)
    }

    fn failure(&self) -> Stop {
        let code = self.error_code.unwrap_or_default();
        Stop::Store(format!(
            "etcd error {code}: {}{}{}",
            self.message.as_deref().unwrap_or(""),
            self.cause
                .as_deref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default(),
            if code == UNAUTHORIZED {
                "; check kv.username and kv.password (the v2 API has its own users, \
                 /v2/auth, separate from the v3 API's) and the user's read permission on \
                 the key"
            } else {
                ""
            }
        ))
    }
}

fn etcd_index(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get("x-etcd-index")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// What [`security`] returns: the user and password, and the TLS files, each if given.
pub(super) type Security = (Option<(String, String)>, Option<StoreTls>);

/// Checks the `--discovery-opt` values for an etcd backend: the credentials
/// ([`credentials`]) and the TLS files, read and checked ([`StoreTls::from_options`]).
pub(super) fn security(
    options: &BTreeMap<String, String>,
    scheme: &str,
) -> Result<Security, SourceError> {
    let credentials = credentials(options, scheme)?;
    let tls = StoreTls::from_options(options)?;
    if credentials.is_some() && tls.is_none() {
        warn!(
            "kv.username/kv.password without kv.cacertfile: the password crosses the network \
             to etcd in clear text"
        );
    }
    Ok((credentials, tls))
}

/// Checks that every `--discovery-opt` is one an etcd backend knows, and returns the
/// credentials (`kv.username` and `kv.password`, both or neither).
pub(super) fn credentials(
    options: &BTreeMap<String, String>,
    scheme: &str,
) -> Result<Option<(String, String)>, SourceError> {
    for option in options.keys() {
        match option.as_str() {
            "kv.username" | "kv.password" | "kv.cacertfile" | "kv.certfile" | "kv.keyfile" => {}
            _ => {
                return Err(SourceError::Option {
                    option: option.clone(),
                    reason: format!(
                        "not an option for {scheme} (known: kv.username, kv.password, \
                         kv.cacertfile, kv.certfile, kv.keyfile)"
                    ),
                })
            }
        }
    }
    match (options.get("kv.username"), options.get("kv.password")) {
        (None, None) => Ok(None),
        (Some(user), Some(password)) => Ok(Some((user.clone(), password.clone()))),
        (Some(_), None) => Err(SourceError::Option {
            option: "kv.username".into(),
            reason: "needs kv.password too".into(),
        }),
        (None, Some(_)) => Err(SourceError::Option {
            option: "kv.password".into(),
            reason: "needs kv.username too".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tls_options_are_read_not_refused() {
        let missing = "/nonexistent/leader-proxy/ca.pem";
        match security(&options(&[("kv.cacertfile", missing)]), "etcd://") {
            Err(SourceError::Option { option, reason }) => {
                assert_eq!(option, "kv.cacertfile");
                assert!(reason.contains(missing), "{reason}");
            }
            Err(other) => panic!("expected an option error, got {other}"),
            Ok(_) => panic!("a missing CA file was accepted"),
        }
        assert!(matches!(
            security(&options(&[("kv.keyfile", "/key.pem")]), "etcd://"),
            Err(SourceError::Option { option, .. }) if option == "kv.keyfile"
        ));
        assert!(matches!(
            security(&options(&[]), "etcd://"),
            Ok((None, None))
        ));
    }

    #[test]
    fn options_are_checked() {
        assert!(credentials(&options(&[]), "etcd://").unwrap().is_none());
        assert_eq!(
            credentials(
                &options(&[("kv.username", "u"), ("kv.password", "p")]),
                "etcd://"
            )
            .unwrap(),
            Some(("u".into(), "p".into()))
        );
        // The TLS files are etcd options; they are read by `security`.
        assert!(
            credentials(&options(&[("kv.cacertfile", "/ca.pem")]), "etcd://")
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            credentials(&options(&[("kv.token", "x")]), "etcd://"),
            Err(SourceError::Option { option, .. }) if option == "kv.token"
        ));
        assert!(matches!(
            credentials(&options(&[("kv.password", "p")]), "etcd://"),
            Err(SourceError::Option { option, .. }) if option == "kv.password"
        ));
    }
}
