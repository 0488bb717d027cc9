//! `crossmon policy check FILE`: what the policy would allow and deny
//! between the containers running now, pair by pair, network by network.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{
    evaluate::default_counter,
    file::{Action, Policy},
};
use crate::docker::{self, inventory::ProbeCache, Container, EngineInfo, Inventory};

/// Lists the engine's containers and renders the verdicts.
pub async fn run(policy: &Policy, docker_host: Option<&str>) -> anyhow::Result<String> {
    let docker = docker::connect(docker_host).await?;
    let engine = EngineInfo::of(&docker).await?;
    let inventory = Inventory::sync(&docker, &engine, &mut ProbeCache::default()).await?;
    Ok(render(policy, &inventory))
}

/// One block per network with two containers or more: each ordered pair,
/// the rules that apply to it (first match first) and what the rest gets.
pub fn render(policy: &Policy, inventory: &Inventory) -> String {
    let mut networks: BTreeMap<&str, Vec<&Container>> = BTreeMap::new();
    for container in inventory.containers.values() {
        for endpoint in &container.endpoints {
            networks
                .entry(endpoint.network.as_str())
                .or_default()
                .push(container);
        }
    }
    let mut out = String::new();
    let mut pairs = 0;
    for (network, members) in &networks {
        if members.len() < 2 {
            continue;
        }
        let default = policy.default_for(network);
        let _ = writeln!(out, "network {network} (default: {})", default.name());
        let mut members = members.clone();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let width = members.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for src in &members {
            for dst in &members {
                if src.id == dst.id {
                    continue;
                }
                pairs += 1;
                let mut verdicts: Vec<String> = policy
                    .rules
                    .iter()
                    .filter(|rule| rule.from.matches(src) && rule.to.matches(dst))
                    .map(|rule| format!("{} {} ({})", rule.action.name(), rule.traffic, rule.name))
                    .collect();
                let rest = format!("{} ({})", default.name(), default_counter(network));
                if verdicts.is_empty() {
                    verdicts.push(format!("all: {rest}"));
                } else {
                    verdicts.push(format!("the rest: {rest}"));
                }
                let _ = writeln!(
                    out,
                    "  {:width$} -> {:width$}  {}",
                    src.name,
                    dst.name,
                    verdicts.join("; ")
                );
            }
        }
        out.push('\n');
    }
    if pairs == 0 {
        out.push_str("no two running containers share a network: nothing to judge\n");
    }
    let denied_anywhere = networks
        .keys()
        .any(|n| policy.default_for(n) == Action::Deny);
    if denied_anywhere {
        out.push_str(
            "deny: dropped with --enforce, alerted in observe mode. Replies to allowed connections always pass.\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{docker::Endpoint, policy::select::tests::container};

    #[test]
    fn every_pair_sharing_a_network_gets_a_line() {
        let policy = Policy::parse(
            "version: 1\ndefaults: {\"*\": deny}\nrules:\n  - {name: web-api, from: {service: shop/web}, to: {service: shop/api}, protocol: tcp, ports: [80]}\n",
        )
        .expect("valid");
        let mut inventory = Inventory::default();
        for (name, service) in [("web", "web"), ("api", "api"), ("lonely", "x")] {
            let mut c = container(name, Some("shop"), Some(service));
            c.endpoints.push(Endpoint {
                network: if name == "lonely" { "other" } else { "front" }.to_owned(),
                network_id: String::new(),
                ip: None,
                ipv6: None,
                mac: None,
                gateway: None,
                host_ifindex: None,
            });
            inventory.containers.insert(c.id.clone(), c);
        }
        let text = render(&policy, &inventory);
        assert_eq!(
            text,
            "network front (default: deny)\n  \
             api -> web  all: deny (default:front)\n  \
             web -> api  allow tcp/80 (web-api); the rest: deny (default:front)\n\n\
             deny: dropped with --enforce, alerted in observe mode. Replies to allowed connections always pass.\n"
        );
    }
}
