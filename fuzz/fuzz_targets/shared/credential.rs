//! One workload credential signed by a fresh authority, built once per fuzzing process: what
//! the agent's servers hold after its first CSR (used by the SDS and Workload API targets).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use meshca_agent::credential::{Credential, KeyAndCsr, KeyType};
use meshca_ca::issuer::sign_leaf;
use meshca_ca::{Authority, SpiffeId, TrustDomain, VerifiedCsr};

pub const ID: &str = "spiffe://cluster.local/ns/default/sa/web";

pub fn credential() -> &'static Credential {
    static CREDENTIAL: OnceLock<Credential> = OnceLock::new();
    CREDENTIAL.get_or_init(|| {
        let td = TrustDomain::new("cluster.local").unwrap();
        let authority =
            Authority::generate_self_signed(&td, meshca_ca::KeyType::EcP256, SystemTime::now())
                .unwrap();
        let request = KeyAndCsr::generate(KeyType::EcP256, ID).unwrap();
        let csr = VerifiedCsr::from_pem(&request.csr_pem).unwrap();
        let now = SystemTime::now();
        let validity = (now, now + Duration::from_secs(3600));
        let (_, der) = sign_leaf(&authority, &csr, &SpiffeId::new(ID).unwrap(), validity).unwrap();
        let mut answer = vec![pem::encode(&pem::Pem::new("CERTIFICATE", der))];
        answer.push(authority.roots_pem());
        request.accept(ID, &answer, now).unwrap()
    })
}
