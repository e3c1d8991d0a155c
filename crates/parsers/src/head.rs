//! Reading one request head off a client connection, to decide where the request goes.
//!
//! Every head is read, not only a connection's first: docker-py sends `Upgrade: tcp` on
//! pooled keep-alive connections.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest request head accepted (dockerd's own limit is 1 MiB; Docker clients send a
/// few hundred bytes, X-Registry-Auth headers a few KiB).
pub const MAX_HEAD: usize = 256 * 1024;

/// What [`read_head`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// The client closed the connection before sending anything: a clean end.
    Closed,
    /// A complete head (and possibly the first body bytes) in `bytes`.
    Request { bytes: BytesMut, upgrade: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("request head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed request head: {0}")]
    Malformed(httparse::Error),
    #[error("connection closed in the middle of a request head")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl HeadError {
    /// The status a client is answered with before the connection closes, as dockerd and
    /// HAProxy answer: `431` for a head too large or with too many headers, `400` for one
    /// that does not parse. `None`: nobody to answer (the client left, the socket broke).
    pub fn status(&self) -> Option<u16> {
        match self {
            HeadError::TooLarge | HeadError::Malformed(httparse::Error::TooManyHeaders) => {
                Some(431)
            }
            HeadError::Malformed(_) => Some(400),
            HeadError::Truncated | HeadError::Io(_) => None,
        }
    }
}

/// Reads until the end of a request head: the first empty line, `\r\n\r\n` or a bare
/// `\n\n` (httparse and pingora accept bare LF line ends, and so do dockerd and HAProxy),
/// after the request line: empty lines before it are skipped, as httparse and pingora skip
/// them (RFC 9112, section 2.2), and stay in the bytes handed on.
pub async fn read_head<R: AsyncRead + Unpin>(io: &mut R) -> Result<Head, HeadError> {
    let mut bytes = BytesMut::with_capacity(4096);
    let mut searched: usize = 0;
    // How many bytes of empty lines come before the request line, as far as read.
    let mut leading: usize = 0;
    loop {
        if io.read_buf(&mut bytes).await? == 0 {
            return if bytes.is_empty() {
                Ok(Head::Closed)
            } else {
                Err(HeadError::Truncated)
            };
        }
        // Found by fuzz/ (corpus/head/regress-leading-empty-lines): taking a leading empty
        // line for the end of the head let `\r\n\r\nGET … Upgrade: tcp` reach pingora as
        // a request the front had not read.
        while bytes
            .get(leading)
            .is_some_and(|b| matches!(b, b'\r' | b'\n'))
        {
            leading += 1;
        }
        // Resume the search two bytes back, in case the terminator straddles two reads.
        let from = searched.saturating_sub(2).max(leading);
        if let Some(end) = find_terminator(&bytes[from..]) {
            // One read can carry the buffer from below the limit to far past it (the
            // buffer doubles): the limit is on where the head ends, not on the buffer.
            if from + end > MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            let upgrade = carries_upgrade(&bytes[..from + end])?;
            return Ok(Head::Request { bytes, upgrade });
        }
        searched = bytes.len();
        if bytes.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        if bytes.capacity() == bytes.len() {
            bytes.reserve(bytes.len());
        }
    }
}

/// The end of the first empty line in `buf`: after `\n\n` or `\n\r\n`.
fn find_terminator(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(i) = buf[at..].iter().position(|&b| b == b'\n') {
        let newline = at + i;
        match buf.get(newline + 1..) {
            Some([b'\n', ..]) => return Some(newline + 2),
            Some([b'\r', b'\n', ..]) => return Some(newline + 3),
            _ => at = newline + 1,
        }
    }
    None
}

/// True if the head has an `Upgrade` header: attach/exec (`tcp`) and BuildKit (`h2c`).
fn carries_upgrade(head: &[u8]) -> Result<bool, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => Ok(request
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("upgrade"))),
        // An empty line that httparse does not take for the end of the head: whatever
        // follows would be read differently by the front and by pingora.
        Ok(httparse::Status::Partial) => Err(HeadError::Malformed(httparse::Error::NewLine)),
        Err(e) => Err(HeadError::Malformed(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_upgrade_in_a_head_split_across_reads() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for part in [
                &b"POST /v1.41/exec/x/start HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r"[..],
                &b"\nUpgrade: tcp\r\n\r"[..],
                &b"\nbody"[..],
            ] {
                client.write_all(part).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        match read_head(&mut server).await.unwrap() {
            Head::Request { bytes, upgrade } => {
                assert!(upgrade);
                assert!(bytes.starts_with(b"POST /v1.41/exec"));
            }
            Head::Closed => panic!("closed"),
        }
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn bare_lf_heads_end_at_the_first_empty_line() {
        for head in [
            &b"GET /_ping HTTP/1.1\nHost: x\n\n"[..],
            &b"GET /_ping HTTP/1.1\r\nHost: x\n\r\n"[..],
        ] {
            let mut io = head;
            assert!(
                matches!(
                    read_head(&mut io).await,
                    Ok(Head::Request { upgrade: false, .. })
                ),
                "{head:?}"
            );
        }
        assert_eq!(find_terminator(b"GET / HTTP/1.1\r\nA: b\r\n"), None);

        // Empty lines before the request line are not the end of the head: the head read
        // is the request after them, with its Upgrade.
        let mut io = &b"\r\n\r\nPOST /exec/x/start HTTP/1.1\r\nUpgrade: tcp\r\n\r\n"[..];
        assert!(matches!(
            read_head(&mut io).await,
            Ok(Head::Request { upgrade: true, .. })
        ));
        let mut io = &b"\n\n x\n\n"[..];
        assert_eq!(read_head(&mut io).await.unwrap_err().status(), Some(400));
        assert_eq!(find_terminator(b"a\n\nrest"), Some(3));
    }

    #[tokio::test]
    async fn oversized_and_malformed_heads_get_431_and_400() {
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..200 {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let mut io = &many[..];
        assert_eq!(read_head(&mut io).await.unwrap_err().status(), Some(431));

        let mut huge = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        huge.resize(300 * 1024, b'a');
        let mut io = &huge[..];
        assert_eq!(read_head(&mut io).await.unwrap_err().status(), Some(431));

        // Found by fuzz/ (corpus/head/regress-head-past-max): a head whose end arrives in
        // the read that takes the buffer past MAX_HEAD, accepted or parsed before.
        for line in [&b"GET / HTTP/1.1\r\n"[..], &b"GET / HTTP/9.9 x\r\n"[..]] {
            let mut past = line.to_vec();
            past.extend_from_slice(b"X-Big: ");
            past.resize(MAX_HEAD + 40 * 1024, b'a');
            past.extend_from_slice(b"\r\n\r\n");
            let mut io = &past[..];
            let e = read_head(&mut io).await.unwrap_err();
            assert!(matches!(e, HeadError::TooLarge), "{e:?}");
        }

        let mut broken = &b"GET /_ping HTTP/9.9 extra\r\n\r\n"[..];
        assert_eq!(
            read_head(&mut broken).await.unwrap_err().status(),
            Some(400)
        );
    }

    #[tokio::test]
    async fn plain_requests_and_clean_close() {
        let mut plain = &b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n"[..];
        assert!(matches!(
            read_head(&mut plain).await.unwrap(),
            Head::Request { upgrade: false, .. }
        ));
        let mut empty = &b""[..];
        assert_eq!(read_head(&mut empty).await.unwrap(), Head::Closed);
        let mut cut = &b"GET / HTTP/1.1\r\n"[..];
        assert!(matches!(
            read_head(&mut cut).await,
            Err(HeadError::Truncated)
        ));
    }
}
