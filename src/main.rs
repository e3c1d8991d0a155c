//! The `leader-proxy` binary: reads the settings, sets up logging and the runtime, and runs
//! [`leader_proxy::server::run`]. Everything else lives in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use leader_proxy::config::{self, LogFormat, Settings};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let settings = match config::load_from_args(std::env::args_os()) {
        Ok(settings) => settings,
        // Prints help/version (status 0) or the error naming the flag (status 2).
        Err(e) => e.exit(),
    };
    init_logging(&settings);
    match run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("leader-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(settings: Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("leader-proxy")
        .build()
        .context("starting the runtime")?;
    runtime.block_on(leader_proxy::server::run(settings))
}

fn init_logging(settings: &Settings) {
    let filter = EnvFilter::new(&settings.log_level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
