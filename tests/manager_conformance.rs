//! The manager-side conformance suite (crates/testkit/src/manager_conformance.rs) on every
//! source that asks the managers themselves: `swarm://` (GET /nodes) and `static://`
//! (GET /info), each against three simulated managers whose answers the test sets.

use testkit::manager_conformance as suite;

macro_rules! conformance {
    ($module:ident, $start:expr) => {
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
            fn unreachable_managers_keep_the_leader() {
                suite::unreachable_managers_keep_the_leader($start);
            }

            #[test]
            fn garbage_is_ignored_and_counted() {
                suite::garbage_is_ignored_and_counted($start);
            }
        }
    };
}

conformance!(swarm_mode, testkit::manual_managers::SwarmManagers::start());
conformance!(
    static_probe,
    testkit::manual_managers::ClassicManagers::start()
);
