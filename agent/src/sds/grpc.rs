//! The SDS gRPC service as the socket serves it: the generated server, except that
//! `StreamSecrets` (one long-lived stream per Envoy) is decoded and encoded with buffers sized
//! for SDS rather than tonic's defaults. Generic over the service, so that this module needs
//! nothing of the one that implements it.

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer, SERVICE_NAME,
};
use tonic::codec::{BufferSettings, Codec};
use tonic::codegen::{http, BoxFuture, Context, Poll, Service};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::{ProstDecoder, ProstEncoder};

const STREAM_SECRETS: &str = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";

/// Each stream's encode and decode buffer start at this size and grow to the message.
///
/// Why: tonic allocates 8 KiB for each per stream and keeps them for the stream's life, and
/// every response (and ACK) is appended after the last one, so the pages get touched. SDS
/// requests are a few hundred bytes and a response is a few KiB of PEM, pushed once per
/// rotation; at 1,000 streams the two defaults measured ≈ 9 KiB of the agent's RSS per stream.
/// A larger response (a trust bundle during a root rotation) grows the buffer as needed.
const STREAM_BUFFER: usize = 512;

/// tonic's default: the most one poll batches into a write (responses are never that big).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Serves SDS: `StreamSecrets` with [`SdsCodec`], everything else as generated.
#[derive(Clone, Debug)]
pub struct SdsServer<S> {
    service: S,
    generated: SecretDiscoveryServiceServer<S>,
}

/// Prost encoding with [`STREAM_BUFFER`]-sized buffers.
#[derive(Clone, Copy, Debug, Default)]
struct SdsCodec;

/// `StreamSecrets` alone, for [`Grpc::streaming`].
struct StreamSecrets<S>(S);

// === impl SdsServer ===

impl<S: SecretDiscoveryService + Clone> SdsServer<S> {
    pub fn new(service: S) -> Self {
        Self {
            generated: SecretDiscoveryServiceServer::new(service.clone()),
            service,
        }
    }
}

impl<S> NamedService for SdsServer<S> {
    const NAME: &'static str = SERVICE_NAME;
}

impl<S: SecretDiscoveryService + Clone> Service<http::Request<tonic::body::Body>> for SdsServer<S> {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() != STREAM_SECRETS {
            return self.generated.call(request);
        }
        let method = StreamSecrets(self.service.clone());
        Box::pin(async move { Ok(Grpc::new(SdsCodec).streaming(method, request).await) })
    }
}

// === impl SdsCodec ===

impl Codec for SdsCodec {
    type Encode = DiscoveryResponse;
    type Decode = DiscoveryRequest;
    type Encoder = ProstEncoder<DiscoveryResponse>;
    type Decoder = ProstDecoder<DiscoveryRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(STREAM_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(STREAM_BUFFER, YIELD_THRESHOLD))
    }
}

// === impl StreamSecrets ===

impl<S: SecretDiscoveryService + Clone> StreamingService<DiscoveryRequest> for StreamSecrets<S> {
    type Response = DiscoveryResponse;
    type ResponseStream = S::StreamSecretsStream;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<DiscoveryRequest>>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.stream_secrets(request).await })
    }
}
