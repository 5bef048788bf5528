//! `/proc/<pid>/cgroup` text into the k8s attestor's parser: never a panic, and a pod it names
//! is one whose UID and container id are well formed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshca_agent::attest::{parse_cgroup, ContainerId, PodUid};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(found) = parse_cgroup(text) {
        assert!(PodUid::parse(found.pod_uid.as_str()).is_some());
        assert!(ContainerId::parse(found.container_id.as_str()).is_some());
    }
});
