//! Test networks built in the running kernel, and what the integration
//! tests need around them. Everything here needs root.
#![expect(
    clippy::expect_used,
    reason = "test support: a setup step that fails panics the test that called it, saying what failed"
)]

pub mod agent;
pub mod caps;
pub mod corpus;
pub mod docker;
pub mod docker_proxy;
pub mod engine;
pub mod exposition;
pub mod frames;
pub mod mib;
pub mod net;
pub mod prometheus;
pub mod prometheus_image;
pub mod scratch;
pub mod sidecar_image;
pub mod swarm;
pub mod synthetic;
pub mod tc_hooks;
pub mod timing;
pub mod traffic;
pub mod tshark;

use std::path::PathBuf;

pub use net::{Host, TestNet};

/// Fails the test at once, with one line saying why, unless it runs as
/// root: a test that cannot run must not count as passed. `cargo xtask
/// test` runs every tier as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "needs root (CAP_BPF, CAP_NET_ADMIN): run `cargo xtask test`, or this test as root"
    );
}

/// The `crossmon` binary under test: `$CROSSMON_BIN` (set by `cargo xtask
/// test`, which builds it first) or the workspace's debug build.
pub fn crossmon_bin() -> PathBuf {
    std::env::var_os("CROSSMON_BIN").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/debug/crossmon"
            ))
        },
        PathBuf::from,
    )
}
