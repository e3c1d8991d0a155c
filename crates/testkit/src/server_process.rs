//! What the launchers of real servers (etcd, ZooKeeper) share: free ports, the log file the
//! server writes, waiting until it is ready (or has died), and signals. Each launcher only
//! says how to start its server and how to tell that it serves.

use std::fs::File;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// `n` distinct free ports on 127.0.0.1 (all listeners are held while the next is picked,
/// so they differ).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// The server's log at `path`, opened for appending (a restart adds to it); `what` names
/// the server in the failure message.
pub fn open_log(path: &Path, what: &str) -> File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open the {what} log: {e}"))
}

/// Polls `ready` every 50 ms until it holds (then returns the child), the server exits, or
/// `timeout` passes (then kills it). On failure returns why, with the server's `log`.
/// `not_ready` says what it failed to become, as in "etcd not healthy".
pub fn wait_ready(
    mut child: Child,
    what: &str,
    not_ready: &str,
    timeout: Duration,
    log: impl Fn() -> String,
    mut ready: impl FnMut() -> bool,
) -> Result<Child, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited with {status}\n{}", log()));
        }
        if ready() {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{not_ready} after {timeout:?}\n{}", log()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the server (SIGKILL: an outage, not a goodbye) and reaps it, if it runs.
pub fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Sends `signal` (as `kill` takes it: `-STOP`, `-CONT`) to the server, which must run.
pub fn signal(child: Option<&Child>, what: &str, signal: &str) {
    let child = child.unwrap_or_else(|| panic!("{what} is running"));
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {}", child.id());
}
