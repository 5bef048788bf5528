//! Query strings (filters, cursors, limits, times) into the REST API's listing endpoints, through
//! the real router on a real CA over SQLite: never a panic, never a 500; a query is answered
//! 200 or refused 400 with the API's error body.
#![no_main]

use axum::body::Body;
use axum::http::{header, Request};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

#[path = "shared/rest.rs"]
mod shared;

const PATHS: [&str; 4] = [
    "/v1/certificates",
    "/v1/audit",
    "/v1/certificates/export",
    "/v1/crl",
];

fuzz_target!(|data: &[u8]| {
    let Some(uri) = shared::query_uri(data, &PATHS) else {
        return;
    };
    let Ok(request) = Request::get(&uri)
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", shared::AUDITOR_TOKEN),
        )
        .body(Body::empty())
    else {
        return; // not a URI a client could send
    };
    let api = shared::api();
    let status = api
        .runtime
        .block_on(api.router.clone().oneshot(request))
        .unwrap()
        .status();
    shared::assert_answered(&uri, status);
});
