//! Which Docker container a process runs in, from its cgroup
//! (`/proc/PID/cgroup`): how a veth's namespace is tied to its container
//! without asking the engine, which may answer only after the container
//! is gone. The file is readable by anyone, unlike a process's namespaces.

use std::collections::BTreeMap;

/// The lowest pid of each container running now, by container id (a
/// container's processes share its namespaces; the lowest is usually its
/// first). Pids of the agent's PID namespace: the host's when it runs
/// there or with `pid: host`.
pub fn container_pids() -> BTreeMap<String, u32> {
    let mut pids = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process that exited meanwhile has no file: not a container's
        // any more.
        let Ok(cgroup) = std::fs::read_to_string(entry.path().join("cgroup")) else {
            continue;
        };
        if let Some(id) = container_of(&cgroup) {
            pids.entry(id.to_owned())
                .and_modify(|lowest: &mut u32| *lowest = (*lowest).min(pid))
                .or_insert(pid);
        }
    }
    pids
}

/// The container id in a `/proc/PID/cgroup`: the cgroupfs driver's
/// `/docker/<id>` (v1 and v2), systemd's `docker-<id>.scope`. Seen from
/// another cgroup namespace (an agent in a container of its own on
/// cgroup v2) the path is relative, `/../<id>`: any segment that is a
/// container id is taken.
pub fn container_of(cgroup: &str) -> Option<&str> {
    cgroup.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        path.split('/').find_map(|segment| {
            let id = segment
                .strip_prefix("docker-")
                .and_then(|scope| scope.strip_suffix(".scope"))
                .unwrap_or(segment);
            super::is_engine_id(id, 64).then_some(id)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "5b0c2f3ad2a4e8b4d3c9a1e2f3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6";

    #[test]
    fn container_ids_are_read_from_every_driver_layout() {
        let v1 = format!("12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n0::/\n");
        assert_eq!(container_of(&v1), Some(ID));
        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(container_of(&v2), Some(ID));
        let v2_cgroupfs = format!("0::/docker/{ID}\n");
        assert_eq!(container_of(&v2_cgroupfs), Some(ID));
        let other_namespace = format!("0::/../{ID}\n");
        assert_eq!(container_of(&other_namespace), Some(ID));
    }

    #[test]
    fn processes_outside_containers_have_none() {
        assert_eq!(container_of("0::/init.scope\n"), None);
        assert_eq!(container_of("0::/system.slice/docker.service\n"), None);
        assert_eq!(container_of("12:pids:/docker/abc\n"), None);
        assert_eq!(
            container_of(&format!("0::/docker/{}\n", ID.to_uppercase())),
            None
        );
        assert_eq!(container_of("garbage"), None);
        assert_eq!(container_of(""), None);
    }
}
