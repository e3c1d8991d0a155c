//! TLS on both sides of the L7 proxy, with a real etcd naming a simulated manager (a
//! separate process) as leader, and no dockerd (the real-dockerd runs are in
//! tests/docker_e2e.rs):
//! - clients: `--tlsverify` refuses a client without a certificate, with one from another
//!   CA, or speaking plain HTTP, in the handshake (raw rustls clients and the docker CLI);
//!   hijack with half-close (Go's `close_notify` and the older CLIs' bare FIN) and
//!   unbuffered streams behave as over TCP; SIGHUP reloads the certificates (and the log
//!   level) without dropping open connections, and a broken file keeps the old ones;
//! - managers: `--upstream-cert-path` verifies a TLS-only manager's certificate against
//!   `ca.pem` and the leader's IP, presents the client certificate, keeps upstream
//!   connections pooled, and relays hijacked connections over TLS with half-close.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::certs::Certs;
use testkit::conformance::standalone;
use testkit::dockerd::{docker, run, DEBIAN_DOCKER};
use testkit::etcd::Etcd;
use testkit::http;
use testkit::proxy::{signal, Proxy};
use testkit::tls::{connect, get, read_head, refused, TlsManager, TlsStream};

const KEY: &str = "/p/docker/swarm/leader";
const WAIT: Duration = Duration::from_secs(20);

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn start_proxy(etcd: &Etcd, mut args: Vec<String>) -> Proxy {
    args.push(format!("etcd://{}/p", etcd.endpoint()));
    let proxy = Proxy::start(&strs(&args));
    proxy.wait_for_leader(WAIT, |l| l["state"] == "leader");
    proxy
}

fn client(certs: &Certs) -> Option<(&Path, &Path)> {
    Some((certs.client_cert.as_path(), certs.client_key.as_path()))
}

#[test]
fn tlsverify_refuses_clients_without_a_certificate_from_its_ca() {
    let (certs, other) = (Certs::new("proxy-ca"), Certs::new("other-ca"));
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let manager = standalone("m1", dir.path());
    etcd.put_v2(KEY, &manager.advertise(), None);
    let proxy = start_proxy(&etcd, certs.tlsverify_args());

    let mut ok = connect(proxy.addr(), "127.0.0.1", &certs.ca, client(&certs)).unwrap();
    let (status, body) = get(&mut ok, "/_ping").unwrap();
    assert!(status.contains("200"), "{status} {body}");
    assert_eq!(body, "OK");

    let (no_cert, why) = refused(proxy.addr(), &certs.ca, None);
    assert!(no_cert, "a client without a certificate was served: {why}");
    assert!(
        why.contains("CertificateRequired") || why.contains("alert"),
        "{why}"
    );
    let (other_ca, why) = refused(proxy.addr(), &certs.ca, client(&other));
    assert!(
        other_ca,
        "a client certificate from another CA was accepted: {why}"
    );
    assert!(why.contains("alert") || why.contains("closed"), "{why}");
    assert!(
        http::get(proxy.addr(), "/_ping").is_err(),
        "plain HTTP was answered on a TLS listener"
    );

    // The docker CLI (Debian's: nothing here needs a newer one), trusting the proxy's CA:
    // no client certificate, then one from another CA. The handshake refusal is what it
    // reports.
    let cli_dir = tempfile::tempdir().unwrap();
    let only_ca = cli_dir.path().join("only-ca");
    std::fs::create_dir_all(&only_ca).unwrap();
    std::fs::copy(&certs.ca, only_ca.join("ca.pem")).unwrap();
    let foreign = cli_dir.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::copy(&certs.ca, foreign.join("ca.pem")).unwrap();
    std::fs::copy(&other.client_cert, foreign.join("cert.pem")).unwrap();
    std::fs::copy(&other.client_key, foreign.join("key.pem")).unwrap();
    for (what, cert_path) in [("no certificate", &only_ca), ("another CA", &foreign)] {
        let out = run(
            docker(
                DEBIAN_DOCKER,
                &format!("tcp://{}", proxy.addr()),
                &cli_dir.path().join("config"),
            )
            .env("DOCKER_TLS_VERIFY", "1")
            .env("DOCKER_CERT_PATH", cert_path)
            .args(["version", "--format", "{{.Server.Version}}"]),
            None,
            Duration::from_secs(60),
        );
        assert!(!out.ok(), "docker CLI with {what} was served: {out}");
        assert!(
            out.stderr_text().contains("remote error: tls"),
            "{what}: {out}"
        );
    }
    // And with the right one it gets through: the CLI prints the server version that only
    // the simulated manager behind the proxy reports.
    let good = certs.docker_cert_path();
    let out = run(
        docker(
            DEBIAN_DOCKER,
            &format!("tcp://{}", proxy.addr()),
            &cli_dir.path().join("config"),
        )
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", &good)
        .args(["version", "--format", "{{.Server.Version}}"]),
        None,
        Duration::from_secs(60),
    );
    assert!(out.ok(), "{out}\n{}", proxy.log());
    assert_eq!(
        out.stdout_text().trim(),
        "20.10.24-sim",
        "{out}\n{}",
        proxy.log()
    );

    // The proxy counts and logs a refused handshake after its alert is sent: the client
    // may know before the counter and the log do.
    proxy.wait_for_metric(
        "leader_proxy_tls_handshake_failures_total",
        5.0,
        WAIT,
        "five refused handshakes counted",
    );
    proxy.wait_for_log("client TLS handshake failed", WAIT);
}

/// Sends `close_notify` and nothing else (Go's `tls.Conn.CloseWrite`, the 28.x CLI).
fn close_notify(stream: &mut TlsStream) {
    stream.conn.send_close_notify();
    while stream.conn.wants_write() {
        stream.conn.write_tls(&mut stream.sock).unwrap();
    }
}

/// Reads until the server's `close_notify` (or its FIN).
fn read_to_end(stream: &mut TlsStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!(
                "reading the rest: {e} after {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

const ATTACH: &[u8] = b"POST /v1.41/containers/abc/attach?stream=1&stdin=1 HTTP/1.1\r\n\
    Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n";

#[test]
fn hijack_half_close_and_streams_over_client_tls() {
    let certs = Certs::new("proxy-ca");
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let manager = standalone("m1", dir.path());
    etcd.put_v2(KEY, &manager.advertise(), None);
    let proxy = start_proxy(&etcd, certs.tlsverify_args());

    // Go's half-close (close_notify only), the upgrade on a keep-alive connection.
    let mut stream = connect(proxy.addr(), "127.0.0.1", &certs.ca, client(&certs)).unwrap();
    let (status, _) = get(&mut stream, "/_ping").unwrap();
    assert!(status.contains("200"), "{status}");
    stream.write_all(ATTACH).unwrap();
    let head = read_head(&mut stream).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: tcp") && lower.contains("connection: upgrade"));
    stream.write_all(&vec![b'x'; 300_000]).unwrap();
    stream.flush().unwrap();
    close_notify(&mut stream);
    let reply = read_to_end(&mut stream);
    assert!(
        reply.contains("served_by=m1") && reply.contains("bytes=300000"),
        "{reply}\n{}",
        proxy.log()
    );

    // The older CLIs' half-close: a bare TCP FIN under the TLS session.
    let mut stream = connect(proxy.addr(), "127.0.0.1", &certs.ca, client(&certs)).unwrap();
    stream.write_all(ATTACH).unwrap();
    stream.flush().unwrap();
    let head = read_head(&mut stream).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"hello").unwrap();
    stream.flush().unwrap();
    stream.sock.shutdown(Shutdown::Write).unwrap();
    let reply = read_to_end(&mut stream);
    assert!(reply.contains("bytes=5"), "{reply}\n{}", proxy.log());

    // Unbuffered: the first line of a stream arrives on its own. The second is written 30 s
    // later; the first must come within 20 s (it takes milliseconds), so a proxy that holds
    // it back until more follows fails, and a slow machine does not.
    let mut stream = connect(proxy.addr(), "127.0.0.1", &certs.ca, client(&certs)).unwrap();
    stream
        .write_all(b"GET /stream?count=2&interval_ms=30000 HTTP/1.1\r\nHost: docker\r\n\r\n")
        .unwrap();
    stream.flush().unwrap();
    let head = read_head(&mut stream).unwrap();
    assert!(head.contains("200"), "{head}");
    stream.sock.set_read_timeout(Some(WAIT)).unwrap();
    let started = Instant::now();
    let mut first = [0u8; 256];
    let n = stream.read(&mut first).unwrap_or_else(|e| {
        panic!(
            "no first line {:?} after the head, before the second was written: {e}",
            started.elapsed()
        )
    });
    assert!(n > 0);
}

/// A directory with the files the proxy is started with, rewritten by the test.
fn install(dir: &Path, certs: &Certs) {
    std::fs::copy(&certs.server_cert, dir.join("server.pem")).unwrap();
    std::fs::copy(&certs.server_key, dir.join("server-key.pem")).unwrap();
    std::fs::copy(&certs.ca, dir.join("ca.pem")).unwrap();
}

#[test]
fn sighup_reloads_certificates_without_dropping_open_connections() {
    let (one, two) = (Certs::new("ca-one"), Certs::new("ca-two"));
    let files = tempfile::tempdir().unwrap();
    install(files.path(), &one);
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let manager = standalone("m1", dir.path());
    etcd.put_v2(KEY, &manager.advertise(), None);
    let path = |f: &str| files.path().join(f).display().to_string();
    let proxy = start_proxy(
        &etcd,
        vec![
            "--tlscert".into(),
            path("server.pem"),
            "--tlskey".into(),
            path("server-key.pem"),
            "--tlscacert".into(),
            path("ca.pem"),
            "--tlsverify".into(),
        ],
    );
    let mut open = connect(proxy.addr(), "127.0.0.1", &one.ca, client(&one)).unwrap();
    assert!(get(&mut open, "/_ping").unwrap().0.contains("200"));

    install(files.path(), &two);
    signal(proxy.pid(), "HUP");
    proxy.wait_for_log("SIGHUP: certificates reloaded", WAIT);
    // The open connection goes on with its old certificates.
    assert!(get(&mut open, "/_ping").unwrap().0.contains("200"));
    // New ones get the new server certificate and need a client certificate from the new CA.
    assert!(
        connect(proxy.addr(), "127.0.0.1", &one.ca, client(&one)).is_err(),
        "the old server certificate is still served"
    );
    let mut new = connect(proxy.addr(), "127.0.0.1", &two.ca, client(&two)).unwrap();
    assert!(get(&mut new, "/_ping").unwrap().0.contains("200"));
    let (refused_old_client, why) = refused(proxy.addr(), &two.ca, client(&one));
    assert!(refused_old_client, "{why}");

    // A broken file: the reload fails, the certificates in use stay, the proxy serves on.
    std::fs::write(files.path().join("server-key.pem"), "half a key").unwrap();
    signal(proxy.pid(), "HUP");
    proxy.wait_for_log("keeping the certificates in use", WAIT);
    let mut after = connect(proxy.addr(), "127.0.0.1", &two.ca, client(&two)).unwrap();
    assert!(get(&mut after, "/_ping").unwrap().0.contains("200"));
    assert!(get(&mut open, "/_ping").unwrap().0.contains("200"));
    assert_eq!(
        proxy.metric("leader_proxy_reloads_total{result=\"error\"}"),
        1.0
    );
    assert_eq!(
        proxy.metric("leader_proxy_reloads_total{result=\"ok\"}"),
        1.0
    );
}

/// SIGHUP also applies the log level of the settings read again (here: the config file).
#[test]
fn sighup_reloads_the_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lp.toml");
    std::fs::write(&config, "log-level = \"info\"\n").unwrap();
    let mut child = Command::new(testkit::bins::leader_proxy())
        .args(["--listen", "127.0.0.1:0", "--admin", "off", "--config"])
        .arg(&config)
        .arg("etcd://127.0.0.1:1/p")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let (log, stderr) = (log.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
    }
    let wait = |needle: &str| {
        let deadline = Instant::now() + WAIT;
        loop {
            let lines = log.lock().unwrap().clone();
            if let Some(line) = lines.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in:\n{}",
                lines.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let listening = wait("Listening on ");
    let addr: std::net::SocketAddr = listening
        .split("Listening on ")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    std::fs::write(&config, "log-level = \"debug\"\n").unwrap();
    signal(child.id(), "HUP");
    wait("SIGHUP: log level debug");
    // A malformed request head is logged at debug only.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(b"\x01\x02 nonsense\r\n\r\n").unwrap();
    let _ = stream.read(&mut [0u8; 16]);
    wait("dropping client connection");
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------
// Managers that speak TLS only.

/// A simulated manager behind a TLS-only front that requires client certificates.
struct TlsLab {
    etcd: Etcd,
    certs: Certs,
    manager: TlsManager,
    _sim: testkit::sim::SimManager,
    _dir: tempfile::TempDir,
}

impl TlsLab {
    fn new() -> TlsLab {
        let certs = Certs::new("managers-ca");
        let etcd = Etcd::start();
        let dir = tempfile::tempdir().unwrap();
        let sim = standalone("m1", dir.path());
        let manager = TlsManager::start([127, 0, 0, 1].into(), sim.addr(), &certs);
        etcd.put_v2(KEY, &manager.addr().to_string(), None);
        TlsLab {
            etcd,
            certs,
            manager,
            _sim: sim,
            _dir: dir,
        }
    }

    fn proxy(&self, cert_path: &Path, extra: &[&str]) -> Proxy {
        let mut args: Vec<String> = vec![
            "--upstream-cert-path".into(),
            cert_path.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        start_proxy(&self.etcd, args)
    }
}

#[test]
fn upstream_tls_verifies_the_manager_and_presents_the_client_certificate() {
    let lab = TlsLab::new();
    let proxy = lab.proxy(&lab.certs.docker_cert_path(), &[]);

    let response = http::get(proxy.addr(), "/_ping").unwrap();
    assert_eq!(response.status, 200, "{}\n{}", response.text(), proxy.log());
    assert_eq!(response.header("X-Served-By"), Some("m1"));
    // Upstream connections are pooled as in clear text: ten requests, not ten handshakes.
    let before = lab.manager.handshakes();
    for _ in 0..10 {
        assert_eq!(http::get(proxy.addr(), "/info").unwrap().status, 200);
    }
    let made = lab.manager.handshakes() - before;
    assert!(
        made <= 2,
        "{made} TLS handshakes for 10 sequential requests"
    );

    // Hijacked over TLS to the manager, with half-close.
    let mut stream = TcpStream::connect(proxy.addr()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(ATTACH).unwrap();
    let head = read_head(&mut stream).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}\n{}", proxy.log());
    stream.write_all(&vec![b'y'; 200_000]).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(
        reply.contains("served_by=m1") && reply.contains("bytes=200000"),
        "{reply}\n{}",
        proxy.log()
    );
}

#[test]
fn upstream_tls_refuses_a_manager_it_cannot_verify() {
    let lab = TlsLab::new();
    // Another CA: the manager's certificate is not trusted.
    let other = Certs::new("other-ca");
    let proxy = lab.proxy(&other.docker_cert_path(), &["--hold-timeout", "1s"]);
    let response = http::get(proxy.addr(), "/_ping").unwrap();
    assert_eq!(response.status, 503, "{}", response.text());
    proxy.wait_for_log(
        "TLS handshake with the leader failed (--upstream-cert-path)",
        WAIT,
    );
    // The hijack relay refuses it the same way.
    let mut stream = TcpStream::connect(proxy.addr()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(ATTACH).unwrap();
    let head = read_head(&mut stream).unwrap();
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    proxy.wait_for_log("hijack: TLS handshake with the leader failed", WAIT);

    // The right CA, but the leader is named by an address its certificate does not cover
    // (issued for 127.0.0.1, ::1 and localhost; the manager answers on 127.0.0.2).
    let sim_dir = tempfile::tempdir().unwrap();
    let sim = standalone("m2", sim_dir.path());
    let elsewhere = TlsManager::start([127, 0, 0, 2].into(), sim.addr(), &lab.certs);
    lab.etcd.put_v2(KEY, &elsewhere.addr().to_string(), None);
    let proxy = lab.proxy(&lab.certs.docker_cert_path(), &["--hold-timeout", "1s"]);
    let response = http::get(proxy.addr(), "/_ping").unwrap();
    assert_eq!(response.status, 503, "{}", response.text());
    proxy.wait_for_log_where("a certificate not valid for the name", WAIT, |log| {
        let log = log.to_lowercase();
        log.contains("notvalidforname") || log.contains("not valid for name")
    });
}
