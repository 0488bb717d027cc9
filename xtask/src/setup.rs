//! Everything building and testing need, installed when missing.
//!
//! Fast when all is present: a handful of `dpkg-query`, `rustup` and `ldd`
//! calls, no network.

use std::process::Command;

use anyhow::{bail, Context as _};

use crate::cmd;

/// Debian packages the build and the tests use; `{llvm}` is the LLVM major
/// of the nightly rustc (bpf-linker must link the same LLVM).
const PACKAGES: &[&str] = &[
    "llvm-{llvm}-dev",
    "libpolly-{llvm}-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "iputils-ping",
    "iptables",
    "procps",
    "bpftool",
    "iperf3",
    "tcpdump",
];

pub fn run() -> anyhow::Result<()> {
    let root = is_root();
    let mut installed = false;
    installed |= nightly_with_rust_src()?;
    let llvm = nightly_llvm_major()?;
    installed |= packages(llvm, root)?;
    installed |= bpf_linker(llvm, root)?;
    if !installed {
        println!("setup: all present (nightly + rust-src, LLVM {llvm}, bpf-linker, packages)");
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn rustup() -> Command {
    let mut command = Command::new("rustup");
    command.env("PATH", cmd::path_with_cargo_bin());
    command
}

fn nightly_with_rust_src() -> anyhow::Result<bool> {
    let toolchains = cmd::output("listing toolchains", rustup().args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|line| line.starts_with("nightly")) {
        println!("setup: installing the nightly toolchain with rust-src");
        cmd::status(
            "installing nightly",
            rustup().args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]),
        )?;
        return Ok(true);
    }
    let components = cmd::output(
        "listing nightly components",
        rustup().args(["component", "list", "--toolchain", "nightly", "--installed"]),
    )?;
    if components.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(false);
    }
    println!("setup: adding rust-src to nightly (needed for -Z build-std=core)");
    cmd::status(
        "adding rust-src",
        rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]),
    )?;
    Ok(true)
}

fn nightly_llvm_major() -> anyhow::Result<u32> {
    let version = cmd::output(
        "asking nightly rustc for its LLVM",
        rustup().args(["run", "nightly", "rustc", "-vV"]),
    )?;
    version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next()?.trim().parse().ok())
        .context("nightly rustc -vV printed no LLVM version")
}

fn packages(llvm: u32, root: bool) -> anyhow::Result<bool> {
    let wanted: Vec<String> = PACKAGES
        .iter()
        .map(|p| p.replace("{llvm}", &llvm.to_string()))
        .collect();
    let missing: Vec<&String> = wanted.iter().filter(|p| !package_installed(p)).collect();
    if missing.is_empty() {
        return Ok(false);
    }
    if !root {
        bail!("missing Debian packages {missing:?}: run this command as root to install them");
    }
    println!("setup: installing {missing:?}");
    cmd::status("apt-get update", Command::new("apt-get").arg("update"))?;
    let installed = cmd::status(
        "apt-get install",
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    );
    installed.with_context(|| {
        format!(
            "the nightly rustc uses LLVM {llvm}; bpf-linker must be built against the same major, so llvm-{llvm}-dev must be installable"
        )
    })?;
    Ok(true)
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

/// bpf-linker links libLLVM dynamically when built with `LLVM_PREFIX`; the
/// soname tells which major it was built for.
fn bpf_linker(llvm: u32, root: bool) -> anyhow::Result<bool> {
    let path = cmd::output(
        "looking for bpf-linker",
        Command::new("sh")
            .args(["-c", "command -v bpf-linker || true"])
            .env("PATH", cmd::path_with_cargo_bin()),
    )?;
    let path = path.trim();
    if !path.is_empty() {
        let libs = cmd::output("ldd bpf-linker", Command::new("ldd").arg(path)).unwrap_or_default();
        if libs.contains(&format!("libLLVM.so.{llvm}")) || libs.contains(&format!("libLLVM-{llvm}"))
        {
            return Ok(false);
        }
        println!("setup: {path} is not built against LLVM {llvm}; rebuilding it");
    }
    if !root {
        bail!("bpf-linker for LLVM {llvm} is missing: run this command as root to build it");
    }
    println!("setup: building bpf-linker against LLVM {llvm} (about a minute)");
    cmd::status(
        "cargo install bpf-linker",
        cmd::cargo()
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}"))
            .args([
                "install",
                "--force",
                "bpf-linker",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{llvm}")),
    )?;
    Ok(true)
}
