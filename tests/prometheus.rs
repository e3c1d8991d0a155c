//! What deploy/ ships for monitoring, against a real Prometheus scraping a real proxy that
//! follows a real etcd: the alert rules and the configuration pass `promtool`, every query
//! of the Grafana dashboard runs without error (and those of the panels this scenario
//! exercises return data), and the no-leader alert goes pending when the election opens.
//! See deploy/README.md.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testkit::conformance::standalone;
use testkit::etcd_proxy::{proxy_with_leader, KEY};
use testkit::http;
use testkit::prometheus::{promtool, Prometheus};

const WAIT: Duration = Duration::from_secs(30);
/// How long a proxy may take to notice a stopped store (its retries back off).
const OUTAGE_WAIT: Duration = Duration::from_secs(40);

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

#[test]
fn shipped_rules_and_configuration_pass_promtool() {
    let rules = deploy("prometheus/alerts.yml");
    let out = promtool(&["check", "rules", rules.to_str().expect("utf-8 path")]);
    assert!(out.contains("SUCCESS"), "{out}");
    // Checks the rule files it names too.
    let config = deploy("prometheus/prometheus.yml");
    promtool(&["check", "config", config.to_str().expect("utf-8 path")]);
}

/// The thresholds: each alert stays quiet and then fires when alerts_test.yml says.
#[test]
fn shipped_alerts_fire_when_their_unit_tests_say() {
    let tests = deploy("prometheus/alerts_test.yml");
    let out = promtool(&["test", "rules", tests.to_str().expect("utf-8 path")]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Every `expr` of the dashboard (panels, annotations), with the panel title it belongs to.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(value: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(map) => {
                let title = map.get("title").and_then(|t| t.as_str()).unwrap_or(title);
                if let Some(expr) = map.get("expr").and_then(|e| e.as_str()) {
                    out.push((title.to_string(), expr.to_string()));
                }
                for child in map.values() {
                    walk(child, title, out);
                }
            }
            serde_json::Value::Array(list) => list.iter().for_each(|v| walk(v, title, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "(dashboard)", &mut out);
    out
}

/// Grafana's variables, as Grafana would fill them in for this test: intervals of a few
/// scrapes, every proxy.
fn fill_in(expr: &str) -> String {
    let filled = expr
        .replace("$__rate_interval", "5s")
        .replace("$__interval", "5s")
        .replace("$__range", "5m")
        .replace("$instance", ".*");
    assert!(
        !filled.contains('$'),
        "the dashboard uses a variable this test does not know: {expr}"
    );
    filled
}

/// The panels the scenario below must fill (the others count what it does not do: L4
/// bytes, dropped log lines, refused connections…).
const PANELS_WITH_DATA: &[&str] = &[
    "Leader",
    "Election state",
    "Failovers",
    "Failovers in range",
    "Held requests",
    "Hold time",
    "Hold time distribution",
    "Failed requests",
    "Store and election problems",
    "Requests by listener",
    "Connections by listener",
    "Open connections",
];

#[test]
fn dashboard_queries_and_alerts_work_on_a_real_prometheus() {
    let started = Instant::now();
    let socket_dir = tempfile::Builder::new()
        .prefix("lp-prom-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let socket = socket_dir.path().join("p.sock");
    let unix = format!("unix://{}", socket.display());
    // One held request at a time: a second one is refused at once (503), without waiting.
    let (mut etcd, dir, m1, proxy) = proxy_with_leader(&["--listen", &unix, "--max-held", "1"]);
    let m2 = standalone("m2", dir.path());
    let prometheus = Prometheus::start(&[proxy.admin_addr()], &deploy("prometheus/alerts.yml"));
    promtool(&[
        "check",
        "config",
        prometheus.config_path().to_str().expect("utf-8"),
    ]);
    prometheus.wait_for_query(r#"up{job="leader-proxy"} == 1"#, WAIT, "proxy scraped");

    // Traffic on both listeners.
    let tcp = http::get(proxy.addr(), "/info").expect("request over TCP");
    assert_eq!(tcp.header("X-Served-By"), Some("m1"), "{}", tcp.text());
    let over_unix = http::get_unix(&socket, "/info").expect("request over the unix socket");
    assert_eq!(
        over_unix.header("X-Served-By"),
        Some("m1"),
        "{}",
        over_unix.text()
    );

    // A failover.
    etcd.put_v2(KEY, &m2.advertise(), None);
    proxy.wait_for_leader(WAIT, |l| l["leader"] == m2.advertise().as_str());
    let moved = http::get(proxy.addr(), "/info").expect("request after the failover");
    assert_eq!(moved.header("X-Served-By"), Some("m2"), "{}", moved.text());
    prometheus.wait_for_query(
        &format!(
            r#"leader_proxy_leader{{address="{}"}} == 1"#,
            m2.advertise()
        ),
        WAIT,
        "the new leader seen by Prometheus",
    );

    // The election opens: the no-leader alert goes pending (it fires only after its `for`).
    etcd.delete_v2(KEY);
    proxy.wait_for_leader(WAIT, |l| l["state"] == "no_leader");
    let alert = prometheus.wait_for_alert("LeaderProxyNoLeader", "pending", WAIT);
    assert_eq!(
        alert["labels"]["instance"],
        proxy.admin_addr().to_string().as_str()
    );

    // A request held until a leader is elected, and one refused meanwhile (--max-held 1).
    let held = {
        let addr = proxy.addr();
        std::thread::spawn(move || http::get(addr, "/info").expect("held request"))
    };
    proxy.wait_for_metric(
        "leader_proxy_held_requests",
        1.0,
        WAIT,
        "request never held",
    );
    prometheus.wait_for_query("leader_proxy_held_requests > 0", WAIT, "held request seen");
    let refused = http::get(proxy.addr(), "/info").expect("request beyond --max-held");
    assert_eq!(refused.status, 503, "{}", refused.text());
    etcd.put_v2(KEY, &m1.advertise(), None);
    let held = held.join().expect("held request thread");
    assert_eq!(held.header("X-Served-By"), Some("m1"), "{}", held.text());
    prometheus.wait_for_query("leader_proxy_hold_seconds_count > 0", WAIT, "hold time");

    // A store outage: the proxy keeps its leader, Prometheus sees it degraded.
    etcd.stop();
    proxy.wait_for_leader(OUTAGE_WAIT, |l| l["state"] == "degraded");
    let degraded = prometheus.wait_for_query(
        r#"leader_proxy_state{state="degraded"} == 1"#,
        WAIT,
        "degraded state",
    );
    assert_eq!(degraded["metric"]["job"], "leader-proxy");
    prometheus.wait_for_alert("LeaderProxyStoreDegraded", "pending", WAIT);
    prometheus.wait_for_query("leader_proxy_store_errors_total > 0", WAIT, "store errors");

    // Every query of the dashboard, over everything this test did.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/leader-proxy.json")).expect("read dashboard"),
    )
    .expect("the dashboard is JSON");
    let queries = dashboard_queries(&dashboard);
    let range = started.elapsed() + Duration::from_secs(5);
    let mut with_data = Vec::new();
    let mut listeners = Vec::new();
    for (title, expr) in &queries {
        let result = prometheus
            .query_range(&fill_in(expr), range)
            .unwrap_or_else(|e| panic!("panel {title:?}: {expr}: {e}"));
        if !result.is_empty() {
            with_data.push(title.as_str());
        }
        if title == "Requests by listener" {
            listeners.extend(
                result
                    .iter()
                    .filter_map(|s| s["metric"]["listener"].as_str().map(str::to_string)),
            );
        }
    }
    for panel in PANELS_WITH_DATA {
        assert!(
            queries.iter().any(|(title, _)| title == panel),
            "no panel {panel:?} in the dashboard"
        );
        assert!(
            with_data.contains(panel),
            "panel {panel:?} shows nothing after this test's traffic"
        );
    }
    for listener in [format!("tcp://{}", proxy.addr()), unix] {
        assert!(
            listeners.contains(&listener),
            "no traffic for {listener} in {listeners:?}"
        );
    }
    // The Proxy variable lists the proxy (`label_values(leader_proxy_state, instance)`).
    let values = http::get(
        prometheus.addr(),
        "/api/v1/label/instance/values?match[]=leader_proxy_state",
    )
    .expect("label values")
    .json();
    assert!(
        values["data"]
            .as_array()
            .is_some_and(|v| v.contains(&proxy.admin_addr().to_string().into())),
        "{values}"
    );
}
