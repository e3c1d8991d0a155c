//! [`ConfigError`], every way a configuration can be refused, in one type, because the
//! command line contract (docs/cli.md) gives them all one outcome: a message that names the
//! flag, its variable and its file key, and exit status 2.

use std::path::PathBuf;

use super::env::env_name;
use crate::url::UrlError;

/// A configuration leader-proxy refuses. Display is the message for the user; the binary
/// prints `leader-proxy: <message>` and exits with status 2 ([`ConfigError::exit`]).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--help`, `--version`, or a command line clap cannot parse (unknown flag, missing
    /// value): clap prints it and exits with 0 (help, version) or 2.
    #[error("{0}")]
    Clap(#[from] clap::Error),
    #[error(
        "DISCOVERY is required: give it as the argument (like etcd://127.0.0.1:2379/swarm), \
         in LEADER_PROXY_DISCOVERY or as `discovery` in the --config file"
    )]
    MissingDiscovery,
    #[error("invalid DISCOVERY {value:?} (also LEADER_PROXY_DISCOVERY / discovery): {reason}")]
    Discovery { value: String, reason: UrlError },
    /// A value that does not parse; `long` is the flag without `--`.
    #[error("invalid value {value:?} for --{long} (also {} / {long}): {expected}", env_name(.long))]
    Invalid {
        long: String,
        value: String,
        expected: String,
    },
    #[error("--discovery-opt {key} is given twice {origin}")]
    DuplicateOpt { key: String, origin: String },
    #[error(
        "--election contenders is only supported for etcdv3:// and zk:// (DISCOVERY is {0}://)"
    )]
    Contenders(&'static str),
    /// A non-loopback listener or admin address without `--insecure-bind`.
    #[error("{0}")]
    InsecureBind(String),
    #[error("cannot read the --config file {}: {source}", .path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid --config file {}: {message}", .path.display())]
    File { path: PathBuf, message: String },
    /// TLS flags that do not go together (the message names them).
    #[error("{0}")]
    Tls(String),
    #[error("{var}: {message}")]
    Env { var: String, message: String },
}

impl ConfigError {
    /// The exit status: clap's for [`ConfigError::Clap`] (0 for help and version), else 2.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Clap(err) => err.exit_code(),
            _ => 2,
        }
    }

    /// Prints the error the way the command line contract says and exits: clap's own
    /// output for [`ConfigError::Clap`], `leader-proxy: <message>` on stderr and status 2
    /// for the rest.
    pub fn exit(&self) -> ! {
        match self {
            ConfigError::Clap(err) => err.exit(),
            other => {
                eprintln!("leader-proxy: {other}");
                std::process::exit(other.exit_code())
            }
        }
    }
}

/// A value of `--long` that does not parse, whichever source gave it.
pub fn invalid(long: &str, value: &str, expected: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        long: long.to_string(),
        value: value.to_string(),
        expected: expected.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_names_the_flag_its_variable_and_its_file_key() {
        assert_eq!(
            invalid("max-held", "lots", "expected a whole number").to_string(),
            "invalid value \"lots\" for --max-held (also LEADER_PROXY_MAX_HELD / max-held): \
             expected a whole number"
        );
    }
}
