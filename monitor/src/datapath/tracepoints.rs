//! The tracepoint programs: their record layouts read from tracefs at load
//! time, loaded and attached where the kernel lets them, and their maps.
//! A kernel or a mount without the event, a field missing from its
//! format, or a refused attachment leaves that part out (said once in the
//! log and by `crossmon doctor`); the classifiers run regardless.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::{
    maps::{MapData, PerCpuHashMap},
    programs::TracePoint,
};
use monitor_common::{
    DropKey, FlowKey, DROP_FIELDS, GLOBAL_SKB_HEAD, GLOBAL_SKB_NETWORK_HEADER, NO_FIELD,
    RETRANSMIT_FIELDS,
};

/// Where tracefs is mounted: its own mount point, or under debugfs.
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs directory holding `events/`, mounting tracefs on its own
/// mount point first when neither holds it (which needs CAP_SYS_ADMIN;
/// without it the tracepoints are left out).
pub fn tracefs() -> Option<PathBuf> {
    let found = || {
        TRACEFS
            .iter()
            .map(PathBuf::from)
            .find(|dir| dir.join("events").is_dir())
    };
    if let Some(dir) = found() {
        return Some(dir);
    }
    // SAFETY: mount(2) with NUL-terminated strings and no data.
    let mounted = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if mounted != 0 {
        return None;
    }
    found()
}

/// The offsets of the fields of an event's record, by name, from its
/// format file (`field:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;`).
pub fn field_offsets(format: &str) -> anyhow::Result<HashMap<String, u32>> {
    let mut offsets = HashMap::new();
    for line in format.lines() {
        let mut parts = line.trim().split(';');
        let (Some(declaration), Some(offset)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some(declaration) = declaration.strip_prefix("field:") else {
            continue;
        };
        let name = declaration
            .rsplit([' ', '*'])
            .next()
            .unwrap_or_default()
            .split('[')
            .next()
            .unwrap_or_default();
        let Some(offset) = offset.trim().strip_prefix("offset:") else {
            continue;
        };
        offsets.insert(name.to_owned(), offset.parse().context("a field's offset")?);
    }
    Ok(offsets)
}

/// The offsets of `fields` (global, field name), each required.
fn required(
    offsets: &HashMap<String, u32>,
    fields: &[(&'static str, &str)],
) -> anyhow::Result<Vec<(&'static str, u32)>> {
    fields
        .iter()
        .map(|(global, field)| {
            let offset = offsets
                .get(*field)
                .with_context(|| format!("no field {field} in the format"))?;
            Ok((*global, *offset))
        })
        .collect()
}

/// The names of a drop reason's values, from the event's print format
/// (`__print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, ...)`).
pub fn reason_names(format: &str) -> HashMap<u32, String> {
    let Some(at) = format.find("__print_symbolic(REC->reason") else {
        return HashMap::new();
    };
    format[at..]
        .split('{')
        .skip(1)
        .filter_map(|pair| {
            let (number, rest) = pair.split_once(',')?;
            let name = rest.split('"').nth(1)?;
            Some((number.trim().parse().ok()?, name.to_owned()))
        })
        .collect()
}

fn format_of(tracefs: &Path, (category, name): (&str, &str)) -> anyhow::Result<String> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// The `tcp:tcp_retransmit_skb` record's offsets, by the global that
/// takes each, when tracefs has the event.
pub fn retransmit_layout(tracefs: &Path) -> anyhow::Result<Vec<(&'static str, u32)>> {
    let event = monitor_common::TRACEPOINT_TCP_RETRANSMIT;
    let offsets = field_offsets(&format_of(tracefs, event)?)?;
    required(&offsets, &RETRANSMIT_FIELDS).with_context(|| format!("{}:{}", event.0, event.1))
}

/// What the drop program needs to know of this kernel: its globals and
/// the names of the reasons it counts by.
pub struct DropLayout {
    pub globals: Vec<(&'static str, u32)>,
    /// Empty before 5.17 (no `reason` field): every drop then counts as
    /// reason 0, `unknown`.
    pub reasons: HashMap<u32, String>,
}

/// The `skb:kfree_skb` record's offsets (its `reason` where the kernel
/// has it) and `struct sk_buff`'s, from tracefs and BTF.
pub fn drop_layout(tracefs: &Path) -> anyhow::Result<DropLayout> {
    let event = monitor_common::TRACEPOINT_KFREE_SKB;
    let format = format_of(tracefs, event)?;
    let offsets = field_offsets(&format)?;
    let (fields, reason) = DROP_FIELDS.split_at(2);
    let mut globals = required(&offsets, fields)?;
    let reason_at = offsets.get(reason[0].1).copied().unwrap_or(NO_FIELD);
    globals.push((reason[0].0, reason_at));
    let btf = super::btf::Btf::from_sys_fs()?;
    globals.push((GLOBAL_SKB_HEAD, btf.member_offset("sk_buff", "head")?));
    globals.push((
        GLOBAL_SKB_NETWORK_HEADER,
        btf.member_offset("sk_buff", "network_header")?,
    ));
    Ok(DropLayout {
        globals,
        reasons: reason_names(&format),
    })
}

/// Loads a tracepoint program of the object and attaches it to `event`.
pub fn attach(ebpf: &mut aya::Ebpf, program: &str, event: (&str, &str)) -> anyhow::Result<()> {
    let (category, name) = event;
    let loaded: &mut TracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} is missing from the object"))?
        .try_into()
        .with_context(|| format!("program {program} is no tracepoint program"))?;
    loaded
        .load()
        .with_context(|| format!("loading {program}"))?;
    loaded
        .attach(category, name)
        .with_context(|| format!("attaching to {category}:{name}"))?;
    Ok(())
}

/// `DROPS`: packets dropped, by addresses and reason.
pub struct DropMap {
    map: PerCpuHashMap<MapData, DropKey, u64>,
}

impl DropMap {
    pub(super) fn new(map: PerCpuHashMap<MapData, DropKey, u64>) -> Self {
        Self { map }
    }

    /// Every key's drops so far, summed over the CPUs.
    pub fn totals(&self) -> HashMap<DropKey, u64> {
        self.map
            .iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| (key, per_cpu.iter().sum()))
            .collect()
    }
}

/// `RETRANSMITS`: segments retransmitted, by flow.
pub struct RetransmitMap {
    map: PerCpuHashMap<MapData, FlowKey, u64>,
}

impl RetransmitMap {
    pub(super) fn new(map: PerCpuHashMap<MapData, FlowKey, u64>) -> Self {
        Self { map }
    }

    /// Every flow's retransmissions so far, summed over the CPUs. The map
    /// holds only flows that retransmitted: a few, on a healthy host.
    pub fn totals(&self) -> HashMap<FlowKey, u64> {
        self.map
            .iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| (key, per_cpu.iter().sum()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT_6_18: &str = "name: tcp_retransmit_skb\nID: 2281\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;\n\
\tfield:__u16 family;\toffset:32;\tsize:2;\tsigned:0;\n\
\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;\n\
\nprint fmt: \"sport=%hu\", REC->sport\n";

    #[test]
    fn offsets_are_read_by_field_name_and_a_missing_field_is_an_error() {
        let offsets = field_offsets(FORMAT_6_18).expect("parses");
        assert_eq!(offsets["sport"], 28);
        assert_eq!(offsets["family"], 32);
        assert_eq!(offsets["saddr_v6"], 42);
        assert_eq!(offsets["skbaddr"], 8);
        let missing = required(&offsets, &[("G", "dport")]).unwrap_err();
        assert!(format!("{missing:#}").contains("dport"));
        assert_eq!(
            required(&offsets, &[("G", "sport")]).expect("present"),
            [("G", 28)]
        );
    }

    #[test]
    fn drop_reasons_are_named_from_the_print_format() {
        let format = "print fmt: \"reason: %s\", REC->protocol, __print_symbolic(REC->reason, { 2, \"NOT_SPECIFIED\" }, { 12, \"NETFILTER_DROP\" })";
        let names = reason_names(format);
        assert_eq!(names.len(), 2);
        assert_eq!(names[&12], "NETFILTER_DROP");
        assert!(reason_names("print fmt: \"protocol=%u\"").is_empty());
    }
}
