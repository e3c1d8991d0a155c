//! Consul elections as docker/leadership + libkv run them: Consul's `api.Lock` on the
//! leader key (see the binary's docs).
//!
//! - libkv's `NewLock`: a session with behaviour `release`, lock-delay 1 ms and TTL = lock
//!   TTL / 2 (`--ttl 4` → `"2s"`; Consul invalidates a session twice its TTL after the last
//!   renewal, so the lock outlives a dead holder by about the lock TTL). Consul refuses TTLs
//!   below 10 s; the test double accepts them, which is what lets failover tests take
//!   seconds. The session is renewed every TTL/2 (`api.Session.RenewPeriodic`: after a
//!   failed renewal it retries every second, and gives up once a TTL went by without one).
//! - `api.Lock.Lock`: read the key (blocking on its index while someone holds it); when
//!   `Session` is empty, acquire it (`?acquire=SESSION&flags=0x2ddccbc058a50c18`, value = the
//!   advertise address). An acquire refused on a key nobody holds means a lock-delay is
//!   running: wait 5 s (`DefaultLockRetryTime`) and try again. A key with other flags is
//!   somebody else's: a conflict (an error, retried later).
//! - Held: `monitorLock`'s consistent blocking reads until the key's `Session` is no longer
//!   ours (or the session cannot be renewed): the lock is lost, the manager turns replica,
//!   and it runs again with a new session (the old one is destroyed, which libkv leaves to
//!   expire).
//! - The follower (docker/leadership's `Follower` on libkv's `Watch`): blocking reads,
//!   reporting the value whenever the index moves and the key exists, whether or not it is
//!   locked (libkv reports a stale value too, and nothing when the key is deleted).
//! - SIGTERM: release the key (its value stays, as `api.Lock`'s Unlock leaves it) and
//!   destroy the session. SIGKILL: the session expires, Consul releases the key.

use base64::Engine as _;
use bytes::Bytes;

use super::*;

/// The flags `api.Lock` puts on its key.
pub(crate) const LOCK_FLAGS: u64 = 0x2ddc_cbc0_58a5_0c18;
/// `api.DefaultLockRetryTime`: the wait after an acquire refused on a key nobody holds.
const LOCK_RETRY_TIME: Duration = Duration::from_secs(5);
/// `api.DefaultLockWaitTime`: how long one blocking read waits.
const LOCK_WAIT_TIME: Duration = Duration::from_secs(15);
/// libkv's lock-delay: "virtually disabled".
const LOCK_DELAY: &str = "1ms";

/// The key as Consul's KV answers it.
#[derive(Debug, Clone)]
pub(crate) struct ConsulKv {
    pub(crate) value: String,
    /// Empty when nobody holds the lock.
    pub(crate) session: String,
    pub(crate) flags: u64,
}

pub(crate) struct Consul {
    http: reqwest::Client,
    endpoints: Vec<String>,
    current: AtomicUsize,
    /// `prefix/docker/swarm/leader`, no leading slash.
    key: String,
    /// The lock TTL (`--ttl`).
    ttl: Duration,
    /// `CONSUL_HTTP_TOKEN`, as Consul's Go API reads it.
    token: Option<String>,
}

impl Consul {
    pub(crate) fn new(d: &Discovery, ttl: u64) -> Result<Consul> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .context("building the HTTP client")?;
        Ok(Consul {
            http,
            endpoints: d.endpoints.clone(),
            current: AtomicUsize::new(0),
            key: d.key.clone(),
            ttl: Duration::from_secs(ttl),
            token: std::env::var("CONSUL_HTTP_TOKEN")
                .ok()
                .filter(|t| !t.trim().is_empty()),
        })
    }

    /// The session TTL libkv asks for: half the lock TTL.
    fn session_ttl(&self) -> Duration {
        self.ttl / 2
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let i = self.current.load(Ordering::Relaxed) % self.endpoints.len();
        let request = self
            .http
            .request(method, format!("{}{path}", self.endpoints[i]));
        match &self.token {
            Some(token) => request.header("X-Consul-Token", token),
            None => request,
        }
    }

    fn kv_path(&self) -> String {
        format!("/v1/kv/{}", self.key)
    }

    /// Sends; on a connection failure the next request goes to the next agent.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, Option<u64>, Bytes)> {
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                self.current.fetch_add(1, Ordering::Relaxed);
                return Err(anyhow!("Consul request failed: {e}"));
            }
        };
        let status = response.status().as_u16();
        let index = response
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = response.bytes().await.context("reading Consul's answer")?;
        Ok((status, index, body))
    }

    /// `PUT /v1/session/create`, as libkv's `NewLock` makes it.
    pub(crate) async fn session_create(&self, name: &str) -> Result<String> {
        let body = json!({
            "Name": format!("sim-manager {name}"),
            "Behavior": "release",
            "LockDelay": LOCK_DELAY,
            "TTL": go_duration(self.session_ttl()),
        });
        let request = self
            .request(reqwest::Method::PUT, "/v1/session/create")
            .json(&body)
            .timeout(Duration::from_secs(5));
        let (status, _, body) = self.send(request).await?;
        if status != 200 {
            bail!(
                "session create: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let v: Value = serde_json::from_slice(&body).context("session create answer")?;
        v["ID"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("session create: no ID in {v}"))
    }

    /// `PUT /v1/session/renew/ID`: false when the session is gone.
    pub(crate) async fn session_renew(&self, id: &str) -> Result<bool> {
        let request = self
            .request(reqwest::Method::PUT, &format!("/v1/session/renew/{id}"))
            .timeout(Duration::from_secs(5));
        match self.send(request).await? {
            (200, _, _) => Ok(true),
            (404, _, _) => Ok(false),
            (status, _, body) => bail!(
                "session renew: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }

    pub(crate) async fn session_destroy(&self, id: &str) -> Result<()> {
        let request = self
            .request(reqwest::Method::PUT, &format!("/v1/session/destroy/{id}"))
            .timeout(Duration::from_secs(2));
        match self.send(request).await? {
            (200, _, _) => Ok(()),
            (status, _, body) => bail!(
                "session destroy: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }

    /// `GET /v1/kv/<key>`: the key (None if missing) and `X-Consul-Index`. With `index > 0`
    /// a blocking query of at most `wait`.
    pub(crate) async fn get(
        &self,
        index: u64,
        wait: Duration,
        consistent: bool,
    ) -> Result<(Option<ConsulKv>, u64)> {
        let mut query = Vec::new();
        if index > 0 {
            query.push(("index", index.to_string()));
            query.push(("wait", go_duration(wait)));
        }
        if consistent {
            query.push(("consistent", String::new()));
        }
        let request = self
            .request(reqwest::Method::GET, &self.kv_path())
            .query(&query)
            .timeout(wait + wait / 16 + Duration::from_secs(5));
        let (status, consul_index, body) = self.send(request).await?;
        let consul_index = consul_index
            .ok_or_else(|| anyhow!("KV get: HTTP {status} without X-Consul-Index"))?
            .max(1);
        match status {
            200 => {
                let v: Value = serde_json::from_slice(&body).context("KV get answer")?;
                let entry = &v[0];
                let value = match entry["Value"].as_str() {
                    Some(b64) => {
                        let raw = base64::engine::general_purpose::STANDARD
                            .decode(b64)
                            .context("KV value is not base64")?;
                        String::from_utf8_lossy(&raw).into_owned()
                    }
                    None => String::new(),
                };
                Ok((
                    Some(ConsulKv {
                        value,
                        session: entry["Session"].as_str().unwrap_or("").to_string(),
                        flags: entry["Flags"].as_u64().unwrap_or(0),
                    }),
                    consul_index,
                ))
            }
            404 => Ok((None, consul_index)),
            _ => bail!("KV get: HTTP {status}: {}", String::from_utf8_lossy(&body)),
        }
    }

    /// `PUT /v1/kv/<key>?acquire=SESSION&flags=LOCK_FLAGS` (or `release=`) with `value`.
    async fn lock_op(&self, op: &str, session: &str, value: &str) -> Result<bool> {
        let request = self
            .request(reqwest::Method::PUT, &self.kv_path())
            .query(&[(op, session.to_string()), ("flags", LOCK_FLAGS.to_string())])
            .body(value.to_string())
            .timeout(Duration::from_secs(5));
        match self.send(request).await? {
            (200, _, body) => Ok(serde_json::from_slice::<bool>(&body).unwrap_or(false)),
            (status, _, body) => {
                bail!("KV {op}: HTTP {status}: {}", String::from_utf8_lossy(&body))
            }
        }
    }

    pub(crate) async fn acquire(&self, session: &str, value: &str) -> Result<bool> {
        self.lock_op("acquire", session, value).await
    }

    pub(crate) async fn release(&self, session: &str, value: &str) -> Result<bool> {
        self.lock_op("release", session, value).await
    }
}

/// Go's `time.Duration.String()` for whole milliseconds: `2s`, `1.5s`, `500ms`.
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        let mut s = format!("{}.{:03}", ms / 1000, ms % 1000);
        while s.ends_with('0') {
            s.pop();
        }
        s + "s"
    }
}

/// `api.Session.RenewPeriodic`: renews every TTL/2 (every second after a failure); sets
/// `lost` when the session is gone or could not be renewed for a whole TTL.
async fn renew_periodic(consul: Arc<Consul>, id: String, lost: watch::Sender<bool>) {
    let ttl = consul.session_ttl();
    let mut wait = ttl / 2;
    let mut last_renewal = Instant::now();
    loop {
        if last_renewal.elapsed() > ttl {
            warn!("session {id}: not renewed for {ttl:?}; giving it up");
            let _ = lost.send(true);
            return;
        }
        tokio::time::sleep(wait).await;
        match consul.session_renew(&id).await {
            Ok(true) => {
                wait = ttl / 2;
                last_renewal = Instant::now();
            }
            Ok(false) => {
                warn!("session {id} expired");
                let _ = lost.send(true);
                return;
            }
            Err(e) => {
                debug!("session {id}: renewal failed: {e:#}");
                wait = Duration::from_secs(1);
            }
        }
    }
}

/// Waits until `lost` turns true (never returns while it is false).
async fn session_lost(lost: &mut watch::Receiver<bool>) {
    while !*lost.borrow_and_update() {
        if lost.changed().await.is_err() {
            // The renewer is gone without a verdict: treat as lost.
            return;
        }
    }
}

/// docker/leadership's Candidate over libkv's Consul lock.
pub(crate) async fn consul_candidate(st: Arc<State>, consul: Arc<Consul>) {
    let mut backoff = Backoff::new();
    loop {
        let session = match consul.session_create(&st.name).await {
            Ok(s) => s,
            Err(e) => {
                warn!(name = %st.name, "creating a session: {e:#}");
                backoff.wait().await;
                continue;
            }
        };
        st.held().consul_session = Some(session.clone());
        let (lost_tx, mut lost) = watch::channel(false);
        let renewer = tokio::spawn(renew_periodic(consul.clone(), session.clone(), lost_tx));
        let outcome = lock_and_hold(&st, &consul, &session, &mut lost).await;
        renewer.abort();
        st.set_role(false);
        {
            let mut held = st.held();
            held.consul_session = None;
            held.consul_locked = false;
        }
        if let Err(e) = consul.session_destroy(&session).await {
            debug!(name = %st.name, "destroying session {session}: {e:#}");
        }
        match outcome {
            Ok(()) => backoff.reset(),
            Err(e) => {
                warn!(name = %st.name, "running for election: {e:#}");
                backoff.wait().await;
            }
        }
    }
}

/// `api.Lock.Lock`, then `monitorLock` while held. Returns when the lock (or the session)
/// is lost; an error when the store failed or the key is someone else's.
async fn lock_and_hold(
    st: &State,
    consul: &Consul,
    session: &str,
    lost: &mut watch::Receiver<bool>,
) -> Result<()> {
    let mut wait_index = 0;
    loop {
        let read = tokio::select! {
            read = consul.get(wait_index, LOCK_WAIT_TIME, false) => read?,
            () = session_lost(lost) => bail!("session {session} lost while waiting for the lock"),
        };
        let (kv, index) = read;
        if let Some(kv) = &kv {
            if kv.flags != LOCK_FLAGS {
                bail!("lock conflict: the key has flags {:#x}", kv.flags);
            }
            if kv.session == session {
                break;
            }
            if !kv.session.is_empty() {
                wait_index = index;
                continue;
            }
        }
        st.begin_claim();
        let acquired = consul.acquire(session, &st.advertise).await;
        match acquired {
            Ok(true) => break,
            Ok(false) => {
                st.end_claim();
                let (kv, index) = consul.get(0, LOCK_WAIT_TIME, false).await?;
                if kv.is_some_and(|kv| !kv.session.is_empty()) {
                    wait_index = index;
                } else {
                    // Nobody holds it and still refused: a lock-delay is running.
                    debug!(name = %st.name, "acquire refused under lock-delay; retrying in {LOCK_RETRY_TIME:?}");
                    tokio::select! {
                        () = tokio::time::sleep(LOCK_RETRY_TIME) => {}
                        () = session_lost(lost) => bail!("session {session} lost while waiting for the lock"),
                    }
                    wait_index = 0;
                }
            }
            Err(e) => {
                st.end_claim();
                return Err(e);
            }
        }
    }

    // Held.
    st.held().consul_locked = true;
    st.set_role(true);
    let mut index = 0;
    loop {
        let read = tokio::select! {
            read = consul.get(index, LOCK_WAIT_TIME, true) => read,
            () = session_lost(lost) => {
                warn!(name = %st.name, "lost the lock: session {session} ended");
                break;
            }
        };
        match read {
            Ok((Some(kv), i)) if kv.session == session => index = i,
            Ok(_) => {
                warn!(name = %st.name, "lost the lock: the key is no longer held by session {session}");
                break;
            }
            Err(e) => {
                // api.Lock's MonitorRetries is 0: an error ends the reign.
                warn!(name = %st.name, "lost the lock: watching it failed: {e:#}");
                break;
            }
        }
    }
    st.held().consul_locked = false;
    st.set_role(false);
    Ok(())
}

/// docker/leadership's Follower over libkv's Consul `Watch`.
pub(crate) async fn consul_follower(st: Arc<State>, consul: Arc<Consul>) {
    let mut backoff = Backoff::new();
    let mut index = 0;
    loop {
        match consul.get(index, LOCK_WAIT_TIME, false).await {
            Ok((kv, i)) => {
                backoff.reset();
                if i == index {
                    continue;
                }
                index = i;
                if let Some(kv) = kv {
                    st.set_primary(Some(kv.value));
                }
            }
            Err(e) => {
                warn!(name = %st.name, "watching the leader key: {e:#}");
                index = 0;
                backoff.wait().await;
            }
        }
    }
}

/// SIGTERM: `api.Lock`'s Unlock (release, the value stays), then the session destroyed.
pub(crate) async fn consul_resign(st: &State, consul: &Consul) {
    let (session, locked) = {
        let mut held = st.held();
        let locked = std::mem::take(&mut held.consul_locked);
        (held.consul_session.take(), locked)
    };
    let Some(session) = session else { return };
    if locked {
        match consul.release(&session, &st.advertise).await {
            Ok(true) => info!(name = %st.name, "resigned: released the leader key"),
            Ok(false) => warn!(name = %st.name, "resigning: the key was no longer ours"),
            Err(e) => warn!(name = %st.name, "resigning: {e:#}"),
        }
    }
    match consul.session_destroy(&session).await {
        Ok(()) => info!(name = %st.name, "destroyed session {session}"),
        Err(e) => warn!(name = %st.name, "destroying session {session}: {e:#}"),
    }
}
