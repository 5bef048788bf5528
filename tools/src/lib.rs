//! The client-side tools of the `meshca` binary: the `meshca bench` load generator and
//! `meshca admin`.

pub mod admin;
pub mod bench;
