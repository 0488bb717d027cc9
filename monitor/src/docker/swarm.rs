//! Who is behind an overlay address on another node of a Docker Swarm.
//!
//! Every engine on an overlay network shares, through the network's gossip,
//! its tasks and attached containers: `GET /networks/{id}?verbose=true`
//! lists them under `Services` (key `""` for containers attached with
//! `docker run --network`), each with its name, address and the address of
//! the node it runs on, and each service's virtual IP. A manager also
//! answers `GET /nodes` (node addresses to host names) and `GET /services`
//! (the stack label); a worker does not, so there a remote node is named
//! by its address and a remote service has no stack.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use bollard::{
    query_parameters::{InspectNetworkOptionsBuilder, ListNodesOptions, ListServicesOptions},
    Docker,
};
use serde::Serialize;

use super::{Container, Endpoint, Posture};

/// `com.docker.stack.namespace`: the stack a service was deployed in.
pub const STACK_LABEL: &str = "com.docker.stack.namespace";
/// The service a task's container belongs to.
pub const SERVICE_LABEL: &str = "com.docker.swarm.service.name";

/// The id prefix of a remote end's stand-in container.
const STAND_IN_ID: &str = "remote:";

impl Container {
    /// Whether this is a remote end's stand-in, which knows only what the
    /// overlay's gossip tells (not its posture, image or ports).
    pub fn is_stand_in(&self) -> bool {
        self.id.starts_with(STAND_IN_ID)
    }
}

/// An address on an overlay network that is not a container of this host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemoteEnd {
    /// The task's container name, the attached container's name, or for a
    /// virtual IP the service's name.
    pub name: String,
    pub service: Option<String>,
    pub stack: Option<String>,
    /// The node's host name (its address where this engine cannot ask).
    pub node: Option<String>,
    pub network: String,
    #[serde(skip)]
    pub network_id: String,
}

impl RemoteEnd {
    /// The remote end as a flow policy's selectors see it, with its one
    /// endpoint: its name, and as labels only what the gossip tells
    /// (`com.docker.swarm.service.name`, and `com.docker.stack.namespace`
    /// where a manager names the stack). Its other labels, compose's
    /// included, stay on its own node.
    pub fn as_container(&self, ip: IpAddr) -> Container {
        let labels = [(SERVICE_LABEL, &self.service), (STACK_LABEL, &self.stack)]
            .into_iter()
            .filter_map(|(key, value)| Some((key.to_owned(), value.clone()?)))
            .collect();
        Container {
            id: format!("{STAND_IN_ID}{}:{ip}", self.network_id),
            name: self.name.clone(),
            image: String::new(),
            compose_project: None,
            compose_service: None,
            network_mode: self.network.clone(),
            pid: None,
            sandbox_key: None,
            endpoints: vec![Endpoint {
                network: self.network.clone(),
                network_id: self.network_id.clone(),
                ip: ip.is_ipv4().then_some(ip),
                ipv6: ip.is_ipv6().then_some(ip),
                mac: None,
                gateway: None,
                host_ifindex: None,
            }],
            posture: Posture::default(),
            labels,
            exposed_ports: BTreeSet::new(),
        }
    }
}

/// What this engine knows of the swarm it is in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwarmView {
    /// This node's host name, when the engine is in a swarm.
    pub node: Option<String>,
    /// Overlay addresses by who has them, this host's containers included
    /// (the inventory names those first).
    pub remote: BTreeMap<IpAddr, RemoteEnd>,
}

impl SwarmView {
    /// The remote ends of other nodes as containers, one endpoint each:
    /// addresses `local` holds (this host's containers, by network id
    /// and address) are left out, their containers say more.
    pub fn remote_containers(&self, local: &BTreeSet<(&str, IpAddr)>) -> Vec<Container> {
        self.remote
            .iter()
            .filter(|(ip, end)| !local.contains(&(end.network_id.as_str(), **ip)))
            .map(|(ip, end)| end.as_container(*ip))
            .collect()
    }

    /// Asks the engine about `overlays` (network id to name). Never fails:
    /// what it cannot learn stays unnamed, and the reason is logged.
    pub async fn of(docker: &Docker, overlays: &BTreeMap<String, String>) -> SwarmView {
        let mut view = SwarmView::default();
        let info = match docker.info().await {
            Ok(info) => info,
            Err(err) => {
                tracing::debug!("GET /info: {err}");
                return view;
            }
        };
        let swarm = info.swarm.unwrap_or_default();
        if swarm.node_id.as_deref().unwrap_or_default().is_empty() {
            return view;
        }
        view.node = info.name.clone();
        let mut nodes: HashMap<String, String> = HashMap::new();
        if let (Some(addr), Some(name)) = (swarm.node_addr, info.name) {
            nodes.insert(addr, name);
        }
        let mut stacks: HashMap<String, String> = HashMap::new();
        if swarm.control_available == Some(true) {
            manager_names(docker, &mut nodes, &mut stacks).await;
        }
        let names = Names {
            nodes: &nodes,
            stacks: &stacks,
        };
        for (id, name) in overlays {
            let options = InspectNetworkOptionsBuilder::new().verbose(true).build();
            let network = match docker.inspect_network(id, Some(options)).await {
                Ok(network) => network,
                Err(err) => {
                    tracing::debug!(network = %name, "GET /networks/{id}?verbose=true: {err}");
                    continue;
                }
            };
            let network_name = network.name.clone().unwrap_or_else(|| name.clone());
            let services = network.services.unwrap_or_default();
            view.remote
                .extend(names.remote_ends(&services, &network_name, id));
        }
        view
    }
}

/// What the engine names beyond one network: node host names by address
/// and stacks by service (a manager's answers; empty on a worker).
struct Names<'a> {
    nodes: &'a HashMap<String, String>,
    stacks: &'a HashMap<String, String>,
}

impl Names<'_> {
    /// The addresses one overlay's verbose answer lists under `Services`:
    /// each service's virtual IP as the service, each task or attached
    /// container by its name and node.
    fn remote_ends(
        &self,
        services: &HashMap<String, serde_json::Value>,
        network: &str,
        network_id: &str,
    ) -> Vec<(IpAddr, RemoteEnd)> {
        let mut ends = Vec::new();
        for (service, detail) in services {
            let service = (!service.is_empty()).then(|| service.clone());
            let stack = service.as_ref().and_then(|s| self.stacks.get(s).cloned());
            let end = |name: String, node: Option<String>| RemoteEnd {
                name,
                service: service.clone(),
                stack: stack.clone(),
                node,
                network: network.to_owned(),
                network_id: network_id.to_owned(),
            };
            if let (Some(vip), Some(service)) = (ip_at(detail, "VIP"), &service) {
                ends.push((vip, end(service.clone(), None)));
            }
            let tasks = detail.get("Tasks").and_then(|t| t.as_array());
            for task in tasks.into_iter().flatten() {
                let (Some(ip), Some(name)) = (
                    ip_at(task, "EndpointIP"),
                    task.get("Name").and_then(|n| n.as_str()),
                ) else {
                    continue;
                };
                let host = task
                    .get("Info")
                    .and_then(|info| info.get("Host IP"))
                    .and_then(|h| h.as_str());
                let node = host.map(|h| self.nodes.get(h).cloned().unwrap_or_else(|| h.to_owned()));
                ends.push((ip, end(name.to_owned(), node)));
            }
        }
        ends
    }
}

/// An address field of the verbose network answer (`<nil>` for none).
fn ip_at(value: &serde_json::Value, field: &str) -> Option<IpAddr> {
    value.get(field)?.as_str()?.parse().ok()
}

/// Node host names by address and stacks by service, which only a manager
/// answers.
async fn manager_names(
    docker: &Docker,
    nodes: &mut HashMap<String, String>,
    stacks: &mut HashMap<String, String>,
) {
    match docker.list_nodes(None::<ListNodesOptions>).await {
        Ok(list) => {
            for node in list {
                let addr = node.status.and_then(|s| s.addr);
                let name = node.description.and_then(|d| d.hostname);
                if let (Some(addr), Some(name)) = (addr, name) {
                    nodes.insert(addr, name);
                }
            }
        }
        Err(err) => tracing::debug!("GET /nodes: {err}"),
    }
    match docker.list_services(None::<ListServicesOptions>).await {
        Ok(list) => {
            for spec in list.into_iter().filter_map(|s| s.spec) {
                let stack = spec.labels.and_then(|l| l.get(STACK_LABEL).cloned());
                if let (Some(name), Some(stack)) = (spec.name, stack) {
                    stacks.insert(name, stack);
                }
            }
        }
        Err(err) => tracing::debug!("GET /services: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Services` of `GET /networks/{id}?verbose=true` as Docker 20.10
    /// answers it: a service with its virtual IP and a task on another
    /// node, and containers attached with `docker run --network` under
    /// `""`, with no virtual IP.
    fn services() -> HashMap<String, serde_json::Value> {
        serde_json::from_str(
            r#"{
                "web": {"VIP": "10.0.1.2", "Ports": [], "LocalLBIndex": 257, "Tasks": [
                    {"Name": "shop_web.1.x7f", "EndpointID": "e1", "EndpointIP": "10.0.1.3",
                     "Info": {"Host IP": "192.168.7.2"}}]},
                "": {"VIP": "<nil>", "Ports": [], "LocalLBIndex": 0, "Tasks": [
                    {"Name": "debug", "EndpointID": "e2", "EndpointIP": "10.0.1.9",
                     "Info": {"Host IP": "192.168.7.3"}}]}
            }"#,
        )
        .unwrap()
    }

    fn end(
        name: &str,
        service: Option<&str>,
        stack: Option<&str>,
        node: Option<&str>,
    ) -> RemoteEnd {
        RemoteEnd {
            name: name.to_owned(),
            service: service.map(str::to_owned),
            stack: stack.map(str::to_owned),
            node: node.map(str::to_owned),
            network: "shop_net".to_owned(),
            network_id: "n1".to_owned(),
        }
    }

    #[test]
    fn a_managers_view_names_the_virtual_ip_as_its_service_and_tasks_by_node_and_stack() {
        let nodes = HashMap::from([("192.168.7.2".to_owned(), "node-b".to_owned())]);
        let stacks = HashMap::from([("web".to_owned(), "shop".to_owned())]);
        let names = Names {
            nodes: &nodes,
            stacks: &stacks,
        };
        let ends: BTreeMap<IpAddr, RemoteEnd> = names
            .remote_ends(&services(), "shop_net", "n1")
            .into_iter()
            .collect();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            ends,
            BTreeMap::from([
                (ip("10.0.1.2"), end("web", Some("web"), Some("shop"), None)),
                (
                    ip("10.0.1.3"),
                    end("shop_web.1.x7f", Some("web"), Some("shop"), Some("node-b"))
                ),
                // A node the engine could not name stays its address.
                (
                    ip("10.0.1.9"),
                    end("debug", None, None, Some("192.168.7.3"))
                ),
            ])
        );
    }

    #[test]
    fn a_workers_view_has_no_stack_and_names_nodes_by_address() {
        let none = HashMap::new();
        let names = Names {
            nodes: &none,
            stacks: &none,
        };
        let ends = names.remote_ends(&services(), "shop_net", "n1");
        let task = ends
            .iter()
            .find(|(_, end)| end.name == "shop_web.1.x7f")
            .unwrap();
        assert_eq!(
            task.1,
            end("shop_web.1.x7f", Some("web"), None, Some("192.168.7.2"))
        );
        assert_eq!(ends.len(), 3);
    }
}
