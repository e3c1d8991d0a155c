//! The resolved configuration: the command line, the environment, the `--config` file and
//! the defaults, layered in that order of precedence and checked.
//!
//! Every value, whichever source gave it, goes through the same checks, and an error names
//! the flag, its variable and its file key:
//! `invalid value "abc" for --hold-timeout (also LEADER_PROXY_HOLD_TIMEOUT / hold-timeout): …`.
//! Any [`ConfigError`] means exit status 2 ([`ConfigError::exit`]).
//!
//! Layering rules:
//! - a single value is taken from the highest source that gives it;
//! - `listen` is a list taken whole from the highest source that gives it;
//! - `discovery-opt` is merged per key: a flag's `kv.username` beats the environment's,
//!   which beats the file's, and keys only the file gives are kept (so secrets can come from
//!   the environment and the rest from the file). A key given twice in one source is an error.
//!
//! The environment (see [`crate::cli`]): the variable of a repeatable option is a
//! comma-separated list (a comma on the command line is kept as part of the value), an
//! empty variable counts as unset.
//!
//! The file is TOML whose keys are the long flag names, unknown keys rejected:
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
//! `config/` has an example per store (`etcd.toml`, `etcdv3.toml`, `zk.toml`, `consul.toml`)
//! showing every setting.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgMatches, FromArgMatches};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::cli::{self, env_name, Cli, EnvKind};
use crate::discovery::url::UrlError;
use crate::discovery::{DiscoveryUrl, Election, Scheme, SourceConfig};
use crate::proxy::drain::OnLeaderChange;

/// The schemes `--election contenders` works with.
const CONTENDER_SCHEMES: &[Scheme] = &[Scheme::EtcdV3, Scheme::Zk];

/// The defaults of DESIGN.md's table.
pub mod defaults {
    use std::time::Duration;

    pub const LISTEN: &str = "127.0.0.1:2375";
    pub const SOCKET_MODE: u32 = 0o660;
    pub const LEADER_KEY: &str = "docker/swarm/leader";
    pub const HOLD_TIMEOUT: Duration = Duration::from_secs(30);
    pub const MAX_HELD: usize = 10_000;
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5 * 60);
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
    pub const ADMIN: &str = "127.0.0.1:9375";
    pub const LOG_LEVEL: &str = "info";
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
        parse_socket_addr(addr).map(ListenAddr::Tcp)
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

/// TLS for clients (`--tlscert`, `--tlskey`, `--tlscacert`, `--tlsverify`), dockerd's model:
/// on when a certificate and its key are given; `verify` (`--tlsverify`, which needs `ca`)
/// requires every client to present a certificate signed by `ca`. Without `verify`, `ca` is
/// not used (dockerd asks for no client certificate then either). The files are checked
/// when the settings are resolved; [`crate::tls`] reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
    pub verify: bool,
}

/// The fully resolved configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub discovery: DiscoveryUrl,
    pub listen: Vec<ListenAddr>,
    /// Permissions of unix listeners (`--socket-mode`).
    pub socket_mode: u32,
    /// Group id of unix listeners (`--socket-group`, by name or number); `None`: the
    /// process's group.
    pub socket_group: Option<u32>,
    pub mode: Mode,
    pub leader_key: String,
    pub election: Election,
    pub hold_timeout: Duration,
    /// 0 = hold nothing: without a reachable leader every request gets 503 at once.
    pub max_held: usize,
    pub connect_timeout: Duration,
    pub probe_interval: Duration,
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
}

impl Settings {
    /// What the discovery backend needs, but for `upstream_tls`: the files of
    /// `upstream_cert_path` are loaded once by whoever runs the proxy, which gives the same
    /// [`crate::tls::UpstreamTls`] to the proxy and to the probes (see `src/main.rs`).
    pub fn source_config(&self) -> SourceConfig {
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
            upstream_tls: None,
        }
    }
}

/// A value that must not be shown, like `kv.password`: `Debug` and `Display` print `***`, so
/// that no Debug print or log line of the options or the settings can leak it.
/// [`Secret::expose`] is the one way to the text, for the code that hands it to the store.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// How clap and the file layer build one from the text given.
impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

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

fn invalid(long: &str, value: &str, expected: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        long: long.to_string(),
        value: value.to_string(),
        expected: expected.into(),
    }
}

/// What `main` calls: the command line layered over the process environment, the `--config`
/// file and the defaults. On `Err(e)`, `e.exit()`.
pub fn load_from_args<I, T>(args: I) -> Result<Settings, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    load_from(args, &process_env()?)
}

/// [`load_from_args`] with the environment given as a map instead of read from the process,
/// so that tests never race on the process environment.
pub fn load_from<I, T>(args: I, env: &HashMap<String, String>) -> Result<Settings, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let flags = cli::command().try_get_matches_from(args)?;
    let env = env_layer(env)?;
    let flag_opts = opt_pairs(
        &Cli::from_arg_matches(&flags)?.discovery_opt,
        "on the command line",
    )?;
    let env_opts = opt_pairs(
        &Cli::from_arg_matches(&env)?.discovery_opt,
        "in LEADER_PROXY_DISCOVERY_OPT (a comma separates its entries: give a value with \
         a comma with --discovery-opt or in the --config file)",
    )?;
    let config = layered(Cli::default(), [&env, &flags])?.config;
    let (file, file_opts) = match &config {
        Some(path) => file_layer(Path::new(path))?,
        None => (Cli::default(), BTreeMap::new()),
    };
    let mut opts = file_opts;
    opts.extend(env_opts);
    opts.extend(flag_opts);
    resolve(layered(file, [&env, &flags])?, opts)
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

/// The `LEADER_PROXY_*` variables of the process.
fn process_env() -> Result<HashMap<String, String>, ConfigError> {
    let mut env = HashMap::new();
    for (var, value) in std::env::vars_os() {
        let Some(var) = var.to_str() else { continue };
        if !var.starts_with(cli::ENV_PREFIX) {
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
/// stands for, parsed by the same command as the command line.
fn env_layer(env: &HashMap<String, String>) -> Result<ArgMatches, ConfigError> {
    let mut argv = vec!["leader-proxy".to_string()];
    let mut discovery = None;
    for (long, var, kind) in cli::env_vars() {
        let Some(value) = env.get(&var).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        let long = match (kind, long) {
            (EnvKind::Positional, _) | (_, None) => {
                discovery = Some(value.clone());
                continue;
            }
            (_, Some(long)) => long,
        };
        match kind {
            EnvKind::List => argv.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| format!("--{long}={item}")),
            ),
            EnvKind::Bool => {
                let on = parse_bool(value).ok_or_else(|| {
                    invalid(&long, value, "expected true or false (1/0, yes/no, on/off)")
                })?;
                argv.push(format!("--{long}={on}"));
            }
            EnvKind::Single | EnvKind::Positional => argv.push(format!("--{long}={value}")),
        }
    }
    if let Some(discovery) = discovery {
        argv.push("--".to_string());
        argv.push(discovery);
    }
    cli::command()
        .try_get_matches_from(argv)
        .map_err(|err| ConfigError::Env {
            var: cli::ENV_PREFIX.to_string() + "*",
            message: err.kind().to_string(),
        })
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "y" | "t" => Some(true),
        "0" | "false" | "no" | "off" | "n" | "f" => Some(false),
        _ => None,
    }
}

/// Reads and parses the `--config` file.
fn file_layer(path: &Path) -> Result<(Cli, BTreeMap<String, Secret>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file(&text).map_err(|message| ConfigError::File {
        path: path.to_path_buf(),
        message,
    })
}

/// The text of a config file as a [`Cli`] and its `discovery-opt` entries. The keys are the
/// fields of [`Cli`] itself (serde, kebab-case), so a flag is a file key with no code here.
fn parse_file(text: &str) -> Result<(Cli, BTreeMap<String, Secret>), String> {
    let file: Cli = toml::from_str(text).map_err(|err| err.to_string())?;
    let opts =
        opt_pairs(&file.discovery_opt, "in the --config file").map_err(|err| err.to_string())?;
    Ok((file, opts))
}

const LISTEN_SHAPE: &str =
    "listen must be an address string or a list of them, like listen = [\"127.0.0.1:2375\"]";

/// `listen` in the file: one address or a list of them.
pub(crate) fn file_listen<'de, D: Deserializer<'de>>(file: D) -> Result<Vec<String>, D::Error> {
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

/// `max-held` in the file: a TOML number, or a string holding one, kept as text so that
/// [`resolve`] checks it the way it checks the flag.
pub(crate) fn file_max_held<'de, D: Deserializer<'de>>(
    file: D,
) -> Result<Option<String>, D::Error> {
    Ok(Some(match toml::Value::deserialize(file)? {
        toml::Value::String(text) => text,
        number => number.to_string(),
    }))
}

/// `discovery-opt` in the file: the flag's `K=V` entries, or a table of `K = "V"` whose
/// dotted keys (`kv.username = …`, which TOML nests) are joined back with `.`.
pub(crate) fn file_discovery_opt<'de, D: Deserializer<'de>>(
    file: D,
) -> Result<Vec<Secret>, D::Error> {
    let mut entries = Vec::new();
    file_opts(&toml::Value::deserialize(file)?, "", &mut entries).map_err(D::Error::custom)?;
    Ok(entries)
}

/// The entries of a `discovery-opt` value, as `K=V`; `prefix` is the key of the table
/// `value` is in.
fn file_opts(value: &toml::Value, prefix: &str, out: &mut Vec<Secret>) -> Result<(), String> {
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
                file_opts(value, &key, out)?;
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

/// `K=V`.
fn split_opt(entry: &str) -> Result<(String, Secret), ConfigError> {
    match entry.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), Secret::from(value.to_string())))
        }
        _ => Err(invalid(
            "discovery-opt",
            entry,
            "expected K=V, like kv.username=swarm",
        )),
    }
}

/// `--discovery-opt` entries of one source, as a map; `origin` says which source.
fn opt_pairs(entries: &[Secret], origin: &str) -> Result<BTreeMap<String, Secret>, ConfigError> {
    let pairs = entries
        .iter()
        .map(|entry| {
            split_opt(entry.expose()).map_err(|err| match err {
                ConfigError::Invalid {
                    long,
                    value,
                    expected,
                } => ConfigError::Invalid {
                    long,
                    value,
                    expected: format!("{expected} ({origin})"),
                },
                other => other,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    opt_map(pairs, origin)
}

fn opt_map(
    pairs: Vec<(String, Secret)>,
    origin: &str,
) -> Result<BTreeMap<String, Secret>, ConfigError> {
    let mut map = BTreeMap::new();
    for (key, value) in pairs {
        if map.contains_key(&key) {
            return Err(ConfigError::DuplicateOpt {
                key,
                origin: origin.to_string(),
            });
        }
        map.insert(key, value);
    }
    Ok(map)
}

/// Checks the layered values and fills in the defaults.
fn resolve(cli: Cli, discovery_opts: BTreeMap<String, Secret>) -> Result<Settings, ConfigError> {
    let raw = cli.discovery.ok_or(ConfigError::MissingDiscovery)?;
    let discovery = DiscoveryUrl::parse(raw.trim()).map_err(|reason| ConfigError::Discovery {
        value: raw.clone(),
        reason,
    })?;

    let mode = one_of(
        "mode",
        cli.mode,
        &[("http", Mode::Http), ("tcp", Mode::Tcp)],
        Mode::Http,
    )?;

    let listen = if cli.listen.is_empty() {
        vec![ListenAddr::parse(defaults::LISTEN)
            .ok_or_else(|| invalid("listen", defaults::LISTEN, "bad default"))?]
    } else {
        cli.listen
            .iter()
            .map(|value| {
                ListenAddr::parse(value).ok_or_else(|| {
                    let mut expected = "expected HOST:PORT with an IP address or localhost \
                                        (like 127.0.0.1:2375 or [::1]:2375), or unix:///PATH"
                        .to_string();
                    if value.contains(',') {
                        expected += " (give --listen once per address; only \
                                     LEADER_PROXY_LISTEN takes a comma-separated list)";
                    }
                    invalid("listen", value, expected)
                })
            })
            .collect::<Result<Vec<_>, _>>()?
    };

    let socket_mode = match cli.socket_mode {
        None => defaults::SOCKET_MODE,
        Some(value) => {
            let digits = value.trim();
            let digits = digits.strip_prefix("0o").unwrap_or(digits);
            match u32::from_str_radix(digits, 8) {
                Ok(mode) if !digits.is_empty() && digits.len() <= 4 && mode <= 0o777 => mode,
                _ => {
                    return Err(invalid(
                        "socket-mode",
                        &value,
                        "expected permissions in octal, like 0660",
                    ))
                }
            }
        }
    };
    let socket_group = match cli.socket_group {
        None => None,
        Some(value) => Some(
            crate::proxy::listener::group_id(value.trim()).ok_or_else(|| {
                invalid(
                    "socket-group",
                    &value,
                    "no such group (give a group name or a numeric id)",
                )
            })?,
        ),
    };

    let election = one_of(
        "election",
        cli.election,
        &[("key", Election::Key), ("contenders", Election::Contenders)],
        Election::Key,
    )?;
    if election == Election::Contenders && !CONTENDER_SCHEMES.contains(&discovery.scheme()) {
        return Err(ConfigError::Contenders(discovery.scheme().as_str()));
    }

    let leader_key = cli
        .leader_key
        .unwrap_or_else(|| defaults::LEADER_KEY.to_string());
    if discovery.key(&leader_key).is_empty() {
        return Err(invalid(
            "leader-key",
            &leader_key,
            "the key is empty: give a prefix in DISCOVERY or a --leader-key",
        ));
    }

    let hold_timeout = duration(
        "hold-timeout",
        cli.hold_timeout,
        defaults::HOLD_TIMEOUT,
        true,
    )?;
    let max_held = match cli.max_held {
        None => defaults::MAX_HELD,
        Some(value) => value.trim().parse::<usize>().map_err(|_| {
            invalid(
                "max-held",
                &value,
                "expected a whole number (0: hold no request)",
            )
        })?,
    };
    let connect_timeout = duration(
        "connect-timeout",
        cli.connect_timeout,
        defaults::CONNECT_TIMEOUT,
        false,
    )?;
    let probe_interval = duration(
        "probe-interval",
        cli.probe_interval,
        defaults::PROBE_INTERVAL,
        false,
    )?;
    let on_leader_change = one_of(
        "on-leader-change",
        cli.on_leader_change,
        &[
            ("drain", OnLeaderChange::Drain),
            ("close", OnLeaderChange::Close),
        ],
        OnLeaderChange::Drain,
    )?;
    let drain_timeout = duration(
        "drain-timeout",
        cli.drain_timeout,
        defaults::DRAIN_TIMEOUT,
        true,
    )?;
    let shutdown_grace = duration(
        "shutdown-grace",
        cli.shutdown_grace,
        defaults::SHUTDOWN_GRACE,
        true,
    )?;

    let admin_raw = cli.admin.unwrap_or_else(|| defaults::ADMIN.to_string());
    let admin = if admin_raw.trim().eq_ignore_ascii_case("off") {
        None
    } else {
        Some(parse_socket_addr(admin_raw.trim()).ok_or_else(|| {
            invalid(
                "admin",
                &admin_raw,
                "expected HOST:PORT with an IP address or localhost (like 127.0.0.1:9375), or off",
            )
        })?)
    };

    let log_level = log_level(cli.log_level)?;
    let log_format = one_of(
        "log-format",
        cli.log_format,
        &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        LogFormat::Text,
    )?;

    let tls = client_tls(
        [cli.tlscert, cli.tlskey, cli.tlscacert],
        cli.tlsverify.unwrap_or(false),
        mode,
    )?;
    let upstream_cert_path = upstream_cert_path(cli.upstream_cert_path, mode, &discovery)?;

    let insecure_bind = cli.insecure_bind.unwrap_or(false);
    // With --tlsverify every client shows a certificate; in --mode tcp the proxy cannot see
    // TLS, so only --insecure-bind ("my managers enforce TLS") lets a listener out.
    let clients_verified = cli.tlsverify.unwrap_or(false) && mode == Mode::Http;
    if !insecure_bind && !clients_verified {
        if let Some(addr) = listen.iter().find(|addr| !addr.is_local()) {
            return Err(ConfigError::InsecureBind(open_listener_message(addr, mode)));
        }
    }
    if let Some(addr) = admin {
        if !insecure_bind && !addr.ip().is_loopback() {
            return Err(ConfigError::InsecureBind(format!(
                "refusing --admin {addr} (also LEADER_PROXY_ADMIN / admin): it is not a loopback \
                 address and the admin listener has no authentication. Use 127.0.0.1, \
                 --admin off, or pass --insecure-bind if something else protects this port"
            )));
        }
    }

    Ok(Settings {
        discovery,
        listen,
        socket_mode,
        socket_group,
        mode,
        leader_key,
        election,
        hold_timeout,
        max_held,
        connect_timeout,
        probe_interval,
        on_leader_change,
        drain_timeout,
        shutdown_grace,
        discovery_opts,
        admin,
        insecure_bind,
        log_level,
        log_format,
        tls,
        upstream_cert_path,
    })
}

/// The client TLS flags (`[--tlscert, --tlskey, --tlscacert]`, `--tlsverify`), checked to go
/// together and their files read.
fn client_tls(
    [cert, key, ca]: [Option<String>; 3],
    verify: bool,
    mode: Mode,
) -> Result<Option<ClientTls>, ConfigError> {
    let flag = |long: &str| format!("--{long} (also {} / {long})", env_name(long));
    let path = |long: &str, value: Option<String>| match value {
        Some(v) if v.trim().is_empty() => Err(invalid(long, &v, "expected a file path")),
        v => Ok(v.map(|v| PathBuf::from(v.trim()))),
    };
    let (cert, key, ca) = (
        path("tlscert", cert)?,
        path("tlskey", key)?,
        path("tlscacert", ca)?,
    );
    if mode == Mode::Tcp && (cert.is_some() || key.is_some() || ca.is_some() || verify) {
        return Err(ConfigError::Tls(
            "--tlscert, --tlskey, --tlscacert and --tlsverify are for --mode http: in --mode tcp \
             the clients' TLS passes through to the managers, which check the certificates"
                .to_string(),
        ));
    }
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => ClientTls {
            cert,
            key,
            ca,
            verify,
        },
        (None, None) if verify => {
            return Err(ConfigError::Tls(format!(
                "{} needs --tlscert, --tlskey and --tlscacert",
                flag("tlsverify")
            )))
        }
        (None, None) if ca.is_some() => {
            return Err(ConfigError::Tls(format!(
                "{} needs --tlscert and --tlskey (TLS is on when both are given) and \
                 --tlsverify (to require client certificates signed by it)",
                flag("tlscacert")
            )))
        }
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(ConfigError::Tls(format!(
                "{} needs --tlskey, its private key",
                flag("tlscert")
            )))
        }
        (None, Some(_)) => {
            return Err(ConfigError::Tls(format!(
                "{} needs --tlscert, the certificate of that key",
                flag("tlskey")
            )))
        }
    };
    if tls.verify && tls.ca.is_none() {
        return Err(ConfigError::Tls(format!(
            "{} needs --tlscacert: the CA that client certificates must be signed by",
            flag("tlsverify")
        )));
    }
    crate::tls::ServerTls::load(&tls).map_err(tls_file_error)?;
    Ok(Some(tls))
}

/// `--upstream-cert-path`: a directory in the `DOCKER_CERT_PATH` layout, read and checked.
fn upstream_cert_path(
    value: Option<String>,
    mode: Mode,
    discovery: &DiscoveryUrl,
) -> Result<Option<PathBuf>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    if value.trim().is_empty() {
        return Err(invalid(
            "upstream-cert-path",
            &value,
            "expected a directory holding ca.pem, cert.pem and key.pem",
        ));
    }
    let probed = matches!(discovery.scheme(), Scheme::Swarm | Scheme::Static);
    if mode == Mode::Tcp && !probed {
        return Err(ConfigError::Tls(format!(
            "--upstream-cert-path (also {} / upstream-cert-path) is not used in --mode tcp with \
             {}://: the clients' TLS passes through to the managers (it is used by swarm:// \
             and static:// probes, and by --mode http)",
            env_name("upstream-cert-path"),
            discovery.scheme().as_str()
        )));
    }
    let dir = PathBuf::from(value.trim());
    crate::tls::UpstreamTls::load(&dir).map_err(tls_file_error)?;
    Ok(Some(dir))
}

fn tls_file_error(e: crate::tls::TlsError) -> ConfigError {
    invalid(e.long, &e.path.display().to_string(), e.reason)
}

fn open_listener_message(addr: &ListenAddr, mode: Mode) -> String {
    let mut fixes = vec![
        "listen on a loopback address (127.0.0.1:PORT)",
        "on a unix socket (unix:///PATH)",
    ];
    if mode == Mode::Http {
        fixes.push("require client certificates with --tlsverify");
    }
    fixes.push(
        "pass --insecure-bind if something else (a firewall, TLS enforced by the managers) \
         already protects this port",
    );
    let why = match mode {
        Mode::Http => "clients are not required to present certificates (--tlsverify)",
        Mode::Tcp => "in --mode tcp the proxy cannot check client certificates",
    };
    format!(
        "refusing --listen {addr} (also LEADER_PROXY_LISTEN / listen): it is not a loopback \
         address and {why}. The Docker API is root on every node: an open port is an open \
         cluster. Either {}",
        fixes.join(", or ")
    )
}

/// `HOST:PORT` where HOST is an IP literal (`[v6]` bracketed) or `localhost` (127.0.0.1).
fn parse_socket_addr(value: &str) -> Option<SocketAddr> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Some(addr);
    }
    let (host, port) = value.rsplit_once(':')?;
    if !host.eq_ignore_ascii_case("localhost") {
        return None;
    }
    let port = port.parse::<u16>().ok()?;
    Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
}

/// A humantime duration (`500ms`, `30s`, `5m`); zero only where `zero_ok`.
fn duration(
    long: &str,
    value: Option<String>,
    default: Duration,
    zero_ok: bool,
) -> Result<Duration, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    match humantime::parse_duration(value.trim()) {
        Ok(d) if d.is_zero() && !zero_ok => Err(invalid(long, &value, "must be more than 0")),
        Ok(d) => Ok(d),
        Err(_) => Err(invalid(
            long,
            &value,
            "expected a duration like 30s, 500ms or 5m",
        )),
    }
}

/// One of a few words (case-insensitive).
fn one_of<T: Copy>(
    long: &str,
    value: Option<String>,
    choices: &[(&str, T)],
    default: T,
) -> Result<T, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    choices
        .iter()
        .find(|(word, _)| word.eq_ignore_ascii_case(value.trim()))
        .map(|(_, choice)| *choice)
        .ok_or_else(|| {
            let words: Vec<&str> = choices.iter().map(|(word, _)| *word).collect();
            invalid(long, &value, format!("expected {}", words.join(" or ")))
        })
}

const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// A level, or `EnvFilter` directives where each is `LEVEL` or `TARGET=LEVEL` (a bare word
/// would be taken as a target by `EnvFilter` and silently log nothing, so it is refused).
fn log_level(value: Option<String>) -> Result<String, ConfigError> {
    let Some(value) = value else {
        return Ok(defaults::LOG_LEVEL.to_string());
    };
    let trimmed = value.trim();
    let is_level = |s: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s.trim()));
    if is_level(trimmed) {
        return Ok(trimmed.to_ascii_lowercase());
    }
    let directives_ok = !trimmed.is_empty()
        && trimmed.split(',').all(|d| match d.rsplit_once('=') {
            Some((target, level)) => !target.trim().is_empty() && is_level(level),
            None => is_level(d),
        })
        && tracing_subscriber::EnvFilter::builder()
            .parse(trimmed)
            .is_ok();
    if directives_ok {
        Ok(trimmed.to_string())
    } else {
        Err(invalid(
            "log-level",
            &value,
            "expected error, warn, info, debug or trace, or directives like info,leader_proxy=debug",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "etcd://127.0.0.1:2379/swarm";

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn args(rest: &[&str]) -> Vec<String> {
        std::iter::once("leader-proxy")
            .chain(rest.iter().copied())
            .map(str::to_string)
            .collect()
    }

    fn load(rest: &[&str]) -> Result<Settings, ConfigError> {
        load_from(args(rest), &HashMap::new())
    }

    fn load_env(rest: &[&str], vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        load_from(args(rest), &env(vars))
    }

    fn err(rest: &[&str]) -> String {
        err_env(rest, &[])
    }

    fn err_env(rest: &[&str], vars: &[(&str, &str)]) -> String {
        match load_env(rest, vars) {
            Ok(settings) => panic!("{rest:?} {vars:?} was accepted: {settings:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }

    fn path(f: &tempfile::NamedTempFile) -> &str {
        f.path().to_str().unwrap()
    }

    #[test]
    fn defaults() {
        let s = load(&[URL]).unwrap();
        assert_eq!(s.discovery, DiscoveryUrl::parse(URL).unwrap());
        assert_eq!(
            s.listen,
            [ListenAddr::Tcp("127.0.0.1:2375".parse().unwrap())]
        );
        assert_eq!(s.mode, Mode::Http);
        assert_eq!(s.leader_key, "docker/swarm/leader");
        assert_eq!(s.election, Election::Key);
        assert_eq!(s.hold_timeout, Duration::from_secs(30));
        assert_eq!(s.max_held, 10_000);
        assert_eq!(s.connect_timeout, Duration::from_secs(2));
        assert_eq!(s.probe_interval, Duration::from_millis(500));
        assert_eq!(s.on_leader_change, OnLeaderChange::Drain);
        assert_eq!(s.drain_timeout, Duration::from_secs(300));
        assert_eq!(s.shutdown_grace, Duration::from_secs(30));
        assert!(s.discovery_opts.is_empty());
        assert_eq!(s.admin, Some("127.0.0.1:9375".parse().unwrap()));
        assert!(!s.insecure_bind);
        assert_eq!(s.log_level, "info");
        assert_eq!(s.log_format, LogFormat::Text);
        let source = s.source_config();
        assert_eq!(source.url, s.discovery);
        assert_eq!(source.leader_key, "docker/swarm/leader");
        assert_eq!(source.connect_timeout, Duration::from_secs(2));
        assert_eq!(source.probe_interval, Duration::from_millis(500));
    }

    #[test]
    fn every_flag() {
        let s = load(&[
            "--listen",
            "localhost:0",
            "--listen=tcp://[::1]:2376",
            "--leader-key",
            "/my/leader/",
            "--election",
            "contenders",
            "--hold-timeout",
            "1m",
            "--max-held",
            "0",
            "--connect-timeout",
            "250ms",
            "--shutdown-grace",
            "0s",
            "--discovery-opt",
            "kv.username=swarm",
            "--discovery-opt=kv.password=a=b,c",
            "--admin",
            "off",
            "--log-level",
            "info,leader_proxy=DEBUG",
            "--log-format",
            "JSON",
            "--mode",
            "http",
            "etcdv3://127.0.0.1:2379",
        ])
        .unwrap();
        assert_eq!(
            s.listen,
            [
                ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()),
                ListenAddr::Tcp("[::1]:2376".parse().unwrap())
            ]
        );
        assert_eq!(s.leader_key, "/my/leader/");
        assert_eq!(s.source_config().url.key(&s.leader_key), "my/leader");
        assert_eq!(s.election, Election::Contenders);
        assert_eq!(s.hold_timeout, Duration::from_secs(60));
        assert_eq!(s.max_held, 0);
        assert_eq!(s.connect_timeout, Duration::from_millis(250));
        assert_eq!(s.shutdown_grace, Duration::ZERO);
        assert_eq!(s.discovery_opts["kv.username"].expose(), "swarm");
        assert_eq!(s.discovery_opts["kv.password"].expose(), "a=b,c");
        assert_eq!(s.admin, None);
        assert_eq!(s.log_level, "info,leader_proxy=DEBUG");
        assert_eq!(s.log_format, LogFormat::Json);
        assert!(
            !format!("{s:?}").contains("a=b,c"),
            "Debug shows a password"
        );
    }

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
    fn config_and_discovery_from_the_environment() {
        let f = file("discovery = \"etcd://127.0.0.1:1111/file\"\nmax-held = 7\n");
        let s = load_env(&[], &[("LEADER_PROXY_CONFIG", path(&f))]).unwrap();
        assert_eq!(s.discovery.prefix(), "file");
        assert_eq!(s.max_held, 7);
        let s = load_env(
            &[],
            &[
                ("LEADER_PROXY_CONFIG", path(&f)),
                ("LEADER_PROXY_DISCOVERY", "etcd://127.0.0.1:2222/env"),
            ],
        )
        .unwrap();
        assert_eq!(s.discovery.prefix(), "env");
        let s = load_env(
            &["etcd://127.0.0.1:3333/flag"],
            &[("LEADER_PROXY_DISCOVERY", "etcd://127.0.0.1:2222/env")],
        )
        .unwrap();
        assert_eq!(s.discovery.prefix(), "flag");
        // An empty variable is unset.
        assert!(matches!(
            load_env(&[], &[("LEADER_PROXY_DISCOVERY", "")]),
            Err(ConfigError::MissingDiscovery)
        ));
        assert!(err(&[]).contains("DISCOVERY is required"));
    }

    #[test]
    fn bools_layer_both_ways() {
        let f = file("insecure-bind = true\nlisten = \"0.0.0.0:0\"\n");
        let conf = ["--config", path(&f), URL];
        assert!(load(&conf).unwrap().insecure_bind);
        for off in ["0", "false", "no", "OFF"] {
            let e = err_env(&conf, &[("LEADER_PROXY_INSECURE_BIND", off)]);
            assert!(e.contains("refusing --listen 0.0.0.0:0"), "{e}");
        }
        let mut off_flag = vec!["--insecure-bind=false"];
        off_flag.extend(conf);
        assert!(err(&off_flag).contains("refusing --listen"));
        let s = load_env(
            &["--listen", "0.0.0.0:0", URL],
            &[("LEADER_PROXY_INSECURE_BIND", "1")],
        )
        .unwrap();
        assert!(s.insecure_bind);
        let e = err_env(&[URL], &[("LEADER_PROXY_INSECURE_BIND", "maybe")]);
        assert_eq!(
            e,
            "invalid value \"maybe\" for --insecure-bind (also LEADER_PROXY_INSECURE_BIND / \
             insecure-bind): expected true or false (1/0, yes/no, on/off)"
        );
    }

    #[test]
    fn discovery_opts_merge_per_key() {
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
        assert_eq!(s.source_config().options, expected);

        let f = file("discovery-opt = [\"kv.username=x\", \"kv.password=y=z\"]\n");
        let s = load(&["--config", path(&f), URL]).unwrap();
        assert_eq!(s.discovery_opts["kv.password"].expose(), "y=z");
    }

    #[test]
    fn bad_discovery_opts() {
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
        for bad in [
            "discovery-opt = \"a=b\"",
            "discovery-opt = [1]",
            "[discovery-opt]\na = [1]",
        ] {
            let f = file(bad);
            let e = err(&["--config", path(&f), URL]);
            assert!(e.contains("discovery-opt"), "{bad}: {e}");
        }
        let f = file("discovery-opt = [\"nokey\"]");
        assert!(err(&["--config", path(&f), URL]).contains("\"nokey\""));
    }

    #[test]
    fn toml_errors_name_the_key() {
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
        let e = err(&["--config", "/nonexistent/leader-proxy.toml", URL]);
        assert!(
            e.starts_with("cannot read the --config file /nonexistent/leader-proxy.toml"),
            "{e}"
        );
        let f = file("config = \"other.toml\"\n");
        assert!(err(&["--config", path(&f), URL]).contains("config"));
    }

    #[test]
    fn bad_values_name_flag_variable_and_key() {
        assert_eq!(
            err(&["--hold-timeout", "abc", URL]),
            "invalid value \"abc\" for --hold-timeout (also LEADER_PROXY_HOLD_TIMEOUT / \
             hold-timeout): expected a duration like 30s, 500ms or 5m"
        );
        let e = err_env(&[URL], &[("LEADER_PROXY_CONNECT_TIMEOUT", "0s")]);
        assert!(
            e.contains("--connect-timeout") && e.contains("more than 0"),
            "{e}"
        );
        let e = err(&["--max-held", "-1", URL]);
        assert!(e.contains("for --max-held"), "{e}");
        assert!(err(&["--max-held", "lots", URL]).contains("for --max-held"));
        assert!(err(&["--mode", "udp", URL]).contains("expected http or tcp"));
        assert!(err(&["--election", "first", URL]).contains("expected key or contenders"));
        assert!(err(&["--log-format", "xml", URL]).contains("for --log-format"));
        assert!(err(&["--admin", "example.com:9375", URL]).contains("for --admin"));
        assert!(err(&["--listen", "example.com:2375", URL]).contains("for --listen"));
        assert!(err(&["--listen", "127.0.0.1", URL]).contains("for --listen"));
        assert!(err(&["--listen", "unix://relative", URL]).contains("for --listen"));
        let e = err(&["--listen", "127.0.0.1:1,127.0.0.1:2", URL]);
        assert!(e.contains("give --listen once per address"), "{e}");
        let e = err(&["--leader-key", "/", "etcd://127.0.0.1:2379"]);
        assert!(e.contains("for --leader-key"), "{e}");
        assert!(load(&["--leader-key", "/", URL]).is_ok());
    }

    #[test]
    fn log_levels() {
        for ok in [
            "error",
            "WARN",
            "info",
            "debug",
            "trace",
            "off",
            "warn,leader_proxy=trace",
        ] {
            assert!(load(&["--log-level", ok, URL]).is_ok(), "{ok}");
        }
        assert_eq!(
            load(&["--log-level", "WARN", URL]).unwrap().log_level,
            "warn"
        );
        for bad in ["verbose", "info,", "leader_proxy=loud", "=info", ""] {
            let e = err(&["--log-level", bad, URL]);
            assert!(e.contains("for --log-level"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_discovery_urls() {
        for bad in [
            "127.0.0.1:2379",
            "redis://127.0.0.1:1",
            "etcd://nohostport/x",
        ] {
            let e = err(&[bad]);
            assert!(e.starts_with(&format!("invalid DISCOVERY {bad:?}")), "{e}");
        }
    }

    #[test]
    fn manager_schemes_take_the_probe_interval() {
        for scheme in ["swarm", "static"] {
            let url = format!("{scheme}://127.0.0.1:2375,127.0.0.2:2375");
            let s = load(&["--probe-interval", "250ms", &url]).unwrap();
            assert_eq!(s.discovery.hosts(), ["127.0.0.1:2375", "127.0.0.2:2375"]);
            assert_eq!(s.source_config().probe_interval, Duration::from_millis(250));
            assert_eq!(
                err(&["--probe-interval", "0s", &url]),
                "invalid value \"0s\" for --probe-interval (also LEADER_PROXY_PROBE_INTERVAL / \
                 probe-interval): must be more than 0"
            );
        }
    }

    #[test]
    fn contenders_only_for_etcdv3_and_zk() {
        assert_eq!(
            err(&["--election", "contenders", URL]),
            "--election contenders is only supported for etcdv3:// and zk:// (DISCOVERY is etcd://)"
        );
        assert!(load(&["--election", "contenders", "etcdv3://127.0.0.1:2379/x"]).is_ok());
    }

    #[test]
    fn non_loopback_needs_insecure_bind() {
        for addr in ["0.0.0.0:0", "[::]:2375", "10.1.2.3:2375"] {
            let e = err(&["--listen", "127.0.0.1:0", "--listen", addr, URL]);
            assert!(e.starts_with("refusing --listen"), "{e}");
            assert!(e.contains("The Docker API is root on every node"), "{e}");
            assert!(e.contains("--insecure-bind"), "{e}");
            let s = load(&["--listen", addr, "--insecure-bind", URL]).unwrap();
            assert!(s.insecure_bind);
        }
        let e = err(&["--admin", "0.0.0.0:9375", URL]);
        assert!(e.starts_with("refusing --admin 0.0.0.0:9375"), "{e}");
        assert!(load(&["--admin", "0.0.0.0:9375", "--insecure-bind", URL]).is_ok());
        assert_eq!(
            load(&["--admin", "localhost:1", URL]).unwrap().admin,
            Some("127.0.0.1:1".parse().unwrap())
        );
    }

    #[test]
    fn client_tls_from_every_source_and_what_goes_together() {
        use crate::tls::test_files::Files;
        let f = Files::new();
        let (cert, key, ca) = (
            f.str("server.pem"),
            f.str("server-key.pem"),
            f.str("ca.pem"),
        );
        let s = load(&["--tlscert", &cert, "--tlskey", &key, URL]).unwrap();
        assert_eq!(
            s.tls,
            Some(ClientTls {
                cert: cert.clone().into(),
                key: key.clone().into(),
                ca: None,
                verify: false
            })
        );
        let s = load_env(
            &[URL],
            &[
                ("LEADER_PROXY_TLSCERT", &cert),
                ("LEADER_PROXY_TLSKEY", &key),
                ("LEADER_PROXY_TLSCACERT", &ca),
                ("LEADER_PROXY_TLSVERIFY", "1"),
            ],
        )
        .unwrap();
        assert_eq!(s.tls, Some(f.client(true)));
        let toml = file(&format!(
            "tlscert = {cert:?}\ntlskey = {key:?}\ntlscacert = {ca:?}\ntlsverify = true\n"
        ));
        let s = load(&["--config", path(&toml), URL]).unwrap();
        assert_eq!(s.tls, Some(f.client(true)));
        // --tlsverify lets a non-loopback listener out; TLS without it does not.
        assert!(load_env(
            &["--listen", "0.0.0.0:0", URL],
            &[
                ("LEADER_PROXY_TLSCERT", &cert),
                ("LEADER_PROXY_TLSKEY", &key),
                ("LEADER_PROXY_TLSCACERT", &ca),
                ("LEADER_PROXY_TLSVERIFY", "true"),
            ],
        )
        .is_ok());
        let e = err(&[
            "--listen",
            "0.0.0.0:0",
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
            URL,
        ]);
        assert!(e.starts_with("refusing --listen 0.0.0.0:0"), "{e}");
        assert!(e.contains("--tlsverify"), "{e}");

        assert_eq!(
            err(&["--tlscert", &cert, URL]),
            "--tlscert (also LEADER_PROXY_TLSCERT / tlscert) needs --tlskey, its private key"
        );
        assert!(err(&["--tlskey", &key, URL]).starts_with("--tlskey (also"));
        assert_eq!(
            err(&["--tlscert", &cert, "--tlskey", &key, "--tlsverify", URL]),
            "--tlsverify (also LEADER_PROXY_TLSVERIFY / tlsverify) needs --tlscacert: the CA \
             that client certificates must be signed by"
        );
        assert!(err(&["--tlsverify", URL]).contains("needs --tlscert, --tlskey and --tlscacert"));
        assert!(err(&["--tlscacert", &ca, URL]).starts_with("--tlscacert (also"));
        // --tlscacert without --tlsverify: accepted and not used, as dockerd does.
        let s = load(&[
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
            "--tlscacert",
            &ca,
            URL,
        ])
        .unwrap();
        assert!(!s.tls.unwrap().verify);
        let e = err(&["--mode", "tcp", "--tlscert", &cert, "--tlskey", &key, URL]);
        assert!(e.contains("are for --mode http"), "{e}");
    }

    #[test]
    fn tls_files_are_checked_and_named() {
        use crate::tls::test_files::Files;
        let f = Files::new();
        let (cert, key) = (f.str("server.pem"), f.str("server-key.pem"));
        let missing = f.str("missing.pem");
        let e = err(&["--tlscert", &missing, "--tlskey", &key, URL]);
        assert!(
            e.starts_with(&format!(
                "invalid value {missing:?} for --tlscert (also LEADER_PROXY_TLSCERT / tlscert): \
                 cannot read it"
            )),
            "{e}"
        );
        let e = err(&["--tlscert", &cert, "--tlskey", &f.str("key.pem"), URL]);
        assert!(
            e.contains("for --tlskey") && e.contains("does not go with"),
            "{e}"
        );
        let e = err(&[
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
            "--tlsverify",
            "--tlscacert",
            &key,
            URL,
        ]);
        assert!(
            e.contains("for --tlscacert") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = err(&["--tlscert", &key, "--tlskey", &key, URL]);
        assert!(
            e.contains("for --tlscert") && e.contains("no PEM certificate"),
            "{e}"
        );

        let dir = f.dir.path().display().to_string();
        let s = load(&["--upstream-cert-path", &dir, URL]).unwrap();
        assert_eq!(s.upstream_cert_path, Some(f.dir.path().to_path_buf()));
        let s = load_env(&[URL], &[("LEADER_PROXY_UPSTREAM_CERT_PATH", &dir)]).unwrap();
        assert_eq!(s.upstream_cert_path, Some(f.dir.path().to_path_buf()));
        let e = err(&["--upstream-cert-path", &missing, URL]);
        assert!(
            e.contains("for --upstream-cert-path") && e.contains("not a directory"),
            "{e}"
        );
        // In --mode tcp only swarm:// and static:// probes use it.
        let e = err(&["--mode", "tcp", "--upstream-cert-path", &dir, URL]);
        assert!(e.contains("not used in --mode tcp with etcd://"), "{e}");
        let s = load(&[
            "--mode",
            "tcp",
            "--upstream-cert-path",
            &dir,
            "swarm://127.0.0.1:2376",
        ])
        .unwrap();
        assert_eq!(s.mode, Mode::Tcp);
        std::fs::write(f.path("ca.pem"), "not a certificate").unwrap();
        let e = err(&["--upstream-cert-path", &dir, URL]);
        assert!(
            e.contains("ca.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
    }

    #[test]
    fn mode_tcp() {
        let s = load(&["--mode", "tcp", URL]).unwrap();
        assert_eq!(s.mode, Mode::Tcp);
        let s = load_env(&[URL], &[("LEADER_PROXY_MODE", "TCP")]).unwrap();
        assert_eq!(s.mode, Mode::Tcp);
        // The proxy cannot see TLS: a non-loopback listener needs --insecure-bind.
        let e = err(&["--mode", "tcp", "--listen", "0.0.0.0:0", URL]);
        assert!(e.contains("in --mode tcp the proxy cannot check"), "{e}");
        assert!(load(&[
            "--mode",
            "tcp",
            "--listen",
            "0.0.0.0:0",
            "--insecure-bind",
            URL
        ])
        .is_ok());
    }

    #[test]
    fn unix_listeners_their_permissions_and_the_leader_change_policy() {
        let f = file("listen = [\"127.0.0.1:0\", \"unix:///tmp/x.sock\"]\nsocket-mode = \"600\"\n");
        let s = load(&["--config", path(&f), URL]).unwrap();
        assert_eq!(
            s.listen,
            [
                ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()),
                ListenAddr::Unix("/tmp/x.sock".into())
            ]
        );
        assert_eq!(s.socket_mode, 0o600);
        assert_eq!(s.socket_group, None);
        let s = load(&["--listen", "unix:///run/lp.sock", URL]).unwrap();
        assert_eq!(s.socket_mode, 0o660);
        let s = load_env(
            &[URL],
            &[
                ("LEADER_PROXY_SOCKET_MODE", "0o640"),
                ("LEADER_PROXY_SOCKET_GROUP", "root"),
                ("LEADER_PROXY_ON_LEADER_CHANGE", "close"),
                ("LEADER_PROXY_DRAIN_TIMEOUT", "10s"),
            ],
        )
        .unwrap();
        assert_eq!(s.socket_mode, 0o640);
        assert_eq!(s.socket_group, Some(0));
        assert_eq!(s.on_leader_change, OnLeaderChange::Close);
        assert_eq!(s.drain_timeout, Duration::from_secs(10));
        assert_eq!(
            load(&["--socket-group", "123", URL]).unwrap().socket_group,
            Some(123)
        );
        for bad in ["rw", "0999", "1777", "", "07777"] {
            let e = err(&["--socket-mode", bad, URL]);
            assert!(
                e.starts_with(&format!("invalid value {bad:?} for --socket-mode")),
                "{e}"
            );
        }
        let e = err(&["--socket-group", "no-such-group-leader-proxy", URL]);
        assert!(
            e.contains("--socket-group") && e.contains("no such group"),
            "{e}"
        );
        let e = err(&["--on-leader-change", "wait", URL]);
        assert!(e.contains("expected drain or close"), "{e}");
        assert!(err(&["--drain-timeout", "soon", URL]).contains("--drain-timeout"));
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret::from("hunter2".to_string());
        assert_eq!(format!("{secret} {secret:?}"), "*** ***");
        assert_eq!(secret.expose(), "hunter2");
        let s = load(&["--discovery-opt", "kv.token=hunter2", URL]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"), "{s:?}");
        let matches = cli::command()
            .try_get_matches_from(["leader-proxy", "--discovery-opt", "kv.token=hunter2"])
            .unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        assert!(!format!("{cli:?}").contains("hunter2"), "{cli:?}");
    }

    #[test]
    fn help_version_and_clap_errors_exit_like_clap() {
        let exit = |rest: &[&str]| match load(rest) {
            Err(e @ ConfigError::Clap(_)) => e.exit_code(),
            other => panic!("{rest:?}: {other:?}"),
        };
        assert_eq!(exit(&["--help"]), 0);
        assert_eq!(exit(&["-h"]), 0);
        assert_eq!(exit(&["--version"]), 0);
        assert_eq!(exit(&["--bogus", URL]), 2);
        assert_eq!(exit(&["--hold-timeout"]), 2);
        assert_eq!(exit(&[URL, URL]), 2);
        assert_eq!(ConfigError::MissingDiscovery.exit_code(), 2);
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
                    if let Err(e) = parse_file(setting) {
                        panic!("{name}: {line}: {e}");
                    }
                }
            }
            assert!(disabled >= 10, "{name}: only {disabled} disabled settings");
        }
    }
}
