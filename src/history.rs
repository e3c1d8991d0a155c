//! The last leader changes, for `GET /leader/history` and `leader-proxy status`.
//!
//! The router records one [`Change`] each time what the proxy follows changes: a leader is
//! adopted or lost, the store goes away or comes back, a value is refused, the managers
//! contradict the store. Only the last [`CAPACITY`] are kept, so a flapping election costs
//! a bounded amount of memory. The reasons are a fixed list (docs/cli.md, "status"), so
//! that alerts and scripts can match them.
//!
//! It holds plain names and texts, so it knows no other module's types (layer 1 of
//! docs/architecture.md).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

/// How many changes are kept.
pub const CAPACITY: usize = 100;

/// Why what the proxy follows changed. The names are a contract (docs/cli.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A new leader was adopted (the first one included).
    Elected,
    /// The leader is gone: its key expired or was deleted, the election is open.
    Expired,
    /// The store became unreachable; the last leader is kept.
    Degraded,
    /// The store answers again after an outage.
    Recovered,
    /// A value the store holds was refused (not an address, not allowed, the proxy itself,
    /// a name that does not resolve); the last leader is kept.
    Refused,
    /// `--verify-leader`: the managers contradict the store.
    Disagreement,
    /// `--verify-leader`: the managers agree with the store again.
    Agreement,
}

impl Reason {
    /// Every reason, for the check that docs/cli.md lists them all.
    pub const ALL: [Reason; 7] = [
        Reason::Elected,
        Reason::Expired,
        Reason::Degraded,
        Reason::Recovered,
        Reason::Refused,
        Reason::Disagreement,
        Reason::Agreement,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Elected => "elected",
            Reason::Expired => "expired",
            Reason::Degraded => "degraded",
            Reason::Recovered => "recovered",
            Reason::Refused => "refused",
            Reason::Disagreement => "disagreement",
            Reason::Agreement => "agreement",
        }
    }
}

/// One change: the leader before and after (the same when only the state changed) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub time: SystemTime,
    pub from: Option<String>,
    pub to: Option<String>,
    pub reason: Reason,
    /// What the reason alone does not say: why the store is unreachable, which value was
    /// refused and why, how the managers disagree. Never a secret (the events carry none).
    pub detail: Option<String>,
}

/// The last [`CAPACITY`] changes, oldest first. Written only from the router's event path,
/// read by the admin API: a mutex held for a push or a copy is enough.
#[derive(Default)]
pub struct History {
    changes: Mutex<VecDeque<Change>>,
}

impl History {
    pub fn record(&self, change: Change) {
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        if changes.len() == CAPACITY {
            changes.pop_front();
        }
        changes.push_back(change);
    }

    /// The changes kept, oldest first.
    pub fn changes(&self) -> Vec<Change> {
        let changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        changes.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(to: usize) -> Change {
        Change {
            time: SystemTime::now(),
            from: None,
            to: Some(to.to_string()),
            reason: Reason::Elected,
            detail: None,
        }
    }

    /// The list is a contract: docs/cli.md's table of reasons names each one.
    #[test]
    fn every_reason_is_documented() {
        let doc = include_str!("../docs/cli.md");
        for reason in Reason::ALL {
            let row = format!("| `{}` |", reason.as_str());
            assert!(doc.contains(&row), "docs/cli.md lacks the row {row}");
        }
    }

    #[test]
    fn keeps_the_last_hundred_oldest_first() {
        let history = History::default();
        for i in 0..CAPACITY + 5 {
            history.record(change(i));
        }
        let kept = history.changes();
        assert_eq!(kept.len(), CAPACITY);
        assert_eq!(kept[0].to.as_deref(), Some("5"));
        assert_eq!(kept[CAPACITY - 1].to.as_deref(), Some("104"));
    }
}
