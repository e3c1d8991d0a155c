//! The conformance suite: the same behavioural tests against every store backend.
//!
//! A store plugs in by implementing [`StoreHarness`] (one file per store:
//! `store_etcd.rs`, `store_zk.rs`, `store_consul.rs`) and by one line of the
//! `conformance!` macro in `tests/conformance.rs`. The tests here never know which store
//! they run on: they drive it through the harness and watch the proxy like a user would
//! (`/leader`, `/metrics`, and who answers requests).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::http;
use crate::proxy::Proxy;
use crate::sim::{read_log, wait_for_single_primary, SimManager, SimOptions};

/// One store, started for one test, with the means to act out its election by hand.
pub trait StoreHarness {
    /// The DISCOVERY URL the proxy follows plus any extra flags (`--election contenders`).
    fn proxy_args(&self) -> Vec<String>;

    /// Options for a simulated manager that runs for election in this store by the store's
    /// real recipe (used by the failover test).
    fn sim_options(&self, name: &str, log: &Path) -> SimOptions;

    /// Makes `addr` the leader the way the store's recipe leaves it when `addr` won
    /// (a lock held, a value written). Replaces any previous leader.
    fn elect(&mut self, addr: &str);

    /// Writes `value` (not an address) as the leader's value, the lock held as in `elect`.
    fn elect_garbage(&mut self, value: &str);

    /// Opens the election: nobody holds it any more.
    fn vacate(&mut self);

    /// The store's own ways for a leader value to go stale (the value may still be there,
    /// but nobody holds the lock). Each is a short name for test output.
    fn stale_cases(&self) -> Vec<&'static str>;

    /// Elects `addr`, then lets it go stale by `case` (returns once the store is stale or
    /// will be by itself within a few seconds, e.g. a TTL).
    fn elect_then_go_stale(&mut self, case: &str, addr: &str);

    /// Stops the store (the proxy must keep its leader) and starts it again on the same
    /// address and data.
    fn stop(&mut self);
    fn restart(&mut self);
}

/// A manager that runs for no election (`--discovery none`): the harness names it leader.
pub fn standalone(name: &str, dir: &Path) -> SimManager {
    SimManager::start(&SimOptions::new(name, "none", &dir.join("writes.log")))
}

pub fn start_proxy(store: &dyn StoreHarness, extra: &[&str]) -> Proxy {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend(store.proxy_args());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Proxy::start(&refs)
}

fn served_by(proxy: &Proxy, path: &str) -> String {
    let response = http::get(proxy.addr(), path).expect("request through the proxy");
    assert_eq!(response.status, 200, "GET {path}: {}", response.text());
    response.header("X-Served-By").unwrap_or("-").to_string()
}

fn is_leader(addr: String) -> impl Fn(&serde_json::Value) -> bool {
    move |l| l["leader"] == addr.as_str() && l["state"] == "leader"
}

fn no_leader(l: &serde_json::Value) -> bool {
    l["state"] == "no_leader" && l["leader"].is_null()
}

const WAIT: Duration = Duration::from_secs(20);
/// How long a proxy may take to notice a stopped store, or that it is back (its retries
/// back off).
const OUTAGE_WAIT: Duration = Duration::from_secs(40);

pub fn initial_leader_and_change(mut store: impl StoreHarness) {
    let dir = tempfile::tempdir().unwrap();
    let (m1, m2) = (standalone("m1", dir.path()), standalone("m2", dir.path()));
    store.elect(&m1.advertise());
    let proxy = start_proxy(&store, &[]);
    proxy.wait_for_leader(WAIT, is_leader(m1.advertise()));
    assert_eq!(served_by(&proxy, "/v1.41/info"), "m1");

    store.elect(&m2.advertise());
    let leader = proxy.wait_for_leader(WAIT, is_leader(m2.advertise()));
    assert_eq!(leader["changes"], 2);
    assert_eq!(served_by(&proxy, "/info"), "m2");
    // The log is read on a thread of its own: wait for the line, /leader may be ahead.
    for m in [&m1, &m2] {
        proxy.wait_for_log(&format!("New leader elected: {}", m.advertise()), WAIT);
    }
    assert_eq!(proxy.metric("leader_proxy_leader_changes_total"), 2.0);
    let gauge = format!("leader_proxy_leader{{address=\"{}\"}}", m2.advertise());
    assert_eq!(proxy.metric(&gauge), 1.0);
}

pub fn no_leader_holds_then_serves(mut store: impl StoreHarness) {
    let dir = tempfile::tempdir().unwrap();
    let m1 = standalone("m1", dir.path());
    store.elect(&m1.advertise());
    let proxy = start_proxy(&store, &["--hold-timeout", "20s"]);
    proxy.wait_for_leader(WAIT, is_leader(m1.advertise()));
    store.vacate();
    proxy.wait_for_leader(WAIT, no_leader);

    let elected = Arc::new(AtomicBool::new(false));
    let held = {
        let (addr, elected) = (proxy.addr(), elected.clone());
        std::thread::spawn(move || {
            let response = http::get(addr, "/info").expect("held request");
            (response, elected.load(Ordering::SeqCst))
        })
    };
    proxy.wait_for_metric(
        "leader_proxy_held_requests",
        1.0,
        WAIT,
        "request never held",
    );
    elected.store(true, Ordering::SeqCst);
    store.elect(&m1.advertise());
    let (response, after) = held.join().unwrap();
    assert!(after, "answered before there was a leader");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("X-Served-By"), Some("m1"));

    // Past --hold-timeout: 503 with a message the docker CLI prints.
    let impatient = start_proxy(&store, &["--hold-timeout", "300ms"]);
    impatient.wait_for_leader(WAIT, is_leader(m1.advertise()));
    store.vacate();
    impatient.wait_for_leader(WAIT, no_leader);
    let response = http::get(impatient.addr(), "/info").unwrap();
    assert_eq!(response.status, 503);
    let message = response.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("no Swarm primary"), "{message}");
}

pub fn stale_values_mean_no_leader(mut store: impl StoreHarness) {
    let dir = tempfile::tempdir().unwrap();
    let (m1, m2) = (standalone("m1", dir.path()), standalone("m2", dir.path()));
    let cases = store.stale_cases();
    assert!(!cases.is_empty(), "every store has a way to go stale");
    store.elect(&m1.advertise());
    let proxy = start_proxy(&store, &[]);
    proxy.wait_for_leader(WAIT, is_leader(m1.advertise()));
    for case in cases {
        store.elect_then_go_stale(case, &m1.advertise());
        let seen = wait_until_stale(&proxy, case);
        assert!(seen["leader"].is_null(), "{case}: {seen}");
        store.elect(&m1.advertise());
        proxy.wait_for_leader(WAIT, is_leader(m1.advertise()));
    }
    // A proxy whose first read finds the value stale does not take it for a leader. A new
    // proxy says `no_leader` before it has read anything, so it is started while the store
    // is down: it says `degraded` until it reads the store, and what it says after that
    // comes from the stale value.
    let case = store.stale_cases()[0];
    store.elect_then_go_stale(case, &m1.advertise());
    wait_until_stale(&proxy, case);
    store.stop();
    let late = start_proxy(&store, &[]);
    late.wait_for_leader(OUTAGE_WAIT, |l| l["state"] == "degraded");
    store.restart();
    let read = late.wait_for_leader(OUTAGE_WAIT, |l| l["state"] != "degraded");
    assert!(
        no_leader(&read),
        "{case}: the stale value was read as {read}"
    );
    // Nor for a moment between two looks at /leader: the next leader is its first one.
    store.elect(&m2.advertise());
    let leader = late.wait_for_leader(WAIT, is_leader(m2.advertise()));
    assert_eq!(leader["changes"], 1, "{case}: {leader}\n{}", late.log());
    let stale = format!("New leader elected: {}", m1.advertise());
    assert!(!late.log().contains(&stale), "{case}:\n{}", late.log());
    assert_eq!(served_by(&late, "/info"), "m2");
}

/// How long `no_leader` must last before a stale case counts as stale: on its way there a
/// case may open the election for a moment (the old holder resigns before the new one takes
/// the lock), and that moment is not the stale value.
const STALE_SETTLE: Duration = Duration::from_millis(1500);

/// Waits until the proxy has said `no_leader` for [`STALE_SETTLE`] without a break.
fn wait_until_stale(proxy: &Proxy, case: &str) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    let mut since: Option<Instant> = None;
    loop {
        let now = proxy.leader();
        if no_leader(&now) {
            if since.get_or_insert_with(Instant::now).elapsed() >= STALE_SETTLE {
                return now;
            }
        } else {
            since = None;
        }
        assert!(
            Instant::now() < deadline,
            "{case}: never stale, /leader is {now}; proxy log:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn store_outage_keeps_the_leader(mut store: impl StoreHarness) {
    let dir = tempfile::tempdir().unwrap();
    let (m1, m2) = (standalone("m1", dir.path()), standalone("m2", dir.path()));
    store.elect(&m1.advertise());
    let proxy = start_proxy(&store, &[]);
    proxy.wait_for_leader(WAIT, is_leader(m1.advertise()));

    store.stop();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut served = 0;
    while Instant::now() < deadline {
        assert_eq!(served_by(&proxy, "/info"), "m1");
        served += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(served > 10);
    let leader = proxy.wait_for_leader(OUTAGE_WAIT, |l| l["state"] == "degraded");
    assert_eq!(leader["leader"], m1.advertise());
    assert!(proxy.metric("leader_proxy_store_errors_total") >= 1.0);
    assert_eq!(http::get_text(&proxy.admin_url("/readyz")).trim(), "ready");
    assert_eq!(served_by(&proxy, "/info"), "m1");

    store.restart();
    proxy.wait_for_leader(OUTAGE_WAIT, |l| l["state"] == "leader");
    store.elect(&m2.advertise());
    proxy.wait_for_leader(WAIT, is_leader(m2.advertise()));
    assert_eq!(served_by(&proxy, "/info"), "m2");
}

pub fn garbage_is_ignored_and_counted(mut store: impl StoreHarness) {
    let dir = tempfile::tempdir().unwrap();
    let (m1, m2) = (standalone("m1", dir.path()), standalone("m2", dir.path()));
    store.elect(&m1.advertise());
    let proxy = start_proxy(&store, &[]);
    proxy.wait_for_leader(WAIT, is_leader(m1.advertise()));

    let garbage = [
        "garbage",
        "http://127.0.0.1:2375/path",
        "127.0.0.1:0",
        "{\"a\":1}",
    ];
    for (i, value) in garbage.iter().enumerate() {
        store.elect_garbage(value);
        proxy.wait_for_metric(
            "leader_proxy_rejected_leader_values_total",
            (i + 1) as f64,
            WAIT,
            &format!("{value:?} not rejected"),
        );
    }
    assert_eq!(
        proxy.metric("leader_proxy_rejected_leader_values_total"),
        garbage.len() as f64
    );
    assert_eq!(proxy.leader()["leader"], m1.advertise());
    assert_eq!(served_by(&proxy, "/info"), "m1");
    assert!(proxy.log().contains("ignoring invalid leader value"));

    store.elect(&format!("tcp://{}", m2.advertise()));
    proxy.wait_for_leader(WAIT, is_leader(m2.advertise()));
    assert_eq!(served_by(&proxy, "/info"), "m2");
}

pub fn a_burst_converges_on_the_last(mut store: impl StoreHarness) {
    let dir = tempfile::tempdir().unwrap();
    let managers: Vec<SimManager> = ["m1", "m2", "m3"]
        .iter()
        .map(|n| standalone(n, dir.path()))
        .collect();
    store.elect(&managers[0].advertise());
    let proxy = start_proxy(&store, &[]);
    proxy.wait_for_leader(WAIT, is_leader(managers[0].advertise()));
    for i in 0..40 {
        match i % 4 {
            3 => store.elect_garbage("not-an-address"),
            n => store.elect(&managers[n].advertise()),
        }
    }
    store.elect(&managers[1].advertise());
    proxy.wait_for_leader(WAIT, is_leader(managers[1].advertise()));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(proxy.leader()["leader"], managers[1].advertise());
    for _ in 0..5 {
        assert_eq!(served_by(&proxy, "/info"), "m2");
    }
}

#[derive(Debug, Clone)]
struct Answer {
    id: String,
    method: &'static str,
    /// 0 when the request failed without an HTTP answer.
    status: u16,
    served_by: String,
    role: String,
    /// When the client had the whole answer (Unix µs on this machine's clock).
    received_us: u64,
    /// What the client saw on failure (shown when an assertion fails).
    error: String,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Sends one request with `X-Request-Id: id` and records what came back.
fn send(proxy: std::net::SocketAddr, id: String, method: &'static str, path: &str) -> Answer {
    let headers = [("X-Request-Id", id.as_str())];
    let result = http::request(proxy, method, path, &headers, b"", Duration::from_secs(40));
    let received_us = now_us();
    match result {
        Ok(r) => Answer {
            id,
            method,
            status: r.status,
            served_by: r.header("X-Served-By").unwrap_or("-").to_string(),
            role: r.header("X-Role").unwrap_or("-").to_string(),
            received_us,
            error: if r.status >= 400 {
                r.text()
            } else {
                String::new()
            },
        },
        Err(e) => Answer {
            id,
            method,
            status: 0,
            served_by: "-".into(),
            role: "-".into(),
            received_us,
            error: e.to_string(),
        },
    }
}

/// Sends a request every 10 ms until `stop`: GET /info and POST /containers/create in turn,
/// each with a unique request id.
fn client(proxy: std::net::SocketAddr, stop: Arc<AtomicBool>, answers: Arc<Mutex<Vec<Answer>>>) {
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let answer = if n % 2 == 0 {
            send(
                proxy,
                format!("req-{n}"),
                "POST",
                "/v1.41/containers/create",
            )
        } else {
            send(proxy, format!("req-{n}"), "GET", "/v1.41/info")
        };
        answers.lock().unwrap().push(answer);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How long a slow write runs on the manager after it was logged (`?sleep_ms=`).
const SLOW_WRITE: Duration = Duration::from_millis(2000);

/// The slow writer's state: the write it has sent and not had answered yet (request id,
/// Unix µs when it was sent), and the answers so far.
#[derive(Default)]
struct SlowWrites {
    sending: Mutex<Option<(String, u64)>>,
    answers: Mutex<Vec<Answer>>,
}

/// Sends slow writes one after the other until `stop`, so that one is running on the
/// primary most of the time: `POST /containers/create?sleep_ms=2000`, ids `slow-N`.
fn slow_writer(proxy: std::net::SocketAddr, stop: Arc<AtomicBool>, slow: Arc<SlowWrites>) {
    let path = format!(
        "/v1.41/containers/create?sleep_ms={}",
        SLOW_WRITE.as_millis()
    );
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let id = format!("slow-{n}");
        *slow.sending.lock().unwrap() = Some((id.clone(), now_us()));
        let answer = send(proxy, id, "POST", &path);
        *slow.sending.lock().unwrap() = None;
        slow.answers.lock().unwrap().push(answer);
    }
}

/// Waits until a slow write is running on `primary`: logged by it (so executed), and sent
/// recently enough that it cannot be answered before the kill that follows (it is answered
/// `SLOW_WRITE` after it was logged, which is after it was sent). Returns its request id.
fn slow_write_running_on(log: &Path, primary: &str, slow: &SlowWrites, proxy: &Proxy) -> String {
    let margin = SLOW_WRITE.as_micros() as u64 / 4;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sending = slow.sending.lock().unwrap().clone();
        if let Some((id, sent_us)) = sending {
            let young = now_us() + margin < sent_us + SLOW_WRITE.as_micros() as u64;
            let running = || {
                read_log(log)
                    .iter()
                    .any(|l| l.request_id == id && l.name == primary)
            };
            if young && running() {
                return id;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no slow write ran on {primary} within 30 s; slow answers so far: {:?}\nproxy log:\n{}",
            slow.answers.lock().unwrap(),
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The test's own view of the election, independent of the managers that run in it and of
/// the proxy: a sim-manager with `--observe` that follows the store by its recipe and runs
/// for nothing. It prints `Store primary <unix µs> <address>` each time the leader the store
/// names changes, dated from the watch event that showed it.
struct StoreWatcher {
    child: Child,
    seen: Arc<Mutex<Vec<(u64, String)>>>,
}

impl StoreWatcher {
    fn start(opts: &SimOptions) -> StoreWatcher {
        let mut child = Command::new(crate::bins::sim_manager())
            .args(["--name", &opts.name, "--listen", "127.0.0.1:0"])
            .args(["--discovery", &opts.discovery])
            .args(["--election", opts.election.as_str()])
            .args(["--ttl", &opts.ttl_secs.to_string()])
            .arg("--observe")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sim-manager --observe");
        let stdout = child.stdout.take().expect("piped stdout");
        let seen = Arc::new(Mutex::new(Vec::new()));
        {
            let seen = seen.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let Some(rest) = line.strip_prefix("Store primary ") else {
                        continue;
                    };
                    if let Some((us, addr)) = rest.split_once(' ') {
                        if let Ok(us) = us.parse() {
                            let addr = if addr == "-" { "" } else { addr };
                            seen.lock().unwrap().push((us, addr.to_string()));
                        }
                    }
                }
            });
        }
        StoreWatcher { child, seen }
    }

    /// The first leader the store named at or after `after_us` other than `old`, and when.
    fn wait_for_new_leader(&self, after_us: u64, old: &str, timeout: Duration) -> (u64, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .find(|(us, addr)| *us >= after_us && !addr.is_empty() && addr != old)
                .cloned();
            if let Some(found) = found {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "the store named no new leader within {timeout:?}; the watcher saw {:?}",
                self.seen.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for StoreWatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one round of the failover test measured, in µs.
struct Round {
    /// Kill → the store names the new primary: the store's own failover (lock TTL).
    store_failover_us: i64,
    /// The store names the new primary → the client has the first answer from it.
    switch_us: i64,
    /// Which first showed that the store had named it, and how much later the other did
    /// (None: the proxy's log had no readable line for it).
    first_seen: (&'static str, Option<i64>),
}

/// When the store named the new primary, as early as anything shows it: the watcher's
/// watch event, or the proxy's own log line adopting it if that came first (a leader
/// cannot be adopted before the store names it). Both come after the store's commit, so
/// the earlier one is the closer bound, and never the one that flatters the proxy.
fn named_at(watcher_us: u64, proxy_us: Option<u64>) -> (u64, (&'static str, Option<i64>)) {
    match proxy_us {
        Some(p) if p < watcher_us => (p, ("the proxy's log", Some((watcher_us - p) as i64))),
        Some(p) => (watcher_us, ("the watcher", Some((p - watcher_us) as i64))),
        None => (watcher_us, ("the watcher", None)),
    }
}

/// When the proxy logged `New leader elected: ADDR` at or after `after_us` (its log lines
/// start with an RFC 3339 UTC time, `2026-11-29T18:08:57.131663Z`), in Unix µs.
fn proxy_adopted_us(proxy_log: &str, addr: &str, after_us: u64) -> Option<u64> {
    let wanted = format!("New leader elected: {addr}");
    proxy_log
        .lines()
        .filter(|l| l.trim_end().ends_with(&wanted))
        .filter_map(|l| rfc3339_utc_us(l.split_whitespace().next()?))
        .find(|us| *us >= after_us)
}

/// `YYYY-MM-DDTHH:MM:SS[.frac]Z` → Unix µs.
fn rfc3339_utc_us(text: &str) -> Option<u64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (date.next()??, date.next()??, date.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (hms.next()??, hms.next()??, hms.next()??);
    let micros: i64 = format!("{frac:0<6}").get(..6)?.parse().ok()?;
    // Days from 1970-01-01 to y-m-d (proleptic Gregorian; Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3_600 + mm * 60 + ss;
    u64::try_from(secs * 1_000_000 + micros).ok()
}

fn ms(us: i64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

/// The failover test (docs/testing.md#failover-tests): three managers running for election
/// by the store's recipe, a client sending a mixed GET/POST request every 10 ms through the
/// proxy, a second client keeping a slow write running, the primary killed with SIGKILL
/// while one runs on it and restarted as a replica, three rounds.
///
/// Each round measures how long the store took to name a new primary after the kill (the
/// store's own failover: the lock TTL) and how long after that the client had the first
/// answer from it (the switch). When the store named it is taken from a watcher of the
/// store of the test's own ([`StoreWatcher`]), or from the proxy's log when that shows it
/// earlier ([`named_at`]).
pub fn failover(store: impl StoreHarness, label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("writes.log");
    let mut managers: Vec<SimManager> = ["m1", "m2", "m3"]
        .iter()
        .map(|name| SimManager::start(&store.sim_options(name, &log)))
        .collect();
    let primary_now = |managers: &[SimManager]| {
        let refs: Vec<&SimManager> = managers.iter().collect();
        wait_for_single_primary(&refs, Duration::from_secs(40))
    };
    primary_now(&managers).unwrap();
    let watcher_options = store.sim_options("watcher", &log);
    let ttl = watcher_options.ttl_secs;
    let watcher = StoreWatcher::start(&watcher_options);
    let proxy = start_proxy(&store, &[]);
    proxy.wait_for_leader(WAIT, |l| l["state"] == "leader");

    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let client = {
        let (stop, answers, addr) = (stop.clone(), answers.clone(), proxy.addr());
        std::thread::spawn(move || client(addr, stop, answers))
    };
    let slow = Arc::new(SlowWrites::default());
    let slow_client = {
        let (stop, slow, addr) = (stop.clone(), slow.clone(), proxy.addr());
        std::thread::spawn(move || slow_writer(addr, stop, slow))
    };

    let mut rounds = Vec::new();
    // The slow writes running on the primary when it was killed.
    let mut caught = Vec::new();
    for round in 1..=3 {
        std::thread::sleep(Duration::from_millis(500));
        let primary = primary_now(&managers)
            .unwrap_or_else(|e| panic!("round {round}: {e}\nproxy log:\n{}", proxy.log()));
        let killed = managers[primary].name().to_string();
        let killed_addr = managers[primary].advertise();
        caught.push(slow_write_running_on(&log, &killed, &slow, &proxy));
        let killed_at = answers.lock().unwrap().len();
        let killed_us = now_us();
        managers[primary].kill();

        let (elected_us, elected) =
            watcher.wait_for_new_leader(killed_us, &killed_addr, Duration::from_secs(60));
        let deadline = Instant::now() + Duration::from_secs(60);
        let first_new = loop {
            let found = answers.lock().unwrap()[killed_at..]
                .iter()
                .find(|a| a.status < 300 && a.served_by != killed && a.served_by != "-")
                .cloned();
            if let Some(answer) = found {
                break answer;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: no answer from a new primary; proxy log:\n{}",
                proxy.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let named = managers
            .iter()
            .find(|m| m.advertise() == elected)
            .map_or("?", |m| m.name());
        assert_eq!(
            first_new.served_by, named,
            "round {round}: the store named {elected}, the first answer came from another: {first_new:?}"
        );
        let adopted_us = proxy_adopted_us(&proxy.log(), &elected, killed_us);
        let (named_us, first_seen) = named_at(elected_us, adopted_us);
        let measured = Round {
            store_failover_us: named_us as i64 - killed_us as i64,
            switch_us: first_new.received_us as i64 - named_us as i64,
            first_seen,
        };
        println!(
            "{label}: round {round}: {killed} killed, the store named {named} {} ms later \
             (lock TTL {ttl} s; first seen by {}, by {} {} ms later), switch time (the \
             store names it → the client has its first answer) {} ms",
            ms(measured.store_failover_us),
            first_seen.0,
            if first_seen.0 == "the watcher" {
                "the proxy's log"
            } else {
                "the watcher"
            },
            first_seen.1.map_or("?".into(), ms),
            ms(measured.switch_us)
        );
        if measured.switch_us < 0 {
            eprintln!(
                "{label}: round {round}: ERROR: negative switch time {} ms: the client had an \
                 answer from {named} before the store was seen to name it",
                ms(measured.switch_us)
            );
        }
        rounds.push(measured);
        // Restarted before the next kill: it rejoins as a replica.
        managers[primary].restart();
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    client.join().unwrap();
    slow_client.join().unwrap();

    let answers = answers.lock().unwrap();
    let slow_answers = slow.answers.lock().unwrap();
    let writes = read_log(&log);
    let mut executed: HashMap<&str, usize> = HashMap::new();
    for line in &writes {
        *executed.entry(line.request_id.as_str()).or_default() += 1;
    }
    let gets = answers.iter().filter(|a| a.method == "GET").count();
    let posts = answers.len() - gets;
    assert!(
        gets > 50 && posts > 50,
        "too little traffic: {gets} GET, {posts} POST"
    );
    for answer in answers.iter().chain(slow_answers.iter()) {
        let times = executed.get(answer.id.as_str()).copied().unwrap_or(0);
        if answer.method == "GET" {
            assert_eq!(
                answer.status,
                200,
                "a GET failed ({}): {answer:?}\nproxy log:\n{}",
                answer.error,
                proxy.log()
            );
        } else {
            assert!(times <= 1, "POST executed {times} times: {answer:?}");
            match answer.status {
                201 => assert_eq!(times, 1, "answered 201 but never executed: {answer:?}"),
                502 => assert!(
                    answer.error.contains("leader-proxy"),
                    "a 502 without the proxy's message: {answer:?}"
                ),
                _ => panic!(
                    "a POST got neither 201 nor 502 ({}): {answer:?}",
                    answer.error
                ),
            }
        }
        if answer.status < 300 {
            assert_eq!(answer.role, "primary", "answered by a replica: {answer:?}");
        }
    }
    // The slow writes the kills caught: each ran once, on the killed primary, and its
    // client was told it failed.
    for id in &caught {
        let lines: Vec<_> = writes.iter().filter(|l| &l.request_id == id).collect();
        let answer = slow_answers.iter().find(|a| &a.id == id);
        assert_eq!(
            lines.len(),
            1,
            "the slow write {id} running at a kill was executed {} times: {lines:?}, answer {answer:?}",
            lines.len()
        );
        let answer = answer.unwrap_or_else(|| panic!("the slow write {id} was never answered"));
        assert_eq!(
            answer.status, 502,
            "the slow write {id} running at a kill: {answer:?}"
        );
    }
    for line in &writes {
        assert_eq!(
            line.role, "primary",
            "a write executed by a replica: {line:?}"
        );
    }
    let shown = |f: fn(&Round) -> i64| -> Vec<String> { rounds.iter().map(|r| ms(f(r))).collect() };
    let worst = rounds.iter().map(|r| r.switch_us).max().unwrap_or_default();
    println!(
        "{label}: {} requests ({gets} GET, {posts} POST), {} slow writes ({} running at a kill: \
         executed once, answered 502)",
        answers.len(),
        slow_answers.len(),
        caught.len()
    );
    println!(
        "{label}: store failover (kill → the store names a new primary, lock TTL {ttl} s) {:?} ms; \
         switch time (→ the client has the first answer from it) {:?} ms, worst {} ms (goal: under 20 ms); \
         first seen by {:?}",
        shown(|r| r.store_failover_us),
        shown(|r| r.switch_us),
        ms(worst),
        rounds.iter().map(|r| r.first_seen.0).collect::<Vec<_>>()
    );
    let negative: Vec<String> = rounds
        .iter()
        .filter(|r| r.switch_us < 0)
        .map(|r| ms(r.switch_us))
        .collect();
    assert!(
        negative.is_empty(),
        "{label}: negative switch times {negative:?} ms: the store was seen to name the new \
         primary after the client had an answer from it, so these rounds measured nothing"
    );
}
