//! The `leader-proxy` binary: reads the settings, sets up logging and the runtime, and runs
//! [`leader_proxy::server::run`]. Everything else lives in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use leader_proxy::config::{self, LogFormat, Settings};
use leader_proxy::discovery::source_for;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let settings = match config::load_from_args(std::env::args_os()) {
        Ok(settings) => settings,
        // Prints help/version (status 0) or the error naming the flag (status 2).
        Err(e) => e.exit(),
    };
    init_logging(&settings);
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
    // A store option that cannot work (a TLS file missing, an unknown kv.* key) is a bad
    // setting like any other: it names the option and exits 2 before anything listens.
    let source = {
        let _runtime = runtime.enter();
        match source_for(settings.source_config()) {
            Ok(source) => source,
            Err(e) => {
                eprintln!("leader-proxy: {e}");
                return ExitCode::from(2);
            }
        }
    };
    match runtime.block_on(leader_proxy::server::run(settings, source)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("leader-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(settings: &Settings) {
    // The ZooKeeper client logs every session event at info; the proxy says what matters
    // about the store itself, so its chatter is kept to warnings unless asked for.
    let mut directives = settings.log_level.clone();
    if !directives.contains("zookeeper_client") {
        directives.push_str(",zookeeper_client=warn");
    }
    let filter = EnvFilter::new(directives);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
