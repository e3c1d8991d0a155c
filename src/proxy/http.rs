//! The L7 path: pingora's HTTP proxy with leader-proxy's choice of upstream, retry rules and
//! Docker-style errors. Requests carrying `Upgrade` never come here (see [`super::front`]).
//!
//! With `--upstream-cert-path` the leader is spoken to over TLS by pingora's own connector
//! (its `rustls` backend, ring, no OpenSSL), so upstream connections stay pooled and reused
//! as in clear text. The CA and the client certificate go with each peer (pingora builds the
//! rustls configuration of a new connection from them); the peer's SNI is the leader's host
//! as the election named it, which is what the certificate is checked against (an IP:
//! the IP SANs); the pool key carries the certificates' generation, so nothing made with
//! certificates from before a SIGHUP reload is reused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::Method;
use pingora_core::protocols::l4::ext::TcpKeepalive;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tracing::info;

use super::client_identity::{self, ClientIdentity};
use super::hold::{Client, Hold, HoldError, HoldState};
use super::{docker_error_body, OrDash};
use crate::metrics::Metrics;
use crate::tls::UpstreamTls;

/// How long an idle upstream TCP connection waits before the kernel probes it: long streams
/// (`logs -f`, `events`) to a manager whose host vanished must end, not hang.
pub fn upstream_keepalive() -> TcpKeepalive {
    TcpKeepalive {
        idle: crate::keepalive::IDLE,
        interval: crate::keepalive::INTERVAL,
        count: crate::keepalive::RETRIES as usize,
        #[cfg(target_os = "linux")]
        user_timeout: Duration::ZERO,
    }
}

/// The [`ProxyHttp`] of leader-proxy: where requests go and what happens when that fails.
pub struct DockerApi {
    hold: Arc<Hold>,
    metrics: Arc<Metrics>,
    connect_timeout: Duration,
    /// `--upstream-cert-path`: TLS to the leader.
    upstream_tls: Option<Arc<UpstreamTls>>,
    /// `swarm://`: a 503 from the leader to an idempotent request means "no leader".
    swarm: bool,
}

/// Per-request state.
pub struct RequestCtx {
    started: Instant,
    hold: HoldState,
    /// A written idempotent request is sent again at most once.
    written_retry_used: bool,
    /// Set by a hold that ended without an upstream: the message for the 503.
    hold_error: Option<String>,
    /// The client left while the request was held: it was dropped, nothing is answered.
    abandoned: bool,
    /// A failed TLS handshake with the leader was warned about (once per request).
    tls_warned: bool,
    /// `swarm://`: the leader answered this (idempotent) request 503; it is held and sent
    /// again, and a hold that ends says so.
    no_leader: Option<std::net::SocketAddr>,
    /// The upstream socket this request runs on (set on each connection pingora picks).
    upstream_fd: Option<std::os::unix::io::RawFd>,
    /// Who sent the request (the front's [`client_identity::scope`]), for the access log.
    client: Option<Arc<ClientIdentity>>,
}

impl DockerApi {
    pub fn new(
        hold: Arc<Hold>,
        metrics: Arc<Metrics>,
        connect_timeout: Duration,
        upstream_tls: Option<Arc<UpstreamTls>>,
    ) -> Self {
        let swarm = hold.router().source() == crate::discovery::Scheme::Swarm;
        Self {
            hold,
            metrics,
            connect_timeout,
            upstream_tls,
            swarm,
        }
    }
}

impl DockerApi {
    /// A held request whose client left: logged once, dropped (the error is not retried
    /// and answers nothing).
    fn abandon(&self, session: &Session, ctx: &mut RequestCtx) -> Box<Error> {
        ctx.abandoned = true;
        let req = session.req_header();
        info!(
            method = %req.method,
            path = %super::redact::uri(req.uri.path_and_query().map_or("/", |pq| pq.as_str())),
            "dropping a held request: its client is gone"
        );
        Error::explain(
            ErrorType::ConnectionClosed,
            HoldError::ClientGone.to_string(),
        )
        .into_down()
    }
}

/// The methods docs/failover.md#retries calls idempotent: only these are ever sent twice
/// after being written (PUT and DELETE are idempotent in HTTP but not in what Docker does
/// with them).
fn may_resend(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

#[async_trait]
impl ProxyHttp for DockerApi {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            hold: self.hold.start(),
            written_retry_used: false,
            hold_error: None,
            abandoned: false,
            tls_warned: false,
            no_leader: None,
            upstream_fd: None,
            client: client_identity::current(),
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // Requests carrying `Upgrade` go to the hijack relay: a client that closes its side
        // here is gone.
        let client = session.downstream_session.stream().map(|stream| Client {
            fd: stream.id(),
            upgrade: false,
        });
        let upstream = match self.hold.next_upstream(&mut ctx.hold, client).await {
            Ok(upstream) => upstream,
            Err(HoldError::ClientGone) => return Err(self.abandon(session, ctx)),
            Err(e) => {
                let message = match ctx.no_leader {
                    Some(addr) => format!(
                        "the swarm has no leader: {addr} answered 503 until the hold ended \
                         (leader-proxy --hold-timeout)"
                    ),
                    None => e.to_string(),
                };
                ctx.hold_error = Some(message.clone());
                return Err(Error::explain(ErrorType::HTTPStatus(503), message));
            }
        };
        // For --on-leader-change: the front ends this request if its upstream is replaced.
        let addr = upstream.socket;
        super::drain::record_upstream(addr);
        let mut peer = match &self.upstream_tls {
            None => HttpPeer::new(addr, false, String::new()),
            Some(tls) => {
                // Never empty: pingora skips verification for a peer without SNI.
                let mut peer = HttpPeer::new(addr, true, upstream.tls_name());
                let material = tls.current();
                peer.options.ca = Some(material.ca.clone());
                peer.client_cert_key = material.cert_key.clone();
                peer.group_key = material.generation;
                peer
            }
        };
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.tcp_keepalive = Some(upstream_keepalive());
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was written: any method may go to the next reachable leader.
        if *e.etype() == ErrorType::TLSHandshakeFailure && !ctx.tls_warned {
            ctx.tls_warned = true;
            tracing::warn!(upstream = %peer._address, error = %e,
                "TLS handshake with the leader failed (--upstream-cert-path); retrying until \
                 --hold-timeout");
        }
        ctx.hold.mark_failed();
        self.metrics
            .upstream_dials
            .with_label_values(&["failed"])
            .inc();
        self.metrics.retries.with_label_values(&["connect"]).inc();
        e.set_retry(true);
        e
    }

    async fn connected_to_upstream(
        &self,
        session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_fd = Some(fd);
        if !reused {
            self.metrics.upstream_dials.with_label_values(&["ok"]).inc();
        }
        // A pooled connection counts too: the leader served it, and if it is dead after all
        // the request fails and marks the leader again.
        ctx.hold.mark_connected();
        // The client may have left during the dial: the request is not written.
        if self.hold.client_left(&mut ctx.hold) {
            return Err(self.abandon(session, ctx));
        }
        Ok(())
    }

    /// Docker swarm mode: during an election, and while a new leader settles, the leader
    /// answers 503 ("The swarm does not have a leader"). For a GET/HEAD/OPTIONS that is a
    /// request nobody executed: hold it like one whose leader is unreachable (re-sent with
    /// backoff, or to the next leader at once) instead of passing the 503 on. Anything else
    /// gets the 503: the client decides. Only the status is seen here (the body would come
    /// after the head was sent on), and any 503 of a swarm manager means it cannot serve
    /// cluster state now.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The head is in; a body the manager held back behind it (Nagle) must not wait for
        // our delayed ACK.
        if let Some(fd) = ctx.upstream_fd {
            super::tcp::ack_now(fd);
        }
        if self.swarm
            && upstream_response.status == http::StatusCode::SERVICE_UNAVAILABLE
            && may_resend(&session.req_header().method)
        {
            ctx.no_leader = ctx.hold.upstream();
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                "the swarm manager answered 503 (no leader)",
            )
            .into_up());
        }
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("upstream {}", peer._address));
        if ctx.no_leader.is_some() && *e.etype() == ErrorType::HTTPStatus(503) {
            // Not executed: wait for a leader (or this one to settle) and send it again.
            ctx.hold.mark_failed();
            self.metrics.retries.with_label_values(&["no_leader"]).inc();
            e.set_retry(true);
            return e;
        }
        let resend = e.esource() == &ErrorSource::Upstream
            && may_resend(&session.req_header().method)
            && !ctx.written_retry_used
            && session.response_written().is_none()
            && !session.as_ref().retry_buffer_truncated();
        if resend {
            ctx.written_retry_used = true;
            // Not at once to the same leader: one that just died may still take a connection
            // into its backlog and reset it. Back off (or take the next leader) as after a
            // failed dial.
            ctx.hold.mark_failed();
            self.metrics
                .retries
                .with_label_values(&["idempotent"])
                .inc();
        }
        e.set_retry(resend);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (code, message) = match (e.etype(), e.esource()) {
            (ErrorType::HTTPStatus(code), _) => (
                *code,
                ctx.hold_error
                    .take()
                    .unwrap_or_else(|| format!("leader-proxy: {e}")),
            ),
            (_, ErrorSource::Upstream) => (
                502,
                format!("the Swarm primary failed while answering (leader-proxy): {e}"),
            ),
            (
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
                ErrorSource::Downstream,
            ) => (0, String::new()),
            (_, ErrorSource::Downstream) => (400, format!("bad request (leader-proxy): {e}")),
            _ => (500, format!("leader-proxy internal error: {e}")),
        };
        if code > 0 {
            let body = docker_error_body(&message);
            if let Ok(mut resp) = ResponseHeader::build(code, Some(3)) {
                // The header values are static and valid; a failure here cannot happen.
                let _ = resp.insert_header("Content-Type", "application/json");
                let _ = resp.insert_header("Content-Length", body.len());
                let _ = session.write_error_response(resp, body).await;
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        _error: &Error,
        _warn_context: pingora_proxy::ProxyWarnLogContext,
    ) -> bool {
        // Retries are part of holding; the access log line and the retry metric tell them.
        true
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _error: &Error) -> bool {
        // A hold that timed out is answered with 503 and logged by `logging`; a request
        // dropped because its client left is logged once, when it is dropped.
        ctx.hold_error.is_some() || ctx.abandoned
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        self.metrics
            .requests
            .with_label_values(&[
                status_label(status),
                ctx.client.as_ref().map_or("-", |c| c.listener_label()),
            ])
            .inc();
        let req = session.req_header();
        let (client, via, cert) = client_identity::log_fields(ctx.client.as_deref());
        info!(
            target: "access",
            client = %client,
            via = %via,
            cert = %cert,
            method = %req.method,
            // Origin-form, as Docker clients send it: no copy of the URI per request.
            path = %super::redact::uri(req.uri.path_and_query().map_or("/", |pq| pq.as_str())),
            status,
            upstream = %OrDash(ctx.hold.upstream()),
            duration_ms = ctx.started.elapsed().as_millis() as u64,
            error = %OrDash(e),
            "request"
        );
    }
}

/// Status codes as static label values: no allocation per request.
pub fn status_label(status: u16) -> &'static str {
    match status {
        0 => "0",
        101 => "101",
        200 => "200",
        201 => "201",
        204 => "204",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        409 => "409",
        500 => "500",
        502 => "502",
        503 => "503",
        s if s < 200 => "1xx",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}
