//! The authorities page: each authority's state, how far its root has reached (progress bars
//! over the same counts the rotation gates read), its live certificates, and for admins the
//! next rotation step with its gate. The page reloads its content every few seconds (a small
//! script, `console.js`) so a running rotation can be watched; without script it is a page
//! like any other.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use meshca_ca::keys::KeyType;
use meshca_ca::rotation::RotationStep;
use serde::Deserialize;

use super::page::{render, Chrome, Rejection};
use super::session::{AdminViewer, Viewer};
use crate::rest::views::{AuthorityView, RootView};
use crate::rest::{authority_list, prepare_generated, take_step_as, RestState};

/// How often the page reloads its content.
const REFRESH_SECS: u64 = 5;

#[derive(askama::Template)]
#[template(path = "console/authorities.html")]
struct AuthoritiesPage {
    chrome: Chrome,
    authorities: Vec<Row>,
    bundle_roots: Vec<RootView>,
    key_types: Vec<&'static str>,
    refresh_secs: u64,
    message: Option<String>,
}

/// An authority with what an admin can do next.
struct Row {
    view: AuthorityView,
    /// The next rotation step, as its path segment.
    next_step: Option<&'static str>,
    /// Whether that step's gate is closed (taking it means forcing it).
    gate_closed: bool,
}

/// Missing fields are empty, so a forged form is refused for its token (403), not its shape.
#[derive(Debug, Deserialize)]
pub struct StepForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    force: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct PrepareForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    key_type: String,
}

#[derive(Debug, Deserialize)]
pub struct Done {
    done: Option<String>,
}

/// The next rotation step an admin can take on an authority in `state`, as its path segment.
pub fn next_step(state: &str) -> Option<&'static str> {
    match state {
        "prepared" => Some("activate"),
        "old" => Some("taint"),
        "tainted" => Some("revoke"),
        _ => None,
    }
}

fn step_of(segment: &str) -> Option<RotationStep> {
    match segment {
        "activate" => Some(RotationStep::Activate),
        "taint" => Some(RotationStep::Taint),
        "revoke" => Some(RotationStep::Revoke),
        _ => None,
    }
}

pub async fn page(
    State(state): State<RestState>,
    viewer: Viewer,
    axum::extract::Query(done): axum::extract::Query<Done>,
) -> Result<Response, Rejection> {
    let list = authority_list(&state).await?;
    Ok(render(&AuthoritiesPage {
        chrome: viewer.chrome("authorities"),
        authorities: list
            .authorities
            .into_iter()
            .map(|view| Row {
                next_step: next_step(&view.state),
                gate_closed: view.gate.as_ref().is_some_and(|g| !g.open),
                view,
            })
            .collect(),
        bundle_roots: list.bundle_roots,
        key_types: [
            KeyType::EcP256,
            KeyType::EcP384,
            KeyType::Rsa2048,
            KeyType::Rsa4096,
        ]
        .map(KeyType::as_str)
        .to_vec(),
        refresh_secs: REFRESH_SECS,
        message: done.done.map(|what| format!("Done: {what}.")),
    }))
}

/// Takes a rotation step (audited with the session's identity, as the API's would be).
pub async fn step(
    State(state): State<RestState>,
    AdminViewer(viewer): AdminViewer,
    Path((id, segment)): Path<(String, String)>,
    Form(form): Form<StepForm>,
) -> Result<Response, Rejection> {
    viewer.check_csrf(&form.csrf)?;
    let step = step_of(&segment)
        .ok_or_else(|| Rejection::BadRequest(format!("no rotation step {segment:?}")))?;
    let force = form.force.as_deref() == Some("true");
    let view = take_step_as(&state, &viewer.actor, &id, step, force).await?;
    Ok(done(&format!("{} is {}", view.id, view.state)))
}

pub async fn prepare(
    State(state): State<RestState>,
    AdminViewer(viewer): AdminViewer,
    Form(form): Form<PrepareForm>,
) -> Result<Response, Rejection> {
    viewer.check_csrf(&form.csrf)?;
    let key_type: KeyType = form
        .key_type
        .parse()
        .map_err(|e| Rejection::BadRequest(format!("key type: {e}")))?;
    let view = prepare_generated(&state, &viewer.actor, key_type).await?;
    Ok(done(&format!("{} is prepared", view.id)))
}

/// Back to the page (post/redirect/get, so a reload does not repeat the step).
fn done(what: &str) -> Response {
    let query = serde_urlencoded::to_string([("done", what)]).unwrap_or_default();
    Redirect::to(&format!("/ui/authorities?{query}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_offers_the_step_that_leaves_it() {
        for (state, step) in [
            ("prepared", Some(RotationStep::Activate)),
            ("old", Some(RotationStep::Taint)),
            ("tainted", Some(RotationStep::Revoke)),
            ("active", None),
            ("revoked", None),
        ] {
            assert_eq!(next_step(state).and_then(step_of), step, "{state}");
            if let Some(step) = step {
                assert_eq!(step.from().as_str(), state);
            }
        }
    }
}
