//! Store answers that redirect elsewhere, for the tests that the proxy never follows them:
//! [`Front`], an HTTP front of a real store (etcd) that relays to it until switched to
//! answer every request `307 Temporary Redirect` to a [`Witness`], a server that only records
//! who contacted it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A server that answers nothing and records every connection and every byte sent to it.
pub struct Witness {
    addr: SocketAddr,
    seen: Arc<Seen>,
}

#[derive(Default)]
struct Seen {
    connections: AtomicU64,
    bytes: Mutex<Vec<u8>>,
    stop: AtomicBool,
}

impl Witness {
    pub fn start() -> Witness {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the witness");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Seen::default());
        let recorder = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if recorder.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                recorder.connections.fetch_add(1, Ordering::SeqCst);
                let recorder = recorder.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut buf) {
                        recorder
                            .bytes
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        Witness { addr, seen }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.seen.connections.load(Ordering::SeqCst)
    }

    /// Everything sent to it so far, as text.
    pub fn received(&self) -> String {
        let bytes = self.seen.bytes.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.seen.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees `stop`; not counted by the test any more.
        let _ = TcpStream::connect(self.addr);
    }
}

/// A TCP front of an HTTP server: relays every connection to it, until
/// [`Front::redirect_to`] cuts the relayed connections and answers every request after that
/// with `307 Temporary Redirect`, `Location: http://TARGET` + the request's path and query.
pub struct Front {
    addr: SocketAddr,
    shared: Arc<FrontShared>,
}

struct FrontShared {
    upstream: SocketAddr,
    redirect: Mutex<Option<SocketAddr>>,
    relayed: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

impl Front {
    pub fn start(upstream: SocketAddr) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the front");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(FrontShared {
            upstream,
            redirect: Mutex::new(None),
            relayed: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let serving = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if serving.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let serving = serving.clone();
                std::thread::spawn(move || serving.serve(stream));
            }
        });
        Front { addr, shared }
    }

    /// `127.0.0.1:PORT`, for store URLs.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Cuts every connection relayed so far.
    fn cut_relayed(&self) {
        for stream in self
            .shared
            .relayed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// From now on every request is redirected to `target`; connections relayed so far are
    /// cut, so a client waiting on one (a watch) asks again.
    pub fn redirect_to(&self, target: SocketAddr) {
        *self
            .shared
            .redirect
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(target);
        self.cut_relayed();
    }
}

impl FrontShared {
    fn serve(&self, mut client: TcpStream) {
        let redirect = *self.redirect.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(target) = redirect {
            return answer_redirect(&mut client, target);
        }
        let Ok(upstream) = TcpStream::connect(self.upstream) else {
            return;
        };
        let (Ok(client_copy), Ok(upstream_copy)) = (client.try_clone(), upstream.try_clone())
        else {
            return;
        };
        if let (Ok(c), Ok(u)) = (client.try_clone(), upstream.try_clone()) {
            let mut relayed = self.relayed.lock().unwrap_or_else(|e| e.into_inner());
            relayed.push(c);
            relayed.push(u);
        }
        std::thread::spawn(move || relay(client_copy, upstream_copy));
        relay(upstream, client);
    }
}

/// Copies `from` to `to` until either ends, then closes both.
fn relay(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// Reads one request head and answers it with a redirect to the same path on `target`.
fn answer_redirect(client: &mut TcpStream, target: SocketAddr) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf) {
            Ok(n @ 1..) => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split_whitespace().nth(1).unwrap_or("/");
    let answer = format!(
        "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{target}{path}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let _ = client.write_all(answer.as_bytes());
}

impl Drop for Front {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        self.cut_relayed();
    }
}
