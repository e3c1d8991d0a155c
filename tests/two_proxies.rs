//! More than one proxy (README.md, "More than one proxy"): proxies following the same store
//! need no coordination; each sees the election on its own and switches on a failover.

use std::time::Duration;

use testkit::etcd::Etcd;
use testkit::etcd_proxy::proxy_for;
use testkit::http;
use testkit::proxy::Proxy;
use testkit::sim::{wait_for_single_primary, SimManager, SimOptions};

const WAIT: Duration = Duration::from_secs(30);

fn served_by(proxy: &Proxy) -> String {
    let response = http::get(proxy.addr(), "/info").expect("request through the proxy");
    assert_eq!(response.status, 200, "{}", response.text());
    response.header("X-Served-By").unwrap_or("-").to_string()
}

#[test]
fn two_proxies_on_one_store_both_follow_a_failover() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let discovery = format!("etcd://{}/p", etcd.endpoint());
    let log = dir.path().join("writes.log");
    // Three managers running for election in etcd as classic Swarm's do.
    let mut managers: Vec<SimManager> = ["m1", "m2", "m3"]
        .iter()
        .map(|name| SimManager::start(&SimOptions::new(name, &discovery, &log).ttl(2)))
        .collect();
    let first = {
        let all: Vec<&SimManager> = managers.iter().collect();
        wait_for_single_primary(&all, WAIT).unwrap_or_else(|e| panic!("{e}"))
    };
    let proxies = [proxy_for(&etcd, &[]), proxy_for(&etcd, &[])];
    let leader = managers[first].advertise();
    for proxy in &proxies {
        proxy.wait_for_leader(WAIT, |l| l["leader"] == leader.as_str());
        assert_eq!(served_by(proxy), managers[first].name());
    }

    // The primary dies; the others elect a new one once its lock expires.
    managers[first].kill();
    let rest: Vec<&SimManager> = managers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != first)
        .map(|(_, m)| m)
        .collect();
    let next = rest[wait_for_single_primary(&rest, WAIT).unwrap_or_else(|e| panic!("{e}"))];
    let leader = next.advertise();
    for proxy in &proxies {
        proxy.wait_for_leader(WAIT, |l| {
            l["leader"] == leader.as_str() && l["state"] == "leader"
        });
        assert_eq!(served_by(proxy), next.name());
    }
}
