//! File descriptors against a flood of idle clients, with the proxy started the way systemd
//! and Docker containers start services: a soft open-files limit of 1024 (`prlimit
//! --nofile=1024:<hard>`). The proxy raises it to the hard limit at start, caps client
//! connections with `--max-connections`, answers a client beyond the cap with a quick 503
//! (L7) or closes it (L4), and meanwhile its established clients, its admin API and its
//! store keep working.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use testkit::conformance::standalone;
use testkit::etcd::Etcd;
use testkit::etcd_proxy::KEY;
use testkit::open_files::raise_own_limit;
use testkit::proxy::Proxy;

const WAIT: Duration = Duration::from_secs(30);
const OPEN: &str = "leader_proxy_client_connections ";
const REFUSED: &str = "leader_proxy_client_connections_refused_total";

/// `GET /_ping` on a keep-alive connection: the status and who served it.
fn ping(stream: &mut TcpStream) -> (u16, String) {
    stream
        .write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
        .expect("send a ping");
    let head = testkit::tls::read_head(stream).expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length = header(&head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("the ping's body");
    (status, header(&head, "x-served-by").unwrap_or_default())
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// A keep-alive connection to the proxy, with a read timeout.
fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the proxy");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream
}

/// Waits until the open-connections gauge is at most `max`.
fn wait_for_open_at_most(proxy: &Proxy, max: f64) {
    let deadline = Instant::now() + WAIT;
    while proxy.metric(OPEN) > max {
        assert!(
            Instant::now() < deadline,
            "the proxy still counts {} open client connections, expected at most {max}:\n{}",
            proxy.metric(OPEN),
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Started with a soft limit of 1024 (and this test's hard limit), the proxy runs with the
/// hard limit, logs it, and derives its connection cap from it.
#[test]
fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
    let etcd = Etcd::start();
    let url = format!("etcd://{}/p", etcd.endpoint());
    let proxy = Proxy::start_with_open_files(1024, &[&url]);
    let (_, hard) = testkit::open_files::limits_of("self");
    assert_eq!(
        proxy.open_files_limits(),
        (hard, hard),
        "the proxy's (soft, hard) open-files limits"
    );
    proxy.wait_for_log(
        &format!("open-files limit raised from 1024 to {hard}"),
        WAIT,
    );
    let cap = (hard - 256) / 2;
    proxy.wait_for_log(&format!("at most {cap} client connections at once"), WAIT);
}

#[test]
fn under_a_soft_limit_of_1024_a_flood_of_idle_clients_leaves_the_proxy_serving() {
    raise_own_limit();
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (m1, m2) = (standalone("m1", dir.path()), standalone("m2", dir.path()));
    etcd.put_v2(KEY, &m1.advertise(), None);
    let url = format!("etcd://{}/p", etcd.endpoint());
    // 1100 idle clients take more descriptors than a soft limit of 1024 allows: only a
    // raised limit holds them all.
    let proxy = Proxy::start_with_open_files(1024, &["--max-connections", "1100", &url]);
    proxy.wait_for_leader(WAIT, |l| l["state"] == "leader");

    proxy.wait_for_log("at most 1100 client connections at once", WAIT);

    let mut established = connect(proxy.addr());
    assert_eq!(ping(&mut established), (200, "m1".to_string()));

    // 1200 more: 1099 fit under the cap, 101 are refused.
    let mut idle: Vec<TcpStream> = (0..1200).map(|_| connect(proxy.addr())).collect();
    proxy.wait_for_metric(OPEN, 1100.0, WAIT, "1100 open client connections");
    proxy.wait_for_metric(REFUSED, 101.0, WAIT, "101 refused client connections");
    proxy.wait_for_log(
        "--max-connections reached (1100 client connections open)",
        WAIT,
    );

    // Beyond the cap: a quick 503 the docker CLI prints.
    let refused = testkit::http::get(proxy.addr(), "/_ping").expect("an answer beyond the cap");
    assert_eq!(refused.status, 503, "{}", refused.text());
    let message = refused.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("--max-connections"), "{message:?}");

    // The admin API, an established client and the store keep working.
    let healthz = testkit::http::get(proxy.admin_addr(), "/healthz").expect("/healthz");
    assert_eq!(healthz.status, 200);
    assert_eq!(ping(&mut established), (200, "m1".to_string()));
    etcd.put_v2(KEY, &m2.advertise(), None);
    proxy.wait_for_leader(WAIT, |l| l["leader"] == m2.advertise().as_str());
    assert_eq!(ping(&mut established), (200, "m2".to_string()));

    // Closing a few makes room for new clients. The first ones connected were accepted
    // first (the refused are the last); 50 leave room even if a few were refused.
    idle.drain(..50);
    wait_for_open_at_most(&proxy, 1090.0);
    let mut fresh = connect(proxy.addr());
    assert_eq!(ping(&mut fresh), (200, "m2".to_string()));
    proxy.wait_for_log("below --max-connections again", WAIT);
    drop(idle);
}

#[test]
fn l4_clients_beyond_the_cap_are_accepted_and_closed() {
    raise_own_limit();
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let m1 = standalone("m1", dir.path());
    etcd.put_v2(KEY, &m1.advertise(), None);
    let url = format!("etcd://{}/p", etcd.endpoint());
    let proxy =
        Proxy::start_with_open_files(1024, &["--mode", "tcp", "--max-connections", "5", &url]);
    proxy.wait_for_leader(WAIT, |l| l["state"] == "leader");

    let mut relayed: Vec<TcpStream> = (0..5).map(|_| connect(proxy.addr())).collect();
    for stream in &mut relayed {
        assert_eq!(ping(stream), (200, "m1".to_string()));
    }
    proxy.wait_for_metric(OPEN, 5.0, WAIT, "5 open client connections");

    let mut beyond = connect(proxy.addr());
    // Written before the proxy closes it, or refused with a reset: either way no answer.
    let _ = beyond.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n");
    let mut answer = Vec::new();
    let read = beyond.read_to_end(&mut answer);
    assert!(
        answer.is_empty(),
        "a client beyond the cap was relayed: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        read.is_ok()
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the connection beyond the cap was not closed: {read:?}"
    );
    proxy.wait_for_metric(REFUSED, 1.0, WAIT, "the refused L4 connection counted");

    // The relayed ones go on.
    assert_eq!(ping(&mut relayed[0]), (200, "m1".to_string()));
}

/// On a TLS listener the client beyond the cap gets its 503 over TLS, which the docker CLI
/// can show, not a closed connection.
#[test]
fn a_tls_client_beyond_the_cap_gets_the_503_over_tls() {
    let certs = testkit::certs::Certs::new("cap-ca");
    let mut args = vec!["--max-connections".to_string(), "1".into()];
    args.extend(certs.tlsverify_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_etcd, _dir, _manager, proxy) = testkit::etcd_proxy::proxy_with_leader(&args);
    let client = Some((certs.client_cert.as_path(), certs.client_key.as_path()));
    let mut first = testkit::tls::connect(proxy.addr(), "127.0.0.1", &certs.ca, client)
        .expect("the first TLS client");
    let (head, _) = testkit::tls::get(&mut first, "/_ping").expect("a ping");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let mut second = testkit::tls::connect(proxy.addr(), "127.0.0.1", &certs.ca, client)
        .expect("the handshake beyond the cap");
    let (head, body) = testkit::tls::get(&mut second, "/_ping").expect("an answer over TLS");
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(body.contains("--max-connections"), "{body}");

    let (head, _) = testkit::tls::get(&mut first, "/_ping").expect("the first client again");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}
