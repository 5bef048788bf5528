//! CRLs round-trip: revocation entries from the input (serial, time, reason) into the CRL
//! builder, and the DER back through a CRL parser that is not ours: the same entries, in order.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use der::Decode;
use libfuzzer_sys::fuzz_target;
use meshca_pki::crl::{build_crl, CrlEntry, RevocationReason};
use meshca_pki::{Authority, KeyType, TrustDomain};
use x509_cert::crl::CertificateList;

fn authority() -> &'static Authority {
    static AUTHORITY: OnceLock<Authority> = OnceLock::new();
    AUTHORITY.get_or_init(|| {
        let td = TrustDomain::new("cluster.local").unwrap();
        Authority::generate_self_signed(&td, KeyType::EcP256, SystemTime::now()).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let reasons: Vec<RevocationReason> = RevocationReason::names()
        .into_iter()
        .filter_map(RevocationReason::parse)
        .collect();
    let entries: Vec<CrlEntry> = data
        .chunks(12)
        .take(200)
        .filter(|c| c.len() >= 4)
        .map(|c| {
            let (serial, rest) = c.split_at(c.len() - 3);
            CrlEntry {
                serial_hex: hex::encode(serial),
                revoked_at: SystemTime::UNIX_EPOCH
                    + Duration::from_secs(
                        u64::from(u16::from_be_bytes([rest[0], rest[1]])) * 86_400,
                    ),
                reason: reasons[usize::from(rest[2]) % reasons.len()],
            }
        })
        .collect();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
    // A serial the builder refuses (all zeros, say) is an error, never a panic.
    let Ok(der) = build_crl(
        authority(),
        &entries,
        now,
        now + Duration::from_secs(3600),
        7,
    ) else {
        return;
    };
    let crl = CertificateList::from_der(&der).expect("our CRL parses");
    let listed = crl.tbs_cert_list.revoked_certificates.unwrap_or_default();
    assert_eq!(listed.len(), entries.len());
    for (cert, entry) in listed.iter().zip(&entries) {
        let serial = hex::encode(cert.serial_number.as_bytes());
        assert_eq!(
            serial.trim_start_matches("00"),
            entry.serial_hex.trim_start_matches("00"),
            "serial changed in the round trip"
        );
    }
});
