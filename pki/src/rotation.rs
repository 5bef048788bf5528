//! Authorities through a root rotation, SPIRE-style: `prepared` (its root is trusted, nothing is
//! signed with it) → `active` (signs; exactly one) → `old` (still trusted) → `tainted` (workloads
//! holding its certs rotate now; renewal with them is refused) → `revoked` (its root leaves the
//! bundle). The set is published as one value so the signer, the trust bundle and the admin
//! API always agree.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::authority::Authority;
use crate::x509::ParsedCert;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthorityState {
    Prepared,
    Active,
    Old,
    Tainted,
    Revoked,
}

/// A step that moves an existing authority on through the rotation (preparing one is not a
/// step of an existing authority: it creates it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationStep {
    /// `prepared` → `active` (the active one becomes `old`).
    Activate,
    /// `old` → `tainted`: workloads holding its certificates rotate now.
    Taint,
    /// `tainted` → `revoked`: its root leaves the trust bundle.
    Revoke,
}

impl RotationStep {
    /// The state an authority must be in for this step.
    pub const fn from(self) -> AuthorityState {
        match self {
            Self::Activate => AuthorityState::Prepared,
            Self::Taint => AuthorityState::Old,
            Self::Revoke => AuthorityState::Tainted,
        }
    }

    /// The state the step leaves it in.
    pub const fn to(self) -> AuthorityState {
        match self {
            Self::Activate => AuthorityState::Active,
            Self::Taint => AuthorityState::Tainted,
            Self::Revoke => AuthorityState::Revoked,
        }
    }

    /// The audit log's name for the step.
    pub const fn audit_action(self) -> &'static str {
        match self {
            Self::Activate => "authority.activate",
            Self::Taint => "authority.taint",
            Self::Revoke => "authority.revoke",
        }
    }
}

/// An authority with where it stands in the rotation.
#[derive(Clone, Debug)]
pub struct AuthorityEntry {
    pub authority: Arc<Authority>,
    pub state: AuthorityState,
    /// `self-signed` (bootstrap), `generated` / `uploaded` (admin API), or `cacerts` (directory).
    pub source: String,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
}

/// Every known authority; exactly one is active.
#[derive(Debug)]
pub struct AuthoritySet {
    entries: Vec<AuthorityEntry>,
    active: usize,
    /// Since when each trusted root (by SHA-256 of its DER) has been in the bundle, Unix
    /// seconds: what "has this workload renewed since the root was added" is measured from.
    root_since: Vec<(String, i64)>,
}

// === impl AuthorityState ===

impl AuthorityState {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Active => "active",
            Self::Old => "old",
            Self::Tainted => "tainted",
            Self::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Prepared,
            Self::Active,
            Self::Old,
            Self::Tainted,
            Self::Revoked,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }

    /// Whether this authority's root belongs in the trust bundle.
    pub fn trusted(self) -> bool {
        self != Self::Revoked
    }
}

impl std::fmt::Display for AuthorityState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl AuthoritySet ===

impl AuthoritySet {
    /// `None` unless exactly one entry is active.
    pub fn new(entries: Vec<AuthorityEntry>) -> Option<Self> {
        let mut active = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.state == AuthorityState::Active)
            .map(|(i, _)| i);
        let first = active.next()?;
        if active.next().is_some() {
            return None;
        }
        let root_since = roots_since(&entries, |_| None);
        Some(Self {
            entries,
            active: first,
            root_since,
        })
    }

    /// One active authority and nothing else (a plugged-in directory).
    pub fn single(authority: Authority, source: &str, now: i64) -> Self {
        let entries = vec![AuthorityEntry {
            authority: Arc::new(authority),
            state: AuthorityState::Active,
            source: source.to_string(),
            created_at: now,
            updated_at: now,
        }];
        let root_since = roots_since(&entries, |_| None);
        Self {
            entries,
            active: 0,
            root_since,
        }
    }

    /// A plugged-in directory's new material: it becomes the active authority. Its
    /// `root-cert.pem` is the bundle, as in Istio: an earlier authority whose root is still
    /// listed stays trusted as `old` (certificates it issued keep verifying until they rotate)
    /// while its signing cert is unexpired; one whose root was removed is `revoked`. A root
    /// that stays keeps the time it joined the bundle.
    pub fn with_new_active(&self, authority: Authority, source: &str, now: i64) -> Self {
        let id = authority.id().clone();
        let now = self.next_root_since(now);
        let listed: Vec<&[u8]> = authority.roots().iter().map(ParsedCert::der).collect();
        let mut entries: Vec<AuthorityEntry> = self
            .entries
            .iter()
            .filter(|e| e.authority.id() != &id)
            .filter(|e| crate::time::unix_seconds(e.authority.signing_cert().not_after()) > now)
            .cloned()
            .map(|mut e| {
                let next = if !listed.contains(&e.authority.root().der()) {
                    AuthorityState::Revoked
                } else if e.state == AuthorityState::Active {
                    AuthorityState::Old
                } else {
                    e.state
                };
                if next != e.state {
                    e.state = next;
                    e.updated_at = now;
                }
                e
            })
            .collect();
        entries.push(AuthorityEntry {
            authority: Arc::new(authority),
            state: AuthorityState::Active,
            source: source.to_string(),
            created_at: now,
            updated_at: now,
        });
        let active = entries.len() - 1;
        let root_since = roots_since(&entries, |fingerprint| self.root_since(fingerprint));
        Self {
            entries,
            active,
            root_since,
        }
    }

    /// The authority new certificates are signed by.
    pub fn active(&self) -> &Arc<Authority> {
        &self.entries[self.active].authority
    }

    /// Oldest first.
    pub fn entries(&self) -> &[AuthorityEntry] {
        &self.entries
    }

    pub fn get(&self, id: &str) -> Option<&AuthorityEntry> {
        self.entries
            .iter()
            .find(|e| e.authority.id().as_str() == id)
    }

    /// The roots of every authority that is not revoked, each once, oldest authority first.
    pub fn bundle(&self) -> Vec<&ParsedCert> {
        let mut roots: Vec<&ParsedCert> = Vec::new();
        for entry in self.entries.iter().filter(|e| e.state.trusted()) {
            for root in entry.authority.roots() {
                if !roots.iter().any(|r| r.der() == root.der()) {
                    roots.push(root);
                }
            }
        }
        roots
    }

    /// Since when the root with this SHA-256 fingerprint has been in the bundle (Unix
    /// seconds); `None` when it is not in the bundle.
    pub fn root_since(&self, fingerprint: &str) -> Option<i64> {
        self.root_since
            .iter()
            .find(|(f, _)| f == fingerprint)
            .map(|(_, since)| *since)
    }

    /// When a root added now joins the bundle: `now`, or one second after the newest root of
    /// this set when that is not before `now`. Roots then join in a strict order, so a bundle
    /// as of one root's arrival never counts as holding a root added later in the same second.
    pub fn next_root_since(&self, now: i64) -> i64 {
        let newest = self
            .entries
            .iter()
            .map(|e| e.created_at)
            .chain(self.root_since.iter().map(|(_, since)| *since))
            .max()
            .unwrap_or(i64::MIN);
        now.max(newest.saturating_add(1))
    }

    /// The newest root's arrival: a bundle built from this set holds every root that joined
    /// at or before this time and is still trusted. Recorded with each issuance, it tells
    /// whether that answer carried a given root.
    pub fn bundle_as_of(&self) -> i64 {
        self.root_since
            .iter()
            .map(|(_, since)| *since)
            .max()
            .unwrap_or(0)
    }

    /// Who signs meshca's own serving certificates at `now`: the active authority once its
    /// root has been in the bundle for `settle`; until then the authority active before it
    /// (the most recently demoted `old` one), so a client holding the bundle as it was
    /// `settle` ago still verifies meshca. Only a forced activation, or a plugged-in directory
    /// switching to a root it never listed, gets here before the root has settled; a tainted
    /// or revoked authority never signs them.
    pub fn serving_signer(&self, now: i64, settle_secs: i64) -> &AuthorityEntry {
        let active = &self.entries[self.active];
        let settled = self
            .root_since(&crate::keys::sha256_hex(active.authority.root().der()))
            .is_some_and(|since| now >= since.saturating_add(settle_secs));
        if settled {
            return active;
        }
        self.entries
            .iter()
            .filter(|e| e.state == AuthorityState::Old)
            .max_by_key(|e| e.updated_at)
            .unwrap_or(active)
    }

    /// When [`serving_signer`](Self::serving_signer) moves to the active authority, if that is
    /// still ahead of `now`.
    pub fn serving_signer_moves_at(&self, now: i64, settle_secs: i64) -> Option<i64> {
        let active = &self.entries[self.active];
        let since = self.root_since(&crate::keys::sha256_hex(active.authority.root().der()))?;
        let at = since.saturating_add(settle_secs);
        (at > now).then_some(at)
    }

    /// Whether authority `id` is known and its root is in the bundle.
    pub fn trusts(&self, id: &str) -> bool {
        self.get(id).is_some_and(|e| e.state.trusted())
    }

    /// Ids of tainted authorities: workloads whose leaf names one of them as issuer rotate now.
    pub fn tainted_ids(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| e.state == AuthorityState::Tainted)
            .map(|e| e.authority.id().to_string())
            .collect()
    }

    /// Whether renewal with a certificate signed by authority `id` is refused: its authority
    /// was tainted or revoked. Unknown ids are left to chain verification.
    pub fn refuses_renewal_from(&self, id: &str) -> bool {
        self.get(id)
            .is_some_and(|e| matches!(e.state, AuthorityState::Tainted | AuthorityState::Revoked))
    }

    /// Same authorities in the same states with the same roots (ignores timestamps).
    pub fn same_as(&self, other: &Self) -> bool {
        fn roots(e: &AuthorityEntry) -> Vec<&[u8]> {
            e.authority.roots().iter().map(ParsedCert::der).collect()
        }
        self.entries.len() == other.entries.len()
            && self.entries.iter().zip(&other.entries).all(|(a, b)| {
                a.authority.id() == b.authority.id() && a.state == b.state && roots(a) == roots(b)
            })
    }

    /// Replaces `current` with `fresh` unless they are the [`same`](Self::same_as); says
    /// whether it did. Publishers pass it to `watch::Sender::send_if_modified`, so followers
    /// wake only for a real change.
    pub fn replace_if_changed(current: &mut Arc<AuthoritySet>, fresh: AuthoritySet) -> bool {
        if current.same_as(&fresh) {
            return false;
        }
        *current = Arc::new(fresh);
        true
    }
}

/// Since when each trusted root has been in the bundle: `earlier` (a previous set's record)
/// when it knows the root, otherwise the earliest `created_at` of a trusted entry holding it.
fn roots_since(
    entries: &[AuthorityEntry],
    earlier: impl Fn(&str) -> Option<i64>,
) -> Vec<(String, i64)> {
    let mut since: Vec<(String, i64)> = Vec::new();
    for entry in entries.iter().filter(|e| e.state.trusted()) {
        for root in entry.authority.roots() {
            let fingerprint = crate::keys::sha256_hex(root.der());
            let at = earlier(&fingerprint).unwrap_or(entry.created_at);
            match since.iter_mut().find(|(f, _)| *f == fingerprint) {
                Some((_, known)) => *known = (*known).min(at),
                None => since.push((fingerprint, at)),
            }
        }
    }
    since
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::TrustDomain;
    use crate::keys::KeyType;
    use std::time::SystemTime;

    /// The steps follow the states in order, and their audit names are the recorded ones.
    #[test]
    fn steps_move_through_the_states_in_order() {
        use RotationStep::*;
        let path: Vec<_> = [Activate, Taint, Revoke]
            .iter()
            .map(|s| (s.from(), s.to(), s.audit_action()))
            .collect();
        assert_eq!(
            path,
            [
                (
                    AuthorityState::Prepared,
                    AuthorityState::Active,
                    "authority.activate"
                ),
                (
                    AuthorityState::Old,
                    AuthorityState::Tainted,
                    "authority.taint"
                ),
                (
                    AuthorityState::Tainted,
                    AuthorityState::Revoked,
                    "authority.revoke"
                ),
            ]
        );
    }

    fn entry(state: AuthorityState) -> AuthorityEntry {
        let td = TrustDomain::new("cluster.local").unwrap();
        AuthorityEntry {
            authority: Arc::new(
                Authority::generate_self_signed(&td, KeyType::EcP256, SystemTime::now()).unwrap(),
            ),
            state,
            source: "generated".into(),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn exactly_one_active() {
        use AuthorityState::*;
        assert!(AuthoritySet::new(vec![entry(Prepared)]).is_none());
        assert!(AuthoritySet::new(vec![entry(Active), entry(Active)]).is_none());
        let set = AuthoritySet::new(vec![entry(Old), entry(Active), entry(Prepared)]).unwrap();
        assert_eq!(set.active().id(), set.entries()[1].authority.id());
    }

    /// The same self-signed authority again, as a reloaded directory would produce it, with
    /// `root-cert.pem` listing `also_trusted` first.
    fn reloaded(a: &Authority, also_trusted: &[&Authority]) -> Authority {
        let mut roots: Vec<ParsedCert> = also_trusted.iter().map(|t| t.root().clone()).collect();
        roots.extend(a.roots().iter().cloned());
        Authority::new(
            crate::chain::CertPath {
                certs: vec![a.root().clone()],
            },
            roots,
            crate::keys::SigningKey::from_pkcs8(a.key().unwrap().pkcs8_der()).unwrap(),
        )
    }

    fn fingerprint(a: &Authority) -> String {
        crate::keys::sha256_hex(a.root().der())
    }

    /// Istio's root change through `cacerts`: root-cert.pem lists old + new, the new signs,
    /// then root-cert.pem lists only the new one. The old root leaves the bundle only then.
    #[test]
    fn a_plugged_in_root_stays_trusted_while_the_directory_lists_it() {
        let first = entry(AuthorityState::Active);
        let set = AuthoritySet::new(vec![first.clone()]).unwrap();
        assert_eq!(set.root_since(&fingerprint(&first.authority)), Some(0));
        let second = entry(AuthorityState::Active);
        let both = set.with_new_active(
            reloaded(&second.authority, &[&first.authority]),
            "cacerts",
            10,
        );
        assert_eq!(both.active().id(), second.authority.id());
        assert_eq!(
            both.get(first.authority.id().as_str()).unwrap().state,
            AuthorityState::Old
        );
        assert_eq!(both.bundle().len(), 2, "both roots trusted");
        assert_eq!(both.root_since(&fingerprint(&first.authority)), Some(0));
        assert_eq!(both.root_since(&fingerprint(&second.authority)), Some(10));
        assert_eq!(both.bundle_as_of(), 10);
        // The same material again (a rewritten chain file) replaces, not duplicates.
        let again = both.with_new_active(
            reloaded(&second.authority, &[&first.authority]),
            "cacerts",
            20,
        );
        assert_eq!(again.entries().len(), 2);
        assert_eq!(again.root_since(&fingerprint(&second.authority)), Some(10));
        // The old root removed from root-cert.pem: revoked, out of the bundle.
        let only_new = again.with_new_active(reloaded(&second.authority, &[]), "cacerts", 30);
        assert_eq!(
            only_new.get(first.authority.id().as_str()).unwrap().state,
            AuthorityState::Revoked
        );
        assert_eq!(only_new.bundle(), vec![second.authority.root()]);
        assert_eq!(only_new.root_since(&fingerprint(&first.authority)), None);
        assert!(!again.same_as(&only_new));
    }

    #[test]
    fn bundle_and_taint_follow_states() {
        use AuthorityState::*;
        let set = AuthoritySet::new(vec![
            entry(Revoked),
            entry(Tainted),
            entry(Active),
            entry(Prepared),
        ])
        .unwrap();
        let roots: Vec<_> = set.bundle().into_iter().cloned().collect();
        let expected: Vec<_> = set.entries()[1..]
            .iter()
            .map(|e| e.authority.root().clone())
            .collect();
        assert_eq!(roots, expected, "revoked root left out, order kept");
        assert_eq!(
            set.tainted_ids(),
            [set.entries()[1].authority.id().to_string()]
        );
        let id = |i: usize| set.entries()[i].authority.id().to_string();
        assert!(set.refuses_renewal_from(&id(0)));
        assert!(set.refuses_renewal_from(&id(1)));
        assert!(!set.refuses_renewal_from(&id(2)));
        assert!(!set.refuses_renewal_from(&id(3)));
        assert!(!set.refuses_renewal_from("unknown"));
        for state in [Prepared, Active, Old, Tainted, Revoked] {
            assert_eq!(AuthorityState::parse(state.as_str()), Some(state));
        }
    }

    /// After a forced activation meshca keeps serving from the previous authority until the new
    /// root has settled; a tainted previous authority is never used.
    #[test]
    fn serving_certificates_move_once_the_new_root_has_settled() {
        use AuthorityState::*;
        let mut old = entry(Old);
        old.updated_at = 100;
        let mut active = entry(Active);
        active.created_at = 100;
        let set = AuthoritySet::new(vec![old.clone(), active.clone()]).unwrap();
        let id = |e: &AuthorityEntry| e.authority.id().clone();
        assert_eq!(id(set.serving_signer(130, 60)), id(&old));
        assert_eq!(set.serving_signer_moves_at(130, 60), Some(160));
        assert_eq!(id(set.serving_signer(160, 60)), id(&active));
        assert_eq!(set.serving_signer_moves_at(160, 60), None);
        old.state = Tainted;
        let tainted = AuthoritySet::new(vec![old, active.clone()]).unwrap();
        assert_eq!(id(tainted.serving_signer(130, 60)), id(&active));
    }
}
