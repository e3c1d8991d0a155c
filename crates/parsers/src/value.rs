//! Parsing a leader value (what a store or a manager says the primary's address is).
//!
//! Stores hold whatever the managers wrote, and a bad value must never replace a good
//! leader, so parsing is strict: `host:port`, `tcp://host:port`, `http://host:port`,
//! `https://host:port` or `[v6]:port`, nothing more (no path, no user info, port required).

use std::fmt;

/// Where the primary's Docker API listens, as the election named it.
///
/// The host is kept as written (a name or an IP literal without brackets); it is resolved
/// when the router adopts it, not on the request path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaderAddr {
    host: String,
    port: u16,
}

/// Why a leader value was rejected.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValueError {
    #[error("empty leader value")]
    Empty,
    #[error("unsupported scheme {0:?} (expected tcp://, http:// or https://)")]
    Scheme(String),
    #[error("missing port")]
    MissingPort,
    #[error("invalid port {0:?}")]
    Port(String),
    #[error("invalid host {0:?}")]
    Host(String),
    #[error("unexpected path, query or user info")]
    Extra,
    /// A manager asked directly (`swarm://`, `static://`) gave an answer that names no leader
    /// in the form Docker uses (not JSON, a missing field, two leaders): the text says what.
    #[error("{0}")]
    Answer(String),
}

impl LeaderAddr {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Parses a value as a store holds it. Surrounding whitespace (a trailing newline
    /// written by `etcdctl` or a shell) is tolerated; anything else odd is an error.
    pub fn parse(value: &str) -> Result<Self, ValueError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(ValueError::Empty);
        }
        let rest = match value.split_once("://") {
            Some((scheme, rest)) => {
                if !matches!(
                    scheme.to_ascii_lowercase().as_str(),
                    "tcp" | "http" | "https"
                ) {
                    return Err(ValueError::Scheme(scheme.to_string()));
                }
                // A trailing slash is what `http://h:p/` users paste; anything past it is not.
                rest.strip_suffix('/').unwrap_or(rest)
            }
            None => value,
        };
        if rest.contains(['/', '?', '#', '@']) || rest.chars().any(char::is_whitespace) {
            return Err(ValueError::Extra);
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| ValueError::Host(rest.to_string()))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(ValueError::Host(host.to_string()));
            }
            let port = after.strip_prefix(':').ok_or(ValueError::MissingPort)?;
            (host, port)
        } else {
            let (host, port) = rest.rsplit_once(':').ok_or(ValueError::MissingPort)?;
            if host.contains(':') {
                // An IPv6 literal must be bracketed, or the port is ambiguous.
                return Err(ValueError::Host(host.to_string()));
            }
            if !valid_hostname(host) {
                return Err(ValueError::Host(host.to_string()));
            }
            (host, port)
        };
        let port: u16 = match port.parse() {
            Ok(0) | Err(_) => return Err(ValueError::Port(port.to_string())),
            Ok(p) => p,
        };
        Ok(Self::new(host, port))
    }
}

/// A DNS name or an IPv4 literal: letters, digits, `-`, `_` and dots, no empty label.
fn valid_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl fmt::Display for LeaderAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        for (input, want) in [
            ("10.0.0.1:2375", "10.0.0.1:2375"),
            ("tcp://manager-1:2375", "manager-1:2375"),
            ("http://127.0.0.1:4000/", "127.0.0.1:4000"),
            ("HTTPS://m.example.org:2376", "m.example.org:2376"),
            ("[::1]:2375", "[::1]:2375"),
            ("tcp://[fd00::2]:2375", "[fd00::2]:2375"),
            (" 127.0.0.1:2375\n", "127.0.0.1:2375"),
        ] {
            assert_eq!(
                LeaderAddr::parse(input).unwrap().to_string(),
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_garbage() {
        for input in [
            "",
            "   ",
            "garbage",
            "127.0.0.1",
            "127.0.0.1:",
            "127.0.0.1:0",
            "127.0.0.1:99999",
            "udp://127.0.0.1:2375",
            "http://127.0.0.1:2375/path",
            "http://user@127.0.0.1:2375",
            "::1:2375",
            "[not-v6]:2375",
            "host name:2375",
            "a..b:2375",
            "{\"json\":true}",
        ] {
            assert!(LeaderAddr::parse(input).is_err(), "{input:?} was accepted");
        }
    }
}
