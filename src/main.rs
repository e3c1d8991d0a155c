//! The `leader-proxy` binary: reads the settings, sets up logging and the runtime, builds
//! the process with [`server::build`] (every file read once) and runs it with
//! [`server::run`]. Everything else lives in the library; this file only wires.

use leader_proxy::config::{self, LogFormat, Settings};
use leader_proxy::server::{self, Hooks, ReloadHook};
use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// mimalloc: see the note on the dependency in Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let settings = match config::load_from_args(args.clone()) {
        Ok(settings) => settings,
        // Prints help/version (status 0) or the error naming the flag (status 2).
        Err(e) => e.exit(),
    };
    // Held to the end of `main`: dropping it writes out the lines still queued.
    let (set_filter, dropped, _log_guard) = init_logging(&settings);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("leader-proxy")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("leader-proxy: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Every file the settings name is read here, once; one that cannot work is a bad
    // setting like any other: it names the flag and exits 2 before anything listens.
    let start = {
        let _runtime = runtime.enter();
        match server::build(settings) {
            Ok(start) => start,
            Err(e) => {
                eprintln!("leader-proxy: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let hooks = Hooks {
        on_sighup: Some(log_level_reload(args, set_filter)),
        dropped_log_lines: Some(Box::new(move || dropped.dropped_lines() as u64)),
    };
    match runtime.block_on(server::run(start, hooks)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("leader-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Replaces the log filter of the running subscriber.
type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// The filter for `settings.log_level`.
fn filter(settings: &Settings) -> EnvFilter {
    // The ZooKeeper client logs every session event at info; the proxy says what matters
    // about the store itself, so its chatter is kept to warnings unless asked for.
    let mut directives = settings.log_level.clone();
    if !directives.contains("zookeeper_client") {
        directives.push_str(",zookeeper_client=warn");
    }
    EnvFilter::new(directives)
}

/// Log lines queued for the writer thread at most: a few MiB when a stalled log reader
/// fills it, and seconds of lines at the highest request rates.
const LOG_QUEUE_LINES: usize = 16 * 1024;

/// Logs go to stderr through a writer thread: a request formats its access-log line and
/// queues it, and never waits for a write(2) (issue 11: one write per request cost more
/// than the rest of the logging). The thread writes what is queued in one go through a
/// buffer. When the queue is full a line is dropped, not waited for, and counted
/// ([`ErrorCounter`], exported as `leader_proxy_log_lines_dropped_total`).
fn init_logging(settings: &Settings) -> (SetFilter, ErrorCounter, WorkerGuard) {
    let (writer, guard): (NonBlocking, WorkerGuard) = NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let dropped = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(settings))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let set_filter: SetFilter = match settings.log_format {
        LogFormat::Text => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Box::new(move |f| handle.reload(f).map_err(|e| e.to_string()))
        }
        LogFormat::Json => {
            let builder = builder.json().with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Box::new(move |f| handle.reload(f).map_err(|e| e.to_string()))
        }
    };
    (set_filter, dropped, guard)
}

/// SIGHUP's part of the binary: the settings are read again as at start (the same command
/// line, the environment, the `--config` file, which may have changed) and only their log
/// level is applied. Settings that no longer load keep the level in use.
fn log_level_reload(args: Vec<OsString>, set_filter: SetFilter) -> ReloadHook {
    Box::new(move || match config::load_from_args(args.clone()) {
        Ok(settings) => match set_filter(filter(&settings)) {
            Ok(()) => tracing::info!("SIGHUP: log level {}", settings.log_level),
            Err(e) => tracing::warn!("SIGHUP: cannot change the log level: {e}"),
        },
        Err(e) => tracing::warn!("SIGHUP: the settings do not load, the log level stays: {e}"),
    })
}
