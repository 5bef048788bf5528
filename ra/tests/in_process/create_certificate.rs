//! `CreateCertificate` called on the service itself, carrying the `PeerInfo` the TLS acceptor
//! attaches: a dev token gets a certificate recorded with that peer; a CSR naming another
//! identity, or a call without a credential, gets Istio's code and nothing is issued; every
//! answer ends in the whole trust bundle.

use std::collections::BTreeMap;
use std::sync::Arc;

use meshca_ca::keys::KeyType;
use meshca_ca::rotation::RotationStep;
use meshca_ca::store::RevocationRecord;
use meshca_ca::testing::{CaSpec, TestCa};
use meshca_ca::x509::ParsedCert;
use meshca_ca::{Authority, CertificateAuthority, PrepareRequest};
use meshca_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;
use meshca_proto::istio::v1::auth::IstioCertificateRequest;
use meshca_ra::auth::Authenticator;
use meshca_ra::config::{ExtraAnchorConfig, TrustConfig};
use meshca_ra::dev::{write_dev_credentials, DevFiles};
use meshca_ra::metrics::RaMetrics;
use meshca_ra::service::{CertificateService, AUTHENTICATION_FAILURE};
use meshca_ra::tls::PeerInfo;
use meshca_ra::trust::TrustBundles;
use meshca_ra::AuthConfig;
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use tonic::{Code, Request};

use crate::{audit_events, csr_pem, start_ca};

/// Who the dev token names.
const ID: &str = "spiffe://cluster.local/ns/default/sa/default";
const PRINCIPAL: &str = "system:serviceaccount:default:default";
const PEER: &str = "10.1.2.3:45678";

/// The service over a fresh CA that trusts the dev token issuer as cluster `Kubernetes`.
struct Ra {
    service: CertificateService,
    ca: CertificateAuthority,
    metrics: Arc<RaMetrics>,
    token: String,
    _dir: tempfile::TempDir,
}

impl Ra {
    async fn start() -> Self {
        Self::start_trusting(tempfile::tempdir().unwrap(), &TrustConfig::default()).await
    }

    /// An RA whose bundle also holds `trust`'s extra anchors (files under `dir`).
    async fn start_trusting(dir: tempfile::TempDir, trust: &TrustConfig) -> Self {
        let ca = start_ca(dir.path()).await;
        let files = DevFiles::under(dir.path());
        write_dev_credentials(&files).unwrap();
        let config = AuthConfig {
            clusters: BTreeMap::from([("Kubernetes".into(), files.cluster_config())]),
            ..AuthConfig::default()
        };
        let auth = Arc::new(Authenticator::new(&config, ca.clone()).await.unwrap());
        let metrics = Arc::new(RaMetrics::default());
        Self {
            service: CertificateService::new(
                ca.clone(),
                TrustBundles::start(ca.clone(), trust).unwrap(),
                auth,
                metrics.clone(),
                8,
            ),
            ca,
            metrics,
            token: std::fs::read_to_string(&files.token).unwrap(),
            _dir: dir,
        }
    }

    /// A request as tonic hands it to the service after the TLS acceptor: the peer's address
    /// (no client certificate) in `PeerInfo`, and the token, when given, as a bearer header.
    fn request(&self, csr: String, with_token: bool) -> Request<IstioCertificateRequest> {
        let mut request = Request::new(IstioCertificateRequest {
            csr,
            validity_duration: 3600,
            metadata: None,
        });
        if with_token {
            let bearer = format!("Bearer {}", self.token.trim());
            let metadata = request.metadata_mut();
            metadata.insert("authorization", bearer.parse().unwrap());
        }
        request.extensions_mut().insert(PeerInfo {
            remote_addr: PEER.parse().unwrap(),
            certs: Arc::default(),
        });
        request
    }

    async fn call(
        &self,
        csr_uris: &[&str],
        with_token: bool,
    ) -> Result<Vec<String>, tonic::Status> {
        let request = self.request(csr_pem(csr_uris), with_token);
        let answer = self.service.create_certificate(request).await?;
        Ok(answer.into_inner().cert_chain)
    }

    async fn issued(&self) -> i64 {
        self.ca.store().count_issuances().await.unwrap()
    }
}

#[tokio::test]
async fn a_dev_token_gets_a_certificate_recorded_with_its_peer() {
    let ra = Ra::start().await;
    let before = ra.issued().await;

    let chain = ra.call(&[ID], true).await.unwrap();
    assert!(chain.len() >= 2, "leaf, then the root bundle: {chain:?}");
    let leaf = ParsedCert::from_der(pem::parse(&chain[0]).unwrap().contents()).unwrap();
    assert_eq!(leaf.uri_sans(), [ID]);

    assert_eq!(ra.issued().await, before + 1);
    let record = ra.ca.store().issuance_by_serial(&leaf.serial()).await;
    let record = record
        .unwrap()
        .expect("recorded before it was returned")
        .issuance;
    assert_eq!(record.spiffe_id, ID);
    assert_eq!(record.requester_method, "jwt");
    assert_eq!(record.requester_principal, PRINCIPAL);
    assert_eq!(
        record.peer_address.as_deref(),
        Some(PEER),
        "read from PeerInfo"
    );
    assert_eq!(record.cluster_id.as_deref(), Some("Kubernetes"));
    assert_eq!(ra.metrics.successes(), 1);
}

/// istio-agent takes its ROOTCA from the last element of each answer and ztunnel splits it
/// into roots: through a whole rotation that element is every trusted root plus the extra
/// anchors, each PEM ending in a newline, never just the signer's root.
#[tokio::test]
async fn every_answer_ends_in_the_whole_bundle_through_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let athenz = TestCa::new(&CaSpec::new("CN=Athenz Root"), None);
    let anchor_file = dir.path().join("athenz-ca.pem");
    std::fs::write(&anchor_file, athenz.pem()).unwrap();
    let trust = TrustConfig {
        extra_anchors: vec![ExtraAnchorConfig {
            trust_domain: "athenz.example".into(),
            pem_file: anchor_file,
        }],
        ..TrustConfig::default()
    };
    let ra = Ra::start_trusting(dir, &trust).await;
    let first = ra.ca.current_authority();
    // The roots in the set's order (oldest authority first; ties in the same second by id,
    // the same on every replica), then the anchor.
    let answer = |roots: &[&Arc<Authority>]| -> String {
        let set = ra.ca.authorities();
        let mut pem: String = set
            .entries()
            .iter()
            .filter(|e| roots.iter().any(|r| r.id() == e.authority.id()))
            .map(|e| e.authority.roots_pem())
            .collect();
        pem.push_str(&athenz.pem());
        pem
    };
    let signer = |chain: &[String]| {
        let leaf = ParsedCert::from_der(pem::parse(&chain[0]).unwrap().contents()).unwrap();
        hex::encode(leaf.authority_key_id().unwrap())
    };

    let chain = ra.call(&[ID], true).await.unwrap();
    assert_eq!(chain.len(), 2, "[leaf, bundle]: the root signs");
    assert_eq!(chain[1], answer(&[&first]));

    let actor = ("token", "ops");
    let prepared = ra
        .ca
        .prepare_authority(PrepareRequest::Generate(KeyType::EcP256), actor)
        .await
        .unwrap();
    let second = prepared.authority.clone();
    let chain = ra.call(&[ID], true).await.unwrap();
    assert_eq!(chain.last().unwrap(), &answer(&[&first, &second]));
    assert_eq!(signer(&chain), first.id().as_str());

    let id = |a: &Arc<Authority>| a.id().to_string();
    ra.ca
        .step_authority(&id(&second), RotationStep::Activate, actor, &[])
        .await
        .unwrap();
    let chain = ra.call(&[ID], true).await.unwrap();
    assert_eq!(chain.last().unwrap(), &answer(&[&first, &second]));
    assert_eq!(signer(&chain), second.id().as_str());

    for step in [RotationStep::Taint, RotationStep::Revoke] {
        ra.ca
            .step_authority(&id(&first), step, actor, &[])
            .await
            .unwrap();
    }
    let chain = ra.call(&[ID], true).await.unwrap();
    assert_eq!(chain.last().unwrap(), &answer(&[&second]));
    assert!(chain.iter().all(|element| element.ends_with('\n')));
}

#[tokio::test]
async fn a_csr_for_another_identity_is_refused_and_nothing_is_issued() {
    let ra = Ra::start().await;
    let before = ra.issued().await;
    let other = "spiffe://cluster.local/ns/default/sa/admin";

    for uris in [vec![other], vec![ID, other]] {
        let status = ra.call(&uris, true).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{uris:?}");
        assert_eq!(
            status.message(),
            format!("CSR requests identity {other} but the caller is authenticated as {ID}")
        );
    }
    assert_eq!(ra.issued().await, before, "nothing issued");
    assert_eq!(ra.metrics.successes(), 0);

    let refusals = audit_events(&ra.ca, "certificate.issue", 2).await;
    for event in &refusals {
        assert_eq!(event.outcome, "refused");
        assert_eq!(
            (event.actor_method.as_str(), event.actor_principal.as_str()),
            ("jwt", PRINCIPAL)
        );
        assert_eq!(event.target, ID);
        let details: Value = serde_json::from_str(&event.details).unwrap();
        assert_eq!(details["peer_address"], PEER);
    }
}

#[tokio::test]
async fn a_call_without_a_token_is_unauthenticated_and_nothing_is_issued() {
    let ra = Ra::start().await;
    let before = ra.issued().await;

    let status = ra.call(&[ID], false).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), AUTHENTICATION_FAILURE, "no reason sent");
    assert_eq!(ra.issued().await, before, "nothing issued");
    assert_eq!(ra.metrics.authentication_failures(), 1);

    let denials = audit_events(&ra.ca, "certificate.issue", 1).await;
    let [denial] = denials.as_slice() else {
        panic!("one denial: {denials:?}");
    };
    assert_eq!(denial.outcome, "denied");
    assert_eq!(
        (
            denial.actor_method.as_str(),
            denial.actor_principal.as_str()
        ),
        ("anonymous", PEER)
    );
    let details: Value = serde_json::from_str(&denial.details).unwrap();
    assert_eq!(
        details["reason"],
        "no client certificate and no bearer token"
    );
}

/// Renewal over mTLS with a certificate an administrator revoked: found where the renewed
/// certificate would be committed, answered as any failed authentication, nothing issued, the
/// denial on record under the renewing identity with the reason. A sibling that was not
/// revoked still renews, and its record says which certificate it renewed.
#[tokio::test]
async fn a_renewal_with_a_revoked_certificate_is_unauthenticated_and_nothing_is_issued() {
    let ra = Ra::start().await;
    let first = ra.call(&[ID], true).await.unwrap();
    let second = ra.call(&[ID], true).await.unwrap();
    let leaf_der = |chain: &[String]| pem::parse(&chain[0]).unwrap().into_contents();
    let serial_of = |chain: &[String]| {
        ParsedCert::from_der(&leaf_der(chain))
            .unwrap()
            .serial()
            .to_hex()
    };
    let renew = |chain: &[String]| {
        let mut request = ra.request(csr_pem(&[ID]), false);
        request.extensions_mut().insert(PeerInfo {
            remote_addr: PEER.parse().unwrap(),
            certs: Arc::new(vec![CertificateDer::from(leaf_der(chain))]),
        });
        ra.service.create_certificate(request)
    };
    assert!(ra
        .ca
        .store()
        .insert_revocation(&RevocationRecord {
            serial: serial_of(&first),
            reason: "keyCompromise".into(),
            revoked_at: 1_790_000_000,
            actor: "token:ops".into(),
        })
        .await
        .unwrap());
    let before = ra.issued().await;

    let status = renew(&first).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), AUTHENTICATION_FAILURE, "no reason sent");
    assert_eq!(ra.issued().await, before, "nothing issued");
    assert_eq!(ra.metrics.authentication_failures(), 1);
    let denials = audit_events(&ra.ca, "certificate.issue", 3).await;
    let denial = denials
        .iter()
        .find(|e| e.outcome == "denied")
        .unwrap_or_else(|| panic!("a denial among {denials:?}"));
    assert_eq!(
        (
            denial.actor_method.as_str(),
            denial.actor_principal.as_str()
        ),
        ("renewal", ID)
    );
    let details: Value = serde_json::from_str(&denial.details).unwrap();
    let reason = details["reason"].as_str().unwrap();
    assert!(
        reason.contains(&serial_of(&first)) && reason.contains("keyCompromise"),
        "{reason}"
    );

    // The control: the sibling renews, on record as a renewal of it.
    let renewed = renew(&second).await.unwrap().into_inner().cert_chain;
    assert_eq!(ra.issued().await, before + 1);
    let record = ra
        .ca
        .store()
        .issuance_by_serial(&serial_of(&renewed).parse().unwrap())
        .await
        .unwrap()
        .expect("recorded")
        .issuance;
    assert_eq!(
        (
            record.requester_method.as_str(),
            record.requester_principal.as_str()
        ),
        ("renewal", ID)
    );
    let issued = audit_events(&ra.ca, "certificate.issue", 4).await;
    let event = issued
        .iter()
        .find(|e| e.target == serial_of(&renewed))
        .expect("the renewal's event");
    let details: Value = serde_json::from_str(&event.details).unwrap();
    assert_eq!(details["renewal_of"], serial_of(&second));
}

/// A ztunnel-style request for another identity (`ImpersonatedIdentity`) while no node account
/// is trusted gets Istio's refusal and nothing: meshca used to issue the caller's own identity
/// instead.
#[tokio::test]
async fn an_impersonating_request_is_refused_and_nothing_is_issued() {
    let ra = Ra::start().await;
    let before = ra.issued().await;
    let pod = "spiffe://cluster.local/ns/shop/sa/cart";
    let mut request = ra.request(csr_pem(&[pod]), true);
    let metadata = prost_types::Struct {
        fields: BTreeMap::from([(
            "ImpersonatedIdentity".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(pod.into())),
            },
        )]),
    };
    request.get_mut().metadata = Some(metadata);

    let status = ra.service.create_certificate(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "request impersonation authentication failure"
    );
    assert_eq!(ra.issued().await, before, "nothing issued");
    let denials = audit_events(&ra.ca, "certificate.issue", 1).await;
    assert_eq!(denials[0].outcome, "denied");
    assert_eq!(denials[0].target, pod);
    let details: Value = serde_json::from_str(&denials[0].details).unwrap();
    assert_eq!(
        details["reason"], "no node account is trusted (auth.trusted_node_accounts is empty)",
        "{details}"
    );
    assert_eq!(
        details["impersonated_by"], "spiffe://cluster.local/ns/default/sa/default",
        "the caller that asked, on record"
    );

    // Without it, the same caller gets its own identity as before.
    assert!(ra.call(&[ID], true).await.is_ok());
}

/// The trust-bundle stream follows the published bundle, which must follow a rotation step on
/// its own: with no anchor files configured, and before any answer asks for it.
#[tokio::test]
async fn the_published_bundle_follows_a_step_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let ca = start_ca(dir.path()).await;
    let bundles = TrustBundles::start(ca.clone(), &TrustConfig::default()).unwrap();
    let mut published = bundles.watch();
    ca.prepare_authority(PrepareRequest::Generate(KeyType::EcP256), ("token", "ops"))
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), published.changed())
        .await
        .expect("published within 5 s")
        .unwrap();
    assert_eq!(published.borrow().roots().len(), 2);
}

/// `grpc.rate_limit`: a caller over its identity's burst, or an address over its own, gets
/// `RESOURCE_EXHAUSTED` saying when to retry (also as `grpc-retry-pushback-ms`), nothing is
/// issued or audited, and the refusal is counted; other callers are not slowed.
#[tokio::test]
async fn a_caller_over_its_limit_is_told_when_to_retry_and_nothing_is_issued() {
    use meshca_ra::limits::{CallerLimitConfig, CallerLimits, RateLimit};

    let mut ra = Ra::start().await;
    ra.service = ra
        .service
        .clone()
        .with_limits(Arc::new(CallerLimits::new(&CallerLimitConfig {
            per_identity: RateLimit { rate: 1, burst: 2 },
            per_address: RateLimit { rate: 1, burst: 4 },
            max_callers: 100,
        })));
    for _ in 0..2 {
        ra.call(&[ID], true).await.unwrap();
    }
    let before = (
        ra.issued().await,
        audit_events(&ra.ca, "certificate.issue", 2).await.len(),
    );
    let limited = ra.call(&[ID], true).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    assert!(
        limited
            .message()
            .starts_with("rate limit per caller identity exceeded; nothing was issued; retry in"),
        "{}",
        limited.message()
    );
    let pushback: u64 = limited
        .metadata()
        .get("grpc-retry-pushback-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((900..=1000).contains(&pushback), "{pushback} ms");
    // The address had four calls: the limited one spent one too, an unauthenticated caller
    // the last, and then the address is refused before authentication.
    let refused = ra.call(&[ID], false).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let limited = ra.call(&[ID], false).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    assert!(
        limited.message().contains("per caller address"),
        "{}",
        limited.message()
    );

    // Refusals are audited in the background: give them the time they take. The
    // unauthenticated call's denial is the only new event; the limited calls made none.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(ra.issued().await, before.0, "nothing issued");
    assert_eq!(
        audit_events(&ra.ca, "certificate.issue", 0).await.len(),
        before.1 + 1,
        "only the authentication failure is audited"
    );

    let metrics = ra.metrics.render(meshca_ra::metrics::CaReadings {
        root_cert_expiry: 0,
        cert_chain_expiry: 0,
        cacerts_reload_failures: 0,
        issuance_commits: 0,
        issuances_committed: 0,
    });
    for line in [
        "meshca_rate_limited_count{limit=\"identity\"} 1",
        "meshca_rate_limited_count{limit=\"address\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}
