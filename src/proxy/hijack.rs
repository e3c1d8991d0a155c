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
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tracing::{debug, info, warn};

use super::client_identity::{log_fields, ClientIdentity};
use super::drain::Drain;
use super::hold::Hold;
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

    /// Relays one upgraded request; `head` is everything read from the client so far, and
    /// `identity` who the client is (for the access log).
    pub async fn relay<C>(&self, client: &mut C, head: BytesMut, identity: &ClientIdentity)
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let started = Instant::now();
        let summary = request_line(&head);
        let mut state = self.hold.start();
        // A TLS failure is warned about once per request; the retries that follow (the
        // manager may be getting new certificates) are debug.
        let mut tls_warned = false;
        let mut upstream = loop {
            let target = match self.hold.next_upstream(&mut state).await {
                Ok(upstream) => upstream,
                Err(e) => {
                    self.reject(client, &e.to_string()).await;
                    self.log(identity, &summary, 503, None, started, (0, 0));
                    return;
                }
            };
            let addr = target.socket;
            match self.dial(&target).await {
                Ok(stream) => break stream,
                Err(Dial::Tcp(e)) => debug!(%addr, error = %e, "hijack: dial failed"),
                Err(Dial::Tls(e)) if !tls_warned => {
                    tls_warned = true;
                    warn!(%addr, error = %e, "hijack: TLS handshake with the leader failed \
                        (--upstream-cert-path); retrying until --hold-timeout");
                }
                Err(Dial::Tls(e)) => debug!(%addr, error = %e, "hijack: TLS handshake failed"),
            }
            state.mark_failed();
            self.metrics.retries.with_label_values(&["connect"]).inc();
        };
        let upstream_addr = state.upstream();
        // The flush pushes out what TLS may still hold (a no-op on plain TCP).
        let written = match upstream.write_all(&head).await {
            Ok(()) => upstream.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            // Nothing can be known about whether the leader saw the request: never resend.
            self.reject_with(
                client,
                502,
                &format!("the Swarm primary closed the connection (leader-proxy): {e}"),
            )
            .await;
            self.log(identity, &summary, 502, upstream_addr, started, (0, 0));
            return;
        }
        let Some(addr) = upstream_addr else {
            // `next_upstream` returned an address, so the state holds it.
            return;
        };
        let copied = tokio::select! {
            copied = tokio::io::copy_bidirectional(client, &mut upstream) => copied,
            reason = self.drain.must_end(addr) => {
                info!(reason = reason.as_str(), request = %summary, upstream = %addr,
                    "ending a hijacked connection to the old leader");
                // Both sockets close: dropping `upstream`, and the client's here.
                let _ = client.shutdown().await;
                Err(std::io::Error::other(reason.as_str()))
            }
        };
        let (up, down) = match copied {
            Ok(counts) => counts,
            Err(e) => {
                debug!(error = %e, "hijacked connection ended with an error");
                (0, 0)
            }
        };
        self.log(identity, &summary, 101, upstream_addr, started, (up, down));
    }

    /// Dials the leader at `addr` within `--connect-timeout`, and with
    /// `--upstream-cert-path` makes the TLS handshake (also within `--connect-timeout`).
    async fn dial(
        &self,
        upstream: &Upstream,
    ) -> Result<
        Either<TcpStream, crate::tls::TlsConn<tokio_rustls::client::TlsStream<TcpStream>>>,
        Dial,
    > {
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
            .with_label_values(&[super::http::status_label(status)])
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
            "hijacked request"
        );
    }
}

/// Why a dial to the leader failed.
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
