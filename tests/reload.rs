//! SIGHUP against the real proxy (docs/cli.md#signals): the `--config` file is read again
//! and `hold-timeout`, `max-held` (and the leader-change policy, the log level, the
//! certificates: tests/tls.rs) apply to the requests that arrive after it; a changed
//! restart-only setting is logged and ignored; a file that does not load changes nothing
//! and sets `leader_proxy_config_reload_success` to 0; flags still beat the file.
//!
//! The store is an address where nothing listens, so no leader is ever known and every
//! request is held: what SIGHUP changed shows in which request is held, which is refused
//! and what its 503 says (the limits are in the message), never in how long anything took.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use testkit::conformance::standalone;
use testkit::etcd::Etcd;
use testkit::etcd_proxy::{proxy_for, KEY};
use testkit::http;
use testkit::proxy::Proxy;
use testkit::tls::read_head;

/// A store that never answers: no leader, so every request is held.
const NOWHERE: &str = "etcd://127.0.0.1:1/p";
const HELD: &str = "leader_proxy_held_requests";
const ABANDONED: &str = "leader_proxy_abandoned_requests_total";
const SUCCESS: &str = "leader_proxy_config_reload_success";
const TIMESTAMP: &str = "leader_proxy_config_reload_timestamp_seconds";
const WAIT: Duration = Duration::from_secs(30);
/// How long a held request may wait for its answer here: far above any hold-timeout the
/// tests set but the long one, which only the proxy's stop ends.
const ANSWER: Duration = Duration::from_secs(120);

fn write(config: &Path, text: &str) {
    std::fs::write(config, text).expect("write the config file");
}

/// A `GET /_ping` that stays held: its answer, when it comes, is the thread's result.
fn hold(proxy: &Proxy, expected_held: f64) -> JoinHandle<std::io::Result<http::Response>> {
    let addr = proxy.addr();
    let held = std::thread::spawn(move || http::request(addr, "GET", "/_ping", &[], b"", ANSWER));
    proxy.wait_for_metric(HELD, expected_held, WAIT, "the request is not held");
    held
}

/// A `GET /_ping` answered now or after the hold: status and body.
fn ping(addr: SocketAddr) -> (u16, String) {
    let response =
        http::request(addr, "GET", "/_ping", &[], b"", ANSWER).expect("an answer from the proxy");
    (response.status, response.text())
}

fn config_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("leader-proxy.toml");
    (dir, config)
}

/// `max-held` raised in the file: the request one beyond the old limit is held, the one
/// beyond the new limit is refused, naming it. Then `hold-timeout` lowered: a new request
/// gets its 503 after the new hold, which its message names.
#[test]
fn sighup_applies_max_held_and_hold_timeout_from_the_file() {
    let (_dir, config) = config_dir();
    write(&config, "max-held = 1\nhold-timeout = \"10m\"\n");
    let proxy = Proxy::start(&["--config", &config.display().to_string(), NOWHERE]);
    let _first = hold(&proxy, 1.0);
    let (status, body) = ping(proxy.addr());
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--max-held 1"), "{body}");

    write(&config, "max-held = 2\nhold-timeout = \"10m\"\n");
    let reloaded = proxy.sighup(WAIT);
    assert!(reloaded.contains("max-held 2"), "{reloaded}");
    let _second = hold(&proxy, 2.0);
    let (status, body) = ping(proxy.addr());
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--max-held 2"), "{body}");

    write(&config, "max-held = 3\nhold-timeout = \"1s\"\n");
    proxy.sighup(WAIT);
    let (status, body) = ping(proxy.addr());
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("no Swarm primary elected after waiting 1s"),
        "the new hold-timeout does not apply: {body}"
    );
    assert_eq!(proxy.metric(SUCCESS), 1.0);
}

/// A changed `listen` and `mode` are logged as needing a restart and ignored: the proxy
/// serves on as before, on the same address, and the reload counts as a success.
#[test]
fn sighup_logs_a_changed_listen_as_needing_a_restart_and_keeps_serving() {
    let (_dir, config) = config_dir();
    let settings = |listen: &str, mode: &str| {
        format!(
            "listen = [\"{listen}\"]\nadmin = \"127.0.0.1:0\"\nmode = \"{mode}\"\n\
             hold-timeout = \"100ms\"\n"
        )
    };
    write(&config, &settings("127.0.0.1:0", "http"));
    let proxy =
        Proxy::start_with_listeners_in(&["--config", &config.display().to_string(), NOWHERE]);
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let elsewhere = free.local_addr().expect("its address");
    drop(free);

    write(&config, &settings(&elsewhere.to_string(), "tcp"));
    proxy.sighup(WAIT);
    proxy.wait_for_log(
        "SIGHUP: --listen changed: it needs a restart; ignored until then",
        WAIT,
    );
    proxy.wait_for_log(
        "SIGHUP: --mode changed: it needs a restart; ignored until then",
        WAIT,
    );
    // Still the L7 proxy on the first address: an HTTP 503 in Docker's format.
    let (status, body) = ping(proxy.addr());
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no Swarm primary elected"), "{body}");
    assert!(
        std::net::TcpStream::connect(elsewhere).is_err(),
        "the proxy listens on the new address {elsewhere}"
    );
    assert_eq!(proxy.metric(SUCCESS), 1.0);
}

/// A file that does not load is refused whole: the metric says 0, `max-held` stays what
/// it was even where the file's new value was valid. The next good file is applied.
#[test]
fn sighup_refuses_a_bad_file_and_keeps_the_settings_in_use() {
    let (_dir, config) = config_dir();
    write(&config, "max-held = 1\nhold-timeout = \"10m\"\n");
    let proxy = Proxy::start(&["--config", &config.display().to_string(), NOWHERE]);
    assert_eq!(proxy.metric(SUCCESS), 1.0);
    let started = proxy.metric(TIMESTAMP);
    assert!(started > 0.0, "no load time at start");
    let _held = hold(&proxy, 1.0);

    // A bad value, then a file that is not TOML: each error is named in the log.
    for (bad, named) in [
        ("max-held = 5\nhold-timeout = \"soon\"\n", "--hold-timeout"),
        ("max-held = 5\nhold-timeout = [\n", "leader-proxy.toml"),
    ] {
        write(&config, bad);
        let refused = proxy.sighup(WAIT);
        assert!(refused.contains("SIGHUP: refused"), "{refused}");
        assert!(refused.contains(named), "the error is not named: {refused}");
        assert_eq!(proxy.metric(SUCCESS), 0.0);
        assert_eq!(proxy.metric(TIMESTAMP), started);
        let (status, body) = ping(proxy.addr());
        assert_eq!(status, 503, "{body}");
        assert!(
            body.contains("--max-held 1"),
            "a refused file changed max-held: {body}"
        );
    }

    write(&config, "max-held = 2\nhold-timeout = \"10m\"\n");
    proxy.sighup(WAIT);
    assert_eq!(proxy.metric(SUCCESS), 1.0);
    assert!(proxy.metric(TIMESTAMP) >= started);
    let _second = hold(&proxy, 2.0);
}

/// Flags beat the file after a reload as at start: `--max-held 1` stays whatever the file
/// says, while the file's own `hold-timeout` is applied.
#[test]
fn sighup_keeps_flags_over_the_file() {
    let (_dir, config) = config_dir();
    write(&config, "max-held = 1\nhold-timeout = \"10m\"\n");
    let proxy = Proxy::start(&[
        "--max-held",
        "1",
        "--config",
        &config.display().to_string(),
        NOWHERE,
    ]);
    // Held on a connection the test closes later.
    let mut first = TcpStream::connect(proxy.addr()).expect("connect");
    first
        .write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
        .expect("send");
    proxy.wait_for_metric(HELD, 1.0, WAIT, "the request is not held");

    write(&config, "max-held = 5\nhold-timeout = \"1s\"\n");
    let reloaded = proxy.sighup(WAIT);
    assert!(
        reloaded.contains("hold-timeout 1s, max-held 1,"),
        "not the flag's max-held with the file's hold-timeout: {reloaded}"
    );
    let (status, body) = ping(proxy.addr());
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("--max-held 1"),
        "the file beat the flag: {body}"
    );

    // Its client gone, the first request leaves the hold; the next one waits the file's
    // new hold-timeout.
    drop(first);
    proxy.wait_for_metric(ABANDONED, 1.0, WAIT, "the held request was not dropped");
    let (status, body) = ping(proxy.addr());
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("no Swarm primary elected after waiting 1s"),
        "the file's hold-timeout does not apply: {body}"
    );
}

/// `on-leader-change` changed from `drain` (with an hour of `drain-timeout`) to `close`: a
/// connection open to the old leader ends at the next leader change instead of draining
/// for an hour (`--mode tcp`, a keep-alive connection to a simulated manager).
#[test]
fn sighup_applies_on_leader_change_from_the_next_change() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let (m1, m2) = (standalone("m1", dir.path()), standalone("m2", dir.path()));
    etcd.put_v2(KEY, &m1.advertise(), None);
    let (_config_dir, config) = config_dir();
    write(
        &config,
        "on-leader-change = \"drain\"\ndrain-timeout = \"1h\"\n",
    );
    let proxy = proxy_for(
        &etcd,
        &["--mode", "tcp", "--config", &config.display().to_string()],
    );
    proxy.wait_for_leader(WAIT, |l| l["leader"] == m1.advertise().as_str());
    let mut open = TcpStream::connect(proxy.addr()).unwrap();
    open.set_read_timeout(Some(WAIT)).unwrap();
    open.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
        .unwrap();
    let head = read_head(&mut open).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = [0u8; 2];
    open.read_exact(&mut body).unwrap();

    write(
        &config,
        "on-leader-change = \"close\"\ndrain-timeout = \"1h\"\n",
    );
    let reloaded = proxy.sighup(WAIT);
    assert!(reloaded.contains("on-leader-change Close"), "{reloaded}");
    etcd.put_v2(KEY, &m2.advertise(), None);
    proxy.wait_for_leader(WAIT, |l| l["leader"] == m2.advertise().as_str());
    // Closed (EOF or reset), not still open when the read gives up.
    match open.read(&mut body) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!(
            "the connection to the old leader is still open after the change: {other:?}\n{}",
            proxy.log()
        ),
    }
}
