//! What a container could do to its neighbours, from its inspect data.

use bollard::models::ContainerInspectResponse;
use serde::Serialize;

/// Facts that make a container dangerous to the others on its network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Posture {
    pub privileged: bool,
    pub runs_as_root: bool,
    /// Raw sockets: forge any packet, ARP included (in Docker's default set).
    pub cap_net_raw: bool,
    pub cap_net_admin: bool,
    pub host_network: bool,
    pub host_pid: bool,
    pub docker_socket_mounted: bool,
}

impl Posture {
    /// Every fact by name, as `crossmon_container_posture` shows it.
    pub fn checks(&self) -> [(&'static str, bool); 7] {
        [
            ("privileged", self.privileged),
            ("runs_as_root", self.runs_as_root),
            ("cap_net_raw", self.cap_net_raw),
            ("cap_net_admin", self.cap_net_admin),
            ("host_network", self.host_network),
            ("host_pid", self.host_pid),
            ("docker_socket_mounted", self.docker_socket_mounted),
        ]
    }

    pub fn of(inspect: &ContainerInspectResponse) -> Self {
        let host = inspect.host_config.as_ref();
        let privileged = host.and_then(|h| h.privileged).unwrap_or(false);
        let caps = |list: Option<&Vec<String>>, cap: &str| {
            list.is_some_and(|caps| {
                caps.iter().any(|c| {
                    let c = c.trim_start_matches("CAP_");
                    c.eq_ignore_ascii_case(cap) || c.eq_ignore_ascii_case("ALL")
                })
            })
        };
        let added = |cap| caps(host.and_then(|h| h.cap_add.as_ref()), cap);
        let dropped = |cap| caps(host.and_then(|h| h.cap_drop.as_ref()), cap);
        let user = inspect
            .config
            .as_ref()
            .and_then(|c| c.user.clone())
            .unwrap_or_default();
        let user = user.split(':').next().unwrap_or_default();
        let mounts = inspect.mounts.as_deref().unwrap_or_default();
        Self {
            privileged,
            runs_as_root: user.is_empty() || user == "root" || user == "0",
            // NET_RAW is in Docker's default capability set.
            cap_net_raw: privileged || added("NET_RAW") || !dropped("NET_RAW"),
            cap_net_admin: privileged || added("NET_ADMIN"),
            host_network: host.and_then(|h| h.network_mode.as_deref()) == Some("host"),
            host_pid: host.and_then(|h| h.pid_mode.as_deref()) == Some("host"),
            docker_socket_mounted: mounts.iter().any(|m| {
                m.source
                    .as_deref()
                    .is_some_and(|s| s.ends_with("docker.sock"))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerConfig, HostConfig, MountPoint};

    use super::*;

    #[test]
    fn defaults_hold_net_raw_and_root() {
        let posture = Posture::of(&ContainerInspectResponse::default());
        assert!(posture.runs_as_root && posture.cap_net_raw);
        assert!(!posture.cap_net_admin && !posture.privileged && !posture.docker_socket_mounted);
    }

    #[test]
    fn capabilities_users_and_mounts_are_read() {
        let inspect = ContainerInspectResponse {
            host_config: Some(HostConfig {
                cap_add: Some(vec!["CAP_NET_ADMIN".into()]),
                cap_drop: Some(vec!["ALL".into()]),
                network_mode: Some("host".into()),
                ..HostConfig::default()
            }),
            config: Some(ContainerConfig {
                user: Some("1000:1000".into()),
                ..ContainerConfig::default()
            }),
            mounts: Some(vec![MountPoint {
                source: Some("/var/run/docker.sock".into()),
                ..MountPoint::default()
            }]),
            ..ContainerInspectResponse::default()
        };
        let posture = Posture::of(&inspect);
        assert!(posture.cap_net_admin && !posture.cap_net_raw && !posture.runs_as_root);
        assert!(posture.host_network && posture.docker_socket_mounted);
    }
}
