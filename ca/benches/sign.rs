//! The issuance hot path without the store: parse + verify the CSR, build + sign the leaf,
//! encode it as Istio returns it. P-256 and RSA-2048 CSRs under P-256 and RSA-2048 CAs.
//!
//! The `backend` group compares the raw primitives of aws-lc-rs (what meshca uses) with the
//! pure-Rust `p256` crate, the measurement behind the backend choice.

use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use meshca_ca::issuer::sign_leaf;
use meshca_ca::keys::KeyType;
use meshca_ca::profile;
use meshca_ca::{Authority, TrustDomain, VerifiedCsr};

fn csr_for(kind: &str) -> String {
    let key = match kind {
        "p256" => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        _ => {
            use aws_lc_rs::encoding::AsDer;
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
            rcgen::KeyPair::try_from(pair.as_der().unwrap().as_ref()).unwrap()
        }
    };
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn sign_path(c: &mut Criterion) {
    let td = TrustDomain::new("cluster.local").unwrap();
    let id = td.workload_id("default", "bench").unwrap();
    let mut group = c.benchmark_group("issue");
    group.measurement_time(Duration::from_secs(4));
    for (ca_name, ca_key) in [
        ("ca-p256", KeyType::EcP256),
        ("ca-rsa2048", KeyType::Rsa2048),
    ] {
        let authority = Authority::generate_self_signed(&td, ca_key, SystemTime::now()).unwrap();
        for csr_name in ["p256", "rsa2048"] {
            let csr_pem = csr_for(csr_name);
            group.bench_with_input(
                BenchmarkId::new(ca_name, format!("csr-{csr_name}")),
                &csr_pem,
                |b, csr_pem| {
                    b.iter(|| {
                        let csr = VerifiedCsr::from_pem(csr_pem).unwrap();
                        let now = SystemTime::now();
                        let validity = profile::leaf_validity(
                            now,
                            Duration::from_secs(86400),
                            authority.path_not_after(),
                        );
                        let (_, der) = sign_leaf(&authority, &csr, &id, validity).unwrap();
                        meshca_ca::x509::certificate_pem(&der)
                    })
                },
            );
        }
    }
    group.finish();
}

fn backend(c: &mut Criterion) {
    use aws_lc_rs::signature::{self as lc, KeyPair as _};
    use p256::ecdsa::signature::{Signer, Verifier};

    let msg = [0x5au8; 600]; // about a TBS certificate
    let mut group = c.benchmark_group("backend");
    group.measurement_time(Duration::from_secs(3));

    let rng = aws_lc_rs::rand::SystemRandom::new();
    let lc_key = lc::EcdsaKeyPair::generate(&lc::ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
    let lc_sig = lc_key.sign(&rng, &msg).unwrap();
    let lc_pub = lc::UnparsedPublicKey::new(
        &lc::ECDSA_P256_SHA256_ASN1,
        lc_key.public_key().as_ref().to_vec(),
    );
    group.bench_function("aws-lc-rs/p256-sign", |b| {
        b.iter(|| lc_key.sign(&rng, &msg).unwrap())
    });
    group.bench_function("aws-lc-rs/p256-verify", |b| {
        b.iter(|| lc_pub.verify(&msg, lc_sig.as_ref()).unwrap())
    });

    let rc_key = p256::ecdsa::SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let rc_sig: p256::ecdsa::Signature = rc_key.sign(&msg);
    let rc_pub = *rc_key.verifying_key();
    group.bench_function("rustcrypto/p256-sign", |b| {
        b.iter(|| -> p256::ecdsa::Signature { rc_key.sign(&msg) })
    });
    group.bench_function("rustcrypto/p256-verify", |b| {
        b.iter(|| rc_pub.verify(&msg, &rc_sig).unwrap())
    });

    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let mut sig = vec![0; rsa.public_modulus_len()];
    group.bench_function("aws-lc-rs/rsa2048-sign", |b| {
        b.iter(|| {
            rsa.sign(&lc::RSA_PKCS1_SHA256, &rng, &msg, &mut sig)
                .unwrap()
        })
    });
    rsa.sign(&lc::RSA_PKCS1_SHA256, &rng, &msg, &mut sig)
        .unwrap();
    let rsa_pub = lc::UnparsedPublicKey::new(
        &lc::RSA_PKCS1_2048_8192_SHA256,
        rsa.public_key().as_ref().to_vec(),
    );
    group.bench_function("aws-lc-rs/rsa2048-verify", |b| {
        b.iter(|| rsa_pub.verify(&msg, &sig).unwrap())
    });
    group.finish();
}

criterion_group!(benches, sign_path, backend);
criterion_main!(benches);
