//! The one-shot commands of the binary, beside the proxy itself (docs/cli.md, "Commands"):
//! `leader-proxy status` asks a running proxy's admin API what it follows, and
//! `leader-proxy leader` reads the election once, the way the proxy would.
//!
//! A DISCOVERY is always a URL with `://`, so a first argument `status` or `leader` cannot
//! be one: [`Command::of`] tells them apart and the proxy's own command line is untouched.

pub mod leader;
pub mod status;

use std::ffi::OsString;

/// What a command line asks the binary to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `leader-proxy [OPTIONS] DISCOVERY`: run the proxy.
    Proxy,
    /// `leader-proxy status [--admin ADDR]`.
    Status,
    /// `leader-proxy leader [OPTIONS] DISCOVERY`.
    Leader,
}

impl Command {
    /// Decided by the first argument after the program name only: once an option is given,
    /// a word is the DISCOVERY (which the proxy then refuses as it always did).
    pub fn of(args: &[OsString]) -> Command {
        match args.get(1).and_then(|arg| arg.to_str()) {
            Some("status") => Command::Status,
            Some("leader") => Command::Leader,
            _ => Command::Proxy,
        }
    }
}

/// The exit statuses of the commands (docs/cli.md, "Commands").
pub mod exit {
    /// A leader is known (`leader`), or the proxy answered (`status`).
    pub const OK: u8 = 0;
    /// The election has no usable leader (`leader`).
    pub const NO_LEADER: u8 = 1;
    /// Bad input: a flag, a variable or the `--config` file (as for the proxy).
    pub const BAD_INPUT: u8 = 2;
    /// The store (`leader`) or the admin API (`status`) cannot be reached in time.
    pub const UNREACHABLE: u8 = 3;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(args: &[&str]) -> Command {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        Command::of(&args)
    }

    #[test]
    fn only_a_first_argument_names_a_command() {
        assert_eq!(of(&["leader-proxy", "status"]), Command::Status);
        assert_eq!(
            of(&["leader-proxy", "leader", "etcd://h:1/p"]),
            Command::Leader
        );
        assert_eq!(of(&["leader-proxy", "etcd://h:1/p"]), Command::Proxy);
        assert_eq!(
            of(&["leader-proxy", "--admin", "off", "status"]),
            Command::Proxy
        );
        assert_eq!(of(&["leader-proxy"]), Command::Proxy);
    }
}
