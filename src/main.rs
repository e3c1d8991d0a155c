//! The `leader-proxy` binary: runs `status` or `leader` when the first argument names one
//! (src/commands/), else the proxy: reads the settings, sets up logging and the runtime, builds
//! the process with [`server::build`] (every file read once) and runs it with
//! [`server::run`]. Everything else lives in the library; this file only wires.

use leader_proxy::commands::{self, Command};
use leader_proxy::config::{self, LogFormat, Settings};
use leader_proxy::log_writer::{FlushOnDrop, LogWriter};
use leader_proxy::reload::Part;
use leader_proxy::server::{self, Hooks};
use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    match Command::of(&args) {
        Command::Status => return commands::status::main(without_command(args)),
        Command::Leader => return commands::leader::main(without_command(args)),
        Command::Proxy => {}
    }
    let settings = match config::load_from_args(args.clone()) {
        Ok(settings) => settings,
        // Prints help/version (status 0) or the error naming the flag (status 2).
        Err(e) => e.exit(),
    };
    // Held to the end of `main`: dropping it writes out the lines still buffered.
    let (set_filter, log, _flush_log) = match init_logging(&settings) {
        Ok(logging) => logging,
        Err(e) => {
            eprintln!("leader-proxy: starting the log writer: {e}");
            return ExitCode::FAILURE;
        }
    };
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
        // SIGHUP reads the same sources as the start: this command line, the environment,
        // the --config file (which may have changed).
        load_settings: Some(Box::new(move || config::load_from_args(args.clone()))),
        log_level: Some(log_level_reload(set_filter)),
        dropped_log_lines: Some(Box::new(move || log.dropped_lines())),
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

/// The program name and what follows the command's name, as the command parses it.
fn without_command(mut args: Vec<OsString>) -> Vec<OsString> {
    args.remove(1);
    args
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

/// Logs go to stderr through [`LogWriter`]: off the request path, written in batches, and
/// what a stalled stderr cannot take is counted, never silently dropped.
fn init_logging(settings: &Settings) -> std::io::Result<(SetFilter, LogWriter, FlushOnDrop)> {
    let (writer, flush) = LogWriter::start(std::io::stderr())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(settings))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer.clone());
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
    Ok((set_filter, writer, flush))
}

/// SIGHUP's part of the binary: the log level of the settings read again.
fn log_level_reload(set_filter: SetFilter) -> Part {
    Part::new("log level", move |settings| {
        set_filter(filter(settings)).map_err(|e| format!("cannot change the log level: {e}"))?;
        tracing::info!("SIGHUP: log level {}", settings.log_level);
        Ok(())
    })
}
