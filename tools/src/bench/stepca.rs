//! `meshca bench --step-ca`: the peer that does the same work as meshca. smallstep step-ca
//! authenticates every request with a one-time token (a JWT from a JWK provisioner, its `jti`
//! recorded so it cannot be replayed), records every certificate and answers over HTTPS. The
//! tokens are minted before the clock starts, as meshca's callers' tokens are; each names the
//! SPIFFE id of the CSR it goes with (`sub` and `sans`, which step-ca checks against the CSR).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use meshca_pki::time::unix_seconds;
use meshca_ra::dev::TokenSigner;
use serde::{Deserialize, Serialize};

use super::answer::chain_names;
use super::error::BenchError;
use super::http1::{JsonConnection, PeerFailure};

/// Longer than any run: a token is used within the run it was minted for.
const ONE_TIME_TOKEN_LIFETIME: Duration = Duration::from_secs(600);

/// One prepared request's one-time tokens, each sent once.
#[derive(Default)]
pub(super) struct OneTimeTokens {
    tokens: Vec<String>,
    next: AtomicUsize,
}

/// What step-ca's JWK provisioner checks in a sign token.
#[derive(Serialize)]
struct SignTokenClaims<'a> {
    aud: [&'a str; 1],
    exp: i64,
    iat: i64,
    iss: &'a str,
    jti: String,
    nbf: i64,
    sans: [&'a str; 1],
    sub: &'a str,
}

/// The provisioner a run's tokens come from: its key, name (`iss`) and sign URL (`aud`).
pub(super) struct Provisioner<'a> {
    pub(super) signer: &'a TokenSigner,
    pub(super) name: &'a str,
    pub(super) sign_url: &'a str,
}

/// step-ca's answer to `POST /1.0/sign`: `{"crt": "<PEM>", "ca": "<PEM>", …}`.
#[derive(Deserialize)]
struct SignAnswer {
    crt: String,
    ca: String,
}

// === impl OneTimeTokens ===

impl OneTimeTokens {
    /// `count` tokens for `spiffe_id`; `run` keeps their `jti`s apart from other runs' (step-ca
    /// remembers every one it accepted).
    pub(super) fn mint(
        provisioner: &Provisioner<'_>,
        spiffe_id: &str,
        run: &str,
        count: usize,
    ) -> Result<Self, BenchError> {
        let now = unix_seconds(SystemTime::now());
        let lifetime = ONE_TIME_TOKEN_LIFETIME.as_secs() as i64;
        let tokens = (0..count)
            .map(|i| {
                provisioner
                    .signer
                    .sign(&SignTokenClaims {
                        aud: [provisioner.sign_url],
                        exp: now + lifetime,
                        iat: now,
                        iss: provisioner.name,
                        jti: format!("{run}-{spiffe_id}-{i}"),
                        nbf: now,
                        sans: [spiffe_id],
                        sub: spiffe_id,
                    })
                    .map_err(|e| BenchError::Setup(format!("minting a step-ca token: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            tokens,
            next: AtomicUsize::new(0),
        })
    }

    /// The next unused token, if any is left.
    fn take(&self) -> Option<&str> {
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        self.tokens.get(index).map(String::as_str)
    }
}

/// Has step-ca sign `csr_pem` with the next of `tokens`: whether the answer is a chain whose
/// leaf names `spiffe_id`, or why there is none.
pub(super) async fn sign(
    connection: &mut JsonConnection,
    csr_pem: &str,
    tokens: &OneTimeTokens,
    spiffe_id: &str,
) -> Result<bool, PeerFailure> {
    let token = tokens.take().ok_or(PeerFailure::OutOfTokens)?;
    let body = serde_json::json!({ "csr": csr_pem, "ott": token }).to_string();
    let answer = connection.post("/1.0/sign", body).await?;
    Ok(answer_is_valid(&answer, spiffe_id))
}

fn answer_is_valid(body: &[u8], spiffe_id: &str) -> bool {
    serde_json::from_slice::<SignAnswer>(body)
        .is_ok_and(|answer| chain_names(&[answer.crt, answer.ca], spiffe_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "spiffe://cluster.local/ns/ns-0/sa/sa-0";

    fn signer() -> TokenSigner {
        let key = rcgen::KeyPair::generate().unwrap();
        TokenSigner::from_pem(&key.serialize_pem(), Some("kid-1".into())).unwrap()
    }

    fn claims(token: &str) -> serde_json::Value {
        use base64::Engine;
        let payload = token.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn tokens_name_the_csr_identity_once_each_and_run_out() {
        let signer = signer();
        let provisioner = Provisioner {
            signer: &signer,
            name: "bench",
            sign_url: "https://localhost/1.0/sign",
        };
        let tokens = OneTimeTokens::mint(&provisioner, ID, "run1", 2).unwrap();
        let first = claims(tokens.take().unwrap());
        let second = claims(tokens.take().unwrap());
        assert!(tokens.take().is_none(), "two tokens minted, two handed out");
        assert_eq!(first["sub"], ID);
        assert_eq!(first["sans"], serde_json::json!([ID]));
        assert_eq!(first["iss"], "bench");
        assert_eq!(
            first["aud"],
            serde_json::json!(["https://localhost/1.0/sign"])
        );
        assert_ne!(first["jti"], second["jti"], "step-ca refuses a reused jti");
    }

    #[test]
    fn answers_must_be_a_chain_naming_the_identity() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let leaf_for = |uri: &str| {
            let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
            params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
            params
                .signed_by(&rcgen::KeyPair::generate().unwrap(), &issuer)
                .unwrap()
                .pem()
        };
        let answer = |crt: String| serde_json::json!({"crt": crt, "ca": ca.pem()}).to_string();
        assert!(answer_is_valid(answer(leaf_for(ID)).as_bytes(), ID));
        let other = "spiffe://cluster.local/ns/ns-1/sa/sa-1";
        assert!(!answer_is_valid(answer(leaf_for(other)).as_bytes(), ID));
        assert!(!answer_is_valid(b"{\"status\":401}", ID));
    }
}
