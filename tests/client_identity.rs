//! Every access-log line says who the client is (`client`, `via`, `cert`), against the
//! real proxy (a real etcd naming a simulated manager as leader): a TCP client's address,
//! the subject of a verified TLS client certificate, a unix client's uid and pid; behind a
//! trusted load balancer speaking the PROXY protocol (v1 or v2) the original client, and
//! from an untrusted source a PROXY header that is not honoured.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use testkit::certs::Certs;
use testkit::etcd_proxy::proxy_with_leader;

const WAIT: Duration = Duration::from_secs(30);
const PING: &[u8] = b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n";

/// Writes `bytes` on `stream` and reads until the proxy closes it.
fn exchange<S: Read + Write>(mut stream: S, bytes: &[u8]) -> String {
    // Refused before it is all written: a reset then is the answer.
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the proxy");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream
}

/// A PROXY protocol version 2 header for a TCP connection from `client` to `proxied_to`
/// (both of one address family).
fn proxy_v2(client: &str, proxied_to: &str) -> Vec<u8> {
    let parse = |addr: &str| addr.parse::<SocketAddr>().expect("an address");
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (parse(client), parse(proxied_to)),
    )
    .build()
    .expect("a v2 header")
}

#[test]
fn tcp_clients_are_logged_by_address_on_requests_and_hijacked_ones() {
    let (_etcd, _dir, _manager, proxy) = proxy_with_leader(&[]);
    let stream = connect(proxy.addr());
    let me = stream.local_addr().expect("local address");
    let answer = exchange(stream, PING);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    proxy.wait_for_log(
        &format!("request client={me} via=- cert=- method=GET"),
        WAIT,
    );

    let mut stream = connect(proxy.addr());
    let me = stream.local_addr().expect("local address");
    stream
        .write_all(
            b"POST /v1.41/containers/c1/attach?stream=1 HTTP/1.1\r\nHost: docker\r\n\
              Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n",
        )
        .expect("an attach request");
    stream.shutdown(Shutdown::Write).expect("half-close");
    let answer = exchange(stream, b"");
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer:?}");
    proxy.wait_for_log(&format!("hijacked request client={me} via=- cert=-"), WAIT);
}

#[test]
fn a_verified_client_certificate_is_logged_by_its_subject() {
    let certs = Certs::new("identity-ca");
    let (cert, key) = certs.client("alice");
    let (ca, server_cert, server_key) = (
        certs.ca.display().to_string(),
        certs.server_cert.display().to_string(),
        certs.server_key.display().to_string(),
    );
    let (_etcd, _dir, _manager, proxy) = proxy_with_leader(&[
        "--tlscert",
        &server_cert,
        "--tlskey",
        &server_key,
        "--tlscacert",
        &ca,
        "--tlsverify",
    ]);
    let mut tls = testkit::tls::connect(proxy.addr(), "127.0.0.1", &certs.ca, Some((&cert, &key)))
        .expect("a TLS connection with a client certificate");
    let me = tls.sock.local_addr().expect("local address");
    let (head, _) = testkit::tls::get(&mut tls, "/_ping").expect("a ping over TLS");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    proxy.wait_for_log(&format!("client={me} via=- cert=\"CN=alice\""), WAIT);
}

#[test]
fn unix_socket_clients_are_logged_by_uid_and_pid() {
    let dir = tempfile::Builder::new()
        .prefix("lp-id-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let path = dir.path().join("p.sock");
    let listen = format!("unix://{}", path.display());
    let (_etcd, _dir, _manager, proxy) = proxy_with_leader(&["--listen", &listen]);
    let stream = UnixStream::connect(&path).expect("connect to the unix listener");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    let answer = exchange(stream, PING);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    // SAFETY: getuid and getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let pid = std::process::id();
    proxy.wait_for_log(
        &format!("client=unix:uid={uid},gid={gid},pid={pid} via=- cert=-"),
        WAIT,
    );
}

#[test]
fn a_trusted_balancer_s_proxy_headers_name_the_original_client() {
    let (_etcd, _dir, _manager, proxy) =
        proxy_with_leader(&["--proxy-protocol-from", "10.0.0.0/8,127.0.0.1"]);

    let stream = connect(proxy.addr());
    let balancer = stream.local_addr().expect("local address");
    let mut v1 = b"PROXY TCP4 203.0.113.9 127.0.0.1 40123 2375\r\n".to_vec();
    v1.extend_from_slice(PING);
    let answer = exchange(stream, &v1);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    proxy.wait_for_log(&format!("client=203.0.113.9:40123 via={balancer}"), WAIT);

    let stream = connect(proxy.addr());
    let balancer = stream.local_addr().expect("local address");
    let mut v2 = proxy_v2("[2001:db8::7]:5000", "[2001:db8::1]:2375");
    v2.extend_from_slice(PING);
    let answer = exchange(stream, &v2);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    proxy.wait_for_log(&format!("client=[2001:db8::7]:5000 via={balancer}"), WAIT);

    // From a trusted source the header is required: without one, no answer.
    let answer = exchange(connect(proxy.addr()), PING);
    assert!(
        answer.is_empty(),
        "served without a PROXY header: {answer:?}"
    );
    proxy.wait_for_log("connection closed: PROXY protocol", WAIT);
}

#[test]
fn an_untrusted_source_s_proxy_header_is_not_honoured() {
    let (_etcd, _dir, _manager, proxy) =
        proxy_with_leader(&["--proxy-protocol-from", "10.0.0.0/8"]);
    let mut v1 = b"PROXY TCP4 203.0.113.9 127.0.0.1 40123 2375\r\n".to_vec();
    v1.extend_from_slice(PING);
    let answer = exchange(connect(proxy.addr()), &v1);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");

    let stream = connect(proxy.addr());
    let mut v2 = proxy_v2("198.51.100.4:5000", "192.0.2.1:2375");
    v2.extend_from_slice(PING);
    let answer = exchange(stream, &v2);
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "a request behind an untrusted v2 header was served: {answer:?}"
    );

    // The proxy still serves this client, by its own address.
    let stream = connect(proxy.addr());
    let me_again = stream.local_addr().expect("local address");
    let answer = exchange(stream, PING);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let log = proxy.wait_for_log_where("the plain request's line", WAIT, |log| {
        log.contains(&format!("client={me_again} "))
    });
    assert!(
        !log.contains("203.0.113.9"),
        "an untrusted header was honoured:\n{log}"
    );
    assert!(
        !log.contains("198.51.100.4"),
        "an untrusted header was honoured:\n{log}"
    );
}

#[test]
fn l4_connections_are_logged_with_the_original_client() {
    let (_etcd, _dir, _manager, proxy) =
        proxy_with_leader(&["--mode", "tcp", "--proxy-protocol-from", "127.0.0.0/8"]);
    let stream = connect(proxy.addr());
    let balancer = stream.local_addr().expect("local address");
    let mut v1 = b"PROXY TCP4 203.0.113.9 127.0.0.1 40123 2375\r\n".to_vec();
    v1.extend_from_slice(PING);
    let answer = exchange(stream, &v1);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the header reached the manager: {answer:?}"
    );
    proxy.wait_for_log(
        &format!("connection client=203.0.113.9:40123 via={balancer}"),
        WAIT,
    );
}
