//! The Prometheus metrics, in one registry served by the admin listener at `/metrics`.
//!
//! The bottom layer (docs/architecture.md): it takes plain label values, so every other
//! module may count things without this one knowing their types.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Leader changes since start (the first leader counts).
    pub leader_changes: IntCounter,
    /// 1 for the current leader's address; the previous leader's series is removed.
    leader: IntGaugeVec,
    /// 1 for the current state (`leader`, `no_leader`, `degraded`), 0 for the others.
    state: IntGaugeVec,
    /// Requests answered, by HTTP status (hijacked connections count with 101) and by the
    /// `listener` their connection came in on (`tcp://ADDR`, `unix://PATH`: the listeners are
    /// fixed at start, so the label's values are few).
    pub requests: IntCounterVec,
    /// Requests waiting for a reachable leader right now.
    pub held: IntGauge,
    /// How long held requests waited (served or not).
    pub hold_seconds: Histogram,
    /// Requests sent again: `connect` (dial failed, any method), `idempotent` (after the
    /// request was written) or `no_leader` (swarm mode's manager answered 503 mid-election).
    pub retries: IntCounterVec,
    /// Held requests dropped unsent because their client left (docs/failover.md#hold).
    pub abandoned: IntCounter,
    /// Dials to the leader by `result` (`ok`, `failed`): at most one per backoff step while
    /// it fails, however many requests wait.
    pub upstream_dials: IntCounterVec,
    /// Store outages seen (each `degraded` report).
    pub store_errors: IntCounter,
    /// Leader values ignored because they are not addresses.
    pub rejected_values: IntCounter,
    /// `--verify-leader`: episodes in which the managers contradicted the store.
    pub leader_disagreements: IntCounter,
    /// `--mode tcp` connections by how they ended up: `proxied` (relayed to a leader) or
    /// `refused` (closed without one: --hold-timeout, --max-held).
    pub l4_connections: IntCounterVec,
    /// `--mode tcp` connections being relayed right now.
    pub l4_open: IntGauge,
    /// `--mode tcp` bytes relayed, by direction (`to_leader`, `to_client`), counted as they
    /// pass (a connection open for hours shows its traffic before it ends).
    pub l4_bytes: IntCounterVec,
    /// Client TLS handshakes that failed (no or a wrong client certificate, not TLS, …).
    pub tls_handshake_failures: IntCounter,
    /// SIGHUP reloads of the certificates, by `result` (`ok`, `error`: the old ones kept).
    pub reloads: IntCounterVec,
    /// 1 if the last load of the settings (the start, or a SIGHUP) was applied whole, 0 if
    /// it was refused or a part of it failed (as `prometheus_config_last_reload_successful`).
    config_reload_success: IntGauge,
    /// When the settings were last loaded successfully, in Unix seconds.
    config_reload_timestamp: Gauge,
    /// Log lines (access-log lines included) the log writer dropped because its queue was
    /// full: brought up to date from `dropped_log_source` when `/metrics` is read.
    dropped_log_lines: IntCounter,
    dropped_log_source: Option<Box<dyn Fn() -> u64 + Send + Sync>>,
    /// Client connections open now, over all client listeners (`--max-connections`).
    pub client_connections: IntGauge,
    /// Client connections closed at once because `--max-connections` were open.
    pub client_connections_refused: IntCounter,
    /// Client connections admitted (not refused by `--max-connections`), in both modes, by
    /// `listener` (as in `requests`).
    pub accepted_connections: IntCounterVec,
    /// Requests the access policy refused, by `rule` (`section`, `read-only`,
    /// `privileged`, `bind-mounts`, …; docs/policy.md).
    pub policy_denials: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let leader_changes = IntCounter::new(
            "leader_proxy_leader_changes_total",
            "Leader changes since start",
        )
        .expect("valid metric");
        let leader = IntGaugeVec::new(
            Opts::new("leader_proxy_leader", "1 for the current leader's address"),
            &["address"],
        )
        .expect("valid metric");
        let state = IntGaugeVec::new(
            Opts::new("leader_proxy_state", "1 for the current election state"),
            &["state"],
        )
        .expect("valid metric");
        let requests = IntCounterVec::new(
            Opts::new(
                "leader_proxy_requests_total",
                "Requests answered, by status and client listener",
            ),
            &["code", "listener"],
        )
        .expect("valid metric");
        let held = IntGauge::new(
            "leader_proxy_held_requests",
            "Requests waiting for a reachable leader",
        )
        .expect("valid metric");
        let hold_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "leader_proxy_hold_seconds",
                "Time requests spent waiting for a reachable leader",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
        )
        .expect("valid metric");
        let retries = IntCounterVec::new(
            Opts::new(
                "leader_proxy_retries_total",
                "Requests sent again, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let abandoned = IntCounter::new(
            "leader_proxy_abandoned_requests_total",
            "Held requests dropped unsent because their client left",
        )
        .expect("valid metric");
        let upstream_dials = IntCounterVec::new(
            Opts::new(
                "leader_proxy_upstream_dials_total",
                "Connections dialled to the leader, by result (ok, failed)",
            ),
            &["result"],
        )
        .expect("valid metric");
        let store_errors = IntCounter::new(
            "leader_proxy_store_errors_total",
            "Store outages reported by the discovery backend",
        )
        .expect("valid metric");
        let rejected_values = IntCounter::new(
            "leader_proxy_rejected_leader_values_total",
            "Leader values ignored because they are not addresses",
        )
        .expect("valid metric");
        let leader_disagreements = IntCounter::new(
            "leader_proxy_leader_disagreements_total",
            "Episodes in which the managers contradicted the store's leader (--verify-leader)",
        )
        .expect("valid metric");
        let l4_connections = IntCounterVec::new(
            Opts::new(
                "leader_proxy_l4_connections_total",
                "--mode tcp client connections, by result (proxied or refused)",
            ),
            &["result"],
        )
        .expect("valid metric");
        let l4_open = IntGauge::new(
            "leader_proxy_l4_open_connections",
            "--mode tcp connections being relayed",
        )
        .expect("valid metric");
        let l4_bytes = IntCounterVec::new(
            Opts::new(
                "leader_proxy_l4_bytes_total",
                "--mode tcp bytes relayed, by direction (to_leader, to_client)",
            ),
            &["direction"],
        )
        .expect("valid metric");
        let tls_handshake_failures = IntCounter::new(
            "leader_proxy_tls_handshake_failures_total",
            "Client TLS handshakes that failed (missing or untrusted client certificates too)",
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "leader_proxy_reloads_total",
                "SIGHUP reloads of the certificates, by result (ok, error)",
            ),
            &["result"],
        )
        .expect("valid metric");
        let config_reload_success = IntGauge::new(
            "leader_proxy_config_reload_success",
            "1 if the last load of the settings (start or SIGHUP) was applied whole, else 0",
        )
        .expect("valid metric");
        let config_reload_timestamp = Gauge::new(
            "leader_proxy_config_reload_timestamp_seconds",
            "When the settings were last loaded successfully (start or SIGHUP), Unix seconds",
        )
        .expect("valid metric");
        let dropped_log_lines = IntCounter::new(
            "leader_proxy_log_lines_dropped_total",
            "Log lines (access log included) dropped because the log writer fell behind",
        )
        .expect("valid metric");
        let client_connections = IntGauge::new(
            "leader_proxy_client_connections",
            "Client connections open now (at most --max-connections)",
        )
        .expect("valid metric");
        let policy_denials = IntCounterVec::new(
            Opts::new(
                "leader_proxy_policy_denials_total",
                "Requests the access policy refused, by rule",
            ),
            &["rule"],
        )
        .expect("valid metric");
        let client_connections_refused = IntCounter::new(
            "leader_proxy_client_connections_refused_total",
            "Client connections refused because --max-connections were open",
        )
        .expect("valid metric");
        let accepted_connections = IntCounterVec::new(
            Opts::new(
                "leader_proxy_accepted_connections_total",
                "Client connections admitted, by listener (tcp://ADDR, unix://PATH)",
            ),
            &["listener"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(leader_changes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(leader.clone()),
            Box::new(state.clone()),
            Box::new(requests.clone()),
            Box::new(held.clone()),
            Box::new(hold_seconds.clone()),
            Box::new(retries.clone()),
            Box::new(abandoned.clone()),
            Box::new(upstream_dials.clone()),
            Box::new(store_errors.clone()),
            Box::new(rejected_values.clone()),
            Box::new(leader_disagreements.clone()),
            Box::new(l4_connections.clone()),
            Box::new(l4_open.clone()),
            Box::new(l4_bytes.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(reloads.clone()),
            Box::new(config_reload_success.clone()),
            Box::new(config_reload_timestamp.clone()),
            Box::new(dropped_log_lines.clone()),
            Box::new(client_connections.clone()),
            Box::new(client_connections_refused.clone()),
            Box::new(accepted_connections.clone()),
            Box::new(policy_denials.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            registry,
            leader_changes,
            leader,
            state,
            requests,
            held,
            hold_seconds,
            retries,
            abandoned,
            upstream_dials,
            store_errors,
            rejected_values,
            leader_disagreements,
            l4_connections,
            l4_open,
            l4_bytes,
            tls_handshake_failures,
            reloads,
            config_reload_success,
            config_reload_timestamp,
            dropped_log_lines,
            dropped_log_source: None,
            client_connections,
            client_connections_refused,
            accepted_connections,
            policy_denials,
        }
    }

    /// Records a load of the settings (the start, or a SIGHUP): whether it was applied whole,
    /// and if so when.
    pub fn config_loaded(&self, ok: bool) {
        self.config_reload_success.set(i64::from(ok));
        if ok {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            self.config_reload_timestamp.set(now.as_secs_f64());
        }
    }

    /// Makes `leader_proxy_log_lines_dropped_total` show what `read` counts (the log
    /// writer's own counter, which lives outside the registry).
    pub fn count_dropped_log_lines(&mut self, read: Box<dyn Fn() -> u64 + Send + Sync>) {
        self.dropped_log_source = Some(read);
    }

    /// Moves the `leader` gauge from the `old` address to the `new` one.
    pub fn set_leader(&self, old: Option<&str>, new: Option<&str>) {
        if let Some(old) = old {
            // Ignored error: the series may not exist (first leader).
            let _ = self.leader.remove_label_values(&[old]);
        }
        if let Some(new) = new {
            self.leader.with_label_values(&[new]).set(1);
        }
    }

    /// Sets the `state` gauge to 1 for `current` and 0 for the other names in `all`.
    pub fn set_state(&self, current: &str, all: &[&str]) {
        for state in all {
            self.state
                .with_label_values(&[state])
                .set(i64::from(*state == current));
        }
    }

    /// The registry in Prometheus' text format.
    pub fn render(&self) -> String {
        if let Some(read) = &self.dropped_log_source {
            let seen = self.dropped_log_lines.get();
            self.dropped_log_lines.inc_by(read().saturating_sub(seen));
        }
        let mut out = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which `new` rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
