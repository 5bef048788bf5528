//! The live-traffic drill: two workloads shaped like Istio's sidecars keep calling each other
//! over mTLS while meshca's root rotates underneath them, and no handshake or renewal may
//! fail. Workload A is Envoy fed over SDS by `meshca agent`; workload B is istio-agent, which
//! learns its roots only from CreateCertificate answers and verifies meshca through the
//! `istio-ca-root-cert` ConfigMap the kubelet copies into the pod. A negative control shows
//! the drill catches a rotation that is too fast.

mod cacerts;
mod envoy;
mod istio_agent;
mod mesh;
mod rotate;
mod run;
mod traffic;
