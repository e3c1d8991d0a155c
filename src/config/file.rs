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
pub(super) fn layer(path: &Path) -> Result<(Cli, BTreeMap<String, Secret>), ConfigError> {
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
fn parse(text: &str) -> Result<(Cli, BTreeMap<String, Secret>), String> {
    let file: Cli = toml::from_str(text).map_err(|err| err.to_string())?;
    let opts = discovery_opts::parse(&file.discovery_opt, "in the --config file")
        .map_err(|err| err.to_string())?;
    Ok((file, opts))
}

const LISTEN_SHAPE: &str =
    "listen must be an address string or a list of them, like listen = [\"127.0.0.1:2375\"]";

/// `listen`: one address or a list of them.
pub(super) fn listen<'de, D: Deserializer<'de>>(file: D) -> Result<Vec<String>, D::Error> {
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

/// `max-held`: a TOML number, or a string holding one, kept as text so that it is checked
/// the way the flag's value is.
pub(super) fn max_held<'de, D: Deserializer<'de>>(file: D) -> Result<Option<String>, D::Error> {
    Ok(Some(match toml::Value::deserialize(file)? {
        toml::Value::String(text) => text,
        number => number.to_string(),
    }))
}

/// `discovery-opt`: the flag's `K=V` entries, or a table of `K = "V"` whose dotted keys
/// (`kv.username = …`, which TOML nests) are joined back with `.`.
pub(super) fn discovery_opt<'de, D: Deserializer<'de>>(file: D) -> Result<Vec<Secret>, D::Error> {
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
    use crate::config::test_support::{err, file, load, path, URL};
    use crate::config::{cli, ListenAddr};
    use crate::discovery::Scheme;

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

    #[test]
    fn errors_name_the_key() {
        let f = file("hold_timeout = \"30s\"\n");
        let e = err(&["--config", path(&f), URL]);
        assert!(e.starts_with("invalid --config file "), "{e}");
        assert!(e.contains("hold_timeout"), "{e}");
        let f = file("hold-timeout = 30\n");
        let e = err(&["--config", path(&f), URL]);
        assert!(e.contains("hold-timeout"), "{e}");
        let f = file("hold-timeout = \"30\"\n");
        let e = err(&["--config", path(&f), URL]);
        assert!(
            e.contains("for --hold-timeout (also LEADER_PROXY_HOLD_TIMEOUT / hold-timeout)"),
            "{e}"
        );
        let e = err(&["--config", "/nonexistent/leader-proxy.toml", URL]);
        assert!(
            e.starts_with("cannot read the --config file /nonexistent/leader-proxy.toml"),
            "{e}"
        );
        // Only the flags and the environment name the file.
        let f = file("config = \"other.toml\"\n");
        let e = err(&["--config", path(&f), URL]);
        assert!(e.contains("unknown field `config`"), "{e}");
    }

    #[test]
    fn shapes_only_a_file_can_give() {
        for bad in ["listen = 5", "listen = [\"127.0.0.1:1\", 2]"] {
            let f = file(bad);
            let e = err(&["--config", path(&f), URL]);
            assert!(
                e.contains("listen must be an address string or a list"),
                "{bad}: {e}"
            );
        }
        let f = file("max-held = 1.5\n");
        assert!(err(&["--config", path(&f), URL]).contains("for --max-held"));
        let f = file("max-held = -1\n");
        assert!(err(&["--config", path(&f), URL]).contains("for --max-held"));
        let f = file("max-held = \"12\"\nlisten = \"localhost:9\"\n");
        let s = load(&["--config", path(&f), URL]).unwrap();
        assert_eq!(s.max_held, 12);
        assert_eq!(s.listen, [ListenAddr::Tcp("127.0.0.1:9".parse().unwrap())]);

        for bad in [
            "discovery-opt = \"a=b\"",
            "discovery-opt = [1]",
            "[discovery-opt]\na = [1]",
            "[discovery-opt]\n\"kv.a=b\" = \"c\"",
        ] {
            let f = file(bad);
            let e = err(&["--config", path(&f), URL]);
            assert!(e.contains("discovery-opt"), "{bad}: {e}");
        }
        let f = file("[discovery-opt]\nkv.port = 2379\nkv.tls = true\n");
        let s = load(&["--config", path(&f), URL]).unwrap();
        assert_eq!(s.discovery_opts["kv.port"].expose(), "2379");
        assert_eq!(s.discovery_opts["kv.tls"].expose(), "true");
    }

    /// The example files load, and every disabled setting in them (`#key = value`) is a key
    /// the file format knows.
    #[test]
    fn example_configs_parse() {
        let examples = [
            ("etcd.toml", Scheme::Etcd),
            ("etcdv3.toml", Scheme::EtcdV3),
            ("zk.toml", Scheme::Zk),
            ("consul.toml", Scheme::Consul),
            ("swarm.toml", Scheme::Swarm),
            ("static.toml", Scheme::Static),
        ];
        for (name, scheme) in examples {
            let file = concat!(env!("CARGO_MANIFEST_DIR"), "/config/").to_string() + name;
            let s = load(&["--config", &file]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(s.discovery.scheme(), scheme, "{name}");
            let text = std::fs::read_to_string(&file).unwrap();
            let mut disabled = 0;
            for line in text.lines() {
                let Some(setting) = line.strip_prefix('#') else {
                    continue;
                };
                if setting.starts_with(|c: char| c.is_ascii_lowercase()) && setting.contains(" = ")
                {
                    disabled += 1;
                    if let Err(e) = parse(setting) {
                        panic!("{name}: {line}: {e}");
                    }
                }
            }
            assert!(disabled >= 10, "{name}: only {disabled} disabled settings");
        }
    }
}
