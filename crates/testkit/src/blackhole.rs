//! A TCP address that does not answer: connections to it neither succeed nor get refused
//! until the dialler gives up, as with a manager whose host vanished (its SYNs are lost).
//!
//! A listener whose accept queue holds one connection, taken by a connection of its own:
//! Linux then drops every further SYN.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;

pub struct Blackhole {
    listener: TcpListener,
    _filler: TcpStream,
}

impl Blackhole {
    pub fn new() -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        // SAFETY: listen on a socket this function owns; it only changes the queue length.
        let rc = unsafe { libc::listen(listener.as_raw_fd(), 0) };
        assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
        let filler = TcpStream::connect(listener.local_addr().expect("local addr"))
            .expect("fill the accept queue");
        Blackhole {
            listener,
            _filler: filler,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("local addr")
    }
}

impl Default for Blackhole {
    fn default() -> Self {
        Self::new()
    }
}
