//! `--allow-leader`: the managers a leader value may name. Whoever can write the store's key
//! chooses where every client's requests (and their `X-Registry-Auth` headers) go; the
//! allow-list closes that door (README.md, "Trust model").
//!
//! An entry is a host (`manager1.example`, `10.0.0.5`: any port), a `host:port`, or a CIDR
//! block (`10.0.0.0/24`). A host entry matches the value's host text case-insensitively
//! (IP literals as addresses, so `::1` is `0:0::1`); a CIDR entry matches when every address
//! the value resolves to is inside it. An empty list allows every value.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::LeaderAddr;

/// The allowed leaders; empty = all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<AllowEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum AllowEntry {
    Host(String),
    HostPort(String, u16),
    Cidr { network: IpAddr, prefix: u8 },
}

/// An entry that is none of the three forms.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?}: expected a host, HOST:PORT or a CIDR block like 10.0.0.0/24 ({reason})")]
pub struct AllowError {
    entry: String,
    reason: String,
}

impl AllowList {
    /// Parses the entries; each may itself be a comma-separated list. Blank entries are
    /// skipped, so an empty value (`--allow-leader ""`) allows every leader.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Self, AllowError> {
        let mut entries = Vec::new();
        for value in values {
            for entry in value.as_ref().split(',').map(str::trim) {
                if !entry.is_empty() {
                    entries.push(AllowEntry::parse(entry)?);
                }
            }
        }
        Ok(Self { entries })
    }

    /// Exactly these managers (the entries of a `static://` URL).
    pub fn of(leaders: impl IntoIterator<Item = LeaderAddr>) -> Self {
        Self {
            entries: leaders
                .into_iter()
                .map(|l| AllowEntry::HostPort(l.host().to_ascii_lowercase(), l.port()))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `leader`, which resolved to `addresses`, may lead.
    pub fn allows(&self, leader: &LeaderAddr, addresses: &[IpAddr]) -> bool {
        self.is_empty() || self.entries.iter().any(|e| e.matches(leader, addresses))
    }

    /// [`AllowList::allows`] for a leader resolved to socket addresses, with the reason of a
    /// refusal as the router logs it and `leader-proxy leader` prints it.
    pub fn admit(&self, leader: &LeaderAddr, addresses: &[SocketAddr]) -> Result<(), String> {
        let ips: Vec<IpAddr> = addresses.iter().map(SocketAddr::ip).collect();
        if self.allows(leader, &ips) {
            Ok(())
        } else {
            Err(format!(
                "{leader} is not allowed by --allow-leader ({self})"
            ))
        }
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, entry) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match entry {
                AllowEntry::Host(host) => write!(f, "{host}")?,
                AllowEntry::HostPort(host, port) => write!(f, "{}", LeaderAddr::new(host, *port))?,
                AllowEntry::Cidr { network, prefix } => write!(f, "{network}/{prefix}")?,
            }
        }
        Ok(())
    }
}

impl AllowEntry {
    fn parse(entry: &str) -> Result<Self, AllowError> {
        let refuse = |reason: &str| AllowError {
            entry: entry.to_string(),
            reason: reason.to_string(),
        };
        if let Some((network, prefix)) = entry.split_once('/') {
            let network: IpAddr = network
                .parse()
                .map_err(|_| refuse("the part before / is not an IP address"))?;
            let max = if network.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| refuse(&format!("the prefix length must be 0 to {max}")))?;
            return Ok(AllowEntry::Cidr { network, prefix });
        }
        if let Ok(ip) = entry.parse::<IpAddr>() {
            return Ok(AllowEntry::Host(ip.to_string()));
        }
        match LeaderAddr::parse(entry) {
            Ok(addr) if !entry.contains("://") => Ok(AllowEntry::HostPort(
                addr.host().to_ascii_lowercase(),
                addr.port(),
            )),
            Ok(_) => Err(refuse("no scheme")),
            Err(super::ValueError::MissingPort) => {
                let valid = entry
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
                if valid {
                    Ok(AllowEntry::Host(entry.to_ascii_lowercase()))
                } else {
                    Err(refuse("not a host name"))
                }
            }
            Err(reason) => Err(refuse(&reason.to_string())),
        }
    }

    fn matches(&self, leader: &LeaderAddr, addresses: &[IpAddr]) -> bool {
        match self {
            AllowEntry::Host(host) => same_host(host, leader.host()),
            AllowEntry::HostPort(host, port) => {
                *port == leader.port() && same_host(host, leader.host())
            }
            AllowEntry::Cidr { network, prefix } => {
                !addresses.is_empty()
                    && addresses
                        .iter()
                        .all(|address| in_block(*address, *network, *prefix))
            }
        }
    }
}

fn same_host(entry: &str, host: &str) -> bool {
    match (entry.parse::<IpAddr>(), host.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => entry.eq_ignore_ascii_case(host),
    }
}

fn in_block(address: IpAddr, network: IpAddr, prefix: u8) -> bool {
    let (address, network, bits) = match (address, network) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u32::from(a).into(), u32::from(n).into(), 32),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
        (IpAddr::V6(a), IpAddr::V4(n)) => match a.to_ipv4_mapped() {
            Some(a) => (u32::from(a).into(), u32::from(n).into(), 32),
            None => return false,
        },
        (IpAddr::V4(_), IpAddr::V6(_)) => return false,
    };
    let host_bits = bits - u32::from(prefix);
    let mask = if host_bits >= 128 {
        0
    } else {
        u128::MAX << host_bits
    };
    address & mask == network & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(s: &str) -> LeaderAddr {
        LeaderAddr::parse(s).unwrap()
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn hosts_ports_and_blocks() {
        let allow = AllowList::parse(&["Manager1.example, 10.0.0.5:2375", "192.168.1.0/24"])
            .expect("valid entries");
        let none: &[IpAddr] = &[];
        assert!(allow.allows(&leader("manager1.EXAMPLE:4000"), none));
        assert!(allow.allows(&leader("10.0.0.5:2375"), none));
        assert!(!allow.allows(&leader("10.0.0.5:2376"), none));
        assert!(allow.allows(&leader("m9:2375"), &ips(&["192.168.1.7"])));
        // Every address must be inside the block.
        assert!(!allow.allows(&leader("m9:2375"), &ips(&["192.168.1.7", "192.168.2.7"])));
        assert!(!allow.allows(&leader("evil.example:2375"), &ips(&["203.0.113.9"])));
        assert!(AllowList::parse::<&str>(&[])
            .unwrap()
            .allows(&leader("x:1"), none));
        assert!(AllowList::parse(&["::1"])
            .unwrap()
            .allows(&leader("[0::1]:1"), none));
        assert!(AllowList::parse(&["0.0.0.0/0"])
            .unwrap()
            .allows(&leader("a:1"), &ips(&["8.8.8.8"])));
        assert_eq!(
            allow.to_string(),
            "manager1.example,10.0.0.5:2375,192.168.1.0/24"
        );
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in ["10.0.0.0/33", "x/8", "tcp://h:1", "a b", "h:99999", "ho$t"] {
            assert!(AllowList::parse(&[bad]).is_err(), "{bad}");
        }
    }
}
