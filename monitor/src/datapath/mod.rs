//! The kernel side, seen from user space: loading the programs, attaching
//! them to veths, and reading what they count and send.

mod attach;
mod attach_stats;
mod btf;
pub mod capture;
mod counted;
mod counters;
pub mod dns;
pub mod events;
mod flow_map;
mod load;
mod policy_maps;
pub mod preflight;
pub mod sandbox;
mod tick_clock;
pub mod tracepoints;

pub use attach::{AttachMode, ProgramRunStats, Programs, Side, VethAttachment};
pub use attach_stats::{AttachCounts, AttachStats, ATTACH_LATENCY_BUCKETS};
pub use capture::{CaptureFilters, CaptureMaps, CaptureRing, CapturedPacket};
pub use counters::{Counters, KernelCounters};
pub use events::{Event, EventRing};
pub use flow_map::{Expiry, FlowMap};
pub use load::{load, Datapath, DatapathConfig};
pub use policy_maps::{Compiled, PolicyMaps, SlotCounts, ENFORCE_LEASE};
pub use tracepoints::{DropMap, RetransmitMap};

/// Names of the classifiers in the object, as the kernel lists them.
pub const PROGRAM_FROM_CONTAINER: &str = "from_container";
pub const PROGRAM_TO_CONTAINER: &str = "to_container";
/// The `tcp:tcp_retransmit_skb` program.
pub const PROGRAM_TCP_RETRANSMIT: &str = "tcp_retransmit";
/// The `skb:kfree_skb` program.
pub const PROGRAM_SKB_DROP: &str = "skb_drop";
/// Never attached: run to measure the timer tick (`tick_clock`).
pub const PROGRAM_TICK_PROBE: &str = "tick_probe";
