//! Open-files limits, for the tests that run the proxy under the usual soft limit of 1024
//! (tests/hostile_fd.rs) and open more client connections than that themselves.

/// The `(soft, hard)` open-files limits of process `pid` (`self` for this one), from
/// `/proc/PID/limits`: what the kernel enforces, whoever set it. `unlimited` is `u64::MAX`.
pub fn limits_of(pid: &str) -> (u64, u64) {
    let path = format!("/proc/{pid}/limits");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no \"Max open files\" in {path}:\n{text}"));
    let mut numbers = line
        .split_whitespace()
        .skip(3)
        .map(|n| n.parse::<u64>().unwrap_or(u64::MAX));
    let soft = numbers.next().expect("a soft limit");
    let hard = numbers.next().expect("a hard limit");
    (soft, hard)
}

/// Raises this test process's soft limit to its hard one (at most 65,536, plenty for any
/// test: an unlimited soft limit is refused by the kernel), so that it can hold the
/// connections it opens (the test runner may have started it with 1024).
pub fn raise_own_limit() {
    let (_, hard) = limits_of("self");
    let limit = libc::rlimit {
        rlim_cur: hard.min(1 << 16),
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads `limit`.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(
        rc,
        0,
        "raising the test's open-files limit: {}",
        std::io::Error::last_os_error()
    );
}

/// Panics unless `prlimit` is on PATH, naming its package.
pub fn require_prlimit() {
    let found = std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        found,
        "prlimit is missing: apt-get install util-linux (scripts/install-deps)"
    );
}
