//! Load against HAProxy: leader-proxy and HAProxy 2.6 side by side in front of the same
//! nginx, in L7 (`--mode http` / `mode http`) and L4 (`--mode tcp` / `mode tcp`). The proxy
//! finds nginx through an etcd v2 leader key, as in production; HAProxy has one static
//! `server` line and its defaults (one thread per core). wrk (`-t1 -c64`) loads each for
//! [`SECONDS`] at a time, the targets interleaved and their order reversed every round, for
//! [`ROUNDS`] rounds, so a change in the machine's load touches both sides alike.
//!
//! Cases: a 2-byte body (`/_ping`) and a 64 KiB body, each with keep-alive and with a new
//! connection per request (`Connection: close`). For each it prints the median req/s, p50
//! and p99 with their spread over the rounds, and leader-proxy's ratios against HAProxy
//! (req/s: higher is better; p99: lower is better).
//!
//! Then the split-write upstream (crates/testkit/src/split_write.rs): sequential requests,
//! each on a new client connection, direct and through each proxy, where a delayed-ACK
//! stall on a pooled upstream connection shows as ~40 ms.
//!
//! Not a test: it asserts nothing but that every request succeeded. Run with `scripts/bench`
//! (or `cargo bench --bench load`). `LOAD_ROUNDS`, `LOAD_SECONDS` and `LOAD_ONLY` (a
//! substring of a row's name, e.g. `L7 ping`) shorten it while working on one path; the
//! numbers in the README come from a full run.

use std::time::Duration;

use testkit::etcd::Etcd;
use testkit::haproxy::{Haproxy, HaproxyMode};
use testkit::nginx::Nginx;
use testkit::proxy::BenchProxy;
use testkit::split_write::{sequential, SplitWriteServer};
use testkit::stats::Spread;
use testkit::wrk::{Load, LoadResult};

const ROUNDS: usize = 5;
const SECONDS: u64 = 10;
const CONNECTIONS: u32 = 64;
/// Seconds per sequential split-write run.
const SPLIT_SECONDS: u64 = 5;

/// One row of the comparison: a mode, a body and a connection policy.
struct Case {
    name: String,
    path: &'static str,
    close: bool,
    /// HAProxy's address and leader-proxy's for this mode.
    haproxy: String,
    proxy: String,
    anchor: Vec<LoadResult>,
    ours: Vec<LoadResult>,
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that does not name this one skips it.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !args.is_empty() && !args.iter().any(|a| "load".contains(a.as_str())) {
        return;
    }
    let rounds = env_number("LOAD_ROUNDS", ROUNDS as u64) as usize;
    let seconds = env_number("LOAD_SECONDS", SECONDS);
    let only = std::env::var("LOAD_ONLY").unwrap_or_default();

    let etcd = Etcd::start();
    let nginx = Nginx::start();
    let split = SplitWriteServer::start();
    etcd.put_v2("/load/docker/swarm/leader", &nginx.addr().to_string(), None);
    etcd.put_v2(
        "/split/docker/swarm/leader",
        &split.addr().to_string(),
        None,
    );
    let store = |prefix: &str| format!("etcd://{}/{prefix}", etcd.endpoint());

    let l7 = BenchProxy::start(&[&store("load")]);
    let l4 = BenchProxy::start(&["--mode", "tcp", &store("load")]);
    let haproxy_http = Haproxy::start(HaproxyMode::Http, nginx.addr());
    let haproxy_tcp = Haproxy::start(HaproxyMode::Tcp, nginx.addr());
    for proxy in [&l7, &l4] {
        wait_until_serving(&format!("http://{}/_ping", proxy.addr()));
    }

    let mut cases = Vec::new();
    for (mode, haproxy, proxy) in [("L7", &haproxy_http, &l7), ("L4", &haproxy_tcp, &l4)] {
        for (body, path) in [("ping", "/_ping"), ("64k", "/64k")] {
            for (conn, close) in [("keep-alive", false), ("close", true)] {
                let name = format!("{mode} {body} {conn}");
                if !name.contains(&only) {
                    continue;
                }
                cases.push(Case {
                    name,
                    path,
                    close,
                    haproxy: haproxy.addr().to_string(),
                    proxy: proxy.addr().to_string(),
                    anchor: Vec::new(),
                    ours: Vec::new(),
                });
            }
        }
    }

    println!(
        "load: wrk -t1 -c{CONNECTIONS}, {rounds} rounds of {seconds} s per target and case, \
         HAProxy {} and leader-proxy interleaved",
        haproxy_version()
    );
    for round in 0..rounds {
        for case in &mut cases {
            let haproxy_url = format!("http://{}{}", case.haproxy, case.path);
            let proxy_url = format!("http://{}{}", case.proxy, case.path);
            let load = |url: &str| {
                let result = Load {
                    url,
                    connections: CONNECTIONS,
                    duration: Duration::from_secs(seconds),
                    close: case.close,
                }
                .run();
                assert_eq!(result.errors, 0, "{url}: {result:?}");
                result
            };
            // Alternate who goes first, so neither always runs on the warmer machine.
            if round % 2 == 0 {
                case.anchor.push(load(&haproxy_url));
                case.ours.push(load(&proxy_url));
            } else {
                case.ours.push(load(&proxy_url));
                case.anchor.push(load(&haproxy_url));
            }
            println!(
                "  round {}: {:<20} HAProxy {:>8.0} req/s  leader-proxy {:>8.0} req/s",
                round + 1,
                case.name,
                case.anchor[round].requests_per_sec,
                case.ours[round].requests_per_sec
            );
        }
    }

    println!();
    println!(
        "| case | HAProxy req/s | leader-proxy req/s | req/s ratio | HAProxy p50 / p99 | leader-proxy p50 / p99 | p99 ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
    for case in &cases {
        let rps = |r: &[LoadResult]| Spread::of(r.iter().map(|x| x.requests_per_sec));
        let p50 = |r: &[LoadResult]| Spread::of(r.iter().map(|x| x.p50 * 1e3));
        let p99 = |r: &[LoadResult]| Spread::of(r.iter().map(|x| x.p99 * 1e3));
        let (a_rps, o_rps) = (rps(&case.anchor), rps(&case.ours));
        let (a_p99, o_p99) = (p99(&case.anchor), p99(&case.ours));
        println!(
            "| {} | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) | **{:.2}×** | {:.2} / {:.2} ms ({:.2}–{:.2}) | {:.2} / {:.2} ms ({:.2}–{:.2}) | **{:.2}×** |",
            case.name,
            a_rps.median,
            a_rps.min,
            a_rps.max,
            o_rps.median,
            o_rps.min,
            o_rps.max,
            o_rps.median / a_rps.median,
            p50(&case.anchor).median,
            a_p99.median,
            a_p99.min,
            a_p99.max,
            p50(&case.ours).median,
            o_p99.median,
            o_p99.min,
            o_p99.max,
            o_p99.median / a_p99.median,
        );
    }

    if "split-write".contains(&only) || only.is_empty() {
        split_write(&split, &store("split"), rounds);
    }
    drop((l7, l4));
}

/// Sequential requests to the split-write upstream: direct (the anchor), through HAProxy
/// (`mode http`), through leader-proxy in L7 and L4.
fn split_write(split: &SplitWriteServer, store: &str, rounds: usize) {
    let l7 = BenchProxy::start(&[store]);
    let l4 = BenchProxy::start(&["--mode", "tcp", store]);
    let haproxy = Haproxy::start(HaproxyMode::Http, split.addr());
    for proxy in [&l7, &l4] {
        wait_until_serving(&format!("http://{}/", proxy.addr()));
    }
    let targets = [
        ("direct", split.addr().to_string()),
        ("HAProxy L7", haproxy.addr().to_string()),
        ("leader-proxy L7", l7.addr().to_string()),
        ("leader-proxy L4", l4.addr().to_string()),
    ];
    let mut medians: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for _ in 0..rounds {
        for (i, (_, addr)) in targets.iter().enumerate() {
            let addr = addr.parse().expect("address");
            let times = sequential(addr, Duration::from_secs(SPLIT_SECONDS));
            medians[i].push(Spread::of(times).median * 1e3);
        }
    }
    let direct = Spread::of(medians[0].iter().copied()).median;
    println!();
    println!(
        "split-write upstream (head and body in two writes, no TCP_NODELAY), sequential \
         requests on a new client connection each ({rounds} x {SPLIT_SECONDS} s), median time \
         per request:"
    );
    for (i, (name, _)) in targets.iter().enumerate() {
        let s = Spread::of(medians[i].iter().copied());
        println!(
            "  {name:<16} {:.3} ms ({:.3}–{:.3})  {:.2}× direct",
            s.median,
            s.min,
            s.max,
            s.median / direct
        );
    }
}

/// Polls `url` until it answers 200: the proxy has learned its leader from etcd.
fn wait_until_serving(url: &str) {
    for _ in 0..200 {
        if let Ok(out) = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url])
            .output()
        {
            if out.stdout == b"200" {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{url} never answered 200");
}

fn haproxy_version() -> String {
    std::process::Command::new(testkit::haproxy::HAPROXY.path())
        .arg("-v")
        .output()
        .ok()
        .and_then(|out| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.split_whitespace().nth(2).map(str::to_string)
        })
        .unwrap_or_else(|| "(unknown version)".to_string())
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text} is not a number")),
        Err(_) => default,
    }
}
