//! `LeaderAddr::parse`, what every store backend and manager probe runs on a value someone
//! else wrote, against arbitrary text.
//!
//! Properties of an accepted value:
//! - its `Display` (what the logs, `/leader` and the metrics show) parses back to the same
//!   address, also behind `tcp://`, so what the proxy reports is a value it would accept;
//! - the port is not 0 and the host is not empty;
//! - the value carried no path, query, fragment or user info (parsing is strict so that a
//!   bad value never replaces a good leader);
//! - surrounding whitespace does not change it.

#![no_main]

use leader_proxy_parsers::value::LeaderAddr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let Ok(addr) = LeaderAddr::parse(text) else {
        return;
    };
    assert_ne!(addr.port(), 0, "{text:?}");
    assert!(!addr.host().is_empty(), "{text:?}");
    let shown = addr.to_string();
    assert_eq!(
        LeaderAddr::parse(&shown).as_ref(),
        Ok(&addr),
        "{text:?} shown as {shown:?}"
    );
    let with_scheme = format!("tcp://{shown}");
    assert_eq!(
        LeaderAddr::parse(&with_scheme).as_ref(),
        Ok(&addr),
        "{with_scheme:?}"
    );
    assert_eq!(
        LeaderAddr::parse(&format!(" {text}\n")).as_ref(),
        Ok(&addr),
        "{text:?}"
    );
    let authority = text
        .trim()
        .split_once("://")
        .map_or(text.trim(), |(_, rest)| rest);
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    assert!(
        !authority.contains(['/', '?', '#', '@']),
        "{text:?} carries a path, query or user info"
    );
});
