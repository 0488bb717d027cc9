//! Everything building and testing need, installed when missing.
//!
//! A survey comes first: a few `rustup` calls, one `dpkg-query`, one `ldd`,
//! no network, well under a second. Only what it finds missing is
//! installed, and only by root; anyone else gets the list.

use std::{fmt, path::PathBuf};

use anyhow::{bail, Context as _};

use crate::cmd;

/// Debian packages the build, the tests and the benchmarks use. `{llvm}` is
/// the LLVM major of the nightly rustc, never a fixed number: bpf-linker
/// must link the LLVM that produced the bitcode it links.
const PACKAGES: &[&str] = &[
    // bpf-linker's build, against /usr/lib/llvm-{llvm}.
    "llvm-{llvm}-dev",
    "libpolly-{llvm}-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // Test networks and traffic: namespaces, veths, bridges, the FORWARD
    // rule a bridge needs once dockerd has run.
    "iproute2",
    "iputils-ping",
    "iptables",
    "procps",
    "tcpdump",
    // Reads back the pcapng files of `crossmon capture` in its tests (its
    // debconf question about non-root capture takes the default under
    // DEBIAN_FRONTEND=noninteractive, below).
    "tshark",
    // Program inspection and throughput, in tests and benchmarks.
    "bpftool",
    "iperf3",
    // The libpcap flow exporter `cargo xtask bench` compares crossmon with
    // (tcpdump, above, is the other libpcap monitor). Its service is not
    // started in containers without systemd; the bench runs its own.
    "softflowd",
    // A real Docker engine, and a busybox image built from local files (no
    // registry is needed).
    "docker.io",
    "busybox-static",
    // The compose file's check, and the sidecar test's `up` (compose v1:
    // Debian has no v2 plugin).
    "docker-compose",
    // A real Prometheus server and promtool for the exporter's tests; curl
    // for HTTPS and basic-auth checks of the endpoint.
    "prometheus",
    "curl",
    // A real DNS server run in a test container's namespace for the DNS
    // tests (the binary only: no service is started).
    "dnsmasq-base",
    // The VM kernel tier: emulated VMs, their initramfs (cpio; objcopy
    // strips the test binaries; xz unpacks 6.12's modules) and Debian's
    // keys to check the kernel packages fetched.
    "qemu-system-x86",
    "cpio",
    "binutils",
    "xz-utils",
    "debian-archive-keyring",
    // A real browser for the live map's test (headless: --dump-dom,
    // --screenshot).
    "chromium",
    // Real attack tools for the evaluation corpus, run in the namespaces
    // of containers the tests create: nmap's scans and ARP discovery,
    // hping3's floods.
    "nmap",
    "hping3",
];

/// rust-src for `-Z build-std=core`; clippy for the eBPF crate's lint pass.
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "clippy"];

/// The toolchain cargo runs by default formats and lints the host crates;
/// a `--profile minimal` install lacks both.
const DEFAULT_COMPONENTS: &[&str] = &["rustfmt", "clippy"];

pub fn run() -> anyhow::Result<()> {
    let mut installer = Installer::default();
    // Two rounds at most: the LLVM major, hence the LLVM packages and the
    // bpf-linker to build, is known only once nightly is installed.
    for _ in 0..2 {
        let survey = Survey::take()?;
        if survey.missing.is_empty() {
            if !installer.acted {
                println!("setup: all present ({})", survey.present());
            }
            return Ok(());
        }
        if !is_root() {
            bail!(
                "setup: missing, and only root installs them:\n{}\nrun `cargo xtask setup` as root",
                survey.list()
            );
        }
        for missing in &survey.missing {
            installer.install(missing)?;
        }
    }
    let survey = Survey::take()?;
    if !survey.missing.is_empty() {
        bail!("setup: still missing after installing:\n{}", survey.list());
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

enum Missing {
    Nightly,
    NightlyComponents(Vec<&'static str>),
    DefaultComponents(Vec<&'static str>),
    Packages {
        names: Vec<String>,
        llvm: Option<u32>,
    },
    BpfLinker {
        llvm: u32,
        /// The bpf-linker on PATH, with the LLVM major it links if `ldd`
        /// tells (a statically linked one does not).
        found: Option<(PathBuf, Option<u32>)>,
    },
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nightly => write!(
                f,
                "the nightly toolchain with {}",
                NIGHTLY_COMPONENTS.join(", ")
            ),
            Self::NightlyComponents(names) => write!(f, "nightly components {}", names.join(", ")),
            Self::DefaultComponents(names) => {
                write!(f, "default toolchain components {}", names.join(", "))
            }
            Self::Packages { names, .. } => write!(f, "Debian packages {}", names.join(" ")),
            Self::BpfLinker { llvm, found: None } => write!(f, "bpf-linker for LLVM {llvm}"),
            Self::BpfLinker {
                llvm,
                found: Some((path, Some(linked))),
            } => write!(
                f,
                "bpf-linker for LLVM {llvm} ({} links LLVM {linked})",
                path.display()
            ),
            Self::BpfLinker {
                llvm,
                found: Some((path, None)),
            } => write!(
                f,
                "bpf-linker for LLVM {llvm} (ldd shows no usable libLLVM in {})",
                path.display()
            ),
        }
    }
}

struct Survey {
    missing: Vec<Missing>,
    llvm: Option<u32>,
}

impl Survey {
    fn take() -> anyhow::Result<Self> {
        let mut missing = Vec::new();
        let nightly = nightly_installed()?;
        if nightly {
            let absent = absent_components(Some("nightly"), NIGHTLY_COMPONENTS)?;
            if !absent.is_empty() {
                missing.push(Missing::NightlyComponents(absent));
            }
        } else {
            missing.push(Missing::Nightly);
        }
        let absent = absent_components(None, DEFAULT_COMPONENTS)?;
        if !absent.is_empty() {
            missing.push(Missing::DefaultComponents(absent));
        }
        let llvm = if nightly {
            Some(nightly_llvm_major()?)
        } else {
            None
        };
        let names = absent_packages(&wanted_packages(llvm))?;
        if !names.is_empty() {
            missing.push(Missing::Packages { names, llvm });
        }
        if let Some(llvm) = llvm {
            let found = cmd::find_program("bpf-linker");
            let linked = found.as_ref().map(|path| linked_llvm_major(path));
            if linked.flatten() != Some(llvm) {
                missing.push(Missing::BpfLinker {
                    llvm,
                    found: found.zip(linked),
                });
            }
        }
        Ok(Self { missing, llvm })
    }

    fn list(&self) -> String {
        let mut lines: Vec<String> = self.missing.iter().map(|m| format!("  - {m}")).collect();
        if self.llvm.is_none() {
            lines.push(
                "  - then the LLVM packages and bpf-linker matching the nightly's LLVM".to_owned(),
            );
        }
        lines.join("\n")
    }

    fn present(&self) -> String {
        let llvm = self
            .llvm
            .map_or_else(String::new, |v| format!(", LLVM {v}"));
        format!("nightly with rust-src{llvm}, bpf-linker, packages")
    }
}

/// `PACKAGES` with the LLVM major filled in; without it (nightly not yet
/// installed) the LLVM ones are left for the next round.
fn wanted_packages(llvm: Option<u32>) -> Vec<String> {
    PACKAGES
        .iter()
        .filter_map(|name| match llvm {
            Some(llvm) => Some(name.replace("{llvm}", &llvm.to_string())),
            None if name.contains("{llvm}") => None,
            None => Some((*name).to_owned()),
        })
        .collect()
}

fn nightly_installed() -> anyhow::Result<bool> {
    let toolchains = cmd::output(
        "listing rustup toolchains",
        cmd::command("rustup").args(["toolchain", "list"]),
    )?;
    // `nightly-x86_64-unknown-linux-gnu`, not a dated `nightly-2026-05-19-…`,
    // which `rustup run nightly` would not pick.
    Ok(toolchains.lines().any(|line| {
        let name = line.split_whitespace().next().unwrap_or_default();
        name == "nightly"
            || name
                .strip_prefix("nightly-")
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    }))
}

/// Which of `wanted` `toolchain` (default: the one cargo runs) lacks.
fn absent_components(
    toolchain: Option<&str>,
    wanted: &[&'static str],
) -> anyhow::Result<Vec<&'static str>> {
    let mut rustup = cmd::command("rustup");
    rustup.args(["component", "list", "--installed"]);
    if let Some(toolchain) = toolchain {
        rustup.args(["--toolchain", toolchain]);
    }
    let installed = cmd::output("listing rustup components", &mut rustup)?;
    // Lines are `rust-src` or `clippy-x86_64-unknown-linux-gnu`.
    let is_installed = |component: &str| {
        installed.lines().any(|line| {
            line == component
                || line
                    .strip_prefix(component)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|target| target.contains("-linux-"))
        })
    };
    Ok(wanted
        .iter()
        .copied()
        .filter(|component| !is_installed(component))
        .collect())
}

/// The LLVM major of the nightly rustc, from `LLVM version: 22.1.4`.
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let version = cmd::output(
        "asking the nightly rustc for its LLVM version",
        cmd::command("rustup").args(["run", "nightly", "rustc", "-vV"]),
    )?;
    version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next()?.trim().parse().ok())
        .context("`rustup run nightly rustc -vV` printed no `LLVM version:` line")
}

fn absent_packages(wanted: &[String]) -> anyhow::Result<Vec<String>> {
    // One call for all; dpkg-query exits 1 when any is unknown, which only
    // means "not installed", so the status is not checked.
    let output = cmd::command("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\n"])
        .args(wanted)
        .output()
        .context("running dpkg-query: set-up supports Debian and Ubuntu only")?;
    let listing = String::from_utf8_lossy(&output.stdout);
    Ok(wanted
        .iter()
        .filter(|name| {
            !listing.lines().any(|line| {
                line.strip_prefix(name.as_str())
                    .is_some_and(|status| status == " install ok installed")
            })
        })
        .cloned()
        .collect())
}

/// bpf-linker built with `LLVM_PREFIX` links libLLVM dynamically and `ldd`
/// names its major (`libLLVM.so.22.1`, or `libLLVM-15.so` on older
/// packaging). `bpf-linker --version` prints only its own version.
fn linked_llvm_major(bpf_linker: &std::path::Path) -> Option<u32> {
    let libraries = cmd::output("ldd bpf-linker", cmd::command("ldd").arg(bpf_linker)).ok()?;
    let line = libraries
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("libLLVM"))?;
    // `libLLVM.so.22.1 => not found`: that LLVM was removed since.
    if line.contains("not found") {
        return None;
    }
    let rest = line.strip_prefix("libLLVM")?;
    let version = rest
        .strip_prefix(".so.")
        .or_else(|| rest.strip_prefix('-'))?;
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[derive(Default)]
struct Installer {
    /// `apt-get update` runs once, however many rounds install packages.
    apt_updated: bool,
    acted: bool,
}

impl Installer {
    fn install(&mut self, missing: &Missing) -> anyhow::Result<()> {
        println!("setup: installing {missing}");
        self.acted = true;
        match missing {
            Missing::Nightly => cmd::status(
                "installing the nightly toolchain",
                cmd::command("rustup")
                    .args(["toolchain", "install", "nightly", "--profile", "minimal"])
                    .args(["--component", &NIGHTLY_COMPONENTS.join(",")]),
            ),
            Missing::NightlyComponents(names) => cmd::status(
                "adding nightly components",
                cmd::command("rustup")
                    .args(["component", "add", "--toolchain", "nightly"])
                    .args(names),
            ),
            Missing::DefaultComponents(names) => cmd::status(
                "adding default toolchain components",
                cmd::command("rustup")
                    .args(["component", "add"])
                    .args(names),
            ),
            Missing::Packages { names, llvm } => self.packages(names, *llvm),
            Missing::BpfLinker { llvm, .. } => bpf_linker(*llvm),
        }
    }

    fn packages(&mut self, names: &[String], llvm: Option<u32>) -> anyhow::Result<()> {
        if !self.apt_updated {
            cmd::status("apt-get update", cmd::command("apt-get").arg("update"))?;
            self.apt_updated = true;
        }
        let unavailable: Vec<&String> = names.iter().filter(|name| !apt_has(name)).collect();
        let llvm_unavailable = llvm.filter(|llvm| {
            unavailable
                .iter()
                .any(|name| name.contains(&format!("-{llvm}-")))
        });
        if let Some(llvm) = llvm_unavailable {
            bail!(
                "apt offers no llvm-{llvm}-dev / libpolly-{llvm}-dev. The nightly rustc is built \
                 on LLVM {llvm} and bpf-linker must be built against that same major to link \
                 its bitcode. Add LLVM's apt repository for LLVM {llvm} (https://apt.llvm.org), \
                 then run `cargo xtask setup` again"
            );
        }
        if !unavailable.is_empty() {
            bail!("apt offers no package named {unavailable:?}");
        }
        cmd::status(
            "apt-get install",
            cmd::command("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "--no-install-recommends"])
                .args(names),
        )
    }
}

/// Whether apt has an installation candidate for `name` (after an update).
fn apt_has(name: &str) -> bool {
    cmd::output(
        "apt-cache policy",
        cmd::command("apt-cache").args(["policy", name]),
    )
    .is_ok_and(|policy| {
        policy.lines().any(|line| {
            line.trim()
                .strip_prefix("Candidate:")
                .is_some_and(|candidate| candidate.trim() != "(none)")
        })
    })
}

fn bpf_linker(llvm: u32) -> anyhow::Result<()> {
    // Without LLVM_PREFIX, llvm-sys finds no libLLVM ("unable to find
    // library -lLLVM"). `--force` replaces a bpf-linker built for another
    // LLVM; `--locked` keeps the dependencies bpf-linker was released with.
    cmd::status(
        "cargo install bpf-linker",
        cmd::cargo()
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}"))
            .args(["install", "--locked", "--force", "bpf-linker"])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{llvm}")),
    )
    .with_context(|| {
        format!(
            "building bpf-linker against LLVM {llvm} (the nightly rustc's) failed; it needs \
             llvm-{llvm}-dev and a bpf-linker release with an `llvm-{llvm}` feature"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_wait_for_the_llvm_major() {
        let without = wanted_packages(None);
        assert!(without.iter().all(|name| !name.contains("llvm")));
        assert!(without.contains(&"iperf3".to_owned()));
        let with = wanted_packages(Some(22));
        assert!(with.contains(&"llvm-22-dev".to_owned()));
        assert!(with.contains(&"libpolly-22-dev".to_owned()));
        assert_eq!(with.len(), PACKAGES.len());
    }
}
