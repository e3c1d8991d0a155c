//! TLS for tests that need no dockerd:
//! - [`TlsManager`]: a TLS-only manager, the way `dockerd --tlsverify` is one: a TLS
//!   terminator in front of a plain upstream (the simulated manager) that serves a
//!   certificate and requires a client certificate from its CA. Each direction's end is
//!   forwarded on its own (a `close_notify` from the proxy becomes a FIN to the upstream,
//!   the upstream's FIN becomes `close_notify` + FIN), so hijacked connections with
//!   half-close can be tested through it. It is plain `tokio_rustls`, not the proxy's own
//!   TLS code: a bare TCP FIN without `close_notify` is rustls' "unexpected EOF", which ends
//!   the connection both ways ([`TlsManager::unclean_ends`] counts them). dockerd (Go)
//!   would read it as an end of stream; this is stricter on purpose, so that a test through
//!   it proves the proxy half-closes TLS with `close_notify`.
//! - [`connect`]: a blocking TLS client (rustls) for raw HTTP over TLS, with or without a
//!   client certificate.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};

use crate::certs::Certs;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn chain(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn roots(ca: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in chain(ca) {
        roots.add(cert).expect("a CA certificate");
    }
    Arc::new(roots)
}

/// A TLS-only manager on `ip` (a free port) in front of `upstream`; stopped on drop.
pub struct TlsManager {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    handshakes: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    unclean: Arc<AtomicUsize>,
}

impl TlsManager {
    /// Serves `certs`' server certificate; requires a client certificate from `certs`' CA.
    pub fn start(ip: IpAddr, upstream: SocketAddr, certs: &Certs) -> TlsManager {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots(&certs.ca),
            provider(),
        )
        .build()
        .expect("client verifier");
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain(&certs.server_cert), key(&certs.server_key))
            .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = std::net::TcpListener::bind((ip, 0)).expect("bind the TLS manager");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let counter = || Arc::new(AtomicUsize::new(0));
        let (handshakes, failed, unclean) = (counter(), counter(), counter());
        {
            let (handshakes, failed, unclean) =
                (handshakes.clone(), failed.clone(), unclean.clone());
            runtime.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    let (handshakes, failed, unclean) =
                        (handshakes.clone(), failed.clone(), unclean.clone());
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            failed.fetch_add(1, Ordering::SeqCst);
                            return;
                        };
                        handshakes.fetch_add(1, Ordering::SeqCst);
                        let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else {
                            return;
                        };
                        // EOF on either side shuts the other's write side down (`close_notify`
                        // + FIN towards the proxy); an error, such as a FIN without
                        // `close_notify`, ends both at once.
                        if let Err(e) = tokio::io::copy_bidirectional(&mut tls, &mut plain).await {
                            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                                unclean.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    });
                }
            });
        }
        TlsManager {
            addr,
            runtime: Some(runtime),
            handshakes,
            failed,
            unclean,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Completed TLS handshakes (a client certificate was presented and accepted).
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// Refused handshakes (no or a wrong client certificate, a client that did not trust
    /// this one's certificate).
    pub fn failed_handshakes(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }

    /// Connections the proxy ended with a bare TCP FIN, without `close_notify` (cut both
    /// ways here).
    pub fn unclean_ends(&self) -> usize {
        self.unclean.load(Ordering::SeqCst)
    }
}

impl Drop for TlsManager {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A blocking TLS connection, for raw HTTP.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects to `addr` over TLS trusting only `ca`, checking the certificate for `name`,
/// presenting `identity` (certificate, key) if given; completes the handshake. With TLS
/// 1.3 a server that refuses the client certificate says so after the client's side of the
/// handshake is done: the refusal shows on the first read ([`refused`]).
pub fn connect(
    addr: SocketAddr,
    name: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> std::io::Result<TlsStream> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots(ca));
    let config = match identity {
        Some((cert, k)) => builder
            .with_client_auth_cert(chain(cert), key(k))
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from(name.to_string()).expect("a server name");
    let conn = ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// Sends `GET path` on `stream` (keep-alive) and reads one response with a
/// `Content-Length` body: `(status line, body)`.
pub fn get(stream: &mut TlsStream, path: &str) -> std::io::Result<(String, String)> {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: docker\r\n\r\n").as_bytes())?;
    stream.flush()?;
    let head = read_head(stream)?;
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Reads a response head byte by byte (nothing past it).
pub fn read_head(stream: &mut impl Read) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "EOF in a response head: {:?}",
                    String::from_utf8_lossy(&head)
                ),
            ));
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// True if a request on a fresh connection is refused by the server in the TLS handshake
/// (an alert, or the connection closed without an answer), with the error for messages.
pub fn refused(addr: SocketAddr, ca: &Path, identity: Option<(&Path, &Path)>) -> (bool, String) {
    let mut stream = match connect(addr, "127.0.0.1", ca, identity) {
        Ok(stream) => stream,
        Err(e) => return (true, e.to_string()),
    };
    match get(&mut stream, "/_ping") {
        Ok((status, body)) => (false, format!("answered: {status} {body}")),
        Err(e) => (true, e.to_string()),
    }
}
