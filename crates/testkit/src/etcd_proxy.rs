//! The real proxy following a real etcd (prefix `/p`) in which a standalone simulated
//! manager is leader: the setting of the tests of the proxy itself (admin API, L7), which
//! would otherwise each start it the same way.

use std::time::Duration;

use crate::conformance::standalone;
use crate::etcd::Etcd;
use crate::proxy::Proxy;
use crate::sim::SimManager;

/// The leader key under the `/p` prefix, on the v2 API.
pub const KEY: &str = "/p/docker/swarm/leader";

/// `leader-proxy EXTRA… etcd://ETCD/p`.
pub fn proxy_for(etcd: &Etcd, extra: &[&str]) -> Proxy {
    let url = format!("etcd://{}/p", etcd.endpoint());
    let mut args: Vec<&str> = extra.to_vec();
    args.push(&url);
    Proxy::start(&args)
}

/// `etcd` naming `leader` (`HOST:PORT`, a real dockerd's endpoint) and a proxy started with
/// `extra` that has seen it; several proxies may share the etcd and the leader.
pub fn proxy_leading_to(etcd: &Etcd, leader: &str, extra: &[&str]) -> Proxy {
    etcd.put_v2(KEY, leader, None);
    let proxy = proxy_for(etcd, extra);
    proxy.wait_for_leader(std::time::Duration::from_secs(20), |now| {
        now["leader"] == leader
    });
    proxy
}

/// A fresh etcd naming manager `m1` (whose state lives in the returned dir) as leader, and
/// a proxy started with `extra` that has seen it. Bind all four: dropped in reverse order,
/// the proxy goes first and etcd last, as in a test that starts them one by one.
pub fn proxy_with_leader(extra: &[&str]) -> (Etcd, tempfile::TempDir, SimManager, Proxy) {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let manager = standalone("m1", dir.path());
    etcd.put_v2(KEY, &manager.advertise(), None);
    let proxy = proxy_for(&etcd, extra);
    proxy.wait_for_leader(Duration::from_secs(10), |l| l["state"] == "leader");
    (etcd, dir, manager, proxy)
}
