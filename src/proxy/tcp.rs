//! `--mode tcp`: L4 passthrough, for a load-balancer tier in front of managers that enforce
//! TLS themselves (the clients' TLS goes through untouched, end to end).
//!
//! The proxy sees bytes, not requests, so the leader is chosen per connection: a new
//! connection goes to the current leader; while none is reachable it waits like an L7
//! request ([`Hold`]: a new leader is taken at once, the same one re-dialled with backoff)
//! up to `--hold-timeout`, then it is closed (there is nobody to send an error to: the
//! client's TLS handshake, or its request, gets EOF). A connection that is relayed follows
//! `--on-leader-change drain|close` and `--drain-timeout` ([`Drain`]); when its leader dies
//! its socket breaks and the client side is closed at once.
//!
//! Bytes are copied both ways, each direction's EOF forwarded on its own (a TCP half-close
//! stays a half-close: `docker run -i` over end-to-end TLS sends `close_notify` inside the
//! stream, and the older CLIs' bare FIN, both of which dockerd understands). No timeout
//! applies to a relayed connection: dead peers are found by TCP keepalive on both sockets.
//!
//! Metrics: `leader_proxy_l4_connections_total{result}`, `leader_proxy_l4_open_connections`
//! and `leader_proxy_l4_bytes_total{direction}`, counted as bytes pass (one atomic add per
//! read or write, no lock), so long-lived connections show their traffic while they run.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::{debug, info};

use super::client_identity::{log_fields, ClientIdentity};
use super::drain::Drain;
use super::hold::Hold;
use crate::metrics::Metrics;

/// Sets what every relayed TCP socket gets: no Nagle delay (interactive sessions) and
/// keepalive probes (crate::keepalive), so a vanished peer ends the connection.
pub fn tune(tcp: &TcpStream) {
    let _ = tune_socket(&socket2::SockRef::from(tcp));
}

/// [`tune`] for any TCP socket, a listener included (its accepted sockets inherit both).
pub fn tune_socket(socket: &socket2::SockRef<'_>) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    socket.set_tcp_keepalive(&crate::keepalive::socket2())
}

/// Acknowledges what arrived on an upstream socket now, and leaves delayed-ACK ("pingpong")
/// mode, by setting `TCP_QUICKACK`. Called when a response head arrives on a pooled L7
/// upstream connection: a manager that writes its head and body in two writes without
/// `TCP_NODELAY` (Nagle) holds the body until the head is acknowledged, and Linux delays
/// that ACK by 40 ms on a connection it sees as interactive, which a reused connection is.
/// The option is not sticky (the kernel may enter pingpong mode again when the next request
/// is sent), hence once per response. docs/architecture.md#upstream-sockets.
///
/// `fd` must be an open TCP socket for the duration of the call: pingora's connection of
/// the request being served.
pub fn ack_now(fd: std::os::unix::io::RawFd) {
    // SAFETY: the caller's connection owns `fd` and keeps it open while it serves the
    // request this is called for; the borrow ends before this function returns.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let _ = socket2::SockRef::from(&fd).set_quickack(true);
}

/// Bytes read at once in each direction of an L4 connection: HAProxy's `bufsize`. tokio's
/// default of 8 KiB took twice the system calls for a 64 KiB answer; the cost is 16 KiB
/// more memory per L4 connection (docs/architecture.md, "The path of a request").
const RELAY_BUFFER: usize = 16 * 1024;

/// The L4 proxy, shared by every listener in `--mode tcp`.
pub struct L4Proxy {
    hold: Arc<Hold>,
    metrics: Arc<Metrics>,
    connect_timeout: Duration,
    drain: Arc<Drain>,
    /// The metric series, looked up once: no label lookup per connection or per read.
    proxied: IntCounter,
    refused: IntCounter,
    open: IntGauge,
    to_leader: IntCounter,
    to_client: IntCounter,
}

impl L4Proxy {
    pub fn new(
        hold: Arc<Hold>,
        metrics: Arc<Metrics>,
        connect_timeout: Duration,
        drain: Arc<Drain>,
    ) -> Self {
        Self {
            proxied: metrics.l4_connections.with_label_values(&["proxied"]),
            refused: metrics.l4_connections.with_label_values(&["refused"]),
            open: metrics.l4_open.clone(),
            to_leader: metrics.l4_bytes.with_label_values(&["to_leader"]),
            to_client: metrics.l4_bytes.with_label_values(&["to_client"]),
            hold,
            metrics,
            connect_timeout,
            drain,
        }
    }

    /// Relays one client connection to the leader until either side ends it (each
    /// direction's EOF forwarded on its own), a socket breaks, or the leader-change policy
    /// ends it. `identity` is who the client is, for the log.
    pub async fn serve<C>(&self, client: C, identity: &ClientIdentity)
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let started = Instant::now();
        let (peer, via, cert) = log_fields(Some(identity));
        let mut state = self.hold.start();
        let (mut upstream, addr) = loop {
            // Bytes, not requests: a half-closed client may still be reading (as an
            // attach's does), and a reset one left nothing to send, so a held connection is
            // not watched.
            let addr = match self.hold.next_upstream(&mut state, None).await {
                Ok(upstream) => upstream.socket,
                Err(e) => {
                    self.refused.inc();
                    info!(target: "access", client = %peer, via = %via, cert = %cert, error = %e,
                        duration_ms = started.elapsed().as_millis() as u64,
                        "connection closed without a leader");
                    return;
                }
            };
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    self.metrics.upstream_dials.with_label_values(&["ok"]).inc();
                    state.mark_connected();
                    break (stream, addr);
                }
                Ok(Err(e)) => debug!(%addr, error = %e, "l4: dial failed"),
                Err(_) => debug!(%addr, "l4: dial timed out"),
            }
            self.metrics
                .upstream_dials
                .with_label_values(&["failed"])
                .inc();
            state.mark_failed();
            self.metrics.retries.with_label_values(&["connect"]).inc();
        };
        tune(&upstream);
        self.proxied.inc();
        self.open.inc();
        let _open = OpenGuard(&self.open);
        let mut client = Counted::new(client, &self.to_leader, &self.to_client);
        let outcome = tokio::select! {
            copied = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, RELAY_BUFFER, RELAY_BUFFER) => match copied {
                Ok(_) => "closed",
                Err(e) => {
                    debug!(error = %e, upstream = %addr, "l4 connection ended with an error");
                    "broken"
                }
            },
            reason = self.drain.must_end(addr) => {
                info!(reason = reason.as_str(), client = %peer, upstream = %addr,
                    "ending an L4 connection to the old leader");
                // Dropping both streams closes both sockets.
                "ended by the leader-change policy"
            }
        };
        self.log(identity, addr, started, &client, outcome);
    }

    fn log<C>(
        &self,
        identity: &ClientIdentity,
        upstream: SocketAddr,
        started: Instant,
        client: &Counted<'_, C>,
        outcome: &str,
    ) {
        let (peer, via, cert) = log_fields(Some(identity));
        info!(
            target: "access",
            client = %peer,
            via = %via,
            cert = %cert,
            %upstream,
            duration_ms = started.elapsed().as_millis() as u64,
            bytes_up = client.read,
            bytes_down = client.written,
            outcome,
            "connection"
        );
    }
}

/// Keeps `leader_proxy_l4_open_connections` right however the relay ends.
struct OpenGuard<'a>(&'a IntGauge);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The client side of a relayed connection, counting bytes as they pass: read from the
/// client = to the leader, written to the client = from it.
struct Counted<'a, C> {
    inner: C,
    to_leader: &'a IntCounter,
    to_client: &'a IntCounter,
    read: u64,
    written: u64,
}

impl<'a, C> Counted<'a, C> {
    fn new(inner: C, to_leader: &'a IntCounter, to_client: &'a IntCounter) -> Self {
        Self {
            inner,
            to_leader,
            to_client,
            read: 0,
            written: 0,
        }
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Counted<'_, C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.read += n;
            self.to_leader.inc_by(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Counted<'_, C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.written += n as u64;
        self.to_client.inc_by(n as u64);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{LeaderAddr, LeaderEvent};
    use crate::proxy::drain::OnLeaderChange;
    use crate::router::Router;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn test_client() -> ClientIdentity {
        ClientIdentity::tcp("127.0.0.1:1".parse().unwrap())
    }

    fn proxy(router: &Arc<Router>, metrics: &Arc<Metrics>, hold_ms: u64) -> Arc<L4Proxy> {
        let hold = Arc::new(Hold::new(
            router.clone(),
            metrics.clone(),
            Duration::from_millis(hold_ms),
            10,
        ));
        let drain = Arc::new(Drain::new(
            router.clone(),
            OnLeaderChange::Close,
            Duration::ZERO,
        ));
        Arc::new(L4Proxy::new(
            hold,
            metrics.clone(),
            Duration::from_secs(1),
            drain,
        ))
    }

    /// An upstream that answers each connection with `hello`, then echoes what it reads
    /// until EOF, then writes `bye` (it sees the client's half-close and answers after it).
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    s.write_all(b"hello ").await.unwrap();
                    let mut buf = Vec::new();
                    s.read_to_end(&mut buf).await.unwrap();
                    s.write_all(&buf).await.unwrap();
                    s.write_all(b" bye").await.unwrap();
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn relays_half_close_and_counts_bytes() {
        let metrics = Arc::new(Metrics::new());
        let router = Arc::new(Router::new(crate::discovery::Scheme::Etcd, metrics.clone()));
        let up = echo_server().await;
        router
            .apply(LeaderEvent::Leader(
                LeaderAddr::parse(&up.to_string()).unwrap(),
            ))
            .await;
        let l4 = proxy(&router, &metrics, 1000);
        let (client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move { l4.serve(server, &test_client()).await });
        let (mut rd, mut wr) = tokio::io::split(client);
        wr.write_all(b"ping").await.unwrap();
        wr.shutdown().await.unwrap();
        let mut got = Vec::new();
        rd.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello ping bye");
        task.await.unwrap();
        assert_eq!(metrics.l4_bytes.with_label_values(&["to_leader"]).get(), 4);
        assert_eq!(metrics.l4_bytes.with_label_values(&["to_client"]).get(), 14);
        assert_eq!(
            metrics.l4_connections.with_label_values(&["proxied"]).get(),
            1
        );
        assert_eq!(metrics.l4_open.get(), 0);
    }

    #[tokio::test]
    async fn without_a_leader_the_connection_waits_then_closes() {
        let metrics = Arc::new(Metrics::new());
        let router = Arc::new(Router::new(crate::discovery::Scheme::Etcd, metrics.clone()));
        let l4 = proxy(&router, &metrics, 100);
        let (mut client, server) = tokio::io::duplex(1024);
        let started = Instant::now();
        let task = tokio::spawn(async move { l4.serve(server, &test_client()).await });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(100));
        task.await.unwrap();
        assert_eq!(
            metrics.l4_connections.with_label_values(&["refused"]).get(),
            1
        );

        // A leader named while the connection waits is taken at once.
        let up = echo_server().await;
        let l4 = proxy(&router, &metrics, 5000);
        let (mut client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move { l4.serve(server, &test_client()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        router
            .apply(LeaderEvent::Leader(
                LeaderAddr::parse(&up.to_string()).unwrap(),
            ))
            .await;
        let mut hello = [0u8; 6];
        client.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello ");
        drop(client);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn close_policy_ends_the_connection_at_a_change() {
        let metrics = Arc::new(Metrics::new());
        let router = Arc::new(Router::new(crate::discovery::Scheme::Etcd, metrics.clone()));
        let (a, b) = (echo_server().await, echo_server().await);
        router
            .apply(LeaderEvent::Leader(
                LeaderAddr::parse(&a.to_string()).unwrap(),
            ))
            .await;
        let l4 = proxy(&router, &metrics, 1000);
        let (mut client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move { l4.serve(server, &test_client()).await });
        let mut hello = [0u8; 6];
        client.read_exact(&mut hello).await.unwrap();
        router
            .apply(LeaderEvent::Leader(
                LeaderAddr::parse(&b.to_string()).unwrap(),
            ))
            .await;
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("ended at the change")
            .unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }
}
