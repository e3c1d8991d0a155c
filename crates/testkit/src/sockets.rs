//! The sockets of another process, for tests that check what the proxy set on them: each is
//! duplicated into the test with `pidfd_getfd` (Linux 5.6+; root, or ptrace rights over the
//! process) and read with `getsockopt`, as the kernel sees it, not as the proxy says.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};

/// The TCP sockets of process `pid` whose peer is `peer`, duplicated into this process.
pub fn connected_to(pid: u32, peer: SocketAddr) -> Vec<OwnedFd> {
    // SAFETY: plain system calls; each returned descriptor is new and owned by us.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(
        pidfd >= 0,
        "pidfd_open({pid}): {}",
        std::io::Error::last_os_error()
    );
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let mut found = Vec::new();
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read the proxy's fds");
    for entry in dir.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Some(number) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        use std::os::fd::AsRawFd;
        // SAFETY: as above; a descriptor closed meanwhile gives an error, not a new fd.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), number, 0) };
        if fd < 0 {
            continue;
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let is_peer = socket2::SockRef::from(&fd)
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            == Some(peer);
        if is_peer {
            found.push(fd);
        }
    }
    found
}

/// Moves the calling thread into a network namespace of its own with loopback up, so that
/// the kernel's TCP counters ([`delayed_acks`]) count only what this test starts from this
/// thread (its servers and processes inherit the namespace). Root only, like dockerd's tests.
pub fn private_network() {
    // SAFETY: a plain system call on the calling thread.
    let status = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        status,
        0,
        "unshare(CLONE_NEWNET) (run the tests as root): {}",
        std::io::Error::last_os_error()
    );
    let up = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("run ip (apt-get install iproute2)");
    assert!(up.success(), "ip link set lo up: {up}");
}

/// The kernel's count of delayed ACKs sent (`TcpExt: DelayedACKs`) in the calling thread's
/// network namespace.
pub fn delayed_acks() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/netstat").expect("read netstat");
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (
        lines.next().expect("TcpExt names"),
        lines.next().expect("values"),
    );
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "DelayedACKs")
        .and_then(|(_, value)| value.parse().ok())
        .expect("a DelayedACKs counter")
}
