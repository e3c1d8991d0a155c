//! Classic Swarm without its store (`static://h:p[,h:p]`): when the proxy may not reach the
//! store the managers elect in, each manager is asked `GET /info` every `--probe-interval`,
//! and the one that says it is primary leads.
//!
//! What a classic Swarm manager answers: `SystemStatus`, a list of pairs, among them
//! `["Role", "primary"|"replica"]` and `["Primary", "<the primary's advertise address>"]`
//! (replicas name the primary they forward to). The leader's address is the DISCOVERY entry
//! of the manager that says `primary`: that is where the proxy reached it.
//!
//! All managers are asked at once, each round, because one answer is not enough: two
//! managers can claim to be primary at the same time (classic Swarm issue 1413: a primary
//! that lost its lock without noticing). Then the one the other managers name as `Primary`
//! is followed (a manager's vote for itself does not count; `Primary` is compared with the
//! DISCOVERY entries as `host:port`), on a tie the current leader is kept if it is among
//! them, else the first in DISCOVERY order; the disagreement is logged once.
//!
//! No manager saying `primary`: the election is open (`NoLeader`), unless an answer was
//! garbage (the primary may be the one answering garbage: the last leader is kept). An
//! answer that is not JSON or has no usable `Role` is garbage: rejected and counted, once
//! per distinct answer. No manager answering at all is an outage (`Degraded`, the last
//! leader kept). A manager answering an HTTP error is skipped for that round.

use async_trait::async_trait;
use futures::future::join_all;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::warn;

use super::{
    error_message, excerpt, managers, refuse_options, run, Garbage, Manager, Poller, Prober, Round,
    Verdict,
};
use crate::discovery::{
    Election, LeaderAddr, LeaderEvent, LeaderSource, SourceConfig, SourceError, ValueError,
};

/// Follows the classic Swarm primary by asking every manager.
pub struct StaticSource {
    poller: StaticPoller,
    interval: std::time::Duration,
}

impl StaticSource {
    pub fn new(config: SourceConfig) -> Result<Self, SourceError> {
        if config.election == Election::Contenders {
            return Err(SourceError::Unsupported(
                "--election contenders is not available for static:// (each manager says \
                 whether it is primary); use --election key"
                    .into(),
            ));
        }
        refuse_options("static", &config.options)?;
        Ok(Self {
            poller: StaticPoller {
                managers: managers(&config.url, config.upstream_tls.is_some())?,
                prober: Prober::new(config.connect_timeout, config.upstream_tls)?,
                current: None,
                disagreement: None,
            },
            interval: config.probe_interval,
        })
    }
}

#[async_trait]
impl LeaderSource for StaticSource {
    async fn run(self: Box<Self>, events: mpsc::Sender<LeaderEvent>) {
        let this = *self;
        run(this.poller, this.interval, "static", &events).await;
    }
}

struct StaticPoller {
    managers: Vec<Manager>,
    prober: Prober,
    /// The manager followed now, to keep it on a tie.
    current: Option<usize>,
    /// The last disagreement logged, so it is logged once, not at every poll.
    disagreement: Option<String>,
}

/// What one manager says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::discovery) struct Status {
    pub primary: bool,
    /// Who it names as `Primary` (empty or unparsable: nobody).
    pub names: Option<LeaderAddr>,
}

#[async_trait]
impl Poller for StaticPoller {
    async fn poll(&mut self) -> Round {
        let answers = join_all(
            self.managers
                .iter()
                .map(|manager| self.prober.get(manager, "/info")),
        )
        .await;
        let mut round = Round::default();
        let mut statuses: Vec<Option<Status>> = Vec::with_capacity(self.managers.len());
        for (manager, answer) in self.managers.iter().zip(answers) {
            let status = match answer {
                Err(e) => Err(format!("{}: {e}", manager.addr)),
                Ok(answer) if answer.status != 200 => Err(format!(
                    "{}: GET /info: HTTP {} {}",
                    manager.addr,
                    answer.status,
                    error_message(&answer.body)
                )),
                Ok(answer) => match read_info(&answer.body) {
                    Ok(status) => Ok(status),
                    Err(garbage) => {
                        round.garbage.push(garbage);
                        statuses.push(None);
                        continue;
                    }
                },
            };
            match status {
                Ok(status) => statuses.push(Some(status)),
                Err(failure) => {
                    round.failures.push(failure);
                    statuses.push(None);
                }
            }
        }
        round.verdict = self.choose(&statuses, !round.garbage.is_empty());
        round
    }
}

impl StaticPoller {
    /// The verdict from what each manager said (`None`: no usable answer from it).
    fn choose(&mut self, statuses: &[Option<Status>], garbage: bool) -> Option<Verdict> {
        let claimants: Vec<usize> = statuses
            .iter()
            .enumerate()
            .filter(|(_, s)| s.as_ref().is_some_and(|s| s.primary))
            .map(|(i, _)| i)
            .collect();
        let chosen = match claimants[..] {
            [] => {
                self.current = None;
                // A manager answering garbage may be the primary: keep the last leader.
                let answered = statuses.iter().any(Option::is_some);
                return (answered && !garbage).then_some(Verdict::NoLeader);
            }
            [only] => {
                self.disagreement = None;
                only
            }
            _ => self.settle(statuses, &claimants),
        };
        self.current = Some(chosen);
        Some(Verdict::Leader(self.managers[chosen].addr.clone()))
    }

    /// Several managers claim to be primary: the one the others name wins.
    fn settle(&mut self, statuses: &[Option<Status>], claimants: &[usize]) -> usize {
        let votes = |candidate: usize| {
            statuses
                .iter()
                .enumerate()
                .filter(|(voter, s)| {
                    *voter != candidate
                        && s.as_ref().and_then(|s| s.names.as_ref())
                            == Some(&self.managers[candidate].addr)
                })
                .count()
        };
        let most = claimants.iter().map(|&c| votes(c)).max().unwrap_or(0);
        let best: Vec<usize> = claimants
            .iter()
            .copied()
            .filter(|&c| votes(c) == most)
            .collect();
        let chosen = match self.current {
            Some(current) if best.contains(&current) => current,
            _ => best[0],
        };
        let names = |list: &[usize]| {
            list.iter()
                .map(|&i| self.managers[i].addr.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let said: Vec<String> = statuses
            .iter()
            .zip(&self.managers)
            .filter_map(|(s, m)| {
                let s = s.as_ref()?;
                let named = s.names.as_ref().map_or("-".to_string(), |a| a.to_string());
                Some(format!("{} names {named}", m.addr))
            })
            .collect();
        let disagreement = format!(
            "{} claim to be primary ({}); following {}",
            names(claimants),
            said.join(", "),
            self.managers[chosen].addr
        );
        if self.disagreement.as_ref() != Some(&disagreement) {
            warn!(
                "several classic Swarm managers claim to be primary (classic Swarm issue 1413): \
                 {disagreement}, {} the others name as Primary",
                if most > 0 { "which" } else { "though none is" }
            );
            self.disagreement = Some(disagreement);
        }
        chosen
    }
}

/// Reads `SystemStatus` Role and Primary from a classic Swarm `GET /info` answer.
pub(in crate::discovery) fn read_info(body: &[u8]) -> Result<Status, Garbage> {
    let garbage = |why: String| Garbage {
        value: excerpt(body),
        reason: ValueError::Answer(format!("GET /info: {why}")),
    };
    let info: Value =
        serde_json::from_slice(body).map_err(|e| garbage(format!("not JSON: {e}")))?;
    let pairs = info
        .get("SystemStatus")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            garbage("no SystemStatus: not a classic Swarm manager (swarm mode is swarm://)".into())
        })?;
    let field = |key: &str| {
        pairs.iter().find_map(|pair| {
            let pair = pair.as_array()?;
            match (pair.first()?.as_str(), pair.get(1)?.as_str()) {
                (Some(k), Some(v)) if k.trim() == key => Some(v.trim()),
                _ => None,
            }
        })
    };
    let role = field("Role").ok_or_else(|| garbage("no Role in SystemStatus".into()))?;
    let primary = if role.eq_ignore_ascii_case("primary") {
        true
    } else if role.eq_ignore_ascii_case("replica") {
        false
    } else {
        return Err(garbage(format!(
            "Role {:?} is neither primary nor replica",
            role.chars().take(50).collect::<String>()
        )));
    };
    Ok(Status {
        primary,
        names: field("Primary").and_then(|p| LeaderAddr::parse(p).ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poller(url: &str) -> StaticPoller {
        let url = crate::discovery::DiscoveryUrl::parse(url).unwrap();
        StaticPoller {
            managers: managers(&url, false).unwrap(),
            prober: Prober::new(std::time::Duration::from_secs(1), None).unwrap(),
            current: None,
            disagreement: None,
        }
    }

    fn status(primary: bool, names: &str) -> Option<Status> {
        Some(Status {
            primary,
            names: LeaderAddr::parse(names).ok(),
        })
    }

    fn leader(v: Option<Verdict>) -> String {
        match v {
            Some(Verdict::Leader(a)) => a.to_string(),
            Some(Verdict::NoLeader) => "none".into(),
            None => "keep".into(),
        }
    }

    #[test]
    fn reads_role_and_primary() {
        let body = br#"{"ID":"x","SystemStatus":[["Role","replica"],["Primary","10.0.0.1:2375"],
            ["Strategy","spread"],["Nodes","2"],["  \u2514 Status","Healthy"]]}"#;
        assert_eq!(
            read_info(body),
            Ok(Status {
                primary: false,
                names: LeaderAddr::parse("10.0.0.1:2375").ok()
            })
        );
        let primary = br#"{"SystemStatus":[["Role","primary"],["Strategy","spread"]]}"#;
        assert_eq!(
            read_info(primary),
            Ok(Status {
                primary: true,
                names: None
            })
        );
    }

    #[test]
    fn garbage_is_named() {
        for body in [
            "garbage",
            r#"{"a":1}"#,
            r#"{"SystemStatus":null}"#,
            r#"{"SystemStatus":[["Strategy","spread"]]}"#,
            r#"{"SystemStatus":[["Role","banana"]]}"#,
            r#"[1,2]"#,
        ] {
            assert!(read_info(body.as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn one_primary_none_and_garbage() {
        let mut p = poller("static://10.0.0.1:2375,10.0.0.2:2375,10.0.0.3:2375");
        let m1 = "10.0.0.1:2375";
        let statuses = [status(false, m1), status(true, "10.0.0.2:2375"), None];
        assert_eq!(leader(p.choose(&statuses, false)), "10.0.0.2:2375");
        let statuses = [status(false, ""), status(false, ""), None];
        assert_eq!(leader(p.choose(&statuses, false)), "none");
        assert_eq!(leader(p.choose(&statuses, true)), "keep");
        assert_eq!(leader(p.choose(&[None, None, None], false)), "keep");
    }

    #[test]
    fn two_primaries_the_one_the_others_name_wins() {
        let mut p = poller("static://10.0.0.1:2375,10.0.0.2:2375,10.0.0.3:2375");
        let (m1, m2) = ("10.0.0.1:2375", "10.0.0.2:2375");
        // m1 still believes it is primary; m2 won, and m3 follows m2.
        let statuses = [status(true, m1), status(true, m2), status(false, m2)];
        assert_eq!(leader(p.choose(&statuses, false)), m2);
        // The other way round.
        let statuses = [status(true, m1), status(true, m2), status(false, m1)];
        assert_eq!(leader(p.choose(&statuses, false)), m1);
        // A tie keeps the current one.
        let statuses = [status(true, m1), status(true, m2), status(false, "")];
        assert_eq!(leader(p.choose(&statuses, false)), m1);
        p.current = Some(1);
        assert_eq!(leader(p.choose(&statuses, false)), m2);
        // Nobody current: the first in DISCOVERY order.
        p.current = None;
        assert_eq!(leader(p.choose(&statuses, false)), m1);
    }
}
