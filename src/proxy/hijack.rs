//! The hijack relay: requests carrying `Upgrade` (attach, exec, BuildKit's `/session` and
//! `/grpc`) are not given to pingora, which strips `Upgrade: tcp` and ends the connection
//! when either side half-closes. Instead the head is written unchanged to the leader and
//! bytes are copied both ways, each direction's EOF forwarded on its own: `docker run -i`
//! closes its write side and still reads the output.
//!
//! A relayed connection has no idle timeout (an attach may be silent for hours); it ends
//! when both directions have ended, when a socket breaks (a dead leader), or when the
//! leader-change policy says so ([`Drain`]).
//!
//! Over TLS (client side, manager side, or both) nothing changes: the client is a
//! [`crate::tls::TlsConn`] when it came in over TLS, and with `--upstream-cert-path` the
//! leader is dialled with TLS ([`UpstreamTls::connect`]). A half-close is then TLS's
//! `close_notify` (followed by a TCP FIN), which dockerd reads as the end of stdin.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pingora_core::protocols::UniqueID;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tracing::{debug, info, warn};

use super::client_identity::{log_fields, ClientIdentity};
use super::drain::Drain;
use super::exchange;
use super::hold::{Client, Hold, HoldError};
use super::write_docker_error;
use crate::metrics::Metrics;
use crate::router::Upstream;
use crate::tls::UpstreamTls;

pub struct HijackRelay {
    hold: Arc<Hold>,
    metrics: Arc<Metrics>,
    connect_timeout: Duration,
    drain: Arc<Drain>,
    /// `--upstream-cert-path`: the leader is spoken to over TLS.
    upstream_tls: Option<Arc<UpstreamTls>>,
}

impl HijackRelay {
    pub fn new(
        hold: Arc<Hold>,
        metrics: Arc<Metrics>,
        connect_timeout: Duration,
        drain: Arc<Drain>,
        upstream_tls: Option<Arc<UpstreamTls>>,
    ) -> Self {
        Self {
            hold,
            metrics,
            connect_timeout,
            drain,
            upstream_tls,
        }
    }

    /// Relays one `Upgrade` request; `head` is everything read from the client so far.
    ///
    /// The request (head, and a body of known length) goes to the leader first; what the
    /// client sent after it waits for the answer. A `101` makes the connection a byte
    /// relay to its end. Any other answer is relayed whole, by its framing, and the
    /// connection goes back to HTTP ([`Relayed::Http`]) unless the leader closes it.
    pub async fn relay<C>(
        &self,
        client: &mut C,
        mut head: BytesMut,
        identity: &ClientIdentity,
    ) -> Relayed
    where
        C: AsyncRead + AsyncWrite + UniqueID + Unpin,
    {
        let started = Instant::now();
        let summary = request_line(&head);
        let (head_len, framing) = match exchange::request_framing(&head) {
            Ok(found) => found,
            Err(e) => {
                self.reject_with(client, 400, &format!("{e} (leader-proxy)"))
                    .await;
                self.log(identity, &summary, 400, None, started, (0, 0));
                return Relayed::Closed;
            }
        };
        let head_request = head.starts_with(b"HEAD ");
        let mut state = self.hold.start();
        let watched = Client {
            fd: client.id(),
            upgrade: true,
        };
        // A TLS failure is warned about once per request; the retries that follow (the
        // manager may be getting new certificates) are debug.
        let mut tls_warned = false;
        let mut upstream = loop {
            let target = match self.hold.next_upstream(&mut state, Some(watched)).await {
                Ok(upstream) => upstream,
                Err(HoldError::ClientGone) => {
                    self.abandon(identity, &summary, started);
                    return Relayed::Closed;
                }
                Err(e) => {
                    self.reject(client, &e.to_string()).await;
                    self.log(identity, &summary, 503, None, started, (0, 0));
                    return Relayed::Closed;
                }
            };
            let addr = target.socket;
            match self.dial(&target).await {
                Ok(stream) => {
                    self.metrics.upstream_dials.with_label_values(&["ok"]).inc();
                    state.mark_connected();
                    break stream;
                }
                Err(Dial::Tcp(e)) => debug!(%addr, error = %e, "hijack: dial failed"),
                Err(Dial::Tls(e)) if !tls_warned => {
                    tls_warned = true;
                    warn!(%addr, error = %e, "hijack: TLS handshake with the leader failed \
                        (--upstream-cert-path); retrying until --hold-timeout");
                }
                Err(Dial::Tls(e)) => debug!(%addr, error = %e, "hijack: TLS handshake failed"),
            }
            self.metrics
                .upstream_dials
                .with_label_values(&["failed"])
                .inc();
            state.mark_failed();
            self.metrics.retries.with_label_values(&["connect"]).inc();
        };
        // The client may have left during the dial.
        if self.hold.client_left(&mut state) {
            self.abandon(identity, &summary, started);
            return Relayed::Closed;
        }
        let Some(addr) = state.upstream() else {
            // `next_upstream` returned an address, so the state holds it.
            return Relayed::Closed;
        };
        // The request's own bytes: the head and a body of known length. A chunked body's end
        // is not looked for: all goes, and the connection can only be relayed to its end.
        let (request, body_left, rest) = match framing {
            exchange::Framing::Length(n) => {
                let end = head_len as u64 + n;
                match usize::try_from(end).ok().filter(|end| *end <= head.len()) {
                    Some(end) => {
                        let rest = head.split_off(end);
                        (head, 0, Some(rest))
                    }
                    None => {
                        let left = end - head.len() as u64;
                        (head, left, Some(BytesMut::new()))
                    }
                }
            }
            _ => (head, 0, None),
        };
        let exchanged = tokio::select! {
            exchanged = self.exchange(client, &mut upstream, request, body_left, rest, head_request) => exchanged,
            reason = self.drain.must_end(addr) => {
                info!(reason = reason.as_str(), request = %summary, upstream = %addr,
                    "ending a hijacked connection to the old leader");
                // Both sockets close: dropping `upstream`, and the client's here.
                let _ = client.shutdown().await;
                Exchanged::ended(101)
            }
        };
        if let Some((code, message)) = &exchanged.reject {
            self.reject_with(client, *code, message).await;
        }
        let (status, up, down) = exchanged.logged;
        self.log(identity, &summary, status, Some(addr), started, (up, down));
        exchanged.next
    }

    /// Sends the request to the leader and relays its answer (see [`Self::relay`]).
    /// `rest`: what the client sent after the request, `None` when that is not known.
    async fn exchange<C, U>(
        &self,
        client: &mut C,
        upstream: &mut U,
        request: BytesMut,
        body_left: u64,
        rest: Option<BytesMut>,
        head_request: bool,
    ) -> Exchanged
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        // The flush pushes out what TLS may still hold (a no-op on plain TCP).
        let mut written = upstream.write_all(&request).await;
        if written.is_ok() && body_left > 0 {
            written = copy_exactly(client, upstream, body_left).await;
        }
        if written.is_ok() {
            written = upstream.flush().await;
        }
        if let Err(e) = written {
            // Nothing can be known about whether the leader saw the request: never resend.
            return Exchanged::rejected(
                502,
                format!("the Swarm primary closed the connection (leader-proxy): {e}"),
            );
        }
        let Some(rest) = rest else {
            return Exchanged::tunnel(copy_both_ways(client, upstream).await);
        };
        let mut pending = BytesMut::new();
        let response = loop {
            let response = match exchange::read_response_head(upstream, pending, head_request).await
            {
                Ok(response) => response,
                Err(e) => {
                    return Exchanged::rejected(
                        502,
                        format!("the Swarm primary failed while answering (leader-proxy): {e}"),
                    )
                }
            };
            // An interim answer (100 Continue) goes on to the client; the real one follows.
            if (100..200).contains(&response.status) && response.status != 101 {
                if client.write_all(&response.bytes).await.is_err() {
                    return Exchanged::ended(0);
                }
                pending = response.extra;
                continue;
            }
            break response;
        };
        let mut down = response.bytes.len() as u64;
        if response.status == 101 {
            let started = async {
                client.write_all(&response.bytes).await?;
                client.write_all(&response.extra).await?;
                client.flush().await?;
                upstream.write_all(&rest).await?;
                upstream.flush().await
            };
            if started.await.is_err() {
                return Exchanged::ended(101);
            }
            let (up, copied) = copy_both_ways(client, upstream).await;
            let down = down + response.extra.len() as u64 + copied;
            return Exchanged::tunnel((rest.len() as u64 + up, down));
        }
        let status = response.status;
        if client.write_all(&response.bytes).await.is_err() {
            return Exchanged::ended(status);
        }
        match exchange::relay_body(response.extra, upstream, client, response.framing).await {
            Ok(body) => down += body,
            Err(e) => {
                debug!(error = %e, "relaying the answer to an upgrade request failed");
                return Exchanged::ended(status);
            }
        }
        if response.closes {
            let _ = client.shutdown().await;
            return Exchanged::ended(status).with_bytes(0, down);
        }
        Exchanged {
            logged: (status, 0, down),
            reject: None,
            next: Relayed::Http(rest),
        }
    }

    /// Dials the leader at `addr` within `--connect-timeout`, and with
    /// `--upstream-cert-path` makes the TLS handshake (also within `--connect-timeout`).
    /// A connection to the current leader for a question of the proxy's own (the policy's
    /// [`crate::policy::Inspect`]): waits and retries through the hold like a request.
    pub(super) async fn connect_leader(&self) -> Result<Upstreamed, HoldError> {
        let mut state = self.hold.start();
        loop {
            let target = self.hold.next_upstream(&mut state, None).await?;
            match self.dial(&target).await {
                Ok(stream) => {
                    state.mark_connected();
                    return Ok(stream);
                }
                Err(Dial::Tcp(e) | Dial::Tls(e)) => {
                    debug!(addr = %target.socket, error = %e, "policy: dial failed");
                    state.mark_failed();
                }
            }
        }
    }

    async fn dial(&self, upstream: &Upstream) -> Result<Upstreamed, Dial> {
        let connect = TcpStream::connect(upstream.socket);
        let tcp = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(Dial::Tcp(e)),
            Err(_) => return Err(Dial::Tcp(std::io::ErrorKind::TimedOut.into())),
        };
        super::tcp::tune(&tcp);
        let Some(tls) = &self.upstream_tls else {
            return Ok(Either::Left(tcp));
        };
        let name = crate::tls::server_name(&upstream.tls_name(), upstream.socket);
        match tokio::time::timeout(self.connect_timeout, tls.connect(name, tcp)).await {
            Ok(Ok(stream)) => Ok(Either::Right(stream)),
            Ok(Err(e)) => Err(Dial::Tls(e)),
            Err(_) => Err(Dial::Tls(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ))),
        }
    }

    async fn reject<C: AsyncWrite + Unpin>(&self, client: &mut C, message: &str) {
        self.reject_with(client, 503, message).await;
    }

    async fn reject_with<C: AsyncWrite + Unpin>(&self, client: &mut C, code: u16, message: &str) {
        write_docker_error(client, code, message).await;
        let _ = client.shutdown().await;
    }

    /// A held request whose client left: dropped, never sent (counted by the hold).
    fn abandon(&self, identity: &ClientIdentity, summary: &str, started: Instant) {
        info!(request = %summary, "dropping a held request: its client is gone");
        self.log(identity, summary, 0, None, started, (0, 0));
    }

    fn log(
        &self,
        identity: &ClientIdentity,
        request: &str,
        status: u16,
        upstream: Option<std::net::SocketAddr>,
        started: Instant,
        (bytes_up, bytes_down): (u64, u64),
    ) {
        self.metrics
            .requests
            .with_label_values(&[super::http::status_label(status), identity.listener_label()])
            .inc();
        let (client, via, cert) = log_fields(Some(identity));
        info!(
            target: "access",
            client = %client,
            via = %via,
            cert = %cert,
            request,
            status,
            upstream = %super::OrDash(upstream),
            duration_ms = started.elapsed().as_millis() as u64,
            bytes_up,
            bytes_down,
            "{}",
            if status == 101 || status == 0 {
                "hijacked request"
            } else {
                "upgrade request answered without 101"
            }
        );
    }
}

/// How a relayed `Upgrade` request ended, for the front.
pub enum Relayed {
    /// The connection is over.
    Closed,
    /// The leader answered without `101` and the answer was relayed whole: the connection
    /// goes on as HTTP, with these bytes (what the client sent after the request) first.
    Http(BytesMut),
}

/// What [`HijackRelay::exchange`] did: what to log, an error to answer, what comes next.
struct Exchanged {
    /// Status, bytes to the leader, bytes to the client.
    logged: (u16, u64, u64),
    reject: Option<(u16, String)>,
    next: Relayed,
}

impl Exchanged {
    /// The connection ends after `status` (0: nothing was answered).
    fn ended(status: u16) -> Self {
        Self {
            logged: (status, 0, 0),
            reject: None,
            next: Relayed::Closed,
        }
    }

    fn with_bytes(mut self, up: u64, down: u64) -> Self {
        self.logged.1 = up;
        self.logged.2 = down;
        self
    }

    fn rejected(code: u16, message: String) -> Self {
        Self {
            logged: (code, 0, 0),
            reject: Some((code, message)),
            next: Relayed::Closed,
        }
    }

    /// An upgraded connection relayed to its end, with the bytes copied each way.
    fn tunnel((up, down): (u64, u64)) -> Self {
        Self::ended(101).with_bytes(up, down)
    }
}

/// Copies bytes both ways until both directions ended or a socket broke: the bytes copied
/// to the leader and to the client (0 after an error).
async fn copy_both_ways<C, U>(client: &mut C, upstream: &mut U) -> (u64, u64)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::io::copy_bidirectional(client, upstream).await {
        Ok(counts) => counts,
        Err(e) => {
            debug!(error = %e, "hijacked connection ended with an error");
            (0, 0)
        }
    }
}

/// Copies exactly `n` bytes (the rest of a request body) from the client to the leader.
async fn copy_exactly<C, U>(client: &mut C, upstream: &mut U, n: u64) -> std::io::Result<()>
where
    C: AsyncRead + Unpin,
    U: AsyncWrite + Unpin,
{
    let copied = tokio::io::copy(&mut (&mut *client).take(n), upstream).await?;
    if copied < n {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Why a dial to the leader failed.
/// A connection to the leader: plain, or TLS under `--upstream-cert-path`.
pub(super) type Upstreamed =
    Either<TcpStream, crate::tls::TlsConn<tokio_rustls::client::TlsStream<TcpStream>>>;

enum Dial {
    Tcp(std::io::Error),
    Tls(std::io::Error),
}

/// The request line, for the access log.
fn request_line(head: &[u8]) -> String {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let shown = line
        .split(' ')
        .map(|part| super::redact::uri(part).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    shown.chars().take(200).collect()
}
