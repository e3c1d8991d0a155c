//! The request-head reader (`leader_proxy_parsers::head::read_head`, what the front runs on
//! every client connection) against arbitrary bytes, read whole and in chunks.
//!
//! Input: a byte that is `P` to pad the head, two bytes of padding length (units of 8
//! bytes, inserted as an `X-Pad` header after the first line, so that heads around
//! `MAX_HEAD` are reachable from small inputs, while most inputs stay small and fast),
//! one byte of read size (1 + 131 × the byte, at least a 512th of the input), then the
//! bytes the client sends, which are read whole and in reads of that size.
//!
//! Properties:
//! - the reader never waits on a reader that is always ready, never panics;
//! - an accepted head ends at the first empty line, is at most `MAX_HEAD` bytes, is one
//!   that httparse parses completely to the same length, and `upgrade` says whether it has
//!   an `Upgrade` header; what was read past it is the start of what the client sent;
//! - a refusal matches the bytes: `TooLarge` only without an empty line within
//!   `MAX_HEAD`, `Malformed` only for a head httparse refuses, `Truncated` only without an
//!   empty line, `Closed` only for nothing sent;
//! - read in chunks of any size, the outcome and the head are the same.

#![no_main]

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use leader_proxy_parsers::head::{read_head, Head, HeadError, MAX_HEAD};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

/// Hands out `data` at most `chunk` bytes per read; always ready.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.data.len().min(self.chunk).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

fn read(data: &[u8], chunk: usize) -> Result<Head, HeadError> {
    let mut reader = Chunked { data, chunk };
    let mut future = pin!(read_head(&mut reader));
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("read_head is pending on a reader that is always ready"),
    }
}

/// The end of the first empty line (after `\n\n` or `\n\r\n`) after the request line
/// (empty lines before it do not count, as httparse skips them), written independently of
/// the reader's own search.
fn first_empty_line_end(buf: &[u8]) -> Option<usize> {
    let leading = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    (leading..buf.len()).find_map(|i| match (buf[i], buf.get(i + 1), buf.get(i + 2)) {
        (b'\n', Some(b'\n'), _) => Some(i + 2),
        (b'\n', Some(b'\r'), Some(b'\n')) => Some(i + 3),
        _ => None,
    })
}

/// httparse on a head, with the reader's header limit: the parsed length and `Upgrade`.
fn httparse_head(head: &[u8]) -> Result<httparse::Status<(usize, bool)>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    Ok(match request.parse(head)? {
        httparse::Status::Complete(n) => {
            let upgrade = request
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("upgrade"));
            httparse::Status::Complete((n, upgrade))
        }
        httparse::Status::Partial => httparse::Status::Partial,
    })
}

/// What a result says, comparable across read sizes: the head (not what was read past it).
fn summary(result: &Result<Head, HeadError>) -> String {
    match result {
        Ok(Head::Closed) => "closed".into(),
        Ok(Head::Request { bytes, upgrade }) => {
            let end = first_empty_line_end(bytes).unwrap_or(bytes.len());
            format!("request upgrade={upgrade} head={:?}", &bytes[..end])
        }
        Err(e) => format!("error {e}"),
    }
}

fn check(data: &[u8], result: &Result<Head, HeadError>) {
    let end = first_empty_line_end(data);
    match result {
        Ok(Head::Closed) => assert!(data.is_empty(), "Closed with {} bytes sent", data.len()),
        Ok(Head::Request { bytes, upgrade }) => {
            assert!(
                data.starts_with(bytes),
                "the bytes read are not what was sent"
            );
            let head_end = first_empty_line_end(bytes).expect("an accepted head has an empty line");
            assert_eq!(
                Some(head_end),
                end,
                "the head does not end at the first empty line"
            );
            assert!(
                head_end <= MAX_HEAD,
                "accepted a head of {head_end} bytes, more than MAX_HEAD ({MAX_HEAD})"
            );
            match httparse_head(&bytes[..head_end]) {
                Ok(httparse::Status::Complete((n, parsed_upgrade))) => {
                    assert_eq!(n, head_end, "httparse ends the head elsewhere");
                    assert_eq!(
                        *upgrade, parsed_upgrade,
                        "upgrade differs from httparse's headers"
                    );
                }
                other => panic!("accepted a head httparse does not: {other:?}"),
            }
        }
        Err(HeadError::TooLarge) => assert!(
            end.is_none_or(|end| end > MAX_HEAD),
            "TooLarge for a head of {end:?} bytes (MAX_HEAD {MAX_HEAD})"
        ),
        Err(HeadError::Malformed(e)) => {
            let end = end.expect("Malformed without an empty line");
            assert!(end <= MAX_HEAD, "Malformed for a head past MAX_HEAD");
            assert_eq!(
                httparse_head(&data[..end]).err(),
                Some(*e),
                "httparse disagrees"
            );
            assert!(matches!(
                result.as_ref().unwrap_err().status(),
                Some(400 | 431)
            ));
        }
        Err(HeadError::Truncated) => {
            assert!(!data.is_empty(), "Truncated with nothing sent");
            assert_eq!(end, None, "Truncated although the head was complete");
        }
        Err(HeadError::Io(e)) => panic!("I/O error from an in-memory reader: {e}"),
    }
}

fuzz_target!(|input: &[u8]| {
    let [padded, pad_hi, pad_lo, chunk, sent @ ..] = input else {
        return;
    };
    let pad = if *padded == b'P' {
        usize::from(u16::from_be_bytes([*pad_hi, *pad_lo])) * 8
    } else {
        0
    };
    let mut data = sent.to_vec();
    if pad > 0 {
        let at = sent
            .iter()
            .position(|&b| b == b'\n')
            .map_or(sent.len(), |i| i + 1);
        let mut header = b"X-Pad: ".to_vec();
        header.resize(header.len() + pad, b'a');
        header.extend_from_slice(b"\r\n");
        data.splice(at..at, header);
    }
    let whole = read(&data, usize::MAX);
    check(&data, &whole);
    // At most ~512 reads: a padded head read a byte at a time would take the whole run.
    let chunk = (1 + usize::from(*chunk) * 131).max(data.len() / 512);
    let chunked = read(&data, chunk);
    check(&data, &chunked);
    assert_eq!(
        summary(&whole),
        summary(&chunked),
        "read in chunks of {chunk} bytes"
    );
});
