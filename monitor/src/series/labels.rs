//! The label values of traffic series: names, not addresses, and ports only
//! where a service listens, so that series stay few and meaningful.
//!
//! A flow's series is looked up by labels borrowed from the flow's ends
//! (`*LabelsRef`), which hash and compare as the owned labels do, so that
//! only a new series copies them; then found again by its slot while the
//! labels' inputs stay (see `TrafficSeries`).

use monitor_common::{ip_proto, Direction, FlowKey};

use super::served::ServedPorts;
use crate::{
    book::{owned_and_borrowed, OTHER},
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

/// The source network of a flow whose ends have none.
const UNKNOWN_NETWORK: &str = "unknown";

owned_and_borrowed! {
    /// `crossmon_flow_{packets,bytes}_total` labels, in declaration order.
    pub struct FlowLabels;
    /// [`FlowLabels`] borrowed from a flow, to find its series with.
    struct FlowLabelsRef {
        source, destination, source_network, destination_port;
        protocol: &'static str
    }
}

pub const FLOW_LABEL_NAMES: [&str; 5] = [
    "source",
    "destination",
    "source_network",
    "destination_port",
    "protocol",
];

owned_and_borrowed! {
    /// `crossmon_connections_total` labels, in declaration order.
    pub struct ConnectionLabels;
    /// [`ConnectionLabels`] borrowed from a flow, to find its series with.
    struct ConnectionLabelsRef {
        source, destination, destination_port;
        protocol: &'static str,
        result: &'static str
    }
}

pub const CONNECTION_LABEL_NAMES: [&str; 5] = [
    "source",
    "destination",
    "destination_port",
    "protocol",
    "result",
];

impl<'a> FlowLabelsRef<'a> {
    /// The labels of `record` between `ends`; a served port's number is
    /// written into `port_text`.
    pub fn of(
        record: &FlowRecord,
        ends: &'a (FlowEnd, FlowEnd),
        served: &ServedPorts,
        port_text: &'a mut itoa::Buffer,
    ) -> Self {
        let (src, dst) = ends;
        // The network where the flow was counted: the container end's.
        let counted_end = match record.stats.direction() {
            Direction::ToContainer => [dst, src],
            Direction::FromContainer => [src, dst],
        };
        FlowLabelsRef {
            source: end_name(src),
            destination: end_name(dst),
            source_network: counted_end
                .iter()
                .find_map(|end| end.network.as_deref())
                .unwrap_or(UNKNOWN_NETWORK),
            destination_port: destination_port(&record.key, dst, served, port_text),
            protocol: protocol_name(record.key.protocol),
        }
    }
}

impl FlowLabels {
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

impl<'a> ConnectionLabelsRef<'a> {
    pub fn of(flow: &FlowLabelsRef<'a>, result: &'static str) -> Self {
        ConnectionLabelsRef {
            source: flow.source,
            destination: flow.destination,
            destination_port: flow.destination_port,
            protocol: flow.protocol,
            result,
        }
    }
}

impl ConnectionLabels {
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

/// The port label: the number if the destination serves it, written into
/// `port_text` (on the caller's stack: no string per flow and poll).
fn destination_port<'a>(
    key: &FlowKey,
    dst: &FlowEnd,
    served: &ServedPorts,
    port_text: &'a mut itoa::Buffer,
) -> &'a str {
    if !matches!(key.protocol, ip_proto::TCP | ip_proto::UDP) {
        return NO_PORT;
    }
    let (_, dst_ip) = key_addrs(key);
    let exposed = dst.container.as_ref().is_some_and(|container| {
        container
            .exposed_ports
            .contains(&(key.dst_port, key.protocol))
    });
    if exposed || served.contains(dst_ip, key.dst_port, key.protocol) {
        port_text.format(key.dst_port)
    } else {
        EPHEMERAL
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        book::{SeriesBook, SeriesLabels as _},
        detect::testkit::{front, Lab},
    };

    /// Labels borrowed from a flow (c2 to c3 on a port c3 exposes) and
    /// the same made owned, as they were before the borrowed form, find one
    /// series, whichever comes first.
    #[test]
    fn a_series_is_one_whether_made_or_found_by_owned_or_borrowed_labels() {
        for port in [0, 7, 80, 8080, 65535] {
            let lab = Lab::with(3, |c| {
                c.exposed_ports.insert((port, ip_proto::TCP));
            });
            let record = lab.flow(front(2), front(3), port, ip_proto::TCP);
            let ends = lab.directory.ends(&record.key, &record.stats);
            let mut port_text = itoa::Buffer::new();
            let borrowed =
                FlowLabelsRef::of(&record, &ends, &ServedPorts::new(10, 0), &mut port_text);
            let owned = FlowLabels {
                source: "c2".into(),
                destination: "c3".into(),
                source_network: "front".into(),
                destination_port: port.to_string(),
                protocol: "tcp",
            };
            let made: FlowLabels = borrowed.to_labels();
            assert_eq!(made, owned);

            // Owned first, then borrowed; and the other way round.
            let mut flows = SeriesBook::new(10, FlowLabels::overflow());
            *flows.value(&owned, 1) += 1;
            *flows.value(&borrowed, 2) += 1;
            let mut connections = SeriesBook::new(10, ConnectionLabels::overflow());
            let connection = ConnectionLabelsRef::of(&borrowed, "refused");
            *connections.value(&connection, 1) += 1;
            let connection_owned: ConnectionLabels = connection.to_labels();
            *connections.value(&connection_owned, 2) += 1;
            // One series each, holding both counts.
            let flow_values: Vec<u64> = flows.iter().map(|(_, n)| *n).collect();
            assert_eq!(flow_values, [2], "port {port}");
            let connection_values: Vec<u64> = connections.iter().map(|(_, n)| *n).collect();
            assert_eq!(connection_values, [2], "port {port}");
        }
    }
}
