//! The `--config` file layer: TOML whose keys are the long flag names, unknown keys refused.
//! It is deserialised straight into [`Cli`], the struct the flags are parsed into (serde,
//! kebab-case), so that a new flag is a file key with no code here; only the shapes a file
//! may give that a flag cannot (a lone `listen` string, a `max-held` number, a
//! `discovery-opt` table) have a function below, named on the field in `cli.rs`.
//!
//! ```toml
//! discovery = "etcd://127.0.0.1:2379/swarm"
//! listen = ["127.0.0.1:2375"]          # or one string
//! hold-timeout = "30s"
//! max-held = 10000
//! insecure-bind = false
//! discovery-opt = ["kv.username=swarm"] # the flag's K=V entries, or a table:
//! # [discovery-opt]
//! # kv.username = "swarm"               # dotted keys are joined back: "kv.username"
//! ```
//! Paths in the file are used as written (relative to the working directory).
//! `config/` at the top of the repository has an example per source showing every setting.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::cli::Cli;
use super::error::ConfigError;
use super::{discovery_opts, Secret};

/// Reads and parses the `--config` file: its options, and its `discovery-opt` entries as a
/// map (they are merged per key with the other sources').
pub fn layer(path: &Path) -> Result<(Cli, BTreeMap<String, Secret>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|message| ConfigError::File {
        path: path.to_path_buf(),
        message,
    })
}

/// The text of a config file; the error is the message, the caller names the file.
pub fn parse(text: &str) -> Result<(Cli, BTreeMap<String, Secret>), String> {
    let file: Cli = toml::from_str(text).map_err(|err| err.to_string())?;
    let opts = discovery_opts::parse(&file.discovery_opt, "in the --config file")
        .map_err(|err| err.to_string())?;
    Ok((file, opts))
}

const LISTEN_SHAPE: &str =
    "listen must be an address string or a list of them, like listen = [\"127.0.0.1:2375\"]";

/// `listen`: one address or a list of them.
pub fn listen<'de, D: Deserializer<'de>>(file: D) -> Result<Vec<String>, D::Error> {
    match toml::Value::deserialize(file)? {
        toml::Value::String(one) => Ok(vec![one]),
        toml::Value::Array(many) => many
            .into_iter()
            .map(|item| match item {
                toml::Value::String(s) => Ok(s),
                _ => Err(D::Error::custom(LISTEN_SHAPE)),
            })
            .collect(),
        _ => Err(D::Error::custom(LISTEN_SHAPE)),
    }
}

const LIST_SHAPE: &str = "expected a comma-separated string or a list of strings";

/// The policy lists (`allow`, `deny`, `bind-mounts`): the flag's comma-separated text, or
/// a TOML list of strings, kept as the flag's text so that it is checked the same way.
pub fn comma_list<'de, D: Deserializer<'de>>(file: D) -> Result<Option<String>, D::Error> {
    match toml::Value::deserialize(file)? {
        toml::Value::String(text) => Ok(Some(text)),
        toml::Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                toml::Value::String(s) => Ok(s),
                _ => Err(D::Error::custom(LIST_SHAPE)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|items| Some(items.join(","))),
        _ => Err(D::Error::custom(LIST_SHAPE)),
    }
}

/// `max-held`: a TOML number, or a string holding one, kept as text so that it is checked
/// the way the flag's value is.
pub fn max_held<'de, D: Deserializer<'de>>(file: D) -> Result<Option<String>, D::Error> {
    Ok(Some(match toml::Value::deserialize(file)? {
        toml::Value::String(text) => text,
        number => number.to_string(),
    }))
}

/// `discovery-opt`: the flag's `K=V` entries, or a table of `K = "V"` whose dotted keys
/// (`kv.username = …`, which TOML nests) are joined back with `.`.
pub fn discovery_opt<'de, D: Deserializer<'de>>(file: D) -> Result<Vec<Secret>, D::Error> {
    let mut entries = Vec::new();
    opt_entries(&toml::Value::deserialize(file)?, "", &mut entries).map_err(D::Error::custom)?;
    Ok(entries)
}

/// The entries of a `discovery-opt` value, as `K=V`; `prefix` is the key of the table
/// `value` is in.
fn opt_entries(value: &toml::Value, prefix: &str, out: &mut Vec<Secret>) -> Result<(), String> {
    const SHAPE: &str = "discovery-opt must be a list of \"K=V\" strings or a table of K = \"V\"";
    let entry = |value: String| {
        if prefix.contains('=') {
            // It would be split at that `=`, into another key.
            Err(format!("discovery-opt {prefix:?}: a key cannot hold ="))
        } else {
            Ok(Secret::from(format!("{prefix}={value}")))
        }
    };
    match value {
        toml::Value::Array(items) if prefix.is_empty() => {
            for item in items {
                out.push(Secret::from(item.as_str().ok_or(SHAPE)?.to_string()));
            }
        }
        toml::Value::Table(table) => {
            for (key, value) in table {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                opt_entries(value, &key, out)?;
            }
        }
        _ if prefix.is_empty() => return Err(SHAPE.to_string()),
        toml::Value::String(s) => out.push(entry(s.clone())?),
        toml::Value::Integer(n) => out.push(entry(n.to_string())?),
        toml::Value::Boolean(b) => out.push(entry(b.to_string())?),
        _ => return Err(format!("discovery-opt {prefix}: expected a string value")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::any::TypeId;

    use clap::{ArgAction, CommandFactory, FromArgMatches};

    use super::*;
    use crate::config::cli;

    /// The contract that lets a flag be one field: its file key is its long name and sets
    /// exactly what the flag sets.
    #[test]
    fn every_flag_is_the_file_key_of_its_long_name() {
        for arg in Cli::command().get_arguments() {
            if matches!(arg.get_action(), ArgAction::Help | ArgAction::Version) {
                continue;
            }
            let key = arg.get_long().unwrap_or("discovery");
            let (in_file, on_command_line) =
                if arg.get_value_parser().type_id() == TypeId::of::<bool>() {
                    ("true", "true")
                } else if matches!(arg.get_action(), ArgAction::Append) {
                    ("[\"k=v\"]", "k=v")
                } else {
                    ("\"k=v\"", "k=v")
                };
            let argv = match arg.get_long() {
                Some(long) => [
                    "leader-proxy".to_string(),
                    format!("--{long}={on_command_line}"),
                ],
                None => ["leader-proxy".to_string(), on_command_line.to_string()],
            };
            let matches = cli::command().try_get_matches_from(argv).unwrap();
            let from_flag = Cli::from_arg_matches(&matches).unwrap();
            let text = format!("{key} = {in_file}");
            if key == "config" {
                let e = parse(&text).unwrap_err();
                assert!(e.contains("unknown field `config`"), "{e}");
                continue;
            }
            let (from_file, _) = parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(from_file, from_flag, "{text}");
        }
    }
}
