//! One TCP keepalive policy for every long-lived socket: client connections, connections to
//! the managers, and store watches. A watch, an `attach` or `events` may be silent for
//! hours; without probes a peer whose host vanished (power loss, partition, a laptop gone
//! to sleep) holds its sockets forever. With these, it is noticed in about a minute.
//!
//! Each client library takes the numbers in its own type (socket2, pingora, reqwest,
//! tonic); they are written once, here.

use std::time::Duration;

/// Silence before the first probe.
pub const IDLE: Duration = Duration::from_secs(30);
/// Between probes.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the kernel ends the connection.
pub const RETRIES: u32 = 3;

/// The policy as socket2 takes it, for sockets the proxy accepts or dials itself.
pub fn socket2() -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new()
        .with_time(IDLE)
        .with_interval(INTERVAL)
        .with_retries(RETRIES)
}
