//! The fake API server's HTTP side: the core/v1 routes for namespaces, ConfigMaps and
//! (read-only) pods, each answering with the JSON, status codes and `Status` bodies of the real
//! server, and watches streamed as JSON lines that replay history and then follow live changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::paging::{self, ListRequest};
use super::selector::Selector;
use super::store::{status, Broadcast, Change, Kind, Refusal, Shared, Store};

type Params = Query<HashMap<String, String>>;

/// What a list or watch asked for.
struct Filter {
    kind: Kind,
    namespace: Option<String>,
    labels: Selector,
    fields: Selector,
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v1/namespaces", get(list_namespaces))
        .route("/api/v1/namespaces/{name}", get(get_namespace))
        .route("/api/v1/configmaps", get(list_all_configmaps))
        .route(
            "/api/v1/namespaces/{namespace}/configmaps",
            get(list_configmaps).post(create_configmap),
        )
        .route(
            "/api/v1/namespaces/{namespace}/configmaps/{name}",
            get(get_configmap)
                .put(update_configmap)
                .delete(delete_configmap),
        )
        .route("/api/v1/pods", get(list_all_pods))
        .route("/api/v1/namespaces/{namespace}/pods", get(list_pods))
        .route("/api/v1/namespaces/{namespace}/pods/{name}", get(get_pod))
        .with_state(shared)
}

async fn list_namespaces(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    list_or_watch(&shared, &headers, &params, Kind::Namespace, None)
}

async fn list_all_configmaps(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    list_or_watch(&shared, &headers, &params, Kind::ConfigMap, None)
}

async fn list_configmaps(
    State(shared): State<Arc<Shared>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    list_or_watch(&shared, &headers, &params, Kind::ConfigMap, Some(namespace))
}

async fn list_all_pods(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    list_or_watch(&shared, &headers, &params, Kind::Pod, None)
}

async fn list_pods(
    State(shared): State<Arc<Shared>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    list_or_watch(&shared, &headers, &params, Kind::Pod, Some(namespace))
}

async fn get_namespace(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    get_one(&shared, &headers, Kind::Namespace, &name, |store| {
        store.namespaces.get(&name).map(|o| Value::clone(o))
    })
}

async fn get_configmap(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    get_one(&shared, &headers, Kind::ConfigMap, &name, |store| {
        store
            .configmaps
            .get(&(namespace, name.clone()))
            .map(|o| Value::clone(o))
    })
}

async fn get_pod(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    get_one(&shared, &headers, Kind::Pod, &name, |store| {
        store
            .pods
            .get(&(namespace, name.clone()))
            .map(|o| Value::clone(o))
    })
}

/// A GET of one object: authorized, then the object or the real server's 404 `Status`.
fn get_one(
    shared: &Shared,
    headers: &HeaderMap,
    kind: Kind,
    name: &str,
    lookup: impl FnOnce(&Store) -> Option<Value>,
) -> Response {
    if let Err(refusal) = authorize(shared, headers) {
        return answer(Err(refusal));
    }
    let store = shared.lock();
    answer(lookup(&store).ok_or_else(|| kind.not_found(name)))
}

async fn create_configmap(
    State(shared): State<Arc<Shared>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let body = match authorize(&shared, &headers).and_then(|()| parse_body(&body)) {
        Ok(body) => body,
        Err(refusal) => return answer(Err(refusal)),
    };
    let mut store = shared.lock();
    store.count_write(&namespace);
    let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
    if let Err(refusal) = store.authorize_write("create", &namespace, &name) {
        return answer(Err(refusal));
    }
    match store.create_configmap(&namespace, body) {
        Ok(change) => {
            let object = Value::clone(&change.object);
            shared.publish(&mut store, vec![change]);
            (StatusCode::CREATED, axum::Json(object)).into_response()
        }
        Err(refusal) => answer(Err(refusal)),
    }
}

async fn update_configmap(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let body = match authorize(&shared, &headers).and_then(|()| parse_body(&body)) {
        Ok(body) => body,
        Err(refusal) => return answer(Err(refusal)),
    };
    let mut store = shared.lock();
    store.count_write(&namespace);
    if let Err(refusal) = store.authorize_write("update", &namespace, &name) {
        return answer(Err(refusal));
    }
    let result = store.update_configmap(&namespace, &name, body);
    answer(result.map(|change| match change {
        Some(change) => {
            let object = Value::clone(&change.object);
            shared.publish(&mut store, vec![change]);
            object
        }
        None => Value::clone(&store.configmaps[&(namespace, name)]),
    }))
}

async fn delete_configmap(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = authorize(&shared, &headers) {
        return answer(Err(refusal));
    }
    let mut store = shared.lock();
    store.count_write(&namespace);
    let Some(change) = store.delete_configmap(&namespace, &name) else {
        return answer(Err(Kind::ConfigMap.not_found(&name)));
    };
    let object = Value::clone(&change.object);
    shared.publish(&mut store, vec![change]);
    answer(Ok(object))
}

fn list_or_watch(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    kind: Kind,
    namespace: Option<String>,
) -> Response {
    if let Err(refusal) = authorize(shared, headers) {
        return answer(Err(refusal));
    }
    let parsed = Selector::labels(params.get("labelSelector").map_or("", String::as_str)).and_then(
        |labels| {
            Selector::fields(params.get("fieldSelector").map_or("", String::as_str), kind)
                .map(|fields| (labels, fields))
        },
    );
    let (labels, fields) = match parsed {
        Ok(selectors) => selectors,
        Err(message) => return answer(Err(status(400, "BadRequest", &message, None))),
    };
    let selective = labels != Selector::default() || fields != Selector::default();
    let filter = Filter {
        kind,
        namespace,
        labels,
        fields,
    };
    if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return watch(shared, params, filter);
    }
    let mut store = shared.lock();
    *store.lists.entry(kind.plural()).or_default() += 1;
    let listed = ListRequest::from_params(params, kind, filter.namespace.as_deref(), selective)
        .and_then(|request| paging::list(&mut store, &request, |o| filter.matches(o)));
    match listed {
        Ok(body) => ([(CONTENT_TYPE, "application/json")], body).into_response(),
        Err(refusal) => answer(Err(refusal)),
    }
}

/// Replays history after the requested version, then follows live changes until the
/// client's `timeoutSeconds`, a cut, or the client going away.
fn watch(shared: &Arc<Shared>, params: &HashMap<String, String>, filter: Filter) -> Response {
    let bookmarks = params
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let from = params.get("resourceVersion").cloned().unwrap_or_default();
    let (tx, rx) = mpsc::channel::<String>(256);
    let store = shared.lock();
    let mut backlog = Vec::new();
    if from.is_empty() || from == "0" {
        // "Any version": the current state as ADDED events, as the real server sends.
        for o in store.objects(filter.kind).filter(|o| filter.matches(o)) {
            backlog.push(line("ADDED", o));
        }
    } else {
        let Ok(from_version) = from.parse::<u64>() else {
            return answer(Err(status(
                400,
                "BadRequest",
                &format!("invalid resource version: {from}"),
                None,
            )));
        };
        if from_version < store.compacted {
            let (code, body) = status(
                410,
                "Expired",
                &format!(
                    "too old resource version: {from_version} ({})",
                    store.compacted
                ),
                None,
            );
            if store.expire_with_http_status {
                return answer(Err((code, body)));
            }
            // The real server answers 200 and ends the stream with one ERROR event.
            let _ = tx.try_send(line("ERROR", &body));
            return streamed(rx);
        }
        for change in store
            .history
            .iter()
            .filter(|c| c.resource_version > from_version)
        {
            backlog.extend(filter.translate(change));
        }
    }
    let follower = Follower {
        tx,
        live: shared.events.subscribe(),
        seen: store.resource_version,
        filter,
        bookmarks,
        cut: shared.cut.subscribe(),
        paused: shared.paused.subscribe(),
    };
    drop(store);
    tokio::spawn(follower.run(backlog, timeout));
    streamed(rx)
}

/// Feeds one watch's response body.
struct Follower {
    tx: mpsc::Sender<String>,
    live: broadcast::Receiver<Broadcast>,
    /// The store's version when the backlog was taken; live changes at or below it are in it.
    seen: u64,
    filter: Filter,
    bookmarks: bool,
    cut: tokio::sync::watch::Receiver<u64>,
    paused: tokio::sync::watch::Receiver<bool>,
}

impl Follower {
    async fn run(mut self, backlog: Vec<String>, timeout: Duration) {
        self.cut.mark_unchanged();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut pending: std::collections::VecDeque<String> = backlog.into();
        loop {
            // Deliver what is queued unless paused; a cut or the deadline ends it all.
            while !*self.paused.borrow() {
                let Some(next) = pending.pop_front() else {
                    break;
                };
                tokio::select! {
                    sent = self.tx.send(next) => if sent.is_err() { return },
                    _ = self.cut.changed() => return,
                    _ = &mut deadline => return,
                }
            }
            tokio::select! {
                _ = self.cut.changed() => return,
                _ = &mut deadline => return,
                _ = self.tx.closed() => return,
                _ = self.paused.changed() => {}
                received = self.live.recv() => match received {
                    Ok(Broadcast::Changes(changes)) => pending.extend(
                        changes
                            .iter()
                            .filter(|c| c.resource_version > self.seen)
                            .filter_map(|c| self.filter.translate(c)),
                    ),
                    Ok(Broadcast::Bookmark(rv)) if self.bookmarks => {
                        pending.push_back(line(
                            "BOOKMARK",
                            &json!({"kind": self.filter.kind.name(), "apiVersion": "v1",
                                    "metadata": {"resourceVersion": rv.to_string()}}),
                        ));
                    }
                    Ok(Broadcast::Bookmark(_)) => {}
                    // Fell behind: end the watch; the client resumes from its last version.
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

fn streamed(rx: mpsc::Receiver<String>) -> Response {
    let lines = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(futures_util::StreamExt::map(
            lines,
            Ok::<_, std::convert::Infallible>,
        )))
        .expect("a valid response")
}

/// One watch line: `{"type": …, "object": …}` and a newline.
fn line(event_type: &str, object: &Value) -> String {
    #[derive(serde::Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        event_type: &'a str,
        object: &'a Value,
    }
    let mut text =
        serde_json::to_string(&Event { event_type, object }).expect("an event serializes");
    text.push('\n');
    text
}

// === impl Filter ===

impl Filter {
    fn matches(&self, object: &Value) -> bool {
        let in_scope = self
            .namespace
            .as_deref()
            .is_none_or(|ns| object["metadata"]["namespace"] == ns);
        in_scope && self.labels.matches_labels(object) && self.fields.matches_fields(object)
    }

    /// The event this watch sees for `change`: with a selector, an object that starts to
    /// match is ADDED and one that stops matching is DELETED, as the real server's cache does.
    fn translate(&self, change: &Change) -> Option<String> {
        if change.kind != self.kind {
            return None;
        }
        let now = self.matches(&change.object);
        let before = change.previous.as_ref().is_some_and(|p| self.matches(p));
        let event_type = match (change.event_type, before, now) {
            ("MODIFIED", true, true) => "MODIFIED",
            ("MODIFIED", false, true) => "ADDED",
            ("MODIFIED", true, false) => "DELETED",
            ("ADDED" | "DELETED", _, true) => change.event_type,
            _ => return None,
        };
        Some(line(event_type, &change.object))
    }
}

/// A JSON answer: 200 with the object, or the refusal's code with its `Status`.
pub(super) fn answer(result: Result<Value, Refusal>) -> Response {
    match result {
        Ok(object) => (StatusCode::OK, axum::Json(object)).into_response(),
        Err((code, body)) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            axum::Json(body),
        )
            .into_response(),
    }
}

/// `Authorization: Bearer <token>` or 401, as the authenticator answers.
pub(super) fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<(), Refusal> {
    let expected = format!("Bearer {}", shared.token);
    if headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected)
    {
        Ok(())
    } else {
        Err(status(401, "Unauthorized", "Unauthorized", None))
    }
}

fn parse_body(body: &str) -> Result<Value, Refusal> {
    serde_json::from_str::<Value>(body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| {
            status(
                400,
                "BadRequest",
                "the request body is not a JSON object",
                None,
            )
        })
}
