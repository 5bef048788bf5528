//! Whether an attested SDS client may be served a `file-cert:` / `file-root:` resource: only if
//! its own uid could read the files, so that the agent (which runs as root) never hands a
//! workload a key it could not open itself. Ordinary Unix permission rules on the file and
//! search permission on every directory above it; supplementary groups are not known from
//! the socket, so only the primary group counts (this can refuse, never grant, more than the
//! kernel would).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Who asks, as the kernel reported it at `connect(2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileReader {
    pub uid: u32,
    pub gid: u32,
}

/// Read and search bits of a mode, for each of owner, group and others.
const READ: u32 = 0o4;
const SEARCH: u32 = 0o1;

/// The permission bits (`READ` or `SEARCH`) that apply to `reader` on an object with this
/// owner and mode: the owner's class, else the group's, else others' (the first class that
/// matches decides, as in the kernel). Root may do anything.
pub fn permitted(reader: FileReader, owner: u32, group: u32, mode: u32, wanted: u32) -> bool {
    if reader.uid == 0 {
        return true;
    }
    let class = if reader.uid == owner {
        mode >> 6
    } else if reader.gid == group {
        mode >> 3
    } else {
        mode
    };
    class & wanted == wanted
}

/// Whether `reader` could open `path` for reading: every directory above it searchable, the
/// file readable. A path that cannot be inspected is not readable.
pub fn may_read(reader: FileReader, path: &Path) -> bool {
    let Ok(path) = std::fs::canonicalize(path) else {
        return false;
    };
    let searchable = path.ancestors().skip(1).all(|dir| {
        std::fs::metadata(dir).is_ok_and(|m| permitted(reader, m.uid(), m.gid(), m.mode(), SEARCH))
    });
    searchable
        && std::fs::metadata(&path)
            .is_ok_and(|m| permitted(reader, m.uid(), m.gid(), m.mode(), READ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const WEB: FileReader = FileReader {
        uid: 1001,
        gid: 1001,
    };

    #[test]
    fn the_first_matching_class_decides() {
        // Owner.
        assert!(permitted(WEB, 1001, 0, 0o400, READ));
        // The owner class without read wins even when others may read.
        assert!(!permitted(WEB, 1001, 0, 0o044, READ));
        // Group.
        assert!(permitted(WEB, 0, 1001, 0o040, READ));
        assert!(!permitted(WEB, 0, 1001, 0o404, READ));
        // Others.
        assert!(permitted(WEB, 0, 0, 0o004, READ));
        assert!(!permitted(WEB, 0, 0, 0o640, READ));
        // Search is its own bit.
        assert!(permitted(WEB, 0, 0, 0o711, SEARCH));
        assert!(!permitted(WEB, 0, 0, 0o744, SEARCH));
        // Root reads everything.
        let root = FileReader { uid: 0, gid: 0 };
        assert!(permitted(root, 1001, 1001, 0o000, READ));
    }

    #[test]
    fn a_file_is_readable_only_through_searchable_directories() {
        // Tests run as root: files owned by root, judged for another uid.
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        let file = certs.join("cert.pem");
        std::fs::write(&file, "pem").unwrap();
        let set = |p: &Path, mode| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        set(dir.path(), 0o755);
        set(&certs, 0o755);
        set(&file, 0o644);
        assert!(may_read(WEB, &file));
        set(&file, 0o600);
        assert!(!may_read(WEB, &file), "the file is root's alone");
        set(&file, 0o644);
        set(&certs, 0o700);
        assert!(!may_read(WEB, &file), "its directory cannot be searched");
        assert!(!may_read(WEB, &certs.join("missing.pem")));
    }
}
