//! The access policy: what a client may ask of the Docker API through a listener
//! (docs/policy.md, issue 14). It sits between `router` and `proxy` (docs/architecture.md)
//! and knows no connection or pingora type: the front (`proxy::front`) turns each request
//! head into a [`Call`], asks the listener's [`Policy`], and forwards what the policy
//! passed (the normalised path, a rewritten query or body) or answers the [`Deny`].
//!
//! A [`Policy`] is a chain of [`Check`]s; a request passes only if every one passes. The
//! checks, in the order they run:
//! - [`sections::Sections`]: `--allow` and `--read-only` (method and API section);
//! - [`body::BodyRules`]: `--deny` and `--bind-mounts` (the create/update bodies);
//! - [`rego::RegoPolicy`]: `--policy-rego`, over the request as the client sent it;
//! - [`owner::Ownership`]: `--owner-label`, last, since it rewrites the [`Call`] (a label
//!   added to a create body, a label filter merged into `filters`) and asks the current
//!   leader about objects through [`Inspect`], which only a request every other check
//!   passed is worth.

pub mod body;
pub mod call;
pub mod owner;
pub mod path;
pub mod rego;
pub mod sections;
pub mod set;
pub mod settings;

use async_trait::async_trait;

pub use call::{Call, Deny};
pub use set::{ListenerPolicy, PolicySet};
pub use settings::{DenyRule, PolicySettings, Section};

/// The largest request body read to check it (`413` beyond): create and update bodies are
/// a few KiB; anything streamed (build contexts, `load`, archive uploads) is never read.
pub const MAX_BODY: usize = 1024 * 1024;

/// A question a check asks the current leader about an object, answered by the proxy layer
/// (`proxy::inspect`), which sends it to the leader the requests go to.
#[async_trait]
pub trait Inspect: Send + Sync {
    /// `GET path` (as `/containers/ID/json`, no version prefix) at the current leader:
    /// `Ok(Some(body))` on `200`, `Ok(None)` on `404`.
    async fn get_json(&self, path: &str) -> Result<Option<serde_json::Value>, InspectError>;
}

/// An [`Inspect`] question that got no answer: the request is refused (`502`), never passed
/// unchecked.
#[derive(Debug, thiserror::Error)]
#[error("asking the leader {path}: {reason}")]
pub struct InspectError {
    pub path: String,
    pub reason: String,
}

/// One rule of a [`Policy`].
#[async_trait]
pub trait Check: Send + Sync {
    /// Whether this check needs the request's JSON body (read up to [`MAX_BODY`]); called
    /// on the normalised call before its body is read.
    fn wants_body(&self, call: &Call) -> bool;

    /// `Ok` to let the call go on (possibly rewritten), or why it is refused.
    async fn check(&self, call: &mut Call, inspect: &dyn Inspect) -> Result<(), Deny>;
}

/// What a listener enforces: every check in turn. An empty policy (no policy setting) is
/// what every listener has by default, and the front then skips the policy entirely.
#[derive(Default)]
pub struct Policy {
    checks: Vec<Box<dyn Check>>,
}

/// A policy setting that cannot work; the message names the flag (exit 2 at start, the old
/// policy kept on SIGHUP).
#[derive(Debug, thiserror::Error)]
#[error("invalid value {value:?} for --{flag}: {reason}")]
pub struct PolicyError {
    /// The flag without `--`.
    pub flag: &'static str,
    pub value: String,
    pub reason: String,
}

impl Policy {
    /// The checks `settings` ask for, in the order of the module docs.
    pub fn build(settings: &PolicySettings) -> Result<Self, PolicyError> {
        let mut checks: Vec<Box<dyn Check>> = Vec::new();
        if let Some(sections) = sections::Sections::new(settings) {
            checks.push(Box::new(sections));
        }
        if let Some(rules) = body::BodyRules::new(settings) {
            checks.push(Box::new(rules));
        }
        if let Some(file) = &settings.policy_rego {
            checks.push(Box::new(rego::RegoPolicy::load(file)?));
        }
        if let Some(label) = &settings.owner_label {
            checks.push(Box::new(owner::Ownership::new(label.clone())));
        }
        Ok(Self { checks })
    }

    /// No check at all: requests pass untouched, unparsed.
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// Whether any check needs `call`'s body.
    pub fn wants_body(&self, call: &Call) -> bool {
        self.checks.iter().any(|check| check.wants_body(call))
    }

    /// Runs every check; the first refusal ends it.
    pub async fn check(&self, call: &mut Call, inspect: &dyn Inspect) -> Result<(), Deny> {
        for check in &self.checks {
            check.check(call, inspect).await?;
        }
        Ok(())
    }
}
