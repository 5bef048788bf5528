//! `meshca admin`, the real binary, against a real `meshca server --dev`: every command through
//! the REST API with roles and gates, and no setup needed beside a dev server.

use serde_json::Value;

use crate::admin::read_token;
use crate::harness::*;

/// `meshca admin` against a dev server: tables, `--json`, rotation steps, errors.
#[tokio::test]
async fn admin_cli_drives_the_api() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("meshca-dev");
    let server = dev_server(tmp.path(), &[]);
    let admin = read_token(&data, "admin-token");
    let auditor = read_token(&data, "auditor-token");
    let ca_file = tmp.path().join("ca.pem");
    std::fs::copy(data.join("root-cert.pem"), &ca_file).unwrap();
    let cli = |token: &str, args: &[&str]| {
        let out = std::process::Command::new(meshca_bin())
            .arg("admin")
            .args(["--url", &format!("https://{}", server.rest)])
            .arg("--ca")
            .arg(&ca_file)
            .args(args)
            .env("MESHCA_ADMIN_TOKEN", token)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    let (ok, table, err) = cli(&auditor, &["authorities", "list"]);
    assert!(ok, "{err}");
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.lines().nth(1).unwrap().contains("active"), "{table}");

    let (ok, out, err) = cli(
        &admin,
        &["--json", "authorities", "prepare", "--key-type", "ec-p384"],
    );
    assert!(ok, "{err}");
    let prepared: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(prepared["state"], "prepared");
    assert_eq!(prepared["key_type"], "ec-p384");
    let id = prepared["id"].as_str().unwrap();
    // Once it is activated the server presents a certificate from the new authority: save the
    // bundle (now both roots) while the old root still verifies the server, as operators do.
    let root = std::fs::read_to_string(&ca_file).unwrap();
    let (_, bundle) = Rest::new(server.rest, &root)
        .call(reqwest::Method::GET, "/v1/trust-bundle", None, None)
        .await;
    std::fs::write(&ca_file, bundle.as_str().unwrap()).unwrap();

    let (ok, _, err) = cli(&auditor, &["authorities", "activate", id]);
    assert!(!ok);
    assert!(err.contains("403"), "{err}");
    let (ok, _, err) = cli(&admin, &["authorities", "taint", id]);
    assert!(!ok);
    assert!(err.contains("409") && err.contains("needs it old"), "{err}");
    // Its root joined the bundle moments ago (rotation.settle is 5 minutes): the gate says so.
    let (ok, _, err) = cli(&admin, &["authorities", "activate", id]);
    assert!(!ok);
    assert!(
        err.contains("409") && err.contains("rotation.settle is 5m"),
        "{err}"
    );
    let (ok, out, err) = cli(&admin, &["authorities", "activate", id, "--force"]);
    assert!(ok, "{err}");
    assert!(out.contains("active"), "{out}");

    // The dev server's own serving certificate is on record.
    let (ok, out, err) = cli(&auditor, &["certs", "list", "--limit", "5"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("SERIAL"), "{out}");
    let (ok, out, err) = cli(&auditor, &["certs", "export", "--format", "csv"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("serial,spiffe_id"), "{out}");

    let (ok, pem, err) = cli(&auditor, &["crl"]);
    assert!(ok, "{err}");
    assert!(pem.starts_with("-----BEGIN X509 CRL-----"), "{pem}");

    let (ok, out, err) = cli(
        &auditor,
        &["audit", "list", "--action", "authority.activate"],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("authority.activate") && out.contains("dev-admin"),
        "{out}"
    );
    let (ok, out, err) = cli(&auditor, &["audit", "verify"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("audit log intact"), "{out}");

    let (ok, _, err) = cli("not-a-token", &["authorities", "list"]);
    assert!(!ok);
    assert!(err.contains("401"), "{err}");
}

/// Beside a dev server, with no token, CA or URL configured, `meshca admin` uses the dev
/// server's admin token and root from `./meshca-dev` and says so on stderr, so the README's
/// first admin command works as it stands. Only the URL is given here: the test's dev server
/// listens on a port of its own, not the default 8443.
#[tokio::test]
async fn admin_cli_beside_a_dev_server_needs_no_setup() {
    let tmp = tempfile::tempdir().unwrap();
    let server = dev_server(tmp.path(), &[]);
    let url = format!("https://{}", server.rest);
    let cli = |token: Option<&str>, args: &[&str]| {
        let mut command = std::process::Command::new(meshca_bin());
        command
            .arg("admin")
            .args(args)
            .current_dir(tmp.path())
            .env("MESHCA_ADMIN_URL", &url)
            .env_remove("MESHCA_ADMIN_TOKEN")
            .env_remove("MESHCA_ADMIN_CA")
            .env_remove("MESHCA_ADMIN_IDENTITY");
        if let Some(token) = token {
            command.env("MESHCA_ADMIN_TOKEN", token);
        }
        let out = command.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    let (ok, table, err) = cli(None, &["authorities", "list"]);
    assert!(ok, "{err}");
    assert_eq!(
        err,
        format!(
            "meshca admin: beside a dev server: token ./meshca-dev/dev/admin-token, \
             CA ./meshca-dev/root-cert.pem (for {url})\n"
        )
    );
    assert!(table.lines().nth(1).unwrap().contains("active"), "{table}");

    // What is given still wins: the auditor's token may not prepare; the root is still found.
    let auditor = read_token(&tmp.path().join("meshca-dev"), "auditor-token");
    let (ok, _, err) = cli(Some(&auditor), &["authorities", "prepare"]);
    assert!(!ok);
    assert!(
        err.starts_with(&format!(
            "meshca admin: beside a dev server: CA ./meshca-dev/root-cert.pem (for {url})\n"
        )) && err.contains("403"),
        "{err}"
    );
}

/// `authorities rotate` keeps its state in the server: a wait that times out exits non-zero
/// naming what it waited for and leaves the prepared authority as it is; running it again
/// continues with that authority (no second prepare) to the end.
#[tokio::test]
async fn rotate_times_out_leaving_the_state_and_a_rerun_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("meshca-dev");
    let server = dev_server(
        tmp.path(),
        &[
            ("MESHCA_ROTATION_SETTLE", "4s".to_string()),
            // Its own serving certificates are live certificates too: keep the revoke near.
            ("MESHCA_GRPC_SERVING_CERT_TTL", "8s".to_string()),
        ],
    );
    let admin = read_token(&data, "admin-token");
    let rotate = |args: &[&str]| {
        let out = std::process::Command::new(meshca_bin())
            .arg("admin")
            .args(["--url", &format!("https://{}", server.rest)])
            .arg("--ca")
            .arg(data.join("root-cert.pem"))
            .args([
                "--json",
                "authorities",
                "rotate",
                "--settle",
                "0s",
                "--poll",
                "200ms",
            ])
            .args(args)
            .env("MESHCA_ADMIN_TOKEN", &admin)
            .output()
            .unwrap();
        let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.success(), events, stderr)
    };

    let (ok, events, stderr) = rotate(&["--timeout", "1s"]);
    assert!(!ok, "a wait longer than --timeout fails");
    assert!(
        stderr.contains("waiting to activate") && stderr.contains("rotation.settle is 4s"),
        "{stderr}"
    );
    assert_eq!(events[0]["step"], "prepare", "{events:?}");
    let prepared = events[0]["authority"].as_str().unwrap().to_string();
    assert_eq!(events.last().unwrap()["event"], "timeout", "{events:?}");

    let (ok, events, stderr) = rotate(&["--timeout", "90s", "--drain", "0s"]);
    assert!(ok, "{stderr}\n{events:?}");
    let steps: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["event"] == "step")
        .map(|e| {
            (
                e["step"].as_str().unwrap(),
                e["authority"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(steps[0], ("activate", prepared.as_str()), "{events:?}");
    assert_eq!(
        steps.iter().map(|s| s.0).collect::<Vec<_>>(),
        ["activate", "taint", "revoke"],
        "continued, no second prepare: {events:?}"
    );
    let done = events.last().unwrap();
    assert_eq!(done["event"], "done");
    assert_eq!(done["authority"], prepared.as_str());
}
