//! `leader-proxy status [--admin ADDR]`: what a running proxy follows, from its admin API
//! (`GET /leader` and `GET /leader/history`), for a person at a terminal. Exit status 0
//! when the proxy answered, 3 when its admin API cannot be reached, 2 on bad input.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;

use super::exit;
use crate::config;

/// How long the admin API may take to answer: it answers from memory at once.
const TIMEOUT: Duration = Duration::from_secs(5);

/// How many of the kept changes are shown, newest first.
const SHOWN_CHANGES: usize = 10;

/// `GET /leader`, the fields shown.
#[derive(Debug, Deserialize)]
pub struct Leader {
    pub leader: Option<String>,
    pub state: String,
    pub since: String,
    pub source: String,
    #[serde(default)]
    pub held: i64,
    #[serde(default)]
    pub disagreement: Option<String>,
}

/// `GET /leader/history`.
#[derive(Debug, Deserialize)]
pub struct History {
    pub changes: Vec<Change>,
}

/// One change of `GET /leader/history`.
#[derive(Debug, Deserialize)]
pub struct Change {
    pub time: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub reason: String,
    #[serde(default)]
    pub detail: Option<String>,
}

/// Why the admin API gave no answer to show.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "cannot ask the admin API at {addr} (is a proxy running with --admin {addr}?): {source}"
    )]
    Unreachable {
        addr: SocketAddr,
        source: reqwest::Error,
    },
    #[error("the admin API at {addr} answered {path} with something else than expected: {reason}")]
    Unexpected {
        addr: SocketAddr,
        path: &'static str,
        reason: String,
    },
}

/// Runs the command; `args` are what follows `status` (the program name first).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let addr = match config::status_admin(args) {
        Ok(addr) => addr,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("leader-proxy status: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ask(addr)) {
        Ok((leader, history)) => {
            print!("{}", render(&leader, &history));
            ExitCode::from(exit::OK)
        }
        Err(e) => {
            eprintln!("leader-proxy status: {e}");
            ExitCode::from(exit::UNREACHABLE)
        }
    }
}

/// Reads `/leader` and `/leader/history` from the admin API at `addr`.
pub async fn ask(addr: SocketAddr) -> Result<(Leader, History), StatusError> {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .no_proxy()
        .build()
        .map_err(|source| StatusError::Unreachable { addr, source })?;
    let leader = get(&client, addr, "/leader").await?;
    let history = get(&client, addr, "/leader/history").await?;
    Ok((leader, history))
}

async fn get<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    addr: SocketAddr,
    path: &'static str,
) -> Result<T, StatusError> {
    let response = client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .map_err(|source| StatusError::Unreachable { addr, source })?;
    let unexpected = |reason: String| StatusError::Unexpected { addr, path, reason };
    if !response.status().is_success() {
        return Err(unexpected(format!("status {}", response.status())));
    }
    let body = response
        .bytes()
        .await
        .map_err(|source| StatusError::Unreachable { addr, source })?;
    serde_json::from_slice(&body).map_err(|e| unexpected(e.to_string()))
}

/// The text `status` prints.
pub fn render(leader: &Leader, history: &History) -> String {
    let mut out = String::new();
    let name = |leader: &Option<String>| leader.clone().unwrap_or_else(|| "none".into());
    let _ = writeln!(out, "leader:  {}", name(&leader.leader));
    let _ = writeln!(out, "state:   {} since {}", leader.state, leader.since);
    let _ = writeln!(out, "source:  {}", leader.source);
    let _ = writeln!(out, "held:    {} requests", leader.held);
    if let Some(how) = &leader.disagreement {
        let _ = writeln!(out, "disagreement: {how}");
    }
    let kept = history.changes.len();
    if kept == 0 {
        let _ = writeln!(out, "changes: none yet");
        return out;
    }
    let shown = kept.min(SHOWN_CHANGES);
    let _ = writeln!(
        out,
        "last changes ({shown} of {kept} kept, newest first; all in GET /leader/history):"
    );
    for change in history.changes.iter().rev().take(shown) {
        let _ = write!(
            out,
            "  {}  {:<12}  {} -> {}",
            change.time,
            change.reason,
            name(&change.from),
            name(&change.to)
        );
        match &change.detail {
            Some(detail) => {
                let _ = writeln!(out, "  ({detail})");
            }
            None => out.push('\n'),
        }
    }
    out
}
