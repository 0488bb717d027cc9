//! The programs' own counters (per-CPU array, summed here).

use aya::maps::{MapData, PerCpuArray};
use monitor_common::Counter;
use serde::Serialize;

pub struct Counters {
    map: PerCpuArray<MapData, u64>,
}

/// Totals since the programs were loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KernelCounters {
    pub packets: u64,
    pub non_ip: u64,
    pub malformed: u64,
    pub flow_update_failed: u64,
    pub lost_new_flow: u64,
    pub lost_payload: u64,
    pub lost_arp: u64,
    pub lost_packet_sample: u64,
    pub lost_dns: u64,
}

impl Counters {
    pub(super) fn new(map: PerCpuArray<MapData, u64>) -> Self {
        Self { map }
    }

    pub fn read(&self) -> anyhow::Result<KernelCounters> {
        let mut totals = KernelCounters::default();
        for counter in Counter::ALL {
            let sum = self.map.get(&(counter as u32), 0)?.iter().sum();
            let slot = match counter {
                Counter::Packets => &mut totals.packets,
                Counter::NonIp => &mut totals.non_ip,
                Counter::Malformed => &mut totals.malformed,
                Counter::FlowUpdateFailed => &mut totals.flow_update_failed,
                Counter::LostNewFlow => &mut totals.lost_new_flow,
                Counter::LostPayload => &mut totals.lost_payload,
                Counter::LostArp => &mut totals.lost_arp,
                Counter::LostPacketSample => &mut totals.lost_packet_sample,
                Counter::LostDns => &mut totals.lost_dns,
            };
            *slot = sum;
        }
        Ok(totals)
    }
}
