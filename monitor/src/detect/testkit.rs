//! What the detectors' unit tests share: a host of containers on Docker
//! networks as the engine would describe it, and flows, attempts and
//! traffic between them, at the detectors' default settings.

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr},
};

use monitor_common::{Direction, FlowKey, FlowStats};

use super::{Alert, Attempt, Detector, Findings, PollEnd, Traffic};
use crate::{
    datapath::{
        events::{ArpPacket, Seen},
        Event,
    },
    docker::{
        inventory::Network, swarm::RemoteEnd, Container, Directory, Endpoint, FlowEnd, Inventory,
        Posture,
    },
    event_log::EventBatch,
    flows::outcome::Outcome,
    model::FlowRecord,
};

pub const SEC: u64 = 1_000_000_000;
/// The `front` network's gateway (the host, as containers see it).
pub const GATEWAY: [u8; 4] = [10, 0, 0, 1];
/// The address of `iso`, alone on the `back` network (no inter-container
/// communication).
pub const ISOLATED: [u8; 4] = [10, 0, 1, 2];

/// Containers `c2`, `c3`, ... at 10.0.0.2, 10.0.0.3, ... on `front`, their
/// host-side veths at ifindex 1002, 1003, ...; and `iso` at 10.0.1.2 on
/// `back`, veth 2002.
pub struct Lab {
    pub directory: Directory,
}

pub fn front(n: u8) -> [u8; 4] {
    [10, 0, 0, n]
}

pub fn mac(address: [u8; 4]) -> [u8; 6] {
    [2, 0x42, address[0], address[1], address[2], address[3]]
}

fn container(name: &str, network: &str, address: [u8; 4], veth: u32) -> Container {
    Container {
        id: format!("{name}-id-0123456789abcdef"),
        name: name.into(),
        image: "busybox".into(),
        compose_project: None,
        compose_service: None,
        network_mode: network.into(),
        pid: None,
        sandbox_key: None,
        endpoints: vec![Endpoint {
            network: network.into(),
            network_id: network.into(),
            ip: Some(IpAddr::from(address)),
            ipv6: None,
            mac: Some(crate::model::mac_text(mac(address))),
            gateway: Some(IpAddr::from([address[0], address[1], address[2], 1])),
            host_ifindex: Some(veth),
        }],
        posture: Posture::default(),
        labels: BTreeMap::new(),
        exposed_ports: Default::default(),
    }
}

impl Lab {
    /// `count` containers on `front` (`c2` up), and `iso`.
    pub fn new(count: u8) -> Lab {
        Self::with(count, |_| {})
    }

    /// As [`Lab::new`], each container changed by `edit` first.
    pub fn with(count: u8, edit: impl Fn(&mut Container)) -> Lab {
        Lab {
            directory: Directory::new(Some(&Self::inventory(count, edit)), HashSet::new()),
        }
    }

    /// As [`Lab::new`], this host a swarm node `n0` where the overlay
    /// gossip tells of `remote` ends on other nodes.
    pub fn with_remote(count: u8, remote: impl IntoIterator<Item = (IpAddr, RemoteEnd)>) -> Lab {
        let mut inventory = Self::inventory(count, |_| {});
        inventory.swarm.node = Some("n0".into());
        inventory.swarm.remote = remote.into_iter().collect();
        Lab {
            directory: Directory::new(Some(&inventory), HashSet::new()),
        }
    }

    pub fn inventory(count: u8, edit: impl Fn(&mut Container)) -> Inventory {
        let network = |name: &str, icc: bool, gateway: [u8; 4]| Network {
            id: name.into(),
            name: name.into(),
            driver: "bridge".into(),
            bridge: None,
            gateways: vec![IpAddr::from(gateway)],
            inter_container_communication: icc,
        };
        let mut containers: Vec<Container> = (2..count.saturating_add(2))
            .map(|n| container(&format!("c{n}"), "front", front(n), 1000 + u32::from(n)))
            .collect();
        containers.push(container("iso", "back", ISOLATED, 2002));
        Inventory {
            networks: [
                network("front", true, GATEWAY),
                network("back", false, [10, 0, 1, 1]),
            ]
            .into_iter()
            .map(|n| (n.id.clone(), n))
            .collect(),
            containers: containers
                .into_iter()
                .map(|mut c| {
                    edit(&mut c);
                    (c.id.clone(), c)
                })
                .collect(),
            ..Inventory::default()
        }
    }

    /// Whoever has `address`.
    pub fn end(&self, address: [u8; 4]) -> FlowEnd {
        self.directory.by_address(IpAddr::from(address))
    }

    /// The host-side veth of the container at `address`.
    pub fn veth(address: [u8; 4]) -> u32 {
        match address {
            ISOLATED => 2002,
            [10, 0, 0, n] => 1000 + u32::from(n),
            _ => 0,
        }
    }

    /// A flow the container at `src` sent, counted at its veth: one packet
    /// at `at_ns`.
    pub fn flow(&self, src: [u8; 4], dst: [u8; 4], dst_port: u16, protocol: u8) -> FlowRecord {
        FlowRecord {
            key: FlowKey::ipv4(src, 40_000, dst, dst_port, protocol),
            stats: FlowStats {
                packets: 1,
                bytes: 60,
                ifindex: Self::veth(src),
                direction: Direction::FromContainer as u8,
                ..FlowStats::default()
            },
        }
    }

    /// The attempt of `src` on `dst:dst_port`, decided at `poll_ns`.
    pub fn attempt(
        &self,
        src: [u8; 4],
        dst: [u8; 4],
        dst_port: u16,
        protocol: u8,
        outcome: Outcome,
        poll_ns: u64,
    ) -> Attempt {
        let record = self.flow(src, dst, dst_port, protocol);
        let (source, destination) = self.directory.ends(&record.key, &record.stats);
        Attempt {
            record,
            outcome,
            source,
            destination,
            destination_ip: IpAddr::V4(Ipv4Addr::from(dst)),
            poll_ns,
        }
    }
}

/// What a flow added, as the registry hands it to `traffic`.
pub fn traffic<'a>(
    record: &'a FlowRecord,
    ends: &'a (FlowEnd, FlowEnd),
    packets: u64,
    bytes: u64,
) -> Traffic<'a> {
    Traffic {
        record,
        source: &ends.0,
        destination: &ends.1,
        new_bytes: bytes,
        new_packets: packets,
        answers: false,
        syns: 0,
        completed: 0,
    }
}

/// Hands `attempt` to `detector`; the alerts it raised.
pub fn try_attempt(detector: &mut dyn Detector, lab: &Lab, attempt: &Attempt) -> Vec<Alert> {
    let mut found = Findings::default();
    detector.attempt(attempt, &lab.directory, &mut found);
    found.alerts
}

/// Closes a poll at `now_ns` with no flows to look up; the alerts raised.
pub fn end_poll(detector: &mut dyn Detector, lab: &Lab, now_ns: u64) -> Vec<Alert> {
    let find = |_: &FlowKey| None;
    let judged = |_: &FlowKey| false;
    let ended = |_: &FlowKey| false;
    let mut found = Findings::default();
    detector.end_of_poll(
        &PollEnd {
            find: &find,
            judged: &judged,
            ended: &ended,
            directory: &lab.directory,
            now_ns,
        },
        &mut found,
    );
    found.alerts
}

/// Hands `events` to `detector` as one batch read at `now_ns`.
pub fn batch(detector: &mut dyn Detector, lab: &Lab, events: &[Event], now_ns: u64) -> Vec<Alert> {
    let mut found = Findings::default();
    detector.events(
        &EventBatch {
            events,
            undecodable: 0,
            directory: &lab.directory,
            now_ns,
        },
        &mut found,
    );
    found.alerts
}

/// An ARP packet the container at `sender` sent (`FromContainer`) from
/// its own MAC, asking (`operation` 1) or answering (2) for `target`.
pub fn arp(sender: [u8; 4], operation: u16, target: [u8; 4], at_ns: u64) -> Event {
    Event::Arp {
        seen: Seen {
            direction: Direction::FromContainer,
            ifindex: Lab::veth(sender),
            timestamp_ns: at_ns,
        },
        eth_src: mac(sender),
        eth_dst: [0xff; 6],
        arp: ArpPacket {
            operation: Some(operation),
            sender_mac: Some(mac(sender)),
            sender_ip: Some(Ipv4Addr::from(sender)),
            target_mac: Some([0; 6]),
            target_ip: Some(Ipv4Addr::from(target)),
        },
    }
}

/// The names of an alert's ends.
pub fn ends(alert: &Alert) -> (String, Option<String>) {
    (
        Alert::end_name(&alert.source).into_owned(),
        alert
            .destination
            .as_ref()
            .map(|end| Alert::end_name(end).into_owned()),
    )
}

/// An empty directory of its own for one test.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("crossmon-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}
