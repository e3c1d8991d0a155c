//! The ZooKeeper backend (`zk://`) against a real ZooKeeper, driven the way the managers
//! drive it: go-zookeeper lock children and the node's data for classic Swarm, sequential
//! contender nodes for `--election contenders`. Each test starts its own ZooKeeper and
//! reads the events the router would get. What every store does is in the conformance
//! suite; here is what only ZooKeeper has: the start-up staleness rules, sessions that
//! expire, digest ACLs, connect strings.

use std::time::{Duration, Instant};

use leader_proxy::discovery::{source_for, Election, LeaderEvent, SourceError};
use testkit::source_events::{addr, config, dead_endpoint, wait_until, Follower, WAIT};
use testkit::zookeeper::{random_hex, ZkOptions, ZkSession, ZooKeeper};
/// The election node under the `swarm` prefix, as classic Swarm names it.
const NODE: &str = "/swarm/docker/swarm/leader";
/// Sessions of the test's own managers: they outlive everything a test does.
const SESSION: Duration = Duration::from_secs(30);

fn url(zk: &ZooKeeper) -> String {
    format!("zk://{}/swarm", zk.endpoint())
}

/// go-zookeeper's lock child prefix.
fn lock_prefix() -> String {
    format!("_c_{}-lock-", random_hex(32))
}

/// A manager of classic Swarm: queues for the lock with a child of its own session.
fn queue(session: &ZkSession) -> String {
    session.ensure(NODE);
    session.ephemeral_sequential(NODE, &lock_prefix(), "")
}

// ---------------------------------------------------------------- --election key

#[test]
fn key_follows_the_lock_and_is_open_between_the_holder_leaving_and_the_next_write() {
    let zk = ZooKeeper::start();
    let mut f = Follower::start(config(&url(&zk), Election::Key, &[]));
    // No node yet: no leader.
    f.expect(LeaderEvent::NoLeader);

    let m1 = zk.session(SESSION);
    let m2 = zk.session(SESSION);
    // m1 wins: its child is the lowest, then it writes.
    let c1 = queue(&m1);
    m1.set_data(NODE, "127.0.0.1:2001");
    f.expect(addr("127.0.0.1:2001"));
    // m2 queues behind it: nothing changes for the proxy.
    queue(&m2);
    f.assert_quiet_for(Duration::from_millis(300));

    // m1's child goes: the data still names m1, but m2 holds the lock and has not written.
    m1.delete(&format!("{NODE}/{c1}"));
    f.expect(LeaderEvent::NoLeader);
    m2.set_data(NODE, "127.0.0.1:2002");
    f.expect(addr("127.0.0.1:2002"));

    // m2's session ends (a clean close deletes its child): nobody holds the lock.
    drop(m2);
    f.expect(LeaderEvent::NoLeader);
    assert_eq!(m1.get_data(NODE).as_deref(), Some("127.0.0.1:2002"));

    // The node itself goes, then comes back with a new holder.
    m1.delete(NODE);
    f.assert_quiet_for(Duration::from_millis(300));
    queue(&m1);
    m1.set_data(NODE, "127.0.0.1:2003");
    f.expect(addr("127.0.0.1:2003"));
}

#[test]
fn key_start_up_stale_when_the_lowest_child_queued_after_the_write() {
    let zk = ZooKeeper::start();
    let (m1, m2) = (zk.session(SESSION), zk.session(SESSION));
    let c1 = queue(&m1);
    m1.set_data(NODE, "127.0.0.1:2001");
    let c2 = queue(&m2);
    m1.delete(&format!("{NODE}/{c1}"));
    // What the rule looks at: m2's child is the lowest and was created after the write.
    let node = m1.stat(NODE).expect("the node");
    let lowest = m1.stat(&format!("{NODE}/{c2}")).expect("m2's child");
    assert!(lowest.czxid > node.mzxid);

    let mut f = Follower::start(config(&url(&zk), Election::Key, &[]));
    f.expect(LeaderEvent::NoLeader);
    m2.set_data(NODE, "127.0.0.1:2002");
    f.expect(addr("127.0.0.1:2002"));
}

#[test]
fn key_start_up_fresh_when_no_child_changed_since_the_write() {
    let zk = ZooKeeper::start();
    let m1 = zk.session(SESSION);
    let c1 = queue(&m1);
    m1.set_data(NODE, "127.0.0.1:2001");
    let node = m1.stat(NODE).expect("the node");
    assert!(node.pzxid < node.mzxid);

    let mut f = Follower::start(config(&url(&zk), Election::Key, &[]));
    f.expect(addr("127.0.0.1:2001"));
    m1.delete(&format!("{NODE}/{c1}"));
    f.expect(LeaderEvent::NoLeader);
}

#[test]
fn key_start_up_trusted_when_waiters_joined_after_the_write() {
    let zk = ZooKeeper::start();
    let (m1, m2) = (zk.session(SESSION), zk.session(SESSION));
    let c1 = queue(&m1);
    m1.set_data(NODE, "127.0.0.1:2001");
    queue(&m2);
    // Children changed since the write (pzxid > mzxid), but the lowest was there before it.
    let node = m1.stat(NODE).expect("the node");
    let lowest = m1.stat(&format!("{NODE}/{c1}")).expect("m1's child");
    assert!(node.pzxid > node.mzxid && lowest.czxid < node.mzxid);

    let mut f = Follower::start(config(&url(&zk), Election::Key, &[]));
    f.expect(addr("127.0.0.1:2001"));
    // And from there on the history decides: m1 leaves, m2 has not written.
    drop(m1);
    f.expect(LeaderEvent::NoLeader);
    m2.set_data(NODE, "127.0.0.1:2002");
    f.expect(addr("127.0.0.1:2002"));
}

#[test]
fn key_holder_session_expiry_opens_the_election() {
    let zk = ZooKeeper::start();
    let m1 = zk.expiring_session(Duration::from_secs(1));
    queue(&m1);
    m1.set_data(NODE, "127.0.0.1:2001");
    let mut f = Follower::start(config(&url(&zk), Election::Key, &[]));
    f.expect(addr("127.0.0.1:2001"));
    // Killed: nothing closes the session, ZooKeeper expires it and deletes its child.
    let killed = Instant::now();
    m1.abandon();
    f.expect(LeaderEvent::NoLeader);
    assert!(killed.elapsed() >= Duration::from_millis(500));
}

// ---------------------------------------------------------------- --election contenders

#[test]
fn contenders_the_lowest_sequence_leads_whatever_the_prefix() {
    let zk = ZooKeeper::start();
    let admin = zk.session(SESSION);
    admin.ensure(NODE);
    let mut f = Follower::start(config(&url(&zk), Election::Contenders, &[]));
    f.expect(LeaderEvent::NoLeader);

    let (a, b, c) = (
        zk.session(SESSION),
        zk.session(SESSION),
        zk.session(SESSION),
    );
    // Plain `n_` first, then Curator's and kazoo's names: by name, `_c_` and the hex of
    // kazoo's uuid may sort before `n_`; by sequence, `n_` is first.
    let first = a.ephemeral_sequential(NODE, "n_", "127.0.0.1:2001");
    f.expect(addr("127.0.0.1:2001"));
    b.ephemeral_sequential(NODE, &lock_prefix(), "127.0.0.1:2002");
    let kazoo = c.ephemeral_sequential(
        NODE,
        &format!("{}__lock__", random_hex(32)),
        "127.0.0.1:2003",
    );
    f.assert_quiet_for(Duration::from_millis(300));
    // The leader's data changes: so does the leader.
    a.set_data(&format!("{NODE}/{first}"), "127.0.0.1:2011");
    f.expect(addr("127.0.0.1:2011"));
    // A waiter's data changing is nothing to the proxy.
    c.set_data(&format!("{NODE}/{kazoo}"), "127.0.0.1:2013");
    f.assert_quiet_for(Duration::from_millis(300));
    // The leader goes: the next in line leads.
    drop(a);
    f.expect(addr("127.0.0.1:2002"));
    drop(b);
    f.expect(addr("127.0.0.1:2013"));
    drop(c);
    f.expect(LeaderEvent::NoLeader);
}

#[test]
fn contenders_start_up_reads_the_lowest() {
    let zk = ZooKeeper::start();
    let (a, b) = (zk.session(SESSION), zk.session(SESSION));
    a.ensure(NODE);
    a.ephemeral_sequential(NODE, "n_", "127.0.0.1:2001");
    b.ephemeral_sequential(NODE, &lock_prefix(), "127.0.0.1:2002");
    let mut f = Follower::start(config(&url(&zk), Election::Contenders, &[]));
    f.expect(addr("127.0.0.1:2001"));
    drop(a);
    f.expect(addr("127.0.0.1:2002"));
}

// ---------------------------------------------------------------- sessions and connections

/// A server frozen past the session timeout: its clients hear nothing (the connection stays
/// open), and once it runs again it expires every session it has not heard from in time,
/// the proxy's and the lock holder's alike. The proxy reports the outage, then reads the
/// election again on a new session and follows it.
#[test]
fn sessions_expired_by_a_frozen_store_are_replaced() {
    let mut zk = ZooKeeper::start_with(ZkOptions {
        tick_ms: 100,
        max_session_ms: 1000,
    });
    let m1 = zk.session(SESSION);
    queue(&m1);
    m1.set_data(NODE, "127.0.0.1:2001");
    let mut f = Follower::start(config(&url(&zk), Election::Key, &[]));
    f.expect(addr("127.0.0.1:2001"));

    zk.freeze();
    let frozen = Instant::now();
    let reason = f.expect_degraded();
    assert!(reason.contains(&zk.endpoint()), "{reason}");
    // The proxy notices within its connection timeout (2 s), past the 1 s session timeout.
    assert!(frozen.elapsed() > Duration::from_millis(1000));
    zk.thaw();
    wait_until("ZooKeeper to expire the sessions", || {
        zk.log().contains("Expiring session")
    });
    // The holder's session expired too (unless its reconnection beat the expiry): either
    // way the proxy follows what the store holds on a session of its own.
    let m2 = zk.session(SESSION);
    m2.delete_children(NODE);
    queue(&m2);
    m2.set_data(NODE, "127.0.0.1:2002");
    let before = f.until(addr("127.0.0.1:2002"));
    assert!(
        before
            .iter()
            .all(|e| matches!(e, LeaderEvent::NoLeader | LeaderEvent::Leader(_))),
        "{before:?}"
    );
}

#[test]
fn restart_is_degraded_then_read_again_on_a_new_session() {
    let mut zk = ZooKeeper::start();
    let m1 = zk.session(Duration::from_secs(60));
    queue(&m1);
    m1.set_data(NODE, "127.0.0.1:2001");
    let mut f = Follower::start(config(&url(&zk), Election::Key, &[]));
    f.expect(addr("127.0.0.1:2001"));

    zk.stop();
    let reason = f.expect_degraded();
    assert!(reason.contains("refused"), "{reason}");
    f.assert_quiet_for(Duration::from_millis(1500));
    zk.restart();
    // m1's session survived the restart (its timeout is long): its lock and data stand,
    // and the proxy says so again, which tells the router the store is back.
    f.expect(addr("127.0.0.1:2001"));
    m1.set_data(NODE, "127.0.0.1:2002");
    f.expect(addr("127.0.0.1:2002"));
}

#[test]
fn multi_host_connect_string_skips_a_dead_first_host() {
    let zk = ZooKeeper::start();
    let m1 = zk.session(SESSION);
    queue(&m1);
    m1.set_data(NODE, "127.0.0.1:2001");
    let mut f = Follower::start(config(
        &format!("zk://{},{}/swarm", dead_endpoint(), zk.endpoint()),
        Election::Key,
        &[],
    ));
    // One host answering is no outage: the first event is the leader, read from the second
    // host, with no Degraded before it. (The dead host refuses at once; how long the switch
    // takes is not asserted beyond `expect`'s WAIT.)
    f.expect(addr("127.0.0.1:2001"));
    m1.set_data(NODE, "127.0.0.1:2002");
    f.expect(addr("127.0.0.1:2002"));
}

#[test]
fn every_host_dead_is_degraded_with_the_reason() {
    let mut f = Follower::start(config(
        &format!("zk://{},{}/swarm", dead_endpoint(), dead_endpoint()),
        Election::Key,
        &[],
    ));
    let reason = f.expect_degraded();
    assert!(
        reason.contains("zookeeper") && reason.contains("refused"),
        "{reason}"
    );
}

// ---------------------------------------------------------------- digest ACL and options

#[test]
fn digest_acl_needs_kv_auth_and_never_shows_the_password() {
    let zk = ZooKeeper::start();
    let owner = zk.session_with_auth(SESSION, "swarm:s3cret-pw");
    owner.create_private(NODE, "");
    owner.ephemeral_sequential(NODE, &lock_prefix(), "");
    owner.set_data(NODE, "127.0.0.1:2001");
    // The ACL is real: an unauthenticated session cannot read the node.
    assert!(zk.session(SESSION).try_get_data(NODE).is_err());

    let mut f = Follower::start(config(
        &url(&zk),
        Election::Key,
        &[("kv.auth", "swarm:s3cret-pw")],
    ));
    f.expect(addr("127.0.0.1:2001"));
    owner.set_data(NODE, "127.0.0.1:2002");
    f.expect(addr("127.0.0.1:2002"));

    let mut anonymous = Follower::start(config(&url(&zk), Election::Key, &[]));
    let reason = anonymous.expect_degraded();
    assert!(reason.contains("not authorized"), "{reason}");

    let mut wrong = Follower::start(config(
        &url(&zk),
        Election::Key,
        &[("kv.auth", "swarm:hunter2-wrong")],
    ));
    let reason = wrong.expect_degraded();
    assert!(reason.contains("not authorized"), "{reason}");
    assert!(
        !reason.contains("hunter2") && !reason.contains("s3cret"),
        "{reason}"
    );
}

#[test]
fn options_are_checked() {
    let zk_url = "zk://127.0.0.1:2181/swarm";
    for option in ["kv.cacertfile", "kv.certfile", "kv.keyfile"] {
        match source_for(config(zk_url, Election::Key, &[(option, "/etc/ssl/x.pem")])) {
            Err(SourceError::Unsupported(message)) => {
                assert!(
                    message.contains(option) && message.contains("zk:// has no TLS"),
                    "{message}"
                );
            }
            Err(other) => panic!("{option}: expected Unsupported, got {other}"),
            Ok(_) => panic!("{option} accepted for zk://"),
        }
    }
    for option in ["kv.username", "kv.token", "kv.bogus"] {
        match source_for(config(zk_url, Election::Key, &[(option, "x")])) {
            Err(SourceError::Option { option: named, .. }) => assert_eq!(named, option),
            Err(other) => panic!("{option}: expected an option error, got {other}"),
            Ok(_) => panic!("{option} accepted for zk://"),
        }
    }
    match source_for(config(zk_url, Election::Key, &[("kv.auth", "s3cret-only")])) {
        Err(e @ SourceError::Option { .. }) => {
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
        Err(other) => panic!("expected an option error, got {other}"),
        Ok(_) => panic!("kv.auth without USER: accepted"),
    }
    assert!(source_for(config(zk_url, Election::Contenders, &[("kv.auth", "u:p")])).is_ok());
}

// ---------------------------------------------------------------- the simulated managers

/// The simulated manager's ZooKeeper recipe leaves the store as classic Swarm does (the
/// conformance failover test relies on it): go-zookeeper's lock children, the winner's
/// address as the node's data; SIGTERM deletes the child and leaves the data.
#[test]
fn sim_managers_leave_the_store_as_libkv_does() {
    use testkit::sim::{wait_for_single_primary, SimManager, SimOptions};

    let zk = ZooKeeper::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("writes.log");
    let options = |name: &str| SimOptions::new(name, &url(&zk), &log).ttl(2);
    let mut m1 = SimManager::start(&options("m1"));
    wait_until("m1 to lead", || m1.role().as_deref() == Some("primary"));
    let m2 = SimManager::start(&options("m2"));
    assert_eq!(
        wait_for_single_primary(&[&m1, &m2], WAIT).expect("one primary"),
        0
    );

    let admin = zk.session(SESSION);
    assert_eq!(admin.get_data(NODE), Some(m1.advertise()));
    let children = admin.children(NODE);
    assert_eq!(children.len(), 2, "{children:?}");
    for child in &children {
        let (prefix, sequence) = child.split_at(child.len() - 10);
        assert!(
            prefix.len() == 3 + 32 + 6
                && prefix.starts_with("_c_")
                && prefix.ends_with("-lock-")
                && prefix[3..35].bytes().all(|b| b.is_ascii_hexdigit())
                && sequence.bytes().all(|b| b.is_ascii_digit()),
            "not a go-zookeeper lock child: {child}"
        );
    }

    let mut f = Follower::start(config(&url(&zk), Election::Key, &[]));
    f.expect(addr(&m1.advertise()));
    assert!(m1.terminate().success());
    // m1's child went with its resignation; the data stayed until m2 wrote its own (the
    // proxy says NoLeader in between unless both changes reached it at once).
    let between = f.until(addr(&m2.advertise()));
    assert!(
        between.iter().all(|e| *e == LeaderEvent::NoLeader),
        "{between:?}"
    );
    assert_eq!(admin.children(NODE).len(), 1);
    assert_eq!(admin.get_data(NODE), Some(m2.advertise()));
    wait_until("m2 to say it leads", || {
        m2.role().as_deref() == Some("primary")
    });
}
