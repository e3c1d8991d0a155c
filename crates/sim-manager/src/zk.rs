//! ZooKeeper elections (`zk://h:p[,h:p]/prefix`), as the real programs run them.
//!
//! - `--election key`: classic Swarm's lock, docker/leadership over libkv over
//!   samuel/go-zookeeper. `zk.NewLock(conn, path, WorldACL(PermAll))` then `Lock()`: create
//!   the missing parents (persistent, empty), then an ephemeral sequential child
//!   `<path>/_c_<32 hex>-lock-` (go-zookeeper's "protected" name, empty data); list the
//!   children; if ours has the lowest sequence the lock is ours, else watch the next lower
//!   child (`GetW`) and look again when it changes. Once it holds the lock, libkv sets the
//!   node's data to the advertise address (version -1) and never clears it. The session
//!   timeout plays the lock's TTL (`--ttl` seconds): a killed manager's child goes when its
//!   session expires. Unlike libkv (whose lock-lost channel never fires), losing the session
//!   makes the manager a replica, and it starts over on a new one.
//! - `--election contenders`: an ephemeral sequential child `<path>/n_` whose data is the
//!   advertise address; the lowest sequence leads; each contender watches the next lower
//!   one.
//!
//! The follower (docker/leadership's `Follower`) tracks the primary on a session of its
//! own, with a persistent watch: key: the node's data, as libkv's `Watch` reports it;
//! contenders: the lowest child's data.
//!
//! SIGTERM deletes our child (and leaves the data, as libkv does) and closes the session.

use super::*;
use zookeeper_client as zk;

/// How long the sequential children's suffix is.
const SEQUENCE_DIGITS: usize = 10;

pub(crate) struct ZkStore {
    /// `h:p[,h:p]`, as ZooKeeper clients take it.
    connect: String,
    /// The election node, `/<prefix>/<leader-key>`.
    path: String,
    session_timeout: Duration,
    contenders: bool,
    /// The candidate's current session and its child there, for resigning.
    mine: Mutex<Option<(zk::Client, Option<String>)>>,
}

impl ZkStore {
    pub(crate) fn new(d: &Discovery, ttl: u64, contenders: bool) -> ZkStore {
        let connect = d
            .endpoints
            .iter()
            .map(|e| e.trim_start_matches("http://"))
            .collect::<Vec<_>>()
            .join(",");
        ZkStore {
            connect,
            path: d.key.clone(),
            session_timeout: Duration::from_secs(ttl),
            contenders,
            mine: Mutex::new(None),
        }
    }

    fn mine(&self) -> std::sync::MutexGuard<'_, Option<(zk::Client, Option<String>)>> {
        self.mine.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn connect(&self) -> Result<zk::Client> {
        let connector = zk::Client::connector().with_session_timeout(self.session_timeout);
        let wait = self.session_timeout + Duration::from_secs(5);
        match tokio::time::timeout(wait, connector.connect(&self.connect)).await {
            Ok(client) => Ok(client?),
            Err(_) => bail!("no ZooKeeper session within {wait:?}"),
        }
    }

    /// go-zookeeper's `Lock` creates the node's missing ancestors (and the node) first.
    async fn ensure_path(&self, client: &zk::Client) -> Result<()> {
        let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        let mut at = String::new();
        for part in self.path.split('/').filter(|p| !p.is_empty()) {
            at.push('/');
            at.push_str(part);
            match client.create(&at, b"", &options).await {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                Err(e) => bail!("creating {at}: {e}"),
            }
        }
        Ok(())
    }
}

fn sequence(name: &str) -> Option<u64> {
    let digits = name.get(name.len().checked_sub(SEQUENCE_DIGITS)?..)?;
    if digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// The sequential children, lowest sequence first.
async fn contenders(client: &zk::Client, path: &str) -> Result<Vec<String>> {
    let mut children: Vec<(u64, String)> = match client.list_children(path).await {
        Ok(children) => children,
        Err(zk::Error::NoNode) => Vec::new(),
        Err(e) => bail!("listing {path}: {e}"),
    }
    .into_iter()
    .filter_map(|c| Some((sequence(&c)?, c)))
    .collect();
    children.sort();
    Ok(children.into_iter().map(|(_, c)| c).collect())
}

/// Why waiting in line or holding the lock ended.
enum Ended {
    /// The session is over (expired, closed): start over on a new one.
    SessionLost,
    /// Look again (the watched child changed, or an error worth a retry).
    Retry,
}

/// Waits for a one-shot watch to fire, or for the session to end.
async fn wait_watch(client: &zk::Client, watcher: zk::OneshotWatcher) -> Ended {
    let mut states = client.state_watcher();
    tokio::select! {
        event = watcher.changed() => {
            if event.event_type == zk::EventType::Session && event.session_state.is_terminated() {
                Ended::SessionLost
            } else {
                Ended::Retry
            }
        }
        () = async {
            loop {
                if states.changed().await.is_terminated() {
                    return;
                }
            }
        } => Ended::SessionLost,
    }
}

/// Waits in line until `mine` has the lowest sequence (go-zookeeper's `Lock` loop).
/// Ok(true): ours; Ok(false): our child is gone (start over in the same session).
async fn wait_in_line(client: &zk::Client, path: &str, mine: &str) -> Result<bool, Ended> {
    let my_seq = sequence(mine).unwrap_or(u64::MAX);
    loop {
        let children = contenders(client, path).await.map_err(|_| Ended::Retry)?;
        if !children.iter().any(|c| c == mine) {
            return Ok(false);
        }
        if children.first().map(String::as_str) == Some(mine) {
            return Ok(true);
        }
        // The next lower one: when it goes, look again.
        let Some(previous) = children
            .iter()
            .rfind(|c| sequence(c).is_some_and(|s| s < my_seq))
        else {
            return Ok(true);
        };
        let watched = format!("{path}/{previous}");
        match client.check_and_watch_stat(&watched).await {
            Ok((None, _)) => continue,
            Ok((Some(_), watcher)) => {
                if let Ended::SessionLost = wait_watch(client, watcher).await {
                    return Err(Ended::SessionLost);
                }
            }
            Err(e) if e == zk::Error::SessionExpired || e == zk::Error::ClientClosed => {
                return Err(Ended::SessionLost)
            }
            Err(_) => return Err(Ended::Retry),
        }
    }
}

/// One session of the candidate: queue, win, write (key), hold until the session or the
/// child is gone.
async fn candidate_session(st: &Arc<State>, store: &ZkStore, client: &zk::Client) -> Ended {
    if let Err(e) = store.ensure_path(client).await {
        warn!(name = %st.name, "{e:#}");
        return Ended::Retry;
    }
    let (prefix, data) = if store.contenders {
        ("n_".to_string(), st.advertise.as_bytes())
    } else {
        let guid: [u8; 16] = rand::random();
        (format!("_c_{}-lock-", hex(&guid)), &b""[..])
    };
    let options = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
    if store.contenders {
        // From the moment our child exists the store may name us (when the one before us
        // goes): a request arriving then waits for us to notice.
        st.begin_claim();
    }
    let wanted = format!("{}/{prefix}", store.path);
    let mine = match client.create(&wanted, data, &options).await {
        Ok((_, sequence)) => format!("{prefix}{sequence}"),
        Err(e) => {
            st.end_claim();
            warn!(name = %st.name, "queueing for the lock: {e}");
            return if client.state().is_terminated() {
                Ended::SessionLost
            } else {
                Ended::Retry
            };
        }
    };
    info!(name = %st.name, child = %mine, "queued for the lock");
    if let Some((_, child)) = store.mine().as_mut() {
        *child = Some(mine.clone());
    }
    let mine_path = format!("{}/{mine}", store.path);
    let won = match wait_in_line(client, &store.path, &mine).await {
        Ok(won) => won,
        Err(ended) => {
            st.end_claim();
            return ended;
        }
    };
    if !won {
        st.end_claim();
        return Ended::Retry;
    }
    if !store.contenders {
        // libkv: the lock is ours, now the value. Until the write is confirmed the store may
        // already name us.
        st.begin_claim();
        if let Err(e) = client
            .set_data(&store.path, st.advertise.as_bytes(), None)
            .await
        {
            st.end_claim();
            warn!(name = %st.name, "writing the leader value: {e}");
            let _ = client.delete(&mine_path, None).await;
            return if client.state().is_terminated() {
                Ended::SessionLost
            } else {
                Ended::Retry
            };
        }
    }
    st.set_role(true);
    // Held until our child goes (session expired, or deleted by hand).
    let ended = loop {
        match client.check_and_watch_stat(&mine_path).await {
            Ok((None, _)) => break Ended::Retry,
            Ok((Some(_), watcher)) => match wait_watch(client, watcher).await {
                Ended::SessionLost => break Ended::SessionLost,
                Ended::Retry => continue,
            },
            Err(_) if client.state().is_terminated() => break Ended::SessionLost,
            Err(e) => {
                debug!(name = %st.name, "watching our lock child: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    st.set_role(false);
    warn!(name = %st.name, child = %mine, "lost the lock");
    ended
}

/// Runs for election until the process ends.
pub(crate) async fn zk_candidate(st: Arc<State>, store: Arc<ZkStore>) {
    let mut backoff = Backoff::new();
    loop {
        let client = match store.connect().await {
            Ok(c) => c,
            Err(e) => {
                warn!(name = %st.name, "connecting to ZooKeeper: {e:#}");
                backoff.wait().await;
                continue;
            }
        };
        backoff.reset();
        *store.mine() = Some((client.clone(), None));
        loop {
            match candidate_session(&st, &store, &client).await {
                Ended::SessionLost => break,
                Ended::Retry => {
                    if client.state().is_terminated() {
                        break;
                    }
                    backoff.wait().await;
                }
            }
        }
        st.set_role(false);
        warn!(name = %st.name, "ZooKeeper session lost; starting over");
        *store.mine() = None;
    }
}

/// Tracks the primary in the store on a session of its own.
pub(crate) async fn zk_follower(st: Arc<State>, store: Arc<ZkStore>) {
    let mut backoff = Backoff::new();
    let mode = if store.contenders {
        zk::AddWatchMode::PersistentRecursive
    } else {
        zk::AddWatchMode::Persistent
    };
    loop {
        let client = match store.connect().await {
            Ok(c) => c,
            Err(e) => {
                warn!(name = %st.name, "connecting to ZooKeeper: {e:#}");
                backoff.wait().await;
                continue;
            }
        };
        let mut watcher = match client.watch(&store.path, mode).await {
            Ok(w) => w,
            Err(e) => {
                warn!(name = %st.name, "watching {}: {e}", store.path);
                backoff.wait().await;
                continue;
            }
        };
        backoff.reset();
        loop {
            match read_primary(&client, &store).await {
                Ok(value) => st.set_primary(value),
                Err(e) => warn!(name = %st.name, "reading the primary: {e:#}"),
            }
            let event = watcher.changed().await;
            st.watch_event();
            if event.event_type == zk::EventType::Session && event.session_state.is_terminated() {
                break;
            }
        }
    }
}

async fn read_primary(client: &zk::Client, store: &ZkStore) -> Result<Option<String>> {
    let path = if store.contenders {
        match contenders(client, &store.path).await?.first() {
            Some(lowest) => format!("{}/{lowest}", store.path),
            None => return Ok(None),
        }
    } else {
        store.path.clone()
    };
    match client.get_data(&path).await {
        Ok((data, _)) => Ok(Some(String::from_utf8_lossy(&data).into_owned())),
        Err(zk::Error::NoNode) => Ok(None),
        Err(e) => bail!("reading {path}: {e}"),
    }
}

/// SIGTERM: our child goes (the data stays, as libkv leaves it); dropping the client then
/// closes the session.
pub(crate) async fn zk_resign(st: &State, store: &ZkStore) {
    let mine = store.mine().take();
    if let Some((client, Some(child))) = mine {
        let path = format!("{}/{child}", store.path);
        match client.delete(&path, None).await {
            Ok(()) | Err(zk::Error::NoNode) => info!(name = %st.name, "resigned: deleted {path}"),
            Err(e) => warn!(name = %st.name, "resigning: {e}"),
        }
    }
}
