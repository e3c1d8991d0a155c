//! The command line contract (docs/cli.md), checked on the real binary:
//! `--help` and `--version` exit 0, every refused configuration exits 2 with
//! `leader-proxy: <message>` on stderr naming what is wrong.
//!
//! Every case here is refused before anything is bound or dialled, so no store is needed.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const URL: &str = "etcd://127.0.0.1:2379/swarm";

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` and `vars`, without any `LEADER_PROXY_*` variable of the
/// test's own environment. A run that does not end within 20 s is killed and fails the test
/// (these configurations must be refused at once).
fn run_env(args: &[&str], vars: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(testkit::bins::leader_proxy());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("LEADER_PROXY_") {
            cmd.env_remove(var);
        }
    }
    cmd.envs(vars.iter().copied());
    let mut child = cmd.spawn().expect("start leader-proxy");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("leader-proxy {args:?} still runs after 20 s; it should have exited");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code(),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

fn run(args: &[&str]) -> Run {
    run_env(args, &[])
}

/// Exit status 2 and `leader-proxy: ` + a message containing each of `needles`.
fn refused(run: &Run, needles: &[&str]) {
    assert_eq!(run.code, Some(2), "stderr: {}", run.stderr);
    assert!(
        run.stderr.starts_with("leader-proxy: "),
        "stderr: {}",
        run.stderr
    );
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "stderr lacks {needle:?}: {}",
            run.stderr
        );
    }
}

#[test]
fn version_prints_the_version() {
    let r = run(&["--version"]);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert_eq!(
        r.stdout.trim(),
        format!("leader-proxy {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_shows_discovery_the_flags_and_their_variables() {
    let r = run(&["--help"]);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    for needle in [
        "Usage: leader-proxy [OPTIONS] <DISCOVERY>",
        "leader-proxy status [--admin ADDR]",
        "leader-proxy leader [OPTIONS] <DISCOVERY>",
        "Commands:",
        "DISCOVERY",
        "etcdv3://",
        "--listen <ADDR>",
        "--socket-mode",
        "--socket-group",
        "--mode",
        "--leader-key",
        "--election",
        "--hold-timeout",
        "--max-held",
        "--connect-timeout",
        "--probe-interval",
        "--on-leader-change",
        "--drain-timeout",
        "--shutdown-grace",
        "--discovery-opt",
        "--tlscert",
        "--tlskey",
        "--tlscacert",
        "--tlsverify",
        "--upstream-cert-path",
        "--insecure-bind",
        "--admin",
        "--log-level",
        "--log-format",
        "--config",
        "--version",
        "LEADER_PROXY_HOLD_TIMEOUT",
        "LEADER_PROXY_DISCOVERY",
    ] {
        assert!(
            r.stdout.contains(needle),
            "--help lacks {needle:?}:\n{}",
            r.stdout
        );
    }
    let short = run(&["-h"]);
    assert_eq!(short.code, Some(0));
    assert!(short.stdout.contains("--hold-timeout"), "{}", short.stdout);
}

/// The long flags `--help` shows, in order (`--help` and `--version` included).
fn help_flags() -> Vec<String> {
    let r = run(&["--help"]);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let mut flags: Vec<String> = Vec::new();
    for line in r.stdout.lines() {
        let line = line.trim_start();
        // An option line starts with `-x, --flag` or `--flag`.
        let Some(start) = line.find("--").filter(|&i| i == 0 || line.starts_with('-')) else {
            continue;
        };
        let flag: String = line[start..]
            .chars()
            .take_while(|c| *c == '-' || c.is_ascii_alphanumeric())
            .collect();
        if flag.len() > 2 && !flags.contains(&flag) {
            flags.push(flag);
        }
    }
    assert!(
        flags.len() >= 20,
        "too few flags found in --help: {flags:?}"
    );
    flags
}

/// `flag` appears in `text` as a whole word (`--tls` must not match `--tlsverify`).
fn mentions(text: &str, flag: &str) -> bool {
    text.match_indices(flag).any(|(i, _)| {
        let next = text[i + flag.len()..].chars().next();
        !matches!(next, Some(c) if c == '-' || c.is_ascii_alphanumeric())
    })
}

/// docs/cli.md is the contract for scripts: every flag of the binary is documented there.
#[test]
fn every_flag_in_help_is_documented_in_docs_cli_md() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md"))
        .expect("read docs/cli.md");
    let missing: Vec<String> = help_flags()
        .into_iter()
        .filter(|flag| !mentions(&doc, flag))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/cli.md does not mention {missing:?}"
    );
}

/// The README's flag table (the rows under "## Flags") names every option flag.
#[test]
fn every_flag_in_help_is_in_the_readme_flag_table() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let section = readme
        .split("\n## Flags\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README.md has a \"## Flags\" section");
    let table: String = section
        .lines()
        .filter(|line| line.starts_with('|'))
        .collect::<Vec<_>>()
        .join("\n");
    let missing: Vec<String> = help_flags()
        .into_iter()
        .filter(|flag| !matches!(flag.as_str(), "--help" | "--version"))
        .filter(|flag| !mentions(&table, flag))
        .collect();
    assert!(
        missing.is_empty(),
        "the README's flag table lacks {missing:?}"
    );
}

#[test]
fn a_bad_flag_value_exits_2_naming_the_flag() {
    let r = run(&["--hold-timeout", "abc", URL]);
    refused(
        &r,
        &["invalid value \"abc\" for --hold-timeout (also LEADER_PROXY_HOLD_TIMEOUT / hold-timeout)"],
    );
}

/// `--max-connections` takes a whole number from 1, `--proxy-protocol-from` IPs or CIDRs;
/// anything else stops the proxy before it listens.
#[test]
fn a_bad_connection_cap_or_proxy_source_exits_2_naming_the_flag() {
    refused(
        &run(&["--max-connections", "0", URL]),
        &["invalid value \"0\" for --max-connections", "at least 1"],
    );
    refused(
        &run_env(
            &[URL],
            &[("LEADER_PROXY_PROXY_PROTOCOL_FROM", "10.0.0.0/8,lb")],
        ),
        &[
            "for --proxy-protocol-from",
            "\"lb\" is not an IP address or a CIDR range",
        ],
    );
}

/// A duration past a year would overflow a deadline at request time: refused at start.
#[test]
fn a_duration_over_a_year_exits_2_naming_the_flag() {
    for flag in [
        "--hold-timeout",
        "--drain-timeout",
        "--shutdown-grace",
        "--connect-timeout",
    ] {
        refused(
            &run(&[flag, "400000000000s", URL]),
            &[&format!("for {flag}"), "at most a year"],
        );
    }
}

#[test]
fn a_bad_environment_value_exits_2_naming_the_flag() {
    let r = run_env(&[URL], &[("LEADER_PROXY_MAX_HELD", "many")]);
    refused(&r, &["--max-held", "LEADER_PROXY_MAX_HELD", "\"many\""]);
}

#[test]
fn an_unknown_flag_exits_2() {
    let r = run(&["--no-such-flag", URL]);
    assert_eq!(r.code, Some(2), "stderr: {}", r.stderr);
    assert!(r.stderr.contains("--no-such-flag"), "{}", r.stderr);
}

/// `status` and `leader` are commands only as the first argument; the proxy's own command
/// line, its errors included, is what it was before they existed (scripts parse it).
#[test]
fn the_commands_leave_the_proxy_command_line_as_it_was() {
    let r = run(&[URL, "status"]);
    assert_eq!(r.code, Some(2), "stderr: {}", r.stderr);
    assert_eq!(
        r.stderr,
        "error: unexpected argument 'status' found\n\n\
         Usage: leader-proxy [OPTIONS] <DISCOVERY>\n\n\
         For more information, try '--help'.\n"
    );
    let r = run(&["--admin", "off", "leader"]);
    assert_eq!(r.code, Some(2), "stderr: {}", r.stderr);
    assert!(
        r.stderr
            .starts_with("leader-proxy: invalid DISCOVERY \"leader\""),
        "{}",
        r.stderr
    );
}

#[test]
fn a_missing_discovery_exits_2() {
    refused(&run(&[]), &["DISCOVERY is required"]);
}

#[test]
fn a_bad_discovery_url_exits_2() {
    refused(
        &run(&["127.0.0.1:2379"]),
        &["invalid DISCOVERY \"127.0.0.1:2379\""],
    );
}

#[test]
fn contenders_with_etcd_v2_exits_2() {
    let r = run(&["--election", "contenders", URL]);
    refused(
        &r,
        &["--election contenders is only supported for etcdv3:// and zk://"],
    );
}

#[test]
fn a_non_loopback_listener_needs_insecure_bind() {
    let r = run(&["--listen", "0.0.0.0:0", URL]);
    refused(
        &r,
        &[
            "--listen 0.0.0.0:0",
            "The Docker API is root on every node",
            "--insecure-bind",
        ],
    );
    let r = run(&["--admin", "0.0.0.0:0", URL]);
    refused(&r, &["--admin 0.0.0.0:0", "--insecure-bind"]);
}

#[test]
fn an_unknown_toml_key_exits_2_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("leader-proxy.toml");
    std::fs::write(
        &file,
        "discovery = \"etcd://127.0.0.1:2379\"\nhold_timout = \"3s\"\n",
    )
    .expect("write config");
    let path = file.to_str().expect("utf-8 temp path");
    let r = run(&["--config", path]);
    refused(&r, &["--config", "hold_timout"]);
}

#[test]
fn a_manager_url_with_a_prefix_exits_2() {
    let r = run(&["swarm://127.0.0.1:2375/swarm"]);
    refused(
        &r,
        &[
            "invalid DISCOVERY \"swarm://127.0.0.1:2375/swarm\"",
            "swarm:// takes no prefix",
        ],
    );
}

#[test]
fn a_tls_file_or_flag_that_cannot_work_exits_2_naming_the_flag() {
    refused(
        &run(&[
            "--tlscert",
            "/nonexistent/cert.pem",
            "--tlskey",
            "/nonexistent/key.pem",
            URL,
        ]),
        &[
            "invalid value \"/nonexistent/cert.pem\" for --tlscert",
            "cannot read it",
        ],
    );
    refused(
        &run_env(
            &[URL],
            &[("LEADER_PROXY_UPSTREAM_CERT_PATH", "/nonexistent")],
        ),
        &["for --upstream-cert-path", "not a directory"],
    );
    refused(
        &run(&["--tlsverify", URL]),
        &["--tlsverify", "needs --tlscert, --tlskey and --tlscacert"],
    );
}
