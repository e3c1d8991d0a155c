//! The proxy end to end against a real etcd and simulated managers (separate processes):
//! following the leader, holding, store outages, bad values, bursts, hijacked connections,
//! the retry rules, and the failover test of DESIGN.md.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::etcd::Etcd;
use support::http;
use support::proxy::Proxy;
use support::sim::{read_log, wait_for_single_primary, SimManager, SimOptions};

const KEY: &str = "/p/docker/swarm/leader";

/// A manager that leads its own election under another prefix, so the test controls the
/// key the proxy follows by hand.
fn standalone_manager(etcd: &Etcd, dir: &Path, name: &str) -> SimManager {
    let opts = SimOptions::new(
        name,
        &format!("etcd://{}/own-{name}", etcd.endpoint()),
        &dir.join("writes.log"),
    )
    .ttl(2);
    SimManager::start(&opts)
}

fn proxy_for(etcd: &Etcd, extra: &[&str]) -> Proxy {
    let url = format!("etcd://{}/p", etcd.endpoint());
    let mut args: Vec<&str> = extra.to_vec();
    args.push(&url);
    Proxy::start(&args)
}

fn served_by(proxy: &Proxy, path: &str) -> String {
    let response = http::get(proxy.addr(), path).expect("request through the proxy");
    assert_eq!(response.status, 200, "GET {path}: {}", response.text());
    response.header("X-Served-By").unwrap_or("-").to_string()
}

#[test]
fn follows_the_initial_leader_and_each_change() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("writes.log");
    let url = format!("etcd://{}/p", etcd.endpoint());
    let mut managers: Vec<SimManager> = ["m1", "m2"]
        .iter()
        .map(|n| SimManager::start(&SimOptions::new(n, &url, &log).ttl(2)))
        .collect();
    let refs: Vec<&SimManager> = managers.iter().collect();
    let first = wait_for_single_primary(&refs, Duration::from_secs(20)).unwrap();

    let proxy = proxy_for(&etcd, &[]);
    let leader = proxy.wait_for_leader(Duration::from_secs(10), |l| l["state"] == "leader");
    assert_eq!(leader["leader"], managers[first].advertise());
    assert_eq!(leader["source"], "etcd");
    assert_eq!(served_by(&proxy, "/v1.41/info"), managers[first].name());

    // SIGTERM makes the primary resign: the other takes over and the proxy follows.
    managers[first].terminate();
    let second = 1 - first;
    assert!(support::sim::wait_until_role(
        managers[second].addr(),
        "primary",
        Duration::from_secs(20)
    ));
    let leader = proxy.wait_for_leader(Duration::from_secs(10), |l| {
        l["leader"] == managers[second].advertise()
    });
    assert_eq!(leader["changes"], 2);
    assert_eq!(served_by(&proxy, "/info"), managers[second].name());
    let log = proxy.log();
    for m in [first, second] {
        let line = format!("New leader elected: {}", managers[m].advertise());
        assert!(log.contains(&line), "missing {line:?} in:\n{log}");
    }
    assert_eq!(proxy.metric("leader_proxy_leader_changes_total"), 2.0);
    assert_eq!(
        proxy.metric(&format!(
            "leader_proxy_leader{{address=\"{}\"}}",
            managers[second].advertise()
        )),
        1.0
    );
}

#[test]
fn holds_requests_while_there_is_no_leader_then_serves_them() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let manager = standalone_manager(&etcd, dir.path(), "m1");
    let proxy = proxy_for(&etcd, &["--hold-timeout", "20s"]);
    proxy.wait_for_leader(Duration::from_secs(10), |l| l["state"] == "no_leader");

    let written = Arc::new(AtomicBool::new(false));
    let held = {
        let (addr, written) = (proxy.addr(), written.clone());
        std::thread::spawn(move || {
            let response = http::get(addr, "/info").expect("held request");
            (response, written.load(Ordering::SeqCst))
        })
    };
    // The request is waiting in the proxy (the metric says so) before the key is written.
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.metric("leader_proxy_held_requests") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "request never held:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    written.store(true, Ordering::SeqCst);
    etcd.put_v2(KEY, &manager.advertise(), None);
    let (response, after_write) = held.join().unwrap();
    assert!(
        after_write,
        "the request was answered before there was a leader"
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("X-Served-By"), Some("m1"));
    assert_eq!(proxy.metric("leader_proxy_held_requests"), 0.0);
}

#[test]
fn answers_503_with_a_docker_message_after_the_hold_timeout() {
    let etcd = Etcd::start();
    let proxy = proxy_for(&etcd, &["--hold-timeout", "300ms"]);
    let response = http::get(proxy.addr(), "/v1.41/containers/json").unwrap();
    assert_eq!(response.status, 503);
    assert_eq!(response.header("Content-Type"), Some("application/json"));
    let message = response.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("no Swarm primary"), "{message}");

    // A leader that refuses connections is no better: 503 naming it.
    etcd.put_v2(KEY, "127.0.0.1:9", None);
    proxy.wait_for_leader(Duration::from_secs(10), |l| l["leader"] == "127.0.0.1:9");
    let response = http::get(proxy.addr(), "/info").unwrap();
    assert_eq!(response.status, 503);
    assert!(
        response.text().contains("127.0.0.1:9"),
        "{}",
        response.text()
    );

    // --max-held 0: nothing waits, 503 at once.
    let strict = proxy_for(&etcd, &["--max-held", "0", "--hold-timeout", "30s"]);
    etcd.delete_v2(KEY);
    strict.wait_for_leader(Duration::from_secs(10), |l| l["state"] == "no_leader");
    let response = http::get(strict.addr(), "/info").unwrap();
    assert_eq!(response.status, 503);
    assert!(
        response.text().contains("--max-held"),
        "{}",
        response.text()
    );
}

#[test]
fn a_store_outage_keeps_the_leader_and_recovers_without_restart() {
    let mut etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let (m1, m2) = (
        standalone_manager(&etcd, dir.path(), "m1"),
        standalone_manager(&etcd, dir.path(), "m2"),
    );
    etcd.put_v2(KEY, &m1.advertise(), None);
    let proxy = proxy_for(&etcd, &[]);
    proxy.wait_for_leader(Duration::from_secs(10), |l| l["leader"] == m1.advertise());

    etcd.stop();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut served = 0;
    while Instant::now() < deadline {
        assert_eq!(served_by(&proxy, "/info"), "m1");
        served += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(served > 10);
    let leader = proxy.wait_for_leader(Duration::from_secs(10), |l| l["state"] == "degraded");
    assert_eq!(leader["leader"], m1.advertise());
    assert!(proxy.metric("leader_proxy_store_errors_total") >= 1.0);
    let ready = http::get_text(&proxy.admin_url("/readyz"));
    assert_eq!(ready.trim(), "ready");

    etcd.restart();
    proxy.wait_for_leader(Duration::from_secs(20), |l| l["state"] == "leader");
    etcd.put_v2(KEY, &m2.advertise(), None);
    proxy.wait_for_leader(Duration::from_secs(10), |l| l["leader"] == m2.advertise());
    assert_eq!(served_by(&proxy, "/info"), "m2");
}

#[test]
fn garbage_values_are_ignored_and_counted() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let (m1, m2) = (
        standalone_manager(&etcd, dir.path(), "m1"),
        standalone_manager(&etcd, dir.path(), "m2"),
    );
    etcd.put_v2(KEY, &m1.advertise(), None);
    let proxy = proxy_for(&etcd, &[]);
    proxy.wait_for_leader(Duration::from_secs(10), |l| l["leader"] == m1.advertise());

    let garbage = [
        "garbage",
        "http://127.0.0.1:2375/path",
        "127.0.0.1:0",
        "{\"a\":1}",
    ];
    for value in garbage {
        etcd.put_v2(KEY, value, None);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.metric("leader_proxy_rejected_leader_values_total") < garbage.len() as f64 {
        assert!(
            Instant::now() < deadline,
            "not all rejected:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        proxy.metric("leader_proxy_rejected_leader_values_total"),
        garbage.len() as f64
    );
    assert_eq!(proxy.leader()["leader"], m1.advertise());
    assert_eq!(served_by(&proxy, "/info"), "m1");
    assert!(proxy.log().contains("ignoring invalid leader value"));

    etcd.put_v2(KEY, &format!("tcp://{}", m2.advertise()), None);
    proxy.wait_for_leader(Duration::from_secs(10), |l| l["leader"] == m2.advertise());
    assert_eq!(served_by(&proxy, "/info"), "m2");
}

#[test]
fn a_burst_of_changes_converges_on_the_last() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let managers: Vec<SimManager> = ["m1", "m2", "m3"]
        .iter()
        .map(|n| standalone_manager(&etcd, dir.path(), n))
        .collect();
    let proxy = proxy_for(&etcd, &[]);
    for i in 0..60 {
        match i % 4 {
            3 => etcd.put_v2(KEY, "not-an-address", None),
            n => etcd.put_v2(KEY, &managers[n].advertise(), None),
        };
    }
    etcd.put_v2(KEY, &managers[1].advertise(), None);
    proxy.wait_for_leader(Duration::from_secs(10), |l| {
        l["leader"] == managers[1].advertise()
    });
    // Settled: it stays there, and traffic goes there.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(proxy.leader()["leader"], managers[1].advertise());
    for _ in 0..5 {
        assert_eq!(served_by(&proxy, "/info"), "m2");
    }
}

/// Reads a response head from a raw stream, byte by byte (nothing past the head).
fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "EOF in head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[test]
fn upgrade_keeps_headers_and_forwards_half_close_on_a_keep_alive_connection() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let manager = standalone_manager(&etcd, dir.path(), "m1");
    etcd.put_v2(KEY, &manager.advertise(), None);
    let proxy = proxy_for(&etcd, &[]);
    proxy.wait_for_leader(Duration::from_secs(10), |l| l["state"] == "leader");

    let mut stream = TcpStream::connect(proxy.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // A plain request first: the upgrade comes on a reused keep-alive connection, as
    // docker-py sends it.
    stream
        .write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
        .unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut ok = [0u8; 2];
    stream.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"OK");

    stream
        .write_all(
            b"POST /v1.41/containers/abc/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: docker\r\n\
              Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n",
        )
        .unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: tcp"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");

    let payload = vec![b'x'; 300_000];
    stream.write_all(&payload).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.contains("served_by=m1"), "{reply}");
    assert!(reply.contains("bytes=300000"), "{reply}");
}

#[test]
fn streams_are_not_buffered_and_bodies_arrive_whole() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let manager = standalone_manager(&etcd, dir.path(), "m1");
    etcd.put_v2(KEY, &manager.advertise(), None);
    let proxy = proxy_for(&etcd, &[]);
    proxy.wait_for_leader(Duration::from_secs(10), |l| l["state"] == "leader");

    // The second line comes 3 s after the first: the first must arrive on its own.
    let mut stream = TcpStream::connect(proxy.addr()).unwrap();
    stream
        .write_all(b"GET /stream?count=2&interval_ms=3000 HTTP/1.1\r\nHost: docker\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(2500)))
        .unwrap();
    let head = read_head(&mut stream);
    assert!(head.contains("200"), "{head}");
    let mut first = [0u8; 256];
    let n = stream
        .read(&mut first)
        .expect("first line of the stream, before the second is written");
    assert!(n > 0);

    // A 5 MB chunked upload reaches the manager byte for byte.
    let body: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut stream = TcpStream::connect(proxy.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: docker\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .unwrap();
    for chunk in body.chunks(64 * 1024) {
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .unwrap();
        stream.write_all(chunk).unwrap();
        stream.write_all(b"\r\n").unwrap();
    }
    stream.write_all(b"0\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let response = http::parse(&raw).unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let answer = response.json();
    assert_eq!(answer["bytes"], body.len());
    use sha2::Digest;
    let want = format!("{:x}", sha2::Sha256::digest(&body));
    assert_eq!(answer["sha256"], want);
}

#[test]
fn retry_rules_on_the_fault_endpoints() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let manager = standalone_manager(&etcd, dir.path(), "m1");
    etcd.put_v2(KEY, &manager.advertise(), None);
    let proxy = proxy_for(&etcd, &[]);
    proxy.wait_for_leader(Duration::from_secs(10), |l| l["state"] == "leader");
    let log = dir.path().join("writes.log");
    let hits = |id: &str| read_log(&log).iter().filter(|l| l.request_id == id).count();
    let send = |method: &str, path: &str, id: &str| {
        http::request(
            proxy.addr(),
            method,
            path,
            &[("X-Request-Id", id)],
            b"",
            Duration::from_secs(10),
        )
    };

    // A GET whose connection dropped after the request was written: sent once more.
    let response = send("GET", "/fault/drop-after-request", "get-dropped").unwrap();
    assert_eq!(response.status, 502, "{}", response.text());
    assert!(response.json()["message"].is_string());
    assert_eq!(hits("get-dropped"), 2);

    // A POST in the same case: never sent twice, the client gets 502 and decides.
    let response = send("POST", "/fault/drop-after-request", "post-dropped").unwrap();
    assert_eq!(response.status, 502, "{}", response.text());
    assert_eq!(hits("post-dropped"), 1);

    // A GET whose response had already started reaching the client: not sent again; the
    // client sees the truncated answer.
    let truncated = send("GET", "/fault/drop-after-first-byte", "get-started");
    assert!(
        truncated
            .as_ref()
            .map_or(true, |r| r.status == 200 && r.body.len() < 100),
        "{truncated:?}"
    );
    assert_eq!(hits("get-started"), 1);
    assert_eq!(
        proxy.metric("leader_proxy_retries_total{reason=\"idempotent\"}"),
        1.0
    );
}
