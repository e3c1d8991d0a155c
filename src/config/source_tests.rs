//! Each source of the configuration (the `--config` file, the environment, the
//! `--discovery-opt` entries, clap's own errors) through the whole loader, as the binary
//! runs it. Their parsers are in the `leader-proxy-parsers` crate (crates/parsers), whose
//! own unit tests cover what needs no typed settings.

use std::collections::BTreeMap;

use crate::config::test_support::{err, err_env, file, load, load_env, path, URL};
use crate::config::{ConfigError, ListenAddr};
use crate::discovery::Scheme;

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
            if setting.starts_with(|c: char| c.is_ascii_lowercase()) && setting.contains(" = ") {
                disabled += 1;
                if let Err(e) = crate::config::file::parse(setting) {
                    panic!("{name}: {line}: {e}");
                }
            }
        }
        assert!(disabled >= 10, "{name}: only {disabled} disabled settings");
    }
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
