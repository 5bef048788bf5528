//! Istio's `OUTPUT_CERTS`: the current key, chain and roots as files, for workloads that read
//! certificates from disk. Each file is replaced atomically (temp file + rename in the same
//! directory) and only when its content changes, so file watchers fire once per rotation.

use std::io::Write;
use std::path::Path;

pub const KEY_FILE: &str = "key.pem";
pub const CHAIN_FILE: &str = "cert-chain.pem";
pub const ROOT_FILE: &str = "root-cert.pem";

/// Writes the three files into `dir`; returns how many changed.
pub fn write_credentials(
    dir: &Path,
    key_pem: &str,
    chain_pem: &str,
    roots_pem: &str,
) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut changed = 0;
    for (name, body, private) in [
        (KEY_FILE, key_pem, true),
        (CHAIN_FILE, chain_pem, false),
        (ROOT_FILE, roots_pem, false),
    ] {
        if write_if_changed(&dir.join(name), body.as_bytes(), private)? {
            changed += 1;
        }
    }
    Ok(changed)
}

/// Replaces `path` with `bytes` unless it already holds them. `private` files are 0600.
pub fn write_if_changed(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<bool> {
    if std::fs::read(path).is_ok_and(|current| current == bytes) {
        return Ok(false);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_privately_and_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            write_credentials(dir.path(), "KEY", "CHAIN", "ROOT").unwrap(),
            3
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap(),
            "KEY"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |f: &str| {
                std::fs::metadata(dir.path().join(f))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777
            };
            assert_eq!(mode(KEY_FILE), 0o600);
            assert_eq!(mode(CHAIN_FILE), 0o644);
        }
        // Unchanged content leaves the files (and their inodes) alone.
        let modified = std::fs::metadata(dir.path().join(ROOT_FILE))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(
            write_credentials(dir.path(), "KEY", "CHAIN", "ROOT").unwrap(),
            0
        );
        assert_eq!(
            std::fs::metadata(dir.path().join(ROOT_FILE))
                .unwrap()
                .modified()
                .unwrap(),
            modified
        );
        assert_eq!(
            write_credentials(dir.path(), "KEY2", "CHAIN2", "ROOT").unwrap(),
            2
        );
        // No temp files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }
}
