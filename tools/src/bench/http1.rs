//! The peers' transport: one HTTP/1.1 keep-alive connection per request in flight, plain TCP
//! (cfssl `serve`) or TLS (step-ca), a JSON body posted and the answer's body read whole.

use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};

use super::error::BenchError;

/// One HTTP/1.1 connection to a peer CA.
pub(super) struct JsonConnection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

/// Why a call to a peer CA gave no answer.
pub(super) enum PeerFailure {
    /// Every one-time token minted for the request is spent (step-ca): nothing was sent.
    OutOfTokens,
    /// What failed, as the report names it (`transport`, `http_<status>`, `invalid_request`).
    Failed(String),
}

/// How to reach a peer: its address, and over TLS the roots and name that verify it.
pub(super) struct PeerEndpoint {
    pub(super) addr: String,
    pub(super) tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

// === impl PeerEndpoint ===

impl PeerEndpoint {
    pub(super) fn plain(addr: &str) -> Self {
        Self {
            addr: addr.to_string(),
            tls: None,
        }
    }

    /// A TLS endpoint whose certificate chains to one of the PEM `roots` and names
    /// `server_name`; ALPN offers only HTTP/1.1.
    pub(super) fn tls(addr: &str, roots_pem: &str, server_name: &str) -> Result<Self, BenchError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
            let cert = cert.map_err(|e| BenchError::Setup(format!("peer roots: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| BenchError::Setup(format!("peer roots: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| BenchError::Setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| BenchError::Setup(format!("server name {server_name:?}: {e}")))?;
        Ok(Self {
            addr: addr.to_string(),
            tls: Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name)),
        })
    }
}

// === impl JsonConnection ===

impl JsonConnection {
    pub(super) async fn connect(peer: &PeerEndpoint) -> Result<Self, BenchError> {
        let addr = &peer.addr;
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| BenchError::Setup(format!("connecting to {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        match &peer.tls {
            None => Self::handshake(stream, addr).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|e| BenchError::Setup(format!("TLS with {addr}: {e}")))?;
                Self::handshake(stream, addr).await
            }
        }
    }

    async fn handshake<Io>(io: Io, addr: &str) -> Result<Self, BenchError>
    where
        Io: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(|e| BenchError::Setup(format!("{addr}: {e}")))?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            host: addr.to_string(),
        })
    }

    /// Posts `body` (JSON) to `path`: the answer's body on a 2xx, else what failed.
    pub(super) async fn post(&mut self, path: &str, body: String) -> Result<Bytes, PeerFailure> {
        let failed = |name: &str| PeerFailure::Failed(name.to_string());
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, self.host.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| failed("invalid_request"))?;
        self.sender.ready().await.map_err(|_| failed("transport"))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|_| failed("transport"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|_| failed("transport"))?;
        if !status.is_success() {
            return Err(failed(&format!("http_{}", status.as_u16())));
        }
        Ok(body.to_bytes())
    }
}
