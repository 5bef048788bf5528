//! A bearer token into JWKS-mode validation against a fixed key set (one ES256 key), as the RA
//! runs it for every `CreateCertificate`: never a panic; an accepted token is one signed by
//! that key for the configured issuer and audience, naming a service account.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use meshca_ra::auth::jwks::JwksAuthenticator;
use meshca_ra::{ClusterConfig, JwtMode};

/// The public half of the key that signed the seed token (corpus/jwt/valid-es256).
const JWKS: &str = r#"{"keys": [{"kty": "EC", "crv": "P-256", "kid": "fuzz", "alg": "ES256", "use": "sig", "x": "HzJ8P4UWWwkK5JUP-8pe9rq54xoIfQ2FoWSQmaCkn64", "y": "TEF0_wVzgeP2ZRROk6uqXKO7IM8P_1CvYsQX4lYmT0U"}]}"#;

struct Validator {
    runtime: tokio::runtime::Runtime,
    jwks: Arc<JwksAuthenticator>,
}

fn validator() -> &'static Validator {
    static VALIDATOR: OnceLock<Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let file =
            std::env::temp_dir().join(format!("meshca-fuzz-jwks-{}.json", std::process::id()));
        std::fs::write(&file, JWKS).unwrap();
        let jwks = runtime
            .block_on(JwksAuthenticator::start(&ClusterConfig {
                mode: JwtMode::Jwks,
                audiences: vec!["istio-ca".into()],
                issuer: Some("https://kubernetes.default.svc.cluster.local".into()),
                jwks_file: Some(file),
                // The unknown-kid refresh reads the file again at most this often.
                jwks_min_refresh: Duration::from_secs(3600),
                ..ClusterConfig::default()
            }))
            .unwrap();
        Validator { runtime, jwks }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let v = validator();
    if let Ok(identity) = v.runtime.block_on(v.jwks.validate(token)) {
        let _ = format!("{identity:?}");
    }
});
