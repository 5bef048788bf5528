//! Service-account JWT validation, the step every token-authenticated CreateCertificate pays
//! before its CSR is looked at: header, key lookup by `kid`, signature, claims. RS256 is what
//! most clusters' API servers sign with; ES256 is the other algorithm we accept.
//!
//! `cargo bench -p meshca-ra --bench jwt`

use criterion::{criterion_group, criterion_main, Criterion};
use meshca_ca::keys::{KeyType, SigningKey};
use meshca_ra::auth::jwks::JwksAuthenticator;
use meshca_ra::dev::{self, DevFiles};

fn jwt_validation(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for (alg, issuer_key) in [("RS256", KeyType::Rsa2048), ("ES256", KeyType::EcP256)] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = DevFiles::under(tmp.path());
        // The dev issuer keeps a key it finds, so this picks the token's algorithm.
        let key = SigningKey::generate(issuer_key).expect("issuer key");
        dev::write_issuer_key(&files, &key).expect("issuer key");
        dev::write_dev_credentials(&files).expect("dev issuer");
        let token = std::fs::read_to_string(&files.token).expect("token");
        let token = token.trim();
        let authenticator = runtime
            .block_on(JwksAuthenticator::start(&files.cluster_config()))
            .expect("JWKS authenticator");
        // Measure the accepting path, and check that it is the accepting path.
        assert_eq!(
            runtime
                .block_on(authenticator.validate(token))
                .expect("valid")
                .username,
            "system:serviceaccount:default:default"
        );
        c.bench_function(&format!("jwks validate {alg} service-account token"), |b| {
            b.iter(|| runtime.block_on(authenticator.validate(token)))
        });
        // A well-formed signature that does not verify: the full verification cost.
        let mut tampered = token.to_string().into_bytes();
        let i = tampered.len() - 20;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ASCII");
        c.bench_function(&format!("jwks refuse a tampered {alg} signature"), |b| {
            b.iter(|| runtime.block_on(authenticator.validate(&tampered)).is_err())
        });
    }
}

criterion_group!(benches, jwt_validation);
criterion_main!(benches);
