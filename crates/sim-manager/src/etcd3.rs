//! etcd v3 elections: a leased put-if-absent key, and etcd's election recipe.

use super::*;

pub(crate) async fn v3_connect(d: &Discovery) -> Result<EtcdClient> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    Ok(EtcdClient::connect(&d.endpoints, Some(opts)).await?)
}

/// A lease kept alive every TTL/3 (etcd's concurrency.Session). `lost` turns true when the
/// lease expired or could not be kept alive within its TTL.
pub(crate) struct Session {
    lease: i64,
    lost: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn v3_session(client: &EtcdClient, ttl: u64) -> Result<Session> {
    let mut c = client.clone();
    let grant = tokio::time::timeout(Duration::from_secs(5), c.lease_grant(ttl as i64, None))
        .await
        .map_err(|_| anyhow!("lease grant timed out"))??;
    let lease = grant.id();
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let period = Duration::from_secs_f64(ttl as f64 / 3.0);
        let mut deadline = Instant::now() + Duration::from_secs(ttl);
        let mut keeper: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)> =
            None;
        loop {
            match keeper.as_mut() {
                None => {
                    // Opening the stream sends a first keep-alive and reads its answer.
                    match tokio::time::timeout(period, c.lease_keep_alive(lease)).await {
                        Ok(Ok(k)) => {
                            keeper = Some(k);
                            deadline = Instant::now() + Duration::from_secs(ttl);
                        }
                        Ok(Err(e)) if e.to_string().contains("lease not found") => {
                            let _ = tx.send(true);
                            return;
                        }
                        other => debug!("lease {lease:x} keep-alive failed: {other:?}"),
                    }
                }
                Some((k, stream)) => {
                    let sent = k.keep_alive().await.is_ok();
                    let answer = if sent {
                        tokio::time::timeout(period, stream.message()).await
                    } else {
                        Ok(Ok(None))
                    };
                    match answer {
                        Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                            deadline = Instant::now() + Duration::from_secs(resp.ttl() as u64);
                        }
                        Ok(Ok(Some(_))) => {
                            // TTL 0: the lease is gone.
                            let _ = tx.send(true);
                            return;
                        }
                        other => {
                            debug!("lease {lease:x} keep-alive failed: {other:?}");
                            keeper = None;
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                let _ = tx.send(true);
                return;
            }
            tokio::time::sleep(period).await;
        }
    });
    Ok(Session {
        lease,
        lost: rx,
        task,
    })
}

pub(crate) enum WatchEnd {
    Matched,
    SessionLost,
    Error,
}

/// Watches `key` (or the prefix) from `start_rev` until `pred` matches an event, the session
/// is lost, or the watch fails (compaction, error: the caller reads again).
pub(crate) async fn v3_watch_until(
    client: &EtcdClient,
    key: &str,
    prefix: bool,
    start_rev: i64,
    lost: Option<&mut watch::Receiver<bool>>,
    mut pred: impl FnMut(&etcd_client::Event) -> bool,
) -> WatchEnd {
    let mut c = client.clone();
    let mut opts = WatchOptions::new().with_start_revision(start_rev);
    if prefix {
        opts = opts.with_prefix();
    }
    let mut stream = match c.watch(key, Some(opts)).await {
        Ok(s) => s,
        Err(e) => {
            warn!("watching {key}: {e}");
            return WatchEnd::Error;
        }
    };
    let mut never = watch::channel(false).1;
    let lost = lost.unwrap_or(&mut never);
    loop {
        if *lost.borrow() {
            return WatchEnd::SessionLost;
        }
        tokio::select! {
            msg = stream.message() => match msg {
                Ok(Some(resp)) => {
                    if resp.canceled() {
                        return WatchEnd::Error;
                    }
                    if resp.events().iter().any(&mut pred) {
                        return WatchEnd::Matched;
                    }
                }
                Ok(None) | Err(_) => return WatchEnd::Error,
            },
            r = lost.changed() => {
                if r.is_err() || *lost.borrow() {
                    return WatchEnd::SessionLost;
                }
            }
        }
    }
}

/// `--election key` on etcd v3: leased put-if-absent.
pub(crate) async fn v3_key_candidate(st: Arc<State>, client: EtcdClient, key: String, ttl: u64) {
    let mut backoff = Backoff::new();
    loop {
        let mut session = match v3_session(&client, ttl).await {
            Ok(s) => s,
            Err(e) => {
                warn!(name = %st.name, "creating a lease: {e:#}");
                backoff.wait().await;
                continue;
            }
        };
        st.held().lease = Some(session.lease);
        let lease = session.lease;
        while !*session.lost.borrow() {
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    st.advertise.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.clone(), None)]);
            let mut c = client.clone();
            st.begin_claim();
            let resp = tokio::time::timeout(Duration::from_secs(5), c.txn(txn)).await;
            if !matches!(resp, Ok(Ok(ref r)) if r.succeeded()) {
                // Lost, failed, or already ours (settled by set_role below).
                st.end_claim();
            }
            let resp = match resp {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    warn!(name = %st.name, "running for election: {e}");
                    backoff.wait().await;
                    continue;
                }
                Err(_) => {
                    warn!(name = %st.name, "running for election: timed out");
                    continue;
                }
            };
            backoff.reset();
            let mut rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            // The key may already be ours (a retry after an error).
            let ours = resp.succeeded()
                || resp.op_responses().iter().any(|op| match op {
                    etcd_client::TxnOpResponse::Get(g) => g
                        .kvs()
                        .first()
                        .map(|kv| kv.lease() == lease)
                        .unwrap_or(false),
                    _ => false,
                });
            if !ours {
                // Replica: wait for the key to go away, then try again.
                if let WatchEnd::Error = v3_watch_until(
                    &client,
                    &key,
                    false,
                    rev + 1,
                    Some(&mut session.lost),
                    |ev| ev.event_type() == EventType::Delete,
                )
                .await
                {
                    backoff.wait().await;
                }
                continue;
            }
            st.set_role(true);
            // Held until the key is deleted or taken over, or the lease is lost.
            loop {
                let end = v3_watch_until(
                    &client,
                    &key,
                    false,
                    rev + 1,
                    Some(&mut session.lost),
                    |ev| match ev.event_type() {
                        EventType::Delete => true,
                        EventType::Put => ev.kv().map(|kv| kv.lease() != lease).unwrap_or(true),
                    },
                )
                .await;
                match end {
                    WatchEnd::Matched | WatchEnd::SessionLost => break,
                    WatchEnd::Error => {
                        // Could not tell: look at the key itself.
                        backoff.wait().await;
                        let mut c = client.clone();
                        match c.get(key.clone(), None).await {
                            Ok(r) => {
                                if !r
                                    .kvs()
                                    .first()
                                    .map(|kv| kv.lease() == lease)
                                    .unwrap_or(false)
                                {
                                    break;
                                }
                                rev = r.header().map(|h| h.revision()).unwrap_or(rev);
                            }
                            Err(e) => warn!(name = %st.name, "reading the leader key: {e}"),
                        }
                    }
                }
            }
            st.set_role(false);
        }
        st.set_role(false);
        warn!(name = %st.name, "lease {:x} lost", lease);
        st.held().lease = None;
    }
}

/// `--election contenders`: etcd's election service (what `etcdctl elect` does).
pub(crate) async fn v3_contender(st: Arc<State>, client: EtcdClient, name: String, ttl: u64) {
    let mut backoff = Backoff::new();
    loop {
        let mut session = match v3_session(&client, ttl).await {
            Ok(s) => s,
            Err(e) => {
                warn!(name = %st.name, "creating a lease: {e:#}");
                backoff.wait().await;
                continue;
            }
        };
        st.held().lease = Some(session.lease);
        info!(name = %st.name, "campaigning as {}/{:x}", name, session.lease);
        loop {
            if *session.lost.borrow() {
                break;
            }
            let mut c = client.clone();
            let campaign = c.campaign(name.clone(), st.advertise.clone(), session.lease);
            st.begin_claim();
            let resp = tokio::select! {
                r = campaign => r,
                _ = session.lost.changed() => {
                    st.end_claim();
                    break;
                }
            };
            if resp.is_err() {
                st.end_claim();
            }
            let mut resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    warn!(name = %st.name, "campaign: {e}");
                    backoff.wait().await;
                    continue;
                }
            };
            backoff.reset();
            let Some(leader) = resp.take_leader() else {
                warn!(name = %st.name, "campaign answered without a leader key");
                backoff.wait().await;
                continue;
            };
            let mut rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            let my_key = String::from_utf8_lossy(leader.key()).into_owned();
            st.held().leader_key = Some(leader);
            st.set_role(true);
            loop {
                let end = v3_watch_until(
                    &client,
                    &my_key,
                    false,
                    rev + 1,
                    Some(&mut session.lost),
                    |ev| ev.event_type() == EventType::Delete,
                )
                .await;
                match end {
                    WatchEnd::Error => {
                        backoff.wait().await;
                        let mut c = client.clone();
                        if let Ok(r) = c.get(my_key.clone(), None).await {
                            if r.kvs().is_empty() {
                                break;
                            }
                            rev = r.header().map(|h| h.revision()).unwrap_or(rev);
                        }
                    }
                    WatchEnd::Matched | WatchEnd::SessionLost => break,
                }
            }
            st.held().leader_key = None;
            st.set_role(false);
        }
        st.set_role(false);
        warn!(name = %st.name, "lease {:x} lost", session.lease);
        st.held().lease = None;
    }
}

/// Tracks the leader in the store: the key's value, or the proposal of the contender with
/// the lowest create revision.
pub(crate) async fn v3_follower(st: Arc<State>, client: EtcdClient, key: String, contenders: bool) {
    let mut backoff = Backoff::new();
    let prefix = format!("{key}/");
    loop {
        let mut c = client.clone();
        let got = if contenders {
            let opts = GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Ascend)
                .with_limit(1);
            c.get(prefix.clone(), Some(opts)).await
        } else {
            c.get(key.clone(), None).await
        };
        let resp = match got {
            Ok(r) => r,
            Err(e) => {
                warn!(name = %st.name, "reading the leader: {e}");
                backoff.wait().await;
                continue;
            }
        };
        backoff.reset();
        let value = resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
        st.set_primary(value);
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let (watched, is_prefix) = if contenders {
            (prefix.as_str(), true)
        } else {
            (key.as_str(), false)
        };
        // Any change: read again (simple, and always consistent with the store).
        if let WatchEnd::Error = v3_watch_until(&client, watched, is_prefix, rev + 1, None, |_| {
            st.watch_event();
            true
        })
        .await
        {
            backoff.wait().await;
        }
    }
}
