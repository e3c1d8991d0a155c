//! Runs the real `leader-proxy` binary for a test: free ports (port 0, read back from the
//! `Listening on ADDR` log line), logs kept for the failure message, stopped on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every line a `leader-proxy` wrote to stderr so far, for failure messages.
pub type Log = Arc<Mutex<Vec<String>>>;

/// Reads the stderr of a `leader-proxy` started with it piped, on a thread of its own:
/// every line goes to the returned log, and each `Listening on ADDR` is sent as
/// `(is_admin, ADDR)`. Every launcher of the binary learns its ports from these lines.
pub fn watch_stderr(child: &mut Child) -> (Log, Receiver<(bool, String)>) {
    let stderr = child.stderr.take().expect("piped stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.split("Admin listening on ").nth(1) {
                let _ = tx.send((true, addr.trim().to_string()));
            } else if let Some(addr) = line.split("Listening on ").nth(1) {
                let _ = tx.send((false, addr.trim().to_string()));
            }
            lines.lock().expect("log").push(line);
        }
    });
    (log, rx)
}

pub struct Proxy {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// Starts `leader-proxy --listen 127.0.0.1:0 --admin 127.0.0.1:0 ARGS…` and waits until
    /// both listeners are bound.
    pub fn start(args: &[&str]) -> Proxy {
        Self::start_with_env(args, &[])
    }

    /// [`Self::start`] with extra environment variables (`CONSUL_HTTP_TOKEN`, …) for the
    /// proxy process only.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Proxy {
        let mut child = Command::new(crate::bins::leader_proxy())
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--log-level", "info,access=debug"])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start leader-proxy");
        let (log, rx) = watch_stderr(&mut child);
        let (mut addr, mut admin) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while addr.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((true, a)) => admin = Some(a.parse().expect("admin addr")),
                Ok((false, a)) => addr = Some(a.parse().expect("listen addr")),
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "leader-proxy did not start listening; its log:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
        }
        Proxy {
            child,
            addr: addr.unwrap(),
            admin: admin.unwrap(),
            log,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's process id (to send it SIGHUP).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many files the proxy process has open now (`/proc/PID/fd`).
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .expect("read /proc/PID/fd of the proxy")
            .count()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Everything the proxy logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM and waits for the exit status (at most `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        terminate(&mut self.child, timeout)
    }

    /// The value of a metric line (`name{labels} value`) from `/metrics`, summed over
    /// the series whose line starts with `prefix`.
    pub fn metric(&self, prefix: &str) -> f64 {
        let text = crate::http::get_text(&self.admin_url("/metrics"));
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// `/leader` as JSON.
    pub fn leader(&self) -> serde_json::Value {
        serde_json::from_str(&crate::http::get_text(&self.admin_url("/leader"))).expect("json")
    }

    /// Polls `/metrics` until the metric at `prefix` reaches `at_least`; panics naming
    /// `what` with the proxy log after `timeout`.
    pub fn wait_for_metric(&self, prefix: &str, at_least: f64, timeout: Duration, what: &str) {
        let deadline = Instant::now() + timeout;
        while self.metric(prefix) < at_least {
            assert!(Instant::now() < deadline, "{what}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls the log until `needle` is in it; panics with the log after `timeout`.
    ///
    /// The log is read from the proxy's stderr by a thread of its own: a line the proxy wrote
    /// just before it answered, or before it closed a connection, may not be in [`Self::log`]
    /// yet when the test sees the answer. Check lines with this, not with `log().contains`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        self.wait_for_log_where(&format!("{needle:?}"), timeout, |log| log.contains(needle));
    }

    /// Polls the log until `check` holds for it; panics naming `what`, with the log, after
    /// `timeout`. Returns the log that satisfied `check`.
    pub fn wait_for_log_where(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if check(&log) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} in the proxy log after {timeout:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `/leader` until `check` holds; panics with the proxy log after `timeout`.
    pub fn wait_for_leader(
        &self,
        timeout: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.leader();
            if check(&now) {
                return now;
            }
            if Instant::now() > deadline {
                panic!("/leader stayed {now}; proxy log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM to a `leader-proxy` and waits for its exit status (at most `timeout`): the
/// graceful stop every launcher of the binary uses.
pub fn terminate(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    signal(child.id(), "TERM");
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}
