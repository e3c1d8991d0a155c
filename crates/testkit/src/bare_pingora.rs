//! `bare-pingora` (crates/bare-pingora), the load benchmark's second anchor: pingora's own
//! server and proxy with a fixed upstream and nothing of leader-proxy, so a benchmark row
//! shows how much of the distance to HAProxy is pingora's and how much leader-proxy's.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::server_process::{free_ports, kill, open_log, wait_ready};

pub struct BarePingora {
    child: Option<Child>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl BarePingora {
    /// Starts it on a free port in front of `upstream`, with as many worker threads as
    /// HAProxy and leader-proxy use here (one per core).
    pub fn start(upstream: SocketAddr) -> BarePingora {
        let binary = crate::bins::bare_pingora();
        let dir = tempfile::Builder::new()
            .prefix("lp-bare-pingora-")
            .tempdir()
            .expect("temp dir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_ports(1)[0])
            .parse()
            .expect("addr");
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let log_path = dir.path().join("stderr.log");
        let child = Command::new(binary)
            .arg(addr.to_string())
            .arg(upstream.to_string())
            .arg(threads.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(open_log(&log_path, "bare-pingora"))
            .spawn()
            .expect("start bare-pingora");
        let child = wait_ready(
            child,
            "bare-pingora",
            "bare-pingora not listening",
            Duration::from_secs(10),
            || std::fs::read_to_string(&log_path).unwrap_or_default(),
            || std::net::TcpStream::connect(addr).is_ok(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        BarePingora {
            child: Some(child),
            addr,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for BarePingora {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
