//! Can this machine run crossmon? Checked before loading, so the operator
//! reads one line naming what is missing instead of a verifier dump.

use std::{fs, io::ErrorKind};

use aya::{programs::ProgramError, util::KernelVersion, EbpfError};

/// Oldest kernel with everything the datapath uses: ring buffers (5.8),
/// map batch lookups (5.6), lookup-and-delete on hash maps (5.14).
pub const MIN_KERNEL: (u8, u8, u16) = (5, 10, 0);

/// A capability crossmon needs, and what for.
#[derive(Debug, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    /// Its number (`capability.h`): the bit in `/proc/PID/status` masks.
    pub bit: u32,
    /// Completes "needed to ...".
    pub needed_to: &'static str,
    /// CAP_SYS_ADMIN grants it too (the kernel's `bpf_capable` and
    /// `perfmon_capable`): the way on engines that refuse `--cap-add BPF`
    /// (Docker before 23.0).
    pub sys_admin_grants: bool,
}

/// Exactly what crossmon needs; each was taken away in turn and the agent
/// failed without it (tests/tests/privileges.rs). Container namespaces are
/// read over rtnetlink by namespace id, so neither CAP_SYS_ADMIN (setns)
/// nor CAP_SYS_PTRACE (`/proc/PID/ns`) is needed, except to watch overlay,
/// macvlan and ipvlan networks: attaching in their sandboxes or in the
/// containers' namespaces enters them (CAP_SYS_ADMIN).
pub const CAPABILITIES: [Capability; 3] = [
    Capability {
        name: "CAP_BPF",
        bit: 39,
        needed_to: "create the BPF maps and load the programs",
        sys_admin_grants: true,
    },
    Capability {
        name: "CAP_PERFMON",
        bit: 38,
        needed_to: "have the programs accepted by the verifier, which otherwise applies its rules for unprivileged programs",
        sys_admin_grants: true,
    },
    Capability {
        name: "CAP_NET_ADMIN",
        bit: 12,
        needed_to: "load TC programs, attach them to the veths and list the interfaces of containers' network namespaces",
        sys_admin_grants: false,
    },
];

/// Stands in for the capabilities whose `sys_admin_grants` is set.
pub const CAP_SYS_ADMIN: u32 = 21;

impl Capability {
    /// The line for an agent that lacks it.
    pub fn missing(&self) -> String {
        let instead = if self.sys_admin_grants {
            " (or CAP_SYS_ADMIN, which grants it too)"
        } else {
            ""
        };
        format!(
            "missing capability {}: needed to {}{instead}",
            self.name, self.needed_to
        )
    }
}

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
        self.kernel_blocker()
            .or_else(|| self.missing_capability().map(Capability::missing))
    }

    /// Why this kernel cannot run crossmon, if it cannot.
    pub fn kernel_blocker(&self) -> Option<String> {
        let (major, minor, patch) = MIN_KERNEL;
        match self.kernel {
            Some(kernel) if kernel < KernelVersion::new(major, minor, patch) => Some(format!(
                "kernel {kernel} is too old: crossmon needs Linux {major}.{minor} or newer (BPF ring buffer, map batch operations)"
            )),
            None => Some("cannot read the kernel version (uname)".into()),
            Some(_) => None,
        }
    }

    /// The first capability of [`CAPABILITIES`] the process lacks; `None`
    /// also when the set cannot be read (then the kernel will tell).
    pub fn missing_capability(&self) -> Option<&'static Capability> {
        let caps = self.effective_caps?;
        let has = |bit: u32| caps & (1 << bit) != 0;
        let granted =
            |cap: &Capability| has(cap.bit) || (cap.sys_admin_grants && has(CAP_SYS_ADMIN));
        CAPABILITIES.iter().find(|cap| !granted(cap))
    }

    /// The capabilities that satisfy [`CAPABILITIES`] here, by name: CAP_BPF
    /// and CAP_PERFMON, or CAP_SYS_ADMIN standing for what it grants.
    pub fn capabilities_used(&self) -> String {
        let Some(caps) = self.effective_caps else {
            return "unknown (/proc/self/status unreadable)".into();
        };
        let has = |bit: u32| caps & (1 << bit) != 0;
        let (held, missing): (Vec<&Capability>, Vec<&Capability>) =
            CAPABILITIES.iter().partition(|cap| has(cap.bit));
        let stood_in: Vec<&str> = missing
            .iter()
            .filter(|cap| cap.sys_admin_grants && has(CAP_SYS_ADMIN))
            .map(|cap| cap.name)
            .collect();
        let mut names: Vec<String> = held.iter().map(|cap| cap.name.to_owned()).collect();
        if !stood_in.is_empty() {
            names.insert(0, format!("CAP_SYS_ADMIN (for {})", stood_in.join(" and ")));
        }
        names.join(", ")
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

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK, often 64 KiB or
/// 8 MiB: far below the flow map. Lifted as far as the process may (to
/// unlimited with CAP_SYS_RESOURCE, else to the hard limit); later kernels
/// charge the memory cgroup and ignore it.
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit and getrlimit read or fill a valid rlimit.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) == 0 {
            return;
        }
        let mut limit = unlimited;
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) != 0 {
                tracing::debug!("RLIMIT_MEMLOCK left as it is");
            }
        }
    }
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
            "creating BPF maps was refused (EPERM): crossmon needs CAP_BPF (or CAP_SYS_ADMIN), and the memlock limit must allow the maps"
        );
    }
    anyhow::Error::new(err).context(format!("loading the eBPF object failed: {text}"))
}

pub fn explain_program_error(name: &str, err: ProgramError) -> anyhow::Error {
    let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = &err
    else {
        return anyhow::Error::new(err).context(format!("loading program {name}"));
    };
    let log = verifier_log.to_string();
    tracing::debug!("verifier log for {name}:\n{log}");
    // EPERM with no verifier output: the kernel refused before verifying,
    // for want of a capability. Anything the verifier said is a rejection,
    // whatever the errno (EACCES, EINVAL, E2BIG ...).
    if io_error.raw_os_error() == Some(libc::EPERM) && log.trim().is_empty() {
        let missing = Report::gather()
            .missing_capability()
            .map_or_else(|| "capabilities look complete, so a security module (LSM) or a sysctl like kernel.unprivileged_bpf_disabled may have refused it".to_owned(), Capability::missing);
        return anyhow::anyhow!("the kernel refused to load program {name} (EPERM): {missing}");
    }
    let kernel = KernelVersion::current().map_or_else(|_| "unknown".to_owned(), |k| k.to_string());
    anyhow::anyhow!(
        "the verifier of kernel {kernel} rejected program {name} ({io_error}); its last lines:\n{}\n(the whole log with RUST_LOG=debug)",
        last_lines(&log, VERIFIER_TAIL)
    )
}

/// Lines of the verifier log shown with a rejection: the refused
/// instruction, the reason and the summary.
const VERIFIER_TAIL: usize = 8;

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|line| format!("  {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP_NET_ADMIN: u32 = 12;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;

    fn report(kernel: (u8, u8, u16), caps: &[u32]) -> Report {
        Report {
            kernel: Some(KernelVersion::new(kernel.0, kernel.1, kernel.2)),
            btf: true,
            tcx: false,
            effective_caps: Some(caps.iter().fold(0, |all, cap| all | 1 << cap)),
        }
    }

    #[test]
    fn the_documented_sets_have_no_blocker() {
        let new = report((6, 1, 0), &[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN]);
        assert_eq!(new.blocker(), None);
        assert_eq!(
            new.capabilities_used(),
            "CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN"
        );
        let old = report((5, 15, 0), &[CAP_SYS_ADMIN, CAP_NET_ADMIN]);
        assert_eq!(old.blocker(), None);
        assert_eq!(
            old.capabilities_used(),
            "CAP_SYS_ADMIN (for CAP_BPF and CAP_PERFMON), CAP_NET_ADMIN"
        );
    }

    #[test]
    fn each_missing_capability_is_named_alone() {
        let all = [CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN];
        for cap in &CAPABILITIES {
            let rest: Vec<u32> = all.iter().copied().filter(|b| *b != cap.bit).collect();
            let blocker = report((6, 6, 0), &rest).blocker().unwrap_or_default();
            assert!(
                blocker.starts_with(&format!("missing capability {}: needed to ", cap.name)),
                "{blocker}"
            );
            assert_eq!(blocker.lines().count(), 1);
        }
        let no_net_admin = report((6, 6, 0), &[CAP_SYS_ADMIN]).blocker();
        assert!(no_net_admin.is_some_and(|m| m.contains("CAP_NET_ADMIN")));
    }

    #[test]
    fn an_old_kernel_is_named() {
        let old = report((5, 4, 0), &[CAP_SYS_ADMIN, CAP_NET_ADMIN]).blocker();
        assert!(old.is_some_and(|m| m.contains("too old") && m.contains("5.10")));
        let oldest = report((5, 10, 0), &[CAP_SYS_ADMIN, CAP_NET_ADMIN]).blocker();
        assert_eq!(oldest, None);
    }

    #[test]
    fn the_tail_of_a_verifier_log_keeps_its_last_lines() {
        let log = "0: (b7) r0 = 0\n\n1: (95) exit\nR0 invalid\nprocessed 2 insns\n";
        assert_eq!(last_lines(log, 2), "  R0 invalid\n  processed 2 insns");
        assert_eq!(last_lines(log, 10).lines().count(), 4);
    }
}
