//! The REST port's listener for axum: TLS connections whose client certificate chain reaches
//! the handlers as [`RestPeer`].

use std::net::SocketAddr;

use axum::extract::connect_info::Connected;
use tokio_stream::StreamExt;

use crate::tls::{PeerInfo, TlsConn};

/// TLS connections for axum, carrying the client certificate chain to the handlers.
#[derive(Debug)]
pub struct TlsListener {
    incoming: tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>>,
    local_addr: SocketAddr,
}

impl TlsListener {
    pub fn new(
        incoming: tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>>,
        local_addr: SocketAddr,
    ) -> Self {
        Self {
            incoming,
            local_addr,
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(conn)) => {
                    let addr = conn.peer().remote_addr;
                    return (conn, addr);
                }
                Some(Err(error)) => tracing::debug!(%error, "REST accept failed"),
                // The acceptor only stops when this listener is dropped.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// A REST connection's TLS peer, as handlers get it through `ConnectInfo`.
#[derive(Clone, Debug)]
pub struct RestPeer(pub PeerInfo);

impl Connected<axum::serve::IncomingStream<'_, TlsListener>> for RestPeer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        Self(stream.io().peer().clone())
    }
}
