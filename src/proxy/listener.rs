//! Client listeners: accepting connections (TCP and unix sockets) and handing them to what
//! serves them ([`Service`]: the [`Front`], over TLS on TCP listeners when configured, or the
//! [`L4Proxy`] in `--mode tcp`), and the graceful stop (stop accepting, let what runs finish).
//!
//! Each connection is checked against `--max-connections` ([`ConnectionCap`]) when it is
//! accepted, and given its [`ClientIdentity`], which goes with it to the front or the L4
//! relay for the access log. The PROXY header of a trusted balancer
//! ([`TrustedProxies`]) and the TLS handshake of a client run in the connection's own task,
//! never in the accept loop, each bounded by a timeout: a client that connects and says
//! nothing holds only its own socket.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::server::ShutdownWatch;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::cap::{refuse_http, ConnectionCap};
use super::client_identity::ClientIdentity;
use super::front::Front;
use super::proxy_protocol::TrustedProxies;
use super::tcp::L4Proxy;
use crate::metrics::Metrics;
use crate::policy::ListenerPolicy;
use crate::tls::ServerTls;

/// How long a client has to complete its TLS handshake (a Docker client needs milliseconds).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The same for a client refused by `--max-connections`, whose handshake is made only to
/// tell it so: a slow one is not worth a socket for long.
const REFUSAL_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// What serves the connections of a listener.
#[derive(Clone)]
pub enum Service {
    /// `--mode http`: the front. `tls` (client TLS) applies to TCP connections.
    Http {
        front: Arc<Front>,
        tls: Option<Arc<ServerTls>>,
        metrics: Arc<Metrics>,
        /// The listener's access policy.
        policy: ListenerPolicy,
    },
    /// `--mode tcp`: the byte relay.
    Tcp(Arc<L4Proxy>),
}

/// What every client listener shares: the service, the `--max-connections` cap over all of
/// them, the sources whose PROXY headers are honoured, the tracker of connection tasks
/// (shutdown waits for them), the metrics (connections admitted per listener), and whether
/// the listeners went to a new process.
#[derive(Clone)]
pub struct Clients {
    pub service: Service,
    pub cap: Arc<ConnectionCap>,
    pub proxies: Arc<TrustedProxies>,
    pub connections: TaskTracker,
    pub metrics: Arc<Metrics>,
    /// Set before the stop when a new process took the listeners over (`--upgrade`): the
    /// unix socket files are its now, so they are left in place.
    pub handed_over: Arc<AtomicBool>,
}

impl Service {
    async fn serve_tcp(
        self,
        mut tcp: TcpStream,
        peer: SocketAddr,
        proxies: Arc<TrustedProxies>,
        listener: Arc<str>,
        shutdown: ShutdownWatch,
    ) {
        let client = match proxies.identify(&mut tcp, peer).await {
            Ok(client) => client.on_listener(listener),
            Err(e) => {
                info!(target: "access", client = %peer, error = %e,
                    "connection closed: PROXY protocol");
                return;
            }
        };
        match self {
            Service::Http {
                front,
                tls: None,
                policy,
                ..
            } => {
                front
                    .serve(L4Stream::from(tcp), client, &policy, shutdown)
                    .await;
            }
            Service::Http {
                front,
                tls: Some(tls),
                metrics,
                policy,
            } => {
                let handshake = crate::tls::accept(tls.acceptor(), tcp);
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(conn)) => {
                        // Without --tlsverify no certificate is asked for, so none is shown.
                        let subject = tls
                            .verifies_clients()
                            .then(|| conn.peer_subject())
                            .flatten();
                        front
                            .serve(conn, client.with_tls_subject(subject), &policy, shutdown)
                            .await
                    }
                    Ok(Err(e)) => {
                        metrics.tls_handshake_failures.inc();
                        info!(client = %client.peer, error = %e, "client TLS handshake failed");
                    }
                    Err(_) => {
                        metrics.tls_handshake_failures.inc();
                        info!(client = %client.peer, "client TLS handshake timed out");
                    }
                }
            }
            Service::Tcp(l4) => l4.serve(tcp, &client).await,
        }
    }

    async fn serve_unix(self, unix: UnixStream, listener: Arc<str>, shutdown: ShutdownWatch) {
        let client = ClientIdentity::unix(&unix).on_listener(listener);
        match self {
            Service::Http { front, policy, .. } => {
                front
                    .serve(L4Stream::from(unix), client, &policy, shutdown)
                    .await
            }
            Service::Tcp(l4) => l4.serve(unix, &client).await,
        }
    }

    /// Answers a TCP client the cap refused, in the protocol of the listener: a 503 in
    /// `--mode http` (over TLS on a TLS listener, the handshake bounded by
    /// [`REFUSAL_HANDSHAKE_TIMEOUT`]); in `--mode tcp`, where there is no protocol to answer
    /// in, the connection is closed at once.
    async fn refuse_tcp(self, tcp: TcpStream, max: usize) {
        match self {
            Service::Http { tls: None, .. } => refuse_http(tcp, max).await,
            Service::Http { tls: Some(tls), .. } => {
                let handshake = crate::tls::accept(tls.acceptor(), tcp);
                if let Ok(Ok(conn)) =
                    tokio::time::timeout(REFUSAL_HANDSHAKE_TIMEOUT, handshake).await
                {
                    refuse_http(conn, max).await;
                }
            }
            Service::Tcp(_) => drop(tcp),
        }
    }

    /// [`Self::refuse_tcp`] for a unix client (never TLS).
    async fn refuse_unix(self, unix: UnixStream, max: usize) {
        match self {
            Service::Http { .. } => refuse_http(unix, max).await,
            Service::Tcp(_) => drop(unix),
        }
    }
}

/// Binds a TCP listener and logs `Listening on ADDR` with the bound address (port 0 = any).
pub async fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    // Every client socket, in both modes: no Nagle delay, and keepalive probes, so a
    // client whose host vanished during a silent `attach` or `events` (a laptop gone to
    // sleep) does not hold its sockets, and the upstream's, forever. Set once on the
    // listener: Linux copies these options into every socket it accepts, which saves five
    // system calls per connection (docs/architecture.md#client-sockets).
    super::tcp::tune_socket(&socket2::SockRef::from(&listener))?;
    info!("Listening on {}", listener.local_addr()?);
    Ok(listener)
}

/// A bound unix listener and the socket file it owns: the file is removed when this is
/// dropped (shutdown, or a failed start), unless another process has replaced it since or
/// it was handed over ([`UnixSocket::leave_file`]).
pub struct UnixSocket {
    listener: UnixListener,
    file: SocketFile,
}

impl UnixSocket {
    /// A listener handed over by the process that bound it (`--upgrade`). The path must be
    /// where the listener is bound. Until this process serves it, the file is still the old
    /// process's: dropped before (a failed upgrade), it stays. [`serve_unix`] takes it on
    /// when it stops serving, [`Self::claim_file`] before.
    pub fn inherited(listener: std::os::unix::net::UnixListener, path: &Path) -> io::Result<Self> {
        let bound = listener.local_addr()?;
        if bound.as_pathname() != Some(path) {
            return Err(io::Error::other(format!(
                "the socket handed over is bound to {bound:?}, not {}",
                path.display()
            )));
        }
        listener.set_nonblocking(true)?;
        let meta = std::fs::symlink_metadata(path)?;
        Ok(UnixSocket {
            listener: UnixListener::from_std(listener)?,
            file: SocketFile {
                path: path.to_path_buf(),
                id: (meta.dev(), meta.ino()),
                remove: false,
            },
        })
    }

    /// The file is this process's from now on: removed when this is dropped.
    pub fn claim_file(&mut self) {
        self.file.remove = true;
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Closes the listener and leaves its file in place, for the process that took it over.
    pub fn leave_file(self) {
        let UnixSocket { listener, mut file } = self;
        drop(listener);
        file.remove = false;
    }
}

struct SocketFile {
    path: PathBuf,
    /// Device and inode of the socket we bound, to recognise it at removal.
    id: (u64, u64),
    /// False once another process serves the file (`--upgrade`).
    remove: bool,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if !self.remove {
            return;
        }
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.id => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    warn!(path = %self.path.display(), error = %e, "cannot remove the socket file");
                }
            }
            // Gone already, or somebody else's now: not ours to remove.
            _ => {}
        }
    }
}

/// Why a unix listener could not be set up; the messages are for the operator (the caller
/// names the flag and the path).
#[derive(Debug, thiserror::Error)]
pub enum UnixBindError {
    #[error(
        "the socket is in use: something is listening on it (another leader-proxy, or \
         dockerd?); refusing to replace it: stop that process or choose another path"
    )]
    InUse,
    #[error("the path exists and is not a socket; refusing to replace it")]
    NotASocket,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Binds a unix listener at `path` with permissions `mode` and, if given, group `gid`, and
/// logs `Listening on unix://PATH`.
///
/// A socket file left at `path` by a process that died is replaced, but only when nothing
/// answers a connection to it; a live one, or a file that is not a socket, is an error.
/// The socket is created with no permission for anybody but its owner (as dockerd does) and
/// only then given its group and mode, so nobody else can connect in between.
pub fn bind_unix(path: &Path, mode: u32, gid: Option<u32>) -> Result<UnixSocket, UnixBindError> {
    let socket = bind_socket_file(path, mode, gid)?;
    info!("Listening on unix://{}", path.display());
    Ok(socket)
}

/// [`bind_unix`] without the log line, for a socket that is not a client listener
/// (`--upgrade-socket`).
pub fn bind_socket_file(
    path: &Path,
    mode: u32,
    gid: Option<u32>,
) -> Result<UnixSocket, UnixBindError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(UnixBindError::InUse),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    info!(path = %path.display(), "replacing a stale socket file (nothing listens on it)");
                    match std::fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                // Removed between the two calls: the path is free.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(_) => return Err(UnixBindError::NotASocket),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }

    let listener = {
        let _mask = Umask::set(0o177);
        UnixListener::bind(path)?
    };
    let meta = std::fs::symlink_metadata(path)?;
    let file = SocketFile {
        path: path.to_path_buf(),
        id: (meta.dev(), meta.ino()),
        remove: true,
    };
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(UnixSocket { listener, file })
}

/// The process umask, set for as long as this lives (only around a bind: it is process
/// wide, and the mask chosen, 0177, at worst makes a file created meanwhile owner-only).
struct Umask(libc::mode_t);

impl Umask {
    fn set(mask: libc::mode_t) -> Self {
        // SAFETY: umask cannot fail and touches no memory.
        Self(unsafe { libc::umask(mask) })
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::umask(self.0) };
    }
}

/// The id of a group given by name or number (`--socket-group`), through the system's group
/// database (NSS: /etc/group, LDAP, …). `None` if there is no such group.
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: getgrnam_r writes only into `group` and `buf` (whose length it is given)
        // and sets `result` to null or to `&group`.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut group,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        return (rc == 0 && !result.is_null()).then_some(group.gr_gid);
    }
}

/// Accepts connections until `shutdown` turns true; each connection runs as a task in
/// `clients.connections`, so shutdown can wait for them.
///
/// The listener's name in metrics (`listener` label) is `tcp://` and its bound address.
pub async fn serve_tcp(listener: TcpListener, clients: Clients, mut shutdown: ShutdownWatch) {
    let name: Arc<str> = match listener.local_addr() {
        Ok(addr) => format!("tcp://{addr}").into(),
        Err(_) => "tcp://?".into(),
    };
    let admitted_here = clients
        .metrics
        .accepted_connections
        .with_label_values(&[&name]);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let service = clients.service.clone();
                match clients.cap.admit() {
                    Some(admitted) => {
                        admitted_here.inc();
                        let serving = service.serve_tcp(
                            tcp,
                            peer,
                            clients.proxies.clone(),
                            name.clone(),
                            shutdown.clone(),
                        );
                        clients.connections.spawn(async move {
                            serving.await;
                            drop(admitted);
                        });
                    }
                    None => {
                        let refusing = service.refuse_tcp(tcp, clients.cap.max());
                        clients.connections.spawn(refusing);
                    }
                }
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

/// [`serve_tcp`] for a unix listener, named `unix://PATH`. The socket file is removed when
/// this returns, unless the listeners were handed over.
pub async fn serve_unix(socket: UnixSocket, clients: Clients, mut shutdown: ShutdownWatch) {
    let UnixSocket { listener, mut file } = socket;
    let name: Arc<str> = format!("unix://{}", file.path.display()).into();
    let admitted_here = clients
        .metrics
        .accepted_connections
        .with_label_values(&[&name]);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        match accepted {
            Ok((unix, _peer)) => {
                let service = clients.service.clone();
                match clients.cap.admit() {
                    Some(admitted) => {
                        admitted_here.inc();
                        let serving = service.serve_unix(unix, name.clone(), shutdown.clone());
                        clients.connections.spawn(async move {
                            serving.await;
                            drop(admitted);
                        });
                    }
                    None => {
                        let refusing = service.refuse_unix(unix, clients.cap.max());
                        clients.connections.spawn(refusing);
                    }
                }
            }
            Err(e) => accept_failed(e).await,
        }
    }
    // Stop accepting first, then remove the path: a client arriving now gets ENOENT (or
    // ECONNREFUSED), never a connection nobody serves. Handed over, the file is the new
    // process's, which accepts on the same socket: it stays.
    drop(listener);
    file.remove = !clients.handed_over.load(Ordering::Acquire);
    drop(file);
}

async fn accept_failed(e: io::Error) {
    // EMFILE and friends: back off a little instead of spinning.
    warn!(error = %e, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replaces_a_stale_socket_refuses_a_live_one_and_removes_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sock");
        // Stale: bound, then the listener closed without removing the file.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let socket = bind_unix(&path, 0o640, None).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);

        match bind_unix(&path, 0o660, None) {
            Err(UnixBindError::InUse) => {}
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("a live socket was replaced"),
        }
        assert!(path.exists(), "the live socket file was removed");
        drop(socket);
        assert!(!path.exists());

        std::fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(
            bind_unix(&path, 0o660, None),
            Err(UnixBindError::NotASocket)
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    }

    #[test]
    fn looks_groups_up_by_name_and_number() {
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("4242"), Some(4242));
        assert_eq!(group_id("no-such-group-leader-proxy"), None);
    }
}
