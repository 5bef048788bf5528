//! The counters the rotation gates and the console read ([`super::counters`], the console's
//! issued-per-hour chart), kept on SQLite by the issuance writer in the batch's own
//! transaction, summed per batch. Until migration 0011 triggers kept them, one firing per
//! certificate: six statements per row, and a statement journal on every issuance insert (a
//! statement whose triggers may fail halfway must be undoable), ~13 µs of server CPU per
//! certificate at 64 in flight. Per batch it is one upsert per counter row the batch touches
//! and one read and one write per identity in it. PostgreSQL keeps its triggers: there they
//! run in the database server, inside the batch's one statement.
//!
//! Revocations still count through their trigger (0009): one row at a time, seldom.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension, Params, Transaction};

use super::records::IssuanceRecord;

/// An expiry bucket: `not_after` rounded up to 10 s, as the gates' sums and the revocation
/// trigger compute it, so a certificate counts as live at most 10 s past its expiry.
fn expires_bucket(not_after: i64) -> i64 {
    (not_after + 9) / 10 * 10
}

/// What the counts need of an identity's newest certificate, as `identity_latest` holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Newest {
    issued_at: i64,
    bundle_as_of: i64,
    expires_bucket: i64,
    /// Not revoked.
    counted: bool,
}

impl Newest {
    fn of(record: &IssuanceRecord) -> Self {
        Newest {
            issued_at: record.issuance.issued_at,
            bundle_as_of: record.bundle_as_of,
            expires_bucket: expires_bucket(record.issuance.not_after),
            counted: true,
        }
    }

    /// The `identity_counts` key this certificate counts under.
    fn key(&self) -> (i64, i64) {
        (self.bundle_as_of, self.expires_bucket)
    }
}

/// Folds one identity's certificates of a batch, in the order they were recorded, onto its
/// newest on record: a certificate takes the place of one issued at the same second or
/// earlier (the later recorded wins a tie), and the one it replaces stops counting toward
/// `identity_counts` if it still did. Returns the batch's certificate that became the newest,
/// if one did.
fn fold_newest<'r>(
    on_record: Option<Newest>,
    recorded: &[&'r IssuanceRecord],
    identity_counts: &mut BTreeMap<(i64, i64), i64>,
) -> Option<&'r IssuanceRecord> {
    let mut newest = on_record;
    let mut replaced_by = None;
    for &record in recorded {
        if newest.is_some_and(|n| n.issued_at > record.issuance.issued_at) {
            continue;
        }
        if let Some(replaced) = newest.filter(|n| n.counted) {
            *identity_counts.entry(replaced.key()).or_default() -= 1;
        }
        let next = Newest::of(record);
        *identity_counts.entry(next.key()).or_default() += 1;
        newest = Some(next);
        replaced_by = Some(record);
    }
    replaced_by
}

/// Runs `sql` once with each of `rows`.
fn execute_each<P: Params>(
    tx: &Transaction<'_>,
    sql: &str,
    rows: impl IntoIterator<Item = P>,
) -> rusqlite::Result<()> {
    let mut statement = tx.prepare_cached(sql)?;
    for row in rows {
        statement.execute(row)?;
    }
    Ok(())
}

/// What one batch adds to the counters, gathered as its issuances are recorded.
#[derive(Debug, Default)]
pub(super) struct BatchCounts<'a> {
    /// Unrevoked certificates by (authority, expiry bucket).
    live: BTreeMap<(&'a str, i64), i64>,
    /// Workload certificates by (bundle their answer carried, expiry bucket).
    bundles: BTreeMap<(i64, i64), i64>,
    /// Certificates by the hour they were issued in.
    per_hour: BTreeMap<i64, i64>,
    /// Each workload identity's certificates, in the order recorded.
    identities: BTreeMap<&'a str, Vec<&'a IssuanceRecord>>,
}

impl<'a> BatchCounts<'a> {
    /// Counts a certificate the batch recorded.
    pub(super) fn add(&mut self, record: &'a IssuanceRecord) {
        let issuance = &record.issuance;
        let bucket = expires_bucket(issuance.not_after);
        *self
            .live
            .entry((issuance.authority_id.as_str(), bucket))
            .or_default() += 1;
        *self
            .per_hour
            .entry(issuance.issued_at / 3600 * 3600)
            .or_default() += 1;
        // Certificates without a SPIFFE id (none are issued today) are no workload's.
        if !issuance.spiffe_id.is_empty() {
            *self
                .bundles
                .entry((record.bundle_as_of, bucket))
                .or_default() += 1;
            self.identities
                .entry(issuance.spiffe_id.as_str())
                .or_default()
                .push(record);
        }
    }

    /// Adds the batch to the counter tables, inside its transaction.
    pub(super) fn write(self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        execute_each(
            tx,
            "INSERT INTO live_certificate_counts (authority_id, expires_bucket, n) \
             VALUES ($1, $2, $3) ON CONFLICT (authority_id, expires_bucket) \
             DO UPDATE SET n = n + excluded.n",
            self.live
                .iter()
                .map(|((authority, bucket), n)| (authority, bucket, n)),
        )?;
        execute_each(
            tx,
            "INSERT INTO bundle_counts (bundle_as_of, expires_bucket, n) VALUES ($1, $2, $3) \
             ON CONFLICT (bundle_as_of, expires_bucket) DO UPDATE SET n = n + excluded.n",
            self.bundles
                .iter()
                .map(|((bundle_as_of, bucket), n)| (bundle_as_of, bucket, n)),
        )?;
        execute_each(
            tx,
            "INSERT INTO issued_per_hour (hour, n) VALUES ($1, $2) \
             ON CONFLICT (hour) DO UPDATE SET n = n + excluded.n",
            &self.per_hour,
        )?;

        let mut read_newest = tx.prepare_cached(
            "SELECT issued_at, bundle_as_of, expires_bucket, counted \
             FROM identity_latest WHERE spiffe_id = $1",
        )?;
        let mut write_newest = tx.prepare_cached(
            "INSERT INTO identity_latest \
             (spiffe_id, serial, issued_at, bundle_as_of, expires_bucket, counted) \
             VALUES ($1, $2, $3, $4, $5, 1) ON CONFLICT (spiffe_id) DO UPDATE SET \
             serial = excluded.serial, issued_at = excluded.issued_at, \
             bundle_as_of = excluded.bundle_as_of, expires_bucket = excluded.expires_bucket, \
             counted = 1",
        )?;
        let mut identity_counts = BTreeMap::new();
        for (spiffe_id, recorded) in &self.identities {
            let on_record = read_newest
                .query_row([spiffe_id], |row| {
                    Ok(Newest {
                        issued_at: row.get(0)?,
                        bundle_as_of: row.get(1)?,
                        expires_bucket: row.get(2)?,
                        counted: row.get(3)?,
                    })
                })
                .optional()?;
            if let Some(record) = fold_newest(on_record, recorded, &mut identity_counts) {
                let newest = Newest::of(record);
                write_newest.execute(params![
                    spiffe_id,
                    record.issuance.serial,
                    newest.issued_at,
                    newest.bundle_as_of,
                    newest.expires_bucket
                ])?;
            }
        }
        // A count only ever falls for a certificate that was counted, so its row exists. (SQLite
        // numbers `$n` parameters in the order they first appear in the text.)
        let (gained, lost): (Vec<_>, Vec<_>) = identity_counts
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .partition(|(_, n)| *n > 0);
        execute_each(
            tx,
            "INSERT INTO identity_counts (bundle_as_of, expires_bucket, n) VALUES ($1, $2, $3) \
             ON CONFLICT (bundle_as_of, expires_bucket) DO UPDATE SET n = n + excluded.n",
            gained
                .into_iter()
                .map(|((bundle_as_of, bucket), n)| (bundle_as_of, bucket, n)),
        )?;
        execute_each(
            tx,
            "UPDATE identity_counts SET n = n + $1 WHERE bundle_as_of = $2 AND expires_bucket = $3",
            lost.into_iter()
                .map(|((bundle_as_of, bucket), n)| (n, bundle_as_of, bucket)),
        )
    }
}

/// Counts every certificate on record afresh, as the writer would have counted them one batch at
/// a time: for stores filled by SQL rather than through the writer (the benches' and tests'
/// synthetic loads), and to check the writer against.
#[cfg(any(test, feature = "testing"))]
pub(crate) const RECOUNT: &[&str] = &[
    "DELETE FROM live_certificate_counts",
    "DELETE FROM bundle_counts",
    "DELETE FROM identity_latest",
    "DELETE FROM identity_counts",
    "DELETE FROM issued_per_hour",
    "INSERT INTO live_certificate_counts (authority_id, expires_bucket, n) \
     SELECT c.authority_id, (c.not_after + 9) / 10 * 10, count(*) FROM issued_certificates c \
     WHERE NOT EXISTS (SELECT 1 FROM certificate_revocations r WHERE r.serial = c.serial) \
     GROUP BY 1, 2",
    "INSERT INTO bundle_counts (bundle_as_of, expires_bucket, n) \
     SELECT c.bundle_as_of, (c.not_after + 9) / 10 * 10, count(*) FROM issued_certificates c \
     WHERE c.spiffe_id <> '' \
       AND NOT EXISTS (SELECT 1 FROM certificate_revocations r WHERE r.serial = c.serial) \
     GROUP BY 1, 2",
    // Each identity's newest: latest issued_at, the later recorded on a tie. (One sort of the
    // table, where a lookup per certificate would read each identity's rows once per row.)
    "INSERT INTO identity_latest \
     (spiffe_id, serial, issued_at, bundle_as_of, expires_bucket, counted) \
     SELECT spiffe_id, serial, issued_at, bundle_as_of, (not_after + 9) / 10 * 10, \
            NOT EXISTS (SELECT 1 FROM certificate_revocations r WHERE r.serial = c.serial) \
     FROM (SELECT spiffe_id, serial, issued_at, bundle_as_of, not_after, row_number() OVER ( \
             PARTITION BY spiffe_id ORDER BY issued_at DESC, id DESC) AS newest_first \
           FROM issued_certificates WHERE spiffe_id <> '') c \
     WHERE newest_first = 1",
    "INSERT INTO identity_counts (bundle_as_of, expires_bucket, n) \
     SELECT bundle_as_of, expires_bucket, count(*) FROM identity_latest WHERE counted = 1 \
     GROUP BY 1, 2",
    "INSERT INTO issued_per_hour (hour, n) \
     SELECT issued_at / 3600 * 3600, count(*) FROM issued_certificates GROUP BY 1",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::issuance_record;

    fn issued(serial: &str, issued_at: i64, bundle_as_of: i64) -> IssuanceRecord {
        let mut record = issuance_record(serial);
        record.issuance.issued_at = issued_at;
        record.issuance.not_after = issued_at + 3600;
        record.bundle_as_of = bundle_as_of;
        record
    }

    fn newest(record: &IssuanceRecord) -> Newest {
        Newest::of(record)
    }

    /// A renewal takes its predecessor's place and moves the identity's count to its own
    /// bundle and bucket; several in one batch move it once, to the last.
    #[test]
    fn renewals_in_a_batch_move_the_identity_to_the_last() {
        let first = issued("01", 1000, 10);
        let (second, third) = (issued("02", 1005, 20), issued("03", 1005, 30));
        let mut counts = BTreeMap::new();
        let folded = fold_newest(Some(newest(&first)), &[&second, &third], &mut counts);
        assert_eq!(folded, Some(&third), "the later recorded wins a tie");
        let net: Vec<_> = counts.into_iter().filter(|(_, n)| *n != 0).collect();
        assert_eq!(net, [(newest(&first).key(), -1), (newest(&third).key(), 1)]);
    }

    /// An identity seen for the first time counts once; a certificate issued before the newest
    /// on record (a slow caller's) changes nothing.
    #[test]
    fn a_new_identity_counts_and_an_older_certificate_changes_nothing() {
        let (a, late) = (issued("0a", 1000, 10), issued("0b", 990, 10));
        let mut counts = BTreeMap::new();
        assert_eq!(fold_newest(None, &[&a], &mut counts), Some(&a), "inserted");
        assert_eq!(counts, BTreeMap::from([(newest(&a).key(), 1)]));

        let mut counts = BTreeMap::new();
        assert_eq!(fold_newest(Some(newest(&a)), &[&late], &mut counts), None);
        assert!(counts.is_empty(), "{counts:?}");
    }

    /// The newest revoked no longer counts: its renewal counts without taking one away.
    #[test]
    fn renewing_past_a_revoked_newest_takes_nothing_away() {
        let revoked = Newest {
            counted: false,
            ..newest(&issued("01", 1000, 10))
        };
        let renewal = issued("02", 1010, 10);
        let mut counts = BTreeMap::new();
        fold_newest(Some(revoked), &[&renewal], &mut counts);
        assert_eq!(counts, BTreeMap::from([(newest(&renewal).key(), 1)]));
    }

    #[test]
    fn buckets_round_up_to_ten_seconds() {
        assert_eq!(expires_bucket(1000), 1000);
        assert_eq!(expires_bucket(1001), 1010);
        assert_eq!(expires_bucket(1009), 1010);
    }
}
