//! `--discovery manual`: a manager whose view of the election a test sets by hand, for the
//! sources that ask the managers themselves instead of a store (leader-proxy's `static://`
//! and `swarm://`).
//!
//! - As a classic Swarm manager (`static://`): `GET /info` carries `SystemStatus`
//!   `["Role", "primary"|"replica"]` and `["Primary", ADDR]` as set, or exactly the raw body a
//!   test set (a garbage answer).
//! - As a swarm-mode manager (`swarm://`): `GET /nodes` answers the status and body a test
//!   set: a node list like dockerd's (the leader with `ManagerStatus.Leader: true` and its
//!   Raft `Addr`), 503 "The swarm does not have a leader", or garbage (so does any other
//!   method on `/nodes` and `/nodes/…`). Unset, it answers 503
//!   "This node is not a swarm manager", as a dockerd outside a swarm does.
//!
//! The state is set with `POST /_sim/state` and a JSON body whose fields each replace that
//! part of the state (absent fields are kept; `null` clears `info` and `nodes`):
//! `{"role": "primary"|"replica", "primary": "ADDR", "info": "RAW" | null,
//!   "nodes": {"status": 200, "body": "RAW"} | null}`. The answer is the whole state.
//! With `--state FILE` the state is saved there and read back at start, so a manager
//! killed and restarted answers as before (a test restarting "unreachable" managers
//! expects them back as they were, not as new replicas). Starts as a replica naming no
//! primary.

use serde::{Deserialize, Serialize};

use super::*;

/// A canned answer: status and raw body.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Canned {
    pub status: u16,
    pub body: String,
}

/// What a manual manager says; see the module docs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Manual {
    pub primary_role: bool,
    pub primary: String,
    pub info: Option<String>,
    pub nodes: Option<Canned>,
}

impl Manual {
    fn to_json(&self) -> Value {
        json!({
            "role": if self.primary_role { "primary" } else { "replica" },
            "primary": self.primary,
            "info": self.info,
            "nodes": self.nodes,
        })
    }
}

/// Reads the saved state, if any (a missing or unreadable file: the initial state).
pub(crate) fn manual_load(path: Option<&PathBuf>) -> Manual {
    path.and_then(|p| std::fs::read(p).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Applies a loaded or updated state to what every answer shows (`X-Role`, `Primary`).
pub(crate) fn manual_apply(st: &State, manual: &Manual) {
    st.set_role(manual.primary_role);
    st.set_primary(Some(manual.primary.clone()).filter(|p| !p.is_empty()));
}

/// `POST /_sim/state`.
pub(crate) async fn manual_set(conn: &mut Conn, st: &Arc<State>, head: &Head) -> Result<Next> {
    let mut body = Vec::new();
    conn.read_body(head, |b| body.extend_from_slice(b)).await?;
    let update: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return send_json(
                conn,
                st,
                head,
                400,
                json!({"message": "expected a JSON object"}),
            )
            .await
        }
    };
    let result = (|| -> Result<Manual> {
        let mut manual = st.manual()?.clone();
        if let Some(role) = update.get("role") {
            manual.primary_role = match role.as_str() {
                Some("primary") => true,
                Some("replica") => false,
                _ => bail!("role: expected \"primary\" or \"replica\""),
            };
        }
        if let Some(primary) = update.get("primary") {
            manual.primary = primary
                .as_str()
                .ok_or_else(|| anyhow!("primary: expected a string"))?
                .to_string();
        }
        if let Some(info) = update.get("info") {
            manual.info = match info {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                _ => bail!("info: expected a string or null"),
            };
        }
        if let Some(nodes) = update.get("nodes") {
            manual.nodes = match nodes {
                Value::Null => None,
                other => Some(serde_json::from_value(other.clone()).context("nodes")?),
            };
        }
        Ok(manual)
    })();
    let manual = match result {
        Ok(m) => m,
        Err(e) => {
            return send_json(conn, st, head, 400, json!({"message": format!("{e:#}")})).await
        }
    };
    if let Some(path) = &st.state_file {
        let text = serde_json::to_vec(&manual)?;
        // Written whole then renamed: a restart never reads half a state.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).context("writing the state file")?;
        std::fs::rename(&tmp, path).context("renaming the state file")?;
    }
    manual_apply(st, &manual);
    let answer = manual.to_json();
    *st.manual_mut()? = manual;
    info!(name = %st.name, state = %answer, "state set by hand");
    send_json(conn, st, head, 200, answer).await
}

/// `GET /info` of a manual manager: the raw body a test set, if any.
pub(crate) fn manual_info(st: &State) -> Option<String> {
    st.manual().ok().and_then(|m| m.info.clone())
}

/// `GET /nodes` of a manual manager.
pub(crate) fn manual_nodes(st: &State) -> Canned {
    st.manual()
        .ok()
        .and_then(|m| m.nodes.clone())
        .unwrap_or_else(|| Canned {
            status: 503,
            body: json!({
                "message": "This node is not a swarm manager. Use \"docker swarm init\" or \
                            \"docker swarm join\" to connect this node to swarm and try again."
            })
            .to_string(),
        })
}
