//! Mesh traffic between the drill's workloads: each serves mTLS (client certificate required,
//! verified with its current roots, its current certificate presented) and calls the other,
//! every call a fresh handshake built from the caller's latest credential, as Envoy builds a
//! new TLS context on every SDS push. Successes and failures are counted per direction.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How many failure messages a direction keeps for the assertion output.
const KEPT_FAILURES: usize = 8;
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// A workload's credential as its proxy holds it: what it presents and what it trusts.
#[derive(Debug)]
pub struct Credential {
    /// Leaf first, then the intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Vec<CertificateDer<'static>>,
}

/// The latest credential of a workload; `None` until its first one.
pub type Current = watch::Receiver<Option<Arc<Credential>>>;

/// One direction's tally: the caller counts, since only it sees the whole exchange.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    first_failures: Mutex<Vec<String>>,
    /// What the serving side logged when it refused a handshake, for the same output.
    server_refusals: Mutex<Vec<String>>,
}

/// Both directions between workloads A and B, and the tasks that make the calls.
#[derive(Debug)]
pub struct Traffic {
    pub a_to_b: Arc<Tally>,
    pub b_to_a: Arc<Tally>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Verifies a peer's certificate as Envoy does with an Istio validation context: the chain to
/// one of the roots and a SPIFFE id of `trust_domain` in the URI SAN, no DNS name.
#[derive(Debug)]
struct SpiffePeer {
    chain: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

// === impl Credential ===

impl Credential {
    /// From PEM texts: the certificate chain (leaf first), the key, and the trusted roots.
    pub fn from_pem(chain: &str, key: &str, roots: &str) -> Result<Self, String> {
        let certs = |text: &str| -> Result<Vec<CertificateDer<'static>>, String> {
            let blocks = pem::parse_many(text).map_err(|e| e.to_string())?;
            Ok(blocks
                .into_iter()
                .filter(|b| b.tag() == "CERTIFICATE")
                .map(|b| CertificateDer::from(b.into_contents()))
                .collect())
        };
        let key = pem::parse(key).map_err(|e| format!("key: {e}"))?;
        let key = PrivateKeyDer::try_from(key.into_contents()).map_err(|e| format!("key: {e}"))?;
        let (chain, roots) = (certs(chain)?, certs(roots)?);
        if chain.is_empty() || roots.is_empty() {
            return Err("an empty chain or bundle".into());
        }
        Ok(Self { chain, key, roots })
    }

    pub fn leaf(&self) -> meshca_ca::x509::ParsedCert {
        meshca_ca::x509::ParsedCert::from_der(&self.chain[0]).unwrap()
    }

    fn server_config(&self) -> Result<ServerConfig, String> {
        let provider = provider();
        let verifier = client_verifier(&self.roots)?;
        ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| e.to_string())
    }

    fn client_config(&self) -> Result<ClientConfig, String> {
        let peer = SpiffePeer {
            chain: client_verifier(&self.roots)?,
            trust_domain: "cluster.local".into(),
        };
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(peer))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| e.to_string())
    }
}

/// Whether `chain` (leaf first) verifies with `roots` and nothing else.
pub fn verifies_with(
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
) -> Result<(), String> {
    client_verifier(roots)?
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn client_verifier(
    roots: &[CertificateDer<'static>],
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).map_err(|e| format!("root: {e}"))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider())
        .build()
        .map_err(|e| e.to_string())
}

// === impl Tally ===

impl Tally {
    fn failure(&self, message: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut kept = self.first_failures.lock().unwrap();
        if kept.len() < KEPT_FAILURES {
            kept.push(message);
        }
    }

    fn refusal(&self, message: String) {
        let mut kept = self.server_refusals.lock().unwrap();
        if kept.len() < KEPT_FAILURES {
            kept.push(message);
        }
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// The first failures the caller saw and the first refusals the server logged.
    pub fn failures(&self) -> String {
        format!(
            "caller: {:?}; server: {:?}",
            self.first_failures.lock().unwrap(),
            self.server_refusals.lock().unwrap()
        )
    }
}

// === impl Traffic ===

impl Traffic {
    /// Serves A and B and calls each from the other every `period` until [`Traffic::stop`].
    pub async fn start(a: Current, b: Current, period: Duration) -> Self {
        let (a_to_b, b_to_a) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a_addr, a_server) = serve("A", a.clone(), b_to_a.clone()).await;
        let (b_addr, b_server) = serve("B", b.clone(), a_to_b.clone()).await;
        let tasks = vec![
            a_server,
            b_server,
            tokio::spawn(call_loop(
                "A→B",
                a,
                b_addr,
                a_to_b.clone(),
                stop.clone(),
                period,
            )),
            tokio::spawn(call_loop(
                "B→A",
                b,
                a_addr,
                b_to_a.clone(),
                stop.clone(),
                period,
            )),
        ];
        Self {
            a_to_b,
            b_to_a,
            stop,
            tasks,
        }
    }

    /// Stops calling, then serving; the counts are final once this returns.
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let mut tasks = std::mem::take(&mut self.tasks);
        let callers = tasks.split_off(2);
        for caller in callers {
            let _ = caller.await;
        }
        for server in tasks {
            server.abort();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// An mTLS server for workload `name` on loopback; a handshake it refuses is noted in `tally`
/// (the caller's direction).
async fn serve(
    name: &'static str,
    current: Current,
    tally: Arc<Tally>,
) -> (SocketAddr, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            // Envoy builds its TLS context from the latest SDS push; so does each handshake here.
            let credential = current.borrow().clone();
            let tally = tally.clone();
            tokio::spawn(async move {
                let Some(credential) = credential else {
                    return tally.refusal(format!("{name} server: no credential yet"));
                };
                let config = match credential.server_config() {
                    Ok(config) => config,
                    Err(e) => return tally.refusal(format!("{name} server config: {e}")),
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
                let exchange = async {
                    let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
                    let mut request = [0u8; 5];
                    tls.read_exact(&mut request)
                        .await
                        .map_err(|e| e.to_string())?;
                    tls.write_all(b"pong\n").await.map_err(|e| e.to_string())?;
                    tls.shutdown().await.map_err(|e| e.to_string())
                };
                match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tally.refusal(format!("{name} server: {e}")),
                    Err(_) => tally.refusal(format!("{name} server: timed out")),
                }
            });
        }
    });
    (addr, task)
}

/// Calls `peer` every `period` with a fresh handshake and a one-line request.
async fn call_loop(
    direction: &'static str,
    current: Current,
    peer: SocketAddr,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    period: Duration,
) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let credential = current.borrow().clone();
        let Some(credential) = credential else {
            continue;
        };
        let call = async {
            let config = credential.client_config()?;
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let tcp = tokio::net::TcpStream::connect(peer)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let name = ServerName::try_from("workload.mesh.internal").unwrap();
            let mut tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tls.write_all(b"ping\n")
                .await
                .map_err(|e| format!("request: {e}"))?;
            let mut response = Vec::new();
            tls.read_to_end(&mut response)
                .await
                .map_err(|e| format!("response: {e}"))?;
            if response != b"pong\n" {
                return Err(format!(
                    "response: {:?}",
                    String::from_utf8_lossy(&response)
                ));
            }
            Ok(())
        };
        match tokio::time::timeout(EXCHANGE_TIMEOUT, call).await {
            Ok(Ok(())) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => tally.failure(format!("{direction} {}: {e}", clock())),
            Err(_) => tally.failure(format!("{direction} {}: timed out", clock())),
        }
    }
}

/// The wall-clock time (UTC, as meshca logs it), so a failure can be found in its log.
pub fn clock() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let (secs, millis) = (now.as_secs() % 86_400, now.subsec_millis());
    format!(
        "{:02}:{:02}:{:02}.{millis:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

// === impl SpiffePeer ===

impl ServerCertVerifier for SpiffePeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Workload certificates carry both EKUs; the client-side check is the chain without a
        // DNS name, which workload certificates do not have.
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        let leaf = meshca_ca::x509::ParsedCert::from_der(end_entity)
            .map_err(|e| rustls::Error::General(format!("peer certificate: {e}")))?;
        let prefix = format!("spiffe://{}/", self.trust_domain);
        if !leaf.uri_sans().iter().any(|u| u.starts_with(&prefix)) {
            return Err(rustls::Error::General(format!(
                "peer has no SPIFFE id in {}: {:?}",
                self.trust_domain,
                leaf.uri_sans()
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}
