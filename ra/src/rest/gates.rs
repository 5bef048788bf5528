//! The rotation gates as plain functions: how far a root has reached what meshca feeds, and
//! what an `activate` or `revoke` still waits for. The REST handlers gather the counts; the
//! decisions and their wording live here, tested without a store.

use std::time::Duration;

use meshca_ca::store::Renewal;

/// How far one root has reached, from every source meshca can see.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RootReach {
    /// When the root joined the published bundle (Unix seconds); `None` when it is not in it.
    pub root_since: Option<i64>,
    /// Trust-bundle streams sent a bundle holding the root, of those connected.
    pub agents_received: usize,
    pub agents_connected: usize,
    /// Live identities whose newest certificate's answer held the root, of all live ones
    /// (shown; not the gate: the replicas of a Deployment share one identity).
    pub identities: Renewal,
    /// Live workload certificates whose answer held the root, of all live ones: istio-agent
    /// and ztunnel learn their roots only from their next answer, so every pod must have
    /// renewed (or its older certificate expired) before the root may sign.
    pub certificates: Renewal,
    /// `istio-ca-root-cert` ConfigMaps holding the root; `None` when meshca does not publish
    /// them.
    pub configmaps: Option<ConfigMapReach>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigMapReach {
    pub holding: usize,
    pub namespaces: usize,
    /// The namespace and ConfigMap caches have listed once; before that the counts say nothing.
    pub synced: bool,
}

// === impl RootReach ===

impl RootReach {
    /// What has not yet reached everything, one phrase each; empty when the root is
    /// everywhere meshca can see.
    pub fn missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if self.root_since.is_none() {
            missing.push("its root is not in the trust bundle".to_string());
            return missing;
        }
        let short = |of: i64, done: i64| of - done;
        let agents = short(self.agents_connected as i64, self.agents_received as i64);
        if agents > 0 {
            missing.push(format!(
                "{agents} of {} connected agents {} not received its root",
                self.agents_connected,
                if agents == 1 { "has" } else { "have" }
            ));
        }
        let certificates = short(self.certificates.live, self.certificates.renewed);
        if certificates > 0 {
            missing.push(format!(
                "{certificates} of {} live workload certificates {} answered before its root joined the bundle",
                self.certificates.live,
                if certificates == 1 { "was" } else { "were" }
            ));
        }
        match self.configmaps {
            Some(c) if !c.synced => missing
                .push("the istio-ca-root-cert ConfigMaps have not been listed yet".to_string()),
            Some(c) if c.holding < c.namespaces => missing.push(format!(
                "{} of {} namespaces' istio-ca-root-cert do not hold its root",
                c.namespaces - c.holding,
                c.namespaces
            )),
            _ => {}
        }
        missing
    }

    pub fn complete(&self) -> bool {
        self.missing().is_empty()
    }
}

/// What activating an authority whose root has `reach` still waits for at `now`: its root
/// everywhere, and in the bundle for at least `settle` (holders meshca cannot see, such as a
/// kubelet copying the ConfigMap into pods). Empty: the gate is open.
pub fn activation_waits_for(reach: &RootReach, now: i64, settle: Duration) -> Vec<String> {
    let mut waits = reach.missing();
    if let Some(since) = reach.root_since {
        let age = now.saturating_sub(since).max(0) as u64;
        if age < settle.as_secs() {
            waits.push(format!(
                "its root joined the bundle {} ago; rotation.settle is {}",
                humantime::format_duration(Duration::from_secs(age)),
                humantime::format_duration(settle)
            ));
        }
    }
    waits
}

/// What revoking an authority with `live` certificates still waits for: none of them left, or
/// revoking its root would break them.
pub fn revocation_waits_for(live: i64) -> Vec<String> {
    match live {
        0 => Vec::new(),
        1 => vec!["1 certificate it signed is still live".to_string()],
        n => vec![format!("{n} certificates it signed are still live")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn everywhere() -> RootReach {
        RootReach {
            root_since: Some(1_000),
            agents_received: 3,
            agents_connected: 3,
            identities: Renewal {
                live: 10,
                renewed: 10,
            },
            certificates: Renewal {
                live: 20,
                renewed: 20,
            },
            configmaps: Some(ConfigMapReach {
                holding: 4,
                namespaces: 4,
                synced: true,
            }),
        }
    }

    #[test]
    fn the_activation_gate_opens_only_when_everything_holds_the_root_and_it_has_settled() {
        let settle = Duration::from_secs(300);
        assert!(activation_waits_for(&everywhere(), 1_300, settle).is_empty());
        assert_eq!(
            activation_waits_for(&everywhere(), 1_040, settle),
            ["its root joined the bundle 40s ago; rotation.settle is 5m"]
        );
        let short = RootReach {
            agents_received: 2,
            // Every identity renewed by one of its pods; three pods have not.
            certificates: Renewal {
                live: 20,
                renewed: 17,
            },
            configmaps: Some(ConfigMapReach {
                holding: 3,
                namespaces: 4,
                synced: true,
            }),
            ..everywhere()
        };
        assert_eq!(
            activation_waits_for(&short, 1_300, settle),
            [
                "1 of 3 connected agents has not received its root",
                "3 of 20 live workload certificates were answered before its root joined the bundle",
                "1 of 4 namespaces' istio-ca-root-cert do not hold its root",
            ]
        );
        let unlisted = RootReach {
            configmaps: Some(ConfigMapReach::default()),
            ..everywhere()
        };
        assert_eq!(
            unlisted.missing(),
            ["the istio-ca-root-cert ConfigMaps have not been listed yet"]
        );
        let not_published = RootReach {
            configmaps: None,
            ..everywhere()
        };
        assert!(not_published.complete());
        let absent = RootReach {
            root_since: None,
            ..everywhere()
        };
        assert_eq!(
            activation_waits_for(&absent, 1_300, settle),
            ["its root is not in the trust bundle"]
        );
    }

    #[test]
    fn the_revocation_gate_waits_for_the_last_live_certificate() {
        assert!(revocation_waits_for(0).is_empty());
        assert_eq!(
            revocation_waits_for(1),
            ["1 certificate it signed is still live"]
        );
        assert_eq!(
            revocation_waits_for(5),
            ["5 certificates it signed are still live"]
        );
    }
}
