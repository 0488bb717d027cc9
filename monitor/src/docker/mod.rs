//! Container identity from the Docker engine. crossmon only reads: list,
//! inspect, version and the event stream; it never changes anything.

mod cgroup;
mod client;
pub mod directory;
mod follow;
pub mod inventory;
mod netns;
mod posture;
mod snapshot;
pub mod swarm;

pub use client::connect;
pub use directory::{
    end_name, host_addresses, service_name, write_service_name, Directory, DirectoryId,
    EndIdentity, EndKind, FlowEnd, IdentityRef, Renamed, AGGREGATE,
};
pub use follow::follow;
pub use inventory::{
    Container, Endpoint, EngineInfo, Inventory, Network, VethOwner, UNWATCHED_REASONS,
};
pub use netns::{owner_of_namespace, NamespaceIds};
pub use posture::Posture;
pub use snapshot::Snapshot;

/// `digits` lowercase hex digits: what the engine's ids are (64), and the
/// short forms it puts in names (12 in a bridge's `br-<id>`).
pub fn is_engine_id(text: &str, digits: usize) -> bool {
    text.len() == digits
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
