//! `/metrics` at scale: render time and size, and the memory of the
//! structures behind it, at 1k, 10k and 50k traffic series. Run by
//! `cargo bench -p monitor --bench metrics_scale`.
//!
//! Series come from flows between 200 synthetic containers on exposed
//! ports, labelled and rendered by the agent's own code; only the kernel
//! and the HTTP layer are left out.

mod synthetic;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use monitor::{
    docker::{Directory, Snapshot},
    flows::{FlowTable, PollOutcome, PollStatus, PollView},
    metrics::{self, Metrics, MetricsConfig},
    series::TrafficSeries,
};
use monitor_common::{ip_proto, Direction, FlowKey, FlowStats};
use synthetic::{container_ip, inventory, CONTAINERS};

const RUNS: usize = 5;

/// `series` flows, each its own (source, destination, port) series.
fn flows(series: u32) -> (FlowTable, BTreeSet<(u16, u8)>) {
    let mut table = FlowTable::new();
    let mut ports = BTreeSet::new();
    let mut outcome = PollOutcome::default();
    table.begin_poll(0);
    for i in 0..series {
        let (src, dst) = (i % CONTAINERS, (i / CONTAINERS) % CONTAINERS);
        let port = 8000 + (i / (CONTAINERS * CONTAINERS)) as u16;
        ports.insert((port, ip_proto::TCP));
        let key = FlowKey::ipv4(
            container_ip(src).octets(),
            40000,
            container_ip(dst).octets(),
            port,
            ip_proto::TCP,
        );
        let stats = FlowStats {
            packets: 10,
            bytes: 6000,
            first_seen_ns: 1,
            last_seen_ns: 1,
            ifindex: 1000 + src,
            direction: Direction::FromContainer as u8,
            ..FlowStats::default()
        };
        table.observe(&key, &stats, &mut outcome);
    }
    table.end_poll(&mut outcome);
    (table, ports)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() -> anyhow::Result<()> {
    println!("| series | /metrics bytes | render (median of {RUNS}) | update per poll | RSS |");
    println!("|---:|---:|---:|---:|---:|");
    for series in [1_000u32, 10_000, 50_000] {
        let before = rss_bytes();
        let (table, ports) = flows(series);
        let inventory = inventory(CONTAINERS, &ports);
        let directory = Directory::new(Some(&inventory), Default::default());
        let traffic = Arc::new(Mutex::new(TrafficSeries::new(MetricsConfig {
            max_series: 100_000,
            grace_ns: u64::MAX,
        })));
        let started = Instant::now();
        traffic
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .update(&PollView::new(&table, &[]), &directory, Some(&inventory), 2);
        let update = started.elapsed();
        // Every collector the agent registers but the process's.
        let status = Arc::new(ArcSwap::from_pointee(PollStatus {
            flows: table.len(),
            flow_map_entries: table.len(),
            flow_map_capacity: 65_536,
            ..PollStatus::default()
        }));
        let docker = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
        let mut metrics = Metrics::new();
        metrics.register(metrics::AgentCollector {
            attach: Arc::new(monitor::datapath::AttachStats::default()),
            poll: status.clone(),
            docker: docker.clone(),
        });
        metrics.register(metrics::DatapathCollector { poll: status });
        metrics.register(metrics::DockerCollector {
            up: Some(Arc::new(true.into())),
            docker,
        });
        metrics.register(metrics::TrafficCollector {
            traffic: traffic.clone(),
        });
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..RUNS {
            let started = Instant::now();
            size = metrics.render().len();
            times.push(started.elapsed());
        }
        let made = traffic
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .series_counts()[0]
            .1;
        anyhow::ensure!(
            made == series as usize,
            "expected {series} series, made {made}"
        );
        let after = rss_bytes();
        println!(
            "| {series} | {size} | {:.1} ms | {:.1} ms | {:.1} MiB (+{:.1}) |",
            median(times).as_secs_f64() * 1e3,
            update.as_secs_f64() * 1e3,
            mib(after),
            mib(after.saturating_sub(before)),
        );
    }
    Ok(())
}
