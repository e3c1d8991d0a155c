//! The two hot spots of leader following: the request-path lookup of the current leader
//! (one atomic load in the router) and parsing a leader value from a store.
//!
//! The anchor is a plain `Arc` clone behind a `Mutex`: the lookup a naive design would do.
//! Compare the router's numbers to it, measured in the same run.

use std::hint::black_box;
use std::sync::{Arc, Mutex};

use criterion::{criterion_group, criterion_main, Criterion};
use leader_proxy::discovery::{LeaderAddr, LeaderEvent, Scheme};
use leader_proxy::metrics::Metrics;
use leader_proxy::router::Router;

fn lookup(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let router = Router::new(Scheme::Etcd, Arc::new(Metrics::new()));
    runtime.block_on(router.apply(LeaderEvent::Leader(
        LeaderAddr::parse("127.0.0.1:2375").expect("valid"),
    )));
    let mut group = c.benchmark_group("leader_lookup");
    group.bench_function("router_current", |b| {
        b.iter(|| black_box(router.current().leader.as_ref().map(|u| u.socket)))
    });
    let anchor = Mutex::new(Arc::new(router.current().leader.clone()));
    group.bench_function("anchor_mutex_arc_clone", |b| {
        b.iter(|| {
            let leader = anchor.lock().expect("not poisoned").clone();
            black_box(leader.as_ref().as_ref().map(|u| u.socket))
        })
    });
    group.finish();
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("leader_value_parse");
    for (name, value) in [
        ("host_port", "10.0.0.1:2375"),
        ("tcp_url", "tcp://manager-1.example.org:2375"),
        ("ipv6", "[fd00::1]:2375"),
        ("garbage", "not an address at all"),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| black_box(LeaderAddr::parse(black_box(value))))
        });
    }
    group.finish();
}

criterion_group!(benches, lookup, parse);
criterion_main!(benches);
