//! Scale: long-lived, idle streams held through the proxy (`GET /events`-style: a chunked
//! answer whose first line comes at once, then nothing for an hour), 8,000 of them at once
//! by default. Prints the proxy's resident memory (`VmRSS`) when it has started and learned
//! its leader (idle), with every stream open (and per stream), and 30 s after they all
//! closed. Each stream takes two of the proxy's descriptors, so `--max-connections` is given
//! explicitly (the default, derived from this machine's limit of 20,000, is about 9,872).
//!
//! The streams' manager is a small server in this process (a real etcd names it): a
//! sim-manager would need its own open-files limit raised. Not a test: it asserts only that
//! every stream was served. `cargo bench --bench streams`; `STREAMS=N` for another count.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use testkit::etcd::Etcd;
use testkit::proxy::BenchProxy;

const STREAMS: usize = 8_000;
/// Streams opened at once while ramping up (the listen backlog is the proxy's to bear).
const BATCH: usize = 250;
const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    // `cargo bench` passes `--bench`; a filter that does not name this one skips it.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !args.is_empty() && !args.iter().any(|a| "streams".contains(a.as_str())) {
        return;
    }
    let streams: usize = std::env::var("STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(STREAMS);
    // This process holds both ends it owns: the clients and the manager's side.
    testkit::open_files::raise_own_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let etcd = Etcd::start();
    let manager = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind the manager");
    let manager_addr = manager.local_addr().expect("addr");
    runtime.spawn(serve_idle_streams(manager));
    etcd.put_v2("/s/docker/swarm/leader", &manager_addr.to_string(), None);
    let cap = (streams + 500).to_string();
    let proxy = BenchProxy::start(&[
        "--max-connections",
        &cap,
        &format!("etcd://{}/s", etcd.endpoint()),
    ]);
    let pid = proxy.pid();
    let proxy_addr = proxy.addr();

    // Idle: started, and the leader known (one stream opened and closed).
    runtime.block_on(async {
        let first = open_stream(proxy_addr).await;
        drop(first);
    });
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss(pid);

    let open = runtime.block_on(async {
        let mut open = Vec::with_capacity(streams);
        while open.len() < streams {
            let n = BATCH.min(streams - open.len());
            let batch = futures::future::join_all((0..n).map(|_| open_stream(proxy_addr))).await;
            open.extend(batch);
        }
        open
    });
    std::thread::sleep(Duration::from_secs(2));
    let with_streams = rss(pid);
    let count = open.len();
    drop(open);
    std::thread::sleep(Duration::from_secs(30));
    let after = rss(pid);

    println!("streams: {count} idle chunked streams held through leader-proxy at once");
    println!(
        "  VmRSS idle (started, leader known): {:.1} MiB",
        idle / MIB
    );
    println!(
        "  VmRSS with {count} streams open: {:.1} MiB: {:.1} KiB per stream",
        with_streams / MIB,
        (with_streams - idle) / count as f64 / 1024.0
    );
    println!(
        "  VmRSS 30 s after they closed: {:.1} MiB ({:+.1} MiB against idle)",
        after / MIB,
        (after - idle) / MIB
    );
}

/// `GET /events`-style: sends the request and waits for the head and the first chunk.
async fn open_stream(proxy: std::net::SocketAddr) -> TcpStream {
    let mut conn = TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    conn.write_all(b"GET /v1.41/events HTTP/1.1\r\nHost: docker\r\n\r\n")
        .await
        .expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(6).any(|w| w == b"event\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), conn.read(&mut buf))
            .await
            .expect("the stream's first event in time")
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    conn
}

/// The manager: every request gets a chunked answer with one event, then silence until
/// the proxy closes the connection.
async fn serve_idle_streams(listener: TcpListener) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                        Transfer-Encoding: chunked\r\n\r\n6\r\nevent\n\r\n";
            if conn.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            // Silence until the proxy closes its side.
            let _ = conn.read(&mut buf).await;
        });
    }
}

/// VmRSS of a process, in bytes.
fn rss(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kib| kib * 1024.0)
}
