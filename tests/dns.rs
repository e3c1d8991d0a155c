//! The leader's name is looked up off the router's event path (docs/architecture.md, "The
//! path of a leader value"): the real proxy, with a resolver that never answers
//! ([`SilentDns`], for the proxy process only), follows real etcd. A name that does not
//! resolve in time is refused like garbage, and a newer store event is applied at once
//! while the lookup still runs, its late answer changing nothing.

use std::time::Duration;

use testkit::conformance::standalone;
use testkit::etcd::Etcd;
use testkit::etcd_proxy::KEY;
use testkit::http;
use testkit::proxy::Proxy;
use testkit::silent_dns::SilentDns;

const WAIT: Duration = Duration::from_secs(20);

/// A name in no `/etc/hosts`: only the (silent) DNS server could answer it.
const SLOW_NAME: &str = "slow-manager.test:2375";

/// The proxy following etcd's key with `SilentDns`. `--verify-leader off`: the router's
/// lookup is what is tried here, not the question to the manager before it.
fn proxy_with_silent_dns(etcd: &Etcd, dns: &SilentDns) -> Proxy {
    let url = format!("etcd://{}/p", etcd.endpoint());
    Proxy::start_with_silent_dns(dns, &["--verify-leader", "off", &url])
}

fn served_by(proxy: &Proxy) -> String {
    let response = http::get(proxy.addr(), "/info").expect("GET /info through the proxy");
    assert_eq!(response.status, 200, "{}", response.text());
    response.header("X-Served-By").unwrap_or("-").to_string()
}

#[test]
fn a_name_that_does_not_resolve_in_time_is_refused_and_the_last_leader_kept() {
    let etcd = Etcd::start();
    let dns = SilentDns::start();
    let dir = tempfile::tempdir().unwrap();
    let m1 = standalone("m1", dir.path());
    etcd.put_v2(KEY, &m1.advertise(), None);
    let proxy = proxy_with_silent_dns(&etcd, &dns);
    proxy.wait_for_leader(WAIT, |l| l["leader"] == m1.advertise().as_str());

    etcd.put_v2(KEY, SLOW_NAME, None);
    proxy.wait_for_metric(
        "leader_proxy_rejected_leader_values_total",
        1.0,
        WAIT,
        "the silent name refused",
    );
    proxy.wait_for_log(
        "cannot resolve slow-manager.test:2375: no answer in 2s",
        WAIT,
    );
    let leader = proxy.leader();
    assert_eq!(leader["leader"], m1.advertise().as_str(), "{leader}");
    assert_eq!(leader["state"], "leader", "{leader}");
    assert_eq!(served_by(&proxy), "m1");
}

#[test]
fn a_newer_leader_is_taken_while_a_slow_lookup_runs_and_its_answer_changes_nothing() {
    let etcd = Etcd::start();
    let dns = SilentDns::start();
    let dir = tempfile::tempdir().unwrap();
    let (m1, m2) = (standalone("m1", dir.path()), standalone("m2", dir.path()));
    etcd.put_v2(KEY, &m1.advertise(), None);
    let proxy = proxy_with_silent_dns(&etcd, &dns);
    proxy.wait_for_leader(WAIT, |l| l["leader"] == m1.advertise().as_str());

    etcd.put_v2(KEY, SLOW_NAME, None);
    proxy.wait_for_log("looking up the leader's name slow-manager.test:2375", WAIT);
    etcd.put_v2(KEY, &m2.advertise(), None);
    proxy.wait_for_leader(WAIT, |l| l["leader"] == m2.advertise().as_str());
    let log = proxy.log();
    assert!(
        !log.contains("no answer in"),
        "m2 was taken only after the slow lookup had timed out:\n{log}"
    );
    assert_eq!(served_by(&proxy), "m2");

    // The lookup ends by its timeout after m2 was adopted: logged as superseded, nothing
    // refused, nothing replaced.
    proxy.wait_for_log_where("the timed-out lookup, superseded", WAIT, |log| {
        log.lines()
            .any(|line| line.contains("superseded this lookup") && line.contains("no answer in 2s"))
    });
    let leader = proxy.leader();
    assert_eq!(leader["leader"], m2.advertise().as_str(), "{leader}");
    assert_eq!(leader["state"], "leader", "{leader}");
    assert_eq!(
        proxy.metric("leader_proxy_rejected_leader_values_total"),
        0.0
    );
    assert_eq!(served_by(&proxy), "m2");
}
