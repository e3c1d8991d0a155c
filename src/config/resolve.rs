//! Turning the layered options (text, as the user gave it) into typed [`Settings`], with
//! the defaults filled in. Every value goes through the same parser whichever source gave
//! it, and every error names the flag, its variable and its file key ([`invalid`]); the
//! bind and TLS rules are in `policy.rs`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::cli::Cli;
use super::error::{invalid, ConfigError};
use super::{access, policy, ListenAddr, LogFormat, Mode, Secret, Settings};
use crate::discovery::{AllowList, DiscoveryUrl, Election, LeaderAddr, Scheme};
use crate::proxy::drain::OnLeaderChange;

/// The defaults of docs/cli.md's table; `cli.rs` repeats them in the help text.
mod defaults {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::time::Duration;

    pub const LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2375));
    pub const SOCKET_MODE: u32 = 0o660;
    pub const LEADER_KEY: &str = "docker/swarm/leader";
    pub const HOLD_TIMEOUT: Duration = Duration::from_secs(30);
    pub const MAX_HELD: usize = 10_000;
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5 * 60);
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
    pub const ADMIN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9375));
    pub const LOG_LEVEL: &str = "info";
}

/// The schemes `--election contenders` works with.
const CONTENDER_SCHEMES: &[Scheme] = &[Scheme::EtcdV3, Scheme::Zk];

/// Checks the layered values and fills in the defaults. `discovery_opts` are merged per key
/// beforehand (`discovery_opts.rs`), so `cli.discovery_opt` is not read here.
pub(super) fn resolve(
    mut cli: Cli,
    discovery_opts: BTreeMap<String, Secret>,
) -> Result<Settings, ConfigError> {
    let access = access::Options::take(&mut cli);
    let discovery = discovery(cli.discovery)?;
    let mode = one_of(
        "mode",
        cli.mode,
        &[("http", Mode::Http), ("tcp", Mode::Tcp)],
        Mode::Http,
    )?;
    let listen_given = !cli.listen.is_empty();
    let listen = listen(cli.listen)?;
    let (listen, listen_policy) = access::listeners(listen, listen_given, access, mode)?;
    let socket_mode = socket_mode(cli.socket_mode)?;
    let socket_group = socket_group(cli.socket_group)?;
    let max_connections = max_connections(cli.max_connections)?;
    let proxy_protocol_from = proxy_protocol_from(cli.proxy_protocol_from)?;
    let election = election(cli.election, &discovery)?;
    let leader_key = leader_key(cli.leader_key, &discovery)?;
    let hold_timeout = duration(
        "hold-timeout",
        cli.hold_timeout,
        defaults::HOLD_TIMEOUT,
        true,
    )?;
    let max_held = max_held(cli.max_held)?;
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
    let allow_leader = allow_leader(&cli.allow_leader, &discovery)?;
    let verify_leader = verify_leader(cli.verify_leader, &discovery)?;
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
    let admin = admin(cli.admin)?;
    let log_level = log_level(cli.log_level)?;
    let log_format = one_of(
        "log-format",
        cli.log_format,
        &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        LogFormat::Text,
    )?;
    let tlsverify = cli.tlsverify.unwrap_or(false);
    let tls = policy::client_tls([cli.tlscert, cli.tlskey, cli.tlscacert], tlsverify, mode)?;
    let upstream_cert_path = policy::upstream_cert_path(cli.upstream_cert_path, mode, &discovery)?;
    let insecure_bind = cli.insecure_bind.unwrap_or(false);
    policy::check_bind(&listen, admin, insecure_bind, tlsverify, mode)?;
    let (upgrade_socket, upgrade) = upgrade(cli.upgrade_socket, cli.upgrade)?;

    Ok(Settings {
        discovery,
        listen,
        listen_policy,
        socket_mode,
        socket_group,
        mode,
        max_connections,
        proxy_protocol_from,
        leader_key,
        election,
        hold_timeout,
        max_held,
        connect_timeout,
        probe_interval,
        allow_leader,
        verify_leader,
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
        upgrade_socket,
        upgrade,
    })
}

/// `--upgrade-socket` (an absolute path, like a unix `--listen`) and `--upgrade`, which
/// has nowhere to take the listeners from without it.
fn upgrade(
    socket: Option<String>,
    upgrade: Option<bool>,
) -> Result<(Option<PathBuf>, bool), ConfigError> {
    let socket = match socket {
        Some(value) if !value.trim().starts_with('/') => {
            return Err(invalid(
                "upgrade-socket",
                &value,
                "expected an absolute path for a unix socket",
            ))
        }
        Some(value) => Some(PathBuf::from(value.trim())),
        None => None,
    };
    let upgrade = upgrade.unwrap_or(false);
    if upgrade && socket.is_none() {
        return Err(invalid(
            "upgrade",
            "true",
            "needs --upgrade-socket PATH, where the running process hands its listeners over",
        ));
    }
    Ok((socket, upgrade))
}

fn discovery(value: Option<String>) -> Result<DiscoveryUrl, ConfigError> {
    let value = value.ok_or(ConfigError::MissingDiscovery)?;
    DiscoveryUrl::parse(value.trim()).map_err(|reason| ConfigError::Discovery { value, reason })
}

/// `--allow-leader`; without it a `static://` URL allows its own entries (the only
/// managers it asks), every other source any leader.
fn allow_leader(values: &[String], discovery: &DiscoveryUrl) -> Result<AllowList, ConfigError> {
    let allow = AllowList::parse(values)
        .map_err(|reason| invalid("allow-leader", &values.join(","), reason.to_string()))?;
    if !allow.is_empty() || discovery.scheme() != Scheme::Static {
        return Ok(allow);
    }
    Ok(AllowList::of(
        discovery
            .hosts()
            .iter()
            .filter_map(|host| LeaderAddr::parse(host).ok()),
    ))
}

/// `--verify-leader`: on by default for the stores; `swarm://` and `static://` ask the
/// managers themselves, so the flag is refused with them.
fn verify_leader(value: Option<String>, discovery: &DiscoveryUrl) -> Result<bool, ConfigError> {
    let scheme = discovery.scheme();
    if matches!(scheme, Scheme::Swarm | Scheme::Static) {
        return match value {
            None => Ok(false),
            Some(value) => Err(invalid(
                "verify-leader",
                &value,
                format!(
                    "{}:// asks the managers who leads already; --verify-leader is for the \
                     stores (etcd://, etcdv3://, zk://, consul://)",
                    scheme.as_str()
                ),
            )),
        };
    }
    one_of(
        "verify-leader",
        value,
        &[("on", true), ("off", false)],
        true,
    )
}

fn listen(values: Vec<String>) -> Result<Vec<ListenAddr>, ConfigError> {
    if values.is_empty() {
        return Ok(vec![ListenAddr::Tcp(defaults::LISTEN)]);
    }
    values
        .iter()
        .map(|value| {
            ListenAddr::parse(value).ok_or_else(|| {
                let mut expected = "expected HOST:PORT with an IP address or localhost \
                                    (like 127.0.0.1:2375 or [::1]:2375), or unix:///PATH"
                    .to_string();
                // The one mistake a user of LEADER_PROXY_LISTEN makes on the command line.
                if value.contains(',') {
                    expected += " (give --listen once per address; only \
                                 LEADER_PROXY_LISTEN takes a comma-separated list)";
                }
                invalid("listen", value, expected)
            })
        })
        .collect()
}

/// Octal permissions (`0660`, `660`, `0o660`), at most `0777`: the set-id and sticky bits
/// mean nothing on a socket.
fn socket_mode(value: Option<String>) -> Result<u32, ConfigError> {
    let Some(value) = value else {
        return Ok(defaults::SOCKET_MODE);
    };
    let digits = value.trim();
    let digits = digits.strip_prefix("0o").unwrap_or(digits);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if !digits.is_empty() && digits.len() <= 4 && mode <= 0o777 => Ok(mode),
        _ => Err(invalid(
            "socket-mode",
            &value,
            "expected permissions in octal, like 0660",
        )),
    }
}

/// A group name or id, looked up now so that a typo fails at start, not at the first bind.
fn socket_group(value: Option<String>) -> Result<Option<u32>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    crate::proxy::listener::group_id(value.trim())
        .map(Some)
        .ok_or_else(|| {
            invalid(
                "socket-group",
                &value,
                "no such group (give a group name or a numeric id)",
            )
        })
}

fn election(value: Option<String>, discovery: &DiscoveryUrl) -> Result<Election, ConfigError> {
    let election = one_of(
        "election",
        value,
        &[("key", Election::Key), ("contenders", Election::Contenders)],
        Election::Key,
    )?;
    if election == Election::Contenders && !CONTENDER_SCHEMES.contains(&discovery.scheme()) {
        return Err(ConfigError::Contenders(discovery.scheme().as_str()));
    }
    Ok(election)
}

/// The key under the DISCOVERY prefix; together they must name a key, not the root.
fn leader_key(value: Option<String>, discovery: &DiscoveryUrl) -> Result<String, ConfigError> {
    let leader_key = value.unwrap_or_else(|| defaults::LEADER_KEY.to_string());
    if discovery.key(&leader_key).is_empty() {
        return Err(invalid(
            "leader-key",
            &leader_key,
            "the key is empty: give a prefix in DISCOVERY or a --leader-key",
        ));
    }
    Ok(leader_key)
}

fn max_held(value: Option<String>) -> Result<usize, ConfigError> {
    let Some(value) = value else {
        return Ok(defaults::MAX_HELD);
    };
    value.trim().parse().map_err(|_| {
        invalid(
            "max-held",
            &value,
            "expected a whole number (0: hold no request)",
        )
    })
}

/// A whole number, at least 1; `None` when not given (derived from the open-files limit
/// at start, when the limit is known).
fn max_connections(value: Option<String>) -> Result<Option<usize>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    match value.trim().parse::<usize>() {
        Ok(max) if max >= 1 => Ok(Some(max)),
        _ => Err(invalid(
            "max-connections",
            &value,
            "expected a whole number, at least 1",
        )),
    }
}

/// Comma-separated CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or single IPs; empty = off.
fn proxy_protocol_from(value: Option<String>) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    invalid(
                        "proxy-protocol-from",
                        &value,
                        format!(
                            "{entry:?} is not an IP address or a CIDR range (like 10.0.0.0/8 \
                             or 2001:db8::/32)"
                        ),
                    )
                })
        })
        .collect()
}

/// `HOST:PORT`, or `off` for no admin listener.
pub(super) fn admin(value: Option<String>) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(value) = value else {
        return Ok(Some(defaults::ADMIN));
    };
    if value.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    parse_socket_addr(value.trim()).map(Some).ok_or_else(|| {
        invalid(
            "admin",
            &value,
            "expected HOST:PORT with an IP address or localhost (like 127.0.0.1:9375), or off",
        )
    })
}

/// `HOST:PORT` where HOST is an IP literal (`[v6]` bracketed) or `localhost` (127.0.0.1).
/// No other names: a listener bound to whatever a name resolves to today is a surprise.
pub(super) fn parse_socket_addr(value: &str) -> Option<SocketAddr> {
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

/// The longest duration any flag takes. Past it a deadline (`Instant::now() + d`) could
/// overflow at request time and panic; no hold, drain or grace period needs more.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A humantime duration (`500ms`, `30s`, `5m`), at most a year; zero only where `zero_ok`.
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
        Ok(d) if d > MAX_DURATION => Err(invalid(long, &value, "must be at most a year (365d)")),
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
    use crate::config::test_support::{err, err_env, file, load, load_env, path, URL};

    #[test]
    fn defaults_when_nothing_is_given() {
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
        let source = s.source_config(None);
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
        assert_eq!(s.source_config(None).url.key(&s.leader_key), "my/leader");
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
            assert_eq!(
                s.source_config(None).probe_interval,
                Duration::from_millis(250)
            );
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
    fn durations_up_to_a_year() {
        let s = load(&["--drain-timeout", "365d", URL]).unwrap();
        assert_eq!(s.drain_timeout, MAX_DURATION);
        let e = err(&["--drain-timeout", "366d", URL]);
        assert!(
            e.contains("for --drain-timeout") && e.contains("at most a year"),
            "{e}"
        );
    }

    #[test]
    fn max_connections_and_proxy_protocol_sources() {
        let s = load(&[URL]).unwrap();
        assert_eq!(s.max_connections, None, "derived from the limit at start");
        assert!(s.proxy_protocol_from.is_empty(), "off by default");
        let f = file("max-connections = 500\nproxy-protocol-from = \"10.0.0.0/8, 192.0.2.7\"\n");
        let s = load(&["--config", path(&f), URL]).unwrap();
        assert_eq!(s.max_connections, Some(500));
        assert_eq!(
            s.proxy_protocol_from,
            [
                "10.0.0.0/8".parse::<ipnet::IpNet>().unwrap(),
                "192.0.2.7/32".parse().unwrap()
            ]
        );
        let s = load_env(&[URL], &[("LEADER_PROXY_MAX_CONNECTIONS", "7")]).unwrap();
        assert_eq!(s.max_connections, Some(7));
        for bad in ["0", "-1", "many", ""] {
            let e = err(&["--max-connections", bad, URL]);
            assert!(
                e.starts_with(&format!("invalid value {bad:?} for --max-connections")),
                "{e}"
            );
        }
        let e = err(&["--proxy-protocol-from", "10.0.0.0/8,lb.example", URL]);
        assert!(
            e.contains("for --proxy-protocol-from") && e.contains("\"lb.example\" is not"),
            "{e}"
        );
        let e = err_env(
            &[URL],
            &[("LEADER_PROXY_PROXY_PROTOCOL_FROM", "10.0.0.0/33")],
        );
        assert!(e.contains("--proxy-protocol-from"), "{e}");
    }

    #[test]
    fn upgrade_needs_an_upgrade_socket_given_as_an_absolute_path() {
        let s = load(&[URL]).unwrap();
        assert_eq!((s.upgrade_socket, s.upgrade), (None, false));
        let s = load(&["--upgrade-socket", "/run/lp/up.sock", "--upgrade", URL]).unwrap();
        assert_eq!(s.upgrade_socket, Some(PathBuf::from("/run/lp/up.sock")));
        assert!(s.upgrade);
        let e = err(&["--upgrade", URL]);
        assert!(
            e.starts_with("invalid value \"true\" for --upgrade") && e.contains("--upgrade-socket"),
            "{e}"
        );
        let e = err(&["--upgrade-socket", "up.sock", URL]);
        assert!(
            e.contains("for --upgrade-socket") && e.contains("absolute"),
            "{e}"
        );
    }
}
