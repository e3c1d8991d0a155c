//! [`LeaderInspect`]: the policy's questions about objects ([`crate::policy::Inspect`]:
//! does this container carry the label, which container runs this exec), asked of the
//! leader the requests go to, through the hold (waiting for one like a request would).
//!
//! One short `HTTP/1.0` exchange per question on a connection of its own: the answer ends
//! with the connection, so no chunked framing is read, and no pooled connection of
//! pingora's is borrowed from client requests.

use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::hijack::HijackRelay;
use crate::policy::{Inspect, InspectError};

/// The largest answer read (an inspect of a container with many mounts is tens of KiB).
const MAX_ANSWER: usize = 8 * 1024 * 1024;
/// How long the leader may take to answer once connected.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks the current leader, through the hijack relay's dialling (TLS included).
pub struct LeaderInspect<'a> {
    pub relay: &'a HijackRelay,
}

#[async_trait]
impl Inspect for LeaderInspect<'_> {
    async fn get_json(&self, path: &str) -> Result<Option<serde_json::Value>, InspectError> {
        let fail = |reason: String| InspectError {
            path: path.to_string(),
            reason,
        };
        let mut leader = self
            .relay
            .connect_leader()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: docker\r\nUser-Agent: leader-proxy\r\n\r\n");
        let exchange = async {
            leader.write_all(request.as_bytes()).await?;
            leader.flush().await?;
            let mut answer = Vec::new();
            (&mut leader)
                .take(MAX_ANSWER as u64 + 1)
                .read_to_end(&mut answer)
                .await?;
            Ok::<_, std::io::Error>(answer)
        };
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, exchange)
            .await
            .map_err(|_| fail("no answer in 30s".to_string()))?
            .map_err(|e| fail(e.to_string()))?;
        if answer.len() > MAX_ANSWER {
            return Err(fail(format!("answer larger than {MAX_ANSWER} bytes")));
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let body_at = match response.parse(&answer) {
            Ok(httparse::Status::Complete(at)) => at,
            Ok(httparse::Status::Partial) => return Err(fail("a truncated answer".to_string())),
            Err(e) => return Err(fail(e.to_string())),
        };
        match response.code {
            Some(200) => serde_json::from_slice(&answer[body_at..])
                .map(Some)
                .map_err(|e| fail(format!("the answer is not JSON: {e}"))),
            Some(404) => Ok(None),
            code => Err(fail(format!("answered {}", code.unwrap_or_default()))),
        }
    }
}
