//! What the stores spoken over plain HTTP (etcd's v2 API, Consul) share: one key URL per
//! endpoint of the DISCOVERY URL, and one reqwest client set up for long watches.

use std::time::Duration;

use super::tls::StoreTls;
use super::Stop;
use crate::discovery::SourceError;
use crate::keepalive;

/// The largest answer read from a store. A leader key's answer is a few hundred bytes;
/// anything past this is not an answer worth parsing, and memory stays bounded.
pub(super) const MAX_ANSWER: usize = 1 << 20;

/// The key's URL on every endpoint, and the client to ask them with.
pub(super) struct HttpStore {
    pub urls: Vec<reqwest::Url>,
    pub client: reqwest::Client,
}

impl HttpStore {
    /// `{scheme}://{host}/{api}/{key}` for each host (`https` with TLS), the key's segments
    /// escaped one by one. `store` names the store in errors ("etcd endpoint", "Consul agent").
    pub fn new(
        hosts: &[String],
        api: &str,
        key: &str,
        tls: Option<&StoreTls>,
        connect_timeout: Duration,
        store: &str,
    ) -> Result<Self, SourceError> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut urls = Vec::new();
        for host in hosts {
            let mut url = reqwest::Url::parse(&format!("{scheme}://{host}/{api}"))
                .map_err(|e| SourceError::Unsupported(format!("{store} {host}: {e}")))?;
            url.path_segments_mut()
                .map_err(|()| SourceError::Unsupported(format!("{store} {host}")))?
                .extend(key.split('/').filter(|s| !s.is_empty()));
            urls.push(url);
        }
        let builder = match tls {
            Some(tls) => tls.reqwest_builder(),
            None => reqwest::Client::builder(),
        };
        // A watch may be silent for minutes: the keepalive settings notice a store host that
        // disappeared mid-watch (power loss, partition) within about a minute; a clean
        // shutdown is noticed at once anyway.
        // A redirect is not followed: it would carry the credentials (`X-Consul-Token`,
        // etcd's basic auth) to whatever host the answer names.
        let client = builder
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(connect_timeout)
            .tcp_keepalive(keepalive::IDLE)
            .tcp_keepalive_interval(keepalive::INTERVAL)
            .tcp_keepalive_retries(keepalive::RETRIES)
            .build()
            .map_err(|e| SourceError::Unsupported(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self { urls, client })
    }
}

/// The whole body of `response`, at most [`MAX_ANSWER`] bytes: a larger one is a failure of
/// the store (`store` names it), and the last leader is kept.
pub(super) async fn body(mut response: reqwest::Response, store: &str) -> Result<Vec<u8>, Stop> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| Stop::store(&e))? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(Stop::Store(format!(
                "{store} answered more than {} MiB: not a leader key's answer",
                MAX_ANSWER >> 20
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Refuses an answer that redirects elsewhere (`store` names the store): the client does not
/// follow it (see [`HttpStore::new`]), and saying so is clearer than the empty body's parse
/// error. The store's outage handling then keeps the last leader.
pub(super) fn refuse_redirect(response: &reqwest::Response, store: &str) -> Result<(), Stop> {
    let status = response.status();
    if !status.is_redirection() {
        return Ok(());
    }
    // The location comes from the answer: shown escaped and bounded.
    let location: String = response
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(200)
                .collect()
        })
        .unwrap_or_default();
    Err(Stop::Store(format!(
        "{store} answered HTTP {status} redirecting to {location:?}: redirects from a store are \
         not followed (docs/failover.md#store-outages)"
    )))
}
