//! Docker swarm mode (`swarm://h:p[,h:p]`): the election is Raft inside the managers' dockerd,
//! with no store to watch, so the managers are asked `GET /nodes` every `--probe-interval`.
//!
//! What a manager answers (observed with dockerd 20.10): the swarm's nodes, the leader's with
//! `ManagerStatus: {"Leader": true, "Addr": "<raft address>:2377"}`. Any manager answers: a
//! follower forwards the call to the leader. The leader's Docker API is taken to be the host
//! of its Raft address with the port of a DISCOVERY entry: the port of the entry with that
//! host if there is one, else the port of the entry that answered (the managers usually all
//! listen on one port, 2375 or 2376). So the API must listen on the address the managers
//! advertise for Raft (`--advertise-addr`), as it does with `-H tcp://0.0.0.0:2375`.
//!
//! During an election a follower holds `GET /nodes` until there is a leader again (about
//! ten seconds with dockerd's defaults: election tick 10 × 1 s), and answers the moment the
//! new leader is known: a probe waiting on a live follower is the fastest way to hear of the
//! new leader, which is why probes are allowed `--connect-timeout` + 5 s to answer. A manager
//! that answers 503 "The swarm does not have a leader" says the election is open; it is
//! believed only if no other manager names a leader (a restarted manager says it while it
//! catches up with a cluster that has one).
//!
//! The last manager that named the leader is asked first: one request per interval while
//! all is well. When it does not name one, the others are asked at once and the first to
//! name a leader ends the round: during an election every live follower holds the probe, so
//! whichever hears of the new leader first tells it, and no follower's reply timeout is
//! waited out before the next is asked. One that refuses, times out or is no manager (503
//! "This node is not a swarm manager", a worker or a node that left) is skipped.
//! None answering is an outage (`Degraded`, the last leader kept). An answer that is not a
//! node list, two leaders, or a leader without a usable Raft address is garbage: rejected
//! (counted), the next manager asked, the last leader kept.

use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{
    error_message, excerpt, managers, refuse_options, run, Garbage, Manager, Poller, Prober, Round,
    Verdict,
};
use crate::discovery::{
    Election, LeaderAddr, LeaderEvent, LeaderSource, SourceConfig, SourceError, ValueError,
};

/// What a manager says in the body of a 503 while its swarm has no leader (dockerd's
/// `errNoLeader`, "The swarm does not have a leader. It's possible that too few managers are
/// online. Make sure more than half of the managers are online.").
pub const NO_LEADER_MESSAGE: &str = "does not have a leader";

/// Follows a swarm's Raft leader by asking its managers.
pub struct SwarmSource {
    poller: SwarmPoller,
    interval: std::time::Duration,
}

impl SwarmSource {
    pub fn new(config: SourceConfig) -> Result<Self, SourceError> {
        if config.election == Election::Contenders {
            return Err(SourceError::Unsupported(
                "--election contenders is not available for swarm:// (the managers name their \
                 Raft leader); use --election key"
                    .into(),
            ));
        }
        refuse_options("swarm", &config.options)?;
        Ok(Self {
            poller: SwarmPoller {
                managers: managers(&config.url, config.upstream_tls.is_some())?,
                prober: Prober::new(config.connect_timeout, config.upstream_tls)?,
                preferred: 0,
            },
            interval: config.probe_interval,
        })
    }
}

#[async_trait]
impl LeaderSource for SwarmSource {
    async fn run(self: Box<Self>, events: mpsc::Sender<LeaderEvent>) {
        let this = *self;
        run(this.poller, this.interval, "swarm", &events).await;
    }
}

struct SwarmPoller {
    managers: Vec<Manager>,
    prober: Prober,
    /// The manager asked first: the last one that named the leader.
    preferred: usize,
}

#[async_trait]
impl Poller for SwarmPoller {
    async fn poll(&mut self) -> Round {
        let mut round = Round::default();
        let preferred = self.preferred;
        let first = self.ask(preferred).await;
        if let Some(raft) = self.take(&mut round, preferred, first) {
            return self.lead(round, &raft, preferred);
        }
        let count = self.managers.len();
        let this: &Self = self;
        let mut asking: FuturesUnordered<_> = (1..count)
            .map(|step| (preferred + step) % count)
            .map(|index| async move { (index, this.ask(index).await) })
            .collect();
        let mut named = None;
        while let Some((index, answer)) = asking.next().await {
            if let Some(raft) = this.take(&mut round, index, answer) {
                named = Some((raft, index));
                break;
            }
        }
        // The others' probes are dropped unanswered: the round has its leader.
        drop(asking);
        match named {
            Some((raft, index)) => self.lead(round, &raft, index),
            None => round,
        }
    }
}

impl SwarmPoller {
    /// Manager `index`'s answer to `GET /nodes`, or why there is none.
    async fn ask(&self, index: usize) -> Result<Nodes, String> {
        let manager = &self.managers[index];
        match self.prober.get(manager, "/nodes").await {
            Ok(answer) => Ok(read_nodes(answer.status, &answer.body)),
            Err(e) => Err(format!("{}: {e}", manager.addr)),
        }
    }

    /// Notes manager `index`'s answer in `round`; the leader's Raft address if it named one.
    fn take(
        &self,
        round: &mut Round,
        index: usize,
        answer: Result<Nodes, String>,
    ) -> Option<LeaderAddr> {
        match answer {
            Ok(Nodes::Leader(raft)) => return Some(raft),
            Ok(Nodes::NoLeader) => round.verdict = Some(Verdict::NoLeader),
            Ok(Nodes::Unusable(why)) => round
                .failures
                .push(format!("{}: {why}", self.managers[index].addr)),
            Ok(Nodes::Garbage(garbage)) => round.garbage.push(garbage),
            Err(failure) => round.failures.push(failure),
        }
        None
    }

    /// Ends `round` with the leader manager `index` named; it is asked first next time.
    fn lead(&mut self, mut round: Round, raft: &LeaderAddr, index: usize) -> Round {
        round.verdict = Some(Verdict::Leader(self.api_address(raft, index)));
        self.preferred = index;
        round
    }

    /// The leader's Docker API: the host of its Raft address, with the port of the
    /// DISCOVERY entry naming that host, else of the entry that answered.
    fn api_address(&self, raft: &LeaderAddr, answered: usize) -> LeaderAddr {
        let port = self
            .managers
            .iter()
            .find(|m| m.addr.host().eq_ignore_ascii_case(raft.host()))
            .unwrap_or(&self.managers[answered])
            .addr
            .port();
        LeaderAddr::new(raft.host(), port)
    }
}

/// What one manager's answer to `GET /nodes` says.
#[derive(Debug, PartialEq, Eq)]
enum Nodes {
    /// The leader's Raft address (`host:2377`).
    Leader(LeaderAddr),
    /// 503 "The swarm does not have a leader", or a node list without a leader.
    NoLeader,
    /// This manager cannot answer the question (not a manager, an HTTP error): skip it.
    Unusable(String),
    Garbage(Garbage),
}

#[derive(Deserialize)]
struct Node {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "ManagerStatus", default)]
    manager_status: Option<ManagerStatus>,
}

#[derive(Deserialize)]
struct ManagerStatus {
    #[serde(rename = "Leader", default)]
    leader: bool,
    #[serde(rename = "Addr", default)]
    addr: Option<String>,
}

fn read_nodes(status: u16, body: &[u8]) -> Nodes {
    match status {
        200 => {}
        503 => {
            let message = error_message(body);
            return if message.contains(NO_LEADER_MESSAGE) {
                Nodes::NoLeader
            } else {
                Nodes::Unusable(format!("GET /nodes: 503 {message}"))
            };
        }
        _ => return Nodes::Unusable(format!("GET /nodes: HTTP {status} {}", error_message(body))),
    }
    let garbage = |value: String, why: &str| {
        Nodes::Garbage(Garbage {
            value,
            reason: ValueError::Answer(format!("GET /nodes: {why}")),
        })
    };
    let nodes: Vec<Node> = match serde_json::from_slice(body) {
        Ok(nodes) => nodes,
        Err(e) => return garbage(excerpt(body), &format!("not a node list: {e}")),
    };
    let leaders: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.manager_status.as_ref().is_some_and(|s| s.leader))
        .collect();
    let leader = match leaders[..] {
        [] => return Nodes::NoLeader,
        [leader] => leader,
        _ => {
            let ids: Vec<&str> = leaders.iter().map(|n| n.id.as_str()).collect();
            return garbage(
                excerpt(body),
                &format!("{} nodes claim to lead: {}", ids.len(), ids.join(", ")),
            );
        }
    };
    let addr = leader
        .manager_status
        .as_ref()
        .and_then(|s| s.addr.clone())
        .unwrap_or_default();
    match LeaderAddr::parse(&addr) {
        Ok(raft) => Nodes::Leader(raft),
        Err(reason) => Nodes::Garbage(Garbage {
            value: addr.chars().take(200).collect(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = r#"[
      {"ID": "a905", "Spec": {"Role": "manager"}, "Status": {"State": "ready", "Addr": "127.0.0.1"},
       "ManagerStatus": {"Reachability": "reachable", "Addr": "127.0.0.22:2377"}},
      {"ID": "w1", "Spec": {"Role": "worker"}, "Status": {"State": "ready", "Addr": "10.0.0.9"}},
      {"ID": "s1p8", "Spec": {"Role": "manager"}, "Status": {"State": "ready", "Addr": "127.0.0.21"},
       "ManagerStatus": {"Leader": true, "Reachability": "reachable", "Addr": "127.0.0.21:2377"}}
    ]"#;

    #[test]
    fn reads_the_leader_as_dockerd_lists_it() {
        assert_eq!(
            read_nodes(200, NODES.as_bytes()),
            Nodes::Leader(LeaderAddr::new("127.0.0.21", 2377))
        );
        let v6 = r#"[{"ID":"x","ManagerStatus":{"Leader":true,"Addr":"[fd00::1]:2377"}}]"#;
        assert_eq!(
            read_nodes(200, v6.as_bytes()),
            Nodes::Leader(LeaderAddr::new("fd00::1", 2377))
        );
    }

    #[test]
    fn tells_no_leader_from_not_a_manager() {
        let no_leader = br#"{"message":"rpc error: code = Unknown desc = The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online."}"#;
        assert_eq!(read_nodes(503, no_leader), Nodes::NoLeader);
        let worker = br#"{"message":"This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state."}"#;
        assert!(
            matches!(read_nodes(503, worker), Nodes::Unusable(m) if m.contains("not a swarm manager"))
        );
        assert!(matches!(
            read_nodes(404, b"page not found"),
            Nodes::Unusable(_)
        ));
        assert_eq!(
            read_nodes(
                200,
                br#"[{"ID":"a","ManagerStatus":{"Addr":"10.0.0.1:2377"}}]"#
            ),
            Nodes::NoLeader
        );
    }

    #[test]
    fn garbage_is_named() {
        for body in [
            "garbage",
            r#"{"a":1}"#,
            r#"[{"ID":"a","ManagerStatus":{"Leader":true,"Addr":"10.0.0.1:2377"}},
                {"ID":"b","ManagerStatus":{"Leader":true,"Addr":"10.0.0.2:2377"}}]"#,
            r#"[{"ID":"a","ManagerStatus":{"Leader":true}}]"#,
            r#"[{"ID":"a","ManagerStatus":{"Leader":true,"Addr":"10.0.0.1"}}]"#,
            r#"[{"ID":"a","ManagerStatus":{"Leader":true,"Addr":"http://10.0.0.1:2377/x"}}]"#,
        ] {
            assert!(
                matches!(read_nodes(200, body.as_bytes()), Nodes::Garbage(_)),
                "{body}"
            );
        }
    }

    #[test]
    fn api_port_from_the_entry_with_the_leaders_host() {
        let url =
            crate::discovery::DiscoveryUrl::parse("swarm://10.0.0.1:2375,10.0.0.2:2376").unwrap();
        let poller = SwarmPoller {
            managers: managers(&url, false).unwrap(),
            prober: Prober::new(std::time::Duration::from_secs(1), None).unwrap(),
            preferred: 0,
        };
        let raft = |h: &str| LeaderAddr::new(h, 2377);
        assert_eq!(
            poller.api_address(&raft("10.0.0.2"), 0).to_string(),
            "10.0.0.2:2376"
        );
        // A host the URL does not name: the port of the entry that answered.
        assert_eq!(
            poller.api_address(&raft("10.0.0.3"), 1).to_string(),
            "10.0.0.3:2376"
        );
        assert_eq!(
            poller.api_address(&raft("10.0.0.3"), 0).to_string(),
            "10.0.0.3:2375"
        );
    }
}
