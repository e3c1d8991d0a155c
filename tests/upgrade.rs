//! Upgrades (docs/cli.md#upgrades) against the real binary: a new process started with
//! `--upgrade` takes every listening socket (TCP, unix, admin) from the running one over
//! `--upgrade-socket`; a client loop sees no failed request across the hand-over, `/readyz`
//! stays 200, and an open `docker logs -f` (real dockerd) goes on streaming from the old
//! process until its container stops. A TLS listener (`--tlsverify`) is handed over the
//! same way: the new process serves new TLS clients with its own certificates, a TLS
//! connection opened before stays with the old one. Without a running process, or with
//! other listeners, `--upgrade` exits 1 naming why, and the running process serves on.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use testkit::certs::Certs;
use testkit::conformance::standalone;
use testkit::dockerd::{docker, run, Dockerd, DOCKER};
use testkit::etcd::Etcd;
use testkit::http;
use testkit::proxy::Proxy;
use testkit::sim::read_log;
use testkit::tls;

const KEY: &str = "/p/docker/swarm/leader";
const WAIT: Duration = Duration::from_secs(30);
/// For docker commands that take a second or two.
const CMD: Duration = Duration::from_secs(60);

fn unix_url(path: &Path) -> String {
    format!("unix://{}", path.display())
}

/// `leader-proxy ARGS…` run to its end: exit status and stderr.
fn run_proxy(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(testkit::bins::leader_proxy())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run leader-proxy");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `GET /_ping` on a unix socket, `Connection: close`: the status line's code.
fn unix_ping(path: &Path) -> std::io::Result<u16> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    Ok(http::parse(&raw)?.status)
}

#[test]
fn upgrade_without_a_running_process_exits_1_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let (status, stderr) = run_proxy(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "off",
        "--upgrade",
        "--upgrade-socket",
        &socket.display().to_string(),
        "etcd://127.0.0.1:1/p",
    ]);
    assert_eq!(status, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--upgrade: nothing answers on --upgrade-socket {}",
            socket.display()
        )),
        "{stderr}"
    );
    assert!(
        !socket.exists(),
        "a failed upgrade left {}",
        socket.display()
    );
}

/// A new process whose listeners differ is refused, naming the listener; the old one
/// serves on, keeps its files, and hands over to a new process with the same listeners.
#[test]
fn upgrade_with_other_listeners_is_refused_and_the_running_process_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let unix = dir.path().join("docker.sock");
    let socket_arg = socket.display().to_string();
    let mut old = Proxy::start(&[
        "--listen",
        &unix_url(&unix),
        "--upgrade-socket",
        &socket_arg,
        "--hold-timeout",
        "100ms",
        "etcd://127.0.0.1:1/p",
    ]);
    let (addr, admin) = (old.addr().to_string(), old.admin_addr().to_string());
    let (status, stderr) = run_proxy(&[
        "--listen",
        &addr,
        "--admin",
        &admin,
        "--upgrade",
        "--upgrade-socket",
        &socket_arg,
        "etcd://127.0.0.1:1/p",
    ]);
    assert_eq!(status, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the running process also has `listen {}`",
            unix_url(&unix)
        )),
        "{stderr}"
    );
    old.wait_for_log("did not take over", WAIT);
    // Served as before, on both listeners; the files are in place.
    assert_eq!(http::get(old.addr(), "/_ping").unwrap().status, 503);
    assert_eq!(unix_ping(&unix).unwrap(), 503);
    assert!(socket.exists() && unix.exists());

    let new = Proxy::start_with_listeners_in(&[
        "--listen",
        &addr,
        "--listen",
        &unix_url(&unix),
        "--admin",
        &admin,
        "--upgrade",
        "--upgrade-socket",
        &socket_arg,
        "--hold-timeout",
        "100ms",
        "etcd://127.0.0.1:1/p",
    ]);
    assert!(old.wait_for_exit(WAIT).success(), "{}", old.log());
    assert!(
        unix.exists(),
        "the old process removed the unix socket file"
    );
    assert_eq!(unix_ping(&unix).unwrap(), 503);
    new.wait_for_log("--upgrade: serving on every socket", WAIT);

    // The files are the new process's now: its SIGTERM removes them.
    let mut new = new;
    assert!(
        new.terminate(WAIT).is_some_and(|s| s.success()),
        "{}",
        new.log()
    );
    assert!(!unix.exists() && !socket.exists(), "{}", new.log());
}

/// SIGTERM stops a process that serves upgrades like any other: new clients are refused
/// (no copy of a listening socket kept for an upgrade stays open), the upgrade socket's
/// file is removed, and a request held meanwhile keeps its connection.
#[test]
fn sigterm_with_an_upgrade_socket_refuses_new_clients_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let proxy = Proxy::start(&[
        "--upgrade-socket",
        &socket.display().to_string(),
        "--hold-timeout",
        "10m",
        "--shutdown-grace",
        "10m",
        "etcd://127.0.0.1:1/p",
    ]);
    let addr = proxy.addr();
    let held = std::thread::spawn(move || {
        http::request(addr, "GET", "/_ping", &[], b"", Duration::from_secs(120))
    });
    proxy.wait_for_metric("leader_proxy_held_requests", 1.0, WAIT, "not held");
    testkit::proxy::signal(proxy.pid(), "TERM");
    proxy.wait_for_log("SIGTERM received", WAIT);
    let deadline = Instant::now() + WAIT;
    // A connect that is neither accepted nor refused (a backlog nobody reads) fails too.
    let accepting = || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok();
    while accepting() || socket.exists() {
        assert!(
            Instant::now() < deadline,
            "still accepting on {addr} ({}) after SIGTERM:\n{}",
            if socket.exists() {
                "upgrade socket still there"
            } else {
                "upgrade socket removed"
            },
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!held.is_finished(), "the held request was cut at SIGTERM");
    drop(proxy);
    let _ = held.join();
}

/// Requests one after another until finished, each round what `ask` sends (each on a new
/// connection): an answer of 200 counts as answered, anything else as a failure.
struct ClientLoop {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: JoinHandle<()>,
}

/// One round of a [`ClientLoop`]: what was asked, and the status it got.
type Asked = Vec<(&'static str, std::io::Result<u16>)>;

impl ClientLoop {
    fn start(ask: impl Fn() -> Asked + Send + 'static) -> ClientLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, answered, failures) = (stop.clone(), answered.clone(), failures.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for (what, answer) in ask() {
                        match answer {
                            Ok(200) => {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(status) => {
                                failures.lock().unwrap().push(format!("{what}: {status}"))
                            }
                            Err(e) => failures.lock().unwrap().push(format!("{what}: {e}")),
                        }
                    }
                }
            })
        };
        ClientLoop {
            stop,
            answered,
            failures,
            thread,
        }
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Stops the loop and asserts that every request it sent was answered 200; returns how
    /// many were.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        let failures = self.failures.lock().unwrap().clone();
        let ok = self.answered.load(Ordering::Relaxed);
        assert!(
            failures.is_empty(),
            "{} of {} requests failed across the upgrade: {:?}",
            failures.len(),
            ok + failures.len() as u64,
            &failures[..failures.len().min(10)]
        );
        ok
    }
}

/// The access-log lines of `GET …/_ping` a proxy logged.
fn pings_served(proxy: &Proxy) -> usize {
    proxy
        .log()
        .lines()
        .filter(|l| l.contains("path=/_ping"))
        .count()
}

#[test]
fn dockerd_upgrade_drops_no_request_and_the_open_stream_ends_on_the_old_process() {
    let etcd = Etcd::start();
    let dockerd = Dockerd::start();
    etcd.put_v2(KEY, &dockerd.endpoint(), None);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let unix = dir.path().join("docker.sock");
    let discovery = format!("etcd://{}/p", etcd.endpoint());
    let socket_arg = socket.display().to_string();
    let mut old = Proxy::start(&[
        "--listen",
        &unix_url(&unix),
        "--upgrade-socket",
        &socket_arg,
        "--shutdown-grace",
        "5m",
        &discovery,
    ]);
    let leader = dockerd.endpoint();
    old.wait_for_leader(WAIT, |l| l["leader"] == leader.as_str());
    let host = format!("tcp://{}", old.addr());
    let client = dir.path().join("client");

    // A container that prints until it is told to stop, and its `logs -f` through the
    // old process.
    let out = run(
        docker(DOCKER, &host, &client).args([
            "run",
            "-d",
            "--network",
            "none",
            "bb:local",
            "sh",
            "-c",
            "i=0; while [ ! -e /tmp/stop ]; do i=$((i+1)); echo tick-$i; sleep 0.2; done; \
             echo finished",
        ]),
        None,
        CMD,
    );
    assert!(out.ok(), "{out}\n{}", old.log());
    let container = out.stdout_text().trim().to_string();
    let logs_path = dir.path().join("logs.out");
    let mut logs = docker(DOCKER, &host, &client)
        .args(["logs", "-f", &container])
        .stdin(Stdio::null())
        .stdout(File::create(&logs_path).unwrap())
        .stderr(File::create(dir.path().join("logs.err")).unwrap())
        .spawn()
        .expect("docker logs -f");
    let ticks = || {
        std::fs::read_to_string(&logs_path)
            .unwrap_or_default()
            .matches("tick-")
            .count()
    };
    let wait_for_ticks = |at_least: usize, what: &str| {
        let deadline = Instant::now() + WAIT;
        while ticks() < at_least {
            assert!(Instant::now() < deadline, "{what}: {} ticks", ticks());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for_ticks(1, "logs -f through the old process");

    // `GET /_ping` on the TCP and the unix listener (200: dockerd answered through the
    // proxy) and `/readyz` on the admin listener.
    let looping = {
        let (tcp, unix, admin) = (old.addr(), unix.clone(), old.admin_addr());
        ClientLoop::start(move || {
            vec![
                ("tcp /_ping", http::get(tcp, "/_ping").map(|r| r.status)),
                ("unix /_ping", unix_ping(&unix)),
                (
                    "admin /readyz",
                    http::get(admin, "/readyz").map(|r| r.status),
                ),
            ]
        })
    };
    old.wait_for_log_where("pings on the old process", WAIT, |log| {
        log.matches("path=/_ping").count() >= 20
    });

    let new = Proxy::start_with_listeners_in(&[
        "--listen",
        &old.addr().to_string(),
        "--listen",
        &unix_url(&unix),
        "--admin",
        &old.admin_addr().to_string(),
        "--upgrade",
        "--upgrade-socket",
        &socket_arg,
        &discovery,
    ]);
    old.wait_for_log("took the listening sockets over", WAIT);
    let handed_over = pings_served(&old);
    new.wait_for_log_where("pings on the new process", WAIT, |log| {
        log.matches("path=/_ping").count() >= 20
    });

    // The stream goes on from the old process after the hand-over, until the container
    // stops (told through the new process); then the old process ends.
    let before = ticks();
    wait_for_ticks(before + 3, "logs -f after the hand-over");
    let new_host = format!("tcp://{}", new.addr());
    // Detached: the container ends within 0.2 s of the file appearing, and an attached exec
    // still being waited on then is reported killed (137), a race of the test's own making.
    let out = run(
        docker(DOCKER, &new_host, &client).args(["exec", "-d", &container, "touch", "/tmp/stop"]),
        None,
        CMD,
    );
    assert!(out.ok(), "{out}\n{}", new.log());
    let deadline = Instant::now() + CMD;
    let status = loop {
        if let Some(status) = logs.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "logs -f did not end");
        std::thread::sleep(Duration::from_millis(50));
    };
    let streamed = std::fs::read_to_string(&logs_path).unwrap();
    assert!(status.success(), "logs -f: {status}: {streamed}");
    assert!(streamed.trim_end().ends_with("finished"), "{streamed}");
    let exited = old.wait_for_exit(WAIT);
    assert!(exited.success(), "{}", old.log());
    let stream_path = format!("/containers/{container}/logs");
    assert!(
        old.log().contains(&stream_path),
        "the old process did not serve the stream:\n{}",
        old.log()
    );
    assert!(
        !new.log().contains(&stream_path),
        "the new process served the stream"
    );

    // The loop goes on against the new process alone, the unix socket file still there.
    let after = looping.answered();
    let deadline = Instant::now() + WAIT;
    while looping.answered() < after + 30 {
        assert!(Instant::now() < deadline, "the loop stopped being answered");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ok = looping.finish();
    eprintln!(
        "upgrade: {ok} requests answered, none failed; {handed_over} pings on the old process \
         at the hand-over, {} on the new one; logs -f streamed {} ticks",
        pings_served(&new),
        ticks()
    );
    assert!(unix.exists());
}

/// A `--tlsverify` listener through an upgrade: a loop of TLS clients (a new connection and
/// handshake per request, client certificate presented) sees no failure and new clients
/// are served by the new process; a slow request running on the old process over TLS is
/// answered by it; an idle keep-alive TLS connection of the old process is closed with
/// `close_notify` (a clean end, docs/cli.md#upgrades), and the old process ends.
#[test]
fn tls_listener_upgrade_drops_no_handshake_and_finishes_what_runs_on_the_old_process() {
    let certs = Certs::new("upgrade-ca");
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let manager = standalone("m1", dir.path());
    etcd.put_v2(KEY, &manager.advertise(), None);
    let discovery = format!("etcd://{}/p", etcd.endpoint());
    let socket = dir.path().join("upgrade.sock").display().to_string();
    let tls_args = certs.tlsverify_args();
    let tls_args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    let mut old_args = tls_args.clone();
    old_args.extend([
        "--upgrade-socket",
        &socket,
        "--shutdown-grace",
        "5m",
        &discovery,
    ]);
    let mut old = Proxy::start(&old_args);
    old.wait_for_leader(WAIT, |l| l["state"] == "leader");
    let addr = old.addr();
    let identity = Some((certs.client_cert.as_path(), certs.client_key.as_path()));
    let mut idle = tls::connect(addr, "127.0.0.1", &certs.ca, identity).unwrap();
    let (status, _) = tls::get(&mut idle, "/_ping").unwrap();
    assert!(status.contains(" 200 "), "{status}");
    let mut slow = tls::connect(addr, "127.0.0.1", &certs.ca, identity).unwrap();
    slow.write_all(
        b"POST /v1.41/containers/create?sleep_ms=3000 HTTP/1.1\r\nHost: docker\r\n\
          X-Request-Id: slow\r\nContent-Length: 0\r\n\r\n",
    )
    .unwrap();
    slow.flush().unwrap();
    // The manager has run the write (its write log says so) and answers 3 s later.
    let deadline = Instant::now() + WAIT;
    let writes = dir.path().join("writes.log");
    while !read_log(&writes).iter().any(|w| w.request_id == "slow") {
        assert!(Instant::now() < deadline, "the slow write never ran");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A new connection, handshake and client certificate for every `GET /_ping`.
    let looping = {
        let (ca, cert, key) = (
            certs.ca.clone(),
            certs.client_cert.clone(),
            certs.client_key.clone(),
        );
        ClientLoop::start(move || {
            let answer = tls::connect(addr, "127.0.0.1", &ca, Some((&cert, &key)))
                .and_then(|mut stream| tls::get(&mut stream, "/_ping"))
                .map(|(status, _)| {
                    status
                        .split(' ')
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0)
                });
            vec![("tls /_ping", answer)]
        })
    };
    old.wait_for_log_where("pings on the old process", WAIT, |log| {
        log.matches("path=/_ping").count() >= 20
    });

    let (listen, admin) = (addr.to_string(), old.admin_addr().to_string());
    let mut new_args = vec!["--listen", &listen, "--admin", &admin];
    new_args.extend(tls_args);
    new_args.extend(["--upgrade", "--upgrade-socket", &socket, &discovery]);
    let new = Proxy::start_with_listeners_in(&new_args);
    old.wait_for_log("took the listening sockets over", WAIT);
    new.wait_for_log_where("pings on the new process", WAIT, |log| {
        log.matches("path=/_ping").count() >= 20
    });

    // The idle connection ends cleanly: `close_notify`, which rustls reads as end of input.
    let mut rest = Vec::new();
    let end = idle.read_to_end(&mut rest);
    assert!(
        end.is_ok() && rest.is_empty(),
        "the idle TLS connection did not end cleanly: {end:?} {rest:?}"
    );
    // The slow request is answered by the old process, which then ends.
    let head = tls::read_head(&mut slow).unwrap();
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    let exited = old.wait_for_exit(WAIT);
    assert!(exited.success(), "{}", old.log());
    assert!(old
        .log()
        .contains("path=/v1.41/containers/create?sleep_ms=3000 status=201"));

    looping.finish();
    assert!(pings_served(&new) >= 20);
}
