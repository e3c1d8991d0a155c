//! A protocol double of Consul's HTTP API. It is NOT Consul: no Consul server can be
//! installed on this project's machines, so the `consul://` backend and the simulated
//! managers' Consul lock recipe are tested against this stand-in, which answers the part of
//! Consul's HTTP API they use the way Consul documents and behaves. What passes against it
//! passes against the double only; the README says so.
//!
//! Reproduced (Consul's behaviour as documented for its v1 HTTP API):
//! - KV: `GET /v1/kv/<key>` (`?raw`, `?consistent`/`?stale` accepted) answers a JSON array
//!   of one entry (`LockIndex`, `Key`, `Flags`, `Value` in base64 or `null` when empty,
//!   `Session` only while locked, `CreateIndex`, `ModifyIndex`), or 404 with an empty body;
//!   both carry `X-Consul-Index`: the key's `ModifyIndex`, or for a missing key the highest
//!   index of any KV write or delete (at least 1, as Consul does for an empty store).
//!   `PUT /v1/kv/<key>` with the value as body, `?flags=`, `?cas=`, `?acquire=SESSION`,
//!   `?release=SESSION`, answering `true`/`false`; a plain PUT keeps the lock holder; an
//!   acquire by the holder updates the value; a successful new acquire bumps `LockIndex`;
//!   an acquire with an unknown session is a 500 `invalid session`; a release by a session
//!   that does not hold the key is `false` and changes nothing. `DELETE /v1/kv/<key>`
//!   (`?cas=`).
//! - Blocking queries: `?index=N&wait=D` (Go durations; default 5 m, at most 10 m, plus up
//!   to wait/16 of jitter) answer as soon as the reply's index is greater than N, else when
//!   the wait ends with the same index; `index=0` does not block. A restore from a snapshot
//!   ([`ConsulDouble::restore`]) abandons every blocked query at once, which then answers
//!   with the restored, lower index (Consul does this on `snapshot restore`): the way an
//!   index goes backwards for a client.
//! - Sessions: `PUT /v1/session/create` (`Name`, `TTL`, `Behavior` `release`|`delete`,
//!   `LockDelay` as a Go duration or a number, seconds below 1000 else nanoseconds, default
//!   15 s), `PUT /v1/session/renew/ID` (404 once the session is gone),
//!   `PUT /v1/session/destroy/ID`, `GET /v1/session/info/ID`. A session not renewed within
//!   twice its TTL (Consul's `SessionTTLMultiplier`) is invalidated. Invalidation (TTL or
//!   destroy) releases every key the session holds (the value stays, `Session` goes, the
//!   key's `ModifyIndex` moves, so blocked queries wake) or, with behaviour `delete`,
//!   deletes them; each such key then refuses acquires for the session's lock-delay.
//! - ACL: with a required token ([`DoubleOptions::token`]) every request must carry it as
//!   `X-Consul-Token`, `?token=` or `Authorization: Bearer`; a wrong token gets 403
//!   `ACL not found`, no token 403 `Permission denied: anonymous token lacks permission`.
//! - TLS: https with a server certificate, optionally requiring a client certificate signed
//!   by a given CA (Consul's `verify_incoming`).
//! - Stop and restart on the same port, keeping the data (a Consul agent restarted). While
//!   stopped, connections are refused and blocked queries are cut off; sessions do not expire
//!   while stopped and get a full TTL again at restart, as Consul resets session timers when
//!   a server takes leadership.
//! - A redirect switch ([`ConsulDouble::redirect_to`]): every request, blocked queries
//!   included, is answered `307 Temporary Redirect` to another server (an agent behind a
//!   misconfigured or hostile front), for the tests that a client does not follow it.
//!
//! Deliberately different from Consul:
//! - Session TTLs shorter than Consul's minimum of 10 s are accepted (tests use 1–2 s so
//!   that failover tests take seconds); [`DoubleOptions::min_session_ttl`] turns the check on.
//! - Sessions have no health checks (Consul ties them to the node's `serfHealth`): a session
//!   without a TTL lives until destroyed.
//!
//! Not reproduced (answered with an error saying so, or ignored where harmless): recursive
//! and `?keys` listings, transactions (`/v1/txn`), the rest of the API (catalog, health,
//! agent, ACL management), datacenters and namespaces (`?dc`, `?ns` ignored), consistency
//! modes (every read is consistent), Raft, leader elections among servers, the 512 KB value
//! limit, and rate limits.
//!
//! It runs in-process: a tokio runtime of its own (one worker thread) serving HTTP/1.1 on a
//! free port of 127.0.0.1, so tests and the conformance harness use it directly, and the
//! simulated managers (separate processes) simply talk HTTP to it. The test-side methods
//! ([`ConsulDouble::acquire`], [`ConsulDouble::session_create`], …) act on the same state
//! through the same code as the HTTP API, without a token, like an operator with a
//! management token would.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls;

/// The flags libkv's Consul lock (Consul's `api.Lock`) sets on the key.
pub const LOCK_FLAGS: u64 = 0x2ddc_cbc0_58a5_0c18;

/// Consul invalidates a session this many TTLs after its last renewal.
const TTL_MULTIPLIER: u32 = 2;
/// Consul's bounds for a blocking query's `wait`.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);
/// Consul's default session lock-delay.
const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
/// Consul's largest session TTL.
const MAX_SESSION_TTL: Duration = Duration::from_secs(24 * 3600);
/// Consul's smallest session TTL (the double accepts less unless told otherwise).
pub const CONSUL_MIN_SESSION_TTL: Duration = Duration::from_secs(10);
/// How often expired sessions are looked for.
const REAP_EVERY: Duration = Duration::from_millis(10);

/// How the double is set up.
#[derive(Clone, Debug, Default)]
pub struct DoubleOptions {
    /// Require this ACL token on every request (Consul with `acl.default_policy = deny`).
    pub token: Option<String>,
    /// Serve https.
    pub tls: Option<DoubleTls>,
    /// Refuse session TTLs below this (Consul: [`CONSUL_MIN_SESSION_TTL`]); zero accepts
    /// any.
    pub min_session_ttl: Duration,
}

/// The double's TLS files (PEM).
#[derive(Clone, Debug)]
pub struct DoubleTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require client certificates signed by this CA (Consul's `verify_incoming`).
    pub client_ca: Option<PathBuf>,
}

/// What `behavior` a session has when it is invalidated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    Release,
    Delete,
}

/// A session as a test creates it.
#[derive(Clone, Debug)]
pub struct SessionSpec {
    /// `None`: no TTL (lives until destroyed).
    pub ttl: Option<Duration>,
    pub lock_delay: Duration,
    pub behavior: Behavior,
}

impl SessionSpec {
    /// No TTL, no lock-delay, behaviour `release`: a holder that lives until told otherwise.
    pub fn lasting() -> Self {
        Self {
            ttl: None,
            lock_delay: Duration::ZERO,
            behavior: Behavior::Release,
        }
    }

    /// A session that expires `ttl` × 2 after its creation unless renewed (nobody renews
    /// it from the test side), behaviour `release`, no lock-delay.
    pub fn expiring(ttl: Duration) -> Self {
        Self {
            ttl: Some(ttl),
            ..Self::lasting()
        }
    }
}

/// A KV entry as the double holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    pub flags: u64,
    pub value: Vec<u8>,
    pub session: Option<String>,
}

impl Entry {
    pub fn value_text(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
}

#[derive(Clone, Debug)]
struct SessionState {
    name: String,
    ttl: Option<Duration>,
    /// As given, for the session's JSON.
    ttl_text: String,
    behavior: Behavior,
    lock_delay: Duration,
    create_index: u64,
    expires: Option<Instant>,
}

/// The store: what a Consul cluster's state machine holds.
#[derive(Clone, Debug, Default)]
struct State {
    /// The Raft index: every write moves it.
    index: u64,
    /// The highest index of a KV write or delete (Consul's kvs + tombstones index).
    kv_index: u64,
    kv: BTreeMap<String, Entry>,
    sessions: BTreeMap<String, SessionState>,
    /// Keys refusing acquires until then (a lock-delay after an invalidation).
    lock_delays: HashMap<String, Instant>,
    /// Restores so far: a blocked query started before a restore is abandoned.
    restores: u64,
}

/// A copy of the double's state ([`ConsulDouble::snapshot`]), to restore later.
#[derive(Clone, Debug)]
pub struct Snapshot(State);

/// An error answer: status and body, as Consul words it.
type Refusal = (StatusCode, String);

impl State {
    fn write(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    fn kv_write(&mut self) -> u64 {
        let index = self.write();
        self.kv_index = index;
        index
    }

    /// What `GET /v1/kv/<key>` answers: the index and the entry.
    fn kv_get(&self, key: &str) -> (u64, Option<Entry>) {
        match self.kv.get(key) {
            Some(entry) => (entry.modify_index, Some(entry.clone())),
            None => (self.kv_index.max(1), None),
        }
    }

    fn kv_put(&mut self, key: &str, put: Put) -> Result<bool, Refusal> {
        let now = Instant::now();
        let existing = self.kv.get(key).cloned();
        if let Some(cas) = put.cas {
            let current = existing.as_ref().map_or(0, |e| e.modify_index);
            if cas != current {
                return Ok(false);
            }
        }
        let mut entry = existing.clone().unwrap_or(Entry {
            create_index: 0,
            modify_index: 0,
            lock_index: 0,
            flags: 0,
            value: Vec::new(),
            session: None,
        });
        match (&put.acquire, &put.release) {
            (Some(_), Some(_)) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "Conflicting flags: acquire and release".into(),
                ))
            }
            (Some(session), None) => {
                if !self.sessions.contains_key(session) {
                    return Err((
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("invalid session {session:?}"),
                    ));
                }
                if self.lock_delays.get(key).is_some_and(|until| now < *until) {
                    return Ok(false);
                }
                match entry.session.as_deref() {
                    Some(holder) if holder != session => return Ok(false),
                    Some(_) => {}
                    None => {
                        entry.lock_index += 1;
                        entry.session = Some(session.clone());
                    }
                }
            }
            (None, Some(session)) => {
                if entry.session.as_deref() != Some(session.as_str()) {
                    return Ok(false);
                }
                entry.session = None;
            }
            (None, None) => {}
        }
        let index = self.kv_write();
        if existing.is_none() {
            entry.create_index = index;
        }
        entry.modify_index = index;
        entry.flags = put.flags;
        entry.value = put.value;
        self.kv.insert(key.to_string(), entry);
        Ok(true)
    }

    fn kv_delete(&mut self, key: &str, cas: Option<u64>) -> bool {
        if let Some(cas) = cas {
            let current = self.kv.get(key).map_or(0, |e| e.modify_index);
            if cas != current {
                return false;
            }
        }
        if self.kv.remove(key).is_some() {
            self.kv_write();
        }
        true
    }

    fn session_create(&mut self, body: &[u8], min_ttl: Duration) -> Result<String, Refusal> {
        let bad = |m: String| (StatusCode::BAD_REQUEST, m);
        let spec: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            serde_json::from_slice(body).map_err(|e| bad(format!("Request decode failed: {e}")))?
        };
        let ttl_text = spec["TTL"].as_str().unwrap_or("").to_string();
        let ttl = if ttl_text.is_empty() {
            None
        } else {
            let ttl = parse_go_duration(&ttl_text)
                .ok_or_else(|| bad(format!("Request decode failed: bad TTL {ttl_text:?}")))?;
            if ttl < min_ttl || ttl > MAX_SESSION_TTL {
                return Err(bad(format!(
                    "Invalid Session TTL '{}', must be between [{:?}={:?}]",
                    ttl.as_nanos(),
                    min_ttl,
                    MAX_SESSION_TTL
                )));
            }
            (!ttl.is_zero()).then_some(ttl)
        };
        let lock_delay = match &spec["LockDelay"] {
            Value::Null => DEFAULT_LOCK_DELAY,
            Value::String(s) => parse_go_duration(s)
                .ok_or_else(|| bad(format!("Request decode failed: bad LockDelay {s:?}")))?,
            Value::Number(n) => {
                let n = n.as_u64().unwrap_or(0);
                // Consul's rule: a small number is seconds, a large one nanoseconds.
                if n < 1000 {
                    Duration::from_secs(n)
                } else {
                    Duration::from_nanos(n)
                }
            }
            other => return Err(bad(format!("Request decode failed: LockDelay {other}"))),
        };
        let behavior = match spec["Behavior"].as_str().unwrap_or("release") {
            "" | "release" => Behavior::Release,
            "delete" => Behavior::Delete,
            other => return Err(bad(format!("Invalid Behavior setting '{other}'"))),
        };
        let id = uuid();
        let create_index = self.write();
        self.sessions.insert(
            id.clone(),
            SessionState {
                name: spec["Name"].as_str().unwrap_or("").to_string(),
                ttl,
                ttl_text,
                behavior,
                lock_delay,
                create_index,
                expires: ttl.map(|t| Instant::now() + t * TTL_MULTIPLIER),
            },
        );
        Ok(id)
    }

    fn session_renew(&mut self, id: &str) -> Option<Value> {
        let session = self.sessions.get_mut(id)?;
        session.expires = session.ttl.map(|t| Instant::now() + t * TTL_MULTIPLIER);
        Some(session_json(id, session))
    }

    /// Ends a session: its locks are released (or its keys deleted), each under lock-delay.
    fn invalidate(&mut self, id: &str) {
        let Some(session) = self.sessions.remove(id) else {
            return;
        };
        let index = self.write();
        let held: Vec<String> = self
            .kv
            .iter()
            .filter(|(_, e)| e.session.as_deref() == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        if held.is_empty() {
            return;
        }
        self.kv_index = index;
        let until = Instant::now() + session.lock_delay;
        for key in held {
            match session.behavior {
                Behavior::Release => {
                    if let Some(entry) = self.kv.get_mut(&key) {
                        entry.session = None;
                        entry.modify_index = index;
                    }
                }
                Behavior::Delete => {
                    self.kv.remove(&key);
                }
            }
            if !session.lock_delay.is_zero() {
                self.lock_delays.insert(key, until);
            }
        }
    }

    /// Invalidates the sessions whose TTL ran out; true if any did.
    fn reap(&mut self, now: Instant) -> bool {
        let expired: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.expires.is_some_and(|at| at <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.invalidate(id);
        }
        !expired.is_empty()
    }

    /// A full TTL again for every session (Consul resets session timers on a new leader).
    fn reset_session_timers(&mut self) {
        let now = Instant::now();
        for session in self.sessions.values_mut() {
            session.expires = session.ttl.map(|t| now + t * TTL_MULTIPLIER);
        }
    }
}

/// A KV PUT's parameters.
struct Put {
    value: Vec<u8>,
    flags: u64,
    cas: Option<u64>,
    acquire: Option<String>,
    release: Option<String>,
}

fn session_json(id: &str, s: &SessionState) -> Value {
    json!({
        "ID": id,
        "Name": s.name,
        "Node": "consul-double",
        "LockDelay": s.lock_delay.as_nanos() as u64,
        "Behavior": match s.behavior { Behavior::Release => "release", Behavior::Delete => "delete" },
        "TTL": s.ttl_text,
        "NodeChecks": ["serfHealth"],
        "ServiceChecks": null,
        "CreateIndex": s.create_index,
        "ModifyIndex": s.create_index,
    })
}

fn entry_json(key: &str, e: &Entry) -> Value {
    let mut v = json!({
        "LockIndex": e.lock_index,
        "Key": key,
        "Flags": e.flags,
        "Value": if e.value.is_empty() {
            Value::Null
        } else {
            Value::String(base64::engine::general_purpose::STANDARD.encode(&e.value))
        },
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
    });
    if let Some(session) = &e.session {
        v["Session"] = json!(session);
    }
    v
}

/// What the double shares between its server tasks and the test.
struct Shared {
    state: Mutex<State>,
    /// Moved on every change of the state, so blocked queries look again.
    changed: watch::Sender<u64>,
    options: DoubleOptions,
    running: AtomicBool,
    kv_reads: AtomicU64,
    blocked: AtomicUsize,
    tokens_in_header: AtomicU64,
    tokens_in_query: AtomicU64,
    denied: AtomicU64,
    tls_refused: AtomicU64,
    /// [`ConsulDouble::redirect_to`]: where every request is sent instead, if anywhere.
    redirect: Mutex<Option<SocketAddr>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Runs `f` on the state and wakes blocked queries.
    fn mutate<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.state());
        self.notify();
        out
    }
}

/// Counts a blocked query for as long as it waits.
struct Blocked<'a>(&'a AtomicUsize);

impl<'a> Blocked<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The Consul double, serving on `127.0.0.1:<free port>` until dropped.
pub struct ConsulDouble {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    rt: Option<tokio::runtime::Runtime>,
    server: Option<JoinHandle<()>>,
    reaper: Option<JoinHandle<()>>,
}

impl ConsulDouble {
    /// Plain HTTP, no ACLs.
    pub fn start() -> Self {
        Self::start_with(DoubleOptions::default())
    }

    pub fn start_with(options: DoubleOptions) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("consul-double")
            .enable_all()
            .build()
            .expect("a runtime for the Consul double");
        let acceptor = options.tls.as_ref().map(tls_acceptor);
        let shared = Arc::new(Shared {
            // Index 1 is what Consul answers for an empty KV store; no write ever has it.
            state: Mutex::new(State {
                index: 1,
                ..State::default()
            }),
            changed: watch::channel(0).0,
            options,
            running: AtomicBool::new(false),
            kv_reads: AtomicU64::new(0),
            blocked: AtomicUsize::new(0),
            tokens_in_header: AtomicU64::new(0),
            tokens_in_query: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            tls_refused: AtomicU64::new(0),
            redirect: Mutex::new(None),
        });
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind the Consul double");
        let addr = listener.local_addr().expect("the double's address");
        let reaper = rt.spawn(reap(shared.clone()));
        let mut double = Self {
            addr,
            shared,
            acceptor,
            rt: Some(rt),
            server: None,
            reaper: Some(reaper),
        };
        double.serve(listener);
        double
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("the double's runtime")
    }

    fn serve(&mut self, listener: TcpListener) {
        self.shared.running.store(true, Ordering::SeqCst);
        let task = accept(listener, self.shared.clone(), self.acceptor.clone());
        self.server = Some(self.rt().spawn(task));
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, for `consul://` URLs.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Stops serving: the port is closed and open connections (blocked queries) are cut.
    /// The data stays, and sessions do not expire while stopped.
    pub fn stop(&mut self) {
        self.shared.running.store(false, Ordering::SeqCst);
        if let Some(server) = self.server.take() {
            server.abort();
            // Dropping the accept task drops its listener and every connection it serves.
            let _ = self.rt().block_on(server);
        }
    }

    /// Serves again on the same port with the same data; sessions get a full TTL again.
    pub fn restart(&mut self) {
        self.stop();
        let addr = self.addr;
        let listener = self.rt().block_on(async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match TcpListener::bind(addr).await {
                    Ok(listener) => return listener,
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("the Consul double cannot bind {addr} again: {e}"),
                }
            }
        });
        self.shared.mutate(State::reset_session_timers);
        self.serve(listener);
    }

    /// From now on every request is answered `307 Temporary Redirect` to the same path and
    /// query on `target` (a misconfigured or hostile agent); blocked queries answer so at
    /// once.
    pub fn redirect_to(&self, target: SocketAddr) {
        *self
            .shared
            .redirect
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(target);
        self.shared.notify();
    }

    pub fn is_running(&self) -> bool {
        self.shared.running.load(Ordering::SeqCst)
    }

    /// Creates a session; panics if Consul would refuse it.
    pub fn session_create(&self, spec: &SessionSpec) -> String {
        let mut body = json!({
            "Name": "test",
            "LockDelay": format!("{}ns", spec.lock_delay.as_nanos()),
            "Behavior": match spec.behavior { Behavior::Release => "release", Behavior::Delete => "delete" },
        });
        if let Some(ttl) = spec.ttl {
            body["TTL"] = json!(format!("{}ms", ttl.as_millis()));
        }
        let body = serde_json::to_vec(&body).expect("json");
        let min = self.shared.options.min_session_ttl;
        self.shared
            .mutate(|st| st.session_create(&body, min))
            .unwrap_or_else(|(status, m)| panic!("session create refused: {status} {m}"))
    }

    /// Destroys a session (its locks are released, or its keys deleted).
    pub fn session_destroy(&self, id: &str) {
        self.shared.mutate(|st| st.invalidate(id));
    }

    /// The sessions that exist now.
    pub fn sessions(&self) -> Vec<String> {
        self.shared.state().sessions.keys().cloned().collect()
    }

    /// The TTL a session was created with; `None` if it does not exist or has no TTL.
    pub fn session_ttl(&self, id: &str) -> Option<Duration> {
        self.shared.state().sessions.get(id)?.ttl
    }

    /// When a session is invalidated unless renewed before (twice its TTL after its last
    /// renewal); `None` if it does not exist or has no TTL.
    pub fn session_expires(&self, id: &str) -> Option<Instant> {
        self.shared.state().sessions.get(id)?.expires
    }

    /// `PUT /v1/kv/<key>?acquire=SESSION&flags=LOCK_FLAGS` with `value`.
    pub fn acquire(&self, key: &str, value: &str, session: &str) -> bool {
        self.put_with(key, value, Some(session), None)
    }

    /// `PUT /v1/kv/<key>?release=SESSION`, keeping the key's value and flags (as
    /// `api.Lock`'s Unlock does).
    pub fn release(&self, key: &str, session: &str) -> bool {
        let (value, flags) = match self.get(key) {
            Some(e) => (e.value, e.flags),
            None => return false,
        };
        let put = Put {
            value,
            flags,
            cas: None,
            acquire: None,
            release: Some(session.to_string()),
        };
        self.shared
            .mutate(|st| st.kv_put(key, put))
            .unwrap_or(false)
    }

    /// A plain `PUT /v1/kv/<key>` (flags 0): a held lock stays held.
    pub fn put(&self, key: &str, value: &str) {
        self.put_with(key, value, None, None);
    }

    fn put_with(
        &self,
        key: &str,
        value: &str,
        acquire: Option<&str>,
        release: Option<&str>,
    ) -> bool {
        let put = Put {
            value: value.as_bytes().to_vec(),
            flags: if acquire.is_some() { LOCK_FLAGS } else { 0 },
            cas: None,
            acquire: acquire.map(str::to_string),
            release: release.map(str::to_string),
        };
        self.shared
            .mutate(|st| st.kv_put(key, put))
            .unwrap_or_else(|(status, m)| panic!("KV put refused: {status} {m}"))
    }

    /// `DELETE /v1/kv/<key>`.
    pub fn delete(&self, key: &str) {
        self.shared.mutate(|st| st.kv_delete(key, None));
    }

    /// The entry as `GET /v1/kv/<key>` would show it.
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.shared.state().kv_get(key).1
    }

    /// The Raft index now.
    pub fn index(&self) -> u64 {
        self.shared.state().index
    }

    /// A copy of the whole state, to [`Self::restore`] later.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(self.shared.state().clone())
    }

    /// `consul snapshot restore`: the state (and its indexes) become the snapshot's, and
    /// every blocked query is abandoned, answering at once with the restored index.
    pub fn restore(&self, snapshot: &Snapshot) {
        self.shared.mutate(|st| {
            let restores = st.restores + 1;
            *st = snapshot.0.clone();
            st.restores = restores;
            st.lock_delays.clear();
            st.reset_session_timers();
        });
    }

    /// `GET /v1/kv/…` requests served so far (blocking or not).
    pub fn kv_reads(&self) -> u64 {
        self.shared.kv_reads.load(Ordering::SeqCst)
    }

    /// Blocking queries waiting right now.
    pub fn blocked_queries(&self) -> usize {
        self.shared.blocked.load(Ordering::SeqCst)
    }

    /// Requests that carried the required token in `X-Consul-Token` (or as a bearer token).
    pub fn tokens_in_header(&self) -> u64 {
        self.shared.tokens_in_header.load(Ordering::SeqCst)
    }

    /// Requests that carried a token as `?token=` (it then shows in URLs and logs).
    pub fn tokens_in_query(&self) -> u64 {
        self.shared.tokens_in_query.load(Ordering::SeqCst)
    }

    /// Requests refused with 403.
    pub fn denied(&self) -> u64 {
        self.shared.denied.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed (no or a bad client certificate, an untrusted server).
    pub fn tls_refused(&self) -> u64 {
        self.shared.tls_refused.load(Ordering::SeqCst)
    }
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        self.shared.running.store(false, Ordering::SeqCst);
        if let Some(server) = self.server.take() {
            server.abort();
        }
        if let Some(reaper) = self.reaper.take() {
            reaper.abort();
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn tls_acceptor(tls: &DoubleTls) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .expect("the double's certificate")
        .collect::<Result<_, _>>()
        .expect("the double's certificate PEM");
    let key = PrivateKeyDer::from_pem_file(&tls.key).expect("the double's key");
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("TLS versions");
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).expect("the client CA") {
                roots
                    .add(cert.expect("the client CA PEM"))
                    .expect("a usable client CA");
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .expect("a client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .expect("the double's certificate and key");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Accepts connections until aborted; dropping it drops every connection it serves.
async fn accept(
    listener: TcpListener,
    shared: Arc<Shared>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, shared.clone(), acceptor.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) {
    let _ = stream.set_nodelay(true);
    match acceptor {
        None => serve_http(TokioIo::new(stream), shared).await,
        Some(acceptor) => {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_http(TokioIo::new(tls), shared).await,
                _ => {
                    shared.tls_refused.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

async fn serve_http<I>(io: I, shared: Arc<Shared>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

/// Invalidates expired sessions, while the double serves.
async fn reap(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(REAP_EVERY).await;
        if !shared.running.load(Ordering::SeqCst) {
            continue;
        }
        let expired = shared.state().reap(Instant::now());
        if expired {
            shared.notify();
        }
    }
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, index: Option<u64>, content_type: &str, body: Vec<u8>) -> Answer {
    let mut builder = Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Vary", "Accept-Encoding");
    if let Some(index) = index {
        builder = builder
            .header("X-Consul-Index", index.to_string())
            .header("X-Consul-Knownleader", "true")
            .header("X-Consul-Lastcontact", "0");
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn text(status: StatusCode, message: &str) -> Answer {
    answer(
        status,
        None,
        "text/plain; charset=utf-8",
        message.as_bytes().to_vec(),
    )
}

fn json_answer(index: Option<u64>, value: &Value) -> Answer {
    answer(
        StatusCode::OK,
        index,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

/// The redirect [`ConsulDouble::redirect_to`] set, for a request to `uri`.
fn redirect(shared: &Shared, uri: &hyper::Uri) -> Option<Answer> {
    let target = (*shared.redirect.lock().unwrap_or_else(|e| e.into_inner()))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Response::builder()
        .status(StatusCode::TEMPORARY_REDIRECT)
        .header("Location", format!("http://{target}{path}"))
        .body(Full::new(Bytes::new()))
        .ok()
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Answer {
    if let Some(answer) = redirect(shared, req.uri()) {
        return answer;
    }
    let uri = req.uri().clone();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let header_token = req
        .headers()
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            req.headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_string)
        });
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes().to_vec(),
        Err(_) => return text(StatusCode::BAD_REQUEST, "cannot read the body"),
    };

    if let Some(required) = &shared.options.token {
        let given = match (&header_token, query.get("token")) {
            (Some(token), _) => {
                if token == required {
                    shared.tokens_in_header.fetch_add(1, Ordering::SeqCst);
                }
                Some(token)
            }
            (None, Some(token)) => {
                if token == required {
                    shared.tokens_in_query.fetch_add(1, Ordering::SeqCst);
                }
                Some(token)
            }
            (None, None) => None,
        };
        match given {
            Some(token) if token == required => {}
            Some(_) => {
                shared.denied.fetch_add(1, Ordering::SeqCst);
                return text(StatusCode::FORBIDDEN, "ACL not found");
            }
            None => {
                shared.denied.fetch_add(1, Ordering::SeqCst);
                return text(
                    StatusCode::FORBIDDEN,
                    "Permission denied: anonymous token lacks permission",
                );
            }
        }
    }

    if let Some(key) = path.strip_prefix("/v1/kv/") {
        let key = percent_decode(key);
        for unsupported in ["recurse", "keys", "separator"] {
            if query.contains_key(unsupported) {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("?{unsupported} is not implemented by the Consul double"),
                );
            }
        }
        return match method {
            // A blocked query ends when a redirect is set, and answers with it.
            Method::GET => {
                let answer = kv_get(shared, &key, &query).await;
                redirect(shared, &uri).unwrap_or(answer)
            }
            Method::PUT => kv_put(shared, &key, &query, body),
            Method::DELETE => {
                let cas = query.get("cas").and_then(|c| c.parse().ok());
                let done = shared.mutate(|st| st.kv_delete(&key, cas));
                json_answer(None, &json!(done))
            }
            other => text(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("method {other} not allowed"),
            ),
        };
    }
    if path == "/v1/session/create" {
        if method != Method::PUT {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("method {method} not allowed"),
            );
        }
        let min = shared.options.min_session_ttl;
        return match shared.mutate(|st| st.session_create(&body, min)) {
            Ok(id) => json_answer(None, &json!({ "ID": id })),
            Err((status, message)) => text(status, &message),
        };
    }
    if let Some(id) = path.strip_prefix("/v1/session/renew/") {
        if method != Method::PUT {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("method {method} not allowed"),
            );
        }
        return match shared.state().session_renew(id) {
            Some(session) => json_answer(None, &json!([session])),
            None => text(
                StatusCode::NOT_FOUND,
                &format!("Session id '{id}' not found"),
            ),
        };
    }
    if let Some(id) = path.strip_prefix("/v1/session/destroy/") {
        if method != Method::PUT {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("method {method} not allowed"),
            );
        }
        shared.mutate(|st| st.invalidate(id));
        return json_answer(None, &json!(true));
    }
    if let Some(id) = path.strip_prefix("/v1/session/info/") {
        let st = shared.state();
        let sessions: Vec<Value> = st
            .sessions
            .get(id)
            .map(|s| session_json(id, s))
            .into_iter()
            .collect();
        return json_answer(Some(st.index.max(1)), &json!(sessions));
    }
    if path == "/v1/status/leader" {
        return json_answer(None, &json!("127.0.0.1:8300"));
    }
    text(
        StatusCode::NOT_FOUND,
        &format!("{path} is not implemented by the Consul double"),
    )
}

async fn kv_get(shared: &Shared, key: &str, query: &HashMap<String, String>) -> Answer {
    shared.kv_reads.fetch_add(1, Ordering::SeqCst);
    let min_index: u64 = query.get("index").and_then(|i| i.parse().ok()).unwrap_or(0);
    let wait = query
        .get("wait")
        .and_then(|w| parse_go_duration(w))
        .unwrap_or(DEFAULT_WAIT)
        .min(MAX_WAIT);
    // Subscribed before the first look, so that no change between the look and the wait is
    // missed.
    let mut changes = shared.changed.subscribe();
    let (mut index, mut entry, restores) = {
        let st = shared.state();
        let (index, entry) = st.kv_get(key);
        (index, entry, st.restores)
    };
    if min_index > 0 && index <= min_index {
        let _blocked = Blocked::new(&shared.blocked);
        let jitter = wait.mul_f64(rand::random::<f64>() / 16.0);
        let deadline = tokio::time::Instant::now() + wait + jitter;
        loop {
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
            let st = shared.state();
            (index, entry) = st.kv_get(key);
            let redirected = shared
                .redirect
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some();
            if index > min_index || st.restores != restores || redirected {
                break;
            }
        }
    }
    match entry {
        None => answer(StatusCode::NOT_FOUND, Some(index), "text/plain", Vec::new()),
        Some(entry) if query.contains_key("raw") => answer(
            StatusCode::OK,
            Some(index),
            "application/octet-stream",
            entry.value,
        ),
        Some(entry) => json_answer(Some(index), &json!([entry_json(key, &entry)])),
    }
}

fn kv_put(shared: &Shared, key: &str, query: &HashMap<String, String>, body: Vec<u8>) -> Answer {
    let number = |name: &str| -> Result<Option<u64>, String> {
        match query.get(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("Invalid {name} value {v:?}")),
        }
    };
    let (flags, cas) = match (number("flags"), number("cas")) {
        (Ok(flags), Ok(cas)) => (flags.unwrap_or(0), cas),
        (Err(e), _) | (_, Err(e)) => return text(StatusCode::BAD_REQUEST, &e),
    };
    let put = Put {
        value: body,
        flags,
        cas,
        acquire: query.get("acquire").cloned(),
        release: query.get("release").cloned(),
    };
    match shared.mutate(|st| st.kv_put(key, put)) {
        Ok(done) => json_answer(None, &json!(done)),
        Err((status, message)) => text(status, &message),
    }
}

/// Go's `time.ParseDuration` for what Consul's clients send: `1.5s`, `100ms`, `2m30s`,
/// `0`.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    Some(Duration::from_secs_f64(total))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A random UUID, as Consul's session IDs look.
fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
