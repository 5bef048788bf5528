//! One drill: the mesh, workload A (Envoy over SDS from `meshca agent`), workload B
//! (istio-agent over CreateCertificate and the root ConfigMap), traffic both ways, and what
//! the assertions need afterwards: the tallies, the summary line, and where the old root is.

use std::time::{Duration, Instant};

use super::envoy::Envoy;
use super::istio_agent::{IstioAgent, Pod};
use super::mesh::{ders, Mesh, WORKLOAD_TTL};
use super::traffic::{clock, verifies_with, Credential, Current, Traffic};

/// A call each way every 40 ms: 25 handshakes a second per direction.
const CALL_PERIOD: Duration = Duration::from_millis(40);
/// Handshakes each way, per second of traffic, below which the drill proves nothing.
const MIN_RATE: f64 = 10.0;

/// A drill in progress.
pub struct Drill {
    pub mesh: Mesh,
    pub envoy: Envoy,
    pub b: IstioAgent,
    pub traffic: Traffic,
    b_ttl: Duration,
    started: Instant,
}

/// The counts a drill ends with.
#[derive(Debug)]
pub struct Outcome {
    pub name: String,
    pub a_to_b: (u64, u64),
    pub b_to_a: (u64, u64),
    /// A's certificates over SDS, and its agent's failed CSRs.
    pub a_renewals: (u64, u64),
    /// B's certificates, and its failed CreateCertificate calls.
    pub b_renewals: (u64, u64),
    /// How long B's certificates live (A's live [`WORKLOAD_TTL`]).
    pub b_ttl: Duration,
    pub seconds: f64,
    /// The first failures of each kind, for assertion messages.
    pub failures: String,
}

// === impl Drill ===

impl Drill {
    /// Starts everything and waits until both workloads hold a certificate and talk. B runs
    /// as `apps/b`.
    pub async fn start(dir: tempfile::TempDir, extra_env: &[(&'static str, String)]) -> Self {
        Self::start_with(dir, extra_env, ("apps", "b"), WORKLOAD_TTL).await
    }

    /// [`Drill::start`] with B running as `namespace/service_account`, asking for `b_ttl`.
    pub async fn start_with(
        dir: tempfile::TempDir,
        extra_env: &[(&'static str, String)],
        (namespace, service_account): (&str, &str),
        b_ttl: Duration,
    ) -> Self {
        let mesh = Mesh::start(dir, extra_env).await;
        let envoy = Envoy::start(mesh.sds_socket());
        let b = IstioAgent::start(
            Pod {
                namespace: namespace.into(),
                spiffe_id: format!("spiffe://cluster.local/ns/{namespace}/sa/{service_account}"),
                token: mesh.mint_token(namespace, service_account),
                ra: mesh.server.grpc,
                ttl: b_ttl,
                dir: mesh.dir.path().join("pod-b"),
            },
            mesh.api.clone(),
        );
        for (name, current) in [("A", &envoy.current), ("B", &b.current)] {
            let mut current = current.clone();
            tokio::time::timeout(Duration::from_secs(30), current.wait_for(Option::is_some))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{name} has no certificate after 30 s; A: {:?}; B: {:?}\n{}",
                        envoy.problems(),
                        b.failures(),
                        mesh.server.output()
                    )
                })
                .unwrap();
        }
        let traffic = Traffic::start(envoy.current.clone(), b.current.clone(), CALL_PERIOD).await;
        let drill = Self {
            mesh,
            envoy,
            b,
            traffic,
            b_ttl,
            started: Instant::now(),
        };
        drill
            .until("traffic flows both ways", Duration::from_secs(10), |d| {
                d.traffic.a_to_b.ok() >= 10 && d.traffic.b_to_a.ok() >= 10
            })
            .await;
        drill
    }

    /// Waits until `done` holds, checking every 250 ms; panics with the drill's state after
    /// `within`.
    pub async fn until(&self, what: &str, within: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + within;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}\n{}",
                self.state()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Like [`Drill::until`] for a check that needs the server's answers.
    pub async fn until_async<F, Fut>(&self, what: &str, within: Duration, done: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        while !done().await {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}\n{}",
                self.state()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Prints `what` with the time and each authority's state and live certificates, so a
    /// failure's time can be placed between the steps.
    pub async fn note(&self, what: &str) {
        let list = self.mesh.authorities().await;
        let authorities: Vec<String> = list["authorities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let id = a["id"].as_str().unwrap_or_default();
                format!(
                    "{}… {} ({} live)",
                    &id[..8.min(id.len())],
                    a["state"].as_str().unwrap_or("?"),
                    a["live_certificates"]
                )
            })
            .collect();
        eprintln!(
            "  {} {what}: A→B {}/{} B→A {}/{} ok/failed; authorities: {}",
            clock(),
            self.traffic.a_to_b.ok(),
            self.traffic.a_to_b.failed(),
            self.traffic.b_to_a.ok(),
            self.traffic.b_to_a.failed(),
            authorities.join(", ")
        );
    }

    /// What each workload holds, for assertion messages.
    pub fn state(&self) -> String {
        let describe = |current: &Current| match current.borrow().as_ref() {
            Some(c) => format!(
                "leaf issued by {:?}, {} root(s)",
                c.leaf().tbs().issuer.to_string(),
                c.roots.len()
            ),
            None => "nothing".into(),
        };
        format!(
            "A: {}; SDS problems {:?}\nB: {}; root-cert file written {} times; failures {:?}\n\
             A→B {}/{} {}\nB→A {}/{} {}",
            describe(&self.envoy.current),
            self.envoy.problems(),
            describe(&self.b.current),
            self.b.root_file_updates(),
            self.b.failures(),
            self.traffic.a_to_b.ok(),
            self.traffic.a_to_b.failed(),
            self.traffic.a_to_b.failures(),
            self.traffic.b_to_a.ok(),
            self.traffic.b_to_a.failed(),
            self.traffic.b_to_a.failures(),
        )
    }

    /// Both workloads' current credentials.
    pub fn credentials(&self) -> [(&'static str, std::sync::Arc<Credential>); 2] {
        let get = |c: &Current| c.borrow().clone().expect("a credential");
        [("A", get(&self.envoy.current)), ("B", get(&self.b.current))]
    }

    /// Whether both workloads' certificates were issued by the CA with subject key id `ski`.
    pub fn leaves_issued_by(&self, ski: &[u8]) -> bool {
        self.credentials()
            .iter()
            .all(|(_, c)| c.leaf().authority_key_id().as_deref() == Some(ski))
    }

    /// Every bundle the workloads, the kubelet and operators read, by name; `None` where
    /// there is none (yet).
    pub async fn bundles(&self) -> Vec<(String, Option<String>)> {
        let file = |path: std::path::PathBuf| std::fs::read_to_string(path).ok();
        let mut bundles = vec![
            ("A's SDS ROOTCA".to_string(), self.envoy.roots_pem()),
            ("B's last answer".to_string(), self.b.last_bundle()),
            ("B's root-cert file".to_string(), file(self.b.root_file())),
            (
                "/v1/trust-bundle".to_string(),
                Some(self.mesh.trust_bundle().await),
            ),
            (
                "the dev root-cert.pem".to_string(),
                file(self.mesh.data().join("root-cert.pem")),
            ),
        ];
        for (namespace, pem) in self.mesh.configmaps() {
            bundles.push((format!("istio-ca-root-cert in {namespace}"), pem));
        }
        bundles
    }

    /// The bundles that hold `root` (DER), or have none at all.
    pub async fn holders_of(&self, root: &[u8]) -> Vec<String> {
        self.bundles()
            .await
            .into_iter()
            .filter(|(_, pem)| {
                pem.as_ref()
                    .is_none_or(|pem| ders(pem).iter().any(|d| d == root))
            })
            .map(|(name, _)| name)
            .collect()
    }

    /// Whether every bundle holds `root` (DER).
    pub async fn everyone_trusts(&self, root: &[u8]) -> bool {
        self.bundles()
            .await
            .into_iter()
            .all(|(_, pem)| pem.is_some_and(|pem| ders(&pem).iter().any(|d| d == root)))
    }

    /// Keeps the traffic going until the old root has left every bundle (B drops it at its
    /// next answer), then checks that both workloads' certificates chain to `new_root` and
    /// not to `old_root`.
    pub async fn assert_only_new_root(&self, old_root: &[u8], new_root: &[u8]) {
        let deadline = Instant::now() + WORKLOAD_TTL + Duration::from_secs(10);
        let mut holders = self.holders_of(old_root).await;
        while !holders.is_empty() {
            assert!(
                Instant::now() < deadline,
                "the old root is still in {holders:?}\n{}",
                self.state()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
            holders = self.holders_of(old_root).await;
        }
        let only = |der: &[u8]| vec![rustls::pki_types::CertificateDer::from(der.to_vec())];
        for (name, credential) in self.credentials() {
            verifies_with(&credential.chain, &only(new_root)).unwrap_or_else(|e| {
                panic!("{name}'s certificate does not chain to the new root: {e}")
            });
            assert!(
                verifies_with(&credential.chain, &only(old_root)).is_err(),
                "{name}'s certificate still chains to the old root"
            );
            assert!(
                credential.roots.iter().all(|r| r.as_ref() != old_root),
                "{name} still trusts the old root"
            );
        }
    }

    /// Stops the traffic and prints the summary line.
    pub async fn finish(&mut self, name: &str) -> Outcome {
        self.traffic.stop().await;
        let a_failed_csrs = self.mesh.agent.metric("meshca_agent_csr_failure_count") as u64;
        let outcome = Outcome {
            name: name.to_string(),
            a_to_b: (self.traffic.a_to_b.ok(), self.traffic.a_to_b.failed()),
            b_to_a: (self.traffic.b_to_a.ok(), self.traffic.b_to_a.failed()),
            a_renewals: (self.envoy.certificates(), a_failed_csrs),
            b_renewals: (self.b.issued(), self.b.failed()),
            b_ttl: self.b_ttl,
            seconds: self.started.elapsed().as_secs_f64(),
            failures: self.state(),
        };
        println!("{}", outcome.summary());
        for (who, process) in [("server", &self.mesh.server), ("agent", &self.mesh.agent)] {
            let output = process.output();
            let complaints: Vec<&str> = output
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                .collect();
            if !complaints.is_empty() {
                eprintln!(
                    "  meshca {who} logged {} warnings/errors, first:",
                    complaints.len()
                );
                for line in complaints.iter().take(5) {
                    eprintln!("    {line}");
                }
            }
        }
        outcome
    }
}

// === impl Outcome ===

impl Outcome {
    pub fn summary(&self) -> String {
        format!(
            "drill {}: {:.0} s of traffic; handshakes A→B {} ok / {} failed, B→A {} ok / {} \
             failed; renewals A {} ok / {} failed, B {} ok / {} failed",
            self.name,
            self.seconds,
            self.a_to_b.0,
            self.a_to_b.1,
            self.b_to_a.0,
            self.b_to_a.1,
            // The first certificate is no renewal.
            self.a_renewals.0.saturating_sub(1),
            self.a_renewals.1,
            self.b_renewals.0.saturating_sub(1),
            self.b_renewals.1,
        )
    }

    /// Nothing failed, and enough happened each way for that to mean something.
    pub fn assert_clean(&self) {
        let failed = self.a_to_b.1 + self.b_to_a.1 + self.a_renewals.1 + self.b_renewals.1;
        assert_eq!(failed, 0, "{}\n{}", self.summary(), self.failures);
        let least = (self.seconds * MIN_RATE) as u64;
        assert!(
            self.a_to_b.0 >= least && self.b_to_a.0 >= least,
            "fewer than {least} handshakes a way: {}",
            self.summary()
        );
        // Both kept renewing throughout (at half of the lifetime; a lenient floor).
        let renewals = |ttl: Duration| (self.seconds / ttl.as_secs_f64()) as u64;
        assert!(
            self.a_renewals.0 > renewals(WORKLOAD_TTL) && self.b_renewals.0 > renewals(self.b_ttl),
            "too few renewals: {}",
            self.summary()
        );
    }

    /// The drill caught something: a handshake or a renewal failed.
    pub fn assert_broken(&self) {
        let failed = self.a_to_b.1 + self.b_to_a.1 + self.a_renewals.1 + self.b_renewals.1;
        assert!(failed > 0, "the drill saw no failure: {}", self.summary());
    }
}
