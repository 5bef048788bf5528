//! The fake API server's pods and paged lists, over HTTP as any client sees them: the JSON,
//! codes and `Status` bodies of a real kube-apiserver, watch events for what the pod hooks do,
//! field selectors on pods, and `limit`/`continue` with one snapshot across pages.

use std::collections::BTreeSet;

use meshca_kube::fake::FakeApiServer;
use serde_json::{json, Value};

use crate::{within, TOKEN};

/// A fake server and a plain HTTP client of it.
struct Api {
    fake: FakeApiServer,
    base: String,
    http: reqwest::Client,
}

/// One watch response, read a line at a time.
struct Watch {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

async fn api() -> Api {
    let fake = FakeApiServer::new(TOKEN);
    let addr = fake.serve_http().await.unwrap();
    Api {
        fake,
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
    }
}

/// Percent-encodes what a selector or token puts in a query value.
fn q(value: &str) -> String {
    value
        .replace('%', "%25")
        .replace('=', "%3D")
        .replace(',', "%2C")
        .replace('!', "%21")
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

// === impl Api ===

impl Api {
    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let code = response.status().as_u16();
        let body = response.bytes().await.unwrap();
        (code, serde_json::from_slice(&body).unwrap())
    }

    async fn ok(&self, path: &str) -> Value {
        let (code, body) = self.get(path).await;
        assert_eq!(code, 200, "{path}: {body}");
        body
    }

    async fn watch(&self, path: &str) -> Watch {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        Watch {
            response,
            buffer: Vec::new(),
        }
    }

    /// Every page of a list with `limit`, following `continue`; `query` has no `?`. Items
    /// keep only their name and namespace, so that a large cluster's pages fit in memory.
    async fn pages(&self, collection: &str, query: &str, limit: usize) -> Vec<Value> {
        let mut pages: Vec<Value> = Vec::new();
        loop {
            let next = match pages.last() {
                None => format!("{collection}?limit={limit}{query}"),
                Some(last) => match last["metadata"]["continue"].as_str() {
                    Some(token) => {
                        format!("{collection}?limit={limit}&continue={}{query}", q(token))
                    }
                    None => return pages,
                },
            };
            let mut page = self.ok(&next).await;
            for item in page["items"].as_array_mut().expect("items") {
                let metadata = &item["metadata"];
                *item = json!({"metadata": {
                    "name": metadata["name"],
                    "namespace": metadata["namespace"],
                }});
            }
            pages.push(page);
        }
    }
}

// === impl Watch ===

impl Watch {
    /// The next event's type and object.
    async fn next(&mut self) -> (String, Value) {
        within(async {
            loop {
                if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.buffer.drain(..=end).collect();
                    let event: Value = serde_json::from_slice(&line).unwrap();
                    return (
                        event["type"].as_str().unwrap().to_string(),
                        event["object"].clone(),
                    );
                }
                let chunk = self.response.chunk().await.unwrap();
                self.buffer
                    .extend_from_slice(&chunk.expect("the watch is still open"));
            }
        })
        .await
    }
}

#[tokio::test]
async fn pods_are_served_as_a_real_server_serves_them() {
    let a = api().await;
    let uid = a
        .fake
        .add_pod("web", "web-7d4b9c8f6d-x2x7q", "frontend", Some("node-a"));
    a.fake
        .add_pod("web", "web-7d4b9c8f6d-k8mzp", "frontend", None);
    a.fake
        .add_pod("db", "postgres-0", "postgres", Some("node-b"));

    let list = a.ok("/api/v1/pods").await;
    assert_eq!(
        (list["kind"].as_str(), list["apiVersion"].as_str()),
        (Some("PodList"), Some("v1"))
    );
    assert_eq!(
        list["metadata"],
        json!({"resourceVersion": a.fake.resource_version().to_string()})
    );
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(items
        .iter()
        .all(|i| i.get("kind").is_none() && i.get("apiVersion").is_none()));

    let running = items
        .iter()
        .find(|i| i["metadata"]["name"] == "web-7d4b9c8f6d-x2x7q")
        .unwrap();
    assert_eq!(running["metadata"]["uid"], uid.as_str());
    assert_eq!(running["metadata"]["namespace"], "web");
    assert_eq!(running["metadata"]["generateName"], "web-7d4b9c8f6d-");
    assert_eq!(running["metadata"]["labels"]["app"], "web");
    assert_eq!(
        running["metadata"]["ownerReferences"][0]["kind"],
        "ReplicaSet"
    );
    assert_eq!(
        running["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(running["spec"]["serviceAccountName"], "frontend");
    assert_eq!(running["spec"]["serviceAccount"], "frontend");
    assert_eq!(running["spec"]["nodeName"], "node-a");
    assert!(running["spec"]["volumes"][0]["projected"].is_object());
    assert_eq!(running["status"]["phase"], "Running");
    assert!(running["status"]["podIP"].is_string());
    assert_eq!(running["status"]["qosClass"], "Burstable");
    let uid = uid.as_bytes();
    assert_eq!((uid.len(), uid[14]), (36, b'4'), "a v4 UUID");

    let pending = items
        .iter()
        .find(|i| i["metadata"]["name"] == "web-7d4b9c8f6d-k8mzp")
        .unwrap();
    assert!(pending["spec"].get("nodeName").is_none());
    assert!(pending["status"].get("podIP").is_none());
    assert_eq!(pending["status"]["phase"], "Pending");

    let web = a.ok("/api/v1/namespaces/web/pods").await;
    assert_eq!(
        names(&web),
        ["web-7d4b9c8f6d-k8mzp", "web-7d4b9c8f6d-x2x7q"]
    );

    let got = a.ok("/api/v1/namespaces/db/pods/postgres-0").await;
    assert_eq!(
        (got["kind"].as_str(), got["apiVersion"].as_str()),
        (Some("Pod"), Some("v1"))
    );
    assert_eq!(Some(got), a.fake.pod("db", "postgres-0"));

    let (code, missing) = a.get("/api/v1/namespaces/web/pods/nope").await;
    assert_eq!(code, 404);
    assert_eq!(
        missing,
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "pods \"nope\" not found",
            "reason": "NotFound",
            "details": {"name": "nope", "kind": "pods"},
            "code": 404,
        })
    );
    let anonymous = a
        .http
        .get(format!("{}/api/v1/pods", a.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
}

#[tokio::test]
async fn a_pod_watch_sees_what_the_hooks_do() {
    let a = api().await;
    a.fake.add_pod("web", "web-1-a", "web", Some("node-a"));
    let version = a.ok("/api/v1/pods").await["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut watch = a
        .watch(&format!(
            "/api/v1/pods?watch=true&resourceVersion={version}&allowWatchBookmarks=true"
        ))
        .await;

    let uid = a.fake.add_pod("web", "web-1-b", "web", None);
    let (kind, added) = watch.next().await;
    assert_eq!(kind, "ADDED");
    assert_eq!(
        (added["kind"].as_str(), added["apiVersion"].as_str()),
        (Some("Pod"), Some("v1"))
    );
    assert_eq!(added["metadata"]["uid"], uid.as_str());
    assert_eq!(added["status"]["phase"], "Pending");

    assert!(a.fake.schedule_pod("web", "web-1-b", "node-b"));
    let (kind, scheduled) = watch.next().await;
    assert_eq!(kind, "MODIFIED");
    assert_eq!(scheduled["spec"]["nodeName"], "node-b");
    assert_eq!(scheduled["status"]["phase"], "Running");
    assert!(
        !a.fake.schedule_pod("web", "web-1-b", "node-a"),
        "bound once"
    );

    assert!(a.fake.set_pod_phase("web", "web-1-b", "Succeeded"));
    let (kind, done) = watch.next().await;
    assert_eq!(
        (kind.as_str(), done["status"]["phase"].as_str()),
        ("MODIFIED", Some("Succeeded"))
    );
    assert!(!a.fake.set_pod_phase("web", "nope", "Failed"));

    assert!(a.fake.delete_pod("web", "web-1-b"));
    let (kind, deleted) = watch.next().await;
    assert_eq!(kind, "DELETED");
    assert_eq!(deleted["metadata"]["uid"], uid.as_str());
    assert_eq!(deleted["status"]["phase"], "Succeeded");
    let version = |o: &Value| {
        o["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(version(&deleted) > version(&done));
    assert!(!a.fake.delete_pod("web", "web-1-b"));
    assert_eq!(a.fake.pod("web", "web-1-b"), None);

    a.fake.send_bookmarks();
    let (kind, bookmark) = watch.next().await;
    assert_eq!(
        (kind.as_str(), bookmark["kind"].as_str()),
        ("BOOKMARK", Some("Pod"))
    );

    // A namespace's removal takes its pods with it.
    a.fake.add_namespace("gone", &[]);
    a.fake.add_pod("gone", "job-1", "default", Some("node-a"));
    assert_eq!(watch.next().await.0, "ADDED");
    a.fake.remove_namespace("gone");
    let (kind, removed) = watch.next().await;
    assert_eq!(
        (kind.as_str(), removed["metadata"]["name"].as_str()),
        ("DELETED", Some("job-1"))
    );
    assert_eq!(a.fake.pod("gone", "job-1"), None);
}

#[tokio::test]
async fn field_selectors_pick_pods_by_node_and_phase() {
    let a = api().await;
    a.fake.add_pod("web", "on-a", "web", Some("node-a"));
    a.fake.add_pod("web", "on-b", "web", Some("node-b"));
    a.fake.add_pod("db", "unscheduled", "db", None);

    let select = |selector: &str| format!("/api/v1/pods?fieldSelector={}", q(selector));
    assert_eq!(
        names(&a.ok(&select("spec.nodeName=node-a")).await),
        ["on-a"]
    );
    assert_eq!(
        names(&a.ok(&select("spec.nodeName=")).await),
        ["unscheduled"]
    );
    assert_eq!(
        names(&a.ok(&select("status.phase=Running")).await),
        ["on-a", "on-b"]
    );
    assert_eq!(
        names(
            &a.ok(&select("metadata.namespace=web,spec.nodeName!=node-a"))
                .await
        ),
        ["on-b"]
    );
    assert_eq!(
        names(&a.ok(&select("spec.serviceAccountName=db")).await),
        ["unscheduled"]
    );
    let (code, refused) = a.get(&select("spec.containers=app")).await;
    assert_eq!(
        (code, refused["reason"].as_str()),
        (400, Some("BadRequest"))
    );
    assert_eq!(
        refused["message"],
        "field label not supported: spec.containers"
    );

    // A node's watch: a pod bound there arrives as ADDED, one deleted there leaves.
    let list = a.ok(&select("spec.nodeName=node-a")).await;
    let version = list["metadata"]["resourceVersion"].as_str().unwrap();
    let mut watch = a
        .watch(&format!(
            "/api/v1/pods?watch=true&resourceVersion={version}&fieldSelector={}",
            q("spec.nodeName=node-a")
        ))
        .await;
    assert!(a.fake.set_pod_phase("web", "on-b", "Failed"));
    assert!(a.fake.schedule_pod("db", "unscheduled", "node-a"));
    assert!(a.fake.delete_pod("web", "on-a"));
    let (kind, bound) = watch.next().await;
    assert_eq!(
        (kind.as_str(), bound["metadata"]["name"].as_str()),
        ("ADDED", Some("unscheduled"))
    );
    let (kind, gone) = watch.next().await;
    assert_eq!(
        (kind.as_str(), gone["metadata"]["name"].as_str()),
        ("DELETED", Some("on-a"))
    );
}

#[tokio::test]
async fn paged_lists_read_one_snapshot() {
    let a = api().await;
    for (namespace, name) in [
        ("web", "p1"),
        ("web", "p2"),
        ("db", "p3"),
        ("web", "p4"),
        ("db", "p5"),
    ] {
        a.fake.add_pod(namespace, name, "default", Some("node-a"));
    }
    let full = a.ok("/api/v1/pods").await;
    let version = full["metadata"]["resourceVersion"].clone();
    let lists_before = a.fake.lists("pods");

    let first = a.ok("/api/v1/pods?limit=2").await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    assert_eq!(first["metadata"]["remainingItemCount"], 3);
    // The store moves on; the pages after the first do not.
    a.fake.add_pod("aaa", "new", "default", None);
    a.fake.delete_pod("web", "p4");
    let token = first["metadata"]["continue"].as_str().unwrap();
    let second = a
        .ok(&format!("/api/v1/pods?limit=2&continue={}", q(token)))
        .await;
    assert_eq!(second["metadata"]["remainingItemCount"], 1);
    let token = second["metadata"]["continue"].as_str().unwrap();
    let third = a
        .ok(&format!("/api/v1/pods?limit=2&continue={}", q(token)))
        .await;
    assert_eq!(third["items"].as_array().unwrap().len(), 1);
    assert!(third["metadata"].get("continue").is_none());
    assert!(third["metadata"].get("remainingItemCount").is_none());
    let pages = [&first, &second, &third];
    for page in pages {
        assert_eq!(page["kind"], "PodList");
        assert_eq!(page["metadata"]["resourceVersion"], version);
    }
    let union: Vec<String> = pages.iter().flat_map(|p| names(p)).collect();
    assert_eq!(union, names(&full));
    assert_eq!(a.fake.lists("pods"), lists_before + 3);

    // In one namespace; with a selector the server cannot count what is left.
    let web = a.pages("/api/v1/namespaces/web/pods", "", 1).await;
    assert_eq!(web.iter().flat_map(names).collect::<Vec<_>>(), ["p1", "p2"]);
    let selected = a
        .pages(
            "/api/v1/pods",
            &format!("&fieldSelector={}", q("spec.nodeName=node-a")),
            2,
        )
        .await;
    assert_eq!(selected.len(), 2);
    assert!(selected[0]["metadata"].get("continue").is_some());
    assert!(selected[0]["metadata"].get("remainingItemCount").is_none());

    // Every kind pages.
    for name in ["a", "b", "c"] {
        a.fake.add_namespace(name, &[]);
    }
    let namespaces = a.pages("/api/v1/namespaces", "", 2).await;
    assert_eq!(namespaces.len(), 2);
    assert_eq!(namespaces[0]["kind"], "NamespaceList");
    assert_eq!(a.fake.lists("namespaces"), 2);
}

#[tokio::test]
async fn continuing_after_compaction_is_expired() {
    let a = api().await;
    for name in ["p1", "p2", "p3"] {
        a.fake.add_pod("web", name, "default", None);
    }
    let expired = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "The provided continue parameter is too old to display a consistent list \
                    result. You can start a new list without the continue parameter, or use the \
                    continue token in this response to retrieve the remainder of the results. \
                    Continuing with the provided token results in an inconsistent list - \
                    objects that were created, modified, or deleted between the time the first \
                    chunk was returned and now may show up in the list.",
        "reason": "Expired",
        "code": 410,
    });
    let first = a.ok("/api/v1/pods?limit=2").await;
    let next = format!(
        "/api/v1/pods?limit=2&continue={}",
        q(first["metadata"]["continue"].as_str().unwrap())
    );
    a.fake.add_pod("web", "p4", "default", None);
    a.fake.compact();
    assert_eq!(a.get(&next).await, (410, expired.clone()));

    // Compaction right after the first page expires it too (the real compactor writes a
    // revision of its own before it compacts).
    let first = a.ok("/api/v1/pods?limit=2").await;
    a.fake.compact();
    let next = format!(
        "/api/v1/pods?limit=2&continue={}",
        q(first["metadata"]["continue"].as_str().unwrap())
    );
    assert_eq!(a.get(&next).await, (410, expired));

    // A list started after the compaction pages through.
    let pages = a.pages("/api/v1/pods", "", 2).await;
    assert_eq!(pages.iter().flat_map(names).count(), 4);
}

#[tokio::test]
async fn unreadable_continue_is_a_bad_request() {
    let a = api().await;
    a.fake.add_pod("web", "p1", "default", None);
    a.fake.add_pod("web", "p2", "default", None);
    for query in [
        "continue=not-a-token",
        "continue=eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ",
    ] {
        let (code, status) = a.get(&format!("/api/v1/pods?limit=1&{query}")).await;
        assert_eq!(code, 400, "{query}");
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "BadRequest");
        assert!(status["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid continue token: continue key is not valid"));
    }
    let token = a.ok("/api/v1/pods?limit=1").await["metadata"]["continue"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, status) = a
        .get(&format!(
            "/api/v1/pods?limit=1&continue={}&resourceVersion=5",
            q(&token)
        ))
        .await;
    assert_eq!(code, 400);
    assert_eq!(
        status["message"],
        "specifying resource version is not allowed when using continue"
    );
    assert_eq!(a.get("/api/v1/pods?limit=many").await.0, 400);
}

/// Two thousand pods in one publish: a watch open meanwhile gets its share and stays open, and
/// a paged list returns each pod once.
#[tokio::test]
async fn a_large_cluster_loads_at_once() {
    let a = api().await;
    let version = a.fake.resource_version();
    let mut watch = a
        .watch(&format!(
            "/api/v1/pods?watch=true&resourceVersion={version}&fieldSelector={}",
            q("spec.nodeName=node-7")
        ))
        .await;
    a.fake.add_pods_bulk((0..2_000).map(|i| {
        (
            format!("ns-{}", i % 100),
            format!("app-{i}"),
            format!("sa-{}", i % 10),
            (i % 20 != 0).then(|| format!("node-{}", i % 10)),
        )
    }));
    for _ in 0..200 {
        let (kind, pod) = watch.next().await;
        assert_eq!(
            (kind.as_str(), pod["spec"]["nodeName"].as_str()),
            ("ADDED", Some("node-7"))
        );
    }
    a.fake.add_pod("ns-0", "last", "default", Some("node-7"));
    let (kind, last) = watch.next().await;
    assert_eq!(
        (kind.as_str(), last["metadata"]["name"].as_str()),
        ("ADDED", Some("last"))
    );

    let pages = a.pages("/api/v1/pods", "", 500).await;
    let all: Vec<String> = pages
        .iter()
        .flat_map(|p| p["items"].as_array().unwrap().iter())
        .map(|i| format!("{}/{}", i["metadata"]["namespace"], i["metadata"]["name"]))
        .collect();
    assert_eq!(all.len(), 2_001);
    assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), 2_001);
    assert_eq!(pages.len(), 5);
}
