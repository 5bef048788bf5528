//! TLS for meshca's ports (the RA's gRPC and REST ports, the CA service's port): a serving
//! certificate meshca issues itself (renewed at half-life and when the authority changes) or
//! one read from files, client certificates requested (required on the CA service), and each
//! connection's peer chain handed to the handlers, which verify it for their purpose.

use std::fmt;
use std::future::Future;
use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::keys::{KeyType, SigningKey};
use crate::{AuthorityId, CertificateAuthority};
use meshca_pki::time::unix_seconds;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry delay when renewing the serving certificate fails.
const RENEW_RETRY: Duration = Duration::from_secs(30);

/// What handlers learn about the connection a request came on.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote_addr: SocketAddr,
    /// Client certificate chain as sent, leaf first; empty when none.
    pub certs: Arc<Vec<CertificateDer<'static>>>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("issuing the serving certificate: {0}")]
    Issue(#[from] crate::IssueError),
    #[error("serving key: {0}")]
    Key(String),
}

/// The process-wide crypto provider: aws-lc-rs, the same backend the CA signs with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// When to renew a certificate valid over `[not_before, not_after]`: at half its lifetime.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    not_before + lifetime / 2
}

/// What meshca's own serving certificate names, and how it moves.
#[derive(Clone, Debug)]
pub struct ServingCertSpec {
    pub dns_names: Vec<String>,
    pub ip_sans: Vec<IpAddr>,
    pub ttl: Duration,
    /// Recorded as the requester of each one.
    pub principal: String,
    /// A new root signs it only once it has been in the bundle this long
    /// ([`AuthoritySet::serving_signer`]).
    ///
    /// [`AuthoritySet::serving_signer`]: crate::rotation::AuthoritySet::serving_signer
    pub settle: Duration,
}

/// The serving certificate, published through a watch so renewals reach new handshakes:
/// renewed at half-life, when the authority that should sign it changes (a new root has
/// settled, its signer was tainted), and from files instead when they are given.
pub async fn serving_certificate(
    ca: &CertificateAuthority,
    spec: &ServingCertSpec,
    files: Option<(&Path, &Path)>,
) -> Result<watch::Receiver<Arc<CertifiedKey>>, TlsSetupError> {
    if let Some((cert, key)) = files {
        let certified = load_files(cert, key)?;
        return Ok(watch::channel(Arc::new(certified)).1);
    }
    let settle = spec.settle.as_secs() as i64;
    let first = ca
        .authorities()
        .serving_signer(unix_seconds(SystemTime::now()), settle)
        .authority
        .id()
        .clone();
    let (certified, renew, signer) = issue_serving(ca, spec, &first).await?;
    let (tx, rx) = watch::channel(Arc::new(certified));
    let ca = ca.clone();
    let spec = spec.clone();
    tokio::spawn(async move {
        let mut authorities = ca.watch_authorities();
        let (mut renew_at, mut signer) = (renew, signer);
        let mut next_try = SystemTime::UNIX_EPOCH;
        loop {
            authorities.borrow_and_update();
            let now = SystemTime::now();
            let set = ca.authorities();
            let wanted = set.serving_signer(unix_seconds(now), settle);
            let wanted = wanted.authority.id().clone();
            let moves_at = set
                .serving_signer_moves_at(unix_seconds(now), settle)
                .map(|at| UNIX_EPOCH + Duration::from_secs(at as u64));
            let due = now >= renew_at || wanted != signer;
            if due && now >= next_try {
                match issue_serving(&ca, &spec, &wanted).await {
                    Ok((certified, next, by)) => {
                        tracing::info!(authority = %by, "renewed the serving certificate");
                        tx.send_replace(Arc::new(certified));
                        renew_at = next;
                        signer = by;
                    }
                    Err(error) => {
                        tracing::error!(%error, "renewing the serving certificate failed; retrying");
                        next_try = now + RENEW_RETRY;
                    }
                }
                continue;
            }
            let wake = if due {
                next_try
            } else {
                moves_at.map_or(renew_at, |at| at.min(renew_at))
            };
            tokio::select! {
                _ = tokio::time::sleep(wake.duration_since(now).unwrap_or(Duration::ZERO)) => {}
                changed = authorities.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    Ok(rx)
}

/// A serving certificate from `signer` (or the active authority when it cannot sign): the
/// certified key, when to renew it, and who signed it.
async fn issue_serving(
    ca: &CertificateAuthority,
    spec: &ServingCertSpec,
    signer: &AuthorityId,
) -> Result<(CertifiedKey, SystemTime, AuthorityId), TlsSetupError> {
    let key =
        SigningKey::generate(KeyType::EcP256).map_err(|e| TlsSetupError::Key(e.to_string()))?;
    let issued = ca
        .issue_server_certificate(
            &key.subject_public_key_info(),
            &spec.dns_names,
            &spec.ip_sans,
            spec.ttl,
            &spec.principal,
            Some(signer.as_str()),
        )
        .await?;
    let set = ca.authorities();
    let intermediates = set
        .get(issued.authority_id.as_str())
        .map(|e| e.authority.intermediates().to_vec())
        .unwrap_or_default();
    let mut chain = vec![CertificateDer::from(issued.leaf_der.clone())];
    chain.extend(
        intermediates
            .iter()
            .map(|c| CertificateDer::from(c.der().to_vec())),
    );
    let signing_key = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.pkcs8_der().to_vec(),
        )))
        .map_err(|e| TlsSetupError::Key(e.to_string()))?;
    let not_before = SystemTime::now();
    Ok((
        CertifiedKey::new(chain, signing_key),
        renew_at(not_before, issued.not_after),
        issued.authority_id,
    ))
}

fn load_files(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsSetupError> {
    let file_err = |path: &Path, reason: String| TlsSetupError::File {
        path: path.display().to_string(),
        reason,
    };
    let cert_pem = std::fs::read(cert).map_err(|e| file_err(cert, e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = pem::parse_many(&cert_pem)
        .map_err(|e| file_err(cert, e.to_string()))?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect();
    if chain.is_empty() {
        return Err(file_err(cert, "no certificate".into()));
    }
    let key_pem = std::fs::read(key).map_err(|e| file_err(key, e.to_string()))?;
    let signing = SigningKey::from_pem(&key_pem).map_err(|e| file_err(key, e.to_string()))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            signing.pkcs8_der().to_vec(),
        )))
        .map_err(|e| file_err(key, e.to_string()))?;
    Ok(CertifiedKey::new(chain, signing_key))
}

/// rustls server config: TLS 1.2+, ALPN h2 (gRPC clients require it), optional client certs.
pub fn server_config(certs: watch::Receiver<Arc<CertifiedKey>>) -> Arc<rustls::ServerConfig> {
    server_config_for(certs, b"h2", false)
}

/// gRPC with a client certificate required (the CA service: only RAs call it). The chain is
/// verified by the service against its configured roots.
pub fn mtls_server_config(certs: watch::Receiver<Arc<CertifiedKey>>) -> Arc<rustls::ServerConfig> {
    server_config_for(certs, b"h2", true)
}

/// The same TLS setup for the HTTP/1.1 REST API.
pub fn rest_server_config(certs: watch::Receiver<Arc<CertifiedKey>>) -> Arc<rustls::ServerConfig> {
    server_config_for(certs, b"http/1.1", false)
}

fn server_config_for(
    certs: watch::Receiver<Arc<CertifiedKey>>,
    alpn: &[u8],
    client_cert_required: bool,
) -> Arc<rustls::ServerConfig> {
    let provider = provider();
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .with_client_cert_verifier(Arc::new(OptionalClientCert {
            provider,
            mandatory: client_cert_required,
        }))
        .with_cert_resolver(Arc::new(WatchedCert(certs)));
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// Accepts connections, runs handshakes concurrently, yields finished TLS streams.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = mpsc::channel(128);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, remote_addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let certs = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
                            .unwrap_or_default();
                        let conn = TlsConn {
                            stream,
                            info: PeerInfo {
                                remote_addr,
                                certs: Arc::new(certs),
                            },
                            flush: FlushRound::Idle,
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%remote_addr, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote_addr, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A finished TLS connection and what it proved about the peer.
///
/// Its writes are encrypted as they come but reach the socket only at a flush, and a flush
/// waits one round of the scheduler first ([`FlushRound`]).
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    info: PeerInfo,
    flush: FlushRound,
}

/// Where a connection's flush stands. A group commit answers a batch of calls at once, and each
/// answer's HTTP/2 task wakes its connection's task, which Tokio runs next (its LIFO slot): a
/// flush per answer, each its own socket write and, over loopback, the peer's receive work in
/// the kernel on our CPU. Holding the flush for one round (Tokio's `yield_now`: the task runs
/// again once the worker has run out of ready tasks) lets the connection's other answers join
/// the same write. An idle connection pays one pass of the scheduler.
enum FlushRound {
    /// Nothing held.
    Idle,
    /// Encrypted records wait for the round to end.
    Waiting(Pin<Box<dyn Future<Output = ()> + Send + Sync>>),
    /// The round ended (or another wake came first): write them out.
    Due,
}

impl TlsConn {
    pub fn peer(&self) -> &PeerInfo {
        &self.info
    }

    /// Encrypts `bufs` into the session's outgoing records without writing to the socket;
    /// `None` when the session's buffer is full (the caller writes through).
    fn encrypt(&mut self, bufs: &[io::IoSlice<'_>]) -> Option<io::Result<usize>> {
        match self.stream.get_mut().1.writer().write_vectored(bufs) {
            Ok(0) => None,
            done => Some(done),
        }
    }
}

impl fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConn")
            .field("peer", &self.info.remote_addr)
            .finish()
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.flush {
                FlushRound::Idle if this.stream.get_ref().1.wants_write() => {
                    this.flush = FlushRound::Waiting(Box::pin(tokio::task::yield_now()));
                }
                FlushRound::Idle => return Pin::new(&mut this.stream).poll_flush(cx),
                FlushRound::Waiting(round) => {
                    std::task::ready!(round.as_mut().poll(cx));
                    this.flush = FlushRound::Due;
                }
                FlushRound::Due => {
                    let flushed = std::task::ready!(Pin::new(&mut this.stream).poll_flush(cx));
                    this.flush = FlushRound::Idle;
                    return Poll::Ready(flushed);
                }
            }
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if bufs.iter().all(|buf| buf.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        match self.encrypt(bufs) {
            Some(encrypted) => Poll::Ready(encrypted),
            None => Pin::new(&mut self.stream).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct WatchedCert(watch::Receiver<Arc<CertifiedKey>>);

impl ResolvesServerCert for WatchedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.borrow().clone())
    }
}

/// Requests a client certificate but does not require one, and checks only that the client
/// holds its key. Which roots a chain must reach depends on the authentication method (our
/// bundle for renewal, the Athenz CA for Athenz), so chains are verified there.
#[derive(Debug)]
struct OptionalClientCert {
    provider: Arc<CryptoProvider>,
    mandatory: bool,
}

impl ClientCertVerifier for OptionalClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_half_life() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let na = nb + Duration::from_secs(3600);
        assert_eq!(renew_at(nb, na), nb + Duration::from_secs(1800));
        assert_eq!(renew_at(na, nb), na, "inverted validity renews at once");
    }
}
