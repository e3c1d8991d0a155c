//! Who a client connection is: made once, when the connection is accepted
//! ([`super::listener`]), and carried by every path that serves it, so each access-log line
//! (L7 request, hijacked request, L4 connection) says who sent it.
//!
//! This is also what the access policy (issue #12's policy part) decides on: the client's
//! address (the original one behind a trusted load balancer speaking the PROXY protocol),
//! the subject of its verified TLS client certificate, or its uid on a unix socket.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use super::OrDash;

/// The identity of one client connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    /// Where the connection comes from.
    pub peer: Peer,
    /// The load balancer the connection came through, when a PROXY protocol header from a
    /// trusted source named the original client (`--proxy-protocol-from`); `peer` is then
    /// that original client.
    pub via: Option<SocketAddr>,
    /// The subject of the client certificate, when client TLS verified one (`--tlsverify`),
    /// in RFC 4514 form (`CN=alice,O=ops`).
    pub tls_subject: Option<String>,
    /// The listener it was accepted on (`tcp://ADDR`, `unix://PATH`), the `listener` label
    /// of its requests' metric; `None` for a connection made outside a listener (unit tests).
    pub listener: Option<Arc<str>>,
}

/// The other end of a client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client's address.
    Tcp(SocketAddr),
    /// A unix-socket client, as the kernel reports it (`SO_PEERCRED`): its user, group and
    /// process at the time it connected. `None` where the kernel did not say.
    Unix {
        uid: Option<u32>,
        gid: Option<u32>,
        pid: Option<i32>,
    },
}

impl ClientIdentity {
    /// A TCP client as accepted.
    pub fn tcp(peer: SocketAddr) -> Self {
        Self {
            peer: Peer::Tcp(peer),
            via: None,
            tls_subject: None,
            listener: None,
        }
    }

    /// A unix-socket client, from the credentials of `unix` (unknown ones are `None`).
    pub fn unix(unix: &tokio::net::UnixStream) -> Self {
        let peer = match unix.peer_cred() {
            Ok(cred) => Peer::Unix {
                uid: Some(cred.uid()),
                gid: Some(cred.gid()),
                pid: cred.pid(),
            },
            Err(_) => Peer::Unix {
                uid: None,
                gid: None,
                pid: None,
            },
        };
        Self {
            peer,
            via: None,
            tls_subject: None,
            listener: None,
        }
    }

    /// The identity a trusted load balancer's PROXY header gave: `client` connected to the
    /// balancer at `via`.
    pub fn proxied(client: SocketAddr, via: SocketAddr) -> Self {
        Self {
            peer: Peer::Tcp(client),
            via: Some(via),
            tls_subject: None,
            listener: None,
        }
    }

    /// The same, with the subject of the client's verified TLS certificate.
    pub fn with_tls_subject(mut self, subject: Option<String>) -> Self {
        self.tls_subject = subject;
        self
    }

    /// The same, accepted on `listener` (`tcp://ADDR` or `unix://PATH`: [`super::listener`]).
    pub fn on_listener(mut self, listener: Arc<str>) -> Self {
        self.listener = Some(listener);
        self
    }

    /// The `listener` label of this connection's metrics: `-` outside a listener.
    pub fn listener_label(&self) -> &str {
        self.listener.as_deref().unwrap_or("-")
    }
}

/// The access log's fields for a client: `client` (its [`Peer`]), `via` (the balancer) and
/// `cert` (the quoted certificate subject), each `-` where there is none. `None` for a
/// request served outside a front's [`scope`].
pub fn log_fields(
    client: Option<&ClientIdentity>,
) -> (OrDash<&Peer>, OrDash<SocketAddr>, CertSubject<'_>) {
    (
        OrDash(client.map(|c| &c.peer)),
        OrDash(client.and_then(|c| c.via)),
        CertSubject(client.and_then(|c| c.tls_subject.as_deref())),
    )
}

/// `IP:PORT`, or `unix:uid=U,gid=G,pid=P` (`-` for what the kernel did not say): the access
/// log's `client` field, without spaces so a line stays `key=value` pairs.
impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => addr.fmt(f),
            Peer::Unix { uid, gid, pid } => write!(
                f,
                "unix:uid={},gid={},pid={}",
                OrDash(*uid),
                OrDash(*gid),
                OrDash(*pid)
            ),
        }
    }
}

/// A certificate subject for the log, quoted (it may hold spaces), or `-`.
pub struct CertSubject<'a>(Option<&'a str>);

impl fmt::Display for CertSubject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(subject) => write!(f, "{subject:?}"),
            None => f.write_str("-"),
        }
    }
}

tokio::task_local! {
    /// The client of the connection whose requests pingora is serving: pingora creates the
    /// per-request context without the connection, so the front scopes the identity around
    /// `process_new_http` (pingora runs the request in the front's task) and
    /// [`super::http::DockerApi`] reads it for the access log.
    static CURRENT: Arc<ClientIdentity>;
}

/// Runs `serving` with `client` as the [`current`] client.
pub async fn scope<F: std::future::Future>(client: Arc<ClientIdentity>, serving: F) -> F::Output {
    CURRENT.scope(client, serving).await
}

/// The client of the request being served; `None` outside a front's [`scope`] (a unit test
/// driving the L7 path directly).
pub fn current() -> Option<Arc<ClientIdentity>> {
    CURRENT.try_with(Arc::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_forms_have_no_spaces_except_in_a_quoted_subject() {
        let tcp = ClientIdentity::tcp("192.0.2.7:5123".parse().unwrap());
        let (client, via, cert) = log_fields(Some(&tcp));
        assert_eq!(client.to_string(), "192.0.2.7:5123");
        assert_eq!(via.to_string(), "-");
        assert_eq!(cert.to_string(), "-");
        let proxied = ClientIdentity::proxied(
            "198.51.100.1:40000".parse().unwrap(),
            "127.0.0.1:9".parse().unwrap(),
        )
        .with_tls_subject(Some("CN=alice, O=ops".into()));
        let (_, via, cert) = log_fields(Some(&proxied));
        assert_eq!(via.to_string(), "127.0.0.1:9");
        assert_eq!(cert.to_string(), "\"CN=alice, O=ops\"");
        let unix = Peer::Unix {
            uid: Some(0),
            gid: Some(0),
            pid: None,
        };
        assert_eq!(unix.to_string(), "unix:uid=0,gid=0,pid=-");
    }
}
