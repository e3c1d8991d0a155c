//! The admin listener: `/leader`, `/healthz`, `/readyz`, `/metrics`.
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
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::metrics::Metrics;
use crate::router::Router;

pub struct Admin {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    hold_timeout: Duration,
    shutting_down: AtomicBool,
}

impl Admin {
    pub fn new(router: Arc<Router>, metrics: Arc<Metrics>, hold_timeout: Duration) -> Self {
        Self {
            router,
            metrics,
            hold_timeout,
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

    /// Serves the admin API until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.answer(&req)) }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await
                {
                    debug!(error = %e, "admin connection ended");
                }
            });
        }
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        }
        match req.uri().path() {
            "/leader" => self.leader(),
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if self.shutting_down.load(Ordering::Acquire) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                } else if self.router.is_ready(self.hold_timeout) {
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
        let since = time::OffsetDateTime::from(snapshot.since)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let body = serde_json::json!({
            "leader": snapshot.leader.as_ref().map(|u| u.name.to_string()),
            "state": snapshot.state.as_str(),
            "since": since,
            "changes": snapshot.changes,
            "source": self.router.source().as_str(),
        });
        Response::builder()
            .header("Content-Type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap_or_default()
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}
