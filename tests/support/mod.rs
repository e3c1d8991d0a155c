//! Shared by the integration tests: launchers for the real components (etcd), the simulated
//! manager, and the proxy itself. Every launcher picks free ports and temp dirs and stops
//! what it started when dropped, so tests run in parallel.
//!
//! Each test binary uses only part of this module.
#![allow(dead_code)]

pub mod bins;
pub mod certs;
pub mod conformance;
pub mod consul_double;
pub mod dockerd;
pub mod etcd;
pub mod etcd_proxy;
pub mod http;
pub mod manager_conformance;
pub mod manual_managers;
pub mod proxy;
pub mod server_process;
pub mod sim;
pub mod source_events;
pub mod store_consul;
pub mod store_etcd;
pub mod store_zk;
pub mod swarm;
pub mod tls;
pub mod zookeeper;
