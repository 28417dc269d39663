//! Container and pod identity from the text of `/proc/<pid>/cgroup`: cgroup v1 and v2, the
//! containerd, CRI-O and Docker path shapes, with the systemd and the cgroupfs drivers.
//!
//! Shapes handled (one path segment at a time, from the leaf up):
//! - systemd driver: `kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`,
//!   `crio-<id>.scope`, `docker-<id>.scope` (also `libpod-<id>.scope`);
//! - cgroupfs driver: `/kubepods/burstable/pod<uid>/<id>`, `/kubepods/pod<uid>/crio-<id>`;
//! - plain Docker: `/docker/<id>`;
//! - paths relative to the reader's cgroup namespace (`/../../kubepods-...`).
//!
//! CRI-O's `crio-conmon-<id>` monitor cgroups are not containers and are skipped. All functions
//! are total: any input yields a value or `None`, in time linear in the input.

use std::fmt;

/// Length of a full container id as the runtimes write it (64 lowercase hex digits).
const CONTAINER_ID_LEN: usize = 64;

/// Length of a pod UID in its canonical 8-4-4-4-12 form.
const POD_UID_LEN: usize = 36;

/// Length of a static pod's UID: the hex config hash the kubelet computes.
const STATIC_POD_UID_LEN: usize = 32;

/// Prefixes runtimes put before the id in a systemd scope or cgroupfs directory name.
const RUNTIME_PREFIXES: [&str; 6] = [
    "cri-containerd-",
    "crio-",
    "docker-",
    "libpod-",
    "containerd-",
    "cri-o-",
];

/// A container id: 64 lowercase hex digits, as in a pod's `status.containerStatuses[].containerID`
/// after the `<runtime>://` scheme.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(String);

impl ContainerId {
    /// Accepts exactly 64 hex digits (either case; stored lowercase).
    pub fn parse(text: &str) -> Option<ContainerId> {
        if text.len() == CONTAINER_ID_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            Some(ContainerId(text.to_ascii_lowercase()))
        } else {
            None
        }
    }

    /// Parses a pod status `containerID` such as `containerd://<id>`, `cri-o://<id>` or
    /// `docker://<id>`.
    pub fn from_status_field(container_id_field: &str) -> Option<ContainerId> {
        let id = match container_id_field.split_once("://") {
            Some((_scheme, id)) => id,
            None => container_id_field,
        };
        ContainerId::parse(id)
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

/// What a cgroup file says about where a process runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupIdentity {
    pub container_id: Option<ContainerId>,
    /// The pod UID in canonical dashed form, when the path is a kubelet pod path.
    pub pod_uid: Option<String>,
}

/// The container a process runs in, from the full text of its `/proc/<pid>/cgroup`.
pub fn container_id_from_cgroup(cgroup_file_contents: &str) -> Option<ContainerId> {
    identity_from_cgroup(cgroup_file_contents).container_id
}

/// The kubelet pod UID in the cgroup path, if any.
pub fn pod_uid_from_cgroup(cgroup_file_contents: &str) -> Option<String> {
    identity_from_cgroup(cgroup_file_contents).pod_uid
}

/// Container id and pod UID from the full text of a cgroup file. The first line (in file order)
/// that yields a container id wins; the pod UID is taken from that same line when it has one,
/// else from the first line that has one.
pub fn identity_from_cgroup(cgroup_file_contents: &str) -> CgroupIdentity {
    let mut found = CgroupIdentity::default();
    for line in cgroup_file_contents.lines() {
        let Some(path) = path_of_line(line) else {
            continue;
        };
        let line_identity = identity_from_path(path);
        if found.container_id.is_none() && line_identity.container_id.is_some() {
            found.container_id = line_identity.container_id;
            if line_identity.pod_uid.is_some() {
                found.pod_uid = line_identity.pod_uid;
            }
        } else if found.pod_uid.is_none() {
            found.pod_uid = line_identity.pod_uid;
        }
        if found.container_id.is_some() && found.pod_uid.is_some() {
            break;
        }
    }
    found
}

/// The path part of `hierarchy-id:controllers:path` (the path itself may contain `:`).
fn path_of_line(line: &str) -> Option<&str> {
    let mut parts = line.splitn(3, ':');
    let _hierarchy = parts.next()?;
    let _controllers = parts.next()?;
    parts.next()
}

/// Scans one cgroup path from the leaf up.
fn identity_from_path(path: &str) -> CgroupIdentity {
    let mut identity = CgroupIdentity::default();
    for segment in path.rsplit('/') {
        if identity.container_id.is_none()
            && let Some(id) = container_id_from_segment(segment)
        {
            identity.container_id = Some(id);
            continue;
        }
        if identity.pod_uid.is_none()
            && let Some(uid) = pod_uid_from_segment(segment)
        {
            identity.pod_uid = Some(uid);
            break;
        }
    }
    identity
}

/// `cri-containerd-<id>.scope`, `crio-<id>`, `docker-<id>.scope`, `<id>`, ...
fn container_id_from_segment(segment: &str) -> Option<ContainerId> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    if name.starts_with("crio-conmon-") {
        return None;
    }
    let bare = RUNTIME_PREFIXES
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    ContainerId::parse(bare)
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd, possibly
/// with a `kubelet-` or other prefix before `kubepods`).
fn pod_uid_from_segment(segment: &str) -> Option<String> {
    let candidate = if let Some(slice) = segment.strip_suffix(".slice") {
        let at = slice.rfind("-pod")?;
        slice.get(at + "-pod".len()..)?
    } else {
        segment.strip_prefix("pod")?
    };
    canonical_pod_uid(candidate)
}

/// Canonical 8-4-4-4-12 lowercase form (systemd slices write `_` for `-`), or the 32 hex digits
/// of a static pod's config hash, which the kubelet uses as that pod's UID.
fn canonical_pod_uid(candidate: &str) -> Option<String> {
    if candidate.len() == STATIC_POD_UID_LEN {
        return candidate
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
            .then(|| candidate.to_ascii_lowercase());
    }
    if candidate.len() != POD_UID_LEN {
        return None;
    }
    let mut uid = String::with_capacity(POD_UID_LEN);
    for (index, c) in candidate.chars().enumerate() {
        let dash_position = matches!(index, 8 | 13 | 18 | 23);
        match c {
            '-' | '_' if dash_position => uid.push('-'),
            c if !dash_position && c.is_ascii_hexdigit() => uid.push(c.to_ascii_lowercase()),
            _ => return None,
        }
    }
    Some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "9a4c6e5b0d2f4f8e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f";
    const UID: &str = "1f2e3d4c-5b6a-4789-9abc-def012345678";

    fn id() -> Option<ContainerId> {
        ContainerId::parse(ID)
    }

    #[test]
    fn cgroup_v2_systemd_containerd() {
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1f2e3d4c_5b6a_4789_9abc_def012345678.slice/cri-containerd-{ID}.scope\n"
        );
        let identity = identity_from_cgroup(&text);
        assert_eq!(identity.container_id, id());
        assert_eq!(identity.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn cgroup_v2_systemd_guaranteed_qos_crio() {
        let text = format!(
            "0::/kubepods.slice/kubepods-pod1f2e3d4c_5b6a_4789_9abc_def012345678.slice/crio-{ID}.scope\n"
        );
        assert_eq!(container_id_from_cgroup(&text), id());
        assert_eq!(pod_uid_from_cgroup(&text).as_deref(), Some(UID));
    }

    #[test]
    fn crio_conmon_is_not_a_container() {
        let text = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1f2e3d4c_5b6a_4789_9abc_def012345678.slice/crio-conmon-{ID}.scope\n"
        );
        let identity = identity_from_cgroup(&text);
        assert_eq!(identity.container_id, None);
        assert_eq!(identity.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn cgroup_v1_cgroupfs_containerd_many_controllers() {
        let text = format!(
            "12:hugetlb:/kubepods/besteffort/pod{UID}/{ID}\n\
             11:memory:/kubepods/besteffort/pod{UID}/{ID}\n\
             1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n\
             0::/\n"
        );
        let identity = identity_from_cgroup(&text);
        assert_eq!(identity.container_id, id());
        assert_eq!(identity.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn cgroup_v1_cgroupfs_guaranteed_crio() {
        let text = format!("4:pids:/kubepods/pod{UID}/crio-{ID}\n");
        let identity = identity_from_cgroup(&text);
        assert_eq!(identity.container_id, id());
        assert_eq!(identity.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn cgroup_v1_systemd_docker_on_kubelet() {
        let text = format!(
            "11:cpu,cpuacct:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1f2e3d4c_5b6a_4789_9abc_def012345678.slice/docker-{ID}.scope\n"
        );
        assert_eq!(container_id_from_cgroup(&text), id());
        assert_eq!(pod_uid_from_cgroup(&text).as_deref(), Some(UID));
    }

    #[test]
    fn plain_docker_without_kubernetes() {
        let text = format!("13:name=systemd:/docker/{ID}\n12:pids:/docker/{ID}\n0::/docker/{ID}\n");
        let identity = identity_from_cgroup(&text);
        assert_eq!(identity.container_id, id());
        assert_eq!(identity.pod_uid, None);
    }

    #[test]
    fn kind_node_nested_kubelet_slice_and_relative_namespace_path() {
        let text = format!(
            "0::/../../kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod1f2e3d4c_5b6a_4789_9abc_def012345678.slice/cri-containerd-{ID}.scope\n"
        );
        let identity = identity_from_cgroup(&text);
        assert_eq!(identity.container_id, id());
        assert_eq!(identity.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn sub_cgroup_below_the_container_scope() {
        let text = format!("0::/machine.slice/libpod-{ID}.scope/container\n");
        assert_eq!(container_id_from_cgroup(&text), id());
    }

    #[test]
    fn pause_or_pod_level_process_has_pod_but_no_container() {
        let text = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1f2e3d4c_5b6a_4789_9abc_def012345678.slice\n";
        let identity = identity_from_cgroup(text);
        assert_eq!(identity.container_id, None);
        assert_eq!(identity.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn static_pod_config_hash_uid() {
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0F5C2A7D9E1B3C4D5E6F7A8B9C0D1E2F.slice/cri-containerd-{ID}.scope\n"
        );
        let identity = identity_from_cgroup(&text);
        assert_eq!(identity.container_id, id());
        assert_eq!(
            identity.pod_uid.as_deref(),
            Some("0f5c2a7d9e1b3c4d5e6f7a8b9c0d1e2f")
        );
    }

    #[test]
    fn host_processes_have_no_identity() {
        for text in [
            "0::/init.scope\n",
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            "0::/system.slice/containerd.service\n",
            "12:pids:/\n0::/\n",
            "",
            "garbage without colons\n",
            "::\n",
        ] {
            assert_eq!(
                identity_from_cgroup(text),
                CgroupIdentity::default(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn near_miss_ids_are_rejected() {
        let short = &ID[..63];
        let long = format!("{ID}0");
        let non_hex = format!("{}z", &ID[..63]);
        for text in [
            format!("0::/docker/{short}\n"),
            format!("0::/docker/{long}\n"),
            format!("0::/docker/{non_hex}\n"),
            "0::/kubepods/podnot-a-uid/x\n".to_string(),
            "0::/kubepods.slice/kubepods-pod1f2e3d4c_5b6a_4789_9abc_def01234567.slice\n"
                .to_string(),
        ] {
            assert_eq!(
                identity_from_cgroup(&text),
                CgroupIdentity::default(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn uppercase_and_multibyte_input_is_total() {
        let upper = ID.to_ascii_uppercase();
        assert_eq!(
            container_id_from_cgroup(&format!("0::/docker/{upper}\n")),
            id()
        );
        let multibyte = "0::/kubepods.slice/kubepods-podé".repeat(50);
        assert_eq!(identity_from_cgroup(&multibyte), CgroupIdentity::default());
    }

    #[test]
    fn status_field_schemes() {
        for field in [
            format!("containerd://{ID}"),
            format!("cri-o://{ID}"),
            format!("docker://{ID}"),
            ID.to_string(),
        ] {
            assert_eq!(ContainerId::from_status_field(&field), id(), "{field}");
        }
        assert_eq!(ContainerId::from_status_field("containerd://"), None);
        assert_eq!(ContainerId::from_status_field(""), None);
    }
}
