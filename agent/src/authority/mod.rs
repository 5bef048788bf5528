//! Lets gRPC clients of every stack use the agent's Unix sockets by rewriting the HTTP/2
//! `:authority` they send before h2 reads it.
//!
//! Why: on a Unix socket grpc-core (Python, C++, Ruby, Envoy's `google_grpc`) sends the
//! percent-encoded socket path as `:authority` and grpc-java the raw path; h2 refuses both as
//! malformed and resets the stream (hyperium/h2#442, hyperium/hyper#3750), so only Go and Rust
//! clients could use our sockets. A Unix socket has no host, so its server side turns whatever
//! authority arrives into `localhost`. Incoming HEADERS/CONTINUATION blocks are HPACK-decoded
//! with the client's dynamic table ([`hpack`]) and re-encoded as never-indexed literals, so
//! h2's table stays empty and the two tables cannot drift apart; all other bytes pass through
//! untouched. TCP/TLS listeners do not use this and keep h2's strict checking. Drop this module
//! once h2 accepts such authorities.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

mod frames;
mod hpack;

use frames::FrameRewriter;
pub use frames::RewriteError;

/// Which way the rewritten bytes flow through [`AuthorityRewrite`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// Requests read from the socket (a server).
    Incoming,
    /// Requests written to the socket (a test client posing as another gRPC stack).
    Outgoing,
}

/// A connection whose requests reach h2 with `:authority` rewritten (see the module doc).
#[derive(Debug)]
pub struct AuthorityRewrite<IO> {
    io: IO,
    direction: Direction,
    rewriter: FrameRewriter,
    /// Rewritten bytes not yet handed on; empty (and unallocated) between requests, so an idle
    /// connection costs nothing here.
    pending: Vec<u8>,
    pending_pos: usize,
}

/// The `:authority` each gRPC stack sends on a Unix socket, for tests that must not pass where
/// that stack's clients would fail.
#[cfg(any(test, feature = "testing"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackAuthority {
    /// grpc-go and tonic: `localhost`.
    Localhost,
    /// grpc-core (Python, C++, Envoy's `google_grpc`): the path, percent-encoded.
    PercentEncodedPath,
    /// grpc-java: the raw path.
    RawPath,
    /// None at all.
    Absent,
}

#[cfg(any(test, feature = "testing"))]
impl StackAuthority {
    pub const ALL: [Self; 4] = [
        Self::Localhost,
        Self::PercentEncodedPath,
        Self::RawPath,
        Self::Absent,
    ];

    pub fn for_socket(self, socket: &std::path::Path) -> Option<String> {
        let path = socket.to_string_lossy();
        match self {
            Self::Localhost => Some("localhost".into()),
            // grpc-core 1.85 drops the leading `/`: `tmp%2Fagent%2Fsds.sock`.
            Self::PercentEncodedPath => Some(path.trim_start_matches('/').replace('/', "%2F")),
            Self::RawPath => Some(path.into_owned()),
            Self::Absent => None,
        }
    }
}

// === impl AuthorityRewrite ===

impl<IO> AuthorityRewrite<IO> {
    /// The server side of a Unix socket: every `:authority` becomes `localhost`, an absent one
    /// stays absent.
    pub fn server(io: IO) -> Self {
        Self::new(io, Direction::Incoming, Some(b"localhost".to_vec()))
    }

    /// A client that sends `authority` (`None`: no `:authority` at all) whatever its URI says,
    /// to test servers with what other gRPC stacks send.
    #[cfg(any(test, feature = "testing"))]
    pub fn client(io: IO, authority: Option<&str>) -> Self {
        Self::new(
            io,
            Direction::Outgoing,
            authority.map(|a| a.as_bytes().to_vec()),
        )
    }

    fn new(io: IO, direction: Direction, authority: Option<Vec<u8>>) -> Self {
        Self {
            io,
            direction,
            rewriter: FrameRewriter::new(authority),
            pending: Vec::new(),
            pending_pos: 0,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.pending[self.pending_pos..]
    }

    fn consumed(&mut self, n: usize) {
        self.pending_pos += n;
        if self.pending_pos == self.pending.len() {
            self.pending = Vec::new();
            self.pending_pos = 0;
        }
    }
}

impl<IO: AsyncWrite + Unpin> AuthorityRewrite<IO> {
    /// Writes out what was rewritten before new bytes are taken.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending().is_empty() {
            let n =
                ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending[self.pending_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.consumed(n);
        }
        Poll::Ready(Ok(()))
    }
}

fn invalid_data(error: RewriteError) -> io::Error {
    tracing::info!(%error, "closing a Unix-socket connection");
    io::Error::new(io::ErrorKind::InvalidData, error)
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityRewrite<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.direction == Direction::Outgoing {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        loop {
            if !this.pending().is_empty() {
                let n = this.pending().len().min(buf.remaining());
                buf.put_slice(&this.pending()[..n]);
                this.consumed(n);
                return Poll::Ready(Ok(()));
            }
            let mut raw = [0u8; 8192];
            let mut raw = ReadBuf::new(&mut raw);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut raw))?;
            if raw.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.rewriter
                .feed(raw.filled(), &mut this.pending)
                .map_err(invalid_data)?;
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityRewrite<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.direction == Direction::Incoming {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        }
        ready!(this.poll_drain(cx))?;
        this.rewriter
            .feed(buf, &mut this.pending)
            .map_err(invalid_data)?;
        // Taken either way; what the socket does not take now goes out on the next call or flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.direction {
            // h2 writes a frame head and its data in one call when the socket allows it.
            Direction::Incoming => Pin::new(&mut this.io).poll_write_vectored(cx, bufs),
            Direction::Outgoing => {
                let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
                Pin::new(this).poll_write(cx, first)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.direction == Direction::Incoming && self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityRewrite<IO>
{
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

// === impl FrameRewriter ===
