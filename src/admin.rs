//! The admin listener: `/leader`, `/leader/history`, `/healthz`, `/readyz`, `/metrics`.
//!
//! It only reads the [`Router`] and the [`Metrics`]; it never changes anything, so it can be
//! exposed to a load balancer's health checks and to Prometheus.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::metrics::Metrics;
use crate::proxy::hold::Hold;
use crate::router::Router;

/// How long a client may take to send a request head. The admin API faces load balancers
/// and Prometheus, which send theirs at once; a client that trickles one (slowloris) is cut.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one admin connection may stay open, keep-alive included: every answer here is
/// small, and a scraper that reconnects once a minute costs nothing.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Admin connections open at once. Beyond this a new connection is closed at once, so a
/// flood of them cannot take the file descriptors the proxy needs for clients.
const MAX_CONNECTIONS: usize = 128;

pub struct Admin {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    /// For `--hold-timeout` as it is now (SIGHUP may change it): `/readyz` uses it.
    hold: Arc<Hold>,
    shutting_down: AtomicBool,
}

impl Admin {
    pub fn new(router: Arc<Router>, metrics: Arc<Metrics>, hold: Arc<Hold>) -> Self {
        Self {
            router,
            metrics,
            hold,
            shutting_down: AtomicBool::new(false),
        }
    }

    /// From now on `/readyz` answers 503, so load balancers move traffic away while
    /// running requests finish.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
        let listener = TcpListener::bind(addr).await?;
        info!("Admin listening on {}", listener.local_addr()?);
        Ok(listener)
    }

    /// Serves the admin API until `stop` turns true (a new process took the listener over
    /// with `--upgrade` and accepts on the same socket): then it stops accepting, and the
    /// connections open finish on their own.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.wait_for(|stop| *stop) => return,
            };
            let Ok((tcp, peer)) = accepted else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                debug!(%peer, "admin: {MAX_CONNECTIONS} connections open; closing a new one");
                continue;
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.answer(&req)) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(tcp), service);
                match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                    Ok(Err(e)) => debug!(error = %e, "admin connection ended"),
                    Ok(Ok(())) => {}
                    Err(_) => debug!(%peer, "admin connection open too long; closed"),
                }
                drop(permit);
            });
        }
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        }
        match req.uri().path() {
            "/leader" => self.leader(),
            "/leader/history" => self.history(),
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if self.shutting_down.load(Ordering::Acquire) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                } else if self.router.is_ready(self.hold.timeout()) {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no leader known for longer than --hold-timeout\n",
                    )
                }
            }
            "/metrics" => Response::builder()
                .header("Content-Type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(self.metrics.render())))
                .unwrap_or_default(),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    fn leader(&self) -> Response<Full<Bytes>> {
        let snapshot = self.router.current();
        let body = serde_json::json!({
            "leader": snapshot.leader.as_ref().map(|u| u.name.to_string()),
            "state": snapshot.state.as_str(),
            "since": rfc3339(snapshot.since),
            "held": self.metrics.held.get(),
            "changes": snapshot.changes,
            "source": self.router.source().as_str(),
            "disagreement": snapshot.disagreement.as_deref(),
        });
        json(body)
    }

    /// The last leader changes, oldest first, each with a reason from the fixed list of
    /// `crate::history::Reason` (docs/cli.md, "status").
    fn history(&self) -> Response<Full<Bytes>> {
        let changes: Vec<serde_json::Value> = self
            .router
            .history()
            .into_iter()
            .map(|change| {
                serde_json::json!({
                    "time": rfc3339(change.time),
                    "from": change.from,
                    "to": change.to,
                    "reason": change.reason.as_str(),
                    "detail": change.detail,
                })
            })
            .collect();
        json(serde_json::json!({ "changes": changes }))
    }
}

fn rfc3339(at: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn json(body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}
