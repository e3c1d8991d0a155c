//! `--policy-rego` with the example policies of `config/policies/`, as shipped, through the
//! proxy to a real dockerd (20.10), driven by the docker CLI and docker-py
//! (docs/policy.md, "Rego"). Each example is loaded by a proxy of its own in front of one
//! shared dockerd.
//!
//! The tests named `dockerd_…` start dockerd; nextest runs at most two at once
//! (`.config/nextest.toml`, test group `dockerd`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::certs::Certs;
use testkit::dockerd::{docker, run, Dockerd, Output, DOCKER, PYTHON};
use testkit::etcd::Etcd;
use testkit::etcd_proxy::proxy_leading_to;
use testkit::proxy::Proxy;

const IMAGE: &str = "bb:local";
/// For docker commands that should take a second or two.
const CMD: Duration = Duration::from_secs(60);
/// What a refusal by the policy says (the CLI prints "Error response from daemon: …").
const REJECTED: &str = "request rejected by administrative policy";

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/policies")
        .join(name)
        .display()
        .to_string()
}

/// A proxy with `--policy-rego config/policies/NAME` and `extra` flags before `dockerd`
/// (named leader in `etcd`).
fn proxy(etcd: &Etcd, dockerd: &Dockerd, name: &str, extra: &[&str]) -> Proxy {
    let policy = example(name);
    let args = [&["--policy-rego", policy.as_str()][..], extra].concat();
    proxy_leading_to(etcd, &dockerd.endpoint(), &args)
}

/// The docker CLI at `host`, with `DOCKER_CERT_PATH` when given.
fn cli(host: &str, cert_path: Option<&Path>, config: &Path, args: &[&str]) -> Output {
    let mut cmd = docker(DOCKER, host, config);
    if let Some(cert_path) = cert_path {
        cmd.env("DOCKER_TLS_VERIFY", "1")
            .env("DOCKER_CERT_PATH", cert_path);
    }
    run(cmd.args(args), None, CMD)
}

fn assert_ok(out: &Output, proxy: &Proxy) {
    assert!(out.ok(), "{out}\nproxy log:\n{}", proxy.log());
}

fn assert_rejected(out: &Output) {
    assert!(!out.ok(), "served: {out}");
    assert!(out.stderr_text().contains(REJECTED), "{out}");
}

/// docker-py creates a container from `image` with `privileged`; prints the status code
/// of the refusal and its message, or `created`.
const DOCKER_PY: &str = r#"
import json, sys
import docker
client = docker.DockerClient(base_url=sys.argv[1], version="1.41")
try:
    c = client.containers.create(sys.argv[2], "true", network_mode="none",
                                 privileged=sys.argv[3] == "privileged")
    c.remove()
    print(json.dumps({"created": True}))
except docker.errors.APIError as e:
    print(json.dumps({"status": e.status_code, "message": e.explanation}))
"#;

fn docker_py(base_url: &str, image: &str, privileged: bool) -> serde_json::Value {
    let mode = if privileged { "privileged" } else { "plain" };
    let out = run(
        Command::new(PYTHON).args(["-c", DOCKER_PY, base_url, image, mode]),
        None,
        CMD,
    );
    assert!(
        out.ok(),
        "docker-py failed (apt-get install python3-docker): {out}"
    );
    serde_json::from_str(out.stdout_text().trim()).unwrap_or_else(|e| panic!("{out}: {e}"))
}

#[test]
fn dockerd_rego_examples_decide_what_goes_through() {
    let dockerd = Dockerd::start();
    let etcd = Etcd::start();
    let dir = tempfile::Builder::new()
        .prefix("lpr-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let config = dir.path().join("client");

    // deny-privileged.rego (Rego v0): privileged and `-v /:/host` refused, the rest served.
    let deny = proxy(&etcd, &dockerd, "deny-privileged.rego", &[]);
    let host = format!("tcp://{}", deny.addr());
    let run_ok = ["run", "--rm", "--network", "none", IMAGE, "echo", "served"];
    let out = cli(&host, None, &config, &run_ok);
    assert_ok(&out, &deny);
    assert_eq!(out.stdout_text(), "served\n");
    for refused in [
        &["run", "--rm", "--privileged", IMAGE, "true"][..],
        &["run", "--rm", "-v", "/:/host", IMAGE, "true"],
        &[
            "run",
            "--rm",
            "--mount",
            "type=bind,src=/,dst=/host",
            IMAGE,
            "true",
        ],
    ] {
        assert_rejected(&cli(&host, None, &config, refused));
    }
    let url = format!("tcp://{}", deny.addr());
    let py = docker_py(&url, IMAGE, true);
    assert_eq!(py["status"], 403, "{py}");
    assert!(
        py["message"].as_str().unwrap_or("").contains(REJECTED),
        "{py}"
    );
    assert_eq!(docker_py(&url, IMAGE, false)["created"], true);
    // Three CLI refusals and docker-py's, each counted under the rule `rego`.
    deny.wait_for_metric(
        "leader_proxy_policy_denials_total{rule=\"rego\"}",
        4.0,
        CMD,
        "Rego denials counted",
    );

    // allowed-images.rego (Rego v1): only the listed images make containers.
    let images = proxy(&etcd, &dockerd, "allowed-images.rego", &[]);
    let host = format!("tcp://{}", images.addr());
    assert_ok(
        &cli(&host, None, &config, &["tag", IMAGE, "other:local"]),
        &images,
    );
    assert_ok(&cli(&host, None, &config, &run_ok), &images);
    assert_rejected(&cli(
        &host,
        None,
        &config,
        &["create", "--network", "none", "other:local", "true"],
    ));
    let url = format!("tcp://{}", images.addr());
    assert_eq!(docker_py(&url, "other:local", false)["status"], 403);
    assert_eq!(docker_py(&url, IMAGE, false)["created"], true);

    // read-only-user.rego: reads for all; writes for `unix:uid=0` (this test runs as
    // root) and for the certificate `CN=operator`.
    let socket = dir.path().join("ro.sock");
    let unix_listener = format!("unix://{}", socket.display());
    let plain = proxy(
        &etcd,
        &dockerd,
        "read-only-user.rego",
        &["--listen", &unix_listener],
    );
    let tcp = format!("tcp://{}", plain.addr());
    assert_ok(&cli(&tcp, None, &config, &["ps", "-a"]), &plain);
    assert_rejected(&cli(&tcp, None, &config, &run_ok));
    assert_ok(&cli(&unix_listener, None, &config, &run_ok), &plain);

    let certs = Certs::new("rego-ca");
    let tls_args = certs.tlsverify_args();
    let tls_args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    let tls = proxy(&etcd, &dockerd, "read-only-user.rego", &tls_args);
    let host = format!("tcp://{}", tls.addr());
    let operator: PathBuf = certs.docker_cert_path_for("operator");
    let someone = certs.docker_cert_path();
    assert_ok(&cli(&host, Some(&someone), &config, &["ps"]), &tls);
    assert_rejected(&cli(&host, Some(&someone), &config, &run_ok));
    assert_ok(&cli(&host, Some(&operator), &config, &run_ok), &tls);
}

/// A policy that does not compile stops the proxy at start, exit 2, naming the flag.
#[test]
fn a_rego_file_that_does_not_compile_exits_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("broken.rego");
    std::fs::write(&file, "package docker.authz\nallow {\n").expect("write");
    let out = Command::new(testkit::bins::leader_proxy())
        .arg("--policy-rego")
        .arg(&file)
        .arg("static://127.0.0.1:2375")
        .output()
        .expect("run leader-proxy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--policy-rego"), "{stderr}");
}

/// SIGHUP reads the Rego file again: a file that does not compile is refused and the
/// policy in use stays; a good one replaces it. No leader is needed: a request the policy
/// refuses is answered `403` by the proxy, one it passes finds no leader (`503` at once
/// with `--max-held 0`).
#[test]
fn sighup_reloads_the_rego_file_and_keeps_the_old_one_when_bad() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("authz.rego");
    let only_head =
        "package docker.authz\n\ndefault allow = false\n\nallow {\n\tinput.Method == \"HEAD\"\n}\n";
    std::fs::write(&file, only_head).expect("write");
    let policy = file.display().to_string();
    let proxy = Proxy::start(&[
        "--policy-rego",
        &policy,
        "--max-held",
        "0",
        "static://127.0.0.1:1",
    ]);
    let status = || {
        testkit::http::request(proxy.addr(), "GET", "/v1.41/_ping", &[], b"", CMD)
            .expect("GET /_ping")
            .status
    };
    assert_eq!(status(), 403);

    std::fs::write(&file, "package docker.authz\nallow {\n").expect("write");
    testkit::proxy::signal(proxy.pid(), "HUP");
    proxy.wait_for_log("SIGHUP: access policies: ", CMD);
    assert!(proxy.log().contains("--policy-rego"), "{}", proxy.log());
    assert_eq!(status(), 403, "the old policy is still in force");

    std::fs::write(&file, "package docker.authz\n\nallow := true\n").expect("write");
    testkit::proxy::signal(proxy.pid(), "HUP");
    proxy.wait_for_log("SIGHUP: access policies reloaded", CMD);
    assert_eq!(status(), 503, "passed by the new policy, and no leader");
}
