//! The admin API and the process lifecycle as an operator or a load balancer sees them:
//! `/healthz`, `/readyz` (held elections, timeouts, shutdown), `/leader`'s fields, request
//! metrics and access-log lines, and a graceful SIGTERM that lets running requests finish.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use testkit::conformance::standalone;
use testkit::etcd::Etcd;
use testkit::etcd_proxy::{proxy_for, proxy_with_leader, KEY};
use testkit::http;

fn status(url: &str) -> u16 {
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    http::get(addr.parse().unwrap(), path).unwrap().status
}

#[test]
fn readyz_follows_the_election_and_the_hold_timeout() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let manager = standalone("m1", dir.path());
    // The election counts as open from the proxy's start: --hold-timeout 10s leaves a slow
    // machine ample time to start it and ask before the hold is over.
    let starting = Instant::now();
    let proxy = proxy_for(&etcd, &["--hold-timeout", "10s"]);

    assert_eq!(status(&proxy.admin_url("/healthz")), 200);
    // No leader yet, but for less than --hold-timeout: requests are held, so ready.
    assert_eq!(
        status(&proxy.admin_url("/readyz")),
        200,
        "{:?} after the start, with --hold-timeout 10s",
        starting.elapsed()
    );
    // No leader for longer than --hold-timeout: a load balancer should go elsewhere.
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&proxy.admin_url("/readyz")) != 503 {
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        starting.elapsed() >= Duration::from_secs(10),
        "/readyz turned 503 {:?} after the start, before --hold-timeout 10s",
        starting.elapsed()
    );
    assert_eq!(status(&proxy.admin_url("/healthz")), 200);

    etcd.put_v2(KEY, &manager.advertise(), None);
    let leader = proxy.wait_for_leader(Duration::from_secs(10), |l| l["state"] == "leader");
    assert_eq!(status(&proxy.admin_url("/readyz")), 200);
    assert_eq!(leader["source"], "etcd");
    assert_eq!(leader["changes"], 1);
    let since = leader["since"].as_str().unwrap();
    assert!(
        since.len() >= 20 && since.as_bytes()[10] == b'T' && since.ends_with('Z'),
        "not RFC 3339: {since}"
    );
    assert_eq!(status(&proxy.admin_url("/nope")), 404);
}

#[test]
fn requests_are_counted_by_status_and_logged_once_each() {
    let (_etcd, _dir, manager, proxy) = proxy_with_leader(&[]);

    for _ in 0..3 {
        assert_eq!(http::get(proxy.addr(), "/v1.41/info").unwrap().status, 200);
    }
    assert_eq!(
        http::get(proxy.addr(), "/nothing-here").unwrap().status,
        404
    );
    assert_eq!(
        proxy.metric("leader_proxy_requests_total{code=\"200\","),
        3.0
    );
    assert_eq!(
        proxy.metric("leader_proxy_requests_total{code=\"404\","),
        1.0
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = proxy.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("/v1.41/info")).collect();
        if lines.len() == 3 {
            assert!(
                lines
                    .iter()
                    .all(|l| l.contains("status=200") && l.contains(&manager.advertise())),
                "{lines:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected 3 access-log lines:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_lets_running_requests_finish_and_refuses_new_ones() {
    let (_etcd, _dir, _manager, mut proxy) = proxy_with_leader(&["--shutdown-grace", "20s"]);

    // A stream that takes about 1.5 s is running when SIGTERM arrives.
    let mut running = TcpStream::connect(proxy.addr()).unwrap();
    running
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    running
        .write_all(b"GET /stream?count=4&interval_ms=500 HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 64];
    assert!(running.read(&mut first).unwrap() > 0);

    let addr = proxy.addr();
    let admin = proxy.admin_url("/readyz");
    let waiter = std::thread::spawn(move || proxy.terminate(Duration::from_secs(30)));
    // While shutting down: not ready, and no new connections.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status(&admin), 503, "ready while shutting down");

    let mut rest = Vec::new();
    running.read_to_end(&mut rest).unwrap();
    let whole = [&first[..], &rest[..]].concat();
    let text = String::from_utf8_lossy(&whole);
    assert!(
        text.contains("0\r\n\r\n"),
        "the running stream was cut: {text:?}"
    );
    let exit = waiter.join().unwrap().expect("exited within the grace");
    assert!(exit.success(), "{exit:?}");
}
