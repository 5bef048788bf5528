//! End-to-end tests: the real `meshca` binary on loopback, driven by real clients (tonic over
//! rustls) and real peers. One test binary, shared helpers.

mod admin;
mod admin_cli;
mod agent;
mod ambient;
mod attestation;
mod attestation_k8s;
mod bench;
mod console;
mod credentials;
mod disk_full;
mod drill;
mod faults;
mod harness;
mod interop;
mod inventory;
mod limits;
mod load;
mod openapi;
mod outage;
mod peers;
mod ra;
mod refusals;
mod replicas;
mod root_configmap;
mod sds;
mod split;
mod split_outage;
