//! Lists, paged with `limit` and `continue` as the real server pages them: items in etcd key
//! order, later pages read from a snapshot of the kind at the first page's resourceVersion,
//! continue tokens shaped as the real ones (base64 of `{"v","rv","start"}`), 410 Expired once
//! compaction passes the snapshot, 400 for a token the server cannot read.
//!
//! The real server reads old pages from etcd's history; this fake keeps the kind's objects at
//! that version instead, until compaction (or a bound on how many it keeps) drops them.

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use super::store::{status, Kind, Refusal, Snapshot, Store};

/// Snapshots kept for unfinished paged lists; continuing from an older one is answered as if
/// etcd had compacted it. A few suffice: clients page through a list in seconds.
const KEPT_SNAPSHOTS: usize = 8;

/// The real server's answer to a continue from before the compaction point.
const EXPIRED_CONTINUE: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

/// One list request, past authentication and selector parsing.
pub(crate) struct ListRequest<'a> {
    pub kind: Kind,
    pub namespace: Option<&'a str>,
    /// At most this many items; 0 means all, as the real server reads `limit=0`.
    pub limit: usize,
    pub continue_token: Option<&'a str>,
    /// With a label or field selector the server cannot know how many items remain, and
    /// leaves `remainingItemCount` out.
    pub selective: bool,
}

/// The continue token's content, with the real server's field names.
#[derive(Serialize, Deserialize)]
struct Token {
    v: String,
    rv: u64,
    /// The key after the page's last one, relative to the list's key prefix.
    start: String,
}

/// One page: its items, and when more match after it, the last key and how many more.
struct Page<'a> {
    items: Vec<&'a Value>,
    more: Option<(&'a str, usize)>,
}

/// A list body in the real server's key order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListBody<'a> {
    kind: &'static str,
    api_version: &'static str,
    metadata: ListMeta,
    items: Vec<Item<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    resource_version: String,
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    continue_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining_item_count: Option<usize>,
}

/// An object as a list item: items of a typed list carry no kind/apiVersion; the list does.
struct Item<'a>(&'a Value);

// === impl ListRequest ===

impl<'a> ListRequest<'a> {
    /// Reads `limit` and `continue`; the rest of the request comes from the caller.
    pub(crate) fn from_params(
        params: &'a HashMap<String, String>,
        kind: Kind,
        namespace: Option<&'a str>,
        selective: bool,
    ) -> Result<Self, Refusal> {
        let limit = match params.get("limit") {
            None => 0,
            Some(text) => text.parse::<i64>().map_err(|_| {
                status(
                    400,
                    "BadRequest",
                    &format!("invalid value for limit: {text:?}"),
                    None,
                )
            })?,
        };
        let continue_token = params
            .get("continue")
            .map(String::as_str)
            .filter(|c| !c.is_empty());
        let version = params.get("resourceVersion").map_or("", String::as_str);
        if continue_token.is_some() && !version.is_empty() && version != "0" {
            return Err(status(
                400,
                "BadRequest",
                "specifying resource version is not allowed when using continue",
                None,
            ));
        }
        Ok(Self {
            kind,
            namespace,
            limit: usize::try_from(limit).unwrap_or(0),
            continue_token,
            selective,
        })
    }

    /// The key prefix continue tokens are relative to: the namespace's, in a namespaced list.
    fn prefix(&self) -> String {
        self.namespace
            .map(|ns| format!("{ns}/"))
            .unwrap_or_default()
    }
}

/// The list body (`PodList`…) for `request`, its items those `matches` accepts, as JSON.
pub(crate) fn list(
    store: &mut Store,
    request: &ListRequest<'_>,
    matches: impl Fn(&Value) -> bool,
) -> Result<Vec<u8>, Refusal> {
    let kind = request.kind;
    let Some(token) = request.continue_token else {
        let version = store.resource_version;
        let mut live: Vec<(String, &Value)> = store.objects(kind).map(|o| (key(o), &**o)).collect();
        live.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let page = take(
            live.iter().map(|(k, o)| (k.as_str(), *o)),
            request.limit,
            &matches,
        );
        let paged = page.more.is_some();
        let body = render(request, version, page);
        drop(live);
        if paged && !store.snapshots.contains_key(&(kind, version)) {
            keep_snapshot(store, kind, version);
        }
        return Ok(body);
    };
    let (version, start) = decode(token, &request.prefix())?;
    let Some(snapshot) = store.snapshots.get(&(kind, version)).cloned() else {
        if version <= store.compacted.max(store.snapshots_dropped_through) {
            return Err(status(410, "Expired", EXPIRED_CONTINUE, None));
        }
        return Err(invalid(&format!(
            "no list of {} at resourceVersion {version}",
            kind.plural()
        )));
    };
    let from = snapshot.partition_point(|(k, _)| k.as_str() < start.as_str());
    let page = take(
        snapshot[from..].iter().map(|(k, o)| (k.as_str(), &**o)),
        request.limit,
        &matches,
    );
    Ok(render(request, version, page))
}

/// The matching entries of one page, and whether more match after it.
fn take<'a>(
    entries: impl Iterator<Item = (&'a str, &'a Value)>,
    limit: usize,
    matches: &impl Fn(&Value) -> bool,
) -> Page<'a> {
    let mut matching = entries.filter(|(_, o)| matches(o));
    let mut items = Vec::new();
    let mut last = None;
    for (key, object) in matching.by_ref() {
        items.push(object);
        last = Some(key);
        if items.len() == limit {
            break;
        }
    }
    let remaining = matching.count();
    Page {
        items,
        more: last.filter(|_| remaining > 0).map(|key| (key, remaining)),
    }
}

/// The list's JSON, written straight from the stored objects: a page of a large cluster is
/// megabytes, and copying each item only to drop two keys cost more than serializing it.
fn render(request: &ListRequest<'_>, version: u64, page: Page<'_>) -> Vec<u8> {
    let mut metadata = ListMeta {
        resource_version: version.to_string(),
        continue_token: None,
        remaining_item_count: None,
    };
    if let Some((last, remaining)) = page.more {
        let prefix = request.prefix();
        metadata.continue_token = Some(encode(version, last.strip_prefix(&prefix).unwrap_or(last)));
        if !request.selective {
            metadata.remaining_item_count = Some(remaining);
        }
    }
    let body = ListBody {
        kind: request.kind.list_name(),
        api_version: "v1",
        metadata,
        items: page.items.into_iter().map(Item).collect(),
    };
    serde_json::to_vec(&body).expect("a list serializes")
}

/// Keeps every object of `kind` as it is now (sharing them with the store), for the pages
/// after the first.
fn keep_snapshot(store: &mut Store, kind: Kind, version: u64) {
    let mut entries: Vec<(String, Arc<Value>)> =
        store.objects(kind).map(|o| (key(o), o.clone())).collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let snapshot: Snapshot = Arc::new(entries);
    store.snapshots.insert((kind, version), snapshot);
    while store.snapshots.len() > KEPT_SNAPSHOTS {
        let Some(oldest) = store.snapshots.keys().min_by_key(|(_, v)| *v).copied() else {
            break;
        };
        store.snapshots.remove(&oldest);
        store.snapshots_dropped_through = store.snapshots_dropped_through.max(oldest.1);
    }
}

// === impl Item ===

impl Serialize for Item<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_object() {
            Some(map) => serializer.collect_map(
                map.iter()
                    .filter(|(k, _)| k.as_str() != "kind" && k.as_str() != "apiVersion"),
            ),
            None => self.0.serialize(serializer),
        }
    }
}

/// The object's etcd key below the kind's prefix: `namespace/name`, or `name`. Lists are in
/// this order (so `a-b/x` comes before `a/x`).
fn key(object: &Value) -> String {
    let name = object["metadata"]["name"].as_str().unwrap_or("");
    match object["metadata"]["namespace"].as_str() {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name.to_string(),
    }
}

/// The token for the page after `last` (relative to the list's prefix) at `version`.
fn encode(version: u64, last: &str) -> String {
    let token = Token {
        v: "meta.k8s.io/v1".into(),
        rv: version,
        start: format!("{last}\0"),
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).expect("a token serializes"))
}

/// The version and absolute start key of a continue token, with the real server's checks
/// (a start key may not climb out of the list's prefix).
fn decode(token: &str, prefix: &str) -> Result<(u64, String), Refusal> {
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|e| invalid(&e.to_string()))?;
    let token: Token = serde_json::from_slice(&bytes).map_err(|e| invalid(&e.to_string()))?;
    if token.v != "meta.k8s.io/v1" {
        return Err(invalid(&format!(
            "server does not recognize this encoded version {:?}",
            token.v
        )));
    }
    if token.rv == 0 {
        return Err(invalid(
            "incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        ));
    }
    if token.start.is_empty() {
        return Err(invalid("encoded start key empty (version meta.k8s.io/v1)"));
    }
    let start = token.start.strip_prefix('/').unwrap_or(&token.start);
    // What Go's path.Clean would change: empty, `.` or `..` segments.
    if start
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err(invalid(&token.start));
    }
    Ok((token.rv, format!("{prefix}{start}")))
}

fn invalid(detail: &str) -> Refusal {
    status(
        400,
        "BadRequest",
        &format!("invalid continue token: continue key is not valid: {detail}"),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(limit: usize, continue_token: Option<&str>) -> ListRequest<'_> {
        ListRequest {
            kind: Kind::Namespace,
            namespace: None,
            limit,
            continue_token,
            selective: false,
        }
    }

    fn names(list: &Value) -> Vec<String> {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    fn page(store: &mut Store, token: Option<&str>) -> Result<Value, Refusal> {
        list(store, &request(2, token), |_| true).map(|body| serde_json::from_slice(&body).unwrap())
    }

    #[test]
    fn pages_read_the_first_pages_version() {
        let mut store = Store::default();
        for name in ["a", "b", "c"] {
            store.new_namespace(name, &[]);
        }
        let first = page(&mut store, None).unwrap();
        assert_eq!(names(&first), ["a", "b"]);
        assert_eq!(first["metadata"]["remainingItemCount"], 1);
        assert!(first["items"][0].get("kind").is_none());
        store.new_namespace("b2", &[]);
        let token = first["metadata"]["continue"].as_str().unwrap().to_string();
        let second = page(&mut store, Some(&token)).unwrap();
        assert_eq!(names(&second), ["c"]);
        assert_eq!(
            second["metadata"]["resourceVersion"],
            first["metadata"]["resourceVersion"]
        );
        assert!(second["metadata"].get("continue").is_none());

        store.compact();
        let (code, body) = page(&mut store, Some(&token)).unwrap_err();
        assert_eq!((code, body["reason"].as_str()), (410, Some("Expired")));
    }

    #[test]
    fn tokens_are_checked_as_the_real_server_does() {
        assert_eq!(
            decode(&encode(7, "web/p"), "").unwrap(),
            (7, "web/p\0".into())
        );
        assert_eq!(
            decode(&encode(7, "p"), "web/").unwrap(),
            (7, "web/p\0".into())
        );
        for bad in [
            "%%%".to_string(),
            URL_SAFE_NO_PAD.encode("{}"),
            encode(0, "p"),
            encode(7, "../other/p"),
            URL_SAFE_NO_PAD.encode(r#"{"v":"meta.k8s.io/v2","rv":7,"start":"p"}"#),
        ] {
            let (code, body) = decode(&bad, "web/").unwrap_err();
            assert_eq!(code, 400, "{bad}");
            assert!(body["message"]
                .as_str()
                .unwrap()
                .starts_with("invalid continue token: "));
        }
    }
}
