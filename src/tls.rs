//! TLS on both sides of the proxy, in Docker's own model.
//!
//! Clients (`--tlscert`, `--tlskey`, `--tlscacert`, `--tlsverify`), as dockerd does it: TLS is
//! on when a certificate and its key are given; with `--tlsverify` every client must present
//! a certificate signed by `--tlscacert`, and anything else is refused in the handshake
//! (no certificate: `certificate_required`; another CA: `unknown_ca`); without it no client
//! certificate is asked for. TLS applies to TCP listeners; a unix socket is guarded by its
//! file permissions, as dockerd's is.
//!
//! Managers (`--upstream-cert-path DIR`, the `DOCKER_CERT_PATH` layout): `ca.pem` is the only
//! root trusted for a manager's certificate, `cert.pem` + `key.pem` (both or neither) are
//! presented to managers running `--tlsverify`. The certificate is checked against the name
//! the election gave: the leader's address is usually an IP, so it must be among the
//! certificate's IP SANs (`docker swarm`'s and `dockerd --tlsverify` setups put it there:
//! the docker CLI checks the same thing when it talks to that manager directly); a host name
//! in the leader value is checked against the DNS SANs.
//!
//! Every file is read and checked when the proxy starts (a wrong path, a file without a
//! certificate or key, a key that does not belong to its certificate stop it with the flag
//! named, status 2) and again on SIGHUP ([`ServerTls::reload`], [`UpstreamTls::reload`]):
//! the new certificates apply to new connections, open ones keep theirs, and a reload that
//! fails keeps the old ones (a half-written file must not take the proxy down).
//!
//! The request path reads the current configuration with one atomic load ([`ArcSwap`]).
//!
//! Half-close over TLS: a TLS peer ends its writes with `close_notify`, which reads as EOF,
//! and [`TlsConn`]'s shutdown sends one (then a TCP FIN). The docker CLI half-closes a
//! hijacked connection with `CloseWrite`: Go's `tls.Conn.CloseWrite` sends `close_notify`
//! (the 28.x CLI), older clients (20.10) shut down the TCP write side under TLS without one.
//! dockerd (Go) reads both as EOF and keeps writing the output; [`TlsConn`] does the same (a
//! bare FIN reads as EOF, not as rustls' "unexpected EOF"), so `docker run -i` works through
//! the proxy with either client.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use arc_swap::{ArcSwap, Guard};
use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora_core::protocols::tls::CaType;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora_core::utils::tls::{parse_x509, CertKey, WrappedX509};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// TLS for clients (`--tlscert`, `--tlskey`, `--tlscacert`, `--tlsverify`), dockerd's model:
/// on when a certificate and its key are given; `verify` (`--tlsverify`, which needs `ca`)
/// requires every client to present a certificate signed by `ca`. Without `verify`, `ca` is
/// not used (dockerd asks for no client certificate then either). The configuration fills
/// it in; [`ServerTls::load`] reads the files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
    pub verify: bool,
}

/// The only application protocol the proxy speaks on either side: dockerd offers `h2` too,
/// and a client or manager that picked it would not be understood.
const HTTP11: &[u8] = b"http/1.1";

/// A TLS file or setting that cannot be used. Display: `--FLAG PATH: REASON`.
#[derive(Debug, thiserror::Error)]
#[error("--{long} {}: {reason}", .path.display())]
pub struct TlsError {
    /// The flag, without `--` (`tlscert`, `upstream-cert-path`).
    pub long: &'static str,
    /// The value of the flag (a file, or the `--upstream-cert-path` directory).
    pub path: PathBuf,
    pub reason: String,
}

/// The one crypto provider compiled in (ring), whatever the process default is.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

// ---------------------------------------------------------------------------------------
// Clients.

/// The TLS configuration for clients, reloadable.
pub struct ServerTls {
    files: ClientTls,
    config: ArcSwap<ServerConfig>,
}

impl ServerTls {
    /// Reads and checks the files of `files`.
    pub fn load(files: &ClientTls) -> Result<Self, TlsError> {
        Ok(Self {
            config: ArcSwap::from_pointee(server_config(files)?),
            files: files.clone(),
        })
    }

    /// Reads the files again; on success new connections use them.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.config.store(Arc::new(server_config(&self.files)?));
        Ok(())
    }

    /// Whether clients must present a certificate (`--tlsverify`).
    pub fn verifies_clients(&self) -> bool {
        self.files.verify
    }

    /// The acceptor for a connection arriving now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }
}

fn server_config(files: &ClientTls) -> Result<ServerConfig, TlsError> {
    let (chain, key) = identity(("tlscert", &files.cert), ("tlskey", &files.key))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| {
            error(
                "tlscert",
                &files.cert,
                format!("no TLS version available: {e}"),
            )
        })?;
    let builder = match (&files.ca, files.verify) {
        (Some(ca), true) => {
            let roots = Arc::new(roots("tlscacert", ca)?);
            // Without `allow_unauthenticated`: a client without a certificate is refused.
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| error("tlscacert", ca, format!("not a usable CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        // The configuration refuses --tlsverify without --tlscacert; without --tlsverify
        // dockerd asks for no client certificate even when --tlscacert is given.
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| error("tlskey", &files.key, e.to_string()))?;
    config.alpn_protocols = vec![HTTP11.to_vec()];
    Ok(config)
}

// ---------------------------------------------------------------------------------------
// Managers.

/// `ca.pem`, `cert.pem`, `key.pem` of `--upstream-cert-path`.
pub const UPSTREAM_CA: &str = "ca.pem";
pub const UPSTREAM_CERT: &str = "cert.pem";
pub const UPSTREAM_KEY: &str = "key.pem";

/// TLS to the managers, reloadable.
pub struct UpstreamTls {
    dir: PathBuf,
    current: ArcSwap<UpstreamMaterial>,
}

/// Shows the directory, never a key.
impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("dir", &self.dir)
            .field("generation", &self.current().generation)
            .finish_non_exhaustive()
    }
}

/// The files of `--upstream-cert-path`, read once, in the forms each TLS client takes.
pub struct UpstreamMaterial {
    /// For the hijack relay and the probes (tokio-rustls, reqwest): `ca.pem` the only root,
    /// the client certificate if there is one, HTTP/1.1.
    pub config: Arc<ClientConfig>,
    /// The same for pingora's connector (L7), which takes them per peer.
    pub ca: Arc<CaType>,
    pub cert_key: Option<Arc<CertKey>>,
    /// Bumped by each reload: pingora's pool key, so that a connection made with old
    /// certificates is not reused after a reload.
    pub generation: u64,
}

impl UpstreamTls {
    /// Reads and checks `DIR/ca.pem` and, if present, `DIR/cert.pem` and `DIR/key.pem`.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            current: ArcSwap::from_pointee(upstream_material(dir, 0)?),
            dir: dir.to_path_buf(),
        })
    }

    /// Reads the files again; on success new connections to managers use them.
    pub fn reload(&self) -> Result<(), TlsError> {
        let generation = self.current.load().generation + 1;
        self.current
            .store(Arc::new(upstream_material(&self.dir, generation)?));
        Ok(())
    }

    /// The material for a connection made now: one atomic load.
    #[inline]
    pub fn current(&self) -> Guard<Arc<UpstreamMaterial>> {
        self.current.load()
    }

    /// The TLS handshake with a manager on `tcp`, its certificate checked for `name`.
    pub async fn connect(
        &self,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> io::Result<TlsConn<tokio_rustls::client::TlsStream<TcpStream>>> {
        let fd = tcp.as_raw_fd();
        let connector = tokio_rustls::TlsConnector::from(self.current().config.clone());
        let stream = connector.connect(name, tcp).await?;
        Ok(TlsConn::new(stream, fd))
    }
}

fn upstream_material(dir: &Path, generation: u64) -> Result<UpstreamMaterial, TlsError> {
    const LONG: &str = "upstream-cert-path";
    let in_dir = |file: &str| dir.join(file);
    let ca_path = in_dir(UPSTREAM_CA);
    let (cert_path, key_path) = (in_dir(UPSTREAM_CERT), in_dir(UPSTREAM_KEY));
    if !dir.is_dir() {
        return Err(error(
            LONG,
            dir,
            "not a directory (it must hold ca.pem, and cert.pem + key.pem for managers that \
             require a client certificate: the DOCKER_CERT_PATH layout)",
        ));
    }
    let ca_pem = read(LONG, &ca_path)?;
    let ca_certs = certificates(LONG, &ca_path, &ca_pem)?;
    let mut roots = RootCertStore::empty();
    for cert in &ca_certs {
        roots
            .add(cert.clone())
            .map_err(|e| error(LONG, &ca_path, format!("not a usable CA certificate: {e}")))?;
    }
    let identity = match (cert_path.exists(), key_path.exists()) {
        (false, false) => None,
        (true, true) => Some(identity((LONG, &cert_path), (LONG, &key_path))?),
        (true, false) => {
            return Err(error(
                LONG,
                &key_path,
                "missing: cert.pem is there, its key.pem must be too",
            ))
        }
        (false, true) => {
            return Err(error(
                LONG,
                &cert_path,
                "missing: key.pem is there, its cert.pem must be too",
            ))
        }
    };

    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| error(LONG, dir, format!("no TLS version available: {e}")))?
        .with_root_certificates(roots);
    let mut config = match &identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| error(LONG, &key_path, e.to_string()))?,
    };
    config.alpn_protocols = vec![HTTP11.to_vec()];

    // pingora parses these again with x509-parser and panics on what it cannot parse: parse
    // them here first, so a certificate it would choke on is an error at load instead.
    let ca = ca_certs
        .iter()
        .map(|der| {
            x509_parser::parse_x509_certificate(der)
                .map_err(|e| error(LONG, &ca_path, format!("cannot parse a certificate: {e}")))?;
            Ok(WrappedX509::new(der.to_vec(), parse_x509))
        })
        .collect::<Result<Vec<_>, TlsError>>()?;
    let cert_key = match identity {
        None => None,
        Some((chain, key)) => {
            for der in &chain {
                x509_parser::parse_x509_certificate(der).map_err(|e| {
                    error(LONG, &cert_path, format!("cannot parse a certificate: {e}"))
                })?;
            }
            let key = key.secret_der().to_vec();
            // pingora turns the DER back into a key with this conversion and unwraps it.
            PrivateKeyDer::try_from(key.clone())
                .map_err(|e| error(LONG, &key_path, e.to_string()))?;
            Some(Arc::new(CertKey::new(
                chain.iter().map(|c| c.to_vec()).collect(),
                key,
            )))
        }
    };
    Ok(UpstreamMaterial {
        config: Arc::new(config),
        ca: Arc::from(ca.into_boxed_slice()),
        cert_key,
        generation,
    })
}

/// The name a manager's certificate is checked against, as rustls takes it: `name` (an IP
/// literal or a DNS name), or the IP dialled if `name` is neither.
pub fn server_name(name: &str, addr: SocketAddr) -> ServerName<'static> {
    ServerName::try_from(name.to_string())
        .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()))
}

// ---------------------------------------------------------------------------------------
// Files.

fn error(long: &'static str, path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError {
        long,
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read(long: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    pem::read(path).map_err(|reason| error(long, path, reason))
}

fn certificates(
    long: &'static str,
    path: &Path,
    text: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    pem::certificates(text).map_err(|reason| error(long, path, reason))
}

/// A CA file as a root store.
fn roots(long: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let text = read(long, path)?;
    pem::roots(certificates(long, path, &text)?).map_err(|reason| error(long, path, reason))
}

/// A certificate chain and its private key, checked to belong together.
fn identity(
    (cert_long, cert): (&'static str, &Path),
    (key_long, key): (&'static str, &Path),
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = certificates(cert_long, cert, &read(cert_long, cert)?)?;
    let private_key =
        pem::private_key(&read(key_long, key)?).map_err(|reason| error(key_long, key, reason))?;
    pem::check_pair(&chain, &private_key).map_err(|e| {
        error(
            key_long,
            key,
            format!("does not go with the certificate {}: {e}", cert.display()),
        )
    })?;
    Ok((chain, private_key))
}

/// Reading PEM files, for every TLS file the proxy takes: the client and upstream
/// certificates here, and the store's `kv.cacertfile`, `kv.certfile`, `kv.keyfile`. Each
/// error is the reason alone; the caller names the flag or option and the path.
pub mod pem {
    use std::path::Path;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use rustls::sign::CertifiedKey;
    use rustls::RootCertStore;

    pub fn read(path: &Path) -> Result<Vec<u8>, String> {
        std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))
    }

    /// The PEM certificates of a file's text: at least one, all well-formed.
    pub fn certificates(text: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
        let certs = CertificateDer::pem_slice_iter(text)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bad PEM: {e}"))?;
        if certs.is_empty() {
            return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into());
        }
        Ok(certs)
    }

    /// Certificates as the only roots trusted.
    pub fn roots(certs: Vec<CertificateDer<'static>>) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("not a usable CA certificate: {e}"))?;
        }
        Ok(roots)
    }

    /// The private key of a file's text.
    pub fn private_key(text: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
        // The parser's own error is not shown: it may quote a line of the key file.
        PrivateKeyDer::from_pem_slice(text)
            .map_err(|_| "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it".to_string())
    }

    /// Proves the key is one rustls can sign with and that it belongs to the certificate:
    /// a mismatch would otherwise fail every handshake, later. The error is rustls' reason;
    /// the caller says which two files do not go together.
    pub fn check_pair(
        chain: &[CertificateDer<'static>],
        key: &PrivateKeyDer<'static>,
    ) -> Result<(), rustls::Error> {
        CertifiedKey::from_der(chain.to_vec(), key.clone_key(), &super::provider()).map(|_| ())
    }
}

// ---------------------------------------------------------------------------------------
// Streams.

/// A TLS connection (a client's, or one to a manager) as the proxy uses it:
/// - a bare TCP FIN from the peer (no `close_notify`) reads as EOF, as Go reads it: older
///   docker CLIs half-close that way (see the module docs), and a hijacked stream has no
///   framing that truncation could break (HTTP bodies have theirs, checked by pingora);
/// - bytes read ahead (a request head the front inspected) can be put back
///   ([`TlsConn::rewind`]), as pingora's l4 stream allows for plain connections;
/// - it is a pingora [`pingora_core::protocols::IO`], so the L7 proxy serves it like a
///   plain connection.
pub struct TlsConn<S> {
    inner: S,
    /// Put back by [`TlsConn::rewind`]; read before anything else. Empty, without capacity,
    /// the rest of the time.
    rewound: BytesMut,
    /// The TCP socket under the TLS session (pingora's connection id).
    fd: RawFd,
}

impl<S> TlsConn<S> {
    pub fn new(inner: S, fd: RawFd) -> Self {
        Self {
            inner,
            rewound: BytesMut::new(),
            fd,
        }
    }

    /// Makes `head` the next bytes read (the front read a request head it does not relay).
    pub fn rewind(&mut self, head: BytesMut) {
        debug_assert!(self.rewound.is_empty());
        self.rewound = head;
    }
}

impl<S> std::fmt::Debug for TlsConn<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn").field("fd", &self.fd).finish()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TlsConn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.rewound.is_empty() {
            let n = buf.remaining().min(self.rewound.len());
            buf.put_slice(&self.rewound[..n]);
            self.rewound.advance(n);
            if self.rewound.is_empty() {
                // Give the buffer's memory back: the connection may live for hours.
                self.rewound = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        match ready!(Pin::new(&mut self.inner).poll_read(cx, buf)) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TlsConn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// `close_notify`, then the TCP write side: the half-close of TLS.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// What pingora asks of a connection it serves (`pingora_core::protocols::IO`). The digests
// are for pingora's own TLS and timing reports, which leader-proxy does not use.

#[async_trait]
impl<S: AsyncWrite + Unpin + Send> Shutdown for TlsConn<S> {
    async fn shutdown(&mut self) {
        // The peer may be gone already; there is nobody left to tell.
        let _ = AsyncWriteExt::shutdown(self).await;
    }
}

impl<S> UniqueID for TlsConn<S> {
    fn id(&self) -> UniqueIDType {
        self.fd
    }
}

impl<S> Ssl for TlsConn<S> {}

impl<S> GetTimingDigest for TlsConn<S> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl<S> GetProxyDigest for TlsConn<S> {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        None
    }
}

impl<S> GetSocketDigest for TlsConn<S> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        None
    }
}

#[async_trait]
impl<S: Send> Peek for TlsConn<S> {}

/// A client's TLS connection, as accepted on a TCP listener.
pub type ClientTlsConn = TlsConn<tokio_rustls::server::TlsStream<TcpStream>>;

impl ClientTlsConn {
    /// The subject of the certificate the client presented (checked against `--tlscacert`
    /// under `--tlsverify`), in RFC 4514 form (`CN=alice,O=ops`): who the client is, for the
    /// access log.
    pub fn peer_subject(&self) -> Option<String> {
        let (_, session) = self.inner.get_ref();
        let der = session.peer_certificates()?.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(cert.subject().to_string())
    }
}

/// Accepts the TLS handshake of a client on `tcp`.
pub async fn accept(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
) -> io::Result<ClientTlsConn> {
    let fd = tcp.as_raw_fd();
    let stream = acceptor.accept(tcp).await?;
    Ok(TlsConn::new(stream, fd))
}

/// Certificate files for unit tests (here and in [`crate::config`]).
#[cfg(test)]
pub(crate) mod test_files {
    use std::path::PathBuf;

    use super::ClientTls;

    /// In a temp dir: `ca.pem`; `server.pem` + `server-key.pem` (for 127.0.0.1, signed by
    /// the CA); `cert.pem` + `key.pem` (a client certificate): the last three with `ca.pem`
    /// are also a `DOCKER_CERT_PATH` layout.
    pub(crate) struct Files {
        pub dir: tempfile::TempDir,
    }

    impl Files {
        pub(crate) fn new() -> Files {
            use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
            let dir = tempfile::tempdir().expect("temp dir");
            let mut ca = CertificateParams::new(Vec::new()).expect("params");
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca_key = KeyPair::generate().expect("key");
            let ca_cert = ca.self_signed(&ca_key).expect("CA");
            let issuer = Issuer::new(ca, ca_key);
            let write = |name: &str, text: String| {
                std::fs::write(dir.path().join(name), text).expect("write");
            };
            write("ca.pem", ca_cert.pem());
            for (cert, key, names) in [
                (
                    "server.pem",
                    "server-key.pem",
                    vec!["127.0.0.1".to_string()],
                ),
                ("cert.pem", "key.pem", Vec::new()),
            ] {
                let k = KeyPair::generate().expect("key");
                let c = CertificateParams::new(names)
                    .expect("params")
                    .signed_by(&k, &issuer)
                    .expect("cert");
                write(cert, c.pem());
                write(key, k.serialize_pem());
            }
            Files { dir }
        }

        pub(crate) fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        pub(crate) fn str(&self, name: &str) -> String {
            self.path(name).display().to_string()
        }

        pub(crate) fn client(&self, verify: bool) -> ClientTls {
            ClientTls {
                cert: self.path("server.pem"),
                key: self.path("server-key.pem"),
                ca: Some(self.path("ca.pem")),
                verify,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_files::Files;
    use super::*;

    #[test]
    fn loads_and_reloads_both_sides() {
        let files = Files::new();
        let server = ServerTls::load(&files.client(true)).expect("client TLS");
        assert!(server.verifies_clients());
        server.reload().expect("reload");
        let upstream = UpstreamTls::load(files.dir.path()).expect("upstream TLS");
        assert!(upstream.current().cert_key.is_some());
        assert_eq!(upstream.current().ca.len(), 1);
        upstream.reload().expect("reload");
        assert_eq!(upstream.current().generation, 1);
    }

    #[test]
    fn a_bad_file_names_its_flag_and_a_failed_reload_keeps_the_old_files() {
        let files = Files::new();
        let mut bad = files.client(true);
        bad.key = files.path("key.pem"); // the client's key, not the server certificate's
        let e = ServerTls::load(&bad).err().expect("a mismatched key");
        assert_eq!(e.long, "tlskey");
        assert!(
            e.to_string().contains("does not go with the certificate"),
            "{e}"
        );
        bad.key = files.path("missing.pem");
        let e = ServerTls::load(&bad).err().expect("a missing key");
        assert_eq!(e.long, "tlskey");
        assert!(e.to_string().contains("cannot read it"), "{e}");
        let mut bad = files.client(true);
        bad.ca = Some(files.path("key.pem"));
        let e = ServerTls::load(&bad).err().expect("a key as CA");
        assert_eq!(e.long, "tlscacert");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");

        let upstream = UpstreamTls::load(files.dir.path()).expect("upstream TLS");
        std::fs::write(files.path("ca.pem"), "garbage").expect("write");
        let e = upstream.reload().expect_err("a garbage CA");
        assert_eq!(e.long, "upstream-cert-path");
        assert!(e.to_string().contains("ca.pem"), "{e}");
        assert_eq!(upstream.current().generation, 0, "the old material is kept");
        let files = Files::new();
        std::fs::remove_file(files.path("key.pem")).expect("rm");
        let e = UpstreamTls::load(files.dir.path()).expect_err("no key.pem");
        assert!(e.to_string().contains("key.pem"), "{e}");
        let e = UpstreamTls::load(&files.path("nope")).expect_err("no dir");
        assert!(e.to_string().contains("not a directory"), "{e}");
    }
}
