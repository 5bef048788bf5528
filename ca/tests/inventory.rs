//! The auditor's inventory listing by SPIFFE id prefix: a prefix of few identities is read
//! identity by identity and merged, a broad one by one range scan; either way a listing and its
//! keyset pages answer exactly the rows a scan of everything would, newest first. Runs on
//! SQLite, and on PostgreSQL when configured (always in CI).

mod common;

use common::*;
use meshca_ca::store::{CertificateFilter, CertificateStatus, Store};
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

#[tokio::test]
async fn a_prefix_lists_what_a_scan_finds_in_either_plan() {
    let tmp = tempfile::tempdir().unwrap();
    for (dialect, url) in stores(tmp.path()).await {
        let store = open_store(&url).await;
        load_synthetic_inventory(&store, ROWS, BASE, SHAPE).await;
        // Half-way through: some certificates valid, most expired, 0.1 % revoked.
        let now = BASE + SHAPE.span_secs / 2;
        let everything = store
            .certificates(&CertificateFilter::default(), now, None, 10 * ROWS)
            .await
            .unwrap();
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
                let expected: Vec<i64> = everything
                    .iter()
                    .filter(|r| r.issuance.spiffe_id.starts_with(prefix))
                    .filter(|r| match status {
                        Some(_) => r.issuance.not_after > now && r.revoked_at.is_none(),
                        None => true,
                    })
                    .map(|r| r.id)
                    .collect();
                let filter = CertificateFilter {
                    spiffe_id: Some(format!("{prefix}*")),
                    status,
                    ..Default::default()
                };
                for page in [7, 100, 10 * ROWS] {
                    let listed = all_pages(&store, &filter, now, page).await;
                    assert_eq!(
                        listed, expected,
                        "{dialect}: {prefix}* ({status:?}) in pages of {page}"
                    );
                }
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
