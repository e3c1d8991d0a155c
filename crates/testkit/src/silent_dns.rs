//! A DNS server that never answers, for one proxy process only: a UDP socket bound to port
//! 53 of a loopback address of its own and never read (so no ICMP "port unreachable" ends a
//! query early), named by a `resolv.conf` of its own that [`crate::proxy::Proxy`] bind-mounts
//! over `/etc/resolv.conf` in the proxy's private mount namespace. Every name not in
//! `/etc/hosts` then takes the resolver's whole timeout (30 s) to fail. Root only.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};

/// How long the proxy's resolver waits for the silent server: far past the proxy's own 2 s
/// lookup timeout, so a lookup always ends by that timeout.
const RESOLVER_TIMEOUT_S: u32 = 30;

pub struct SilentDns {
    _socket: UdpSocket,
    _dir: tempfile::TempDir,
    resolv_conf: PathBuf,
}

impl SilentDns {
    /// Binds `127.53.X.Y:53` (the first free one, so parallel tests each have theirs).
    pub fn start() -> SilentDns {
        let socket = (1..=u16::MAX)
            .map(|n| Ipv4Addr::new(127, 53, (n >> 8) as u8, n as u8))
            .find_map(|ip| UdpSocket::bind((ip, 53)).ok())
            .expect("bind a UDP port 53 on 127.53.0.0/16 (run the tests as root)");
        let server = socket.local_addr().expect("local addr").ip();
        let dir = tempfile::tempdir().expect("temp dir");
        let resolv_conf = dir.path().join("resolv.conf");
        std::fs::write(
            &resolv_conf,
            format!("nameserver {server}\noptions timeout:{RESOLVER_TIMEOUT_S} attempts:1\n"),
        )
        .expect("write resolv.conf");
        SilentDns {
            _socket: socket,
            _dir: dir,
            resolv_conf,
        }
    }

    /// The `resolv.conf` naming the silent server.
    pub fn resolv_conf(&self) -> &Path {
        &self.resolv_conf
    }
}
