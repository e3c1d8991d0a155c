//! wrk, the load generator of benches/load.rs: one run against one URL, and what it
//! reported (requests a second, latency percentiles, errors).

use std::process::Command;
use std::time::Duration;

use crate::programs::Program;

pub const WRK: Program = Program::new("TESTKIT_WRK", "/usr/bin/wrk");

/// One wrk run: `connections` on one thread (`-t1`, so wrk takes one core and the other is
/// the proxy's and the upstream's, as on the machine), for `duration`.
pub struct Load<'a> {
    pub url: &'a str,
    pub connections: u32,
    pub duration: Duration,
    /// `Connection: close` on every request: a new connection per request.
    pub close: bool,
}

/// What wrk printed, in seconds and requests a second.
#[derive(Clone, Debug)]
pub struct LoadResult {
    pub requests_per_sec: f64,
    pub p50: f64,
    pub p99: f64,
    pub requests: u64,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx answers.
    pub errors: u64,
}

impl Load<'_> {
    pub fn run(&self) -> LoadResult {
        WRK.require("apt-get install wrk (or run scripts/install-deps)");
        let mut cmd = Command::new(WRK.path());
        cmd.args(["-t1", "--latency"])
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{}s", self.duration.as_secs().max(1)));
        if self.close {
            cmd.args(["-H", "Connection: close"]);
        }
        let out = cmd.arg(self.url).output().expect("run wrk");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse(&text).unwrap_or_else(|| panic!("cannot read wrk's output:\n{text}"))
    }
}

/// Reads wrk's `--latency` report.
fn parse(text: &str) -> Option<LoadResult> {
    let mut result = LoadResult {
        requests_per_sec: 0.0,
        p50: 0.0,
        p99: 0.0,
        requests: 0,
        errors: 0,
    };
    let mut seen = (false, false, false);
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", rps] => {
                result.requests_per_sec = rps.parse().ok()?;
                seen.0 = true;
            }
            ["50%", value] => {
                result.p50 = seconds(value)?;
                seen.1 = true;
            }
            ["99%", value] => {
                result.p99 = seconds(value)?;
                seen.2 = true;
            }
            [n, "requests", "in", ..] => result.requests = n.parse().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                result.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => result.errors += n.parse::<u64>().ok()?,
            _ => {}
        }
    }
    (seen == (true, true, true)).then_some(result)
}

/// `421.00us`, `1.23ms`, `2.00s`, `1.5m` as seconds.
fn seconds(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        _ => return None,
    };
    Some(number * scale)
}
