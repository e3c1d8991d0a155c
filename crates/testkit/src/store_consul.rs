//! Consul under the conformance suite, played by the protocol double
//! (`consul_double.rs`): the leader key locked by a session the way Consul's `api.Lock`
//! (libkv) leaves it, and the ways a Consul lock goes stale while its value stays.

use std::path::Path;
use std::time::Duration;

use crate::conformance::StoreHarness;
use crate::consul_double::{ConsulDouble, SessionSpec};
use crate::sim::SimOptions;

const PREFIX: &str = "swarm";
/// The key under `consul://…/swarm`, as Consul names it (no leading slash).
pub const KEY: &str = "swarm/docker/swarm/leader";

/// `consul://` on the double.
pub struct ConsulStore {
    double: ConsulDouble,
}

impl ConsulStore {
    pub fn start() -> Self {
        Self {
            double: ConsulDouble::start(),
        }
    }

    pub fn double(&self) -> &ConsulDouble {
        &self.double
    }

    /// The holder of the lock steps down the way a dead one does: its session ends, Consul
    /// releases the key (the value stays).
    fn end_holder(&mut self) {
        if let Some(holder) = self.double.get(KEY).and_then(|e| e.session) {
            self.double.session_destroy(&holder);
        }
    }

    /// A new holder: the old one's session ends (the election is open for a moment, as in
    /// Consul), then a fresh session acquires the key with `value`.
    fn hold(&mut self, value: &str, spec: &SessionSpec) {
        self.end_holder();
        let session = self.double.session_create(spec);
        assert!(
            self.double.acquire(KEY, value, &session),
            "acquiring {KEY} failed: {:?}",
            self.double.get(KEY)
        );
    }
}

impl StoreHarness for ConsulStore {
    fn proxy_args(&self) -> Vec<String> {
        vec![format!("consul://{}/{PREFIX}", self.double.endpoint())]
    }

    fn sim_options(&self, name: &str, log: &Path) -> SimOptions {
        // Lock TTL 2 s: sessions of 1 s (below Consul's 10 s minimum, which the double
        // allows), invalidated 2 s after the holder's last renewal.
        SimOptions::new(name, &self.proxy_args()[0], log).ttl(2)
    }

    fn elect(&mut self, addr: &str) {
        self.hold(addr, &SessionSpec::lasting());
    }

    fn elect_garbage(&mut self, value: &str) {
        // The holder writes the value under its lock (an acquire by the holder updates the
        // value): the lock stays held throughout, so no open election shows in between.
        match self.double.get(KEY).and_then(|e| e.session) {
            Some(holder) => assert!(self.double.acquire(KEY, value, &holder)),
            None => self.hold(value, &SessionSpec::lasting()),
        }
    }

    fn vacate(&mut self) {
        // A clean resignation, as api.Lock's Unlock then the session's destruction.
        if let Some(holder) = self.double.get(KEY).and_then(|e| e.session) {
            assert!(self.double.release(KEY, &holder));
            self.double.session_destroy(&holder);
        }
    }

    fn stale_cases(&self) -> Vec<&'static str> {
        vec!["session-expired", "session-destroyed", "released"]
    }

    fn elect_then_go_stale(&mut self, case: &str, addr: &str) {
        match case {
            // The holder died: nobody renews its session (TTL 1 s, so Consul invalidates it
            // 2 s later) and the key is released with its value.
            "session-expired" => self.hold(addr, &SessionSpec::expiring(Duration::from_secs(1))),
            "session-destroyed" => {
                self.hold(addr, &SessionSpec::lasting());
                self.end_holder();
            }
            // The holder unlocked but keeps its session.
            "released" => {
                self.hold(addr, &SessionSpec::lasting());
                let holder = self
                    .double
                    .get(KEY)
                    .and_then(|e| e.session)
                    .expect("a holder");
                assert!(self.double.release(KEY, &holder));
            }
            other => panic!("unknown stale case {other}"),
        }
        let entry = self.double.get(KEY).expect("the key stays");
        assert_eq!(entry.value_text(), addr, "{case}: the value stays");
    }

    fn stop(&mut self) {
        self.double.stop();
    }

    fn restart(&mut self) {
        self.double.restart();
    }
}
