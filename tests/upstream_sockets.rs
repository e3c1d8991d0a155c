//! What the proxy does with its upstream sockets, seen from the kernel: the options read
//! back with `getsockopt` on the proxy's own sockets (crates/testkit/src/sockets.rs), and
//! the delayed ACKs counted by the kernel. docs/architecture.md#upstream-sockets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use testkit::etcd::Etcd;
use testkit::etcd_proxy::{proxy_for, KEY};
use testkit::split_write::SplitWriteServer;

const REQUESTS: u64 = 20;

/// A manager that writes its response head and body in two writes without `TCP_NODELAY`
/// holds each body until the head is acknowledged. Through the proxy's pooled connection
/// no response waits for a delayed ACK (the kernel's `DelayedACKs` counter, in a network
/// namespace of this test's own, so no other test's traffic counts), where without
/// `TCP_QUICKACK` each one did (the 40 ms stall benches/load.rs measures).
#[test]
fn a_split_write_manager_is_not_stalled_by_delayed_acks() {
    testkit::sockets::private_network();
    let etcd = Etcd::start();
    let manager = SplitWriteServer::start();
    etcd.put_v2(KEY, &manager.addr().to_string(), None);
    let proxy = proxy_for(&etcd, &[]);
    proxy.wait_for_leader(Duration::from_secs(10), |l| l["state"] == "leader");
    // The first request opens the pooled connection (a new connection acknowledges at once
    // anyway); the others reuse it.
    get_ok(proxy.addr());

    let before = testkit::sockets::delayed_acks();
    for _ in 0..REQUESTS {
        get_ok(proxy.addr());
    }
    let delayed = testkit::sockets::delayed_acks() - before;
    assert!(
        delayed < REQUESTS / 2,
        "{delayed} delayed ACKs for {REQUESTS} requests through one pooled upstream connection"
    );

    let sockets = testkit::sockets::connected_to(proxy.pid(), manager.addr());
    assert!(!sockets.is_empty(), "no pooled connection to the manager");
    for socket in &sockets {
        let nodelay = socket2::SockRef::from(socket)
            .nodelay()
            .expect("getsockopt TCP_NODELAY");
        assert!(nodelay, "an upstream socket has Nagle's delay");
    }
}

/// `GET /` on a new connection, read to the end of its 2-byte body.
fn get_ok(proxy: SocketAddr) {
    let mut client = TcpStream::connect(proxy).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: split\r\n\r\n")
        .expect("send");
    let mut response = Vec::new();
    let mut chunk = [0u8; 512];
    while !response.ends_with(b"\r\n\r\nOK") {
        let n = client.read(&mut chunk).expect("read the answer");
        assert!(
            n > 0,
            "closed early: {}",
            String::from_utf8_lossy(&response)
        );
        response.extend_from_slice(&chunk[..n]);
    }
    assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
}
