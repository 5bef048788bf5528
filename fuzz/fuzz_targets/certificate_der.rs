//! Certificate DER and PEM (client chains, cacerts files, bundles) into the parser, and back:
//! never a panic, and a parsed certificate re-encodes to the same DER.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshca_pki::x509::ParsedCert;

fuzz_target!(|data: &[u8]| {
    if let Ok(cert) = ParsedCert::from_der(data) {
        let again = ParsedCert::many_from_pem(cert.to_pem().as_bytes()).expect("own PEM parses");
        assert_eq!(again[0].der(), cert.der(), "PEM round trip changed the DER");
        let _ = (
            cert.uri_sans(),
            cert.subject_key_id(),
            cert.authority_key_id(),
        );
        let _ = cert.ca_constraints();
    }
    let _ = ParsedCert::many_from_pem(data);
});
