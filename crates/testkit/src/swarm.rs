//! A real Docker swarm of three managers for one test, by the recipe of
//! docs/testing.md#swarm-mode:
//! three dockerd on 127.0.0.21-23, each with its own dirs in one temp dir under /tmp, its
//! own empty daemon.json, `-H tcp://127.0.0.2X:2375`, no iptables, no bridge, vfs; then
//! `swarm init --advertise-addr 127.0.0.21 --listen-addr 127.0.0.21:2377 --data-path-port
//! 4795` on the first and `swarm join` of the others as managers (through the Engine API,
//! the calls the CLI makes).
//!
//! The addresses are fixed (each manager's Raft and gossip ports are too), so only one swarm
//! runs at a time: the tests that start one are in the nextest test group `swarm`
//! (`.config/nextest.toml`). A dockerd still listening there (an earlier run killed hard)
//! fails the start with what to look for.
//!
//! [`Swarm::kill`] SIGKILLs a manager's dockerd alone, as a crash would; [`Swarm::restart`]
//! starts it again on the same dirs, and it rejoins as a follower. Dropping the swarm stops
//! every dockerd (SIGTERM to its process group, then SIGKILL), kills what is left of it
//! (containerd runs in its own session and outlives a SIGKILLed dockerd), unmounts what they
//! left under the dirs (the data root bind mount, the swarm's network namespaces), removes
//! the `docker_gwbridge` interface swarm mode created in the host's network namespace (if it
//! was not there before), and the dirs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::dockerd::{
    containerd_on_path, kill_group, signal_group, sweep, terminate_group, unmount_under,
    CONTAINERD, DOCKERD,
};
use crate::http;

pub const INSTALL: &str = "apt-get install docker.io";
/// The managers' addresses: the recipe's, verified on these machines.
pub const HOSTS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 21),
    Ipv4Addr::new(127, 0, 0, 22),
    Ipv4Addr::new(127, 0, 0, 23),
];
/// Every manager's Docker API port.
pub const API_PORT: u16 = 2375;
const GWBRIDGE: &str = "docker_gwbridge";

/// How long a dockerd may take to answer `/_ping` (a second or two here).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the graceful part of the stop may take before everything is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Swarm {
    managers: Vec<Manager>,
    dir: Option<tempfile::TempDir>,
    gwbridge_existed: bool,
}

struct Manager {
    host: Ipv4Addr,
    dir: PathBuf,
    child: Option<Child>,
    node_id: String,
}

impl Swarm {
    /// Starts three dockerd, makes them one swarm of three managers, and waits until all
    /// three are reachable managers with a leader.
    pub fn start() -> Swarm {
        DOCKERD.require(INSTALL);
        CONTAINERD.require(INSTALL);
        for host in HOSTS {
            let api = SocketAddr::new(IpAddr::V4(host), API_PORT);
            if std::net::TcpStream::connect_timeout(&api, Duration::from_millis(200)).is_ok() {
                panic!(
                    "something already listens on {api}: a dockerd of an earlier run? \
                     (ps aux | grep dockerd; mount | grep lps-)"
                );
            }
        }
        // /tmp, not $TMPDIR: containerd's unix sockets live under the exec roots, and socket
        // paths are limited to 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("lps-")
            .tempdir_in("/tmp")
            .expect("a temp dir for the swarm");
        let mut swarm = Swarm {
            managers: Vec::new(),
            gwbridge_existed: gwbridge_exists(),
            dir: None,
        };
        for (i, host) in HOSTS.into_iter().enumerate() {
            let mdir = dir.path().join(format!("m{}", i + 1));
            std::fs::create_dir_all(&mdir).expect("mkdir manager dir");
            std::fs::write(mdir.join("daemon.json"), "{}\n").expect("write daemon.json");
            swarm.managers.push(Manager {
                host,
                dir: mdir,
                child: None,
                node_id: String::new(),
            });
        }
        swarm.dir = Some(dir);
        for i in 0..3 {
            swarm.launch(i);
        }
        for i in 0..3 {
            swarm.wait_ready(i);
        }

        let init = swarm.call(
            0,
            "POST",
            "/swarm/init",
            json!({
                "ListenAddr": format!("{}:2377", HOSTS[0]),
                "AdvertiseAddr": HOSTS[0].to_string(),
                "DataPathPort": 4795,
            }),
        );
        assert_eq!(init.status, 200, "swarm init: {}", init.text());
        let tokens = swarm.call(0, "GET", "/swarm", Value::Null);
        let token = tokens.json()["JoinTokens"]["Manager"]
            .as_str()
            .unwrap_or_else(|| panic!("no manager join token in {}", tokens.text()))
            .to_string();
        for (i, host) in HOSTS.iter().enumerate().skip(1) {
            let join = swarm.call(
                i,
                "POST",
                "/swarm/join",
                json!({
                    "ListenAddr": format!("{host}:2377"),
                    "AdvertiseAddr": host.to_string(),
                    "RemoteAddrs": [format!("{}:2377", HOSTS[0])],
                    "JoinToken": token,
                }),
            );
            assert_eq!(
                join.status,
                200,
                "swarm join of m{}: {}",
                i + 1,
                join.text()
            );
        }
        for i in 0..3 {
            let info = swarm.call(i, "GET", "/info", Value::Null);
            let id = info.json()["Swarm"]["NodeID"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(!id.is_empty(), "no Swarm.NodeID: {}", info.text());
            swarm.managers[i].node_id = id;
        }
        swarm.wait_healthy(Duration::from_secs(60));
        swarm
    }

    /// `swarm://127.0.0.21:2375,127.0.0.22:2375,127.0.0.23:2375`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = (0..3).map(|i| self.api(i).to_string()).collect();
        format!("swarm://{}", hosts.join(","))
    }

    /// Manager `i`'s Docker API.
    pub fn api(&self, i: usize) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.managers[i].host), API_PORT)
    }

    /// Manager `i`'s node id (`Swarm.NodeID` in its `GET /info`).
    pub fn node_id(&self, i: usize) -> &str {
        &self.managers[i].node_id
    }

    /// The manager whose node id this is.
    pub fn index_of(&self, node_id: &str) -> Option<usize> {
        self.managers.iter().position(|m| m.node_id == node_id)
    }

    /// The temp dir all managers live in (for the leftover check after drop).
    pub fn dir(&self) -> PathBuf {
        self.dir.as_ref().expect("dir").path().to_path_buf()
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.managers[i].child.is_some()
    }

    /// Who leads, as manager `asked` says in `GET /nodes` (`None`: no answer within
    /// `timeout`, an error, or no leader). During an election a follower answers only once
    /// there is a new leader, so this returns the moment the election ends.
    pub fn leader_by(&self, asked: usize, timeout: Duration) -> Option<usize> {
        let r = http::request(self.api(asked), "GET", "/nodes", &[], b"", timeout).ok()?;
        if r.status != 200 {
            return None;
        }
        let nodes = r.json();
        let leader = nodes
            .as_array()?
            .iter()
            .find(|n| n["ManagerStatus"]["Leader"].as_bool().unwrap_or(false))?;
        self.index_of(leader["ID"].as_str()?)
    }

    /// Waits until a running manager names a leader.
    pub fn wait_for_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            for i in (0..3).filter(|&i| self.is_running(i)) {
                if let Some(leader) = self.leader_by(i, Duration::from_secs(2)) {
                    return leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no swarm leader after {timeout:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every manager runs, answers, and is listed by the leader as a reachable
    /// manager: the swarm can lose one manager again without losing its quorum.
    pub fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let leader = self.wait_for_leader(timeout);
            if let Ok(r) = http::request(
                self.api(leader),
                "GET",
                "/nodes",
                &[],
                b"",
                Duration::from_secs(5),
            ) {
                let nodes = r.json();
                let reachable = nodes.as_array().map_or(0, |nodes| {
                    nodes
                        .iter()
                        .filter(|n| n["ManagerStatus"]["Reachability"] == "reachable")
                        .count()
                });
                let ready = (0..3).all(|i| {
                    http::request(
                        self.api(i),
                        "GET",
                        "/info",
                        &[],
                        b"",
                        Duration::from_secs(5),
                    )
                    .is_ok_and(|r| {
                        let swarm = &r.json()["Swarm"];
                        swarm["LocalNodeState"] == "active" && swarm["ControlAvailable"] == true
                    })
                });
                if reachable == 3 && ready {
                    return;
                }
                last = r.text();
            }
            assert!(
                Instant::now() < deadline,
                "the swarm is not back to three reachable managers after {timeout:?}; \
                 last /nodes: {last}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL manager `i`'s dockerd alone: a manager crashing.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.managers[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts manager `i`'s dockerd again on its dirs and waits until it answers. It
    /// rejoins the swarm by itself (as a follower); [`Self::wait_healthy`] waits for that.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.launch(i);
        self.wait_ready(i);
    }

    /// Every manager's log, for failure messages (the last lines of each).
    pub fn logs(&self) -> String {
        self.managers
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let log = std::fs::read_to_string(m.dir.join("dockerd.log")).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                format!("--- m{} ({}) ---\n{tail}", i + 1, m.host)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn launch(&mut self, i: usize) {
        let m = &self.managers[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.dir.join("dockerd.log"))
            .expect("open the dockerd log");
        let mut cmd = Command::new(DOCKERD);
        containerd_on_path(&mut cmd);
        let child = cmd
            .arg("--config-file")
            .arg(m.dir.join("daemon.json"))
            .arg("-H")
            .arg(format!("unix://{}", m.dir.join("docker.sock").display()))
            .args(["-H", &format!("tcp://{}:{API_PORT}", m.host)])
            .arg("--data-root")
            .arg(m.dir.join("data"))
            .arg("--exec-root")
            .arg(m.dir.join("x"))
            .arg("--pidfile")
            .arg(m.dir.join("pid"))
            .args([
                "--iptables=false",
                "--bridge=none",
                "--storage-driver=vfs",
                "--shutdown-timeout=2",
            ])
            .current_dir(&m.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            // Its own process group: the stop signals it and nothing of the test's.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {DOCKERD}: {e} ({INSTALL})"));
        self.managers[i].child = Some(child);
    }

    fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if http::get(self.api(i), "/_ping").is_ok_and(|r| r.status == 200) {
                return;
            }
            if let Some(child) = self.managers[i].child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("dockerd m{} exited with {status}:\n{}", i + 1, self.logs());
                }
            }
            assert!(
                Instant::now() < deadline,
                "dockerd m{} did not answer within {START_TIMEOUT:?}:\n{}",
                i + 1,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One Engine API call to manager `i`, JSON in (`Null`: no body) and out.
    fn call(&self, i: usize, method: &str, path: &str, body: Value) -> http::Response {
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        http::request(
            self.api(i),
            method,
            path,
            &[("Content-Type", "application/json")],
            &body,
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("{method} {path} on m{}: {e}", i + 1))
    }

    fn stop(&mut self, i: usize) {
        let Some(mut child) = self.managers[i].child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            terminate_group(&mut child, STOP_TIMEOUT);
        }
        kill_group(child);
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        // All at once: a manager waiting for its peers on shutdown is not kept waiting.
        for i in 0..self.managers.len() {
            if let Some(child) = self.managers[i].child.as_ref() {
                signal_group(child.id(), libc::SIGTERM);
            }
        }
        for i in 0..self.managers.len() {
            self.stop(i);
        }
        let Some(dir) = self.dir.take() else {
            return;
        };
        sweep(dir.path());
        unmount_under(dir.path());
        if !self.gwbridge_existed && gwbridge_exists() {
            let deleted = Command::new("ip")
                .args(["link", "delete", GWBRIDGE])
                .status();
            if !deleted.is_ok_and(|s| s.success()) {
                eprintln!(
                    "swarm: cannot delete the {GWBRIDGE} interface: ip link delete {GWBRIDGE}"
                );
            }
        }
        if let Err(e) = std::fs::remove_dir_all(dir.path()) {
            eprintln!("swarm: cannot remove {}: {e}", dir.path().display());
        }
        std::mem::forget(dir);
    }
}

/// Whether the host has the `docker_gwbridge` interface swarm mode creates.
pub fn gwbridge_exists() -> bool {
    Path::new("/sys/class/net").join(GWBRIDGE).exists()
}

/// What a dropped swarm left behind under `dir`: processes whose command line names it, and
/// mount points under it. Empty when the cleanup worked.
pub fn leftovers(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rfind(')')
                .and_then(|i| stat.get(i + 2..i + 3))
                .is_some_and(|s| s == "Z");
            if cmdline.contains(&needle) && !zombie {
                found.push(format!("process {pid}: {cmdline}"));
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for point in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
        if point.starts_with(&needle) {
            found.push(format!("mount {point}"));
        }
    }
    found
}
