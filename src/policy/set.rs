//! [`PolicySet`]: the policy of every client listener, replaced whole on SIGHUP. A listener
//! holds a [`ListenerPolicy`] (the set and its own place in it) and loads its policy once
//! per request: one atomic load, no lock.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Policy;

/// One policy per client listener, in the order of the listeners.
pub struct PolicySet {
    policies: ArcSwap<Vec<Arc<Policy>>>,
}

impl PolicySet {
    pub fn new(policies: Vec<Policy>) -> Self {
        Self {
            policies: ArcSwap::from_pointee(policies.into_iter().map(Arc::new).collect()),
        }
    }

    /// Replaces every listener's policy at once; requests already checked are not checked
    /// again.
    pub fn replace(&self, policies: Vec<Policy>) {
        self.policies
            .store(Arc::new(policies.into_iter().map(Arc::new).collect()));
    }

    /// What the listener at `index` (its place in the listener list) enforces.
    pub fn listener(self: &Arc<Self>, index: usize) -> ListenerPolicy {
        ListenerPolicy {
            set: self.clone(),
            index,
        }
    }
}

/// The policy of one listener, as its connections see it.
#[derive(Clone)]
pub struct ListenerPolicy {
    set: Arc<PolicySet>,
    index: usize,
}

impl ListenerPolicy {
    /// A listener without a policy (tests, `--mode tcp`).
    pub fn open() -> Self {
        Arc::new(PolicySet::new(vec![Policy::default()])).listener(0)
    }

    /// The policy in force now.
    pub fn current(&self) -> Option<Arc<Policy>> {
        self.set.policies.load().get(self.index).cloned()
    }
}
