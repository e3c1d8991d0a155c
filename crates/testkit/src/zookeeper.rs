//! A real ZooKeeper for one test: standalone `ZooKeeperServerMain` on a free port of
//! 127.0.0.1 with its own data dir, killed on drop; `stop()`/`restart()` keep the port and
//! the data (ZooKeeper restores its tree and its sessions from the data dir). Plus blocking
//! helpers to act out elections the way the real programs leave them: sessions of their own
//! (ephemeral nodes live and die with them), persistent and ephemeral sequential nodes,
//! data, and a digest ACL. The helpers speak ZooKeeper through the same Rust client as the
//! backend, on a small runtime of their own, so no `zkCli.sh` JVM is started per step.
//!
//! The server is tuned for tests: `tickTime` 200 ms (sessions may be as short as 400 ms, so
//! an abandoned session expires quickly), sessions up to 60 s (the harness's own outlive a
//! stop/restart), no fsync, a small preallocated log, and no AdminServer (each would want
//! port 8080).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zookeeper_client as zk;

use crate::programs::Program;
use crate::server_process::{self, free_ports};

const INSTALL: &str = "scripts/install-deps (libzookeeper-java, openjdk-17-jre-headless)";
pub const JAR: Program = Program::new("TESTKIT_ZOOKEEPER_JAR", "/usr/share/java/zookeeper.jar");
/// A logger for ZooKeeper's slf4j (otherwise it logs nothing); part of libslf4j-java, which
/// the zookeeper package pulls in.
pub const LOGGER: Program = Program::new(
    "TESTKIT_SLF4J_SIMPLE_JAR",
    "/usr/share/java/slf4j-simple.jar",
);
const LOG: &str = "zookeeper.log";

/// How long the JVM may take to serve (a second or two here; more on a loaded machine).
const START_TIMEOUT: Duration = Duration::from_secs(40);

/// How long a helper waits for its session to be connected again (after a restart).
const RECONNECT: Duration = Duration::from_secs(20);

/// The server's settings a test may change.
#[derive(Clone, Copy, Debug)]
pub struct ZkOptions {
    pub tick_ms: u64,
    /// The longest session the server grants (ZooKeeper's `maxSessionTimeout`).
    pub max_session_ms: u64,
}

impl Default for ZkOptions {
    fn default() -> Self {
        Self {
            tick_ms: 200,
            max_session_ms: 60_000,
        }
    }
}

pub struct ZooKeeper {
    child: Option<Child>,
    port: u16,
    options: ZkOptions,
    dir: tempfile::TempDir,
    rt: Arc<tokio::runtime::Runtime>,
}

impl ZooKeeper {
    pub fn start() -> ZooKeeper {
        Self::start_with(ZkOptions::default())
    }

    /// Starts ZooKeeper on a free port and waits until it serves.
    pub fn start_with(options: ZkOptions) -> ZooKeeper {
        require();
        let dir = tempfile::Builder::new()
            .prefix("leader-proxy-zk-")
            .tempdir()
            .expect("create a temp dir for ZooKeeper");
        let rt = Arc::new(runtime());
        // A free port can be taken between our probe and the JVM's bind: try others then.
        for _ in 0..5 {
            let port = free_ports(1)[0];
            match launch(dir.path(), port, options, &rt) {
                Ok(child) => {
                    return ZooKeeper {
                        child: Some(child),
                        port,
                        options,
                        dir,
                        rt,
                    }
                }
                Err(log) if log.contains("Address already in use") => {
                    let _ = std::fs::remove_dir_all(dir.path().join("data"));
                }
                Err(log) => panic!("ZooKeeper did not start:\n{log}"),
            }
        }
        panic!("ZooKeeper did not start: no free port after 5 attempts");
    }

    /// `127.0.0.1:PORT`, as DISCOVERY URLs take it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn options(&self) -> ZkOptions {
        self.options
    }

    /// Kills ZooKeeper (SIGKILL: an outage, not a goodbye), keeping its data.
    pub fn stop(&mut self) {
        server_process::kill(&mut self.child);
    }

    /// Starts ZooKeeper again on the same port with the same data (and sessions), and
    /// waits until it serves.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match launch(self.dir.path(), self.port, self.options, &self.rt) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(log) if log.contains("Address already in use") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(log) => panic!("ZooKeeper did not restart:\n{log}"),
            }
        }
    }

    /// SIGSTOP: the server hangs with its connections open, as a store behind a dead link
    /// or in a frozen VM looks to its clients. Its session clocks go on: once thawed, it
    /// expires every session that has not been heard from within its timeout.
    pub fn freeze(&mut self) {
        server_process::signal(self.child.as_ref(), "ZooKeeper", "-STOP");
    }

    /// SIGCONT after [`Self::freeze`].
    pub fn thaw(&mut self) {
        server_process::signal(self.child.as_ref(), "ZooKeeper", "-CONT");
    }

    /// ZooKeeper's own log, for failure messages and for what only it can tell (expiries).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(LOG)).unwrap_or_default()
    }

    /// A new session with this timeout (the server clamps it to 2–`max_session_ms`).
    /// Dropped: closed (its ephemeral nodes go at once).
    pub fn session(&self, timeout: Duration) -> ZkSession {
        ZkSession::open(self, timeout, None, false)
    }

    /// A new session authenticated with ZooKeeper's digest scheme (`user:password`).
    pub fn session_with_auth(&self, timeout: Duration, auth: &str) -> ZkSession {
        ZkSession::open(self, timeout, Some(auth), false)
    }

    /// A session that is not closed when dropped: the server expires it after `timeout`,
    /// as it does the session of a killed manager. See [`ZkSession::abandon`].
    pub fn expiring_session(&self, timeout: Duration) -> ZkSession {
        ZkSession::open(self, timeout, None, true)
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen JVM does not die of SIGKILL until it is continued on some kernels.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.stop();
    }
}

/// One ZooKeeper session, with blocking helpers. Each helper waits for the session to be
/// connected (it reconnects by itself after a server restart) and fails the test on any
/// other error.
pub struct ZkSession {
    client: Option<zk::Client>,
    rt: Arc<tokio::runtime::Runtime>,
    endpoint: String,
}

impl ZkSession {
    fn open(zk: &ZooKeeper, timeout: Duration, auth: Option<&str>, detached: bool) -> ZkSession {
        let client = connect(&zk.rt, &zk.endpoint(), timeout, auth, detached).unwrap_or_else(|e| {
            panic!("ZooKeeper session on {}: {e}\n{}", zk.endpoint(), zk.log())
        });
        ZkSession {
            client: Some(client),
            rt: zk.rt.clone(),
            endpoint: zk.endpoint(),
        }
    }

    fn client(&self) -> &zk::Client {
        self.client.as_ref().expect("an open session")
    }

    /// False once the session is over (expired, closed): a new one is needed. A session
    /// that is reconnecting (the server restarted) is waited for: only the server can say
    /// whether it survived.
    pub fn is_alive(&self) -> bool {
        let client = self.client();
        let deadline = Instant::now() + RECONNECT;
        self.rt.block_on(wait_connected(client, deadline));
        !client.state().is_terminated()
    }

    /// The session's id, as ZooKeeper's log prints it (`0x…`).
    pub fn id(&self) -> String {
        self.client().session_id().to_string()
    }

    /// Runs one operation, again after a connection loss (the server restarting).
    fn run<T, F>(&self, what: &str, op: impl Fn() -> F) -> Result<T, zk::Error>
    where
        F: std::future::Future<Output = Result<T, zk::Error>>,
    {
        let client = self.client();
        let deadline = Instant::now() + RECONNECT;
        self.rt.block_on(async {
            loop {
                wait_connected(client, deadline).await;
                match tokio::time::timeout(Duration::from_secs(10), op()).await {
                    Ok(Err(zk::Error::ConnectionLoss)) | Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok(result) => return result,
                    Err(_) => panic!("ZooKeeper {what} on {}: no answer", self.endpoint),
                }
            }
        })
    }

    /// Creates `path` and any missing parent (persistent, empty, open to anyone), as
    /// go-zookeeper's lock does before queueing.
    pub fn ensure(&self, path: &str) {
        let c = self.client();
        let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        let mut at = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            at.push('/');
            at.push_str(part);
            let node = at.as_str();
            match self.run("create", || c.create(node, b"", &options)) {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                Err(e) => panic!("ZooKeeper create {node}: {e}"),
            }
        }
    }

    /// Creates a persistent node with `data` that only this session's authenticated
    /// identity may use (ACL `auth`: the digest identity the session added).
    pub fn create_private(&self, path: &str, data: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            if !parent.is_empty() {
                self.ensure(parent);
            }
        }
        let c = self.client();
        let options = zk::CreateMode::Persistent.with_acls(zk::Acls::creator_all());
        self.run("create", || c.create(path, data.as_bytes(), &options))
            .unwrap_or_else(|e| panic!("ZooKeeper create {path} (creator-only ACL): {e}"));
    }

    /// Creates an ephemeral sequential child `<parent>/<prefix><10 digits>` holding `data`;
    /// returns the child's name (without the parent).
    pub fn ephemeral_sequential(&self, parent: &str, prefix: &str, data: &str) -> String {
        let c = self.client();
        let wanted = format!("{parent}/{prefix}");
        let options = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
        let (_, sequence) = self
            .run("create", || c.create(&wanted, data.as_bytes(), &options))
            .unwrap_or_else(|e| panic!("ZooKeeper create {wanted}…: {e}"));
        format!("{prefix}{sequence}")
    }

    pub fn set_data(&self, path: &str, data: &str) -> zk::Stat {
        let c = self.client();
        self.run("set", || c.set_data(path, data.as_bytes(), None))
            .unwrap_or_else(|e| panic!("ZooKeeper set {path}: {e}"))
    }

    pub fn get_data(&self, path: &str) -> Option<String> {
        let c = self.client();
        match self.run("get", || c.get_data(path)) {
            Ok((data, _)) => Some(String::from_utf8_lossy(&data).into_owned()),
            Err(zk::Error::NoNode) => None,
            Err(e) => panic!("ZooKeeper get {path}: {e}"),
        }
    }

    /// Like [`Self::get_data`], but an error (such as ZooKeeper's "not authorized") is
    /// returned as its text instead of failing the test.
    pub fn try_get_data(&self, path: &str) -> Result<Option<String>, String> {
        let c = self.client();
        match self.run("get", || c.get_data(path)) {
            Ok((data, _)) => Ok(Some(String::from_utf8_lossy(&data).into_owned())),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn stat(&self, path: &str) -> Option<zk::Stat> {
        let c = self.client();
        self.run("stat", || c.check_stat(path))
            .unwrap_or_else(|e| panic!("ZooKeeper stat {path}: {e}"))
    }

    /// The children's names, in no particular order (none if the node is missing).
    pub fn children(&self, path: &str) -> Vec<String> {
        let c = self.client();
        match self.run("list", || c.list_children(path)) {
            Ok(children) => children,
            Err(zk::Error::NoNode) => Vec::new(),
            Err(e) => panic!("ZooKeeper list {path}: {e}"),
        }
    }

    /// Deletes a node if it is there.
    pub fn delete(&self, path: &str) {
        let c = self.client();
        match self.run("delete", || c.delete(path, None)) {
            Ok(()) | Err(zk::Error::NoNode) => {}
            Err(e) => panic!("ZooKeeper delete {path}: {e}"),
        }
    }

    /// Deletes every child of `path` (they are leaves: lock and contender nodes).
    pub fn delete_children(&self, path: &str) {
        for child in self.children(path) {
            self.delete(&format!("{path}/{child}"));
        }
    }

    /// Leaves the session to expire (it is not closed): the server deletes its ephemeral
    /// nodes once its timeout passes without a word from it. For sessions from
    /// [`ZooKeeper::expiring_session`].
    pub fn abandon(mut self) {
        let _guard = self.rt.enter();
        drop(self.client.take());
    }
}

impl Drop for ZkSession {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Closing sends a request: the runtime must drive it.
            let _guard = self.rt.enter();
            drop(client);
        }
    }
}

/// `n` random lowercase hex digits (go-zookeeper's protected prefix has 32, a uuid's hex 32).
pub fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(rand::random::<u32>() % 16, 16).unwrap_or('0'))
        .collect()
}

async fn wait_connected(client: &zk::Client, deadline: Instant) {
    let mut states = client.state_watcher();
    loop {
        let state = states.state();
        if state == zk::SessionState::SyncConnected || state.is_terminated() {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, states.changed()).await.is_err() {
            return;
        }
    }
}

fn connect(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    timeout: Duration,
    auth: Option<&str>,
    detached: bool,
) -> Result<zk::Client, zk::Error> {
    let mut connector = zk::Client::connector().with_session_timeout(timeout);
    if let Some(auth) = auth {
        connector = connector.with_auth("digest", auth.as_bytes());
    }
    if detached {
        connector = connector.with_detached();
    }
    rt.block_on(async {
        match tokio::time::timeout(Duration::from_secs(15), connector.connect(endpoint)).await {
            Ok(result) => result,
            Err(_) => Err(zk::Error::Timeout),
        }
    })
}

/// Two threads: one drives the sessions (pings) while the test thread blocks elsewhere.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime for the ZooKeeper helpers")
}

/// Runs ZooKeeper with its data and log in `dir` and waits until a session can read `/`;
/// on failure returns ZooKeeper's log.
fn launch(
    dir: &Path,
    port: u16,
    options: ZkOptions,
    rt: &tokio::runtime::Runtime,
) -> Result<Child, String> {
    let cfg = dir.join("zoo.cfg");
    let config = format!(
        "tickTime={tick}\n\
         dataDir={data}\n\
         clientPort={port}\n\
         clientPortAddress=127.0.0.1\n\
         admin.enableServer=false\n\
         minSessionTimeout={min}\n\
         maxSessionTimeout={max}\n\
         maxClientCnxns=0\n\
         forceSync=no\n\
         preAllocSize=1024\n",
        tick = options.tick_ms,
        data = dir.join("data").display(),
        min = options.tick_ms * 2,
        max = options.max_session_ms,
    );
    std::fs::write(&cfg, config).expect("write zoo.cfg");
    let log_path = dir.join(LOG);
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let log = server_process::open_log(&log_path, "ZooKeeper");
    let child = Command::new("java")
        // Small and quick to start: several servers run side by side on two cores.
        .args([
            "-Xmx128m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dzookeeper.admin.enableServer=false",
            "-cp",
            &format!("{JAR}:{LOGGER}"),
            "org.apache.zookeeper.server.ZooKeeperServerMain",
        ])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log file"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run java ({e}); install it: {INSTALL}"));
    let endpoint = format!("127.0.0.1:{port}");
    let serving = || {
        std::net::TcpStream::connect(&endpoint).is_ok() && {
            rt.block_on(async {
                let connector = zk::Client::connector()
                    .with_session_timeout(Duration::from_secs(4))
                    .with_fail_eagerly();
                let client =
                    tokio::time::timeout(Duration::from_secs(5), connector.connect(&endpoint))
                        .await;
                match client {
                    Ok(Ok(client)) => client.check_stat("/").await.is_ok(),
                    _ => false,
                }
            })
        }
    };
    server_process::wait_ready(
        child,
        "ZooKeeper",
        "ZooKeeper not serving",
        START_TIMEOUT,
        read_log,
        serving,
    )
}

/// Fails the test with the line that installs ZooKeeper, if it is missing.
fn require() {
    let java = Command::new("java")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(java, "`java` is not installed: {INSTALL}");
    JAR.require(INSTALL);
    LOGGER.require(INSTALL);
}
