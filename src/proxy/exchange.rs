//! One HTTP/1.1 exchange of an `Upgrade` request, for the hijack relay: where the request
//! (head and body) ends in what the client sent, and the leader's answer when it is not
//! `101`, relayed by its framing so that the connection can go back to HTTP.
//!
//! Only the framing is read here (RFC 9112 section 6): `Content-Length`, `Transfer-Encoding:
//! chunked` (chunk sizes and trailers are copied as they are), or the end of the connection.
//! Headers and bodies pass unchanged.

use bytes::BytesMut;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::head::MAX_HEAD;

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (0: no body).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the sender closes the connection (responses only).
    UntilClose,
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("malformed HTTP message from the {0}: {1}")]
    Malformed(&'static str, String),
    #[error("response head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("the Swarm primary closed the connection before answering")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The length of a request head at the start of `bytes` and its body's framing (a request
/// without a length has no body).
pub fn request_framing(bytes: &[u8]) -> Result<(usize, Framing), ExchangeError> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    let malformed = |e: String| ExchangeError::Malformed("client", e);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => {
            let framing = framing(request.headers)
                .map_err(malformed)?
                .unwrap_or(Framing::Length(0));
            Ok((len, framing))
        }
        Ok(httparse::Status::Partial) => Err(malformed("incomplete head".into())),
        Err(e) => Err(malformed(e.to_string())),
    }
}

/// The framing the headers declare, if any. Chunked wins over a length (RFC 9112 6.3).
fn framing(headers: &[httparse::Header<'_>]) -> Result<Option<Framing>, String> {
    let mut length = None;
    for header in headers {
        let value = String::from_utf8_lossy(header.value);
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            return Ok(Some(if last.eq_ignore_ascii_case("chunked") {
                Framing::Chunked
            } else {
                Framing::UntilClose
            }));
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("bad Content-Length {value:?}"))?;
            if length.is_some_and(|m| m != n) {
                return Err("conflicting Content-Length headers".into());
            }
            length = Some(n);
        }
    }
    Ok(length.map(Framing::Length))
}

/// A response head from the leader.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    /// The head as received, to be written to the client unchanged.
    pub bytes: BytesMut,
    /// What follows the head in what was read (body bytes, or the upgraded stream's).
    pub extra: BytesMut,
    pub framing: Framing,
    /// The leader ends the connection after this response (`Connection: close`, HTTP/1.0
    /// without keep-alive, or a body delimited by the close).
    pub closes: bool,
}

/// Reads one response head from `upstream`, after what `bytes` already holds of it.
/// `head_request`: the request was a `HEAD`, so the response has no body whatever it
/// declares.
pub async fn read_response_head<R: AsyncRead + Unpin>(
    upstream: &mut R,
    mut bytes: BytesMut,
    head_request: bool,
) -> Result<ResponseHead, ExchangeError> {
    bytes.reserve(4096);
    loop {
        if bytes.is_empty() && upstream.read_buf(&mut bytes).await? == 0 {
            return Err(ExchangeError::Closed);
        }
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut response = httparse::Response::new(&mut headers);
        let len = match response.parse(&bytes) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if bytes.len() > MAX_HEAD => {
                return Err(ExchangeError::TooLarge)
            }
            Ok(httparse::Status::Partial) => {
                if bytes.capacity() == bytes.len() {
                    bytes.reserve(bytes.len());
                }
                if upstream.read_buf(&mut bytes).await? == 0 {
                    return Err(ExchangeError::Closed);
                }
                continue;
            }
            Err(e) => return Err(ExchangeError::Malformed("Swarm primary", e.to_string())),
        };
        let status = response.code.unwrap_or_default();
        let declared =
            framing(response.headers).map_err(|e| ExchangeError::Malformed("Swarm primary", e))?;
        let framing = if head_request || status < 200 || status == 204 || status == 304 {
            Framing::Length(0)
        } else {
            declared.unwrap_or(Framing::UntilClose)
        };
        let connection = response
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(",");
        let tokens = || connection.split(',').map(str::trim);
        let keeps = if response.version == Some(0) {
            tokens().any(|t| t == "keep-alive")
        } else {
            !tokens().any(|t| t == "close")
        };
        let extra = bytes.split_off(len);
        return Ok(ResponseHead {
            status,
            bytes,
            extra,
            framing,
            closes: !keeps || framing == Framing::UntilClose,
        });
    }
}

/// Copies a body framed by `framing` from `extra` (already read) and then `from`, to `to`.
/// Returns the bytes copied, chunk framing included.
pub async fn relay_body<R, W>(
    extra: BytesMut,
    from: &mut R,
    to: &mut W,
    framing: Framing,
) -> Result<u64, ExchangeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut source = BufReader::new(std::io::Cursor::new(extra).chain(from));
    let copied = match framing {
        Framing::Length(n) => copy_exact(&mut source, to, n).await?,
        Framing::UntilClose => tokio::io::copy(&mut source, to).await?,
        Framing::Chunked => relay_chunks(&mut source, to).await?,
    };
    to.flush().await?;
    Ok(copied)
}

async fn copy_exact<R, W>(from: &mut R, to: &mut W, n: u64) -> Result<u64, ExchangeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let copied = tokio::io::copy(&mut (&mut *from).take(n), to).await?;
    if copied < n {
        return Err(ExchangeError::Closed);
    }
    Ok(copied)
}

/// Copies a chunked body: size lines, data, the last chunk and the trailers, unchanged.
async fn relay_chunks<R, W>(from: &mut R, to: &mut W) -> Result<u64, ExchangeError>
where
    R: tokio::io::AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut copied = 0;
    let mut line = Vec::new();
    loop {
        read_line(from, &mut line).await?;
        to.write_all(&line).await?;
        copied += line.len() as u64;
        let text = String::from_utf8_lossy(&line);
        let digits = text.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(digits, 16).map_err(|_| {
            ExchangeError::Malformed("Swarm primary", format!("bad chunk size {digits:?}"))
        })?;
        if size == 0 {
            break;
        }
        // The data and its CRLF.
        copied += copy_exact(from, to, size + 2).await?;
    }
    // Trailers, up to the empty line.
    loop {
        read_line(from, &mut line).await?;
        to.write_all(&line).await?;
        copied += line.len() as u64;
        if line == b"\r\n" || line == b"\n" {
            return Ok(copied);
        }
    }
}

/// Reads one line (with its end) into `line`; at most [`MAX_HEAD`] bytes.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    from: &mut R,
    line: &mut Vec<u8>,
) -> Result<(), ExchangeError> {
    line.clear();
    (&mut *from)
        .take(MAX_HEAD as u64)
        .read_until(b'\n', line)
        .await?;
    if !line.ends_with(b"\n") {
        return Err(ExchangeError::Closed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn relay(response: &[u8], head_request: bool) -> (ResponseHead, Vec<u8>, Vec<u8>) {
        let mut upstream = response;
        let head = read_response_head(&mut upstream, BytesMut::new(), head_request)
            .await
            .unwrap();
        let mut out = Vec::new();
        let extra = head.extra.clone();
        relay_body(extra, &mut upstream, &mut out, head.framing)
            .await
            .unwrap();
        (head, out, upstream.to_vec())
    }

    #[tokio::test]
    async fn relays_each_framing_and_stops_at_its_end() {
        let (head, body, left) = relay(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nhelloNEXT",
            false,
        )
        .await;
        assert_eq!((head.status, head.closes), (404, false));
        assert_eq!(body, b"hello");
        // Buffered reads may take more, but never hand it on.
        assert!(b"NEXT".ends_with(&left));

        let chunked = b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n\
            4;x=y\r\nabcd\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let (head, body, _) = relay(chunked, false).await;
        assert_eq!((head.status, head.framing), (500, Framing::Chunked));
        assert_eq!(body, b"4;x=y\r\nabcd\r\n0\r\nX-Trailer: 1\r\n\r\n");

        let (head, body, _) = relay(
            b"HTTP/1.1 400 Bad\r\nConnection: close\r\n\r\nall of it",
            false,
        )
        .await;
        assert_eq!((head.framing, head.closes), (Framing::UntilClose, true));
        assert_eq!(body, b"all of it");

        let (head, body, _) = relay(
            b"HTTP/1.0 404 Not Found\r\nContent-Length: 2\r\n\r\nno",
            false,
        )
        .await;
        assert!(head.closes, "HTTP/1.0 without keep-alive closes");
        assert_eq!(body, b"no");

        let (head, body, _) =
            relay(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n", true).await;
        assert_eq!((head.framing, body.len()), (Framing::Length(0), 0));
    }

    #[tokio::test]
    async fn a_truncated_body_is_an_error() {
        let mut upstream: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nshort";
        let head = read_response_head(&mut upstream, BytesMut::new(), false)
            .await
            .unwrap();
        let mut out = Vec::new();
        assert!(
            relay_body(head.extra, &mut upstream, &mut out, head.framing)
                .await
                .is_err()
        );
    }

    #[test]
    fn request_framing_reads_the_length() {
        let request = b"POST /exec/x/start HTTP/1.1\r\nUpgrade: tcp\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(
            request_framing(request).unwrap(),
            (request.len() - 2, Framing::Length(2))
        );
        let bare = b"POST /containers/x/attach HTTP/1.1\nUpgrade: tcp\n\n";
        assert_eq!(
            request_framing(bare).unwrap(),
            (bare.len(), Framing::Length(0))
        );
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(request_framing(chunked).unwrap().1, Framing::Chunked);
    }
}
