//! The web console in a real browser: headless Chromium driven over WebDriver (Debian's
//! `chromium` + `chromium-driver`) against `meshca server --dev`, as an auditor and then an
//! admin would use it. Screenshots of each page go to `target/e2e-output/console/`.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::admin::read_token;
use crate::harness::*;

/// What an attacker can put in the audit log: a token the dev issuer signed for a service
/// account with this name is refused, and its subject is recorded as the caller's principal.
const PAYLOAD: &str =
    r#"x<img src=x onerror="document.title='owned'"><script>document.title='owned'</script>"#;

/// The browser and its driver. The driver leads a process group of its own, which the
/// browsers it starts join; the whole group is killed on drop, so no Chromium outlives the test
/// (killing chromedriver alone left its browser running, ~400 MB, after every run).
struct Browser {
    client: Client,
    driver: Child,
    base: String,
    shots: PathBuf,
}

/// `chromium` and `chromedriver` on PATH, as `.ci/run` installs them. Missing in CI (`CI` set)
/// is a failure; locally the test is skipped with the reason printed.
fn browser_installed(test: &str) -> bool {
    let found = ["chromium", "chromedriver"].iter().all(|tool| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: chromium and chromedriver are missing (apt-get install chromium chromium-driver)"
        );
        eprintln!("{test}: skipped: apt-get install chromium chromium-driver to run it");
    }
    found
}

// === impl Browser ===

impl Browser {
    async fn start(rest: SocketAddr) -> Self {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        reap_with_this_process(driver.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver never listened");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({
            "browserName": "chrome",
            // The dev server's REST certificate chains to its own dev root.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = ClientBuilder::rustls()
            .unwrap()
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-output/console");
        std::fs::create_dir_all(&shots).unwrap();
        Self {
            client,
            driver,
            base: format!("https://{rest}"),
            shots,
        }
    }

    async fn go(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap();
    }

    async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_string()
    }

    async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// The page's `<main>` as text.
    async fn main_text(&self) -> String {
        self.client
            .find(Locator::Css("main"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn script(&self, script: &str) -> Value {
        self.client.execute(script, Vec::new()).await.unwrap()
    }

    async fn sign_in(&self, token: &str) {
        self.go("/ui/").await;
        assert_eq!(
            self.path().await,
            "/ui/sign-in",
            "signed out, the console asks"
        );
        let field = self.client.find(Locator::Id("token")).await.unwrap();
        field.send_keys(token).await.unwrap();
        self.click("button[value=token]").await;
        assert_eq!(self.path().await, "/ui/", "{}", self.main_text().await);
    }

    /// Clicks what `css` finds and waits until the page it leads to has loaded (every click
    /// here navigates: a link, or a form's button).
    async fn click(&self, css: &str) {
        self.script("window.__meshcaOldPage = true; return null")
            .await;
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let loaded = self
                .script("return !window.__meshcaOldPage && document.readyState === 'complete'")
                .await;
            if loaded == json!(true) {
                return;
            }
            assert!(Instant::now() < deadline, "{css}: no new page within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POSTs a form body from the page itself (same origin, the page's CSRF token), as a
    /// hand-made request would: the status it gets.
    async fn post_from_page(&self, path: &str, body: &str) -> i64 {
        let script = "const [path, body, done] = arguments; \
            fetch(path, {method: 'POST', body: body + '&csrf=' + \
              encodeURIComponent(document.querySelector('input[name=csrf]').value), \
              headers: {'Content-Type': 'application/x-www-form-urlencoded'}}) \
            .then(r => done(r.status), e => done(String(e)));";
        let status = self
            .client
            .execute_async(script, vec![json!(path), json!(body)])
            .await
            .unwrap();
        status
            .as_i64()
            .unwrap_or_else(|| panic!("fetch failed: {status}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Issues a certificate for `namespace/service_account` through CreateCertificate.
async fn issue(
    server: &MeshcaProcess,
    data: &Path,
    root: &str,
    namespace: &str,
    sa: &str,
) -> Result<String, tonic::Status> {
    let mut client = ca_client(server.grpc, root, None).await;
    let token = dev_issuer_token(data, namespace, sa, None);
    let csr = openssl_csr(&["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let answer = create_certificate(&mut client, &csr, 3600, Some(&token), None).await?;
    Ok(answer.cert_chain[0].clone())
}

#[tokio::test]
async fn an_auditor_and_an_admin_use_the_console_in_chromium() {
    if !browser_installed("console") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = dev_server(tmp.path(), &[]);
    let data = tmp.path().join("meshca-dev");
    let root = std::fs::read_to_string(data.join("root-cert.pem")).unwrap();
    for (namespace, sa) in [("shop", "web"), ("shop", "cart"), ("bank", "ledger")] {
        issue(&server, &data, &root, namespace, sa).await.unwrap();
    }
    let refused = issue(&server, &data, &root, "shop", PAYLOAD).await;
    assert!(
        refused.is_err(),
        "a service account name with markup is refused"
    );

    let browser = Browser::start(server.rest).await;
    browser.go("/ui/").await;
    browser.shot("sign-in").await;

    // An auditor: the overview, a filtered inventory, one certificate with its events.
    browser.sign_in(&read_token(&data, "auditor-token")).await;
    let overview = browser.main_text().await;
    assert!(
        overview.to_lowercase().contains("active authority"),
        "{overview}"
    );
    let bars = browser
        .script("return document.querySelectorAll('svg.chart rect.bar').length")
        .await;
    assert_eq!(bars, json!(168), "one bar per hour of 7 days");
    browser.shot("overview").await;

    browser.go("/ui/certificates").await;
    let prefix = browser
        .client
        .find(Locator::Css("input[name=spiffe_id]"))
        .await
        .unwrap();
    prefix
        .send_keys("spiffe://cluster.local/ns/shop/*")
        .await
        .unwrap();
    browser.click("form.filters button[type=submit]").await;
    let ids = browser
        .script("return [...document.querySelectorAll('table.certificates tbody tr td:nth-child(2)')].map(td => td.textContent)")
        .await;
    let ids: Vec<&str> = ids
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(
        ids.iter()
            .all(|id| id.starts_with("spiffe://cluster.local/ns/shop/sa/")),
        "{ids:?}"
    );
    browser.shot("certificates").await;

    browser
        .click("table.certificates tbody tr:first-child a")
        .await;
    let certificate_path = browser.path().await;
    let page = browser.main_text().await;
    assert!(
        page.contains("certificate.issue"),
        "its audit events: {page}"
    );
    assert!(
        page.contains("URI:spiffe://cluster.local/ns/shop/sa/"),
        "decoded: {page}"
    );
    assert!(
        browser
            .client
            .find_all(Locator::LinkText("Revoke…"))
            .await
            .unwrap()
            .is_empty(),
        "an auditor gets no revoke link"
    );
    browser.shot("certificate").await;
    let forged = browser
        .post_from_page(
            &format!("{certificate_path}/revoke"),
            "reason=keyCompromise",
        )
        .await;
    assert_eq!(forged, 403, "an auditor's hand-made revoke is refused");

    // What the refused caller wrote is shown as text: no element made of it, no script run.
    browser
        .go("/ui/audit?action=certificate.issue&outcome=denied")
        .await;
    let log = browser.main_text().await;
    assert!(
        log.contains(r#"<img src=x onerror="#),
        "the payload is shown as text: {log}"
    );
    let injected = browser
        .script("return document.querySelectorAll('main img, main script').length")
        .await;
    assert_eq!(injected, json!(0));
    assert_eq!(
        browser.script("return document.title").await,
        json!("Audit log · meshca")
    );
    assert!(
        browser.client.get_alert_text().await.is_err(),
        "no dialog opened"
    );
    browser.shot("audit").await;

    browser.go("/ui/authorities").await;
    assert!(browser.main_text().await.contains("active"));
    browser.shot("authorities").await;

    browser.click("header form.who button").await;
    assert_eq!(browser.path().await, "/ui/sign-in");
    browser.go("/ui/certificates").await;
    assert_eq!(
        browser.path().await,
        "/ui/sign-in",
        "sign-out ended the session"
    );

    // An admin revokes with a confirmation step, and finds it in the CRL and the audit log.
    browser.sign_in(&read_token(&data, "admin-token")).await;
    browser.go(&certificate_path).await;
    let serial = certificate_path.rsplit('/').next().unwrap().to_string();
    browser.click("a.danger").await;
    assert_eq!(browser.path().await, format!("{certificate_path}/revoke"));
    browser
        .client
        .find(Locator::Id("reason"))
        .await
        .unwrap()
        .select_by_value("keyCompromise")
        .await
        .unwrap();
    browser.shot("revoke").await;
    browser.click("#confirm-revoke").await;
    assert_eq!(browser.path().await, certificate_path);
    assert!(browser.main_text().await.contains("revoked"));
    browser.go("/ui/crl").await;
    let crl = browser.main_text().await;
    assert!(
        crl.contains(&serial) && crl.contains("KeyCompromise"),
        "{crl}"
    );
    browser.shot("crl").await;
    browser.go("/ui/audit?action=certificate.revoke").await;
    let log = browser.main_text().await;
    assert!(log.contains("dev-admin") && log.contains(&serial), "{log}");
    browser.click("#verify-chain").await;
    let verdict = browser.main_text().await;
    assert!(verdict.contains("The chain is intact"), "{verdict}");
    eprintln!("console screenshots: {}", browser.shots.display());
}
