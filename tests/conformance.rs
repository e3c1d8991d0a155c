//! The conformance suite (crates/testkit/src/conformance.rs) on every store backend. Each
//! store gets the same tests; adding a store is one harness file and one line here.

use testkit::conformance as suite;

macro_rules! conformance {
    ($module:ident, $label:literal, $start:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn initial_leader_and_change() {
                suite::initial_leader_and_change($start);
            }

            #[test]
            fn no_leader_holds_then_serves() {
                suite::no_leader_holds_then_serves($start);
            }

            #[test]
            fn stale_values_mean_no_leader() {
                suite::stale_values_mean_no_leader($start);
            }

            #[test]
            fn store_outage_keeps_the_leader() {
                suite::store_outage_keeps_the_leader($start);
            }

            #[test]
            fn garbage_is_ignored_and_counted() {
                suite::garbage_is_ignored_and_counted($start);
            }

            #[test]
            fn a_burst_converges_on_the_last() {
                suite::a_burst_converges_on_the_last($start);
            }

            #[test]
            fn failover_three_rounds() {
                suite::failover($start, $label);
            }
        }
    };
}

conformance!(etcd_v2, "etcd v2", testkit::store_etcd::EtcdV2::start());
conformance!(
    etcd_v3_key,
    "etcd v3 key",
    testkit::store_etcd::EtcdV3Key::start()
);
conformance!(
    etcd_v3_contenders,
    "etcd v3 contenders",
    testkit::store_etcd::EtcdV3Contenders::start()
);
conformance!(
    consul,
    "consul (double)",
    testkit::store_consul::ConsulStore::start()
);
conformance!(zk_key, "zk key", testkit::store_zk::ZkKey::start());
conformance!(
    zk_contenders,
    "zk contenders",
    testkit::store_zk::ZkContenders::start()
);
