//! Envoy `DiscoveryRequest` sequences into the agent's SDS stream state machine: requests split
//! on 0xff, each a flag byte (bit 0: answer the last response's nonce, as an ACK/NACK does)
//! and a protobuf-encoded request. Never a panic; nothing unsubscribed is ever sent, no nonce
//! is reused, and a stream that is refused says why.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use libfuzzer_sys::fuzz_target;
use meshca_agent::credential::{Credential, KeyAndCsr, KeyType};
use meshca_ca::issuer::sign_leaf;
use meshca_ca::{Authority, SpiffeId, TrustDomain, VerifiedCsr};
use prost::Message;

const ID: &str = "spiffe://cluster.local/ns/default/sa/web";

fn credential() -> &'static Credential {
    static CREDENTIAL: OnceLock<Credential> = OnceLock::new();
    CREDENTIAL.get_or_init(|| {
        let td = TrustDomain::new("cluster.local").unwrap();
        let authority =
            Authority::generate_self_signed(&td, meshca_ca::KeyType::EcP256, SystemTime::now())
                .unwrap();
        let request = KeyAndCsr::generate(KeyType::EcP256, ID).unwrap();
        let csr = VerifiedCsr::from_pem(&request.csr_pem).unwrap();
        let now = SystemTime::now();
        let validity = (now, now + Duration::from_secs(3600));
        let (_, der) = sign_leaf(&authority, &csr, &SpiffeId::new(ID).unwrap(), validity).unwrap();
        let mut answer = vec![pem::encode(&pem::Pem::new("CERTIFICATE", der))];
        answer.push(authority.roots_pem());
        request.accept(ID, &answer, now).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let requests = data.split(|b| *b == 0xff).take(32).filter_map(|chunk| {
        let (flags, body) = chunk.split_first()?;
        let request = DiscoveryRequest::decode(body).ok()?;
        Some((flags & 1 == 1, request))
    });
    if let Err(status) = meshca_agent::sds::drive_stream(requests, credential()) {
        assert!(!status.message().is_empty(), "a refusal says why");
    }
});
