//! Order-independent path building from a signing certificate to a trusted root, and the checks
//! RFC 5280 asks of every certificate on that path.

use std::time::SystemTime;

use x509_cert::ext::pkix::KeyUsages;

use crate::x509::ParsedCert;

/// Longest path we try; real meshes have one or two intermediates.
const MAX_DEPTH: usize = 8;

/// A verified path: `certs[0]` is the start, the last element is a root from the trust bundle.
#[derive(Clone, Debug)]
pub struct CertPath {
    pub certs: Vec<ParsedCert>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    #[error("does not chain to any root in the trust bundle: no issuer found for {subject:?} (issuer {issuer:?})")]
    NoPath { subject: String, issuer: String },
    #[error("{subject:?} {reason}")]
    Validity { subject: String, reason: String },
    #[error("{subject:?} is not a CA: {reason}")]
    NotCa { subject: String, reason: String },
    #[error("{subject:?} has pathLenConstraint {path_len} but {below} CA certificate(s) sit below it on the path")]
    PathLen {
        subject: String,
        path_len: u8,
        below: usize,
    },
}

/// Builds a path from `start` to one of `roots`, using any of `pool` as intermediates, in any
/// order. Only signatures and names decide the path; then every certificate on it is checked.
pub fn build_path(
    start: &ParsedCert,
    pool: &[ParsedCert],
    roots: &[ParsedCert],
    now: SystemTime,
) -> Result<CertPath, PathError> {
    let path = find_path(start, pool, roots)?;
    check_path(&path, now, false)?;
    Ok(CertPath { certs: path })
}

/// Verifies a client's end-entity certificate: builds its path to one of `roots` through
/// `pool` and checks validity and CA constraints above it. The leaf itself need not be a CA.
pub fn verify_leaf(
    leaf: &ParsedCert,
    pool: &[ParsedCert],
    roots: &[ParsedCert],
    now: SystemTime,
) -> Result<CertPath, PathError> {
    if roots.contains(leaf) {
        return Err(anchor_as_leaf(leaf));
    }
    let path = find_path(leaf, pool, roots)?;
    check_path(&path, now, true)?;
    Ok(CertPath { certs: path })
}

/// [`verify_leaf`] for a leaf signed by `issuer_path[0]`, where `issuer_path` is a path that
/// [`build_path`] verified to a root in `roots` (an authority's own): one signature instead of
/// one per link, and nothing copied, then the same validity and CA checks on every
/// certificate. Renewal calls this on every request with one of meshca's own certificates.
pub fn verify_leaf_on_path(
    leaf: &ParsedCert,
    issuer_path: &[ParsedCert],
    roots: &[&ParsedCert],
    now: SystemTime,
) -> Result<(), PathError> {
    if roots.contains(&leaf) {
        return Err(anchor_as_leaf(leaf));
    }
    let issuer = issuer_path.first().expect("a path is never empty");
    if leaf.is_signed_by(issuer).is_err() {
        return Err(PathError::NoPath {
            subject: leaf.subject_string(),
            issuer: leaf.issuer().to_string(),
        });
    }
    // The leaf alone, as `check_path` treats a path's leaf (its validity); then the issuer's
    // path with each certificate's depth counted from the issuer, as `verify_leaf` counts it
    // past the leaf.
    check_path(std::slice::from_ref(leaf), now, true)?;
    check_path(issuer_path, now, false)
}

fn anchor_as_leaf(leaf: &ParsedCert) -> PathError {
    PathError::NotCa {
        subject: leaf.subject_string(),
        reason: "a trust anchor is not a workload certificate".into(),
    }
}

/// The certificates from `start` to a root, by name and signature only.
fn find_path(
    start: &ParsedCert,
    pool: &[ParsedCert],
    roots: &[ParsedCert],
) -> Result<Vec<ParsedCert>, PathError> {
    let mut path = vec![start.clone()];
    let mut dead_end = None;
    if extend(&mut path, pool, roots, &mut dead_end) {
        return Ok(path);
    }
    let stuck = dead_end.unwrap_or_else(|| start.clone());
    Err(PathError::NoPath {
        subject: stuck.subject_string(),
        issuer: stuck.issuer().to_string(),
    })
}

/// Depth-first search; on success `path` ends with a root.
fn extend(
    path: &mut Vec<ParsedCert>,
    pool: &[ParsedCert],
    roots: &[ParsedCert],
    dead_end: &mut Option<ParsedCert>,
) -> bool {
    let current = path.last().expect("path is never empty").clone();
    if roots.contains(&current) {
        return true;
    }
    if let Some(root) = roots.iter().find(|r| current.is_signed_by(r).is_ok()) {
        path.push(root.clone());
        return true;
    }
    if path.len() < MAX_DEPTH {
        for candidate in pool {
            // A self-signed certificate that is not in the bundle is an untrusted root: it can
            // never end a path, so it is no use as an intermediate either.
            if path.contains(candidate) || candidate.is_self_issued() {
                continue;
            }
            if current.is_signed_by(candidate).is_ok() {
                path.push(candidate.clone());
                if extend(path, pool, roots, dead_end) {
                    return true;
                }
                path.pop();
            }
        }
    }
    if dead_end.is_none() || path.len() > 1 {
        *dead_end = Some(current);
    }
    false
}

fn check_path(path: &[ParsedCert], now: SystemTime, starts_at_leaf: bool) -> Result<(), PathError> {
    for (index, cert) in path.iter().enumerate() {
        cert.check_validity(now)
            .map_err(|reason| PathError::Validity {
                subject: cert.subject_string(),
                reason,
            })?;
        if starts_at_leaf && index == 0 {
            continue;
        }
        // CA certificates between this one and the end entity; a signing cert counts itself
        // as one, since the leaf it issues follows it.
        let depth = if starts_at_leaf { index - 1 } else { index };
        let is_anchor = index == path.len() - 1;
        let constraints = cert.ca_constraints();
        // Trust anchors are trusted as configured (RFC 5280 §6.1); every other certificate on
        // the path, the signing certificate included, must say it is a CA.
        if !is_anchor || constraints.is_some() {
            check_is_ca(cert)?;
        }
        if let Some(path_len) = constraints.and_then(|c| c.path_len) {
            if depth > usize::from(path_len) {
                return Err(PathError::PathLen {
                    subject: cert.subject_string(),
                    path_len,
                    below: depth,
                });
            }
        }
    }
    Ok(())
}

/// basicConstraints CA:TRUE, and keyCertSign when keyUsage is present (RFC 5280 §4.2.1.3: an
/// absent keyUsage restricts nothing, and OpenSSL's default `v3_ca` omits it).
pub fn check_is_ca(cert: &ParsedCert) -> Result<(), PathError> {
    let not_ca = |reason: &str| PathError::NotCa {
        subject: cert.subject_string(),
        reason: reason.to_string(),
    };
    match cert.ca_constraints() {
        None => return Err(not_ca("no basicConstraints extension")),
        Some(c) if !c.ca => return Err(not_ca("basicConstraints CA:FALSE")),
        Some(_) => {}
    }
    if let Some(ku) = cert.key_usage() {
        if !ku.0.contains(KeyUsages::KeyCertSign) {
            return Err(not_ca("keyUsage lacks keyCertSign"));
        }
    }
    Ok(())
}
