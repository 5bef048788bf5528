//! Generated gRPC code for the services meshca speaks. The code in `gen/` is produced by
//! `cargo run --manifest-path proto/codegen/Cargo.toml` (protox: no system protoc needed) and
//! committed, so builds never run a proto compiler.

#![allow(missing_debug_implementations, clippy::all)]

/// Istio's `istio.v1.auth.IstioCertificateService`, what istio-agent calls as its CA.
pub mod istio {
    pub mod v1 {
        pub mod auth {
            include!("gen/istio.v1.auth.rs");
        }
    }
}

/// meshca's own services.
pub mod meshca {
    pub mod v1 {
        include!("gen/meshca.v1.rs");
    }
    /// The internal signing service keyless RAs call (`meshca ca`).
    pub mod ca {
        pub mod v1 {
            include!("gen/meshca.ca.v1.rs");
        }
    }
}

/// The SPIFFE Workload API (no proto package, as SPIFFE defines it).
pub mod workload {
    include!("gen/spiffe.workload.rs");
}

/// The encoded descriptor set of every service here, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("gen/descriptor.bin");
