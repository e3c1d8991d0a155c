//! What the unit tests of every part of the configuration share: loading from a command
//! line and an environment map (never the process environment, which tests running in
//! parallel would race on), and config files in temporary files.

use std::collections::HashMap;

use super::{load_from, ConfigError, Settings};

/// A DISCOVERY that every check accepts.
pub const URL: &str = "etcd://127.0.0.1:2379/swarm";

pub fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `leader-proxy` followed by `rest`.
pub fn args(rest: &[&str]) -> Vec<String> {
    std::iter::once("leader-proxy")
        .chain(rest.iter().copied())
        .map(str::to_string)
        .collect()
}

pub fn load(rest: &[&str]) -> Result<Settings, ConfigError> {
    load_from(args(rest), &HashMap::new())
}

pub fn load_env(rest: &[&str], vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    load_from(args(rest), &env(vars))
}

/// The message of the error `rest` must be refused with.
pub fn err(rest: &[&str]) -> String {
    err_env(rest, &[])
}

/// The message of the error `rest` and `vars` must be refused with.
pub fn err_env(rest: &[&str], vars: &[(&str, &str)]) -> String {
    match load_env(rest, vars) {
        Ok(settings) => panic!("{rest:?} {vars:?} was accepted: {settings:?}"),
        Err(e) => e.to_string(),
    }
}

/// A `.toml` file holding `text`, deleted when dropped.
pub fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    f
}

pub fn path(f: &tempfile::NamedTempFile) -> &str {
    f.path().to_str().unwrap()
}
