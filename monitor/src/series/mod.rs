//! The traffic series: after each poll, what every flow counted since the
//! previous one is added to series labelled by names, not addresses, and
//! bounded (`--max-series`), so that `/metrics` only writes them out.

mod departures;
mod drops;
mod labels;
mod reused;
mod served;
mod tcp;
mod traffic;

pub use drops::{DropCounts, DropLabels, KernelDrop, DOCKER_ISOLATION, UNKNOWN_REASON};
pub use labels::{
    pairs, ConnectionLabels, FlowLabels, CONNECTION_LABEL_NAMES, EPHEMERAL, FLOW_LABEL_NAMES,
    NO_PORT,
};
pub use tcp::{handshake_rtt_ns, Pair, Retransmits, RttHistogram, TcpHealth, RTT_BUCKETS};
pub use traffic::{FlowCounts, MetricsConfig, TrafficSeries};
