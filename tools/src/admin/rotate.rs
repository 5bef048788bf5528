//! `meshca admin authorities rotate`: the whole root rotation as one command that cannot break
//! traffic. Every decision comes from the server's state (the authorities and their gates), so
//! an interrupted run continues where it stopped; each wait is bounded, and a timeout leaves
//! the state as it is and says what it waited for.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use meshca_ra::rest::views::{
    AuthorityList, AuthorityView, GenerateBody, GenerateRequest, PrepareBody,
};
use serde_json::{json, Value};

use super::args::RotateArgs;
use super::client::{AdminClient, AdminError, Answer};

/// The step a rotation takes next, read from where the server's authorities stand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Nothing under way: prepare a new root.
    Prepare,
    /// A prepared authority waits to be activated.
    Activate(String),
    /// The previous authority (`old`) waits to be tainted.
    Taint(String),
    /// A tainted authority waits to be revoked.
    Revoke(String),
}

/// Whether to take the phase's step now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Go,
    Wait(Vec<String>),
}

// === impl Phase ===

impl Phase {
    /// The furthest step under way: revoke a tainted one first, then activate a prepared one,
    /// then taint an old one.
    pub fn of(authorities: &[AuthorityView]) -> Self {
        let first = |state: &str| {
            authorities
                .iter()
                .find(|a| a.state == state)
                .map(|a| a.id.clone())
        };
        if let Some(id) = first("tainted") {
            Phase::Revoke(id)
        } else if let Some(id) = first("prepared") {
            Phase::Activate(id)
        } else if let Some(id) = first("old") {
            Phase::Taint(id)
        } else {
            Phase::Prepare
        }
    }

    fn step(&self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::Activate(_) => "activate",
            Phase::Taint(_) => "taint",
            Phase::Revoke(_) => "revoke",
        }
    }

    fn authority(&self) -> &str {
        match self {
            Phase::Prepare => "",
            Phase::Activate(id) | Phase::Taint(id) | Phase::Revoke(id) => id,
        }
    }
}

/// Whether `view`'s step may be taken at `now`: activation once the server's gate holds and
/// `settle` has passed since its root joined the bundle; tainting once nothing it signed is live
/// or `drain` has passed since it stopped signing; revocation once the server's gate holds.
pub fn decide(phase: &Phase, view: &AuthorityView, now: SystemTime, args: &RotateArgs) -> Decision {
    let since = |rfc3339: &str| humantime::parse_rfc3339(rfc3339).unwrap_or(now);
    let gate = || {
        view.gate
            .as_ref()
            .map(|g| g.waiting_for.clone())
            .unwrap_or_default()
    };
    let waits = match phase {
        Phase::Prepare => Vec::new(),
        Phase::Activate(_) => {
            let mut waits = gate();
            if let Some(joined) = &view.propagation.trusted_since {
                let age = now.duration_since(since(joined)).unwrap_or_default();
                if age < args.settle {
                    waits.push(format!(
                        "--settle {} has not passed since its root joined the bundle ({} ago)",
                        humantime::format_duration(args.settle),
                        humantime::format_duration(whole_seconds(age))
                    ));
                }
            }
            waits
        }
        Phase::Taint(_) => {
            let drained = now
                .duration_since(since(&view.updated_at))
                .unwrap_or_default();
            if view.live_certificates == 0 || drained >= args.drain {
                Vec::new()
            } else {
                vec![format!(
                    "{} live certificates it signed; --drain ends in {}",
                    view.live_certificates,
                    humantime::format_duration(whole_seconds(args.drain - drained))
                )]
            }
        }
        Phase::Revoke(_) => gate(),
    };
    if waits.is_empty() {
        Decision::Go
    } else {
        Decision::Wait(waits)
    }
}

fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// Runs the rotation to the end (or the first wait that times out), reporting on `out`: one
/// line per step and per change in what a wait waits for, or with `json` one event per line.
pub async fn rotate(
    client: &mut AdminClient,
    args: &RotateArgs,
    json: bool,
    out: &mut impl Write,
) -> Result<(), AdminError> {
    let mut report = Report { json, out };
    let mut revoked = None;
    let mut waiting: Option<(Phase, Instant, Vec<String>)> = None;
    loop {
        let list: Answer<AuthorityList> = client.get("/v1/authorities", &[]).await?;
        let phase = Phase::of(&list.view.authorities);
        if phase == Phase::Prepare {
            if let Some(old) = revoked {
                let active = list.view.authorities.iter().find(|a| a.state == "active");
                let new = active.map(|a| a.id.clone()).unwrap_or_default();
                report.event(
                    json!({"event": "done", "authority": new, "revoked": old}),
                    format!(
                        "rotation complete: {new} signs; {old} revoked, its root left the bundle"
                    ),
                )?;
                return Ok(());
            }
            let body = PrepareBody::Generate(GenerateRequest {
                generate: GenerateBody {
                    key_type: args.key_type,
                },
            });
            let prepared: Answer<AuthorityView> =
                client.post("/v1/authorities", &[], &body).await?;
            report.event(
                json!({"event": "step", "step": "prepare", "authority": prepared.view.id,
                       "key_type": prepared.view.key_type}),
                format!(
                    "prepared {} ({}): its root joins the trust bundle",
                    prepared.view.id, prepared.view.key_type
                ),
            )?;
            client.trust_current_bundle().await?;
            continue;
        }
        let Some(view) = list
            .view
            .authorities
            .iter()
            .find(|a| a.id == phase.authority())
        else {
            continue;
        };
        match decide(&phase, view, SystemTime::now(), args) {
            Decision::Go => {
                let path = format!("/v1/authorities/{}/{}", phase.authority(), phase.step());
                let taken: Result<Answer<AuthorityView>, _> =
                    client.post(&path, &[], &json!({})).await;
                match taken {
                    // The gate closed between reading it and taking the step: wait again.
                    Err(AdminError::Api { status: 409, .. }) => {}
                    Err(e) => return Err(e),
                    Ok(_) => {
                        waiting = None;
                        let id = phase.authority().to_string();
                        let said = match &phase {
                            Phase::Activate(_) => "it signs now; the previous authority is old",
                            Phase::Taint(_) => "agents holding its certificates rotate now",
                            _ => "its root left the trust bundle",
                        };
                        report.event(
                            json!({"event": "step", "step": phase.step(), "authority": id}),
                            format!("{} {id}: {said}", past(phase.step())),
                        )?;
                        if let Phase::Revoke(id) = &phase {
                            revoked = Some(id.clone());
                        }
                        client.trust_current_bundle().await?;
                        continue;
                    }
                }
            }
            Decision::Wait(reasons) => {
                let started = match &waiting {
                    Some((p, started, _)) if *p == phase => *started,
                    _ => Instant::now(),
                };
                if started.elapsed() >= args.timeout {
                    report.event(
                        json!({"event": "timeout", "step": phase.step(),
                               "authority": phase.authority(), "waiting_for": reasons}),
                        format!(
                            "timed out waiting to {} {}",
                            phase.step(),
                            phase.authority()
                        ),
                    )?;
                    return Err(AdminError::RotationTimeout {
                        step: phase.step(),
                        authority: phase.authority().to_string(),
                        after: humantime::format_duration(args.timeout).to_string(),
                        waiting_for: reasons.join("; "),
                    });
                }
                let said_before =
                    matches!(&waiting, Some((p, _, r)) if *p == phase && *r == reasons);
                if !said_before {
                    report.event(
                        json!({"event": "waiting", "step": phase.step(),
                               "authority": phase.authority(), "waiting_for": reasons,
                               "live_certificates": view.live_certificates,
                               "propagation": serde_json::to_value(&view.propagation)
                                   .unwrap_or(Value::Null)}),
                        format!(
                            "{} {}: waiting: {} [agents {}, certificates {}, identities {}{}]",
                            phase.step(),
                            phase.authority(),
                            reasons.join("; "),
                            view.propagation.agents,
                            view.propagation.certificates,
                            view.propagation.identities,
                            view.propagation
                                .configmaps
                                .as_ref()
                                .map(|c| format!(", configmaps {}/{}", c.holding, c.namespaces))
                                .unwrap_or_default()
                        ),
                    )?;
                }
                waiting = Some((phase, started, reasons));
            }
        }
        tokio::time::sleep(args.poll).await;
    }
}

fn past(step: &str) -> &'static str {
    match step {
        "activate" => "activated",
        "taint" => "tainted",
        "revoke" => "revoked",
        _ => "prepared",
    }
}

/// Progress as text lines or JSON events.
struct Report<'a, W> {
    json: bool,
    out: &'a mut W,
}

impl<W: Write> Report<'_, W> {
    fn event(&mut self, event: Value, line: String) -> Result<(), AdminError> {
        if self.json {
            writeln!(self.out, "{event}")?;
        } else {
            writeln!(self.out, "{line}")?;
        }
        self.out.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshca_ra::rest::views::{
        AgentPropagation, CertificatePropagation, GateView, IdentityPropagation, Propagation,
    };

    fn view(id: &str, state: &str) -> AuthorityView {
        AuthorityView {
            id: id.into(),
            state: state.into(),
            source: "generated".into(),
            subject: String::new(),
            key_type: "ECDSA P-256".into(),
            not_before: String::new(),
            not_after: String::new(),
            root_subject: String::new(),
            root_fingerprint_sha256: String::new(),
            live_certificates: 0,
            propagation: Propagation {
                trusted_since: Some("2026-11-30T10:00:00Z".into()),
                agents: AgentPropagation {
                    received: 1,
                    connected: 1,
                },
                identities: IdentityPropagation {
                    renewed: 3,
                    live: 3,
                },
                certificates: CertificatePropagation {
                    holding: 5,
                    live: 5,
                },
                configmaps: None,
                complete: true,
            },
            gate: None,
            created_at: "2026-11-30T10:00:00Z".into(),
            updated_at: "2026-11-30T10:00:00Z".into(),
        }
    }

    fn args() -> RotateArgs {
        RotateArgs {
            key_type: meshca_pki::keys::KeyType::EcP256,
            settle: Duration::from_secs(60),
            drain: Duration::from_secs(600),
            timeout: Duration::from_secs(3600),
            poll: Duration::from_secs(1),
        }
    }

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap()
    }

    /// A rerun picks up where the server's states say the rotation is.
    #[test]
    fn the_phase_is_read_from_the_states() {
        let list = |states: &[&str]| -> Vec<AuthorityView> {
            states
                .iter()
                .enumerate()
                .map(|(i, s)| view(&format!("a{i}"), s))
                .collect()
        };
        assert_eq!(Phase::of(&list(&["active"])), Phase::Prepare);
        assert_eq!(Phase::of(&list(&["revoked", "active"])), Phase::Prepare);
        assert_eq!(
            Phase::of(&list(&["active", "prepared"])),
            Phase::Activate("a1".into())
        );
        assert_eq!(
            Phase::of(&list(&["old", "active"])),
            Phase::Taint("a0".into())
        );
        assert_eq!(
            Phase::of(&list(&["tainted", "active", "prepared"])),
            Phase::Revoke("a0".into())
        );
    }

    #[test]
    fn each_step_waits_for_its_gate_settle_or_drain() {
        let args = args();
        let mut prepared = view("p", "prepared");
        prepared.gate = Some(GateView {
            step: "activate".into(),
            open: false,
            waiting_for: vec!["1 of 3 live identities has not renewed".into()],
        });
        let phase = Phase::Activate("p".into());
        let early = at("2026-11-30T10:00:30Z");
        assert_eq!(
            decide(&phase, &prepared, early, &args),
            Decision::Wait(vec![
                "1 of 3 live identities has not renewed".into(),
                "--settle 1m has not passed since its root joined the bundle (30s ago)".into(),
            ])
        );
        prepared.gate = Some(GateView {
            step: "activate".into(),
            open: true,
            waiting_for: Vec::new(),
        });
        assert_eq!(
            decide(&phase, &prepared, at("2026-11-30T10:01:00Z"), &args),
            Decision::Go
        );

        let mut old = view("o", "old");
        old.live_certificates = 4;
        let taint = Phase::Taint("o".into());
        assert_eq!(
            decide(&taint, &old, at("2026-11-30T10:05:00Z"), &args),
            Decision::Wait(vec![
                "4 live certificates it signed; --drain ends in 5m".into()
            ])
        );
        assert_eq!(
            decide(&taint, &old, at("2026-11-30T10:10:00Z"), &args),
            Decision::Go,
            "drained"
        );
        old.live_certificates = 0;
        assert_eq!(
            decide(&taint, &old, at("2026-11-30T10:00:01Z"), &args),
            Decision::Go,
            "nothing left to drain"
        );

        let mut tainted = view("t", "tainted");
        tainted.gate = Some(GateView {
            step: "revoke".into(),
            open: false,
            waiting_for: vec!["2 certificates it signed are still live".into()],
        });
        let revoke = Phase::Revoke("t".into());
        let now = at("2026-11-30T12:00:00Z");
        assert_eq!(
            decide(&revoke, &tainted, now, &args),
            Decision::Wait(vec!["2 certificates it signed are still live".into()])
        );
        tainted.gate = None;
        assert_eq!(decide(&revoke, &tainted, now, &args), Decision::Go);
    }
}
