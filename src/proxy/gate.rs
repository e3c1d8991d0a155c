//! The policy gate: what the front does with each request head when its listener has a
//! policy (docs/policy.md). The head is parsed into a [`Call`] (the path normalised), the
//! body read when a check wants it (the calls of `policy::body`, at most
//! [`MAX_BODY`](crate::policy::MAX_BODY), `413` beyond), the checks run, and then either
//! the request goes on rebuilt from the call (the normalised target, the body that was
//! checked with its length) or the client is answered the denial (logged with who it is,
//! counted by rule) and the connection closes.
//!
//! Only the head and a checked body are buffered: any other body stays in the stream and
//! is relayed as it comes, as without a policy.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::warn;

use super::client_identity::{ClientIdentity, Peer};
use super::write_docker_error;
use crate::metrics::Metrics;
use crate::policy::{Call, Deny, Inspect, Policy, MAX_BODY};

/// What the gate made of a request.
pub enum Gated {
    /// Forward these bytes (the rebuilt head, the checked body, what followed it).
    Pass(BytesMut),
    /// The client was answered (a denial, or it left mid-body): close the connection.
    Answered,
}

/// Runs `policy` on the request whose head (and any bytes after it) is `bytes`.
pub async fn apply<C: AsyncRead + AsyncWrite + Unpin>(
    policy: &Policy,
    stream: &mut C,
    bytes: BytesMut,
    client: &ClientIdentity,
    inspect: &dyn Inspect,
    metrics: &Metrics,
) -> Gated {
    match run(policy, stream, bytes, client, inspect).await {
        Ok(Some(bytes)) => Gated::Pass(bytes),
        Ok(None) => Gated::Answered,
        Err((deny, request)) => {
            let (user, _) = who(client);
            warn!(target: "access", client = %client.peer, user = %user, request = %request,
                rule = deny.rule, status = deny.status, "denied: {}", deny.message);
            metrics.policy_denials.with_label_values(&[deny.rule]).inc();
            metrics
                .requests
                .with_label_values(&[&deny.status.to_string(), client.listener_label()])
                .inc();
            if request.starts_with("HEAD ") {
                // A HEAD answer has no body (`docker cp` asks with HEAD first).
                write_head_only(stream, deny.status).await;
            } else {
                write_docker_error(stream, deny.status, &deny.message).await;
            }
            linger(stream).await;
            Gated::Answered
        }
    }
}

/// How long, and how many bytes, a denied client's unread request is read and dropped
/// after the answer, so that closing does not reset the connection under the answer.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 8 << 20;

/// After a denial: ends the answer (FIN), then reads what the client still sends (a body
/// refused unread, `413`) until it closes, [`LINGER`] passes or [`LINGER_BYTES`] came. A
/// socket closed with unread bytes is reset, and a reset can reach the client before it
/// read the answer (nginx's lingering close does the same).
async fn linger<C: AsyncRead + AsyncWrite + Unpin>(stream: &mut C) {
    let _ = stream.shutdown().await;
    let drain = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut read = 0;
        while read < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// A denial of a `HEAD` request: the status alone, then the connection closes.
async fn write_head_only<C: AsyncWrite + Unpin>(stream: &mut C, status: u16) {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
        http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error")
    );
    // The client may be gone already; there is nobody left to tell.
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.flush().await;
}

/// The head as the checks see it; `Err` carries the denial and the request line for the
/// log; `Ok(None)`: the client left before its body arrived.
async fn run<C: AsyncRead + AsyncWrite + Unpin>(
    policy: &Policy,
    stream: &mut C,
    mut bytes: BytesMut,
    client: &ClientIdentity,
    inspect: &dyn Inspect,
) -> Result<Option<BytesMut>, (Deny, String)> {
    let parsed = parse(&bytes).map_err(|deny| (deny, String::new()))?;
    let line = format!("{} {}", parsed.method, parsed.target);
    let denied = |deny: Deny| (deny, line.clone());
    let (user, auth_method) = who(client);
    let mut call = Call::new(
        &parsed.method,
        &parsed.target,
        parsed.headers,
        user,
        auth_method,
    )
    .map_err(denied)?;
    let mut rest = bytes.split_off(parsed.head_len);
    let wants_body = policy.wants_body(&call);
    if wants_body {
        if call
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        {
            // The client waits for this before it sends the body the checks need.
            if stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
            {
                return Ok(None);
            }
        }
        let Some(body) = read_body(stream, &call, &mut rest).await.map_err(denied)? else {
            return Ok(None);
        };
        call.body = serde_json::from_slice(&body).ok();
        call.body_bytes = Some(body);
    }
    policy.check(&mut call, inspect).await.map_err(denied)?;
    if !wants_body && call.target() == parsed.target {
        // Already in the form the checks saw: the head goes on as it came, unrebuilt (the
        // common case, and the cheap one: docs/policy.md).
        bytes.unsplit(rest);
        return Ok(Some(bytes));
    }
    Ok(Some(rebuild(&call, parsed.minor, wants_body, rest)))
}

struct Parsed {
    method: String,
    target: String,
    minor: u8,
    headers: Vec<(String, String)>,
    head_len: usize,
}

fn parse(bytes: &[u8]) -> Result<Parsed, Deny> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    let bad = |why: String| Deny::new(400, "path", format!("malformed request head: {why}"));
    let head_len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err(bad("incomplete".to_string())),
        Err(e) => return Err(bad(e.to_string())),
    };
    Ok(Parsed {
        method: request.method.unwrap_or_default().to_string(),
        target: request.path.unwrap_or_default().to_string(),
        minor: request.version.unwrap_or(1),
        headers: request
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        head_len,
    })
}

/// The client's identity as the checks take it (opa-docker-authz's `User`, `AuthMethod`).
fn who(client: &ClientIdentity) -> (String, String) {
    if let Some(subject) = &client.tls_subject {
        return (subject.clone(), "TLS".to_string());
    }
    match client.peer {
        Peer::Unix { uid: Some(uid), .. } => (format!("unix:uid={uid}"), "unix".to_string()),
        _ => (String::new(), String::new()),
    }
}

fn too_large() -> Deny {
    Deny::new(
        413,
        "body-size",
        format!("leader-proxy policy: the request body is larger than {MAX_BODY} bytes"),
    )
}

/// The whole body of a checked call: by `Content-Length`, or chunked (decoded). `rest` holds
/// what was read past the head and, on return, what follows the body. `Ok(None)`: the
/// client closed first.
async fn read_body<C: AsyncRead + Unpin>(
    stream: &mut C,
    call: &Call,
    rest: &mut BytesMut,
) -> Result<Option<Bytes>, Deny> {
    let chunked = call
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return read_chunked(stream, rest).await;
    }
    let length = match call.header("content-length") {
        Some(text) => text
            .trim()
            .parse::<usize>()
            .map_err(|_| Deny::new(400, "body", "leader-proxy policy: a bad Content-Length"))?,
        None => 0,
    };
    if length > MAX_BODY {
        return Err(too_large());
    }
    if !fill(stream, rest, length).await {
        return Ok(None);
    }
    Ok(Some(rest.split_to(length).freeze()))
}

/// Reads until `buf` holds `len` bytes; false if the client closed first.
async fn fill<C: AsyncRead + Unpin>(stream: &mut C, buf: &mut BytesMut, len: usize) -> bool {
    while buf.len() < len {
        buf.reserve(len - buf.len());
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    true
}

/// Reads until `buf` holds a line end (`\n`) at or after `from`; its position.
async fn line_end<C: AsyncRead + Unpin>(
    stream: &mut C,
    buf: &mut BytesMut,
    from: usize,
) -> Result<Option<usize>, Deny> {
    loop {
        if let Some(at) = buf[from.min(buf.len())..].iter().position(|&b| b == b'\n') {
            return Ok(Some(from + at));
        }
        if buf.len() > MAX_BODY + 4096 {
            return Err(too_large());
        }
        buf.reserve(4096);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

async fn read_chunked<C: AsyncRead + Unpin>(
    stream: &mut C,
    rest: &mut BytesMut,
) -> Result<Option<Bytes>, Deny> {
    let bad = || Deny::new(400, "body", "leader-proxy policy: bad chunked framing");
    let mut body = BytesMut::new();
    loop {
        let Some(end) = line_end(stream, rest, 0).await? else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&rest[..end]).map_err(|_| bad())?;
        let size = line.trim().split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| bad())?;
        let _ = rest.split_to(end + 1);
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let Some(end) = line_end(stream, rest, 0).await? else {
                    return Ok(None);
                };
                let empty = rest[..end].iter().all(|&b| b == b'\r');
                let _ = rest.split_to(end + 1);
                if empty {
                    return Ok(Some(body.freeze()));
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(too_large());
        }
        if !fill(stream, rest, size).await {
            return Ok(None);
        }
        body.extend_from_slice(&rest.split_to(size));
        let Some(end) = line_end(stream, rest, 0).await? else {
            return Ok(None);
        };
        if rest[..end].iter().any(|&b| b != b'\r') {
            return Err(bad());
        }
        let _ = rest.split_to(end + 1);
    }
}

/// The request as forwarded: the call's target and headers; with the body that was
/// checked (and its length) when one was read; then what followed.
fn rebuild(call: &Call, minor: u8, with_body: bool, rest: BytesMut) -> BytesMut {
    let body = call.body_bytes.as_ref().filter(|_| with_body);
    let mut out = BytesMut::with_capacity(512 + body.map_or(0, |b| b.len()) + rest.len());
    out.extend_from_slice(call.method.as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(call.target().as_bytes());
    out.extend_from_slice(format!(" HTTP/1.{minor}\r\n").as_bytes());
    for (name, value) in &call.headers {
        let framing = ["content-length", "transfer-encoding", "expect"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h));
        if with_body && framing {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(body) = body {
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(body);
    } else {
        if with_body {
            out.extend_from_slice(b"Content-Length: 0\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicySettings, Section};

    struct NoLeader;

    #[async_trait::async_trait]
    impl Inspect for NoLeader {
        async fn get_json(
            &self,
            path: &str,
        ) -> Result<Option<serde_json::Value>, crate::policy::InspectError> {
            Err(crate::policy::InspectError {
                path: path.to_string(),
                reason: "no leader in unit tests".to_string(),
            })
        }
    }

    async fn gate(
        settings: PolicySettings,
        request: &[u8],
        more: &[u8],
    ) -> (Option<Vec<u8>>, Vec<u8>) {
        let policy = Policy::build(&settings).unwrap();
        let (mut near, mut far) = tokio::io::duplex(1 << 21);
        far.write_all(more).await.unwrap();
        drop(far.shutdown().await);
        let client = ClientIdentity::tcp("127.0.0.1:1".parse().unwrap());
        let metrics = Metrics::new();
        let gated = apply(
            &policy,
            &mut near,
            BytesMut::from(request),
            &client,
            &NoLeader,
            &metrics,
        )
        .await;
        let passed = match gated {
            Gated::Pass(bytes) => Some(bytes.to_vec()),
            Gated::Answered => None,
        };
        drop(near.shutdown().await);
        let mut answer = Vec::new();
        let _ = far.read_to_end(&mut answer).await;
        (passed, answer)
    }

    #[tokio::test]
    async fn a_passed_request_is_forwarded_normalised_with_the_checked_body() {
        let settings = PolicySettings {
            bind_mounts: Some(vec!["/srv".to_string()]),
            ..Default::default()
        };
        let body = br#"{"HostConfig":{"Binds":["/srv/x:/x"]}}"#;
        let head = format!(
            "POST /v1.45//containers/./create?name=a HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            body.len()
        );
        let mut more = body.to_vec();
        more.extend_from_slice(b"\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n");
        let (passed, _) = gate(settings, head.as_bytes(), &more).await;
        let passed = String::from_utf8(passed.unwrap()).unwrap();
        let expected = format!(
            "POST /v1.45/containers/create?name=a HTTP/1.1\r\nHost: d\r\nContent-Length: {}\r\n\r\n{}GET /next HTTP/1.1\r\n\r\n",
            body.len(),
            std::str::from_utf8(body).unwrap()
        );
        assert_eq!(passed, expected);
    }

    #[tokio::test]
    async fn denials_answer_json_naming_the_rule() {
        let settings = PolicySettings {
            allow: Some([Section::Containers].into_iter().collect()),
            ..Default::default()
        };
        let request = b"GET /v1.45//containers/%2e%2e/containers/x/archive?path=/ HTTP/1.1\r\nHost: d\r\n\r\n";
        let (passed, answer) = gate(settings.clone(), request, b"").await;
        assert!(passed.is_none());
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
        assert!(answer.contains(r#""message":"leader-proxy policy: GET /containers/x/archive is refused: section archive"#), "{answer}");

        let big = format!(
            "POST /containers/create HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let body_rules = PolicySettings {
            bind_mounts: Some(vec![]),
            ..Default::default()
        };
        let (passed, answer) = gate(body_rules, big.as_bytes(), b"").await;
        assert!(passed.is_none());
        assert!(String::from_utf8(answer)
            .unwrap()
            .starts_with("HTTP/1.1 413 "));
    }
}
