//! meshca's node agent: gets workload certificates from the RA, rotates them before expiry,
//! and serves them to Envoy (SDS) and to any workload (SPIFFE Workload API).
//!
//! Envoy SDS is not served yet: the SPIFFE Workload API and `output_dir` are.

pub mod bundle;
pub mod client;
pub mod config;
pub mod credential;
pub mod metrics;
pub mod output;
pub mod run;
pub mod timing;
pub mod workload_api;
