//! The access policy's settings (docs/policy.md): `--allow`, `--read-only`, `--deny`,
//! `--bind-mounts` and the `[[listener]]` tables of the --config file, turned into one
//! [`PolicySettings`] per client listener; and [`Policies`], the running policies, built
//! from them at start and again on SIGHUP.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use super::cli::{Cli, ListenerTable};
use super::error::{invalid, ConfigError};
use super::{ListenAddr, Mode, Settings};
use crate::policy::owner::OwnerLabel;
use crate::policy::path::clean_fs_path;
use crate::policy::{DenyRule, Policy, PolicyError, PolicySet, PolicySettings, Section};

/// The policy options as text, from the top level or from one `[[listener]]` table.
struct PolicyText {
    allow: Option<String>,
    read_only: Option<bool>,
    deny: Option<String>,
    bind_mounts: Option<String>,
    owner_label: Option<String>,
    policy_rego: Option<String>,
}

/// The policy options of the command line, the environment and the file, taken out of
/// [`Cli`] before the rest of it is resolved.
pub(super) struct Options {
    global: PolicyText,
    tables: Vec<ListenerTable>,
}

impl Options {
    pub(super) fn take(cli: &mut Cli) -> Self {
        Self {
            global: PolicyText {
                allow: cli.allow.take(),
                read_only: cli.read_only.take(),
                deny: cli.deny.take(),
                bind_mounts: cli.bind_mounts.take(),
                owner_label: cli.owner_label.take(),
                policy_rego: cli.policy_rego.take(),
            },
            tables: std::mem::take(&mut cli.listener),
        }
    }
}

/// The listeners and the policy of each: `listen` (the global policy) followed by the
/// `[[listener]]` addresses (each its own). An address in both takes its table's policy.
/// With tables and no `listen`, the tables are the only listeners.
pub(super) fn listeners(
    listen: Vec<ListenAddr>,
    listen_given: bool,
    options: Options,
    mode: Mode,
) -> Result<(Vec<ListenAddr>, Vec<PolicySettings>), ConfigError> {
    if mode == Mode::Tcp {
        refuse_in_tcp_mode(&options)?;
    }
    let global = settings(&options.global, None)?;
    let mut tables = Vec::new();
    for table in &options.tables {
        tables.push(table_settings(table)?);
    }
    let mut addrs = if listen_given || tables.is_empty() {
        listen
    } else {
        Vec::new()
    };
    let mut policies = vec![global; addrs.len()];
    for (addr, policy) in tables {
        match addrs.iter().position(|a| *a == addr) {
            Some(at) => policies[at] = policy,
            None => {
                addrs.push(addr);
                policies.push(policy);
            }
        }
    }
    Ok((addrs, policies))
}

/// A policy with `--mode tcp` is refused: L4 cannot see requests.
fn refuse_in_tcp_mode(options: &Options) -> Result<(), ConfigError> {
    let text = &options.global;
    let given = [
        ("allow", text.allow.clone()),
        ("read-only", text.read_only.map(|b| b.to_string())),
        ("deny", text.deny.clone()),
        ("bind-mounts", text.bind_mounts.clone()),
        ("owner-label", text.owner_label.clone()),
        ("policy-rego", text.policy_rego.clone()),
    ]
    .into_iter()
    .find_map(|(flag, value)| value.map(|v| (flag, v)))
    .or_else(|| {
        options
            .tables
            .first()
            .map(|t| ("listen", format!("[[listener]] {}", t.address)))
    });
    match given {
        Some((flag, value)) => Err(invalid(
            flag,
            &value,
            "an access policy needs --mode http: in --mode tcp the proxy cannot see requests",
        )),
        None => Ok(()),
    }
}

fn table_settings(table: &ListenerTable) -> Result<(ListenAddr, PolicySettings), ConfigError> {
    let addr = ListenAddr::parse(&table.address).ok_or_else(|| {
        invalid(
            "listen",
            &table.address,
            "a [[listener]] address must be HOST:PORT or unix:///PATH",
        )
    })?;
    let text = PolicyText {
        allow: table.allow.clone(),
        read_only: table.read_only,
        deny: table.deny.clone(),
        bind_mounts: table.bind_mounts.clone(),
        owner_label: table.owner_label.clone(),
        policy_rego: table.policy_rego.clone(),
    };
    let policy = settings(&text, Some(&table.address))?;
    Ok((addr, policy))
}

/// Checks one policy's text; `table` names the `[[listener]]` it came from, for messages.
fn settings(text: &PolicyText, table: Option<&str>) -> Result<PolicySettings, ConfigError> {
    let place = |reason: String| match table {
        Some(address) => format!("{reason} (in the [[listener]] table of {address})"),
        None => reason,
    };
    let allow = match &text.allow {
        None => None,
        Some(value) => {
            let mut sections = BTreeSet::new();
            for name in items(value) {
                let section = Section::parse(name).ok_or_else(|| {
                    let names: Vec<_> = Section::ALL.iter().map(|s| s.name()).collect();
                    invalid(
                        "allow",
                        value,
                        place(format!(
                            "unknown section {name:?}; the sections are {}",
                            names.join(", ")
                        )),
                    )
                })?;
                sections.insert(section);
            }
            Some(sections)
        }
    };
    let mut deny = BTreeSet::new();
    if let Some(value) = &text.deny {
        for name in items(value) {
            let rule = DenyRule::parse(name).ok_or_else(|| {
                let names: Vec<_> = DenyRule::ALL.iter().map(|r| r.name()).collect();
                invalid(
                    "deny",
                    value,
                    place(format!(
                        "unknown rule {name:?}; the rules are {}",
                        names.join(", ")
                    )),
                )
            })?;
            deny.insert(rule);
        }
    }
    let bind_mounts = match &text.bind_mounts {
        None => None,
        Some(value) if value.trim() == "none" => Some(Vec::new()),
        Some(value) => {
            let mut paths = Vec::new();
            for path in items(value) {
                let clean = clean_fs_path(path).ok_or_else(|| {
                    invalid(
                        "bind-mounts",
                        value,
                        place(format!("{path:?} is not an absolute path (or `none`)")),
                    )
                })?;
                paths.push(clean);
            }
            if paths.is_empty() {
                return Err(invalid(
                    "bind-mounts",
                    value,
                    place("expected absolute paths, or `none`".to_string()),
                ));
            }
            Some(paths)
        }
    };
    let owner_label = match &text.owner_label {
        None => None,
        Some(value) => Some(OwnerLabel::parse(value).map_err(|e| {
            let reason = place(e.reason.clone());
            policy_error(PolicyError { reason, ..e })
        })?),
    };
    let policy_rego = match &text.policy_rego {
        None => None,
        Some(value) if value.trim().is_empty() => {
            return Err(invalid(
                "policy-rego",
                value,
                place("expected a file".to_string()),
            ))
        }
        Some(value) => Some(PathBuf::from(value)),
    };
    Ok(PolicySettings {
        allow,
        read_only: text.read_only.unwrap_or(false),
        deny,
        bind_mounts,
        owner_label,
        policy_rego,
    })
}

/// The entries of a comma-separated list, trimmed, empty ones dropped.
fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn policy_error(e: PolicyError) -> ConfigError {
    invalid(e.flag, &e.value, e.reason)
}

/// The running policies of the client listeners, one per `Settings::listen` entry.
pub struct Policies {
    set: Arc<PolicySet>,
    listen: Vec<ListenAddr>,
}

impl Policies {
    /// Builds every listener's policy (a file that cannot work is a bad setting: exit 2).
    pub fn build(settings: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            set: Arc::new(PolicySet::new(build_all(settings)?)),
            listen: settings.listen.clone(),
        })
    }

    /// The set the listeners read.
    pub fn set(&self) -> &Arc<PolicySet> {
        &self.set
    }

    /// SIGHUP: every listener's policy from `settings` (read again), all or none: on an
    /// error the policies in force stay. The listeners themselves are not rebound: when
    /// `settings` name other listeners (a change that needs a restart, logged as such by
    /// `reload`), which policy belongs to which running listener is unknown, so the
    /// policies in force stay too (`Ok(false)`); `Ok(true)` when they were replaced.
    pub fn reload(&self, settings: &Settings) -> Result<bool, ConfigError> {
        if settings.listen != self.listen {
            return Ok(false);
        }
        self.set.replace(build_all(settings)?);
        Ok(true)
    }
}

fn build_all(settings: &Settings) -> Result<Vec<Policy>, ConfigError> {
    settings
        .listen_policy
        .iter()
        .map(|p| Policy::build(p).map_err(policy_error))
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::{file, load, path, URL};
    use crate::policy::{DenyRule, Section};

    #[test]
    fn flags_make_the_global_policy_and_bad_values_name_their_flag() {
        let s = load(&[
            "--allow",
            "containers,images,archive",
            "--read-only",
            "--deny",
            "privileged,cap-add",
            "--bind-mounts",
            "/srv//ci/,/tmp",
            URL,
        ])
        .unwrap();
        let p = &s.listen_policy[0];
        assert_eq!(p.allow.as_ref().unwrap().len(), 3);
        assert!(p.allow.as_ref().unwrap().contains(&Section::Archive));
        assert!(p.read_only);
        assert!(p.deny.contains(&DenyRule::CapAdd));
        assert_eq!(
            p.bind_mounts.as_deref(),
            Some(&["/srv/ci".to_string(), "/tmp".to_string()][..])
        );
        assert_eq!(
            load(&["--bind-mounts", "none", URL]).unwrap().listen_policy[0].bind_mounts,
            Some(vec![])
        );
        assert!(load(&[URL]).unwrap().listen_policy[0].is_open());
        for (flag, value) in [
            ("--allow", "containers,nope"),
            ("--deny", "root"),
            ("--bind-mounts", "srv"),
        ] {
            let e = load(&[flag, value, URL]).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains(flag), "{e}");
        }
        let e = load(&["--mode", "tcp", "--read-only", URL]).unwrap_err();
        assert!(
            e.to_string().contains("--read-only") && e.to_string().contains("--mode http"),
            "{e}"
        );
    }

    #[test]
    fn owner_label_and_policy_rego_are_checked_at_start() {
        let s = load(&["--owner-label", "ci=job-1", URL]).unwrap();
        let label = s.listen_policy[0].owner_label.as_ref().expect("label");
        assert_eq!(label.filter(), "ci=job-1");
        for bad in ["ci", "=x", "ci=", "a b=c"] {
            let e = load(&["--owner-label", bad, URL]).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains("--owner-label"), "{e}");
        }
        let e = load(&["--mode", "tcp", "--owner-label", "ci=x", URL]).unwrap_err();
        assert!(e.to_string().contains("--owner-label"), "{e}");
        // The file is read when the policy is built: at start and on SIGHUP.
        let s = load(&["--policy-rego", "/nonexistent/authz.rego", URL]).unwrap();
        let e = super::Policies::build(&s).err().expect("a missing file");
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--policy-rego"), "{e}");
        let f = file(
            "listen = [\"127.0.0.1:1\"]\n\
             [[listener]]\naddress = \"unix:///tmp/ci.sock\"\nowner-label = \"ci=job-2\"\n",
        );
        let s = load(&["--config", path(&f), "--owner-label", "ci=other", URL]).unwrap();
        let labels: Vec<_> = s
            .listen_policy
            .iter()
            .map(|p| p.owner_label.as_ref().map(|l| l.filter()))
            .collect();
        assert_eq!(
            labels,
            [Some("ci=other".to_string()), Some("ci=job-2".to_string())]
        );
    }

    #[test]
    fn listener_tables_replace_the_global_policy_for_their_address() {
        let f = file(
            "allow = [\"containers\"]\nlisten = [\"127.0.0.1:1\"]\n\
             [[listener]]\naddress = \"unix:///tmp/ci.sock\"\ndeny = \"privileged\"\n\
             [[listener]]\naddress = \"127.0.0.1:1\"\nread-only = true\n",
        );
        let s = load(&["--config", path(&f), URL]).unwrap();
        assert_eq!(s.listen.len(), 2);
        assert!(s.listen_policy[0].read_only && s.listen_policy[0].allow.is_none());
        assert_eq!(s.listen[1].to_string(), "unix:///tmp/ci.sock");
        assert!(s.listen_policy[1].deny.contains(&DenyRule::Privileged));
        assert!(s.listen_policy[1].allow.is_none());
        let only = file("[[listener]]\naddress = \"unix:///tmp/ci.sock\"\nallow = \"nope\"\n");
        let e = load(&["--config", path(&only), URL])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--allow") && e.contains("[[listener]]"), "{e}");
        let tables_only = file("[[listener]]\naddress = \"unix:///tmp/ci.sock\"\n");
        assert_eq!(
            load(&["--config", path(&tables_only), URL])
                .unwrap()
                .listen
                .len(),
            1
        );
    }
}
