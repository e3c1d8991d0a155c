//! The configuration: the command line, the environment, the `--config` file and the
//! defaults, layered in that order of precedence and checked, into [`Settings`]. The binary
//! calls [`load_from_args`]. The text layers are pure (text in, text out) and live in
//! crates/parsers/src/config/, the `leader-proxy-parsers` crate that the fuzz targets build
//! without pingora; they are re-exported here under the same names:
//! - `cli.rs`: [`Cli`], the options as text, which the flags are parsed into and the file
//!   is deserialised into, and the `--help` text (a contract, docs/cli.md);
//! - `env.rs`: the `LEADER_PROXY_*` variables, found from [`Cli`]'s clap definition;
//! - `file.rs`: the TOML file;
//! - `discovery_opts.rs`: `--discovery-opt`, the one option merged per key;
//! - `error.rs`: [`ConfigError`]; `secret.rs`: [`Secret`], for what must not be printed.
//!
//! Here, what needs the typed settings:
//! - `resolve.rs`: text to typed [`Settings`], with the defaults;
//! - `policy.rs`: which listeners may open and which TLS options go together;
//! - `access.rs`: the access policy per listener (`--allow`, `--deny`, …, `[[listener]]`)
//!   and [`Policies`], the running ones, rebuilt on SIGHUP.
//!
//! Adding a flag is one field in [`Cli`], whose doc comment is its help: its variable and
//! its file key follow from it. Its typed value is then a field of [`Settings`] and a line
//! in `resolve.rs`.
//!
//! Every value, whichever source gave it, goes through the same checks, and an error names
//! the flag, its variable and its file key:
//! `invalid value "abc" for --hold-timeout (also LEADER_PROXY_HOLD_TIMEOUT / hold-timeout): …`.
//! Any [`ConfigError`] but `--help` and `--version` means exit status 2
//! ([`ConfigError::exit`]).
//!
//! Layering rules:
//! - a single value is taken from the highest source that gives it;
//! - `listen` is a list taken whole from the highest source that gives it;
//! - `discovery-opt` is merged per key (`discovery_opts.rs`).

mod access;
mod policy;
mod resolve;
#[cfg(test)]
mod source_tests;
#[cfg(test)]
pub(crate) mod test_support;

pub use leader_proxy_parsers::config::cli;
use leader_proxy_parsers::config::{discovery_opts, env, error, file};

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgMatches, FromArgMatches};

pub use self::access::Policies;
use self::cli::Cli;
use crate::discovery::{AllowList, DiscoveryUrl, Election, SourceConfig};
pub use crate::policy::PolicySettings;
use crate::proxy::drain::OnLeaderChange;
pub use crate::tls::ClientTls;
use crate::tls::{TlsError, UpstreamTls};
pub use leader_proxy_parsers::config::{ConfigError, Secret};

/// `leader-proxy status --admin ADDR`: the admin listener to ask, `HOST:PORT` like
/// `--admin` (an IP or localhost), defaulting to `--admin`'s default.
pub fn status_admin<I, T>(args: I) -> Result<SocketAddr, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = cli::status_command().try_get_matches_from(args)?;
    let args = cli::StatusArgs::from_arg_matches(&matches)?;
    match resolve::admin(args.admin.clone())? {
        Some(addr) => Ok(addr),
        None => Err(error::invalid(
            "admin",
            args.admin.as_deref().unwrap_or_default(),
            "expected the HOST:PORT of a running proxy's admin listener",
        )),
    }
}

/// What `main` calls: the command line layered over the process environment, the `--config`
/// file and the defaults. On `Err(e)`, `e.exit()`.
pub fn load_from_args<I, T>(args: I) -> Result<Settings, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    load_from(args, &env::process_env()?)
}

/// What `leader-proxy leader` calls with what follows `leader`: the same options, layered
/// the same way, as the proxy's (docs/cli.md, "Commands").
pub fn load_leader_from_args<I, T>(args: I) -> Result<Settings, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    load_with(cli::leader_command(), args, &env::process_env()?)
}

/// [`load_from_args`] with the environment given as a map instead of read from the process,
/// so that tests never race on the process environment.
pub fn load_from<I, T>(args: I, env: &HashMap<String, String>) -> Result<Settings, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    load_with(cli::command(), args, env)
}

/// The settings from `args` as `command` parses them, over `env`, the file and the defaults.
fn load_with<I, T>(
    command: clap::Command,
    args: I,
    env: &HashMap<String, String>,
) -> Result<Settings, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let flags = command.try_get_matches_from(args)?;
    let env = env::layer(env)?;
    let flag_opts = discovery_opts::parse(
        &Cli::from_arg_matches(&flags)?.discovery_opt,
        "on the command line",
    )?;
    let env_opts = discovery_opts::parse(
        &Cli::from_arg_matches(&env)?.discovery_opt,
        "in LEADER_PROXY_DISCOVERY_OPT (a comma separates its entries: give a value with \
         a comma with --discovery-opt or in the --config file)",
    )?;
    // Only the flags and the environment can name the file (it has no `config` key).
    let config = layered(Cli::default(), [&env, &flags])?.config;
    let (file, file_opts) = match &config {
        Some(path) => file::layer(Path::new(path))?,
        None => (Cli::default(), BTreeMap::new()),
    };
    resolve::resolve(
        layered(file, [&env, &flags])?,
        discovery_opts::merge([file_opts, env_opts, flag_opts]),
    )
}

/// A certificate file that cannot work is a bad value of its flag like any other: the TLS
/// loader names the flag and the file, which is all [`ConfigError::Invalid`] needs.
pub fn tls_error(e: TlsError) -> ConfigError {
    error::invalid(e.long, &e.path.display().to_string(), e.reason)
}

/// `base` with `layers` laid over it, lowest first: an option a layer gives replaces what is
/// below it (a list whole), one it does not give is kept. clap's generated updater does the
/// per-field work, so a new flag needs no code here.
fn layered(mut base: Cli, layers: [&ArgMatches; 2]) -> Result<Cli, ConfigError> {
    for layer in layers {
        base.update_from_arg_matches(layer)?;
    }
    Ok(base)
}

/// A client listener (`--listen`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// `HOST:PORT` (or `tcp://HOST:PORT`); `localhost` is 127.0.0.1. Port 0 = any.
    Tcp(SocketAddr),
    /// `unix:///PATH`.
    Unix(PathBuf),
}

impl ListenAddr {
    /// Parses `HOST:PORT`, `tcp://HOST:PORT` or `unix:///PATH`; HOST is an IP literal
    /// (`[v6]` bracketed) or `localhost`.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        if let Some(path) = value.strip_prefix("unix://") {
            return path
                .starts_with('/')
                .then(|| ListenAddr::Unix(PathBuf::from(path)));
        }
        let addr = value.strip_prefix("tcp://").unwrap_or(value);
        resolve::parse_socket_addr(addr).map(ListenAddr::Tcp)
    }

    /// Only this host can reach it (a loopback address or a unix socket).
    pub fn is_local(&self) -> bool {
        match self {
            ListenAddr::Tcp(addr) => addr.ip().is_loopback(),
            ListenAddr::Unix(_) => true,
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// `--mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// The Docker-API-aware L7 proxy.
    #[default]
    Http,
    /// L4 passthrough.
    Tcp,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The fully resolved configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub discovery: DiscoveryUrl,
    pub listen: Vec<ListenAddr>,
    /// The access policy of each `listen` entry, in the same order: the global one
    /// (`--allow`, `--deny`, …), or its `[[listener]]` table's.
    pub listen_policy: Vec<PolicySettings>,
    /// Permissions of unix listeners (`--socket-mode`).
    pub socket_mode: u32,
    /// Group id of unix listeners (`--socket-group`, by name or number); `None`: the
    /// process's group.
    pub socket_group: Option<u32>,
    pub mode: Mode,
    /// `--max-connections`; `None`: derived from the open-files limit at start
    /// (`crate::limits::default_max_connections`).
    pub max_connections: Option<usize>,
    /// `--proxy-protocol-from`: the sources whose PROXY headers are honoured (none: off).
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    pub leader_key: String,
    pub election: Election,
    pub hold_timeout: Duration,
    /// 0 = hold nothing: without a reachable leader every request gets 503 at once.
    pub max_held: usize,
    pub connect_timeout: Duration,
    pub probe_interval: Duration,
    /// `--allow-leader`, or a `static://` URL's entries; empty = every leader.
    pub allow_leader: AllowList,
    /// `--verify-leader`: the store's leader is checked with the manager itself.
    pub verify_leader: bool,
    pub on_leader_change: OnLeaderChange,
    pub drain_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Every value is a [`Secret`]: which store options are credentials is the backends'
    /// business, and a list of them kept here would go stale without a sound.
    pub discovery_opts: BTreeMap<String, Secret>,
    /// `None` = `--admin off`.
    pub admin: Option<SocketAddr>,
    pub insecure_bind: bool,
    /// A level (`error`, `warn`, `info`, `debug`, `trace`, lower case) or `EnvFilter`
    /// directives (`info,leader_proxy=debug`), checked to parse.
    pub log_level: String,
    pub log_format: LogFormat,
    /// TLS for clients on TCP listeners (`--mode http` only).
    pub tls: Option<ClientTls>,
    /// `--upstream-cert-path`: TLS to the managers (`ca.pem`, `cert.pem`, `key.pem`).
    pub upstream_cert_path: Option<PathBuf>,
    /// `--upgrade-socket`: where this process hands its listening sockets to a new one.
    pub upgrade_socket: Option<PathBuf>,
    /// `--upgrade`: take the listening sockets from the process on `upgrade_socket`.
    pub upgrade: bool,
}

impl Settings {
    /// What the discovery backend needs, but for `upstream_tls`: the files of
    /// `upstream_cert_path` are loaded once by whoever runs the proxy, which gives the same
    /// [`crate::tls::UpstreamTls`] to the proxy and to the probes (see `src/main.rs`).
    /// What the leader source needs; `upstream_tls` is the `--upstream-cert-path` instance
    /// the proxy uses too, so one SIGHUP reloads it for the `swarm://`/`static://` probes.
    pub fn source_config(&self, upstream_tls: Option<Arc<UpstreamTls>>) -> SourceConfig {
        SourceConfig {
            url: self.discovery.clone(),
            leader_key: self.leader_key.clone(),
            election: self.election,
            options: self
                .discovery_opts
                .iter()
                .map(|(key, value)| (key.clone(), value.expose().to_string()))
                .collect(),
            connect_timeout: self.connect_timeout,
            probe_interval: self.probe_interval,
            upstream_tls,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{file, load, load_env, path, URL};

    #[test]
    fn precedence_flag_env_file_default() {
        let f = file("hold-timeout = \"10s\"\nlisten = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n");
        let conf = ["--config", path(&f), URL];
        let hold =
            |rest: &[&str], vars: &[(&str, &str)]| load_env(rest, vars).unwrap().hold_timeout;
        assert_eq!(hold(&[URL], &[]), Duration::from_secs(30));
        assert_eq!(hold(&conf, &[]), Duration::from_secs(10));
        let env_hold = [("LEADER_PROXY_HOLD_TIMEOUT", "20s")];
        assert_eq!(hold(&conf, &env_hold), Duration::from_secs(20));
        let mut flagged = vec!["--hold-timeout", "40s"];
        flagged.extend(conf);
        assert_eq!(hold(&flagged, &env_hold), Duration::from_secs(40));

        // Lists are taken whole from the highest source.
        let listen = |vars: &[(&str, &str)]| load_env(&conf, vars).unwrap().listen.len();
        assert_eq!(listen(&[]), 2);
        assert_eq!(listen(&[("LEADER_PROXY_LISTEN", "127.0.0.1:3")]), 1);
        let s = load_env(
            &["--listen", "127.0.0.1:4", "--config", path(&f), URL],
            &[("LEADER_PROXY_LISTEN", "127.0.0.1:3,127.0.0.1:5")],
        )
        .unwrap();
        assert_eq!(s.listen, [ListenAddr::Tcp("127.0.0.1:4".parse().unwrap())]);
    }

    #[test]
    fn allow_leader_from_every_source_and_the_static_default() {
        let f = file("allow-leader = [\"10.0.0.0/24\", \"m1:2375\"]\n");
        let s = load(&["--config", path(&f), URL]).unwrap();
        assert_eq!(s.allow_leader.to_string(), "10.0.0.0/24,m1:2375");
        let s = load_env(&[URL], &[("LEADER_PROXY_ALLOW_LEADER", "m2,m3:1")]).unwrap();
        assert_eq!(s.allow_leader.to_string(), "m2,m3:1");
        let s = load(&["--allow-leader", "m4", "--allow-leader", "m5", URL]).unwrap();
        assert_eq!(s.allow_leader.to_string(), "m4,m5");
        assert!(load(&[URL]).unwrap().allow_leader.is_empty());
        let s = load(&["static://h1:1,H2:2"]).unwrap();
        assert_eq!(s.allow_leader.to_string(), "h1:1,h2:2");
        let s = load(&["--allow-leader", "h3", "static://h1:1"]).unwrap();
        assert_eq!(s.allow_leader.to_string(), "h3");
        let e = load(&["--allow-leader", "10.0.0.0/40", URL])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--allow-leader") && e.contains("LEADER_PROXY_ALLOW_LEADER"),
            "{e}"
        );
    }

    #[test]
    fn verify_leader_is_on_for_stores_and_refused_for_managers() {
        assert!(load(&[URL]).unwrap().verify_leader);
        assert!(
            !load(&["--verify-leader", "OFF", URL])
                .unwrap()
                .verify_leader
        );
        assert!(!load(&["static://h1:1"]).unwrap().verify_leader);
        for url in ["static://h1:1", "swarm://h1:1"] {
            let e = load(&["--verify-leader", "on", url]).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains("--verify-leader"), "{e}");
        }
        assert!(load(&["--verify-leader", "maybe", URL]).is_err());
    }

    #[test]
    fn store_options_reach_the_source_and_no_debug_print() {
        let s = load(&["--discovery-opt", "kv.token=hunter2", URL]).unwrap();
        assert_eq!(s.source_config(None).options["kv.token"], "hunter2");
        assert!(!format!("{s:?}").contains("hunter2"), "{s:?}");
    }
}
