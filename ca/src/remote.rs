//! The keyless RA's half of the split deployment: an mTLS client for `meshca ca`
//! (`meshca.ca.v1.CertificateAuthority`), the authority snapshots both sides exchange, and the
//! reconnect backoff. The RA learns every authority's public parts from the service's stream;
//! keys never leave the service.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshca_proto::meshca::ca::v1 as pb;
use pb::certificate_authority_client::CertificateAuthorityClient;
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

use crate::authority::Authority;
use crate::chain;
use crate::config::CaConfig;
use crate::identity::{AuthorityId, Serial};
use crate::issued::IssuedCertificate;
use crate::rotation::{AuthorityEntry, AuthoritySet, AuthorityState};
use crate::x509::ParsedCert;

/// A connection attempt that takes longer has failed (the service is down or unreachable).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// No call to the service waits longer; signing takes milliseconds.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the client certificate files are checked for a renewal.
const CREDENTIAL_POLL_INTERVAL: Duration = Duration::from_secs(10);
/// Answers are a chain of a few certificates, or a CRL.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Delay before reconnect attempt `attempt` (0 = the first retry): 100 ms doubling to a cap of
/// 10 s, stretched by up to 20 % by `jitter` ∈ [0, 1) so RA replicas do not retry in step.
pub fn reconnect_delay(attempt: u32, jitter: f64) -> Duration {
    meshca_pki::timing::Backoff {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(10),
        low: 1.0,
        spread: 0.2,
    }
    .delay(attempt, jitter)
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteSetupError {
    #[error("{0} must be set when ca.remote_addr is")]
    Missing(&'static str),
    #[error("ca.remote_addr {addr:?}: {reason}")]
    Addr { addr: String, reason: String },
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// Why the signing service did not answer with what was asked, in the terms callers map to
/// their own statuses.
#[derive(Clone, Debug, thiserror::Error)]
#[error("CA service: {message}")]
pub struct RemoteError {
    pub kind: RemoteErrorKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteErrorKind {
    /// Not reached, or it could not record; nothing was issued.
    Unavailable,
    InvalidArgument,
    NotFound,
    /// The step does not fit the current state (wrong state, exists, cacerts-managed).
    Conflict,
    /// The service refused this RA.
    Denied,
    Internal,
}

impl From<tonic::Status> for RemoteError {
    fn from(status: tonic::Status) -> Self {
        let kind = match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                RemoteErrorKind::Unavailable
            }
            Code::InvalidArgument | Code::OutOfRange => RemoteErrorKind::InvalidArgument,
            Code::NotFound => RemoteErrorKind::NotFound,
            Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => {
                RemoteErrorKind::Conflict
            }
            Code::Unauthenticated | Code::PermissionDenied => RemoteErrorKind::Denied,
            _ => RemoteErrorKind::Internal,
        };
        Self {
            kind,
            message: status.message().to_string(),
        }
    }
}

impl RemoteError {
    fn malformed(what: impl std::fmt::Display) -> Self {
        Self {
            kind: RemoteErrorKind::Internal,
            message: format!("malformed answer: {what}"),
        }
    }
}

/// The client. Cheap to clone; the channel reconnects by itself, and is rebuilt when the
/// client certificate files change.
#[derive(Clone, Debug)]
pub struct RemoteCa {
    inner: Arc<RemoteInner>,
}

#[derive(Debug)]
struct RemoteInner {
    addr: String,
    files: CredentialFiles,
    client: RwLock<CertificateAuthorityClient<Channel>>,
    /// Whether the authority stream is up: the RA's readiness.
    connected: AtomicBool,
}

#[derive(Clone, Debug)]
struct CredentialFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

// === impl RemoteCa ===

impl RemoteCa {
    /// Builds the client from `ca.remote_*`; connects lazily, so a service that is down now
    /// is retried on every call.
    pub fn connect(config: &CaConfig) -> Result<Self, RemoteSetupError> {
        let addr = config
            .remote_addr
            .clone()
            .ok_or(RemoteSetupError::Missing("ca.remote_addr"))?;
        let files = CredentialFiles {
            ca: config
                .remote_ca_file
                .clone()
                .ok_or(RemoteSetupError::Missing("ca.remote_ca_file"))?,
            cert: config
                .remote_cert_file
                .clone()
                .ok_or(RemoteSetupError::Missing("ca.remote_cert_file"))?,
            key: config
                .remote_key_file
                .clone()
                .ok_or(RemoteSetupError::Missing("ca.remote_key_file"))?,
        };
        let client = build_client(&addr, &files)?;
        let remote = Self {
            inner: Arc::new(RemoteInner {
                addr,
                files,
                client: RwLock::new(client),
                connected: AtomicBool::new(false),
            }),
        };
        tokio::spawn(reload_credentials(Arc::downgrade(&remote.inner)));
        Ok(remote)
    }

    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Whether the authority stream from the service is currently up.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    fn client(&self) -> CertificateAuthorityClient<Channel> {
        self.inner
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The certificate, and whether the service checked the renewal's revocation in the
    /// transaction that recorded it (a service from before that check does not).
    pub async fn sign(
        &self,
        request: pb::SignRequest,
    ) -> Result<(IssuedCertificate, bool), RemoteError> {
        let answer = self.client().sign(request).await?.into_inner();
        let renewal_checked = answer.renewal_of_checked;
        Ok((issued_from(answer)?, renewal_checked))
    }

    pub async fn serving_certificate(
        &self,
        request: pb::ServingCertificateRequest,
    ) -> Result<IssuedCertificate, RemoteError> {
        let answer = self
            .client()
            .issue_serving_certificate(request)
            .await?
            .into_inner();
        issued_from(answer)
    }

    pub async fn change_authority(
        &self,
        request: pb::ChangeAuthorityRequest,
    ) -> Result<(String, AuthoritySet), RemoteError> {
        let answer = self.client().change_authority(request).await?.into_inner();
        let set = set_from_snapshot(&answer.authorities.unwrap_or_default())
            .map_err(RemoteError::malformed)?;
        Ok((answer.authority_id, set))
    }

    pub async fn sign_crl(&self, authority_id: Option<&str>) -> Result<Vec<u8>, RemoteError> {
        let answer = self
            .client()
            .sign_crl(pb::SignCrlRequest {
                authority_id: authority_id.unwrap_or_default().to_string(),
            })
            .await?
            .into_inner();
        Ok(answer.crl_der)
    }

    async fn watch(&self) -> Result<tonic::Streaming<pb::AuthoritySnapshot>, RemoteError> {
        Ok(self
            .client()
            .watch_authorities(pb::WatchAuthoritiesRequest {})
            .await?
            .into_inner())
    }

    /// The first authority snapshot, retried with backoff until the service answers: a
    /// keyless RA can serve nothing before it knows the chain it hands out.
    pub async fn first_snapshot(&self) -> (AuthoritySet, tonic::Streaming<pb::AuthoritySnapshot>) {
        let mut attempt = 0;
        loop {
            match self.next_connection().await {
                Ok(pair) => return pair,
                Err(error) => {
                    let delay = reconnect_delay(attempt, meshca_pki::time::random_unit());
                    tracing::warn!(addr = %self.inner.addr, %error, ?delay, "CA service not reachable yet; retrying");
                    tokio::time::sleep(delay).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    async fn next_connection(
        &self,
    ) -> Result<(AuthoritySet, tonic::Streaming<pb::AuthoritySnapshot>), RemoteError> {
        let mut stream = self.watch().await?;
        let first = stream.message().await?.ok_or_else(|| RemoteError {
            kind: RemoteErrorKind::Unavailable,
            message: "authority stream ended at once".into(),
        })?;
        let set = set_from_snapshot(&first).map_err(RemoteError::malformed)?;
        self.inner.connected.store(true, Ordering::Relaxed);
        Ok((set, stream))
    }

    /// Publishes every snapshot the service sends into `sender`, reconnecting with backoff
    /// when the stream breaks. Ends when `sender` is dropped.
    pub async fn follow_authorities(
        self,
        mut stream: tonic::Streaming<pb::AuthoritySnapshot>,
        sender: Weak<watch::Sender<Arc<AuthoritySet>>>,
    ) {
        let mut attempt = 0u32;
        loop {
            let broke = loop {
                match stream.message().await {
                    Ok(Some(snapshot)) => {
                        attempt = 0;
                        let Some(sender) = sender.upgrade() else {
                            return;
                        };
                        match set_from_snapshot(&snapshot) {
                            Ok(set) => {
                                sender.send_if_modified(|current| {
                                    AuthoritySet::replace_if_changed(current, set)
                                });
                            }
                            Err(error) => {
                                tracing::error!(%error, "CA service sent an authority set that does not validate; keeping the current one");
                            }
                        }
                    }
                    Ok(None) => break "the CA service closed the authority stream".to_string(),
                    Err(status) => break RemoteError::from(status).to_string(),
                }
            };
            self.inner.connected.store(false, Ordering::Relaxed);
            tracing::warn!(addr = %self.inner.addr, reason = %broke, "authority stream from the CA service broke; reconnecting");
            loop {
                if sender.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(reconnect_delay(attempt, meshca_pki::time::random_unit())).await;
                attempt = attempt.saturating_add(1);
                match self.next_connection().await {
                    Ok((set, next)) => {
                        let Some(sender) = sender.upgrade() else {
                            return;
                        };
                        tracing::info!(addr = %self.inner.addr, "reconnected to the CA service");
                        sender.send_if_modified(|current| {
                            AuthoritySet::replace_if_changed(current, set)
                        });
                        stream = next;
                        break;
                    }
                    Err(error) => {
                        tracing::debug!(%error, "CA service still unreachable");
                    }
                }
            }
        }
    }
}

fn build_client(
    addr: &str,
    files: &CredentialFiles,
) -> Result<CertificateAuthorityClient<Channel>, RemoteSetupError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| RemoteSetupError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&files.ca)?))
        .identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?));
    let bad_addr = |reason: String| RemoteSetupError::Addr {
        addr: addr.to_string(),
        reason,
    };
    if !addr.starts_with("https://") {
        return Err(bad_addr("expected https://host:port".into()));
    }
    let endpoint = Endpoint::from_shared(addr.to_string())
        .map_err(|e| bad_addr(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| bad_addr(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    Ok(CertificateAuthorityClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(MAX_MESSAGE_BYTES))
}

/// Rebuilds the channel when the client certificate, key or roots change on disk (a renewed
/// Secret), so new connections present the new certificate.
async fn reload_credentials(inner: Weak<RemoteInner>) {
    let mut seen = None;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let stamp = credential_stamp(&strong.files);
        if seen.is_some() && stamp != seen {
            match build_client(&strong.addr, &strong.files) {
                Ok(client) => {
                    *strong.client.write().unwrap_or_else(|e| e.into_inner()) = client;
                    tracing::info!("CA service client credentials changed; reconnecting with them");
                }
                Err(error) => {
                    tracing::error!(%error, "CA service client credentials changed but do not load; keeping the previous ones");
                }
            }
        }
        seen = stamp;
        drop(strong);
        tokio::time::sleep(CREDENTIAL_POLL_INTERVAL).await;
    }
}

fn credential_stamp(files: &CredentialFiles) -> Option<Vec<u8>> {
    let mut stamp = Vec::new();
    for path in [&files.ca, &files.cert, &files.key] {
        stamp.extend(std::fs::read(path).ok()?);
    }
    Some(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &stamp)
            .as_ref()
            .to_vec(),
    )
}

fn issued_from(answer: pb::SignResponse) -> Result<IssuedCertificate, RemoteError> {
    let serial = hex::decode(&answer.serial_hex).map_err(RemoteError::malformed)?;
    let authority = hex::decode(&answer.authority_id).map_err(RemoteError::malformed)?;
    if answer.cert_chain_pem.is_empty() || answer.leaf_der.is_empty() {
        return Err(RemoteError::malformed("no certificate"));
    }
    Ok(IssuedCertificate {
        serial: Serial::from_be_bytes(&serial),
        leaf_der: answer.leaf_der,
        chain_pem: answer.cert_chain_pem,
        not_after: UNIX_EPOCH + Duration::from_secs(answer.not_after_unix.max(0) as u64),
        authority_id: AuthorityId::from_key_id(&authority),
    })
}

/// The public parts of every authority, as the service sends them.
pub fn snapshot_of(set: &AuthoritySet) -> pb::AuthoritySnapshot {
    pb::AuthoritySnapshot {
        authorities: set
            .entries()
            .iter()
            .map(|entry| {
                let authority = &entry.authority;
                pb::Authority {
                    id: authority.id().to_string(),
                    state: entry.state.to_string(),
                    source: entry.source.clone(),
                    signing_cert_der: authority.signing_cert().der().to_vec(),
                    intermediates_der: authority
                        .intermediates()
                        .iter()
                        .skip(1)
                        .map(|c| c.der().to_vec())
                        .collect(),
                    roots_pem: authority.roots_pem(),
                    key_description: authority.key_description().to_string(),
                    created_at_unix: entry.created_at,
                    updated_at_unix: entry.updated_at,
                }
            })
            .collect(),
    }
}

/// Why an authority snapshot from the service was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("authority {id}: {reason}")]
    Authority { id: String, reason: String },
    #[error("not exactly one active authority")]
    NoSingleActive,
}

/// Rebuilds the set from a snapshot, re-validating every path as the service would; the
/// authorities carry no key.
pub fn set_from_snapshot(snapshot: &pb::AuthoritySnapshot) -> Result<AuthoritySet, SnapshotError> {
    let now = SystemTime::now();
    let mut entries = Vec::with_capacity(snapshot.authorities.len());
    for sent in &snapshot.authorities {
        let bad = |reason: String| SnapshotError::Authority {
            id: sent.id.clone(),
            reason,
        };
        let state = AuthorityState::parse(&sent.state)
            .ok_or_else(|| bad(format!("unknown state {:?}", sent.state)))?;
        let signing =
            ParsedCert::from_der(&sent.signing_cert_der).map_err(|e| bad(e.to_string()))?;
        let pool = sent
            .intermediates_der
            .iter()
            .map(|der| ParsedCert::from_der(der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        let roots =
            ParsedCert::many_from_pem(sent.roots_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
        // A revoked or expired authority still belongs in the listing; only its path needs to
        // be well-formed, so validate at its own notBefore when it is no longer current.
        let at = if signing.not_after() <= now {
            signing.not_before()
        } else {
            now
        };
        let path =
            chain::build_path(&signing, &pool, &roots, at).map_err(|e| bad(e.to_string()))?;
        let authority = Authority::public(path, roots, sent.key_description.clone());
        if authority.id().as_str() != sent.id {
            return Err(bad(format!(
                "id does not match its certificate ({})",
                authority.id()
            )));
        }
        entries.push(AuthorityEntry {
            authority: Arc::new(authority),
            state,
            source: sent.source.clone(),
            created_at: sent.created_at_unix,
            updated_at: sent.updated_at_unix,
        });
    }
    AuthoritySet::new(entries).ok_or(SnapshotError::NoSingleActive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_doubles_to_a_cap_and_jitters_upward() {
        assert_eq!(reconnect_delay(0, 0.0), Duration::from_millis(100));
        assert_eq!(reconnect_delay(1, 0.0), Duration::from_millis(200));
        assert_eq!(reconnect_delay(3, 0.0), Duration::from_millis(800));
        assert_eq!(reconnect_delay(7, 0.0), Duration::from_secs(10));
        assert_eq!(reconnect_delay(u32::MAX, 0.0), Duration::from_secs(10));
        assert_eq!(reconnect_delay(0, 0.5), Duration::from_millis(110));
        assert_eq!(
            reconnect_delay(7, 0.99),
            Duration::from_secs(10).mul_f64(1.198)
        );
        assert_eq!(reconnect_delay(0, 7.0), Duration::from_millis(120));
    }

    #[test]
    fn status_codes_become_kinds_callers_map() {
        let kind = |s: tonic::Status| RemoteError::from(s).kind;
        assert_eq!(
            kind(tonic::Status::unavailable("down")),
            RemoteErrorKind::Unavailable
        );
        assert_eq!(
            kind(tonic::Status::deadline_exceeded("slow")),
            RemoteErrorKind::Unavailable
        );
        assert_eq!(
            kind(tonic::Status::invalid_argument("ttl")),
            RemoteErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(tonic::Status::failed_precondition("state")),
            RemoteErrorKind::Conflict
        );
        assert_eq!(
            kind(tonic::Status::permission_denied("not allowed")),
            RemoteErrorKind::Denied
        );
        assert_eq!(
            kind(tonic::Status::internal("bug")),
            RemoteErrorKind::Internal
        );
    }

    /// Root → intermediate → signing CA, loaded like a plugged-in `cacerts` directory.
    fn three_level_set() -> AuthoritySet {
        let dir = tempfile::tempdir().unwrap();
        crate::testing::GeneratedChain::new(crate::keys::KeyType::EcP256).write(dir.path());
        let authority = crate::cacerts::load_dir(dir.path(), SystemTime::now()).unwrap();
        AuthoritySet::single(authority, "cacerts", 1_700_000_000)
    }

    #[test]
    fn snapshots_round_trip_without_keys() {
        let set = three_level_set();
        let rebuilt = set_from_snapshot(&snapshot_of(&set)).unwrap();
        assert!(rebuilt.same_as(&set));
        let active = rebuilt.active();
        assert!(active.key().is_none());
        assert_eq!(active.issuer_chain_pem(), set.active().issuer_chain_pem());
        assert_eq!(active.key_description(), set.active().key_description());
        assert_eq!(
            active.intermediates().len(),
            2,
            "signing CA and intermediate"
        );
    }

    #[test]
    fn a_snapshot_with_a_forged_id_is_refused() {
        let set = three_level_set();
        let mut snapshot = snapshot_of(&set);
        snapshot.authorities[0].id = "00".repeat(20);
        let error = set_from_snapshot(&snapshot).unwrap_err();
        assert!(error.to_string().contains("does not match"), "{error}");
    }
}
