//! [`PolicySettings`]: one listener's policy, typed. `config` builds it from the flags
//! (`--allow`, `--read-only`, `--deny`, `--bind-mounts`, …) or a `[[listener]]` table.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

use super::owner::OwnerLabel;

/// A listener's policy settings. The default changes nothing: every request passes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySettings {
    /// `--allow`: the sections allowed; `None`: all of them.
    pub allow: Option<BTreeSet<Section>>,
    /// `--read-only`: only `GET` and `HEAD`.
    pub read_only: bool,
    /// `--deny`: what create and update bodies may not ask for.
    pub deny: BTreeSet<DenyRule>,
    /// `--bind-mounts`: the directories bind-mount sources must be under, cleaned
    /// (`policy::path::clean_fs_path`); `None`: any, `Some(empty)` (`none`): no bind mount.
    pub bind_mounts: Option<Vec<String>>,
    /// `--owner-label`: the label this listener's objects carry (`policy::owner`).
    pub owner_label: Option<OwnerLabel>,
    /// `--policy-rego`: the Rego file, read when the policy is built (at start and on
    /// SIGHUP) by `policy::rego`.
    pub policy_rego: Option<PathBuf>,
}

impl PolicySettings {
    /// True if no policy setting is given: the listener forwards as without a policy.
    pub fn is_open(&self) -> bool {
        *self == Self::default()
    }
}

/// An API section, docker-socket-proxy's names plus `archive` (README "Policy").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    Archive,
    Auth,
    Build,
    Commit,
    Configs,
    Containers,
    Distribution,
    Events,
    Exec,
    Grpc,
    Images,
    Info,
    Networks,
    Nodes,
    Ping,
    Plugins,
    Secrets,
    Services,
    Session,
    Swarm,
    System,
    Tasks,
    Version,
    Volumes,
}

impl Section {
    pub const ALL: [Section; 24] = [
        Section::Archive,
        Section::Auth,
        Section::Build,
        Section::Commit,
        Section::Configs,
        Section::Containers,
        Section::Distribution,
        Section::Events,
        Section::Exec,
        Section::Grpc,
        Section::Images,
        Section::Info,
        Section::Networks,
        Section::Nodes,
        Section::Ping,
        Section::Plugins,
        Section::Secrets,
        Section::Services,
        Section::Session,
        Section::Swarm,
        Section::System,
        Section::Tasks,
        Section::Version,
        Section::Volumes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Section::Archive => "archive",
            Section::Auth => "auth",
            Section::Build => "build",
            Section::Commit => "commit",
            Section::Configs => "configs",
            Section::Containers => "containers",
            Section::Distribution => "distribution",
            Section::Events => "events",
            Section::Exec => "exec",
            Section::Grpc => "grpc",
            Section::Images => "images",
            Section::Info => "info",
            Section::Networks => "networks",
            Section::Nodes => "nodes",
            Section::Ping => "ping",
            Section::Plugins => "plugins",
            Section::Secrets => "secrets",
            Section::Services => "services",
            Section::Session => "session",
            Section::Swarm => "swarm",
            Section::System => "system",
            Section::Tasks => "tasks",
            Section::Version => "version",
            Section::Volumes => "volumes",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `--deny` rule: something a container or service body may not ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DenyRule {
    Privileged,
    CapAdd,
    HostNamespaces,
    Devices,
    DockerSocket,
    Unconfined,
}

impl DenyRule {
    pub const ALL: [DenyRule; 6] = [
        DenyRule::Privileged,
        DenyRule::CapAdd,
        DenyRule::HostNamespaces,
        DenyRule::Devices,
        DenyRule::DockerSocket,
        DenyRule::Unconfined,
    ];

    /// The name on the command line, in messages and as the metric's `rule` label.
    pub fn name(self) -> &'static str {
        match self {
            DenyRule::Privileged => "privileged",
            DenyRule::CapAdd => "cap-add",
            DenyRule::HostNamespaces => "host-namespaces",
            DenyRule::Devices => "devices",
            DenyRule::DockerSocket => "docker-socket",
            DenyRule::Unconfined => "unconfined",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }
}
