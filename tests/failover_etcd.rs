//! The failover test of DESIGN.md, on each etcd election style: three simulated managers
//! (separate processes), a client sending a mixed GET/POST request every 10 ms through the
//! proxy, the primary killed with SIGKILL and restarted as a replica, three rounds.
//!
//! Checked: no GET fails; no POST is executed twice (the managers' shared write log); a POST
//! caught by a kill gets 502 or succeeds, nothing else; every answer comes from the manager
//! that was primary when it answered. Printed: the switch time, from the new primary's
//! election to the first request it serves through the proxy.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::etcd::Etcd;
use support::http;
use support::proxy::Proxy;
use support::sim::{read_log, wait_for_single_primary, Election, SimManager, SimOptions};

#[derive(Debug, Clone)]
struct Answer {
    id: String,
    method: &'static str,
    /// 0 when the request failed without an HTTP answer.
    status: u16,
    served_by: String,
    role: String,
    /// When the manager became primary (its own report), and when the client got the answer.
    primary_since_ms: Option<u64>,
    received_ms: u64,
    /// What the client saw on failure (shown when an assertion fails).
    error: String,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sends a request every 10 ms until `stop`, alternating GET /info and POST
/// /containers/create with a unique request id.
fn client(proxy: std::net::SocketAddr, stop: Arc<AtomicBool>, answers: Arc<Mutex<Vec<Answer>>>) {
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let (method, path) = if n % 2 == 0 {
            ("POST", "/v1.41/containers/create")
        } else {
            ("GET", "/v1.41/info")
        };
        let id = format!("req-{n}");
        let result = http::request(
            proxy,
            method,
            path,
            &[("X-Request-Id", &id)],
            b"",
            Duration::from_secs(40),
        );
        let answer = match result {
            Ok(r) => Answer {
                id,
                method,
                status: r.status,
                served_by: r.header("X-Served-By").unwrap_or("-").to_string(),
                role: r.header("X-Role").unwrap_or("-").to_string(),
                primary_since_ms: r.header("X-Primary-Since").and_then(|v| v.parse().ok()),
                received_ms: now_ms(),
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
                primary_since_ms: None,
                received_ms: now_ms(),
                error: e.to_string(),
            },
        };
        answers.lock().unwrap().push(answer);
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn failover(scheme: &str, election: Election) {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("writes.log");
    let url = format!("{scheme}://{}/swarm", etcd.endpoint());
    let mut managers: Vec<SimManager> = ["m1", "m2", "m3"]
        .iter()
        .map(|name| SimManager::start(&SimOptions::new(name, &url, &log).election(election).ttl(2)))
        .collect();
    let refs: Vec<&SimManager> = managers.iter().collect();
    wait_for_single_primary(&refs, Duration::from_secs(30)).unwrap();
    drop(refs);

    let mut args = vec![url.as_str()];
    if election == Election::Contenders {
        args = vec!["--election", "contenders", url.as_str()];
    }
    let proxy = Proxy::start(&args);
    proxy.wait_for_leader(Duration::from_secs(10), |l| l["state"] == "leader");

    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let client = {
        let (stop, answers, addr) = (stop.clone(), answers.clone(), proxy.addr());
        std::thread::spawn(move || client(addr, stop, answers))
    };

    let mut switch_times = Vec::new();
    for round in 1..=3 {
        std::thread::sleep(Duration::from_millis(500));
        let refs: Vec<&SimManager> = managers.iter().collect();
        let primary = wait_for_single_primary(&refs, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("round {round}: {e}\nproxy log:\n{}", proxy.log()));
        drop(refs);
        let killed_name = managers[primary].name().to_string();
        let killed_at = answers.lock().unwrap().len();
        managers[primary].kill();

        // Wait until the proxy serves from another manager.
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        let first_new = loop {
            let found = answers.lock().unwrap()[killed_at..]
                .iter()
                .find(|a| a.status < 300 && a.served_by != killed_name && a.served_by != "-")
                .cloned();
            if let Some(answer) = found {
                break answer;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: no answer from a new primary; proxy log:\n{}",
                proxy.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let since = first_new
            .primary_since_ms
            .expect("X-Primary-Since on every answer");
        let switch = first_new.received_ms.saturating_sub(since);
        println!(
            "{scheme} {}: round {round}: {killed_name} killed, {} serving; switch time (election to first request served) {switch} ms",
            election.as_str(),
            first_new.served_by
        );
        switch_times.push(switch);
        // Restart the killed manager before the next kill: it rejoins as a replica.
        managers[primary].restart();
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    client.join().unwrap();

    let answers = answers.lock().unwrap();
    let writes = read_log(&log);
    let mut executed: HashMap<&str, usize> = HashMap::new();
    for line in &writes {
        *executed.entry(line.request_id.as_str()).or_default() += 1;
    }
    let gets = answers.iter().filter(|a| a.method == "GET").count();
    let posts = answers.iter().filter(|a| a.method == "POST").count();
    assert!(
        gets > 50 && posts > 50,
        "too little traffic: {gets} GET, {posts} POST"
    );
    for answer in answers.iter() {
        let times = executed.get(answer.id.as_str()).copied().unwrap_or(0);
        match answer.method {
            "GET" => assert_eq!(
                answer.status,
                200,
                "a GET failed ({}): {answer:?}\nproxy log:\n{}",
                answer.error,
                proxy.log()
            ),
            _ => {
                assert!(times <= 1, "POST executed {times} times: {answer:?}");
                match answer.status {
                    201 => assert_eq!(times, 1, "a POST answered 201 but not logged: {answer:?}"),
                    502 => {}
                    _ => panic!("a POST got neither 201 nor 502: {answer:?}"),
                }
            }
        }
        if answer.status < 300 {
            assert_eq!(answer.role, "primary", "answered by a replica: {answer:?}");
        }
    }
    for line in &writes {
        assert_eq!(
            line.role, "primary",
            "a write executed by a replica: {line:?}"
        );
    }
    let worst = switch_times.iter().max().copied().unwrap_or_default();
    println!(
        "{scheme} {}: {} requests ({gets} GET, {posts} POST), switch times {switch_times:?} ms, worst {worst} ms (goal: under 20 ms)",
        election.as_str(),
        answers.len()
    );
}

#[test]
fn failover_on_etcd_v2_as_classic_swarm_runs_it() {
    failover("etcd", Election::Key);
}

#[test]
fn failover_on_etcd_v3_leased_key() {
    failover("etcdv3", Election::Key);
}

#[test]
fn failover_on_etcd_v3_election_recipe() {
    failover("etcdv3", Election::Contenders);
}
