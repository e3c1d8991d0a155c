//! etcd under the conformance suite: the v2 API as classic Swarm uses it, and the v3 API
//! with a leased key or etcd's election recipe.

use std::path::Path;

use crate::conformance::StoreHarness;
use crate::etcd::Etcd;
use crate::sim::{Election, SimOptions};

const PREFIX: &str = "swarm";
const V2_KEY: &str = "/swarm/docker/swarm/leader";
const V3_KEY: &str = "swarm/docker/swarm/leader";

/// `etcd://`: the key exists while the lock is held (TTL refreshed by the holder).
pub struct EtcdV2 {
    etcd: Etcd,
}

impl EtcdV2 {
    pub fn start() -> Self {
        Self {
            etcd: Etcd::start(),
        }
    }
}

impl StoreHarness for EtcdV2 {
    fn proxy_args(&self) -> Vec<String> {
        vec![format!("etcd://{}/{PREFIX}", self.etcd.endpoint())]
    }

    fn sim_options(&self, name: &str, log: &Path) -> SimOptions {
        SimOptions::new(name, &self.proxy_args()[0], log).ttl(2)
    }

    fn elect(&mut self, addr: &str) {
        self.etcd.put_v2(V2_KEY, addr, None);
    }

    fn elect_garbage(&mut self, value: &str) {
        self.etcd.put_v2(V2_KEY, value, None);
    }

    fn vacate(&mut self) {
        self.etcd.delete_v2(V2_KEY);
    }

    fn stale_cases(&self) -> Vec<&'static str> {
        vec!["ttl-expired"]
    }

    fn elect_then_go_stale(&mut self, _case: &str, addr: &str) {
        // The holder died: nobody refreshes the key and etcd expires it.
        self.etcd.put_v2(V2_KEY, addr, Some(1));
    }

    fn stop(&mut self) {
        self.etcd.stop();
    }

    fn restart(&mut self) {
        self.etcd.restart();
    }
}

/// `etcdv3://` with `--election key`: a leased key put only if absent.
pub struct EtcdV3Key {
    etcd: Etcd,
}

impl EtcdV3Key {
    pub fn start() -> Self {
        Self {
            etcd: Etcd::start(),
        }
    }
}

impl StoreHarness for EtcdV3Key {
    fn proxy_args(&self) -> Vec<String> {
        vec![format!("etcdv3://{}/{PREFIX}", self.etcd.endpoint())]
    }

    fn sim_options(&self, name: &str, log: &Path) -> SimOptions {
        SimOptions::new(name, &self.proxy_args()[0], log).ttl(2)
    }

    fn elect(&mut self, addr: &str) {
        self.etcd.put_v3(V3_KEY, addr);
    }

    fn elect_garbage(&mut self, value: &str) {
        self.etcd.put_v3(V3_KEY, value);
    }

    fn vacate(&mut self) {
        self.etcd.delete_v3(V3_KEY);
    }

    fn stale_cases(&self) -> Vec<&'static str> {
        vec!["lease-expired"]
    }

    fn elect_then_go_stale(&mut self, _case: &str, addr: &str) {
        // The holder died: nobody keeps its lease alive and etcd deletes the key.
        self.etcd.put_v3_leased(V3_KEY, addr, 2);
    }

    fn stop(&mut self) {
        self.etcd.stop();
    }

    fn restart(&mut self) {
        self.etcd.restart();
    }
}

/// `etcdv3://` with `--election contenders`: etcd's election recipe; the contender key
/// (`<name>/<lease hex>`) with the lowest create revision leads.
pub struct EtcdV3Contenders {
    etcd: Etcd,
    /// Makes each contender key unique, as lease ids do.
    next: u64,
}

impl EtcdV3Contenders {
    pub fn start() -> Self {
        Self {
            etcd: Etcd::start(),
            next: 0x694d_0000,
        }
    }

    fn contender_key(&mut self) -> String {
        self.next += 1;
        format!("{V3_KEY}/{:x}", self.next)
    }
}

impl StoreHarness for EtcdV3Contenders {
    fn proxy_args(&self) -> Vec<String> {
        vec![
            "--election".into(),
            "contenders".into(),
            format!("etcdv3://{}/{PREFIX}", self.etcd.endpoint()),
        ]
    }

    fn sim_options(&self, name: &str, log: &Path) -> SimOptions {
        let url = format!("etcdv3://{}/{PREFIX}", self.etcd.endpoint());
        SimOptions::new(name, &url, log)
            .election(Election::Contenders)
            .ttl(2)
    }

    fn elect(&mut self, addr: &str) {
        // The old leader resigned; the new one is now first in line.
        self.vacate();
        let key = self.contender_key();
        self.etcd.put_v3(&key, addr);
    }

    fn elect_garbage(&mut self, value: &str) {
        // The leader proclaims a new value on its own key.
        match self.etcd.keys_v3(&format!("{V3_KEY}/")).first() {
            Some(key) => self.etcd.proclaim_v3(key, value),
            None => {
                let key = self.contender_key();
                self.etcd.put_v3(&key, value);
            }
        }
    }

    fn vacate(&mut self) {
        self.etcd
            .etcdctl(&["del", "--prefix", &format!("{V3_KEY}/")]);
    }

    fn stale_cases(&self) -> Vec<&'static str> {
        vec!["holder-lease-expired"]
    }

    fn elect_then_go_stale(&mut self, _case: &str, addr: &str) {
        self.vacate();
        let key = self.contender_key();
        self.etcd.put_v3_leased(&key, addr, 2);
    }

    fn stop(&mut self) {
        self.etcd.stop();
    }

    fn restart(&mut self) {
        self.etcd.restart();
    }
}
