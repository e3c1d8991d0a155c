//! Drives one `LeaderSource` the way the router does and reads the `LeaderEvent`s it sends.
//!
//! The backend tests (etcd, ZooKeeper, Consul, store security) all build a `SourceConfig`,
//! run the source on a runtime of its own and wait for events with a timeout; this is that
//! code once, so that every backend is observed the same way.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use leader_proxy::discovery::{
    source_for, DiscoveryUrl, Election, LeaderAddr, LeaderEvent, SourceConfig,
};
use tokio::sync::mpsc;

/// An upper bound for anything the tests wait for; a healthy run is far below it.
pub const WAIT: Duration = Duration::from_secs(20);
/// The leader key as classic Swarm names it (under the discovery URL's prefix).
pub const LEADER_KEY: &str = "docker/swarm/leader";
/// How many events the channel holds unless a test asks otherwise: more than any test
/// leaves unread, so the source never waits for room by accident.
const CAPACITY: usize = 64;

/// The event announcing the leader at `s`, `HOST:PORT` (`[IPv6]:PORT`), built from its
/// host and port as given: not with `LeaderAddr::parse`, the parser under test.
pub fn addr(s: &str) -> LeaderEvent {
    let (host, port) = s
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{s:?} is not HOST:PORT"));
    assert!(!host.contains('/'), "{s:?} is not HOST:PORT (no scheme)");
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port
        .parse()
        .unwrap_or_else(|e| panic!("the port of {s:?}: {e}"));
    LeaderEvent::Leader(LeaderAddr::new(host, port))
}

/// What the test itself puts into a full channel so that the source blocks on its next
/// event: the test then decides what happens to the store while the source is stuck.
pub fn marker() -> LeaderEvent {
    LeaderEvent::Degraded("test marker".into())
}

/// The source's configuration as the proxy builds it, with the tests' short timeouts.
pub fn config(url: &str, election: Election, options: &[(&str, &str)]) -> SourceConfig {
    SourceConfig {
        url: DiscoveryUrl::parse(url).expect("a valid discovery URL"),
        leader_key: LEADER_KEY.into(),
        election,
        options: options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        connect_timeout: Duration::from_secs(2),
        probe_interval: Duration::from_millis(500),
        upstream_tls: None,
    }
}

/// [`config`] for `--election key`, the only election some backends' tests use.
pub fn key_config(url: &str, options: &[(&str, &str)]) -> SourceConfig {
    config(url, Election::Key, options)
}

/// Polls `check` until it holds, for at most [`WAIT`].
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port nothing listens on (bound, then released).
pub fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("127.0.0.1:{port}")
}

/// A source running on its own runtime, and the router's end of its channel.
pub struct Follower {
    rt: tokio::runtime::Runtime,
    rx: mpsc::Receiver<LeaderEvent>,
    /// The test's own sender, kept only by [`Follower::start_with`] for [`Follower::block`].
    tx: Option<mpsc::Sender<LeaderEvent>>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    pub fn start(config: SourceConfig) -> Follower {
        Self::spawn(config, CAPACITY, false, false)
    }

    /// Starts with a channel of one place, already taken by [`marker`]: the source blocks
    /// on its first event until the test reads.
    pub fn start_blocked(config: SourceConfig) -> Follower {
        Self::start_with(config, 1, true)
    }

    /// Starts with a channel of `capacity` places, the first taken by [`marker`] if
    /// `blocked`; the test keeps a sender, for [`Follower::block`].
    pub fn start_with(config: SourceConfig, capacity: usize, blocked: bool) -> Follower {
        Self::spawn(config, capacity, true, blocked)
    }

    fn spawn(config: SourceConfig, capacity: usize, keep_tx: bool, blocked: bool) -> Follower {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (tx, rx) = mpsc::channel(capacity);
        if blocked {
            tx.try_send(marker()).expect("an empty channel");
        }
        let source = source_for(config).expect("a source");
        let events = tx.clone();
        let task = rt.spawn(async move { source.run(events).await });
        let tx = keep_tx.then_some(tx);
        Follower { rt, rx, tx, task }
    }

    /// Fills the channel with [`marker`], so that the source blocks on its next event.
    pub fn block(&self) {
        let tx = self
            .tx
            .as_ref()
            .expect("a follower started with start_with");
        tx.try_send(marker()).expect("room for the marker");
    }

    /// The next event within `wait`: `Err` if none came, `Ok(None)` if the source stopped.
    fn poll(&mut self, wait: Duration) -> Result<Option<LeaderEvent>, ()> {
        let rx = &mut self.rx;
        self.rt
            .block_on(async { tokio::time::timeout(wait, rx.recv()).await })
            .map_err(|_| ())
    }

    pub fn next(&mut self, what: &str) -> LeaderEvent {
        self.next_within(WAIT, what)
    }

    pub fn next_within(&mut self, wait: Duration, what: &str) -> LeaderEvent {
        match self.poll(wait) {
            Ok(Some(event)) => event,
            Ok(None) => panic!("the source stopped while waiting for {what}"),
            Err(()) => panic!("no event within {wait:?} while waiting for {what}"),
        }
    }

    pub fn expect(&mut self, want: LeaderEvent) {
        let got = self.next(&format!("{want:?}"));
        assert_eq!(got, want);
    }

    pub fn expect_degraded(&mut self) -> String {
        match self.next("Degraded") {
            LeaderEvent::Degraded(reason) => reason,
            other => panic!("expected Degraded, got {other:?}"),
        }
    }

    /// The first event is `Degraded` (no leader was adopted before it), and no other event
    /// follows within a second while the source keeps retrying (its backoff starts at
    /// 100 ms: a second holds several attempts). Returns the reason.
    pub fn expect_only_degraded(&mut self) -> String {
        let reason = self.expect_degraded();
        if let Ok(Some(event)) = self.poll(Duration::from_secs(1)) {
            panic!("after Degraded({reason:?}) came {event:?}");
        }
        reason
    }

    pub fn expect_rejected(&mut self, value: &str) {
        match self.next("Rejected") {
            LeaderEvent::Rejected { value: got, .. } => assert_eq!(got, value),
            other => panic!("expected Rejected({value:?}), got {other:?}"),
        }
    }

    /// Reads events until `want` comes (a quick series of writes may be seen in part).
    pub fn expect_eventually(&mut self, want: LeaderEvent, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = self.next_within(left, &format!("{want:?}"));
            if got == want {
                return;
            }
            assert!(
                matches!(got, LeaderEvent::Leader(_) | LeaderEvent::NoLeader),
                "unexpected {got:?} while waiting for {want:?}"
            );
        }
    }

    /// Skips events until `want` comes; returns what came before it.
    pub fn until(&mut self, want: LeaderEvent) -> Vec<LeaderEvent> {
        let mut before = Vec::new();
        loop {
            let got = self.next(&format!("{want:?} (after {before:?})"));
            if got == want {
                return before;
            }
            before.push(got);
        }
    }

    /// Nothing is waiting in the channel right now.
    pub fn assert_quiet(&mut self) {
        if let Ok(event) = self.rx.try_recv() {
            panic!("unexpected event {event:?}");
        }
    }

    /// Nothing comes for `wait` (the election did not change for the proxy).
    pub fn assert_quiet_for(&mut self, wait: Duration) {
        if let Ok(Some(event)) = self.poll(wait) {
            panic!("unexpected event {event:?}");
        }
    }

    /// Drops the router's end (as the proxy does when it shuts down) and waits for the
    /// source to end.
    pub fn hang_up(self) {
        let Follower { rt, rx, task, .. } = self;
        drop(rx);
        let ended = rt.block_on(async { tokio::time::timeout(WAIT, task).await });
        assert!(
            ended.is_ok(),
            "the source still runs {WAIT:?} after its receiver went away"
        );
    }
}
