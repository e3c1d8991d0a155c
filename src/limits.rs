//! The open-files limit of the process and the client-connection cap derived from it.
//!
//! Services are often started with a soft `RLIMIT_NOFILE` of 1024 (systemd's default,
//! Docker containers) and a much higher hard one. Go programs, dockerd among them, raise the
//! soft limit to the hard one at start; leader-proxy does the same ([`raise_open_files`]),
//! so that a thousand idle clients do not starve the store, the managers and the admin API
//! of sockets. `--max-connections` then caps client connections below that limit
//! ([`default_max_connections`]), see docs/cli.md.

/// File descriptors kept aside from client traffic for the store, the admin listener and
/// its clients, the listeners themselves, logs and the like.
pub const RESERVED_FDS: u64 = 256;

/// The soft limit most services start with (systemd, Docker containers): what the cap is
/// derived from when the limit cannot be read.
pub const USUAL_SOFT_LIMIT: u64 = 1024;

/// The open-files limits of the process, before and after [`raise_open_files`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit the process was started with.
    pub before: u64,
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit (the ceiling for `soft`).
    pub hard: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot {what} the open-files limit (RLIMIT_NOFILE): {source}")]
pub struct LimitError {
    what: &'static str,
    source: std::io::Error,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. A hard limit of "unlimited" is not
/// taken literally (the kernel refuses a soft limit above `fs.nr_open`): the soft limit is
/// then raised to `fs.nr_open`.
pub fn raise_open_files() -> Result<OpenFiles, LimitError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(LimitError {
            what: "read",
            source: std::io::Error::last_os_error(),
        });
    }
    let before = limit.rlim_cur;
    let mut target = limit.rlim_max;
    if target == libc::RLIM_INFINITY {
        target = nr_open().unwrap_or(before);
    }
    if target > before {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads `raised`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(LimitError {
                what: "raise",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(OpenFiles {
        before,
        soft: target.max(before),
        hard: limit.rlim_max,
    })
}

/// The kernel's ceiling for any process's open files (`/proc/sys/fs/nr_open`).
fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The default of `--max-connections`: half of what the soft limit leaves after
/// [`RESERVED_FDS`], since an L7 client connection holds a second descriptor for its
/// upstream; at least 1.
pub fn default_max_connections(soft_limit: u64) -> usize {
    let half = soft_limit.saturating_sub(RESERVED_FDS) / 2;
    usize::try_from(half).unwrap_or(usize::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_keeps_a_reserve_and_two_descriptors_per_client() {
        assert_eq!(default_max_connections(1024), 384);
        assert_eq!(default_max_connections(20_000), 9_872);
        assert_eq!(default_max_connections(100), 1);
    }

    #[test]
    fn raising_twice_changes_nothing_the_second_time() {
        let first = raise_open_files().expect("raise");
        assert!(first.soft >= first.before);
        let second = raise_open_files().expect("raise again");
        assert_eq!(second.before, second.soft);
        assert_eq!(second.soft, first.soft);
    }
}
