//! ZooKeeper under the conformance suite: classic Swarm's lock (libkv over go-zookeeper)
//! with `--election key`, and sequential contender nodes with `--election contenders`.
//!
//! The harness acts the elections out on a session of its own, as the winner leaves them:
//! - key: the lock children `_c_<32 hex>-lock-<seq>` are ephemeral nodes of the harness's
//!   session, and the node's data is the address written after the lock was won;
//! - contenders: ephemeral sequential children holding the contender's address, with the
//!   child-name prefixes of kazoo, Curator and plain `n_` in turn.
//!
//! The harness's session outlives a store stop/restart (60 s timeout; ZooKeeper restores
//! sessions from its data dir), and is opened again if it did expire.

use std::path::Path;
use std::time::Duration;

use crate::conformance::StoreHarness;
use crate::sim::{Election, SimOptions};
use crate::zookeeper::{random_hex, ZkSession, ZooKeeper};

const PREFIX: &str = "swarm";
/// `/<prefix>/docker/swarm/leader`.
const NODE: &str = "/swarm/docker/swarm/leader";

/// The harness's own session: long enough to outlive a store outage.
const SESSION: Duration = Duration::from_secs(60);
/// A holder that dies: the server expires its session this long after it was abandoned.
/// The client gives up on a request after 2/5 of it without an answer, so 1 s (400 ms) failed
/// the holder's own writes on a loaded machine; 5 s (2 s) does not, and still expires well
/// within the conformance waits.
const SHORT_SESSION: Duration = Duration::from_secs(5);

/// go-zookeeper's protected lock prefix, as `zk.NewLock` names its children.
fn lock_prefix() -> String {
    format!("_c_{}-lock-", random_hex(32))
}

/// The store plus the harness's session, opened again when it expired.
struct Zk {
    zk: ZooKeeper,
    session: Option<ZkSession>,
}

impl Zk {
    fn start() -> Self {
        Self {
            zk: ZooKeeper::start(),
            session: None,
        }
    }

    fn session(&mut self) -> &ZkSession {
        if !self.session.as_ref().is_some_and(ZkSession::is_alive) {
            self.session = Some(self.zk.session(SESSION));
        }
        self.session.as_ref().expect("a session")
    }

    fn url(&self) -> String {
        format!("zk://{}/{PREFIX}", self.zk.endpoint())
    }
}

/// `zk://` with `--election key`: the node's data is the leader while the child that was
/// the lowest when it was written is still the lowest.
pub struct ZkKey {
    store: Zk,
}

impl ZkKey {
    pub fn start() -> Self {
        Self { store: Zk::start() }
    }

    /// The old holder leaves (every lock child goes), a new one wins and writes `value`.
    fn win(&mut self, value: &str) -> String {
        let s = self.store.session();
        s.ensure(NODE);
        s.delete_children(NODE);
        let child = s.ephemeral_sequential(NODE, &lock_prefix(), "");
        s.set_data(NODE, value);
        child
    }
}

impl StoreHarness for ZkKey {
    fn proxy_args(&self) -> Vec<String> {
        vec![self.store.url()]
    }

    fn sim_options(&self, name: &str, log: &Path) -> SimOptions {
        SimOptions::new(name, &self.store.url(), log).ttl(2)
    }

    fn elect(&mut self, addr: &str) {
        self.win(addr);
    }

    fn elect_garbage(&mut self, value: &str) {
        // The holder (re)writes its value; the lock stays held.
        let s = self.store.session();
        s.ensure(NODE);
        if s.children(NODE).is_empty() {
            s.ephemeral_sequential(NODE, &lock_prefix(), "");
        }
        s.set_data(NODE, value);
    }

    fn vacate(&mut self) {
        // Every contender gone; libkv leaves the data behind.
        self.store.session().delete_children(NODE);
    }

    fn stale_cases(&self) -> Vec<&'static str> {
        vec![
            "holder-gone-waiter-queued",
            "holder-child-deleted",
            "holder-session-expired",
        ]
    }

    fn elect_then_go_stale(&mut self, case: &str, addr: &str) {
        match case {
            // The holder dies while another manager waits in line: the waiter's child is
            // now the lowest, but it has not written yet.
            "holder-gone-waiter-queued" => {
                let holder = self.win(addr);
                let s = self.store.session();
                s.ephemeral_sequential(NODE, &lock_prefix(), "");
                s.delete(&format!("{NODE}/{holder}"));
            }
            // The holder's lock child is gone, nobody else runs; the data stays.
            "holder-child-deleted" => {
                let holder = self.win(addr);
                self.store.session().delete(&format!("{NODE}/{holder}"));
            }
            // The holder is killed: ZooKeeper expires its session and deletes its child.
            "holder-session-expired" => {
                let s = self.store.session();
                s.ensure(NODE);
                s.delete_children(NODE);
                let holder = self.store.zk.expiring_session(SHORT_SESSION);
                holder.ephemeral_sequential(NODE, &lock_prefix(), "");
                holder.set_data(NODE, addr);
                holder.abandon();
            }
            other => panic!("unknown stale case {other}"),
        }
    }

    fn stop(&mut self) {
        self.store.zk.stop();
    }

    fn restart(&mut self) {
        self.store.zk.restart();
    }
}

/// `zk://` with `--election contenders`: the child with the lowest sequence suffix leads,
/// whatever its name's prefix.
pub struct ZkContenders {
    store: Zk,
    /// Which recipe's child names the next contender gets.
    turn: usize,
}

impl ZkContenders {
    pub fn start() -> Self {
        Self {
            store: Zk::start(),
            turn: 0,
        }
    }

    /// kazoo (`<uuid hex>__lock__`), Curator (`_c_<uuid>-lock-`) and `n_`, in turn.
    fn prefix(&mut self) -> String {
        self.turn += 1;
        match self.turn % 3 {
            0 => format!("{}__lock__", random_hex(32)),
            1 => lock_prefix(),
            _ => "n_".to_string(),
        }
    }

    fn lowest(&mut self) -> Option<String> {
        let mut children = self.store.session().children(NODE);
        children.sort_by_key(|c| c[c.len().saturating_sub(10)..].to_string());
        children.into_iter().next()
    }
}

impl StoreHarness for ZkContenders {
    fn proxy_args(&self) -> Vec<String> {
        vec!["--election".into(), "contenders".into(), self.store.url()]
    }

    fn sim_options(&self, name: &str, log: &Path) -> SimOptions {
        SimOptions::new(name, &self.store.url(), log)
            .election(Election::Contenders)
            .ttl(2)
    }

    fn elect(&mut self, addr: &str) {
        // The old leader resigned; the new one is now first in line.
        let prefix = self.prefix();
        let s = self.store.session();
        s.ensure(NODE);
        s.delete_children(NODE);
        s.ephemeral_sequential(NODE, &prefix, addr);
    }

    fn elect_garbage(&mut self, value: &str) {
        // The leader's own node holds the value.
        match self.lowest() {
            Some(leader) => {
                self.store
                    .session()
                    .set_data(&format!("{NODE}/{leader}"), value);
            }
            None => {
                let prefix = self.prefix();
                let s = self.store.session();
                s.ensure(NODE);
                s.ephemeral_sequential(NODE, &prefix, value);
            }
        }
    }

    fn vacate(&mut self) {
        self.store.session().delete_children(NODE);
    }

    fn stale_cases(&self) -> Vec<&'static str> {
        vec!["leader-child-deleted", "leader-session-expired"]
    }

    fn elect_then_go_stale(&mut self, case: &str, addr: &str) {
        match case {
            "leader-child-deleted" => {
                self.elect(addr);
                if let Some(leader) = self.lowest() {
                    self.store.session().delete(&format!("{NODE}/{leader}"));
                }
            }
            "leader-session-expired" => {
                let prefix = self.prefix();
                let s = self.store.session();
                s.ensure(NODE);
                s.delete_children(NODE);
                let leader = self.store.zk.expiring_session(SHORT_SESSION);
                leader.ephemeral_sequential(NODE, &prefix, addr);
                leader.abandon();
            }
            other => panic!("unknown stale case {other}"),
        }
    }

    fn stop(&mut self) {
        self.store.zk.stop();
    }

    fn restart(&mut self) {
        self.store.zk.restart();
    }
}
