//! What `swarm://` and `static://` share: no store to watch, so the managers themselves are
//! asked over the Docker API, every `--probe-interval`.
//!
//! A source implements [`Poller`]: one round of questions to its managers, summed up in a
//! [`Round`] (what they said about the election, which answers were garbage, who could not
//! be asked). [`run`] polls forever and turns rounds into events the way the store backends
//! do (see [`super::follow`]): the leader is announced only when it changes, an outage (no
//! manager answered) is reported once and keeps the last leader, the full state is announced
//! again when the managers answer after an outage (that is how the router learns they are
//! back), and a garbage answer is rejected once, not at every poll.
//!
//! Why polling and not the follow machinery's sessions: a session watches one endpoint until
//! it breaks, and retries with a backoff that grows to seconds. A prober has nothing to watch
//! and may ask several managers per round (`static://` must ask them all, to see two
//! claiming to be primary); its pace is `--probe-interval`, which already bounds the load.
//!
//! The managers are spoken to in plain HTTP (TLS to them comes with `--upstream-cert-path`),
//! without any `HTTP_PROXY` of the environment: they are dialled directly, like the proxy
//! dials the leader.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use super::follow::{Announcer, Closed, REPLY_TIMEOUT};
use super::{DiscoveryUrl, LeaderAddr, LeaderEvent, SourceError, ValueError};

/// The largest answer read from a manager. `GET /nodes` of a swarm with a thousand nodes is
/// a few MiB; anything much larger is not an answer worth parsing, and memory stays bounded.
const MAX_ANSWER: usize = 16 << 20;

/// How much of a garbage answer is quoted in events and logs.
const EXCERPT: usize = 200;

/// A manager as the DISCOVERY URL names it.
#[derive(Clone, Debug)]
pub(super) struct Manager {
    pub addr: LeaderAddr,
    /// `http://host:port`, the base of every request.
    base: String,
}

/// The managers of `url`, in the URL's order.
pub(super) fn managers(url: &DiscoveryUrl) -> Result<Vec<Manager>, SourceError> {
    url.hosts()
        .iter()
        .map(|host| {
            let addr = LeaderAddr::parse(host).map_err(|e| {
                SourceError::Unsupported(format!("manager {host:?} in DISCOVERY: {e}"))
            })?;
            Ok(Manager {
                base: format!("http://{addr}"),
                addr,
            })
        })
        .collect()
}

/// Refuses `--discovery-opt`: the `kv.*` options are about a store, and these sources have
/// none. Saying so beats silently ignoring a CA file the user believes is in use.
pub(super) fn refuse_options(
    scheme: &str,
    options: &std::collections::BTreeMap<String, String>,
) -> Result<(), SourceError> {
    match options.keys().next() {
        None => Ok(()),
        Some(option) => Err(SourceError::Option {
            option: option.clone(),
            reason: format!(
                "{scheme}:// has no store: the managers are asked over the Docker API, and \
                 takes no --discovery-opt (TLS to the managers is --upstream-cert-path)"
            ),
        }),
    }
}

/// One manager's answer: the status and the whole body (at most [`MAX_ANSWER`]).
pub(super) struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Asks managers `GET` questions.
pub(super) struct Prober {
    client: reqwest::Client,
    /// The whole exchange: dialling (bounded by `--connect-timeout` on its own) and the answer.
    reply_timeout: Duration,
}

impl Prober {
    pub fn new(connect_timeout: Duration) -> Result<Self, SourceError> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .no_proxy()
            .http1_only()
            .tcp_nodelay(true)
            .build()
            .map_err(|e| SourceError::Unsupported(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            client,
            reply_timeout: connect_timeout + REPLY_TIMEOUT,
        })
    }

    /// `GET path` on `manager`. The error says why nothing usable came back (refused, timed
    /// out, reset, too large), with the causes reqwest keeps underneath its own message.
    pub async fn get(&self, manager: &Manager, path: &str) -> Result<Answer, String> {
        let url = format!("{}{path}", manager.base);
        let mut response = self
            .client
            .get(&url)
            .timeout(self.reply_timeout)
            .send()
            .await
            .map_err(|e| describe(&e.without_url()))?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| describe(&e.without_url()))?
        {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(format!(
                    "the answer to GET {path} is larger than {} MiB",
                    MAX_ANSWER >> 20
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer { status, body })
    }
}

/// The error with its causes: reqwest's top-level message alone ("error sending request")
/// does not say whether the manager refused, timed out or reset.
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

/// The start of an answer, for events and logs (managers' answers are not trusted to be
/// short or printable; the router and the logs escape what they show).
pub(super) fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .trim()
        .chars()
        .take(EXCERPT)
        .collect()
}

/// The `message` of a Docker API error body (`{"message": "…"}`), else the body's start.
pub(super) fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct DockerError {
        message: String,
    }
    match serde_json::from_slice::<DockerError>(body) {
        Ok(e) => e.message.chars().take(EXCERPT).collect(),
        Err(_) => excerpt(body),
    }
}

/// What one round of questions found.
#[derive(Debug, Default)]
pub(super) struct Round {
    /// What the managers said about the election; `None` when no manager gave a usable
    /// answer (then the last leader is kept).
    pub verdict: Option<Verdict>,
    /// Answers that came back but name no leader in the form Docker uses.
    pub garbage: Vec<Garbage>,
    /// Managers that could not be asked or cannot answer the question (refused, timed out,
    /// not a manager), each as `host:port: why`.
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    Leader(LeaderAddr),
    /// The election is open.
    NoLeader,
}

/// A garbage answer: what was said, and why it is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Garbage {
    pub value: String,
    pub reason: ValueError,
}

/// One source's way of asking its managers.
#[async_trait]
pub(super) trait Poller: Send {
    async fn poll(&mut self) -> Round;
}

/// Turns rounds into events: only what changes what the proxy does is told.
pub(super) struct Reporter<'a> {
    events: &'a mpsc::Sender<LeaderEvent>,
    scheme: &'static str,
    announcer: Announcer,
    /// No manager answered at the last round, and the outage was reported.
    degraded: bool,
    /// The garbage values of the last round: one still answered at the next poll (or by
    /// every manager) is rejected once.
    rejected: Vec<String>,
}

impl<'a> Reporter<'a> {
    pub fn new(events: &'a mpsc::Sender<LeaderEvent>, scheme: &'static str) -> Self {
        Self {
            events,
            scheme,
            announcer: Announcer::default(),
            degraded: false,
            rejected: Vec::new(),
        }
    }

    async fn send(&self, event: LeaderEvent) -> Result<(), Closed> {
        self.events.send(event).await.map_err(|_| Closed)
    }

    pub async fn report(&mut self, round: Round) -> Result<(), Closed> {
        if round.verdict.is_none() && round.garbage.is_empty() {
            let reason = if round.failures.is_empty() {
                "no manager to ask".to_string()
            } else {
                round.failures.join("; ")
            };
            self.rejected.clear();
            if self.degraded {
                debug!(%reason, "{}:// managers still unreachable", self.scheme);
                return Ok(());
            }
            self.degraded = true;
            warn!(%reason, "no {}:// manager answers; keeping the last leader", self.scheme);
            return self
                .send(LeaderEvent::Degraded(format!(
                    "{}:// managers: {reason}",
                    self.scheme
                )))
                .await;
        }
        if self.degraded {
            self.degraded = false;
            self.announcer.forget();
            info!("the {}:// managers answer again", self.scheme);
        }
        for failure in &round.failures {
            debug!(%failure, "skipped a {}:// manager", self.scheme);
        }
        let mut seen: Vec<String> = Vec::with_capacity(round.garbage.len());
        for garbage in round.garbage {
            let known = self.rejected.contains(&garbage.value) || seen.contains(&garbage.value);
            seen.push(garbage.value.clone());
            if known {
                continue;
            }
            warn!(answer = ?garbage.value, reason = %garbage.reason,
                "a {}:// manager gave an unusable answer", self.scheme);
            self.send(LeaderEvent::Rejected {
                value: garbage.value,
                reason: garbage.reason,
            })
            .await?;
        }
        self.rejected = seen;
        match round.verdict {
            Some(Verdict::Leader(addr)) => {
                self.announcer
                    .observe(Some(&addr.to_string()), self.events)
                    .await
            }
            Some(Verdict::NoLeader) => self.announcer.observe(None, self.events).await,
            None => Ok(()),
        }
    }
}

/// Polls every `interval` (measured from the start of one round to the start of the next;
/// a round that takes longer delays the next instead of bunching them) until the receiver
/// is dropped.
pub(super) async fn run<P: Poller>(
    mut poller: P,
    interval: Duration,
    scheme: &'static str,
    events: &mpsc::Sender<LeaderEvent>,
) {
    let polling = async {
        let mut reporter = Reporter::new(events, scheme);
        // tokio's interval panics on zero; config.rs refuses 0 already.
        let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let round = poller.poll().await;
            if reporter.report(round).await.is_err() {
                return;
            }
        }
    };
    // A round may wait seconds for a slow manager: notice a dropped receiver meanwhile.
    tokio::select! {
        () = polling => {}
        () = events.closed() => {}
    }
    debug!("{scheme}:// source stopped: nobody listens");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn garbage(value: &str) -> Garbage {
        Garbage {
            value: value.into(),
            reason: ValueError::Answer("test".into()),
        }
    }

    fn leader(addr: &str) -> Option<Verdict> {
        LeaderAddr::parse(addr).ok().map(Verdict::Leader)
    }

    #[tokio::test]
    async fn reports_changes_outages_once_and_garbage_once() {
        let (tx, mut rx) = mpsc::channel(64);
        let mut reporter = Reporter::new(&tx, "static");
        let rounds = vec![
            Round {
                verdict: leader("10.0.0.1:2375"),
                ..Round::default()
            },
            Round {
                verdict: leader("10.0.0.1:2375"),
                ..Round::default()
            },
            // The same garbage from two managers, then again at the next poll.
            Round {
                verdict: leader("10.0.0.1:2375"),
                garbage: vec![garbage("junk"), garbage("junk")],
                ..Round::default()
            },
            Round {
                verdict: None,
                garbage: vec![garbage("junk")],
                ..Round::default()
            },
            Round {
                failures: vec!["a: refused".into()],
                ..Round::default()
            },
            Round {
                failures: vec!["a: refused".into()],
                ..Round::default()
            },
            // Back: the same leader is told again.
            Round {
                verdict: leader("10.0.0.1:2375"),
                ..Round::default()
            },
            Round {
                verdict: Some(Verdict::NoLeader),
                ..Round::default()
            },
            Round {
                verdict: Some(Verdict::NoLeader),
                ..Round::default()
            },
            Round {
                verdict: leader("10.0.0.2:2375"),
                ..Round::default()
            },
        ];
        for round in rounds {
            assert!(reporter.report(round).await.is_ok());
        }
        drop(reporter);
        drop(tx);
        let mut seen = Vec::new();
        while let Some(event) = rx.recv().await {
            seen.push(match event {
                LeaderEvent::Leader(a) => a.to_string(),
                LeaderEvent::NoLeader => "none".into(),
                LeaderEvent::Rejected { value, .. } => format!("rejected {value}"),
                LeaderEvent::Degraded(reason) => format!("degraded {reason}"),
            });
        }
        assert_eq!(
            seen,
            [
                "10.0.0.1:2375",
                "rejected junk",
                "degraded static:// managers: a: refused",
                "10.0.0.1:2375",
                "none",
                "10.0.0.2:2375"
            ]
        );
    }

    #[test]
    fn store_options_and_contenders_are_refused() {
        use super::super::{source_for, Election, SourceConfig};
        for scheme in ["swarm", "static"] {
            let config = |election, options: &[(&str, &str)]| SourceConfig {
                url: DiscoveryUrl::parse(&format!("{scheme}://127.0.0.1:2375")).unwrap(),
                leader_key: "docker/swarm/leader".into(),
                election,
                options: options
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                connect_timeout: Duration::from_secs(2),
                probe_interval: Duration::from_millis(500),
            };
            assert!(source_for(config(Election::Key, &[])).is_ok());
            let Err(e) = source_for(config(Election::Key, &[("kv.cacertfile", "/ca.pem")])) else {
                panic!("{scheme}:// took kv.cacertfile");
            };
            let e = e.to_string();
            assert!(e.starts_with("--discovery-opt kv.cacertfile:"), "{e}");
            assert!(e.contains(&format!("{scheme}:// has no store")), "{e}");
            let Err(e) = source_for(config(Election::Contenders, &[])) else {
                panic!("{scheme}:// took --election contenders");
            };
            assert!(e.to_string().contains("--election contenders"), "{e}");
        }
    }

    #[test]
    fn docker_error_messages_and_excerpts() {
        assert_eq!(
            error_message(br#"{"message":"The swarm does not have a leader."}"#),
            "The swarm does not have a leader."
        );
        assert_eq!(error_message(b"  plain text\n"), "plain text");
        assert_eq!(excerpt(&[b'x'; 1000]).len(), EXCERPT);
    }
}
