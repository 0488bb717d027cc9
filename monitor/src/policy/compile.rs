//! From a policy and the containers running now to kernel map entries:
//! for each container veth, its own addresses, and for each container
//! address on the same network what it may send there.
//!
//! The kernel looks up the packet's (protocol, port), then (protocol, any
//! port), then the destination's marker entry holding the network's
//! default. Each entry's verdict is [`evaluate`]'s for that exact key, so
//! the three lookups give the first matching rule, as user space does.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use monitor_common::{
    PolicyIface, PolicyRuleKey, PolicyRuleValue, POLICY_PEER_PROTOCOL, POLICY_SLOTS,
    POLICY_SLOT_SPOOFED_ARP, POLICY_SLOT_SPOOFED_SOURCE,
};

use super::{
    evaluate::{default_counter, evaluate},
    file::{Policy, SPOOFED_ARP, SPOOFED_SOURCE},
};
pub use crate::datapath::Compiled;
use crate::docker::{inventory::parse_mac, Container, Endpoint, Inventory};

/// Where counters overflow once every slot has a name.
const OTHER: &str = "other";

/// Counter slots by name, kept for the agent's whole run: a rule keeps its
/// counter across reloads and a renamed rule gets a new one.
#[derive(Clone, Debug)]
pub struct SlotBook {
    by_name: BTreeMap<String, u32>,
}

impl Default for SlotBook {
    fn default() -> Self {
        Self {
            by_name: [
                (SPOOFED_SOURCE.to_owned(), POLICY_SLOT_SPOOFED_SOURCE),
                (SPOOFED_ARP.to_owned(), POLICY_SLOT_SPOOFED_ARP),
                (OTHER.to_owned(), 2),
            ]
            .into(),
        }
    }
}

impl SlotBook {
    pub fn slot(&mut self, name: &str) -> u32 {
        if let Some(slot) = self.by_name.get(name) {
            return *slot;
        }
        let next = self.by_name.len() as u32;
        if next >= POLICY_SLOTS {
            return self.by_name[OTHER];
        }
        self.by_name.insert(name.to_owned(), next);
        next
    }

    /// (slot, name) of every named counter.
    pub fn names(&self) -> impl Iterator<Item = (u32, &str)> {
        self.by_name
            .iter()
            .map(|(name, slot)| (*slot, name.as_str()))
    }

    pub fn name_of(&self, slot: u32) -> Option<&str> {
        self.names().find(|(s, _)| *s == slot).map(|(_, name)| name)
    }
}

pub fn compile(policy: &Policy, inventory: &Inventory, slots: &mut SlotBook) -> Compiled {
    let mut compiled = Compiled::default();
    let local: BTreeSet<(&str, IpAddr)> = inventory
        .containers
        .values()
        .flat_map(|c| &c.endpoints)
        .flat_map(|e| {
            [e.ip, e.ipv6]
                .into_iter()
                .flatten()
                .map(|ip| (e.network_id.as_str(), ip))
        })
        .collect();
    // Tasks and containers of other swarm nodes on an overlay: judged as
    // destinations like this host's containers (they have no veth here).
    let remote = inventory.swarm.remote_containers(&local);
    // Endpoints by network id: who shares a bridge or an overlay with whom.
    let mut networks: BTreeMap<&str, Vec<(&Container, &Endpoint)>> = BTreeMap::new();
    for container in inventory.containers.values().chain(&remote) {
        for endpoint in &container.endpoints {
            networks
                .entry(endpoint.network_id.as_str())
                .or_default()
                .push((container, endpoint));
        }
    }
    for members in networks.values() {
        for (src, src_end) in members {
            let Some(ifindex) = src_end.host_ifindex else {
                continue;
            };
            compiled.ifaces.insert(ifindex, iface(src_end));
            for (dst, dst_end) in members {
                if src.id == dst.id {
                    continue;
                }
                peer_entries(policy, slots, ifindex, src, dst, dst_end, &mut compiled);
            }
        }
    }
    compiled
}

fn iface(endpoint: &Endpoint) -> PolicyIface {
    let mut iface = PolicyIface {
        ipv4: [0; 16],
        ipv6: [0; 16],
        mac: endpoint
            .mac
            .as_deref()
            .and_then(parse_mac)
            .unwrap_or([0; 6]),
        _pad: [0; 2],
    };
    if let Some(IpAddr::V4(v4)) = endpoint.ip {
        iface.ipv4 = v4.to_ipv6_mapped().octets();
    }
    if let Some(IpAddr::V6(v6)) = endpoint.ipv6 {
        iface.ipv6 = v6.octets();
    }
    iface
}

fn addresses(endpoint: &Endpoint) -> Vec<[u8; 16]> {
    [endpoint.ip, endpoint.ipv6]
        .into_iter()
        .flatten()
        .map(|ip| match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        })
        .collect()
}

/// The entries for what `src` (behind `ifindex`) sends to `dst`.
fn peer_entries(
    policy: &Policy,
    slots: &mut SlotBook,
    ifindex: u32,
    src: &Container,
    dst: &Container,
    dst_end: &Endpoint,
    compiled: &mut Compiled,
) {
    let network = dst_end.network.as_str();
    // (protocol, port) pairs some matching rule names; port 0 = any.
    let mut keys = BTreeSet::new();
    for rule in &policy.rules {
        if !(rule.from.matches(src) && rule.to.matches(dst)) {
            continue;
        }
        for protocol in &rule.protocols {
            if rule.ports.is_empty() {
                keys.insert((*protocol, 0));
            } else {
                keys.extend(rule.ports.iter().map(|port| (*protocol, *port)));
            }
        }
    }
    for dst_addr in addresses(dst_end) {
        let key = |protocol, dst_port| PolicyRuleKey {
            ifindex,
            generation: 0,
            protocol,
            dst_port,
            dst_addr,
        };
        let default = policy.default_for(network);
        compiled.rules.insert(
            key(POLICY_PEER_PROTOCOL, 0),
            value(
                slots.slot(&default_counter(network)),
                default.kernel() as u8,
            ),
        );
        for (protocol, port) in &keys {
            let judgement = evaluate(policy, src, dst, network, *protocol, *port);
            compiled.rules.insert(
                key(*protocol, *port),
                value(
                    slots.slot(&judgement.counter_name()),
                    judgement.action.kernel() as u8,
                ),
            );
        }
    }
}

fn value(slot: u32, action: u8) -> PolicyRuleValue {
    PolicyRuleValue {
        slot,
        action,
        _pad: [0; 3],
    }
}

#[cfg(test)]
mod tests;
