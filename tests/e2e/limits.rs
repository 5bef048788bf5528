//! Per-caller rate limits seen by a client we did not write: grpcio (gRPC's C core) calling
//! `CreateCertificate` faster than its identity may is answered `RESOURCE_EXHAUSTED` with the
//! wait in the message and in `grpc-retry-pushback-ms`, and nothing is issued for it.

use crate::harness::*;

#[tokio::test]
async fn grpcio_over_its_identity_limit_is_told_when_to_retry() {
    let Some(python) = third_party_python("grpcio_over_its_identity_limit_is_told_when_to_retry")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("meshca-dev");
    let server = dev_server(
        tmp.path(),
        &[
            ("MESHCA_GRPC_RATE_LIMIT_PER_IDENTITY_RATE", "1".into()),
            ("MESHCA_GRPC_RATE_LIMIT_PER_IDENTITY_BURST", "3".into()),
        ],
    );
    let csr = tmp.path().join("csr.pem");
    std::fs::write(
        &csr,
        WorkloadKey::ec().csr(&["spiffe://cluster.local/ns/default/sa/default"]),
    )
    .unwrap();
    let calls = grpcio_create_certificate(
        &python,
        server.grpc,
        &data.join("root-cert.pem"),
        GrpcioCredential::Token(&data.join("dev/token")),
        &csr,
        5,
    );
    let codes: Vec<&str> = calls.iter().map(|c| c["code"].as_str().unwrap()).collect();
    // The burst of three, then the bucket is empty (a token comes back each second; five
    // calls take far less).
    assert_eq!(&codes[..3], ["OK", "OK", "OK"], "{calls:?}");
    assert!(
        codes[3..].iter().all(|c| *c == "RESOURCE_EXHAUSTED"),
        "{calls:?}"
    );
    let limited = &calls[3];
    assert!(
        limited["details"]
            .as_str()
            .unwrap()
            .starts_with("rate limit per caller identity exceeded; nothing was issued; retry in"),
        "{limited}"
    );
    let pushback: u64 = limited["pushback_ms"].as_str().unwrap().parse().unwrap();
    assert!((1..=1000).contains(&pushback), "{limited}");
    assert_eq!(
        server.metric("meshca_rate_limited_count{limit=\"identity\"}"),
        2.0
    );
    assert_eq!(
        server.metric("citadel_server_success_cert_issuance_count"),
        3.0
    );
}
