//! `swarm://` and `static://` against managers that speak TLS only, the way `dockerd
//! --tlsverify` does: simulated managers (`sim-manager --discovery manual`) each behind a
//! TLS-only front ([`TlsManager`]) that requires a client certificate from its CA.
//!
//! With `--upstream-cert-path` the probes and the proxy speak TLS to the managers with the
//! same files: the leader is followed and requests are served through it. A manager whose
//! certificate is not from `ca.pem`'s CA is not believed (an outage: no leader, the TLS
//! failure named in the log), nor is one that refuses the proxy's client certificate, nor
//! one asked in plain HTTP; one SIGHUP makes the probes use new files, as it does for the
//! proxy. In `--mode tcp` the probes still speak TLS while the clients' TLS passes through.
//! A store's leader is verified (`--verify-leader`) over the same TLS.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::certs::Certs;
use testkit::manager_conformance::{is_leader, served_by};
use testkit::manual_managers::{ClassicManagers, SwarmManagers};
use testkit::proxy::{signal, Proxy};
use testkit::tls::{connect, read_head, TlsManager};

const WAIT: Duration = Duration::from_secs(20);

/// The fronts' addresses: the managers' certificate names these three (IP SANs).
const FRONT_IPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 1),
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
];

/// A CA whose server certificate is valid for the three front addresses.
fn managers_ca(name: &str) -> Certs {
    let mut certs = Certs::new(name);
    (certs.server_cert, certs.server_key) =
        certs.server("managers", &["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
    certs
}

/// One TLS-only front per manager: front `i` on `FRONT_IPS[i]` (a free port) in front of
/// `upstreams[i]`, serving `certs`' server certificate and requiring its client certificate.
fn fronts(upstreams: &[std::net::SocketAddr], certs: &Certs) -> Vec<TlsManager> {
    upstreams
        .iter()
        .zip(FRONT_IPS)
        .map(|(upstream, ip)| TlsManager::start(IpAddr::V4(ip), *upstream, certs))
        .collect()
}

fn url(scheme: &str, fronts: &[TlsManager]) -> String {
    let hosts: Vec<String> = fronts.iter().map(|f| f.addr().to_string()).collect();
    format!("{scheme}://{}", hosts.join(","))
}

/// `leader-proxy --probe-interval 100ms [--upstream-cert-path DIR] EXTRA… URL`.
fn start_proxy(cert_path: Option<&Path>, extra: &[&str], url: &str) -> Proxy {
    let mut args: Vec<String> = vec!["--probe-interval".into(), "100ms".into()];
    if let Some(dir) = cert_path {
        args.extend(["--upstream-cert-path".into(), dir.display().to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(url.to_string());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Proxy::start(&refs)
}

/// Classic Swarm: manager `i` says it is primary, the others name it (by its front).
fn elect_classic(classic: &ClassicManagers, fronts: &[TlsManager], i: usize) {
    let primary = fronts[i].addr().to_string();
    classic.say(i, true, &primary);
    for j in (0..3).filter(|&j| j != i) {
        classic.say(j, false, &primary);
    }
}

/// Swarm mode: every manager lists the nodes with manager `i` leading, Raft addresses on
/// the fronts' hosts (so the leader's API is the front with that host).
fn elect_swarm(swarm: &SwarmManagers, i: usize) {
    let nodes: Vec<Value> = (0..3)
        .map(|j| {
            let mut status =
                json!({"Reachability": "reachable", "Addr": format!("{}:2377", FRONT_IPS[j])});
            if j == i {
                status["Leader"] = json!(true);
            }
            json!({
                "ID": format!("m{}", j + 1),
                "Spec": {"Role": "manager", "Availability": "active"},
                "Status": {"State": "ready", "Addr": FRONT_IPS[j].to_string()},
                "ManagerStatus": status,
            })
        })
        .collect();
    let body = Value::Array(nodes).to_string();
    for j in 0..3 {
        swarm.answer_nodes(j, 200, &body);
    }
}

fn wait_for_log(proxy: &Proxy, needle: &str) {
    let deadline = Instant::now() + WAIT;
    while !proxy.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The proxy knows no leader and says the managers cannot be reached, for a while (many
/// probe rounds).
fn assert_not_followed(proxy: &Proxy) {
    proxy.wait_for_leader(WAIT, |l| l["state"] == "degraded");
    std::thread::sleep(Duration::from_millis(500));
    let leader = proxy.leader();
    assert!(
        leader["leader"].is_null() && leader["state"] == "degraded",
        "{leader}\n{}",
        proxy.log()
    );
    assert!(proxy.metric("leader_proxy_store_errors_total") >= 1.0);
}

/// A directory the proxy's `--upstream-cert-path` points at, filled from `certs`.
fn install(dir: &Path, certs: &Certs) {
    let from = certs.docker_cert_path();
    for file in ["ca.pem", "cert.pem", "key.pem"] {
        std::fs::copy(from.join(file), dir.join(file)).expect("copy a certificate file");
    }
}

/// `static://` over TLS: the primary is followed as it moves, and requests go to it, over
/// TLS. Every manager is asked, each through its own verified handshake.
#[test]
fn static_over_tls_follows_the_primary() {
    let classic = ClassicManagers::start();
    let certs = managers_ca("managers-ca");
    let upstreams: Vec<_> = classic.m.managers.iter().map(|m| m.addr()).collect();
    let fronts = fronts(&upstreams, &certs);
    elect_classic(&classic, &fronts, 0);
    let proxy = start_proxy(
        Some(&certs.docker_cert_path()),
        &[],
        &url("static", &fronts),
    );
    proxy.wait_for_leader(WAIT, is_leader(fronts[0].addr().to_string()));
    assert_eq!(served_by(&proxy, "/info"), "m1");

    elect_classic(&classic, &fronts, 2);
    proxy.wait_for_leader(WAIT, is_leader(fronts[2].addr().to_string()));
    assert_eq!(served_by(&proxy, "/info"), "m3");
    for (i, front) in fronts.iter().enumerate() {
        assert!(front.handshakes() >= 1, "m{} was never asked", i + 1);
        assert_eq!(front.failed_handshakes(), 0, "m{}", i + 1);
    }
    // The probes keep their connections: not one handshake per probe (100 ms apart).
    let before = fronts[1].handshakes();
    std::thread::sleep(Duration::from_millis(1000));
    let made = fronts[1].handshakes() - before;
    assert!(made <= 2, "{made} handshakes with m2 in 1 s of probes");
    assert_eq!(proxy.metric("leader_proxy_store_errors_total"), 0.0);
}

/// `swarm://` over TLS: the Raft leader is followed as it moves (its API: the front with the
/// Raft address's host, verified for that IP), and requests go to it.
#[test]
fn swarm_over_tls_follows_the_leader() {
    let swarm = SwarmManagers::start();
    let certs = managers_ca("managers-ca");
    let upstreams: Vec<_> = swarm.m.managers.iter().map(|m| m.addr()).collect();
    let fronts = fronts(&upstreams, &certs);
    elect_swarm(&swarm, 1);
    let proxy = start_proxy(Some(&certs.docker_cert_path()), &[], &url("swarm", &fronts));
    proxy.wait_for_leader(WAIT, is_leader(fronts[1].addr().to_string()));
    assert_eq!(served_by(&proxy, "/info"), "m2");

    elect_swarm(&swarm, 2);
    proxy.wait_for_leader(WAIT, is_leader(fronts[2].addr().to_string()));
    assert_eq!(served_by(&proxy, "/info"), "m3");

    // The election opens: the managers say so over TLS too.
    let no_leader = SwarmManagers::no_leader_body();
    for j in 0..3 {
        swarm.answer_nodes(j, 503, &no_leader);
    }
    proxy.wait_for_leader(WAIT, |l| l["state"] == "no_leader");
    assert!(fronts.iter().all(|f| f.failed_handshakes() == 0));
    assert_eq!(proxy.metric("leader_proxy_store_errors_total"), 0.0);
}

/// Managers whose certificate is from another CA than `ca.pem`'s are not believed: no
/// leader, the TLS failure named; after the right files are installed one SIGHUP reloads
/// them for the probes (and the proxy), and the leader is followed and served.
#[test]
fn managers_from_another_ca_are_not_believed_until_sighup_installs_the_right_ca() {
    let swarm = SwarmManagers::start();
    let (certs, other) = (managers_ca("managers-ca"), Certs::new("other-ca"));
    let upstreams: Vec<_> = swarm.m.managers.iter().map(|m| m.addr()).collect();
    let fronts = fronts(&upstreams, &certs);
    elect_swarm(&swarm, 0);
    let files = tempfile::tempdir().expect("temp dir");
    install(files.path(), &other);
    let proxy = start_proxy(Some(files.path()), &[], &url("swarm", &fronts));

    assert_not_followed(&proxy);
    proxy.wait_for_log_where("a failed TLS handshake, UnknownIssuer", WAIT, |log| {
        log.contains("TLS handshake with the manager failed (--upstream-cert-path)")
            && log.contains("UnknownIssuer")
    });
    assert!(fronts[0].failed_handshakes() >= 1);
    assert_eq!(fronts.iter().map(TlsManager::handshakes).sum::<usize>(), 0);

    install(files.path(), &certs);
    signal(proxy.pid(), "HUP");
    wait_for_log(&proxy, "SIGHUP: certificates reloaded");
    proxy.wait_for_leader(WAIT, is_leader(fronts[0].addr().to_string()));
    assert_eq!(served_by(&proxy, "/info"), "m1");
    wait_for_log(&proxy, "the swarm:// managers answer again");
}

/// Without a client certificate (`ca.pem` alone) the managers refuse the probes in the
/// handshake: not followed, the refusal named.
#[test]
fn managers_that_refuse_the_client_certificate_are_not_followed() {
    let classic = ClassicManagers::start();
    let certs = managers_ca("managers-ca");
    let upstreams: Vec<_> = classic.m.managers.iter().map(|m| m.addr()).collect();
    let fronts = fronts(&upstreams, &certs);
    elect_classic(&classic, &fronts, 0);
    let files = tempfile::tempdir().expect("temp dir");
    std::fs::copy(&certs.ca, files.path().join("ca.pem")).expect("copy ca.pem");
    let proxy = start_proxy(Some(files.path()), &[], &url("static", &fronts));

    assert_not_followed(&proxy);
    proxy.wait_for_log_where("a failed TLS handshake, CertificateRequired", WAIT, |log| {
        log.contains("TLS handshake with the manager failed (--upstream-cert-path)")
            && log.contains("CertificateRequired")
    });
}

/// Without `--upstream-cert-path` the probes speak plain HTTP, which a TLS-only manager
/// does not answer: not followed, and the log points at the flag.
#[test]
fn without_upstream_cert_path_tls_only_managers_are_not_followed() {
    let classic = ClassicManagers::start();
    let certs = managers_ca("managers-ca");
    let upstreams: Vec<_> = classic.m.managers.iter().map(|m| m.addr()).collect();
    let fronts = fronts(&upstreams, &certs);
    elect_classic(&classic, &fronts, 0);
    let proxy = start_proxy(None, &[], &url("static", &fronts));

    assert_not_followed(&proxy);
    wait_for_log(
        &proxy,
        "a manager that speaks only TLS needs --upstream-cert-path",
    );
    assert!(fronts.iter().all(|f| f.failed_handshakes() >= 1));
}

/// `--mode tcp`: the probes speak TLS with `--upstream-cert-path`, while the clients' own
/// TLS goes through untouched to the primary, which checks the client's certificate.
#[test]
fn tcp_mode_probes_over_tls_and_passes_the_clients_tls_through() {
    let classic = ClassicManagers::start();
    let certs = managers_ca("managers-ca");
    let upstreams: Vec<_> = classic.m.managers.iter().map(|m| m.addr()).collect();
    let fronts = fronts(&upstreams, &certs);
    elect_classic(&classic, &fronts, 1);
    let proxy = start_proxy(
        Some(&certs.docker_cert_path()),
        &["--mode", "tcp"],
        &url("static", &fronts),
    );
    proxy.wait_for_leader(WAIT, is_leader(fronts[1].addr().to_string()));

    // The client's TLS session is with m2's front (its certificate names 127.0.0.1 too).
    let identity = Some((certs.client_cert.as_path(), certs.client_key.as_path()));
    let mut stream = connect(proxy.addr(), "127.0.0.1", &certs.ca, identity).expect("TLS");
    stream
        .write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
        .expect("write");
    stream.flush().expect("flush");
    let head = read_head(&mut stream).expect("an answer");
    assert!(
        head.starts_with("HTTP/1.1 200") && head.contains("X-Served-By: m2"),
        "{head}\n{}",
        proxy.log()
    );
}

/// `--verify-leader` asks over the same TLS: the store names m2's front, m2 (asked over a
/// verified handshake) says it is a replica of m1, and m1, asked the same way, says
/// primary: requests go to m1.
#[test]
fn verify_leader_asks_the_managers_over_tls() {
    let etcd = testkit::etcd::Etcd::start();
    let classic = ClassicManagers::start();
    let certs = managers_ca("managers-ca");
    let upstreams: Vec<_> = classic.m.managers.iter().map(|m| m.addr()).collect();
    let fronts = fronts(&upstreams, &certs);
    elect_classic(&classic, &fronts, 0);
    etcd.put_v2(
        testkit::etcd_proxy::KEY,
        &fronts[1].addr().to_string(),
        None,
    );
    let proxy = start_proxy(
        Some(&certs.docker_cert_path()),
        &[],
        &format!("etcd://{}/p", etcd.endpoint()),
    );
    let leader = proxy.wait_for_leader(WAIT, is_leader(fronts[0].addr().to_string()));
    assert!(leader["disagreement"].is_string(), "{leader}");
    assert_eq!(served_by(&proxy, "/info"), "m1");
    for i in [0, 1] {
        assert!(fronts[i].handshakes() >= 1, "m{} was never asked", i + 1);
        assert_eq!(fronts[i].failed_handshakes(), 0, "m{}", i + 1);
    }
}
