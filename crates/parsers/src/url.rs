//! The DISCOVERY argument, written the way `swarm manage` takes it
//! (`etcd://h:p[,h:p]/prefix`), and the store key it points at.

use std::fmt;

/// The stores and manager protocols leader-proxy can follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Etcd,
    EtcdV3,
    Zk,
    Consul,
    Swarm,
    Static,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Etcd => "etcd",
            Scheme::EtcdV3 => "etcdv3",
            Scheme::Zk => "zk",
            Scheme::Consul => "consul",
            Scheme::Swarm => "swarm",
            Scheme::Static => "static",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "etcd" => Scheme::Etcd,
            "etcdv3" => Scheme::EtcdV3,
            "zk" => Scheme::Zk,
            "consul" => Scheme::Consul,
            "swarm" => Scheme::Swarm,
            "static" => Scheme::Static,
            _ => return None,
        })
    }
}

/// A parsed DISCOVERY URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryUrl {
    scheme: Scheme,
    hosts: Vec<String>,
    prefix: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("expected SCHEME://HOST:PORT[,HOST:PORT]/PREFIX, got {0:?}")]
    Shape(String),
    #[error("unknown scheme {0:?} (expected etcd, etcdv3, zk, consul, swarm or static)")]
    Scheme(String),
    #[error("no host given")]
    NoHost,
    #[error("host {0:?} needs a port (HOST:PORT)")]
    Host(String),
    #[error("{0}:// takes no prefix")]
    Prefix(&'static str),
}

impl DiscoveryUrl {
    pub fn parse(input: &str) -> Result<Self, UrlError> {
        let (scheme, rest) = input
            .split_once("://")
            .ok_or_else(|| UrlError::Shape(input.to_string()))?;
        let scheme = Scheme::parse(scheme).ok_or_else(|| UrlError::Scheme(scheme.to_string()))?;
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let hosts: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        if hosts.is_empty() {
            return Err(UrlError::NoHost);
        }
        for host in &hosts {
            if crate::value::LeaderAddr::parse(host).is_err() {
                return Err(UrlError::Host(host.clone()));
            }
        }
        let prefix = prefix.trim_matches('/').to_string();
        if matches!(scheme, Scheme::Swarm | Scheme::Static) && !prefix.is_empty() {
            return Err(UrlError::Prefix(scheme.as_str()));
        }
        Ok(Self {
            scheme,
            hosts,
            prefix,
        })
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The store or manager endpoints, `host:port` each.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The prefix, without leading or trailing slashes (may be empty).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The prefix and the leader key joined with one `/`, without a leading slash: the key
    /// as etcd v3 and Consul name it. See [`Self::path`] for etcd v2 and ZooKeeper.
    pub fn key(&self, leader_key: &str) -> String {
        let key = leader_key.trim_matches('/');
        match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => key.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{}", self.prefix, key),
        }
    }

    /// [`Self::key`] with a leading `/`: the path as etcd v2 and ZooKeeper name it.
    pub fn path(&self, leader_key: &str) -> String {
        format!("/{}", self.key(leader_key))
    }
}

impl fmt::Display for DiscoveryUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.hosts.join(","))?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_prefix_and_key_with_one_slash() {
        let url = DiscoveryUrl::parse("etcd://127.0.0.1:2379,10.0.0.2:2379//swarm/").unwrap();
        assert_eq!(url.scheme(), Scheme::Etcd);
        assert_eq!(url.hosts(), ["127.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(
            url.path("/docker/swarm/leader/"),
            "/swarm/docker/swarm/leader"
        );
        assert_eq!(url.key("docker/swarm/leader"), "swarm/docker/swarm/leader");
        let bare = DiscoveryUrl::parse("etcdv3://127.0.0.1:2379").unwrap();
        assert_eq!(bare.key("/docker/swarm/leader"), "docker/swarm/leader");
        assert_eq!(bare.path("docker/swarm/leader"), "/docker/swarm/leader");
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "127.0.0.1:2379",
            "redis://127.0.0.1:6379",
            "etcd:///prefix",
            "etcd://127.0.0.1/prefix",
            "swarm://127.0.0.1:2375/prefix",
        ] {
            assert!(DiscoveryUrl::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
