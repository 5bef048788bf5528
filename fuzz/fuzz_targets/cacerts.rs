//! A plugged-in `cacerts` set (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem, split
//! on 0xff) into the validation every reload and upload runs: never a panic; an accepted set
//! is one whose signing certificate chains to its roots and whose key is that certificate's.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use meshca_ca::cacerts::{validate, CacertsMaterial, NamedPem};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0xff);
    let mut pem = |name: &str| NamedPem {
        name: name.into(),
        bytes: parts.next().unwrap_or_default().to_vec(),
    };
    let material = CacertsMaterial {
        signing_cert: pem("ca-cert.pem"),
        key: pem("ca-key.pem"),
        roots: pem("root-cert.pem"),
        chain: Some(pem("cert-chain.pem")).filter(|c| !c.bytes.is_empty()),
    };
    // A fixed instant inside the seed's validity, so a run is reproducible.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    if let Ok(authority) = validate(&material, now) {
        assert!(!authority.roots().is_empty());
        assert!(authority.key().is_some());
    }
});
