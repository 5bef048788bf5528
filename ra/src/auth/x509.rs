//! X.509 client-certificate authentication: renewal with a workload cert meshca issued, and
//! Athenz service identities. The TLS layer only checks possession of the key; the chain is
//! verified here, against the trust store of the method.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use meshca_ca::chain;
use meshca_ca::x509::ParsedCert;
use meshca_ca::{CertificateAuthority, SpiffeId, TrustDomain};
use rustls_pki_types::CertificateDer;
use x509_cert::name::Name;

use super::caller::{AuthError, AuthMethod, Caller};

const OID_COMMON_NAME: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3");

/// Renewal: a workload certificate that chains to meshca's current trust bundle and names
/// exactly one SPIFFE id in our trust domain.
#[derive(Debug)]
pub struct RenewalAuthenticator {
    ca: CertificateAuthority,
}

/// Athenz service certificates (`CN=<domain>.<service>`), chained to the Athenz CA bundle.
#[derive(Debug)]
pub struct AthenzAuthenticator {
    roots: Vec<ParsedCert>,
    namespace_map: BTreeMap<String, String>,
    trust_domain: TrustDomain,
}

// === impl RenewalAuthenticator ===

impl RenewalAuthenticator {
    pub fn new(ca: CertificateAuthority) -> Self {
        Self { ca }
    }

    /// Verifies the chain to the trust bundle, then refuses certificates whose authority was
    /// tainted or revoked. Whether an administrator revoked the certificate itself is checked
    /// where the renewed one is committed ([`Caller::renewal_of`]): one indexed read inside
    /// that transaction instead of a round trip to the store's reader here, and a revocation
    /// committed in between is seen.
    pub fn authenticate(&self, chain_der: &[CertificateDer<'static>]) -> Result<Caller, AuthError> {
        let leaf = parse_leaf(chain_der)?;
        let set = self.ca.authorities();
        let bundle = set.bundle();
        let now = SystemTime::now();
        // Nearly every caller holds a certificate one of our trusted authorities signed (its
        // authority key id is the authority's id): the rest of its path was verified when the
        // authority loaded.
        let issuer_id = leaf.authority_key_id().map(hex::encode);
        let own_issuer = issuer_id
            .as_deref()
            .and_then(|id| set.get(id))
            .filter(|e| e.state.trusted())
            .map(|e| &e.authority)
            .filter(|a| a.signing_cert().subject() == leaf.issuer());
        match own_issuer {
            Some(authority) => chain::verify_leaf_on_path(&leaf, authority.path(), &bundle, now),
            None => {
                // The bundle's roots anchor; our own intermediates help clients that send only
                // a leaf.
                let mut pool = parse_pool(chain_der)?;
                for entry in set.entries() {
                    pool.extend(entry.authority.intermediates().iter().cloned());
                }
                let roots: Vec<ParsedCert> = bundle.into_iter().cloned().collect();
                chain::verify_leaf(&leaf, &pool, &roots, now).map(drop)
            }
        }
        .map_err(|e| AuthError::ClientCert(format!("not a current meshca certificate: {e}")))?;
        if let Some(issuer) = issuer_id {
            if set.refuses_renewal_from(&issuer) {
                return Err(AuthError::ClientCert(format!(
                    "issued by authority {issuer}, which was tainted; renew with another credential"
                )));
            }
        }
        let spiffe: Vec<String> = leaf
            .uri_sans()
            .into_iter()
            .filter(|u| u.starts_with("spiffe://"))
            .collect();
        let [uri] = spiffe.as_slice() else {
            return Err(AuthError::ClientCert(format!(
                "expected exactly one spiffe:// URI SAN, found {}",
                spiffe.len()
            )));
        };
        let id = SpiffeId::new(uri).map_err(|e| AuthError::ClientCert(e.to_string()))?;
        if !id.is_in(self.ca.trust_domain()) {
            return Err(AuthError::ClientCert(format!(
                "{id} is not in trust domain {}",
                self.ca.trust_domain()
            )));
        }
        Ok(Caller {
            principal: id.to_string(),
            spiffe_id: id,
            method: AuthMethod::Renewal,
            cluster_id: None,
            kubernetes: None,
            renewal_of: Some(leaf.serial().to_hex()),
        })
    }
}

// === impl AthenzAuthenticator ===

impl AthenzAuthenticator {
    pub fn load(
        bundle: &Path,
        namespace_map: &BTreeMap<String, String>,
        trust_domain: &TrustDomain,
    ) -> Result<Self, String> {
        let bytes = std::fs::read(bundle).map_err(|e| format!("{}: {e}", bundle.display()))?;
        let roots =
            ParsedCert::many_from_pem(&bytes).map_err(|e| format!("{}: {e}", bundle.display()))?;
        if roots.is_empty() {
            return Err(format!("{}: no certificates", bundle.display()));
        }
        Ok(Self {
            roots,
            namespace_map: namespace_map.clone(),
            trust_domain: trust_domain.clone(),
        })
    }

    pub fn authenticate(&self, chain_der: &[CertificateDer<'static>]) -> Result<Caller, AuthError> {
        let (leaf, pool) = (parse_leaf(chain_der)?, parse_pool(chain_der)?);
        chain::verify_leaf(&leaf, &pool, &self.roots, SystemTime::now())
            .map_err(|e| AuthError::ClientCert(format!("not an Athenz certificate: {e}")))?;
        let cn = common_name(leaf.subject())
            .ok_or_else(|| AuthError::ClientCert("Athenz certificate has no CN".into()))?;
        let (domain, service) = cn
            .rsplit_once('.')
            .filter(|(d, s)| !d.is_empty() && !s.is_empty())
            .ok_or_else(|| AuthError::ClientCert(format!("CN {cn:?} is not <domain>.<service>")))?;
        // Athenz certs also carry athenz://instanceid/…; only spiffe:// URIs must agree.
        let expected_uri = format!("spiffe://{domain}/sa/{service}");
        if let Some(other) = leaf
            .uri_sans()
            .into_iter()
            .find(|u| u.starts_with("spiffe://") && *u != expected_uri)
        {
            return Err(AuthError::ClientCert(format!(
                "CN {cn:?} and URI SAN {other} disagree (expected {expected_uri})"
            )));
        }
        let namespace = self
            .namespace_map
            .get(domain)
            .cloned()
            .unwrap_or_else(|| domain.replace('.', "-"));
        let spiffe_id = self
            .trust_domain
            .workload_id(&namespace, service)
            .map_err(|e| AuthError::ClientCert(format!("Athenz principal {cn:?}: {e}")))?;
        Ok(Caller {
            spiffe_id,
            method: AuthMethod::Athenz,
            principal: cn,
            cluster_id: None,
            kubernetes: None,
            renewal_of: None,
        })
    }
}

/// The client's certificate: the first of the chain its TLS handshake presented.
fn parse_leaf(chain_der: &[CertificateDer<'static>]) -> Result<ParsedCert, AuthError> {
    let leaf = chain_der.first().ok_or(AuthError::NoCredential)?;
    parse(leaf)
}

/// The rest of the presented chain, as candidate intermediates. Parsed only when a path must
/// be searched: renewal with one of our own certificates does not look at it.
fn parse_pool(chain_der: &[CertificateDer<'static>]) -> Result<Vec<ParsedCert>, AuthError> {
    chain_der.iter().skip(1).map(parse).collect()
}

fn parse(der: &CertificateDer<'static>) -> Result<ParsedCert, AuthError> {
    ParsedCert::from_der(der.as_ref())
        .map_err(|e| AuthError::ClientCert(format!("does not parse: {e}")))
}

/// The (last) CN of a subject, in any of the string types CAs use.
pub fn common_name(name: &Name) -> Option<String> {
    name.0
        .iter()
        .rev()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|atv| atv.oid == OID_COMMON_NAME)
        .filter_map(|atv| {
            atv.value
                .decode_as::<der::asn1::Utf8StringRef<'_>>()
                .map(|s| s.as_str().to_string())
                .or_else(|_| {
                    atv.value
                        .decode_as::<der::asn1::PrintableStringRef<'_>>()
                        .map(|s| s.as_str().to_string())
                })
                .or_else(|_| {
                    atv.value
                        .decode_as::<der::asn1::Ia5StringRef<'_>>()
                        .map(|s| s.as_str().to_string())
                })
                .ok()
        })
        .next()
}
