//! crossmon: an eBPF monitor of the traffic between the containers of a
//! Docker host. The binary (`crossmon`) is a thin CLI over this library.
//!
//! Modules in layers, from the bottom; each uses only layers below its
//! own (ARCHITECTURE.md says what each is for; `layering.rs` checks it).

// Model and support.
pub(crate) mod book;
pub mod clock;
pub mod model;
pub mod rotating;
pub(crate) mod sync;
// The kernel, the host's links, the HTTP transport.
pub mod datapath;
pub(crate) mod links;
pub mod web_config;
// Who the containers are.
pub mod docker;
// Flows, alerts, events: what the stages pass along.
pub mod alert;
pub mod capture;
pub mod event_log;
pub mod flows;
// The consumers of polls and events.
pub mod detect;
pub mod dns;
pub mod policy;
pub mod series;
// What is written out.
pub mod api;
pub mod flow_log;
pub mod metrics;
// Wiring and commands.
pub mod agent;
pub mod cli;
pub mod doctor;

#[cfg(test)]
mod layering;
