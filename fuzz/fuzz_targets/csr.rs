//! A CSR as a workload sends it, PEM or DER, into the CA's verified-CSR constructor: never a
//! panic; whatever is accepted has a signature that verified and says who it asks to be. The
//! one-pass PEM reader it starts with reads any block the `pem` crate reads the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshca_pki::csr::VerifiedCsr;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(block) = meshca_pki::pem_block::first(text) {
            // From the BEGIN line on: the pem crate's marker search misses "------BEGIN ".
            // It refuses what pem_block reads as Go does (a blank line in the body); where it
            // reads a block, it must be the same one.
            let from_begin = &text[text.find("-----BEGIN ").expect("a block has one")..];
            if let Ok(theirs) = pem::parse(from_begin) {
                assert_eq!(block.label, theirs.tag());
                assert_eq!(block.contents, theirs.contents());
            }
        }
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
