//! BPF programs on the TC hooks of interfaces, TCX links and legacy clsact
//! filters alike, and the programs a process holds: what tells a program
//! left behind by a killed agent from one a live agent runs.

use std::{collections::BTreeSet, process::Command};

use aya::programs::{tc::TcAttachType, SchedClassifier};
use serde_json::Value;

/// One program on one hook of an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookedProgram {
    pub id: u32,
    pub name: String,
    /// `ingress` or `egress`.
    pub direction: &'static str,
    /// A netlink clsact filter (outlives its process) rather than a TCX
    /// link (dies with it).
    pub clsact: bool,
}

const DIRECTIONS: [(TcAttachType, &str); 2] = [
    (TcAttachType::Ingress, "ingress"),
    (TcAttachType::Egress, "egress"),
];

/// Every BPF program on `interface`'s TC hooks; none for an interface that
/// is gone.
pub fn programs_on(interface: &str) -> Vec<HookedProgram> {
    let mut found = Vec::new();
    for (attach_type, direction) in DIRECTIONS {
        if let Ok((_, programs)) = SchedClassifier::query_tcx(interface, attach_type) {
            found.extend(programs.into_iter().map(|program| HookedProgram {
                id: program.id(),
                name: program.name_as_str().unwrap_or_default().to_owned(),
                direction,
                clsact: false,
            }));
        }
        found.extend(clsact_filters(interface, direction));
    }
    found
}

/// `tc -j filter show`: each BPF filter's program id and name. Without a
/// clsact qdisc (or interface) `tc` fails: no filters.
fn clsact_filters(interface: &str, direction: &'static str) -> Vec<HookedProgram> {
    let Ok(output) = Command::new("tc")
        .args(["-j", "filter", "show", "dev", interface, direction])
        .output()
    else {
        return Vec::new();
    };
    let filters: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    filters
        .as_array()
        .into_iter()
        .flatten()
        .filter(|filter| filter["kind"] == "bpf")
        .filter_map(|filter| {
            let program = &filter["options"]["prog"];
            Some(HookedProgram {
                id: u32::try_from(program["id"].as_u64()?).ok()?,
                name: program["name"].as_str()?.to_owned(),
                direction,
                clsact: true,
            })
        })
        .collect()
}

/// Names of the host's network interfaces right now.
pub fn interfaces() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .expect("listing /sys/class/net")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Ids of the TC classifiers process `pid` holds open (`prog_id` in the
/// fdinfo of its program fds of `prog_type` 3, BPF_PROG_TYPE_SCHED_CLS):
/// what it can attach to veths, not its tracepoint programs.
pub fn held_by(pid: u32) -> BTreeSet<u32> {
    const SCHED_CLS: &str = "3";
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return BTreeSet::new();
    };
    let field = |info: &str, name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|value| value.trim().to_owned())
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter(|info| field(info, "prog_type:").as_deref() == Some(SCHED_CLS))
        .filter_map(|info| field(&info, "prog_id:")?.parse().ok())
        .collect()
}

/// Every interface carrying one of `ids`, with what it carries.
pub fn where_attached(ids: &BTreeSet<u32>) -> Vec<(String, Vec<HookedProgram>)> {
    interfaces()
        .into_iter()
        .filter_map(|interface| {
            let ours: Vec<HookedProgram> = programs_on(&interface)
                .into_iter()
                .filter(|program| ids.contains(&program.id))
                .collect();
            (!ours.is_empty()).then_some((interface, ours))
        })
        .collect()
}
