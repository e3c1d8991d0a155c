//! The hop marker: every request the front passes on carries `X-Leader-Proxy-Hop` with a
//! token drawn at random when the process starts. A request that arrives carrying this
//! process's own token has gone round a loop (the leader is the proxy itself behind
//! another address, or another proxy whose leader is this one); it is answered `508` at
//! once instead of multiplying connections until the process runs out of files
//! (docs/failover.md#loops). Another proxy's token is passed on, so proxies in a chain
//! that is not a loop do not trip each other.

use std::sync::LazyLock;

use bytes::BytesMut;

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
    // In place: the head was read into a buffer with room to spare (4 KiB for a head of a
    // few hundred bytes), so the marker costs a move of the rest, not a new buffer.
    let mut bytes = bytes;
    let at = split_at.min(bytes.len());
    let old_len = bytes.len();
    let marker = [HEADER.as_bytes(), b": ", TOKEN.as_bytes(), eol];
    let extra: usize = marker.iter().map(|part| part.len()).sum();
    bytes.resize(old_len + extra, 0);
    bytes.copy_within(at..old_len, at + extra);
    let mut gap = at;
    for part in marker {
        bytes[gap..gap + part.len()].copy_from_slice(part);
        gap += part.len();
    }
    Ok(bytes)
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
