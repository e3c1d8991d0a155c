//! etcd v2 elections as docker/leadership + libkv run them (see the binary's docs).

use super::*;

pub(crate) struct V2 {
    http: reqwest::Client,
    endpoints: Vec<String>,
    current: AtomicUsize,
    key: String,
    ttl: u64,
}

pub(crate) enum V2Create {
    Created,
    /// The key exists; the store's index at that moment.
    Exists(u64),
}

pub(crate) enum V2Watch {
    /// An event: its action, the node's value and modifiedIndex.
    Event {
        action: String,
        value: Option<String>,
        modified_index: u64,
    },
    /// Error 401: the index was cleared from the event history.
    Cleared,
}

impl V2 {
    pub(crate) fn new(d: &Discovery, ttl: u64) -> Result<V2> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .context("building the HTTP client")?;
        Ok(V2 {
            http,
            endpoints: d.endpoints.clone(),
            current: AtomicUsize::new(0),
            key: d.key.clone(),
            ttl,
        })
    }

    pub(crate) fn url(&self, query: &str) -> String {
        let i = self.current.load(Ordering::Relaxed) % self.endpoints.len();
        format!("{}/v2/keys{}{}", self.endpoints[i], self.key, query)
    }

    pub(crate) fn rotate(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends a request; returns status, X-Etcd-Index and the JSON body.
    pub(crate) async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(u16, Option<u64>, Value)> {
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.rotate();
                return Err(anyhow!("etcd v2 request failed: {e}"));
            }
        };
        let status = resp.status().as_u16();
        let index = resp
            .headers()
            .get("x-etcd-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = resp.bytes().await.context("reading etcd's answer")?;
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok((status, index, value))
    }

    pub(crate) fn form(&self, value: &str) -> String {
        format!("value={}&ttl={}", form_encode(value), self.ttl)
    }

    pub(crate) fn put(&self, query: &str, value: &str) -> reqwest::RequestBuilder {
        self.http
            .put(self.url(query))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(self.form(value))
            .timeout(Duration::from_secs(self.ttl.max(1)))
    }

    /// `Set(key, value, {TTL, PrevExist: false})`; returns the node's modifiedIndex.
    pub(crate) async fn create(&self, value: &str) -> Result<(V2Create, u64)> {
        let (status, index, body) = self.send(self.put("?prevExist=false", value)).await?;
        match (status, body["errorCode"].as_u64()) {
            (200 | 201, _) => {
                let m = body["node"]["modifiedIndex"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("etcd v2 create: no modifiedIndex in {body}"))?;
                Ok((V2Create::Created, m))
            }
            (_, Some(105)) => {
                let idx = body["index"].as_u64().or(index).unwrap_or(0);
                Ok((V2Create::Exists(idx), 0))
            }
            _ => bail!("etcd v2 create: status {status}: {body}"),
        }
    }

    /// `Set(key, value, {TTL, PrevIndex})`: the refresh; returns the new modifiedIndex.
    pub(crate) async fn refresh(&self, value: &str, prev_index: u64) -> Result<u64> {
        let (status, _, body) = self
            .send(self.put(&format!("?prevExist=true&prevIndex={prev_index}"), value))
            .await?;
        if status == 200 || status == 201 {
            body["node"]["modifiedIndex"]
                .as_u64()
                .ok_or_else(|| anyhow!("etcd v2 refresh: no modifiedIndex in {body}"))
        } else {
            bail!("etcd v2 refresh: status {status}: {body}")
        }
    }

    /// Deletes the key if it still holds `value`.
    pub(crate) async fn delete_if(&self, value: &str) -> Result<()> {
        let req = self
            .http
            .delete(self.url(&format!("?prevValue={}", form_encode(value))))
            .timeout(Duration::from_secs(2));
        let (status, _, body) = self.send(req).await?;
        if status == 200 {
            Ok(())
        } else {
            bail!("etcd v2 delete: status {status}: {body}")
        }
    }

    /// Reads the key: its value (None if absent) and the store's index.
    pub(crate) async fn get(&self) -> Result<(Option<String>, u64)> {
        let req = self.http.get(self.url("")).timeout(Duration::from_secs(5));
        let (status, index, body) = self.send(req).await?;
        match status {
            200 => {
                let idx = index
                    .or_else(|| body["node"]["modifiedIndex"].as_u64())
                    .unwrap_or(0);
                Ok((body["node"]["value"].as_str().map(str::to_string), idx))
            }
            404 => Ok((None, body["index"].as_u64().or(index).unwrap_or(0))),
            _ => bail!("etcd v2 get: status {status}: {body}"),
        }
    }

    /// Waits for the next event on the key at or after `wait_index`.
    pub(crate) async fn watch(&self, wait_index: u64) -> Result<V2Watch> {
        let req = self
            .http
            .get(self.url(&format!("?wait=true&waitIndex={wait_index}")));
        let (status, _, body) = self.send(req).await?;
        if body["errorCode"].as_u64() == Some(401) {
            return Ok(V2Watch::Cleared);
        }
        if status != 200 {
            bail!("etcd v2 watch: status {status}: {body}");
        }
        let action = body["action"]
            .as_str()
            .ok_or_else(|| anyhow!("etcd v2 watch: no action in {body}"))?
            .to_string();
        let modified_index = body["node"]["modifiedIndex"]
            .as_u64()
            .ok_or_else(|| anyhow!("etcd v2 watch: no modifiedIndex in {body}"))?;
        Ok(V2Watch::Event {
            action,
            value: body["node"]["value"].as_str().map(str::to_string),
            modified_index,
        })
    }
}

pub(crate) fn v2_removed(action: &str) -> bool {
    matches!(action, "delete" | "expire" | "compareAndDelete")
}

/// docker/leadership's Candidate over libkv's etcd lock.
pub(crate) async fn v2_candidate(st: Arc<State>, v2: Arc<V2>) {
    let mut backoff = Backoff::new();
    let period = Duration::from_secs_f64(v2.ttl as f64 / 3.0);
    loop {
        st.begin_claim();
        let created = v2.create(&st.advertise).await;
        if !matches!(created, Ok((V2Create::Created, _))) {
            st.end_claim();
        }
        match created {
            Ok((V2Create::Created, mut index)) => {
                backoff.reset();
                st.held().v2_key = true;
                // libkv follows the create with a Set(PrevExist: true, PrevIndex: created).
                let mut next = Duration::ZERO;
                st.set_role(true);
                loop {
                    tokio::time::sleep(next).await;
                    next = period;
                    match v2.refresh(&st.advertise, index).await {
                        Ok(i) => index = i,
                        Err(e) => {
                            warn!(name = %st.name, "lost the lock: {e:#}");
                            break;
                        }
                    }
                }
                st.held().v2_key = false;
                st.set_role(false);
            }
            Ok((V2Create::Exists(index), _)) => {
                backoff.reset();
                // Seeker: wait for the key to be deleted or to expire, then try again.
                let mut wait_index = index + 1;
                loop {
                    match v2.watch(wait_index).await {
                        Ok(V2Watch::Event {
                            action,
                            modified_index,
                            ..
                        }) => {
                            if v2_removed(&action) {
                                debug!(name = %st.name, %action, "leader key removed");
                                break;
                            }
                            wait_index = modified_index + 1;
                        }
                        Ok(V2Watch::Cleared) => break,
                        Err(e) => {
                            warn!(name = %st.name, "watching the leader key: {e:#}");
                            backoff.wait().await;
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                warn!(name = %st.name, "running for election: {e:#}");
                backoff.wait().await;
            }
        }
    }
}

/// docker/leadership's Follower: tracks the value in the store.
pub(crate) async fn v2_follower(st: Arc<State>, v2: Arc<V2>) {
    let mut backoff = Backoff::new();
    loop {
        let (value, index) = match v2.get().await {
            Ok(x) => x,
            Err(e) => {
                warn!(name = %st.name, "reading the leader key: {e:#}");
                backoff.wait().await;
                continue;
            }
        };
        backoff.reset();
        st.set_primary(value);
        let mut wait_index = index + 1;
        loop {
            match v2.watch(wait_index).await {
                Ok(V2Watch::Event {
                    action,
                    value,
                    modified_index,
                }) => {
                    if v2_removed(&action) {
                        st.set_primary(None);
                    } else {
                        st.set_primary(value);
                    }
                    wait_index = modified_index + 1;
                }
                Ok(V2Watch::Cleared) => break,
                Err(e) => {
                    warn!(name = %st.name, "watching the leader key: {e:#}");
                    backoff.wait().await;
                    break;
                }
            }
        }
    }
}
