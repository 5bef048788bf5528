//! The kubelet's `GET /pods` as the fake cluster's node sees it: the pods bound to that node,
//! in the PodList shape a kubelet answers with (no list metadata, no paging, no watch), behind
//! the same bearer token as the API server.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::handlers::{answer, authorize};
use super::store::Shared;

pub(crate) fn router(shared: Arc<Shared>, node: String) -> Router {
    Router::new()
        .route("/pods", get(list_node_pods))
        .with_state((shared, Arc::<str>::from(node)))
}

async fn list_node_pods(
    State((shared, node)): State<(Arc<Shared>, Arc<str>)>,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = authorize(&shared, &headers) {
        return answer(Err(refusal));
    }
    let store = shared.lock();
    let items: Vec<Value> = store
        .pods
        .values()
        .filter(|pod| pod["spec"]["nodeName"].as_str() == Some(&*node))
        .map(|pod| Value::clone(pod))
        .collect();
    answer(Ok(json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": items,
    })))
}
