//! A real dockerd for one test, as docs/testing.md#dockerd runs it: its own dirs in a temp
//! dir under /tmp (short paths: containerd's and the shims' unix sockets live under the exec
//! root), `-H unix://DIR/docker.sock -H tcp://127.0.0.1:PORT` on a free port, no iptables,
//! no bridge, the vfs storage driver, its own pidfile and an empty daemon.json (the
//! machine's /etc/docker is not read). There is no registry: a busybox image is imported as
//! `bb:local` from busybox-static. Containers run with `--network none`.
//!
//! Dropping it removes every container (dockerd is still running) and stops dockerd
//! (SIGTERM: it stops its containerd), then kills whatever is left that belongs to it —
//! a SIGKILLed dockerd leaves containerd, the shims and the containers behind — unmounts
//! what it left under its dirs, removes the cgroups of killed containers and the dirs.
//! Several run at once (distinct dirs, ports and daemon ids).
//!
//! [`Dockerd::start_tls`] runs it as a TLS-only manager: `--tlsverify` with a CA, a server
//! certificate for 127.0.0.1 and its key ([`crate::certs`]), so its TCP API takes
//! only clients with a certificate from that CA; its unix socket stays plain.
//!
//! Also: [`run`], a command runner with a deadline that feeds stdin and collects output
//! (a stuck docker CLI fails the test instead of hanging it), and [`docker`], a docker CLI
//! command with its own `DOCKER_HOST` and `DOCKER_CONFIG`.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::programs::Program;

pub const INSTALL: &str = "apt-get install docker.io busybox-static";
pub const DOCKERD: Program = Program::new("TESTKIT_DOCKERD", "/usr/sbin/dockerd");
/// dockerd starts the containerd it finds on its `PATH`; with `TESTKIT_CONTAINERD` set, that
/// file's directory comes first on dockerd's `PATH`.
pub const CONTAINERD: Program = Program::new("TESTKIT_CONTAINERD", "/usr/bin/containerd");
/// The machine's docker CLI (28.x): most scenarios.
pub const DOCKER: Program = Program::new("TESTKIT_DOCKER", "/usr/local/bin/docker");
/// Debian's docker CLI (20.10): BuildKit builds against dockerd 20.10.
pub const DEBIAN_DOCKER: Program = Program::new("TESTKIT_DEBIAN_DOCKER", "/usr/bin/docker");
/// busybox-static: the `bb:local` image is made of it.
pub const BUSYBOX: Program = Program::new("TESTKIT_BUSYBOX", "/bin/busybox");
/// Debian's python3, which sees python3-docker (a python3 first on PATH, such as pyenv's,
/// does not).
pub const PYTHON: Program = Program::new("TESTKIT_PYTHON", "/usr/bin/python3");

/// How long dockerd may take to answer `/_ping` (about a second here; CI machines are slower).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the graceful part of the stop may take before everything is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Dockerd {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    port: u16,
    /// Set by [`Dockerd::kill`]: only the sweep can clean up after it.
    killed: bool,
    /// `--tlsverify` with these files (in its dir): CA, server certificate, key.
    tls: Option<[PathBuf; 3]>,
}

impl Dockerd {
    /// Starts dockerd on a free port, waits until it answers, imports `bb:local`.
    pub fn start() -> Dockerd {
        Self::start_with(None)
    }

    /// [`Dockerd::start`] with `--tlsverify`: the TCP API speaks TLS only, with the server
    /// certificate `cert` (for 127.0.0.1) and its `key`, and requires client certificates
    /// signed by `ca` ([`crate::certs`] makes them).
    pub fn start_tls(ca: &Path, cert: &Path, key: &Path) -> Dockerd {
        Self::start_with(Some([ca, cert, key]))
    }

    fn start_with(tls_files: Option<[&Path; 3]>) -> Dockerd {
        for program in [DOCKERD, DEBIAN_DOCKER, CONTAINERD, BUSYBOX] {
            program.require(INSTALL);
        }
        DOCKER.require(
            "the docker CLI 28.x: install Docker's static CLI there; no Debian package has it \
             (scripts/install-deps --check)",
        );
        // /tmp, not $TMPDIR: unix socket paths are limited to 107 bytes.
        let mut dir = tempfile::Builder::new()
            .prefix("lpd-")
            .tempdir_in("/tmp")
            .expect("create a temp dir for dockerd");
        std::fs::write(dir.path().join("daemon.json"), "{}\n").expect("write daemon.json");
        let tls = tls_files.map(|[ca, cert, key]| {
            let tls_dir = dir.path().join("tls");
            std::fs::create_dir_all(&tls_dir).expect("mkdir tls");
            [
                (ca, "ca.pem"),
                (cert, "server.pem"),
                (key, "server-key.pem"),
            ]
            .map(|(from, name)| {
                let to = tls_dir.join(name);
                std::fs::copy(from, &to).expect("copy a certificate file");
                to
            })
        });
        for attempt in 0.. {
            let port = free_port();
            let mut dockerd = Dockerd {
                child: None,
                dir: Some(dir),
                port,
                killed: false,
                tls: tls.clone(),
            };
            dockerd.child = Some(dockerd.launch());
            match dockerd.wait_ready() {
                Ok(()) => {
                    dockerd.import_busybox();
                    return dockerd;
                }
                Err(log) if log.contains("address already in use") && attempt < 4 => {
                    dockerd.stop();
                    dir = dockerd.dir.take().expect("dir");
                    let _ = std::fs::remove_dir_all(dir.path().join("data"));
                    let _ = std::fs::remove_dir_all(dir.path().join("x"));
                }
                Err(log) => panic!("dockerd did not start:\n{log}"),
            }
        }
        unreachable!()
    }

    fn launch(&self) -> Child {
        let dir = self.dir();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("dockerd.log"))
            .expect("open the dockerd log");
        let socket = format!("unix://{}", self.socket().display());
        let tcp = format!("tcp://127.0.0.1:{}", self.port);
        let mut cmd = Command::new(DOCKERD);
        containerd_on_path(&mut cmd);
        if let Some([ca, cert, key]) = &self.tls {
            cmd.arg("--tlsverify")
                .arg("--tlscacert")
                .arg(ca)
                .arg("--tlscert")
                .arg(cert)
                .arg("--tlskey")
                .arg(key);
        }
        cmd.arg("--config-file")
            .arg(dir.join("daemon.json"))
            .args(["-H", &socket, "-H", &tcp])
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("--pidfile")
            .arg(dir.join("pid"))
            .args([
                "--iptables=false",
                "--bridge=none",
                "--storage-driver=vfs",
                "--shutdown-timeout=2",
            ])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            // Its own process group: the stop signals it and nothing of the test's.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {DOCKERD}: {e} ({INSTALL})"))
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // The TCP API is up too once the unix socket answers (dockerd serves all its
            // -H at once); its TLS, when on, is for the proxy to speak.
            let tcp_listening = std::net::TcpStream::connect(self.tcp_addr()).is_ok();
            if tcp_listening && ping_unix(&self.socket()) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("dockerd exited with {status}:\n{}", self.log()));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "dockerd did not answer within {START_TIMEOUT:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `tar -C rootfs -c . | docker import - bb:local`, the rootfs being busybox-static and
    /// a symlink per applet.
    fn import_busybox(&self) {
        let rootfs = self.dir().join("rootfs");
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin).expect("mkdir rootfs/bin");
        for d in ["tmp", "etc", "proc", "sys", "dev"] {
            std::fs::create_dir_all(rootfs.join(d)).expect("mkdir rootfs");
        }
        std::fs::copy(BUSYBOX, bin.join("busybox")).expect("copy busybox");
        let list = Command::new(BUSYBOX)
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let applet = applet.trim();
            if !applet.is_empty() && applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
            }
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")
            .expect("write passwd");
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").expect("write group");
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .output()
            .expect("tar the rootfs");
        assert!(tar.status.success(), "tar: {}", stderr(&tar.stderr));
        let out = run(
            self.direct(DEBIAN_DOCKER).args(["import", "-", "bb:local"]),
            Some(&tar.stdout),
            Duration::from_secs(60),
        );
        assert!(out.ok(), "docker import bb:local: {out}");
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir").path()
    }

    /// dockerd's TCP API address.
    pub fn tcp_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `127.0.0.1:PORT`, as a leader value in the store.
    pub fn endpoint(&self) -> String {
        self.tcp_addr().to_string()
    }

    /// dockerd's own unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir().join("docker.sock")
    }

    /// Its `DockerRootDir` (`docker info`): tells two dockerd apart.
    pub fn root_dir(&self) -> String {
        self.dir().join("data").display().to_string()
    }

    /// A docker CLI command talking to this dockerd directly (its unix socket).
    pub fn direct(&self, client: impl AsRef<OsStr>) -> Command {
        docker(
            client,
            &format!("unix://{}", self.socket().display()),
            &self.dir().join("client"),
        )
    }

    /// dockerd's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("dockerd.log")).unwrap_or_default()
    }

    /// SIGKILL dockerd alone: a manager dying. Its connections break at once; containerd,
    /// the shims and the containers stay behind until this is dropped.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.killed = true;
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if !self.killed && matches!(child.try_wait(), Ok(None)) {
            // Containers first: `rm -f` kills them and cleans their cgroups and mounts.
            let ids = run(
                self.direct(DEBIAN_DOCKER).args(["ps", "-aq"]),
                None,
                Duration::from_secs(10),
            );
            let ids: Vec<String> = ids
                .stdout_text()
                .split_whitespace()
                .map(String::from)
                .collect();
            if !ids.is_empty() {
                let _ = run(
                    self.direct(DEBIAN_DOCKER).args(["rm", "-f"]).args(&ids),
                    None,
                    Duration::from_secs(20),
                );
            }
            // A user-defined bridge network is a `br-…` interface in the host's network
            // namespace, which outlives dockerd and its data dir: each one left takes an
            // address pool until `network create` finds none.
            let _ = run(
                self.direct(DEBIAN_DOCKER).args(["network", "prune", "-f"]),
                None,
                Duration::from_secs(20),
            );
            terminate_group(&mut child, STOP_TIMEOUT);
        }
        kill_group(child);
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
        let Some(dir) = self.dir.take() else {
            return;
        };
        sweep(dir.path());
        unmount_under(dir.path());
        // vfs layers are plain directories owned by root: removable once nothing uses them.
        if let Err(e) = std::fs::remove_dir_all(dir.path()) {
            eprintln!("dockerd: cannot remove {}: {e}", dir.path().display());
        }
        std::mem::forget(dir);
    }
}

/// SIGTERM to the process group of `child` (a daemon and what it started), then waits up
/// to `timeout` for `child` to exit. Shared by every launcher of daemons that must shut
/// down cleanly before [`kill_group`] makes sure of it.
pub fn terminate_group(child: &mut Child, timeout: Duration) {
    signal_group(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL to the process group of `child` and to `child` itself, then reaps it: whatever
/// [`terminate_group`] left running goes.
pub fn kill_group(mut child: Child) {
    signal_group(child.id(), libc::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

pub fn signal_group(pid: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory effects; a negative pid names the process group.
    unsafe {
        libc::kill(-(pid as libc::pid_t), signal);
    }
}

/// Kills every process that belongs to the dockerd of `dir`: those whose command line names
/// the dir (dockerd, containerd, the shims) and all their descendants (the containers).
/// The cgroups the containers were in are removed once they are gone.
pub fn sweep(dir: &Path) {
    let needle = format!("{}/", dir.display());
    for _ in 0..50 {
        let procs = processes();
        let mut doomed: Vec<i32> = procs
            .iter()
            .filter(|p| p.cmdline.contains(&needle))
            .map(|p| p.pid)
            .collect();
        if doomed.is_empty() {
            return;
        }
        let mut i = 0;
        while i < doomed.len() {
            let parent = doomed[i];
            for p in &procs {
                if p.ppid == parent && !doomed.contains(&p.pid) {
                    doomed.push(p.pid);
                }
            }
            i += 1;
        }
        let cgroups: Vec<String> = doomed
            .iter()
            .flat_map(|&pid| container_cgroups(pid))
            .collect();
        for &pid in &doomed {
            // SAFETY: as in `signal_group`.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        for cgroup in cgroups {
            remove_cgroup(&cgroup);
        }
    }
    eprintln!("dockerd: processes under {needle} survived SIGKILL");
}

struct Proc {
    pid: i32,
    ppid: i32,
    cmdline: String,
}

/// The live (not zombie) processes.
fn processes() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // "pid (comm) S ppid …": comm may hold spaces and parentheses.
            let mut fields = stat.get(stat.rfind(')')? + 2..)?.split_whitespace();
            let state = fields.next()?;
            let ppid = fields.next()?.parse().ok()?;
            if state == "Z" || state == "X" {
                return None;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some(Proc {
                pid,
                ppid,
                cmdline: String::from_utf8_lossy(&cmdline).replace('\0', " "),
            })
        })
        .collect()
}

/// The cgroup paths of a container's process (`…/docker/<64 hex>`).
fn container_cgroups(pid: i32) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .filter(|path| {
            path.rsplit('/')
                .next()
                .is_some_and(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .map(String::from)
        .collect()
}

fn remove_cgroup(path: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hierarchies.flatten() {
        let _ = std::fs::remove_dir(h.path().join(path.trim_start_matches('/')));
    }
}

/// Unmounts (lazily) every mount point under `dir`, deepest first: the data root dockerd
/// bind-mounts onto itself, network namespaces of killed containers.
pub fn unmount_under(dir: &Path) {
    let prefix = dir.display().to_string();
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    for point in points {
        let Ok(c) = std::ffi::CString::new(point.clone()) else {
            continue;
        };
        // SAFETY: a valid C string; MNT_DETACH needs no further cooperation.
        let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            eprintln!(
                "dockerd: cannot unmount {point}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// `GET /_ping` on dockerd's unix socket answers 200.
fn ping_unix(socket: &Path) -> bool {
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 200")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// With `TESTKIT_CONTAINERD` set, puts its directory first on the `PATH` of `dockerd` (a
/// dockerd command), where dockerd looks for containerd (and containerd for its shim).
pub fn containerd_on_path(dockerd: &mut Command) {
    if std::env::var_os(CONTAINERD.var()).is_none_or(|v| v.is_empty()) {
        return;
    }
    let dir = CONTAINERD.path().parent().unwrap_or(Path::new("/"));
    let mut path = std::ffi::OsString::from(dir);
    if let Some(rest) = std::env::var_os("PATH") {
        path.push(":");
        path.push(rest);
    }
    dockerd.env("PATH", path);
}

/// A docker CLI command (`client` is [`DOCKER`] or [`DEBIAN_DOCKER`]) for `host`
/// (`tcp://…` or `unix://…`), with its own config dir: no context, credential helper or
/// TLS setting of the machine applies.
pub fn docker(client: impl AsRef<OsStr>, host: &str, config: &Path) -> Command {
    let _ = std::fs::create_dir_all(config);
    let mut cmd = Command::new(client);
    cmd.env("DOCKER_HOST", host)
        .env("DOCKER_CONFIG", config)
        .env("DOCKER_CLI_HINTS", "false")
        .env_remove("DOCKER_CONTEXT")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .env_remove("DOCKER_API_VERSION")
        .env_remove("DOCKER_BUILDKIT");
    cmd
}

/// What [`run`] saw.
pub struct Output {
    pub what: String,
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

impl Output {
    /// Exited with status 0 (not killed at the deadline).
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        stderr(&self.stderr)
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self
            .status
            .map_or_else(|| "killed at the deadline".to_string(), |s| s.to_string());
        let out = self.stdout_text();
        let shown: String = out.chars().take(2000).collect();
        write!(
            f,
            "`{}` → {status} after {:?}\nstdout: {shown}\nstderr: {}",
            self.what,
            self.elapsed,
            self.stderr_text()
        )
    }
}

fn stderr(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.chars().take(4000).collect()
}

/// Runs `cmd` with `stdin` (then closed; `None`: /dev/null), collecting its output; kills
/// it at `timeout` (then `status` is `None`).
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    let what = describe(cmd);
    let started = Instant::now();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{what}`: {e} ({INSTALL})"));
    let writer = stdin.map(|data| {
        let data = data.to_vec();
        let mut pipe = child.stdin.take().expect("piped stdin");
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let deadline = started + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    Output {
        what,
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        elapsed: started.elapsed(),
    }
}

/// `PROGRAM ARG…` for messages (environment left out).
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Fails with the install line when docker-py is missing for [`PYTHON`].
pub fn require_docker_py() {
    let out = run(
        Command::new(PYTHON).args(["-c", "import docker"]),
        None,
        Duration::from_secs(30),
    );
    assert!(
        out.ok(),
        "docker-py is missing for {PYTHON}: apt-get install python3-docker\n{out}"
    );
}
