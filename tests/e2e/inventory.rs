//! The auditor's view of a real server holding a few thousand certificates: filters, keyset
//! pages that stay stable while certificates keep being issued, streamed exports; revocation
//! (refused at renewal, listed in a CRL that openssl honours); the audit log and its hash chain,
//! which names a row altered behind meshca's back.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::harness::*;

const IDENTITIES: [(&str, &str); 6] = [
    ("ns-0", "sa-0"),
    ("ns-0", "sa-1"),
    ("ns-1", "sa-0"),
    ("ns-1", "sa-1"),
    ("ns-2", "sa-0"),
    ("ns-2", "sa-1"),
];
const PER_IDENTITY: usize = 350;

struct Server {
    process: MeshcaProcess,
    root: String,
    rest: Rest,
    issuer: JwtKey,
    dir: std::path::PathBuf,
}

const ADMIN: &str = "admin-token-for-the-inventory-test";
const AUDITOR: &str = "auditor-token-for-the-inventory-test";

async fn start(dir: &Path, issuer: JwtKey) -> Server {
    let d = dir.display();
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let rest: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    std::fs::write(dir.join("jwks.json"), jwks(&[&issuer]).to_string()).unwrap();
    std::fs::write(
        dir.join("meshca.toml"),
        format!(
            r#"
data_dir = "{d}/data"
[grpc]
listen = "{grpc}"
ip_sans = ["127.0.0.1"]
[metrics]
listen = "{metrics}"
[rest]
listen = "{rest}"
tokens = [
  {{ name = "ops", sha256 = "{admin}", role = "admin" }},
  {{ name = "audit", sha256 = "{auditor}", role = "auditor" }},
]
[auth.clusters.Kubernetes]
mode = "jwks"
issuer = "{K8S_ISSUER}"
jwks_file = "{d}/jwks.json"
"#,
            admin = sha256_hex(ADMIN),
            auditor = sha256_hex(AUDITOR),
        ),
    )
    .unwrap();
    let config = dir.join("meshca.toml").display().to_string();
    // 2,100 issuances from one address at once: a load generator, not a tenant.
    let mut env = no_rate_limits();
    env.push(("MESHCA_REST_LISTEN", rest.to_string()));
    let process = MeshcaProcess::start(&["server", "--config", &config], &env, dir, grpc, metrics);
    let root = fetch_root(rest).await;
    Server {
        rest: Rest::new(rest, &root),
        root,
        process,
        issuer,
        dir: dir.to_path_buf(),
    }
}

/// The bundle from the public endpoint, trusting the server blindly this once (the test's
/// bootstrap; operators get the root out of band).
async fn fetch_root(rest: SocketAddr) -> String {
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    client
        .get(format!("https://{rest}/v1/trust-bundle"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn id(ns: &str, sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
}

async fn list_all(server: &Server, query: &str, page: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/certificates?{query}&limit={page}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = server.rest.get(&path, AUDITOR).await;
        assert_eq!(status, 200, "{path}: {body}");
        out.extend(body["certificates"].as_array().unwrap().iter().cloned());
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

#[tokio::test]
async fn inventory_revocation_crl_and_audit_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = start(tmp.path(), JwtKey::es256("inv")).await;

    // A few thousand certificates across six identities, eight callers at a time.
    let channel = tls_channel(server.process.grpc, &server.root, None).await;
    let keys = Arc::new(WorkloadKey::ec());
    let mut tasks = Vec::new();
    for (ns, sa) in IDENTITIES {
        let token = server.issuer.mint(&sa_claims(K8S_ISSUER, ns, sa));
        for chunk in 0..2 {
            let (channel, token, keys) = (channel.clone(), token.clone(), keys.clone());
            let spiffe = id(ns, sa);
            tasks.push(tokio::spawn(async move {
                let mut client = meshca_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient::new(channel);
                let csr = keys.csr(&[&spiffe]);
                let mut chains = Vec::new();
                for _ in 0..PER_IDENTITY / 2 {
                    let response = create_certificate(&mut client, &csr, 0, Some(&token), None)
                        .await
                        .unwrap();
                    chains.push(response.cert_chain);
                }
                let _ = chunk;
                chains
            }));
        }
    }
    let mut issued = Vec::new();
    for task in tasks {
        issued.extend(task.await.unwrap());
    }
    let total = IDENTITIES.len() * PER_IDENTITY;
    assert_eq!(issued.len(), total);

    // Filters.
    let ns1 = list_all(&server, "namespace=ns-1", 1000).await;
    assert_eq!(ns1.len(), 2 * PER_IDENTITY);
    assert!(ns1.iter().all(|c| c["namespace"] == "ns-1"));
    let exact = list_all(&server, &format!("spiffe_id={}", id("ns-0", "sa-1")), 1000).await;
    assert_eq!(exact.len(), PER_IDENTITY);
    // A prefix; `_` in it is a character, not a LIKE wildcard.
    let prefix = list_all(&server, "spiffe_id=spiffe://cluster.local/ns/ns-2/*", 1000).await;
    assert_eq!(prefix.len(), 2 * PER_IDENTITY);
    assert!(
        list_all(&server, "spiffe_id=spiffe://cluster.local/ns/ns_2/*", 1000)
            .await
            .is_empty()
    );
    let by_sa = list_all(&server, "namespace=ns-0&service_account=sa-0", 1000).await;
    assert_eq!(by_sa.len(), PER_IDENTITY);
    assert!(list_all(&server, "namespace=ns-0&status=expired", 1000)
        .await
        .is_empty());
    let future = "2999-01-01T00:00:00Z";
    assert_eq!(
        list_all(
            &server,
            &format!("expires_before={future}&namespace=ns-0&service_account=sa-1"),
            1000
        )
        .await
        .len(),
        PER_IDENTITY
    );
    let (status, body) = server
        .rest
        .get("/v1/certificates?status=bogus", AUDITOR)
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = server
        .rest
        .get("/v1/certificates?limit=1001", AUDITOR)
        .await;
    assert_eq!(status, 400);

    // Keyset pages, newest first, stable while issuance continues: every certificate that
    // existed when paging began is seen exactly once.
    let token = server.issuer.mint(&sa_claims(K8S_ISSUER, "ns-9", "late"));
    let writer = {
        let channel = channel.clone();
        let csr = keys.csr(&[&id("ns-9", "late")]);
        tokio::spawn(async move {
            let mut client = meshca_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient::new(channel);
            for _ in 0..100 {
                create_certificate(&mut client, &csr, 0, Some(&token), None)
                    .await
                    .unwrap();
            }
        })
    };
    let paged = list_all(&server, "spiffe_id=spiffe://cluster.local/ns/ns-*", 257).await;
    writer.await.unwrap();
    let serials: std::collections::HashSet<&str> = paged
        .iter()
        .map(|c| c["serial"].as_str().unwrap())
        .collect();
    assert_eq!(serials.len(), paged.len(), "no duplicates across pages");
    assert!(paged.len() >= total, "{} < {total}", paged.len());
    // Newest first (by insertion; concurrent callers may commit a second out of order).
    let issued_at: Vec<std::time::SystemTime> = paged
        .iter()
        .map(|c| humantime::parse_rfc3339(c["issued_at"].as_str().unwrap()).unwrap())
        .collect();
    assert!(issued_at
        .windows(2)
        .all(|w| w[0] + std::time::Duration::from_secs(2) >= w[1]));
    // `issued_at` has one-second resolution and a fast server issues all of these within one
    // second, so order is checked by identity: every late certificate was issued after the first
    // batch, so the newest row is a late one and the oldest is not.
    let late = id("ns-9", "late");
    assert_ne!(paged.last().unwrap()["spiffe_id"], late.as_str());
    let (status, newest) = server
        .rest
        .get(
            "/v1/certificates?spiffe_id=spiffe://cluster.local/ns/ns-*&limit=1",
            AUDITOR,
        )
        .await;
    assert_eq!(status, 200, "{newest}");
    assert_eq!(newest["certificates"][0]["spiffe_id"], late.as_str());

    // Export streams the same rows as ndjson and CSV.
    let response = server
        .rest
        .client
        .get(format!(
            "{}/v1/certificates/export?namespace=ns-1",
            server.rest.base
        ))
        .bearer_auth(AUDITOR)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let ndjson = response.text().await.unwrap();
    assert_eq!(ndjson.lines().count(), 2 * PER_IDENTITY);
    for line in ndjson.lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        assert_eq!(row["namespace"], "ns-1");
    }
    let csv = server
        .rest
        .client
        .get(format!(
            "{}/v1/certificates/export?namespace=ns-1&format=csv",
            server.rest.base
        ))
        .bearer_auth(AUDITOR)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(csv.starts_with("serial,spiffe_id,namespace,"));
    assert_eq!(csv.lines().count(), 1 + 2 * PER_IDENTITY);

    // Revocation: admins only, a known reason, once.
    let victim = &issued[0];
    let leaf = meshca_ca::x509::ParsedCert::many_from_pem(victim[0].as_bytes())
        .unwrap()
        .remove(0);
    let serial = leaf.serial().to_hex();
    let path = format!("/v1/certificates/{serial}/revoke");
    let (status, _) = server
        .rest
        .post(&path, AUDITOR, json!({"reason": "keyCompromise"}))
        .await;
    assert_eq!(status, 403);
    let (status, body) = server
        .rest
        .post(&path, ADMIN, json!({"reason": "stolen"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("keyCompromise"));
    let (status, body) = server
        .rest
        .post(
            "/v1/certificates/00ff00/revoke",
            ADMIN,
            json!({"reason": "keyCompromise"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = server
        .rest
        .post(&path, ADMIN, json!({"reason": "keyCompromise"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "revoked");
    assert_eq!(body["revocation"]["reason"], "keyCompromise");
    let (status, _) = server
        .rest
        .post(&path, ADMIN, json!({"reason": "keyCompromise"}))
        .await;
    assert_eq!(status, 409, "revoked once");
    let (_, shown) = server
        .rest
        .get(&format!("/v1/certificates/{serial}"), AUDITOR)
        .await;
    assert_eq!(shown["status"], "revoked");
    assert_eq!(shown["pem"], victim[0]);
    assert_eq!(list_all(&server, "status=revoked", 100).await.len(), 1);

    // Renewal with the revoked certificate is refused; with a sibling it works.
    let key_pem = keys.key_pem();
    let mut renewing = ca_client(
        server.process.grpc,
        &server.root,
        Some((&victim[..victim.len() - 1].concat(), &key_pem)),
    )
    .await;
    let csr = keys.csr(&[&id(IDENTITIES[0].0, IDENTITIES[0].1)]);
    let refused = create_certificate(&mut renewing, &csr, 0, None, None)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let sibling = issued.iter().find(|c| c[0] != victim[0]).unwrap();
    let mut renewing = ca_client(
        server.process.grpc,
        &server.root,
        Some((&sibling[..sibling.len() - 1].concat(), &key_pem)),
    )
    .await;
    let sibling_id = meshca_ca::x509::ParsedCert::many_from_pem(sibling[0].as_bytes())
        .unwrap()
        .remove(0)
        .uri_sans()
        .remove(0);
    create_certificate(&mut renewing, &keys.csr(&[&sibling_id]), 0, None, None)
        .await
        .expect("an unrevoked certificate renews");

    // The same through grpcio (gRPC's C core), renewing over mTLS as istio-agent does.
    if let Some(python) = third_party_python("inventory_revocation_crl_and_audit_chain") {
        let dir = &server.dir;
        let (root, key) = (dir.join("root.pem"), dir.join("workload-key.pem"));
        std::fs::write(&root, &server.root).unwrap();
        std::fs::write(&key, &key_pem).unwrap();
        let grpcio_renews = |chain: &[String], id: &str, name: &str| {
            let (cert, csr) = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.csr")),
            );
            std::fs::write(&cert, chain[..chain.len() - 1].concat()).unwrap();
            std::fs::write(&csr, keys.csr(&[id])).unwrap();
            let credential = GrpcioCredential::ClientCert {
                chain: &cert,
                key: &key,
            };
            let answers =
                grpcio_create_certificate(&python, server.process.grpc, &root, credential, &csr, 1);
            answers[0].clone()
        };
        let refused = grpcio_renews(victim, &id(IDENTITIES[0].0, IDENTITIES[0].1), "victim");
        assert_eq!(refused["code"], "UNAUTHENTICATED", "{refused}");
        let renewed = grpcio_renews(sibling, &sibling_id, "sibling");
        assert_eq!(renewed["code"], "OK", "{renewed}");
    }

    // The CRL lists it, and openssl refuses it with -crl_check while the sibling passes.
    let crl = server
        .rest
        .client
        .get(format!("{}/v1/crl", server.rest.base))
        .bearer_auth(AUDITOR)
        .header("accept", "application/x-pem-file")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dir = &server.dir;
    std::fs::write(dir.join("crl.pem"), &crl).unwrap();
    let text = std::process::Command::new("openssl")
        .args(["crl", "-noout", "-text", "-in"])
        .arg(dir.join("crl.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).to_uppercase();
    assert!(text.contains(&serial.to_uppercase()), "{text}");
    assert!(text.contains("KEY COMPROMISE"), "{text}");
    assert!(text.contains("NEXT UPDATE"), "{text}");
    let crl_verify = |leaf: &str| {
        std::fs::write(dir.join("root.pem"), &server.root).unwrap();
        std::fs::write(dir.join("leaf.pem"), leaf).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["verify", "-crl_check", "-CAfile"])
            .arg(dir.join("root.pem"))
            .arg("-CRLfile")
            .arg(dir.join("crl.pem"))
            .arg(dir.join("leaf.pem"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, output) = crl_verify(&victim[0]);
    assert!(!ok && output.contains("revoked"), "{output}");
    let (ok, output) = crl_verify(&sibling[0]);
    assert!(ok, "{output}");

    // The audit log: issuances, the revocation, refused calls, failed REST authentication.
    let (_, revocations) = server
        .rest
        .get("/v1/audit?action=certificate.revoke", AUDITOR)
        .await;
    let events = revocations["events"].as_array().unwrap();
    assert_eq!(
        events.len(),
        4,
        "400, 404, the success, 409 (a 403 is rest.authenticate): {revocations}"
    );
    let succeeded: Vec<&Value> = events
        .iter()
        .filter(|e| e["outcome"] == "success")
        .collect();
    assert_eq!(succeeded.len(), 1);
    assert_eq!(
        succeeded[0]["actor"],
        json!({"method": "token", "principal": "ops"})
    );
    assert_eq!(succeeded[0]["target"], serial);
    // Denials are recorded without holding up the answer: give the write a moment.
    assert!(
        server
            .rest
            .audit_events_until("action=rest.authenticate", AUDITOR, |n| n > 0)
            .await
            > 0,
        "the failed REST authentication is on record"
    );
    assert!(
        server
            .rest
            .audit_events_until("action=certificate.issue&outcome=denied", AUDITOR, |n| n
                > 0)
            .await
            > 0,
        "the refused renewal is on record"
    );
    let (status, verdict) = server.rest.get("/v1/audit/verify", AUDITOR).await;
    assert_eq!(status, 200);
    assert_eq!(verdict["intact"], true, "{verdict}");
    assert!(verdict["checked"].as_i64().unwrap() > total as i64);

    // Someone with database access rewrites history: the chain names the row.
    server.process.stop();
    let url = format!("sqlite://{}", server.dir.join("data/meshca.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let blocked = sqlx::query("UPDATE audit_events SET outcome = 'refused' WHERE seq = 42")
        .execute(&pool)
        .await;
    assert!(blocked.is_err(), "meshca's own schema refuses updates");
    sqlx::query("DROP TRIGGER audit_events_no_update")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET outcome = 'refused' WHERE seq = 42")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let issuer = std::mem::replace(&mut server.issuer, JwtKey::es256("unused"));
    let server = start(tmp.path(), issuer).await;
    let (_, verdict) = server.rest.get("/v1/audit/verify", AUDITOR).await;
    assert_eq!(verdict["intact"], false, "{verdict}");
    assert_eq!(verdict["first_broken"]["seq"], 42, "{verdict}");

    // And from the command line: a non-zero exit naming the event.
    std::fs::write(tmp.path().join("bundle.pem"), &server.root).unwrap();
    let out = std::process::Command::new(meshca_bin())
        .args(["admin", "--url", &server.rest.base, "--ca"])
        .arg(tmp.path().join("bundle.pem"))
        .args(["audit", "verify"])
        .env("MESHCA_ADMIN_TOKEN", AUDITOR)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("broken at event 42"), "{stderr}");
}
