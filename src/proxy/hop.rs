//! The hop marker: every request the front passes on carries `X-Leader-Proxy-Hop` with a
//! token drawn at random when the process starts. A request that arrives carrying this
//! process's own token has gone round a loop (the leader is the proxy itself behind
//! another address, or another proxy whose leader is this one); it is answered `508` at
//! once instead of multiplying connections until the process runs out of files
//! (docs/failover.md#loops). Another proxy's token is passed on, so proxies in a chain
//! that is not a loop do not trip each other.

use std::sync::LazyLock;

use bytes::{BufMut, BytesMut};

/// The header every request passed on carries.
pub const HEADER: &str = "X-Leader-Proxy-Hop";

/// This process's token: 128 random bits, hex.
static TOKEN: LazyLock<String> = LazyLock::new(|| format!("{:032x}", rand::random::<u128>()));

/// The request came back through this proxy.
#[derive(Debug, PartialEq, Eq)]
pub struct Looped;

/// Checks a request head (`bytes` starts with it, a body may follow) for this process's
/// token, and adds it after the request line when it is not there.
pub fn mark(bytes: BytesMut) -> Result<BytesMut, Looped> {
    let mut lines = bytes[..].split(|b| *b == b'\n');
    let Some(request_line) = lines.next() else {
        return Ok(bytes);
    };
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if is_our_marker(line) {
            return Err(Looped);
        }
    }
    let split_at = request_line.len() + 1;
    let eol: &[u8] = if request_line.ends_with(b"\r") {
        b"\r\n"
    } else {
        b"\n"
    };
    let mut marked = BytesMut::with_capacity(bytes.len() + HEADER.len() + TOKEN.len() + 4);
    marked.put_slice(&bytes[..split_at.min(bytes.len())]);
    marked.put_slice(HEADER.as_bytes());
    marked.put_slice(b": ");
    marked.put_slice(TOKEN.as_bytes());
    marked.put_slice(eol);
    if split_at < bytes.len() {
        marked.put_slice(&bytes[split_at..]);
    }
    Ok(marked)
}

fn is_our_marker(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|b| *b == b':') else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    name.eq_ignore_ascii_case(HEADER.as_bytes()) && value.trim_ascii() == TOKEN.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_once_and_refuses_what_comes_back() {
        let head = BytesMut::from("GET /info HTTP/1.1\r\nHost: x\r\n\r\nbody");
        let marked = mark(head).expect("not a loop");
        let text = String::from_utf8(marked.to_vec()).unwrap();
        assert!(
            text.starts_with("GET /info HTTP/1.1\r\nX-Leader-Proxy-Hop: ")
                && text.ends_with("\r\nHost: x\r\n\r\nbody"),
            "{text}"
        );
        assert_eq!(mark(marked), Err(Looped));
        // Another proxy's marker is passed on, and so is our token in a body.
        let other = BytesMut::from("GET / HTTP/1.1\nx-leader-proxy-hop: 00\n\n");
        assert!(mark(other).is_ok());
        let in_body = format!("POST / HTTP/1.1\r\n\r\n{HEADER}: {}\r\n", *TOKEN);
        assert!(mark(BytesMut::from(in_body.as_str())).is_ok());
    }
}
