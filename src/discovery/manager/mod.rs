//! What `swarm://` and `static://` share: no store to watch, so the managers themselves are
//! asked over the Docker API, every `--probe-interval`.
//!
//! A source implements [`Poller`]: one round of questions to its managers, summed up in a
//! [`Round`] (what they said about the election, which answers were garbage, who could not
//! be asked). [`run`] polls forever and turns rounds into events the way the store backends
//! do (see [`super::store`]): the leader is announced only when it changes, an outage (no
//! manager answered) is reported once and keeps the last leader, the full state is announced
//! again when the managers answer after an outage (that is how the router learns they are
//! back), and a garbage answer is rejected once, not at every poll.
//!
//! Why polling and not the follow machinery's sessions: a session watches one endpoint until
//! it breaks, and retries with a backoff that grows to seconds. A prober has nothing to watch
//! and may ask several managers per round (`static://` must ask them all, to see two
//! claiming to be primary); its pace is `--probe-interval`, which already bounds the load.
//!
//! The managers are spoken to in HTTP, or in HTTPS with `--upstream-cert-path`, without any
//! `HTTP_PROXY` of the environment: they are dialled directly, like the proxy dials the
//! leader. With TLS the probes use the proxy's own [`UpstreamTls`] (one SIGHUP reloads it
//! for both): `ca.pem` is the only root, the manager's certificate must name the host of its
//! DISCOVERY entry (an IP among its IP SANs, a name among its DNS SANs: the rule the proxy
//! applies to the leader), and `cert.pem` + `key.pem` are presented to managers running
//! `--tlsverify`. A failed handshake is a failure like a refused connection (the manager
//! is skipped; none answering is an outage), named as a TLS failure in the events and logs.

pub(in crate::discovery) mod static_probe;
pub(super) mod swarm;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use crate::discovery::announce::{Announcer, Closed};
use crate::discovery::{
    DiscoveryUrl, LeaderAddr, LeaderEvent, SourceError, ValueError, REPLY_TIMEOUT,
};
use crate::tls::UpstreamTls;

/// The largest answer read from a manager. `GET /nodes` of a swarm with a thousand nodes is
/// a few MiB; anything much larger is not an answer worth parsing, and memory stays bounded.
const MAX_ANSWER: usize = 16 << 20;

/// How much of a garbage answer is quoted in events and logs.
const EXCERPT: usize = 200;

/// What a Go TLS server (dockerd with `--tlsverify` or `--tls`) answers a plain HTTP
/// request with, after `HTTP/1.0 400 Bad Request`.
const GO_HTTP_TO_HTTPS: &[u8] = b"Client sent an HTTP request to an HTTPS server.";

/// The hint for a plain HTTP probe a TLS-only manager did not answer.
const TLS_ONLY: &str = "a manager that speaks only TLS needs --upstream-cert-path";

/// A manager as the DISCOVERY URL names it.
#[derive(Clone, Debug)]
pub(in crate::discovery) struct Manager {
    pub addr: LeaderAddr,
    /// `http://host:port` (`https://` with TLS), the base of every request.
    base: String,
}

impl Manager {
    /// A manager spoken to over TLS if `tls`.
    pub fn new(addr: LeaderAddr, tls: bool) -> Self {
        let scheme = if tls { "https" } else { "http" };
        Self {
            base: format!("{scheme}://{addr}"),
            addr,
        }
    }
}

/// The managers of `url`, in the URL's order, spoken to over TLS if `tls`.
pub(in crate::discovery) fn managers(
    url: &DiscoveryUrl,
    tls: bool,
) -> Result<Vec<Manager>, SourceError> {
    let scheme = if tls { "https" } else { "http" };
    url.hosts()
        .iter()
        .map(|host| {
            let addr = LeaderAddr::parse(host).map_err(|e| {
                SourceError::Unsupported(format!("manager {host:?} in DISCOVERY: {e}"))
            })?;
            Ok(Manager {
                base: format!("{scheme}://{addr}"),
                addr,
            })
        })
        .collect()
}

/// Refuses `--discovery-opt`: the `kv.*` options are about a store, and these sources have
/// none. Saying so beats silently ignoring a CA file the user believes is in use.
pub(in crate::discovery) fn refuse_options(
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
pub(in crate::discovery) struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Asks managers `GET` questions.
pub(in crate::discovery) struct Prober {
    connect_timeout: Duration,
    /// The whole exchange: dialling (bounded by `--connect-timeout` on its own) and the answer.
    reply_timeout: Duration,
    /// `--upstream-cert-path`, shared with the proxy.
    tls: Option<Arc<UpstreamTls>>,
    /// The client, and the generation of the TLS material it was built with (0 without
    /// TLS). A client keeps the TLS configuration it was built with, so a SIGHUP that
    /// reloaded the files (a new generation) gets a new client at the next request: new
    /// connections with the new files, the old client's pooled ones dropped with it.
    client: Mutex<(u64, reqwest::Client)>,
}

impl Prober {
    /// Fails only if the HTTP client cannot be built (a setting error, at start).
    pub fn new(
        connect_timeout: Duration,
        tls: Option<Arc<UpstreamTls>>,
    ) -> Result<Self, SourceError> {
        let (generation, client) = match &tls {
            None => (0, client(connect_timeout, None)),
            Some(tls) => {
                let material = tls.current();
                (
                    material.generation,
                    client(connect_timeout, Some(&material.config)),
                )
            }
        };
        let client = client.map_err(|e| {
            SourceError::Unsupported(format!("cannot build an HTTP client for the probes: {e}"))
        })?;
        Ok(Self {
            connect_timeout,
            reply_timeout: connect_timeout + REPLY_TIMEOUT,
            tls,
            client: Mutex::new((generation, client)),
        })
    }

    /// The client for a request made now (a cheap handle on a shared pool): rebuilt once
    /// after a reload changed the TLS material. If that fails the client in use is kept,
    /// with a warning, until the next reload.
    fn client(&self) -> reqwest::Client {
        // Nothing panics while the lock is held; a poisoned lock still holds a client.
        let mut cached = self.client.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tls) = &self.tls {
            let material = tls.current();
            if material.generation != cached.0 {
                cached.0 = material.generation;
                match client(self.connect_timeout, Some(&material.config)) {
                    Ok(client) => {
                        cached.1 = client;
                        debug!(
                            generation = material.generation,
                            "the manager probes use the reloaded --upstream-cert-path files"
                        );
                    }
                    Err(e) => warn!(error = %e,
                        "the manager probes cannot use the reloaded --upstream-cert-path \
                         files; they keep the ones in use"),
                }
            }
        }
        cached.1.clone()
    }

    /// `GET path` on `manager`. The error says why nothing usable came back (refused, timed
    /// out, reset, a failed TLS handshake, too large), with the causes reqwest keeps
    /// underneath its own message.
    pub async fn get(&self, manager: &Manager, path: &str) -> Result<Answer, String> {
        let url = format!("{}{path}", manager.base);
        let mut response = self
            .client()
            .get(&url)
            .timeout(self.reply_timeout)
            .send()
            .await
            .map_err(|e| self.failure(&e.without_url()))?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.failure(&e.without_url()))?
        {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(format!(
                    "the answer to GET {path} is larger than {} MiB",
                    MAX_ANSWER >> 20
                ));
            }
            body.extend_from_slice(&chunk);
        }
        if self.tls.is_none() && status == 400 && body.starts_with(GO_HTTP_TO_HTTPS) {
            return Err(format!(
                "HTTP 400 {:?} ({TLS_ONLY})",
                String::from_utf8_lossy(GO_HTTP_TO_HTTPS)
            ));
        }
        Ok(Answer { status, body })
    }

    /// Why a request failed, for events and logs. A TLS failure is named as one, with what
    /// rustls said (the manager's certificate is not from `ca.pem`'s CA, does not name its
    /// address, the manager refused the client certificate, …). Plain HTTP answered with
    /// something that is not HTTP is most likely a manager that speaks only TLS.
    fn failure(&self, error: &reqwest::Error) -> String {
        match (tls_error(error), &self.tls) {
            (Some(tls), Some(_)) => {
                format!("TLS handshake with the manager failed (--upstream-cert-path): {tls}")
            }
            (_, None) if not_http(error) => format!("{} (not HTTP: {TLS_ONLY})", describe(error)),
            _ => describe(error),
        }
    }
}

/// The probes' HTTP client: HTTPS with `tls` (its `ca.pem` the only root).
fn client(
    connect_timeout: Duration,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .no_proxy()
        // A manager answering with a redirect is not answering the question.
        .redirect(reqwest::redirect::Policy::none())
        .http1_only()
        .tcp_nodelay(true);
    match tls {
        Some(config) => builder.use_preconfigured_tls((**config).clone()),
        None => builder,
    }
    .build()
}

/// The rustls error somewhere in `error`'s causes. rustls' errors travel inside
/// [`std::io::Error`]s (one in another, on the way up from the handshake), whose `source()`
/// skips the error they wrap: each is looked into.
fn tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        let mut wrapped = Some(error);
        while let Some(error) = wrapped {
            if let Some(tls) = error.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
            wrapped = error
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .map(|inner| inner as &(dyn std::error::Error + 'static));
        }
        cause = error.source();
    }
    None
}

/// Whether the peer answered with something HTTP cannot parse (a TLS alert, say).
fn not_http(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_parse)
        {
            return true;
        }
        cause = error.source();
    }
    false
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
pub(in crate::discovery) fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .trim()
        .chars()
        .take(EXCERPT)
        .collect()
}

/// The `message` of a Docker API error body (`{"message": "…"}`), else the body's start.
pub(in crate::discovery) fn error_message(body: &[u8]) -> String {
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
pub(in crate::discovery) struct Round {
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
pub(in crate::discovery) enum Verdict {
    Leader(LeaderAddr),
    /// The election is open.
    NoLeader,
}

/// A garbage answer: what was said, and why it is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::discovery) struct Garbage {
    pub value: String,
    pub reason: ValueError,
}

/// One source's way of asking its managers.
#[async_trait]
pub(in crate::discovery) trait Poller: Send {
    async fn poll(&mut self) -> Round;
}

/// Turns rounds into events: only what changes what the proxy does is told.
pub(in crate::discovery) struct Reporter<'a> {
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
            // The router logs the outage, once, as it does for every source.
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
            // The router logs the rejected value, as it does for every source.
            self.send(LeaderEvent::Rejected {
                value: garbage.value,
                reason: garbage.reason,
            })
            .await?;
        }
        self.rejected = seen;
        match round.verdict {
            Some(Verdict::Leader(addr)) => self.announcer.announce(Some(addr), self.events).await,
            Some(Verdict::NoLeader) => self.announcer.announce(None, self.events).await,
            None => Ok(()),
        }
    }
}

/// Polls every `interval` (measured from the start of one round to the start of the next;
/// a round that takes longer delays the next instead of bunching them) until the receiver
/// is dropped.
pub(in crate::discovery) async fn run<P: Poller>(
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
                LeaderEvent::Disagreement(_) => "disagreement".into(),
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
        use crate::discovery::{source_for, Election, SourceConfig};
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
                upstream_tls: None,
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

    // -----------------------------------------------------------------------------------
    // The prober against managers on 127.0.0.1, over TLS or not.

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    use crate::tls::test_files::Files;
    use crate::tls::ServerTls;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    /// Go's net/http answer to plain HTTP on a TLS port (dockerd `--tlsverify`).
    const GO_TLS_PORT: &[u8] =
        b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

    /// A manager answering `answer` to any request (then closing), over TLS with `tls`.
    async fn serve(
        answer: &'static [u8],
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::net::SocketAddr {
        async fn answer_one<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, answer: &[u8]) {
            let (mut head, mut buf) = (Vec::new(), [0u8; 1024]);
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(answer).await;
            let _ = stream.shutdown().await;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => answer_one(tcp, answer).await,
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                answer_one(stream, answer).await;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn manager(addr: std::net::SocketAddr, tls: bool) -> Manager {
        let url = DiscoveryUrl::parse(&format!("static://{addr}")).unwrap();
        managers(&url, tls).unwrap().remove(0)
    }

    #[test]
    fn bases_are_https_with_tls() {
        let url = DiscoveryUrl::parse("swarm://10.0.0.1:2376,[fd00::1]:2376").unwrap();
        let bases = |tls| {
            managers(&url, tls)
                .unwrap()
                .into_iter()
                .map(|m| m.base)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            bases(false),
            ["http://10.0.0.1:2376", "http://[fd00::1]:2376"]
        );
        assert_eq!(
            bases(true),
            ["https://10.0.0.1:2376", "https://[fd00::1]:2376"]
        );
    }

    /// The probes use the proxy's `UpstreamTls`: its CA, its client certificate (the manager
    /// requires one), and after a reload the new files (here another CA, which does not
    /// vouch for the manager).
    #[tokio::test]
    async fn probes_use_the_upstream_tls_and_its_reloads() {
        let files = Files::new();
        let acceptor = ServerTls::load(&files.client(true)).unwrap().acceptor();
        let addr = serve(OK, Some(acceptor)).await;
        let tls = Arc::new(UpstreamTls::load(files.dir.path()).unwrap());
        let prober = Prober::new(Duration::from_secs(2), Some(tls.clone())).unwrap();
        let manager = manager(addr, true);
        let answer = prober.get(&manager, "/info").await.unwrap();
        assert_eq!((answer.status, answer.body), (200, b"ok".to_vec()));

        // Both test CAs have the same name: rustls says BadSignature rather than UnknownIssuer.
        let other = Files::new();
        for file in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::copy(other.path(file), files.path(file)).unwrap();
        }
        tls.reload().unwrap();
        let e = prober.get(&manager, "/info").await.err().unwrap();
        assert!(
            e.starts_with("TLS handshake with the manager failed (--upstream-cert-path): ")
                && e.contains("invalid peer certificate"),
            "{e}"
        );
        // A reload that fails keeps the files in use, and the client made with them.
        std::fs::write(files.path("ca.pem"), "garbage").unwrap();
        assert!(tls.reload().is_err());
        let again = prober.get(&manager, "/info").await.err().unwrap();
        assert_eq!(again, e);

        // Plain HTTP to a TLS-only manager: the hint names the flag.
        let plain = Prober::new(Duration::from_secs(2), None).unwrap();
        let e = plain.get(&self::manager(addr, false), "/info").await.err();
        assert!(e.as_ref().is_some_and(|e| e.contains(TLS_ONLY)), "{e:?}");
    }

    #[tokio::test]
    async fn a_go_tls_port_asked_in_plain_http_names_the_flag() {
        let addr = serve(GO_TLS_PORT, None).await;
        let prober = Prober::new(Duration::from_secs(2), None).unwrap();
        let e = prober.get(&manager(addr, false), "/nodes").await.err();
        assert!(
            e.as_ref()
                .is_some_and(|e| e.contains("HTTPS server") && e.contains(TLS_ONLY)),
            "{e:?}"
        );
        // Any other answer is read as usual.
        let addr = serve(OK, None).await;
        let answer = prober.get(&manager(addr, false), "/nodes").await.unwrap();
        assert_eq!(answer.status, 200);
    }
}
