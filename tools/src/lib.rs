//! The client-side tools of the `meshca` binary: the `meshca bench` load generator,
//! `meshca admin`, and `meshca workload`, a Workload API client for checking a node agent.

pub mod admin;
pub mod bench;
pub mod workload;
