//! The agent's own state and the datapath's: interfaces, flows, the kernel
//! map, the programs' counters and run statistics.

use std::sync::Arc;

use super::{Collector, Exposition, Kind};
use crate::{
    datapath::{AttachStats, ATTACH_LATENCY_BUCKETS},
    docker::Snapshot,
    flows::PollStatus,
    sync::Published,
};

/// `crossmon_build_info`, `crossmon_attached_interfaces`,
/// `crossmon_attach_latency_seconds`, `crossmon_unattached_packets_total`,
/// `crossmon_flows`.
pub struct AgentCollector {
    pub poll: Published<PollStatus>,
    pub docker: Published<Snapshot>,
    pub attach: Arc<AttachStats>,
}

impl Collector for AgentCollector {
    fn collect(&self, out: &mut Exposition) {
        let poll = self.poll.load();
        out.family(
            "crossmon_build_info",
            "The running crossmon build; always 1.",
            Kind::Gauge,
        )
        .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1u64);
        out.family(
            "crossmon_attached_interfaces",
            "Container veths the programs are attached to.",
            Kind::Gauge,
        )
        .sample(&[], self.docker.load().interfaces.len());
        let attach = self.attach.counts();
        let mut cumulative = 0;
        let buckets: Vec<(f64, u64)> = ATTACH_LATENCY_BUCKETS
            .iter()
            .zip(attach.latency_buckets)
            .map(|(bound, n)| {
                cumulative += n;
                (*bound, cumulative)
            })
            .collect();
        out.family(
            "crossmon_attach_latency_seconds",
            "From the rtnetlink notification showing a veth enslaved to a watched bridge to the programs attached.",
            Kind::Histogram,
        )
        .histogram(&[], &buckets, attach.latency_sum, attach.latency_count);
        out.family(
            "crossmon_unattached_packets_total",
            "Packets that crossed watched veths before the programs were attached, from each veth's own counters read just after attaching (an upper bound).",
            Kind::Counter,
        )
        .sample(&[], attach.unattached_packets);
        out.family(
            "crossmon_flows",
            "Flows the agent currently tracks (active or idle within --idle-timeout).",
            Kind::Gauge,
        )
        .sample(&[], poll.flows);
    }
}

/// The flow map, the programs' counters and their run statistics.
pub struct DatapathCollector {
    pub poll: Published<PollStatus>,
}

impl Collector for DatapathCollector {
    fn collect(&self, out: &mut Exposition) {
        let poll = self.poll.load();
        let kernel = &poll.kernel;
        out.family(
            "crossmon_flow_map_entries",
            "Entries in the kernel flow maps (IPv4 and IPv6) at the latest read.",
            Kind::Gauge,
        )
        .sample(&[], poll.flow_map_entries);
        out.family(
            "crossmon_flow_map_capacity",
            "Entries each kernel flow map (IPv4, IPv6) holds before evicting (--flow-capacity).",
            Kind::Gauge,
        )
        .sample(&[], poll.flow_map_capacity);
        out.family(
            "crossmon_flows_evicted_total",
            "Kernel flow entries evicted by a full map; their counts up to the previous read are kept.",
            Kind::Counter,
        )
        .sample(&[], poll.flows_evicted);
        out.family(
            "crossmon_packets_total",
            "IP packets the programs counted into flows.",
            Kind::Counter,
        )
        .sample(&[], kernel.packets);
        let mut skipped = out.family(
            "crossmon_frames_skipped_total",
            "Frames passed on without a flow: not IP, or malformed.",
            Kind::Counter,
        );
        for (reason, n) in [
            ("not_ip", kernel.non_ip),
            ("malformed", kernel.malformed),
            ("map_update_failed", kernel.flow_update_failed),
        ] {
            skipped.sample(&[("reason", reason)], n);
        }
        let mut lost = out.family(
            "crossmon_events_lost_total",
            "Events the kernel could not queue because the ring buffer was full, by kind.",
            Kind::Counter,
        );
        for (kind, n) in [
            ("new_flow", kernel.lost_new_flow),
            ("payload", kernel.lost_payload),
            ("arp", kernel.lost_arp),
            ("packet_sample", kernel.lost_packet_sample),
            ("dns", kernel.lost_dns),
        ] {
            lost.sample(&[("kind", kind)], n);
        }
        let Some(programs) = &poll.programs else {
            return;
        };
        let mut seconds = out.family(
            "crossmon_program_run_seconds_total",
            "Time the kernel spent in each program (kernel.bpf_stats_enabled=1 only).",
            Kind::Counter,
        );
        for program in programs {
            seconds.sample(&[("program", program.name)], program.run_time.as_secs_f64());
        }
        let mut runs = out.family(
            "crossmon_program_runs_total",
            "Runs of each program (kernel.bpf_stats_enabled=1 only).",
            Kind::Counter,
        );
        for program in programs {
            runs.sample(&[("program", program.name)], program.run_count);
        }
    }
}
