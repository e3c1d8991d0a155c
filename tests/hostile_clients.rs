//! Clients that send what Docker clients do not, against the real proxy (a real etcd naming
//! a simulated manager as leader): heads with bare LF line ends are served, and heads that
//! are too large, have too many headers or do not parse get dockerd's answer (`431`/`400`
//! with a Docker-style JSON `message`) and the connection closes, instead of silence.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use testkit::etcd_proxy::proxy_with_leader;

/// Sends `request` on a new connection and reads until the proxy closes it (or 30 s pass,
/// which fails the test: every case here must end the connection).
fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the proxy");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    // A large head may be refused before it is all written: a reset then is fine.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status line's code and the JSON body's `message`.
fn status_and_message(answer: &str) -> (String, String) {
    let code = answer.split(' ').nth(1).unwrap_or_default().to_string();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_default();
    (code, message)
}

#[test]
fn a_bare_lf_head_is_served() {
    let (_etcd, _dir, _manager, proxy) = proxy_with_leader(&[]);
    let answer = exchange(
        proxy.addr(),
        b"GET /_ping HTTP/1.1\nHost: x\nConnection: close\n\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.ends_with("OK"), "{answer:?}");
}

#[test]
fn oversized_and_malformed_heads_get_a_docker_style_answer() {
    let (_etcd, _dir, _manager, proxy) = proxy_with_leader(&[]);

    let mut huge = b"GET /_ping HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    huge.resize(300 * 1024, b'a');
    huge.extend_from_slice(b"\r\n\r\n");
    let (code, message) = status_and_message(&exchange(proxy.addr(), &huge));
    assert_eq!(code, "431", "a 300 KiB header: {message}");
    assert!(message.contains("larger than"), "{message}");

    let mut many = b"GET /_ping HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..200 {
        many.extend_from_slice(format!("X-Header-{i}: y\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let (code, message) = status_and_message(&exchange(proxy.addr(), &many));
    assert_eq!(code, "431", "200 headers: {message}");

    let (code, message) = status_and_message(&exchange(proxy.addr(), b"GARBAGE\r\n\r\n"));
    assert_eq!(code, "400", "a broken request line: {message}");
    assert!(message.contains("malformed"), "{message}");

    // The proxy still serves the next client.
    let answer = exchange(
        proxy.addr(),
        b"GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}

/// Empty lines before a request line are skipped, as dockerd, httparse and pingora skip
/// them, not taken for a request of their own: an attach sent after two of them is
/// hijacked (101, the stream reaches the manager whole and its EOF with it). Found by the
/// head fuzz target (fuzz/corpus/head/regress-leading-empty-lines).
#[test]
fn empty_lines_before_an_upgrade_request_do_not_hide_it() {
    let (_etcd, _dir, _manager, proxy) = proxy_with_leader(&[]);
    let mut stream = TcpStream::connect(proxy.addr()).expect("connect to the proxy");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    stream
        .write_all(
            b"\r\n\r\nPOST /v1.41/containers/abc/attach?stream=1&stdin=1 HTTP/1.1\r\n\
              Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n",
        )
        .expect("send the attach");
    let head = testkit::tls::read_head(&mut stream).expect("the answer's head");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(&[b'x'; 1000]).expect("send the stream");
    stream.shutdown(Shutdown::Write).expect("half-close");
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    assert!(reply.contains("bytes=1000"), "{reply:?}");
}

/// Every client connection, L7 and L4, carries TCP keepalive probes (30 s idle) and no
/// Nagle delay: read back with `getsockopt` on the proxy's own socket. The listener is
/// tuned once and the accepted sockets inherit it (docs/architecture.md#client-sockets);
/// this is what proves the kernel did copy the options.
#[test]
fn client_connections_have_tcp_keepalive_and_nodelay_in_both_modes() {
    for mode in ["http", "tcp"] {
        let (_etcd, _dir, _manager, proxy) = proxy_with_leader(&["--mode", mode]);
        let client = TcpStream::connect(proxy.addr()).expect("connect to the proxy");
        let local = client.local_addr().expect("local address");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let sockets = loop {
            let sockets = testkit::sockets::connected_to(proxy.pid(), local);
            if !sockets.is_empty() || std::time::Instant::now() > deadline {
                break sockets;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            sockets.len(),
            1,
            "--mode {mode}: the proxy's side of the client"
        );
        let socket = socket2::SockRef::from(&sockets[0]);
        assert!(
            socket.nodelay().expect("TCP_NODELAY"),
            "--mode {mode}: Nagle"
        );
        assert!(
            socket.keepalive().expect("SO_KEEPALIVE"),
            "--mode {mode}: no keepalive"
        );
        assert_eq!(
            socket.keepalive_time().expect("TCP_KEEPIDLE"),
            Duration::from_secs(30),
            "--mode {mode}: keepalive idle time"
        );
        drop(client);
    }
}

/// A git remote's token in a build URL never reaches the access log, nor do build args.
#[test]
fn credentials_in_a_request_url_are_not_logged() {
    let (_etcd, _dir, _manager, proxy) = proxy_with_leader(&[]);
    let answer = exchange(
        proxy.addr(),
        b"POST /v1.41/build?remote=https://user:TOKEN123@git.example/repo.git&\
          buildargs=%7B%22NPM_TOKEN%22%3A%22s3cret456%22%7D HTTP/1.1\r\n\
          Host: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 "), "{answer:?}");
    let log = proxy.wait_for_log_where(
        "the build request's access-log line",
        Duration::from_secs(30),
        |log| log.contains("/v1.41/build"),
    );
    assert!(!log.contains("TOKEN123"), "the token was logged:\n{log}");
    assert!(!log.contains("s3cret456"), "a build arg was logged:\n{log}");
    assert!(
        log.contains("git.example"),
        "the remote's host is still shown:\n{log}"
    );
}

/// The admin address, from the proxy's admin URL.
fn admin_addr(proxy: &testkit::proxy::Proxy) -> std::net::SocketAddr {
    let url = proxy.admin_url("");
    url.trim_start_matches("http://")
        .parse()
        .expect("an admin address")
}

/// A client that trickles its request head to the admin listener is cut off (it would
/// otherwise hold a socket forever), and the admin API goes on answering.
#[test]
fn the_admin_listener_cuts_a_slow_head() {
    let (_etcd, _dir, _manager, proxy) = proxy_with_leader(&[]);
    let admin = admin_addr(&proxy);
    let mut slow = TcpStream::connect(admin).expect("connect to the admin listener");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .expect("write half a head");
    // Far longer than the admin's header timeout: the read ends because the proxy closed.
    slow.set_read_timeout(Some(Duration::from_secs(120)))
        .expect("read timeout");
    let mut rest = Vec::new();
    let ended = slow.read_to_end(&mut rest);
    assert!(
        ended.is_ok(),
        "the slow admin client was not cut off: {ended:?}"
    );
    let healthz = exchange(
        admin,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz:?}");
}

/// Beyond its connection cap the admin listener closes new connections at once instead
/// of spending file descriptors on them; closing the flood makes room again.
#[test]
fn the_admin_listener_caps_its_connections() {
    let (_etcd, _dir, _manager, proxy) = proxy_with_leader(&[]);
    let admin = admin_addr(&proxy);
    let flood: Vec<TcpStream> = (0..128)
        .map(|_| TcpStream::connect(admin).expect("connect to the admin listener"))
        .collect();
    let one_more = exchange(
        admin,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    // A complete request, closed unanswered: refused by the cap, not by a timeout.
    assert!(one_more.is_empty(), "served beyond the cap: {one_more:?}");
    drop(flood);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let healthz = exchange(
            admin,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        if healthz.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the admin listener did not recover after the flood closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
