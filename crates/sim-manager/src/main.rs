//! `sim-manager`: a simulated classic Swarm manager, for leader-proxy's tests and demos.
//!
//! It is an independent program (it never uses the `leader_proxy` library) run as its own
//! process so tests can SIGKILL it. It does two things:
//!
//! - It runs for election in etcd exactly the way the real programs do:
//!   - `etcd://` (v2 API): docker/leadership + libkv. The key is created with
//!     `prevExist=false` and a TTL; the holder refreshes it every TTL/3 with a
//!     compare-and-swap on the key's `modifiedIndex` (`prevIndex`, as libkv does), keeping the
//!     TTL; a failed refresh means the lock is lost. A replica watches the key
//!     (`wait=true&waitIndex=N`) and tries to create it again when it is deleted or expires.
//!   - `etcdv3://`, `--election key`: a leased key, put only if absent (txn
//!     `create_revision == 0` → put with the lease); the lease (TTL = `--ttl`) is kept alive
//!     every TTL/3; replicas watch the key and try again when it is deleted.
//!   - `etcdv3://`, `--election contenders`: etcd's election recipe through the election
//!     service, as `etcdctl elect NAME PROPOSAL` runs it: `campaign(name = the key, proposal =
//!     the advertise address, lease)`, which puts `NAME/<lease id in hex>`; the lowest create
//!     revision leads.
//!
//!   - `consul://`: Consul's `api.Lock` as libkv uses it: a session (behaviour `release`,
//!     lock-delay 1 ms, TTL = `--ttl` / 2) renewed every TTL/2, the key acquired with flags
//!     `0x2ddccbc058a50c18` and the advertise address as value; blocking queries while held
//!     and while waiting (see `consul.rs`).
//!   - `zk://`: libkv's lock over go-zookeeper (`--election key`: ephemeral sequential
//!     `_c_…-lock-` children, the lowest writes its address as the node's data) or
//!     sequential contender nodes (`--election contenders`); see `zk.rs`.
//!
//!   - `manual`: no election at all; a test sets what the manager says about it (its role,
//!     the primary it names, its `GET /info` and `GET /nodes` answers) with
//!     `POST /_sim/state`, for the sources that ask managers instead of a store (`static://`,
//!     `swarm://`); see `manual.rs`.
//!
//!   With `--info-says primary|replica:ADDR` its `GET /info` claims that role (and that
//!   primary) whatever the election says: a manager that contradicts the store.
//!
//!   With `--observe` it runs in no election: it only follows it as a replica does and
//!   prints each change of the leader the store names (`Store primary <unix µs> <address>`),
//!   dated from the watch event that showed it. That is how a test learns when the store
//!   named a new leader without trusting the winner's own account.
//!
//!   SIGTERM/SIGINT resigns cleanly (v2: delete the key with `prevValue` = our address; v3:
//!   resign and revoke the lease; Consul: release the key and destroy the session) and
//!   exits 0. SIGKILL leaves the key until the TTL expires (Consul: the session's).
//!
//! - It answers a small, Docker-like HTTP/1.1 API (see `route`). Every response carries
//!   `X-Served-By: NAME` and `X-Role: primary|replica` (the role when answering); JSON bodies
//!   also carry `served_by` and `role`. Writes and faults append a line to the `--log` file
//!   so tests can prove what was executed, by whom, and how often. A write with
//!   `?sleep_ms=N` is logged, then answered N ms later: a write still running when the
//!   manager is killed.
//!
//! The HTTP server is hand-written on tokio's TCP with `httparse` rather than hyper: the
//! fault endpoints need byte-exact control (close after reading a request without writing
//! anything; write a head and exactly one body byte, then close), and the hijack endpoint
//! needs `101` followed by a raw half-closable byte stream. Both are direct here and
//! awkward (or impossible to make exact) through hyper's service model.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BytesMut};
use clap::{Parser, ValueEnum};
use etcd_client::{
    Client as EtcdClient, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaderKey,
    PutOptions, ResignOptions, SortOrder, SortTarget, Txn, TxnOp, WatchOptions,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

mod consul;
mod etcd2;
mod etcd3;
mod manual;
mod zk;

use consul::*;
use etcd2::*;
use etcd3::*;
use manual::*;
use zk::*;

/// Simulated classic Swarm manager (test tool of leader-proxy).
#[derive(Parser, Debug, Clone)]
#[command(name = "sim-manager", version)]
struct Args {
    /// Name of this manager (e.g. m1); sent as `X-Served-By` and written to the log file.
    #[arg(long)]
    name: String,
    /// Address to listen on; port 0 picks a free port. The bound address is printed on
    /// stdout as `Listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address put in the store (default: the bound listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// Store URL as `swarm manage` takes it: `etcd://h:p[,h:p]/prefix` (v2 API),
    /// `etcdv3://h:p[,h:p]/prefix`, `zk://h:p[,h:p]/prefix` or `consul://h:p/prefix`; or `none`: no election, always primary (a test writes
    /// this manager's address into the store itself); or `manual`: no election, the test
    /// sets what the manager says (`POST /_sim/state`, see `manual.rs`).
    #[arg(long)]
    discovery: String,
    /// `--discovery manual`: the file the hand-set state is kept in, so that a restarted
    /// manager answers as before.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Leader key under the URL's prefix.
    #[arg(long, default_value = "docker/swarm/leader")]
    leader_key: String,
    /// `key`: the key's value is the leader (libkv). `contenders`: etcd's election recipe
    /// (etcdv3:// only).
    #[arg(long, value_enum, default_value = "key")]
    election: Election,
    /// Lock TTL in seconds (classic Swarm's `--replication-ttl`, 20 s by default).
    #[arg(long, default_value_t = 20)]
    ttl: u64,
    /// File that writes and faults append `<request id> <name> <role>[ <path>]` lines to
    /// (shared by all managers of a test).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Only watch the election, never run in it: print `Store primary <unix µs> <address>`
    /// on stdout (`-` for none) each time the leader the store names changes. A test's
    /// independent view of when the store named a new leader (see `State::set_primary`).
    #[arg(long)]
    observe: bool,
    /// What `GET /info` claims, whatever the election says: `primary`, or `replica:ADDR` (a
    /// replica naming ADDR as its primary). A manager that disagrees with the store, for
    /// leader-proxy's `--verify-leader` tests.
    #[arg(long, value_name = "primary|replica:ADDR")]
    info_says: Option<String>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Election {
    Key,
    Contenders,
}

// ------------------------------------------------------------------------------------------
// Shared state
// ------------------------------------------------------------------------------------------

/// What this manager holds in the store, for a clean resignation on SIGTERM.
#[derive(Default)]
struct Held {
    /// etcd v2: we hold the key.
    v2_key: bool,
    /// etcd v3: the lease of the current session (key mode and contenders).
    lease: Option<i64>,
    /// etcd v3 contenders: our leader key while elected.
    leader_key: Option<LeaderKey>,
    /// Consul: the current session, and whether it holds the leader key.
    consul_session: Option<String>,
    consul_locked: bool,
}

struct State {
    name: String,
    advertise: String,
    primary_role: AtomicBool,
    /// True while a write that may win the election is in flight (v2 create, v3 txn, v3
    /// campaign). The store may name this manager before it hears that it won, and the
    /// proxy is fast enough to send a request in between: such a request waits for the
    /// outcome (see `settle_claim`) instead of being answered as a replica.
    claiming: AtomicBool,
    /// The leader address currently in the store ("" when none).
    primary: RwLock<String>,
    /// `--observe`: print each change of `primary` on stdout.
    observe: bool,
    /// When the watch last reported a change (Unix µs; 0 = none since the last read):
    /// the followers that read the election again after a watch event note the event's
    /// arrival here, so `--observe` reports when the store showed the change, not when
    /// the read that followed it came back.
    watch_event_us: AtomicU64,
    log: Option<PathBuf>,
    held: Mutex<Held>,
    /// `--discovery manual`: what the test set, and where it is saved.
    is_manual: bool,
    manual: RwLock<Manual>,
    state_file: Option<PathBuf>,
    /// `--info-says`: the role and the primary `GET /info` claims instead of the truth.
    info_says: Option<(&'static str, String)>,
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl State {
    fn role(&self) -> &'static str {
        if self.primary_role.load(Ordering::SeqCst) {
            "primary"
        } else {
            "replica"
        }
    }

    fn begin_claim(&self) {
        self.claiming.store(true, Ordering::SeqCst);
    }

    fn end_claim(&self) {
        self.claiming.store(false, Ordering::SeqCst);
    }

    /// Waits (at most 500 ms) while a claim on the election is in flight.
    async fn settle_claim(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while self.claiming.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn set_role(&self, primary: bool) {
        let was = self.primary_role.swap(primary, Ordering::SeqCst);
        self.end_claim();
        if was != primary {
            if primary {
                info!(name = %self.name, advertise = %self.advertise, "became primary");
            } else {
                info!(name = %self.name, "became replica");
            }
        }
    }

    fn primary(&self) -> String {
        self.primary.read().map(|p| p.clone()).unwrap_or_default()
    }

    /// A watch reported a change: the read that follows it is dated from now.
    fn watch_event(&self) {
        self.watch_event_us.store(unix_us(), Ordering::SeqCst);
    }

    /// What a read (or a watch event carrying the value) says the store names now.
    fn set_primary(&self, value: Option<String>) {
        let value = value.unwrap_or_default();
        let event_us = self.watch_event_us.swap(0, Ordering::SeqCst);
        if let Ok(mut p) = self.primary.write() {
            if *p != value {
                info!(name = %self.name, primary = %value, "primary in the store is now {:?}", value);
                if self.observe {
                    let seen = if event_us == 0 { unix_us() } else { event_us };
                    let shown = if value.is_empty() {
                        "-"
                    } else {
                        value.as_str()
                    };
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "Store primary {seen} {shown}");
                    let _ = out.flush();
                }
                *p = value;
            }
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn manual(&self) -> Result<std::sync::RwLockReadGuard<'_, Manual>> {
        self.manual
            .read()
            .map_err(|_| anyhow!("manual state poisoned"))
    }

    fn manual_mut(&self) -> Result<std::sync::RwLockWriteGuard<'_, Manual>> {
        self.manual
            .write()
            .map_err(|_| anyhow!("manual state poisoned"))
    }
}

// ------------------------------------------------------------------------------------------
// Discovery URL
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum StoreKind {
    V2,
    V3,
    Consul,
    Zk,
    /// `--discovery none`: no election; always primary (tests drive the store by hand).
    None,
    /// `--discovery manual`: no election; the test sets the role and the answers.
    Manual,
}

#[derive(Debug, Clone)]
struct Discovery {
    kind: StoreKind,
    endpoints: Vec<String>,
    /// v2: `/prefix/leader/key`; v3: `prefix/leader/key`.
    key: String,
}

fn parse_discovery(url: &str, leader_key: &str) -> Result<Discovery> {
    if url == "none" || url == "manual" {
        return Ok(Discovery {
            kind: if url == "none" {
                StoreKind::None
            } else {
                StoreKind::Manual
            },
            endpoints: Vec::new(),
            key: String::new(),
        });
    }
    let (kind, rest) = if let Some(rest) = url.strip_prefix("etcd://") {
        (StoreKind::V2, rest)
    } else if let Some(rest) = url.strip_prefix("etcdv3://") {
        (StoreKind::V3, rest)
    } else if let Some(rest) = url.strip_prefix("consul://") {
        (StoreKind::Consul, rest)
    } else if let Some(rest) = url.strip_prefix("zk://") {
        (StoreKind::Zk, rest)
    } else {
        bail!("--discovery: unsupported URL {url:?} (expected etcd://h:p/prefix or etcdv3://h:p/prefix)");
    };
    let (hosts, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let endpoints: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("http://{h}"))
        .collect();
    if endpoints.is_empty() {
        bail!("--discovery: no host in {url:?}");
    }
    let prefix = prefix.trim_matches('/');
    let leader_key = leader_key.trim_matches('/');
    let joined = match (prefix.is_empty(), leader_key.is_empty()) {
        (true, _) => leader_key.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}/{leader_key}"),
    };
    if joined.is_empty() {
        bail!("--discovery/--leader-key: empty key");
    }
    let key = match kind {
        StoreKind::V2 | StoreKind::Zk => format!("/{joined}"),
        StoreKind::V3 | StoreKind::Consul => joined,
        StoreKind::None | StoreKind::Manual => String::new(),
    };
    Ok(Discovery {
        kind,
        endpoints,
        key,
    })
}

// ------------------------------------------------------------------------------------------
// Small helpers
// ------------------------------------------------------------------------------------------

struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            next: Duration::from_millis(100),
        }
    }
    fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
    async fn wait(&mut self) {
        let jitter = rand::random::<f64>() * 0.3 + 0.85;
        tokio::time::sleep(self.next.mul_f64(jitter)).await;
        self.next = (self.next * 2).min(Duration::from_secs(2));
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// Resignation (SIGTERM)
// ------------------------------------------------------------------------------------------

async fn resign(
    st: &State,
    v2: Option<&V2>,
    v3: Option<&EtcdClient>,
    consul: Option<&Consul>,
    zk: Option<&ZkStore>,
) {
    if let Some(zk) = zk {
        zk_resign(st, zk).await;
    }
    if let Some(consul) = consul {
        consul_resign(st, consul).await;
    }
    let (v2_key, lease, leader_key) = {
        let mut h = st.held();
        (h.v2_key, h.lease.take(), h.leader_key.take())
    };
    if let Some(v2) = v2 {
        if v2_key {
            match v2.delete_if(&st.advertise).await {
                Ok(()) => info!(name = %st.name, "resigned: deleted the leader key"),
                Err(e) => warn!(name = %st.name, "resigning: {e:#}"),
            }
        }
    }
    if let Some(client) = v3 {
        let mut c = client.clone();
        if let Some(leader) = leader_key {
            match c
                .resign(Some(ResignOptions::new().with_leader(leader)))
                .await
            {
                Ok(_) => info!(name = %st.name, "resigned the election"),
                Err(e) => warn!(name = %st.name, "resigning: {e}"),
            }
        }
        if let Some(lease) = lease {
            match c.lease_revoke(lease).await {
                Ok(_) => info!(name = %st.name, "revoked lease {lease:x}"),
                Err(e) => warn!(name = %st.name, "revoking lease {lease:x}: {e}"),
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// HTTP server
// ------------------------------------------------------------------------------------------

const MAX_HEAD: usize = 64 * 1024;

struct Head {
    method: String,
    /// Path with the Docker API version prefix removed, without the query.
    path: String,
    query: String,
    /// 0 = HTTP/1.0, 1 = HTTP/1.1.
    version: u8,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn keep_alive(&self) -> bool {
        if self.version >= 1 {
            !self.has_token("connection", "close")
        } else {
            self.has_token("connection", "keep-alive")
        }
    }

    fn query_param(&self, key: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    fn request_id(&self) -> String {
        let id = self.header("x-request-id").unwrap_or("").trim();
        if id.is_empty() {
            "-".to_string()
        } else {
            id.chars()
                .map(|c| if c.is_whitespace() { '_' } else { c })
                .collect()
        }
    }

    fn body_kind(&self) -> Result<BodyKind> {
        if let Some(te) = self.header("transfer-encoding") {
            if te
                .rsplit(',')
                .next()
                .map(|t| t.trim().eq_ignore_ascii_case("chunked"))
                .unwrap_or(false)
            {
                return Ok(BodyKind::Chunked);
            }
            bail!("unsupported Transfer-Encoding {te:?}");
        }
        match self.header("content-length") {
            Some(v) => Ok(BodyKind::Length(
                v.trim().parse().context("bad Content-Length")?,
            )),
            None => Ok(BodyKind::Length(0)),
        }
    }

    fn wants_upgrade(&self) -> Option<String> {
        let proto = self.header("upgrade")?.trim();
        if proto.is_empty() || !self.has_token("connection", "upgrade") {
            return None;
        }
        Some(proto.to_string())
    }
}

#[derive(Copy, Clone)]
enum BodyKind {
    Length(u64),
    Chunked,
}

/// Strips a Docker API version prefix: `/v1.41/info` → `/info`.
fn strip_version(path: &str) -> &str {
    if let Some(rest) = path.strip_prefix("/v") {
        let end = rest.find('/').unwrap_or(rest.len());
        let ver = &rest[..end];
        if !ver.is_empty()
            && ver.chars().all(|c| c.is_ascii_digit() || c == '.')
            && ver.starts_with(|c: char| c.is_ascii_digit())
        {
            let rest = &rest[end..];
            return if rest.is_empty() { "/" } else { rest };
        }
    }
    path
}

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 8192 {
            self.buf.reserve(16 * 1024);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    /// Reads the next request head; None on a clean EOF between requests.
    async fn read_head(&mut self) -> Result<Option<Head>> {
        loop {
            if !self.buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; 128];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let target = req.path.unwrap_or("/");
                        let (path, query) = match target.split_once('?') {
                            Some((p, q)) => (p, q),
                            None => (target, ""),
                        };
                        let head = Head {
                            method: req.method.unwrap_or("GET").to_string(),
                            path: strip_version(path).to_string(),
                            query: query.to_string(),
                            version: req.version.unwrap_or(1),
                            headers: req
                                .headers
                                .iter()
                                .map(|h| {
                                    (
                                        h.name.to_string(),
                                        String::from_utf8_lossy(h.value).into_owned(),
                                    )
                                })
                                .collect(),
                        };
                        self.buf.advance(n);
                        return Ok(Some(head));
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => bail!("bad request head: {e}"),
                }
                if self.buf.len() > MAX_HEAD {
                    bail!("request head too large");
                }
            }
            if self.fill().await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                bail!("connection closed in a request head");
            }
        }
    }

    async fn read_line(&mut self) -> Result<Vec<u8>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line = self.buf.split_to(pos + 1).to_vec();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buf.len() > 8192 {
                bail!("chunk line too long");
            }
            if self.fill().await? == 0 {
                bail!("connection closed in a chunked body");
            }
        }
    }

    async fn read_n(&mut self, mut n: u64, sink: &mut impl FnMut(&[u8])) -> Result<()> {
        while n > 0 {
            if self.buf.is_empty() && self.fill().await? == 0 {
                bail!("connection closed in a request body");
            }
            let take = (self.buf.len() as u64).min(n) as usize;
            sink(&self.buf[..take]);
            self.buf.advance(take);
            n -= take as u64;
        }
        Ok(())
    }

    /// Streams the request body into `sink` (never buffered whole); returns its length.
    async fn read_body(&mut self, head: &Head, mut sink: impl FnMut(&[u8])) -> Result<u64> {
        let kind = head.body_kind()?;
        let has_body = !matches!(kind, BodyKind::Length(0));
        if has_body && head.has_token("expect", "100-continue") {
            self.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await?;
        }
        match kind {
            BodyKind::Length(n) => {
                self.read_n(n, &mut sink).await?;
                Ok(n)
            }
            BodyKind::Chunked => {
                let mut total = 0u64;
                loop {
                    let line = self.read_line().await?;
                    let line = String::from_utf8_lossy(&line);
                    let size = line.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size, 16)
                        .map_err(|_| anyhow!("bad chunk size {size:?}"))?;
                    if size == 0 {
                        // Trailers, up to the empty line.
                        while !self.read_line().await?.is_empty() {}
                        return Ok(total);
                    }
                    self.read_n(size, &mut sink).await?;
                    total += size;
                    if !self.read_line().await?.is_empty() {
                        bail!("chunk not followed by CRLF");
                    }
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn head_text(
    st: &State,
    status: u16,
    reason: &str,
    content_type: Option<&str>,
    length: Option<u64>,
    extra: &[(&str, &str)],
    keep_alive: bool,
    version: u8,
) -> String {
    let mut h = format!("HTTP/1.1 {status} {reason}\r\n");
    h.push_str("Api-Version: 1.41\r\n");
    h.push_str("Docker-Experimental: false\r\n");
    h.push_str("Ostype: linux\r\n");
    h.push_str("Server: Docker/20.10.24-sim (linux)\r\n");
    h.push_str(&format!("X-Served-By: {}\r\n", st.name));
    h.push_str(&format!("X-Role: {}\r\n", st.role()));
    if let Some(ct) = content_type {
        h.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if let Some(n) = length {
        h.push_str(&format!("Content-Length: {n}\r\n"));
    }
    for (k, v) in extra {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    if !keep_alive {
        h.push_str("Connection: close\r\n");
    } else if version == 0 {
        h.push_str("Connection: keep-alive\r\n");
    }
    h.push_str("\r\n");
    h
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// What the connection does after a response.
enum Next {
    KeepAlive,
    Close,
}

async fn send_body(
    conn: &mut Conn,
    st: &State,
    head: &Head,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> Result<Next> {
    let keep = head.keep_alive();
    let mut out = head_text(
        st,
        status,
        reason(status),
        Some(content_type),
        Some(body.len() as u64),
        &[],
        keep,
        head.version,
    )
    .into_bytes();
    if head.method != "HEAD" {
        out.extend_from_slice(body);
    }
    conn.stream.write_all(&out).await?;
    Ok(if keep { Next::KeepAlive } else { Next::Close })
}

async fn send_json(
    conn: &mut Conn,
    st: &State,
    head: &Head,
    status: u16,
    mut v: Value,
) -> Result<Next> {
    if let Value::Object(m) = &mut v {
        m.insert("served_by".into(), json!(st.name));
        m.insert("role".into(), json!(st.role()));
    }
    let mut body = serde_json::to_vec(&v)?;
    body.push(b'\n');
    send_body(conn, st, head, status, "application/json", &body).await
}

/// Appends one line to the `--log` file: a single write() on an O_APPEND file, then fsync,
/// so lines of several processes never interleave.
async fn append_log(st: &State, line: String) -> Result<()> {
    let Some(path) = st.log.clone() else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut f = OpenOptions::new().create(true).append(true).open(path)?;
        f.write_all(line.as_bytes())?;
        f.sync_data()
    })
    .await??;
    Ok(())
}

async fn serve_conn(st: Arc<State>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        stream,
        buf: BytesMut::with_capacity(16 * 1024),
    };
    loop {
        let head = match conn.read_head().await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => {
                debug!("bad request: {e:#}");
                let body = br#"{"message":"bad request"}"#;
                let h = head_text(
                    &st,
                    400,
                    "Bad Request",
                    Some("application/json"),
                    Some(body.len() as u64),
                    &[],
                    false,
                    1,
                );
                let _ = conn.stream.write_all(h.as_bytes()).await;
                let _ = conn.stream.write_all(body).await;
                return;
            }
        };
        debug!(method = %head.method, path = %head.path, "request");
        match route(&mut conn, &st, head).await {
            Ok(Next::KeepAlive) => continue,
            Ok(Next::Close) => {
                let _ = conn.stream.shutdown().await;
                return;
            }
            Err(e) => {
                debug!("connection ended: {e:#}");
                return;
            }
        }
    }
}

async fn route(conn: &mut Conn, st: &Arc<State>, head: Head) -> Result<Next> {
    st.settle_claim().await;
    let path = head.path.clone();
    let method = head.method.clone();

    if path.starts_with("/fault/") {
        return fault(conn, st, head).await;
    }
    if st.is_manual && method == "POST" && path == "/_sim/state" {
        return manual_set(conn, st, &head).await;
    }
    if let Some(proto) = head.wants_upgrade() {
        if let Some(id) = missing_container(&path) {
            // As dockerd answers an attach to a container it does not have: no upgrade.
            conn.read_body(&head, |_| {}).await?;
            let message = format!("No such container: {id}");
            return send_json(conn, st, &head, 404, json!({"message": message})).await;
        }
        return hijack(conn, st, head, &proto).await;
    }
    if method == "POST" && path == "/echo" {
        return echo(conn, st, head).await;
    }

    // Everything else: the request body (if any) is read and discarded first.
    conn.read_body(&head, |_| {}).await?;
    match (method.as_str(), path.as_str()) {
        ("GET" | "HEAD", "/_ping") => send_body(conn, st, &head, 200, "text/plain", b"OK").await,
        ("GET", "/version") => {
            let v = json!({
                "Version": "20.10.24-sim",
                "ApiVersion": "1.41",
                "MinAPIVersion": "1.12",
                "Os": "linux",
                "Arch": std::env::consts::ARCH,
                "GoVersion": "go1.19",
                "KernelVersion": "sim",
                "Components": [{"Name": "Engine", "Version": "20.10.24-sim"}],
            });
            send_json(conn, st, &head, 200, v).await
        }
        ("GET", "/info") if st.is_manual && manual_info(st).is_some() => {
            let raw = manual_info(st).unwrap_or_default();
            send_body(conn, st, &head, 200, "application/json", raw.as_bytes()).await
        }
        // Any method: `POST /nodes/ID/update` answers what `GET /nodes` does (a 503 while
        // the swarm has no leader).
        (_, p) if st.is_manual && (p == "/nodes" || p.starts_with("/nodes/")) => {
            let canned = manual_nodes(st);
            send_body(
                conn,
                st,
                &head,
                canned.status,
                "application/json",
                canned.body.as_bytes(),
            )
            .await
        }
        ("GET", "/info") => {
            let claimed = st
                .info_says
                .clone()
                .unwrap_or_else(|| (st.role(), st.primary()));
            let v = json!({
                "Name": st.name,
                "ID": format!("SIM:{}", st.name),
                "ServerVersion": "swarm/1.2.9-sim",
                "Containers": 0,
                "Images": 0,
                "SystemStatus": [
                    ["Role", claimed.0],
                    ["Primary", claimed.1],
                    ["Strategy", "spread"],
                    ["Nodes", "0"],
                ],
                "Swarm": {"NodeID": st.name, "LocalNodeState": "inactive"},
                "advertise": st.advertise,
                "primary": st.primary(),
            });
            send_json(conn, st, &head, 200, v).await
        }
        ("GET", "/stream") => stream(conn, st, &head).await,
        ("POST", "/hijack") => {
            let body = format!(
                "no upgrade requested: send 'Connection: Upgrade' and 'Upgrade: tcp' (served_by={})\n",
                st.name
            );
            send_body(conn, st, &head, 200, "text/plain", body.as_bytes()).await
        }
        ("POST" | "PUT" | "PATCH" | "DELETE", _) => write(conn, st, &head).await,
        _ => send_json(conn, st, &head, 404, json!({"message": "page not found"})).await,
    }
}

/// The container of `/containers/ID/…` when ID names none: the ones whose name starts
/// with `nonexistent` (every other container exists, as far as this simulator says).
fn missing_container(path: &str) -> Option<&str> {
    let id = path.strip_prefix("/containers/")?.split('/').next()?;
    id.starts_with("nonexistent").then_some(id)
}

/// A write: logged (one line) before the answer. With `?sleep_ms=N` the answer comes N ms
/// after the line was logged: a write that has run and is still running, so a test can be
/// sure one is in flight when it kills this manager.
async fn write(conn: &mut Conn, st: &Arc<State>, head: &Head) -> Result<Next> {
    let id = head.request_id();
    let role = st.role();
    if let Err(e) = append_log(st, format!("{id} {} {role}\n", st.name)).await {
        warn!("writing the log: {e:#}");
        return send_json(conn, st, head, 500, json!({"message": format!("log: {e}")})).await;
    }
    info!(name = %st.name, request_id = %id, %role, method = %head.method, path = %head.path, "write executed");
    let sleep_ms = head.query_param("sleep_ms").and_then(|v| v.parse().ok());
    if let Some(ms) = sleep_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = if head.method == "POST" { 201 } else { 200 };
    send_json(
        conn,
        st,
        head,
        status,
        json!({"Id": id, "Warnings": [], "path": head.path, "method": head.method}),
    )
    .await
}

async fn echo(conn: &mut Conn, st: &Arc<State>, head: Head) -> Result<Next> {
    let mut hasher = Sha256::new();
    let n = conn.read_body(&head, |b| hasher.update(b)).await?;
    let digest = hex(&hasher.finalize());
    send_json(conn, st, &head, 200, json!({"bytes": n, "sha256": digest})).await
}

async fn stream(conn: &mut Conn, st: &Arc<State>, head: &Head) -> Result<Next> {
    let count: u64 = head
        .query_param("count")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let interval = Duration::from_millis(
        head.query_param("interval_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(100),
    );
    let chunked = head.version >= 1;
    let keep = chunked && head.keep_alive();
    let extra: &[(&str, &str)] = if chunked {
        &[("Transfer-Encoding", "chunked")]
    } else {
        &[]
    };
    let h = head_text(
        st,
        200,
        "OK",
        Some("text/plain"),
        None,
        extra,
        keep,
        head.version,
    );
    conn.stream.write_all(h.as_bytes()).await?;
    // count=0: endless, until the client goes away.
    let mut i = 0u64;
    while count == 0 || i < count {
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        let line = format!("line {i} served_by={} role={}\n", st.name, st.role());
        if chunked {
            conn.stream
                .write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())
                .await?;
        } else {
            conn.stream.write_all(line.as_bytes()).await?;
        }
        conn.stream.flush().await?;
        i += 1;
    }
    if chunked {
        conn.stream.write_all(b"0\r\n\r\n").await?;
    }
    Ok(if keep { Next::KeepAlive } else { Next::Close })
}

/// `101 UPGRADED`, then read until the client half-closes, then one summary line and close.
/// `?echo=1` also echoes the bytes back as they arrive (like `cat` in `docker run -i`).
async fn hijack(conn: &mut Conn, st: &Arc<State>, head: Head, proto: &str) -> Result<Next> {
    // A body announced before the upgrade belongs to the request, not to the stream.
    conn.read_body(&head, |_| {}).await?;
    let echo_back = matches!(head.query_param("echo"), Some("1" | "true"));
    let h = head_text(
        st,
        101,
        "UPGRADED",
        Some("application/vnd.docker.raw-stream"),
        None,
        &[("Connection", "Upgrade"), ("Upgrade", proto)],
        true,
        1,
    );
    conn.stream.write_all(h.as_bytes()).await?;
    info!(name = %st.name, path = %head.path, "hijacked");
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let pending = conn.buf.split();
    if !pending.is_empty() {
        hasher.update(&pending);
        total += pending.len() as u64;
        if echo_back {
            conn.stream.write_all(&pending).await?;
        }
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = conn.stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        if echo_back {
            conn.stream.write_all(&buf[..n]).await?;
        }
    }
    let reply = format!(
        "served_by={} role={} bytes={} sha256={}\n",
        st.name,
        st.role(),
        total,
        hex(&hasher.finalize())
    );
    conn.stream.write_all(reply.as_bytes()).await?;
    Ok(Next::Close)
}

async fn fault(conn: &mut Conn, st: &Arc<State>, head: Head) -> Result<Next> {
    let kind = match head.path.as_str() {
        "/fault/drop-after-request" | "/fault/drop-after-first-byte" => head.path.clone(),
        _ => {
            conn.read_body(&head, |_| {}).await?;
            return send_json(conn, st, &head, 404, json!({"message": "page not found"})).await;
        }
    };
    conn.read_body(&head, |_| {}).await?;
    let id = head.request_id();
    append_log(st, format!("{id} {} {} {kind}\n", st.name, st.role())).await?;
    info!(name = %st.name, request_id = %id, fault = %kind, "fault");
    if kind == "/fault/drop-after-first-byte" {
        let h = head_text(
            st,
            200,
            "OK",
            Some("text/plain"),
            Some(100),
            &[],
            true,
            head.version,
        );
        conn.stream.write_all(h.as_bytes()).await?;
        conn.stream.write_all(b"x").await?;
        conn.stream.flush().await?;
    }
    // Drop the connection: whatever was sent stays half-done.
    Ok(Next::Close)
}

// ------------------------------------------------------------------------------------------
// main
// ------------------------------------------------------------------------------------------

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    // A restarted manager rebinds its old address: retry a little while it is still taken.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("binding {addr}")),
        }
    }
}

/// `--info-says`: `primary` (naming itself) or `replica:ADDR`.
fn info_says(value: Option<&str>, advertise: &str) -> Result<Option<(&'static str, String)>> {
    match value {
        None => Ok(None),
        Some("primary") => Ok(Some(("primary", advertise.to_string()))),
        Some(other) => match other.strip_prefix("replica:") {
            Some(primary) if !primary.is_empty() => Ok(Some(("replica", primary.to_string()))),
            _ => bail!("--info-says: expected primary or replica:ADDR, got {other:?}"),
        },
    }
}

async fn run(args: Args) -> Result<()> {
    let disc = parse_discovery(&args.discovery, &args.leader_key)?;
    if args.election == Election::Contenders && matches!(disc.kind, StoreKind::V2) {
        bail!("--election contenders needs an etcdv3:// URL");
    }
    if args.ttl == 0 {
        bail!("--ttl must be at least 1 second");
    }
    let listener = bind(args.listen).await?;
    let local = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "Listening on {local}")?;
        out.flush()?;
    }
    let advertise = args.advertise.clone().unwrap_or_else(|| local.to_string());
    let info_says = info_says(args.info_says.as_deref(), &advertise)?;
    let st = Arc::new(State {
        name: args.name.clone(),
        advertise,
        primary_role: AtomicBool::new(false),
        claiming: AtomicBool::new(false),
        primary: RwLock::new(String::new()),
        observe: args.observe,
        watch_event_us: AtomicU64::new(0),
        log: args.log.clone(),
        held: Mutex::new(Held::default()),
        is_manual: matches!(disc.kind, StoreKind::Manual),
        manual: RwLock::new(manual_load(args.state.as_ref())),
        state_file: args.state.clone(),
        info_says,
    });
    info!(name = %st.name, listen = %local, advertise = %st.advertise, key = %disc.key,
          election = ?args.election, ttl = args.ttl, "sim-manager started");

    let server = {
        let st = st.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve_conn(st.clone(), stream));
                    }
                    Err(e) => {
                        warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    };

    let mut tasks = Vec::new();
    let mut v2_store = None;
    let mut v3_client = None;
    let mut consul_store = None;
    let mut zk_store = None;
    match disc.kind {
        StoreKind::None => {
            // No election: the test names this manager in the store by hand.
            st.set_primary(Some(st.advertise.clone()));
            st.set_role(true);
        }
        StoreKind::Manual => {
            let manual = st.manual()?.clone();
            manual_apply(&st, &manual);
        }
        StoreKind::V2 => {
            let v2 = Arc::new(V2::new(&disc, args.ttl)?);
            if !args.observe {
                tasks.push(tokio::spawn(v2_candidate(st.clone(), v2.clone())));
            }
            tasks.push(tokio::spawn(v2_follower(st.clone(), v2.clone())));
            v2_store = Some(v2);
        }
        StoreKind::V3 => {
            let client = v3_connect(&disc).await?;
            let contenders = args.election == Election::Contenders;
            if args.observe {
                // Runs for nothing: only the follower below.
            } else if contenders {
                tasks.push(tokio::spawn(v3_contender(
                    st.clone(),
                    client.clone(),
                    disc.key.clone(),
                    args.ttl,
                )));
            } else {
                tasks.push(tokio::spawn(v3_key_candidate(
                    st.clone(),
                    client.clone(),
                    disc.key.clone(),
                    args.ttl,
                )));
            }
            tasks.push(tokio::spawn(v3_follower(
                st.clone(),
                client.clone(),
                disc.key.clone(),
                contenders,
            )));
            v3_client = Some(client);
        }
        StoreKind::Consul => {
            if args.election == Election::Contenders {
                bail!("--election contenders is not available for consul://");
            }
            let consul = Arc::new(Consul::new(&disc, args.ttl)?);
            if !args.observe {
                tasks.push(tokio::spawn(consul_candidate(st.clone(), consul.clone())));
            }
            tasks.push(tokio::spawn(consul_follower(st.clone(), consul.clone())));
            consul_store = Some(consul);
        }
        StoreKind::Zk => {
            let contenders = args.election == Election::Contenders;
            let zk = Arc::new(ZkStore::new(&disc, args.ttl, contenders));
            if !args.observe {
                tasks.push(tokio::spawn(zk_candidate(st.clone(), zk.clone())));
            }
            tasks.push(tokio::spawn(zk_follower(st.clone(), zk.clone())));
            zk_store = Some(zk);
        }
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => info!(name = %st.name, "SIGTERM: resigning"),
        _ = tokio::signal::ctrl_c() => info!(name = %st.name, "SIGINT: resigning"),
    }
    for t in &tasks {
        t.abort();
    }
    server.abort();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        resign(
            &st,
            v2_store.as_deref(),
            v3_client.as_ref(),
            consul_store.as_deref(),
            zk_store.as_deref(),
        ),
    )
    .await;
    info!(name = %st.name, "exiting");
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sim-manager: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
