//! leader-proxy: one stable `DOCKER_HOST` in front of Swarm managers.
//!
//! The crate is a library plus a thin binary (`src/main.rs` only wires) so that the tests and
//! the benchmarks reach the same pieces the binary runs:
//! - [`discovery`]: one [`discovery::LeaderSource`] per store, turning its election into
//!   [`discovery::LeaderEvent`]s;
//! - [`router`]: the current leader, read with one atomic load per request;
//! - [`policy`]: what a client may ask through a listener (sections, bodies, ownership);
//! - [`proxy`]: the pingora front, the L7 proxy and the hijack relay;
//! - [`tls`]: TLS for clients and to the managers, reloaded on SIGHUP;
//! - [`admin`], [`history`] and [`metrics`]: what operators and load balancers look at;
//! - [`commands`]: the one-shot `status` and `leader` commands;
//! - [`limits`]: the open-files limit, raised at start, and the client-connection cap;
//! - [`handover`] and [`upgrade`]: listening sockets passed to a new process (`--upgrade`);
//! - [`reload`]: what SIGHUP applies from the settings read again.

pub mod admin;
pub mod commands;
pub mod config;
pub mod discovery;
pub mod handover;
pub mod history;
pub mod keepalive;
pub mod limits;
pub mod log_writer;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod tls;
pub mod trim;
pub mod upgrade;
