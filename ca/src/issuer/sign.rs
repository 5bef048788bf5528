//! Issuing: a workload certificate for an authenticated identity, or a serving certificate
//! for meshca's own endpoints. Signed here with the active authority and committed before it
//! is returned, or forwarded to the `meshca ca` service in a keyless RA.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use spki::SubjectPublicKeyInfoOwned;
use x509_cert::serial_number::SerialNumber;

use super::state::{CertificateAuthority, Mode};
use crate::audit::{AuditEvent, Details, Outcome};
use crate::authority::{Authority, AuthoritySignError};
use crate::commit::{CommitError, IssuanceCommitter};
use crate::csr::VerifiedCsr;
use crate::identity::{Serial, SpiffeId};
use crate::issued::IssuedCertificate;
use crate::keys;
use crate::profile::{self, TtlError};
use crate::remote::{RemoteError, RemoteErrorKind};
use crate::rotation::AuthorityState;
use crate::store::{Issuance, IssuanceRecord};
use crate::x509;
use meshca_pki::time::unix_seconds;
use meshca_proto::meshca::ca::v1 as pb;

/// How often to retry a serial collision before giving up (two serials of the same nanosecond
/// drawing the same 64 random bits means the RNG is broken; retrying bounds the damage).
const SERIAL_ATTEMPTS: usize = 3;

/// Who asked for a certificate, for the issuance record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requester {
    /// `jwt`, `tokenreview`, `athenz`, `renewal`, …
    pub method: String,
    pub principal: String,
    pub peer_address: Option<String>,
    pub cluster_id: Option<String>,
    /// The requester's own SPIFFE id when it asked for another identity (a node agent acting
    /// for a pod on its node); None when a workload asked for itself.
    pub impersonated_by: Option<String>,
    /// Where the requester runs, when its credential says: its pod (`namespace/name`) and node.
    pub pod: Option<String>,
    pub node: Option<String>,
    /// For a renewal, the serial (hex) of the meshca certificate the caller presented: the
    /// issuance is refused, in the transaction that would record it, if that one is revoked.
    pub renewal_of: Option<String>,
}

#[derive(Debug)]
pub struct IssueRequest<'a> {
    pub csr: &'a VerifiedCsr,
    pub spiffe_id: &'a SpiffeId,
    /// Seconds; ≤ 0 means the default TTL.
    pub requested_ttl_secs: i64,
    pub requester: &'a Requester,
    /// The trust bundle the answer will carry ([`AuthoritySet::bundle_as_of`] of the set the
    /// RA built it from); `None`: this CA's own set's.
    ///
    /// [`AuthoritySet::bundle_as_of`]: crate::rotation::AuthoritySet::bundle_as_of
    pub bundle_as_of: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    #[error(transparent)]
    Ttl(#[from] TtlError),
    #[error("SPIFFE id {id} is not in trust domain {trust_domain}")]
    ForeignTrustDomain { id: String, trust_domain: String },
    #[error("building the certificate: {0}")]
    Encode(#[from] der::Error),
    #[error(transparent)]
    Sign(#[from] AuthoritySignError),
    #[error(
        "the signing path expired at {}: no certificate can be issued",
        humantime::format_rfc3339_seconds(*.0)
    )]
    NotReady(SystemTime),
    #[error("recording the issuance: {0}")]
    Store(#[source] CommitError),
    /// The certificate a renewal presented was revoked before the new one could be recorded.
    #[error("the renewal's certificate {serial} was revoked ({reason})")]
    RenewalRevoked { serial: String, reason: String },
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// What a caller is told about a failed issuance, decided once for both places that answer
/// one (the RA's `CreateCertificate`, the CA service's `Sign`) and for both sides of a keyless
/// RA: a refusal the CA service sent comes back as the same refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request cannot be served as asked; the message is for the caller.
    Invalid { kind: &'static str, message: String },
    /// Nothing was issued because the store or the CA service could not be reached; a retry
    /// may succeed.
    Unavailable {
        kind: &'static str,
        message: &'static str,
    },
    /// Nothing was issued, for a reason on the CA's side; the log has the detail.
    Internal {
        kind: &'static str,
        message: &'static str,
    },
    /// The certificate a renewal presented is revoked: the caller's credential is no longer
    /// good. The RA answers its caller as for any failed authentication; the CA service tells
    /// the RA with FAILED_PRECONDITION, the only refusal its `Sign` gives with that code.
    RenewalRevoked { message: String },
}

impl Refusal {
    /// One word for metrics (`ttl_error`, `store_unavailable`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Invalid { kind, .. }
            | Refusal::Unavailable { kind, .. }
            | Refusal::Internal { kind, .. } => kind,
            Refusal::RenewalRevoked { .. } => "renewal_revoked",
        }
    }
}

impl From<Refusal> for tonic::Status {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Invalid { message, .. } => tonic::Status::invalid_argument(message),
            Refusal::Unavailable { message, .. } => tonic::Status::unavailable(message),
            Refusal::Internal { message, .. } => tonic::Status::internal(message),
            Refusal::RenewalRevoked { message } => tonic::Status::failed_precondition(message),
        }
    }
}

impl IssueError {
    pub fn refusal(&self) -> Refusal {
        let generation_failed = Refusal::Internal {
            kind: "cert_gen_error",
            message: "failed to generate the certificate",
        };
        match self {
            IssueError::Ttl(e) => Refusal::Invalid {
                kind: "ttl_error",
                message: e.to_string(),
            },
            e @ IssueError::ForeignTrustDomain { .. } => Refusal::Invalid {
                kind: "identity_error",
                message: e.to_string(),
            },
            IssueError::Store(_) => Refusal::Unavailable {
                kind: "store_unavailable",
                message: "certificate store unavailable; nothing was issued",
            },
            e @ IssueError::RenewalRevoked { .. } => Refusal::RenewalRevoked {
                message: e.to_string(),
            },
            IssueError::NotReady(_) => Refusal::Internal {
                kind: "ca_not_ready",
                message: "CA is not ready",
            },
            IssueError::Remote(remote) => match remote.kind {
                RemoteErrorKind::Unavailable => Refusal::Unavailable {
                    kind: "ca_unavailable",
                    message: "CA service unavailable; nothing was issued",
                },
                // The service re-checked the request and refused it: its reason is the caller's.
                RemoteErrorKind::InvalidArgument => Refusal::Invalid {
                    kind: "csr_error",
                    message: remote.message.clone(),
                },
                RemoteErrorKind::Conflict => Refusal::RenewalRevoked {
                    message: remote.message.clone(),
                },
                _ => generation_failed,
            },
            IssueError::Encode(_) | IssueError::Sign(_) => generation_failed,
        }
    }
}

impl CertificateAuthority {
    /// Signs a workload certificate for `spiffe_id` and records it; the certificate is
    /// returned only once its record is committed.
    pub async fn issue(&self, req: IssueRequest<'_>) -> Result<IssuedCertificate, IssueError> {
        let committer = match &self.inner.mode {
            Mode::OwnRoots { committer, .. } | Mode::PluggedIn { committer } => committer,
            Mode::Keyless { remote } => {
                // The service checks CSR, identity and TTL again under its own policy, and the
                // renewal's revocation where it records.
                let (issued, renewal_checked) = remote
                    .sign(pb::SignRequest {
                        csr_der: req.csr.der().to_vec(),
                        spiffe_id: req.spiffe_id.to_string(),
                        requested_ttl_seconds: req.requested_ttl_secs,
                        bundle_as_of_unix: req
                            .bundle_as_of
                            .unwrap_or_else(|| self.authorities().bundle_as_of()),
                        requester: Some(pb::Requester {
                            method: req.requester.method.clone(),
                            principal: req.requester.principal.clone(),
                            peer_address: req.requester.peer_address.clone().unwrap_or_default(),
                            cluster_id: req.requester.cluster_id.clone().unwrap_or_default(),
                            impersonated_by: req
                                .requester
                                .impersonated_by
                                .clone()
                                .unwrap_or_default(),
                            pod: req.requester.pod.clone().unwrap_or_default(),
                            node: req.requester.node.clone().unwrap_or_default(),
                            renewal_of: req.requester.renewal_of.clone().unwrap_or_default(),
                        }),
                    })
                    .await?;
                if let (Some(renewed), false) = (&req.requester.renewal_of, renewal_checked) {
                    // A service from before that check recorded it without looking.
                    self.refuse_revoked_renewal(renewed).await?;
                }
                return Ok(issued);
            }
        };
        let ttl = self.inner.ttl.resolve(req.requested_ttl_secs)?;
        if !req.spiffe_id.is_in(&self.inner.trust_domain) {
            return Err(IssueError::ForeignTrustDomain {
                id: req.spiffe_id.to_string(),
                trust_domain: self.inner.trust_domain.to_string(),
            });
        }
        let (namespace, service_account) = match req.spiffe_id.kubernetes_workload() {
            Some((ns, sa)) => (Some(ns.to_string()), Some(sa.to_string())),
            None => (None, None),
        };
        let subject = RecordSubject {
            spiffe_id: req.spiffe_id.to_string(),
            namespace,
            service_account,
            spki: req.csr.public_key(),
            bundle_as_of: req.bundle_as_of,
        };
        self.sign_and_record(
            committer,
            ttl,
            subject,
            req.requester,
            None,
            |authority, serial, validity| {
                authority.sign_workload(req.csr.public_key(), req.spiffe_id, serial, validity)
            },
        )
        .await
    }

    /// A TLS serving certificate for meshca's own endpoints (DNS and IP SANs, serverAuth and
    /// clientAuth), recorded like every other certificate. Signed by `signer` (see
    /// [`AuthoritySet::serving_signer`]) when it is an `active` or `old` authority, else by the
    /// active one.
    ///
    /// [`AuthoritySet::serving_signer`]: crate::rotation::AuthoritySet::serving_signer
    pub async fn issue_server_certificate(
        &self,
        spki: &SubjectPublicKeyInfoOwned,
        dns_names: &[String],
        ip_addrs: &[IpAddr],
        ttl: Duration,
        principal: &str,
        signer: Option<&str>,
    ) -> Result<IssuedCertificate, IssueError> {
        let committer = match &self.inner.mode {
            Mode::OwnRoots { committer, .. } | Mode::PluggedIn { committer } => committer,
            Mode::Keyless { remote } => {
                return Ok(remote
                    .serving_certificate(pb::ServingCertificateRequest {
                        subject_public_key_info_der: keys::spki_der(spki),
                        dns_names: dns_names.to_vec(),
                        ip_addresses: ip_addrs.iter().map(IpAddr::to_string).collect(),
                        ttl_seconds: ttl.as_secs() as i64,
                        authority_id: signer.unwrap_or_default().to_string(),
                    })
                    .await?);
            }
        };
        let subject = RecordSubject {
            spiffe_id: String::new(),
            namespace: None,
            service_account: None,
            spki,
            bundle_as_of: None,
        };
        let requester = Requester {
            method: "internal".into(),
            principal: principal.into(),
            ..Requester::default()
        };
        self.sign_and_record(
            committer,
            ttl,
            subject,
            &requester,
            signer,
            |authority, serial, validity| {
                authority.sign(profile::server_template(
                    spki,
                    dns_names,
                    ip_addrs,
                    serial.clone(),
                    validity,
                    authority.key_id(),
                )?)
            },
        )
        .await
    }

    /// The revocation check a keyless RA makes itself when its CA service did not (one from
    /// before the check); a check that cannot be made refuses, as an unchecked credential must.
    async fn refuse_revoked_renewal(&self, serial: &str) -> Result<(), IssueError> {
        match self.inner.store.revocation(serial).await {
            Ok(None) => Ok(()),
            Ok(Some(revoked)) => Err(IssueError::RenewalRevoked {
                serial: serial.to_string(),
                reason: revoked.reason,
            }),
            Err(error) => Err(IssueError::Store(CommitError::Store(Arc::new(error)))),
        }
    }

    /// Signs with the current authority and commits the record; a serial collision (the unique
    /// index) signs again with a new serial.
    async fn sign_and_record(
        &self,
        committer: &IssuanceCommitter,
        ttl: Duration,
        subject: RecordSubject<'_>,
        requester: &Requester,
        signer: Option<&str>,
        sign: impl Fn(
            &Authority,
            &SerialNumber,
            (SystemTime, SystemTime),
        ) -> Result<Vec<u8>, AuthoritySignError>,
    ) -> Result<IssuedCertificate, IssueError> {
        let set = self.authorities();
        let authority = signer
            .and_then(|id| set.get(id))
            .filter(|e| matches!(e.state, AuthorityState::Active | AuthorityState::Old))
            .filter(|e| e.authority.key().is_some())
            .map_or_else(|| set.active().clone(), |e| e.authority.clone());
        let bundle_as_of = subject.bundle_as_of.unwrap_or_else(|| set.bundle_as_of());
        let now = SystemTime::now();
        if authority.path_not_after() <= now {
            return Err(IssueError::NotReady(authority.path_not_after()));
        }
        let validity = profile::leaf_validity(now, ttl, authority.path_not_after());
        // Built once: the subject's strings move in, and a serial collision hands the record
        // back to be signed again under a new serial.
        let mut record = IssuanceRecord {
            issuance: Issuance {
                serial: String::new(),
                spiffe_id: subject.spiffe_id,
                namespace: subject.namespace,
                service_account: subject.service_account,
                not_before: unix_seconds(validity.0),
                not_after: unix_seconds(validity.1),
                issued_at: unix_seconds(now),
                authority_id: authority.id().to_string(),
                requester_method: requester.method.clone(),
                requester_principal: requester.principal.clone(),
                peer_address: requester.peer_address.clone(),
                cluster_id: requester.cluster_id.clone(),
                public_key_sha256: keys::sha256_hex(&keys::spki_der(subject.spki)),
                impersonated_by: requester.impersonated_by.clone(),
                requester_pod: requester.pod.clone(),
                requester_node: requester.node.clone(),
            },
            trust_domain: self.inner.trust_domain.to_string(),
            cert_der: Vec::new(),
            bundle_as_of,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let serial_number = x509::new_serial();
            let serial = Serial::from_be_bytes(serial_number.as_bytes());
            record.cert_der = sign(&authority, &serial_number, validity)?;
            record.issuance.serial = serial.to_hex();
            let audit = AuditEvent::new(
                (&requester.method, &requester.principal),
                "certificate.issue",
                &record.issuance.serial,
                Outcome::Success,
                issuance_details(&record.issuance, requester.renewal_of.as_deref()),
            );
            match committer
                .commit(record, audit, requester.renewal_of.clone())
                .await
            {
                Ok(committed) => {
                    let leaf_der = committed.cert_der;
                    let issuers = authority.issuer_chain_pem();
                    // With room for the trust bundle an Istio answer ends with.
                    let mut chain_pem = Vec::with_capacity(2 + issuers.len());
                    chain_pem.push(x509::certificate_pem(&leaf_der));
                    chain_pem.extend(issuers.iter().cloned());
                    return Ok(IssuedCertificate {
                        serial,
                        leaf_der,
                        chain_pem,
                        not_after: validity.1,
                        authority_id: authority.id().clone(),
                    });
                }
                Err(CommitError::DuplicateSerial(taken)) if attempt < SERIAL_ATTEMPTS => {
                    tracing::warn!(serial = %taken.issuance.serial, "serial collision; signing again with a new serial");
                    record = *taken;
                }
                Err(CommitError::RenewalRevoked { serial, reason }) => {
                    return Err(IssueError::RenewalRevoked { serial, reason })
                }
                Err(e) => return Err(IssueError::Store(e)),
            }
        }
    }
}

/// What the issuance record says the certificate is for, and the bundle its answer carries
/// (`None`: this CA's own set's).
struct RecordSubject<'a> {
    spiffe_id: String,
    namespace: Option<String>,
    service_account: Option<String>,
    spki: &'a SubjectPublicKeyInfoOwned,
    bundle_as_of: Option<i64>,
}

/// The signing hot path without the store: a fresh serial, the workload template, signed.
pub fn sign_leaf(
    authority: &Authority,
    csr: &VerifiedCsr,
    spiffe_id: &SpiffeId,
    validity: (SystemTime, SystemTime),
) -> Result<(Serial, Vec<u8>), IssueError> {
    let serial_number = x509::new_serial();
    let serial = Serial::from_be_bytes(serial_number.as_bytes());
    let der = authority.sign_workload(csr.public_key(), spiffe_id, &serial_number, validity)?;
    Ok((serial, der))
}

/// What the audit log says of an issuance; where the requester ran, whom it acted for and which
/// certificate it renewed only when known, so a workload's own request reads as it always did.
/// The fields are in the order a `serde_json` map sorts its keys, as the details were first
/// written.
#[derive(serde::Serialize)]
struct IssuanceDetails<'a> {
    authority: &'a str,
    cluster_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    impersonated_by: Option<&'a str>,
    not_after: i64,
    peer_address: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    renewal_of: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requester_node: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requester_pod: Option<&'a str>,
    spiffe_id: &'a str,
}

fn issuance_details(issuance: &crate::store::Issuance, renewal_of: Option<&str>) -> Details {
    Details::of(&IssuanceDetails {
        authority: &issuance.authority_id,
        cluster_id: issuance.cluster_id.as_deref(),
        impersonated_by: issuance.impersonated_by.as_deref(),
        not_after: issuance.not_after,
        peer_address: issuance.peer_address.as_deref(),
        renewal_of,
        requester_node: issuance.requester_node.as_deref(),
        requester_pod: issuance.requester_pod.as_deref(),
        spiffe_id: &issuance.spiffe_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// A revoked renewal keeps its meaning across a keyless RA: the service says
    /// FAILED_PRECONDITION, and the RA reads that back as the same refusal, not as a failure
    /// to generate the certificate.
    #[test]
    fn a_revoked_renewal_is_the_same_refusal_on_both_sides_of_a_keyless_ra() {
        let at_the_service = IssueError::RenewalRevoked {
            serial: "0a".into(),
            reason: "keyCompromise".into(),
        }
        .refusal();
        assert_eq!(at_the_service.kind(), "renewal_revoked");
        let status = tonic::Status::from(at_the_service.clone());
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let at_the_ra = IssueError::Remote(RemoteError::from(status)).refusal();
        assert_eq!(at_the_ra, at_the_service);
    }

    /// An issuance's audit details are the text they were when built as a `serde_json` map
    /// (keys sorted, unknown requester fields absent, no peer or cluster as `null`): stored
    /// chains, saved queries and parsers see the same JSON.
    #[test]
    fn issuance_details_read_as_the_json_map_wrote_them() {
        let mut issuance = crate::testing::issuance_record("0a").issuance;
        let unset = (None, None, None, None, None);
        let set = (
            Some("10.0.0.7:41234"),
            Some("Kube \"east\" ü"),
            Some("spiffe://cluster.local/ns/istio-system/sa/ztunnel"),
            Some("ns1/pod-1"),
            Some("node-1"),
        );
        for (peer, cluster, impersonator, pod, node) in [unset, set] {
            issuance.peer_address = peer.map(Into::into);
            issuance.cluster_id = cluster.map(Into::into);
            issuance.impersonated_by = impersonator.map(Into::into);
            issuance.requester_pod = pod.map(Into::into);
            issuance.requester_node = node.map(Into::into);
            for renewal_of in [None, Some("0b")] {
                let mut map = serde_json::json!({
                    "spiffe_id": issuance.spiffe_id,
                    "authority": issuance.authority_id,
                    "not_after": issuance.not_after,
                    "peer_address": issuance.peer_address,
                    "cluster_id": issuance.cluster_id,
                });
                for (key, value) in [
                    ("impersonated_by", &issuance.impersonated_by),
                    ("requester_pod", &issuance.requester_pod),
                    ("requester_node", &issuance.requester_node),
                ] {
                    if let Some(value) = value {
                        map[key] = value.as_str().into();
                    }
                }
                if let Some(serial) = renewal_of {
                    map["renewal_of"] = serial.into();
                }
                assert_eq!(
                    issuance_details(&issuance, renewal_of).as_str(),
                    map.to_string()
                );
            }
        }
    }

    /// Logged as `error=…`: a time in a log line is RFC 3339, not `SystemTime { tv_sec: … }`.
    #[test]
    fn an_expired_signing_path_is_named_in_rfc3339() {
        let error = IssueError::NotReady(UNIX_EPOCH + Duration::from_secs(1_795_651_200));
        assert_eq!(
            error.to_string(),
            "the signing path expired at 2026-11-26T00:00:00Z: no certificate can be issued"
        );
    }
}
