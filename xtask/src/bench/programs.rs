//! BPF programs seen from outside: which a process holds, what they cost
//! per run (kernel run-time statistics), and which are attached to the
//! bench veths.

use std::{
    collections::BTreeMap,
    os::fd::{FromRawFd as _, OwnedFd},
};

use anyhow::Context as _;

use crate::cmd;

// From include/uapi/linux/bpf.h.
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;
pub const BPF_TCX_INGRESS: u32 = 46;
pub const BPF_TCX_EGRESS: u32 = 47;

pub fn bpf(command: libc::c_long, attr: &mut [u64]) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` prefix of the length
    // passed; the kernel reads and writes only within it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Run-time statistics on while this lives: `BPF_ENABLE_STATS`, the
/// syscall behind `kernel.bpf_stats_enabled`. Dropping it (or the process
/// dying) turns them off again, unless someone else holds them on.
pub struct RunTimeStats(#[expect(dead_code, reason = "held for its drop only")] OwnedFd);

impl RunTimeStats {
    pub fn enable() -> anyhow::Result<Self> {
        let mut attr = [u64::from(BPF_STATS_RUN_TIME)];
        let fd =
            owned(bpf(BPF_ENABLE_STATS, &mut attr)).context("enabling BPF run-time statistics")?;
        Ok(Self(fd))
    }
}

/// The descriptor a `bpf` command returned, owned.
pub fn owned(fd: std::io::Result<libc::c_long>) -> anyhow::Result<OwnedFd> {
    let fd = i32::try_from(fd?).context("the kernel returned no descriptor")?;
    // SAFETY: a new descriptor the kernel just handed to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Cumulative counters of one program, from `/proc/PID/fdinfo`.
#[derive(Clone, Copy, Default)]
pub struct RunCounters {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// The programs process `pid` holds descriptors of, by program id.
pub fn held_by(pid: u32) -> anyhow::Result<BTreeMap<u32, RunCounters>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut programs = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        // A descriptor closed between listing and reading is not a program
        // the process holds any more.
        let Ok(info) = entry.and_then(|entry| std::fs::read_to_string(entry.path())) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|value| value.trim().parse::<u64>().ok())
        };
        // Links carry `prog_id` too, but no run counters.
        if let (Some(id), Some(run_time_ns), Some(run_cnt)) =
            (field("prog_id"), field("run_time_ns"), field("run_cnt"))
        {
            let id = u32::try_from(id).context("a program id beyond 32 bits")?;
            programs.insert(
                id,
                RunCounters {
                    run_time_ns,
                    run_cnt,
                },
            );
        }
    }
    Ok(programs)
}

/// The name the kernel keeps for program `id`.
pub fn name(id: u32) -> anyhow::Result<String> {
    let json = cmd::output(
        "bpftool prog show",
        cmd::command("bpftool").args(["prog", "show", "id", &id.to_string(), "-j"]),
    )?;
    let info: serde_json::Value = serde_json::from_str(&json).context("parsing bpftool's JSON")?;
    info.get("name")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("bpftool shows no name for program {id}"))
}

/// A program on one of an interface's TC hooks.
pub struct Attached {
    /// `None` for a clsact filter whose line shows no id.
    pub id: Option<u32>,
    /// `tcx ingress`, `clsact egress`, ...
    pub hook: String,
}

/// Every BPF program on `interface`'s TC hooks: TCX links (kernel 6.6+,
/// by `BPF_PROG_QUERY`) and legacy clsact filters (as `tc` lists them).
pub fn attached_to(interface: &str) -> anyhow::Result<Vec<Attached>> {
    let ifindex = std::fs::read_to_string(format!("/sys/class/net/{interface}/ifindex"))
        .with_context(|| format!("reading the ifindex of {interface}"))?;
    let ifindex: u64 = ifindex.trim().parse().context("parsing an ifindex")?;
    let mut attached = Vec::new();
    for (attach_type, direction) in [(BPF_TCX_INGRESS, "ingress"), (BPF_TCX_EGRESS, "egress")] {
        let mut buffer = [0u32; 64];
        // `query`: target_ifindex, attach_type | query_flags, attach_flags
        // | prog_ids | prog_cnt, then fields left zero.
        let mut attr = [0u64; 8];
        attr[0] = ifindex | (u64::from(attach_type) << 32);
        attr[2] = buffer.as_mut_ptr() as u64;
        attr[3] = buffer.len() as u64;
        match bpf(BPF_PROG_QUERY, &mut attr) {
            Ok(_) => {
                let count = usize::try_from(attr[3] & 0xffff_ffff).unwrap_or(usize::MAX);
                attached.extend(buffer.iter().take(count).map(|&id| Attached {
                    id: Some(id),
                    hook: format!("tcx {direction}"),
                }));
            }
            // Before 6.6 there are no TCX hooks to ask about.
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {}
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("querying the TCX programs of {interface}"))
            }
        }
        // Without a clsact qdisc `tc` fails: no filters.
        let filters = cmd::output(
            "tc filter show",
            cmd::command("tc").args(["filter", "show", "dev", interface, direction]),
        )
        .unwrap_or_default();
        // `filter protocol all pref 49152 bpf chain 0 handle 0x1 from_container
        // direct-action not_in_hw id 2800 name from_container tag ...`
        attached.extend(
            filters
                .lines()
                .filter(|line| line.contains(" bpf "))
                .map(|line| Attached {
                    id: line
                        .split_whitespace()
                        .skip_while(|word| *word != "id")
                        .nth(1)
                        .and_then(|id| id.parse().ok()),
                    hook: format!("clsact {direction}"),
                }),
        );
    }
    Ok(attached)
}
