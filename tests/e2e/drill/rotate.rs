//! Rotating meshca's own root under live traffic: `meshca admin authorities rotate` (which
//! waits at each gate) drops no handshake and no renewal; the same steps forced back to back
//! over REST do, which shows the drill can fail.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::mesh::{ders, WORKLOAD_TTL};
use super::run::Drill;

/// The only root of a bundle that has one.
fn single_root(bundle: &str) -> Vec<u8> {
    let roots = ders(bundle);
    assert_eq!(roots.len(), 1, "expected one root: {bundle}");
    roots.into_iter().next().unwrap()
}

fn active_authority(list: &Value) -> String {
    list["authorities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["state"] == "active")
        .and_then(|a| a["id"].as_str())
        .unwrap_or_else(|| panic!("no active authority: {list}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rotate_command_drops_no_handshake_and_no_renewal() {
    let mut drill = Drill::start(tempfile::tempdir().unwrap(), &[]).await;
    let old_root = single_root(&drill.mesh.initial_bundle);
    let old_id = active_authority(&drill.mesh.authorities().await);

    drill.note("meshca admin authorities rotate").await;
    let started = Instant::now();
    let (ok, lines, stderr) = rotate(&drill, "30s").await;
    let took = started.elapsed();
    assert!(
        ok,
        "meshca admin authorities rotate failed after {took:?}: {stderr}\n{}\n{}",
        lines.join("\n"),
        drill.state()
    );
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let steps: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["event"] == "step")
        .filter(|e| ["activate", "taint", "revoke"].contains(&e["step"].as_str().unwrap_or("")))
        .map(|e| {
            (
                e["step"].as_str().unwrap().to_string(),
                e["authority"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let names: Vec<&str> = steps.iter().map(|(s, _)| s.as_str()).collect();
    let activated = events
        .iter()
        .position(|e| e["event"] == "step" && e["step"] == "activate");
    assert!(
        events[..activated.unwrap_or(0)]
            .iter()
            .any(|e| e["event"] == "waiting" && e["step"] == "activate"),
        "the command did not wait at the activation gate: {}",
        lines.join("\n")
    );
    assert_eq!(
        names,
        ["activate", "taint", "revoke"],
        "{}",
        lines.join("\n")
    );
    let new_id = &steps[0].1;
    assert_ne!(new_id, &old_id);
    assert_eq!(steps[1].1, old_id, "taint names the old authority");
    assert_eq!(steps[2].1, old_id, "revoke names the old authority");
    assert_eq!(
        events.last().unwrap()["event"],
        "done",
        "{}",
        lines.join("\n")
    );

    let list = drill.mesh.authorities().await;
    let state = |id: &str| {
        list["authorities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .map(|a| a["state"].clone())
    };
    assert_eq!(state(&old_id), Some(json!("revoked")), "{list}");
    assert_eq!(state(new_id), Some(json!("active")), "{list}");
    let new_root = single_root(&drill.mesh.trust_bundle().await);
    assert_ne!(new_root, old_root);
    drill.assert_only_new_root(&old_root, &new_root).await;
    drill.note("the old root is in no bundle").await;

    let outcome = drill.finish("meshca admin authorities rotate").await;
    println!(
        "drill meshca admin authorities rotate: the command took {:.1} s",
        took.as_secs_f64()
    );
    outcome.assert_clean();
}

/// The negative control: prepare, activate, taint and revoke with `force=true` and no waiting.
/// Workload B still trusts only the old root when A presents a certificate from the new one,
/// and A stops trusting B's certificate the moment the old root is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forced_steps_back_to_back_break_the_drill() {
    let mut drill = Drill::start(tempfile::tempdir().unwrap(), &[]).await;
    let admin = drill.mesh.admin_token();
    let old_id = active_authority(&drill.mesh.authorities().await);

    let (status, prepared) = drill
        .mesh
        .rest()
        .post("/v1/authorities", &admin, json!({"generate": {}}))
        .await;
    assert_eq!(status, 201, "{prepared}");
    let new_id = prepared["id"].as_str().unwrap().to_string();
    drill
        .note("prepared; activating, tainting and revoking with force=true")
        .await;
    for path in [
        format!("/v1/authorities/{new_id}/activate?force=true"),
        format!("/v1/authorities/{old_id}/taint"),
        format!("/v1/authorities/{old_id}/revoke?force=true"),
    ] {
        let (status, body) = drill.mesh.rest().post(&path, &admin, json!({})).await;
        assert_eq!(status, 200, "{path}: {body}");
    }

    // A certificate's lifetime: long enough for every workload to have renewed.
    drill.note("forced through").await;
    tokio::time::sleep(WORKLOAD_TTL + Duration::from_secs(2)).await;
    let outcome = drill.finish("forced steps (negative control)").await;
    println!("{}", outcome.failures);
    outcome.assert_broken();
}

/// Two replicas of one identity, as a Deployment's pods share a service account: B runs as
/// A's `default/default` with a 40 s certificate, so A renews after the prepare long before B
/// does. The activation gate must wait for B too: a gate that counted the identity as renewed
/// once A had (as it first did) activated, and B rejected A's next certificate until B's own
/// renewal (204 failed handshakes each way).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rotate_command_waits_for_every_replica_of_an_identity() {
    let mut drill = Drill::start_with(
        tempfile::tempdir().unwrap(),
        &[],
        ("default", "default"),
        Duration::from_secs(40),
    )
    .await;
    drill.note("meshca admin authorities rotate").await;
    let (ok, lines, stderr) = rotate(&drill, "60s").await;
    assert!(ok, "{stderr}\n{}", lines.join("\n"));
    drill.note("rotated").await;
    let outcome = drill.finish("two replicas of one identity").await;
    outcome.assert_clean();
}

/// `meshca admin authorities rotate --json` with the drill's short settle and `drain`: whether
/// it succeeded, its events, its stderr.
async fn rotate(drill: &Drill, drain: &str) -> (bool, Vec<String>, String) {
    let args = ["authorities", "rotate", "--settle", "2s", "--drain", drain];
    let waits = ["--timeout", "120s", "--poll", "500ms", "--json"];
    drill.mesh.admin(&[&args[..], &waits[..]].concat()).await
}
