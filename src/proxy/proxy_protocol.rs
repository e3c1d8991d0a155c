//! The PROXY protocol (HAProxy's, versions 1 and 2) on client listeners, from trusted
//! sources only (`--proxy-protocol-from CIDR,...`; docs/cli.md#proxy-protocol).
//!
//! Behind a load balancer every client's address is the balancer's. A balancer that speaks
//! the PROXY protocol sends, before anything else on the connection, a header naming the
//! client it accepted; [`ClientIdentity`] then shows that client (and the balancer as
//! `via`). Anybody could write such a header, so it is read only on a connection whose peer
//! is in a trusted range, and there it is required: a connection from a trusted source
//! without a valid header is closed. From any other peer nothing is read: a header it sends
//! is part of the request and fails as one (400 in `--mode http`), never honoured.
//!
//! The header is read in the connection's own task (never in the accept loop), within
//! [`PROXY_HEADER_TIMEOUT`], and exactly: no byte past it is consumed, so the TLS handshake
//! or the request that follows reads from the socket as if the header had not been there.
//! The parsing is the `ppp` crate's.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::client_identity::ClientIdentity;

/// How long a trusted balancer has to send its header (it sends it with its first packet).
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A version 1 header is at most 107 bytes, `\r\n` included.
const V1_MAX: usize = 107;
/// Every header starts with one of these; 5 bytes tell them apart.
const V1_PREFIX: &[u8; 5] = b"PROXY";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part of a version 2 header: signature, version and command, family and
/// protocol, length of what follows.
const V2_FIXED: usize = 16;

/// The sources whose PROXY headers are honoured (`--proxy-protocol-from`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// Why a trusted source's connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol header (required from this source by --proxy-protocol-from)")]
    Missing,
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
    #[error("PROXY protocol header not received within {PROXY_HEADER_TIMEOUT:?}")]
    TimedOut,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

impl TrustedProxies {
    pub fn new(ranges: Vec<IpNet>) -> Self {
        Self(ranges)
    }

    /// No source is trusted: the PROXY protocol is off.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `peer` may (and must) send a PROXY header. An IPv4 client of a dual-stack
    /// listener (`::ffff:10.0.0.1`) is matched as the IPv4 address it is.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.0.iter().any(|range| range.contains(&peer))
    }

    /// The identity of a connection from `peer`: read from its PROXY header when `peer` is
    /// trusted, `peer` itself otherwise (nothing is read then).
    pub async fn identify(
        &self,
        tcp: &mut TcpStream,
        peer: SocketAddr,
    ) -> Result<ClientIdentity, ProxyHeaderError> {
        if !self.trusts(peer.ip()) {
            return Ok(ClientIdentity::tcp(peer));
        }
        let source = tokio::time::timeout(PROXY_HEADER_TIMEOUT, read_header(tcp))
            .await
            .map_err(|_| ProxyHeaderError::TimedOut)??;
        Ok(match source {
            Some(client) => ClientIdentity::proxied(client, peer),
            // A health check of the balancer's own (v2 LOCAL, v1 UNKNOWN): it is the client.
            None => ClientIdentity::tcp(peer),
        })
    }
}

/// Reads one PROXY header off `tcp`, and not a byte more: the original client's address,
/// or `None` for a header that names none (v2 `LOCAL`, v1 `UNKNOWN`, non-TCP families).
async fn read_header(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut header = vec![0u8; V1_PREFIX.len()];
    read_exact(tcp, &mut header).await?;
    if header.as_slice() == V1_PREFIX {
        read_v1_rest(tcp, &mut header).await?;
        let parsed = ppp::v1::Header::try_from(header.as_slice())
            .map_err(|e| ProxyHeaderError::Invalid(e.to_string()))?;
        return Ok(match parsed.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
            }
            ppp::v1::Addresses::Unknown => None,
        });
    }
    if header.as_slice() != &V2_SIGNATURE[..V1_PREFIX.len()] {
        return Err(ProxyHeaderError::Missing);
    }
    header.resize(V2_FIXED, 0);
    read_exact(tcp, &mut header[V1_PREFIX.len()..]).await?;
    let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
    header.resize(V2_FIXED + length, 0);
    read_exact(tcp, &mut header[V2_FIXED..]).await?;
    let parsed = ppp::v2::Header::try_from(header.as_slice())
        .map_err(|e| ProxyHeaderError::Invalid(e.to_string()))?;
    if parsed.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match parsed.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        ppp::v2::Addresses::IPv6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
    })
}

/// The rest of a version 1 header, up to its `\n`: what has arrived is peeked at, and only
/// the header's own bytes are taken out of the socket.
async fn read_v1_rest(tcp: &mut TcpStream, header: &mut Vec<u8>) -> Result<(), ProxyHeaderError> {
    let mut peeked = [0u8; V1_MAX];
    loop {
        let room = V1_MAX - header.len();
        if room == 0 {
            return Err(ProxyHeaderError::Invalid(format!(
                "a version 1 header longer than {V1_MAX} bytes"
            )));
        }
        let n = tcp.peek(&mut peeked[..room]).await?;
        if n == 0 {
            return Err(ProxyHeaderError::Missing);
        }
        let take = match peeked[..n].iter().position(|&b| b == b'\n') {
            Some(end) => end + 1,
            None => n,
        };
        let start = header.len();
        header.resize(start + take, 0);
        read_exact(tcp, &mut header[start..]).await?;
        if header.ends_with(b"\n") {
            return Ok(());
        }
    }
}

/// `read_exact`, where an early end of the connection means the header is missing.
async fn read_exact(tcp: &mut TcpStream, buf: &mut [u8]) -> Result<(), ProxyHeaderError> {
    match tcp.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProxyHeaderError::Missing),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// Sends `bytes` on a new connection and returns what the server side identified and
    /// the bytes left on the socket after the header.
    async fn identify(
        trusted: &str,
        bytes: &'static [u8],
    ) -> (Result<ClientIdentity, ProxyHeaderError>, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(bytes).await.unwrap();
            c.shutdown().await.unwrap();
            // Keep the socket until the server has read.
            let mut sink = Vec::new();
            let _ = c.read_to_end(&mut sink).await;
        });
        let (mut tcp, peer) = listener.accept().await.unwrap();
        let trusted = TrustedProxies::new(vec![trusted.parse().unwrap()]);
        let identity = trusted.identify(&mut tcp, peer).await;
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest).await;
        drop(tcp);
        client.await.unwrap();
        (identity, rest)
    }

    #[tokio::test]
    async fn version_1_from_a_trusted_source_names_the_client_and_leaves_the_rest() {
        let (identity, rest) = identify(
            "127.0.0.0/8",
            b"PROXY TCP4 203.0.113.9 127.0.0.1 40123 2375\r\nGET /_ping HTTP/1.1\r\n\r\n",
        )
        .await;
        let identity = identity.unwrap();
        assert_eq!(identity.peer.to_string(), "203.0.113.9:40123");
        assert!(identity.via.is_some());
        assert_eq!(rest, b"GET /_ping HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn version_2_and_a_health_check() {
        let header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "[2001:db8::7]:5000".parse::<SocketAddr>().unwrap(),
                "[::1]:2375".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut bytes = header;
        bytes.extend_from_slice(b"rest");
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        let (identity, rest) = identify("127.0.0.1/32", bytes).await;
        assert_eq!(identity.unwrap().peer.to_string(), "[2001:db8::7]:5000");
        assert_eq!(rest, b"rest");

        let (identity, rest) = identify("127.0.0.1/32", b"PROXY UNKNOWN\r\nrest").await;
        let identity = identity.unwrap();
        assert!(identity.via.is_none(), "{identity:?}");
        assert_eq!(rest, b"rest");
    }

    #[tokio::test]
    async fn a_trusted_source_must_send_a_header_and_an_untrusted_one_is_not_read() {
        let (identity, _) = identify("127.0.0.1/32", b"GET /_ping HTTP/1.1\r\n\r\n").await;
        assert!(matches!(identity, Err(ProxyHeaderError::Missing)));
        let (identity, _) = identify("127.0.0.1/32", b"PROXY TCP4 garbage\r\n").await;
        assert!(matches!(identity, Err(ProxyHeaderError::Invalid(_))));

        let header = b"PROXY TCP4 203.0.113.9 127.0.0.1 40123 2375\r\n";
        let (identity, rest) = identify("10.0.0.0/8", header).await;
        assert_eq!(identity.unwrap().via, None);
        assert_eq!(
            rest, header,
            "an untrusted peer's bytes are left as they came"
        );
    }
}
