//! A real Prometheus (Debian's `prometheus` package) scraping the proxy's `/metrics` every
//! second and evaluating a rules file every second, on a free port with its own TSDB in a
//! temp dir, killed on drop; and `promtool`, which checks rules and configurations. The
//! queries go through Prometheus' HTTP API (`/api/v1/query`, `/api/v1/query_range`,
//! `/api/v1/alerts`), as Grafana's do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::programs::Program;
use crate::server_process::{free_ports, open_log, wait_ready};

pub const PROMETHEUS: Program = Program::new("TESTKIT_PROMETHEUS", "/usr/bin/prometheus");
pub const PROMTOOL: Program = Program::new("TESTKIT_PROMTOOL", "/usr/bin/promtool");

const INSTALL: &str =
    "apt-get install --no-install-recommends prometheus (or run scripts/install-deps)";

/// The job name the proxies are scraped under (`up{job="leader-proxy"}`), as in
/// deploy/prometheus/prometheus.yml.
pub const JOB: &str = "leader-proxy";

pub struct Prometheus {
    child: Option<Child>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (admin listeners, job [`JOB`]) and evaluating
    /// the rules in `rules` (copied into its dir), both every second; waits until it is ready.
    pub fn start(targets: &[SocketAddr], rules: &Path) -> Prometheus {
        PROMETHEUS.require(INSTALL);
        let dir = tempfile::Builder::new()
            .prefix("lp-prometheus-")
            .tempdir()
            .expect("temp dir");
        let rules_copy = dir.path().join("rules.yml");
        std::fs::copy(rules, &rules_copy)
            .unwrap_or_else(|e| panic!("copy {}: {e}", rules.display()));
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [{targets}]\n",
            rules = rules_copy.display(),
            targets = targets.join(", "),
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write prometheus.yml");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_ports(1)[0])
            .parse()
            .expect("addr");
        let log_path = dir.path().join("prometheus.log");
        let child = Command::new(PROMETHEUS.path())
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(open_log(&log_path, "prometheus"))
            .spawn()
            .expect("start prometheus");
        let child = wait_ready(
            child,
            "prometheus",
            "prometheus not ready",
            Duration::from_secs(30),
            || std::fs::read_to_string(&log_path).unwrap_or_default(),
            || crate::http::get(addr, "/-/ready").is_ok_and(|r| r.status == 200),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Prometheus {
            child: Some(child),
            addr,
            dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration it runs with (for `promtool check config`).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.yml")
    }

    /// Its log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// POSTs `form` to `path` of the HTTP API: its `data`, or the error Prometheus gave
    /// (`errorType: error`).
    pub fn api(&self, path: &str, form: &[(&str, &str)]) -> Result<serde_json::Value, String> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let response = crate::http::request(
            self.addr,
            "POST",
            path,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
            Duration::from_secs(10),
        )
        .map_err(|e| format!("POST {path}: {e}"))?;
        let json = response.json();
        if json["status"] != "success" {
            return Err(format!(
                "{} {}: {}",
                response.status,
                json["errorType"].as_str().unwrap_or("?"),
                json["error"].as_str().unwrap_or(&response.text())
            ));
        }
        Ok(json["data"].clone())
    }

    /// An instant query's result (a vector's series, or a scalar's `[time, value]`).
    pub fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let data = self.api("/api/v1/query", &[("query", expr)])?;
        Ok(series(&data))
    }

    /// A range query over the last `range`, one point per second: every series that had a
    /// sample in that time.
    pub fn query_range(
        &self,
        expr: &str,
        range: Duration,
    ) -> Result<Vec<serde_json::Value>, String> {
        let end = unix_now();
        let start = end - range.as_secs_f64();
        let (start, end) = (format!("{start:.3}"), format!("{end:.3}"));
        let data = self.api(
            "/api/v1/query_range",
            &[
                ("query", expr),
                ("start", &start),
                ("end", &end),
                ("step", "1"),
            ],
        )?;
        Ok(series(&data))
    }

    /// Polls an instant query until it returns a series (`what` names it in the panic).
    pub fn wait_for_query(&self, expr: &str, timeout: Duration, what: &str) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            match self.query(expr) {
                Ok(result) if !result.is_empty() => return result[0].clone(),
                Ok(_) => {}
                Err(e) => panic!("{what}: query {expr:?} failed: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "{what}: no result for {expr:?} after {timeout:?}; prometheus log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Polls `/api/v1/alerts` until the alert `name` is in `state` (`pending`, `firing`);
    /// returns it.
    pub fn wait_for_alert(&self, name: &str, state: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let alerts = crate::http::get(self.addr, "/api/v1/alerts")
                .map(|r| r.json())
                .unwrap_or_default();
            let list = alerts["data"]["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if let Some(alert) = list
                .iter()
                .find(|a| a["labels"]["alertname"] == name && a["state"] == state)
            {
                return alert.clone();
            }
            assert!(
                Instant::now() < deadline,
                "alert {name} not {state} after {timeout:?}; alerts now: {list:?}\nprometheus log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        crate::server_process::kill(&mut self.child);
    }
}

/// The series of a query's `data` (a scalar or string result counts as one).
fn series(data: &serde_json::Value) -> Vec<serde_json::Value> {
    match &data["result"] {
        serde_json::Value::Array(list) if data["resultType"] != "scalar" => list.clone(),
        serde_json::Value::Null => Vec::new(),
        other => vec![other.clone()],
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Runs `promtool ARGS…`; panics with its output unless it succeeds.
pub fn promtool(args: &[&str]) -> String {
    PROMTOOL.require(INSTALL);
    let output = Command::new(PROMTOOL.path())
        .args(args)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}
