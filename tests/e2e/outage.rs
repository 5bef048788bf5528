//! PostgreSQL going away under load, through a TCP proxy the test cuts (never the shared server
//! the other tests use): callers get `UNAVAILABLE` saying nothing was issued, `/readyz` turns
//! 503, no certificate leaves the server without its row, and issuance resumes by itself when
//! the database is reachable again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::harness::*;
use crate::load::{all_on_record, refusals_say_nothing_was_issued, serials, until, Load, Outcome};

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

    // Eight callers issue until told to stop, recording every answer.
    let load = Load::start(server.grpc, &data, 8, false).await;
    let within = Duration::from_secs(30);
    until("load under way", within, &|| load.issued_since(0) >= 100).await;

    // The database goes away.
    proxy.cut();
    let ready = || {
        http_get(server.metrics, "/readyz")
            .map(|(code, _)| code)
            .unwrap_or(0)
    };
    until("/readyz turns 503", within, &|| ready() == 503).await;
    let cut_at = load.len();
    until("refusals during the outage", within, &|| {
        load.refused_since(cut_at) >= 20
    })
    .await;

    // It comes back: issuance resumes without a restart.
    proxy.restore();
    let restored_at = load.len();
    until("issuance resumes", within, &|| {
        load.issued_since(restored_at) > 0
    })
    .await;
    until("/readyz turns 200", within, &|| ready() == 200).await;
    let outcomes = load.finish().await;

    // Every refusal while the database was away says it is unavailable and nothing was
    // issued; every certificate a caller received is on record.
    assert!(outcomes.iter().any(|o| matches!(o, Outcome::Refused(..))));
    refusals_say_nothing_was_issued(&outcomes);
    all_on_record(server.rest, &data, &serials(&outcomes)).await;
}
