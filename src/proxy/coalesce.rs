//! A write buffer in front of a client connection while pingora serves a request on it.
//!
//! pingora writes a response head and then its body in separate writes, and flushes where
//! a response (or a 1xx head, or a chunk of a streamed body) must reach the client. On
//! pingora's own listeners a small write buffer joins the head and a small body into one
//! segment; a connection handed to it from outside (ours: the front reads every head
//! first) has none, so each response cost two `send` calls, and on loopback each `send`
//! also wakes the receiver (issue 11's profile). [`Coalesced`] restores pingora's
//! buffering for the duration of one request; the front unwraps it again before it reads
//! the next head, so the hijack relay and the front's own answers write straight through.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};

/// The size of pingora's own listener write buffer (`DEFAULT_L4_WRITE_BUFFER_SIZE`, one
/// TCP segment): a head and a small body (most Docker API answers) go out together; a
/// larger write passes straight through, after what is buffered.
pub const WRITE_BUFFER: usize = 1460;

/// A client connection `S` with a write buffer, for one request served by pingora.
#[derive(Debug)]
pub struct Coalesced<S> {
    inner: BufWriter<S>,
}

impl<S: AsyncWrite> Coalesced<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner: BufWriter::with_capacity(WRITE_BUFFER, inner),
        }
    }

    /// The connection again, once pingora handed it back: pingora flushed what it wrote
    /// (it ends every response with a flush), so nothing is left in the buffer.
    pub fn into_inner(self) -> S {
        debug_assert!(self.inner.buffer().is_empty());
        self.inner.into_inner()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesced<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Flushes, then shuts the connection's write side down (tokio's `BufWriter` does both).
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// The rest of what pingora asks of a connection is the wrapped connection's (none of ours
// carries TLS that pingora should see: client TLS ends in `tls::TlsConn`).

#[async_trait]
impl<S: AsyncWrite + Unpin + Send> Shutdown for Coalesced<S> {
    async fn shutdown(&mut self) {
        // The peer may be gone already; there is nobody left to tell.
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.inner).await;
    }
}

impl<S: AsyncWrite + UniqueID> UniqueID for Coalesced<S> {
    fn id(&self) -> UniqueIDType {
        self.inner.get_ref().id()
    }
}

impl<S: Ssl> Ssl for Coalesced<S> {}

impl<S: AsyncWrite + GetTimingDigest> GetTimingDigest for Coalesced<S> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_ref().get_timing_digest()
    }
}

impl<S: AsyncWrite + GetProxyDigest> GetProxyDigest for Coalesced<S> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_ref().get_proxy_digest()
    }
}

impl<S: AsyncWrite + GetSocketDigest> GetSocketDigest for Coalesced<S> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_ref().get_socket_digest()
    }
}

#[async_trait]
impl<S: Send> Peek for Coalesced<S> {}
