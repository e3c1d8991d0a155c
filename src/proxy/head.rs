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

/// Reads until the end of a request head (`\r\n\r\n`).
pub async fn read_head<R: AsyncRead + Unpin>(io: &mut R) -> Result<Head, HeadError> {
    let mut bytes = BytesMut::with_capacity(4096);
    let mut searched: usize = 0;
    loop {
        if io.read_buf(&mut bytes).await? == 0 {
            return if bytes.is_empty() {
                Ok(Head::Closed)
            } else {
                Err(HeadError::Truncated)
            };
        }
        // Resume the search three bytes back, in case the terminator straddles two reads.
        let from = searched.saturating_sub(3);
        if let Some(end) = find_terminator(&bytes[from..]) {
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

fn find_terminator(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// True if the head has an `Upgrade` header: attach/exec (`tcp`) and BuildKit (`h2c`).
fn carries_upgrade(head: &[u8]) -> Result<bool, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(_) => Ok(request
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("upgrade"))),
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
