//! An HTTP/1.1 upstream that writes each response's head and body in two writes, without
//! `TCP_NODELAY`, as many small HTTP servers do. Nagle's algorithm then holds the body until
//! the head is acknowledged, so a peer that delays its ACK (Linux does, 40 ms, on a
//! connection it sees as interactive) stalls every response: the case the load benchmark
//! measures sequentially through the proxies and direct (benches/load.rs).
//!
//! Its client, [`sequential`], opens a new connection per request, as the docker CLI does
//! per command: straight to the server that is fast (a new connection starts in quick-ACK
//! mode); a proxy that keeps a pooled connection to the server must not make it slow.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct SplitWriteServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl SplitWriteServer {
    /// Serves `OK` to every request, a thread per connection, keep-alive.
    pub fn start() -> SplitWriteServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(conn) = conn {
                    std::thread::spawn(move || serve(conn));
                }
            }
        });
        SplitWriteServer { addr, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for SplitWriteServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Answers each request head (bodies are not expected) with the head, then the body.
fn serve(mut conn: TcpStream) {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n";
            if conn.write_all(head).is_err() || conn.write_all(b"OK").is_err() {
                return;
            }
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Requests `GET /` on a new connection each, one after another, for `duration`; returns
/// each request's time in seconds (connect to the last byte of the body).
pub fn sequential(addr: SocketAddr, duration: Duration) -> Vec<f64> {
    let end = Instant::now() + duration;
    let mut times = Vec::new();
    while Instant::now() < end {
        let start = Instant::now();
        let mut conn = TcpStream::connect(addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        conn.write_all(b"GET / HTTP/1.1\r\nHost: split\r\n\r\n")
            .expect("send the request");
        let mut response = Vec::new();
        let mut chunk = [0u8; 1024];
        // The answer is small and its body is `OK`: read until it has come.
        while !(response.ends_with(b"\r\n\r\nOK")) {
            match conn.read(&mut chunk) {
                Ok(0) => panic!("{addr} closed before answering: {response:?}"),
                Ok(n) => response.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("{addr}: {e}"),
            }
        }
        assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
        times.push(start.elapsed().as_secs_f64());
    }
    times
}
