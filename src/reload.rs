//! SIGHUP (docs/cli.md#signals): the settings are read again from the same sources as at
//! start (the same command line, the environment, the `--config` file, which may have
//! changed; flags still beat the file), and each reloadable [`Part`] of the process is
//! given them. Settings that only a restart can change ([`restart_only_changes`]) are
//! logged and ignored. Settings that do not load change nothing.
//!
//! Each reload is recorded as Prometheus records its own:
//! `leader_proxy_config_reload_success` (1 or 0) and
//! `leader_proxy_config_reload_timestamp_seconds` (the last successful one; the start
//! counts).
//!
//! A new reloadable setting is one more [`Part`] (the server adds them in `server::run`),
//! and it leaves the list in [`restart_only_changes`], which names every field of
//! [`Settings`] (the compiler checks it).

use std::sync::Arc;

use tracing::{info, warn};

use crate::config::{ConfigError, Settings};
use crate::metrics::Metrics;

/// Reads the settings again, as at start. The binary gives it (it holds the command line).
pub type LoadSettings = Box<dyn Fn() -> Result<Settings, ConfigError> + Send + Sync>;

/// Applies the settings read again to one part; an error keeps the part as it was.
pub type Apply = Box<dyn Fn(&Settings) -> Result<(), String> + Send + Sync>;

/// One part of the process that SIGHUP updates from the settings read again.
pub struct Part {
    /// For the log: `hold`, `certificates`, `log level`, …
    pub name: &'static str,
    /// Applies the settings. An error keeps this part as it was (and is logged); the other
    /// parts are applied all the same.
    pub apply: Apply,
}

impl Part {
    pub fn new(
        name: &'static str,
        apply: impl Fn(&Settings) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name,
            apply: Box::new(apply),
        }
    }
}

/// What SIGHUP does: the settings running, how to read them again, the parts to update.
pub struct Reload {
    running: Settings,
    load: Option<LoadSettings>,
    parts: Vec<Part>,
    metrics: Arc<Metrics>,
}

impl Reload {
    /// Without `load`, SIGHUP gives the parts the settings running (certificate files are
    /// read again all the same). Records the start as a successful load.
    pub fn new(running: Settings, load: Option<LoadSettings>, metrics: Arc<Metrics>) -> Self {
        metrics.config_loaded(true);
        Self {
            running,
            load,
            parts: Vec::new(),
            metrics,
        }
    }

    pub fn add(&mut self, part: Part) {
        self.parts.push(part);
    }

    /// One SIGHUP. Returns whether everything was applied.
    pub fn run(&self) -> bool {
        let fresh = match &self.load {
            Some(load) => match load() {
                Ok(fresh) => fresh,
                Err(e) => {
                    self.metrics.config_loaded(false);
                    warn!("SIGHUP: refused, the settings do not load; nothing changed: {e}");
                    return false;
                }
            },
            None => self.running.clone(),
        };
        for flag in restart_only_changes(&self.running, &fresh) {
            warn!("SIGHUP: {flag} changed: it needs a restart; ignored until then");
        }
        let mut failed = Vec::new();
        for part in &self.parts {
            if let Err(e) = (part.apply)(&fresh) {
                warn!("SIGHUP: {}: {e}; it stays as it was", part.name);
                failed.push(part.name);
            }
        }
        let ok = failed.is_empty();
        self.metrics.config_loaded(ok);
        let applied = format!(
            "hold-timeout {}, max-held {}, on-leader-change {:?}, drain-timeout {}, log-level {}",
            humantime::format_duration(fresh.hold_timeout),
            fresh.max_held,
            fresh.on_leader_change,
            humantime::format_duration(fresh.drain_timeout),
            fresh.log_level,
        );
        if ok {
            info!("SIGHUP: reloaded: {applied}");
        } else {
            warn!("SIGHUP: reloaded but for {}: {applied}", failed.join(", "));
        }
        ok
    }
}

/// The settings that differ between `running` and `fresh` and that SIGHUP does not apply,
/// by the name of their flag. Every field of [`Settings`] is named below, so a new one
/// must be sorted into reloadable or not before this compiles.
pub fn restart_only_changes(running: &Settings, fresh: &Settings) -> Vec<&'static str> {
    let Settings {
        discovery,
        listen,
        socket_mode,
        socket_group,
        mode,
        max_connections,
        proxy_protocol_from,
        leader_key,
        election,
        // Reloaded (a part each): hold, leader-change policy, log level, access policies.
        listen_policy: _,
        hold_timeout: _,
        max_held: _,
        on_leader_change: _,
        drain_timeout: _,
        log_level: _,
        connect_timeout,
        probe_interval,
        allow_leader,
        verify_leader,
        shutdown_grace,
        discovery_opts,
        admin,
        insecure_bind,
        log_format,
        // The certificate files are read again from these paths; other paths, or TLS
        // turned on or off, need a restart.
        tls,
        upstream_cert_path,
        upgrade_socket,
        // Only read at start.
        upgrade: _,
    } = fresh;
    let mut changed = Vec::new();
    let mut check = |flag: &'static str, same: bool| {
        if !same {
            changed.push(flag);
        }
    };
    check("DISCOVERY", *discovery == running.discovery);
    check("--listen", *listen == running.listen);
    check("--socket-mode", *socket_mode == running.socket_mode);
    check("--socket-group", *socket_group == running.socket_group);
    check("--mode", *mode == running.mode);
    check(
        "--max-connections",
        *max_connections == running.max_connections,
    );
    check(
        "--proxy-protocol-from",
        *proxy_protocol_from == running.proxy_protocol_from,
    );
    check("--leader-key", *leader_key == running.leader_key);
    check("--election", *election == running.election);
    check(
        "--connect-timeout",
        *connect_timeout == running.connect_timeout,
    );
    check(
        "--probe-interval",
        *probe_interval == running.probe_interval,
    );
    check("--allow-leader", *allow_leader == running.allow_leader);
    check("--verify-leader", *verify_leader == running.verify_leader);
    check(
        "--shutdown-grace",
        *shutdown_grace == running.shutdown_grace,
    );
    check("--discovery-opt", *discovery_opts == running.discovery_opts);
    check("--admin", *admin == running.admin);
    check("--insecure-bind", *insecure_bind == running.insecure_bind);
    check("--log-format", *log_format == running.log_format);
    check(
        "--tlscert, --tlskey, --tlscacert or --tlsverify",
        *tls == running.tls,
    );
    check(
        "--upstream-cert-path",
        *upstream_cert_path == running.upstream_cert_path,
    );
    check(
        "--upgrade-socket",
        *upgrade_socket == running.upgrade_socket,
    );
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{load, URL};

    #[test]
    fn reloadable_settings_are_not_restart_only_and_the_others_are_named() {
        let running = load(&[URL]).unwrap();
        let reloadable = load(&[
            "--hold-timeout",
            "1s",
            "--max-held",
            "3",
            "--on-leader-change",
            "close",
            "--drain-timeout",
            "1s",
            "--log-level",
            "debug",
            URL,
        ])
        .unwrap();
        assert!(restart_only_changes(&running, &reloadable).is_empty());
        let restart = load(&["--listen", "127.0.0.1:1", "--mode", "tcp", URL]).unwrap();
        assert_eq!(
            restart_only_changes(&running, &restart),
            ["--listen", "--mode"]
        );
        let other = load(&["etcd://127.0.0.1:1/other"]).unwrap();
        assert_eq!(restart_only_changes(&running, &other), ["DISCOVERY"]);
    }
}
