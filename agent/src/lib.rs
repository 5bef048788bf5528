//! meshca's node agent: gets workload certificates from the RA, rotates them before expiry,
//! and serves them to Envoy (SDS) and to any workload (SPIFFE Workload API).
//!
//! This first part holds the pure rotation and backoff rules and the `OUTPUT_CERTS` writer;
//! the CA client and the SDS / Workload API servers build on them.

pub mod client;
pub mod credential;
pub mod output;
pub mod timing;
pub mod workload_api;
