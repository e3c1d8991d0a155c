//! `DiscoveryUrl::parse`, the DISCOVERY argument (flag, variable or `--config` key),
//! against arbitrary text.
//!
//! Properties of an accepted URL:
//! - its `Display` (what the start-up log shows) parses back to the same URL;
//! - it has at least one host, and every host is a leader address (`host:port`) whose own
//!   `Display` is the host as written;
//! - `swarm://` and `static://` have no prefix; a prefix has no leading or trailing `/`;
//! - the store key of any leader key has no leading `/`, and the path is the key behind
//!   one `/`.

#![no_main]

use leader_proxy_parsers::url::{DiscoveryUrl, Scheme};
use leader_proxy_parsers::value::LeaderAddr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    // The first line is the URL, the rest a leader key (`--leader-key`).
    let (url_text, leader_key) = text
        .split_once('\n')
        .unwrap_or((text, "docker/swarm/leader"));
    let Ok(url) = DiscoveryUrl::parse(url_text) else {
        return;
    };
    let shown = url.to_string();
    assert_eq!(
        DiscoveryUrl::parse(&shown).as_ref(),
        Ok(&url),
        "{url_text:?} shown as {shown:?}"
    );
    assert!(!url.hosts().is_empty(), "{url_text:?}");
    for host in url.hosts() {
        let addr =
            LeaderAddr::parse(host).unwrap_or_else(|e| panic!("{url_text:?}: host {host:?}: {e}"));
        assert_eq!(
            LeaderAddr::parse(&addr.to_string()).as_ref(),
            Ok(&addr),
            "{host:?}"
        );
    }
    let prefix = url.prefix();
    assert!(
        !prefix.starts_with('/') && !prefix.ends_with('/'),
        "prefix {prefix:?}"
    );
    if matches!(url.scheme(), Scheme::Swarm | Scheme::Static) {
        assert!(
            prefix.is_empty(),
            "{url_text:?}: a prefix on {}://",
            url.scheme().as_str()
        );
    }
    let key = url.key(leader_key);
    assert!(!key.starts_with('/'), "key {key:?} of {leader_key:?}");
    assert_eq!(url.path(leader_key), format!("/{key}"));
});
