//! One holder at a time across replicas sharing a PostgreSQL store, and the role passes on
//! when the holder goes away; a SQLite store's one process always holds it.

mod common;

use std::time::Duration;

use common::*;
use tokio::sync::watch;

async fn until(rx: &mut watch::Receiver<bool>, value: bool) {
    tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|v| *v == value))
        .await
        .expect("leadership settles within 20 s")
        .unwrap();
}

#[tokio::test]
async fn one_replica_leads_and_another_takes_over_when_it_goes() {
    let tmp = tempfile::tempdir().unwrap();
    for (dialect, url) in stores(tmp.path()).await {
        let first = open_store(&url).await;
        let mut first_leads = first.leadership(7_001);
        if dialect == "sqlite" {
            assert!(*first_leads.borrow(), "the only process leads");
            continue;
        }
        until(&mut first_leads, true).await;
        let second = open_store(&url).await;
        let mut second_leads = second.leadership(7_001);
        // Another role is free, so this one's refusal is the lock's, not a broken connection.
        let mut other_role = second.leadership(7_002);
        until(&mut other_role, true).await;
        assert!(!*second_leads.borrow(), "{dialect}: one holder at a time");

        drop(first_leads);
        until(&mut second_leads, true).await;
    }
}
