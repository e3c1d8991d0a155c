//! `static://`: classic Swarm managers probed directly (`GET /info`, `SystemStatus` Role and
//! Primary), against simulated managers whose roles the tests set by hand. The cases every
//! manager-asking source shares are in tests/manager_conformance.rs; these are the ones
//! particular to classic Swarm: roles changing under traffic, and two managers claiming to be
//! primary at once (classic Swarm issue 1413).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::http;
use testkit::manager_conformance::{is_leader, served_by, start_proxy, ManagerHarness};
use testkit::manual_managers::ClassicManagers;

const WAIT: Duration = Duration::from_secs(20);

/// One answer the client got: when its request was sent, and from whom.
#[derive(Debug, Clone)]
struct Answer {
    sent: Instant,
    status: u16,
    served_by: String,
    error: String,
}

/// The primary moves m1 → m2 → m3 → m1 → m2 while a client sends `GET /info` every 20 ms:
/// no request fails, and every request sent once the proxy names the new primary is
/// answered by it.
#[test]
fn roles_change_under_traffic() {
    let mut managers = ClassicManagers::start();
    managers.elect(0);
    let proxy = start_proxy(&managers, &[]);
    proxy.wait_for_leader(WAIT, is_leader(managers.leader_addr(0)));

    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let client = {
        let (stop, answers, addr) = (stop.clone(), answers.clone(), proxy.addr());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                let answer = match http::request(addr, "GET", "/info", &[], b"", WAIT) {
                    Ok(r) => Answer {
                        sent,
                        status: r.status,
                        served_by: r.header("X-Served-By").unwrap_or("-").to_string(),
                        error: if r.status == 200 {
                            String::new()
                        } else {
                            r.text()
                        },
                    },
                    Err(e) => Answer {
                        sent,
                        status: 0,
                        served_by: "-".into(),
                        error: e.to_string(),
                    },
                };
                answers.lock().expect("answers").push(answer);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // (the primary, when it was asked for, when the proxy was first seen to name it)
    let started = Instant::now();
    let mut known: Vec<(usize, Instant, Instant)> = vec![(0, started, started)];
    for next in [1, 2, 0, 1] {
        std::thread::sleep(Duration::from_millis(300));
        let changed = Instant::now();
        managers.elect(next);
        proxy.wait_for_leader(WAIT, is_leader(managers.leader_addr(next)));
        let seen = Instant::now();
        println!(
            "static: {} named by the proxy {} ms after the roles changed",
            managers.name(next),
            (seen - changed).as_millis()
        );
        known.push((next, changed, seen));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    client.join().expect("client thread");

    let answers = answers.lock().expect("answers");
    assert!(answers.len() > 50, "too little traffic: {}", answers.len());
    let mut checked = 0;
    for answer in answers.iter() {
        assert_eq!(
            answer.status, 200,
            "a request failed ({}): {answer:?}",
            answer.error
        );
        // Sent after the proxy named primary k and before the next change began: served by
        // k. (Between a change and the proxy's next probe the old primary still answers,
        // as a classic Swarm replica forwards to the primary.)
        let Some(k) = known.iter().rposition(|(_, _, seen)| answer.sent >= *seen) else {
            continue;
        };
        if known
            .get(k + 1)
            .is_some_and(|(_, changed, _)| answer.sent >= *changed)
        {
            continue;
        }
        checked += 1;
        let primary = managers.name(known[k].0);
        assert_eq!(
            answer.served_by, primary,
            "sent after the proxy named {primary}: {answer:?}"
        );
    }
    assert!(checked > 40, "only {checked} answers checked");
    assert_eq!(proxy.leader()["changes"], 5);
}

/// Two managers say `primary` at once: the proxy follows the one the other managers name
/// as Primary, logs the disagreement, and keeps its choice on a tie.
#[test]
fn two_primaries_the_one_the_others_name_wins() {
    let mut managers = ClassicManagers::start();
    let (m1, m2) = (managers.leader_addr(0), managers.leader_addr(1));
    managers.elect(0);
    let proxy = start_proxy(&managers, &[]);
    proxy.wait_for_leader(WAIT, is_leader(m1.clone()));

    // m2 won the lock; m1 has not noticed yet and still says primary; m3 follows m2.
    managers.say(1, true, &m2);
    managers.say(2, false, &m2);
    proxy.wait_for_leader(WAIT, is_leader(m2.clone()));
    assert_eq!(served_by(&proxy, "/info"), "m2");
    proxy.wait_for_log_where("the two primaries named, following m2", WAIT, |log| {
        log.contains(
            "several classic Swarm managers claim to be primary (classic Swarm issue 1413)",
        ) && log.contains(&format!("following {m2}"))
    });

    // A tie (m3 names nobody): the proxy keeps the one it follows.
    managers.say(2, false, "");
    std::thread::sleep(Duration::from_millis(500));
    assert!(is_leader(m2.clone())(&proxy.leader()), "{}", proxy.leader());

    // m3 now names m1: m1 wins again.
    managers.say(2, false, &m1);
    proxy.wait_for_leader(WAIT, is_leader(m1.clone()));
    assert_eq!(served_by(&proxy, "/info"), "m1");

    // Each disagreement is logged once, not at every probe.
    std::thread::sleep(Duration::from_millis(300));
    let logged = |proxy: &testkit::proxy::Proxy| {
        proxy
            .log()
            .matches("claim to be primary (classic Swarm issue 1413)")
            .count()
    };
    let before = logged(&proxy);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(logged(&proxy), before, "{}", proxy.log());

    // m2 steps down: one primary again.
    managers.say(1, false, &m1);
    std::thread::sleep(Duration::from_millis(300));
    assert!(is_leader(m1.clone())(&proxy.leader()));
    assert_eq!(served_by(&proxy, "/info"), "m1");
    assert_eq!(proxy.leader()["changes"], 3);
}
