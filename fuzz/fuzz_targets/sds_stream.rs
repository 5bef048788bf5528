//! Envoy `DiscoveryRequest` sequences into the agent's SDS stream state machine: requests split
//! on 0xff, each a flag byte (bit 0: answer the last response's nonce, as an ACK/NACK does)
//! and a protobuf-encoded request. Never a panic; nothing unsubscribed is ever sent, no nonce
//! is reused, and a stream that is refused says why.
#![no_main]

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message;

#[path = "shared/credential.rs"]
mod shared;
use shared::credential;

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
