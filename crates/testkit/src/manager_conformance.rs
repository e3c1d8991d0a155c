//! The manager-side conformance suite: the same behavioural tests for every source that asks
//! the managers themselves instead of a store (`swarm://`, `static://`).
//!
//! The store suite ([`crate::conformance`]) acts out an election in a store and lets
//! standalone managers serve; here the managers are the source, so a harness acts out the
//! election in what the managers answer (see [`crate::manual_managers`]), and the same
//! managers serve the proxied requests. The cases are the store suite's where they apply:
//! initial leader and change; no leader (held, then 503); every manager unreachable, then
//! back; garbage answers. The tests watch the proxy like a user would (`/leader`,
//! `/metrics`, `/readyz`, and who answers requests).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::http;
use crate::proxy::Proxy;

/// Three managers (m1, m2, m3) for one test, with the means to act out their election.
pub trait ManagerHarness {
    /// The DISCOVERY URL the proxy follows, plus any flags (`--probe-interval`).
    fn proxy_args(&self) -> Vec<String>;

    /// Manager `i`'s name: what it sends as `X-Served-By`.
    fn name(&self, i: usize) -> String;

    /// What `/leader` shows while manager `i` leads.
    fn leader_addr(&self, i: usize) -> String;

    /// The managers say manager `i` leads.
    fn elect(&mut self, i: usize);

    /// The managers say the election is open.
    fn vacate(&mut self);

    /// The kinds of garbage answer this protocol can give, one name each.
    fn garbage_cases(&self) -> Vec<&'static str>;

    /// Every manager answers the probe with garbage of kind `case`.
    fn answer_garbage(&mut self, case: &str);

    /// SIGKILLs every manager, then starts them again on the same addresses, saying what
    /// they said before.
    fn stop(&mut self);
    fn restart(&mut self);
}

const WAIT: Duration = Duration::from_secs(20);

pub fn start_proxy(managers: &dyn ManagerHarness, extra: &[&str]) -> Proxy {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend(managers.proxy_args());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Proxy::start(&refs)
}

pub fn served_by(proxy: &Proxy, path: &str) -> String {
    let response = http::get(proxy.addr(), path).expect("request through the proxy");
    assert_eq!(response.status, 200, "GET {path}: {}", response.text());
    response.header("X-Served-By").unwrap_or("-").to_string()
}

pub fn is_leader(addr: String) -> impl Fn(&serde_json::Value) -> bool {
    move |l| l["leader"] == addr.as_str() && l["state"] == "leader"
}

pub fn no_leader(l: &serde_json::Value) -> bool {
    l["state"] == "no_leader" && l["leader"].is_null()
}

/// Waits until the proxy holds at least `n` requests.
pub fn wait_until_held(proxy: &Proxy, n: f64) {
    proxy.wait_for_metric("leader_proxy_held_requests", n, WAIT, "request never held");
}

pub fn initial_leader_and_change(mut managers: impl ManagerHarness) {
    managers.elect(0);
    let proxy = start_proxy(&managers, &[]);
    let leader = proxy.wait_for_leader(WAIT, is_leader(managers.leader_addr(0)));
    let url = managers.proxy_args().pop().unwrap_or_default();
    let source = leader["source"].as_str().unwrap_or("-").to_string();
    assert!(
        url.starts_with(&format!("{source}://")),
        "{source} for {url}"
    );
    assert_eq!(served_by(&proxy, "/v1.41/info"), managers.name(0));

    managers.elect(1);
    let leader = proxy.wait_for_leader(WAIT, is_leader(managers.leader_addr(1)));
    assert_eq!(leader["changes"], 2);
    assert_eq!(served_by(&proxy, "/info"), managers.name(1));
    let log = proxy.log();
    for i in [0, 1] {
        let line = format!("New leader elected: {}", managers.leader_addr(i));
        assert!(log.contains(&line), "missing {line:?} in:\n{log}");
    }
    assert_eq!(proxy.metric("leader_proxy_leader_changes_total"), 2.0);
    let gauge = format!(
        "leader_proxy_leader{{address=\"{}\"}}",
        managers.leader_addr(1)
    );
    assert_eq!(proxy.metric(&gauge), 1.0);
}

pub fn no_leader_holds_then_serves(mut managers: impl ManagerHarness) {
    managers.elect(0);
    let proxy = start_proxy(&managers, &["--hold-timeout", "20s"]);
    proxy.wait_for_leader(WAIT, is_leader(managers.leader_addr(0)));
    managers.vacate();
    proxy.wait_for_leader(WAIT, no_leader);

    let elected = Arc::new(AtomicBool::new(false));
    let held = {
        let (addr, elected) = (proxy.addr(), elected.clone());
        std::thread::spawn(move || {
            let response = http::get(addr, "/info").expect("held request");
            (response, elected.load(Ordering::SeqCst))
        })
    };
    wait_until_held(&proxy, 1.0);
    elected.store(true, Ordering::SeqCst);
    managers.elect(0);
    let (response, after) = held.join().expect("client thread");
    assert!(after, "answered before there was a leader");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header("X-Served-By"),
        Some(managers.name(0).as_str())
    );

    // Past --hold-timeout: 503 with a message the docker CLI prints.
    let impatient = start_proxy(&managers, &["--hold-timeout", "300ms"]);
    impatient.wait_for_leader(WAIT, is_leader(managers.leader_addr(0)));
    managers.vacate();
    impatient.wait_for_leader(WAIT, no_leader);
    let response = http::get(impatient.addr(), "/info").expect("request");
    assert_eq!(response.status, 503);
    let message = response.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("no Swarm primary"), "{message}");
}

pub fn unreachable_managers_keep_the_leader(mut managers: impl ManagerHarness) {
    managers.elect(0);
    let proxy = start_proxy(&managers, &["--hold-timeout", "30s"]);
    proxy.wait_for_leader(WAIT, is_leader(managers.leader_addr(0)));

    managers.stop();
    let leader = proxy.wait_for_leader(WAIT, |l| l["state"] == "degraded");
    assert_eq!(leader["leader"], managers.leader_addr(0));
    assert!(proxy.metric("leader_proxy_store_errors_total") >= 1.0);
    assert_eq!(http::get_text(&proxy.admin_url("/readyz")).trim(), "ready");
    proxy.wait_for_log("keeping the last leader", WAIT);

    // A request sent while no manager answers waits for one, and is served when they are back.
    let held = {
        let addr = proxy.addr();
        std::thread::spawn(move || http::request(addr, "GET", "/info", &[], b"", WAIT * 2))
    };
    wait_until_held(&proxy, 1.0);
    managers.restart();
    let response = held
        .join()
        .expect("client thread")
        .expect("held request answered");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header("X-Served-By"),
        Some(managers.name(0).as_str())
    );
    proxy.wait_for_leader(WAIT, is_leader(managers.leader_addr(0)));
    assert_eq!(proxy.leader()["changes"], 1);

    managers.elect(1);
    proxy.wait_for_leader(WAIT, is_leader(managers.leader_addr(1)));
    assert_eq!(served_by(&proxy, "/info"), managers.name(1));
}

pub fn garbage_is_ignored_and_counted(mut managers: impl ManagerHarness) {
    managers.elect(0);
    let proxy = start_proxy(&managers, &[]);
    proxy.wait_for_leader(WAIT, is_leader(managers.leader_addr(0)));

    let cases = managers.garbage_cases();
    for (i, case) in cases.iter().enumerate() {
        managers.answer_garbage(case);
        proxy.wait_for_metric(
            "leader_proxy_rejected_leader_values_total",
            (i + 1) as f64,
            WAIT,
            &format!("{case:?} not rejected"),
        );
    }
    // Answered again at every poll, each is still counted once.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        proxy.metric("leader_proxy_rejected_leader_values_total"),
        cases.len() as f64
    );
    let leader = proxy.leader();
    assert_eq!(leader["leader"], managers.leader_addr(0));
    assert_eq!(leader["state"], "leader");
    assert_eq!(served_by(&proxy, "/v1.41/version"), managers.name(0));
    assert!(proxy.log().contains("ignoring invalid leader value"));

    managers.elect(1);
    proxy.wait_for_leader(WAIT, is_leader(managers.leader_addr(1)));
    assert_eq!(served_by(&proxy, "/info"), managers.name(1));
}
