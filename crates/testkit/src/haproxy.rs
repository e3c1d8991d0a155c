//! HAProxy, the anchor of the load benchmark (benches/load.rs): in the proxy's place, with
//! its defaults (one thread per core, keep-alive on both sides, server connections reused)
//! and one static `server` line to the upstream, in `mode http` or `mode tcp`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::programs::Program;
use crate::server_process::{free_ports, kill, open_log, wait_ready};

pub const HAPROXY: Program = Program::new("TESTKIT_HAPROXY", "/usr/sbin/haproxy");

/// `mode http` (L7) or `mode tcp` (L4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaproxyMode {
    Http,
    Tcp,
}

pub struct Haproxy {
    child: Option<Child>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts HAProxy on a free port in front of `upstream`.
    pub fn start(mode: HaproxyMode, upstream: SocketAddr) -> Haproxy {
        HAPROXY.require("apt-get install haproxy (or run scripts/install-deps)");
        let dir = tempfile::Builder::new()
            .prefix("lp-haproxy-")
            .tempdir()
            .expect("temp dir");
        let port = free_ports(1)[0];
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mode = match mode {
            HaproxyMode::Http => "http",
            HaproxyMode::Tcp => "tcp",
        };
        // Only what HAProxy warns without (timeouts); everything else is its default (its
        // connection limit follows the open-files limit).
        let conf = format!(
            "defaults\n  mode {mode}\n  timeout connect 5s\n  timeout client 300s\n  \
             timeout server 300s\n\
             frontend front\n  bind {addr}\n  default_backend managers\n\
             backend managers\n  server m1 {upstream}\n"
        );
        let conf_path = dir.path().join("haproxy.cfg");
        std::fs::write(&conf_path, conf).expect("write haproxy.cfg");
        let log_path = dir.path().join("stderr.log");
        let child = Command::new(HAPROXY.path())
            .arg("-f")
            .arg(&conf_path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(open_log(&log_path, "haproxy"))
            .spawn()
            .expect("start haproxy");
        let child = wait_ready(
            child,
            "haproxy",
            "haproxy not listening",
            Duration::from_secs(10),
            || std::fs::read_to_string(&log_path).unwrap_or_default(),
            || std::net::TcpStream::connect(addr).is_ok(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Haproxy {
            child: Some(child),
            addr,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
