//! Workload A's proxy: an SDS client shaped like Envoy's (envoy-types, one stream for
//! `default` and `ROOTCA`, every push ACKed) on `meshca agent`'s socket, keeping the latest
//! certificate, key and bundle and publishing them as one credential.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource, Node};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use meshca_agent::sds::SECRET_TYPE_URL;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use super::traffic::{Credential, Current};

/// The SDS client and what it was last sent.
#[derive(Debug)]
pub struct Envoy {
    pub current: Current,
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Seen {
    chain: Option<String>,
    key: Option<String>,
    roots: Option<String>,
    /// `default` pushes with a new certificate.
    certificates: u64,
    /// Streams that ended or pushes Envoy would reject.
    problems: Vec<String>,
}

// === impl Envoy ===

impl Envoy {
    pub fn start(socket: PathBuf) -> Self {
        let (tx, current) = watch::channel(None);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = tokio::spawn(subscribe(socket, tx, seen.clone()));
        Self {
            current,
            seen,
            task,
        }
    }

    /// The bundle of the last `ROOTCA` push.
    pub fn roots_pem(&self) -> Option<String> {
        self.seen.lock().unwrap().roots.clone()
    }

    /// How many certificates `default` has carried.
    pub fn certificates(&self) -> u64 {
        self.seen.lock().unwrap().certificates
    }

    pub fn problems(&self) -> Vec<String> {
        self.seen.lock().unwrap().problems.clone()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn request(response: Option<&DiscoveryResponse>) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: response.map(|r| r.version_info.clone()).unwrap_or_default(),
        response_nonce: response.map(|r| r.nonce.clone()).unwrap_or_default(),
        node: response.is_none().then(|| Node {
            id: "sidecar~10.0.0.7~a-0.default~default.svc.cluster.local".into(),
            ..Default::default()
        }),
        resource_names: vec!["default".into(), "ROOTCA".into()],
        type_url: SECRET_TYPE_URL.into(),
        ..Default::default()
    }
}

fn inline(source: &Option<DataSource>) -> Result<String, String> {
    match source.as_ref().and_then(|s| s.specifier.as_ref()) {
        Some(data_source::Specifier::InlineBytes(b)) => {
            String::from_utf8(b.clone()).map_err(|e| e.to_string())
        }
        other => Err(format!("expected inline bytes, got {other:?}")),
    }
}

/// Applies one push to `seen`.
fn apply(response: &DiscoveryResponse, seen: &mut Seen) -> Result<(), String> {
    for any in &response.resources {
        let secret = Secret::decode(any.value.as_slice()).map_err(|e| e.to_string())?;
        match (secret.name.as_str(), secret.r#type) {
            ("default", Some(secret::Type::TlsCertificate(tls))) => {
                let chain = inline(&tls.certificate_chain)?;
                if seen.chain.as_ref() != Some(&chain) {
                    seen.certificates += 1;
                }
                seen.chain = Some(chain);
                seen.key = Some(inline(&tls.private_key)?);
            }
            ("ROOTCA", Some(secret::Type::ValidationContext(v))) => {
                seen.roots = Some(inline(&v.trusted_ca)?);
            }
            other => return Err(format!("unexpected secret {other:?}")),
        }
    }
    Ok(())
}

/// Keeps one SDS stream open (reconnecting if it ends) and publishes every complete credential.
async fn subscribe(
    socket: PathBuf,
    tx: watch::Sender<Option<Arc<Credential>>>,
    seen: Arc<Mutex<Seen>>,
) {
    let problem = |seen: &Mutex<Seen>, what: String| seen.lock().unwrap().problems.push(what);
    loop {
        let channel = match meshca_agent::workload_api::unix_channel_as(
            socket.clone(),
            meshca_agent::authority::StackAuthority::PercentEncodedPath,
        )
        .await
        {
            Ok(channel) => channel,
            Err(_) => {
                // The agent is still starting.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (requests, rx) = mpsc::channel(8);
        let mut sds = SecretDiscoveryServiceClient::new(channel);
        let mut responses = match sds.stream_secrets(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                problem(&seen, format!("StreamSecrets refused: {status}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let _ = requests.send(request(None)).await;
        loop {
            let response = match responses.message().await {
                Ok(Some(response)) => response,
                Ok(None) => break problem(&seen, "the SDS stream ended".into()),
                Err(status) => break problem(&seen, format!("the SDS stream failed: {status}")),
            };
            let credential = {
                let mut seen = seen.lock().unwrap();
                if let Err(e) = apply(&response, &mut seen) {
                    seen.problems.push(format!("push rejected: {e}"));
                    continue;
                }
                match (&seen.chain, &seen.key, &seen.roots) {
                    (Some(chain), Some(key), Some(roots)) => {
                        Some(Credential::from_pem(chain, key, roots))
                    }
                    _ => None,
                }
            };
            match credential {
                Some(Ok(credential)) => {
                    tx.send_replace(Some(Arc::new(credential)));
                }
                Some(Err(e)) => problem(&seen, format!("unusable push: {e}")),
                None => {}
            }
            let _ = requests.send(request(Some(&response))).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
