//! Per-namespace SNMP counters: the kernel's own count of what a host sent,
//! the ground truth the monitor's counts are checked against.

use anyhow::Context as _;

/// Reads `group`'s `field` from `/proc/thread-self/net/snmp` (two lines per
/// group: names, then values). Call from inside a namespace (`Host::run`):
/// `/proc/self/net` would show the main thread's namespace instead.
pub fn snmp(group: &str, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp").context("reading snmp")?;
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|line| line.starts_with(&prefix));
    let (names, values) = (lines.next(), lines.next());
    let (Some(names), Some(values)) = (names, values) else {
        anyhow::bail!("no {group} group in snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == field)
        .with_context(|| format!("no {group}:{field} in snmp"))?
        .1
        .parse()
        .context("parsing an snmp counter")
}
