//! End to end with the real thing: a real dockerd (20.10, API 1.41) behind the proxy, found
//! through a leader key in a real etcd, driven by real clients: the docker CLI (28.x for
//! most scenarios; Debian's 20.10 for BuildKit) and docker-py (pooled connections), over
//! TCP and over a unix socket. See crates/testkit/src/dockerd.rs for how dockerd runs here.
//!
//! The same CLI scenarios ([`cli_scenarios`]) also run over TLS, with certificates made by
//! the test: clients talking TLS to the proxy (`--tlsverify`, `DOCKER_TLS_VERIFY=1`,
//! `DOCKER_CERT_PATH`), the proxy talking TLS to a dockerd started with `--tlsverify`
//! (`--upstream-cert-path`), and `--mode tcp` passing the client's TLS straight through to
//! that dockerd.
//!
//! The tests named `dockerd_…` start dockerd (heavy: dockerd + containerd); nextest runs at
//! most two at once (`.config/nextest.toml`, test group `dockerd`). Each starts one etcd and
//! one or two dockerd, and runs several scenarios on them.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use testkit::certs::Certs;
use testkit::dockerd::{
    docker, require_docker_py, run, Dockerd, Output, DEBIAN_DOCKER, DOCKER, PYTHON,
};
use testkit::etcd::Etcd;
use testkit::programs::Program;

const KEY: &str = "/p/docker/swarm/leader";
const IMAGE: &str = "bb:local";
/// For docker commands that should take a second or two.
const CMD: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// The docker CLI, every scenario, over TCP and over a unix socket.

#[test]
fn dockerd_cli_over_tcp() {
    let lab = Lab::new(&[]);
    let host = format!("tcp://{}", lab.proxy.tcp);
    cli_scenarios(&lab, &Client::plain(&host), "tcp");
}

/// The CI-runner sidecar: `DOCKER_HOST=unix:///…` (the proxy also listens on TCP: several
/// listeners at once).
#[test]
fn dockerd_cli_over_unix_socket() {
    let lab = Lab::new(&[]);
    let socket = lab.proxy.unix.clone().expect("unix listener");
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "default --socket-mode");
    let host = format!("unix://{}", socket.display());
    cli_scenarios(&lab, &Client::plain(&host), "unix");
}

// ---------------------------------------------------------------------------------------
// The same over TLS: the load-balancer-tier setups.

/// TLS termination: clients speak TLS to the proxy with certificates from the proxy's CA
/// (`--tlsverify`), the proxy speaks plain HTTP to dockerd.
#[test]
fn dockerd_cli_over_client_tls() {
    let certs = Certs::new("lb-ca");
    let tls = certs.tlsverify_args();
    let lab = Lab::new(&tls.iter().map(String::as_str).collect::<Vec<_>>());
    let client = Client::tls(
        &format!("tcp://{}", lab.proxy.tcp),
        &certs.docker_cert_path(),
    );
    cli_scenarios(&lab, &client, "client-tls");
    assert_refused_without_certificate(&lab, &certs);
}

/// TLS-only managers: dockerd runs `--tlsverify`; the proxy speaks TLS to it with
/// `--upstream-cert-path` (the CA and a client certificate), clients speak plain HTTP to
/// the proxy on loopback.
#[test]
fn dockerd_cli_to_tls_only_managers() {
    let certs = Certs::new("managers-ca");
    let cert_path = certs.docker_cert_path().display().to_string();
    let lab = Lab::start(
        Dockerd::start_tls(&certs.ca, &certs.server_cert, &certs.server_key),
        &["--upstream-cert-path", &cert_path],
    );
    let client = Client::plain(&format!("tcp://{}", lab.proxy.tcp));
    cli_scenarios(&lab, &client, "upstream-tls");
}

/// L4 passthrough in front of TLS-only managers: the client's TLS goes through the proxy
/// (`--mode tcp`) to dockerd `--tlsverify`, which checks its certificate.
#[test]
fn dockerd_cli_l4_to_tls_only_managers() {
    let certs = Certs::new("managers-ca");
    let lab = Lab::start(
        Dockerd::start_tls(&certs.ca, &certs.server_cert, &certs.server_key),
        &["--mode", "tcp"],
    );
    let client = Client::tls(
        &format!("tcp://{}", lab.proxy.tcp),
        &certs.docker_cert_path(),
    );
    cli_scenarios(&lab, &client, "l4-tls");
    assert_refused_without_certificate(&lab, &certs);
}

/// A docker CLI that trusts the CA but has no client certificate, or one from another CA,
/// is refused in the TLS handshake (by the proxy, or in --mode tcp by dockerd).
fn assert_refused_without_certificate(lab: &Lab, certs: &Certs) {
    let other = Certs::new("other-ca");
    let only_ca = lab.dir.path().join("only-ca");
    let foreign = lab.dir.path().join("foreign");
    for dir in [&only_ca, &foreign] {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::copy(&certs.ca, dir.join("ca.pem")).expect("copy ca.pem");
    }
    std::fs::copy(&other.client_cert, foreign.join("cert.pem")).expect("copy cert.pem");
    std::fs::copy(&other.client_key, foreign.join("key.pem")).expect("copy key.pem");
    for (what, cert_path) in [("no certificate", only_ca), ("another CA", foreign)] {
        let client = Client::tls(&format!("tcp://{}", lab.proxy.tcp), &cert_path);
        let out = run(
            lab.cli(DOCKER, &client)
                .args(["info", "--format", "{{.DockerRootDir}}"]),
            None,
            CMD,
        );
        assert!(!out.ok(), "a client with {what} was served: {out}");
        assert!(
            out.stderr_text().contains("remote error: tls"),
            "{what}: {out}"
        );
    }
}

fn cli_scenarios(lab: &Lab, client: &Client, label: &str) {
    let cli = |args: &[&str]| {
        let mut cmd = lab.cli(DOCKER, client);
        cmd.args(args);
        cmd
    };
    let ok = |cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration| -> Output {
        let out = run(cmd, stdin, timeout);
        assert!(out.ok(), "{out}\nproxy log:\n{}", lab.proxy.log_tail(40));
        out
    };
    let mut step = Steps::new(label);

    let out = ok(
        &mut cli(&[
            "version",
            "--format",
            "{{.Server.Version}} {{.Server.APIVersion}}",
        ]),
        None,
        CMD,
    );
    assert!(out.stdout_text().contains("1.41"), "{out}");
    step.done("version");

    let out = ok(
        &mut cli(&["info", "--format", "{{.DockerRootDir}}"]),
        None,
        CMD,
    );
    assert_eq!(out.stdout_text().trim(), lab.dockerd.root_dir(), "{out}");
    step.done("info");

    let out = ok(
        &mut cli(&[
            "run",
            "--rm",
            "--network",
            "none",
            IMAGE,
            "echo",
            "hello-run",
        ]),
        None,
        CMD,
    );
    assert_eq!(out.stdout_text(), "hello-run\n", "{out}");
    step.done("run --rm");

    let run_i = ["run", "--rm", "-i", "--network", "none", IMAGE, "cat"];
    let out = ok(&mut cli(&run_i), Some(b"small stdin\n"), CMD);
    assert_eq!(out.stdout_text(), "small stdin\n", "{out}");
    step.done("run -i (small)");

    let big = pseudo_random(5 * 1024 * 1024, 1);
    let out = ok(&mut cli(&run_i), Some(&big), CMD);
    assert!(
        out.stdout == big,
        "run -i cat of 5 MiB: {} bytes back, {} sent",
        out.stdout.len(),
        big.len()
    );
    step.done("run -i (5 MiB)");

    let out = ok(
        &mut cli(&[
            "run",
            "-d",
            "--network",
            "none",
            IMAGE,
            "sh",
            "-c",
            "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.2; done",
        ]),
        None,
        CMD,
    );
    let id = out.stdout_text().trim().to_string();
    assert_eq!(id.len(), 64, "{out}");
    step.done("run -d");

    // Unbuffered: lines arrive as the container writes them, 5 a second.
    let logs = Spawned::start(cli(&["logs", "-f", "--tail", "1", &id]), false);
    assert!(
        logs.wait_for("line-", Duration::from_secs(15)),
        "logs -f: {}",
        logs.text()
    );
    let first = logs.text().matches("line-").count();
    assert!(
        logs.wait_until(Duration::from_secs(5), |t| t.matches("line-").count()
            >= first + 5),
        "logs -f did not stream: {}",
        logs.text()
    );
    drop(logs);
    step.done("logs -f");

    let out = ok(&mut cli(&["exec", &id, "echo", "exec-ok"]), None, CMD);
    assert_eq!(out.stdout_text(), "exec-ok\n", "{out}");
    step.done("exec");

    let input = pseudo_random(100 * 1024, 2);
    let out = ok(
        &mut cli(&["exec", "-i", &id, "sh", "-c", "wc -c"]),
        Some(&input),
        CMD,
    );
    assert_eq!(out.stdout_text().trim(), "102400", "{out}");
    step.done("exec -i");

    let mut tty = lab.pty(client, &["exec", "-it", &id, "sh"]);
    assert!(
        tty.wait_for("# ", Duration::from_secs(15)),
        "exec -it: {}",
        tty.text()
    );
    tty.send("echo pty-$((6*7))\r");
    assert!(
        tty.wait_for("pty-42", Duration::from_secs(10)),
        "exec -it: {}",
        tty.text()
    );
    tty.send("exit\r");
    let status = tty.exited_within(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "exec -it: {status:?} {}",
        tty.text()
    );
    step.done("exec -it (pty)");

    // Events: once the stream has shown one start, the next must arrive live.
    let events = Spawned::start(
        cli(&[
            "events",
            "--filter",
            "type=container",
            "--filter",
            "event=start",
            "--format",
            "{{.ID}}",
        ]),
        false,
    );
    let start_one = || {
        let out = ok(
            &mut cli(&["run", "-d", "--network", "none", IMAGE, "true"]),
            None,
            CMD,
        );
        out.stdout_text().trim().to_string()
    };
    let mut seen = false;
    for _ in 0..10 {
        let started = start_one();
        if events.wait_for(&started, Duration::from_secs(2)) {
            seen = true;
            break;
        }
    }
    assert!(
        seen,
        "events never showed a container start: {}",
        events.text()
    );
    let started = start_one();
    assert!(
        events.wait_for(&started, Duration::from_secs(10)),
        "events: {started} not seen live: {}",
        events.text()
    );
    drop(events);
    step.done("events");

    let file = lab.dir.path().join(format!("cp-{label}.bin"));
    let data = pseudo_random(1024 * 1024 + 17, 3);
    std::fs::write(&file, &data).expect("write the cp file");
    let file_s = file.display().to_string();
    ok(
        &mut cli(&["cp", &file_s, &format!("{id}:/tmp/in.bin")]),
        None,
        CMD,
    );
    let out = ok(
        &mut cli(&["exec", &id, "sha256sum", "/tmp/in.bin"]),
        None,
        CMD,
    );
    assert!(out.stdout_text().starts_with(&sha256_hex(&data)), "{out}");
    let back = lab.dir.path().join(format!("cp-{label}.out"));
    let back_s = back.display().to_string();
    ok(
        &mut cli(&["cp", &format!("{id}:/tmp/in.bin"), &back_s]),
        None,
        CMD,
    );
    assert!(
        std::fs::read(&back).expect("cp out") == data,
        "cp out differs"
    );
    step.done("cp in and out");

    // Legacy builder, 30 MiB context, checksum verified inside the build.
    let context = lab.dir.path().join(format!("ctx-legacy-{label}"));
    std::fs::create_dir_all(&context).expect("mkdir context");
    let blob = pseudo_random(30 * 1024 * 1024, 4);
    std::fs::write(context.join("big.bin"), &blob).expect("write big.bin");
    std::fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM {IMAGE}\nCOPY big.bin /big.bin\nRUN echo \"{}  /big.bin\" | sha256sum -c -\n",
            sha256_hex(&blob)
        ),
    )
    .expect("write Dockerfile");
    let tag = format!("e2e-legacy:{label}");
    let mut build = cli(&[
        "build",
        "--network",
        "none",
        "-t",
        &tag,
        &context.display().to_string(),
    ]);
    build.env("DOCKER_BUILDKIT", "0");
    let out = ok(&mut build, None, Duration::from_secs(180));
    assert!(out.stdout_text().contains("/big.bin: OK"), "{out}");
    step.done("build, legacy, 30 MiB context");

    // BuildKit: Debian's CLI 20.10; the session upgrades to h2c through the hijack relay.
    let context = lab.dir.path().join(format!("ctx-bk-{label}"));
    std::fs::create_dir_all(&context).expect("mkdir context");
    std::fs::write(
        context.join("Dockerfile"),
        format!("FROM {IMAGE}\nRUN echo buildkit-ok > /ok\n"),
    )
    .expect("write Dockerfile");
    let tag = format!("e2e-bk:{label}");
    let mut build = lab.cli(DEBIAN_DOCKER, client);
    build
        .env("DOCKER_BUILDKIT", "1")
        .args([
            "build",
            "--network",
            "none",
            "--progress",
            "plain",
            "-t",
            &tag,
        ])
        .arg(&context);
    ok(&mut build, None, Duration::from_secs(180));
    let out = ok(
        &mut cli(&["run", "--rm", "--network", "none", &tag, "cat", "/ok"]),
        None,
        CMD,
    );
    assert_eq!(out.stdout_text(), "buildkit-ok\n", "{out}");
    // The BuildKit session went through the hijack relay (its access-log line is written
    // when the session ends). In --mode tcp the proxy sees bytes, not requests.
    if !lab.l4 {
        lab.proxy.wait_for_log("POST /session", CMD);
    }
    step.done("build, BuildKit");

    let out = ok(
        &mut cli(&[
            "stats",
            "--no-stream",
            "--format",
            "{{.ID}} {{.MemUsage}}",
            &id,
        ]),
        None,
        CMD,
    );
    assert!(out.stdout_text().starts_with(&id[..12]), "{out}");
    step.done("stats --no-stream");

    let ps_a = ["ps", "-a", "--no-trunc", "--format", "{{.ID}}"];
    assert!(ok(&mut cli(&ps_a), None, CMD).stdout_text().contains(&id));
    step.done("ps -a");
    ok(&mut cli(&["rm", "-f", &id]), None, CMD);
    assert!(!ok(&mut cli(&ps_a), None, CMD).stdout_text().contains(&id));
    step.done("rm -f");
}

// ---------------------------------------------------------------------------------------
// docker-py: one pooled client; attach and exec on keep-alive connections.

#[test]
fn dockerd_docker_py_pooled_client_over_tcp_and_unix() {
    require_docker_py();
    let lab = Lab::new(&[]);
    let script = lab.dir.path().join("docker_py.py");
    std::fs::write(&script, DOCKER_PY).expect("write the docker-py script");
    let socket = lab.proxy.unix.clone().expect("unix listener");
    for base_url in [
        format!("tcp://{}", lab.proxy.tcp),
        format!("unix://{}", socket.display()),
    ] {
        let started = Instant::now();
        let out = run(
            Command::new(PYTHON).arg(&script).arg(&base_url),
            None,
            Duration::from_secs(120),
        );
        assert!(out.ok(), "{out}\nproxy log:\n{}", lab.proxy.log_tail(40));
        let r: serde_json::Value = serde_json::from_str(out.stdout_text().trim())
            .unwrap_or_else(|e| panic!("docker-py said {out}: {e}"));
        assert_eq!(r["run"], "py-run\n", "{r}");
        assert_eq!(r["listed_detached"], true, "{r}");
        assert!(r["logs"].as_str().unwrap_or("").contains("py-logs"), "{r}");
        assert_eq!(r["exec_code"], 0, "{r}");
        assert_eq!(r["exec"], "py-exec-42\n", "{r}");
        assert_eq!(r["attach"], "py-attached\n", "{r}");
        // The upgrades went out on pooled keep-alive connections, after other requests.
        assert_eq!(
            r["attach_reused"],
            serde_json::json!([true]),
            "attach was not sent on a reused connection: {r}"
        );
        assert_eq!(
            r["exec_start_reused"],
            serde_json::json!([true]),
            "exec start was not sent on a reused connection: {r}"
        );
        eprintln!("docker-py over {base_url}: {:?}", started.elapsed());
    }
}

const DOCKER_PY: &str = r#"
import http.client, json, sys, time
import docker
from docker.transport import unixconn

# Which requests went out on a connection that had served a request before (a socket
# already open when the request starts). Counted in http.client, which both kinds of
# connection go through: urllib3's (TCP) calls it, and Debian's docker-py (5.0.3) builds its
# unix socket connection on it directly, not on urllib3's.
requests_seen = []
_request = http.client.HTTPConnection.request
def request(self, method, url, *a, **k):
    requests_seen.append((method, url.split("?")[0], self.sock is not None))
    return _request(self, method, url, *a, **k)
http.client.HTTPConnection.request = request
def reused(suffix):
    return [r for (m, u, r) in requests_seen if m == "POST" and u.endswith(suffix)]

# docker-py's unix adapter keeps one pool per URL (over TCP: one per host), so on a unix
# socket only requests to the same URL would share a connection. Give it one pool, as over
# TCP, so the attach below goes out on a reused connection on both listeners.
_get_connection = unixconn.UnixHTTPAdapter.get_connection
unixconn.UnixHTTPAdapter.get_connection = (
    lambda self, url, proxies=None: _get_connection(self, "http+docker://localhost", proxies))

# One connection in the pool: every request after the first reuses it.
client = docker.DockerClient(base_url=sys.argv[1], version="1.41", timeout=60, max_pool_size=1)
r = {}
made = []
try:
    r["run"] = client.containers.run("bb:local", ["echo", "py-run"], network_mode="none").decode()
    c = client.containers.run("bb:local", ["sh", "-c", "echo py-logs; sleep 600"],
                              network_mode="none", detach=True)
    made.append(c)
    r["listed_detached"] = c.id in [x.id for x in client.containers.list()]
    deadline = time.time() + 20
    while b"py-logs" not in c.logs() and time.time() < deadline:
        time.sleep(0.1)
    r["logs"] = c.logs().decode()
    code, output = c.exec_run(["sh", "-c", "echo py-exec-$((40+2))"])
    r["exec_code"], r["exec"] = code, output.decode()
    r["exec_start_reused"] = reused("/start")[-1:]
    a = client.containers.create("bb:local", ["sh", "-c", "sleep 1; echo py-attached"],
                                 network_mode="none")
    made.append(a)
    client.api.inspect_container(a.id)
    stream = a.attach(stdout=True, stderr=True, stream=True, logs=True)
    r["attach_reused"] = reused("/attach")
    a.start()
    r["attach"] = b"".join(stream).decode()
    r["requests"] = len(requests_seen)
    r["requests_on_reused_connections"] = len([x for x in requests_seen if x[2]])
finally:
    for c in made:
        try:
            c.remove(force=True)
        except Exception as e:
            print("cleanup:", e, file=sys.stderr)
print(json.dumps(r))
"#;

// ---------------------------------------------------------------------------------------
// --on-leader-change drain|close, --drain-timeout.

/// With the old leader alive: `close` ends a `logs -f`, an `events` stream and an `exec -it`
/// session at the change; `drain` lets them run (they keep streaming and answering) until
/// `--drain-timeout`, then ends them. New commands go to the new leader at once.
///
/// The bounds are far from what a slow machine needs: `close` must end them within 60 s
/// (drain's default would keep them 5 minutes); `drain` runs with `--drain-timeout 30s`,
/// which leaves the checks after the change (a few seconds) ample time, and each stream's
/// end is timed from before the store changes, so a proxy that keeps the timeout is never
/// early.
#[test]
fn dockerd_leader_change_close_then_drain() {
    let etcd = Etcd::start();
    let (a, b) = (Dockerd::start(), Dockerd::start());
    let dir = temp_dir();

    // close
    etcd.put_v2("/close/docker/swarm/leader", &a.endpoint(), None);
    let proxy = Lp::start(
        &format!("etcd://{}/close", etcd.endpoint()),
        None,
        &["--on-leader-change", "close"],
    );
    proxy.wait_for_leader(&a.endpoint());
    let host = format!("tcp://{}", proxy.tcp);
    let mut open = LongLived::open(&proxy, &host, &a, dir.path());
    etcd.put_v2("/close/docker/swarm/leader", &b.endpoint(), None);
    let changed = proxy.wait_for_leader(&b.endpoint());
    open.all_end_within(Duration::from_secs(60), "close", &proxy);
    proxy.assert_ended_by_policy("--on-leader-change close");
    eprintln!("close: all ended {:?} after the change", changed.elapsed());
    assert_goes_to(&proxy, &host, dir.path(), &b);

    // drain, --drain-timeout 30s
    const DRAIN: Duration = Duration::from_secs(30);
    etcd.put_v2("/drain/docker/swarm/leader", &a.endpoint(), None);
    let proxy = Lp::start(
        &format!("etcd://{}/drain", etcd.endpoint()),
        None,
        &["--on-leader-change", "drain", "--drain-timeout", "30s"],
    );
    proxy.wait_for_leader(&a.endpoint());
    let host = format!("tcp://{}", proxy.tcp);
    let mut open = LongLived::open(&proxy, &host, &a, dir.path());
    // The proxy learns of the change after this, so its drain cannot end before DRAIN
    // from here.
    let changing = Instant::now();
    etcd.put_v2("/drain/docker/swarm/leader", &b.endpoint(), None);
    proxy.wait_for_leader(&b.endpoint());
    assert_goes_to(&proxy, &host, dir.path(), &b);
    // Still alive and working on the old leader.
    open.assert_alive(&a, "drain, after the change");
    eprintln!(
        "drain: alive and working {:?} after the change",
        changing.elapsed()
    );
    // Each stream runs until --drain-timeout, then ends.
    for (name, ended) in open.ends(changing + DRAIN + Duration::from_secs(60), "drain", &proxy) {
        let after = ended - changing;
        assert!(
            after >= DRAIN,
            "drain: {name} ended {after:?} after the change, before --drain-timeout {DRAIN:?}"
        );
        eprintln!("drain: {name} ended {after:?} after the change (--drain-timeout {DRAIN:?})");
    }
    proxy.assert_ended_by_policy("--drain-timeout elapsed");
}

/// `drain` with a long --drain-timeout: when the old leader dies, its streams and sessions
/// end promptly (no hang), before the store has even named another leader; then new
/// commands go to the new one.
#[test]
fn dockerd_old_leader_dies_while_streams_are_open() {
    let etcd = Etcd::start();
    let (mut a, b) = (Dockerd::start(), Dockerd::start());
    let dir = temp_dir();
    etcd.put_v2(KEY, &a.endpoint(), None);
    let proxy = Lp::start(
        &format!("etcd://{}/p", etcd.endpoint()),
        None,
        &[
            "--on-leader-change",
            "drain",
            "--drain-timeout",
            "5m",
            "--hold-timeout",
            "2s",
        ],
    );
    proxy.wait_for_leader(&a.endpoint());
    let host = format!("tcp://{}", proxy.tcp);
    let mut open = LongLived::open(&proxy, &host, &a, dir.path());
    let killed = Instant::now();
    a.kill();
    // The exec -it CLI asks the (dead) leader for the exit code after its stream ends:
    // held up to --hold-timeout (2s), then 503. 20 s is far above that, and below both the
    // 30 s default hold (a proxy ignoring the flag) and the 5 minutes of --drain-timeout a
    // hang would last.
    open.all_end_within(Duration::from_secs(20), "old leader killed", &proxy);
    eprintln!("old leader killed: all ended within {:?}", killed.elapsed());
    etcd.put_v2(KEY, &b.endpoint(), None);
    proxy.wait_for_leader(&b.endpoint());
    assert_goes_to(&proxy, &host, dir.path(), &b);
}

/// A `logs -f`, an `events` stream and an `exec -it` session opened through `proxy` on `a`.
struct LongLived {
    container: String,
    logs: Spawned,
    events: Spawned,
    exec: Spawned,
}

impl LongLived {
    fn open(proxy: &Lp, host: &str, a: &Dockerd, dir: &Path) -> LongLived {
        let out = run(
            docker(DOCKER, host, &dir.join("client")).args([
                "run",
                "-d",
                "--network",
                "none",
                IMAGE,
                "sh",
                "-c",
                "while true; do echo tick; sleep 0.3; done",
            ]),
            None,
            CMD,
        );
        assert!(out.ok(), "{out}\n{}", proxy.log_tail(40));
        let container = out.stdout_text().trim().to_string();
        let cli = |args: &[&str]| {
            let mut cmd = docker(DOCKER, host, &dir.join("client"));
            cmd.args(args);
            cmd
        };
        let logs = Spawned::start(cli(&["logs", "-f", "--tail", "1", &container]), false);
        assert!(
            logs.wait_for("tick", Duration::from_secs(15)),
            "logs -f: {}",
            logs.text()
        );
        let events = Spawned::start(
            cli(&[
                "events",
                "--filter",
                "type=container",
                "--format",
                "{{.Action}} {{.ID}}",
            ]),
            false,
        );
        // The events stream is open once it shows an event made directly on `a`.
        let mut seen = false;
        for _ in 0..10 {
            poke(a, &container);
            if events.wait_for("exec_start", Duration::from_secs(2)) {
                seen = true;
                break;
            }
        }
        assert!(
            seen,
            "events stream never showed an event: {}",
            events.text()
        );
        let mut exec = pty(
            &Client::plain(host),
            dir,
            &["exec", "-it", &container, "sh"],
        );
        assert!(
            exec.wait_for("# ", Duration::from_secs(15)),
            "exec -it: {}",
            exec.text()
        );
        exec.send("echo pty-$((6*7))\r");
        assert!(
            exec.wait_for("pty-42", Duration::from_secs(10)),
            "exec -it: {}",
            exec.text()
        );
        LongLived {
            container,
            logs,
            events,
            exec,
        }
    }

    fn assert_running(&mut self, when: &str) {
        for (name, s) in self.streams() {
            assert!(s.is_running(), "{when}: {name} ended: {}", s.text());
        }
    }

    fn streams(&mut self) -> [(&'static str, &mut Spawned); 3] {
        [
            ("logs -f", &mut self.logs),
            ("events", &mut self.events),
            ("exec -it", &mut self.exec),
        ]
    }

    /// Waits until every stream has ended, polling them all; when each was first seen
    /// ended (at or after its end). Panics at `deadline` if one still runs.
    fn ends(&mut self, deadline: Instant, when: &str, proxy: &Lp) -> Vec<(&'static str, Instant)> {
        let mut ended: [Option<Instant>; 3] = [None; 3];
        loop {
            let now = Instant::now();
            for ((_, s), at) in self.streams().into_iter().zip(ended.iter_mut()) {
                if at.is_none() && !s.is_running() {
                    *at = Some(now);
                }
            }
            if ended.iter().all(Option::is_some) {
                break;
            }
            if now > deadline {
                let running: Vec<String> = self
                    .streams()
                    .into_iter()
                    .zip(ended)
                    .filter(|(_, at)| at.is_none())
                    .map(|((name, s), _)| format!("{name}: {}", s.text()))
                    .collect();
                panic!(
                    "{when}: still running:\n{}\nproxy log:\n{}",
                    running.join("\n"),
                    proxy.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.streams()
            .into_iter()
            .zip(ended)
            .map(|((name, _), at)| (name, at.expect("ended")))
            .collect()
    }

    /// Running, and still streaming from / answering on the old leader `a`.
    fn assert_alive(&mut self, a: &Dockerd, when: &str) {
        self.assert_running(when);
        let ticks = self.logs.text().matches("tick").count();
        assert!(
            self.logs
                .wait_until(Duration::from_secs(5), |t| t.matches("tick").count()
                    > ticks + 2),
            "{when}: logs -f stopped streaming: {}",
            self.logs.text()
        );
        let events = self.events.text().matches("exec_start").count();
        poke(a, &self.container);
        assert!(
            self.events
                .wait_until(Duration::from_secs(5), |t| t.matches("exec_start").count()
                    > events),
            "{when}: events stopped: {}",
            self.events.text()
        );
        self.exec.send("echo pty-$((7*7))\r");
        assert!(
            self.exec.wait_for("pty-49", Duration::from_secs(5)),
            "{when}: exec -it stopped answering: {}",
            self.exec.text()
        );
    }

    fn all_end_within(&mut self, timeout: Duration, when: &str, proxy: &Lp) {
        let deadline = Instant::now() + timeout;
        for (name, s) in [
            ("logs -f", &mut self.logs),
            ("events", &mut self.events),
            ("exec -it", &mut self.exec),
        ] {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                s.exited_within(left).is_some(),
                "{when}: {name} still running after {timeout:?}: {}\nproxy log:\n{}",
                s.text(),
                proxy.log_tail(30)
            );
        }
    }
}

/// Makes an event on `a` directly (not through the proxy): an exec in `container`.
fn poke(a: &Dockerd, container: &str) {
    let out = run(
        a.direct(DOCKER).args(["exec", container, "true"]),
        None,
        CMD,
    );
    assert!(out.ok(), "{out}");
}

/// New commands through the proxy reach `to` (told apart by its DockerRootDir).
fn assert_goes_to(proxy: &Lp, host: &str, dir: &Path, to: &Dockerd) {
    let out = run(
        docker(DOCKER, host, &dir.join("client")).args(["info", "--format", "{{.DockerRootDir}}"]),
        None,
        CMD,
    );
    assert!(out.ok(), "{out}\n{}", proxy.log_tail(30));
    assert_eq!(out.stdout_text().trim(), to.root_dir(), "{out}");
}

// ---------------------------------------------------------------------------------------
// Idle connections.

/// An idle hijacked session (`exec -it`), an idle `events` stream, an idle `logs -f` and an
/// upload that pauses (`docker load` whose stdin stops halfway) survive twice the longest
/// timeout the proxy has, then still work.
///
/// The timeouts: `--hold-timeout` and `--connect-timeout` are set small here (2s, 1s), so
/// the longest one is fixed: the front's keep-alive idle, 60 s (how long a client connection
/// may wait between requests, and a request head take to arrive; the same as pingora's
/// downstream read timeout, which the proxy turns off for running requests). Anything
/// applying that timeout (or pingora's) to a running request would cut these streams after
/// 60 s, so they idle for 2 × 60 s + 5 s. `--drain-timeout` and `--shutdown-grace` only
/// count after a leader change or SIGTERM, which do not happen here; the upstream TCP
/// keepalive (probes after 30 s idle) is answered by the live dockerd.
#[test]
fn dockerd_idle_sessions_survive_twice_the_longest_timeout() {
    const LONGEST: Duration = Duration::from_secs(60);
    let lab = Lab::new(&["--hold-timeout", "2s", "--connect-timeout", "1s"]);
    let host = format!("tcp://{}", lab.proxy.tcp);
    let cli = |args: &[&str]| {
        let mut cmd = lab.docker(DOCKER, &host);
        cmd.args(args);
        cmd
    };
    let out = run(
        &mut cli(&[
            "run",
            "-d",
            "--network",
            "none",
            IMAGE,
            "sh",
            "-c",
            "echo ready; while [ ! -f /tmp/go ]; do sleep 1; done; echo woke; sleep 600",
        ]),
        None,
        CMD,
    );
    assert!(out.ok(), "{out}");
    let id = out.stdout_text().trim().to_string();
    let logs = Spawned::start(cli(&["logs", "-f", &id]), false);
    assert!(
        logs.wait_for("ready", Duration::from_secs(15)),
        "{}",
        logs.text()
    );
    let events = Spawned::start(
        cli(&[
            "events",
            "--filter",
            "type=container",
            "--filter",
            "event=start",
            "--format",
            "{{.ID}}",
        ]),
        false,
    );
    let mut tty = lab.pty(&Client::plain(&host), &["exec", "-it", &id, "sh"]);
    assert!(
        tty.wait_for("# ", Duration::from_secs(15)),
        "{}",
        tty.text()
    );
    let image = run(&mut cli(&["save", IMAGE]), None, CMD);
    assert!(image.ok(), "{image}");
    let half = image.stdout.len() / 2;
    let mut load = Spawned::start(cli(&["load"]), true);
    load.send_bytes(&image.stdout[..half]);

    let idle = 2 * LONGEST + Duration::from_secs(5);
    eprintln!("idling {idle:?}");
    std::thread::sleep(idle);

    tty.send("echo alive-$((1+1))\r");
    assert!(
        tty.wait_for("alive-2", Duration::from_secs(10)),
        "exec -it after {idle:?} idle: {}\nproxy log:\n{}",
        tty.text(),
        lab.proxy.log_tail(30)
    );
    let out = run(
        &mut cli(&["run", "-d", "--network", "none", IMAGE, "true"]),
        None,
        CMD,
    );
    assert!(out.ok(), "{out}");
    let started = out.stdout_text().trim().to_string();
    assert!(
        events.wait_for(&started, Duration::from_secs(10)),
        "events after {idle:?} idle: {}\nproxy log:\n{}",
        events.text(),
        lab.proxy.log_tail(30)
    );
    let out = run(&mut cli(&["exec", &id, "touch", "/tmp/go"]), None, CMD);
    assert!(out.ok(), "{out}");
    assert!(
        logs.wait_for("woke", Duration::from_secs(10)),
        "logs -f after {idle:?} idle: {}",
        logs.text()
    );
    tty.send("exit\r");
    assert!(tty
        .exited_within(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
    load.send_bytes(&image.stdout[half..]);
    load.close_stdin();
    let status = load.exited_within(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()) && load.text().contains("Loaded image"),
        "docker load paused {idle:?}: {status:?} {}\nproxy log:\n{}",
        load.text(),
        lab.proxy.log_tail(30)
    );
}

// ---------------------------------------------------------------------------------------
// Unix listeners (no dockerd needed).

/// `--listen unix://` beside a TCP listener: `Listening on unix:///…` logged, mode and
/// group applied, the front serves it, a stale file replaced, a live socket refused with a
/// clear error, the file removed on SIGTERM.
#[test]
fn unix_listener_permissions_stale_and_live_sockets_and_removal() {
    let dir = temp_dir();
    let path = dir.path().join("lp.sock");
    // A stale socket: bound by a process that is gone.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    let discovery = "etcd://127.0.0.1:1/p";
    let mut proxy = Lp::start(
        discovery,
        Some(&path),
        &[
            "--socket-mode",
            "0640",
            "--socket-group",
            "daemon",
            "--hold-timeout",
            "200ms",
        ],
    );
    assert!(proxy
        .log()
        .contains(&format!("Listening on unix://{}", path.display())));
    let meta = std::fs::metadata(&path).expect("socket file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(meta.gid(), group_id("daemon"));

    // Served by the front: the Docker-style 503 of a proxy that knows no leader.
    let mut stream = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    stream
        .write_all(b"GET /v1.41/_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let response = testkit::http::parse(&raw).expect("response");
    assert_eq!(response.status, 503, "{}", response.text());
    assert!(
        response.text().contains("no Swarm primary"),
        "{}",
        response.text()
    );

    // A second proxy on the same path: refused, the live socket left alone.
    let second = run(
        Command::new(testkit::bins::leader_proxy())
            .arg("--listen")
            .arg(format!("unix://{}", path.display()))
            .args(["--admin", "off", discovery]),
        None,
        Duration::from_secs(20),
    );
    assert!(!second.ok() && second.status.is_some(), "{second}");
    assert!(
        second.stderr_text().contains(&format!(
            "--listen unix://{}: the socket is in use: something is listening on it",
            path.display()
        )),
        "{second}"
    );
    assert!(path.exists());

    // Something that is not a socket is never replaced.
    let file = dir.path().join("plain");
    std::fs::write(&file, "keep me").expect("write");
    let third = run(
        Command::new(testkit::bins::leader_proxy())
            .arg("--listen")
            .arg(format!("unix://{}", file.display()))
            .args(["--admin", "off", discovery]),
        None,
        Duration::from_secs(20),
    );
    assert!(
        third.stderr_text().contains("exists and is not a socket"),
        "{third}"
    );
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "keep me");

    let status = proxy.terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        proxy.log()
    );
    assert!(!path.exists(), "the socket file was not removed on SIGTERM");
}

fn group_id(name: &str) -> u32 {
    let out = run(Command::new("getent").args(["group", name]), None, CMD);
    out.stdout_text()
        .split(':')
        .nth(2)
        .and_then(|g| g.trim().parse().ok())
        .unwrap_or_else(|| panic!("no group {name}: {out}"))
}

// ---------------------------------------------------------------------------------------
// The pieces: one etcd + one dockerd + the proxy on TCP and a unix socket.

struct Lab {
    proxy: Lp,
    dockerd: Dockerd,
    _etcd: Etcd,
    dir: tempfile::TempDir,
    /// The proxy runs `--mode tcp`.
    l4: bool,
}

impl Lab {
    fn new(extra: &[&str]) -> Lab {
        Lab::start(Dockerd::start(), extra)
    }

    /// etcd naming `dockerd` leader, and the proxy (`extra` flags) in front of it.
    fn start(dockerd: Dockerd, extra: &[&str]) -> Lab {
        let etcd = Etcd::start();
        let dir = temp_dir();
        etcd.put_v2(KEY, &dockerd.endpoint(), None);
        let proxy = Lp::start(
            &format!("etcd://{}/p", etcd.endpoint()),
            Some(&dir.path().join("proxy.sock")),
            extra,
        );
        proxy.wait_for_leader(&dockerd.endpoint());
        Lab {
            proxy,
            dockerd,
            _etcd: etcd,
            dir,
            l4: extra.windows(2).any(|w| w == ["--mode", "tcp"]),
        }
    }

    fn docker(&self, program: Program, host: &str) -> Command {
        self.cli(program, &Client::plain(host))
    }

    /// The docker CLI `program` as `client` reaches the proxy.
    fn cli(&self, program: Program, client: &Client) -> Command {
        client.command(program, self.dir.path())
    }

    fn pty(&self, client: &Client, args: &[&str]) -> Spawned {
        pty(client, self.dir.path(), args)
    }
}

/// How a docker CLI reaches the proxy: `DOCKER_HOST`, and for TLS `DOCKER_TLS_VERIFY=1` with
/// `DOCKER_CERT_PATH` (`ca.pem`, `cert.pem`, `key.pem`).
struct Client {
    host: String,
    cert_path: Option<PathBuf>,
}

impl Client {
    fn plain(host: &str) -> Client {
        Client {
            host: host.to_string(),
            cert_path: None,
        }
    }

    fn tls(host: &str, cert_path: &Path) -> Client {
        Client {
            host: host.to_string(),
            cert_path: Some(cert_path.to_path_buf()),
        }
    }

    /// `program` with this client's environment and its own config dir under `dir`.
    fn command(&self, program: Program, dir: &Path) -> Command {
        let mut cmd = docker(program, &self.host, &dir.join("client"));
        if let Some(cert_path) = &self.cert_path {
            cmd.env("DOCKER_TLS_VERIFY", "1")
                .env("DOCKER_CERT_PATH", cert_path);
        }
        cmd
    }
}

fn temp_dir() -> tempfile::TempDir {
    // Short: it holds the proxy's unix socket.
    tempfile::Builder::new()
        .prefix("lpe-")
        .tempdir_in("/tmp")
        .expect("temp dir")
}

/// The real leader-proxy binary on `127.0.0.1:0` (and `unix://PATH` if given), admin on
/// `127.0.0.1:0`; the addresses are read from its `Listening on` lines.
struct Lp {
    child: Child,
    tcp: SocketAddr,
    unix: Option<PathBuf>,
    admin: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Lp {
    fn start(discovery: &str, unix: Option<&Path>, extra: &[&str]) -> Lp {
        let mut cmd = Command::new(testkit::bins::leader_proxy());
        cmd.args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
        if let Some(path) = unix {
            cmd.arg("--listen")
                .arg(format!("unix://{}", path.display()));
        }
        let mut child = cmd
            .args(["--log-level", "info"])
            .args(extra)
            .arg(discovery)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start leader-proxy");
        let (log, rx) = testkit::proxy::watch_stderr(&mut child);
        let (mut tcp, mut admin, mut unix_seen) = (None, None, unix.is_none());
        let deadline = Instant::now() + Duration::from_secs(20);
        while tcp.is_none() || admin.is_none() || !unix_seen {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((true, a)) => admin = a.parse().ok(),
                Ok((false, a)) if a.starts_with("unix://") => unix_seen = true,
                Ok((false, a)) => tcp = a.parse().ok(),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "leader-proxy did not start listening; its log:\n{}",
                        log.lock().expect("log").join("\n")
                    );
                }
            }
        }
        Lp {
            child,
            tcp: tcp.expect("tcp"),
            unix: unix.map(Path::to_path_buf),
            admin: admin.expect("admin"),
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    /// Polls the log until `needle` is in it (a line may lag behind the answer the client
    /// saw: the hijack relay logs a session when it ends); panics after `timeout`.
    fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the proxy's log:\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self, n: usize) -> String {
        let log = self.log.lock().expect("log");
        log[log.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until `/leader` names `leader`; returns when that was seen.
    fn wait_for_leader(&self, leader: &str) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = testkit::http::get_text(&format!("http://{}/leader", self.admin));
            if now.contains(&format!("\"leader\":\"{leader}\"")) {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "/leader stayed {now}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The proxy itself ended the hijacked connection and the streaming request, for `why`.
    /// The log is read by a thread of its own, and may lag behind what the clients saw: the
    /// lines are waited for.
    fn assert_ended_by_policy(&self, why: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for what in [
            "ending a hijacked connection to the old leader",
            "ending a request to the old leader",
        ] {
            loop {
                let log = self.log();
                if log.lines().any(|l| l.contains(what) && l.contains(why)) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "no `{what}` ({why}) in the proxy log:\n{log}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        testkit::proxy::terminate(&mut self.child, timeout)
    }
}

impl Drop for Lp {
    fn drop(&mut self) {
        if self.terminate(Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A long-running child (a stream, a pty session) whose output is collected as it comes.
struct Spawned {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Spawned {
    fn start(mut cmd: Command, with_stdin: bool) -> Spawned {
        let what = testkit::dockerd::describe(&cmd);
        cmd.stdin(if with_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        let out = Arc::new(Mutex::new(Vec::new()));
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for mut pipe in pipes {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock().expect("out").extend_from_slice(&buf[..n]);
                }
            });
        }
        Spawned {
            what,
            stdin: child.stdin.take(),
            child,
            out,
        }
    }

    fn text(&self) -> String {
        let out = self.out.lock().expect("out");
        format!("`{}`: {}", self.what, String::from_utf8_lossy(&out))
    }

    fn wait_until(&self, timeout: Duration, check: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if check(&String::from_utf8_lossy(&self.out.lock().expect("out"))) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_until(timeout, |t| t.contains(needle))
    }

    fn send(&mut self, text: &str) {
        self.send_bytes(text.as_bytes());
    }

    fn send_bytes(&mut self, data: &[u8]) {
        let stdin = self.stdin.as_mut().expect("spawned with stdin");
        stdin.write_all(data).expect("write to the child");
        stdin.flush().expect("flush");
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn exited_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The docker CLI under a pseudo-terminal (python's pty: the CLI sees a real tty on its
/// stdin and stdout); what the test writes to the session is typed into it.
fn pty(client: &Client, dir: &Path, args: &[&str]) -> Spawned {
    let script = dir.join("ptyrun.py");
    if !script.exists() {
        std::fs::write(&script, PTY).expect("write ptyrun.py");
    }
    let mut cmd = Command::new(PYTHON);
    cmd.arg(&script).arg(DOCKER).args(args);
    let client = client.command(DOCKER, dir);
    for (k, v) in client.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env("TERM", "xterm");
    Spawned::start(cmd, true)
}

const PTY: &str = r#"
import os, pty, select, sys
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
stdin_open = True
while True:
    r, _, _ = select.select([fd] + ([0] if stdin_open else []), [], [])
    if 0 in r:
        data = os.read(0, 4096)
        if data:
            os.write(fd, data)
        else:
            stdin_open = False
    if fd in r:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        os.write(1, data)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

// ---------------------------------------------------------------------------------------
// Small helpers.

/// Prints how long each scenario took (visible with `--no-capture` or on failure).
struct Steps {
    label: String,
    last: Instant,
}

impl Steps {
    fn new(label: &str) -> Steps {
        Steps {
            label: label.to_string(),
            last: Instant::now(),
        }
    }

    fn done(&mut self, what: &str) {
        eprintln!("[{}] {what}: ok in {:?}", self.label, self.last.elapsed());
        self.last = Instant::now();
    }
}

/// Deterministic incompressible bytes (xorshift64*).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
