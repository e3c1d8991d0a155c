//! `leader-proxy leader DISCOVERY`: the current leader, read once with the proxy's own
//! leader source (the same flags, variables and `--config` file), printed on stdout. A
//! leader outside `--allow-leader` is refused as the proxy's router refuses it, so the
//! command names the manager the proxy would route to.
//! Exit status 0 with a leader, 1 without, 3 when the store cannot be reached within
//! `--connect-timeout` plus the store's reply timeout, 2 on bad input.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use tokio::sync::mpsc;

use super::exit;
use crate::config;
use crate::discovery::{AllowList, LeaderAddr, LeaderEvent, LeaderSource, REPLY_TIMEOUT};
use crate::router;
use crate::server;

/// What one read of the election found.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Leader(LeaderAddr),
    /// The election is open.
    NoLeader,
    /// The store holds a value that is not an address.
    Refused {
        value: String,
        reason: String,
    },
    /// The store did not answer (why), or not in time.
    Unreachable(String),
}

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Leader(_) => exit::OK,
            Outcome::NoLeader | Outcome::Refused { .. } => exit::NO_LEADER,
            Outcome::Unreachable(_) => exit::UNREACHABLE,
        }
    }
}

/// Runs the command; `args` are what follows `leader` (the program name first).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let settings = match config::load_leader_from_args(args) {
        Ok(settings) => settings,
        Err(e) => e.exit(),
    };
    let within = settings.connect_timeout + REPLY_TIMEOUT;
    let allow = settings.allow_leader.clone();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("leader-proxy leader: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match server::build(settings) {
            Ok(start) => Ok(admit(read(start.into_source(), within).await, &allow).await),
            Err(e) => Err(e),
        }
    });
    // The store client's tasks are not waited for: the answer is in.
    runtime.shutdown_timeout(Duration::from_millis(200));
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("leader-proxy: {e}");
            return ExitCode::from(exit::BAD_INPUT);
        }
    };
    match &outcome {
        Outcome::Leader(addr) => println!("{addr}"),
        Outcome::NoLeader => eprintln!("leader-proxy leader: no leader: the election is open"),
        Outcome::Refused { value, reason } => eprintln!(
            "leader-proxy leader: no leader: the store holds {value:?}, which the proxy \
             refuses ({reason})"
        ),
        Outcome::Unreachable(reason) => {
            eprintln!("leader-proxy leader: the store cannot be reached: {reason}")
        }
    }
    ExitCode::from(outcome.exit_code())
}

/// The router's `--allow-leader` check ([`router::Router`]): a leader outside the list, or a
/// name that does not resolve when there is a list to check it against, is refused.
async fn admit(outcome: Outcome, allow: &AllowList) -> Outcome {
    let Outcome::Leader(addr) = outcome else {
        return outcome;
    };
    if allow.is_empty() {
        return Outcome::Leader(addr);
    }
    let refused = |reason: String| Outcome::Refused {
        value: addr.to_string(),
        reason,
    };
    match router::resolve(&addr)
        .await
        .and_then(|addresses| allow.admit(&addr, &addresses))
    {
        Ok(()) => Outcome::Leader(addr),
        Err(reason) => refused(reason),
    }
}

/// Follows `source` until its first answer about the leader, for at most `within`.
pub async fn read(source: Box<dyn LeaderSource>, within: Duration) -> Outcome {
    let (events_tx, mut events) = mpsc::channel(16);
    let following = tokio::spawn(source.run(events_tx));
    let outcome = tokio::time::timeout(within, async {
        loop {
            match events.recv().await {
                Some(LeaderEvent::Leader(addr)) => return Outcome::Leader(addr),
                Some(LeaderEvent::NoLeader) => return Outcome::NoLeader,
                Some(LeaderEvent::Degraded(reason)) => return Outcome::Unreachable(reason),
                Some(LeaderEvent::Rejected { value, reason }) => {
                    let value = value.chars().take(200).collect();
                    return Outcome::Refused {
                        value,
                        reason: reason.to_string(),
                    };
                }
                // Only under --verify-leader, which goes on to say who leads.
                Some(LeaderEvent::Disagreement(_)) => continue,
                None => return Outcome::Unreachable("the leader source stopped".into()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Outcome::Unreachable(format!("no answer within {within:?}")));
    following.abort();
    outcome
}
