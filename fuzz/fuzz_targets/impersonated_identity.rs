//! The `ImpersonatedIdentity` a node agent sends, into the SPIFFE id parser and the Kubernetes
//! workload split node authorization relies on: never a panic, and a workload identity is
//! exactly `spiffe://<td>/ns/<namespace>/sa/<service account>`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshca_pki::SpiffeId;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::new(text) {
        if let Some((namespace, service_account)) = id.kubernetes_workload() {
            let rebuilt = format!(
                "spiffe://{}/ns/{namespace}/sa/{service_account}",
                id.trust_domain()
            );
            assert_eq!(rebuilt, id.as_str());
            assert!(!namespace.contains('/') && !service_account.contains('/'));
        }
    }
});
