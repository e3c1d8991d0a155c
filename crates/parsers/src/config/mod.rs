//! The text layers of the configuration: [`cli::Cli`] (the options as text, which the
//! flags are parsed into and the `--config` file is deserialised into), the environment
//! layer, the file's TOML, `--discovery-opt` entries, [`ConfigError`] and [`Secret`].
//! Turning them into typed settings is the `leader-proxy` crate's `config` module.

pub mod cli;
pub mod discovery_opts;
pub mod env;
pub mod error;
pub mod file;
pub mod secret;

pub use self::error::ConfigError;
pub use self::secret::Secret;
