//! Extra trust anchors from `trust.extra_anchors`: read at start (a bad file stops the start,
//! naming it), then polled, so an operator can replace a file and have the bundle follow. A
//! file that turns bad later keeps its previous roots and is logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meshca_ca::x509::ParsedCert;
use meshca_ca::TrustDomain;
use meshca_pki::ExtraAnchor;
use tokio::sync::watch;

use crate::config::ExtraAnchorConfig;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorError {
    #[error("trust.extra_anchors: trust domain {name:?}: {reason}")]
    TrustDomain { name: String, reason: String },
    #[error("trust.extra_anchors: {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// The configured anchors, resolved once and re-read on change.
#[derive(Debug)]
pub struct AnchorFiles {
    entries: Vec<(TrustDomain, PathBuf)>,
}

// === impl AnchorFiles ===

impl AnchorFiles {
    pub fn new(config: &[ExtraAnchorConfig]) -> Result<Self, AnchorError> {
        let entries = config
            .iter()
            .map(|c| {
                TrustDomain::new(&c.trust_domain)
                    .map(|td| (td, c.pem_file.clone()))
                    .map_err(|e| AnchorError::TrustDomain {
                        name: c.trust_domain.clone(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { entries })
    }

    /// Reads every file; the first bad one is the error.
    pub fn load(&self) -> Result<Vec<ExtraAnchor>, AnchorError> {
        self.entries
            .iter()
            .map(|(trust_domain, path)| {
                Ok(ExtraAnchor {
                    trust_domain: trust_domain.clone(),
                    roots: read_roots(path)?,
                })
            })
            .collect()
    }

    /// The files' bytes, to notice a change without parsing.
    fn contents(&self) -> Vec<Option<Vec<u8>>> {
        self.entries
            .iter()
            .map(|(_, path)| std::fs::read(path).ok())
            .collect()
    }

    /// Publishes the anchors on `tx` whenever a file changes and still parses, until every
    /// receiver is gone.
    pub fn follow(self, interval: Duration, tx: watch::Sender<Arc<Vec<ExtraAnchor>>>) {
        if self.entries.is_empty() {
            return;
        }
        // What was loaded is what later reads are compared with.
        let mut seen = self.contents();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(100)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = tx.closed() => return,
                }
                let now = self.contents();
                if now == seen {
                    continue;
                }
                seen = now;
                match self.load() {
                    Ok(anchors) => {
                        tracing::info!(
                            files = self.entries.len(),
                            roots = anchors.iter().map(|a| a.roots.len()).sum::<usize>(),
                            "extra trust anchors changed; publishing the new bundle"
                        );
                        tx.send_replace(Arc::new(anchors));
                    }
                    Err(error) => tracing::error!(
                        %error,
                        "extra trust anchors changed but do not parse; keeping the previous ones"
                    ),
                }
            }
        });
    }
}

fn read_roots(path: &Path) -> Result<Vec<ParsedCert>, AnchorError> {
    let bad = |reason: String| AnchorError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let roots = ParsedCert::many_from_pem(&text).map_err(|e| bad(e.to_string()))?;
    if roots.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    if let Some(leaf) = roots
        .iter()
        .find(|r| !r.ca_constraints().is_some_and(|c| c.ca))
    {
        return Err(bad(format!(
            "{} is not a CA certificate (basicConstraints CA:TRUE)",
            leaf.subject_string()
        )));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshca_ca::testing::{CaSpec, LeafSpec, TestCa};

    fn config(dir: &Path, name: &str, domain: &str) -> ExtraAnchorConfig {
        ExtraAnchorConfig {
            trust_domain: domain.into(),
            pem_file: dir.join(name),
        }
    }

    #[test]
    fn bad_anchor_files_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let error = |configs: &[ExtraAnchorConfig]| {
            AnchorFiles::new(configs)
                .and_then(|f| f.load())
                .unwrap_err()
                .to_string()
        };
        let missing = config(tmp.path(), "missing.pem", "athenz.example");
        assert!(error(&[missing]).contains("missing.pem"));
        std::fs::write(tmp.path().join("empty.pem"), "").unwrap();
        let empty = config(tmp.path(), "empty.pem", "athenz.example");
        assert!(error(&[empty]).contains("no certificate"));
        let ca = TestCa::new(&CaSpec::new("CN=Athenz Root"), None);
        let leaf = ca.issue_leaf(&LeafSpec::new("CN=proxy"));
        std::fs::write(tmp.path().join("leaf.pem"), leaf.pem()).unwrap();
        let leaf = config(tmp.path(), "leaf.pem", "athenz.example");
        assert!(error(&[leaf]).contains("not a CA certificate"));
        std::fs::write(tmp.path().join("root.pem"), ca.pem()).unwrap();
        let bad_domain = config(tmp.path(), "root.pem", "Not A Domain");
        assert!(error(&[bad_domain]).contains("Not A Domain"));
        let good = config(tmp.path(), "root.pem", "athenz.example");
        let anchors = AnchorFiles::new(&[good]).unwrap().load().unwrap();
        assert_eq!(anchors[0].roots[0].to_pem(), ca.pem());
    }

    #[tokio::test]
    async fn a_changed_file_is_published_and_a_broken_one_keeps_the_previous_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let first = TestCa::new(&CaSpec::new("CN=First"), None);
        let second = TestCa::new(&CaSpec::new("CN=Second"), None);
        std::fs::write(tmp.path().join("a.pem"), first.pem()).unwrap();
        let files = AnchorFiles::new(&[config(tmp.path(), "a.pem", "athenz.example")]).unwrap();
        let (tx, mut rx) = watch::channel(Arc::new(files.load().unwrap()));
        files.follow(Duration::from_millis(100), tx);

        std::fs::write(tmp.path().join("a.pem"), "not PEM").unwrap();
        std::fs::write(
            tmp.path().join("a.pem"),
            format!("{}{}", first.pem(), second.pem()),
        )
        .unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rx.borrow_and_update()[0].roots.len(), 2);

        std::fs::write(tmp.path().join("a.pem"), "not PEM").unwrap();
        let unchanged = tokio::time::timeout(Duration::from_millis(600), rx.changed()).await;
        assert!(unchanged.is_err(), "a broken file publishes nothing");
        assert_eq!(rx.borrow()[0].roots.len(), 2);
    }
}
