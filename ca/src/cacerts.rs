//! Loading a plugged-in CA directory: Istio's `cacerts` layout or a `kubernetes.io/tls` Secret,
//! validated so that a bad Secret stops the CA with an error naming the file and the reason.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::authority::Authority;
use crate::chain::{self, PathError};
use crate::keys::{KeyError, SigningKey};
use crate::x509::ParsedCert;

/// Istio's file names, in the order its docs list them.
pub const ISTIO_FILES: [&str; 4] = [
    "ca-cert.pem",
    "ca-key.pem",
    "root-cert.pem",
    "cert-chain.pem",
];
/// A `kubernetes.io/tls` Secret (cert-manager writes these).
pub const K8S_TLS_FILES: [&str; 3] = ["tls.crt", "tls.key", "ca.crt"];

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadCacertsError {
    #[error("{dir}: no CA files found: expected Istio's {istio} or kubernetes.io/tls {tls}", istio = ISTIO_FILES.join(", "), tls = K8S_TLS_FILES.join(", "))]
    Empty { dir: PathBuf },
    #[error("{dir}: incomplete CA directory: found {present:?} but {missing:?} missing")]
    Incomplete {
        dir: PathBuf,
        present: Vec<String>,
        missing: Vec<String>,
    },
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{path}: no certificate in file")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {source}")]
    Key { path: PathBuf, source: KeyError },
    #[error("{key_path}: key does not match certificate {cert_path}")]
    KeyMismatch {
        key_path: PathBuf,
        cert_path: PathBuf,
    },
    #[error("{path}: signing certificate {source}")]
    NotCa { path: PathBuf, source: PathError },
    #[error("{path}: {source} (roots from {roots})")]
    Chain {
        path: PathBuf,
        roots: PathBuf,
        source: PathError,
    },
}

/// Where each role's file is in the directory's layout.
struct Layout {
    signing_cert: PathBuf,
    key: PathBuf,
    roots: PathBuf,
    /// Certificates toward the root besides the signing cert (Istio's cert-chain.pem); for the
    /// TLS layout the chain is the tail of tls.crt.
    chain: Option<PathBuf>,
}

/// Loads and validates a plugged-in CA directory.
pub fn load_dir(dir: &Path, now: SystemTime) -> Result<Authority, LoadCacertsError> {
    let layout = detect_layout(dir)?;
    let file = |path: &PathBuf| -> Result<NamedPem, LoadCacertsError> {
        Ok(NamedPem {
            name: path.clone(),
            bytes: read(path)?,
        })
    };
    let material = CacertsMaterial {
        signing_cert: file(&layout.signing_cert)?,
        key: file(&layout.key)?,
        roots: file(&layout.roots)?,
        chain: layout.chain.as_ref().map(file).transpose()?,
    };
    validate(&material, now)
}

/// One PEM input and the name errors call it by (a file path, or an API field).
#[derive(Clone, Debug)]
pub struct NamedPem {
    pub name: PathBuf,
    pub bytes: Vec<u8>,
}

impl NamedPem {
    /// The PEM as text (it is ASCII when it parses at all).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// A plug-in CA set, from a directory or uploaded through the admin API.
#[derive(Clone, Debug)]
pub struct CacertsMaterial {
    /// Istio's `ca-cert.pem`: the signing certificate first, optionally followed by its chain.
    pub signing_cert: NamedPem,
    pub key: NamedPem,
    pub roots: NamedPem,
    /// Istio's `cert-chain.pem`, in any order, with or without the signing cert and root.
    pub chain: Option<NamedPem>,
}

impl NamedPem {
    /// An uploaded PEM, named after the API field that carried it.
    pub fn field(name: &str, pem: &str) -> Self {
        Self {
            name: PathBuf::from(name),
            bytes: pem.as_bytes().to_vec(),
        }
    }
}

/// Validates a plug-in set exactly as a directory is validated: the key matches, the signing
/// cert is a CA, and a path leads from it to one of the roots, all valid `now`.
pub fn validate(
    material: &CacertsMaterial,
    now: SystemTime,
) -> Result<Authority, LoadCacertsError> {
    let signing = &material.signing_cert;
    let mut signing_certs = parse_certs(&signing.name, &signing.bytes)?;
    if signing_certs.is_empty() {
        return Err(LoadCacertsError::NoCertificate {
            path: signing.name.clone(),
        });
    }
    let signing_cert = signing_certs.remove(0);
    // Certificates after the first in ca-cert.pem / tls.crt are chain candidates too.
    let mut pool = signing_certs;
    if let Some(chain) = &material.chain {
        pool.extend(parse_certs(&chain.name, &chain.bytes)?);
    }
    let roots = parse_certs(&material.roots.name, &material.roots.bytes)?;
    if roots.is_empty() {
        return Err(LoadCacertsError::NoCertificate {
            path: material.roots.name.clone(),
        });
    }

    let key =
        SigningKey::from_pem(&material.key.bytes).map_err(|source| LoadCacertsError::Key {
            path: material.key.name.clone(),
            source,
        })?;
    if key.public_key_bits() != signing_cert.public_key_bits() {
        return Err(LoadCacertsError::KeyMismatch {
            key_path: material.key.name.clone(),
            cert_path: signing.name.clone(),
        });
    }
    chain::check_is_ca(&signing_cert).map_err(|source| LoadCacertsError::NotCa {
        path: signing.name.clone(),
        source,
    })?;

    let path = chain::build_path(&signing_cert, &pool, &roots, now).map_err(|source| {
        LoadCacertsError::Chain {
            path: material
                .chain
                .as_ref()
                .map_or(signing.name.clone(), |c| c.name.clone()),
            roots: material.roots.name.clone(),
            source,
        }
    })?;
    Ok(Authority::new(path, roots, key))
}

fn detect_layout(dir: &Path) -> Result<Layout, LoadCacertsError> {
    let exists = |name: &str| dir.join(name).exists();
    let istio_present: Vec<_> = ISTIO_FILES.iter().filter(|n| exists(n)).collect();
    let tls_present: Vec<_> = K8S_TLS_FILES.iter().filter(|n| exists(n)).collect();
    let incomplete = |all: &[&str], present: &[&&str]| LoadCacertsError::Incomplete {
        dir: dir.to_path_buf(),
        present: present.iter().map(|s| s.to_string()).collect(),
        missing: all
            .iter()
            .filter(|n| !present.contains(n))
            .map(|s| s.to_string())
            .collect(),
    };
    if !istio_present.is_empty() {
        if istio_present.len() != ISTIO_FILES.len() {
            return Err(incomplete(&ISTIO_FILES, &istio_present));
        }
        return Ok(Layout {
            signing_cert: dir.join("ca-cert.pem"),
            key: dir.join("ca-key.pem"),
            roots: dir.join("root-cert.pem"),
            chain: Some(dir.join("cert-chain.pem")),
        });
    }
    if !tls_present.is_empty() {
        if tls_present.len() != K8S_TLS_FILES.len() {
            return Err(incomplete(&K8S_TLS_FILES, &tls_present));
        }
        return Ok(Layout {
            signing_cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            roots: dir.join("ca.crt"),
            chain: None,
        });
    }
    Err(LoadCacertsError::Empty {
        dir: dir.to_path_buf(),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, LoadCacertsError> {
    std::fs::read(path).map_err(|source| LoadCacertsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_certs(path: &Path, bytes: &[u8]) -> Result<Vec<ParsedCert>, LoadCacertsError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let certs = ParsedCert::many_from_pem(bytes).map_err(|e| LoadCacertsError::Pem {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(LoadCacertsError::Pem {
            path: path.to_path_buf(),
            reason: "no PEM block found".into(),
        });
    }
    Ok(certs)
}

/// A cheap fingerprint of the directory's CA files, to notice that Kubernetes swapped them.
/// Reads through symlinks, so a `..data` swap changes it.
pub fn fingerprint(dir: &Path) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for name in ISTIO_FILES.iter().chain(K8S_TLS_FILES.iter()) {
        ctx.update(name.as_bytes());
        match std::fs::read(dir.join(name)) {
            Ok(bytes) => {
                ctx.update(&(bytes.len() as u64).to_be_bytes());
                ctx.update(&bytes);
            }
            Err(_) => ctx.update(b"-absent-"),
        }
    }
    ctx.finish().as_ref().to_vec()
}
