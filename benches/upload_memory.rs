//! Memory under a large upload: a 1 GiB build context (legacy builder, `docker build` with
//! `DOCKER_BUILDKIT=0`, Debian's docker CLI) streamed through leader-proxy to a real dockerd
//! found through a real etcd. Prints the proxy's resident memory before the uploads and its
//! peak during them (`VmRSS` sampled every 10 ms and the kernel's high-water mark `VmHWM`,
//! from /proc/PID/status). The goal is a few MiB of growth: request bodies are streamed
//! (pingora's body pump holds a handful of chunks), never buffered whole.
//!
//! It also times the whole `docker build` (wall time of the CLI: tar the context, send it,
//! dockerd stores it and builds) through the proxy and straight to dockerd, the anchor.
//! The two alternate, proxied first, [`RUNS`] times each, and the median and range of each
//! are printed: one sample each in a fixed order measured the machine's mood as much as
//! the proxy.
//!
//! Not a test: it asserts nothing, it prints numbers. Run with `cargo bench --bench
//! upload_memory` (root, dockerd, etcd and busybox-static needed, like the e2e tests; the
//! context is a sparse file, but dockerd writes 1 GiB twice to its temp dir per build).

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testkit::dockerd::{docker, run, Dockerd, DEBIAN_DOCKER};
use testkit::etcd::Etcd;
use testkit::stats::Spread;

const SIZE: u64 = 1 << 30;
const MIB: f64 = 1024.0 * 1024.0;
/// Builds of each kind (through the proxy, direct).
const RUNS: usize = 5;

fn main() {
    // `cargo bench` passes `--bench`; a filter that does not name this one skips it.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !args.is_empty() && !args.iter().any(|a| "upload_memory".contains(a.as_str())) {
        return;
    }
    let etcd = Etcd::start();
    let dockerd = Dockerd::start();
    etcd.put_v2("/p/docker/swarm/leader", &dockerd.endpoint(), None);
    let (mut proxy, proxy_addr) = start_proxy(&format!("etcd://{}/p", etcd.endpoint()));
    let pid = proxy.id();

    let dir = tempfile::Builder::new()
        .prefix("lpb-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let context = dir.path().join("ctx");
    std::fs::create_dir_all(&context).expect("mkdir");
    std::fs::write(context.join("Dockerfile"), "FROM bb:local\n").expect("Dockerfile");
    std::fs::File::create(context.join("big"))
        .and_then(|f| f.set_len(SIZE))
        .expect("sparse 1 GiB file");
    let config = dir.path().join("client");
    let via_proxy = format!("tcp://{proxy_addr}");
    let direct_host = format!("tcp://{}", dockerd.endpoint());
    let build = |host: &str, tag: &str| {
        let mut cmd = docker(DEBIAN_DOCKER, host, &config);
        cmd.env("DOCKER_BUILDKIT", "0")
            .args(["build", "--network", "none", "-q", "-t", tag])
            .arg(&context);
        cmd
    };

    // Warm up: a few requests and a small build through the proxy, so "before" is the
    // memory of a proxy that has served traffic, not of one that just started.
    let small = dir.path().join("small");
    std::fs::create_dir_all(&small).expect("mkdir");
    std::fs::write(small.join("Dockerfile"), "FROM bb:local\n").expect("Dockerfile");
    for _ in 0..3 {
        let out = run(
            docker(DEBIAN_DOCKER, &via_proxy, &config).args(["version"]),
            None,
            Duration::from_secs(60),
        );
        assert!(out.ok(), "{out}");
    }
    let mut warm = docker(DEBIAN_DOCKER, &via_proxy, &config);
    warm.env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "-t", "warm"])
        .arg(&small);
    let out = run(&mut warm, None, Duration::from_secs(120));
    assert!(out.ok(), "{out}");

    let before = Status::of(pid);
    let sampler = Sampler::start(pid);
    let (mut proxied, mut direct) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        for (host, tag, times) in [
            (&via_proxy, "up:proxied", &mut proxied),
            (&direct_host, "up:direct", &mut direct),
        ] {
            let out = run(&mut build(host, tag), None, Duration::from_secs(1800));
            assert!(out.ok(), "{out}");
            println!(
                "  run {}: {tag:<10} {:.2} s",
                i + 1,
                out.elapsed.as_secs_f64()
            );
            times.push(out.elapsed.as_secs_f64());
        }
    }
    let peak_sampled = sampler.stop();
    let after = Status::of(pid);

    let mib = SIZE as f64 / MIB;
    println!(
        "upload_memory: {mib:.0} MiB build context (legacy builder, Debian's docker CLI), \
         {RUNS} builds through leader-proxy and {RUNS} straight to dockerd, alternating"
    );
    println!(
        "  proxy before:  VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        before.rss_kib as f64 / 1024.0,
        before.hwm_kib as f64 / 1024.0
    );
    println!(
        "  proxy during:  VmRSS peak {:.1} MiB (sampled every 10 ms), VmHWM {:.1} MiB",
        peak_sampled as f64 / 1024.0,
        after.hwm_kib as f64 / 1024.0
    );
    println!(
        "  growth:        {:+.1} MiB (VmHWM after - VmHWM before), {:+.1} MiB (peak VmRSS - VmRSS before)",
        (after.hwm_kib as f64 - before.hwm_kib as f64) / 1024.0,
        (peak_sampled as f64 - before.rss_kib as f64) / 1024.0
    );
    let (p, d) = (
        Spread::of(proxied.iter().copied()),
        Spread::of(direct.iter().copied()),
    );
    println!(
        "  docker build wall time, through the proxy: median {:.2} s (min {:.2}, max {:.2})",
        p.median, p.min, p.max
    );
    println!(
        "  docker build wall time, direct to dockerd (the anchor): median {:.2} s (min {:.2}, max {:.2})",
        d.median, d.min, d.max
    );
    println!(
        "  through the proxy / direct, medians: {:.2}x the time",
        p.median / d.median
    );
    let _ = proxy.kill();
    let _ = proxy.wait();
}

/// VmRSS and VmHWM of a process, in KiB.
struct Status {
    rss_kib: u64,
    hwm_kib: u64,
}

impl Status {
    fn of(pid: u32) -> Status {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Status {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
        }
    }
}

/// Samples VmRSS every 10 ms on a thread; `stop` returns the highest seen.
struct Sampler {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<u64>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let (stop, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            loop {
                peak = peak.max(Status::of(pid).rss_kib);
                match rx.recv_timeout(Duration::from_millis(10)) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return peak,
                }
            }
        });
        Sampler { stop, thread }
    }

    fn stop(self) -> u64 {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or(0)
    }
}

fn start_proxy(discovery: &str) -> (Child, String) {
    let mut child = Command::new(testkit::bins::leader_proxy())
        .args(["--listen", "127.0.0.1:0", "--admin", "off", discovery])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start leader-proxy");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(addr) = line.split("Listening on ").nth(1) {
                    break addr.trim().to_string();
                }
            }
            _ => panic!("leader-proxy exited before listening"),
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}
