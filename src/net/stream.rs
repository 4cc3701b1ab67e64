//! The two halves of a peer connection, plain TCP or TLS over TCP.
//!
//! An enum rather than a boxed trait object: the plain path stays the same `OwnedReadHalf`/`OwnedWriteHalf`
//! calls behind one predictable branch per poll, and the TLS path is `tokio::io::split` of the TLS stream
//! (whose halves share the stream behind a lock: reads and writes of one TLS connection go through one
//! rustls state machine).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::TlsStream;

/// The read half of a peer connection.
#[derive(Debug)]
pub(crate) enum PeerRead {
    /// Plain TCP.
    Plain(OwnedReadHalf),
    /// TLS over TCP.
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

/// The write half of a peer connection.
#[derive(Debug)]
pub(crate) enum PeerWrite {
    /// Plain TCP.
    Plain(OwnedWriteHalf),
    /// TLS over TCP.
    Tls(WriteHalf<TlsStream<TcpStream>>),
}

/// Splits a plain TCP connection.
pub(crate) fn plain(stream: TcpStream) -> (PeerRead, PeerWrite) {
    let (r, w) = stream.into_split();
    (PeerRead::Plain(r), PeerWrite::Plain(w))
}

/// Splits an established TLS connection.
pub(crate) fn tls(stream: TlsStream<TcpStream>) -> (PeerRead, PeerWrite) {
    let (r, w) = tokio::io::split(stream);
    (PeerRead::Tls(r), PeerWrite::Tls(w))
}

impl AsyncRead for PeerRead {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerRead::Plain(r) => Pin::new(r).poll_read(cx, buf),
            PeerRead::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerWrite {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerWrite::Plain(w) => Pin::new(w).poll_write(cx, buf),
            PeerWrite::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerWrite::Plain(w) => Pin::new(w).poll_flush(cx),
            PeerWrite::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerWrite::Plain(w) => Pin::new(w).poll_shutdown(cx),
            PeerWrite::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerWrite::Plain(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            PeerWrite::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            PeerWrite::Plain(w) => w.is_write_vectored(),
            PeerWrite::Tls(w) => w.is_write_vectored(),
        }
    }
}
