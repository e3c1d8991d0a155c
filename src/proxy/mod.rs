//! Client traffic: listeners accept connections (TCP, with TLS when configured, and unix
//! sockets), the [`front::Front`] reads each request head and sends it down the L7 path
//! ([`http::DockerApi`] on pingora) or, for requests carrying `Upgrade`, through the
//! [`hijack`] relay. In `--mode tcp` the [`tcp::L4Proxy`] relays connections instead. All of
//! them ask [`hold::Hold`] for the upstream, so they wait and retry the same way.

pub mod drain;
pub mod front;
pub mod head;
pub mod hijack;
pub mod hold;
pub mod http;
pub mod listener;
pub mod tcp;

/// A Docker-style error body (`{"message": "…"}`), which the docker CLI prints as is.
pub fn docker_error_body(message: &str) -> bytes::Bytes {
    serde_json::json!({ "message": message }).to_string().into()
}
