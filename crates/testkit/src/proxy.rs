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
        Self::launch(Command::new(crate::bins::leader_proxy()), args, env)
    }

    /// [`Self::start`] with the soft open-files limit set to `soft` (the hard one left as
    /// this process has it), as systemd or a Docker container starts a service: through
    /// `prlimit`, which runs the proxy in its own process (so [`Self::pid`] is the proxy's).
    pub fn start_with_open_files(soft: u64, args: &[&str]) -> Proxy {
        let hard = match crate::open_files::limits_of("self") {
            (_, u64::MAX) => "unlimited".to_string(),
            (_, hard) => hard.to_string(),
        };
        crate::open_files::require_prlimit();
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={soft}:{hard}"))
            .arg("--")
            .arg(crate::bins::leader_proxy());
        Self::launch(command, args, &[])
    }

    /// [`Self::start`] with `/etc/resolv.conf` replaced, for the proxy process only, by
    /// `dns`'s (a private mount namespace set up between fork and exec), so every name the
    /// proxy looks up goes to a server that never answers. Root only.
    pub fn start_with_silent_dns(dns: &crate::silent_dns::SilentDns, args: &[&str]) -> Proxy {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::process::CommandExt;
        let source = std::ffi::CString::new(dns.resolv_conf().as_os_str().as_bytes())
            .expect("a path without NUL");
        let mut command = Command::new(crate::bins::leader_proxy());
        // SAFETY: only system calls between fork and exec, on strings made before the fork.
        unsafe {
            command.pre_exec(move || {
                let root = c"/";
                let target = c"/etc/resolv.conf";
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        std::ptr::null(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0
                    || libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self::launch(command, args, &[])
    }

    /// Starts `leader-proxy ARGS…` without listener flags of its own: `args`, or the
    /// `--config` file they name, give `--listen` (one TCP address at least) and `--admin`:
    /// a file whose `listen` SIGHUP may change, or an upgrade (`--upgrade`) that takes the
    /// addresses of a running proxy over. Waits for both like [`Self::start`].
    pub fn start_with_listeners_in(args: &[&str]) -> Proxy {
        let mut command = Command::new(crate::bins::leader_proxy());
        command.args(["--log-level", "info,access=debug"]);
        Self::spawn(command, args, &[])
    }

    /// Runs `command` (the proxy, or a wrapper that execs it) with the test's listeners,
    /// log level and `args`.
    fn launch(mut command: Command, args: &[&str], env: &[(&str, &str)]) -> Proxy {
        command
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--log-level", "info,access=debug"]);
        Self::spawn(command, args, env)
    }

    /// Runs `command` with `args` and waits for its TCP and admin listeners.
    fn spawn(mut command: Command, args: &[&str], env: &[(&str, &str)]) -> Proxy {
        let mut child = command
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
                // A unix listener given in `args`: bound before the admin listener, which
                // is awaited anyway.
                Ok((false, a)) if a.starts_with("unix://") => {}
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

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The proxy's open-files limits now, `(soft, hard)`, from `/proc/PID/limits`.
    pub fn open_files_limits(&self) -> (u64, u64) {
        crate::open_files::limits_of(&self.child.id().to_string())
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

    /// Waits for the proxy to exit on its own (after an upgrade handed its listeners over);
    /// panics with its log after `timeout`.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "leader-proxy still runs after {timeout:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGHUP and waits until the reload it causes is logged: a `SIGHUP: reloaded`
    /// or `SIGHUP: refused` line beyond those logged before. Returns that line.
    pub fn sighup(&self, timeout: Duration) -> String {
        let ends = |log: &str| {
            log.lines()
                .filter(|l| l.contains("SIGHUP: reloaded") || l.contains("SIGHUP: refused"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let before = ends(&self.log()).len();
        signal(self.pid(), "HUP");
        let log =
            self.wait_for_log_where("a SIGHUP reload", timeout, |log| ends(log).len() > before);
        ends(&log).swap_remove(before)
    }

    /// The value of a metric line (`name{labels} value`) from `/metrics`, summed over
    /// the series whose line starts with `prefix`.
    pub fn metric(&self, prefix: &str) -> f64 {
        metric_value(&crate::http::get_text(&self.admin_url("/metrics")), prefix)
    }

    /// `/leader` as JSON.
    pub fn leader(&self) -> serde_json::Value {
        serde_json::from_str(&crate::http::get_text(&self.admin_url("/leader"))).expect("json")
    }

    /// The changes `/leader/history` keeps, oldest first.
    pub fn history(&self) -> Vec<serde_json::Value> {
        let text = crate::http::get_text(&self.admin_url("/leader/history"));
        let history: serde_json::Value = serde_json::from_str(&text).expect("json");
        history["changes"]
            .as_array()
            .expect("a changes array")
            .clone()
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

/// The sum of the metric lines of a `/metrics` text that start with `prefix`.
fn metric_value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
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

/// A `leader-proxy` with its own defaults (no extra log level), listening on free ports
/// chosen before it starts, its log written to a file (as under a service manager, and
/// unbounded in memory if kept like [`Proxy`]'s), or to a pipe nobody reads (a stalled log
/// consumer); killed on drop. For benchmarks, and tests of what the log does under load.
pub struct BenchProxy {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    dir: tempfile::TempDir,
}

impl BenchProxy {
    /// Starts `leader-proxy --listen 127.0.0.1:PORT --admin 127.0.0.1:PORT2 ARGS…` and waits
    /// until it accepts connections.
    pub fn start(args: &[&str]) -> BenchProxy {
        Self::launch(&crate::bins::leader_proxy(), args, false)
    }

    /// [`Self::start`] with another build of the proxy (a benchmark's "before").
    pub fn start_binary(binary: &std::path::Path, args: &[&str]) -> BenchProxy {
        Self::launch(binary, args, false)
    }

    /// [`Self::start`] with stderr a pipe that is never read: once the pipe is full, every
    /// log write blocks (the proxy's log writer must, the requests must not).
    pub fn start_with_stalled_log(args: &[&str]) -> BenchProxy {
        Self::launch(&crate::bins::leader_proxy(), args, true)
    }

    fn launch(binary: &std::path::Path, args: &[&str], stalled_log: bool) -> BenchProxy {
        let dir = tempfile::Builder::new()
            .prefix("lp-bench-")
            .tempdir()
            .expect("temp dir");
        let ports = crate::server_process::free_ports(2);
        let addr: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", ports[1]).parse().expect("addr");
        let log_path = dir.path().join("proxy.log");
        let stderr = if stalled_log {
            Stdio::piped()
        } else {
            Stdio::from(crate::server_process::open_log(&log_path, "leader-proxy"))
        };
        let child = Command::new(binary)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--admin")
            .arg(admin.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start leader-proxy");
        let child = crate::server_process::wait_ready(
            child,
            "leader-proxy",
            "leader-proxy not listening",
            Duration::from_secs(20),
            || std::fs::read_to_string(&log_path).unwrap_or_default(),
            || std::net::TcpStream::connect(addr).is_ok(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        BenchProxy {
            child,
            addr,
            admin,
            dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// As [`Proxy::metric`].
    pub fn metric(&self, prefix: &str) -> f64 {
        metric_value(
            &crate::http::get_text(&format!("http://{}/metrics", self.admin)),
            prefix,
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }
}

impl Drop for BenchProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
