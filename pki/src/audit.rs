//! The tamper-evident audit log: events chained by SHA-256, each hash covering the event's
//! fields and its predecessor's hash. Changing or deleting a stored row breaks the chain at
//! that row, and [`verify_chain`] names it.

use serde::Serialize;

/// The hash before the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Whether what was attempted happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done (an issuance, an admin action).
    Success,
    /// Refused: bad input, wrong state, policy.
    Refused,
    /// Authentication or authorization failed.
    Denied,
}

/// An event to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// Unix seconds.
    pub at: i64,
    /// How the actor authenticated: `jwt`, `tokenreview`, `renewal`, `athenz`, `token`,
    /// `mtls`, `internal`, or `anonymous`.
    pub actor_method: String,
    pub actor_principal: String,
    /// `certificate.issue`, `certificate.revoke`, `authority.prepare`, …, `rest.authenticate`.
    pub action: String,
    /// What it was done to: a serial, an authority id, a path.
    pub target: String,
    pub outcome: Outcome,
    /// A JSON object with the rest.
    pub details: serde_json::Value,
}

/// An event as stored: its place in the chain and its hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: i64,
    pub actor_method: String,
    pub actor_principal: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    /// JSON text, exactly as hashed.
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Where the chain first breaks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BrokenLink {
    pub seq: i64,
    pub reason: String,
}

// === impl Outcome ===

impl Outcome {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Refused => "refused",
            Self::Denied => "denied",
        }
    }
}

// === impl AuditEvent ===

impl AuditEvent {
    pub fn new(
        actor: (&str, &str),
        action: &str,
        target: &str,
        outcome: Outcome,
        details: serde_json::Value,
    ) -> Self {
        Self {
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            actor_method: actor.0.to_string(),
            actor_principal: actor.1.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            outcome,
            details,
        }
    }

    /// The stored form at position `seq` after `prev_hash`.
    pub fn chained(&self, seq: i64, prev_hash: &str) -> AuditRecord {
        let mut record = AuditRecord {
            seq,
            at: self.at,
            actor_method: self.actor_method.clone(),
            actor_principal: self.actor_principal.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            outcome: self.outcome.as_str().to_string(),
            details: self.details.to_string(),
            prev_hash: prev_hash.to_string(),
            hash: String::new(),
        };
        record.hash = record.compute_hash();
        record
    }
}

/// `events` in their stored form at `first_seq`, `first_seq + 1`, … after `prev_hash`, each
/// one's hash the next one's `prev_hash`: how a batch is appended after the log's head.
pub fn chain<'a>(
    events: impl IntoIterator<Item = &'a AuditEvent>,
    first_seq: i64,
    prev_hash: &str,
) -> Vec<AuditRecord> {
    let mut prev = prev_hash.to_string();
    events
        .into_iter()
        .zip(first_seq..)
        .map(|(event, seq)| {
            let record = event.chained(seq, &prev);
            prev.clone_from(&record.hash);
            record
        })
        .collect()
}

// === impl AuditRecord ===

impl AuditRecord {
    /// SHA-256 over every field but `hash`, each length-prefixed so no two different events
    /// encode alike.
    pub fn compute_hash(&self) -> String {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut field = |bytes: &[u8]| {
            ctx.update(&(bytes.len() as u64).to_be_bytes());
            ctx.update(bytes);
        };
        field(&self.seq.to_be_bytes());
        field(&self.at.to_be_bytes());
        field(self.actor_method.as_bytes());
        field(self.actor_principal.as_bytes());
        field(self.action.as_bytes());
        field(self.target.as_bytes());
        field(self.outcome.as_bytes());
        field(self.details.as_bytes());
        field(self.prev_hash.as_bytes());
        crate::keys::lower_hex(ctx.finish().as_ref())
    }
}

/// Checks records given in `seq` order, continuing from (`prev_seq`, `prev_hash`); returns
/// the new tail or the first broken link. Call it page by page to verify any length in
/// constant memory.
pub fn verify_chain<'a>(
    records: impl IntoIterator<Item = &'a AuditRecord>,
    mut prev_seq: i64,
    mut prev_hash: String,
) -> Result<(i64, String), BrokenLink> {
    for record in records {
        if record.seq != prev_seq + 1 {
            return Err(BrokenLink {
                seq: prev_seq + 1,
                reason: format!(
                    "event {} is missing (the next stored event is {})",
                    prev_seq + 1,
                    record.seq
                ),
            });
        }
        if record.prev_hash != prev_hash {
            return Err(BrokenLink {
                seq: record.seq,
                reason: "does not link to the previous event (it was altered, or one before it was replaced)"
                    .into(),
            });
        }
        if record.compute_hash() != record.hash {
            return Err(BrokenLink {
                seq: record.seq,
                reason: "its content does not match its hash (the row was altered)".into(),
            });
        }
        prev_seq = record.seq;
        prev_hash = record.hash.clone();
    }
    Ok((prev_seq, prev_hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let event = AuditEvent::new(
                    ("token", "ops"),
                    "authority.activate",
                    &format!("id-{seq}"),
                    Outcome::Success,
                    json!({ "n": seq }),
                );
                let record = event.chained(seq, &prev);
                prev = record.hash.clone();
                record
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies_in_pages() {
        let records = chain(5);
        let (seq, hash) = verify_chain(&records[..2], 0, GENESIS_HASH.into()).unwrap();
        let (seq, hash) = verify_chain(&records[2..], seq, hash).unwrap();
        assert_eq!(seq, 5);
        assert_eq!(hash, records[4].hash);
    }

    #[test]
    fn names_the_first_altered_deleted_or_reordered_row() {
        let mut altered = chain(5);
        altered[2].outcome = "refused".into();
        let broken = verify_chain(&altered, 0, GENESIS_HASH.into()).unwrap_err();
        assert_eq!(broken.seq, 3);
        assert!(broken.reason.contains("altered"), "{}", broken.reason);

        // Rehashing the altered row does not help: the next one no longer links to it.
        altered[2].hash = altered[2].compute_hash();
        let broken = verify_chain(&altered, 0, GENESIS_HASH.into()).unwrap_err();
        assert_eq!(broken.seq, 4);

        let mut deleted = chain(5);
        deleted.remove(1);
        let broken = verify_chain(&deleted, 0, GENESIS_HASH.into()).unwrap_err();
        assert_eq!(broken.seq, 2);
        assert!(broken.reason.contains("missing"));

        let mut truncated_head = chain(3);
        truncated_head.remove(0);
        assert_eq!(
            verify_chain(&truncated_head, 0, GENESIS_HASH.into())
                .unwrap_err()
                .seq,
            1
        );
    }

    #[test]
    fn every_field_is_covered() {
        let base = chain(1).remove(0);
        let mutations: [fn(&mut AuditRecord); 8] = [
            |r| r.at += 1,
            |r| r.actor_method.push('x'),
            |r| r.actor_principal.push('x'),
            |r| r.action.push('x'),
            |r| r.target.push('x'),
            |r| r.outcome.push('x'),
            |r| r.details.push(' '),
            |r| r.seq += 1,
        ];
        for mutate in mutations {
            let mut r = base.clone();
            mutate(&mut r);
            assert_ne!(r.compute_hash(), base.hash);
        }
        // Moving bytes between adjacent fields changes the hash too (length prefixes).
        let mut shifted = base.clone();
        shifted.actor_method = "tok".into();
        shifted.actor_principal = format!("en{}", base.actor_principal);
        assert_ne!(shifted.compute_hash(), base.hash);
    }
}
