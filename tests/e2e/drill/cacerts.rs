//! The two rotations Istio operators run on a plugged-in `cacerts` directory, under live
//! traffic: a new intermediate under the same root, and a new root introduced through a
//! combined `root-cert.pem`. The directory is swapped as the kubelet swaps a Secret volume
//! (`..data` symlink), and meshca polls it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meshca_ca::testing::{CaSpec, TestCa};
use serde_json::Value;

use super::mesh::{ders, WORKLOAD_TTL};
use super::run::Drill;

/// Certificates of the old intermediate outlive its replacement by at most this much: a
/// workload's (12 s) or meshca's own serving certificate (20 s).
const DRAIN: Duration = Duration::from_secs(40);

/// A `cacerts` Secret volume: each version in its own directory, `..data` pointing at the
/// current one, each file a symlink through `..data`.
struct CacertsVolume {
    dir: PathBuf,
    version: u32,
}

/// A root, an intermediate under it and a signing CA under that.
struct Chain {
    root: Arc<TestCa>,
    intermediate: TestCa,
    signing: TestCa,
}

// === impl CacertsVolume ===

impl CacertsVolume {
    fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        Self {
            dir: dir.to_path_buf(),
            version: 0,
        }
    }

    /// Makes `signing` (with `intermediate` above it) the plugged-in CA and `roots` the
    /// bundle, in one rename.
    fn install(&mut self, signing: &TestCa, intermediate: &TestCa, roots: &str) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        let files = [
            ("ca-cert.pem", signing.pem()),
            ("ca-key.pem", signing.key_pem()),
            (
                "cert-chain.pem",
                format!("{}{}", signing.pem(), intermediate.pem()),
            ),
            ("root-cert.pem", roots.to_string()),
        ];
        std::fs::create_dir_all(self.dir.join(&version)).unwrap();
        for (name, body) in &files {
            std::fs::write(self.dir.join(&version).join(name), body).unwrap();
        }
        let staged = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&staged);
        std::os::unix::fs::symlink(&version, &staged).unwrap();
        std::fs::rename(&staged, self.dir.join("..data")).unwrap();
        for (name, _) in &files {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), &link).unwrap();
            }
        }
    }
}

// === impl Chain ===

impl Chain {
    fn new(tag: &str) -> Self {
        let spec = |what: &str| CaSpec::new(&format!("CN=Drill {what} {tag},O=meshca drill"));
        Self::under(Arc::new(TestCa::new(&spec("Root"), None)), tag)
    }

    /// An intermediate and a signing CA under `root`.
    fn under(root: Arc<TestCa>, tag: &str) -> Self {
        let spec = |what: &str| CaSpec::new(&format!("CN=Drill {what} {tag},O=meshca drill"));
        let intermediate = TestCa::new(&spec("Intermediate"), Some(&root));
        let signing = TestCa::new(&spec("Signing CA"), Some(&intermediate));
        Self {
            root,
            intermediate,
            signing,
        }
    }

    fn key_id(&self) -> Vec<u8> {
        self.signing.cert.subject_key_id().unwrap()
    }
}

/// The dev server's settings for a plugged-in CA in `dir`, polled often.
fn plugged_in(dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("MESHCA_CA_CACERTS_DIR", dir.display().to_string()),
        ("MESHCA_CA_CACERTS_POLL_INTERVAL", "200ms".to_string()),
    ]
}

/// `live_certificates` of the authority whose id is `key_id` (hex), as `GET /v1/authorities`
/// lists it (None when it is not listed).
fn live_certificates(list: &Value, key_id: &[u8]) -> Option<i64> {
    let id = crate::harness::hex(key_id);
    list["authorities"]
        .as_array()?
        .iter()
        .find(|a| a["id"] == id.as_str())
        .and_then(|a| a["live_certificates"].as_i64())
}

/// Waits until both workloads hold certificates from `chain`'s signing CA and nothing that
/// `previous` signed is live (meshca's own serving certificates included).
async fn drain_to(drill: &Drill, chain: &Chain, previous: &Chain) {
    drill
        .until(
            "both workloads hold certificates from the new signing CA",
            DRAIN,
            |d| d.leaves_issued_by(&chain.key_id()),
        )
        .await;
    drill
        .until_async(
            "nothing the previous signing CA issued is live",
            DRAIN,
            || async {
                let list = drill.mesh.authorities().await;
                let live = live_certificates(&list, &previous.key_id());
                assert!(
                    live.is_some(),
                    "the previous authority is not listed: {list}"
                );
                live == Some(0)
            },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cacerts_new_intermediate_under_the_same_root() {
    let tmp = tempfile::tempdir().unwrap();
    let mut volume = CacertsVolume::new(&tmp.path().join("cacerts"));
    let first = Chain::new("1");
    volume.install(&first.signing, &first.intermediate, &first.root.pem());
    let env = plugged_in(&volume.dir);
    let mut drill = Drill::start(tmp, &env).await;
    let only_root = vec![first.root.cert.der().to_vec()];
    assert_eq!(ders(&drill.mesh.initial_bundle), only_root);

    let second = Chain::under(first.root.clone(), "2");
    drill
        .note("installing a new intermediate under the same root")
        .await;
    volume.install(&second.signing, &second.intermediate, &second.root.pem());
    drain_to(&drill, &second, &first).await;
    drill
        .note("nothing the old intermediate signed is live")
        .await;

    // The root never changed, so no bundle did.
    assert_eq!(ders(&drill.mesh.trust_bundle().await), only_root);
    assert_eq!(ders(&drill.envoy.roots_pem().unwrap()), only_root);
    assert_eq!(ders(&drill.b.last_bundle().unwrap()), only_root);
    for (namespace, pem) in drill.mesh.configmaps() {
        assert_eq!(ders(&pem.unwrap_or_default()), only_root, "{namespace}");
    }
    // Let B renew once more under the new intermediate while traffic flows.
    tokio::time::sleep(WORKLOAD_TTL / 2).await;
    let outcome = drill.finish("cacerts: new intermediate, same root").await;
    outcome.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cacerts_new_root_through_a_combined_root_cert() {
    let tmp = tempfile::tempdir().unwrap();
    let mut volume = CacertsVolume::new(&tmp.path().join("cacerts"));
    let old = Chain::new("old");
    volume.install(&old.signing, &old.intermediate, &old.root.pem());
    let env = plugged_in(&volume.dir);
    let mut drill = Drill::start(tmp, &env).await;
    let (old_root, new) = (old.root.cert.der().to_vec(), Chain::new("new"));
    let new_root = new.root.cert.der().to_vec();

    // 1. Both roots in root-cert.pem, the old intermediate still signing: wait until every
    //    workload's bundle holds the new root.
    let combined = format!("{}{}", old.root.pem(), new.root.pem());
    drill.note("root-cert.pem: old + new root").await;
    volume.install(&old.signing, &old.intermediate, &combined);
    drill
        .until_async(
            "every bundle holds the new root",
            WORKLOAD_TTL + Duration::from_secs(10),
            || drill.everyone_trusts(&new_root),
        )
        .await;

    // 2. Sign with an intermediate under the new root (both roots still listed): wait until
    //    every live certificate comes from it.
    drill
        .note("every bundle holds the new root; signing under it")
        .await;
    volume.install(&new.signing, &new.intermediate, &combined);
    drain_to(&drill, &new, &old).await;

    // 3. The new root alone.
    drill
        .note("nothing the old intermediate signed is live; root-cert.pem: new root")
        .await;
    volume.install(&new.signing, &new.intermediate, &new.root.pem());
    drill.assert_only_new_root(&old_root, &new_root).await;
    drill.note("the old root is in no bundle").await;

    let outcome = drill
        .finish("cacerts: new root via combined root-cert.pem")
        .await;
    outcome.assert_clean();
}
