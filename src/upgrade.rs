//! Upgrades without a dropped request (docs/cli.md#upgrades): `--upgrade-socket PATH` and
//! `--upgrade`, on top of the descriptor passing of [`crate::handover`].
//!
//! The running process listens on `--upgrade-socket` ([`serve`]). A new process started
//! with `--upgrade` connects there ([`take_over`]) and receives every listening socket:
//! the client listeners (TCP, TLS, unix), the admin listener and the upgrade socket itself,
//! each named like the setting it comes from (`listen 127.0.0.1:2375`,
//! `listen unix:///run/leader-proxy.sock`, `admin 127.0.0.1:9375`,
//! `upgrade-socket /run/leader-proxy/upgrade.sock`). Its own settings must name exactly the
//! same ones ([`take_over`]): a listener it lacks or adds is an error naming it, and the
//! old process, told nothing, serves on. Once the new process accepts on them it says so;
//! the old one then stops accepting (the sockets stay open in the new one, so a client
//! connecting meanwhile waits in the shared backlog and is never refused), leaves the unix
//! socket files in place, and finishes what is open (up to `--shutdown-grace`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::handover::{self, HandoverError};
use crate::proxy::listener::UnixSocket;

/// Why `--upgrade` cannot take the sockets over. The new process exits 1 with it
/// (docs/cli.md#exit-codes); the old one serves on.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "--upgrade: nothing answers on --upgrade-socket {} (is a leader-proxy running with \
         --upgrade-socket {0}? To start one anew, leave --upgrade out)",
        path.display()
    )]
    NoOldProcess {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--upgrade: taking the sockets over on {}", path.display())]
    Handover {
        path: PathBuf,
        source: HandoverError,
    },
    #[error(
        "--upgrade: the running process has no `{name}` (it has: {offered}); an upgrade \
         takes the same listeners over: a changed --listen, --admin or --upgrade-socket \
         needs a restart"
    )]
    Missing { name: String, offered: String },
    #[error(
        "--upgrade: the running process also has `{name}`, which this one's settings do not \
         name; an upgrade takes the same listeners over: a changed --listen, --admin or \
         --upgrade-socket needs a restart"
    )]
    Extra { name: String },
    #[error("--upgrade: the socket handed over as `{name}`: {source}")]
    Unusable {
        name: String,
        source: std::io::Error,
    },
}

/// The sockets a running process handed over, taken one by one by name.
pub struct Taken {
    path: PathBuf,
    sockets: BTreeMap<String, OwnedFd>,
    offered: String,
    stream: UnixStream,
}

/// Connects to the process running on `path` and receives its listening sockets, which must
/// be those named in `expected` (`listen ADDR`, `admin ADDR`, `upgrade-socket PATH`). On a
/// mismatch the sockets are closed here before any is used (a unix socket's file stays:
/// it is the old process's), and the old process serves on.
pub async fn take_over(path: &Path, expected: &[String]) -> Result<Taken, UpgradeError> {
    let path = path.to_path_buf();
    let owned = path.clone();
    let exchange = tokio::task::spawn_blocking(move || {
        let mut stream =
            UnixStream::connect(&owned).map_err(|source| UpgradeError::NoOldProcess {
                path: owned.clone(),
                source,
            })?;
        let handed = handover::take(&mut stream).map_err(|source| UpgradeError::Handover {
            path: owned.clone(),
            source,
        })?;
        Ok((stream, handed))
    })
    .await
    .map_err(|e| UpgradeError::Handover {
        path: path.clone(),
        source: HandoverError::Io(std::io::Error::other(e)),
    })?;
    let (stream, handed) = exchange?;
    let offered = handed
        .iter()
        .map(|h| h.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    for name in expected {
        if !handed.iter().any(|h| h.name == *name) {
            return Err(UpgradeError::Missing {
                name: name.clone(),
                offered,
            });
        }
    }
    if let Some(extra) = handed.iter().find(|h| !expected.contains(&h.name)) {
        return Err(UpgradeError::Extra {
            name: extra.name.clone(),
        });
    }
    info!(
        "--upgrade: the running process on {} handed over: {offered}",
        path.display()
    );
    Ok(Taken {
        path,
        sockets: handed.into_iter().map(|h| (h.name, h.fd)).collect(),
        offered,
        stream,
    })
}

impl Taken {
    fn socket(&mut self, name: &str) -> Result<OwnedFd, UpgradeError> {
        self.sockets
            .remove(name)
            .ok_or_else(|| UpgradeError::Missing {
                name: name.to_string(),
                offered: self.offered.clone(),
            })
    }

    /// The TCP listener named `name`, bound at `addr`; logs `Listening on ADDR` like a bind.
    pub fn tcp(&mut self, name: &str, addr: SocketAddr) -> Result<TcpListener, UpgradeError> {
        let unusable = |source| UpgradeError::Unusable {
            name: name.to_string(),
            source,
        };
        let listener = std::net::TcpListener::from(self.socket(name)?);
        let bound = listener.local_addr().map_err(unusable)?;
        if bound != addr {
            return Err(unusable(std::io::Error::other(format!(
                "it is bound to {bound}"
            ))));
        }
        listener.set_nonblocking(true).map_err(unusable)?;
        TcpListener::from_std(listener).map_err(unusable)
    }

    /// The unix listener named `name`, whose file is `path`; this process owns the file now.
    pub fn unix(&mut self, name: &str, path: &Path) -> Result<UnixSocket, UpgradeError> {
        let listener = std::os::unix::net::UnixListener::from(self.socket(name)?);
        UnixSocket::inherited(listener, path).map_err(|source| UpgradeError::Unusable {
            name: name.to_string(),
            source,
        })
    }

    /// Every socket is taken (as [`take_over`] checked against the settings): what is left
    /// is telling the old process.
    pub fn finish(self) -> Confirm {
        Confirm {
            path: self.path,
            stream: self.stream,
        }
    }
}

/// Told to the old process once the new one accepts on every socket.
pub struct Confirm {
    path: PathBuf,
    stream: UnixStream,
}

impl Confirm {
    /// Tells the old process to stop accepting. If it is gone already, nothing is lost:
    /// the sockets are served here.
    pub async fn ready(self) {
        let Confirm { path, mut stream } = self;
        let told = tokio::task::spawn_blocking(move || handover::ready(&mut stream)).await;
        match told {
            Ok(Ok(())) => info!(
                "--upgrade: serving on every socket; the old process stops accepting ({})",
                path.display()
            ),
            Ok(Err(e)) => warn!("--upgrade: cannot tell the old process to stop accepting: {e}"),
            Err(e) => warn!("--upgrade: cannot tell the old process to stop accepting: {e}"),
        }
    }
}

/// Serves upgrade requests on `socket` until a new process took `sockets` over (then it
/// returns; the upgrade socket's file stays, the new process serves it). A request that
/// fails (the new process refused a mismatch, or died) changes nothing here.
pub async fn serve(socket: UnixSocket, sockets: Vec<(String, OwnedFd)>) {
    let sockets = Arc::new(sockets);
    loop {
        let stream = match socket.listener().accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "--upgrade-socket: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let pid = stream
            .peer_cred()
            .ok()
            .and_then(|cred| cred.pid())
            .map_or_else(|| "?".to_string(), |pid| pid.to_string());
        info!("--upgrade-socket: process {pid} asks for the listening sockets");
        let given = Arc::clone(&sockets);
        let exchange = tokio::task::spawn_blocking(move || {
            let mut stream = stream.into_std()?;
            stream.set_nonblocking(false)?;
            let fds: Vec<(String, BorrowedFd<'_>)> = given
                .iter()
                .map(|(name, fd)| (name.clone(), fd.as_fd()))
                .collect();
            handover::give(&mut stream, &fds)
        })
        .await;
        match exchange {
            Ok(Ok(())) => {
                info!(
                    "--upgrade-socket: process {pid} took the listening sockets over; no \
                     new connections here, finishing what is open"
                );
                socket.leave_file();
                return;
            }
            Ok(Err(e)) => {
                warn!("--upgrade-socket: process {pid} did not take over: {e}; serving on")
            }
            Err(e) => warn!("--upgrade-socket: process {pid} did not take over: {e}; serving on"),
        }
    }
}
