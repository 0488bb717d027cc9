//! Per-namespace SNMP counters: the kernel's own count of what a host sent,
//! the ground truth the monitor's counts are checked against.
//!
//! `/proc/thread-self/net` shows the network namespace of the calling
//! thread; `/proc/self/net` would show the main thread's, whatever namespace
//! the caller entered. So [`snmp`] and [`snmp6`] must run inside
//! [`Host::run`]; [`snmp_counter`] and [`snmp6_counter`] do that for one
//! counter.

use anyhow::Context as _;

use crate::Host;

/// Reads `group`'s `field` from `/proc/thread-self/net/snmp` (two lines per
/// group: names, then values), e.g. `("Tcp", "OutSegs")` or `("Udp",
/// "OutDatagrams")`. Call from inside a namespace (`Host::run`).
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

/// Reads `field` (e.g. `Ip6OutOctets`, `Udp6OutDatagrams`) from
/// `/proc/thread-self/net/snmp6`, one `name value` pair per line. Call from
/// inside a namespace (`Host::run`).
pub fn snmp6(field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp6").context("reading snmp6")?;
    text.lines()
        .filter_map(|line| line.split_once(char::is_whitespace))
        .find(|(name, _)| *name == field)
        .with_context(|| format!("no {field} in snmp6"))?
        .1
        .trim()
        .parse()
        .context("parsing an snmp6 counter")
}

/// [`snmp`] in `host`'s namespace.
pub fn snmp_counter(host: &Host, group: &str, field: &str) -> anyhow::Result<u64> {
    host.run(|| snmp(group, field))
        .with_context(|| format!("{group}:{field} of {}", host.netns_name()))
}

/// [`snmp6`] in `host`'s namespace.
pub fn snmp6_counter(host: &Host, field: &str) -> anyhow::Result<u64> {
    host.run(|| snmp6(field))
        .with_context(|| format!("{field} of {}", host.netns_name()))
}
