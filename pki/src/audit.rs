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
    pub details: Details,
}

/// An event's details: a JSON object, held as the text the chain's hash covers. Rendered once,
/// when the event is made, so an issuance's details go from its record's fields to text
/// without a `serde_json::Value` map in between.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Details(String);

/// An event at its place in the chain, borrowing the event: what the store's writers bind,
/// without copying the event's text into an [`AuditRecord`] first.
#[derive(Debug)]
pub struct ChainedEvent<'a> {
    pub seq: i64,
    pub event: &'a AuditEvent,
    pub prev_hash: String,
    pub hash: String,
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

// === impl Details ===

impl Details {
    /// Details from a struct whose fields are strings, numbers and options of them (which
    /// serializes as a JSON object, and cannot fail to).
    ///
    /// # Panics
    /// If `fields` does not serialize to JSON, e.g. a map keyed by something other than strings.
    pub fn of(fields: &impl Serialize) -> Self {
        let mut text = Vec::with_capacity(256);
        serde_json::to_writer(&mut text, fields).expect("audit details serialize as a JSON object");
        Details(String::from_utf8(text).expect("serde_json writes UTF-8"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<serde_json::Value> for Details {
    fn from(value: serde_json::Value) -> Self {
        Details(value.to_string())
    }
}

// === impl AuditEvent ===

impl AuditEvent {
    pub fn new(
        actor: (&str, &str),
        action: &str,
        target: &str,
        outcome: Outcome,
        details: impl Into<Details>,
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
            details: details.into(),
        }
    }

    /// This event's hash at position `seq` after `prev_hash`.
    fn hash_at(&self, seq: i64, prev_hash: &str) -> String {
        event_hash(&EventFields {
            seq,
            at: self.at,
            actor_method: &self.actor_method,
            actor_principal: &self.actor_principal,
            action: &self.action,
            target: &self.target,
            outcome: self.outcome.as_str(),
            details: self.details.as_str(),
            prev_hash,
        })
    }
}

/// `events` at `first_seq`, `first_seq + 1`, … after `prev_hash`, each one's hash the next
/// one's `prev_hash`: how a batch is appended after the log's head.
pub fn chain<'a>(
    events: impl IntoIterator<Item = &'a AuditEvent>,
    first_seq: i64,
    prev_hash: &str,
) -> Vec<ChainedEvent<'a>> {
    let mut prev = prev_hash.to_string();
    events
        .into_iter()
        .zip(first_seq..)
        .map(|(event, seq)| {
            let hash = event.hash_at(seq, &prev);
            let prev_hash = std::mem::replace(&mut prev, hash.clone());
            ChainedEvent {
                seq,
                event,
                prev_hash,
                hash,
            }
        })
        .collect()
}

// === impl ChainedEvent ===

impl ChainedEvent<'_> {
    /// The stored form, as a reader gets it back.
    pub fn to_record(&self) -> AuditRecord {
        AuditRecord {
            seq: self.seq,
            at: self.event.at,
            actor_method: self.event.actor_method.clone(),
            actor_principal: self.event.actor_principal.clone(),
            action: self.event.action.clone(),
            target: self.event.target.clone(),
            outcome: self.event.outcome.as_str().to_string(),
            details: self.event.details.as_str().to_string(),
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
        }
    }
}

// === impl AuditRecord ===

impl AuditRecord {
    /// SHA-256 over every field but `hash`, each length-prefixed so no two different events
    /// encode alike.
    pub fn compute_hash(&self) -> String {
        event_hash(&EventFields {
            seq: self.seq,
            at: self.at,
            actor_method: &self.actor_method,
            actor_principal: &self.actor_principal,
            action: &self.action,
            target: &self.target,
            outcome: &self.outcome,
            details: &self.details,
            prev_hash: &self.prev_hash,
        })
    }
}

/// What an event's hash covers: every stored field but the hash.
struct EventFields<'a> {
    seq: i64,
    at: i64,
    actor_method: &'a str,
    actor_principal: &'a str,
    action: &'a str,
    target: &'a str,
    outcome: &'a str,
    details: &'a str,
    prev_hash: &'a str,
}

/// SHA-256 over `fields`, each length-prefixed so no two different events encode alike, as
/// lowercase hex.
fn event_hash(fields: &EventFields<'_>) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut field = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    };
    field(&fields.seq.to_be_bytes());
    field(&fields.at.to_be_bytes());
    field(fields.actor_method.as_bytes());
    field(fields.actor_principal.as_bytes());
    field(fields.action.as_bytes());
    field(fields.target.as_bytes());
    field(fields.outcome.as_bytes());
    field(fields.details.as_bytes());
    field(fields.prev_hash.as_bytes());
    crate::keys::lower_hex(ctx.finish().as_ref())
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
        let events: Vec<_> = (1..=n)
            .map(|seq| {
                AuditEvent::new(
                    ("token", "ops"),
                    "authority.activate",
                    &format!("id-{seq}"),
                    Outcome::Success,
                    json!({ "n": seq }),
                )
            })
            .collect();
        super::chain(&events, 1, GENESIS_HASH)
            .iter()
            .map(ChainedEvent::to_record)
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
