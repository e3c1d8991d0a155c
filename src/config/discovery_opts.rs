//! `--discovery-opt K=V`, the store options. Unlike every other option they are not taken
//! whole from the highest source but merged per key, so that an operator can keep the
//! credentials in the environment and the rest in the file; this module holds that rule.

use std::collections::BTreeMap;

use super::error::{invalid, ConfigError};
use super::Secret;

/// The `K=V` entries one source gave, as a map; `origin` names the source in the errors
/// ("on the command line"). A key given twice in one source is refused: which one was
/// meant cannot be known.
pub(super) fn parse(
    entries: &[Secret],
    origin: &str,
) -> Result<BTreeMap<String, Secret>, ConfigError> {
    let mut opts = BTreeMap::new();
    for entry in entries {
        let (key, value) = match entry.expose().split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => (key.trim().to_string(), value),
            _ => {
                return Err(invalid(
                    "discovery-opt",
                    entry.expose(),
                    format!("expected K=V, like kv.username=swarm ({origin})"),
                ))
            }
        };
        if opts
            .insert(key.clone(), Secret::from(value.to_string()))
            .is_some()
        {
            return Err(ConfigError::DuplicateOpt {
                key,
                origin: origin.to_string(),
            });
        }
    }
    Ok(opts)
}

/// The options of every source, lowest first, merged per key: a key from a higher source
/// replaces the same key from a lower one, and keys only a lower source gives are kept.
pub(super) fn merge(
    sources: impl IntoIterator<Item = BTreeMap<String, Secret>>,
) -> BTreeMap<String, Secret> {
    sources.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{err, err_env, file, load, load_env, path, URL};

    #[test]
    fn merged_per_key_flags_over_env_over_file() {
        let f = file(
            "[discovery-opt]\nkv.username = \"file\"\nkv.cacertfile = \"/ca.pem\"\n\"kv.keyfile\" = \"/key.pem\"\n",
        );
        let s = load_env(
            &[
                "--discovery-opt",
                "kv.username=flag",
                "--config",
                path(&f),
                URL,
            ],
            &[(
                "LEADER_PROXY_DISCOVERY_OPT",
                "kv.password=env, kv.username=env",
            )],
        )
        .unwrap();
        let expected: BTreeMap<String, String> = [
            ("kv.cacertfile", "/ca.pem"),
            ("kv.keyfile", "/key.pem"),
            ("kv.password", "env"),
            ("kv.username", "flag"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(s.source_config(None).options, expected);

        let f = file("discovery-opt = [\"kv.username=x\", \"kv.password=y=z\"]\n");
        let s = load(&["--config", path(&f), URL]).unwrap();
        assert_eq!(s.discovery_opts["kv.password"].expose(), "y=z");
    }

    #[test]
    fn bad_entries_name_the_source() {
        let e = err(&["--discovery-opt", "kv.username", URL]);
        assert!(
            e.contains("invalid value \"kv.username\" for --discovery-opt"),
            "{e}"
        );
        assert!(e.contains("expected K=V"), "{e}");
        assert!(err(&["--discovery-opt", "=x", URL]).contains("\"=x\""));
        let e = err(&["--discovery-opt", "a=1", "--discovery-opt", "a=2", URL]);
        assert_eq!(e, "--discovery-opt a is given twice on the command line");
        let e = err_env(&[URL], &[("LEADER_PROXY_DISCOVERY_OPT", "kv.password=a,b")]);
        assert!(e.contains("invalid value \"b\" for --discovery-opt"), "{e}");
        assert!(e.contains("a comma separates its entries"), "{e}");
        let f = file("discovery-opt = [\"nokey\"]");
        assert!(err(&["--config", path(&f), URL]).contains("\"nokey\""));
    }
}
