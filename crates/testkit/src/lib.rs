//! What leader-proxy's integration tests and benches share: launchers for the real
//! components (etcd, ZooKeeper, dockerd, a Docker swarm), for the simulated manager and a
//! Consul double, and for the proxy itself, plus the suites every store and manager source
//! runs. Every launcher picks free ports and temp dirs and stops what it started when
//! dropped, so tests run in parallel.
//!
//! A library crate, not a module each test file includes, so it is compiled once instead of
//! once per test binary.

pub mod bare_pingora;
pub mod bins;
pub mod blackhole;
pub mod certs;
pub mod command;
pub mod compose;
pub mod conformance;
pub mod consul_double;
pub mod dockerd;
pub mod etcd;
pub mod etcd_proxy;
pub mod haproxy;
pub mod http;
pub mod manager_conformance;
pub mod manual_managers;
pub mod nginx;
pub mod open_files;
pub mod programs;
pub mod prometheus;
pub mod proxy;
pub mod redirect;
pub mod server_process;
pub mod silent_dns;
pub mod sim;
pub mod sockets;
pub mod source_events;
pub mod split_write;
pub mod stats;
pub mod store_consul;
pub mod store_etcd;
pub mod store_zk;
pub mod swarm;
pub mod tls;
pub mod wrk;
pub mod zookeeper;
