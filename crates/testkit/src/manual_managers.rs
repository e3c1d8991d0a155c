//! Simulated managers for the sources that ask the managers themselves: three `sim-manager
//! --discovery manual` processes whose view of the election a test sets by hand
//! (`POST /_sim/state`, see `sim_manager/manual.rs`), as classic Swarm managers
//! ([`ClassicManagers`], for `static://`) or swarm-mode managers ([`SwarmManagers`], for
//! `swarm://`). Both implement the manager-side conformance harness
//! ([`crate::manager_conformance::ManagerHarness`]).
//!
//! Each manager keeps its state in a file, so [`stop`](ManagerHarness::stop) (SIGKILL) and
//! [`restart`](ManagerHarness::restart) bring them back saying what they said before.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use serde_json::{json, Value};

use crate::http;
use crate::manager_conformance::ManagerHarness;
use crate::sim::{SimManager, SimOptions};

/// What dockerd answers `GET /nodes` with during an election (its `errNoLeader`).
pub const NO_LEADER: &str = "rpc error: code = Unknown desc = The swarm does not have a leader. \
     It's possible that too few managers are online. Make sure more than half of the managers \
     are online.";

/// Three `--discovery manual` managers (m1, m2, m3), with their temp dir.
pub struct Managers {
    pub managers: Vec<SimManager>,
    _dir: tempfile::TempDir,
}

impl Managers {
    /// Starts m1..m3 on `listen` (`None`: a free port on 127.0.0.1 each).
    fn start(listen: Option<[SocketAddr; 3]>) -> Managers {
        let dir = tempfile::tempdir().expect("temp dir");
        let managers = (0..3)
            .map(|i| {
                let name = format!("m{}", i + 1);
                let mut opts = SimOptions::new(&name, "manual", &dir.path().join("writes.log"))
                    .state_file(&dir.path().join(format!("{name}.state")));
                if let Some(addrs) = listen {
                    opts = opts.listen(addrs[i]);
                }
                SimManager::start(&opts)
            })
            .collect();
        Managers {
            managers,
            _dir: dir,
        }
    }

    /// Sets (part of) what manager `i` says; panics if it refuses.
    pub fn set(&self, i: usize, state: Value) {
        let body = state.to_string();
        let response = http::request(
            self.managers[i].addr(),
            "POST",
            "/_sim/state",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("POST /_sim/state to m{}: {e}", i + 1));
        assert_eq!(response.status, 200, "{}", response.text());
    }

    fn hosts(&self) -> String {
        self.managers
            .iter()
            .map(|m| m.addr().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn stop(&mut self) {
        for m in &mut self.managers {
            m.kill();
        }
    }

    fn restart(&mut self) {
        for m in &mut self.managers {
            m.restart();
        }
    }
}

/// Classic Swarm managers (`GET /info`, `SystemStatus` Role and Primary), on 127.0.0.1.
pub struct ClassicManagers {
    pub m: Managers,
}

impl ClassicManagers {
    pub fn start() -> ClassicManagers {
        let m = Managers::start(None);
        for i in 0..3 {
            m.set(i, json!({"role": "replica", "primary": ""}));
        }
        ClassicManagers { m }
    }

    pub fn url(&self) -> String {
        format!("static://{}", self.m.hosts())
    }

    /// Manager `i`'s own view: its role and whom it names as Primary ("" = nobody).
    pub fn say(&self, i: usize, primary_role: bool, names: &str) {
        let role = if primary_role { "primary" } else { "replica" };
        self.m
            .set(i, json!({"role": role, "primary": names, "info": null}));
    }
}

impl ManagerHarness for ClassicManagers {
    fn proxy_args(&self) -> Vec<String> {
        vec!["--probe-interval".into(), "100ms".into(), self.url()]
    }

    fn name(&self, i: usize) -> String {
        self.m.managers[i].name().to_string()
    }

    fn leader_addr(&self, i: usize) -> String {
        self.m.managers[i].addr().to_string()
    }

    fn elect(&mut self, i: usize) {
        // The winner first, then the others follow it: never a moment without a primary.
        let addr = self.leader_addr(i);
        self.say(i, true, &addr);
        for j in (0..3).filter(|&j| j != i) {
            self.say(j, false, &addr);
        }
    }

    fn vacate(&mut self) {
        for j in 0..3 {
            self.say(j, false, "");
        }
    }

    fn garbage_cases(&self) -> Vec<&'static str> {
        vec![
            "garbage",
            r#"{"a":1}"#,
            r#"{"SystemStatus":[["Role","banana"],["Primary",""]]}"#,
            r#"{"SystemStatus":[["Strategy","spread"]]}"#,
        ]
    }

    fn answer_garbage(&mut self, case: &str) {
        for j in 0..3 {
            self.m.set(j, json!({"info": case}));
        }
    }

    fn stop(&mut self) {
        self.m.stop();
    }

    fn restart(&mut self) {
        self.m.restart();
    }
}

/// Swarm-mode managers (`GET /nodes`), each on its own loopback address (127.X.Y.1-3) and
/// all on one port, as real managers are: the leader's API address is the host of its Raft
/// address with the port of the `swarm://` entries.
pub struct SwarmManagers {
    pub m: Managers,
    hosts: [Ipv4Addr; 3],
    port: u16,
}

impl SwarmManagers {
    pub fn start() -> SwarmManagers {
        let (hosts, port) = free_hosts_and_port();
        let listen = hosts.map(|h| SocketAddr::new(IpAddr::V4(h), port));
        let swarm = SwarmManagers {
            m: Managers::start(Some(listen)),
            hosts,
            port,
        };
        for i in 0..3 {
            swarm.m.set(i, json!({"role": "replica"}));
        }
        swarm
    }

    pub fn url(&self) -> String {
        format!("swarm://{}", self.m.hosts())
    }

    /// The node list dockerd would give with manager `leader` (if any) leading; node ids are
    /// the managers' names.
    pub fn nodes(&self, leader: Option<usize>) -> String {
        let nodes: Vec<Value> = (0..3)
            .map(|j| {
                let mut status = json!({
                    "Reachability": "reachable",
                    "Addr": format!("{}:2377", self.hosts[j]),
                });
                if leader == Some(j) {
                    status["Leader"] = json!(true);
                }
                json!({
                    "ID": format!("m{}", j + 1),
                    "Spec": {"Role": "manager", "Availability": "active"},
                    "Status": {"State": "ready", "Addr": self.hosts[j].to_string()},
                    "ManagerStatus": status,
                })
            })
            .collect();
        Value::Array(nodes).to_string()
    }

    /// Manager `i` answers `GET /nodes` with `status` and `body`.
    pub fn answer_nodes(&self, i: usize, status: u16, body: &str) {
        self.m
            .set(i, json!({"nodes": {"status": status, "body": body}}));
    }

    /// The 503 a manager answers while its swarm has no leader.
    pub fn no_leader_body() -> String {
        json!({ "message": NO_LEADER }).to_string()
    }
}

impl ManagerHarness for SwarmManagers {
    fn proxy_args(&self) -> Vec<String> {
        vec!["--probe-interval".into(), "100ms".into(), self.url()]
    }

    fn name(&self, i: usize) -> String {
        self.m.managers[i].name().to_string()
    }

    fn leader_addr(&self, i: usize) -> String {
        format!("{}:{}", self.hosts[i], self.port)
    }

    fn elect(&mut self, i: usize) {
        let nodes = self.nodes(Some(i));
        for j in 0..3 {
            let role = if j == i { "primary" } else { "replica" };
            self.m.set(
                j,
                json!({"role": role, "nodes": {"status": 200, "body": nodes}}),
            );
        }
    }

    fn vacate(&mut self) {
        let body = Self::no_leader_body();
        for j in 0..3 {
            self.m.set(
                j,
                json!({"role": "replica", "nodes": {"status": 503, "body": body}}),
            );
        }
    }

    fn garbage_cases(&self) -> Vec<&'static str> {
        vec![
            "not JSON",
            "not a node list",
            "two leaders",
            "leader without a port",
            "leader with a path",
        ]
    }

    fn answer_garbage(&mut self, case: &str) {
        let leader_addr = |addr: &str| {
            json!([{"ID": "m1", "ManagerStatus": {"Leader": true, "Addr": addr}}]).to_string()
        };
        let body = match case {
            "not JSON" => "garbage".to_string(),
            "not a node list" => r#"{"a":1}"#.to_string(),
            "two leaders" => {
                let mut nodes: Value =
                    serde_json::from_str(&self.nodes(Some(0))).expect("our own JSON");
                nodes[1]["ManagerStatus"]["Leader"] = json!(true);
                nodes.to_string()
            }
            "leader without a port" => leader_addr(&self.hosts[0].to_string()),
            "leader with a path" => leader_addr(&format!("http://{}:2377/path", self.hosts[0])),
            other => panic!("unknown garbage case {other:?}"),
        };
        for j in 0..3 {
            self.answer_nodes(j, 200, &body);
        }
    }

    fn stop(&mut self) {
        self.m.stop();
    }

    fn restart(&mut self) {
        self.m.restart();
    }
}

/// Three loopback addresses 127.X.Y.1-3 (X in 64..=127, Y random: tests running side by side
/// do not meet) and a port free on all three.
fn free_hosts_and_port() -> ([Ipv4Addr; 3], u16) {
    for _ in 0..50 {
        let (x, y) = (64 + rand::random::<u8>() % 64, rand::random::<u8>());
        let hosts = [1, 2, 3].map(|z| Ipv4Addr::new(127, x, y, z));
        let Ok(first) = TcpListener::bind((hosts[0], 0)) else {
            continue;
        };
        let Ok(port) = first.local_addr().map(|a| a.port()) else {
            continue;
        };
        if hosts[1..]
            .iter()
            .all(|h| TcpListener::bind((*h, port)).is_ok())
        {
            return (hosts, port);
        }
    }
    panic!("no port free on three loopback addresses after 50 tries");
}
