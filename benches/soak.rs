//! Soak: hostile and careless clients and normal docker CLI traffic at once, for a few
//! minutes, against the real proxy in front of a real dockerd found through a real etcd.
//! The proxy starts as a service usually does, with a soft open-files limit of 1024
//! (`prlimit`), which it raises.
//!
//! - slowloris: [`SLOW_CLIENTS`] connections each trickling a request head, one byte every
//!   [`SLOW_TICK`]; the proxy cuts each after its head timeout and it reconnects;
//! - a connection flood: [`IDLE_CLIENTS`] idle connections held open, the oldest replaced
//!   by a new one about [`FLOOD_RATE`] times a second;
//! - the docker CLI (28.x) in a loop: `version`, `info`, `ps -a`, `images`, `run --rm`.
//!
//! It prints the proxy's resident memory (`VmRSS`) and open client connections every
//! [`SAMPLE_EVERY`], then a summary. The docker traffic must see no failure: any failed
//! command is printed and the bench exits 1. Otherwise it asserts nothing.
//!
//! `cargo bench --bench soak` (root, with what the e2e tests need: `scripts/install-deps
//! --check bench`); `SOAK_SECS` sets the length (180 by default).

use std::collections::VecDeque;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::dockerd::{docker, run, Dockerd, DOCKER};
use testkit::etcd::Etcd;
use testkit::proxy::Proxy;

const SLOW_CLIENTS: usize = 200;
const SLOW_TICK: Duration = Duration::from_secs(2);
const IDLE_CLIENTS: usize = 1500;
const FLOOD_RATE: u64 = 200;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Counters {
    stop: AtomicBool,
    slow_cut: AtomicU64,
    flood_opened: AtomicU64,
    flood_failed: AtomicU64,
    docker_ok: AtomicU64,
    docker_failed: AtomicU64,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !args.is_empty() && !args.iter().any(|a| "soak".contains(a.as_str())) {
        return;
    }
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(180);
    testkit::open_files::raise_own_limit();
    let etcd = Etcd::start();
    let dockerd = Dockerd::start();
    etcd.put_v2("/p/docker/swarm/leader", &dockerd.endpoint(), None);
    let proxy = Proxy::start_with_open_files(1024, &[&format!("etcd://{}/p", etcd.endpoint())]);
    proxy.wait_for_leader(Duration::from_secs(30), |l| l["state"] == "leader");
    let pid = proxy.pid();
    let addr = proxy.addr();
    let config = tempfile::tempdir().expect("temp dir");
    let host = format!("tcp://{addr}");

    // The memory of a proxy that has served a request, before the load starts.
    let warm = run(
        docker(DOCKER, &host, config.path()).arg("version"),
        None,
        Duration::from_secs(60),
    );
    assert!(warm.ok(), "{warm}");
    let before = rss_kib(pid);

    let counters = Arc::new(Counters::default());
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let threads = vec![
        std::thread::spawn({
            let c = counters.clone();
            move || slowloris(addr, &c)
        }),
        std::thread::spawn({
            let c = counters.clone();
            move || flood(addr, &c)
        }),
        std::thread::spawn({
            let (c, failures) = (counters.clone(), failures.clone());
            let config = config.path().to_path_buf();
            move || docker_traffic(&host, &config, &c, &failures)
        }),
    ];

    println!("soak: {secs} s; slowloris {SLOW_CLIENTS}, idle flood {IDLE_CLIENTS} (+{FLOOD_RATE}/s churn), docker CLI loop");
    println!(
        "  {:>5}  {:>9}  {:>12}  {:>10}  {:>9}",
        "t (s)", "RSS (MiB)", "client conns", "docker ok", "failed"
    );
    let started = Instant::now();
    let mut rss = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(SAMPLE_EVERY);
        let now = rss_kib(pid);
        rss.push(now);
        println!(
            "  {:>5}  {:>9.1}  {:>12}  {:>10}  {:>9}",
            started.elapsed().as_secs(),
            now as f64 / 1024.0,
            proxy.metric("leader_proxy_client_connections "),
            counters.docker_ok.load(Ordering::Relaxed),
            counters.docker_failed.load(Ordering::Relaxed),
        );
    }
    counters.stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }

    let mib = |kib: u64| kib as f64 / 1024.0;
    let (first, last) = (rss[0], rss[rss.len() - 1]);
    let peak = rss.iter().copied().max().unwrap_or(0);
    println!(
        "  proxy VmRSS: {:.1} MiB before the load; first sample {:.1} MiB, peak {:.1} MiB, \
         last {:.1} MiB",
        mib(before),
        mib(first),
        mib(peak),
        mib(last)
    );
    println!(
        "  slowloris clients cut by the proxy: {}; flood connections opened: {} ({} failed)",
        counters.slow_cut.load(Ordering::Relaxed),
        counters.flood_opened.load(Ordering::Relaxed),
        counters.flood_failed.load(Ordering::Relaxed)
    );
    println!(
        "  refused beyond --max-connections: {}",
        proxy.metric("leader_proxy_client_connections_refused_total")
    );
    let (ok, failed) = (
        counters.docker_ok.load(Ordering::Relaxed),
        counters.docker_failed.load(Ordering::Relaxed),
    );
    println!("  docker CLI commands: {ok} succeeded, {failed} failed");
    if failed > 0 {
        for failure in failures.lock().expect("failures").iter() {
            println!("  FAILED: {failure}");
        }
        std::process::exit(1);
    }
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Clients that send a request head one byte per tick and never finish it; one the proxy
/// cut (a failed write) reconnects.
fn slowloris(addr: SocketAddr, c: &Counters) {
    let open = || {
        let mut s = TcpStream::connect(addr).ok()?;
        s.write_all(b"GET /_ping HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
            .ok()?;
        Some(s)
    };
    let mut clients: Vec<Option<TcpStream>> = (0..SLOW_CLIENTS).map(|_| open()).collect();
    while !c.stop.load(Ordering::Relaxed) {
        std::thread::sleep(SLOW_TICK);
        for client in &mut clients {
            let alive = client.as_mut().is_some_and(|s| s.write_all(b"a").is_ok());
            if !alive {
                c.slow_cut.fetch_add(1, Ordering::Relaxed);
                *client = open();
            }
        }
    }
}

/// Idle connections held open, the oldest replaced by a new one [`FLOOD_RATE`] times a
/// second.
fn flood(addr: SocketAddr, c: &Counters) {
    let mut held = VecDeque::with_capacity(IDLE_CLIENTS);
    let pause = Duration::from_micros(1_000_000 / FLOOD_RATE);
    while !c.stop.load(Ordering::Relaxed) {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => {
                c.flood_opened.fetch_add(1, Ordering::Relaxed);
                if held.len() == IDLE_CLIENTS {
                    held.pop_front();
                }
                held.push_back(s);
            }
            Err(_) => {
                c.flood_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        // The first IDLE_CLIENTS at once, then the churn rate.
        if held.len() == IDLE_CLIENTS {
            std::thread::sleep(pause);
        }
    }
}

/// The docker CLI as a user runs it, in a loop; every failure is kept.
fn docker_traffic(
    host: &str,
    config: &std::path::Path,
    c: &Counters,
    failures: &std::sync::Mutex<Vec<String>>,
) {
    let commands: [&[&str]; 5] = [
        &["version"],
        &["info"],
        &["ps", "-a"],
        &["images"],
        &["run", "--rm", "--network", "none", "bb:local", "true"],
    ];
    while !c.stop.load(Ordering::Relaxed) {
        for args in commands {
            let out = run(
                docker(DOCKER, host, config).args(args),
                None,
                Duration::from_secs(120),
            );
            if out.ok() {
                c.docker_ok.fetch_add(1, Ordering::Relaxed);
            } else {
                c.docker_failed.fetch_add(1, Ordering::Relaxed);
                failures.lock().expect("failures").push(out.to_string());
            }
        }
    }
}
