//! The Consul backend (`consul://`) driven directly, against the Consul protocol double
//! (crates/testkit/src/consul_double.rs: no Consul server installs here). Each test starts
//! its own double and reads the events the router would get; the token tests run the real
//! `leader-proxy` binary, since the environment they set is per process.

use std::time::{Duration, Instant};

use leader_proxy::discovery::{source_for, Election, LeaderEvent, SourceError};
use testkit::certs::Certs;
use testkit::conformance::standalone;
use testkit::consul_double::{ConsulDouble, DoubleOptions, DoubleTls, SessionSpec, LOCK_FLAGS};
use testkit::http;
use testkit::proxy::Proxy;
use testkit::sim::{wait_for_single_primary, SimManager, SimOptions};
use testkit::source_events::{addr, config, key_config, wait_until, Follower, WAIT};

/// The key under `consul://…/swarm`, as classic Swarm locks it.
const KEY: &str = "swarm/docker/swarm/leader";
const TOKEN: &str = "s3cret-consul-token-4d1f";

fn url(double: &ConsulDouble) -> String {
    format!("consul://{}/swarm", double.endpoint())
}

/// A holder that lives until destroyed acquires the key with `value`; returns its session.
fn elect(double: &ConsulDouble, value: &str) -> String {
    let session = double.session_create(&SessionSpec::lasting());
    assert!(double.acquire(KEY, value, &session), "acquire {value}");
    session
}

// ---------------------------------------------------------------- blocking queries

#[test]
fn a_missing_key_is_waited_on_by_blocking_queries_until_it_is_locked() {
    let double = ConsulDouble::start();
    let mut f = Follower::start(key_config(&url(&double), &[]));
    f.expect(LeaderEvent::NoLeader);
    // The 404 carried an index: the source now waits on it instead of polling.
    wait_until("a blocked query", || double.blocked_queries() == 1);
    let reads = double.kv_reads();

    // Another key changes: Consul's index for a missing key moves, the query answers 404
    // again, and the source waits on the new index. Nothing for the proxy.
    double.put("swarm/other", "x");
    wait_until("the query to answer and block again", || {
        double.kv_reads() == reads + 1 && double.blocked_queries() == 1
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(double.kv_reads(), reads + 1, "the source polls");
    f.assert_quiet();

    let holder = elect(&double, "127.0.0.1:2001");
    f.expect(addr("127.0.0.1:2001"));
    // The holder writes a new value under its lock.
    assert!(double.acquire(KEY, "tcp://127.0.0.1:2002", &holder));
    f.expect(addr("127.0.0.1:2002"));
    double.delete(KEY);
    f.expect(LeaderEvent::NoLeader);
    elect(&double, "127.0.0.1:2003");
    f.expect(addr("127.0.0.1:2003"));
    f.assert_quiet();
    // Blocked on a key that no longer changes, it still notices nobody listens.
    f.hang_up();
}

#[test]
fn a_value_without_a_session_is_no_leader_from_the_start() {
    let double = ConsulDouble::start();
    // What a dead holder leaves: the value, no session.
    let holder = elect(&double, "127.0.0.1:2001");
    double.session_destroy(&holder);
    assert_eq!(
        double.get(KEY).map(|e| (e.value_text(), e.session)),
        Some(("127.0.0.1:2001".to_string(), None))
    );
    let mut f = Follower::start(key_config(&url(&double), &[]));
    f.expect(LeaderEvent::NoLeader);

    // Somebody wins the election.
    let holder = elect(&double, "127.0.0.1:2002");
    f.expect(addr("127.0.0.1:2002"));
    // It unlocks (api.Lock's Unlock): the value stays, the lock is gone.
    assert!(double.release(KEY, &holder));
    f.expect(LeaderEvent::NoLeader);
    assert_eq!(
        double.get(KEY).map(|e| e.value_text()).as_deref(),
        Some("127.0.0.1:2002")
    );
    f.assert_quiet();

    // A plain write (no acquire) while nobody holds the lock is no leader either.
    double.put(KEY, "127.0.0.1:2003");
    std::thread::sleep(Duration::from_millis(200));
    f.assert_quiet();
    // An empty value under a lock is a rejected value, not an open election.
    let holder = elect(&double, "");
    match f.next_within(WAIT, "Rejected") {
        LeaderEvent::Rejected { value, .. } => assert_eq!(value, ""),
        other => panic!("expected Rejected, got {other:?}"),
    }
    // It was no leader, so its end changes nothing; the next real leader is announced.
    double.session_destroy(&holder);
    elect(&double, "127.0.0.1:2004");
    f.expect(addr("127.0.0.1:2004"));
}

#[test]
fn a_session_that_is_not_renewed_ends_the_reign_live() {
    let double = ConsulDouble::start();
    let holder = double.session_create(&SessionSpec::expiring(Duration::from_secs(1)));
    assert!(double.acquire(KEY, "127.0.0.1:2001", &holder));
    let mut f = Follower::start(key_config(&url(&double), &[]));
    f.expect(addr("127.0.0.1:2001"));
    // Nobody renews it: Consul invalidates it (twice its TTL later) and releases the key.
    let started = Instant::now();
    f.expect(LeaderEvent::NoLeader);
    eprintln!("session expiry noticed after {:?}", started.elapsed());
    let entry = double.get(KEY).expect("the key stays");
    assert_eq!(entry.value_text(), "127.0.0.1:2001");
    assert!(entry.session.is_none());
    assert!(double.sessions().is_empty());
    elect(&double, "127.0.0.1:2002");
    f.expect(addr("127.0.0.1:2002"));
}

/// Consul's index can go backwards (here: a snapshot restore, which also abandons every
/// blocked query). The source must start over from index 0 rather than keep waiting on an
/// index the store will not reach for a long while, and must not poll while doing so.
#[test]
fn an_index_that_goes_backwards_starts_the_blocking_loop_over() {
    let double = ConsulDouble::start();
    let holder = elect(&double, "127.0.0.1:2001");
    let mut f = Follower::start(key_config(&url(&double), &[]));
    f.expect(addr("127.0.0.1:2001"));
    let snapshot = double.snapshot();
    let before = double.get(KEY).expect("the key").modify_index;

    for port in 2002..=2006 {
        assert!(double.acquire(KEY, &format!("127.0.0.1:{port}"), &holder));
    }
    f.expect_eventually(addr("127.0.0.1:2006"), WAIT);
    wait_until("the source to block on the new index", || {
        double.blocked_queries() == 1
    });

    double.restore(&snapshot);
    // The abandoned query answered with the old, lower index and the old value.
    f.expect(addr("127.0.0.1:2001"));
    // A change at an index below the one the source waited on before the restore.
    assert!(double.acquire(KEY, "127.0.0.1:2007", &holder));
    let changed = double.get(KEY).expect("the key").modify_index;
    assert!(
        changed < before + 5,
        "{changed} is not below the pre-restore index"
    );
    f.expect_eventually(addr("127.0.0.1:2007"), Duration::from_secs(5));
    wait_until("the source to block again", || {
        double.blocked_queries() == 1
    });
    let reads = double.kv_reads();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(double.kv_reads(), reads, "the source polls after the reset");
    f.assert_quiet();
}

#[test]
fn an_agent_outage_is_degraded_and_the_leader_is_announced_again_after_it() {
    let mut double = ConsulDouble::start();
    let holder = elect(&double, "127.0.0.1:2001");
    let mut f = Follower::start(key_config(&url(&double), &[("kv.token", TOKEN)]));
    f.expect(addr("127.0.0.1:2001"));

    double.stop();
    let reason = f.expect_degraded();
    assert!(reason.contains(&double.endpoint()), "{reason}");
    assert!(!reason.contains(TOKEN), "{reason}");
    // Several reconnection attempts later: one Degraded per outage, the leader kept.
    std::thread::sleep(Duration::from_millis(1500));
    f.assert_quiet();
    double.restart();
    f.expect(addr("127.0.0.1:2001"));
    assert!(double.acquire(KEY, "127.0.0.1:2002", &holder));
    f.expect(addr("127.0.0.1:2002"));
    f.assert_quiet();
}

// ---------------------------------------------------------------- TLS

fn tls_double(certs: &Certs, client_ca: bool) -> ConsulDouble {
    ConsulDouble::start_with(DoubleOptions {
        tls: Some(DoubleTls {
            cert: certs.server_cert.clone(),
            key: certs.server_key.clone(),
            client_ca: client_ca.then(|| certs.ca.clone()),
        }),
        ..DoubleOptions::default()
    })
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[test]
fn tls_with_client_certificates() {
    let certs = Certs::new("consul-test-ca");
    let double = tls_double(&certs, true);
    let holder = elect(&double, "127.0.0.1:2001");
    let mut f = Follower::start(key_config(
        &url(&double),
        &[
            ("kv.cacertfile", path(&certs.ca)),
            ("kv.certfile", path(&certs.client_cert)),
            ("kv.keyfile", path(&certs.client_key)),
        ],
    ));
    f.expect(addr("127.0.0.1:2001"));
    // Blocking queries work over TLS too.
    wait_until("a blocked query", || double.blocked_queries() == 1);
    assert!(double.acquire(KEY, "127.0.0.1:2002", &holder));
    f.expect(addr("127.0.0.1:2002"));

    // Without a client certificate the agent refuses the handshake.
    let refused = double.tls_refused();
    let mut no_cert = Follower::start(key_config(
        &url(&double),
        &[("kv.cacertfile", path(&certs.ca))],
    ));
    no_cert.expect_degraded();
    wait_until("the double to refuse the handshake", || {
        double.tls_refused() > refused
    });

    // Clear text to an https agent fails too.
    let mut plain = Follower::start(key_config(&url(&double), &[]));
    plain.expect_degraded();
}

#[test]
fn tls_refuses_an_agent_signed_by_another_ca() {
    let certs = Certs::new("consul-test-ca");
    let other = Certs::new("someone-elses-ca");
    let double = tls_double(&certs, false);
    elect(&double, "127.0.0.1:2001");
    let mut trusted = Follower::start(key_config(
        &url(&double),
        &[("kv.cacertfile", path(&certs.ca))],
    ));
    trusted.expect(addr("127.0.0.1:2001"));

    let mut f = Follower::start(key_config(
        &url(&double),
        &[("kv.cacertfile", path(&other.ca))],
    ));
    let reason = f.expect_degraded();
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
}

// ---------------------------------------------------------------- ACL token

fn acl_double() -> ConsulDouble {
    ConsulDouble::start_with(DoubleOptions {
        token: Some(TOKEN.into()),
        ..DoubleOptions::default()
    })
}

#[test]
fn the_acl_token_is_sent_as_a_header_and_never_shown() {
    let double = acl_double();
    elect(&double, "127.0.0.1:2001");

    let mut none = Follower::start(key_config(&url(&double), &[]));
    let reason = none.expect_degraded();
    assert!(reason.contains("ACL"), "{reason}");
    assert!(reason.contains("kv.token"), "{reason}");

    let wrong = "wrong-token-9b3e";
    let mut refused = Follower::start(key_config(&url(&double), &[("kv.token", wrong)]));
    let reason = refused.expect_degraded();
    assert!(reason.contains("ACL not found"), "{reason}");
    assert!(!reason.contains(wrong), "{reason}");

    let mut f = Follower::start(key_config(&url(&double), &[("kv.token", TOKEN)]));
    f.expect(addr("127.0.0.1:2001"));
    assert!(double.tokens_in_header() >= 1);
    assert_eq!(double.tokens_in_query(), 0, "the token went into a URL");
}

/// `CONSUL_HTTP_TOKEN`, as Consul's own tools read it, through the real binary (the
/// environment is per process). `/leader`, `/metrics` and the logs never show a token.
#[test]
fn consul_http_token_is_honoured_and_the_option_wins() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let m1 = standalone("m1", dir.path());
    let double = acl_double();
    elect(&double, &m1.advertise());
    let discovery = url(&double);
    let leads = |l: &serde_json::Value| l["state"] == "leader" && l["leader"] == m1.advertise();

    let proxy = Proxy::start_with_env(&[&discovery], &[("CONSUL_HTTP_TOKEN", TOKEN)]);
    proxy.wait_for_leader(WAIT, leads);
    let response = http::get(proxy.addr(), "/info").expect("a request through the proxy");
    assert_eq!(response.header("X-Served-By"), Some("m1"));

    let wrong = "wrong-env-token-77aa";
    let option = format!("kv.token={TOKEN}");
    let wins = Proxy::start_with_env(
        &["--discovery-opt", &option, &discovery],
        &[("CONSUL_HTTP_TOKEN", wrong)],
    );
    wins.wait_for_leader(WAIT, leads);

    let refused = Proxy::start_with_env(&[&discovery], &[("CONSUL_HTTP_TOKEN", wrong)]);
    refused.wait_for_leader(WAIT, |l| l["state"] == "degraded");
    refused.wait_for_log("ACL not found", WAIT);

    for p in [&proxy, &wins, &refused] {
        let shown = format!(
            "{}\n{}\n{}",
            http::get_text(&p.admin_url("/leader")),
            http::get_text(&p.admin_url("/metrics")),
            p.log()
        );
        for secret in [TOKEN, wrong] {
            assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
        }
    }
}

/// An agent that answers `307 Temporary Redirect` (the double's redirect switch, blocked
/// queries included) is not followed, so the ACL token never travels to the redirect's
/// target, which is never contacted; through the real binary, the store shows `degraded`
/// saying why and the last leader stays.
#[test]
fn a_redirect_is_not_followed_and_the_token_stays_home() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let m1 = standalone("m1", dir.path());
    let double = acl_double();
    let witness = testkit::redirect::Witness::start();
    elect(&double, &m1.advertise());
    let option = format!("kv.token={TOKEN}");
    let proxy = Proxy::start(&["--discovery-opt", &option, &url(&double)]);
    proxy.wait_for_leader(WAIT, |l| l["leader"] == m1.advertise().as_str());

    double.redirect_to(witness.addr());
    proxy.wait_for_leader(WAIT, |l| {
        l["state"] == "degraded" && l["leader"] == m1.advertise().as_str()
    });
    proxy.wait_for_log_where("the redirect refused", WAIT, |log| {
        log.lines().any(|line| {
            line.contains("Consul answered HTTP 307 Temporary Redirect")
                && line.contains("redirects from a store are not followed")
        })
    });
    let response = http::get(proxy.addr(), "/info").expect("a request through the proxy");
    assert_eq!(response.header("X-Served-By"), Some("m1"));
    let received = witness.received();
    assert!(
        !received.contains(TOKEN),
        "the token was sent on: {received:?}"
    );
    assert_eq!(
        witness.connections(),
        0,
        "the redirect was followed: {received:?}"
    );
    assert!(!proxy.log().contains(TOKEN), "the token was logged");
}

// ---------------------------------------------------------------- options

#[test]
fn consul_options_are_checked() {
    let error = |options: &[(&str, &str)], election: Election| match source_for(config(
        "consul://127.0.0.1:8500/swarm",
        election,
        options,
    )) {
        Err(e) => e,
        Ok(_) => panic!("accepted {options:?} {election:?}"),
    };
    match error(&[("kv.username", "swarm")], Election::Key) {
        SourceError::Option { option, reason } => {
            assert_eq!(option, "kv.username");
            assert!(reason.contains("consul://"), "{reason}");
        }
        other => panic!("{other}"),
    }
    match error(&[("kv.cacertfile", "/nonexistent/ca.pem")], Election::Key) {
        SourceError::Option { option, reason } => {
            assert_eq!(option, "kv.cacertfile");
            assert!(reason.contains("/nonexistent/ca.pem"), "{reason}");
        }
        other => panic!("{other}"),
    }
    let secret = "not-a-header\nvalue";
    match error(&[("kv.token", secret)], Election::Key) {
        SourceError::Option { option, reason } => {
            assert_eq!(option, "kv.token");
            assert!(!reason.contains(secret), "{reason}");
        }
        other => panic!("{other}"),
    }
    let message = error(&[], Election::Contenders).to_string();
    assert!(message.contains("contenders"), "{message}");
}

// ---------------------------------------------------------------- the simulated managers

/// The simulated managers run Consul's `api.Lock` as libkv does: one holds the key with
/// its session and libkv's flags; SIGTERM releases the key and destroys the session (the
/// next one takes over at once); SIGKILL leaves the lock until the session expires.
#[test]
fn simulated_managers_lock_the_key_like_libkv() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let double = ConsulDouble::start();
    let log = dir.path().join("writes.log");
    let discovery = url(&double);
    let mut managers: Vec<SimManager> = ["m1", "m2"]
        .iter()
        .map(|name| SimManager::start(&SimOptions::new(name, &discovery, &log).ttl(2)))
        .collect();
    let primary = {
        let refs: Vec<&SimManager> = managers.iter().collect();
        wait_for_single_primary(&refs, WAIT).unwrap_or_else(|e| panic!("{e}"))
    };
    let entry = double.get(KEY).expect("the leader key");
    assert_eq!(entry.value_text(), managers[primary].advertise());
    assert_eq!(entry.flags, LOCK_FLAGS);
    assert!(entry.session.is_some());
    wait_until("one session per candidate", || double.sessions().len() == 2);

    // SIGTERM: the key released and the session destroyed before the process exits, so
    // the other takes over without waiting for a TTL.
    let resigned = entry.session.clone().expect("the holder's session");
    let status = managers[primary].terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        !double.sessions().contains(&resigned),
        "the resigned session still exists"
    );
    assert_ne!(
        double.get(KEY).and_then(|e| e.session),
        Some(resigned),
        "the key is still locked by the resigned manager"
    );
    let other = 1 - primary;
    assert!(testkit::sim::wait_until_role(
        managers[other].addr(),
        "primary",
        WAIT
    ));

    // SIGKILL: nobody releases the lock; it stays until the dead holder's session expires,
    // and the restarted manager then takes over. libkv's session TTL is half the lock TTL
    // (1 s for `--ttl 2`), and Consul invalidates a session twice its TTL after its last
    // renewal: the lock outlives its holder by about the lock TTL.
    //
    // No clock bound on the takeover: when the last renewal came before the kill depends
    // on scheduling. The double knows when the session expires; the takeover must not come
    // before that.
    managers[primary].restart();
    let dead = double
        .get(KEY)
        .and_then(|e| e.session)
        .expect("the key is locked by the primary");
    assert_eq!(
        double.session_ttl(&dead),
        Some(Duration::from_secs(1)),
        "the holder's session TTL is not half the lock TTL (libkv's)"
    );
    // A renewal only moves the expiry later: the one read before the kill is a lower bound
    // if the session has already expired when it is read again.
    let expiry_before_kill = double.session_expires(&dead);
    managers[other].kill();
    let killed = Instant::now();
    let expires = double
        .session_expires(&dead)
        .or(expiry_before_kill)
        .expect("the dead holder's session expires");
    assert!(testkit::sim::wait_until_role(
        managers[primary].addr(),
        "primary",
        WAIT
    ));
    let took_over = Instant::now();
    assert!(
        took_over >= expires,
        "took over {:?} after the kill, {:?} before the dead holder's session expired",
        killed.elapsed(),
        expires - took_over
    );
    assert!(
        !double.sessions().contains(&dead),
        "the dead holder's session still exists"
    );
    eprintln!(
        "took over {:?} after the kill, {:?} after the dead holder's session expired",
        took_over - killed,
        took_over - expires
    );
    assert_eq!(
        double.get(KEY).map(|e| e.value_text()),
        Some(managers[primary].advertise())
    );
}
