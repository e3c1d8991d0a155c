//! Held requests against the real proxy, a real etcd and a simulated manager
//! (docs/failover.md#hold): a request whose client hung up while it was held is dropped,
//! never sent, while no leader is known and while a leader refuses connections or does not
//! answer them; an `Upgrade`
//! request whose client only half-closed is still served; and however many requests wait
//! on a leader that refuses, it is dialled at most once per backoff step.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use leader_proxy::proxy::hold::max_dials_within;
use testkit::blackhole::Blackhole;
use testkit::conformance::standalone;
use testkit::etcd::Etcd;
use testkit::etcd_proxy::{proxy_for, KEY};
use testkit::http;
use testkit::proxy::Proxy;
use testkit::server_process::free_ports;
use testkit::sim::{read_log, SimManager, SimOptions};

const ABANDONED: &str = "leader_proxy_abandoned_requests_total";
const HELD: &str = "leader_proxy_held_requests";
const DIALS: &str = "leader_proxy_upstream_dials_total";
const FAILED_DIALS: &str = "leader_proxy_upstream_dials_total{result=\"failed\"}";
const WAIT: Duration = Duration::from_secs(30);

/// `docker kill c1`, as the CLI sends it, tagged for the manager's write log.
fn kill(id: &str) -> String {
    format!(
        "POST /v1.41/containers/c1/kill HTTP/1.1\r\nHost: docker\r\nX-Request-Id: {id}\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// `docker attach`'s request for `container`.
fn attach(container: &str) -> String {
    format!(
        "POST /v1.41/containers/{container}/attach?stream=1&stdin=1&stdout=1 HTTP/1.1\r\n\
         Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
    )
}

fn send(addr: SocketAddr, request: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect to the proxy");
    stream.write_all(request.as_bytes()).expect("send");
    stream
}

/// Sends `request` and hangs up, as Ctrl-C does.
fn send_and_hang_up(addr: SocketAddr, request: &str) {
    drop(send(addr, request));
}

/// A `docker kill` from a client that waits for the answer, on a thread of its own.
fn live_kill(addr: SocketAddr, id: &'static str) -> JoinHandle<http::Response> {
    std::thread::spawn(move || {
        http::request(
            addr,
            "POST",
            "/v1.41/containers/c2/kill",
            &[("X-Request-Id", id)],
            b"",
            Duration::from_secs(60),
        )
        .expect("the live client's answer")
    })
}

/// How many times the manager executed the write `id`.
fn executed(log: &Path, id: &str) -> usize {
    read_log(log).iter().filter(|l| l.request_id == id).count()
}

/// A live request waits next to the dropped one, then the manager becomes leader: the live
/// one is executed, the dropped one never is.
fn elect_and_check(etcd: &Etcd, proxy: &Proxy, manager: &SimManager, log: &Path) {
    let live = live_kill(proxy.addr(), "live");
    proxy.wait_for_metric(HELD, 1.0, WAIT, "the live request is not held");
    etcd.put_v2(KEY, &manager.advertise(), None);
    let answer = live.join().expect("live client");
    assert_eq!(answer.status, 201, "{}\n{}", answer.text(), proxy.log());
    assert_eq!(executed(log, "live"), 1);
    assert_eq!(
        executed(log, "gone"),
        0,
        "the kill of a client that hung up ran:\n{}",
        proxy.log()
    );
    assert_eq!(proxy.metric(ABANDONED), 1.0);
    let log = proxy.wait_for_log_where("the drop", WAIT, |log| {
        log.contains("dropping a held request")
    });
    assert_eq!(log.matches("dropping a held request").count(), 1, "{log}");
}

#[test]
fn a_request_held_without_leader_is_dropped_when_its_client_hangs_up() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let manager = standalone("m1", dir.path());
    let proxy = proxy_for(&etcd, &["--hold-timeout", "60s"]);

    send_and_hang_up(proxy.addr(), &kill("gone"));
    proxy.wait_for_metric(
        ABANDONED,
        1.0,
        WAIT,
        "the held kill was not dropped when its client hung up",
    );
    elect_and_check(&etcd, &proxy, &manager, &dir.path().join("writes.log"));
}

/// The leader at `leader` takes no request: a kill held on it, whose client hangs up, is
/// dropped between redials; then the leader is fixed.
fn dropped_while_redialling(leader: &str, extra: &[&str]) {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let manager = standalone("m1", dir.path());
    etcd.put_v2(KEY, leader, None);
    let mut args = vec!["--hold-timeout", "60s"];
    args.extend_from_slice(extra);
    let proxy = proxy_for(&etcd, &args);
    proxy.wait_for_leader(WAIT, |l| l["leader"] == leader);

    send_and_hang_up(proxy.addr(), &kill("gone"));
    proxy.wait_for_metric(ABANDONED, 1.0, WAIT, "the kill was not dropped");
    assert!(proxy.metric(FAILED_DIALS) >= 1.0, "{}", proxy.log());
    elect_and_check(&etcd, &proxy, &manager, &dir.path().join("writes.log"));
}

#[test]
fn a_request_held_on_a_refusing_leader_is_dropped_when_its_client_hangs_up() {
    let refusing = format!("127.0.0.1:{}", free_ports(1)[0]);
    dropped_while_redialling(&refusing, &[]);
}

#[test]
fn a_request_held_on_a_silent_leader_is_dropped_when_its_client_hangs_up() {
    let silent = Blackhole::new();
    // Each dial waits out --connect-timeout; the hang-up comes during the first.
    dropped_while_redialling(&silent.addr().to_string(), &["--connect-timeout", "1s"]);
}

#[test]
fn a_held_upgrade_whose_client_half_closed_is_served_and_one_that_reset_is_not() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let manager = standalone("m1", dir.path());
    let proxy = proxy_for(&etcd, &["--hold-timeout", "60s"]);

    // `docker run -i` with its stdin at an end: the CLI half-closes and reads on.
    let mut half_closed = send(proxy.addr(), &attach("c-half-closed"));
    half_closed.shutdown(Shutdown::Write).unwrap();
    // A client that dies: its socket is reset.
    let reset = send(proxy.addr(), &attach("c-reset"));
    socket2::SockRef::from(&reset)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(reset);
    proxy.wait_for_metric(ABANDONED, 1.0, WAIT, "the reset attach was not dropped");

    etcd.put_v2(KEY, &manager.advertise(), None);
    half_closed.set_read_timeout(Some(WAIT)).unwrap();
    let mut answer = String::new();
    if let Err(e) = half_closed.read_to_string(&mut answer) {
        panic!(
            "reading the attach: {e}; so far {answer:?}\n{}",
            proxy.log()
        );
    }
    assert!(
        answer.starts_with("HTTP/1.1 101"),
        "{answer}\n{}",
        proxy.log()
    );
    assert!(answer.contains("served_by=m1"), "{answer}");
    assert_eq!(proxy.metric(ABANDONED), 1.0, "{}", proxy.log());
    assert!(
        !manager.log().contains("c-reset"),
        "the reset client's attach reached the manager:\n{}",
        manager.log()
    );
}

#[test]
fn five_hundred_requests_held_on_a_refusing_leader_dial_it_once_per_backoff_step() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let leader: SocketAddr = format!("127.0.0.1:{}", free_ports(1)[0]).parse().unwrap();
    etcd.put_v2(KEY, &leader.to_string(), None);
    let proxy = proxy_for(&etcd, &["--hold-timeout", "120s"]);
    proxy.wait_for_leader(WAIT, |l| l["leader"] == leader.to_string().as_str());

    // Every dial happens after this.
    let started = Instant::now();
    let ping = "GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n";
    let mut clients = vec![send(proxy.addr(), ping)];
    // The first request finds the leader refusing; the others come after it is known to.
    proxy.wait_for_metric(FAILED_DIALS, 1.0, WAIT, "no dial failed");
    clients.extend((1..500).map(|_| send(proxy.addr(), ping)));
    // All wait but the one dialling.
    proxy.wait_for_metric(HELD, 499.0, WAIT, "the requests are not held");
    // A few more backoff steps with all of them waiting.
    let dialled = proxy.metric(DIALS);
    proxy.wait_for_metric(DIALS, dialled + 3.0, WAIT, "the leader is not redialled");
    let dialled = proxy.metric(DIALS);
    let allowed = max_dials_within(started.elapsed()) as f64;
    assert!(
        dialled <= allowed,
        "{dialled} dials to the refusing leader for 500 held requests; the backoff allows \
         {allowed} in {:?}",
        started.elapsed()
    );
    eprintln!(
        "500 held requests: {dialled} dials in {:?} (at most {allowed})",
        started.elapsed()
    );

    // The leader comes up on its address: the dial that succeeds lets every request go.
    let _manager = SimManager::start(
        &SimOptions::new("m1", "none", &dir.path().join("writes.log")).listen(leader),
    );
    for mut client in clients {
        client.set_read_timeout(Some(WAIT)).unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{answer}\n{}",
            proxy.log()
        );
    }
    assert!(proxy.metric("leader_proxy_upstream_dials_total{result=\"ok\"}") >= 1.0);
}
