//! `file-cert:` and `file-root:` resources: certificates mounted as files, read when first
//! asked for and polled for changes while any stream subscribes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::secrets::{certificates, FileResource, RenderedSecret};

/// How often mounted certificate files are re-read. Polling (rather than inotify) also sees a
/// Kubernetes Secret volume's `..data` symlink swap, and a few small reads a second cost nothing.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Secrets read from mounted files, loaded while at least one stream subscribes to them.
#[derive(Debug)]
pub(super) struct FileSecrets {
    pub(super) entries: Mutex<HashMap<FileResource, FileEntry>>,
    /// Bumped whenever a file-backed secret changes, to wake the streams.
    pub(super) changed: watch::Sender<u64>,
}

#[derive(Debug)]
pub(super) struct FileEntry {
    pub(super) name: String,
    pub(super) subscribers: usize,
    /// `None` while the files are missing or do not hold what the name promises.
    pub(super) secret: Option<Arc<RenderedSecret>>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum FileSecretError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("{0}: no PEM private key")]
    NoPrivateKey(PathBuf),
    #[error("{0}: not a regular file")]
    NotRegular(PathBuf),
    #[error("{0}: larger than {MAX_FILE_BYTES} bytes")]
    TooLarge(PathBuf),
}

/// The largest certificate or key file read: a bundle of a few hundred roots fits many times.
/// A client names the path, so `/dev/zero` or a huge log must not make the agent read forever.
pub(super) const MAX_FILE_BYTES: u64 = 1 << 20;

/// Reads a regular file of at most [`MAX_FILE_BYTES`].
pub(super) fn read_file(path: &Path) -> Result<Vec<u8>, FileSecretError> {
    use std::io::Read;
    let failed = |source| FileSecretError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(failed)?;
    if !file.metadata().map_err(failed)?.is_file() {
        return Err(FileSecretError::NotRegular(path.to_path_buf()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(FileSecretError::TooLarge(path.to_path_buf()));
    }
    Ok(bytes)
}

/// Reads what a file resource names, refusing files that are not what they claim to be (so a
/// mistyped path never ships, say, a CA key as a certificate chain).
pub(super) fn load_file_secret(
    name: &str,
    resource: &FileResource,
) -> Result<RenderedSecret, FileSecretError> {
    match resource {
        FileResource::Cert { cert, key } => {
            let chain = read_file(cert)?;
            if certificates(&chain).is_empty() {
                return Err(FileSecretError::NoCertificate(cert.clone()));
            }
            let key_pem = read_file(key)?;
            let has_key = pem::parse_many(&key_pem)
                .unwrap_or_default()
                .iter()
                .any(|p| p.tag().ends_with("PRIVATE KEY"));
            if !has_key {
                return Err(FileSecretError::NoPrivateKey(key.clone()));
            }
            Ok(RenderedSecret::tls_certificate(name, &chain, &key_pem))
        }
        FileResource::Root { ca } => {
            let roots = read_file(ca)?;
            if certificates(&roots).is_empty() {
                return Err(FileSecretError::NoCertificate(ca.clone()));
            }
            Ok(RenderedSecret::validation_context(name, &roots))
        }
    }
}

pub(super) fn load_logged(name: &str, resource: &FileResource) -> Option<Arc<RenderedSecret>> {
    match load_file_secret(name, resource) {
        Ok(secret) => Some(Arc::new(secret)),
        Err(error) => {
            tracing::warn!(resource = name, %error, "file secret not served");
            None
        }
    }
}

// === impl FileSecrets ===

impl FileSecrets {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
        })
    }

    pub(super) fn subscribe(&self, name: &str, resource: &FileResource) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.get_mut(resource) {
            entry.subscribers += 1;
            return;
        }
        let secret = load_logged(name, resource);
        entries.insert(
            resource.clone(),
            FileEntry {
                name: name.to_string(),
                subscribers: 1,
                secret,
            },
        );
    }

    pub(super) fn unsubscribe(&self, resource: &FileResource) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.get_mut(resource) {
            entry.subscribers -= 1;
            if entry.subscribers == 0 {
                entries.remove(resource);
            }
        }
    }

    pub(super) fn get(&self, resource: &FileResource) -> Option<Arc<RenderedSecret>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(resource).and_then(|e| e.secret.clone())
    }

    pub(super) fn expiries(&self) -> Vec<(String, SystemTime)> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .values()
            .filter_map(|e| Some((e.name.clone(), e.secret.as_ref()?.not_after?)))
            .collect()
    }

    /// Re-reads every subscribed file set; wakes the streams if any secret changed.
    pub(super) fn poll(&self) {
        let names: Vec<(FileResource, String)> = {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries
                .iter()
                .map(|(r, e)| (r.clone(), e.name.clone()))
                .collect()
        };
        let mut changed = false;
        for (resource, name) in names {
            // Read outside the lock: a slow filesystem must not stall the streams.
            let fresh = load_file_secret(&name, &resource).ok().map(Arc::new);
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let Some(entry) = entries.get_mut(&resource) else {
                continue;
            };
            if entry.secret != fresh {
                match &fresh {
                    Some(_) => tracing::info!(resource = name, "file secret changed"),
                    None => tracing::warn!(
                        resource = name,
                        "file secret unreadable; Envoy keeps the last one it was sent"
                    ),
                }
                // An unreadable file keeps what Envoy already has rather than pushing nothing.
                if fresh.is_some() {
                    changed = true;
                }
                entry.secret = fresh;
            }
        }
        if changed {
            self.changed.send_modify(|generation| *generation += 1);
        }
    }
}

/// Re-reads subscribed files every `every` until the service is gone.
pub(super) async fn poll_files(files: Weak<FileSecrets>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(files) = files.upgrade() else {
            return;
        };
        tokio::task::spawn_blocking(move || files.poll())
            .await
            .unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_sane_size_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(matches!(read_file(&big), Err(FileSecretError::TooLarge(_))));
        // A device a client might name reads forever; a directory reads nothing useful.
        assert!(matches!(
            read_file(Path::new("/dev/zero")),
            Err(FileSecretError::NotRegular(_))
        ));
        assert!(matches!(
            read_file(dir.path()),
            Err(FileSecretError::NotRegular(_))
        ));
        let fine = dir.path().join("ok.pem");
        std::fs::write(&fine, "pem").unwrap();
        assert_eq!(read_file(&fine).unwrap(), b"pem");
    }
}
