//! Can this machine run crossmon? Checked before loading, so the operator
//! reads one line naming what is missing instead of a verifier dump.

use std::{fs, io::ErrorKind};

use aya::{programs::ProgramError, util::KernelVersion, EbpfError};

/// Oldest kernel with everything the datapath uses: ring buffers (5.8),
/// map batch lookups (5.6), lookup-and-delete on hash maps (5.14).
pub const MIN_KERNEL: (u8, u8, u16) = (5, 14, 0);

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What the machine offers, as far as crossmon cares.
#[derive(Debug)]
pub struct Report {
    pub kernel: Option<KernelVersion>,
    pub btf: bool,
    pub tcx: bool,
    pub effective_caps: Option<u64>,
}

impl Report {
    pub fn gather() -> Self {
        Self {
            kernel: KernelVersion::current().ok(),
            btf: fs::metadata("/sys/kernel/btf/vmlinux").is_ok(),
            tcx: has_tcx(),
            effective_caps: effective_caps(),
        }
    }

    /// The first reason crossmon cannot run here, if any.
    pub fn blocker(&self) -> Option<String> {
        let (major, minor, patch) = MIN_KERNEL;
        match self.kernel {
            Some(kernel) if kernel < KernelVersion::new(major, minor, patch) => {
                return Some(format!(
                    "kernel {kernel} is too old: crossmon needs Linux {major}.{minor} or newer (BPF ring buffer, map batch operations)"
                ));
            }
            None => return Some("cannot read the kernel version (uname)".into()),
            Some(_) => {}
        }
        if let Some(caps) = self.effective_caps {
            let has = |cap: u32| caps & (1 << cap) != 0;
            let bpf_ok = has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
            if !bpf_ok {
                return Some(
                    "missing capability: loading the programs needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); run as root or grant them".into(),
                );
            }
            if !has(CAP_NET_ADMIN) {
                return Some(
                    "missing capability: attaching to interfaces needs CAP_NET_ADMIN; run as root or grant it".into(),
                );
            }
        }
        None
    }
}

/// Fails with one line when crossmon cannot run on this machine.
pub fn check() -> anyhow::Result<Report> {
    let report = Report::gather();
    if let Some(reason) = report.blocker() {
        anyhow::bail!("{reason}");
    }
    if !report.btf {
        tracing::info!("kernel BTF (/sys/kernel/btf/vmlinux) not found: not needed by crossmon's programs, continuing");
    }
    Ok(report)
}

/// TCX (BPF links on the TC hooks) arrived in Linux 6.6; aya picks it
/// there and falls back to netlink `clsact` filters before.
pub fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|kernel| kernel >= KernelVersion::new(6, 6, 0))
}

fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Turns a load failure into a sentence; the verifier log stays available
/// at debug level for whoever has to dig.
pub fn explain_load_error(err: EbpfError) -> anyhow::Error {
    let text = err.to_string();
    let permission = matches!(&err, EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. }) if io_error.kind() == ErrorKind::PermissionDenied);
    if permission {
        return anyhow::anyhow!(
            "creating BPF maps was refused (EPERM): crossmon needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), and the memlock limit must allow the maps"
        );
    }
    anyhow::Error::new(err).context(format!("loading the eBPF object failed: {text}"))
}

pub fn explain_program_error(name: &str, err: ProgramError) -> anyhow::Error {
    if let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = &err
    {
        tracing::debug!("verifier log for {name}:\n{verifier_log}");
        if io_error.kind() == ErrorKind::PermissionDenied {
            return anyhow::anyhow!(
                "the kernel refused to load program {name} (EPERM): crossmon needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (or CAP_SYS_ADMIN)"
            );
        }
        return anyhow::anyhow!(
            "the kernel's verifier rejected program {name} ({io_error}); run with RUST_LOG=debug for the verifier log"
        );
    }
    anyhow::Error::new(err).context(format!("loading program {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(kernel: (u8, u8, u16), caps: &[u32]) -> Report {
        Report {
            kernel: Some(KernelVersion::new(kernel.0, kernel.1, kernel.2)),
            btf: true,
            tcx: false,
            effective_caps: Some(caps.iter().fold(0, |all, cap| all | 1 << cap)),
        }
    }

    #[test]
    fn a_capable_recent_machine_has_no_blocker() {
        assert_eq!(
            report((6, 1, 0), &[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN]).blocker(),
            None
        );
        assert_eq!(
            report((5, 15, 0), &[CAP_SYS_ADMIN, CAP_NET_ADMIN]).blocker(),
            None
        );
    }

    #[test]
    fn each_blocker_names_what_is_missing() {
        let old = report((5, 10, 0), &[CAP_SYS_ADMIN, CAP_NET_ADMIN]).blocker();
        assert!(old.is_some_and(|m| m.contains("too old") && m.contains("5.14")));
        let no_bpf = report((6, 6, 0), &[CAP_NET_ADMIN]).blocker();
        assert!(no_bpf.is_some_and(|m| m.contains("CAP_BPF")));
        let no_net_admin = report((6, 6, 0), &[CAP_BPF, CAP_PERFMON]).blocker();
        assert!(no_net_admin.is_some_and(|m| m.contains("CAP_NET_ADMIN")));
    }
}
