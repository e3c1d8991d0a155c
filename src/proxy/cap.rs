//! `--max-connections`: how many client connections are served at once, over all client
//! listeners. Beyond it a new client is answered at once and closed ([`refuse_http`] in
//! `--mode http`, over TLS on a TLS listener; in `--mode tcp`, which has no protocol to
//! answer in, closed without a byte), so the file descriptors the store, the managers and
//! the admin API need stay free (see [`crate::limits`]). Established connections are not
//! touched.
//!
//! Metrics: `leader_proxy_client_connections` (open now) and
//! `leader_proxy_client_connections_refused_total`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use crate::metrics::Metrics;

/// How long a refused client may take to read the 503 and hang up, before its socket is
/// closed anyway (closing with its request unread could reset the answer away).
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

pub struct ConnectionCap {
    max: usize,
    /// Set while new clients are being refused: the log says so once per episode, not once
    /// per refused client (a flood would flood the log too).
    full: AtomicBool,
    open: Arc<Semaphore>,
    gauge: IntGauge,
    refused: IntCounter,
}

/// A client connection's place under the cap, given back when it is dropped.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl ConnectionCap {
    pub fn new(max: usize, metrics: &Metrics) -> Self {
        Self {
            max,
            full: AtomicBool::new(false),
            open: Arc::new(Semaphore::new(max)),
            gauge: metrics.client_connections.clone(),
            refused: metrics.client_connections_refused.clone(),
        }
    }

    /// A place for a new connection, or `None` (counted as refused) when all are taken.
    pub fn admit(&self) -> Option<Admitted> {
        match self.open.clone().try_acquire_owned() {
            Ok(permit) => {
                // A load first: no write to the shared flag per connection in normal times.
                if self.full.load(Ordering::Relaxed) && self.full.swap(false, Ordering::Relaxed) {
                    info!("below --max-connections again: accepting new clients");
                }
                self.gauge.inc();
                Some(Admitted {
                    _permit: permit,
                    gauge: self.gauge.clone(),
                })
            }
            Err(_) => {
                if !self.full.swap(true, Ordering::Relaxed) {
                    warn!(
                        "--max-connections reached ({} client connections open): refusing \
                         new clients until some close",
                        self.max
                    );
                }
                self.refused.inc();
                None
            }
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// Answers a client beyond the cap with a Docker-style `503` before reading its request,
/// then closes, giving it [`REFUSAL_LINGER`] to read the answer.
pub async fn refuse_http<C: AsyncRead + AsyncWrite + Unpin>(mut client: C, max: usize) {
    let message = format!(
        "too many client connections: leader-proxy serves at most {max} at once \
         (--max-connections); try again later"
    );
    let linger = async {
        super::write_docker_error(&mut client, 503, &message).await;
        let _ = client.shutdown().await;
        let mut sink = [0u8; 4096];
        while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
}
