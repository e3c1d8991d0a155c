//! The access policy (issue 14, docs/policy.md) on the real binary: real dockerd behind
//! the proxy, found through a leader key in a real etcd, driven by the docker CLI and
//! docker-py. Privileged containers cannot start on these machines, so for every rule the
//! test asserts the proxy's denial (which comes before anything reaches dockerd), never a
//! successful run.
//!
//! The tests named `dockerd_…` start a dockerd and belong to nextest's `dockerd` group
//! (.config/nextest.toml); the others use a simulated manager.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testkit::dockerd::{docker, require_docker_py, run, Dockerd, Output, DOCKER, PYTHON};
use testkit::etcd::Etcd;
use testkit::etcd_proxy::{proxy_for, proxy_with_leader, KEY};
use testkit::proxy::Proxy;

const IMAGE: &str = "bb:local";
const CMD: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(10);

/// A dockerd named leader in a fresh etcd; proxies are started on it per policy.
struct Lab {
    dockerd: Dockerd,
    etcd: Etcd,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let dockerd = Dockerd::start();
        let etcd = Etcd::start();
        etcd.put_v2(KEY, &dockerd.endpoint(), None);
        Lab {
            dockerd,
            etcd,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The proxy with `policy` flags, once it follows the dockerd.
    fn proxy(&self, policy: &[&str]) -> Proxy {
        let proxy = proxy_for(&self.etcd, policy);
        let endpoint = self.dockerd.endpoint();
        proxy.wait_for_leader(WAIT, |l| l["leader"] == endpoint.as_str());
        proxy
    }

    /// `docker ARGS…` through `proxy`.
    fn docker(&self, proxy: &Proxy, args: &[&str]) -> Output {
        let host = format!("tcp://{}", proxy.addr());
        run(
            docker(DOCKER, &host, &self.dir.path().join("client")).args(args),
            None,
            CMD,
        )
    }
}

/// The docker CLI failed with the proxy's denial: `Error response from daemon:` and `needle`.
fn assert_denied(out: &Output, needle: &str) {
    let stderr = out.stderr_text();
    assert!(
        !out.ok()
            && stderr.contains("Error response from daemon: leader-proxy policy:")
            && stderr.contains(needle),
        "expected a denial naming {needle:?}: {out}"
    );
}

/// `--deny` and `--bind-mounts` against the docker CLI and docker-py: each way to reach the
/// host is refused with its rule; a bind mount under the allowed path runs.
#[test]
fn dockerd_body_rules_deny_each_way_to_the_host() {
    let lab = Lab::new();
    let allowed = lab.dir.path().join("ci");
    std::fs::create_dir_all(&allowed).expect("mkdir");
    std::fs::write(allowed.join("hello"), "hello from the host\n").expect("write");
    let allowed = allowed.display().to_string();
    let proxy = lab.proxy(&[
        "--deny",
        "privileged,cap-add,host-namespaces,devices,docker-socket,unconfined",
        "--bind-mounts",
        &allowed,
    ]);
    let run_args = |extra: &[&str]| {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "true"]);
        args.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let cases: [(&[&str], &str); 8] = [
        (
            &["--network", "none", "--privileged"],
            "a privileged container is refused (--deny privileged)",
        ),
        (
            &["--network", "none", "-v", "/:/host"],
            "bind mount /:/host",
        ),
        (
            &["--network", "none", "--mount", "type=bind,src=/,dst=/h"],
            "bind mount /:/h",
        ),
        (
            &["--network", "none", "-v", "/etc:/h"],
            "bind mount /etc:/h is refused: its source /etc is not under",
        ),
        (
            &["--network", "none", "--cap-add", "SYS_ADMIN"],
            "(--deny cap-add)",
        ),
        (
            &["--network", "host"],
            "the host's network namespace is refused",
        ),
        (
            &[
                "--network",
                "none",
                "-v",
                "/var/run/docker.sock:/var/run/docker.sock",
            ],
            "(--deny docker-socket)",
        ),
        (
            &["--network", "none", "--security-opt", "seccomp=unconfined"],
            "(--deny unconfined)",
        ),
    ];
    for (extra, needle) in cases {
        let args = run_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_denied(&lab.docker(&proxy, &args), needle);
    }
    // Swarm mode's service create is checked before it is forwarded: the plain dockerd
    // behind would answer that it is not a swarm manager.
    let out = lab.docker(
        &proxy,
        &[
            "service",
            "create",
            "--no-resolve-image",
            "--mount",
            "type=bind,src=/,dst=/h",
            IMAGE,
        ],
    );
    assert_denied(&out, "bind mount /:/h");

    // Under the allowed path: it runs, and sees the file.
    let bind = format!("{allowed}:/data:ro");
    let out = lab.docker(
        &proxy,
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            &bind,
            IMAGE,
            "cat",
            "/data/hello",
        ],
    );
    assert!(out.ok(), "{out}\nproxy log:\n{}", proxy.log());
    assert_eq!(out.stdout_text(), "hello from the host\n");

    // docker-py: the same denial, as its APIError.
    require_docker_py();
    let script = r#"
import sys, docker
c = docker.DockerClient(base_url=sys.argv[1], version="1.41")
for kwargs in ({"privileged": True}, {"volumes": {"/": {"bind": "/host"}}}):
    try:
        c.containers.run("bb:local", "true", network_mode="none", remove=True, **kwargs)
        print("ran", kwargs)
    except docker.errors.APIError as e:
        print(e.status_code, e.explanation)
"#;
    let base_url = format!("tcp://{}", proxy.addr());
    let out = run(
        Command::new(PYTHON).args(["-c", script, &base_url]),
        None,
        CMD,
    );
    assert!(out.ok(), "{out}");
    let said = out.stdout_text();
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("403 leader-proxy policy: a privileged container"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("403 leader-proxy policy: bind mount /:/host"),
        "{out}"
    );

    // Logged with who asked, counted per rule.
    proxy.wait_for_log_where("a logged denial with its client", WAIT, |log| {
        log.lines().any(|l| {
            l.contains("policy: a privileged container is refused")
                && l.contains("client=127.0.0.1:")
        })
    });
    proxy.wait_for_metric(
        "leader_proxy_policy_denials_total{rule=\"privileged\"}",
        2.0,
        WAIT,
        "privileged denials counted",
    );
    // `/` holds the Docker socket: those mounts are refused by that rule first.
    assert!(proxy.metric("leader_proxy_policy_denials_total{rule=\"docker-socket\"}") >= 5.0);
    assert!(proxy.metric("leader_proxy_policy_denials_total{rule=\"bind-mounts\"}") >= 1.0);
}

/// `--read-only` lets `ps` work and makes `run` fail; without `archive` in `--allow`,
/// `cp` out of a container is refused, however the path is written (normalised first, and
/// forwarded in that form); a request after an `Upgrade` the leader did not answer `101`
/// is checked too.
#[test]
fn dockerd_sections_read_only_and_normalised_paths() {
    let lab = Lab::new();
    let read_only = lab.proxy(&["--read-only"]);
    let out = lab.docker(&read_only, &["ps", "-a"]);
    assert!(out.ok(), "{out}");
    let out = lab.docker(
        &read_only,
        &["run", "--rm", "--network", "none", IMAGE, "true"],
    );
    assert_denied(&out, "(--read-only)");

    let sections = lab.proxy(&["--allow", "containers,images,ping,version,info"]);
    let out = lab.docker(
        &sections,
        &[
            "create",
            "--network",
            "none",
            "--name",
            "files",
            IMAGE,
            "true",
        ],
    );
    assert!(out.ok(), "{out}");
    let target = lab.dir.path().join("hostname");
    let target = target.display().to_string();
    // `cp` asks with HEAD first, whose answer has no body for the CLI to print.
    let out = lab.docker(&sections, &["cp", "files:/etc/passwd", &target]);
    assert!(!out.ok(), "{out}");
    assert!(!Path::new(&target).exists());
    sections.wait_for_log(
        "/containers/files/archive is refused: section archive",
        WAIT,
    );
    let out = lab.docker(&sections, &["export", "files"]);
    assert_denied(&out, "section archive is not allowed");

    // Path tricks end up as the path dockerd routes, and are refused as that.
    let addr = sections.addr();
    let get = |path: &str| {
        testkit::http::request(addr, "GET", path, &[], b"", WAIT)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    };
    for path in [
        "/v1.41//containers/%2e%2e/containers/files/archive?path=/etc/passwd",
        "/v1.41/containers/files/./archive/?path=/etc/passwd",
        "/v1.41/images/../containers/files/%65xport",
    ] {
        let r = get(path);
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert!(
            r.json()["message"]
                .as_str()
                .is_some_and(|m| m.contains("GET /containers/files/")),
            "{}",
            r.text()
        );
    }
    // An allowed one goes through (what reaches the manager: the test below).
    let r = get("/v1.41//containers/./json?all=1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("/files"), "{}", r.text());
    // A path in no section is refused once --allow is given.
    assert_eq!(get("/v1.41/plugins").status, 403);

    // A request after an Upgrade the leader answered without `101` (dockerd answers a
    // ping as a ping, and keeps the connection) is checked.
    let mut conn = TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(WAIT)).expect("timeout");
    conn.write_all(
        b"GET /v1.41/_ping HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n",
    )
    .expect("write");
    let (status, body) = read_response(&mut conn);
    assert_eq!((status, body.as_str()), (200, "OK"));
    conn.write_all(b"GET /v1.41/containers/files/export HTTP/1.1\r\nHost: d\r\n\r\n")
        .expect("write");
    let (status, body) = read_response(&mut conn);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("section archive"), "{body}");
}

/// What reaches the manager is the normalised path the policy checked: the simulated
/// manager answers `POST /echo` (after the version) and nothing else by that name. Bodies
/// no rule reads are not capped; a create body over 1 MiB is `413`.
#[test]
fn the_normalised_path_is_what_is_forwarded() {
    let (_etcd, _dir, _manager, proxy) = proxy_with_leader(&["--deny", "privileged"]);
    let echo = |path: &str| {
        testkit::http::request(proxy.addr(), "POST", path, &[], b"twelve bytes", WAIT)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    };
    for path in [
        "/v1.41//./%65cho",
        "/v1.41/containers/%2e%2e/echo/",
        "/x/../v1.41/echo",
    ] {
        let r = echo(path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["bytes"], 12, "{path}: {}", r.text());
    }
    // Bodies no rule reads stream through whatever their size; a checked one is capped.
    let big = vec![b'x'; 3 << 20];
    let r = testkit::http::request(proxy.addr(), "POST", "/v1.41/echo", &[], &big, WAIT)
        .expect("a large upload");
    assert_eq!((r.status, r.json()["bytes"].as_u64()), (200, Some(3 << 20)));
    let r = testkit::http::request(
        proxy.addr(),
        "POST",
        "/v1.41/containers/create",
        &[("Content-Type", "application/json")],
        &big,
        WAIT,
    )
    .expect("a large create");
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(
        r.text().contains("larger than 1048576 bytes"),
        "{}",
        r.text()
    );
}

/// Requests the hijack relay would carry (`Upgrade: tcp`: exec start, attach) are checked
/// like any other, before anything is relayed.
#[test]
fn hijacked_requests_are_checked_too() {
    let (_etcd, _dir, _manager, proxy) = proxy_with_leader(&["--allow", "containers,ping"]);
    let mut conn = TcpStream::connect(proxy.addr()).expect("connect");
    conn.set_read_timeout(Some(WAIT)).expect("timeout");
    conn.write_all(
        b"POST /v1.41/exec/e1/start HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\n\
          Upgrade: tcp\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    )
    .expect("write");
    let (status, body) = read_response(&mut conn);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("section exec is not allowed"), "{body}");
    // Attach is in `containers`: relayed, and upgraded by the manager.
    let mut conn = TcpStream::connect(proxy.addr()).expect("connect");
    conn.set_read_timeout(Some(WAIT)).expect("timeout");
    conn.write_all(
        b"POST /v1.41/containers/c1/attach?stream=1 HTTP/1.1\r\nHost: d\r\n\
          Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n",
    )
    .expect("write");
    let (status, _) = read_response(&mut conn);
    assert_eq!(status, 101);
}

/// Reads one response with a `Content-Length` body off a keep-alive connection.
fn read_response(conn: &mut TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        let n = conn.read(&mut byte).expect("read the head");
        assert_eq!(n, 1, "closed mid-head: {}", String::from_utf8_lossy(&raw));
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    conn.read_exact(&mut body).expect("read the body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Bad policy input exits 2 naming the flag, and a policy with `--mode tcp` is refused.
#[test]
fn bad_policy_input_exits_2_naming_the_flag() {
    let cases: [(&[&str], &str); 5] = [
        (&["--allow", "containers,root"], "--allow"),
        (&["--deny", "everything"], "--deny"),
        (&["--bind-mounts", "srv/ci"], "--bind-mounts"),
        (
            &["--mode", "tcp", "--insecure-bind", "--allow", "containers"],
            "--allow",
        ),
        (
            &["--mode", "tcp", "--insecure-bind", "--read-only"],
            "--mode http",
        ),
    ];
    for (args, needle) in cases {
        let out = run(
            Command::new(testkit::bins::leader_proxy())
                .args(args)
                .arg("etcd://127.0.0.1:1/p"),
            None,
            CMD,
        );
        assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{out}");
        assert!(out.stderr_text().contains(needle), "{needle}: {out}");
    }
}

/// `[[listener]]` tables: the restricted listener refuses what the open one passes; SIGHUP
/// reloads the policy, and a policy that does not build is refused with the old one kept.
#[test]
fn listener_tables_and_sighup_reload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("ci.sock");
    let config = dir.path().join("lp.toml");
    let write = |ci_policy: &str| {
        let text = format!(
            "[[listener]]\naddress = \"unix://{}\"\n{ci_policy}\n",
            socket.display()
        );
        std::fs::write(&config, text).expect("write the config");
    };
    write("read-only = true");
    let config_arg = config.display().to_string();
    let (_etcd, _state, _manager, proxy) = proxy_with_leader(&["--config", &config_arg]);
    let post_on_socket = || {
        let mut conn = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
        conn.set_read_timeout(Some(WAIT)).expect("timeout");
        conn.write_all(b"POST /v1.41/containers/x/stop HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).expect("read");
        testkit::http::parse(&raw).expect("a response")
    };
    let r = post_on_socket();
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("read-only"), "{}", r.text());
    // The TCP listener of `--listen` (the test's) has the global policy: none.
    let open = post(proxy.addr());
    assert_ne!(open, 403);

    write("allow = \"nosuchsection\"");
    testkit::proxy::signal(proxy.pid(), "HUP");
    proxy.wait_for_log("SIGHUP: refused, the settings do not load", WAIT);
    assert_eq!(post_on_socket().status, 403, "the old policy is kept");

    write("deny = \"privileged\"");
    testkit::proxy::signal(proxy.pid(), "HUP");
    proxy.wait_for_log("SIGHUP: access policies reloaded", WAIT);
    let r = post_on_socket();
    assert_ne!(r.status, 403, "{}", r.text());
}

fn post(addr: SocketAddr) -> u16 {
    testkit::http::request(addr, "POST", "/v1.41/containers/x/stop", &[], b"", WAIT)
        .expect("POST")
        .status
}
