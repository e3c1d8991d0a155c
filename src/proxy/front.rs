//! The front: the first to see every request on a client connection.
//!
//! It reads each request head itself. A head carrying `Upgrade` goes to the
//! [`HijackRelay`]; any other is put back into the stream (pingora's l4 `Stream::rewind`, or
//! [`TlsConn::rewind`] for a TLS client) and handed to pingora's HTTP proxy, which serves it
//! and hands the connection back for the next request, so the front inspects every head of
//! a keep-alive connection. Plain and TLS connections take the same path ([`ClientConn`]).
//!
//! Timeouts: [`KEEPALIVE_IDLE`] applies only while waiting for a request head. Once a request
//! runs there is none: pingora's downstream read timeout (60 s by default, applied to request
//! bodies) is turned off, and the upstream read/write/idle timeouts are unset
//! ([`super::http::DockerApi`]), so a `logs -f`, `events` or attach that is silent for hours
//! is never cut, and neither is an upload that pauses. Dead peers are found by TCP keepalive.
//! What ends a running request is its end, a broken socket, or the leader-change policy
//! ([`super::drain`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pingora_core::apps::HttpServerApp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::IO;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tracing::{debug, info, warn};

use super::client_identity::{self, ClientIdentity};
use super::coalesce::Coalesced;
use super::drain::{Drain, RequestUpstream};
use super::gate::{self, Gated};
use super::head::{read_head, Head};
use super::hijack::{HijackRelay, Relayed};
use super::http::DockerApi;
use super::inspect::LeaderInspect;
use crate::metrics::Metrics;
use crate::policy::ListenerPolicy;
use crate::tls::TlsConn;

/// How long a client connection may sit idle between requests (pingora's own default), and
/// how long the head of a request may take to arrive: the longest of the proxy's fixed
/// timeouts.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// How long the clean close of an idle connection at the stop may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Ends an idle keep-alive connection at the stop (or the hand-over of an upgrade): a TLS
/// client gets `close_notify` before the FIN, a clean end rather than a truncation.
async fn close_idle<S: ClientConn>(mut stream: S) {
    // pingora's `Shutdown` of the connection: `close_notify` for TLS, then the FIN.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
}

/// A client connection the front can serve: pingora takes it as its `IO`, and the request
/// head the front read can be put back in front of what follows.
pub trait ClientConn: IO + Sized + 'static {
    fn put_back(&mut self, head: BytesMut);
}

/// TCP and unix connections.
impl ClientConn for L4Stream {
    fn put_back(&mut self, head: BytesMut) {
        self.rewind(&head);
    }
}

/// TLS connections.
impl<S: 'static> ClientConn for TlsConn<S>
where
    TlsConn<S>: IO,
{
    fn put_back(&mut self, head: BytesMut) {
        self.rewind(head);
    }
}

pub struct Front {
    api: Arc<HttpProxy<DockerApi>>,
    relay: HijackRelay,
    drain: Arc<Drain>,
    metrics: Arc<Metrics>,
}

impl Front {
    pub fn new(
        api: HttpProxy<DockerApi>,
        relay: HijackRelay,
        drain: Arc<Drain>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            api: Arc::new(api),
            relay,
            drain,
            metrics,
        }
    }

    /// Serves a client connection until it closes, goes idle, or the proxy shuts down
    /// (a request already running is finished first), or the leader-change policy ends the
    /// request running on it.
    /// `client` is who the connection is, for the access log of each request on it;
    /// `policy` is its listener's access policy, applied to every request head
    /// ([`gate`]).
    pub async fn serve<S: ClientConn>(
        &self,
        mut stream: S,
        client: ClientIdentity,
        policy: &ListenerPolicy,
        mut shutdown: ShutdownWatch,
    ) {
        let client = Arc::new(client);
        let upstream = RequestUpstream::default();
        // The first request is served even if the stop began meanwhile: the client sent it
        // to a listener that accepted its connection (during an upgrade, the old process's
        // accept just before the hand-over). Only an idle keep-alive connection is closed at
        // the stop. The first head is bounded by KEEPALIVE_IDLE, and the stop by
        // --shutdown-grace, like any request.
        let mut first = true;
        loop {
            if !first && *shutdown.borrow() {
                return close_idle(stream).await;
            }
            let reading = tokio::time::timeout(KEEPALIVE_IDLE, read_head(&mut stream));
            let head = if first {
                Some(reading.await)
            } else {
                tokio::select! {
                    head = reading => Some(head),
                    _ = shutdown.changed() => None,
                }
            };
            let Some(head) = head else {
                return close_idle(stream).await;
            };
            first = false;
            let (mut bytes, upgrade) = match head {
                Ok(Ok(Head::Request { bytes, upgrade })) => (bytes, upgrade),
                Ok(Ok(Head::Closed)) | Err(_) => return,
                Ok(Err(e)) => {
                    if let Some(code) = e.status() {
                        let message = format!("{e} (leader-proxy)");
                        super::write_docker_error(&mut stream, code, &message).await;
                    }
                    debug!(error = %e, "dropping client connection");
                    return;
                }
            };
            // Empty lines before the request line are to be ignored (RFC 9112, 2.2): they go
            // no further, so the hop marker and the hijack relay parse the head from its
            // first byte (pingora would skip them too).
            let blank = bytes
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            let _ = bytes.split_to(blank);
            // The policy sees every head, before the hop marker, the hijack relay and
            // pingora, and what goes on is what it passed (docs/policy.md).
            if let Some(policy) = policy.current().filter(|p| !p.is_empty()) {
                let inspect = LeaderInspect { relay: &self.relay };
                match gate::apply(
                    &policy,
                    &mut stream,
                    bytes,
                    &client,
                    &inspect,
                    &self.metrics,
                )
                .await
                {
                    Gated::Pass(passed) => bytes = passed,
                    Gated::Answered => return,
                }
            }
            let Ok(bytes) = super::hop::mark(bytes) else {
                warn!("a request came back through this proxy: answering 508");
                let message = "the request came back through this proxy (a loop: its leader \
                               leads back to it) (leader-proxy)";
                super::write_docker_error(&mut stream, 508, message).await;
                return;
            };
            if upgrade {
                match self.relay.relay(&mut stream, bytes, &client).await {
                    Relayed::Closed => return,
                    // Not upgraded: the next request is read like any other.
                    Relayed::Http(rest) => {
                        if !rest.is_empty() {
                            stream.put_back(rest);
                        }
                        continue;
                    }
                }
            }
            stream.put_back(bytes);
            let mut session = ServerSession::new_http1(Box::new(Coalesced::new(stream)));
            session.set_keepalive(Some(KEEPALIVE_IDLE.as_secs()));
            session.set_read_timeout(None);
            upstream.reset();
            let serving = self.api.process_new_http(session, &shutdown);
            let served = tokio::select! {
                served = upstream.scope(client_identity::scope(client.clone(), serving)) => served,
                reason = self.drain.must_end_request(&upstream) => {
                    // Dropping pingora's future closes the client and the upstream socket.
                    info!(reason = reason.as_str(), client = %client.peer,
                        "ending a request to the old leader");
                    return;
                }
            };
            let Some(reused) = served else {
                return;
            };
            let (io, _settings) = reused.consume();
            stream = match io.into_any().downcast::<Coalesced<S>>() {
                Ok(stream) => stream.into_inner(),
                // What was handed to the proxy comes back; anything else cannot happen.
                Err(_) => return,
            };
        }
    }
}
