//! The reflector: a first list marks it synced, watch events keep it current, a cut watch
//! resumes without losing what changed meanwhile, and a compacted version (410, as an ERROR
//! event or a bare HTTP status) makes it list again.

use std::time::Duration;

use meshca_kube::{ConfigMap, ListParams, Namespace, Pod, PodIndex, Reflector, ReflectorSettings};
use serde_json::json;

use crate::{cluster, eventually};

fn names(reflector: &Reflector<Namespace>) -> Vec<String> {
    reflector
        .snapshot()
        .objects
        .values()
        .map(|n| n.metadata.name.clone())
        .collect()
}

#[tokio::test]
async fn follows_changes_across_cut_watches() {
    let c = cluster().await;
    c.api.add_namespace("a", &[]);
    let reflector = Reflector::<Namespace>::start(c.client.clone(), ReflectorSettings::default());
    eventually("the first list", || reflector.snapshot().synced).await;
    assert_eq!(names(&reflector), ["a"]);

    c.api.add_namespace("b", &[]);
    eventually("b is seen", || names(&reflector) == ["a", "b"]).await;

    // Changes while no watch is open are replayed when it resumes.
    c.api.pause_watches();
    c.api.cut_watches();
    c.api.remove_namespace("a");
    c.api.add_namespace("c", &[]);
    c.api.mark_terminating("b");
    c.api.resume_watches();
    eventually("the resumed watch catches up", || {
        names(&reflector) == ["b", "c"]
            && reflector.snapshot().get("", "b").unwrap().is_terminating()
    })
    .await;
    assert_eq!(
        reflector.snapshot().resource_version,
        c.api.resource_version().to_string()
    );
}

#[tokio::test]
async fn an_expired_version_lists_again_either_way_it_is_said() {
    for bare_http_status in [false, true] {
        let c = cluster().await;
        c.api.expire_with_http_status(bare_http_status);
        c.api.add_namespace("web", &[]);
        let reflector = Reflector::<ConfigMap>::start(
            c.client.clone(),
            ReflectorSettings {
                namespace: None,
                params: ListParams {
                    field_selector: Some("metadata.name=wanted".into()),
                    ..ListParams::default()
                },
                relist_every: None,
            },
        );
        eventually("the first list", || reflector.snapshot().synced).await;

        // While the watch is held back, a ConfigMap appears and history is compacted: the
        // resumed watch cannot replay it, only a new list finds it.
        c.api.pause_watches();
        c.api
            .create_configmap(
                "web",
                json!({"metadata": {"name": "wanted"}, "data": {"k": "v"}}),
            )
            .unwrap();
        c.api
            .create_configmap(
                "web",
                json!({"metadata": {"name": "unwanted"}, "data": {"k": "v"}}),
            )
            .unwrap();
        c.api.compact();
        c.api.cut_watches();
        c.api.resume_watches();
        eventually(
            &format!("a relist after 410 (bare HTTP status: {bare_http_status})"),
            || reflector.snapshot().get("web", "wanted").is_some(),
        )
        .await;
        // The field selector holds through the relist.
        assert_eq!(reflector.snapshot().objects.len(), 1);

        // And the watch after the relist follows new changes.
        assert!(c.api.delete_configmap("web", "wanted"));
        eventually("the delete is seen", || {
            reflector.snapshot().objects.is_empty()
        })
        .await;
    }
}

/// The pod index of node authorization through the reflector: a list of several pages, then
/// watch events (scheduled, finished, deleted) move the by-node index, and the periodic relist
/// really lists again.
#[tokio::test]
async fn a_pod_index_lists_in_pages_follows_events_and_relists() {
    let c = cluster().await;
    // More pods than one page holds.
    c.api.add_pods_bulk((0..1_200).map(|i| {
        (
            format!("team-{}", i % 7),
            format!("app-{i}"),
            format!("svc-{}", i % 5),
            Some(format!("worker-{}", i % 40)),
        )
    }));
    let reflector = Reflector::<Pod, PodIndex>::start(
        c.client.clone(),
        ReflectorSettings {
            relist_every: Some(Duration::from_millis(300)),
            ..ReflectorSettings::default()
        },
    );
    eventually("the first list", || reflector.snapshot().synced).await;
    assert_eq!(reflector.snapshot().objects.len(), 1_200);
    assert!(c.api.lists("pods") >= 3, "1,200 pods come in pages of 500");
    // app-3: team-3, svc-3, worker-3.
    assert!(reflector
        .snapshot()
        .objects
        .runs_on("worker-3", "team-3", "svc-3"));

    c.api.add_pod("web", "web-1", "web", None);
    eventually("a pending pod is known, on no node", || {
        reflector.snapshot().objects.pod("web", "web-1").is_some()
    })
    .await;
    assert!(!reflector
        .snapshot()
        .objects
        .runs_on("worker-9", "web", "web"));
    assert!(c.api.schedule_pod("web", "web-1", "worker-9"));
    eventually("scheduling is seen", || {
        reflector
            .snapshot()
            .objects
            .runs_on("worker-9", "web", "web")
    })
    .await;
    assert!(c.api.set_pod_phase("web", "web-1", "Succeeded"));
    eventually("a finished pod no longer counts", || {
        !reflector
            .snapshot()
            .objects
            .runs_on("worker-9", "web", "web")
    })
    .await;
    assert!(c.api.delete_pod("web", "web-1"));
    eventually("the deletion is seen", || {
        reflector.snapshot().objects.pod("web", "web-1").is_none()
    })
    .await;

    let lists = c.api.lists("pods");
    eventually("the periodic relist", || c.api.lists("pods") >= lists + 3).await;
    assert_eq!(reflector.snapshot().objects.len(), 1_200);
}
