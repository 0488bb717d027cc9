//! crossmon: an eBPF monitor of the traffic between the containers of a
//! Docker host. The binary (`crossmon`) is a thin CLI over this library.

pub mod agent;
pub mod alert;
pub mod api;
pub(crate) mod book;
pub mod cli;
pub mod clock;
pub mod datapath;
pub mod detect;
pub mod docker;
pub mod doctor;
pub mod event_log;
pub mod flow_log;
pub mod flows;
pub mod links;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod rotating;
mod sync;
pub mod web_config;
