//! The front: the first to see every request on a client connection.
//!
//! It reads each request head itself. A head carrying `Upgrade` goes to the
//! [`HijackRelay`]; any other is put back into the stream (pingora's l4 `Stream::rewind`)
//! and handed to pingora's HTTP proxy, which serves it and hands the connection back for
//! the next request, so the front inspects every head of a keep-alive connection.

use std::sync::Arc;
use std::time::Duration;

use pingora_core::apps::HttpServerApp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tracing::debug;

use super::head::{read_head, Head};
use super::hijack::HijackRelay;
use super::http::DockerApi;

/// How long a client connection may sit idle between requests (pingora's own default).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

pub struct Front {
    api: Arc<HttpProxy<DockerApi>>,
    relay: HijackRelay,
}

impl Front {
    pub fn new(api: HttpProxy<DockerApi>, relay: HijackRelay) -> Self {
        Self {
            api: Arc::new(api),
            relay,
        }
    }

    /// Serves a client connection until it closes, goes idle, or the proxy shuts down
    /// (a request already running is finished first).
    pub async fn serve(&self, mut stream: L4Stream, mut shutdown: ShutdownWatch) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let head = tokio::select! {
                head = tokio::time::timeout(KEEPALIVE_IDLE, read_head(&mut stream)) => head,
                _ = shutdown.changed() => return,
            };
            let (bytes, upgrade) = match head {
                Ok(Ok(Head::Request { bytes, upgrade })) => (bytes, upgrade),
                Ok(Ok(Head::Closed)) | Err(_) => return,
                Ok(Err(e)) => {
                    debug!(error = %e, "dropping client connection");
                    return;
                }
            };
            if upgrade {
                self.relay.relay(&mut stream, bytes).await;
                return;
            }
            stream.rewind(&bytes);
            let mut session = ServerSession::new_http1(Box::new(stream));
            session.set_keepalive(Some(KEEPALIVE_IDLE.as_secs()));
            let Some(reused) = self.api.process_new_http(session, &shutdown).await else {
                return;
            };
            let (io, _settings) = reused.consume();
            stream = match io.into_any().downcast::<L4Stream>() {
                Ok(stream) => *stream,
                // Only plain streams are handed to the proxy, so only they come back.
                Err(_) => return,
            };
        }
    }
}
