//! The overview page: the active authority, the bundle, certificates issued per hour over the
//! last 7 days (an SVG drawn here, so it needs no script), live certificates per authority,
//! what expires within a day, and the latest refusals. Every number comes from counters the
//! store keeps as it records (hours, expiry buckets, a partial index of refusals), so the page
//! costs the same over a million certificates as over ten.

use std::time::SystemTime;

use axum::extract::State;
use axum::response::Response;
use meshca_ca::store::AuditFilter;
use meshca_pki::time::unix_seconds;

use super::page::{render, Chrome, Rejection};
use super::session::Viewer;
use crate::rest::pagination::unix_to_rfc3339;
use crate::rest::views::{AuditEventView, AuthorityView, RootView};
use crate::rest::{audit_view, authority_list, ApiError, RestState};

const HOUR: i64 = 3600;
const CHART_HOURS: i64 = 7 * 24;
/// Refusals shown.
const RECENT: i64 = 10;

#[derive(askama::Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    chrome: Chrome,
    active: Option<ActiveAuthority>,
    authorities: Vec<AuthorityView>,
    bundle_roots: Vec<RootView>,
    bundle_version: String,
    expiring: i64,
    /// RFC 3339, for the link to the certificates that expire within a day.
    expiring_until: String,
    chart: Chart,
    /// The latest refusals and denials.
    events: Vec<AuditEventView>,
}

struct ActiveAuthority {
    id: String,
    subject: String,
    key_type: String,
    not_after: String,
}

/// A bar chart of one count per hour, laid out in SVG user units.
#[derive(Debug, PartialEq)]
pub struct Chart {
    pub width: i64,
    pub height: i64,
    pub bar_width: i64,
    pub bars: Vec<Bar>,
    /// Day boundaries (UTC), labelled with the date.
    pub ticks: Vec<Tick>,
    pub total: i64,
    pub peak: i64,
}

#[derive(Debug, PartialEq)]
pub struct Bar {
    pub x: i64,
    pub y: i64,
    pub height: i64,
    pub count: i64,
    /// The hour, RFC 3339.
    pub label: String,
}

#[derive(Debug, PartialEq)]
pub struct Tick {
    pub x: i64,
    pub label: String,
}

/// Lays out `hours` consecutive hours starting at `first_hour` (Unix seconds, on the hour)
/// from `(hour, count)` pairs (hours without one are zero; pairs outside the window are
/// ignored). Bars are scaled to the peak; 16 units at the bottom are left for the day labels.
pub fn chart(counts: &[(i64, i64)], first_hour: i64, hours: i64) -> Chart {
    const BAR: i64 = 5;
    const PLOT: i64 = 120;
    const LABELS: i64 = 16;
    let mut per_hour = vec![0i64; hours.max(0) as usize];
    for &(hour, count) in counts {
        let index = (hour - first_hour).div_euclid(HOUR);
        if (0..hours).contains(&index) {
            per_hour[index as usize] += count;
        }
    }
    let peak = per_hour.iter().copied().max().unwrap_or(0);
    let bars = per_hour
        .iter()
        .enumerate()
        .map(|(i, &count)| {
            // At least one unit for any hour with issuances, so a quiet hour is not lost.
            let height = match count {
                0 => 0,
                n => (n * PLOT / peak).max(1),
            };
            Bar {
                x: i as i64 * BAR,
                y: PLOT - height,
                height,
                count,
                label: unix_to_rfc3339(first_hour + i as i64 * HOUR),
            }
        })
        .collect();
    let ticks = (0..hours)
        .filter(|i| (first_hour + i * HOUR).rem_euclid(24 * HOUR) == 0)
        .map(|i| Tick {
            x: i * BAR + 1,
            label: unix_to_rfc3339(first_hour + i * HOUR)[..10].to_string(),
        })
        .collect();
    Chart {
        width: hours * BAR,
        height: PLOT + LABELS,
        bar_width: BAR - 1,
        bars,
        ticks,
        total: per_hour.iter().sum(),
        peak,
    }
}

pub async fn page(State(state): State<RestState>, viewer: Viewer) -> Result<Response, Rejection> {
    let now = unix_seconds(SystemTime::now());
    let store = state.ca.store();
    let internal = |e: meshca_ca::store::StoreError| Rejection::Api(ApiError::internal(&e));
    let list = authority_list(&state).await?;
    let first_hour = (now / HOUR - (CHART_HOURS - 1)) * HOUR;
    let counts = store.issued_per_hour(first_hour).await.map_err(internal)?;
    let expiring = store
        .count_expiring(now, now + 24 * HOUR)
        .await
        .map_err(internal)?;
    let refusals = AuditFilter {
        unsuccessful: true,
        ..AuditFilter::default()
    };
    let events = store
        .audit_events(&refusals, None, RECENT)
        .await
        .map_err(internal)?;
    let active = list
        .authorities
        .iter()
        .find(|a| a.state == "active")
        .map(|a| ActiveAuthority {
            id: a.id.clone(),
            subject: a.subject.clone(),
            key_type: a.key_type.clone(),
            not_after: a.not_after.clone(),
        });
    Ok(render(&OverviewPage {
        chrome: viewer.chrome("overview"),
        active,
        authorities: worth_a_row(list.authorities),
        bundle_version: state.bundles.current().version().to_string(),
        bundle_roots: list.bundle_roots,
        expiring,
        expiring_until: unix_to_rfc3339(now + 24 * HOUR),
        chart: chart(&counts, first_hour, CHART_HOURS),
        events: events.iter().map(audit_view).collect(),
    }))
}

/// The authorities worth a row: those holding live certificates, the active one and a
/// prepared one (none yet, but the next step of a rotation).
fn worth_a_row(authorities: Vec<AuthorityView>) -> Vec<AuthorityView> {
    authorities
        .into_iter()
        .filter(|a| a.live_certificates > 0 || matches!(a.state.as_str(), "active" | "prepared"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_places_each_hour_and_scales_to_the_peak() {
        // 2026-11-30T00:00:00Z
        let start = 1_796_601_600; // a UTC midnight
        let counts = [
            (start, 10),
            (start + HOUR, 5),
            (start + 3 * HOUR, 1),
            (start - HOUR, 99),         // before the window
            (start + 48 * HOUR, 1_000), // after it
        ];
        let chart = chart(&counts, start, 48);
        assert_eq!(chart.bars.len(), 48);
        assert_eq!(chart.total, 16);
        assert_eq!(chart.peak, 10);
        assert_eq!(chart.bars[0].height, 120);
        assert_eq!(chart.bars[1].height, 60);
        assert_eq!(chart.bars[2].height, 0);
        assert_eq!(chart.bars[3].height, 12);
        assert_eq!(
            chart.bars[3].y + chart.bars[3].height,
            120,
            "bars stand on the axis"
        );
        assert_eq!(chart.bars[1].x - chart.bars[0].x, 5);
        assert_eq!(chart.bars[1].label, unix_to_rfc3339(start + HOUR));
        assert_eq!(
            chart.ticks.iter().map(|t| t.x).collect::<Vec<_>>(),
            [1, 24 * 5 + 1],
            "one tick per UTC midnight"
        );
        assert_eq!(chart.ticks[0].label, unix_to_rfc3339(start)[..10]);

        let quiet = super::chart(&[(start, 1), (start + HOUR, 100_000)], start, 2);
        assert_eq!(
            quiet.bars[0].height, 1,
            "an hour with issuances stays visible"
        );
        let empty = super::chart(&[], start, 168);
        assert!(empty.bars.iter().all(|b| b.height == 0));
        assert_eq!(empty.peak, 0);
    }
}
