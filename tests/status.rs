//! `leader-proxy status` and `GET /leader/history` on a real proxy following a real etcd:
//! what an operator sees after a failover, a refused value and an open election with a
//! request held, and that the history keeps only the last 100 changes.

use std::time::Duration;

use testkit::command::leader_proxy;
use testkit::conformance::standalone;
use testkit::etcd::Etcd;
use testkit::etcd_proxy::{proxy_for, proxy_with_leader, KEY};
use testkit::http;

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn status_shows_the_leader_held_requests_and_the_changes_with_their_reasons() {
    let (etcd, _dir, m1, proxy) = proxy_with_leader(&["--hold-timeout", "60s"]);
    let dir2 = tempfile::tempdir().unwrap();
    let m2 = standalone("m2", dir2.path());
    let (first, second) = (m1.advertise(), m2.advertise());

    // A failover, then a value that is not an address, then the election opens.
    etcd.put_v2(KEY, &second, None);
    proxy.wait_for_leader(WAIT, |l| l["leader"] == second.as_str());
    etcd.put_v2(KEY, "not-an-address", None);
    proxy.wait_for_metric(
        "leader_proxy_rejected_leader_values_total",
        1.0,
        WAIT,
        "refused",
    );
    etcd.delete_v2(KEY);
    proxy.wait_for_leader(WAIT, |l| l["state"] == "no_leader");
    // A request held while nobody leads.
    let addr = proxy.addr();
    let held = std::thread::spawn(move || http::get(addr, "/_ping"));
    proxy.wait_for_metric("leader_proxy_held_requests", 1.0, WAIT, "a held request");

    let admin = proxy.admin_addr().to_string();
    let r = leader_proxy(&["status", "--admin", &admin], &[]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let out = &r.stdout;
    assert!(out.contains("leader:  none\n"), "{out}");
    assert!(out.contains("state:   no_leader since "), "{out}");
    assert!(out.contains("source:  etcd\n"), "{out}");
    assert!(out.contains("held:    1 requests\n"), "{out}");
    // Newest first, each with its reason.
    let changes: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("last changes"))
        .skip(1)
        .collect();
    let reason = |line: &str| {
        line.split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };
    let reasons: Vec<String> = changes.iter().map(|l| reason(l)).collect();
    assert_eq!(
        reasons,
        ["expired", "refused", "elected", "elected"],
        "{out}"
    );
    assert!(changes[0].contains(&format!("{second} -> none")), "{out}");
    assert!(changes[1].contains("not-an-address"), "{out}");
    assert!(
        changes[2].contains(&format!("{first} -> {second}")),
        "{out}"
    );
    assert!(changes[3].contains(&format!("none -> {first}")), "{out}");

    // The held request is served once a leader is back.
    etcd.put_v2(KEY, &first, None);
    let answer = held.join().unwrap().expect("the held request is answered");
    assert_eq!(answer.status, 200);
}

#[test]
fn history_keeps_the_last_hundred_changes() {
    let etcd = Etcd::start();
    let proxy = proxy_for(&etcd, &[]);
    let value = |i: usize| format!("127.0.0.1:{}", 20000 + i % 2);
    let total = 105;
    for i in 0..total {
        etcd.put_v2(KEY, &value(i), None);
        proxy.wait_for_leader(WAIT, |l| l["changes"] == i as u64 + 1);
    }
    let history = proxy.history();
    assert_eq!(history.len(), 100);
    // The oldest five are gone; the newest is the last change.
    assert_eq!(history[0]["to"], value(total - 100).as_str());
    assert_eq!(history[0]["from"], value(total - 101).as_str());
    assert_eq!(history[99]["to"], value(total - 1).as_str());
    assert!(history.iter().all(|c| c["reason"] == "elected"));
    assert!(history[99]["time"].as_str().unwrap().ends_with('Z'));

    let admin = proxy.admin_addr().to_string();
    let r = leader_proxy(&["status", "--admin", &admin], &[]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout.contains("last changes (10 of 100 kept"),
        "{}",
        r.stdout
    );
}

#[test]
fn status_without_a_proxy_exits_3_and_bad_input_exits_2() {
    // A port nothing listens on: bound, then closed.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let r = leader_proxy(&["status", "--admin", &addr], &[]);
    assert_eq!(r.code, Some(3), "{r:?}");
    assert!(r.stderr.contains("cannot ask the admin API"), "{r:?}");

    let r = leader_proxy(&["status", "--admin", "nowhere"], &[]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("--admin"), "{r:?}");
}
