//! One flow as the API shows it.

use monitor_common::{ip_proto, tcp_flag, FlowKey, FlowStats};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub key: FlowKey,
    /// Cumulative since the flow was first seen.
    pub stats: FlowStats,
}

pub fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        ip_proto::TCP => "tcp",
        ip_proto::UDP => "udp",
        ip_proto::ICMP => "icmp",
        ip_proto::ICMPV6 => "icmpv6",
        _ => "other",
    }
}

/// Names of the set TCP flags, most significant concern first.
pub fn tcp_flag_names(flags: u8) -> Vec<&'static str> {
    [
        (tcp_flag::SYN, "SYN"),
        (tcp_flag::ACK, "ACK"),
        (tcp_flag::FIN, "FIN"),
        (tcp_flag::RST, "RST"),
        (tcp_flag::PSH, "PSH"),
        (tcp_flag::URG, "URG"),
        (tcp_flag::ECE, "ECE"),
        (tcp_flag::CWR, "CWR"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| name)
    .collect()
}
