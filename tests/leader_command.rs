//! `leader-proxy leader DISCOVERY` against real stores: it reads the election once, with
//! the proxy's own options, prints the leader and says by its exit status what it found
//! (docs/cli.md, "Commands"): 0 with a leader, 1 without, 3 when the store cannot be
//! reached, 2 on bad input.

use testkit::command::{leader_proxy, Ran};
use testkit::conformance::StoreHarness;
use testkit::etcd::Etcd;
use testkit::store_etcd::{EtcdV2, EtcdV3Key};
use testkit::store_zk::ZkKey;

const LEADER: &str = "127.0.0.1:2375";

/// `leader-proxy leader` with the store's DISCOVERY (and flags) as the proxy takes them.
fn leader(store: &impl StoreHarness) -> Ran {
    let args = store.proxy_args();
    let mut all = vec!["leader"];
    all.extend(args.iter().map(String::as_str));
    leader_proxy(&all, &[])
}

/// Each exit status but 2, in turn, on one store.
fn exit_codes(mut store: impl StoreHarness) {
    store.elect(LEADER);
    let r = leader(&store);
    assert_eq!(r.code, Some(0), "with a leader: {r:?}");
    assert_eq!(r.stdout, format!("{LEADER}\n"));

    store.vacate();
    let r = leader(&store);
    assert_eq!(r.code, Some(1), "with the election open: {r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert!(r.stderr.contains("no leader"), "{r:?}");

    store.elect_garbage("not-an-address");
    let r = leader(&store);
    assert_eq!(r.code, Some(1), "with garbage as the leader: {r:?}");
    assert!(r.stderr.contains("not-an-address"), "{r:?}");

    store.stop();
    let r = leader(&store);
    assert_eq!(r.code, Some(3), "with the store stopped: {r:?}");
    assert!(r.stderr.contains("cannot be reached"), "{r:?}");
}

#[test]
fn etcd_v2_exit_codes() {
    exit_codes(EtcdV2::start());
}

#[test]
fn etcd_v3_exit_codes() {
    exit_codes(EtcdV3Key::start());
}

#[test]
fn zookeeper_exit_codes() {
    exit_codes(ZkKey::start());
}

/// `--allow-leader` applies as in the proxy: a leader outside the list is no leader (the
/// proxy would not route to it), one inside is printed.
#[test]
fn a_leader_outside_allow_leader_is_refused() {
    let mut store = EtcdV2::start();
    store.elect(LEADER);
    let with = |allow: &str| {
        let mut args = vec!["leader".to_string(), "--allow-leader".into(), allow.into()];
        args.extend(store.proxy_args());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        leader_proxy(&refs, &[])
    };
    let r = with("10.0.0.0/8,m1:2375");
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert!(
        r.stderr.contains(LEADER) && r.stderr.contains("--allow-leader (10.0.0.0/8,m1:2375)"),
        "{r:?}"
    );
    let r = with("127.0.0.0/8");
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (Some(0), "127.0.0.1:2375\n"),
        "{r:?}"
    );
}

/// The same layers as the proxy: `--leader-key` from the `--config` file, or DISCOVERY and
/// the key from the environment.
#[test]
fn reads_the_options_from_the_config_file_and_the_environment() {
    let etcd = Etcd::start();
    etcd.put_v2("/p/custom/key", LEADER, None);
    let url = format!("etcd://{}/p", etcd.endpoint());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("leader-proxy.toml");
    std::fs::write(
        &file,
        format!("discovery = \"{url}\"\nleader-key = \"custom/key\"\n"),
    )
    .unwrap();

    let r = leader_proxy(&["leader", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (Some(0), "127.0.0.1:2375\n"),
        "{r:?}"
    );

    let r = leader_proxy(
        &["leader"],
        &[
            ("LEADER_PROXY_DISCOVERY", &url),
            ("LEADER_PROXY_LEADER_KEY", "custom/key"),
        ],
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (Some(0), "127.0.0.1:2375\n"),
        "{r:?}"
    );

    // The default key holds nothing: no leader.
    let r = leader_proxy(&["leader", &url], &[]);
    assert_eq!(r.code, Some(1), "{r:?}");
}

#[test]
fn bad_input_exits_2_naming_what_is_wrong() {
    for (args, needle) in [
        (&["leader"][..], "DISCOVERY is required"),
        (
            &["leader", "--election", "bogus", "etcd://127.0.0.1:1/p"],
            "--election",
        ),
        (
            &[
                "leader",
                "--discovery-opt",
                "kv.nope=1",
                "etcd://127.0.0.1:1/p",
            ],
            "kv.nope",
        ),
        (
            &["leader", "--no-such-flag", "etcd://127.0.0.1:1/p"],
            "--no-such-flag",
        ),
        (&["leader", "etcd:/nope"], "DISCOVERY"),
    ] {
        let r = leader_proxy(args, &[]);
        assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
        assert!(
            r.stderr.contains(needle),
            "{args:?} should name {needle}: {r:?}"
        );
        assert!(r.stdout.is_empty(), "{args:?}: {r:?}");
    }
}
