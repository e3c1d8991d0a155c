//! The etcd backends (`etcd://` on the v2 API, `etcdv3://` on the v3 API) against a real
//! etcd, driven the way the managers drive it: a TTL'd key for classic Swarm, a leased key,
//! and real `etcdctl elect` contenders. Each test starts its own etcd and reads the events
//! the router would get.

use std::time::{Duration, Instant};

use leader_proxy::discovery::{source_for, Election, LeaderEvent, SourceError};
use testkit::etcd::{Etcd, EtcdCluster};
use testkit::source_events::{addr, config, dead_endpoint, marker, wait_until, Follower, WAIT};
/// The v2 path of the leader key under the `swarm` prefix, as classic Swarm writes it.
const V2_KEY: &str = "/swarm/docker/swarm/leader";
/// The v3 key (and, with `--election contenders`, the election name) under `swarm`.
const V3_KEY: &str = "swarm/docker/swarm/leader";

// ---------------------------------------------------------------- etcd v2 (etcd://)

#[test]
fn v2_follows_the_key_through_changes_refreshes_and_deletion() {
    let etcd = Etcd::start();
    let mut f = Follower::start(config(
        &format!("etcd://{}/swarm", etcd.endpoint()),
        Election::Key,
        &[],
    ));
    f.expect(LeaderEvent::NoLeader);

    etcd.put_v2(V2_KEY, "127.0.0.1:2001", Some(20));
    f.expect(addr("127.0.0.1:2001"));
    // The holder refreshes its TTL (same value): nothing changes for the proxy, so the next
    // event is the real change that follows.
    etcd.put_v2(V2_KEY, "127.0.0.1:2001", Some(20));
    etcd.put_v2(V2_KEY, "tcp://127.0.0.1:2002", Some(20));
    f.expect(addr("127.0.0.1:2002"));

    etcd.delete_v2(V2_KEY);
    f.expect(LeaderEvent::NoLeader);
    etcd.put_v2(V2_KEY, "127.0.0.1:2003", None);
    f.expect(addr("127.0.0.1:2003"));
    f.assert_quiet();
    // Watching a key that no longer changes, it still notices nobody listens.
    f.hang_up();
}

#[test]
fn v2_key_whose_ttl_expires_means_no_leader() {
    let etcd = Etcd::start();
    etcd.put_v2(V2_KEY, "127.0.0.1:2001", Some(2));
    let mut f = Follower::start(config(
        &format!("etcd://{}/swarm", etcd.endpoint()),
        Election::Key,
        &[],
    ));
    f.expect(addr("127.0.0.1:2001"));
    // Nobody refreshes it: the holder died.
    f.expect(LeaderEvent::NoLeader);
    etcd.put_v2(V2_KEY, "127.0.0.1:2002", Some(20));
    f.expect(addr("127.0.0.1:2002"));
}

#[test]
fn v2_garbage_is_rejected_and_never_leads() {
    let etcd = Etcd::start();
    etcd.put_v2(V2_KEY, "not an address", Some(20));
    let mut f = Follower::start(config(
        &format!("etcd://{}/swarm", etcd.endpoint()),
        Election::Key,
        &[],
    ));
    f.expect_rejected("not an address");
    etcd.put_v2(V2_KEY, "127.0.0.1:2001", Some(20));
    f.expect(addr("127.0.0.1:2001"));

    etcd.put_v2(V2_KEY, "127.0.0.1", Some(20));
    f.expect_rejected("127.0.0.1");
    // The same garbage refreshed is not rejected again; a new one is.
    etcd.put_v2(V2_KEY, "127.0.0.1", Some(20));
    etcd.put_v2(V2_KEY, "udp://127.0.0.1:53", Some(20));
    f.expect_rejected("udp://127.0.0.1:53");
    etcd.put_v2(V2_KEY, "127.0.0.1:2002", Some(20));
    f.expect(addr("127.0.0.1:2002"));
    f.assert_quiet();
}

/// etcd v2 keeps the last 1000 events: a watch from an older index fails with error 401.
/// The source is held on a full channel right after an event (so its next watch starts at
/// that event's index + 1), the key changes, then 1100 writes elsewhere push that index out
/// of the history. Released, the source must find the change by reading the key again.
#[test]
fn v2_cleared_watch_index_reads_the_key_again() {
    let etcd = Etcd::start();
    etcd.put_v2(V2_KEY, "127.0.0.1:2001", None);
    let mut f = Follower::start_with(
        config(
            &format!("etcd://{}/swarm", etcd.endpoint()),
            Election::Key,
            &[],
        ),
        1,
        false,
    );
    f.expect(addr("127.0.0.1:2001"));
    wait_until("the source's v2 watch", || {
        etcd.v2_store_stat("watchers") == 1
    });

    f.block();
    etcd.put_v2(V2_KEY, "127.0.0.1:2002", None);
    // The watch fired; the source now waits for room in the channel.
    wait_until("the watch to fire", || etcd.v2_store_stat("watchers") == 0);
    etcd.put_v2(V2_KEY, "127.0.0.1:2003", None);
    for i in 0..1100 {
        etcd.put_v2("/other", &i.to_string(), None);
    }

    f.expect(marker());
    f.expect(addr("127.0.0.1:2002"));
    f.expect(addr("127.0.0.1:2003"));
    // And it watches again from there.
    etcd.put_v2(V2_KEY, "127.0.0.1:2004", None);
    f.expect(addr("127.0.0.1:2004"));
}

#[test]
fn v2_outage_is_degraded_and_the_leader_is_announced_again_after_it() {
    let mut etcd = Etcd::start();
    etcd.put_v2(V2_KEY, "127.0.0.1:2001", None);
    let mut f = Follower::start(config(
        &format!("etcd://{}/swarm", etcd.endpoint()),
        Election::Key,
        &[("kv.username", "root"), ("kv.password", "s3cret-pw")],
    ));
    f.expect(addr("127.0.0.1:2001"));

    etcd.stop();
    let reason = f.expect_degraded();
    assert!(reason.contains(&etcd.endpoint()), "{reason}");
    assert!(!reason.contains("s3cret-pw"), "{reason}");
    // Several reconnection attempts later (they start 100 ms apart): one Degraded per
    // outage, and the leader is never dropped for it.
    std::thread::sleep(Duration::from_millis(1500));
    f.assert_quiet();
    etcd.restart();
    f.expect(addr("127.0.0.1:2001"));
    etcd.put_v2(V2_KEY, "127.0.0.1:2002", None);
    f.expect(addr("127.0.0.1:2002"));
    f.assert_quiet();
}

#[test]
fn v2_unreachable_endpoints_are_skipped() {
    let etcd = Etcd::start();
    etcd.put_v2(V2_KEY, "127.0.0.1:2001", None);
    let mut f = Follower::start(config(
        &format!("etcd://{},{}/swarm", dead_endpoint(), etcd.endpoint()),
        Election::Key,
        &[],
    ));
    // One endpoint answering is no outage.
    f.expect(addr("127.0.0.1:2001"));
    etcd.put_v2(V2_KEY, "127.0.0.1:2002", None);
    f.expect(addr("127.0.0.1:2002"));
}

#[test]
fn v2_against_an_etcd_without_the_v2_api_says_what_to_do() {
    let etcd = Etcd::start_without_v2();
    let mut f = Follower::start(config(
        &format!("etcd://{}/swarm", etcd.endpoint()),
        Election::Key,
        &[],
    ));
    let reason = f.expect_degraded();
    assert!(reason.contains("--enable-v2"), "{reason}");
}

#[test]
fn etcd_options_are_checked() {
    let unsupported = |url: &str, election, options: &[(&str, &str)]| match source_for(config(
        url, election, options,
    )) {
        Err(SourceError::Unsupported(message)) => message,
        Err(other) => panic!("expected Unsupported, got {other}"),
        Ok(_) => panic!("accepted {url} {options:?}"),
    };
    let message = unsupported("etcd://127.0.0.1:2379", Election::Contenders, &[]);
    assert!(message.contains("contenders"), "{message}");
    for url in ["etcd://127.0.0.1:2379", "etcdv3://127.0.0.1:2379"] {
        // TLS is supported (tests/store_security.rs): the files are read at start-up.
        match source_for(config(
            url,
            Election::Key,
            &[("kv.cacertfile", "/no/ca.pem")],
        )) {
            Err(SourceError::Option { option, reason }) => {
                assert_eq!(option, "kv.cacertfile");
                assert!(reason.contains("/no/ca.pem"), "{reason}");
            }
            Err(other) => panic!("expected an option error, got {other}"),
            Ok(_) => panic!("a missing kv.cacertfile accepted for {url}"),
        }
        match source_for(config(url, Election::Key, &[("kv.auth", "a:b")])) {
            Err(SourceError::Option { option, .. }) => assert_eq!(option, "kv.auth"),
            Err(other) => panic!("expected an option error, got {other}"),
            Ok(_) => panic!("kv.auth accepted for {url}"),
        }
    }
}

// ---------------------------------------------------------------- etcd v3, --election key

#[test]
fn v3_follows_the_key_through_changes_and_deletion() {
    let etcd = Etcd::start();
    let mut f = Follower::start(config(
        &format!("etcdv3://{}/swarm", etcd.endpoint()),
        Election::Key,
        &[],
    ));
    f.expect(LeaderEvent::NoLeader);

    etcd.put_v3(V3_KEY, "127.0.0.1:2001");
    f.expect(addr("127.0.0.1:2001"));
    // Written again unchanged: nothing for the proxy; the next event is the real change.
    etcd.put_v3(V3_KEY, "127.0.0.1:2001");
    etcd.put_v3(V3_KEY, "http://127.0.0.1:2002/");
    f.expect(addr("127.0.0.1:2002"));
    // A key that merely shares the prefix is another key.
    etcd.put_v3(&format!("{V3_KEY}2"), "127.0.0.1:2999");
    etcd.delete_v3(V3_KEY);
    f.expect(LeaderEvent::NoLeader);
    etcd.put_v3(V3_KEY, "127.0.0.1:2003");
    f.expect(addr("127.0.0.1:2003"));
    f.assert_quiet();
    f.hang_up();
}

#[test]
fn v3_key_whose_lease_expires_means_no_leader() {
    let etcd = Etcd::start();
    etcd.put_v3_leased(V3_KEY, "127.0.0.1:2001", 2);
    let mut f = Follower::start(config(
        &format!("etcdv3://{}/swarm", etcd.endpoint()),
        Election::Key,
        &[],
    ));
    f.expect(addr("127.0.0.1:2001"));
    f.expect(LeaderEvent::NoLeader);
}

#[test]
fn v3_garbage_is_rejected_and_never_leads() {
    let etcd = Etcd::start();
    etcd.put_v3(V3_KEY, "127.0.0.1:2001");
    let mut f = Follower::start(config(
        &format!("etcdv3://{}/swarm", etcd.endpoint()),
        Election::Key,
        &[],
    ));
    f.expect(addr("127.0.0.1:2001"));
    etcd.put_v3(V3_KEY, "{\"addr\": \"127.0.0.1:2002\"}");
    f.expect_rejected("{\"addr\": \"127.0.0.1:2002\"}");
    etcd.put_v3(V3_KEY, "{\"addr\": \"127.0.0.1:2002\"}");
    etcd.put_v3(V3_KEY, "127.0.0.1:2002");
    f.expect(addr("127.0.0.1:2002"));
    f.assert_quiet();
}

/// A watch that starts from a compacted revision is cancelled by etcd. The source is held
/// on a full channel right after its read (so its watch starts at that read's revision + 1);
/// the key changes and the history is compacted past it. Released, the source must read
/// again and find the change.
#[test]
fn v3_compacted_watch_reads_the_key_again() {
    let etcd = Etcd::start();
    etcd.put_v3(V3_KEY, "127.0.0.1:2001");
    let ranges = || etcd.metric("grpc_server_handled_total", "grpc_method=\"Range\"");
    let before = ranges();
    let mut f = Follower::start_blocked(config(
        &format!("etcdv3://{}/swarm", etcd.endpoint()),
        Election::Key,
        &[],
    ));
    // The source has read the key (and waits to announce it).
    wait_until("the source's read", || ranges() > before);

    etcd.put_v3(V3_KEY, "127.0.0.1:2002");
    let revision = etcd.put_v3("swarm/other", "x");
    etcd.compact_v3(revision);

    f.expect(marker());
    f.expect(addr("127.0.0.1:2001"));
    f.expect(addr("127.0.0.1:2002"));
    etcd.put_v3(V3_KEY, "127.0.0.1:2003");
    f.expect(addr("127.0.0.1:2003"));
    f.assert_quiet();
}

#[test]
fn v3_outage_is_degraded_and_the_leader_is_announced_again_after_it() {
    let mut etcd = Etcd::start();
    etcd.put_v3(V3_KEY, "127.0.0.1:2001");
    let mut f = Follower::start(config(
        &format!("etcdv3://{}/swarm", etcd.endpoint()),
        Election::Key,
        &[],
    ));
    f.expect(addr("127.0.0.1:2001"));

    etcd.stop();
    let reason = f.expect_degraded();
    assert!(reason.contains(&etcd.endpoint()), "{reason}");
    std::thread::sleep(Duration::from_millis(1500));
    f.assert_quiet();
    etcd.restart();
    f.expect(addr("127.0.0.1:2001"));
    etcd.put_v3(V3_KEY, "127.0.0.1:2002");
    f.expect(addr("127.0.0.1:2002"));
    f.assert_quiet();
}

/// A store that hangs without closing anything (SIGSTOP: a frozen VM, a dead link) must be
/// noticed too: the HTTP/2 pings on the watch go unanswered.
#[test]
fn v3_hung_store_is_degraded() {
    let mut etcd = Etcd::start();
    etcd.put_v3(V3_KEY, "127.0.0.1:2001");
    let mut f = Follower::start(config(
        &format!("etcdv3://{}/swarm", etcd.endpoint()),
        Election::Key,
        &[],
    ));
    f.expect(addr("127.0.0.1:2001"));
    etcd.freeze();
    let frozen = Instant::now();
    // Pings every 10 s, 5 s to answer, then the re-read's own deadline (2 s + 5 s).
    let event = f.next_within(Duration::from_secs(40), "Degraded");
    assert!(matches!(event, LeaderEvent::Degraded(_)), "{event:?}");
    eprintln!("hung etcd noticed after {:?}", frozen.elapsed());
    etcd.thaw();
    f.expect(addr("127.0.0.1:2001"));
}

#[test]
fn v3_unreachable_endpoints_are_skipped() {
    let etcd = Etcd::start();
    etcd.put_v3(V3_KEY, "127.0.0.1:2001");
    let mut f = Follower::start(config(
        &format!("etcdv3://{},{}/swarm", dead_endpoint(), etcd.endpoint()),
        Election::Key,
        &[],
    ));
    f.expect(addr("127.0.0.1:2001"));
    etcd.put_v3(V3_KEY, "127.0.0.1:2002");
    f.expect(addr("127.0.0.1:2002"));
}

#[test]
fn v3_with_credentials() {
    let etcd = Etcd::start();
    etcd.put_v3(V3_KEY, "127.0.0.1:2001");
    etcd.etcdctl(&["user", "add", "root:s3cret-pw"]);
    etcd.etcdctl(&["auth", "enable"]);
    let url = format!("etcdv3://{}/swarm", etcd.endpoint());
    let mut f = Follower::start(config(
        &url,
        Election::Key,
        &[("kv.username", "root"), ("kv.password", "s3cret-pw")],
    ));
    f.expect(addr("127.0.0.1:2001"));

    let mut wrong = Follower::start(config(
        &url,
        Election::Key,
        &[("kv.username", "root"), ("kv.password", "wrong-pw")],
    ));
    let reason = wrong.expect_degraded();
    assert!(!reason.contains("wrong-pw"), "{reason}");
}

// ---------------------------------------------------------------- etcd v3, --election contenders

#[test]
fn contenders_the_first_elected_leads_until_it_resigns() {
    let etcd = Etcd::start();
    let mut f = Follower::start(config(
        &format!("etcdv3://{}/swarm", etcd.endpoint()),
        Election::Contenders,
        &[],
    ));
    f.expect(LeaderEvent::NoLeader);

    // A contender of another election whose name merely extends ours, and earlier.
    let mut other = etcd.elect(&format!("{V3_KEY}2"), "127.0.0.1:2999");
    assert!(other.wait_elected(WAIT).is_some());

    let mut first = etcd.elect(V3_KEY, "127.0.0.1:2001");
    let first_key = first
        .wait_elected(WAIT)
        .expect("the first contender is elected");
    f.expect(addr("127.0.0.1:2001"));

    let mut second = etcd.elect(V3_KEY, "127.0.0.1:2002");
    wait_until("the second contender to queue", || {
        etcd.keys_v3(&format!("{V3_KEY}/")).len() == 2
    });
    // The leader proclaims a new value; had the second contender displaced it, the source
    // would have announced 2002 before this.
    etcd.proclaim_v3(&first_key, "127.0.0.1:2011");
    f.expect(addr("127.0.0.1:2011"));

    first.resign();
    assert!(second.wait_elected(WAIT).is_some());
    f.expect(addr("127.0.0.1:2002"));
    second.resign();
    f.expect(LeaderEvent::NoLeader);
    f.assert_quiet();
}

#[test]
fn contenders_lead_by_creation_not_by_key_order() {
    let etcd = Etcd::start();
    let mut first = etcd.elect(V3_KEY, "127.0.0.1:2001");
    assert!(first.wait_elected(WAIT).is_some());
    // Sorts before the lease-named key, but queued after it.
    etcd.put_v3(&format!("{V3_KEY}/0"), "127.0.0.1:2002");
    let mut f = Follower::start(config(
        &format!("etcdv3://{}/swarm", etcd.endpoint()),
        Election::Contenders,
        &[],
    ));
    f.expect(addr("127.0.0.1:2001"));
    first.resign();
    f.expect(addr("127.0.0.1:2002"));
}

#[test]
fn contenders_with_a_garbage_proposal_are_rejected() {
    let etcd = Etcd::start();
    let mut first = etcd.elect(V3_KEY, "manager-one");
    assert!(first.wait_elected(WAIT).is_some());
    let mut f = Follower::start(config(
        &format!("etcdv3://{}/swarm", etcd.endpoint()),
        Election::Contenders,
        &[],
    ));
    f.expect_rejected("manager-one");
    let mut second = etcd.elect(V3_KEY, "127.0.0.1:2002");
    wait_until("the second contender to queue", || {
        etcd.keys_v3(&format!("{V3_KEY}/")).len() == 2
    });
    first.resign();
    assert!(second.wait_elected(WAIT).is_some());
    f.expect(addr("127.0.0.1:2002"));
}

/// A member cut off from its peers still answers, with what it last knew; only a quorum
/// read (after each watch window, and on each reconnect) shows it has no quorum. Then the
/// store is degraded, the next endpoint is tried, and the leader the cluster elects once
/// it has its quorum again is followed.
#[test]
fn v2_member_cut_off_from_its_peers_is_degraded_not_believed() {
    let mut cluster = EtcdCluster::start();
    cluster.put_v2(0, V2_KEY, "127.0.0.1:2001");
    let url = format!(
        "etcd://{},{},{}/swarm",
        cluster.endpoint(0),
        cluster.endpoint(1),
        cluster.endpoint(2)
    );
    let mut f = Follower::start(config(&url, Election::Key, &[]));
    f.expect(addr("127.0.0.1:2001"));

    // e0 (the endpoint the source follows) keeps its client port; its peers are gone.
    cluster.stop(1);
    cluster.stop(2);
    let reason = f.next_within(Duration::from_secs(60), "Degraded after the watch window");
    assert!(matches!(reason, LeaderEvent::Degraded(_)), "{reason:?}");

    cluster.restart(&[1, 2]);
    f.expect(addr("127.0.0.1:2001"));
    cluster.put_v2(1, V2_KEY, "127.0.0.1:2002");
    f.expect(addr("127.0.0.1:2002"));
}

/// Whoever can write the key can write a huge value: the answer is read up to a cap (1 MiB),
/// past it the store counts as failing, with a clear reason, and the last leader stays.
#[test]
fn v2_answer_past_the_cap_is_an_outage_not_a_leader() {
    let etcd = Etcd::start();
    etcd.put_v2(V2_KEY, "127.0.0.1:2001", None);
    let mut f = Follower::start(config(
        &format!("etcd://{}/swarm", etcd.endpoint()),
        Election::Key,
        &[],
    ));
    f.expect(addr("127.0.0.1:2001"));
    etcd.put_v2(V2_KEY, &"x".repeat(1_100_000), None);
    let reason = f.expect_degraded();
    assert!(reason.contains("more than 1 MiB"), "{reason}");
    etcd.put_v2(V2_KEY, "127.0.0.1:2002", None);
    f.expect(addr("127.0.0.1:2002"));
}
