//! The command line: [`Cli`] and the `--help` text, as docs/cli.md fixes them (a contract:
//! scripts and tests depend on it).
//!
//! [`Cli`] holds what one source said, as text: every field is an `Option` or a `Vec`, so
//! that the configuration can lay flags over the environment over the `--config` file over
//! the defaults, and check every value the same way whichever source gave it (an error
//! names the flag, its variable and its file key). Nothing here has a clap default, which
//! would hide the lower sources. The same struct is what the file is deserialised into
//! (serde, kebab-case: the file keys are the long flag names) and clap's `env` names the
//! variables (`env.rs`), so a new flag is one field here.
//!
//! On the command line a comma is NOT a separator (give a repeatable flag once per value),
//! so `--discovery-opt kv.password=a,b` keeps its comma; only the variables of repeatable
//! options are comma-separated lists. `--insecure-bind` and `--tlsverify` take an optional
//! `=BOOL` (`--insecure-bind=false`, to override a file).

use clap::builder::BoolishValueParser;
use clap::{ArgAction, CommandFactory, Parser};
use serde::Deserialize;

use super::Secret;

const ABOUT: &str = "One stable DOCKER_HOST in front of Swarm managers: follows the leader \
election and proxies to the current primary";

const LONG_ABOUT: &str = "\
One stable DOCKER_HOST in front of Swarm managers.

leader-proxy watches the leader election in the store the managers use (etcd, ZooKeeper,
Consul) or asks the managers themselves, and proxies every Docker API request to the
current primary. While no primary is reachable it holds requests (--hold-timeout) instead
of failing them.";

const AFTER_LONG_HELP: &str = "\
DISCOVERY, written the way `swarm manage` takes it:
  etcd://HOST:PORT[,HOST:PORT]/PREFIX     etcd, v2 API (classic Swarm)
  etcdv3://HOST:PORT[,HOST:PORT]/PREFIX   etcd, v3 API
  zk://HOST:PORT[,HOST:PORT]/PREFIX       ZooKeeper
  consul://HOST:PORT/PREFIX               Consul KV
  swarm://HOST:PORT[,HOST:PORT]           Docker swarm mode managers' Docker API (GET /nodes)
  static://HOST:PORT[,HOST:PORT]          classic Swarm managers, each probed (GET /info)
The leader is read from PREFIX/LEADER-KEY in a store; swarm:// and static:// managers are
asked every --probe-interval.

Examples, one per source (the URL is the one `swarm manage` is given):
  leader-proxy etcd://10.0.0.5:2379,10.0.0.6:2379/swarm
  leader-proxy --election contenders etcdv3://10.0.0.5:2379/swarm
  leader-proxy zk://10.0.0.5:2181,10.0.0.6:2181,10.0.0.7:2181/swarm
  leader-proxy --discovery-opt kv.token=SECRET consul://10.0.0.5:8500/swarm
  leader-proxy swarm://10.0.0.11:2375,10.0.0.12:2375,10.0.0.13:2375
  leader-proxy static://10.0.0.1:4000,10.0.0.2:4000,10.0.0.3:4000

Every option can also be set in the environment, as LEADER_PROXY_ + the long flag in upper
snake case (LEADER_PROXY_HOLD_TIMEOUT=30s; DISCOVERY is LEADER_PROXY_DISCOVERY). The
variables of repeatable options take a comma-separated list. Or in a TOML file given with
--config, whose keys are the long flag names (hold-timeout = \"30s\", listen = [\"127.0.0.1:2375\"],
discovery = \"etcd://127.0.0.1:2379/swarm\"). Flags beat the environment, which beats the file,
which beats the defaults.

Durations are written like 500ms, 30s, 5m.";

/// `leader-proxy [OPTIONS] <DISCOVERY>`; see the module docs for how the values are layered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Parser, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
#[command(
    name = "leader-proxy",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP,
    after_help = "Every option also reads LEADER_PROXY_<FLAG> from the environment; see --help.",
    override_usage = "leader-proxy [OPTIONS] <DISCOVERY>"
)]
pub struct Cli {
    /// Where the election is: etcd://, etcdv3://, zk://, consul://, swarm:// or static://
    /// HOST:PORT[,HOST:PORT][/PREFIX]. Required unless the --config file sets `discovery`.
    #[arg(value_name = "DISCOVERY", env = "LEADER_PROXY_DISCOVERY")]
    pub discovery: Option<String>,

    /// Address to serve the Docker API on: HOST:PORT (an IP or localhost; port 0 = any) or
    /// unix:///PATH. Repeatable. [default: 127.0.0.1:2375]
    #[arg(
        long,
        value_name = "ADDR",
        action = ArgAction::Append,
        env = "LEADER_PROXY_LISTEN",
        help_heading = "Listening"
    )]
    #[serde(deserialize_with = "super::file::listen")]
    pub listen: Vec<String>,

    /// Permissions of unix listeners, in octal. [default: 0660]
    #[arg(
        long,
        value_name = "MODE",
        env = "LEADER_PROXY_SOCKET_MODE",
        help_heading = "Listening"
    )]
    pub socket_mode: Option<String>,

    /// Group of unix listeners. [default: the process's group]
    #[arg(
        long,
        value_name = "NAME",
        env = "LEADER_PROXY_SOCKET_GROUP",
        help_heading = "Listening"
    )]
    pub socket_group: Option<String>,

    /// http: the Docker-API-aware proxy; tcp: passthrough of the byte stream. [default: http]
    #[arg(
        long,
        value_name = "http|tcp",
        env = "LEADER_PROXY_MODE",
        help_heading = "Listening"
    )]
    pub mode: Option<String>,

    /// Client connections served at once, over all listeners; beyond it a new client gets
    /// 503 (--mode http) or is closed (--mode tcp). [default: (the open-files limit - 256) /
    /// 2]
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        env = "LEADER_PROXY_MAX_CONNECTIONS",
        help_heading = "Listening"
    )]
    // A TOML number or a string, read like --max-held's.
    #[serde(deserialize_with = "super::file::max_held")]
    pub max_connections: Option<String>,

    /// Accept the PROXY protocol (v1, v2) from these sources only, comma-separated CIDRs or
    /// IPs; a connection from them must start with a PROXY header. [default: none (off)]
    #[arg(
        long,
        value_name = "CIDR,...",
        env = "LEADER_PROXY_PROXY_PROTOCOL_FROM",
        help_heading = "Listening"
    )]
    pub proxy_protocol_from: Option<String>,

    /// Allow a non-loopback listener without client certificates (--tlsverify), or a
    /// non-loopback --admin. The Docker API is root on every node: only for ports something
    /// else protects.
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        env = "LEADER_PROXY_INSECURE_BIND",
        help_heading = "Listening"
    )]
    pub insecure_bind: Option<bool>,

    /// Key under the DISCOVERY prefix that holds the election. [default: docker/swarm/leader]
    #[arg(
        long,
        value_name = "KEY",
        env = "LEADER_PROXY_LEADER_KEY",
        help_heading = "Election"
    )]
    pub leader_key: Option<String>,

    /// key: the key's value is the leader (Swarm, libkv). contenders: the key is the parent of
    /// contender entries and the first one leads (etcdv3:// and zk:// only). [default: key]
    #[arg(
        long,
        value_name = "key|contenders",
        env = "LEADER_PROXY_ELECTION",
        help_heading = "Election"
    )]
    pub election: Option<String>,

    /// Store option K=V, repeatable: kv.cacertfile, kv.certfile, kv.keyfile (TLS to the
    /// store), kv.username, kv.password (etcd), kv.auth (ZooKeeper), kv.token (Consul).
    #[arg(
        long,
        value_name = "K=V",
        action = ArgAction::Append,
        env = "LEADER_PROXY_DISCOVERY_OPT",
        hide_env_values = true,
        help_heading = "Election"
    )]
    #[serde(deserialize_with = "super::file::discovery_opt")]
    pub discovery_opt: Vec<Secret>,

    /// Managers the leader may be, repeatable or comma-separated: HOST (any port),
    /// HOST:PORT, or a CIDR block (every address the leader resolves to must be inside). A
    /// leader outside the list is refused and the last good one kept. [default: every
    /// address; static:// its entries]
    #[arg(
        long,
        value_name = "LIST",
        action = ArgAction::Append,
        env = "LEADER_PROXY_ALLOW_LEADER",
        help_heading = "Election"
    )]
    pub allow_leader: Vec<String>,

    /// Ask the manager the store names (GET /info, Role/Primary) before routing to it and
    /// every --probe-interval while it leads; a replica naming a confirmed primary is routed
    /// past, no confirmed primary holds requests. Not for swarm:// or static://, which ask
    /// the managers already. [default: on for etcd://, etcdv3://, zk://, consul://]
    #[arg(
        long,
        value_name = "on|off",
        env = "LEADER_PROXY_VERIFY_LEADER",
        help_heading = "Election"
    )]
    pub verify_leader: Option<String>,

    /// How often swarm:// and static:// managers are polled. [default: 500ms]
    #[arg(
        long,
        value_name = "DUR",
        env = "LEADER_PROXY_PROBE_INTERVAL",
        help_heading = "Election"
    )]
    pub probe_interval: Option<String>,

    /// How long a request waits for a reachable leader before 503 (or a connection before
    /// it is closed, in --mode tcp). [default: 30s]
    #[arg(
        long,
        value_name = "DUR",
        env = "LEADER_PROXY_HOLD_TIMEOUT",
        help_heading = "Proxying"
    )]
    pub hold_timeout: Option<String>,

    /// Held requests beyond this many get 503 at once; 0 holds none. [default: 10000]
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        env = "LEADER_PROXY_MAX_HELD",
        help_heading = "Proxying"
    )]
    #[serde(deserialize_with = "super::file::max_held")]
    pub max_held: Option<String>,

    /// Timeout for dialling a manager. [default: 2s]
    #[arg(
        long,
        value_name = "DUR",
        env = "LEADER_PROXY_CONNECT_TIMEOUT",
        help_heading = "Proxying"
    )]
    pub connect_timeout: Option<String>,

    /// What happens to open connections to the old leader: drain lets them run while it
    /// lives (up to --drain-timeout), close ends them at the change. [default: drain]
    #[arg(
        long,
        value_name = "drain|close",
        env = "LEADER_PROXY_ON_LEADER_CHANGE",
        help_heading = "Proxying"
    )]
    pub on_leader_change: Option<String>,

    /// With --on-leader-change drain, close what is still open this long after the change.
    /// [default: 5m]
    #[arg(
        long,
        value_name = "DUR",
        env = "LEADER_PROXY_DRAIN_TIMEOUT",
        help_heading = "Proxying"
    )]
    pub drain_timeout: Option<String>,

    /// On SIGTERM, how long running requests may finish. [default: 30s]
    #[arg(
        long,
        value_name = "DUR",
        env = "LEADER_PROXY_SHUTDOWN_GRACE",
        help_heading = "Proxying"
    )]
    pub shutdown_grace: Option<String>,

    /// Unix socket where this process hands its listening sockets to a new one started
    /// with --upgrade (owner-only permissions). [default: none, no upgrades]
    #[arg(
        long,
        value_name = "PATH",
        env = "LEADER_PROXY_UPGRADE_SOCKET",
        help_heading = "Proxying"
    )]
    pub upgrade_socket: Option<String>,

    /// Take every listening socket from the process running on --upgrade-socket instead of
    /// binding them; it stops accepting and finishes what is open. Fails (exit 1) when no
    /// process answers there.
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        env = "LEADER_PROXY_UPGRADE",
        help_heading = "Proxying"
    )]
    pub upgrade: Option<bool>,

    /// Certificate for TLS to clients (TLS is on with --tlscert and --tlskey).
    #[arg(
        long,
        value_name = "FILE",
        env = "LEADER_PROXY_TLSCERT",
        help_heading = "TLS"
    )]
    pub tlscert: Option<String>,

    /// Private key for TLS to clients.
    #[arg(
        long,
        value_name = "FILE",
        env = "LEADER_PROXY_TLSKEY",
        help_heading = "TLS"
    )]
    pub tlskey: Option<String>,

    /// CA that client certificates must be signed by (with --tlsverify).
    #[arg(
        long,
        value_name = "FILE",
        env = "LEADER_PROXY_TLSCACERT",
        help_heading = "TLS"
    )]
    pub tlscacert: Option<String>,

    /// Require a client certificate signed by --tlscacert.
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        env = "LEADER_PROXY_TLSVERIFY",
        help_heading = "TLS"
    )]
    pub tlsverify: Option<bool>,

    /// TLS to the managers with ca.pem, cert.pem and key.pem from DIR (the DOCKER_CERT_PATH
    /// layout).
    #[arg(
        long,
        value_name = "DIR",
        env = "LEADER_PROXY_UPSTREAM_CERT_PATH",
        help_heading = "TLS"
    )]
    pub upstream_cert_path: Option<String>,

    /// Admin and metrics listener (/leader, /leader/history, /healthz, /readyz,
    /// /metrics; `leader-proxy status` asks it), or off.
    /// [default: 127.0.0.1:9375]
    #[arg(
        long,
        value_name = "ADDR|off",
        env = "LEADER_PROXY_ADMIN",
        help_heading = "Operations"
    )]
    pub admin: Option<String>,

    /// error, warn, info, debug or trace, or directives like info,leader_proxy=debug.
    /// [default: info]
    #[arg(
        long,
        value_name = "LEVEL",
        env = "LEADER_PROXY_LOG_LEVEL",
        help_heading = "Operations"
    )]
    pub log_level: Option<String>,

    /// Log format. [default: text]
    #[arg(
        long,
        value_name = "text|json",
        env = "LEADER_PROXY_LOG_FORMAT",
        help_heading = "Operations"
    )]
    pub log_format: Option<String>,

    /// API sections served, comma-separated: docker-socket-proxy's names (containers,
    /// images, exec, …) plus archive (a container's files: /archive, /export). [default:
    /// all]
    #[arg(
        long,
        value_name = "SECTIONS",
        env = "LEADER_PROXY_ALLOW",
        help_heading = "Policy"
    )]
    #[serde(deserialize_with = "super::file::comma_list")]
    pub allow: Option<String>,

    /// Serve only GET and HEAD requests (docker-socket-proxy's POST=0).
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        env = "LEADER_PROXY_READ_ONLY",
        help_heading = "Policy"
    )]
    pub read_only: Option<bool>,

    /// Refuse containers, execs and services asking for these, comma-separated:
    /// privileged, cap-add, host-namespaces, devices, docker-socket, unconfined.
    /// [default: none]
    #[arg(
        long,
        value_name = "RULES",
        env = "LEADER_PROXY_DENY",
        help_heading = "Policy"
    )]
    #[serde(deserialize_with = "super::file::comma_list")]
    pub deny: Option<String>,

    /// Bind-mount sources must be under one of these absolute paths, comma-separated;
    /// `none`: no bind mount. [default: any]
    #[arg(
        long,
        value_name = "PATHS",
        env = "LEADER_PROXY_BIND_MOUNTS",
        help_heading = "Policy"
    )]
    #[serde(deserialize_with = "super::file::comma_list")]
    pub bind_mounts: Option<String>,

    /// Give containers, volumes, networks and services created this label; show and let
    /// clients touch only objects that carry it (404 for the others); refuse image
    /// removal. [default: none]
    #[arg(
        long,
        value_name = "KEY=VALUE",
        env = "LEADER_PROXY_OWNER_LABEL",
        help_heading = "Policy"
    )]
    pub owner_label: Option<String>,

    /// Rego policy (opa-docker-authz's input, v0 or v1) whose data.docker.authz.allow
    /// must be true for a request to pass. [default: none]
    #[arg(
        long,
        value_name = "FILE",
        env = "LEADER_PROXY_POLICY_REGO",
        help_heading = "Policy"
    )]
    pub policy_rego: Option<String>,

    /// `[[listener]]` tables of the --config file: a listener with a policy of its own.
    #[arg(skip)]
    pub listener: Vec<ListenerTable>,

    /// TOML file with the same settings; keys are the long flag names.
    #[arg(
        long,
        value_name = "FILE",
        env = "LEADER_PROXY_CONFIG",
        help_heading = "Operations"
    )]
    // Only the flags and the environment name the file: a file naming another is refused
    // as an unknown key.
    #[serde(skip)]
    pub config: Option<String>,
}

const USAGE: &str = "leader-proxy [OPTIONS] <DISCOVERY>
       leader-proxy status [--admin ADDR]
       leader-proxy leader [OPTIONS] <DISCOVERY>";

/// clap's default help template with the two commands after the usage line. Only the help
/// names them: the command that parses the proxy's line has no subcommands, so its
/// errors and their usage line stay exactly what they were (see [`command`]).
const HELP_TEMPLATE: &str = "\
{before-help}{about-with-newline}
{usage-heading} {usage}
       leader-proxy status [--admin ADDR]
       leader-proxy leader [OPTIONS] <DISCOVERY>

Commands:
  status  What a running proxy follows: the leader, its state, held requests, the last changes
  leader  Prints the current leader once: exit 0 with one, 1 without, 3 store unreachable

{all-args}{after-help}";

const STATUS_ABOUT: &str = "Shows what a running proxy follows: the leader and since when, the \
source's state, the held requests and the last leader changes with their reasons";

const LEADER_ABOUT: &str = "Prints the current leader once and exits: 0 with a leader, 1 \
without, 3 when the store cannot be reached, 2 on bad input";

/// A `[[listener]]` table of the --config file: a listener `address` (as `--listen`
/// takes it) whose policy is the keys given here, in place of the global policy (the
/// flags, variables and top-level keys), so that one unix socket can be restricted and
/// another listener left open. Keys not given are their defaults (no restriction).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ListenerTable {
    pub address: String,
    #[serde(deserialize_with = "super::file::comma_list")]
    pub allow: Option<String>,
    pub read_only: Option<bool>,
    #[serde(deserialize_with = "super::file::comma_list")]
    pub deny: Option<String>,
    #[serde(deserialize_with = "super::file::comma_list")]
    pub bind_mounts: Option<String>,
    pub owner_label: Option<String>,
    pub policy_rego: Option<String>,
}

/// The command to parse the proxy's command line with: [`Cli`]'s, with the environment
/// variables moved from clap's reading into the help text. `env.rs` reads them instead,
/// from the process or from a map a test passes in, so that tests never race on the process
/// environment and a variable's value is checked like the flag's.
///
/// Its help names the `status` and `leader` commands too, but it does not parse them, so
/// that the proxy's command line, its errors included, is what it always was. A DISCOVERY
/// is always a URL with `://`, so the binary tells a first argument `status` or `leader`
/// apart before parsing and runs those with [`status_command`] and [`leader_command`]
/// (docs/cli.md, "Commands").
pub fn command() -> clap::Command {
    options_command().help_template(HELP_TEMPLATE)
}

/// The whole command line as one clap command, the two commands as subcommands: what the
/// man pages and the shell completions are rendered from (crates/dist-assets). Not for
/// parsing (see [`command`]).
pub fn documented_command() -> clap::Command {
    options_command()
        .override_usage(USAGE)
        .subcommand(status_command())
        .subcommand(leader_command())
        .args_conflicts_with_subcommands(true)
        .disable_help_subcommand(true)
}

/// `leader-proxy leader`: the proxy's own options (DISCOVERY, `--leader-key`, `--election`,
/// `--discovery-opt`, `--config`, …, and their variables), so that it reads the election
/// exactly as the proxy configured the same way would.
pub fn leader_command() -> clap::Command {
    options_command()
        .name("leader")
        .bin_name("leader-proxy leader")
        .about(LEADER_ABOUT)
        .long_about(None)
        .after_long_help(None::<&str>)
        .override_usage("leader-proxy leader [OPTIONS] <DISCOVERY>")
}

/// `leader-proxy status [--admin ADDR]`.
pub fn status_command() -> clap::Command {
    StatusArgs::command()
        .name("status")
        .bin_name("leader-proxy status")
        .about(STATUS_ABOUT)
}

/// The options of `leader-proxy status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Parser)]
#[command(version)]
pub struct StatusArgs {
    /// The admin listener of the proxy to ask, HOST:PORT. [default: 127.0.0.1:9375]
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
}

/// [`Cli`]'s command with the variables moved into the help text (see [`command`]).
fn options_command() -> clap::Command {
    Cli::command().mut_args(|arg| {
        let Some(var) = arg.get_env().map(|v| v.to_string_lossy().into_owned()) else {
            return arg;
        };
        let note = format!(" [env: {var}]");
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default() + &note;
        let long_help = arg.get_long_help().map(|h| h.to_string() + &note);
        let arg = arg.env(None).help(help);
        match long_help {
            Some(long_help) => arg.long_help(long_help),
            None => arg,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        command().debug_assert();
        documented_command().debug_assert();
    }

    #[test]
    fn command_does_not_read_the_environment_but_documents_it() {
        let cmd = command();
        assert!(cmd.get_arguments().all(|a| a.get_env().is_none()));
        let help = command().render_long_help().to_string();
        assert!(help.contains("[env: LEADER_PROXY_HOLD_TIMEOUT]"), "{help}");
        assert!(help.contains("[env: LEADER_PROXY_DISCOVERY]"), "{help}");
    }

    #[test]
    fn a_comma_on_the_command_line_is_kept() {
        let m = command()
            .try_get_matches_from(["leader-proxy", "--discovery-opt", "kv.password=a,b", "x"])
            .unwrap();
        let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&m).unwrap();
        assert_eq!(cli.discovery_opt[0].expose(), "kv.password=a,b");
    }

    #[test]
    fn bool_flags_take_an_optional_value_without_eating_discovery() {
        let parse = |args: &[&str]| {
            let m = command().try_get_matches_from(args).unwrap();
            <Cli as clap::FromArgMatches>::from_arg_matches(&m).unwrap()
        };
        let cli = parse(&["leader-proxy", "--insecure-bind", "etcd://127.0.0.1:2379"]);
        assert_eq!(cli.insecure_bind, Some(true));
        assert_eq!(cli.discovery.as_deref(), Some("etcd://127.0.0.1:2379"));
        let cli = parse(&["leader-proxy", "--insecure-bind=false"]);
        assert_eq!(cli.insecure_bind, Some(false));
        assert_eq!(parse(&["leader-proxy"]), Cli::default());
    }

    #[test]
    fn debug_does_not_print_store_options() {
        let m = command()
            .try_get_matches_from(["leader-proxy", "--discovery-opt", "kv.token=hunter2"])
            .unwrap();
        let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&m).unwrap();
        assert!(!format!("{cli:?}").contains("hunter2"), "{cli:?}");
    }
}
