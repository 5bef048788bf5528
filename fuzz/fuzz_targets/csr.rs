//! A CSR as a workload sends it, PEM or DER, into the CA's verified-CSR constructor: never a
//! panic; whatever is accepted has a signature that verified and says who it asks to be.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshca_pki::csr::VerifiedCsr;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(csr) = VerifiedCsr::from_pem(text) {
            let _ = csr.check_identity(
                &meshca_pki::SpiffeId::new("spiffe://cluster.local/ns/a/sa/b").unwrap(),
            );
        }
    }
    if let Ok(csr) = VerifiedCsr::from_der(data) {
        let _ = csr.check_identity(
            &meshca_pki::SpiffeId::new("spiffe://cluster.local/ns/a/sa/b").unwrap(),
        );
    }
});
