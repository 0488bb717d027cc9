//! The label values of traffic series: names, not addresses, and ports only
//! where a service listens, so that series stay few and meaningful.

use monitor_common::{ip_proto, Direction, FlowKey};

use super::served::ServedPorts;
use crate::{
    book::OTHER,
    docker::{end_name, FlowEnd},
    model::{key_addrs, protocol_name, FlowRecord},
};

/// Label names and values, paired for the text writer.
pub fn pairs<'a>(names: [&'a str; 5], values: [&'a str; 5]) -> [(&'a str, &'a str); 5] {
    [0, 1, 2, 3, 4].map(|i| (names[i], values[i]))
}

/// A destination port nothing showed to be served.
pub const EPHEMERAL: &str = "ephemeral";
/// The destination port of protocols without ports (ICMP).
pub const NO_PORT: &str = "none";

/// `crossmon_flow_{packets,bytes}_total` labels, in declaration order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlowLabels {
    pub source: String,
    pub destination: String,
    pub source_network: String,
    pub destination_port: String,
    pub protocol: &'static str,
}

pub const FLOW_LABEL_NAMES: [&str; 5] = [
    "source",
    "destination",
    "source_network",
    "destination_port",
    "protocol",
];

/// `crossmon_connections_total` labels, in declaration order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionLabels {
    pub source: String,
    pub destination: String,
    pub destination_port: String,
    pub protocol: &'static str,
    pub result: &'static str,
}

pub const CONNECTION_LABEL_NAMES: [&str; 5] = [
    "source",
    "destination",
    "destination_port",
    "protocol",
    "result",
];

impl FlowLabels {
    pub fn of(
        record: &FlowRecord,
        (src, dst): &(FlowEnd, FlowEnd),
        served: &ServedPorts,
    ) -> FlowLabels {
        // The network where the flow was counted: the container end's.
        let counted_end = match record.stats.direction() {
            Direction::ToContainer => [dst, src],
            Direction::FromContainer => [src, dst],
        };
        FlowLabels {
            source: end_name(src),
            destination: end_name(dst),
            source_network: counted_end
                .iter()
                .find_map(|end| end.network.clone())
                .unwrap_or_else(|| "unknown".to_owned()),
            destination_port: destination_port(&record.key, dst, served),
            protocol: protocol_name(record.key.protocol),
        }
    }

    pub fn overflow() -> FlowLabels {
        FlowLabels {
            source: OTHER.into(),
            destination: OTHER.into(),
            source_network: OTHER.into(),
            destination_port: OTHER.into(),
            protocol: OTHER,
        }
    }

    pub fn values(&self) -> [&str; 5] {
        [
            &self.source,
            &self.destination,
            &self.source_network,
            &self.destination_port,
            self.protocol,
        ]
    }
}

impl ConnectionLabels {
    pub fn of(flow: &FlowLabels, result: &'static str) -> ConnectionLabels {
        ConnectionLabels {
            source: flow.source.clone(),
            destination: flow.destination.clone(),
            destination_port: flow.destination_port.clone(),
            protocol: flow.protocol,
            result,
        }
    }

    pub fn overflow() -> ConnectionLabels {
        ConnectionLabels {
            source: OTHER.into(),
            destination: OTHER.into(),
            destination_port: OTHER.into(),
            protocol: OTHER,
            result: OTHER,
        }
    }

    pub fn values(&self) -> [&str; 5] {
        [
            &self.source,
            &self.destination,
            &self.destination_port,
            self.protocol,
            self.result,
        ]
    }
}

fn destination_port(key: &FlowKey, dst: &FlowEnd, served: &ServedPorts) -> String {
    if !matches!(key.protocol, ip_proto::TCP | ip_proto::UDP) {
        return NO_PORT.to_owned();
    }
    let (_, dst_ip) = key_addrs(key);
    let exposed = dst.container.as_ref().is_some_and(|container| {
        container
            .exposed_ports
            .contains(&(key.dst_port, key.protocol))
    });
    if exposed || served.contains(dst_ip, key.dst_port, key.protocol) {
        key.dst_port.to_string()
    } else {
        EPHEMERAL.to_owned()
    }
}
