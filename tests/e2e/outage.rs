//! PostgreSQL going away under load, through a TCP proxy the test cuts (never the shared server
//! the other tests use): callers get `UNAVAILABLE` saying nothing was issued, `/readyz` turns
//! 503, no certificate leaves the server without its row, and issuance resumes by itself when
//! the database is reachable again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshca_ca::x509::ParsedCert;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::admin::read_token;
use crate::harness::*;

/// Forwards TCP to PostgreSQL until cut: then every open connection is dropped and new ones
/// are closed at once, as when the database host goes away; restoring lets them through again.
struct CuttableProxy {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    _accept: JoinHandle<()>,
}

impl CuttableProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let (down, connections) = (down.clone(), connections.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if down.load(Ordering::SeqCst) {
                        continue; // dropped: the client sees the connection closed
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    connections.lock().unwrap().push(task);
                }
            }
        });
        Self {
            addr,
            down,
            connections,
            _accept: accept,
        }
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// What one call got.
enum Outcome {
    Issued(String),
    Refused(tonic::Code, String),
}

#[tokio::test(flavor = "multi_thread")]
async fn postgresql_going_away_refuses_cleanly_and_issuance_resumes() {
    let Some(url) = meshca_ca::testing::postgres_url("postgresql_outage").await else {
        return;
    };
    let upstream: SocketAddr = "127.0.0.1:5432".parse().unwrap();
    assert!(
        url.contains("@127.0.0.1:5432/"),
        "MESHCA_TEST_POSTGRES_URL is expected on 127.0.0.1:5432: {url}"
    );
    let proxy = CuttableProxy::start(upstream).await;
    let proxied = url.replace("127.0.0.1:5432", &proxy.addr.to_string());

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("meshca-dev");
    let mut env = no_rate_limits();
    env.push(("MESHCA_STORE_URL", proxied));
    let server = dev_server(tmp.path(), &env);
    let root = std::fs::read_to_string(data.join("root-cert.pem")).unwrap();
    let token = std::fs::read_to_string(data.join("dev/token"))
        .unwrap()
        .trim()
        .to_string();

    // Eight callers issue until told to stop, recording every answer.
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..8 {
        let mut client = ca_client(server.grpc, &root, None).await;
        let (token, outcomes, stop) = (token.clone(), outcomes.clone(), stop.clone());
        let csr = WorkloadKey::ec().csr(&["spiffe://cluster.local/ns/default/sa/default"]);
        callers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let outcome = match create_certificate(&mut client, &csr, 3600, Some(&token), None)
                    .await
                {
                    Ok(answer) => {
                        let leaf = ParsedCert::from_der(&der_of(&answer.cert_chain[0])).unwrap();
                        Outcome::Issued(leaf.serial().to_hex())
                    }
                    Err(status) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Outcome::Refused(status.code(), status.message().to_string())
                    }
                };
                outcomes.lock().unwrap().push(outcome);
            }
        }));
    }
    let issued = |outcomes: &Arc<Mutex<Vec<Outcome>>>| {
        outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|o| matches!(o, Outcome::Issued(_)))
            .count()
    };
    let until = async |what: &str, check: &dyn Fn() -> bool| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    until("load under way", &|| issued(&outcomes) >= 100).await;

    // The database goes away.
    proxy.cut();
    let ready = || {
        http_get(server.metrics, "/readyz")
            .map(|(code, _)| code)
            .unwrap_or(0)
    };
    until("/readyz turns 503", &|| ready() == 503).await;
    let cut_at = outcomes.lock().unwrap().len();
    until("refusals during the outage", &|| {
        outcomes.lock().unwrap()[cut_at..]
            .iter()
            .filter(|o| matches!(o, Outcome::Refused(..)))
            .count()
            >= 20
    })
    .await;

    // It comes back: issuance resumes without a restart.
    proxy.restore();
    let restored_at = outcomes.lock().unwrap().len();
    until("issuance resumes", &|| {
        outcomes.lock().unwrap()[restored_at..]
            .iter()
            .any(|o| matches!(o, Outcome::Issued(_)))
    })
    .await;
    until("/readyz turns 200", &|| ready() == 200).await;
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.await.unwrap();
    }

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    // Every refusal while the database was away says it is unavailable and nothing was issued.
    let refusals: Vec<(tonic::Code, String)> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Refused(code, message) => Some((*code, message.clone())),
            Outcome::Issued(_) => None,
        })
        .collect();
    assert!(!refusals.is_empty());
    for (code, message) in &refusals {
        assert_eq!(*code, tonic::Code::Unavailable, "{message}");
        assert!(message.contains("nothing was issued"), "{message}");
    }
    // Every certificate a caller received is on record.
    let rest = Rest::new(server.rest, &root);
    let auditor = read_token(&data, "auditor-token");
    let mut missing = Vec::new();
    let serials: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Issued(serial) => Some(serial),
            Outcome::Refused(..) => None,
        })
        .collect();
    for serial in &serials {
        let (status, _) = rest
            .get(&format!("/v1/certificates/{serial}"), &auditor)
            .await;
        if status != 200 {
            missing.push(serial.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} not on record",
        missing.len(),
        serials.len()
    );
    let (_, verdict) = rest.get("/v1/audit/verify", &auditor).await;
    assert_eq!(verdict["intact"], true, "{verdict}");
}
