//! The parsers of leader-proxy that read what others wrote: a client's request head
//! ([`head`]), a store's leader value ([`value`]), the DISCOVERY URL ([`url`]) and the
//! configuration's flags, environment and `--config` file ([`config`]).
//!
//! They are pure (bytes or text in, a value or an error out) and live in their own crate
//! so that the fuzz targets in `fuzz/` build them without pingora or any store client.
//! The `leader-proxy` crate re-exports each at its old path (`proxy::head`,
//! `discovery::value`, `discovery::url`, `config::cli`); see docs/architecture.md.

pub mod config;
pub mod head;
pub mod url;
pub mod value;
