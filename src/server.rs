//! Composes the services of one leader-proxy process and runs them until SIGTERM/SIGINT:
//! the leader source feeding the router, the client listeners, the admin listener.

use std::sync::Arc;

use anyhow::Context;
use pingora_core::server::configuration::ServerConf;
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::Admin;
use crate::config::{ListenAddr, Settings};
use crate::discovery::LeaderSource;
use crate::metrics::Metrics;
use crate::proxy::drain::Drain;
use crate::proxy::front::Front;
use crate::proxy::hijack::HijackRelay;
use crate::proxy::hold::Hold;
use crate::proxy::http::DockerApi;
use crate::proxy::listener::{bind_tcp, bind_unix, serve_tcp, serve_unix};
use crate::router::Router;

/// Runs the proxy described by `settings`, following `source`, until it is told to stop.
pub async fn run(settings: Settings, source: Box<dyn LeaderSource>) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let router = Arc::new(Router::new(
        settings.discovery.scheme().as_str(),
        metrics.clone(),
    ));

    let (events_tx, events_rx) = mpsc::channel(64);
    tokio::spawn(source.run(events_tx));
    tokio::spawn({
        let router = router.clone();
        async move { router.follow(events_rx).await }
    });

    let hold = Arc::new(Hold::new(
        router.clone(),
        metrics.clone(),
        settings.hold_timeout,
        settings.max_held,
    ));
    let drain = Arc::new(Drain::new(
        router.clone(),
        settings.on_leader_change,
        settings.drain_timeout,
    ));
    let front = Arc::new(Front::new(
        pingora_proxy::http_proxy(
            &Arc::new(pingora_conf()),
            DockerApi::new(hold.clone(), metrics.clone(), settings.connect_timeout),
        ),
        HijackRelay::new(
            hold,
            metrics.clone(),
            settings.connect_timeout,
            drain.clone(),
        ),
        drain,
    ));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let connections = TaskTracker::new();
    let mut listeners = Vec::new();
    for listen in &settings.listen {
        match listen {
            ListenAddr::Tcp(addr) => {
                let listener = bind_tcp(*addr)
                    .await
                    .with_context(|| format!("--listen {addr}"))?;
                listeners.push(tokio::spawn(serve_tcp(
                    listener,
                    front.clone(),
                    connections.clone(),
                    shutdown_rx.clone(),
                )));
            }
            ListenAddr::Unix(path) => {
                // Bound here, served (and its file removed at the end) by `serve_unix`; if
                // a later listener fails, dropping it removes the file again.
                let socket = bind_unix(path, settings.socket_mode, settings.socket_group)
                    .with_context(|| format!("--listen {listen}"))?;
                listeners.push(tokio::spawn(serve_unix(
                    socket,
                    front.clone(),
                    connections.clone(),
                    shutdown_rx.clone(),
                )));
            }
        }
    }

    let admin = Arc::new(Admin::new(router.clone(), metrics, settings.hold_timeout));
    if let Some(addr) = settings.admin {
        let listener = Admin::bind(addr)
            .await
            .with_context(|| format!("--admin {addr}"))?;
        tokio::spawn(admin.clone().serve(listener));
    }

    let signal = stop_signal().await?;
    info!(
        "{signal} received: no new connections; letting running requests finish (up to {:?})",
        settings.shutdown_grace
    );
    admin.begin_shutdown();
    let _ = shutdown_tx.send(true);
    for listener in listeners {
        let _ = listener.await;
    }
    connections.close();
    if tokio::time::timeout(settings.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        warn!(
            open = connections.len(),
            "--shutdown-grace elapsed; closing the connections still open"
        );
    }
    info!("stopped");
    Ok(())
}

/// pingora's settings for the L7 path. Retries are bounded by leader-proxy's own hold
/// deadline and retry rules, not by a count, so pingora's count is effectively unlimited.
fn pingora_conf() -> ServerConf {
    ServerConf {
        max_retries: usize::MAX,
        ..ServerConf::default()
    }
}

async fn stop_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
