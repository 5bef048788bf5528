//! Renewal's check of a leaf on its authority's already verified path gives the verdict a full
//! path build gives, for good leaves and for every way a leaf or its path can be wrong.

mod common;

use std::time::SystemTime;

use common::*;
use meshca_ca::chain::{self, PathError};
use meshca_ca::testing::LeafSpec;
use meshca_ca::x509::ParsedCert;
use meshca_ca::KeyType;

/// The verdicts of both checks of `leaf` at `now` under `path` (signing cert to root), with
/// `roots` as the bundle; asserts they agree.
fn verdict(
    leaf: &ParsedCert,
    path: &[ParsedCert],
    roots: &[ParsedCert],
    now: SystemTime,
) -> Result<(), PathError> {
    let pool = &path[..path.len() - 1];
    let full = chain::verify_leaf(leaf, pool, roots, now).map(drop);
    let bundle: Vec<&ParsedCert> = roots.iter().collect();
    let on_path = chain::verify_leaf_on_path(leaf, path, &bundle, now);
    assert_eq!(on_path, full, "both checks agree");
    on_path
}

#[test]
fn a_leaf_on_its_authoritys_path_gets_the_full_verdict() {
    let generated = GeneratedChain::new(KeyType::EcP256);
    let now = SystemTime::now();
    let roots = vec![generated.root.cert.clone()];
    let path = chain::build_path(
        &generated.signing.cert,
        std::slice::from_ref(&generated.intermediate.cert),
        &roots,
        now,
    )
    .unwrap()
    .certs;
    assert_eq!(path.len(), 3, "signing, intermediate, root");

    let mut spec = LeafSpec::new("CN=web");
    spec.uris = vec!["spiffe://cluster.local/ns/default/sa/web".into()];
    let good = generated.signing.issue_leaf(&spec);
    verdict(&good.cert, &path, &roots, now).unwrap();

    // Expired, and not yet valid.
    let mut expired = spec.clone();
    expired.not_before = now - 3 * DAY;
    expired.not_after = now - DAY;
    let expired = generated.signing.issue_leaf(&expired);
    let err = verdict(&expired.cert, &path, &roots, now).unwrap_err();
    assert!(matches!(err, PathError::Validity { .. }), "{err}");
    let mut early = spec.clone();
    early.not_before = now + DAY;
    let early = generated.signing.issue_leaf(&early);
    assert!(verdict(&early.cert, &path, &roots, now).is_err());

    // The same issuer name, another key: a forgery.
    let impostor = TestCa::new(
        &CaSpec::new(&generated.signing.cert.subject().to_string()),
        Some(&generated.intermediate),
    );
    let forged = impostor.issue_leaf(&spec);
    let err = verdict(&forged.cert, &path, &roots, now).unwrap_err();
    assert!(matches!(err, PathError::NoPath { .. }), "{err}");

    // A path that has since expired above the leaf: two years on, the leaf is still within
    // its own validity but the intermediates are not.
    let mut long = spec.clone();
    long.not_after = now + 3 * 365 * DAY;
    let long = generated.signing.issue_leaf(&long);
    let later = now + 2 * 365 * DAY;
    let err = verdict(&long.cert, &path, &roots, later).unwrap_err();
    assert!(matches!(err, PathError::Validity { .. }), "{err}");

    // A self-signed authority's root, shown as a workload certificate.
    let root_only = vec![generated.root.cert.clone()];
    let err = verdict(&generated.root.cert, &root_only, &roots, now).unwrap_err();
    assert!(matches!(err, PathError::NotCa { .. }), "{err}");
}
