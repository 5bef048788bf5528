//! Workload API requests, as any local process may send them, through the agent's real gRPC
//! service (tonic's decoding included). The first byte picks the method (five real ones, an
//! unknown one, another service's path) and the security header (absent, `true`, `false`,
//! `TRUE`); the rest is the request body as sent: gRPC framing and protobuf, any bytes.
//! Never a panic and never a hang; only a well-formed call with the header `true` on one of the
//! two X.509 streams gets an answer, and that answer is the served identity; every refusal of a
//! known method says why.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use meshca_agent::metrics::AgentMetrics;
use meshca_agent::workload_api::{WorkloadApi, SECURITY_HEADER};
use meshca_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use meshca_proto::workload::{X509BundlesResponse, X509svidResponse};
use prost::Message;
use tokio::sync::watch;
use tower::ServiceExt;

#[path = "shared/credential.rs"]
mod shared;
use shared::{credential, ID};

const METHODS: [&str; 8] = [
    "/SpiffeWorkloadAPI/FetchX509SVID",
    "/SpiffeWorkloadAPI/FetchX509Bundles",
    "/SpiffeWorkloadAPI/FetchJWTSVID",
    "/SpiffeWorkloadAPI/FetchJWTBundles",
    "/SpiffeWorkloadAPI/ValidateJWTSVID",
    "/SpiffeWorkloadAPI/FetchX509SVIDs",
    "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
    "/",
];
const KNOWN_METHODS: usize = 5;
const FETCH_X509_SVID: usize = 0;
const FETCH_X509_BUNDLES: usize = 1;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    server: SpiffeWorkloadApiServer<WorkloadApi>,
    // The rotation loop's sender: dropping it would end every stream.
    _published: watch::Sender<Option<Arc<meshca_agent::credential::Credential>>>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let (published, served) = watch::channel(Some(Arc::new(credential().clone())));
        let api = WorkloadApi::new(served, Arc::new(AgentMetrics::default()));
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap(),
            server: SpiffeWorkloadApiServer::new(api),
            _published: published,
        }
    })
}

/// The first gRPC message of a response body, once all of it has arrived.
fn first_message(data: &[u8]) -> Option<Bytes> {
    let len = u32::from_be_bytes(data.get(1..5)?.try_into().unwrap()) as usize;
    let message = data.get(5..5 + len)?;
    assert_eq!(data[0], 0, "answers are not compressed");
    Some(Bytes::copy_from_slice(message))
}

/// What came back: the grpc-status (0 when a message arrived first), its message, and the
/// first message's bytes.
struct Answer {
    code: i32,
    message: String,
    first: Option<Bytes>,
}

async fn call(path: &str, header: Option<&str>, body: &[u8]) -> Answer {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(value) = header {
        request = request.header(SECURITY_HEADER, value);
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let response = fixture().server.clone().oneshot(request).await.unwrap();
    let status_of = |headers: &http::HeaderMap| {
        let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
        let message = headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Some((code, message))
    };
    if let Some((code, message)) = status_of(response.headers()) {
        return Answer {
            code,
            message,
            first: None,
        };
    }
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("the server's body does not fail");
        match frame.into_data() {
            Ok(chunk) => {
                data.extend_from_slice(&chunk);
                if let Some(first) = first_message(&data) {
                    return Answer {
                        code: 0,
                        message: String::new(),
                        first: Some(first),
                    };
                }
            }
            Err(frame) => {
                let trailers = frame.into_trailers().expect("data or trailers");
                let (code, message) = status_of(&trailers).expect("trailers carry a grpc-status");
                assert!(data.is_empty(), "a message cut short by its trailers");
                return Answer {
                    code,
                    message,
                    first: None,
                };
            }
        }
    }
    panic!("the stream ended without a message or a grpc-status");
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let method = usize::from(flags & 7);
    let header = [None, Some("true"), Some("false"), Some("TRUE")][usize::from((flags >> 3) & 3)];
    let fixture = fixture();
    let answer = fixture.runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), call(METHODS[method], header, body))
            .await
            .expect("every call answers at once")
    });
    if method >= KNOWN_METHODS {
        assert_eq!(answer.code, tonic::Code::Unimplemented as i32);
        return;
    }
    if answer.code != 0 {
        assert!(
            !answer.message.is_empty(),
            "refusal {} says why",
            answer.code
        );
        return;
    }
    assert_eq!(header, Some("true"), "answered without the security header");
    let first = answer.first.expect("an OK stream sends a message");
    match method {
        FETCH_X509_SVID => {
            let response = X509svidResponse::decode(first).unwrap();
            assert_eq!(response.svids.len(), 1);
            assert_eq!(response.svids[0].spiffe_id, ID);
            assert!(!response.svids[0].x509_svid_key.is_empty());
        }
        FETCH_X509_BUNDLES => {
            let response = X509BundlesResponse::decode(first).unwrap();
            assert!(!response.bundles["cluster.local"].is_empty());
        }
        other => panic!("{} answered OK", METHODS[other]),
    }
});
