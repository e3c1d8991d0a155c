//! The log is written off the request path: a log reader that stalls (a full pipe to a
//! hung journald or `| less`) never stalls requests, and what the writer cannot take is
//! counted, never dropped silently (`leader_proxy_log_lines_dropped_total`; src/log_writer.rs).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use testkit::conformance::standalone;
use testkit::etcd::Etcd;
use testkit::etcd_proxy::KEY;
use testkit::proxy::BenchProxy;

/// Requests on each of the client connections: together, more access-log lines than the
/// pipe (64 KiB) and the log buffer (1 MiB, about 7,000 lines) hold.
const PER_CONNECTION: usize = 6_000;
const CONNECTIONS: usize = 4;

#[test]
fn a_stalled_log_reader_costs_log_lines_counted_not_requests() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = standalone("m1", dir.path());
    etcd.put_v2(KEY, &manager.advertise(), None);
    let url = format!("etcd://{}/p", etcd.endpoint());
    let proxy = BenchProxy::start_with_stalled_log(&[&url]);

    let served: usize = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CONNECTIONS)
            .map(|_| scope.spawn(|| pings(proxy.addr(), PER_CONNECTION)))
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().expect("client thread"))
            .sum()
    });
    assert_eq!(
        served,
        CONNECTIONS * PER_CONNECTION,
        "every request answered 200"
    );
    let dropped = proxy.metric("leader_proxy_log_lines_dropped_total");
    assert!(
        dropped > 0.0,
        "{served} access-log lines into a stalled pipe, none counted as dropped"
    );
    assert!(
        proxy.metric("leader_proxy_requests_total{code=\"200\",") >= served as f64,
        "requests are counted whatever the log does"
    );
}

/// `n` `GET /_ping` on one keep-alive connection; how many were answered 200. The first
/// waits for the proxy to learn its leader.
fn pings(proxy: SocketAddr, n: usize) -> usize {
    let mut conn = TcpStream::connect(proxy).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut ok = 0;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    for _ in 0..n {
        conn.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
            .expect("send");
        // One response: its head, then Content-Length bytes of body.
        let (status, len, head_end) = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let status = head.get(9..12).and_then(|s| s.parse::<u16>().ok());
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .expect("a Content-Length");
                break (status, len, end + 4);
            }
            let read = conn.read(&mut chunk).expect("read");
            assert!(read > 0, "the proxy closed the connection");
            buf.extend_from_slice(&chunk[..read]);
        };
        while buf.len() < head_end + len {
            let read = conn.read(&mut chunk).expect("read");
            assert!(read > 0, "the proxy closed the connection");
            buf.extend_from_slice(&chunk[..read]);
        }
        buf.drain(..head_end + len);
        ok += usize::from(status == Some(200));
    }
    ok
}
