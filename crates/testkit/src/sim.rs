//! Runs the simulated Swarm manager (`sim-manager`, crates/sim-manager) as its own
//! process, so a test can SIGKILL it, SIGTERM it, or restart it on the same address.
//!
//! What the simulator does (see its module docs for the details):
//! - runs for election in etcd exactly like the real programs (v2: libkv's TTL key refreshed
//!   every TTL/3; v3 `key`: a leased put-if-absent; v3 `contenders`: etcd's election recipe,
//!   as `etcdctl elect`). SIGKILL leaves the key until its TTL expires; SIGTERM resigns.
//! - answers every request with `X-Served-By: NAME` and `X-Role: primary|replica`; JSON
//!   bodies also carry `served_by` and `role`. Routes (a `/vX.Y` prefix is accepted):
//!   `GET /_ping`, `GET /version`, `GET /info` (SystemStatus Role/Primary),
//!   `GET /stream?count=N&interval_ms=M` (chunked, one line per interval; `count=0` never
//!   ends), `POST /echo` (`{"bytes","sha256"}` of the streamed body), any request with
//!   `Connection: Upgrade` + `Upgrade: tcp` (101, read to the client's EOF, then one line
//!   `served_by=NAME role=ROLE bytes=N sha256=HEX`; `?echo=1` also echoes bytes as they come;
//!   for `/containers/nonexistent…/…` instead a `404` "No such container", as dockerd answers),
//!   `POST /hijack` without those headers (200, "no upgrade requested"),
//!   `/fault/drop-after-request`, `/fault/drop-after-first-byte` (any method), and every
//!   other POST/PUT/PATCH/DELETE = a write (201 for POST, 200 otherwise, `{"Id": <request id>}`;
//!   with `?sleep_ms=N` it answers N ms after it was logged).
//!   With `--discovery manual` also `POST /_sim/state` (what it says about the election) and
//!   `GET /nodes` (swarm mode); see crates/sim-manager/src/manual.rs.
//! - with `--observe` it runs in no election and only follows it, printing
//!   `Store primary <unix µs> <address>` on stdout at each change (the conformance failover
//!   test's own view of when the store named a new leader).
//! - appends to the shared log file, before answering: `<request id> <name> <role>` per
//!   write, `<request id> <name> <role> <path>` per fault (request id from `X-Request-Id`,
//!   `-` if absent). [`read_log`] parses it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::http;

/// How long the binary may take to bind and print `Listening on ADDR`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Election {
    /// The key's value is the leader (libkv; `etcd://` and `etcdv3://`).
    Key,
    /// etcd's election recipe (`etcdv3://` only).
    Contenders,
}

impl Election {
    pub fn as_str(self) -> &'static str {
        match self {
            Election::Key => "key",
            Election::Contenders => "contenders",
        }
    }
}

#[derive(Clone, Debug)]
pub struct SimOptions {
    pub name: String,
    /// `etcd://127.0.0.1:PORT/prefix` or `etcdv3://127.0.0.1:PORT/prefix`.
    pub discovery: String,
    pub election: Election,
    /// Lock TTL in seconds (tests: 2–4; etcd v3 refuses leases shorter than 2 s).
    pub ttl_secs: u64,
    /// The write/fault log shared by all managers of a test.
    pub log_file: PathBuf,
    /// None: a free port (127.0.0.1:0).
    pub listen: Option<SocketAddr>,
    /// None: the bound listen address.
    pub advertise: Option<String>,
    /// None: `docker/swarm/leader`.
    pub leader_key: Option<String>,
    /// `--discovery manual`: where the hand-set state is kept across restarts.
    pub state_file: Option<PathBuf>,
    /// `--info-says`: what `GET /info` claims (`primary`, `replica:ADDR`) whatever the
    /// election says.
    pub info_says: Option<String>,
}

impl SimOptions {
    /// `--election key`, TTL 3 s, a free port.
    pub fn new(name: &str, discovery: &str, log_file: &Path) -> SimOptions {
        SimOptions {
            name: name.to_string(),
            discovery: discovery.to_string(),
            election: Election::Key,
            ttl_secs: 3,
            log_file: log_file.to_path_buf(),
            listen: None,
            advertise: None,
            leader_key: None,
            state_file: None,
            info_says: None,
        }
    }

    pub fn election(mut self, election: Election) -> Self {
        self.election = election;
        self
    }

    pub fn ttl(mut self, secs: u64) -> Self {
        self.ttl_secs = secs;
        self
    }

    /// Listens on `addr` (a restart keeps it anyway).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Makes `GET /info` claim `says` (`primary`, `replica:ADDR`) whatever the election
    /// says: a manager that disagrees with the store.
    pub fn info_says(mut self, says: &str) -> Self {
        self.info_says = Some(says.to_string());
        self
    }

    /// `--discovery manual`: keeps the state a test sets in `path`, so a restart keeps it.
    pub fn state_file(mut self, path: &Path) -> Self {
        self.state_file = Some(path.to_path_buf());
        self
    }
}

pub struct SimManager {
    opts: SimOptions,
    child: Option<Child>,
    addr: SocketAddr,
    /// Its stderr (tracing logs), across restarts.
    log: Arc<Mutex<Vec<String>>>,
}

impl SimManager {
    /// Starts `sim-manager` and waits until it listens.
    pub fn start(opts: &SimOptions) -> SimManager {
        let log = Arc::new(Mutex::new(Vec::new()));
        let listen = opts
            .listen
            .unwrap_or_else(|| "127.0.0.1:0".parse().expect("socket addr"));
        let (child, addr) = spawn(opts, listen, &log);
        SimManager {
            opts: opts.clone(),
            child: Some(child),
            addr,
            log,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.opts.name
    }

    /// The address it puts in the store.
    pub fn advertise(&self) -> String {
        self.opts
            .advertise
            .clone()
            .unwrap_or_else(|| self.addr.to_string())
    }

    pub fn options(&self) -> &SimOptions {
        &self.opts
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL, and wait for it: its key stays in the store until the TTL expires.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (it resigns: deletes its key / resigns / revokes its lease), and wait for it.
    /// Panics if it does not exit within 10 s (it is then killed).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("sim-manager is not running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sim-manager {} did not exit within 10 s of SIGTERM; its log:\n{}",
                    self.opts.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again with the same name, options and listen address (killing it first if
    /// it still runs). It rejoins as a replica while another manager holds the lock.
    pub fn restart(&mut self) {
        self.kill();
        let (child, addr) = spawn(&self.opts, self.addr, &self.log);
        assert_eq!(addr, self.addr, "restarted on another address");
        self.child = Some(child);
    }

    /// [`Self::restart`] with other options (a longer TTL, say); the listen address stays.
    pub fn restart_with(&mut self, opts: &SimOptions) {
        self.opts = opts.clone();
        self.restart();
    }

    /// `GET /info`, parsed.
    pub fn info(&self) -> std::io::Result<SimInfo> {
        info(self.addr)
    }

    /// Its role right now, None if it does not answer.
    pub fn role(&self) -> Option<String> {
        self.info().ok().map(|i| i.role)
    }

    /// Its stderr so far (all incarnations), for failure messages.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

impl Drop for SimManager {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(
    opts: &SimOptions,
    listen: SocketAddr,
    log: &Arc<Mutex<Vec<String>>>,
) -> (Child, SocketAddr) {
    let mut cmd = Command::new(crate::bins::sim_manager());
    cmd.args(["--name", &opts.name])
        .args(["--listen", &listen.to_string()])
        .args(["--discovery", &opts.discovery])
        .args(["--election", opts.election.as_str()])
        .args(["--ttl", &opts.ttl_secs.to_string()])
        .arg("--log")
        .arg(&opts.log_file);
    if let Some(a) = &opts.advertise {
        cmd.args(["--advertise", a]);
    }
    if let Some(k) = &opts.leader_key {
        cmd.args(["--leader-key", k]);
    }
    if let Some(says) = &opts.info_says {
        cmd.args(["--info-says", says]);
    }
    if let Some(path) = &opts.state_file {
        cmd.arg("--state").arg(path);
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sim-manager");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut l) = log.lock() {
                    l.push(line);
                }
            }
        });
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        // Keep draining stdout after the first line, so the child never blocks on it.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("Listening on ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        }
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(addr) => {
            let addr = addr.parse().expect("sim-manager printed a bad address");
            (child, addr)
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            // Give the stderr thread a moment to collect the last lines.
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "sim-manager {} did not start listening on {listen}; its log:\n{}",
                opts.name,
                log.lock().map(|l| l.join("\n")).unwrap_or_default()
            );
        }
    }
}

/// What a manager says about itself in `GET /info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimInfo {
    pub name: String,
    /// "primary" or "replica".
    pub role: String,
    /// The leader address in the store as this manager sees it ("" when none).
    pub primary: String,
    /// The address it puts in the store.
    pub advertise: String,
}

/// `GET /info` of the manager at `addr`, parsed.
pub fn info(addr: SocketAddr) -> std::io::Result<SimInfo> {
    let r = http::request(addr, "GET", "/info", &[], b"", Duration::from_secs(5))?;
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    if r.status != 200 {
        return Err(bad(format!("GET /info: status {}", r.status)));
    }
    let v = r.json();
    let status = |key: &str| -> Option<String> {
        v["SystemStatus"].as_array()?.iter().find_map(|pair| {
            (pair[0].as_str()? == key).then(|| pair[1].as_str().map(str::to_string))?
        })
    };
    Ok(SimInfo {
        name: v["Name"].as_str().unwrap_or_default().to_string(),
        role: status("Role").ok_or_else(|| bad(format!("no Role in {v}")))?,
        primary: status("Primary").unwrap_or_default(),
        advertise: v["advertise"].as_str().unwrap_or_default().to_string(),
    })
}

/// Polls `GET /info` until the manager reports `role`; false on timeout.
pub fn wait_until_role(addr: SocketAddr, role: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if matches!(info(addr), Ok(i) if i.role == role) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls until the managers agree: exactly one says it is primary, and every one of them
/// reports that one's address as `Primary`. Returns its index, or on timeout a description
/// of what was seen last.
pub fn wait_for_single_primary(
    managers: &[&SimManager],
    timeout: Duration,
) -> Result<usize, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let infos: Vec<_> = managers.iter().map(|m| m.info()).collect();
        let primaries: Vec<usize> = infos
            .iter()
            .enumerate()
            .filter(|(_, i)| matches!(i, Ok(i) if i.role == "primary"))
            .map(|(n, _)| n)
            .collect();
        if let [p] = primaries[..] {
            let addr = managers[p].advertise();
            if infos
                .iter()
                .all(|i| matches!(i, Ok(i) if i.primary == addr))
            {
                return Ok(p);
            }
        }
        if Instant::now() >= deadline {
            let seen: Vec<String> = managers
                .iter()
                .zip(&infos)
                .map(|(m, i)| format!("{} ({}): {:?}", m.name(), m.addr(), i))
                .collect();
            return Err(format!(
                "no single agreed primary after {timeout:?}; last seen:\n{}",
                seen.join("\n")
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One line of the write/fault log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// `X-Request-Id`, or "-".
    pub request_id: String,
    /// The manager that executed it.
    pub name: String,
    /// Its role when it executed it.
    pub role: String,
    /// Faults only: the fault's path (`/fault/drop-after-request`, …). None for writes.
    pub path: Option<String>,
}

/// Parses the shared log file (missing file = no lines).
pub fn read_log(path: &Path) -> Vec<LogLine> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.split(' ');
            let mut next = || parts.next().unwrap_or_default().to_string();
            let (request_id, name, role) = (next(), next(), next());
            let path = Some(next()).filter(|p| !p.is_empty());
            LogLine {
                request_id,
                name,
                role,
                path,
            }
        })
        .collect()
}
