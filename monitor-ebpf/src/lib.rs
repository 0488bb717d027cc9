// The programs live in the `crossmon` binary target (src/main.rs). This empty
// library lets the agent name this crate as a build dependency, so cargo
// rebuilds the agent when the programs change.
#![no_std]
