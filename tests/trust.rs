//! What the proxy trusts, tried as a user would (README.md, "Trust model"): a leader value
//! outside `--allow-leader` or naming the proxy itself is refused like garbage (logged,
//! counted, the last good leader kept), and a request that comes back through the proxy is
//! answered `508` at once, with the proxy's open files staying bounded. With
//! `--verify-leader` the manager the store names is asked who is primary (simulated classic
//! Swarm managers whose `/info` the test sets, so they can contradict the store).

use std::time::Duration;

use testkit::conformance::standalone;
use testkit::etcd::Etcd;
use testkit::etcd_proxy::{proxy_for, proxy_with_leader, KEY};
use testkit::http;
use testkit::manager_conformance::ManagerHarness;
use testkit::manual_managers::ClassicManagers;
use testkit::proxy::{signal, Proxy};
use testkit::redirect::{Front, Witness};
use testkit::server_process::free_ports;
use testkit::sim::{SimManager, SimOptions};

const WAIT: Duration = Duration::from_secs(20);

fn served_by(proxy: &Proxy) -> String {
    let response = http::get(proxy.addr(), "/info").expect("GET /info through the proxy");
    assert_eq!(response.status, 200, "{}", response.text());
    response.header("X-Served-By").unwrap_or("-").to_string()
}

#[test]
fn a_leader_outside_the_allow_list_is_refused_and_the_last_one_kept() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let (m1, m2) = (standalone("m1", dir.path()), standalone("m2", dir.path()));
    etcd.put_v2(KEY, &m1.advertise(), None);
    let allow = format!("{},10.99.0.0/16", m1.advertise());
    let proxy = proxy_for(&etcd, &["--allow-leader", &allow]);
    proxy.wait_for_leader(WAIT, |l| l["leader"] == m1.advertise().as_str());

    etcd.put_v2(KEY, &m2.advertise(), None);
    proxy.wait_for_metric(
        "leader_proxy_rejected_leader_values_total",
        1.0,
        WAIT,
        "m2 refused",
    );
    proxy.wait_for_log("is not allowed by --allow-leader", WAIT);
    assert_eq!(proxy.leader()["leader"], m1.advertise().as_str());
    assert_eq!(served_by(&proxy), "m1");

    // A CIDR entry takes every address the name resolves to: localhost is not in 10.99/16.
    etcd.put_v2(KEY, &format!("localhost:{}", m2.addr().port()), None);
    proxy.wait_for_metric(
        "leader_proxy_rejected_leader_values_total",
        2.0,
        WAIT,
        "localhost refused",
    );
    assert_eq!(served_by(&proxy), "m1");
}

#[test]
fn the_allow_list_comes_from_the_environment_too() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let (m1, m2) = (standalone("m1", dir.path()), standalone("m2", dir.path()));
    etcd.put_v2(KEY, &m1.advertise(), None);
    let url = format!("etcd://{}/p", etcd.endpoint());
    let proxy = Proxy::start_with_env(&[&url], &[("LEADER_PROXY_ALLOW_LEADER", "127.0.0.0/8")]);
    proxy.wait_for_leader(WAIT, |l| l["leader"] == m1.advertise().as_str());
    etcd.put_v2(KEY, &m2.advertise(), None);
    proxy.wait_for_leader(WAIT, |l| l["leader"] == m2.advertise().as_str());
    assert_eq!(served_by(&proxy), "m2");
}

#[test]
fn a_leader_that_is_the_proxy_itself_is_refused() {
    let (etcd, _dir, _m1, proxy) = proxy_with_leader(&[]);
    let files_before = proxy.open_files();
    etcd.put_v2(KEY, &proxy.addr().to_string(), None);
    proxy.wait_for_log("is this proxy's own listener", WAIT);
    assert!(proxy.metric("leader_proxy_rejected_leader_values_total") >= 1.0);
    for _ in 0..50 {
        assert_eq!(served_by(&proxy), "m1");
    }
    let files_after = proxy.open_files();
    assert!(
        files_after <= files_before + 10,
        "open files grew from {files_before} to {files_after}"
    );
}

/// Two proxies each naming the other as leader: the listener check cannot see it (the
/// leader is another process), the hop marker can.
#[test]
fn a_request_that_comes_back_through_the_proxy_is_answered_508() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let m1 = standalone("m1", dir.path());
    let key_b = "/b/docker/swarm/leader";
    etcd.put_v2(KEY, &m1.advertise(), None);
    let a = proxy_for(&etcd, &[]);
    etcd.put_v2(key_b, &a.addr().to_string(), None);
    let b = Proxy::start(&[&format!("etcd://{}/b", etcd.endpoint())]);
    b.wait_for_leader(WAIT, |l| l["leader"] == a.addr().to_string().as_str());
    assert_eq!(served_by(&b), "m1", "B -> A -> m1 is a chain, not a loop");

    etcd.put_v2(KEY, &b.addr().to_string(), None);
    a.wait_for_leader(WAIT, |l| l["leader"] == b.addr().to_string().as_str());
    let files_before = a.open_files();
    for _ in 0..20 {
        let response = http::get(a.addr(), "/info").expect("an answer");
        assert_eq!(response.status, 508, "{}", response.text());
        assert!(response.text().contains("came back through this proxy"));
    }
    a.wait_for_log("a request came back through this proxy", WAIT);
    let files_after = a.open_files();
    assert!(
        files_after <= files_before + 10,
        "open files grew from {files_before} to {files_after}"
    );
}

/// A proxy following etcd's key (`--verify-leader` on, the default) in front of three
/// classic Swarm managers whose `/info` the test sets: the store may say one thing, the
/// managers another.
fn verified(etcd: &Etcd, extra: &[&str]) -> Proxy {
    let mut args = vec!["--probe-interval", "100ms"];
    args.extend_from_slice(extra);
    proxy_for(etcd, &args)
}

#[test]
fn verify_routes_past_a_replica_to_the_primary_it_names() {
    let etcd = Etcd::start();
    let managers = ClassicManagers::start();
    let (m1, m2) = (managers.leader_addr(0), managers.leader_addr(1));
    managers.say(0, true, &m1);
    managers.say(1, false, &m1);
    // A stale key: the store still names m2, which knows m1 is primary.
    etcd.put_v2(KEY, &m2, None);
    let proxy = verified(&etcd, &[]);
    let leader = proxy.wait_for_leader(WAIT, |l| l["leader"] == m1.as_str());
    let shown = leader["disagreement"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(shown.contains(&m2) && shown.contains(&m1), "{leader}");
    assert_eq!(served_by(&proxy), "m1");
    assert_eq!(proxy.metric("leader_proxy_leader_disagreements_total"), 1.0);
    proxy.wait_for_log("the store and the managers disagree", WAIT);

    // Checked again every --probe-interval: once the store agrees, so does /leader.
    etcd.put_v2(KEY, &m1, None);
    proxy.wait_for_leader(WAIT, |l| l["disagreement"].is_null());
    assert_eq!(served_by(&proxy), "m1");
    assert_eq!(proxy.metric("leader_proxy_leader_disagreements_total"), 1.0);
}

#[test]
fn verify_holds_while_no_manager_confirms_a_primary() {
    let etcd = Etcd::start();
    let managers = ClassicManagers::start();
    let (m1, m2) = (managers.leader_addr(0), managers.leader_addr(1));
    // The store names m1, which says it is a replica of nobody.
    etcd.put_v2(KEY, &m1, None);
    let proxy = verified(&etcd, &["--hold-timeout", "1s"]);
    proxy.wait_for_metric("leader_proxy_leader_disagreements_total", 1.0, WAIT, "held");
    let leader = proxy.leader();
    assert_eq!(leader["state"], "no_leader", "{leader}");
    let response = http::get(proxy.addr(), "/info").expect("an answer");
    assert_eq!(
        response.status,
        503,
        "held, then refused: {}",
        response.text()
    );

    // m1 becomes primary: routed there, the disagreement over.
    managers.say(0, true, &m1);
    proxy.wait_for_leader(WAIT, |l| {
        l["leader"] == m1.as_str() && l["disagreement"].is_null()
    });
    assert_eq!(served_by(&proxy), "m1");

    // m1 still says primary but names m2, which says primary and names m1: two primaries.
    managers.say(0, true, &m2);
    managers.say(1, true, &m1);
    proxy.wait_for_leader(WAIT, |l| l["state"] == "no_leader");
    assert!(proxy.leader()["disagreement"]
        .as_str()
        .is_some_and(|d| d.contains("primary too")));
}

#[test]
fn verify_trusts_a_manager_that_cannot_say_and_can_be_turned_off() {
    let etcd = Etcd::start();
    let managers = ClassicManagers::start();
    let m1 = managers.leader_addr(0);
    // A plain dockerd's /info: no SystemStatus.
    managers.m.set(
        0,
        serde_json::json!({"info": "{\"ID\":\"plain\",\"Containers\":0}"}),
    );
    etcd.put_v2(KEY, &m1, None);
    let proxy = verified(&etcd, &[]);
    proxy.wait_for_leader(WAIT, |l| l["leader"] == m1.as_str());
    proxy.wait_for_log("trusting the store", WAIT);
    assert_eq!(served_by(&proxy), "m1");

    // m2 says replica; with --verify-leader off the store's word is all there is.
    let m2 = managers.leader_addr(1);
    managers.say(1, false, "");
    etcd.put_v2(KEY, &m2, None);
    let unverified = verified(&etcd, &["--verify-leader", "off"]);
    unverified.wait_for_leader(WAIT, |l| l["leader"] == m2.as_str());
    assert_eq!(served_by(&unverified), "m2");
}

/// A real election in etcd, and managers that contradict it (`sim-manager --info-says`):
/// the store names m1, which claims to be a replica of m2; m2, really a replica, claims to
/// be primary. The proxy follows the managers and says so.
#[test]
fn verify_follows_the_managers_when_they_contradict_a_real_election() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let discovery = format!("etcd://{}/p", etcd.endpoint());
    let log = dir.path().join("writes.log");
    let m2_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_ports(1)[0]).parse().unwrap();
    let m1 = SimManager::start(
        &SimOptions::new("m1", &discovery, &log).info_says(&format!("replica:{m2_addr}")),
    );
    let deadline = std::time::Instant::now() + WAIT;
    while !m1.log().contains("became primary") {
        assert!(
            std::time::Instant::now() < deadline,
            "m1 never won:\n{}",
            m1.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let m2 = SimManager::start(
        &SimOptions::new("m2", &discovery, &log)
            .listen(m2_addr)
            .info_says("primary"),
    );
    let proxy = verified(&etcd, &[]);
    let leader = proxy.wait_for_leader(WAIT, |l| l["leader"] == m2.advertise().as_str());
    let shown = leader["disagreement"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(shown.contains(&m1.advertise()), "{leader}");
    assert_eq!(served_by(&proxy), "m2");
}

/// The leader hangs (SIGSTOP: its port still accepts, nothing answers) while it is being
/// asked, and the store names another: the new leader is taken without waiting for the
/// question to the hung one to time out (here 32 s, past the test's wait).
#[test]
fn verify_does_not_wait_for_a_hung_leader_when_the_store_moves_on() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let (m1, m2) = (standalone("m1", dir.path()), standalone("m2", dir.path()));
    etcd.put_v2(KEY, &m1.advertise(), None);
    let proxy = verified(&etcd, &["--connect-timeout", "30s"]);
    proxy.wait_for_leader(WAIT, |l| l["leader"] == m1.advertise().as_str());
    signal(m1.pid().expect("m1 runs"), "STOP");
    // Setting the race up, not waiting for a result: the next re-check (every 100 ms)
    // is then stuck on the frozen m1.
    std::thread::sleep(Duration::from_millis(300));
    etcd.put_v2(KEY, &m2.advertise(), None);
    proxy.wait_for_leader(WAIT, |l| l["leader"] == m2.advertise().as_str());
    assert_eq!(served_by(&proxy), "m2");
    signal(m1.pid().expect("m1 runs"), "CONT");
}

/// A store answer that redirects (here real etcd behind a front the test switches to
/// `307 Temporary Redirect`) is not followed: the redirect's target is never contacted, the
/// store shows `degraded` saying why, and the last leader stays.
#[test]
fn a_store_redirect_is_not_followed_and_the_last_leader_kept() {
    let etcd = Etcd::start();
    let front = Front::start(etcd.endpoint().parse().expect("etcd's address"));
    let witness = Witness::start();
    let dir = tempfile::tempdir().unwrap();
    let m1 = standalone("m1", dir.path());
    etcd.put_v2(KEY, &m1.advertise(), None);
    let proxy = Proxy::start(&[&format!("etcd://{}/p", front.endpoint())]);
    proxy.wait_for_leader(WAIT, |l| l["leader"] == m1.advertise().as_str());

    front.redirect_to(witness.addr());
    proxy.wait_for_leader(WAIT, |l| {
        l["state"] == "degraded" && l["leader"] == m1.advertise().as_str()
    });
    proxy.wait_for_log_where("the redirect refused", WAIT, |log| {
        log.lines().any(|line| {
            line.contains("etcd answered HTTP 307 Temporary Redirect")
                && line.contains(&witness.addr().to_string())
                && line.contains("redirects from a store are not followed")
        })
    });
    assert_eq!(served_by(&proxy), "m1");
    assert_eq!(
        witness.connections(),
        0,
        "the redirect was followed: {:?}",
        witness.received()
    );
}
