//! Composes the services of one leader-proxy process and runs them until SIGTERM/SIGINT:
//! the leader source feeding the router, the client listeners (`--mode http`: the front,
//! with client TLS on TCP listeners when configured; `--mode tcp`: the L4 relay), the admin
//! listener, the upgrade socket. SIGHUP reloads what [`crate::reload`] lists (the parts are
//! added here, the access policies among them, the log level by the binary); `--upgrade`
//! takes the listening sockets over from a running process ([`crate::upgrade`]).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use pingora_core::server::configuration::ServerConf;
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::Admin;
use crate::config::{ConfigError, ListenAddr, Mode, Policies, Settings};
use crate::discovery::verify::Verified;
use crate::discovery::{source_for, LeaderSource, SourceError};
use crate::limits;
use crate::metrics::Metrics;
use crate::policy::ListenerPolicy;
use crate::proxy::cap::ConnectionCap;
use crate::proxy::drain::Drain;
use crate::proxy::front::Front;
use crate::proxy::hijack::HijackRelay;
use crate::proxy::hold::Hold;
use crate::proxy::http::DockerApi;
use crate::proxy::listener::{
    bind_socket_file, bind_tcp, bind_unix, serve_tcp, serve_unix, Clients, Service,
};
use crate::proxy::proxy_protocol::TrustedProxies;
use crate::proxy::tcp::L4Proxy;
use crate::reload::{LoadSettings, Part, Reload};
use crate::router::Router;
use crate::tls::{ServerTls, UpstreamTls, UPSTREAM_CA};
use crate::upgrade;

/// What the binary adds to the process it runs: how SIGHUP reads the settings again (it
/// holds the command line), its part of SIGHUP (the log filter lives there; called on the
/// runtime, it must not block for long) and the count of log lines its writer dropped (for
/// `/metrics`).
#[derive(Default)]
pub struct Hooks {
    pub load_settings: Option<LoadSettings>,
    pub log_level: Option<Part>,
    pub dropped_log_lines: Option<Box<dyn Fn() -> u64 + Send + Sync>>,
}

/// Everything one process runs, loaded and checked once by [`build`]: the settings, the
/// leader source, and the certificates (each file read here, and only here).
pub struct Start {
    settings: Settings,
    source: Box<dyn LeaderSource>,
    server_tls: Option<Arc<ServerTls>>,
    /// `--upstream-cert-path`: one instance for the proxy and the `swarm://`/`static://`
    /// probes, so one SIGHUP reloads it for both.
    upstream_tls: Option<Arc<UpstreamTls>>,
    /// The listeners' access policies; SIGHUP reloads them (a `reload::Part`).
    policies: Arc<Policies>,
}

/// Why the process cannot start. Each is a setting that cannot work, so the binary exits 2
/// (docs/cli.md#exit-codes) before anything listens.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A certificate file that cannot be read or does not fit, named like a bad flag value.
    #[error(transparent)]
    Setting(#[from] ConfigError),
    /// A store option that cannot work (a TLS file missing, an unknown `kv.*` key).
    #[error(transparent)]
    Source(#[from] SourceError),
}

impl Start {
    /// The leader source alone, for `leader-proxy leader`, which reads the election once
    /// (src/commands/leader.rs) and serves nothing.
    pub fn into_source(self) -> Box<dyn LeaderSource> {
        self.source
    }
}

/// Loads every file the settings name and builds the leader source. Must run inside the
/// tokio runtime (the store clients are built here, not yet connected).
pub fn build(settings: Settings) -> Result<Start, StartError> {
    let upstream_tls = match &settings.upstream_cert_path {
        Some(dir) => Some(Arc::new(
            UpstreamTls::load(dir).map_err(crate::config::tls_error)?,
        )),
        None => None,
    };
    let server_tls = match &settings.tls {
        Some(files) => Some(Arc::new(
            ServerTls::load(files).map_err(crate::config::tls_error)?,
        )),
        None => None,
    };
    let config = settings.source_config(upstream_tls.clone());
    let mut source = source_for(config.clone())?;
    if settings.verify_leader {
        source = Box::new(Verified::new(source, &config)?);
    }
    let policies = Arc::new(Policies::build(&settings)?);
    Ok(Start {
        settings,
        source,
        server_tls,
        upstream_tls,
        policies,
    })
}

/// Runs what [`build`] prepared until SIGTERM or SIGINT, or until a new process took the
/// listening sockets over (`--upgrade`), reloading on SIGHUP.
pub async fn run(start: Start, hooks: Hooks) -> anyhow::Result<()> {
    let Start {
        settings,
        source,
        server_tls,
        upstream_tls,
        policies,
    } = start;
    // Before anything listens: SIGHUP's default action would end the process.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let max_connections = max_connections(settings.max_connections);
    let mut metrics = Metrics::new();
    if let Some(read) = hooks.dropped_log_lines {
        metrics.count_dropped_log_lines(read);
    }
    let metrics = Arc::new(metrics);
    tokio::spawn(crate::trim::run(metrics.client_connections.clone()));
    let router = Arc::new(
        Router::new(settings.discovery.scheme(), metrics.clone())
            .allowing(settings.allow_leader.clone()),
    );

    // The router follows the source once the listeners are bound (below), so that it can
    // refuse a leader that is the proxy itself.
    let (events_tx, events_rx) = mpsc::channel(64);
    tokio::spawn(source.run(events_tx));

    let hold = Arc::new(Hold::new(
        router.clone(),
        metrics.clone(),
        settings.hold_timeout,
        settings.max_held,
    ));
    let drain = Arc::new(Drain::new(
        router.clone(),
        settings.on_leader_change,
        settings.drain_timeout,
    ));
    // Checked when the settings were resolved; read again here (a file may have changed).
    if let Some(files) = &settings.tls {
        if !settings
            .listen
            .iter()
            .any(|l| matches!(l, ListenAddr::Tcp(_)))
        {
            warn!("--tlscert is given but no TCP --listen: unix sockets do not use TLS");
        }
        if files.ca.is_some() && !files.verify {
            warn!(
                "--tlscacert is given without --tlsverify: no client certificate is asked \
                 for (as with dockerd); add --tlsverify to require one"
            );
        }
    }
    let mut reload = Reload::new(settings.clone(), hooks.load_settings, metrics.clone());
    reload.add(Part::new("hold", {
        let hold = hold.clone();
        move |s| {
            hold.set_limits(s.hold_timeout, s.max_held);
            Ok(())
        }
    }));
    reload.add(Part::new("leader-change policy", {
        let drain = drain.clone();
        move |s| {
            drain.set(s.on_leader_change, s.drain_timeout);
            Ok(())
        }
    }));
    reload.add(certificates(
        server_tls.clone(),
        upstream_tls.clone(),
        metrics.clone(),
    ));
    if let Some(log_level) = hooks.log_level {
        reload.add(log_level);
    }
    reload.add(Part::new("access policies", {
        let policies = policies.clone();
        move |s| {
            if policies.reload(s).map_err(|e| e.to_string())? {
                info!("SIGHUP: access policies reloaded");
            } else {
                warn!(
                    "SIGHUP: access policies kept: the listeners changed (a restart applies both)"
                );
            }
            Ok(())
        }
    }));
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            reload.run();
        }
    });

    let admin = Arc::new(Admin::new(router.clone(), metrics.clone(), hold.clone()));
    let service = match settings.mode {
        Mode::Http => Service::Http {
            front: Arc::new(Front::new(
                pingora_proxy::http_proxy(
                    &Arc::new(pingora_conf(&settings)),
                    DockerApi::new(
                        hold.clone(),
                        metrics.clone(),
                        settings.connect_timeout,
                        upstream_tls.clone(),
                    ),
                ),
                HijackRelay::new(
                    hold,
                    metrics.clone(),
                    settings.connect_timeout,
                    drain.clone(),
                    upstream_tls.clone(),
                ),
                drain,
                metrics.clone(),
            )),
            tls: server_tls,
            metrics: metrics.clone(),
            policy: ListenerPolicy::open(),
        },
        Mode::Tcp => Service::Tcp(Arc::new(L4Proxy::new(
            hold,
            metrics.clone(),
            settings.connect_timeout,
            drain,
        ))),
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // The admin listener serves on through a SIGTERM's grace (`/readyz` says 503 to the
    // load balancers); it stops accepting only when a new process took it over.
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let connections = TaskTracker::new();
    let handed_over = Arc::new(AtomicBool::new(false));
    let clients = Clients {
        service,
        cap: Arc::new(ConnectionCap::new(max_connections, &metrics)),
        proxies: Arc::new(TrustedProxies::new(settings.proxy_protocol_from.clone())),
        connections: connections.clone(),
        metrics: metrics.clone(),
        handed_over: handed_over.clone(),
    };
    if !clients.proxies.is_empty() {
        info!(
            "PROXY protocol required from {} (--proxy-protocol-from)",
            settings
                .proxy_protocol_from
                .iter()
                .map(|range| range.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    // With --upgrade every listening socket comes from the running process, by name;
    // otherwise each is bound here. Either way each is logged `Listening on ADDR`.
    let mut taken = match (&settings.upgrade_socket, settings.upgrade) {
        (Some(path), true) => Some(upgrade::take_over(path, &socket_names(&settings)).await?),
        _ => None,
    };
    // With --upgrade-socket, copies of every listening socket for a later upgrade to hand
    // over. Only then: a copy keeps its socket open after the listener closes.
    let mut handover = Handover(settings.upgrade_socket.as_ref().map(|_| Vec::new()));
    let mut listeners = Vec::new();
    let mut own = Vec::new();
    for (index, listen) in settings.listen.iter().enumerate() {
        let name = format!("listen {listen}");
        let mut clients = clients.clone();
        if let Service::Http { policy, .. } = &mut clients.service {
            *policy = policies.set().listener(index);
        }
        match listen {
            ListenAddr::Tcp(addr) => {
                let listener = match &mut taken {
                    Some(taken) => {
                        let listener = taken.tcp(&name, *addr)?;
                        info!("Listening on {addr}");
                        listener
                    }
                    None => bind_tcp(*addr)
                        .await
                        .with_context(|| format!("--listen {addr}"))?,
                };
                let bound = listener.local_addr().unwrap_or(*addr);
                own.push(bound);
                handover.keep(
                    format!("listen {}", ListenAddr::Tcp(bound)),
                    listener.as_fd(),
                )?;
                listeners.push(tokio::spawn(serve_tcp(
                    listener,
                    clients.clone(),
                    shutdown_rx.clone(),
                )));
            }
            ListenAddr::Unix(path) => {
                // Bound here, served (and its file removed at the end) by `serve_unix`; if
                // a later listener fails, dropping it removes the file again.
                let socket = match &mut taken {
                    Some(taken) => {
                        let socket = taken.unix(&name, path)?;
                        info!("Listening on {listen}");
                        socket
                    }
                    None => bind_unix(path, settings.socket_mode, settings.socket_group)
                        .with_context(|| format!("--listen {listen}"))?,
                };
                handover.keep(name, socket.listener().as_fd())?;
                listeners.push(tokio::spawn(serve_unix(
                    socket,
                    clients.clone(),
                    shutdown_rx.clone(),
                )));
            }
        }
    }

    router.set_own_listeners(own);
    tokio::spawn({
        let router = router.clone();
        async move { router.follow(events_rx).await }
    });

    if let Some(addr) = settings.admin {
        let listener = match &mut taken {
            Some(taken) => {
                let listener = taken.tcp(&format!("admin {addr}"), addr)?;
                info!("Admin listening on {addr}");
                listener
            }
            None => Admin::bind(addr)
                .await
                .with_context(|| format!("--admin {addr}"))?,
        };
        let bound = listener.local_addr().unwrap_or(addr);
        handover.keep(format!("admin {bound}"), listener.as_fd())?;
        tokio::spawn(admin.clone().serve(listener, admin_stop_rx.clone()));
    }

    let upgrades = match &settings.upgrade_socket {
        Some(path) => {
            let name = format!("upgrade-socket {}", path.display());
            let mut socket = match &mut taken {
                Some(taken) => taken.unix(&name, path)?,
                // Whoever connects gets every listening socket: the owner only.
                None => bind_socket_file(path, 0o600, None)
                    .with_context(|| format!("--upgrade-socket {}", path.display()))?,
            };
            info!(
                "Upgrades on unix://{} (--upgrade-socket): a new process started with \
                 --upgrade takes the listening sockets over",
                path.display()
            );
            handover.keep(name, socket.listener().as_fd())?;
            // Every socket is taken: nothing can fail the upgrade any more, and a stop
            // removes the file as after a bind.
            socket.claim_file();
            Some(tokio::spawn(upgrade::serve(
                socket,
                handover.0.unwrap_or_default(),
            )))
        }
        None => None,
    };
    if let Some(taken) = taken {
        taken.finish().ready().await;
    }

    let abort_upgrades = upgrades.as_ref().map(|task| task.abort_handle());
    // Completes when a new process took the sockets over (the task ended on its own).
    let handed = async {
        match upgrades {
            Some(upgrades) => {
                if let Err(e) = upgrades.await {
                    warn!("--upgrade-socket: serving upgrades failed: {e}; no upgrades");
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        signal = stop_signal() => {
            info!(
                "{} received: no new connections; letting running requests finish (up to {:?})",
                signal?,
                settings.shutdown_grace
            );
            // Load balancers move traffic away while running requests finish.
            admin.begin_shutdown();
            // No upgrade from a stopping process; and the copies of the listening sockets
            // kept for one must close with the listeners, or new clients would wait in a
            // backlog nobody accepts from instead of being refused.
            if let Some(upgrades) = abort_upgrades {
                upgrades.abort();
            }
        }
        () = handed => {
            // The new process serves every socket now, /readyz included: this one stays
            // ready for the connections it still has, and leaves the unix socket files.
            handed_over.store(true, Ordering::Release);
            let _ = admin_stop_tx.send(true);
            info!(
                "handed over to the new process: no new connections here; letting running \
                 requests finish (up to {:?})",
                settings.shutdown_grace
            );
        }
    }
    let _ = shutdown_tx.send(true);
    for listener in listeners {
        let _ = listener.await;
    }
    connections.close();
    if tokio::time::timeout(settings.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        warn!(
            open = connections.len(),
            "--shutdown-grace elapsed; closing the connections still open"
        );
    }
    info!("stopped");
    Ok(())
}

/// Copies of the listening sockets, by name, for `upgrade::serve`; `None` without
/// `--upgrade-socket`, where none is made.
struct Handover(Option<Vec<(String, OwnedFd)>>);

impl Handover {
    fn keep(&mut self, name: String, socket: BorrowedFd<'_>) -> std::io::Result<()> {
        if let Some(sockets) = &mut self.0 {
            sockets.push((name, socket.try_clone_to_owned()?));
        }
        Ok(())
    }
}

/// The names of the listening sockets `settings` ask for, as [`upgrade`] hands them over.
fn socket_names(settings: &Settings) -> Vec<String> {
    let listen = settings.listen.iter().map(|l| format!("listen {l}"));
    let admin = settings.admin.iter().map(|a| format!("admin {a}"));
    let upgrade =
        (settings.upgrade_socket.iter()).map(|p| format!("upgrade-socket {}", p.display()));
    listen.chain(admin).chain(upgrade).collect()
}

/// Raises the open-files limit (as Go programs do, see [`crate::limits`]) and returns the
/// client-connection cap: `--max-connections`, or what the limit leaves. Both are logged.
fn max_connections(flag: Option<usize>) -> usize {
    let soft = match limits::raise_open_files() {
        Ok(files) => {
            if files.soft > files.before {
                info!(
                    "open-files limit raised from {} to {} (the hard limit)",
                    files.before, files.soft
                );
            } else {
                info!("open-files limit {} (the hard limit)", files.soft);
            }
            files.soft
        }
        Err(e) => {
            warn!("{e}; assuming the usual {}", limits::USUAL_SOFT_LIMIT);
            limits::USUAL_SOFT_LIMIT
        }
    };
    let derived = limits::default_max_connections(soft);
    match flag {
        Some(max) => {
            if max > derived {
                warn!(
                    "--max-connections {max} is more than the open-files limit {soft} leaves \
                     ({derived}); past that, new connections fail to be accepted"
                );
            }
            info!("at most {max} client connections at once (--max-connections)");
            max
        }
        None => {
            info!(
                "at most {derived} client connections at once (--max-connections, from the \
                 open-files limit {soft})"
            );
            derived
        }
    }
}

/// SIGHUP's certificates part: the files are read again from the paths given at start
/// (open connections keep the certificates they were made with; a file that cannot be used
/// keeps the old certificates, logged and counted).
fn certificates(
    server_tls: Option<Arc<ServerTls>>,
    upstream_tls: Option<Arc<UpstreamTls>>,
    metrics: Arc<Metrics>,
) -> Part {
    Part::new("certificates", move |_| {
        let results = [
            server_tls.as_ref().map(|tls| tls.reload()),
            upstream_tls.as_ref().map(|tls| tls.reload()),
        ];
        let mut errors = Vec::new();
        let mut reloaded = false;
        for result in results.into_iter().flatten() {
            reloaded = true;
            if let Err(e) = result {
                warn!("SIGHUP: {e}; keeping the certificates in use");
                errors.push(e.to_string());
            }
        }
        if reloaded {
            let result = if errors.is_empty() { "ok" } else { "error" };
            metrics.reloads.with_label_values(&[result]).inc();
        }
        if errors.is_empty() {
            if reloaded {
                info!("SIGHUP: certificates reloaded");
            }
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    })
}

/// pingora's settings for the L7 path. Retries are bounded by leader-proxy's own hold
/// deadline and retry rules, not by a count, so pingora's count is effectively unlimited.
/// With `--upstream-cert-path`, its `ca.pem` is also the root store of pingora's connector
/// (each peer carries it anyway), so the system's roots are never read or trusted.
fn pingora_conf(settings: &Settings) -> ServerConf {
    ServerConf {
        max_retries: usize::MAX,
        ca_file: settings
            .upstream_cert_path
            .as_ref()
            .map(|dir| dir.join(UPSTREAM_CA).display().to_string()),
        ..ServerConf::default()
    }
}

async fn stop_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{load, URL};
    use crate::tls::test_files::Files;

    /// What the binary prints for `args`: the settings load, the start-up does not.
    fn start_error(args: &[&str]) -> String {
        let settings = load(args).expect("the settings themselves are valid");
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let _inside = runtime.enter();
        match build(settings) {
            Ok(_) => panic!("{args:?} started"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_certificate_file_is_read_and_a_bad_one_named_like_its_flag() {
        let f = Files::new();
        let (cert, key) = (f.str("server.pem"), f.str("server-key.pem"));
        let missing = f.str("missing.pem");
        let e = start_error(&["--tlscert", &missing, "--tlskey", &key, URL]);
        assert!(
            e.starts_with(&format!(
                "invalid value {missing:?} for --tlscert (also LEADER_PROXY_TLSCERT / tlscert): \
                 cannot read it"
            )),
            "{e}"
        );
        let e = start_error(&["--tlscert", &cert, "--tlskey", &f.str("key.pem"), URL]);
        assert!(
            e.contains("for --tlskey") && e.contains("does not go with"),
            "{e}"
        );
        let e = start_error(&[
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
            "--tlsverify",
            "--tlscacert",
            &key,
            URL,
        ]);
        assert!(
            e.contains("for --tlscacert") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = start_error(&["--tlscert", &key, "--tlskey", &key, URL]);
        assert!(
            e.contains("for --tlscert") && e.contains("no PEM certificate"),
            "{e}"
        );

        let e = start_error(&["--upstream-cert-path", &missing, URL]);
        assert!(
            e.contains("for --upstream-cert-path") && e.contains("not a directory"),
            "{e}"
        );
        let dir = f.dir.path().display().to_string();
        std::fs::write(f.path("ca.pem"), "not a certificate").expect("write ca.pem");
        let e = start_error(&["--upstream-cert-path", &dir, URL]);
        assert!(
            e.contains("ca.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
    }

    #[test]
    fn good_files_and_a_source_make_a_start() {
        let f = Files::new();
        let (cert, key) = (f.str("server.pem"), f.str("server-key.pem"));
        let dir = f.dir.path().display().to_string();
        let settings = load(&[
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
            "--upstream-cert-path",
            &dir,
            URL,
        ])
        .expect("settings");
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let _inside = runtime.enter();
        let start = build(settings).expect("a start");
        assert!(start.server_tls.is_some() && start.upstream_tls.is_some());
    }
}
