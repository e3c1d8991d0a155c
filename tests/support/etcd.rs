//! A real etcd for one test: its own free ports on 127.0.0.1 and its own data dir, the v2
//! API enabled (`etcd://` is the v2 API), killed on drop. Plus blocking helpers to write the
//! election the way the managers do (v2 over HTTP, v3 through `etcdctl`) and to run real
//! `etcdctl elect` contenders.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const INSTALL: &str = "apt-get install etcd-server etcd-client";

/// How long etcd may take to become healthy (a fresh single-member cluster elects itself
/// within a second or two; a loaded CI machine needs more).
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Etcd {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    v2: bool,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd on free ports and waits until it is healthy.
    pub fn start() -> Etcd {
        Self::start_with(true)
    }

    /// An etcd as 3.4+ runs by default: the v3 API only.
    pub fn start_without_v2() -> Etcd {
        Self::start_with(false)
    }

    fn start_with(v2: bool) -> Etcd {
        require("etcd");
        let dir = tempfile::Builder::new()
            .prefix("leader-proxy-etcd-")
            .tempdir()
            .expect("create a temp dir for etcd");
        // A free port can be taken by somebody else between our probe and etcd's bind:
        // then etcd exits with "address already in use" and we try other ports.
        for _ in 0..5 {
            let (client_port, peer_port) = free_ports();
            match launch(dir.path(), client_port, peer_port, v2) {
                Ok(child) => {
                    return Etcd {
                        child: Some(child),
                        client_port,
                        peer_port,
                        v2,
                        dir,
                    }
                }
                Err(log) if log.contains("address already in use") => {
                    let _ = std::fs::remove_dir_all(dir.path().join("data"));
                }
                Err(log) => panic!("etcd did not start:\n{log}"),
            }
        }
        panic!("etcd did not start: no free ports after 5 attempts");
    }

    /// `127.0.0.1:PORT`, as DISCOVERY URLs and `etcdctl --endpoints` take it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd (SIGKILL: an outage, not a goodbye), keeping its data for [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: etcd hangs with its connections open, as a store behind a dead link or a
    /// frozen VM looks to its clients (the kernel still accepts connections and ACKs).
    pub fn freeze(&mut self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Self::freeze`].
    pub fn thaw(&mut self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("etcd is running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {}", child.id());
    }

    /// Starts etcd again on the same ports with the same data, and waits until it is healthy.
    pub fn restart(&mut self) {
        self.stop();
        // The port may be briefly held by somebody who probed it meanwhile: retry a little.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match launch(self.dir.path(), self.client_port, self.peer_port, self.v2) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(log) if log.contains("address already in use") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(log) => panic!("etcd did not restart:\n{log}"),
            }
        }
    }

    /// etcd's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(LOG)).unwrap_or_default()
    }

    // ---- v2 API, over HTTP as docker/leadership (libkv) speaks it ----

    /// Sets a v2 key (`/a/b` or `a/b`), with a TTL in seconds if given; returns its
    /// `modifiedIndex`.
    pub fn put_v2(&self, key: &str, value: &str, ttl: Option<u64>) -> u64 {
        let mut form = format!("value={}", form_escape(value));
        if let Some(ttl) = ttl {
            form.push_str(&format!("&ttl={ttl}"));
        }
        let reply = self.v2("PUT", key, Some(&form));
        assert!(
            reply.status == 200 || reply.status == 201,
            "etcd v2 PUT {key}: {} {}",
            reply.status,
            reply.body
        );
        json_number(&reply.body, "modifiedIndex")
            .unwrap_or_else(|| panic!("no modifiedIndex in {}", reply.body))
    }

    /// Deletes a v2 key.
    pub fn delete_v2(&self, key: &str) {
        let reply = self.v2("DELETE", key, None);
        assert_eq!(reply.status, 200, "etcd v2 DELETE {key}: {}", reply.body);
    }

    /// The v2 store statistics (`/v2/stats/store`), e.g. `"watchers"`: how many v2 watches
    /// are waiting right now.
    pub fn v2_store_stat(&self, name: &str) -> u64 {
        let reply =
            http(self.client_port, "GET", "/v2/stats/store", None).expect("GET /v2/stats/store");
        json_number(&reply.body, name).unwrap_or_else(|| panic!("no {name} in {}", reply.body))
    }

    fn v2(&self, method: &str, key: &str, form: Option<&str>) -> Reply {
        let path = format!("/v2/keys/{}", key.trim_start_matches('/'));
        http(self.client_port, method, &path, form)
            .unwrap_or_else(|e| panic!("etcd v2 {method} {key}: {e}"))
    }

    // ---- v3 API, through etcdctl ----

    /// Puts a v3 key; returns the store revision of the write.
    pub fn put_v3(&self, key: &str, value: &str) -> i64 {
        let out = self.etcdctl(&["put", key, value, "-w", "json"]);
        json_number(&out, "revision").unwrap_or_else(|| panic!("no revision in {out}")) as i64
    }

    /// Puts a v3 key attached to a new lease of `ttl` seconds that nobody keeps alive.
    pub fn put_v3_leased(&self, key: &str, value: &str, ttl: u64) {
        let out = self.etcdctl(&["lease", "grant", &ttl.to_string()]);
        // "lease 694d7d3ba8c1f30e granted with TTL(2s)"
        let lease = out
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("unexpected etcdctl lease output {out:?}"));
        self.etcdctl(&["put", key, value, &format!("--lease={lease}")]);
    }

    /// Overwrites a key's value and keeps its lease, as an elected leader's proclamation
    /// (`Election.Proclaim`) does.
    pub fn proclaim_v3(&self, key: &str, value: &str) {
        self.etcdctl(&["put", "--ignore-lease", key, value]);
    }

    /// Deletes a v3 key.
    pub fn delete_v3(&self, key: &str) {
        self.etcdctl(&["del", key]);
    }

    /// The keys under `prefix`, in etcd's order (by key).
    pub fn keys_v3(&self, prefix: &str) -> Vec<String> {
        self.etcdctl(&["get", "--prefix", "--keys-only", prefix])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Compacts the v3 history up to `revision`: older revisions are gone, and watches that
    /// still need them are cancelled.
    pub fn compact_v3(&self, revision: i64) {
        self.etcdctl(&["compaction", &revision.to_string()]);
    }

    /// Runs `etcdctl` (API v3) against this etcd; returns its stdout, panics on failure.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        require("etcdctl");
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run etcdctl ({e}); install it: {INSTALL}"));
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A metric from etcd's `/metrics`: the sum of the samples of `name` whose labels
    /// contain `labels` (e.g. `grpc_method="Range"`).
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        let reply = http(self.client_port, "GET", "/metrics", None).expect("GET /metrics");
        reply
            .body
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Runs `etcdctl elect NAME PROPOSAL`: a real contender in etcd's election recipe.
    pub fn elect(&self, name: &str, proposal: &str) -> Elector {
        require("etcdctl");
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .args(["elect", name, proposal])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run etcdctl ({e}); install it: {INSTALL}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Elector { child, lines }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `etcdctl elect`. Killed (SIGKILL) on drop; [`Elector::resign`] ends it the
/// way an operator would (SIGINT), which makes it resign at once.
pub struct Elector {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Elector {
    /// Waits until etcdctl says it won (it prints its key, then its proposal); returns its
    /// key.
    pub fn wait_elected(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if !line.is_empty() => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// SIGINT: etcdctl cancels its campaign or resigns, deleting its key, and exits.
    pub fn resign(&mut self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -INT {}", self.child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("etcdctl elect did not exit after SIGINT");
    }
}

impl Drop for Elector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const LOG: &str = "etcd.log";

/// Runs etcd with its data and log in `dir` and waits for `/health`; on failure returns
/// etcd's log.
fn launch(dir: &Path, client_port: u16, peer_port: u16, v2: bool) -> Result<Child, String> {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let log_path = dir.join(LOG);
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("open the etcd log");
    let mut command = Command::new("etcd");
    if v2 {
        command.arg("--enable-v2");
    }
    let mut child = command
        .arg("--name")
        .arg("test")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .arg("--initial-cluster")
        .arg(format!("test={peer}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log file"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run etcd ({e}); install it: {INSTALL}"));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("etcd exited with {status}\n{}", read_log()));
        }
        if let Ok(reply) = http(client_port, "GET", "/health", None) {
            if reply.status == 200 && reply.body.contains("\"true\"") {
                return Ok(child);
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "etcd not healthy after {START_TIMEOUT:?}\n{}",
                read_log()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fails the test with the line that installs the program, if it is missing.
fn require(program: &str) {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(found, "`{program}` is not installed: {INSTALL}");
}

/// Two distinct free ports on 127.0.0.1 (both listeners are held while the second is
/// picked, so they differ).
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let ports = (
        a.local_addr().expect("local addr").port(),
        b.local_addr().expect("local addr").port(),
    );
    drop((a, b));
    ports
}

struct Reply {
    status: u16,
    body: String,
}

/// One HTTP/1.1 request on a fresh connection: enough for etcd's small JSON answers, and
/// no dependency the tests do not already have.
fn http(port: u16, method: &str, path: &str, form: Option<&str>) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = form.unwrap_or("");
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if form.is_some() {
        request.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP head in {raw:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(Reply { status, body })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

fn form_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The first number after `"name":` in a JSON text (enough for etcd's flat answers).
fn json_number(json: &str, name: &str) -> Option<u64> {
    let at = json.find(&format!("\"{name}\":"))? + name.len() + 3;
    let digits: String = json[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}
