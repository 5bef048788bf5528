//! meshca's node agent: gets workload certificates from the RA, rotates them before expiry,
//! and serves them to Envoy (SDS) and to any workload (SPIFFE Workload API): its own identity,
//! or with attestation each client its own.

pub mod attest;
pub mod authority;
pub mod bundle;
pub mod client;
pub mod config;
pub mod credential;
pub mod identities;
pub mod metrics;
pub mod output;
pub mod refresh;
pub mod run;
pub mod sds;
pub mod timing;
pub mod workload_api;
pub mod workloads;
