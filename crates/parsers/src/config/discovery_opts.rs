//! `--discovery-opt K=V`, the store options. Unlike every other option they are not taken
//! whole from the highest source but merged per key, so that an operator can keep the
//! credentials in the environment and the rest in the file; this module holds that rule.

use std::collections::BTreeMap;

use super::error::{invalid, ConfigError};
use super::Secret;

/// The `K=V` entries one source gave, as a map; `origin` names the source in the errors
/// ("on the command line"). A key given twice in one source is refused: which one was
/// meant cannot be known.
pub fn parse(entries: &[Secret], origin: &str) -> Result<BTreeMap<String, Secret>, ConfigError> {
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
pub fn merge(
    sources: impl IntoIterator<Item = BTreeMap<String, Secret>>,
) -> BTreeMap<String, Secret> {
    sources.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(texts: &[&str]) -> Vec<Secret> {
        texts.iter().map(|t| Secret::from(t.to_string())).collect()
    }

    #[test]
    fn keys_are_trimmed_values_kept_whole_and_a_key_twice_refused() {
        let opts = parse(
            &entries(&[" kv.username =swarm", "kv.password=a=b,c"]),
            "here",
        )
        .unwrap();
        assert_eq!(opts["kv.username"].expose(), "swarm");
        assert_eq!(opts["kv.password"].expose(), "a=b,c");
        for bad in ["kv.username", "=x", " =x"] {
            let e = parse(&entries(&[bad]), "on the command line")
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("{bad:?} for --discovery-opt")), "{e}");
            assert!(e.ends_with("(on the command line)"), "{e}");
        }
        let e = parse(&entries(&["a=1", "a=2"]), "in the --config file").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--discovery-opt a is given twice in the --config file"
        );
    }

    #[test]
    fn merge_keeps_the_highest_source_per_key() {
        let file = parse(&entries(&["a=file", "b=file"]), "").unwrap();
        let flags = parse(&entries(&["a=flag"]), "").unwrap();
        let merged = merge([file, flags]);
        assert_eq!(merged["a"].expose(), "flag");
        assert_eq!(merged["b"].expose(), "file");
    }
}
