//! An Athenz client certificate chain (each certificate as a 2-byte length and its DER) into the
//! RA's Athenz authenticator, trusting one fixed Athenz CA: never a panic; an accepted chain
//! names a workload in the trust domain, from a CN of the form <domain>.<service>.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshca_pki::TrustDomain;
use meshca_ra::auth::x509::AthenzAuthenticator;
use rustls_pki_types::CertificateDer;

/// The Athenz CA that signed the seed (corpus/athenz/leaf).
const ATHENZ_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBrzCCAVWgAwIBAgIUBQInY2me1X4gR9eDMaggqYfUlsMwCgYIKoZIzj0EAwIw
JTESMBAGA1UEAwwJRnV6eiBSb290MQ8wDQYDVQQKDAZtZXNoY2EwHhcNMjYxMTMw
MTgwNDM2WhcNMzYxMTI3MTgwNDM2WjAlMRIwEAYDVQQDDAlGdXp6IFJvb3QxDzAN
BgNVBAoMBm1lc2hjYTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABE9Z1tcTPDeO
XkDOSL6tS2oHapn5z/F7dDML0+n5kw2kvarQdZtvZ0eqfFRhj1oOJn1o7cVGGM8J
MD6xENkDrWCjYzBhMB0GA1UdDgQWBBQnjkU1ms+hHBIItWakoSwxsIj7GzAfBgNV
HSMEGDAWgBQnjkU1ms+hHBIItWakoSwxsIj7GzAPBgNVHRMBAf8EBTADAQH/MA4G
A1UdDwEB/wQEAwIBBjAKBggqhkjOPQQDAgNIADBFAiAcGxED05AX9IEKXFZitTJ1
1+u7z8+8OTcJZXNuizchQwIhAN2w/pFF/hYKYQBbBJg2yJ3Ga47JpaCDJrsJVjis
QVDu
-----END CERTIFICATE-----";

fn authenticator() -> &'static AthenzAuthenticator {
    static AUTHENTICATOR: OnceLock<AthenzAuthenticator> = OnceLock::new();
    AUTHENTICATOR.get_or_init(|| {
        let file =
            std::env::temp_dir().join(format!("meshca-fuzz-athenz-{}.pem", std::process::id()));
        std::fs::write(&file, ATHENZ_CA).unwrap();
        let map = BTreeMap::from([("sports".to_string(), "sports-ns".to_string())]);
        AthenzAuthenticator::load(&file, &map, &TrustDomain::new("cluster.local").unwrap()).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut chain = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 && chain.len() < 4 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        chain.push(CertificateDer::from(rest[2..2 + len].to_vec()));
        rest = &rest[2 + len..];
    }
    if let Ok(caller) = authenticator().authenticate(&chain) {
        let id = caller.spiffe_id.as_str();
        assert!(id.starts_with("spiffe://cluster.local/ns/"), "{id}");
        assert!(caller.principal.contains('.'));
    }
});
