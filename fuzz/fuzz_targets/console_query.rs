//! Query strings into the web console's pages (the listing forms, paging cursors, export, audit
//! verification), through the real router with a signed-in session on a real CA over SQLite:
//! never a panic, never a 500, and whatever the query holds comes back only as text — every
//! element in a page is one the templates write, with no event-handler attribute.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

#[path = "shared/rest.rs"]
mod shared;

const PATHS: [&str; 7] = [
    "/ui/certificates",
    "/ui/audit",
    "/ui/certificates/export",
    "/ui/audit/verify",
    "/ui/",
    "/ui/authorities",
    "/ui/crl",
];

/// Every element the console's templates write (`ra/templates/console/`).
const ELEMENTS: [&str; 45] = [
    "a", "body", "br", "button", "code", "dd", "div", "dl", "dt", "em", "form", "h1", "h2", "head",
    "header", "html", "input", "label", "li", "line", "link", "main", "meta", "nav", "ol",
    "option", "p", "pre", "progress", "rect", "script", "section", "select", "span", "strong",
    "svg", "table", "tbody", "td", "text", "th", "thead", "title", "tr", "!doctype",
];

/// The session cookie of one auditor sign-in.
fn cookie() -> &'static str {
    static COOKIE: OnceLock<String> = OnceLock::new();
    COOKIE.get_or_init(|| {
        let request = Request::builder()
            .method(Method::POST)
            .uri("/ui/sign-in")
            .header(header::HOST, "fuzz")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!(
                "with=token&token={}",
                shared::AUDITOR_TOKEN
            )))
            .unwrap();
        let api = shared::api();
        let response = api
            .runtime
            .block_on(api.router.clone().oneshot(request))
            .unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        let set = response.headers()[header::SET_COOKIE].to_str().unwrap();
        set.split(';').next().unwrap().to_string()
    })
}

/// The tags in `html` as (element name, attribute names), reading quoted values as values.
fn tags(html: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        if rest.starts_with('/') {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '>' && *c != '/')
            .collect();
        let mut attributes = Vec::new();
        let mut word = String::new();
        let mut quote = None;
        let mut end = rest.len();
        for (i, c) in rest.char_indices().skip(name.chars().count()) {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '>') => {
                    end = i;
                    break;
                }
                (None, '=') => attributes.push(std::mem::take(&mut word)),
                (None, c) if c.is_whitespace() || c == '/' => {
                    if !word.is_empty() {
                        attributes.push(std::mem::take(&mut word));
                    }
                }
                (None, c) => word.push(c),
            }
        }
        if !word.is_empty() {
            attributes.push(word);
        }
        found.push((name, attributes));
        rest = &rest[end..];
    }
    found
}

fuzz_target!(|data: &[u8]| {
    let Some(uri) = shared::query_uri(data, &PATHS) else {
        return;
    };
    let Ok(request) = Request::get(&uri)
        .header(header::HOST, "fuzz")
        .header(header::COOKIE, cookie())
        .body(Body::empty())
    else {
        return; // not a URI a client could send
    };
    let api = shared::api();
    let (status, html, body) = api.runtime.block_on(async {
        let response = api.router.clone().oneshot(request).await.unwrap();
        let html = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"text/html"));
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, html, body)
    });
    shared::assert_answered(&uri, status);
    if !html {
        return;
    }
    let body = std::str::from_utf8(&body).expect("pages are UTF-8");
    let tags = tags(body);
    for (name, attributes) in &tags {
        assert!(
            ELEMENTS.contains(&name.as_str()),
            "{uri}: <{name}> is not the console's"
        );
        assert!(
            !attributes
                .iter()
                .any(|a| a.to_ascii_lowercase().starts_with("on")),
            "{uri}: <{name}> has an event handler: {attributes:?}"
        );
    }
    // The layout's one `<script src>` (error pages have none); never an inline one.
    let scripts: Vec<_> = tags.iter().filter(|(name, _)| name == "script").collect();
    assert!(
        scripts.len() <= 1 && scripts.iter().all(|(_, a)| a.iter().any(|a| a == "src")),
        "{uri}: a script that is not the console's own: {scripts:?}"
    );
});
