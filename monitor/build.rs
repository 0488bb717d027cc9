//! Builds the eBPF programs (nightly, bpfel target) and leaves the object in
//! OUT_DIR, where `datapath::object` embeds it.
use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../monitor-ebpf");
    let package = Package {
        name: "monitor-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
        .context("building the eBPF programs failed; `cargo xtask setup` installs what they need")
}
