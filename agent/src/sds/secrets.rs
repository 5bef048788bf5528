//! SDS resources: the names Envoy asks for (`default`, `ROOTCA`, `file-cert:…`, `file-root:…`)
//! and the secrets they render to, built once per credential change and shared by every
//! stream.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use der::Decode;
use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::sync::watch;

use crate::credential::Credential;

/// The only resource type this server answers for.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// Istio's name for the workload certificate and key.
pub const WORKLOAD_CERT: &str = "default";
/// Istio's name for the trust bundle.
pub const ROOT_CA: &str = "ROOTCA";
const FILE_CERT_PREFIX: &str = "file-cert:";
const FILE_ROOT_PREFIX: &str = "file-root:";

/// A resource name Envoy may ask for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceName {
    WorkloadCert,
    RootCa,
    File(FileResource),
}

/// A secret read from files the workload mounts (istio-agent's `file-cert:` / `file-root:`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileResource {
    Cert { cert: PathBuf, key: PathBuf },
    Root { ca: PathBuf },
}

/// One secret, encoded once and shared by every stream that serves it.
#[derive(Debug, PartialEq)]
pub struct RenderedSecret {
    pub(super) name: String,
    pub(super) encoded: Vec<u8>,
    /// When the certificate (or, for a bundle, the first root) expires; exported as a metric.
    pub not_after: Option<SystemTime>,
}

/// `default` and `ROOTCA`, rendered from one credential.
#[derive(Debug)]
pub struct CredentialSecrets {
    pub(super) workload_cert: Arc<RenderedSecret>,
    pub(super) root_ca: Arc<RenderedSecret>,
}

// === impl ResourceName ===

impl ResourceName {
    /// `None` for a name this server does not know.
    pub fn parse(name: &str) -> Option<Self> {
        if name == WORKLOAD_CERT {
            return Some(Self::WorkloadCert);
        }
        if name == ROOT_CA {
            return Some(Self::RootCa);
        }
        if let Some(paths) = name.strip_prefix(FILE_CERT_PREFIX) {
            let (cert, key) = paths.split_once('~')?;
            if cert.is_empty() || key.is_empty() {
                return None;
            }
            return Some(Self::File(FileResource::Cert {
                cert: cert.into(),
                key: key.into(),
            }));
        }
        let ca = name.strip_prefix(FILE_ROOT_PREFIX)?;
        (!ca.is_empty()).then(|| Self::File(FileResource::Root { ca: ca.into() }))
    }
}

// === impl RenderedSecret ===

impl RenderedSecret {
    pub(super) fn new(name: &str, kind: secret::Type, not_after: Option<SystemTime>) -> Self {
        let secret = Secret {
            name: name.to_string(),
            r#type: Some(kind),
        };
        Self {
            name: name.to_string(),
            encoded: secret.encode_to_vec(),
            not_after,
        }
    }

    pub(super) fn tls_certificate(name: &str, chain_pem: &[u8], key_pem: &[u8]) -> Self {
        let kind = secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(chain_pem)),
            private_key: Some(inline(key_pem)),
            ..Default::default()
        });
        Self::new(name, kind, first_not_after(chain_pem))
    }

    pub(super) fn validation_context(name: &str, roots_pem: &[u8]) -> Self {
        let kind = secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(inline(roots_pem)),
            ..Default::default()
        });
        Self::new(name, kind, first_not_after(roots_pem))
    }

    pub(super) fn to_any(&self) -> Any {
        Any {
            type_url: SECRET_TYPE_URL.to_string(),
            value: self.encoded.clone(),
        }
    }
}

pub(super) fn inline(bytes: &[u8]) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    }
}

pub(super) fn certificates(pem_bytes: &[u8]) -> Vec<x509_cert::Certificate> {
    pem::parse_many(pem_bytes)
        .unwrap_or_default()
        .iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .filter_map(|p| x509_cert::Certificate::from_der(p.contents()).ok())
        .collect()
}

pub(super) fn first_not_after(pem_bytes: &[u8]) -> Option<SystemTime> {
    certificates(pem_bytes)
        .first()
        .map(|c| c.tbs_certificate.validity.not_after.to_system_time())
}

// === impl CredentialSecrets ===

impl CredentialSecrets {
    pub fn render(credential: &Credential) -> Self {
        Self {
            workload_cert: Arc::new(RenderedSecret::tls_certificate(
                WORKLOAD_CERT,
                credential.chain_pem.concat().as_bytes(),
                credential.key_pem.as_bytes(),
            )),
            root_ca: Arc::new(RenderedSecret::validation_context(
                ROOT_CA,
                credential.roots_pem.concat().as_bytes(),
            )),
        }
    }
}

/// Renders each published credential once, however many streams serve it.
pub fn render_credentials(
    mut credential: watch::Receiver<Option<Arc<Credential>>>,
) -> watch::Receiver<Option<Arc<CredentialSecrets>>> {
    let initial = credential
        .borrow_and_update()
        .as_deref()
        .map(|c| Arc::new(CredentialSecrets::render(c)));
    let (tx, rx) = watch::channel(initial);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = credential.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
            let rendered = credential
                .borrow_and_update()
                .as_deref()
                .map(|c| Arc::new(CredentialSecrets::render(c)));
            tx.send_replace(rendered);
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resource_names() {
        assert_eq!(
            ResourceName::parse("default"),
            Some(ResourceName::WorkloadCert)
        );
        assert_eq!(ResourceName::parse("ROOTCA"), Some(ResourceName::RootCa));
        assert_eq!(
            ResourceName::parse("file-cert:/etc/certs/cert.pem~/etc/certs/key.pem"),
            Some(ResourceName::File(FileResource::Cert {
                cert: "/etc/certs/cert.pem".into(),
                key: "/etc/certs/key.pem".into()
            }))
        );
        assert_eq!(
            ResourceName::parse("file-root:/etc/certs/root.pem"),
            Some(ResourceName::File(FileResource::Root {
                ca: "/etc/certs/root.pem".into()
            }))
        );
        for unknown in [
            "",
            "rootca",
            "file-cert:/only-a-cert.pem",
            "file-cert:~/key.pem",
            "file-cert:/cert.pem~",
            "file-root:",
            "spiffe://cluster.local/ns/a/sa/b",
        ] {
            assert_eq!(ResourceName::parse(unknown), None, "{unknown:?}");
        }
    }
}
