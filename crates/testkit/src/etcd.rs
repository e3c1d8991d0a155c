//! A real etcd for one test: its own free ports on 127.0.0.1 and its own data dir, the v2
//! API enabled (`etcd://` is the v2 API), killed on drop. Plus blocking helpers to write the
//! election the way the managers do (v2 over HTTP, v3 through `etcdctl`) and to run real
//! `etcdctl elect` contenders.
//!
//! Secured etcds: [`Etcd::start_tls`] serves clients over TLS (optionally requiring client
//! certificates), [`Etcd::enable_auth`] and [`Etcd::enable_v2_auth`] turn on user/password
//! authentication (etcd 3.4 keeps two separate user databases: the v3 API's, and the v2
//! API's under `/v2/auth`). The helpers keep working on a secured etcd: they talk to a
//! second, plain-HTTP client listener on loopback, and log in as root once auth is on; only
//! [`Etcd::endpoint`], which the code under test is given, is the secured one.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::server_process::{self, free_ports};

const INSTALL: &str = "apt-get install etcd-server etcd-client";

/// How long etcd may take to become healthy (a fresh single-member cluster elects itself
/// within a second or two; a loaded CI machine needs more).
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Etcd {
    child: Option<Child>,
    /// Plain HTTP: the helpers' listener, and [`Self::endpoint`] unless TLS is on.
    client_port: u16,
    peer_port: u16,
    v2: bool,
    tls: Option<Tls>,
    dir: tempfile::TempDir,
    /// The v3 root password, once [`Self::enable_auth`] ran: `etcdctl` logs in with it.
    root_v3: Option<String>,
    /// The v2 root password, once [`Self::enable_v2_auth`] ran: v2 helpers log in with it.
    root_v2: Option<String>,
}

/// How etcd serves TLS to its clients.
#[derive(Clone)]
struct Tls {
    /// The HTTPS client listener (v2 and v3 alike).
    port: u16,
    cert: PathBuf,
    key: PathBuf,
    /// `--client-cert-auth --trusted-ca-file CA`: a client certificate signed by CA is
    /// required.
    client_ca: Option<PathBuf>,
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

    /// An etcd (v2 API enabled) that serves its clients over TLS with `certs`' server
    /// certificate (for 127.0.0.1) on [`Self::endpoint`]. With `client_cert_auth` it also
    /// requires a client certificate signed by `certs`' CA (`--client-cert-auth
    /// --trusted-ca-file`).
    pub fn start_tls(certs: &crate::certs::Certs, client_cert_auth: bool) -> Etcd {
        Self::launch_new(
            true,
            Some(Tls {
                port: 0,
                cert: certs.server_cert.clone(),
                key: certs.server_key.clone(),
                client_ca: client_cert_auth.then(|| certs.ca.clone()),
            }),
        )
    }

    fn start_with(v2: bool) -> Etcd {
        Self::launch_new(v2, None)
    }

    fn launch_new(v2: bool, mut tls: Option<Tls>) -> Etcd {
        require("etcd");
        let dir = tempfile::Builder::new()
            .prefix("leader-proxy-etcd-")
            .tempdir()
            .expect("create a temp dir for etcd");
        // A free port can be taken by somebody else between our probe and etcd's bind:
        // then etcd exits with "address already in use" and we try other ports.
        for _ in 0..5 {
            let ports = free_ports(3);
            let (client_port, peer_port) = (ports[0], ports[1]);
            if let Some(tls) = &mut tls {
                tls.port = ports[2];
            }
            match launch(dir.path(), client_port, peer_port, v2, tls.as_ref()) {
                Ok(child) => {
                    return Etcd {
                        child: Some(child),
                        client_port,
                        peer_port,
                        v2,
                        tls,
                        dir,
                        root_v3: None,
                        root_v2: None,
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

    /// `127.0.0.1:PORT`, as DISCOVERY URLs take it: the TLS listener if TLS is on.
    pub fn endpoint(&self) -> String {
        match &self.tls {
            Some(tls) => format!("127.0.0.1:{}", tls.port),
            None => self.plain_endpoint(),
        }
    }

    /// The plain-HTTP client listener (the same as [`Self::endpoint`] without TLS), which
    /// the helpers use.
    pub fn plain_endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Enables authentication on the v3 API: a root user (its password is the helpers'
    /// business), a role with read and write on the keys under `prefix`, and `user` with
    /// `password` in that role. With client certificates required, etcd also takes a
    /// client certificate's common name as the user name.
    pub fn enable_auth(&mut self, user: &str, password: &str, prefix: &str) {
        let root = "root-pw-v3";
        let role = format!("{user}-role");
        self.etcdctl(&["user", "add", &format!("root:{root}")]);
        self.etcdctl(&["role", "add", "root"]);
        self.etcdctl(&["user", "grant-role", "root", "root"]);
        self.etcdctl(&["role", "add", &role]);
        self.etcdctl(&[
            "role",
            "grant-permission",
            &role,
            "--prefix=true",
            "readwrite",
            prefix,
        ]);
        self.etcdctl(&["user", "add", &format!("{user}:{password}")]);
        self.etcdctl(&["user", "grant-role", user, &role]);
        self.etcdctl(&["auth", "enable"]);
        self.root_v3 = Some(root.to_string());
    }

    /// Enables authentication on the v2 API (`/v2/auth`, a user database of its own in
    /// etcd 3.4): a root user, a role with read and write on `/<prefix>/*`, `user` with
    /// `password` in that role, auth enabled, and the `guest` role (what requests without
    /// credentials get, which can read and write everything by default) stripped of all
    /// permissions.
    pub fn enable_v2_auth(&mut self, user: &str, password: &str, prefix: &str) {
        let root = "root-pw-v2";
        let pattern = format!("/{}/*", prefix.trim_matches('/'));
        let role = format!("{user}-role");
        let kv = serde_json::json!({ "read": [pattern], "write": [pattern] });
        let steps = [
            (
                "/v2/auth/users/root".to_string(),
                serde_json::json!({ "user": "root", "password": root }),
            ),
            (
                format!("/v2/auth/roles/{role}"),
                serde_json::json!({ "role": role, "permissions": { "kv": kv } }),
            ),
            (
                format!("/v2/auth/users/{user}"),
                serde_json::json!({ "user": user, "password": password }),
            ),
            (
                format!("/v2/auth/users/{user}"),
                serde_json::json!({ "user": user, "grant": [role] }),
            ),
            ("/v2/auth/enable".to_string(), serde_json::Value::Null),
            (
                "/v2/auth/roles/guest".to_string(),
                serde_json::json!({
                    "role": "guest",
                    "revoke": { "kv": { "read": ["/*"], "write": ["/*"] } }
                }),
            ),
        ];
        let login = format!("root:{root}");
        for (path, body) in steps {
            let body = body.to_string();
            let reply = http(
                self.client_port,
                "PUT",
                &path,
                Some(("application/json", &body)),
                Some(&login),
            )
            .unwrap_or_else(|e| panic!("etcd PUT {path}: {e}"));
            assert!(
                (200..300).contains(&reply.status),
                "etcd PUT {path}: {} {}",
                reply.status,
                reply.body
            );
        }
        self.root_v2 = Some(root.to_string());
    }

    /// Kills etcd (SIGKILL: an outage, not a goodbye), keeping its data for [`Self::restart`].
    pub fn stop(&mut self) {
        server_process::kill(&mut self.child);
    }

    /// SIGSTOP: etcd hangs with its connections open, as a store behind a dead link or a
    /// frozen VM looks to its clients (the kernel still accepts connections and ACKs).
    pub fn freeze(&mut self) {
        server_process::signal(self.child.as_ref(), "etcd", "-STOP");
    }

    /// SIGCONT after [`Self::freeze`].
    pub fn thaw(&mut self) {
        server_process::signal(self.child.as_ref(), "etcd", "-CONT");
    }

    /// Starts etcd again on the same ports with the same data, and waits until it is healthy.
    pub fn restart(&mut self) {
        self.stop();
        // The port may be briefly held by somebody who probed it meanwhile: retry a little.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let tls = self.tls.as_ref();
            match launch(
                self.dir.path(),
                self.client_port,
                self.peer_port,
                self.v2,
                tls,
            ) {
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
        let reply = http(self.client_port, "GET", "/v2/stats/store", None, None)
            .expect("GET /v2/stats/store");
        json_number(&reply.body, name).unwrap_or_else(|| panic!("no {name} in {}", reply.body))
    }

    fn v2(&self, method: &str, key: &str, form: Option<&str>) -> Reply {
        let path = format!("/v2/keys/{}", key.trim_start_matches('/'));
        let form = form.map(|f| ("application/x-www-form-urlencoded", f));
        let login = self.root_v2.as_ref().map(|pw| format!("root:{pw}"));
        http(self.client_port, method, &path, form, login.as_deref())
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
        let out = self
            .etcdctl_command()
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
        let reply = http(self.client_port, "GET", "/metrics", None, None).expect("GET /metrics");
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
        let mut child = self
            .etcdctl_command()
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

    /// `etcdctl` (API v3) on the plain listener, logged in as root once auth is on.
    fn etcdctl_command(&self) -> Command {
        require("etcdctl");
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.plain_endpoint()));
        if let Some(root) = &self.root_v3 {
            command.arg(format!("--user=root:{root}"));
        }
        command
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
/// etcd's log. With `tls`, etcd listens for clients on both ports: HTTPS on the TLS one
/// (advertised), plain HTTP on `client_port`.
fn launch(
    dir: &Path,
    client_port: u16,
    peer_port: u16,
    v2: bool,
    tls: Option<&Tls>,
) -> Result<Child, String> {
    let plain = format!("http://127.0.0.1:{client_port}");
    let (listen, advertise) = match tls {
        Some(tls) => {
            let secure = format!("https://127.0.0.1:{}", tls.port);
            (format!("{secure},{plain}"), secure)
        }
        None => (plain.clone(), plain),
    };
    let peer = format!("http://127.0.0.1:{peer_port}");
    let log_path = dir.join(LOG);
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let log = server_process::open_log(&log_path, "etcd");
    let mut command = Command::new("etcd");
    if v2 {
        command.arg("--enable-v2");
    }
    if let Some(tls) = tls {
        command.arg("--cert-file").arg(&tls.cert);
        command.arg("--key-file").arg(&tls.key);
        if let Some(ca) = &tls.client_ca {
            command.arg("--client-cert-auth");
            command.arg("--trusted-ca-file").arg(ca);
        }
    }
    let child = command
        .arg("--name")
        .arg("test")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &listen])
        .args(["--advertise-client-urls", &advertise])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .arg("--initial-cluster")
        .arg(format!("test={peer}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log file"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run etcd ({e}); install it: {INSTALL}"));
    server_process::wait_ready(
        child,
        "etcd",
        "etcd not healthy",
        START_TIMEOUT,
        read_log,
        || {
            http(client_port, "GET", "/health", None, None)
                .is_ok_and(|reply| reply.status == 200 && reply.body.contains("\"true\""))
        },
    )
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

struct Reply {
    status: u16,
    body: String,
}

/// One HTTP/1.1 request on a fresh connection: enough for etcd's small JSON answers, and
/// no dependency the tests do not already have. `body` is (content type, body); `login` is
/// `user:password` for basic authentication.
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<(&str, &str)>,
    login: Option<&str>,
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if let Some(login) = login {
        request.push_str(&format!(
            "Authorization: Basic {}\r\n",
            base64(login.as_bytes())
        ));
    }
    if let Some((content_type, _)) = body {
        request.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    let body = body.map_or("", |(_, body)| body);
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

/// Standard base64 with padding (for basic authentication).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
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

/// Three real etcd members forming one cluster (the v2 API enabled), each with its own free
/// ports and data dir, all killed on drop: for what only a cluster shows, a member cut off
/// from its peers (stop the other two: it keeps its client port, loses its quorum).
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
}

struct Member {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
}

impl EtcdCluster {
    /// Starts the three members and waits until each is healthy (the cluster has a leader).
    pub fn start() -> EtcdCluster {
        require("etcd");
        let dir = tempfile::Builder::new()
            .prefix("leader-proxy-etcd-cluster-")
            .tempdir()
            .expect("create a temp dir for the etcd cluster");
        let ports = free_ports(6);
        let mut cluster = EtcdCluster {
            members: (0..3)
                .map(|i| Member {
                    child: None,
                    client_port: ports[2 * i],
                    peer_port: ports[2 * i + 1],
                })
                .collect(),
            dir,
        };
        // All three at once: none is healthy before a majority runs.
        for i in 0..3 {
            cluster.spawn(i);
        }
        for i in 0..3 {
            cluster.wait_healthy(i);
        }
        cluster
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("e{i}=http://127.0.0.1:{}", m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) {
        let initial_cluster = self.initial_cluster();
        let member_dir = self.dir.path().join(format!("e{i}"));
        std::fs::create_dir_all(&member_dir).expect("create a member dir");
        let log = server_process::open_log(&member_dir.join(LOG), "etcd");
        let (client, peer) = (
            format!("http://127.0.0.1:{}", self.members[i].client_port),
            format!("http://127.0.0.1:{}", self.members[i].peer_port),
        );
        let child = Command::new("etcd")
            .arg("--enable-v2")
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(member_dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run etcd ({e}); install it: {INSTALL}"));
        self.members[i].child = Some(child);
    }

    fn wait_healthy(&mut self, i: usize) {
        let child = self.members[i].child.take().expect("a running member");
        let port = self.members[i].client_port;
        let log_path = self.dir.path().join(format!("e{i}")).join(LOG);
        let child = server_process::wait_ready(
            child,
            "etcd",
            "etcd member not healthy",
            START_TIMEOUT,
            || std::fs::read_to_string(&log_path).unwrap_or_default(),
            || {
                http(port, "GET", "/health", None, None)
                    .is_ok_and(|reply| reply.status == 200 && reply.body.contains("\"true\""))
            },
        )
        .unwrap_or_else(|log| panic!("etcd member e{i} did not start:\n{log}"));
        self.members[i].child = Some(child);
    }

    /// `127.0.0.1:PORT` of member `i`'s client listener.
    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    /// Kills member `i` (SIGKILL), keeping its data for [`Self::restart`].
    pub fn stop(&mut self, i: usize) {
        server_process::kill(&mut self.members[i].child);
    }

    /// Starts the stopped members `which` again with their data, and waits until each is
    /// healthy.
    pub fn restart(&mut self, which: &[usize]) {
        for &i in which {
            self.spawn(i);
        }
        for &i in which {
            self.wait_healthy(i);
        }
    }

    /// Sets a v2 key through member `i` (which needs its quorum).
    pub fn put_v2(&self, i: usize, key: &str, value: &str) {
        let path = format!("/v2/keys/{}", key.trim_start_matches('/'));
        let form = format!("value={}", form_escape(value));
        let reply = http(
            self.members[i].client_port,
            "PUT",
            &path,
            Some(("application/x-www-form-urlencoded", &form)),
            None,
        )
        .unwrap_or_else(|e| panic!("etcd v2 PUT {key} on e{i}: {e}"));
        assert!(
            reply.status == 200 || reply.status == 201,
            "etcd v2 PUT {key} on e{i}: {} {}",
            reply.status,
            reply.body
        );
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            server_process::kill(&mut member.child);
        }
    }
}
