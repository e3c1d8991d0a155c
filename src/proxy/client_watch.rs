//! Whether the client of a held request is still there, seen on its socket without reading
//! from it: the request's body and anything pipelined after it stay where pingora or the
//! hijack relay will read them.
//!
//! A held request whose client is gone is dropped, never sent (docs/failover.md#hold). What
//! "gone" means depends on the request:
//!
//! - without `Upgrade`: the client closed its side (end-of-input, a FIN) or the socket
//!   failed. The request cannot be answered to anyone, and a `POST /containers/c1/kill`
//!   the user gave up on with Ctrl-C must not run minutes later;
//! - with `Upgrade` (attach, exec): only a socket error (a reset). The docker CLI half-closes
//!   its side after sending `docker run -i`'s stdin and still reads the output.
//!
//! Linux tells both apart without a read: `poll` reports `POLLRDHUP` when the peer closed
//! its side (even with unread data before it) and `POLLHUP`/`POLLERR` when the socket is
//! dead. A duplicate of the client's descriptor is registered with tokio to be woken when
//! either may have happened; the original stays with its owner.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The client socket of one held request, and what counts as its client leaving.
pub struct ClientWatch {
    fd: AsyncFd<OwnedFd>,
    upgrade: bool,
}

impl ClientWatch {
    /// Watches the client socket `fd` of a request (`upgrade`: it carries `Upgrade`).
    ///
    /// `fd` must be open for the duration of this call; the watch keeps a duplicate of its
    /// own, so it stays valid if the owner closes the original first.
    pub fn new(fd: RawFd, upgrade: bool) -> io::Result<Self> {
        // SAFETY: the caller passes the descriptor of a socket it holds open for this call;
        // it is only duplicated here.
        let owned = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
        // SAFETY: the duplicate is owned by the `AsyncFd`: open, and the same, until it is
        // dropped with it.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }?;
        Ok(Self { fd, upgrade })
    }

    /// True when the client is gone now (see the module docs).
    pub fn is_gone(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.fd.get_ref().as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, a zero timeout: poll only writes `revents`.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        if ready <= 0 {
            return false;
        }
        let dead = libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
        let gone = if self.upgrade {
            dead
        } else {
            dead | libc::POLLRDHUP
        };
        poll.revents & gone != 0
    }

    /// Completes when the client is gone; pending for as long as it is there.
    pub async fn gone(&self) {
        // Without `Upgrade`, woken by data or end-of-input (the end-of-input stays ready:
        // `is_gone` then holds). With it, only by an error: end-of-input would stay ready
        // and wake it without end.
        let interest = if self.upgrade {
            Interest::ERROR
        } else {
            Interest::READABLE
        };
        loop {
            if self.is_gone() {
                return;
            }
            match self.fd.ready(interest).await {
                // Cleared, so that data nobody reads here does not wake it again; a later
                // end-of-input or reset does.
                Ok(mut guard) => guard.clear_ready(),
                // The reactor cannot watch it: it is not known to be gone.
                Err(_) => return std::future::pending().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn end_of_input_is_gone_without_upgrade_only() {
        let (mut client, server) = pair().await;
        let plain = ClientWatch::new(server.as_raw_fd(), false).unwrap();
        let upgrade = ClientWatch::new(server.as_raw_fd(), true).unwrap();
        // Unread data is not a departure.
        client.write_all(b"body bytes").await.unwrap();
        assert!(!plain.is_gone());
        client.shutdown().await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), plain.gone())
            .await
            .expect("a half-close ends a plain request's client");
        assert!(
            !upgrade.is_gone(),
            "a half-closed upgrade client is still there"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(100), upgrade.gone())
                .await
                .is_err(),
            "a half-closed upgrade client is still there"
        );

        // A reset ends both, also one that comes while `gone` waits (`join!` polls it first).
        let reset = async move {
            let socket = socket2::SockRef::from(&client);
            socket.set_linger(Some(Duration::ZERO)).unwrap();
            drop(client);
        };
        tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(upgrade.gone(), reset)
        })
        .await
        .expect("a reset ends an upgrade's client");
    }
}
