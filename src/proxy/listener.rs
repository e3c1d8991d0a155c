//! Client listeners: accepting connections and handing them to the [`Front`], and the
//! graceful stop (stop accepting, let what runs finish).

use std::net::SocketAddr;
use std::sync::Arc;

use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::server::ShutdownWatch;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::front::Front;

/// Binds a TCP listener and logs `Listening on ADDR` with the bound address (port 0 = any).
pub async fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    info!("Listening on {}", listener.local_addr()?);
    Ok(listener)
}

/// Accepts connections until `shutdown` turns true; each connection runs as a task in
/// `connections`, so shutdown can wait for them.
pub async fn serve_tcp(
    listener: TcpListener,
    front: Arc<Front>,
    connections: TaskTracker,
    mut shutdown: ShutdownWatch,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((tcp, _peer)) => {
                let _ = tcp.set_nodelay(true);
                let front = front.clone();
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    front.serve(L4Stream::from(tcp), shutdown).await;
                });
            }
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
