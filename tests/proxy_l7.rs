//! The L7 proxy's own behaviour, with a real etcd naming a simulated manager (a separate
//! process) as leader: 503s and their messages, `--max-held`, hijacked connections with
//! half-close, unbuffered streams, large uploads, and the retry rules. What depends on the
//! store (following, holding, outages, bad values, failover) is in the conformance suite.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use testkit::etcd::Etcd;
use testkit::etcd_proxy::{proxy_for, proxy_with_leader, KEY};
use testkit::http;
use testkit::sim::read_log;

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
    let (_etcd, _dir, _manager, proxy) = proxy_with_leader(&[]);

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
    let (_etcd, _dir, _manager, proxy) = proxy_with_leader(&[]);

    // The second line comes 30 s after the first: the first must arrive on its own, within
    // 20 s (it takes milliseconds), so a proxy that holds it back until more follows fails,
    // and a slow machine does not.
    let mut stream = TcpStream::connect(proxy.addr()).unwrap();
    stream
        .write_all(b"GET /stream?count=2&interval_ms=30000 HTTP/1.1\r\nHost: docker\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
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
    let (_etcd, dir, _manager, proxy) = proxy_with_leader(&[]);
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
    // The access log tells the cut: the status the client got, and the error after it
    // (tests/swarm_mode.rs relies on this line to tell a cut answer from a failure).
    let needle = "path=/fault/drop-after-first-byte";
    let log = proxy.wait_for_log_where(needle, Duration::from_secs(10), |log| log.contains(needle));
    let cut = log.lines().find(|l| l.contains(needle)).unwrap_or_default();
    assert!(
        cut.contains("status=200 ") && !cut.ends_with("error=-"),
        "{cut}"
    );
    assert_eq!(
        proxy.metric("leader_proxy_retries_total{reason=\"idempotent\"}"),
        1.0
    );
}

/// `docker attach` to a container the manager does not have: the `Upgrade` request gets a
/// 404 instead of `101`, and the connection is HTTP again. The next request on it is read
/// like any other: answered, logged and counted on its own.
#[test]
fn an_upgrade_answered_without_101_gives_the_connection_back_to_http() {
    let (_etcd, _dir, _manager, proxy) = proxy_with_leader(&[]);
    let mut stream = TcpStream::connect(proxy.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(
            b"POST /v1.41/containers/nonexistent/attach?stream=1&stdout=1 HTTP/1.1\r\n\
              Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n",
        )
        .unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("No such container: nonexistent"), "{body}");

    let served = proxy.metric("leader_proxy_requests_total{code=\"200\",");
    stream
        .write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
        .unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut ok = [0u8; 2];
    stream.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"OK");

    // Each request has its own access-log line and its own count.
    let access = |log: &str, needle: &str| {
        log.lines()
            .any(|l| l.contains("access:") && l.contains(needle))
    };
    proxy.wait_for_log_where("the access-log lines", Duration::from_secs(10), |log| {
        access(log, "containers/nonexistent/attach") && access(log, "path=/_ping status=200")
    });
    proxy.wait_for_metric(
        "leader_proxy_requests_total{code=\"200\",",
        served + 1.0,
        Duration::from_secs(10),
        "the ping after the refused upgrade is not counted",
    );
    assert_eq!(
        proxy.metric("leader_proxy_requests_total{code=\"404\","),
        1.0
    );
}
