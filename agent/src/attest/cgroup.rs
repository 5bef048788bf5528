//! The pod and container a process runs in, read from `/proc/<pid>/cgroup`: a parser for the
//! path shapes the kubelet and the container runtimes write there, and the one reader.
//!
//! The cgroup file, not `/proc/<pid>/mountinfo`, is the source: the kernel writes it, while a
//! workload can bind-mount another container's cgroup directory to change what its mountinfo
//! says (the reason SPIRE's extractor prefers it).

use std::fmt;
use std::path::Path;

/// A pod's UID as the kubelet and its API spell it: `8a1b2c3d-4e5f-...` (lower-case, dashed),
/// or, for a static pod, the 32 hex digits of the manifest hash the kubelet uses as its UID.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodUid(String);

/// A container id: 64 lower-case hex digits, the id in a pod's `containerStatuses[].containerID`
/// after its `containerd://` / `cri-o://` / `docker://` scheme.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(String);

/// Where a process runs: the container, and the pod holding it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    pub pod_uid: PodUid,
    pub container_id: ContainerId,
}

/// What one line of the cgroup file says about the process.
#[derive(Debug)]
enum LineVerdict {
    /// No pod in the path: a system service, a user session, the root, or a path relative to
    /// a cgroup namespace whose root is inside the process's own pod.
    NotInPod,
    InContainer(ContainerRef),
    /// A pod is in the path but no container can be named: the pod cgroup itself, CRI-O's
    /// `crio-conmon-<id>` monitor, an unknown runtime, or two pods nested (ambiguous).
    Unresolved,
}

/// The scope prefixes container runtimes give a container's cgroup: containerd's CRI plugin,
/// CRI-O, and Docker (also under cri-dockerd). CRI-O's monitor is `crio-conmon-<id>` and must
/// not count as the container, which is why this is a list rather than "anything before the id".
const RUNTIME_PREFIXES: [&str; 3] = ["cri-containerd", "crio", "docker"];

/// The pod and container `content` (a `/proc/<pid>/cgroup` file) places the process in, or
/// `None` when it is not in a pod's container or the file does not say so unambiguously.
///
/// Every line (`hierarchy-id:controllers:path`; cgroup v1 has one per hierarchy, v2 the single
/// `0::/path`, hybrid both) is read; lines outside any pod are ignored, and all lines naming a
/// container must agree. A line that does not have that form makes the whole file unusable: an
/// identity is never derived from text the kernel could not have written.
///
/// Read from inside a container, paths are relative to the reader's cgroup namespace
/// (`0::/../../kubepods-burstable-pod<uid>.slice/...`): other pods still show their pod
/// segment, but a process in the reader's own pod shows none, and so gets `None`.
pub fn parse_cgroup(content: &str) -> Option<ContainerRef> {
    let mut found: Option<ContainerRef> = None;
    for line in content.lines().filter(|l| !l.is_empty()) {
        match line_verdict(line_path(line)?) {
            LineVerdict::NotInPod => {}
            LineVerdict::Unresolved => return None,
            LineVerdict::InContainer(c) => match &found {
                Some(previous) if *previous != c => return None,
                _ => found = Some(c),
            },
        }
    }
    found
}

/// Reads `<proc_root>/<pid>/cgroup` and parses it. `proc_root` is `/proc` in production and a
/// fake tree in tests. An error means the file could not be read, typically because the process
/// has exited.
pub fn read_container(proc_root: &Path, pid: u32) -> Result<Option<ContainerRef>, std::io::Error> {
    let content = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))?;
    Ok(parse_cgroup(&content))
}

/// The path of one `hierarchy-id:controllers:path` line. The path is the rest of the line, as it
/// may itself hold colons (runc's `slice:prefix:name` systemd notation).
fn line_path(line: &str) -> Option<&str> {
    let mut fields = line.splitn(3, ':');
    let hierarchy = fields.next()?;
    let _controllers = fields.next()?;
    let path = fields.next()?;
    let numeric = !hierarchy.is_empty() && hierarchy.bytes().all(|b| b.is_ascii_digit());
    (numeric && path.starts_with('/')).then_some(path)
}

/// Finds the one pod segment of `path` and the container segment right below it. Anything below
/// the container (crun's `container` sub-cgroup, cgroups a workload creates for itself) is not
/// read, except to refuse a second pod segment: a workload with a writable cgroup could create
/// one to look like another pod.
fn line_verdict(path: &str) -> LineVerdict {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut pods = segments
        .iter()
        .enumerate()
        .filter_map(|(i, segment)| pod_segment(segment).map(|pod| (i, pod)));
    let Some((index, (pod_uid, inline))) = pods.next() else {
        return LineVerdict::NotInPod;
    };
    if pods.next().is_some() {
        return LineVerdict::Unresolved;
    }
    let container_id = match inline {
        Some(rest) => inline_container(rest),
        None => segments
            .get(index + 1)
            .and_then(|segment| container_segment(segment)),
    };
    match container_id {
        Some(container_id) => LineVerdict::InContainer(ContainerRef {
            pod_uid,
            container_id,
        }),
        None => LineVerdict::Unresolved,
    }
}

/// A pod's cgroup segment: `pod<uid>` (cgroupfs driver) or `<parent>-pod<uid>.slice` (systemd
/// driver, which writes the UID's dashes as underscores because a dash separates slice levels).
/// In runc's `<slice>:<prefix>:<id>` notation the segment also carries the container; that rest
/// is returned alongside.
fn pod_segment(segment: &str) -> Option<(PodUid, Option<&str>)> {
    let (name, inline) = match segment.split_once(':') {
        Some((name, rest)) => (name, Some(rest)),
        None => (segment, None),
    };
    let uid = match name.strip_suffix(".slice") {
        Some(stem) => {
            let (parent, uid) = stem.rsplit_once("-pod")?;
            if parent.is_empty() {
                return None;
            }
            uid
        }
        // The colon notation only ever names a systemd slice.
        None if inline.is_none() => name.strip_prefix("pod")?,
        None => return None,
    };
    Some((PodUid::parse(uid)?, inline))
}

/// A container's cgroup segment: the bare id (containerd and Docker with cgroupfs),
/// `crio-<id>` (CRI-O with cgroupfs), or `<runtime>-<id>.scope` (systemd driver).
fn container_segment(segment: &str) -> Option<ContainerId> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    if let Some(id) = ContainerId::parse(name) {
        return Some(id);
    }
    let (runtime, id) = name.rsplit_once('-')?;
    if RUNTIME_PREFIXES.contains(&runtime) {
        ContainerId::parse(id)
    } else {
        None
    }
}

/// The `<prefix>:<id>` after a slice in runc's systemd notation.
fn inline_container(rest: &str) -> Option<ContainerId> {
    let (runtime, id) = rest.split_once(':')?;
    if RUNTIME_PREFIXES.contains(&runtime) {
        ContainerId::parse(id)
    } else {
        None
    }
}

// === impl PodUid ===

impl PodUid {
    /// A UID as a cgroup path spells it: 8-4-4-4-12 hex digits separated by `-` (cgroupfs) or
    /// `_` (systemd), or 32 hex digits (a static pod). Normalized to lower case and dashes.
    pub fn parse(s: &str) -> Option<Self> {
        const SEPARATORS: [usize; 4] = [8, 13, 18, 23];
        let bytes = s.as_bytes();
        let valid = match bytes.len() {
            36 => bytes.iter().enumerate().all(|(i, b)| {
                if SEPARATORS.contains(&i) {
                    *b == b'-' || *b == b'_'
                } else {
                    b.is_ascii_hexdigit()
                }
            }),
            32 => bytes.iter().all(u8::is_ascii_hexdigit),
            _ => false,
        };
        valid.then(|| Self(s.replace('_', "-").to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PodUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === impl ContainerId ===

impl ContainerId {
    /// Exactly 64 hex digits, normalized to lower case.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ids SPIRE's own fixtures use, so the samples below stay recognisable.
    const UID_INIT: &str = "d488cae9-b2a0-11e7-9350-020968147796";
    const ID_INIT: &str = "34a2062fd26c805aa8cf814cdfe479322b791f80afb9ea4db02d50375df14b41";
    const UID_KIND: &str = "a2830d0d-b0f0-4ff0-81b5-0ee4e299cf80";
    const ID_KIND: &str = "09bc3d7ade839efec32b6bec4ec79d099027a668ddba043083ec21d3c3b8f1e6";
    const UID_BLOG: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const ID_BLOG: &str = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";
    const UID_ZERO: &str = "00000000-1111-2222-3333-444444444444";
    const ID_ZERO: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn found(uid: &str, id: &str) -> Option<ContainerRef> {
        Some(ContainerRef {
            pod_uid: PodUid(uid.to_string()),
            container_id: ContainerId(id.to_string()),
        })
    }

    /// Every controller of a cgroup v1 host showing the same path, as the kernel lists them.
    fn v1_file(path: &str) -> String {
        [
            "11:hugetlb",
            "10:devices",
            "9:pids",
            "8:perf_event",
            "7:net_cls,net_prio",
            "6:cpuset",
            "5:memory",
            "4:cpu,cpuacct",
            "3:freezer",
            "2:blkio",
            "1:name=systemd",
        ]
        .iter()
        .map(|controller| format!("{controller}:{path}\n"))
        .collect()
    }

    /// Real-world files and lines that name a container. Sources:
    /// - SPIRE `pkg/agent/plugin/workloadattestor/k8s/testdata/*.txt` (whole files) and
    ///   `k8s_posix_test.go` (`TestGetPodUIDAndContainerIDFromCGroupPath` paths);
    /// - SPIRE `pkg/common/containerinfo/testdata/cgroup/*/proc/123/cgroup`;
    /// - CRI-O `internal/config/cgmgr/{cgroupfs,systemd}.go` (`crio-<id>` under cgroupfs,
    ///   `crio-<id>.scope` under systemd);
    /// - crun's manual (`run.oci.systemd.subgroup` defaults to a `container` sub-cgroup on
    ///   cgroup v2);
    /// - kind's kubelet flag `--cgroup-root=/kubelet`, and the kubelet's static-pod UID
    ///   (`pkg/kubelet/config/common.go`: hex of an MD5, 32 digits).
    fn in_container_samples() -> Vec<(&'static str, String, Option<ContainerRef>)> {
        vec![
            (
                "v1 cgroupfs burstable, Docker (SPIRE cgroups_init_pid_in_pod.txt)",
                v1_file(&format!("/kubepods/burstable/pod{UID_INIT}/{ID_INIT}")),
                found(UID_INIT, ID_INIT),
            ),
            (
                "v1 cgroupfs guaranteed (SPIRE k8s_posix_test.go \"without QOS\")",
                format!("4:cpu,cpuacct:/kubepods/pod{UID_BLOG}/{ID_BLOG}\n"),
                found(UID_BLOG, ID_BLOG),
            ),
            (
                "v1 cgroupfs besteffort, Docker Desktop (SPIRE \"docker for desktop with QOS\")",
                "1:name=systemd:/kubepods/kubepods/besteffort/pod6bd2a4d3-a55a-4450-b6fd-\
                 2a7ecc72c904/a55d9ac3b312d8a2627824b6d6dd8af66fbec439bf4e0ec22d6d9945ad337a38"
                    .to_string(),
                found(
                    "6bd2a4d3-a55a-4450-b6fd-2a7ecc72c904",
                    "a55d9ac3b312d8a2627824b6d6dd8af66fbec439bf4e0ec22d6d9945ad337a38",
                ),
            ),
            (
                "hybrid, kind node in Docker (SPIRE cgroups_pid_in_kind_pod.txt)",
                format!(
                    "{}0::/docker/93529524695bb00d91c1f6dba692ea8d3550c3b94fb2463af7bc9ec82f992d26\
                     /system.slice/containerd.service\n",
                    v1_file(&format!(
                        "/docker/93529524695bb00d91c1f6dba692ea8d3550c3b94fb2463af7bc9ec82f992d26\
                         /kubepods/besteffort/pod{UID_KIND}/{ID_KIND}"
                    ))
                ),
                found(UID_KIND, ID_KIND),
            ),
            (
                "v1 systemd, Docker, dashed UID (SPIRE systemd_cgroups_pid_in_pod.txt)",
                v1_file(&format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_BLOG}\
                     .slice/docker-{ID_BLOG}.scope"
                )),
                found(UID_BLOG, ID_BLOG),
            ),
            (
                "hybrid systemd, CRI-O (SPIRE systemd_crio_cgroups_pid_in_pod.txt)",
                format!(
                    "{}3:rdma:/\n0::/system.slice/crio.service\n",
                    v1_file(
                        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-\
                         poda2830d0d_b0f0_4ff0_81b5_0ee4e299cf80.slice/crio-\
                         09bc3d7ade839efec32b6bec4ec79d099027a668ddba043083ec21d3c3b8f1e6.scope"
                    )
                ),
                found(UID_KIND, ID_KIND),
            ),
            (
                "v1 systemd, CRI-O on minikube (SPIRE \"cri-o in combination with minikube\")",
                "9:devices:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-\
                 pod561fd272_d131_47ef_a01b_46a997a778f3.slice/crio-\
                 030ded69d4c98fcf69c988f75a5eb3a1b4357e1432bd5510c936a40d7e9a1198.scope"
                    .to_string(),
                found(
                    "561fd272-d131-47ef-a01b-46a997a778f3",
                    "030ded69d4c98fcf69c988f75a5eb3a1b4357e1432bd5510c936a40d7e9a1198",
                ),
            ),
            (
                "v1 runc systemd notation (SPIRE \"cri-containerd\")",
                "1:name=systemd:/kubepods-besteffort-pod72f7f152_440c_66ac_9084_e0fc1d8a910c\
                 .slice:cri-containerd:\
                 b2a102854b4969b2ce98dc329c86b4fb2b06e4ad2cc8da9d8a7578c9cd2004a2"
                    .to_string(),
                found(
                    "72f7f152-440c-66ac-9084-e0fc1d8a910c",
                    "b2a102854b4969b2ce98dc329c86b4fb2b06e4ad2cc8da9d8a7578c9cd2004a2",
                ),
            ),
            (
                "v2 systemd, containerd, kind cgroup root (SPIRE containerinfo pod-and-container)",
                format!(
                    "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-\
                     pod00000000_1111_2222_3333_444444444444.slice/cri-containerd-{ID_ZERO}.scope\n"
                ),
                found(UID_ZERO, ID_ZERO),
            ),
            (
                "v2 systemd, containerd, burstable (kubelet slice + runc unit <prefix>-<id>.scope)",
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-\
                     pod00000000_1111_2222_3333_444444444444.slice/cri-containerd-{ID_ZERO}.scope"
                ),
                found(UID_ZERO, ID_ZERO),
            ),
            (
                "v2 systemd, Docker/cri-dockerd, guaranteed (kubepods-pod<uid>.slice/docker-)",
                format!(
                    "0::/kubepods.slice/kubepods-pod00000000_1111_2222_3333_444444444444.slice\
                     /docker-{ID_ZERO}.scope"
                ),
                found(UID_ZERO, ID_ZERO),
            ),
            (
                "v2 systemd, CRI-O with crun's `container` sub-cgroup (crun manual, CRI-O cgmgr)",
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-\
                     pod00000000_1111_2222_3333_444444444444.slice/crio-{ID_ZERO}.scope/container"
                ),
                found(UID_ZERO, ID_ZERO),
            ),
            (
                "v1 cgroupfs, CRI-O (CRI-O cgmgr/cgroupfs.go `<parent>/crio-<id>`)",
                format!("5:memory:/kubepods/besteffort/pod{UID_ZERO}/crio-{ID_ZERO}"),
                found(UID_ZERO, ID_ZERO),
            ),
            (
                "v2 cgroupfs, kind with cgroupfs (kubelet --cgroup-root=/kubelet)",
                format!("0::/kubelet/kubepods/burstable/pod{UID_ZERO}/{ID_ZERO}"),
                found(UID_ZERO, ID_ZERO),
            ),
            (
                "v2 seen from another cgroup namespace (SPIRE \"from a different cgroup namespace\")",
                "0::/../../../burstable/pod095e82d2-713c-467a-a18a-cbb50a075296/\
                 6d1234da0f5aa7fa0ccae4c7d2d109929eb9a81694e6357bcd4547ab3985911b"
                    .to_string(),
                found(
                    "095e82d2-713c-467a-a18a-cbb50a075296",
                    "6d1234da0f5aa7fa0ccae4c7d2d109929eb9a81694e6357bcd4547ab3985911b",
                ),
            ),
            (
                "static pod, kubelet's MD5 UID (SPIRE \"uid generateds by kubernetes\" shape)",
                format!("0::/kubepods/burstable/pod2732ca68f6358eba7703fb6f82a25c94/{ID_ZERO}"),
                found("2732ca68f6358eba7703fb6f82a25c94", ID_ZERO),
            ),
            (
                "a line without a pod is ignored (SPIRE containerinfo pod-uid-override)",
                format!(
                    "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-\
                     pod00000000_1111_2222_3333_444444444444.slice/cri-containerd-{ID_ZERO}.scope\n\
                     1:name=systemd:/fake/just/to/test/condition/cri-containerd-\
                     fedcba98765432100123456789abcdef0123456789abcdef0123456789abcdef.scope\n"
                ),
                found(UID_ZERO, ID_ZERO),
            ),
        ]
    }

    /// Files that must not name a container.
    fn no_container_samples() -> Vec<(&'static str, String)> {
        let pod_slice = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-\
                         pod00000000_1111_2222_3333_444444444444.slice";
        vec![
            ("empty file", String::new()),
            ("v2 root", "0::/\n".into()),
            ("v2 system service", "0::/system.slice/sshd.service\n".into()),
            (
                "v2 user session",
                "0::/user.slice/user-1000.slice/session-3.scope\n".into(),
            ),
            (
                "v2 containerd itself (SPIRE kind fixture's 0:: line)",
                "0::/system.slice/containerd.service\n".into(),
            ),
            ("v1 processes at the root", "3:rdma:/\n1:name=systemd:/\n".into()),
            (
                "CRI-O conmon under systemd (CRI-O cgmgr/systemd.go `crio-conmon-<id>.scope`)",
                format!("0::{pod_slice}/crio-conmon-{ID_ZERO}.scope\n"),
            ),
            (
                "CRI-O conmon under cgroupfs (CRI-O cgmgr/cgroupfs.go `crio-conmon-<id>`)",
                format!("5:memory:/kubepods/burstable/pod{UID_ZERO}/crio-conmon-{ID_ZERO}\n"),
            ),
            (
                "an unknown runtime prefix",
                format!("0::{pod_slice}/libpod-{ID_ZERO}.scope\n"),
            ),
            (
                "pod cgroup itself (SPIRE \"no container segment\")",
                format!("0::/kubepods/pod{UID_KIND}\n"),
            ),
            (
                "container without a pod (SPIRE \"no pod uid segment\")",
                format!("0::/kubepods/{ID_KIND}\n"),
            ),
            (
                "bare container id (SPIRE \"just container segment\")",
                format!("0::/{ID_KIND}\n"),
            ),
            (
                "CRI-O seen from inside its pod's cgroup namespace, no pod UID (SPIRE kubeedge)",
                "0::/../crio-45490e76e0878aaa4d9808f7d2eefba37f093c3efbba9838b6d8ab804d9bd814\
                 .scope\n"
                    .into(),
            ),
            (
                "a sibling container of the agent's own pod (SPIRE containerinfo impersonation)",
                format!("0::/../{ID_ZERO}\n"),
            ),
            (
                "two lines naming different pods (SPIRE containerinfo pod-uid-conflict)",
                format!(
                    "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-\
                     pod00000000_1111_2222_3333_444444444444.slice/cri-containerd-{ID_ZERO}.scope\n\
                     1:name=systemd:/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-\
                     pod76543210_89ab_cdef_0123_456789abcdef.slice/cri-containerd-{ID_ZERO}.scope\n"
                ),
            ),
            (
                "two lines naming different containers (SPIRE containerinfo container-id-conflict)",
                format!(
                    "0::{pod_slice}/cri-containerd-{ID_ZERO}.scope\n\
                     1:name=systemd:{pod_slice}/cri-containerd-\
                     7654321089abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope\n"
                ),
            ),
            (
                "a pod nested under a container (a workload faking another pod below its own)",
                format!(
                    "0::{pod_slice}/cri-containerd-{ID_ZERO}.scope/container/pod{UID_KIND}/{ID_KIND}\n"
                ),
            ),
            (
                "truncated container id",
                format!("0::/kubepods/burstable/pod{UID_KIND}/{}\n", &ID_KIND[..63]),
            ),
            (
                "truncated pod UID",
                format!("0::/kubepods/burstable/pod{}/{ID_KIND}\n", &UID_KIND[..30]),
            ),
            (
                "an over-long container id",
                format!("0::/kubepods/burstable/pod{UID_KIND}/{ID_KIND}0\n"),
            ),
            ("a line cut after the hierarchy id", "0:".into()),
            ("no colons at all", "kubepods/burstable".into()),
            (
                "a relative path",
                format!("0::kubepods/burstable/pod{UID_KIND}/{ID_KIND}\n"),
            ),
            (
                "a non-numeric hierarchy id",
                format!("x::/kubepods/burstable/pod{UID_KIND}/{ID_KIND}\n"),
            ),
            (
                "a valid line after garbage",
                format!("hello world\n0::/kubepods/burstable/pod{UID_KIND}/{ID_KIND}\n"),
            ),
            ("binary garbage", "\u{0}\u{1}\u{7f}::::/\u{fffd}/".into()),
        ]
    }

    #[test]
    fn real_world_cgroup_files_name_their_pod_and_container() {
        for (name, content, want) in in_container_samples() {
            assert_eq!(parse_cgroup(&content), want, "{name}");
        }
    }

    #[test]
    fn processes_outside_a_pod_container_get_no_container() {
        for (name, content) in no_container_samples() {
            assert_eq!(parse_cgroup(&content), None, "{name}");
        }
    }

    #[test]
    fn truncated_files_never_name_a_different_container() {
        for (name, content, want) in in_container_samples() {
            for cut in (0..content.len()).filter(|i| content.is_char_boundary(*i)) {
                let got = parse_cgroup(&content[..cut]);
                assert!(got.is_none() || got == want, "{name} cut at {cut}: {got:?}");
            }
        }
    }

    #[test]
    fn uids_and_ids_are_normalized() {
        let upper = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{}.scope",
            UID_ZERO.to_uppercase().replace('-', "_"),
            ID_ZERO.to_uppercase()
        );
        assert_eq!(parse_cgroup(&upper), found(UID_ZERO, ID_ZERO));
        assert_eq!(PodUid::parse(UID_KIND).unwrap().as_str(), UID_KIND);
        assert_eq!(PodUid::parse("pod-not-a-uid"), None);
        assert_eq!(ContainerId::parse(ID_KIND).unwrap().to_string(), ID_KIND);
        assert_eq!(ContainerId::parse(&ID_KIND.replace('0', "g")), None);
    }

    #[test]
    fn reads_the_cgroup_file_of_a_pid_under_the_proc_root() {
        let proc_root = tempfile::tempdir().unwrap();
        let pid_dir = proc_root.path().join("4242");
        std::fs::create_dir(&pid_dir).unwrap();
        std::fs::write(
            pid_dir.join("cgroup"),
            format!("0::/kubepods/besteffort/pod{UID_KIND}/{ID_KIND}\n"),
        )
        .unwrap();
        assert_eq!(
            read_container(proc_root.path(), 4242).unwrap(),
            found(UID_KIND, ID_KIND)
        );

        std::fs::write(pid_dir.join("cgroup"), "0::/system.slice/sshd.service\n").unwrap();
        assert_eq!(read_container(proc_root.path(), 4242).unwrap(), None);

        // A process that has exited has no cgroup file to read.
        let gone = read_container(proc_root.path(), 4243).unwrap_err();
        assert_eq!(gone.kind(), std::io::ErrorKind::NotFound);
    }
}
