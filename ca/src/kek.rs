//! Envelope encryption of CA private keys at rest. Each key is encrypted under its own random
//! data key (AES-256-GCM); the data key is wrapped by the key-encryption key (KEK) from a file
//! that every replica mounts. The database never sees a plaintext key or the KEK.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::Engine;

const VERSION: u8 = 1;
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;

pub struct KeyEncryptionKey {
    key: [u8; KEY_LEN],
    /// Short fingerprint stored beside sealed keys, so a wrong KEK file gives a clear error
    /// instead of a bare decryption failure.
    id: String,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KekError {
    #[error("{path}: cannot read the key-encryption key: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: key-encryption key must be 32 bytes, base64 on one line")]
    Format { path: PathBuf },
    #[error("{path}: cannot write a new key-encryption key: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "sealed with key-encryption key {sealed_with}, but the configured one is {configured}"
    )]
    WrongKek {
        sealed_with: String,
        configured: String,
    },
    #[error("sealed key is corrupt or was moved to another record")]
    Corrupt,
}

// === impl KeyEncryptionKey ===

impl KeyEncryptionKey {
    pub fn from_bytes(key: [u8; KEY_LEN]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &key);
        Self {
            key,
            id: hex::encode(&digest.as_ref()[..8]),
        }
    }

    pub fn load(path: &Path) -> Result<Self, KekError> {
        let text = std::fs::read_to_string(path).map_err(|source| KekError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| KekError::Format {
                path: path.to_path_buf(),
            })?;
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| KekError::Format {
            path: path.to_path_buf(),
        })?;
        Ok(Self::from_bytes(key))
    }

    /// Loads the KEK at `path`, creating it (mode 0600, 32 random bytes) when it is absent.
    pub fn load_or_generate(path: &Path) -> Result<Self, KekError> {
        if path.exists() {
            return Self::load(path);
        }
        let mut key = [0u8; KEY_LEN];
        aws_lc_rs::rand::fill(&mut key).expect("system RNG");
        let encoded = base64::engine::general_purpose::STANDARD.encode(key);
        let write_err = |source| KekError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write_err)?;
        }
        let mut file = private_file_options()
            .create_new(true)
            .open(path)
            .map_err(write_err)?;
        file.write_all(format!("{encoded}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(write_err)?;
        Ok(Self::from_bytes(key))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `plaintext`; `context` (e.g. the authority id) is bound as associated data so a
    /// sealed key cannot be swapped onto another record.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        let mut data_key = [0u8; KEY_LEN];
        aws_lc_rs::rand::fill(&mut data_key).expect("system RNG");
        let mut out = vec![VERSION];
        out.extend(encrypt(&self.key, &data_key, context));
        out.extend(encrypt(&data_key, plaintext, context));
        out
    }

    pub fn open(
        &self,
        sealed: &[u8],
        sealed_with: &str,
        context: &[u8],
    ) -> Result<Vec<u8>, KekError> {
        if sealed_with != self.id {
            return Err(KekError::WrongKek {
                sealed_with: sealed_with.to_string(),
                configured: self.id.clone(),
            });
        }
        let wrapped_len = NONCE_LEN + KEY_LEN + TAG_LEN;
        if sealed.first() != Some(&VERSION) || sealed.len() < 1 + wrapped_len + NONCE_LEN + TAG_LEN
        {
            return Err(KekError::Corrupt);
        }
        let (wrapped, body) = sealed[1..].split_at(wrapped_len);
        let data_key = decrypt(&self.key, wrapped, context)?;
        let data_key: [u8; KEY_LEN] = data_key.try_into().map_err(|_| KekError::Corrupt)?;
        decrypt(&data_key, body, context)
    }
}

impl fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEncryptionKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn encrypt(key: &[u8; KEY_LEN], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte key"));
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).expect("system RNG");
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .expect("AES-GCM sealing does not fail");
    let mut out = nonce.to_vec();
    out.extend(buf);
    out
}

fn decrypt(key: &[u8; KEY_LEN], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, KekError> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte key"));
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KekError::Corrupt)?;
    let mut buf = body.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| KekError::Corrupt)?;
    Ok(plain.to_vec())
}

/// Options for files that hold secrets: created 0600 on Unix.
pub fn private_file_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let kek = KeyEncryptionKey::from_bytes([7; 32]);
        let sealed = kek.seal(b"private key", b"authority-a");
        assert!(!sealed.windows(11).any(|w| w == b"private key"));
        assert_eq!(
            kek.open(&sealed, kek.id(), b"authority-a").unwrap(),
            b"private key"
        );
        assert!(matches!(
            kek.open(&sealed, kek.id(), b"authority-b"),
            Err(KekError::Corrupt)
        ));
        let other = KeyEncryptionKey::from_bytes([8; 32]);
        assert!(matches!(
            other.open(&sealed, kek.id(), b"authority-a"),
            Err(KekError::WrongKek { .. })
        ));
    }

    #[test]
    fn generated_kek_file_is_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/kek");
        let a = KeyEncryptionKey::load_or_generate(&path).unwrap();
        let b = KeyEncryptionKey::load_or_generate(&path).unwrap();
        assert_eq!(a.id(), b.id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "bm90IDMyIGJ5dGVz\n").unwrap();
        assert!(matches!(
            KeyEncryptionKey::load(&path),
            Err(KekError::Format { .. })
        ));
    }
}
