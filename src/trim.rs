//! Gives memory back to the system after many client connections closed.
//!
//! Each connection a proxied stream holds costs tens of KiB of buffers; glibc's allocator
//! keeps what they freed in its arenas, so a proxy that once held 8,000 `docker events`
//! streams stayed at about 1 GiB after they all ended (benches/streams.rs). `malloc_trim(0)`
//! hands the free pages back (144 MiB → 15 MiB in that measurement). It costs a walk over
//! the heap, so it runs only when the number of open client connections has fallen by
//! [`TRIM_AFTER_CLOSED`] from its highest since the last trim, checked every
//! [`CHECK_EVERY`], and on a blocking thread.

use std::time::Duration;

use prometheus::IntGauge;

/// How often the open-connections gauge is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Connections that must have closed (from the highest count since the last trim) before
/// memory is trimmed: a handful closing is normal traffic, not worth a heap walk.
pub const TRIM_AFTER_CLOSED: i64 = 256;

/// Watches `open` (`leader_proxy_client_connections`) for as long as the runtime runs.
pub async fn run(open: IntGauge) {
    let mut highest = open.get();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tick.tick().await;
        let now = open.get();
        highest = highest.max(now);
        if highest - now >= TRIM_AFTER_CLOSED {
            highest = now;
            // SAFETY: malloc_trim only walks glibc's own heap; it takes its locks itself.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    }
}
