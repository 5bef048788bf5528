//! Faults with nothing lost. `kill -9` under load, on SQLite and on PostgreSQL: every
//! certificate a client received before the kill is in the inventory after the restart, and
//! the audit chain verifies.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshca_ca::x509::ParsedCert;

use crate::admin::read_token;
use crate::harness::*;

/// Callers issuing at once; each records the serial of every certificate it received.
const CALLERS: usize = 16;

/// Issues in a loop on `CALLERS` connections until the server goes away; returns the serials
/// received (every answer, not only those the store has confirmed to someone else).
async fn issue_until_killed(server: &mut MeshcaProcess, data: &Path) -> Vec<String> {
    let root = std::fs::read_to_string(data.join("root-cert.pem")).unwrap();
    let token = std::fs::read_to_string(data.join("dev/token")).unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let mut client = ca_client(server.grpc, &root, None).await;
        let (token, received) = (token.trim().to_string(), received.clone());
        let csr = WorkloadKey::ec().csr(&["spiffe://cluster.local/ns/default/sa/default"]);
        callers.push(tokio::spawn(async move {
            // Refusals and transport errors end the loop: after the kill, every call fails.
            while let Ok(answer) =
                create_certificate(&mut client, &csr, 3600, Some(&token), None).await
            {
                let leaf = ParsedCert::from_der(&der_of(&answer.cert_chain[0])).unwrap();
                received.lock().unwrap().push(leaf.serial().to_hex());
            }
        }));
    }
    // Kill once the load is well under way, mid-stream for most callers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while received.lock().unwrap().len() < 300 {
        assert!(tokio::time::Instant::now() < deadline, "no load built up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop();
    for caller in callers {
        caller.await.unwrap();
    }
    let serials = received.lock().unwrap().clone();
    serials
}

async fn nothing_received_is_lost(store_env: Vec<(&'static str, String)>) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("meshca-dev");
    let mut env = no_rate_limits();
    env.extend(store_env);
    let mut server = dev_server(tmp.path(), &env);
    let received = issue_until_killed(&mut server, &data).await;

    let restarted = dev_server(tmp.path(), &env);
    let root = std::fs::read_to_string(data.join("root-cert.pem")).unwrap();
    let rest = Rest::new(restarted.rest, &root);
    let auditor = read_token(&data, "auditor-token");
    let mut missing = Vec::new();
    for serial in &received {
        let (status, _) = rest
            .get(&format!("/v1/certificates/{serial}"), &auditor)
            .await;
        if status != 200 {
            missing.push((serial.clone(), status));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} received certificates are not on record: {missing:?}",
        missing.len(),
        received.len()
    );
    // Negative control: a serial that was never issued is reported missing by the same check.
    let mut never = received[0].clone().into_bytes();
    let last = never.len() - 1;
    never[last] = if never[last] == b'0' { b'1' } else { b'0' };
    let never = String::from_utf8(never).unwrap();
    if !received.contains(&never) {
        let (status, _) = rest
            .get(&format!("/v1/certificates/{never}"), &auditor)
            .await;
        assert_eq!(status, 404, "{never} was never issued");
    }
    let (status, verdict) = rest.get("/v1/audit/verify", &auditor).await;
    assert_eq!(status, 200, "{verdict}");
    assert_eq!(verdict["intact"], true, "{verdict}");
    assert!(
        verdict["checked"].as_u64().unwrap() >= received.len() as u64,
        "{verdict}"
    );
    // Issuance goes on after the restart.
    let mut client = ca_client(restarted.grpc, &root, None).await;
    let token = std::fs::read_to_string(data.join("dev/token")).unwrap();
    let csr = WorkloadKey::ec().csr(&["spiffe://cluster.local/ns/default/sa/default"]);
    create_certificate(&mut client, &csr, 3600, Some(token.trim()), None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_nine_under_load_loses_nothing_on_sqlite() {
    nothing_received_is_lost(Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_nine_under_load_loses_nothing_on_postgresql() {
    let Some(url) = meshca_ca::testing::postgres_url("kill_nine_postgresql").await else {
        return;
    };
    nothing_received_is_lost(vec![("MESHCA_STORE_URL", url)]).await;
}
