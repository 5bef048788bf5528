//! The trust bundle meshca hands out: the roots of every authority that is not revoked, then
//! the extra anchors (roots meshca does not sign with but its workloads must trust, Istio's
//! `meshConfig.caCertificates`), each once. One value feeds every place a workload learns its
//! roots (the last element of each answer, the trust-bundle stream, `/v1/trust-bundle`, the
//! `istio-ca-root-cert` ConfigMaps), so they cannot disagree.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::identity::TrustDomain;
use crate::keys::sha256_hex;
use crate::rotation::AuthoritySet;
use crate::x509::ParsedCert;

/// Roots from one configured file, trusted for one trust domain.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtraAnchor {
    pub trust_domain: TrustDomain,
    pub roots: Vec<ParsedCert>,
}

/// One published bundle. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct TrustBundle {
    authorities: Arc<AuthoritySet>,
    roots: Vec<ParsedCert>,
    /// SHA-256 of each root's DER, in bundle order: computed once here rather than by every
    /// stream and request that asks which roots a bundle holds.
    fingerprints: Vec<String>,
    pem: String,
    by_trust_domain: BTreeMap<String, Vec<ParsedCert>>,
    tainted_authority_ids: Vec<String>,
    version: String,
}

// === impl TrustBundle ===

impl TrustBundle {
    /// The bundle of `authorities` with `anchors` merged in: authority roots oldest first, then
    /// the anchors in configuration order, each certificate once. The order is stable, so an
    /// unchanged input gives byte-identical PEM (istio-agent compares it byte for byte).
    pub fn new(
        trust_domain: &TrustDomain,
        authorities: Arc<AuthoritySet>,
        anchors: &[ExtraAnchor],
    ) -> Self {
        let mut roots: Vec<ParsedCert> = Vec::new();
        let mut by_trust_domain: BTreeMap<String, Vec<ParsedCert>> = BTreeMap::new();
        let mut add = |domain: &TrustDomain, root: &ParsedCert| {
            if !roots.iter().any(|r| r.der() == root.der()) {
                roots.push(root.clone());
            }
            let of_domain = by_trust_domain
                .entry(domain.as_str().to_string())
                .or_default();
            if !of_domain.iter().any(|r| r.der() == root.der()) {
                of_domain.push(root.clone());
            }
        };
        for root in authorities.bundle() {
            add(trust_domain, root);
        }
        for anchor in anchors {
            for root in &anchor.roots {
                add(&anchor.trust_domain, root);
            }
        }
        let tainted_authority_ids = authorities.tainted_ids();
        let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for (domain, domain_roots) in &by_trust_domain {
            digest.update(b"domain:");
            digest.update(domain.as_bytes());
            for root in domain_roots {
                digest.update(root.der());
            }
        }
        for id in &tainted_authority_ids {
            digest.update(b"tainted:");
            digest.update(id.as_bytes());
        }
        let version = hex::encode(&digest.finish().as_ref()[..16]);
        let pem = roots.iter().map(ParsedCert::to_pem).collect();
        let fingerprints = roots.iter().map(|r| sha256_hex(r.der())).collect();
        Self {
            authorities,
            roots,
            fingerprints,
            pem,
            by_trust_domain,
            tainted_authority_ids,
            version,
        }
    }

    /// The authority set this bundle was built from.
    pub fn authorities(&self) -> &Arc<AuthoritySet> {
        &self.authorities
    }

    /// Every root, in bundle order.
    pub fn roots(&self) -> &[ParsedCert] {
        &self.roots
    }

    /// The roots as one PEM text, each certificate ending in `\n`: the last element of an
    /// Istio answer, `root-cert.pem`, the ConfigMap's value.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Each root as its own PEM text.
    pub fn roots_pem(&self) -> Vec<String> {
        self.roots.iter().map(ParsedCert::to_pem).collect()
    }

    /// The roots per trust domain, for the SPIFFE Workload API (ours: the authorities' roots
    /// and any anchor given for our own trust domain).
    pub fn by_trust_domain(&self) -> &BTreeMap<String, Vec<ParsedCert>> {
        &self.by_trust_domain
    }

    /// Authorities whose certificates must be replaced now.
    pub fn tainted_authority_ids(&self) -> &[String] {
        &self.tainted_authority_ids
    }

    /// A hash of the content: equal on every replica for equal bundles, and unchanged by a
    /// change that leaves roots and taints alone (a new intermediate).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Each root's SHA-256 fingerprint (lowercase hex of its DER), in bundle order.
    pub fn fingerprints(&self) -> &[String] {
        &self.fingerprints
    }

    /// Whether the root with this SHA-256 fingerprint is in the bundle.
    pub fn holds(&self, root_fingerprint: &str) -> bool {
        self.fingerprints.iter().any(|f| f == root_fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::authority::Authority;
    use crate::keys::KeyType;
    use crate::rotation::{AuthorityEntry, AuthorityState};

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    fn entry(state: AuthorityState) -> AuthorityEntry {
        AuthorityEntry {
            authority: Arc::new(
                Authority::generate_self_signed(
                    &td("cluster.local"),
                    KeyType::EcP256,
                    SystemTime::now(),
                )
                .unwrap(),
            ),
            state,
            source: "generated".into(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn anchor(domain: &str) -> ExtraAnchor {
        let root = Authority::generate_self_signed(&td(domain), KeyType::EcP256, SystemTime::now())
            .unwrap()
            .root()
            .clone();
        ExtraAnchor {
            trust_domain: td(domain),
            roots: vec![root],
        }
    }

    #[test]
    fn authority_roots_then_anchors_each_once_each_pem_ending_in_a_newline() {
        use AuthorityState::*;
        let set = Arc::new(
            AuthoritySet::new(vec![
                entry(Revoked),
                entry(Old),
                entry(Active),
                entry(Prepared),
            ])
            .unwrap(),
        );
        let athenz = anchor("athenz.example");
        let ours = anchor("cluster.local");
        // An anchor that repeats an authority's root is not listed twice.
        let repeated = ExtraAnchor {
            trust_domain: td("cluster.local"),
            roots: vec![set.entries()[2].authority.root().clone()],
        };
        let anchors = [athenz.clone(), ours.clone(), repeated];
        let bundle = TrustBundle::new(&td("cluster.local"), set.clone(), &anchors);
        let expected: Vec<ParsedCert> = set.entries()[1..]
            .iter()
            .map(|e| e.authority.root().clone())
            .chain([athenz.roots[0].clone(), ours.roots[0].clone()])
            .collect();
        assert_eq!(bundle.roots(), expected.as_slice());
        let pem: String = expected.iter().map(ParsedCert::to_pem).collect();
        assert_eq!(bundle.pem(), pem);
        assert_eq!(
            pem.matches("-----END CERTIFICATE-----\n").count(),
            expected.len()
        );
        assert!(!bundle.holds(&sha256_hex(set.entries()[0].authority.root().der())));
        assert!(bundle.holds(&sha256_hex(athenz.roots[0].der())));
        // Per trust domain: ours has the authorities' roots and our own anchor; Athenz its own.
        let domains = bundle.by_trust_domain();
        assert_eq!(domains["cluster.local"].len(), 4);
        assert_eq!(domains["athenz.example"], athenz.roots);
        // Same input, same bytes and version; another anchor set, another version.
        let again = TrustBundle::new(&td("cluster.local"), set.clone(), &anchors);
        assert_eq!(
            (again.pem(), again.version()),
            (bundle.pem(), bundle.version())
        );
        let fewer = TrustBundle::new(&td("cluster.local"), set, &anchors[..1]);
        assert_ne!(fewer.version(), bundle.version());
    }
}
