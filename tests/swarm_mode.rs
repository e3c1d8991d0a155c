//! `swarm://`: Docker swarm mode, the managers asked `GET /nodes`.
//!
//! Against simulated managers (`sim-manager --discovery manual`, answering `GET /nodes` as
//! the test sets it): what is particular to swarm mode beyond the manager-side conformance
//! suite (tests/manager_conformance.rs). Against a real swarm of three dockerd
//! (`real_swarm_…`, the recipe of docs/testing.md#swarm-mode on 127.0.0.21-23; one at a
//! time, nextest group `swarm`): the leader's dockerd SIGKILLed and restarted, twice,
//! under traffic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::dockerd::{docker, run, Output, DOCKER};
use testkit::http;
use testkit::manager_conformance::{is_leader, served_by, start_proxy, ManagerHarness};
use testkit::manual_managers::SwarmManagers;
use testkit::proxy::Proxy;
use testkit::swarm::{gwbridge_exists, leftovers, Swarm, API_PORT, HOSTS};

const WAIT: Duration = Duration::from_secs(20);

/// Manager `i`'s Docker API as `/leader` shows it.
fn api(i: usize) -> String {
    format!("{}:{API_PORT}", HOSTS[i])
}

/// Managers that stop answering, or cannot answer (not a swarm manager), are skipped: the
/// leader is learnt from the next one, and the proxy never reports an outage.
#[test]
fn managers_that_stop_answering_are_skipped() {
    let mut swarm = SwarmManagers::start();
    swarm.elect(0);
    let proxy = start_proxy(&swarm, &[]);
    proxy.wait_for_leader(WAIT, is_leader(swarm.leader_addr(0)));

    // m1, asked first so far, dies; m2 and m3 elect m2.
    swarm.m.managers[0].kill();
    let nodes = swarm.nodes(Some(1));
    for j in [1, 2] {
        swarm.answer_nodes(j, 200, &nodes);
    }
    proxy.wait_for_leader(WAIT, is_leader(swarm.leader_addr(1)));
    assert_eq!(served_by(&proxy, "/info"), "m2");

    // m1 comes back outside the swarm (503 "not a swarm manager"), m2 dies, m3 leads.
    swarm.m.managers[0].restart();
    swarm.m.set(0, serde_json::json!({"nodes": null}));
    swarm.m.managers[1].kill();
    swarm.answer_nodes(2, 200, &swarm.nodes(Some(2)));
    proxy.wait_for_leader(WAIT, is_leader(swarm.leader_addr(2)));
    assert_eq!(served_by(&proxy, "/info"), "m3");
    assert_eq!(proxy.metric("leader_proxy_store_errors_total"), 0.0);
    assert_eq!(
        proxy.metric("leader_proxy_rejected_leader_values_total"),
        0.0
    );
}

/// A manager that says "no leader" while another names one (a restarted manager catching
/// up) does not open the election; all of them saying it does.
#[test]
fn no_leader_from_one_manager_is_not_believed_alone() {
    let mut swarm = SwarmManagers::start();
    swarm.elect(1);
    let proxy = start_proxy(&swarm, &[]);
    proxy.wait_for_leader(WAIT, is_leader(swarm.leader_addr(1)));
    // m1, the manager asked first (it named the leader), now says there is none.
    let no_leader = SwarmManagers::no_leader_body();
    swarm.answer_nodes(0, 503, &no_leader);
    std::thread::sleep(Duration::from_millis(500));
    let leader = proxy.leader();
    assert!(is_leader(swarm.leader_addr(1))(&leader), "{leader}");
    assert_eq!(proxy.leader()["changes"], 1);

    for j in [1, 2] {
        swarm.answer_nodes(j, 503, &no_leader);
    }
    proxy.wait_for_leader(WAIT, |l| l["state"] == "no_leader");
}

/// The leader answers 503 "The swarm does not have a leader" (an election the proxy has not
/// seen yet): a GET is held and sent again until the leader answers, then served; a POST
/// gets the 503 at once; a GET held past --hold-timeout gets a 503 that says why.
#[test]
fn no_leader_503_is_retried_for_idempotent_requests() {
    let mut swarm = SwarmManagers::start();
    swarm.elect(0);
    // One probe at start and none for an hour: the proxy keeps naming m1 while m1 answers
    // 503, so requests meet the 503 itself instead of waiting for a new leader.
    let args = |hold: &'static str| {
        ["--probe-interval", "1h", "--hold-timeout", hold]
            .iter()
            .map(|s| s.to_string())
            .chain([swarm.url()])
            .collect::<Vec<String>>()
    };
    let start = |hold| {
        let args = args(hold);
        Proxy::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let proxy = start("20s");
    let impatient = start("500ms");
    for p in [&proxy, &impatient] {
        p.wait_for_leader(WAIT, is_leader(swarm.leader_addr(0)));
    }
    swarm.answer_nodes(0, 503, &SwarmManagers::no_leader_body());

    let post = http::request(
        proxy.addr(),
        "POST",
        "/v1.41/nodes/m1/update?version=1",
        &[],
        b"{}",
        WAIT,
    )
    .expect("POST through the proxy");
    assert_eq!(post.status, 503, "{}", post.text());
    assert!(
        post.text().contains("does not have a leader"),
        "{}",
        post.text()
    );

    let timed_out = http::get(impatient.addr(), "/v1.41/nodes").expect("GET");
    assert_eq!(timed_out.status, 503, "{}", timed_out.text());
    let message = timed_out.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("the swarm has no leader"), "{message}");

    let held = {
        let addr = proxy.addr();
        std::thread::spawn(move || http::request(addr, "GET", "/v1.41/nodes", &[], b"", WAIT))
    };
    let retried = "leader_proxy_retries_total{reason=\"no_leader\"}";
    proxy.wait_for_metric(retried, 3.0, WAIT, "never retried");
    assert!(!held.is_finished(), "answered while the leader said 503");
    // The election ends with m1 leading again.
    swarm.elect(0);
    let response = held.join().expect("client thread").expect("held GET");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("X-Served-By"), Some("m1"));
    assert!(
        response.text().contains("\"Leader\":true"),
        "{}",
        response.text()
    );
}

/// One answer the client got through the proxy.
#[derive(Debug, Clone)]
struct Answer {
    path: &'static str,
    sent: Instant,
    received: Instant,
    /// 0: no HTTP answer.
    status: u16,
    /// `GET /info`: `Swarm.NodeID`, the node that served it.
    node_id: String,
    error: String,
}

/// Asks `GET /nodes` (only the leader can answer it, followers forward it) and `GET /info`
/// (`Swarm.NodeID`: who served it) through the proxy every 20 ms until `stop`.
fn client(proxy: std::net::SocketAddr, stop: Arc<AtomicBool>, answers: Arc<Mutex<Vec<Answer>>>) {
    while !stop.load(Ordering::SeqCst) {
        for path in ["/v1.41/nodes", "/v1.41/info"] {
            let sent = Instant::now();
            let result = http::request(proxy, "GET", path, &[], b"", Duration::from_secs(60));
            let received = Instant::now();
            let answer = match result {
                Ok(r) => Answer {
                    path,
                    sent,
                    received,
                    status: r.status,
                    node_id: r.json()["Swarm"]["NodeID"]
                        .as_str()
                        .unwrap_or("-")
                        .to_string(),
                    error: if r.status == 200 {
                        String::new()
                    } else {
                        r.text()
                    },
                },
                Err(e) => Answer {
                    path,
                    sent,
                    received,
                    status: 0,
                    node_id: "-".into(),
                    error: e.to_string(),
                },
            };
            answers.lock().expect("answers").push(answer);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The client saw the head of an answer and lost its body: the proxy had started to relay it.
fn cut_answer(answer: &Answer) -> bool {
    answer.status == 0 && ["bad chunked body", "truncated body"].contains(&answer.error.as_str())
}

/// The proxy's access-log lines for answers to `path` from manager `killed` that started
/// (status 200) and then failed.
fn cut_lines(log: &str, path: &str, killed: usize) -> usize {
    let upstream = format!("upstream={}", api(killed));
    log.lines()
        .filter(|l| l.contains(&format!("path={path} status=200 ")))
        .filter(|l| l.contains(&upstream) && !l.ends_with("error=-"))
        .count()
}

/// The proxy's log without the access lines of requests that went well (a CI log keeps
/// only so much).
fn error_lines(log: &str) -> String {
    log.lines()
        .filter(|l| !(l.contains(" access: ") && l.ends_with("error=-")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One kill: who was killed, who took over, and when things happened.
#[derive(Debug)]
struct Round {
    killed: usize,
    leader: usize,
    killed_at: Instant,
    /// When the SIGKILLed dockerd had exited (its sockets closed).
    kill_done: Instant,
    /// When a surviving manager first named the new leader (asked directly: a follower
    /// answers `GET /nodes` the moment the election ends).
    elected_at: Instant,
    /// When the proxy's `/leader` first named it.
    known_at: Instant,
}

/// When a surviving manager first names a leader other than `killed`, asked directly.
fn election_end(swarm: &Swarm, killed: usize, deadline: Instant) -> Option<(usize, Instant)> {
    std::thread::scope(|s| {
        let found: Arc<Mutex<Option<(usize, Instant)>>> = Arc::default();
        for asked in (0..3).filter(|&i| i != killed) {
            let found = found.clone();
            s.spawn(move || {
                while Instant::now() < deadline && found.lock().is_ok_and(|f| f.is_none()) {
                    match swarm.leader_by(asked, Duration::from_secs(30)) {
                        Some(leader) if leader != killed => {
                            let now = Instant::now();
                            if let Ok(mut f) = found.lock() {
                                if f.is_none_or(|(_, at)| now < at) {
                                    *f = Some((leader, now));
                                }
                            }
                            return;
                        }
                        _ => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
        }
        // The scope joins the askers before returning.
        found
    })
    .lock()
    .ok()
    .and_then(|f| *f)
}

/// The failover test (docs/testing.md#failover-tests) on a real swarm: three dockerd
/// managers, a client asking through the proxy every 20 ms, the leader's dockerd SIGKILLed
/// and restarted, twice (restarted and back as a reachable manager before the next kill, or
/// the quorum is lost). No request fails, but for an answer the killed dockerd was sending at
/// the kill (a `GET /nodes` is chunked, written in several pieces: the proxy has relayed the
/// head and cannot take it back, docs/failover.md#what-clients-see), and every request sent
/// once the proxy names the new leader is served by it.
#[test]
fn real_swarm_leader_killed_twice() {
    let started = Instant::now();
    let gwbridge_before = gwbridge_exists();
    let mut swarm = Swarm::start();
    let dir = swarm.dir();
    println!(
        "swarm: three managers up in {} ms",
        started.elapsed().as_millis()
    );
    let first = swarm.wait_for_leader(WAIT);
    let proxy = Proxy::start(&[&swarm.url()]);
    proxy.wait_for_leader(WAIT, is_leader(api(first)));

    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let traffic = {
        let (stop, answers, addr) = (stop.clone(), answers.clone(), proxy.addr());
        std::thread::spawn(move || client(addr, stop, answers))
    };

    let mut rounds: Vec<Round> = Vec::new();
    let mut leader = first;
    for round in 1..=2 {
        std::thread::sleep(Duration::from_secs(1));
        let killed = swarm.wait_for_leader(WAIT);
        assert_eq!(killed, leader, "round {round}: the leader moved by itself");
        let killed_at = Instant::now();
        swarm.kill(killed);
        let kill_done = Instant::now();
        let deadline = killed_at + Duration::from_secs(60);
        let (elected, elected_at) = election_end(&swarm, killed, deadline).unwrap_or_else(|| {
            panic!("round {round}: no new leader within 60 s\n{}", swarm.logs())
        });
        let seen = proxy.wait_for_leader(Duration::from_secs(60), |l| {
            l["state"] == "leader" && l["leader"] != api(killed).as_str()
        });
        let known_at = Instant::now();
        assert_eq!(seen["leader"], api(elected), "round {round}");
        println!(
            "swarm: round {round}: m{} killed; m{} elected {} ms later; the proxy named it {} ms \
             after the election",
            killed + 1,
            elected + 1,
            (elected_at - killed_at).as_millis(),
            known_at.saturating_duration_since(elected_at).as_millis()
        );
        rounds.push(Round {
            killed,
            leader: elected,
            killed_at,
            kill_done,
            elected_at,
            known_at,
        });
        leader = elected;
        // Back before the next kill, or two kills lose the quorum.
        swarm.restart(killed);
        swarm.wait_healthy(Duration::from_secs(60));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    traffic.join().expect("client thread");

    let answers = answers.lock().expect("answers").clone();
    let count = |path: &str| answers.iter().filter(|a| a.path == path).count();
    assert!(
        count("/v1.41/nodes") > 50 && count("/v1.41/info") > 50,
        "too little traffic: {} requests",
        answers.len()
    );
    // docs/failover.md#what-clients-see: an answer the killed leader had started to send
    // is cut, nothing can resend it. That is the one failure allowed, and only for an
    // answer in flight at a kill whose cut the proxy logged against the killed manager.
    let proxy_log = proxy.log();
    let mut cut = 0;
    for answer in answers.iter().filter(|a| a.status != 200) {
        let at_a_kill = rounds.iter().find(|r| {
            answer.sent <= r.kill_done && answer.received >= r.killed_at && cut_answer(answer)
        });
        let logged = at_a_kill.map_or(0, |r| cut_lines(&proxy_log, answer.path, r.killed));
        assert!(
            logged > 0,
            "a request failed ({}): {answer:?}\nrounds: {rounds:?}\nproxy log, the lines with an \
             error:\n{}",
            answer.error,
            error_lines(&proxy_log)
        );
        cut += 1;
    }
    assert!(
        cut <= rounds.len(),
        "{cut} answers cut by {} kills",
        rounds.len()
    );
    // Who must have served each GET /info: the leader the proxy named last when it was sent,
    // unless the answer came after the next kill (it may then have been sent again, to the
    // next leader).
    let named: Vec<(usize, Instant)> = std::iter::once((first, started))
        .chain(rounds.iter().map(|r| (r.leader, r.known_at)))
        .collect();
    let mut checked = 0;
    for answer in answers.iter().filter(|a| a.path == "/v1.41/info") {
        let Some(k) = named.iter().rposition(|(_, at)| answer.sent >= *at) else {
            continue;
        };
        if rounds
            .get(k)
            .is_some_and(|r| answer.received >= r.killed_at)
        {
            continue;
        }
        checked += 1;
        let want = named[k].0;
        assert_eq!(
            answer.node_id,
            swarm.node_id(want),
            "sent after the proxy named m{}, served by {:?}: {answer:?}",
            want + 1,
            swarm
                .index_of(&answer.node_id)
                .map(|i| format!("m{}", i + 1))
        );
    }
    assert!(checked > 50, "only {checked} answers checked");

    let mut switches = Vec::new();
    for (n, round) in rounds.iter().enumerate() {
        let first_served = answers
            .iter()
            .filter(|a| a.path == "/v1.41/info" && a.received >= round.killed_at)
            .find(|a| a.node_id == swarm.node_id(round.leader))
            .map(|a| a.received)
            .unwrap_or_else(|| panic!("round {}: the new leader served nothing", n + 1));
        let switch = first_served.saturating_duration_since(round.elected_at);
        let held = answers
            .iter()
            .filter(|a| a.sent >= round.killed_at && a.sent < round.known_at)
            .map(|a| a.received - a.sent)
            .max()
            .unwrap_or_default();
        println!(
            "swarm: round {}: m{} killed, m{} serving; switch time (election to first request \
             served) {} ms; kill to first request served {} ms; longest held request {} ms",
            n + 1,
            round.killed + 1,
            round.leader + 1,
            switch.as_millis(),
            (first_served - round.killed_at).as_millis(),
            held.as_millis()
        );
        switches.push(switch.as_millis());
    }
    // A just-elected manager may answer 503 "no leader" while it settles; the proxy holds
    // and resends those requests (a sum over no series is -0.0: hence the integer).
    let resent = proxy.metric("leader_proxy_retries_total{reason=\"no_leader\"}") as u64;
    println!(
        "swarm: {} requests, none failed but {cut} cut by a kill; switch times {switches:?} ms; \
         {resent} resends after a manager's 503 \"no leader\"",
        answers.len()
    );

    drop(proxy);
    drop(swarm);
    let mut left = leftovers(&dir);
    if gwbridge_exists() && !gwbridge_before {
        left.push("the docker_gwbridge interface".into());
    }
    assert!(
        left.is_empty(),
        "the swarm left behind:\n{}",
        left.join("\n")
    );
}

/// `--owner-label` in swarm mode (docs/policy.md, "Ownership"): two CI jobs, each behind its
/// own proxy with its own label, create a service each on a real swarm. Each sees only its
/// own services and tasks (`docker service ls`, `docker service ps`, `GET /tasks`), another
/// job's task looks like a missing one in dockerd's own words, and `docker system df` (every
/// owner's containers and volumes) is refused. The tasks never run (no image on the
/// managers): they exist, which is what ownership is about.
#[test]
fn real_swarm_owner_labels_keep_services_and_tasks_apart() {
    let swarm = Swarm::start();
    let leader = swarm.wait_for_leader(WAIT);
    let jobs: Vec<(Proxy, tempfile::TempDir)> = ["ci=a", "ci=b"]
        .into_iter()
        .map(|label| {
            let proxy = Proxy::start(&[&swarm.url(), "--owner-label", label]);
            proxy.wait_for_leader(WAIT, is_leader(api(leader)));
            (proxy, tempfile::tempdir().expect("temp dir"))
        })
        .collect();
    let cli = |job: usize, args: &[&str]| -> Output {
        let (proxy, config) = &jobs[job];
        let host = format!("tcp://{}", proxy.addr());
        run(
            docker(DOCKER.path(), &host, config.path()).args(args),
            None,
            WAIT,
        )
    };
    let direct = |path: &str| {
        http::get(swarm.api(leader), path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    };
    for (job, name) in [(0, "svc-a"), (1, "svc-b")] {
        let out = cli(
            job,
            &[
                "service",
                "create",
                "--detach",
                "--no-resolve-image",
                "--name",
                name,
                "bb:local",
                "sleep",
                "600",
            ],
        );
        assert!(out.ok(), "{out}\nproxy log:\n{}", jobs[job].0.log());
    }
    let id = |name: &str| {
        let service = direct(&format!("/v1.41/services/{name}")).json();
        service["ID"].as_str().unwrap_or_default().to_string()
    };
    let (a, b) = (id("svc-a"), id("svc-b"));
    // Both services have a task (the orchestrator makes them within a second or so).
    let deadline = Instant::now() + WAIT;
    let b_task = loop {
        let tasks = direct("/v1.41/tasks").json();
        let of = |service: &str| {
            tasks
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["ServiceID"] == service)
                .map(|t| t["ID"].as_str().unwrap_or_default().to_string())
        };
        if let (Some(_), Some(b_task)) = (of(&a), of(&b)) {
            break b_task;
        }
        assert!(Instant::now() < deadline, "no tasks: {tasks}");
        std::thread::sleep(Duration::from_millis(100));
    };

    let listed = cli(0, &["service", "ls", "--format", "{{.Name}}"]);
    assert_eq!(listed.stdout_text().trim(), "svc-a", "{listed}");
    let ps = cli(0, &["service", "ps", "--format", "{{.Name}}", "svc-a"]);
    assert!(ps.ok() && ps.stdout_text().contains("svc-a.1"), "{ps}");
    let ps = cli(0, &["service", "ps", "svc-b"]);
    assert!(!ps.ok(), "another job's service was listed: {ps}");
    assert!(ps.stderr_text().contains("no such service: svc-b"), "{ps}");
    let tasks = http::get(jobs[0].0.addr(), "/v1.41/tasks").expect("GET /tasks");
    let services: Vec<String> = tasks
        .json()
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| t["ServiceID"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        !services.is_empty() && services.iter().all(|s| *s == a),
        "GET /tasks through job a: {services:?} (a is {a})"
    );

    // Another's task answers what dockerd answers for a task that does not exist.
    let missing = direct("/v1.41/tasks/nosuchtask");
    assert_eq!(missing.status, 404, "{}", missing.text());
    let wording = missing.json()["message"]
        .as_str()
        .unwrap_or_default()
        .replace("nosuchtask", &b_task);
    for path in [
        format!("/v1.41/tasks/{b_task}"),
        format!("/v1.41/tasks/{b_task}/logs?stdout=1"),
    ] {
        let answer = http::get(jobs[0].0.addr(), &path).expect("GET");
        assert_eq!(answer.status, 404, "{path}: {}", answer.text());
        assert_eq!(answer.json()["message"], wording.as_str(), "{path}");
    }
    let own = http::get(jobs[1].0.addr(), &format!("/v1.41/tasks/{b_task}")).expect("GET");
    assert_eq!(own.status, 200, "{}", own.text());

    // An update sends a whole new spec: it keeps the label and may not mount b's volume.
    let out = cli(1, &["volume", "create", "vb"]);
    assert!(out.ok(), "{out}");
    let update = cli(
        0,
        &[
            "service",
            "update",
            "--detach",
            "--mount-add",
            "type=volume,src=vb,dst=/d",
            "svc-a",
        ],
    );
    assert!(!update.ok(), "b's volume mounted: {update}");
    assert!(
        update
            .stderr_text()
            .contains("volume vb is another owner's"),
        "{update}"
    );
    let update = cli(
        0,
        &[
            "service",
            "update",
            "--detach",
            "--label-add",
            "x=y",
            "svc-a",
        ],
    );
    assert!(update.ok(), "{update}");
    let listed = cli(0, &["service", "ls", "--format", "{{.Name}}"]);
    assert_eq!(listed.stdout_text().trim(), "svc-a", "{listed}");
    let update = cli(
        0,
        &[
            "service",
            "update",
            "--detach",
            "--label-add",
            "x=y",
            "svc-b",
        ],
    );
    assert!(
        !update.ok() && update.stderr_text().contains("svc-b not found"),
        "{update}"
    );

    let df = cli(0, &["system", "df"]);
    assert!(!df.ok(), "system df was served: {df}");
    assert!(
        df.stderr_text().contains("every owner's containers"),
        "{df}"
    );
}
