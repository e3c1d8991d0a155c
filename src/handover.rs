//! The wire side of `--upgrade` (docs/cli.md#upgrades): listening sockets passed from the
//! running process to a new one over a unix stream socket, as `SCM_RIGHTS` descriptors.
//!
//! One exchange per connection, both sides blocking (it happens once per upgrade):
//! 1. the old process sends one message: a 4-byte big-endian length and a JSON list of the
//!    sockets' names (`listen 127.0.0.1:2375`, `admin 127.0.0.1:9375`, …), with every
//!    descriptor attached in the same order;
//! 2. the new process checks them and starts serving, then writes [`READY`];
//! 3. only then does the old process stop accepting. Anything else (the new process exits,
//!    refuses a mismatch, says nothing for [`READY_TIMEOUT`]) leaves it serving as before.
//!
//! It knows descriptors and names only, not what the sockets are used for.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// What the new process writes once it serves on the sockets it was given.
pub const READY: &[u8] = b"ready\n";

/// How long the old process waits for [`READY`] (the new one has bound nothing: it only
/// starts its accept loops) and the new one for the sockets.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// More descriptors than one message can carry on Linux (`SCM_MAX_FD`).
const MAX_SOCKETS: usize = 253;

/// Why a hand-over did not happen; the messages are for the operator.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Sys(#[from] nix::Error),
    #[error("the other process sent {0}")]
    Garbled(String),
    #[error("the new process closed the connection without taking the sockets over")]
    NotTaken,
}

/// One listening socket, named for the log and for matching (`listen ADDR`, `admin ADDR`).
pub struct Handed {
    pub name: String,
    pub fd: OwnedFd,
}

/// The old process's side: sends `sockets` on `stream` and waits for [`READY`]. `Ok` means
/// the new process serves them: stop accepting.
pub fn give(
    stream: &mut UnixStream,
    sockets: &[(String, BorrowedFd<'_>)],
) -> Result<(), HandoverError> {
    if sockets.len() > MAX_SOCKETS {
        return Err(HandoverError::Garbled(format!(
            "{} sockets, more than {MAX_SOCKETS}",
            sockets.len()
        )));
    }
    let names: Vec<&str> = sockets.iter().map(|(name, _)| name.as_str()).collect();
    let names = serde_json::to_vec(&names).map_err(io::Error::other)?;
    let length = u32::try_from(names.len())
        .map_err(|_| HandoverError::Garbled("a list of names over 4 GiB".into()))?
        .to_be_bytes();
    let fds: Vec<RawFd> = sockets.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    let message = [length.as_slice(), names.as_slice()].concat();
    let sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(&message)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    // The descriptors went with the first byte; the rest of a long list follows plainly.
    stream.write_all(&message[sent..])?;
    stream.set_read_timeout(Some(READY_TIMEOUT))?;
    let mut answer = [0u8; READY.len()];
    match stream.read_exact(&mut answer) {
        Ok(()) if answer == READY => Ok(()),
        Ok(()) => Err(HandoverError::Garbled(format!(
            "{:?} instead of {:?}",
            String::from_utf8_lossy(&answer),
            String::from_utf8_lossy(READY)
        ))),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(HandoverError::NotTaken),
        Err(e) => Err(e.into()),
    }
}

/// The new process's side: the sockets the old one sent on `stream`, in its order. Answer
/// with [`ready`] once they are served.
pub fn take(stream: &mut UnixStream) -> Result<Vec<Handed>, HandoverError> {
    stream.set_read_timeout(Some(READY_TIMEOUT))?;
    let mut data = vec![0u8; 64 * 1024];
    let mut control = nix::cmsg_space!([RawFd; MAX_SOCKETS]);
    let (received, fds) = {
        let mut iov = [IoSliceMut::new(&mut data)];
        let message = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for cmsg in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(rights) = cmsg {
                // SAFETY: the kernel just installed these descriptors in this process for
                // this message; nothing else owns them.
                fds.extend(
                    rights
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (message.bytes, fds)
    };
    if received < 4 {
        return Err(HandoverError::Garbled(format!(
            "a message of {received} bytes"
        )));
    }
    let length = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let mut names = data[4..received].to_vec();
    if names.len() < length {
        let mut rest = vec![0u8; length - names.len()];
        stream.read_exact(&mut rest)?;
        names.extend(rest);
    }
    let names: Vec<String> = serde_json::from_slice(&names[..length.min(names.len())])
        .map_err(|e| HandoverError::Garbled(format!("a list of names that is not JSON: {e}")))?;
    if names.len() != fds.len() {
        return Err(HandoverError::Garbled(format!(
            "{} names for {} sockets",
            names.len(),
            fds.len()
        )));
    }
    Ok(names
        .into_iter()
        .zip(fds)
        .map(|(name, fd)| Handed { name, fd })
        .collect())
}

/// The new process serves the sockets [`take`] gave it: the old one may stop accepting.
pub fn ready(stream: &mut UnixStream) -> io::Result<()> {
    stream.write_all(READY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn sockets_cross_with_their_names_and_the_old_side_waits_for_ready() {
        let (mut old, mut new) = UnixStream::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let name = format!("listen {addr}");
        let giving = std::thread::spawn(move || {
            let sockets = [(name, listener.as_fd())];
            give(&mut old, &sockets).map_err(|e| e.to_string())
        });
        let taken = take(&mut new).unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].name, format!("listen {addr}"));
        let listener = std::net::TcpListener::from(taken.into_iter().next().unwrap().fd);
        assert_eq!(listener.local_addr().unwrap(), addr);
        ready(&mut new).unwrap();
        assert_eq!(giving.join().unwrap(), Ok(()));
    }

    #[test]
    fn a_new_process_that_leaves_takes_nothing() {
        let (mut old, mut new) = UnixStream::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let giving = std::thread::spawn(move || {
            let sockets = [("listen x".to_string(), listener.as_fd())];
            give(&mut old, &sockets).map_err(|e| e.to_string())
        });
        drop(take(&mut new).unwrap());
        drop(new);
        let e = giving.join().unwrap().unwrap_err();
        assert!(e.contains("without taking"), "{e}");
    }
}
