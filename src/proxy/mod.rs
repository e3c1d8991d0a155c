//! Client traffic: listeners accept connections (TCP, with TLS when configured, and unix
//! sockets), the [`front::Front`] reads each request head and sends it down the L7 path
//! ([`http::DockerApi`] on pingora) or, for requests carrying `Upgrade`, through the
//! [`hijack`] relay. In `--mode tcp` the [`tcp::L4Proxy`] relays connections instead. All of
//! them ask [`hold::Hold`] for the upstream, so they wait and retry the same way.

pub mod cap;
pub mod client_identity;
pub mod client_watch;
pub mod coalesce;
pub mod drain;
pub mod exchange;
/// The request-head reader, in the `leader-proxy-parsers` crate (crates/parsers) so that
/// its fuzz target builds without pingora.
pub use leader_proxy_parsers::head;
pub mod front;
pub mod gate;
pub mod hijack;
pub mod hold;
pub mod hop;
pub mod http;
pub mod inspect;
pub mod listener;
pub mod proxy_protocol;
pub mod redact;
pub mod tcp;

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// A Docker-style error body (`{"message": "…"}`), which the docker CLI prints as is.
pub fn docker_error_body(message: &str) -> bytes::Bytes {
    serde_json::json!({ "message": message }).to_string().into()
}

/// Shows `-` for nothing, so an access-log field needs no allocation to say "none".
pub struct OrDash<T>(pub Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Answers `code` with a Docker-style error body on a connection the proxy is about to
/// close (`Connection: close`), for the paths that write their own answers (the front, the
/// hijack relay) rather than pingora's.
pub async fn write_docker_error<C: AsyncWrite + Unpin>(client: &mut C, code: u16, message: &str) {
    let body = docker_error_body(message);
    let reason = ::http::StatusCode::from_u16(code)
        .ok()
        .and_then(|status| status.canonical_reason())
        .unwrap_or("Error");
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    // The client may be gone already; there is nobody left to tell.
    let _ = client.write_all(head.as_bytes()).await;
    let _ = client.write_all(&body).await;
    let _ = client.flush().await;
}
