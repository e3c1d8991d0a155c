//! `--mode tcp`, the L4 passthrough, with a real etcd naming simulated managers (separate
//! processes) as leader, and no dockerd (tests/docker_e2e.rs runs the docker CLI through it
//! to TLS-only dockerd): connections go to the current leader, wait for one up to
//! `--hold-timeout` (then are closed), follow `--on-leader-change close|drain`, keep
//! half-close, pass TLS through untouched to a manager that checks client certificates, and
//! show in the metrics.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use testkit::certs::Certs;
use testkit::conformance::standalone;
use testkit::etcd::Etcd;
use testkit::proxy::Proxy;
use testkit::tls::{connect, get, read_head, refused, TlsManager};

const KEY: &str = "/p/docker/swarm/leader";
const WAIT: Duration = Duration::from_secs(20);

fn l4_proxy(etcd: &Etcd, extra: &[&str]) -> Proxy {
    let url = format!("etcd://{}/p", etcd.endpoint());
    let mut args = vec!["--mode", "tcp"];
    args.extend_from_slice(extra);
    args.push(&url);
    Proxy::start(&args)
}

/// A keep-alive connection through the proxy, and the manager that answered its request.
fn open(proxy: &Proxy) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(proxy.addr()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let served_by = ping(&mut stream);
    (stream, served_by)
}

/// `GET /_ping` on a keep-alive connection: who answered.
fn ping(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
        .unwrap();
    let head = read_head(stream).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut ok = [0u8; 2];
    stream.read_exact(&mut ok).unwrap();
    served_by(&head)
}

/// The `X-Served-By` of a response head.
fn served_by(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-served-by")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| "-".to_string())
}

/// Waits until the proxy closes `stream` (EOF or reset); how long that took.
fn closed_within(stream: &mut TcpStream, timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => Some(started.elapsed()),
        Ok(n) => panic!("unexpected bytes: {:?}", &buf[..n]),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(started.elapsed()),
        Err(_) => None,
    }
}

#[test]
fn follows_the_leader_holds_closes_and_counts() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let (m1, m2) = (standalone("m1", dir.path()), standalone("m2", dir.path()));
    etcd.put_v2(KEY, &m1.advertise(), None);
    let proxy = l4_proxy(
        &etcd,
        &["--on-leader-change", "close", "--hold-timeout", "1s"],
    );
    proxy.wait_for_leader(WAIT, |l| l["leader"] == m1.advertise().as_str());

    let (mut first, first_by) = open(&proxy);
    assert_eq!(first_by, "m1");
    assert_eq!(
        ping(&mut first),
        "m1",
        "a keep-alive connection stays on its leader"
    );

    // Half-close goes through: the manager reads to EOF and still answers.
    let mut stream = TcpStream::connect(proxy.addr()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(
            b"POST /v1.41/containers/abc/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: docker\r\n\
              Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n",
        )
        .unwrap();
    let head = read_head(&mut stream).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(&vec![b'z'; 100_000]).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(
        reply.contains("served_by=m1 ") && reply.contains("bytes=100000"),
        "{reply}"
    );

    // A change: the open connection is ended (close), new ones go to m2.
    etcd.put_v2(KEY, &m2.advertise(), None);
    proxy.wait_for_leader(WAIT, |l| l["leader"] == m2.advertise().as_str());
    // At once with close; drain would keep it for its default 5 minutes.
    let ended = closed_within(&mut first, WAIT);
    assert!(
        ended.is_some(),
        "the connection to the old leader stayed open"
    );
    assert_eq!(open(&proxy).1, "m2");
    proxy.wait_for_log("ending an L4 connection to the old leader", WAIT);

    // No leader: a connection waits --hold-timeout, then is closed without a byte; one
    // arriving while it waits takes the leader named meanwhile.
    //
    // The wait is timed from before the connection is made, so a proxy that holds it for
    // --hold-timeout (1 s) is never under 1 s. It must be closed well before 20 s: far
    // above 1 s for a slow machine, and below the 30 s default, so a proxy that ignored
    // the flag fails.
    etcd.delete_v2(KEY);
    proxy.wait_for_leader(WAIT, |l| l["state"] == "no_leader");
    let connecting = Instant::now();
    let mut waiting = TcpStream::connect(proxy.addr()).unwrap();
    assert!(
        closed_within(&mut waiting, Duration::from_secs(20)).is_some(),
        "not closed within 20 s (--hold-timeout 1s)"
    );
    let waited = connecting.elapsed();
    assert!(
        waited >= Duration::from_secs(1),
        "closed after {waited:?}, before --hold-timeout 1s"
    );
    let mut held = TcpStream::connect(proxy.addr()).unwrap();
    held.set_read_timeout(Some(WAIT)).unwrap();
    held.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
        .unwrap();
    // Only once the proxy holds it is the leader named: it must take the new one.
    proxy.wait_for_metric(
        "leader_proxy_held_requests",
        1.0,
        WAIT,
        "the connection is not held",
    );
    etcd.put_v2(KEY, &m1.advertise(), None);
    let head = read_head(&mut held).unwrap();
    assert_eq!(served_by(&head), "m1", "{head}");

    let metric = |name: &str| proxy.metric(name);
    assert_eq!(
        metric("leader_proxy_l4_connections_total{result=\"refused\"}"),
        1.0
    );
    assert!(metric("leader_proxy_l4_connections_total{result=\"proxied\"}") >= 4.0);
    assert!(metric("leader_proxy_l4_bytes_total{direction=\"to_leader\"}") >= 100_000.0);
    assert!(metric("leader_proxy_l4_bytes_total{direction=\"to_client\"}") > 0.0);
    assert_eq!(
        metric("leader_proxy_l4_open_connections"),
        1.0,
        "`held` is open"
    );
    drop(held);
    let deadline = Instant::now() + WAIT;
    while metric("leader_proxy_l4_open_connections") != 0.0 {
        assert!(
            Instant::now() < deadline,
            "open connections never went back to 0"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn drain_lets_connections_run_until_the_drain_timeout() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let (m1, m2) = (standalone("m1", dir.path()), standalone("m2", dir.path()));
    etcd.put_v2(KEY, &m1.advertise(), None);
    let proxy = l4_proxy(
        &etcd,
        &["--on-leader-change", "drain", "--drain-timeout", "3s"],
    );
    proxy.wait_for_leader(WAIT, |l| l["leader"] == m1.advertise().as_str());
    let (mut old, _) = open(&proxy);
    etcd.put_v2(KEY, &m2.advertise(), None);
    let changed = Instant::now();
    proxy.wait_for_leader(WAIT, |l| l["leader"] == m2.advertise().as_str());
    assert_eq!(open(&proxy).1, "m2");
    assert_eq!(
        ping(&mut old),
        "m1",
        "drained connections keep working on the old leader"
    );
    let ended = closed_within(&mut old, Duration::from_secs(10));
    assert!(ended.is_some(), "not ended after --drain-timeout");
    let after = changed.elapsed();
    assert!(
        after >= Duration::from_millis(2500),
        "ended {after:?} after the change, before --drain-timeout 3s"
    );
}

/// L4 in front of a TLS-only manager: the client's TLS goes through untouched; the manager
/// checks the client certificate, the client checks the manager's.
#[test]
fn passes_tls_through_to_a_manager_that_checks_client_certificates() {
    let certs = Certs::new("managers-ca");
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let sim = standalone("m1", dir.path());
    let manager = TlsManager::start([127, 0, 0, 1].into(), sim.addr(), &certs);
    etcd.put_v2(KEY, &manager.addr().to_string(), None);
    let proxy = l4_proxy(&etcd, &[]);
    proxy.wait_for_leader(WAIT, |l| l["state"] == "leader");

    let mut tls = connect(
        proxy.addr(),
        "127.0.0.1",
        &certs.ca,
        Some((&certs.client_cert, &certs.client_key)),
    )
    .unwrap();
    let (status, body) = get(&mut tls, "/_ping").unwrap();
    assert!(status.contains("200") && body == "OK", "{status} {body}");
    assert_eq!(manager.handshakes(), 1);

    let (refused_no_cert, why) = refused(proxy.addr(), &certs.ca, None);
    assert!(refused_no_cert, "{why}");
    let other = Certs::new("other-ca");
    let (refused_other, why) = refused(
        proxy.addr(),
        &certs.ca,
        Some((&other.client_cert, &other.client_key)),
    );
    assert!(refused_other, "{why}");
    // The manager, not the proxy, refused them: it counts the failure just after sending
    // its alert, so the client may know before the counter does.
    let deadline = Instant::now() + WAIT;
    while manager.failed_handshakes() < 2 {
        assert!(
            Instant::now() < deadline,
            "the manager saw no refused handshake"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
