//! The environment layer: every option also reads `LEADER_PROXY_` + its long name in upper
//! snake case (`LEADER_PROXY_HOLD_TIMEOUT`), DISCOVERY reads `LEADER_PROXY_DISCOVERY`
//! (docs/cli.md). The variables are declared with clap's `env` on [`Cli`] and found here
//! through clap's introspection, so a new flag gets its variable with no code here; clap
//! itself does not read them (see [`super::cli::command`]): this layer does, from the
//! process or from a map a test passes in, and hands them to the same parser as the flags.
//!
//! Rules:
//! - the variable of a repeatable option (`--listen`, `--discovery-opt`) is a comma-separated
//!   list (on the command line a comma is part of the value);
//! - an empty variable counts as unset;
//! - boolean options take `1/0`, `true/false`, `yes/no`, `on/off`.

use std::any::TypeId;
use std::collections::HashMap;

use clap::{ArgAction, ArgMatches, CommandFactory};

use super::cli::{self, Cli};
use super::error::{invalid, ConfigError};

/// Prefix of every variable.
pub const ENV_PREFIX: &str = "LEADER_PROXY_";

/// The variable of a long flag: `hold-timeout` → `LEADER_PROXY_HOLD_TIMEOUT`.
pub fn env_name(long: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        long.to_ascii_uppercase().replace('-', "_")
    )
}

/// The `LEADER_PROXY_*` variables of the process.
pub fn process_env() -> Result<HashMap<String, String>, ConfigError> {
    let mut env = HashMap::new();
    for (var, value) in std::env::vars_os() {
        let Some(var) = var.to_str() else { continue };
        if !var.starts_with(ENV_PREFIX) {
            continue;
        }
        let value = value.into_string().map_err(|_| ConfigError::Env {
            var: var.to_string(),
            message: "not valid UTF-8".to_string(),
        })?;
        env.insert(var.to_string(), value);
    }
    Ok(env)
}

/// The environment as the matches of a command line: each variable becomes the flag it
/// stands for, parsed by the same command as the command line, so a value is checked the
/// same way whichever source gave it.
pub fn layer(env: &HashMap<String, String>) -> Result<ArgMatches, ConfigError> {
    let mut argv = vec!["leader-proxy".to_string()];
    let mut discovery = None;
    for EnvVar { var, long, kind } in env_vars() {
        let Some(value) = env.get(&var).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        let Some(long) = long else {
            discovery = Some(value.clone());
            continue;
        };
        match kind {
            EnvKind::List => argv.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| format!("--{long}={item}")),
            ),
            // Parsed here rather than by clap, whose error could not name the flag.
            EnvKind::Bool => {
                let on = parse_bool(value).ok_or_else(|| {
                    invalid(&long, value, "expected true or false (1/0, yes/no, on/off)")
                })?;
                argv.push(format!("--{long}={on}"));
            }
            EnvKind::Single => argv.push(format!("--{long}={value}")),
        }
    }
    if let Some(discovery) = discovery {
        // After `--`, so that a value starting with `-` is not taken for a flag.
        argv.push("--".to_string());
        argv.push(discovery);
    }
    cli::command()
        .try_get_matches_from(argv)
        .map_err(|err| ConfigError::Env {
            var: ENV_PREFIX.to_string() + "*",
            message: err.kind().to_string(),
        })
}

/// One option's variable.
struct EnvVar {
    var: String,
    /// The flag it stands for; `None` for DISCOVERY, the positional argument.
    long: Option<String>,
    kind: EnvKind,
}

/// How a variable is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EnvKind {
    /// One value.
    Single,
    /// A comma-separated list (repeatable options).
    List,
    /// A boolean (`1/0`, `true/false`, `yes/no`, `on/off`).
    Bool,
}

/// Every option that reads the environment, from [`Cli`]'s clap definition.
fn env_vars() -> Vec<EnvVar> {
    Cli::command()
        .get_arguments()
        .filter_map(|arg| {
            let var = arg.get_env()?.to_string_lossy().into_owned();
            let kind = if arg.get_value_parser().type_id() == TypeId::of::<bool>() {
                EnvKind::Bool
            } else if matches!(arg.get_action(), ArgAction::Append) {
                EnvKind::List
            } else {
                EnvKind::Single
            };
            let long = arg.get_long().map(str::to_string);
            Some(EnvVar { var, long, kind })
        })
        .collect()
}

/// The words clap's `BoolishValueParser` takes on the command line.
fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "y" | "t" => Some(true),
        "0" | "false" | "no" | "off" | "n" | "f" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        let vars = env_vars();
        for EnvVar { var, long, .. } in &vars {
            match long {
                Some(long) => assert_eq!(*var, env_name(long), "--{long}"),
                None => assert_eq!(var, "LEADER_PROXY_DISCOVERY"),
            }
        }
        // Every option but --help and --version has a variable.
        let options = Cli::command()
            .get_arguments()
            .filter(|a| !matches!(a.get_action(), ArgAction::Help | ArgAction::Version))
            .count();
        assert_eq!(vars.len(), options);
        let kind = |long: &str| {
            vars.iter()
                .find(|v| v.long.as_deref() == Some(long))
                .map(|v| v.kind)
        };
        assert_eq!(kind("listen"), Some(EnvKind::List));
        assert_eq!(kind("discovery-opt"), Some(EnvKind::List));
        assert_eq!(kind("insecure-bind"), Some(EnvKind::Bool));
        assert_eq!(kind("tlsverify"), Some(EnvKind::Bool));
        assert_eq!(kind("hold-timeout"), Some(EnvKind::Single));
    }
}
