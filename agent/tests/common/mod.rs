//! Fixtures shared by the agent's tests: credentials signed as the RA would answer.

use std::time::{Duration, SystemTime};

use meshca_agent::credential::{Credential, KeyAndCsr, KeyType};
use meshca_ca::issuer::sign_leaf;
use meshca_ca::{Authority, SpiffeId, VerifiedCsr};

pub const ID: &str = "spiffe://cluster.local/ns/default/sa/web";

/// A fresh key and a one-hour certificate for [`ID`] from `authority`, accepted exactly as the
/// agent accepts a CA response.
pub fn credential(authority: &Authority) -> Credential {
    let request = KeyAndCsr::generate(KeyType::EcP256, ID).unwrap();
    let csr = VerifiedCsr::from_pem(&request.csr_pem).unwrap();
    let now = SystemTime::now();
    let validity = (
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    );
    let (_, der) = sign_leaf(authority, &csr, &SpiffeId::new(ID).unwrap(), validity).unwrap();
    let mut answer = vec![pem::encode(&pem::Pem::new("CERTIFICATE", der))];
    answer.extend(authority.issuer_chain_pem().iter().cloned());
    answer.push(authority.roots_pem());
    request.accept(ID, &answer, now).unwrap()
}

/// Returns once `socket` accepts connections (a server task spawned just before binds it on its
/// first poll), instead of sleeping and hoping it has.
pub async fn accepting(socket: &std::path::Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::UnixStream::connect(socket).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} accepts no connection within 5 s",
            socket.display()
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
