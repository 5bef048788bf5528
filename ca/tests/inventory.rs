//! The auditor's inventory listing by SPIFFE id prefix and by window of issue times: a prefix
//! of few identities is read identity by identity and merged, a window of an hour minute by
//! minute, a broader one of either by one scan; either way a listing and its keyset pages answer
//! exactly the rows a scan of everything would, newest first. Runs on SQLite, and on PostgreSQL
//! when configured (always in CI).

mod common;

use common::*;
use meshca_ca::store::{CertificateFilter, CertificateRow, CertificateStatus, Store};
use meshca_ca::testing::{load_synthetic_inventory, InventoryShape};

const BASE: i64 = 1_787_875_200;
const ROWS: i64 = 3_000;
/// 120 identities in 4 namespaces: 30 per namespace (answered per identity), 120 under
/// `ns-` (a range scan).
const SHAPE: InventoryShape = InventoryShape {
    span_secs: 10 * DAY.as_secs() as i64,
    identities: 120,
    namespaces: 4,
};

/// Everything on record, newest first.
async fn everything(store: &Store, now: i64) -> Vec<CertificateRow> {
    let rows = store
        .certificates(&CertificateFilter::default(), now, None, i64::MAX)
        .await
        .unwrap();
    assert!(rows.windows(2).all(|w| w[0].id > w[1].id));
    rows
}

/// Every page of `filter` at `page` rows each, following the cursor.
async fn all_pages(store: &Store, filter: &CertificateFilter, now: i64, page: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut before = None;
    loop {
        let rows = store.certificates(filter, now, before, page).await.unwrap();
        assert!(rows.len() as i64 <= page);
        ids.extend(rows.iter().map(|r| r.id));
        match rows.last() {
            Some(last) if rows.len() as i64 == page => before = Some(last.id),
            _ => return ids,
        }
    }
}

/// Whether `row` is one `filter` names (the filters these tests use), as a scan in Rust.
fn scan_matches(row: &CertificateRow, filter: &CertificateFilter, now: i64) -> bool {
    let issued = row.issuance.issued_at;
    let id = &row.issuance.spiffe_id;
    filter
        .spiffe_id
        .as_deref()
        .is_none_or(|wanted| match wanted.strip_suffix('*') {
            Some(prefix) => id.starts_with(prefix),
            None => id == wanted,
        })
        && filter.issued_after.is_none_or(|t| issued >= t)
        && filter.issued_before.is_none_or(|t| issued < t)
        && match filter.status {
            Some(CertificateStatus::Valid) => {
                row.issuance.not_after > now && row.revoked_at.is_none()
            }
            None => true,
            Some(other) => panic!("not modelled: {other:?}"),
        }
}

/// `filter`'s listing, in pages of 7, 100 and everything, is what a scan of `everything` finds.
async fn assert_lists_what_a_scan_finds(
    store: &Store,
    filter: &CertificateFilter,
    now: i64,
    everything: &[CertificateRow],
    label: &str,
) {
    let expected: Vec<i64> = everything
        .iter()
        .filter(|r| scan_matches(r, filter, now))
        .map(|r| r.id)
        .collect();
    for page in [7, 100, 10 * ROWS] {
        let listed = all_pages(store, filter, now, page).await;
        assert!(
            listed == expected,
            "{label}, pages of {page}: listed {} rows, a scan finds {}; first difference at {:?}",
            listed.len(),
            expected.len(),
            listed.iter().zip(&expected).position(|(l, e)| l != e)
        );
    }
}

#[tokio::test]
async fn a_prefix_lists_what_a_scan_finds_in_either_plan() {
    let tmp = tempfile::tempdir().unwrap();
    for (dialect, url) in stores(tmp.path()).await {
        let store = open_store(&url).await;
        load_synthetic_inventory(&store, ROWS, BASE, SHAPE).await;
        // Half-way through: some certificates valid, most expired, 0.1 % revoked.
        let now = BASE + SHAPE.span_secs / 2;
        let everything = everything(&store, now).await;
        assert_eq!(everything.len() as i64, ROWS, "{dialect}");

        for prefix in [
            // One namespace: 30 identities.
            "spiffe://cluster.local/ns/ns-1/",
            // Eleven identities (sa-1 and sa-10 to sa-19), mid-namespace.
            "spiffe://cluster.local/ns/ns-2/sa/sa-1",
            // One identity, and a prefix of nothing.
            "spiffe://cluster.local/ns/ns-3/sa/sa-29",
            "spiffe://cluster.local/ns/ns-9/",
            // All 120: the range scan.
            "spiffe://cluster.local/ns/ns-",
            "",
        ] {
            for status in [None, Some(CertificateStatus::Valid)] {
                let filter = CertificateFilter {
                    spiffe_id: Some(format!("{prefix}*")),
                    status,
                    ..Default::default()
                };
                let label = format!("{dialect}: {prefix}* ({status:?})");
                assert_lists_what_a_scan_finds(&store, &filter, now, &everything, &label).await;
            }
        }
        // The prefix path keeps the other filters: one namespace's prefix within a namespace
        // filter for another answers nothing.
        let crossed = CertificateFilter {
            spiffe_id: Some("spiffe://cluster.local/ns/ns-1/*".into()),
            namespace: Some("ns-2".into()),
            ..Default::default()
        };
        assert!(all_pages(&store, &crossed, now, 100).await.is_empty());
    }
}

/// Two hours of 3,000 certificates (25 a minute), then one in seven moved 40 minutes back in
/// time: issue time and id no longer agree (as with replicas whose clocks differ, or a batch
/// committed late), so a minute's newest ids are not the window's.
const DENSE: InventoryShape = InventoryShape {
    span_secs: 2 * 3_600,
    identities: 40,
    namespaces: 4,
};

#[tokio::test]
async fn a_window_lists_what_a_scan_finds_in_either_plan() {
    let tmp = tempfile::tempdir().unwrap();
    for (dialect, url) in stores(tmp.path()).await {
        let store = open_store(&url).await;
        load_synthetic_inventory(&store, ROWS, BASE, DENSE).await;
        let shift = "UPDATE issued_certificates SET issued_at = issued_at - 2400 WHERE id % 7 = 3";
        match &store {
            Store::Sqlite(pool) => sqlx::query(shift).execute(pool).await.map(drop),
            Store::Postgres(pool) => sqlx::query(shift).execute(pool).await.map(drop),
        }
        .unwrap();
        let now = BASE + DENSE.span_secs / 2;
        let everything = everything(&store, now).await;
        assert_eq!(everything.len() as i64, ROWS, "{dialect}");

        let hour = 3_600;
        let windows = [
            // An hour, aligned to the minute (60 minutes) and not (61).
            (Some(BASE + 1_800), Some(BASE + 1_800 + hour)),
            (Some(BASE + 1_830), Some(BASE + 1_830 + hour)),
            // The longest window read minute by minute, and the shortest one read by a scan.
            (Some(BASE + 60), Some(BASE + 60 + 64 * 60)),
            (Some(BASE + 60), Some(BASE + 60 + 65 * 60)),
            // One second, nothing, and the wrong way round.
            (Some(BASE + 2_000), Some(BASE + 2_001)),
            (Some(BASE + 2_000), Some(BASE + 2_000)),
            (Some(BASE + 2_001), Some(BASE + 2_000)),
            // Open at either end, and a day (all of it).
            (Some(BASE + hour), None),
            (None, Some(BASE + hour)),
            (Some(BASE - hour), Some(BASE + 23 * hour)),
        ];
        for (after, before) in windows {
            for (prefix, status) in [
                (None, None),
                (None, Some(CertificateStatus::Valid)),
                // A prefix of all 40 identities is one range, and the window's plan still
                // applies; one of a namespace's 10 is read identity by identity, in the window.
                (Some("spiffe://cluster.local/ns/ns-"), None),
                (Some("spiffe://cluster.local/ns/ns-1/"), None),
            ] {
                let filter = CertificateFilter {
                    issued_after: after,
                    issued_before: before,
                    spiffe_id: prefix.map(|p| format!("{p}*")),
                    status,
                    ..Default::default()
                };
                let label = format!("{dialect}: [{after:?}, {before:?}) {prefix:?} {status:?}");
                assert_lists_what_a_scan_finds(&store, &filter, now, &everything, &label).await;
            }
        }
    }
}
