//! The load the fault tests run while they break something: callers issuing on their own
//! connections until stopped, every answer recorded, and the checks that follow a fault:
//! refusals say nothing was issued, every certificate a caller received is on record.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshca_ca::x509::ParsedCert;
use tokio::task::JoinHandle;

use crate::admin::read_token;
use crate::harness::*;

/// What one call got.
pub enum Outcome {
    /// The serial (hex) of the certificate received.
    Issued(String),
    Refused(tonic::Code, String),
}

/// Callers issuing for `default/default` with the dev token of the server whose state is in
/// `data`, until stopped or (with `stop_on_error`) until a call fails.
pub struct Load {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: Arc<AtomicBool>,
    callers: Vec<JoinHandle<()>>,
}

impl Load {
    pub async fn start(grpc: SocketAddr, data: &Path, callers: usize, stop_on_error: bool) -> Self {
        let root = std::fs::read_to_string(data.join("root-cert.pem")).unwrap();
        let token = std::fs::read_to_string(data.join("dev/token"))
            .unwrap()
            .trim()
            .to_string();
        let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..callers {
            let mut client = ca_client(grpc, &root, None).await;
            let (token, outcomes, stop) = (token.clone(), outcomes.clone(), stop.clone());
            let csr = WorkloadKey::ec().csr(&["spiffe://cluster.local/ns/default/sa/default"]);
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let answer =
                        create_certificate(&mut client, &csr, 3600, Some(&token), None).await;
                    let outcome = match answer {
                        Ok(answer) => {
                            let leaf =
                                ParsedCert::from_der(&der_of(&answer.cert_chain[0])).unwrap();
                            Outcome::Issued(leaf.serial().to_hex())
                        }
                        Err(status) => Outcome::Refused(status.code(), status.message().into()),
                    };
                    let failed = matches!(outcome, Outcome::Refused(..));
                    outcomes.lock().unwrap().push(outcome);
                    if failed {
                        if stop_on_error {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
        }
        Self {
            outcomes,
            stop,
            callers: tasks,
        }
    }

    /// Answers so far.
    pub fn len(&self) -> usize {
        self.outcomes.lock().unwrap().len()
    }

    /// Certificates among the answers from the `from`-th on.
    pub fn issued_since(&self, from: usize) -> usize {
        self.outcomes.lock().unwrap()[from..]
            .iter()
            .filter(|o| matches!(o, Outcome::Issued(_)))
            .count()
    }

    /// Refusals among the answers from the `from`-th on.
    pub fn refused_since(&self, from: usize) -> usize {
        // One look at the answers: counting them and their certificates under two locks raced
        // with callers appending in between (a subtraction overflow in CI).
        self.outcomes.lock().unwrap()[from..]
            .iter()
            .filter(|o| matches!(o, Outcome::Refused(..)))
            .count()
    }

    /// Stops the callers (or waits for them to stop by themselves) and returns every answer.
    pub async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        for caller in self.callers {
            caller.await.unwrap();
        }
        std::mem::take(&mut *self.outcomes.lock().unwrap())
    }
}

/// Polls `check` until it holds, failing with `what` after `within`.
pub async fn until(what: &str, within: Duration, check: &dyn Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The serials received among `outcomes`.
pub fn serials(outcomes: &[Outcome]) -> Vec<&str> {
    outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Issued(serial) => Some(serial.as_str()),
            Outcome::Refused(..) => None,
        })
        .collect()
}

/// Every refusal is `UNAVAILABLE` saying nothing was issued.
pub fn refusals_say_nothing_was_issued(outcomes: &[Outcome]) {
    for outcome in outcomes {
        if let Outcome::Refused(code, message) = outcome {
            assert_eq!(*code, tonic::Code::Unavailable, "{message}");
            assert!(message.contains("nothing was issued"), "{message}");
        }
    }
}

/// Every certificate a caller received is in the inventory of the server at `rest` (dev
/// auditor token from `data`), and its audit chain is intact.
pub async fn all_on_record(rest: SocketAddr, data: &Path, serials: &[&str]) {
    let root = std::fs::read_to_string(data.join("root-cert.pem")).unwrap();
    let rest = Rest::new(rest, &root);
    let auditor = read_token(data, "auditor-token");
    let mut missing = Vec::new();
    for serial in serials {
        let (status, _) = rest
            .get(&format!("/v1/certificates/{serial}"), &auditor)
            .await;
        if status != 200 {
            missing.push((serial.to_string(), status));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} received certificates are not on record: {missing:?}",
        missing.len(),
        serials.len()
    );
    // Negative control: a serial never issued is reported missing by the same lookup.
    if let Some(first) = serials.first() {
        let mut never = first.to_string().into_bytes();
        let last = never.len() - 1;
        never[last] = if never[last] == b'0' { b'1' } else { b'0' };
        let never = String::from_utf8(never).unwrap();
        if !serials.contains(&never.as_str()) {
            let (status, _) = rest
                .get(&format!("/v1/certificates/{never}"), &auditor)
                .await;
            assert_eq!(status, 404, "{never} was never issued");
        }
    }
    let (status, verdict) = rest.get("/v1/audit/verify", &auditor).await;
    assert_eq!(status, 200, "{verdict}");
    assert_eq!(verdict["intact"], true, "{verdict}");
}
