//! Which container a process runs in, from its cgroup paths.
//!
//! The kubelet names a pod's cgroup after the pod UID and the runtime names
//! the container's cgroup after the container ID, so both can be read from
//! the path without asking the runtime. Layouts recognised (any prefix, such
//! as `/kubelet.slice/` or the `/../..` a cgroup namespace shows, is skipped):
//!
//! - cgroupfs driver: `/kubepods/burstable/pod<uid>/<cid>`,
//!   `/kubepods/pod<uid>/<cid>` (Guaranteed QoS).
//! - systemd driver: `/kubepods.slice/kubepods-burstable.slice/
//!   kubepods-burstable-pod<uid_with_underscores>.slice/<runtime>-<cid>.scope`
//!   with runtime `cri-containerd`, `crio` or `docker`.
//! - A container outside Kubernetes: `/docker/<cid>`,
//!   `/system.slice/docker-<cid>.scope`.
//!
//! On hybrid cgroup v1 hosts every v1 hierarchy has a line of its own and the
//! `0::` line may be just `/`, so every line is tried.

/// A container as its cgroup path names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    /// Pod UID with dashes, as in `metadata.uid`; `None` outside Kubernetes.
    pub pod_uid: Option<String>,
    /// The runtime's container ID (64 hex digits), as in
    /// `status.containerStatuses[].containerID` after the `<runtime>://`.
    pub container_id: String,
}

/// The container of a process from the content of `/proc/<pid>/cgroup`;
/// `None` for a host process.
pub fn parse_proc_cgroup(content: &str) -> Option<ContainerRef> {
    content
        .lines()
        // `hierarchy-ID:controllers:path`; the path may itself hold colons.
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .find_map(parse_path)
}

/// The container named by one cgroup path, if any.
pub fn parse_path(path: &str) -> Option<ContainerRef> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // The container's own cgroup is the deepest one that names a container;
    // anything below it (a runtime's sub-cgroup) still belongs to it.
    let (index, container_id) = segments
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, s)| container_id(s).map(|id| (i, id)))?;
    let pod_uid = segments[..index].iter().rev().find_map(|s| pod_uid(s));
    Some(ContainerRef {
        pod_uid,
        container_id: container_id.to_owned(),
    })
}

/// `<cid>`, `cri-containerd-<cid>.scope`, `crio-<cid>.scope`, `docker-<cid>.scope`.
fn container_id(segment: &str) -> Option<&str> {
    let id = match segment.strip_suffix(".scope") {
        Some(scope) => ["cri-containerd-", "crio-", "docker-"]
            .iter()
            .find_map(|prefix| scope.strip_prefix(prefix))?,
        None => segment,
    };
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// `pod<uid>` (cgroupfs) or `[<prefix>-]kubepods[-<qos>]-pod<uid_with_underscores>.slice`
/// (systemd; kubelet's own slice may add the prefix).
fn pod_uid(segment: &str) -> Option<String> {
    let raw = match segment.strip_suffix(".slice") {
        Some(slice) => match slice.rsplit_once("-pod")? {
            (parent, uid) if parent.contains("kubepods") => uid,
            _ => return None,
        },
        None => segment.strip_prefix("pod")?,
    };
    let uid = raw.replace('_', "-");
    is_uid(&uid).then_some(uid)
}

/// 8-4-4-4-12 hex digits, as the apiserver generates them.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "6f1d8c2e-3b4a-4c5d-8e9f-a0b1c2d3e4f5";

    fn in_pod() -> Option<ContainerRef> {
        Some(ContainerRef {
            pod_uid: Some(UID.to_owned()),
            container_id: CID.to_owned(),
        })
    }

    #[test]
    fn kubelet_layouts() {
        let u = UID.replace('-', "_");
        for path in [
            format!("/kubepods/burstable/pod{UID}/{CID}"),
            format!("/kubepods/besteffort/pod{UID}/{CID}"),
            format!("/kubepods/pod{UID}/{CID}"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{CID}.scope"
            ),
            format!("/kubepods.slice/kubepods-pod{u}.slice/crio-{CID}.scope"),
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/docker-{CID}.scope"
            ),
            // Seen from inside another cgroup namespace, and nested under kubelet's own slice.
            format!("/../../kubepods/burstable/pod{UID}/{CID}"),
            format!(
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{CID}.scope"
            ),
            // A runtime sub-cgroup below the container's.
            format!("/kubepods/burstable/pod{UID}/{CID}/init"),
        ] {
            assert_eq!(parse_path(&path), in_pod(), "{path}");
        }
    }

    #[test]
    fn containers_outside_kubernetes() {
        let plain = Some(ContainerRef {
            pod_uid: None,
            container_id: CID.to_owned(),
        });
        assert_eq!(parse_path(&format!("/docker/{CID}")), plain);
        assert_eq!(
            parse_path(&format!("/system.slice/docker-{CID}.scope")),
            plain
        );
    }

    #[test]
    fn host_processes_and_lookalikes() {
        for path in [
            "/",
            "/system.slice/containerd.service",
            "/user.slice/user-0.slice/session-1.scope",
            "/kubepods/burstable/pod6f1d8c2e-3b4a-4c5d-8e9f-a0b1c2d3e4f5",
            // Pod sandbox infrastructure of CRI-O: not a container ID.
            "/kubepods.slice/crio-conmon-0123.scope",
            // One hex digit short.
            "/docker/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde",
        ] {
            assert_eq!(parse_path(path), None, "{path}");
        }
    }

    #[test]
    fn hybrid_v1_file_uses_any_hierarchy() {
        // The unified line is `/`; the pod shows in the v1 lines only.
        let content = format!(
            "12:pids:/kubepods/burstable/pod{UID}/{CID}\n\
             4:memory:/kubepods/burstable/pod{UID}/{CID}\n\
             1:name=systemd:/kubepods/burstable/pod{UID}/{CID}\n\
             0::/\n"
        );
        assert_eq!(parse_proc_cgroup(&content), in_pod());
        assert_eq!(
            parse_proc_cgroup("9:name=systemd:/\n8:pids:/user.slice\n0::/\n"),
            None
        );
        assert_eq!(parse_proc_cgroup("garbage without colons\n"), None);
    }
}
