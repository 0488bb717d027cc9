//! `process_*`: the agent process as every Prometheus exporter shows it,
//! read from `/proc/self` at scrape time.

use super::{Collector, Exposition, Kind};

/// `process_cpu_seconds_total`, `process_open_fds`, `process_max_fds`,
/// `process_virtual_memory_bytes`, `process_resident_memory_bytes`,
/// `process_start_time_seconds`, `process_threads`.
pub struct ProcessCollector;

/// The fields of `/proc/self/stat` that matter here.
struct Stat {
    cpu_ticks: u64,
    threads: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

fn stat() -> Option<Stat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // its last `)`, with field 3 (state) first.
    let fields: Vec<&str> = text.get(text.rfind(')')? + 2..)?.split(' ').collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)?.saturating_add(field(15)?),
        threads: field(20)?,
        start_ticks: field(22)?,
        vsize: field(23)?,
        rss_pages: field(24)?,
    })
}

fn sysconf(name: libc::c_int) -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let value = unsafe { libc::sysconf(name) };
    u64::try_from(value).unwrap_or(0)
}

fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

impl Collector for ProcessCollector {
    fn collect(&self, out: &mut Exposition) {
        let ticks = sysconf(libc::_SC_CLK_TCK).max(1);
        if let Some(stat) = stat() {
            out.family(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                Kind::Counter,
            )
            .sample(&[], stat.cpu_ticks as f64 / ticks as f64);
            out.family(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                Kind::Gauge,
            )
            .sample(&[], stat.vsize);
            out.family(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                Kind::Gauge,
            )
            .sample(
                &[],
                stat.rss_pages.saturating_mul(sysconf(libc::_SC_PAGESIZE)),
            );
            if let Some(boot) = boot_time() {
                out.family(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    Kind::Gauge,
                )
                .sample(&[], boot + stat.start_ticks / ticks);
            }
            out.family(
                "process_threads",
                "Number of OS threads in the process.",
                Kind::Gauge,
            )
            .sample(&[], stat.threads);
        }
        if let Some(fds) = open_fds() {
            out.family(
                "process_open_fds",
                "Number of open file descriptors.",
                Kind::Gauge,
            )
            .sample(&[], fds);
        }
        if let Some(max) = max_fds() {
            out.family(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                Kind::Gauge,
            )
            .sample(&[], max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_reads_itself() {
        let mut out = Exposition::new();
        ProcessCollector.collect(&mut out);
        let text = out.into_text();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_threads ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
