//! Consul's KV store (`consul://h:p/prefix`), where classic Swarm elects its primary through
//! libkv's Consul lock (Consul's `api.Lock`).
//!
//! What the store holds: the leader key `<prefix>/docker/swarm/leader` (no leading slash),
//! acquired with a session (behaviour `release`, lock-delay 1 ms, TTL = lock TTL / 2, which
//! Consul lets run for up to twice that) and flags `0x2ddccbc058a50c18`; its value is the
//! primary's advertise address. While the lock is held the key's `Session` is set. When the
//! holder dies its session expires and Consul *releases* the key: the value stays, `Session`
//! is gone. So a key without a session is no leader, whatever its value says, and the
//! election is open until a candidate acquires the key again.
//!
//! How it is followed: one read, then Consul's blocking queries on the key
//! (`GET /v1/kv/<key>?index=N&wait=…`), each answered when the key's index moves past `N` or
//! the wait ends. The index comes from the `X-Consul-Index` header, which Consul sends on a
//! 404 too: a key that does not exist yet is waited on exactly like one that does. The index
//! is handled as Consul's documentation on blocking queries asks: an index that goes
//! backwards (a snapshot restore, another server answering) restarts the loop from 0 (one
//! plain read, then blocking again), and an index is never less than 1 after a reply, so the
//! loop never turns into a busy poll with `index=0`.
//!
//! Why our own small client on reqwest and no Consul crate: the two candidates were checked
//! (`cargo info`, their sources). `rs-consul` 0.15 (maintained) turns every non-200 answer
//! into an error and drops the headers with it, so a blocking read of a key that does not
//! exist loses `X-Consul-Index` and cannot block; it also always sends an `X-Consul-Token`
//! header (empty without a token) and brings a second HTTP stack (hyper-rustls with webpki
//! roots, ureq). `consulrs` 0.1.0 (2021, unmaintained) has the same 404 problem, `unwrap()`s
//! header values, and is built on reqwest 0.11. The read needed here is one GET with three
//! headers, so it is written on the reqwest client the etcd v2 backend already uses, with
//! the store TLS of [`super::tls`].
//!
//! Options (`--discovery-opt`): `kv.token` (the ACL token, sent as `X-Consul-Token`; the
//! `CONSUL_HTTP_TOKEN` environment variable, as Consul's own tools read it, is used when the
//! option is absent), `kv.cacertfile`, `kv.certfile`, `kv.keyfile` (https to the agent: the
//! CA, required with any of them, is the only one trusted for the agent's certificate; the
//! certificate and key are presented for mutual TLS, Consul's `verify_incoming`). Anything
//! else is refused with the option named. The token is sent only as a header (never in a
//! URL, which reqwest's errors quote) and never appears in logs, errors or `/leader`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use reqwest::header::HeaderValue;
use reqwest::StatusCode;
use serde::Deserialize;
use tracing::debug;

use super::http::HttpStore;
use super::tls::{StoreTls, CA_FILE, CERT_FILE, KEY_FILE};
use super::{Link, Session, Stop};
use crate::discovery::REPLY_TIMEOUT;
use crate::discovery::{Election, SourceConfig, SourceError};

/// How long one blocking query may wait. Consul answers at the latest after this plus up
/// to 1/16 of it (its own jitter); an agent that vanished without closing the connection is
/// therefore noticed within about this long (TCP keepalive notices a dead host sooner).
/// Consul's default is 5 minutes, which would leave a hung agent unnoticed for as long.
const WAIT: Duration = Duration::from_secs(60);

/// The option and the environment variable that carry the ACL token.
const TOKEN_OPTION: &str = "kv.token";
const TOKEN_ENV: &str = "CONSUL_HTTP_TOKEN";

/// An index reset twice within this long means the server keeps answering with lower
/// indexes: the next reset waits this long first, so such a server is never polled in a
/// tight loop (Consul's docs ask blocking clients to rate-limit).
const RESET_PAUSE: Duration = Duration::from_secs(1);

/// Follows the leader key through Consul's KV HTTP API.
pub struct ConsulSource {
    /// One URL per agent, each pointing at the leader key (`…/v1/kv/<key>`).
    keys: Vec<reqwest::Url>,
    /// The agents as the user wrote them, for logs and `Degraded` reasons.
    hosts: Vec<String>,
    /// The key, for messages.
    key: String,
    /// `X-Consul-Token`, marked sensitive so that no debug output shows it.
    token: Option<Token>,
    client: reqwest::Client,
    reply_timeout: Duration,
}

/// The ACL token and where it came from (for messages, which never show the token).
struct Token {
    header: HeaderValue,
    /// The token itself, only to scrub it from text a server sent back.
    secret: String,
    from: &'static str,
}

impl ConsulSource {
    pub fn new(config: SourceConfig) -> Result<Self, SourceError> {
        Self::with_env_token(config, std::env::var(TOKEN_ENV).ok())
    }

    /// [`Self::new`] with the value of `CONSUL_HTTP_TOKEN` given, so that tests need not
    /// touch the process environment.
    fn with_env_token(
        config: SourceConfig,
        env_token: Option<String>,
    ) -> Result<Self, SourceError> {
        if config.election == Election::Contenders {
            return Err(SourceError::Unsupported(
                "--election contenders is not available for consul:// (Swarm locks a single \
                 key in Consul); use --election key"
                    .into(),
            ));
        }
        check_options(&config.options)?;
        let token = token(&config.options, env_token)?;
        let tls = StoreTls::from_options(&config.options)?;
        let key = config.url.key(&config.leader_key);
        if key.is_empty() {
            return Err(SourceError::Unsupported(
                "the Consul key is empty: give a prefix in DISCOVERY or a --leader-key".into(),
            ));
        }
        let store = HttpStore::new(
            config.url.hosts(),
            "v1/kv",
            &key,
            tls.as_ref(),
            config.connect_timeout,
            "Consul agent",
        )?;
        Ok(Self {
            keys: store.urls,
            hosts: config.url.hosts().to_vec(),
            key,
            token,
            client: store.client,
            reply_timeout: config.connect_timeout + REPLY_TIMEOUT,
        })
    }

    /// Reads the key; with `index > 0`, a blocking query that returns once the key's index
    /// moves past `index` or after [`WAIT`].
    async fn read(&self, url: &reqwest::Url, index: u64) -> Result<Read, Stop> {
        let mut request = self.client.get(url.clone());
        let mut timeout = self.reply_timeout;
        if index > 0 {
            request = request.query(&[
                ("index", index.to_string()),
                ("wait", format!("{}s", WAIT.as_secs())),
            ]);
            timeout += WAIT + WAIT / 16;
        }
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token.header.clone());
        }
        let response = request
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| Stop::store(&e))?;
        super::http::refuse_redirect(&response, "Consul")?;
        let status = response.status();
        let consul_index = response
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = super::http::body(response, "Consul").await?;
        let leader = match status {
            StatusCode::OK => Some(self.leader_value(&body)?),
            StatusCode::NOT_FOUND => None,
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => {
                return Err(Stop::Store(self.acl_failure(status, &body)))
            }
            _ => {
                return Err(Stop::Store(format!(
                    "Consul answered HTTP {status}: {:?}",
                    self.quote(&body)
                )))
            }
        };
        // Without the index no blocking query is possible, and retrying at once would poll.
        let consul_index = consul_index.ok_or_else(|| {
            Stop::Store(format!(
                "Consul answered HTTP {status} without X-Consul-Index: is this a Consul agent?"
            ))
        })?;
        Ok(Read {
            leader: leader.flatten(),
            index: consul_index,
        })
    }

    /// The leader in a 200 answer: the value if the key is locked, `None` if not.
    fn leader_value(&self, body: &[u8]) -> Result<Option<String>, Stop> {
        let entries: Vec<Entry> = serde_json::from_slice(body).map_err(|e| {
            Stop::Store(format!(
                "unexpected Consul KV answer ({e}): {:?}",
                self.quote(body)
            ))
        })?;
        let Some(entry) = entries.into_iter().find(|e| e.key == self.key) else {
            return Ok(None);
        };
        let session = entry.session.as_deref().unwrap_or("");
        if session.is_empty() {
            // Released: the holder's session ended (or it unlocked). The value is stale.
            debug!(key = %self.key, modify_index = entry.modify_index,
                "leader key present but not locked: no leader");
            return Ok(None);
        }
        let value = match entry.value.as_deref() {
            None => Vec::new(),
            Some(encoded) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| Stop::Store(format!("Consul sent a Value that is not base64: {e}")))?,
        };
        if entry.flags != LOCK_FLAGS {
            debug!(key = %self.key, flags = entry.flags,
                "leader key locked with flags other than libkv's lock flags");
        }
        Ok(Some(String::from_utf8_lossy(&value).into_owned()))
    }

    /// Says what is wrong with the ACL token without showing it.
    fn acl_failure(&self, status: StatusCode, body: &[u8]) -> String {
        let said = self.quote(body);
        let hint = match &self.token {
            None => {
                format!("no ACL token is set (--discovery-opt {TOKEN_OPTION}=… or {TOKEN_ENV})")
            }
            Some(token) => format!(
                "the ACL token from {} is unknown to Consul or may not read the key",
                token.from
            ),
        };
        format!(
            "Consul refused to read {:?}: ACL: HTTP {status} {said:?}; {hint}",
            self.key
        )
    }

    /// What the server said, shortened, with the token scrubbed should it have echoed it.
    fn quote(&self, body: &[u8]) -> String {
        let mut text = String::from_utf8_lossy(body).into_owned();
        if let Some(token) = &self.token {
            text = text.replace(&token.secret, "<token>");
        }
        text.trim().chars().take(200).collect()
    }
}

/// The flags libkv's Consul lock (Consul's `api.Lock`) puts on the key it locks.
pub const LOCK_FLAGS: u64 = 0x2ddc_cbc0_58a5_0c18;

/// One blocking read's result.
struct Read {
    /// The leader value if the key is locked.
    leader: Option<String>,
    /// `X-Consul-Index`.
    index: u64,
}

/// An entry of Consul's `GET /v1/kv/<key>` answer (a JSON array of these).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    key: String,
    #[serde(default)]
    flags: u64,
    /// Base64; `null` for an empty value.
    value: Option<String>,
    /// Absent (or empty) when the key is not locked.
    session: Option<String>,
    #[serde(default)]
    modify_index: u64,
}

/// The index for the next query, by Consul's rules for blocking clients: an index lower
/// than the one waited on means the server's state went backwards (a restore, another
/// server), so the loop restarts from 0; otherwise at least 1, so that a bogus 0 never makes
/// the next query return at once.
fn next_index(waited_on: u64, returned: u64) -> u64 {
    if returned < waited_on {
        0
    } else {
        returned.max(1)
    }
}

#[async_trait]
impl Session for ConsulSource {
    const STORE: &'static str = "consul";

    fn hosts(&self) -> &[String] {
        &self.hosts
    }

    async fn session(&self, endpoint: usize, link: &mut Link<'_>) -> Stop {
        let url = &self.keys[endpoint];
        let result: Result<Infallible, Stop> = async {
            let read = self.read(url, 0).await?;
            link.read(read.leader.as_deref()).await?;
            let mut index = next_index(0, read.index);
            let mut last_reset: Option<Instant> = None;
            loop {
                let read = self.read(url, index).await?;
                let next = next_index(index, read.index);
                if next == 0 {
                    debug!(
                        was = index,
                        now = read.index,
                        "Consul's index went backwards; reading the key again"
                    );
                    if last_reset.is_some_and(|at| at.elapsed() < RESET_PAUSE) {
                        tokio::time::sleep(RESET_PAUSE).await;
                    }
                    last_reset = Some(Instant::now());
                } else if next != index {
                    debug!(index = next, leader = ?read.leader, "leader key changed");
                }
                link.changed(read.leader.as_deref()).await?;
                index = next;
            }
        }
        .await;
        match result {
            Ok(never) => match never {},
            Err(stop) => stop,
        }
    }
}

/// Refuses options that mean nothing to Consul, naming them: a misspelt option silently
/// ignored would leave the user believing, say, that TLS is on.
fn check_options(options: &BTreeMap<String, String>) -> Result<(), SourceError> {
    for option in options.keys() {
        if ![TOKEN_OPTION, CA_FILE, CERT_FILE, KEY_FILE].contains(&option.as_str()) {
            return Err(SourceError::Option {
                option: option.clone(),
                reason: format!(
                    "not an option for consul:// (known: {TOKEN_OPTION}, {CA_FILE}, \
                     {CERT_FILE}, {KEY_FILE})"
                ),
            });
        }
    }
    Ok(())
}

/// The ACL token: `kv.token`, else `CONSUL_HTTP_TOKEN` (an empty one counts as unset).
fn token(
    options: &BTreeMap<String, String>,
    env_token: Option<String>,
) -> Result<Option<Token>, SourceError> {
    let (secret, from) = match options.get(TOKEN_OPTION) {
        Some(token) => (token.trim().to_string(), TOKEN_OPTION),
        None => match env_token.map(|t| t.trim().to_string()) {
            Some(token) if !token.is_empty() => (token, TOKEN_ENV),
            _ => return Ok(None),
        },
    };
    if secret.is_empty() {
        return Err(SourceError::Option {
            option: TOKEN_OPTION.into(),
            reason: "is empty (leave it out to use no token)".into(),
        });
    }
    let mut header = HeaderValue::from_str(&secret).map_err(|_| {
        let reason = "holds characters an HTTP header cannot carry";
        if from == TOKEN_OPTION {
            SourceError::Option {
                option: TOKEN_OPTION.into(),
                reason: reason.into(),
            }
        } else {
            SourceError::Unsupported(format!("{TOKEN_ENV} {reason}"))
        }
    })?;
    header.set_sensitive(true);
    Ok(Some(Token {
        header,
        secret,
        from,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::DiscoveryUrl;

    fn config(url: &str, options: &[(&str, &str)]) -> SourceConfig {
        SourceConfig {
            url: DiscoveryUrl::parse(url).expect("a valid URL"),
            leader_key: "docker/swarm/leader".into(),
            election: Election::Key,
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            connect_timeout: Duration::from_secs(2),
            probe_interval: Duration::from_millis(500),
            upstream_tls: None,
        }
    }

    #[test]
    fn index_rules_of_blocking_queries() {
        // The first read, and a reply that moved on.
        assert_eq!(next_index(0, 17), 17);
        assert_eq!(next_index(17, 20), 20);
        // The wait ran out: same index, block on it again.
        assert_eq!(next_index(20, 20), 20);
        // Went backwards: restart from 0 (one plain read).
        assert_eq!(next_index(20, 5), 0);
        // Never 0 after a reply, which would turn the loop into a busy poll.
        assert_eq!(next_index(0, 0), 1);
    }

    #[test]
    fn key_url_has_no_leading_slash_and_is_encoded() {
        let source =
            ConsulSource::with_env_token(config("consul://127.0.0.1:8500//swarm/", &[]), None)
                .expect("a source");
        assert_eq!(
            source.keys[0].as_str(),
            "http://127.0.0.1:8500/v1/kv/swarm/docker/swarm/leader"
        );
        let bare = ConsulSource::with_env_token(config("consul://127.0.0.1:8500", &[]), None)
            .expect("a source");
        assert_eq!(bare.key, "docker/swarm/leader");
    }

    #[test]
    fn the_option_wins_over_the_environment_and_neither_is_shown() {
        let source = ConsulSource::with_env_token(
            config(
                "consul://127.0.0.1:8500/swarm",
                &[("kv.token", "from-option")],
            ),
            Some("from-env".into()),
        )
        .expect("a source");
        let token = source.token.as_ref().expect("a token");
        assert_eq!(token.from, TOKEN_OPTION);
        assert_eq!(token.header.to_str().ok(), Some("from-option"));
        assert!(token.header.is_sensitive());
        assert!(!format!("{:?}", token.header).contains("from-option"));
        let message = source.acl_failure(StatusCode::FORBIDDEN, b"ACL not found from-option");
        assert!(!message.contains("from-option"), "{message}");
        assert!(message.contains("ACL"), "{message}");

        let env = ConsulSource::with_env_token(
            config("consul://127.0.0.1:8500/swarm", &[]),
            Some("from-env".into()),
        )
        .expect("a source");
        assert_eq!(env.token.as_ref().map(|t| t.from), Some(TOKEN_ENV));
        let none = ConsulSource::with_env_token(
            config("consul://127.0.0.1:8500/swarm", &[]),
            Some(" ".into()),
        )
        .expect("a source");
        assert!(none.token.is_none());
    }

    #[test]
    fn options_are_checked() {
        let option_of = |options: &[(&str, &str)]| match ConsulSource::with_env_token(
            config("consul://127.0.0.1:8500/swarm", options),
            None,
        ) {
            Err(SourceError::Option { option, reason }) => (option, reason),
            Err(other) => panic!("expected an option error, got {other}"),
            Ok(_) => panic!("accepted {options:?}"),
        };
        let (option, reason) = option_of(&[("kv.username", "u")]);
        assert_eq!(option, "kv.username");
        assert!(reason.contains("kv.token"), "{reason}");
        assert_eq!(option_of(&[("kv.token", "")]).0, "kv.token");
        assert_eq!(option_of(&[("kv.token", "a\nb")]).0, "kv.token");
        assert_eq!(option_of(&[("kv.certfile", "/c.pem")]).0, "kv.certfile");
        let mut contenders = config("consul://127.0.0.1:8500/swarm", &[]);
        contenders.election = Election::Contenders;
        assert!(matches!(
            ConsulSource::with_env_token(contenders, None),
            Err(SourceError::Unsupported(m)) if m.contains("contenders")
        ));
    }
}
